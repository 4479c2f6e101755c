//! Provider-native signature checks (Mux's `Mux-Signature`), run by the HTTP task before a
//! request reaches an actor.
//!
//! Why here and not in the actors: an HMAC over a 1 MiB body costs milliseconds, once per
//! signing secret (a connection may hold ten), and an actor handles one message at a time.
//! Checked inside the bucket's adapter actor (ingest) or the bucket registry (lifecycle
//! webhooks), a flood of bogus signatures with a fresh timestamp stalled that bucket's
//! ingest, or every admin write, by seconds. The HTTP tasks run in parallel and hold no
//! state; the actor is told the outcome.
//!
//! This module reads the catalog (a bucket's adapter, a connection) from the store and
//! decrypts a connection for one check; it writes nothing and must not touch actor state.

use bytes::Bytes;

use super::kind::{self, NativeSignature, SignatureHeaders};
use super::spec::SourceAdapter;
use crate::catalog::{Bucket, Connection, ProviderType};
use crate::error::ApiError;
use crate::ids::{BucketId, ConnectionId};
use crate::state::Shared;
use crate::store::Keyspace;

/// What the HTTP task found out about a request's native signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NativeCheck {
    /// No native signature header, or an adapter type without a native scheme.
    Absent,
    Valid,
    Invalid,
    /// The request carries a native signature, but the adapter's signing secrets cannot be
    /// read (a master key that does not open them): neither valid nor the sender's fault.
    Unreadable(String),
}

/// Checks the native signature of an ingest request against the bucket's adapter as stored.
pub fn ingest(shared: &Shared, bucket_id: &BucketId, headers: &SignatureHeaders, raw: &Bytes) -> NativeCheck {
    if headers.mux_signature.is_none() {
        return NativeCheck::Absent;
    }
    let adapter = match shared.store.get::<Bucket>(Keyspace::BUCKETS, bucket_id.as_str()) {
        Ok(Some(b)) => b.source_adapter,
        // The actor answers for a missing bucket or adapter; a store error is its to report.
        _ => None,
    };
    let Some(adapter) = adapter.filter(|a| a.adapter_type == ProviderType::Mux) else {
        return NativeCheck::Absent;
    };
    match credentials(shared, bucket_id, &adapter) {
        Err(e) => NativeCheck::Unreadable(e),
        Ok(creds) => match kind::native_signature(adapter.adapter_type, headers, raw, creds.as_ref()) {
            NativeSignature::Absent => NativeCheck::Absent,
            NativeSignature::Valid => NativeCheck::Valid,
            NativeSignature::Invalid => NativeCheck::Invalid,
        },
    }
}

/// Decrypts an adapter's credentials: its connection, or its inline credentials (`None`: it
/// has neither). Called per event that needs them; the caller drops them when done. Never
/// logged. An error (a connection that cannot be read or opened, e.g. after the master key
/// changed) is logged here and returned without details.
pub fn credentials(
    shared: &Shared,
    bucket_id: &BucketId,
    adapter: &SourceAdapter,
) -> Result<Option<crate::catalog::connection::ProviderConfig>, String> {
    use crate::catalog::connection::ProviderConfig;
    let secrets = &shared.secrets;
    let failed = |what: &str| format!("the adapter's credentials could not be {what}; see the daemon log");
    if let Some(id) = &adapter.connection_id {
        return match shared.store.get::<Connection>(Keyspace::CONNECTIONS, id.as_str()) {
            Ok(Some(c)) => match c.open(secrets) {
                Ok(cfg) => Ok(Some(cfg)),
                Err(e) => {
                    tracing::error!(bucket_id = %bucket_id, connection_id = %id, error = %e, "open connection");
                    Err(failed("decrypted"))
                }
            },
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::error!(bucket_id = %bucket_id, connection_id = %id, error = %e, "read connection");
                Err(failed("read"))
            }
        };
    }
    let Some(sealed) = adapter.sealed_credentials.as_ref() else { return Ok(None) };
    match secrets.open(sealed, bucket_id.as_str()) {
        Ok(plain) => Ok(ProviderConfig::decode(adapter.adapter_type, &plain).ok()),
        Err(e) => {
            tracing::error!(bucket_id = %bucket_id, error = %e, "open inline credentials");
            Err(failed("decrypted"))
        }
    }
}

/// Verifies a Mux lifecycle webhook (`POST /v1/webhooks/mux/{connection_id}`) against the
/// connection's signing secrets: 404 for an unknown or non-Mux connection, 401 for a
/// missing or bad signature, 503 when the connection cannot be decrypted.
pub fn lifecycle(shared: &Shared, id: &ConnectionId, signature: Option<&str>, raw: &Bytes) -> Result<(), ApiError> {
    let conn: Connection = shared
        .store
        .get(Keyspace::CONNECTIONS, id.as_str())?
        .ok_or_else(|| ApiError::NotFound(format!("connection {id} not found")))?;
    if conn.provider_type != ProviderType::Mux {
        return Err(ApiError::NotFound(format!("connection {id} is not a mux connection")));
    }
    // Not the sender's fault, and not a crash: 503, so Mux retries once the operator has
    // restored the master key (the log says which connection).
    let cfg = conn.open(&shared.secrets).map_err(|e| {
        tracing::error!(connection_id = %id, error = %e, "open connection");
        ApiError::Unavailable(format!(
            "connection {id}'s credentials cannot be decrypted with the current master key, so \
             Mux-Signature cannot be checked; see the daemon log"
        ))
    })?;
    let secrets = cfg.mux_signing_secrets();
    if secrets.is_empty() {
        return Err(ApiError::UnauthorizedMsg(format!(
            "connection {id} has no webhook_signing_secret, so Mux-Signature cannot be verified"
        )));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    super::mux::signature::verify_header(signature, raw, &secrets, now, super::mux::DEFAULT_TOLERANCE_SECS)
        .map_err(|e| ApiError::UnauthorizedMsg(format!("{e}")))
}
