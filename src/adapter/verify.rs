//! Ingest authentication, run by the HTTP task before a request's body is parsed or reaches
//! an actor: the provider-native signature (Mux's `Mux-Signature`) and the
//! `X-Webhook-Secret` fallback; and the Mux lifecycle route's signature check.
//!
//! Why here and not in the actors: an HMAC over a 1 MiB body costs milliseconds, once per
//! signing secret (a connection may hold ten), and an actor handles one message at a time.
//! Checked inside the bucket's adapter actor (ingest) or the bucket registry (lifecycle
//! webhooks), a flood of bogus signatures with a fresh timestamp stalled that bucket's
//! ingest, or every admin write, by seconds. And a body is parsed only once its sender is
//! authenticated: parsed JSON takes many times the memory of its bytes (`[0,0,…]`: ~16×), so
//! an anonymous sender must not get that far. The HTTP tasks run in parallel and hold no
//! state; the actor is told what the request was verified against.
//!
//! What the HTTP task checks against is a [`Gate`]: a snapshot of a bucket's adapter (its
//! secret digest, type and credentials' location) that its actor publishes in [`Gates`] when
//! it starts and withdraws when it ends. Every change of an adapter (a new secret, a new
//! connection) restarts its actor, and every start has a new [`Gate::revision`]; a changed
//! connection bumps [`Gates::connections_revision`]. The request carries a [`Proof`] of
//! both; the actor accepts it only when they are still its own, and otherwise checks again
//! against its current adapter ([`authenticate`]): a request verified just before a
//! rotation, still queued, gets 401 under the old secret.
//!
//! This module reads connections from the store and decrypts them for one check; it writes
//! nothing and must not touch actor state (a gate is a copy, made by the actor).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;

use super::kind::{self, NativeSignature, SignatureHeaders};
use super::spec::{self, SourceAdapter};
use crate::catalog::{Connection, ProviderType};
use crate::error::ApiError;
use crate::ids::{BucketId, ConnectionId};
use crate::state::Shared;
use crate::store::Keyspace;

/// What a native signature check found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeCheck {
    /// No native signature header, or an adapter type without a native scheme.
    Absent,
    Valid,
    /// Refused: why (told to the sender; see [`Refusal`]).
    Invalid(Refusal),
    /// The request carries a native signature, but the adapter's signing secrets cannot be
    /// read (a master key that does not open them): neither valid nor the sender's fault.
    Unreadable(String),
}

/// A running adapter's authentication settings, as its actor loaded them: what the HTTP
/// task checks an ingest against. Immutable; a changed adapter is a new actor, a new gate.
pub struct Gate {
    /// Unique per actor start (see the module doc): equal revisions, equal secrets.
    pub revision: u64,
    pub bucket_id: BucketId,
    /// The adapter: its type, connection or sealed inline credentials (for the native check).
    adapter: SourceAdapter,
    /// The webhook secret's SHA-256, decoded once; `None` (an unreadable stored digest)
    /// matches nothing.
    secret_sha256: Option<[u8; 32]>,
}

impl Gate {
    fn new(revision: u64, bucket_id: BucketId, adapter: &SourceAdapter) -> Gate {
        let secret_sha256 = spec::secret_digest(&adapter.webhook_secret_sha256);
        Gate { revision, bucket_id, adapter: adapter.clone(), secret_sha256 }
    }

    /// Whether this gate's adapter is a Mux adapter.
    pub fn is_mux(&self) -> bool {
        self.adapter.adapter_type == ProviderType::Mux
    }

    /// The `X-Webhook-Secret` check: the presented value's SHA-256 against the stored one, in
    /// constant time ([`spec::digest_matches`]), against the digest decoded once.
    pub fn secret_matches(&self, presented: Option<&str>) -> bool {
        match (presented, &self.secret_sha256) {
            (Some(p), Some(digest)) => spec::digest_matches(digest, p),
            _ => false,
        }
    }

    /// Whether a native check applies to a request with this `Mux-Signature` (else it is
    /// [`NativeCheck::Absent`] without any work).
    pub fn has_native(&self, mux_signature: Option<&str>) -> bool {
        mux_signature.is_some() && self.adapter.adapter_type == ProviderType::Mux
    }

    /// Checks the native signature against the adapter's signing secrets (its connection
    /// is read and decrypted now). Returns the outcome and the connections revision it was
    /// read under (loaded first: a change committed after the load bumps it later).
    pub fn native(&self, shared: &Shared, mux_signature: Option<&str>, raw: &Bytes) -> (NativeCheck, u64) {
        let connections = shared.gates.connections_revision();
        if !self.has_native(mux_signature) {
            return (NativeCheck::Absent, connections);
        }
        let check = match credentials(shared, &self.bucket_id, &self.adapter) {
            Err(e) => NativeCheck::Unreadable(e),
            Ok(creds) => match kind::native_signature(self.adapter.adapter_type, mux_signature, raw, creds.as_ref()) {
                NativeSignature::Absent => NativeCheck::Absent,
                NativeSignature::Valid => NativeCheck::Valid,
                NativeSignature::NoSecret => {
                    NativeCheck::Invalid(Refusal::NoSigningSecret { connection_id: self.adapter.connection_id.clone() })
                }
                NativeSignature::Invalid(e) => NativeCheck::Invalid(Refusal::Signature(e)),
            },
        };
        (check, connections)
    }

    /// [`Gate::native`] from the head alone, where it decides (see
    /// [`kind::native_signature_head`]): `None` to read the body, including when the signing
    /// secrets cannot be read (the body's check answers that, 503).
    pub fn native_head(&self, shared: &Shared, mux_signature: Option<&str>) -> Option<(NativeCheck, u64)> {
        let connections = shared.gates.connections_revision();
        if !self.has_native(mux_signature) {
            return None;
        }
        let creds = credentials(shared, &self.bucket_id, &self.adapter).ok()?;
        let check = match kind::native_signature_head(self.adapter.adapter_type, mux_signature, creds.as_ref())? {
            NativeSignature::NoSecret => {
                NativeCheck::Invalid(Refusal::NoSigningSecret { connection_id: self.adapter.connection_id.clone() })
            }
            NativeSignature::Invalid(e) => NativeCheck::Invalid(Refusal::Signature(e)),
            NativeSignature::Absent | NativeSignature::Valid => return None,
        };
        Some((check, connections))
    }
}

/// The gates of the running adapters, and the revision counters (see the module doc).
/// Shared by the HTTP tasks (readers, one short read lock per ingest) and the adapter actors
/// (each writes its own entry when it starts and ends).
#[derive(Clone, Default)]
pub struct Gates(Arc<GatesInner>);

#[derive(Default)]
struct GatesInner {
    table: RwLock<HashMap<BucketId, Arc<Gate>>>,
    /// The last revision handed out.
    revisions: AtomicU64,
    /// Bumped after every committed change of a connection.
    connections: AtomicU64,
}

impl Gates {
    /// The gate of a bucket's running adapter, if its actor has published one.
    pub fn get(&self, bucket_id: &BucketId) -> Option<Arc<Gate>> {
        self.0.table.read().unwrap_or_else(PoisonError::into_inner).get(bucket_id).cloned()
    }

    /// Publishes a gate for an actor starting with `adapter`, under a new revision; it is
    /// withdrawn when the returned handle is dropped (with the actor's state, however it
    /// ends), unless a successor has replaced it.
    pub fn publish(&self, bucket_id: &BucketId, adapter: &SourceAdapter) -> Published {
        let revision = self.0.revisions.fetch_add(1, Ordering::Relaxed) + 1;
        let gate = Arc::new(Gate::new(revision, bucket_id.clone(), adapter));
        self.0.table.write().unwrap_or_else(PoisonError::into_inner).insert(bucket_id.clone(), gate.clone());
        Published { gates: self.clone(), gate }
    }

    /// Called once a change of a connection is committed: proofs of a native signature
    /// checked before it no longer hold.
    pub fn connections_changed(&self) {
        self.0.connections.fetch_add(1, Ordering::Release);
    }

    pub fn connections_revision(&self) -> u64 {
        self.0.connections.load(Ordering::Acquire)
    }
}

/// An actor's published gate (see [`Gates::publish`]).
pub struct Published {
    gates: Gates,
    gate: Arc<Gate>,
}

impl std::ops::Deref for Published {
    type Target = Gate;
    fn deref(&self) -> &Gate {
        &self.gate
    }
}

impl Published {
    /// Withdraws the gate unless a successor has replaced it (the actor's `post_stop`; the
    /// drop does it again, for an actor that failed). Idempotent.
    pub fn withdraw(&self) {
        let mut table = self.gates.0.table.write().unwrap_or_else(PoisonError::into_inner);
        if table.get(&self.gate.bucket_id).is_some_and(|g| g.revision == self.gate.revision) {
            table.remove(&self.gate.bucket_id);
        }
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        self.withdraw();
    }
}

/// What a request was authenticated against: a gate's revision, and for a native signature
/// the connections revision (the signing secrets live in the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    revision: u64,
    by: By,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Secret,
    Native { connections: u64 },
}

impl Proof {
    /// Whether the proof still holds for an actor whose gate has `revision`, with the
    /// connections at `connections`: nothing the check read has changed since.
    pub fn holds(&self, revision: u64, connections: u64) -> bool {
        self.revision == revision
            && match self.by {
                By::Secret => true,
                By::Native { connections: then } => then == connections,
            }
    }
}

const FALLBACK: &str = "send X-Webhook-Secret with the adapter's webhook_secret";
const ALSO_WRONG_SECRET: &str = "; X-Webhook-Secret does not match the adapter's webhook_secret either";

/// Why an ingest was refused (401). [`Refused::answer`] is answered to the sender, who may
/// be anyone: it says what to fix, never a secret or the expected signature (nor, there, a
/// connection's ID); [`Refusal::message`] is the admin's fuller version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Neither `X-Webhook-Secret` nor a `Mux-Signature` a Mux adapter checks.
    NoCredentials { mux: bool, mux_signature_ignored: bool },
    /// `X-Webhook-Secret` does not match (and there is no `Mux-Signature` to fall back on).
    WrongSecret { mux: bool },
    /// A `Mux-Signature` on a Mux adapter whose connection (or inline credentials) has no
    /// `webhook_signing_secret`.
    NoSigningSecret { connection_id: Option<ConnectionId> },
    /// A `Mux-Signature` that is malformed, stale or does not match.
    Signature(super::mux::MuxSignatureError),
    /// `X-Webhook-Secret` or `Mux-Signature` sent more than once: which one counts would be
    /// a guess (a proxy may have added one), so neither does.
    RepeatedHeader { name: &'static str, count: usize },
}

impl Refusal {
    /// Short name for logs and the status endpoint (`stale`, `mismatch`, …).
    pub fn kind(&self) -> &'static str {
        use super::mux::MuxSignatureError as E;
        match self {
            Refusal::NoCredentials { .. } => "no_signature",
            Refusal::WrongSecret { .. } => "wrong_webhook_secret",
            Refusal::NoSigningSecret { .. } => "no_signing_secret",
            Refusal::Signature(E::Missing) => "no_signature",
            Refusal::Signature(E::Malformed(_)) => "malformed_signature",
            Refusal::Signature(E::Stale { skew_secs }) if *skew_secs > 0 => "stale_timestamp",
            Refusal::Signature(E::Stale { .. }) => "future_timestamp",
            Refusal::Signature(E::Mismatch) => "signature_mismatch",
            Refusal::RepeatedHeader { .. } => "repeated_header",
        }
    }

    /// Why, in full (the admin's status view; the 401 says [`Refused::answer`] of it).
    /// `secret_sent`: an `X-Webhook-Secret` was sent and did not match
    /// (said too, when the `Mux-Signature` is what was refused).
    pub fn message(&self, secret_sent: bool) -> String {
        let also = if secret_sent { ALSO_WRONG_SECRET } else { "" };
        match self {
            Refusal::NoCredentials { mux, mux_signature_ignored } => {
                let mut m = format!("no webhook signature: {FALLBACK}");
                if *mux {
                    m.push_str(" (or a Mux-Signature made with the connection's webhook_signing_secret)");
                }
                if *mux_signature_ignored {
                    m.push_str("; Mux-Signature is checked by mux adapters only, and this bucket's is not one");
                }
                m
            }
            Refusal::WrongSecret { mux } => {
                let mut m = "X-Webhook-Secret does not match the adapter's webhook_secret (shown once, by the PATCH \
                             that configured the adapter or rotated it: rotate_secret makes a new one)"
                    .to_string();
                if *mux {
                    m.push_str("; or sign with Mux-Signature instead");
                }
                m
            }
            Refusal::NoSigningSecret { connection_id: Some(id) } => format!(
                "Mux-Signature cannot be verified: connection {id} has no webhook_signing_secret, so signed Mux \
                 ingests are refused; PATCH /v1/organizations/connections/{id} with provider_config including \
                 webhook_signing_secret (the signing secret Mux shows for this webhook endpoint), or {FALLBACK}{also}"
            ),
            Refusal::NoSigningSecret { connection_id: None } => format!(
                "Mux-Signature cannot be verified: the adapter has no connection_id and its \
                 connection.credentials have no webhook_signing_secret, so signed Mux ingests are refused; PATCH the \
                 bucket's source_adapter with a connection_id whose connection has one (or with \
                 connection.credentials.webhook_signing_secret), or {FALLBACK}{also}"
            ),
            Refusal::Signature(e) => format!("{e}{also}"),
            Refusal::RepeatedHeader { name, count } => repeated_message(name, *count),
        }
    }
}

/// The refusal of a request that sends an authenticating header more than once.
pub fn repeated_message(name: &str, count: usize) -> String {
    format!("{name} was sent {count} times: send it once (the request was not checked against any of them)")
}

/// A refused ingest: why, and whether a wrong `X-Webhook-Secret` was sent beside the
/// `Mux-Signature` that is what was refused (said in both messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    secret_sent: bool,
}

impl Refused {
    /// A refusal that no `X-Webhook-Secret` was part of.
    pub fn new(refusal: Refusal) -> Refused {
        Refused { refusal, secret_sent: false }
    }

    /// Why, in full (the admin's status view; see [`Refusal::message`]).
    pub fn message(&self) -> String {
        self.refusal.message(self.secret_sent)
    }

    /// What the 401 itself says, given the full [`Refused::message`] (kept for the admin's
    /// status view, see `http/refusals.rs`): the same, except that an anonymous sender is not
    /// told a connection's ID or the admin routes that fix it.
    pub fn answer(&self, message: String) -> String {
        let Refusal::NoSigningSecret { connection_id } = &self.refusal else { return message };
        let whose = match connection_id {
            Some(_) => "the adapter's Mux connection has",
            None => "the adapter's connection.credentials have",
        };
        let also = if self.secret_sent { ALSO_WRONG_SECRET } else { "" };
        format!(
            "Mux-Signature cannot be verified: {whose} no webhook_signing_secret, so signed ingests are refused (the \
             adapter's status, last_refused_ingest, says how to set one), or {FALLBACK}{also}"
        )
    }
}

/// The outcome of authenticating an ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Authentic(Proof),
    /// 401: no valid signature, no matching secret.
    Unauthorized(Refused),
    /// 503: a native signature hookline cannot check (its secrets cannot be decrypted) on a
    /// request nothing else authenticates; not the sender's fault.
    Unverifiable(String),
}

/// What the `X-Webhook-Secret` check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretCheck {
    /// No `X-Webhook-Secret` header.
    Absent,
    Matches,
    Wrong,
}

impl SecretCheck {
    /// Checks the presented header (if any) against the gate.
    pub fn of(gate: &Gate, presented: Option<&str>) -> SecretCheck {
        match presented {
            None => SecretCheck::Absent,
            Some(_) if gate.secret_matches(presented) => SecretCheck::Matches,
            Some(_) => SecretCheck::Wrong,
        }
    }
}

/// Combines the two checks against a gate of `revision`: a matching `X-Webhook-Secret`, or
/// else the native check (`None`: not made, as for a request without one). `mux` is whether
/// the adapter is a Mux adapter and `mux_signature` whether the request has a
/// `Mux-Signature` (both only shape the refusal's message).
pub fn verdict(
    revision: u64,
    secret: SecretCheck,
    native: Option<(NativeCheck, u64)>,
    mux: bool,
    mux_signature: bool,
) -> Verdict {
    if secret == SecretCheck::Matches {
        return Verdict::Authentic(Proof { revision, by: By::Secret });
    }
    let refusal = match native {
        Some((NativeCheck::Valid, connections)) => {
            return Verdict::Authentic(Proof { revision, by: By::Native { connections } })
        }
        Some((NativeCheck::Unreadable(e), _)) => return Verdict::Unverifiable(e),
        Some((NativeCheck::Invalid(r), _)) => r,
        Some((NativeCheck::Absent, _)) | None => match secret {
            SecretCheck::Wrong => Refusal::WrongSecret { mux },
            _ => Refusal::NoCredentials { mux, mux_signature_ignored: mux_signature && !mux },
        },
    };
    let secret_sent =
        secret == SecretCheck::Wrong && matches!(refusal, Refusal::Signature(_) | Refusal::NoSigningSecret { .. });
    Verdict::Unauthorized(Refused { refusal, secret_sent })
}

/// The PATCH answer's warning for a Mux adapter without a signing secret (on its connection,
/// or in its inline credentials): valid (`X-Webhook-Secret` authenticates), but every ingest
/// Mux signs will be refused until one is set.
pub fn no_signing_secret(shared: &Shared, bucket_id: &BucketId, adapter: &SourceAdapter) -> Option<String> {
    if adapter.adapter_type != ProviderType::Mux {
        return None;
    }
    // Unreadable credentials are a different problem, reported when an ingest needs them.
    let cfg = credentials(shared, bucket_id, adapter).ok()?;
    if cfg.as_ref().is_some_and(|c| !c.mux_signing_secrets().is_empty()) {
        return None;
    }
    let consequence = "ingests signed with Mux-Signature will be refused (401) until one is set; \
                       X-Webhook-Secret still authenticates";
    Some(match &adapter.connection_id {
        Some(id) => format!(
            "source_adapter.connection_id: connection {id} has no webhook_signing_secret: {consequence} \
             (PATCH /v1/organizations/connections/{id} with provider_config.webhook_signing_secret, the signing \
             secret Mux shows for this bucket's ingest URL)"
        ),
        None => format!(
            "source_adapter: no connection_id and no connection.credentials.webhook_signing_secret: {consequence} \
             (set a connection_id whose connection has one)"
        ),
    })
}

/// Both checks, here and now (the actor's re-check, see the module doc; the HTTP task
/// runs the native one in a signature-check slot instead).
pub fn authenticate(shared: &Shared, gate: &Gate, headers: &SignatureHeaders, raw: &Bytes) -> Verdict {
    let secret = SecretCheck::of(gate, headers.webhook_secret.as_deref());
    let signature = headers.mux_signature.as_deref();
    let native = (secret != SecretCheck::Matches).then(|| gate.native(shared, signature, raw));
    verdict(gate.revision, secret, native, gate.is_mux(), signature.is_some())
}

/// At most one log line a minute for each bucket's or connection's unreadable credentials
/// (the rate limit refused ingests are logged at, see `http/refusals.rs`): an anonymous
/// request with a fresh-looking `Mux-Signature` makes the daemon try them (twice: from the
/// head and over the body), so an unlimited line each would let anyone fill the log. The
/// start-up report and `hookline_credentials_unreadable` say it anyway.
fn unreadable_log_due(key: &str) -> bool {
    static LOGGED: std::sync::LazyLock<crate::http::refusals::Refusals<String>> =
        std::sync::LazyLock::new(Default::default);
    LOGGED.record(&key.to_string(), "unreadable", "").is_some()
}

/// Decrypts an adapter's credentials: its connection, or its inline credentials (`None`: it
/// has neither). Called per event that needs them; the caller drops them when done. Never
/// logged. An error (a connection that cannot be read or opened, e.g. after the master key
/// changed) is logged here, once a minute for each (see [`unreadable_log_due`]), and returned
/// without details.
pub fn credentials(
    shared: &Shared,
    bucket_id: &BucketId,
    adapter: &SourceAdapter,
) -> Result<Option<crate::catalog::connection::ProviderConfig>, String> {
    let secrets = &shared.secrets;
    let failed = |what: &str| format!("the adapter's credentials cannot be {what}; see the daemon log");
    if let Some(id) = &adapter.connection_id {
        return match shared.store.get::<Connection>(Keyspace::CONNECTIONS, id.as_str()) {
            Ok(Some(c)) => match c.open(secrets) {
                Ok(cfg) => Ok(Some(cfg)),
                Err(e) => {
                    if unreadable_log_due(id.as_str()) {
                        tracing::error!(bucket_id = %bucket_id, connection_id = %id, error = %e, "open connection");
                    }
                    Err(failed(e.cannot_be()))
                }
            },
            Ok(None) => Ok(None),
            Err(e) => {
                if unreadable_log_due(id.as_str()) {
                    tracing::error!(bucket_id = %bucket_id, connection_id = %id, error = %e, "read connection");
                }
                Err(failed("read"))
            }
        };
    }
    // Credentials that do not decode are not "none": a Mux adapter would map without the
    // API, silently.
    match adapter.inline_credentials(bucket_id, secrets) {
        None => Ok(None),
        Some(Ok(cfg)) => Ok(Some(cfg)),
        Some(Err(e)) => {
            if unreadable_log_due(bucket_id.as_str()) {
                tracing::error!(bucket_id = %bucket_id, error = %e, "open inline credentials");
            }
            Err(failed(e.cannot_be()))
        }
    }
}

/// What the HTTP task checked of a lifecycle webhook, kept with the change it asks of each
/// bucket's actor: a connection changed between that check and the change (its signing
/// secret rotated while the change waited behind a busy actor) has the actor check it again
/// against the connection as it is now, as an ingest's proof is (see the module doc), so a
/// request signed with a secret rotated out changes nothing once the rotation is answered.
pub struct LifecycleCheck {
    pub connection_id: ConnectionId,
    /// [`Gates::connections_revision`], read before the HTTP task's check.
    pub revision: u64,
    pub signature: Option<String>,
    pub raw: Bytes,
}

impl LifecycleCheck {
    /// `Ok` when no connection changed since the HTTP task's check, or when the request
    /// still verifies; else its refusal (401, or 503 when the secrets cannot be read).
    pub fn still_holds(&self, shared: &Shared) -> Result<(), ApiError> {
        if shared.gates.connections_revision() == self.revision {
            return Ok(());
        }
        lifecycle(shared, &self.connection_id, self.signature.as_deref(), &self.raw)
    }
}

/// What [`lifecycle`] can refuse before the body is read: an unknown or non-Mux connection
/// (404); a missing, repeated, malformed or stale `Mux-Signature`, or a connection without a signing
/// secret (401). Whether the signature matches needs the body.
pub fn lifecycle_head(
    shared: &Shared,
    id: &ConnectionId,
    signature: Option<&str>,
    signatures_sent: usize,
) -> Result<(), ApiError> {
    let conn = mux_connection(shared, id)?;
    // After the 404: an unknown connection is answered so whatever the headers.
    if signatures_sent > 1 {
        return Err(ApiError::UnauthorizedMsg(repeated_message("Mux-Signature", signatures_sent)));
    }
    let Some(signature) = signature else {
        return Err(ApiError::UnauthorizedMsg(super::mux::signature::MuxSignatureError::Missing.to_string()));
    };
    // What [`lifecycle`] would refuse whatever the body: no signing secret, a malformed or
    // stale header. Credentials that cannot be decrypted are its to answer (503).
    let Ok(cfg) = conn.open(&shared.secrets) else {
        return Ok(());
    };
    match kind::native_signature_head(ProviderType::Mux, Some(signature), Some(&cfg)) {
        Some(NativeSignature::NoSecret) => Err(no_lifecycle_secret(id)),
        Some(NativeSignature::Invalid(e)) => Err(ApiError::UnauthorizedMsg(format!("{e}"))),
        Some(NativeSignature::Absent | NativeSignature::Valid) | None => Ok(()),
    }
}

fn no_lifecycle_secret(id: &ConnectionId) -> ApiError {
    ApiError::UnauthorizedMsg(format!(
        "connection {id} has no webhook_signing_secret, so Mux-Signature cannot be verified"
    ))
}

/// The Mux connection `id`: 404 for an unknown connection or one of another type (one answer
/// for both: an anonymous caller learns nothing of connections of other types).
fn mux_connection(shared: &Shared, id: &ConnectionId) -> Result<Connection, ApiError> {
    let not_found = || ApiError::NotFound(format!("no mux connection {id}"));
    let conn: Connection = shared.store.get(Keyspace::CONNECTIONS, id.as_str())?.ok_or_else(not_found)?;
    if conn.provider_type != ProviderType::Mux {
        return Err(not_found());
    }
    Ok(conn)
}

/// Verifies a Mux lifecycle webhook (`POST /v1/webhooks/mux/{connection_id}`) against the
/// connection's signing secrets: 404 for an unknown or non-Mux connection, 401 for a
/// missing or bad signature, 503 when the connection cannot be decrypted.
pub fn lifecycle(shared: &Shared, id: &ConnectionId, signature: Option<&str>, raw: &Bytes) -> Result<(), ApiError> {
    let conn = mux_connection(shared, id)?;
    // Not the sender's fault, and not a crash: 503, so Mux retries once the operator has
    // restored the master key (the log says which connection, once a minute).
    let cfg = conn.open(&shared.secrets).map_err(|e| {
        if unreadable_log_due(id.as_str()) {
            tracing::error!(connection_id = %id, error = %e, "open connection");
        }
        ApiError::Unavailable(format!(
            "connection {id}'s credentials cannot be {}, so Mux-Signature cannot be checked; see the daemon log",
            e.cannot_be()
        ))
    })?;
    let secrets = cfg.mux_signing_secrets();
    if secrets.is_empty() {
        return Err(no_lifecycle_secret(id));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    super::mux::signature::verify_header(signature, raw, &secrets, now, super::mux::DEFAULT_TOLERANCE_SECS)
        .map_err(|e| ApiError::UnauthorizedMsg(format!("{e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adapter(secret_digest: &str) -> SourceAdapter {
        serde_json::from_value(serde_json::json!({
            "adapter_type": "generic_webhook", "enabled": true, "batching": {"mode": "immediate"},
            "webhook_secret_sha256": secret_digest, "configured_at": ""
        }))
        .unwrap()
    }

    #[test]
    fn a_proof_holds_only_for_the_revision_it_was_made_against() {
        let by_secret = verdict(7, SecretCheck::Matches, None, false, false);
        let Verdict::Authentic(p) = by_secret else { panic!("{by_secret:?}") };
        assert!(p.holds(7, 0) && p.holds(7, 99), "a secret does not depend on the connections");
        assert!(!p.holds(8, 0), "another actor start: another adapter, maybe another secret");
        let native = verdict(7, SecretCheck::Absent, Some((NativeCheck::Valid, 3)), true, true);
        let Verdict::Authentic(p) = native else { panic!("{native:?}") };
        assert!(p.holds(7, 3));
        assert!(!p.holds(7, 4), "a connection changed since the signature was checked");
        assert!(!p.holds(6, 3));
    }

    #[test]
    fn the_verdict_takes_a_secret_or_a_valid_signature() {
        use super::super::mux::MuxSignatureError as E;
        let refusal = |v: Verdict| match v {
            Verdict::Unauthorized(r) => (r.refusal.kind(), r.message()),
            other => panic!("{other:?}"),
        };
        let (kind, m) = refusal(verdict(1, SecretCheck::Absent, None, true, false));
        assert_eq!(kind, "no_signature");
        assert!(m.contains("X-Webhook-Secret") && m.contains("Mux-Signature"), "{m}");
        let (kind, m) = refusal(verdict(1, SecretCheck::Wrong, None, false, false));
        assert_eq!(kind, "wrong_webhook_secret");
        assert!(m.contains("does not match"), "{m}");
        let (_, m) = refusal(verdict(1, SecretCheck::Absent, Some((NativeCheck::Absent, 0)), false, true));
        assert!(m.contains("mux adapters only"), "{m}");
        let stale = Some((NativeCheck::Invalid(Refusal::Signature(E::Stale { skew_secs: 400 })), 0));
        let (kind, m) = refusal(verdict(1, SecretCheck::Wrong, stale, true, true));
        assert_eq!(kind, "stale_timestamp");
        assert!(m.contains("old") && m.contains("X-Webhook-Secret does not match"), "{m}");
        let future = Some((NativeCheck::Invalid(Refusal::Signature(E::Stale { skew_secs: -400 })), 0));
        let (kind, m) = refusal(verdict(1, SecretCheck::Absent, future, true, true));
        assert_eq!(kind, "future_timestamp");
        assert!(m.contains("in the future") && !m.contains("400"), "{m}");
        let conn = ConnectionId::generate();
        let none = Some((NativeCheck::Invalid(Refusal::NoSigningSecret { connection_id: Some(conn.clone()) }), 0));
        let (kind, m) = refusal(verdict(1, SecretCheck::Absent, none, true, true));
        assert_eq!(kind, "no_signing_secret");
        assert!(m.contains(&format!("PATCH /v1/organizations/connections/{conn}")), "{m}");
        let unreadable = Some((NativeCheck::Unreadable("key".into()), 0));
        assert_eq!(
            verdict(1, SecretCheck::Absent, unreadable.clone(), true, true),
            Verdict::Unverifiable("key".into())
        );
        assert!(
            matches!(verdict(1, SecretCheck::Matches, unreadable, true, true), Verdict::Authentic(_)),
            "the secret authenticates"
        );
    }

    #[test]
    fn gates_are_published_per_start_and_withdrawn_by_their_own_actor_only() {
        let (secret, digest) = spec::new_secret();
        let gates = Gates::default();
        let id = BucketId::generate();
        let first = gates.publish(&id, &adapter(&digest));
        assert!(first.secret_matches(Some(&secret)) && !first.secret_matches(Some("nope")));
        assert!(!first.secret_matches(None));
        assert_eq!(gates.get(&id).map(|g| g.revision), Some(first.revision));
        // A successor publishes before its predecessor's state is dropped: it stays.
        let second = gates.publish(&id, &adapter(&digest));
        assert!(second.revision > first.revision);
        drop(first);
        assert_eq!(gates.get(&id).map(|g| g.revision), Some(second.revision));
        drop(second);
        assert!(gates.get(&id).is_none());
        // An unreadable stored digest matches nothing.
        let broken = gates.publish(&id, &adapter("zz"));
        assert!(!broken.secret_matches(Some("")) && !broken.secret_matches(Some("zz")));
        let before = gates.connections_revision();
        gates.connections_changed();
        assert_eq!(gates.connections_revision(), before + 1);
    }
}
