//! Inbound routes: source-adapter configuration, ingest, status, writebacks (in
//! `writebacks.rs`), objects (and their alerts, in `alerts.rs`), batches, and the Mux
//! lifecycle webhook. Handlers parse and authenticate, then message the bucket's adapter
//! actor (or the registry); they never touch adapter state themselves. Reads of objects,
//! batches and counters go straight to the store: everything acknowledged is there.

use std::time::Instant;

use ractor::ActorRef;
use serde::de::DeserializeOwned;
use warp::http::StatusCode;

use super::admin::load_bucket;
use super::page::Page;
use super::request::{from_value, MUX_SIGNATURE, X_WEBHOOK_SECRET};
use super::{empty, json, HttpState, Request, Response};
use crate::adapter::actor::{AdapterMsg, IngestAuth, IngestErr, IngestOk, IngestRequest, IngestStatus};
use crate::adapter::kind::{self, SignatureHeaders};
use crate::adapter::mux::Lifecycle;
use crate::adapter::records::{self, AdapterStats, BatchRecord, ObjectRecord, STATS_KEY};
use crate::adapter::registry::{LifecyclePlan, MuxWebhook, Patched};
use crate::adapter::spec::PatchBucket;
use crate::adapter::verify::{self, Gate, NativeCheck, Proof, Refused, SecretCheck, Verdict};
use crate::adapter::RegistryMsg;
use crate::ask;
use crate::catalog::Bucket;
use crate::error::ApiError;
use crate::ids::{BatchId, BucketId, ConnectionId, ObjectId};
use crate::store::Keyspace;

/// Routes under `/v1/buckets/{id}/{source-adapter,objects,batches}` and `/v1/webhooks/…`.
/// The ingest route's metrics label.
pub(super) const INGEST_ROUTE: &str = "/v1/buckets/{bucket_id}/source-adapter/ingest";
/// The Mux lifecycle route's metrics label.
const MUX_WEBHOOK_ROUTE: &str = "/v1/webhooks/mux/{connection_id}";

pub async fn route(state: &HttpState, req: &Request, segs: &[&str]) -> (&'static str, Response) {
    let m = req.method.clone();
    match segs {
        ["v1", "buckets", id, "source-adapter", "ingest"] => {
            methods!(m, INGEST_ROUTE, { POST => ingest(state, req, id) })
        }
        ["v1", "buckets", id, "source-adapter", "flush"] => {
            methods!(m, "/v1/buckets/{bucket_id}/source-adapter/flush", { POST => flush(state, req, id) })
        }
        ["v1", "buckets", id, "source-adapter", "status"] => {
            methods!(m, "/v1/buckets/{bucket_id}/source-adapter/status", { GET => status(state, req, id) })
        }
        ["v1", "buckets", id, "source-adapter", "writebacks"] => {
            methods!(m, "/v1/buckets/{bucket_id}/source-adapter/writebacks", {
                GET => super::writebacks::list(state, req, id)
            })
        }
        ["v1", "buckets", id, "source-adapter", "writebacks", wid] => {
            methods!(m, "/v1/buckets/{bucket_id}/source-adapter/writebacks/{writeback_id}", {
                GET => super::writebacks::get(state, req, id, wid)
            })
        }
        ["v1", "buckets", id, "source-adapter", "writebacks", wid, "retry"] => {
            methods!(m, "/v1/buckets/{bucket_id}/source-adapter/writebacks/{writeback_id}/retry", {
                POST => super::writebacks::retry(state, req, id, wid)
            })
        }
        ["v1", "buckets", id, "objects"] => {
            methods!(m, "/v1/buckets/{bucket_id}/objects", { GET => list_objects(state, req, id) })
        }
        ["v1", "buckets", id, "objects", oid] => methods!(m, "/v1/buckets/{bucket_id}/objects/{object_id}", {
            GET => get_object(state, req, id, oid),
            DELETE => delete_object(state, req, id, oid),
        }),
        ["v1", "buckets", id, "objects", oid, "alerts"] => {
            methods!(m, "/v1/buckets/{bucket_id}/objects/{object_id}/alerts", {
                GET => super::alerts::list(state, req, id, oid),
                POST => super::alerts::raise(state, req, id, oid)
            })
        }
        ["v1", "buckets", id, "batches"] => {
            methods!(m, "/v1/buckets/{bucket_id}/batches", { GET => list_batches(state, req, id) })
        }
        ["v1", "buckets", id, "batches", bid] => {
            methods!(m, "/v1/buckets/{bucket_id}/batches/{batch_id}", {
                GET => get_batch(state, req, id, bid),
                DELETE => delete_batch(state, req, id, bid),
            })
        }
        ["v1", "buckets", id, "batches", bid, "submit"] => {
            methods!(m, "/v1/buckets/{bucket_id}/batches/{batch_id}/submit", { POST => submit_batch(state, req, id, bid) })
        }
        ["v1", "webhooks", "mux", cid] => {
            methods!(m, MUX_WEBHOOK_ROUTE, { POST => async {
                let answer = mux_webhook(state, req, cid).await;
                if let Err(e) = &answer {
                    lifecycle_refused(state, cid, e);
                }
                answer
            } })
        }
        _ => ("(unknown)", super::error_response(&super::not_found_route())),
    }
}

pub(super) fn parse_bucket_id(id: &str) -> Result<BucketId, ApiError> {
    BucketId::parse(id).ok_or_else(|| ApiError::NotFound(format!("bucket {id} not found in this namespace")))
}

fn ingest_path(id: &BucketId) -> String {
    format!("/v1/buckets/{id}/source-adapter/ingest")
}

/// The full ingest URL when `server.public_url` is set.
fn webhook_url(state: &HttpState, id: &BucketId) -> Option<String> {
    state
        .shared
        .config
        .server
        .public_url
        .as_ref()
        .map(|base| format!("{}{}", base.trim_end_matches('/'), ingest_path(id)))
}

/// Fields a bucket PATCH refuses that a caller may well send, refused like any unknown field
/// but with what to do instead: a `webhook_secret` sent back (copied from an answer into the
/// next PATCH; the list of accepted fields alone does not say the secret is hookline's to
/// make), and the bucket's `bucket_name` and `bucket_schema`, fixed at creation.
fn patch_hint(e: ApiError) -> ApiError {
    let e = super::request::generated_secret_hint(
        e,
        "source_adapter.webhook_secret",
        "webhook secret",
        "adapter",
        "rotate_secret",
    );
    match e {
        // A bucket's name and schema are set when it is created: say so, rather than call
        // them unknown (they are fields of the bucket, just not of a PATCH).
        ApiError::Validation { field, .. } if field == "bucket_schema" || field == "bucket_name" => {
            let message = format!(
                "{field} is set when the bucket is created and cannot be changed; a PATCH takes source_adapter, \
                 description and rotate_secret (for another {field}, create a new bucket)"
            );
            ApiError::validation(field, message)
        }
        other => other,
    }
}

/// `PATCH /v1/buckets/{bucket_id}`: sets, replaces or (with `null`) removes the source
/// adapter; also `description`, and `rotate_secret`. The new webhook secret is in this
/// response only.
pub async fn patch_bucket(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let namespace = req.namespace()?;
    let bucket_id = parse_bucket_id(id)?;
    let body: PatchBucket = from_value(req.json_value()?).map_err(patch_hint)?;
    let (mut warnings, adapter_set) = match &body.source_adapter {
        Some(Some(sa)) => (sa.warnings(), true),
        _ => (Vec::new(), false),
    };
    let registry = state.shared.bucket_registry()?;
    let Patched { bucket, webhook_secret, warnings: done } = ask!(registry, |reply| RegistryMsg::PatchBucket {
        namespace,
        bucket_id: bucket_id.clone(),
        body: Box::new(body),
        reply
    })?;
    warnings.extend(done);
    if adapter_set {
        let sa = bucket.source_adapter.as_ref();
        warnings.extend(sa.and_then(|sa| verify::no_signing_secret(&state.shared, &bucket.bucket_id, sa)));
        warnings.extend(sa.and_then(|sa| kind::no_api_credentials(&state.shared, &bucket.bucket_id, sa)));
        warnings.extend(sa.and_then(|sa| kind::default_blob_unplaced(&bucket.bucket_schema, sa)));
    }
    let mut view = bucket_view(state, &bucket);
    if let (Some(sa), Some(secret)) = (view.get_mut("source_adapter").and_then(|v| v.as_object_mut()), webhook_secret) {
        sa.insert("webhook_secret".into(), secret.into());
    }
    if !warnings.is_empty() {
        view["warnings"] = warnings.into();
    }
    Ok(json(StatusCode::OK, &view))
}

/// A bucket as every endpoint shows it: with its adapter's `ingest_path` and `webhook_url`
/// (the URL to give the upstream, when `server.public_url` is set).
pub(super) fn bucket_view(state: &HttpState, bucket: &crate::catalog::Bucket) -> serde_json::Value {
    let mut view = bucket.view();
    if let Some(sa) = view.get_mut("source_adapter").and_then(|v| v.as_object_mut()) {
        sa.insert("ingest_path".into(), ingest_path(&bucket.bucket_id).into());
        sa.insert("webhook_url".into(), webhook_url(state, &bucket.bucket_id).into());
        // Not "(set; never shown)", which a PATCH reads as "keep them": sent back, the view
        // must not keep credentials nothing can read.
        if crate::adapter::unreadable::adapter_error(bucket, &state.shared.secrets).is_some() {
            let shown = crate::catalog::connection::SECRETS_UNREADABLE;
            sa.insert("connection".into(), serde_json::json!({ "credentials": shown }));
        }
    }
    view
}

/// `POST /v1/buckets/{bucket_id}/source-adapter/ingest`: no API key, no namespace (the
/// upstream knows neither); authenticated by signature or secret here, before the body is
/// parsed (see `adapter/verify.rs`).
async fn ingest(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (outcome, result) = ingest_inner(state, req, id).await;
    crate::metrics::ingest_request(id, outcome, started.elapsed());
    result
}

async fn ingest_inner(state: &HttpState, req: &Request, id: &str) -> (&'static str, Result<Response, ApiError>) {
    let Some(bucket_id) = BucketId::parse(id) else {
        return ("not_found", Err(ApiError::NotFound(format!("bucket {id} not found"))));
    };
    // An adapter restarting (after a PATCH of its bucket, or a supervised restart) is back
    // within moments: wait for it a little rather than answer 503 at once.
    let started = Instant::now();
    let mut wait_until = started + RESTART_WAIT;
    // How this task authenticated the request, once it found a running adapter's gate.
    let mut checked: Option<Proof> = None;
    let mut resent = false;
    // Set once this task answers 503 for a request still queued (see `IngestRequest`).
    let answered_503 = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reply = loop {
        let Some(actor) = ActorRef::<AdapterMsg>::where_is(state.shared.names.adapter(bucket_id.as_str())) else {
            match no_running_adapter(state, &bucket_id) {
                ApiError::Unavailable(_) if Instant::now() < wait_until => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
                e @ ApiError::Unavailable(_) => return ("unavailable", Err(e)),
                e => return ("not_found", Err(e)),
            }
        };
        let proof = match checked {
            Some(proof) => proof,
            None => {
                // An actor publishes its gate once started (and withdraws it when it stops):
                // until then, wait as for a restart. Nothing is sent to an actor before this
                // task has authenticated it, so an actor never parses or hashes an anonymous
                // body (only a request verified against a predecessor is checked again there).
                let Some(gate) = state.shared.gates.get(&bucket_id) else {
                    // An actor still in its start (loading a large dedup set can take
                    // seconds) is waited for as long as a queued request would have been.
                    let starting = actor.get_status() == ractor::ActorStatus::Starting
                        && started.elapsed() < std::time::Duration::from_millis(CALL_TIMEOUT_MS);
                    if Instant::now() < wait_until || starting {
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                    return (
                        "unavailable",
                        Err(ApiError::Unavailable("the bucket's source adapter is starting; retry".into())),
                    );
                };
                // Authenticated by its head already (a matching secret): not hashed again.
                let verdict = match req.head_proof {
                    Some(proof) => Verdict::Authentic(proof),
                    None => authenticate(state, gate, req).await,
                };
                let proof = match verdict {
                    Verdict::Authentic(proof) => proof,
                    Verdict::Unauthorized(refused) => {
                        return ("unauthorized", Err(refuse(state, &bucket_id, &refused)))
                    }
                    Verdict::Unverifiable(message) => return ("error", Err(unverifiable(&message))),
                };
                checked = Some(proof);
                if state.holds.hold(&bucket_id).await {
                    // A test held it (see `ops::IngestHolds`): the actor may have been
                    // replaced meanwhile; find it again, with a fresh wait.
                    wait_until = Instant::now() + RESTART_WAIT;
                    continue;
                }
                proof
            }
        };
        let msg = |reply| {
            AdapterMsg::Ingest(Box::new(IngestRequest {
                answered_503: answered_503.clone(),
                headers: SignatureHeaders {
                    webhook_secret: req.credential(&X_WEBHOOK_SECRET).map(String::from),
                    mux_signature: req.credential(&MUX_SIGNATURE).map(String::from),
                },
                raw: req.body.clone(),
                // Parsed whatever the declared Content-Type: upstreams often send JSON as
                // `text/plain` or untyped, and the contract answers "not JSON" with 400, never 415.
                auth: IngestAuth { proof, payload: req.payload_json() },
                reply,
            }))
        };
        match ractor::call_t!(actor, msg, CALL_TIMEOUT_MS) {
            Ok(r) => break r,
            // The actor stopped (a PATCH restarts it) with this request still queued: it was
            // not handled, so it goes to the new actor, which checks it again if its secrets
            // are not the ones it was verified against. (Were its handler to have failed
            // midway, the upstream would resend on a 503 all the same.)
            Err(ractor::RactorErr::Messaging(_)) if !resent => {
                // Once: a request whose handler failed must not restart the actor again and again.
                resent = true;
                // The wait for the new actor counts from now: the old one may have held the
                // request for seconds (a Mux API fetch in flight when a PATCH stopped it).
                wait_until = Instant::now() + RESTART_WAIT;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            // Busy (a Mux API fetch, a takeover's indexing): as for a restart, the upstream's
            // retry gets through, and the outcome says so (`error` is hookline's own failure).
            Err(ractor::RactorErr::Timeout) => {
                // The actor drops it if it has not begun it: the sender is told to retry.
                answered_503.store(true, std::sync::atomic::Ordering::Release);
                return (
                    "unavailable",
                    Err(ApiError::Unavailable("the source adapter did not answer within 30 s; retry later".into())),
                );
            }
            Err(_) => {
                return (
                    "unavailable",
                    Err(ApiError::Unavailable("the source adapter of this bucket is restarting; retry shortly".into())),
                )
            }
        }
    };
    match reply {
        Ok(IngestOk { status, object_id, object_ids, commit }) => {
            if let Some(c) = commit {
                if let Err(e) = c.finish().await {
                    return ("error", Err(e.into()));
                }
            }
            let body = IngestAnswer {
                handled: status != IngestStatus::Ignored,
                object_id: object_id.as_ref(),
                object_ids: matches!(status, IngestStatus::Updated | IngestStatus::Deleted).then_some(&object_ids),
                status: status.as_str(),
            };
            (status.as_str(), Ok(json(StatusCode::OK, &body)))
        }
        Err(IngestErr::Unauthorized(refused)) => ("unauthorized", Err(refuse(state, &bucket_id, &refused))),
        Err(IngestErr::Malformed(e, commit)) => {
            // The failure counter is part of the status: answer once it is stored.
            let _ = commit.finish().await;
            ("invalid", Err(e))
        }
        Err(IngestErr::Invalid { field, message, commit, .. }) => {
            // The failure counter is part of the status: answer once it is stored.
            let _ = commit.finish().await;
            ("invalid", Err(ApiError::validation(field, message)))
        }
        Err(IngestErr::Retry { message, commit }) => {
            let _ = commit.finish().await;
            // Not hookline's own error: a dependency's, which the upstream's retry may get past.
            tracing::warn!(bucket_id = %bucket_id, error = %message, "ingest answered 503: a dependency failed");
            ("dependency_failed", Err(ApiError::Unavailable(format!("{message}; retry later"))))
        }
        Err(IngestErr::Unverifiable(message)) => ("error", Err(unverifiable(&message))),
        // (Lifecycle changes only: an ingest's proof is checked again by the actor itself.)
        Err(IngestErr::Revoked(e)) => ("unauthorized", Err(e)),
        Err(IngestErr::ShortOfDisk) => ("low_disk", Err(ApiError::short_of_disk())),
        Err(IngestErr::Disabled) => (
            "disabled",
            Err(ApiError::Unavailable("the source adapter of this bucket is disabled; retry later".into())),
        ),
        Err(IngestErr::Gone) => {
            ("not_found", Err(ApiError::NotFound(format!("bucket {bucket_id} has no source adapter"))))
        }
    }
}

/// The answer to an accepted ingest (its fields in the order a JSON object of them had).
#[derive(serde::Serialize)]
struct IngestAnswer<'a> {
    handled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_id: Option<&'a crate::ids::ObjectId>,
    /// Updates and deletes only: every object the event changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    object_ids: Option<&'a Vec<crate::ids::ObjectId>>,
    status: &'static str,
}

/// What an upstream route's head tells before its body is read (see [`answer_before_body`]).
pub(super) enum Head {
    /// The answer: the body is not read.
    Answer(&'static str, Response),
    /// An ingest its secret authenticates: read the body, do not check it again.
    Authentic(Proof),
    /// Read the body; the handler decides.
    Read,
}

/// What an upstream route (ingest, Mux lifecycle) can tell from its head alone, before its
/// body is read. [`Head::Answer`] for an unknown bucket or connection (404), and for a
/// request that no body could authenticate (401: a wrong or missing `X-Webhook-Secret` where
/// no native signature can stand in for it). Bodies of upstream routes share one memory
/// budget (`server.max_upstream_body_memory_mb`): without this, anyone could spend it on
/// requests to buckets that do not exist, and make every ingest answer 503. Only a request
/// that could be authentic (a matching secret, or a well-formed, fresh `Mux-Signature` for a
/// Mux bucket or connection with a signing secret to check it) and one for an adapter still
/// starting have their bodies read. Called for POSTs only: no other method's body is read.
pub(super) fn answer_before_body(state: &HttpState, path: &str, headers: &warp::http::HeaderMap) -> Head {
    match super::request::segments(path).as_slice() {
        ["v1", "buckets", id, "source-adapter", "ingest"] => {
            let started = Instant::now();
            match ingest_head(state, id, headers) {
                Ok(Some(proof)) => Head::Authentic(proof),
                Ok(None) => Head::Read,
                Err((outcome, e)) => {
                    crate::metrics::ingest_request(id, outcome, started.elapsed());
                    Head::Answer(INGEST_ROUTE, super::error_response(&e))
                }
            }
        }
        ["v1", "webhooks", "mux", cid] => {
            let checked = match ConnectionId::parse(cid) {
                None => Err(ApiError::NotFound(format!("connection {cid} not found"))),
                Some(id) => {
                    let sent = headers.get_all(&MUX_SIGNATURE).iter().count();
                    let signature = super::request::sent_text(headers, &MUX_SIGNATURE);
                    verify::lifecycle_head(&state.shared, &id, signature.as_deref(), sent)
                }
            };
            match checked {
                Ok(()) => Head::Read,
                Err(e) => {
                    lifecycle_refused(state, cid, &e);
                    Head::Answer(MUX_WEBHOOK_ROUTE, super::error_response(&e))
                }
            }
        }
        _ => Head::Read,
    }
}

/// [`answer_before_body`] for an ingest: the refusal and its outcome label, the proof of a
/// request its secret authenticates, or `None` to read the body and go on.
fn ingest_head(
    state: &HttpState,
    id: &str,
    headers: &warp::http::HeaderMap,
) -> Result<Option<Proof>, (&'static str, ApiError)> {
    let header = |name| super::request::sent_text(headers, name);
    let (webhook_secret, mux_signature) = (header(&X_WEBHOOK_SECRET), header(&MUX_SIGNATURE));
    let (webhook_secret, mux_signature) = (webhook_secret.as_deref(), mux_signature.as_deref());
    let Some(bucket_id) = BucketId::parse(id) else {
        return Err(("not_found", ApiError::NotFound(format!("bucket {id} not found"))));
    };
    let gate = state.shared.gates.get(&bucket_id);
    if gate.is_none() {
        // No running adapter: 404 for a bucket without one.
        if let e @ ApiError::NotFound(_) = no_running_adapter(state, &bucket_id) {
            return Err(("not_found", e));
        }
    }
    // Answered here, the only place an ingest's head is read: every POST passes through it.
    if let Some(refused) = repeated_header(headers) {
        let e = match gate {
            Some(_) => refuse(state, &bucket_id, &refused),
            None => ApiError::UnauthorizedMsg(refused.message()),
        };
        return Err(("unauthorized", e));
    }
    // One starting or restarting is waited for with the body in hand, as before.
    let Some(gate) = gate else { return Ok(None) };
    let verdict = match head_verdict(&gate, webhook_secret, mux_signature) {
        Ok(verdict) => verdict,
        // The native signature decides: from the head, when no body could make it valid (no
        // signing secret, a malformed or stale header), else over the body.
        Err(secret) => match gate.native_head(&state.shared, mux_signature) {
            Some(native) => verify::verdict(gate.revision, secret, Some(native), gate.is_mux(), true),
            None => return Ok(None),
        },
    };
    match verdict {
        Verdict::Authentic(proof) => Ok(Some(proof)),
        Verdict::Unauthorized(refused) => Err(("unauthorized", refuse(state, &bucket_id, &refused))),
        Verdict::Unverifiable(_) => Ok(None),
    }
}

/// The refusal of an ingest that sends `X-Webhook-Secret` or `Mux-Signature` more than once.
fn repeated_header(headers: &warp::http::HeaderMap) -> Option<Refused> {
    [("X-Webhook-Secret", &X_WEBHOOK_SECRET), ("Mux-Signature", &MUX_SIGNATURE)].into_iter().find_map(
        |(name, header)| {
            let count = headers.get_all(header).iter().count();
            (count > 1).then(|| Refused::new(verify::Refusal::RepeatedHeader { name, count }))
        },
    )
}

/// The verdict on an ingest from its headers alone, when they decide it: a matching
/// `X-Webhook-Secret`, or a wrong or missing one that no native signature could stand in for.
/// `Err`: the native signature decides (with the secret's check, for the refusal's message),
/// from the head where it can ([`Gate::native_head`]), else over the body.
fn head_verdict(
    gate: &Gate,
    webhook_secret: Option<&str>,
    mux_signature: Option<&str>,
) -> Result<Verdict, SecretCheck> {
    let secret = SecretCheck::of(gate, webhook_secret);
    if secret == SecretCheck::Matches || !gate.has_native(mux_signature) {
        return Ok(verify::verdict(gate.revision, secret, None, gate.is_mux(), mux_signature.is_some()));
    }
    Err(secret)
}

/// The 401 for a refused ingest, recorded first as the bucket's last refused ingest (in
/// memory: see `http/refusals.rs`), with the full message the answer is made from.
fn refuse(state: &HttpState, bucket_id: &BucketId, refused: &Refused) -> ApiError {
    let message = refused.message();
    // The message holds no secret (see `Refusal::message`).
    note_refused(state, bucket_id, refused.refusal.kind(), &message);
    ApiError::UnauthorizedMsg(refused.answer(message))
}

/// Records a refused ingest as its bucket's last (in memory: see `http/refusals.rs`), and
/// logs it when due (rate-limited there). `message` must hold no secret.
pub(super) fn note_refused(state: &HttpState, bucket_id: &BucketId, kind: &'static str, message: &str) {
    if let Some(count) = state.refusals.record(bucket_id, kind, message) {
        tracing::warn!(bucket_id = %bucket_id, reason = kind, refused_since_start = count, "ingest refused: {message}");
    }
}

/// 503 for a native signature whose secrets cannot be read (e.g. after a master key change):
/// not the sender's fault, so the upstream retries once the operator has fixed the key.
/// Nothing is recorded (the request is not authenticated; the daemon log says why).
fn unverifiable(message: &str) -> ApiError {
    ApiError::Unavailable(format!("{message}, so Mux-Signature cannot be checked; retry later"))
}

/// Authenticates an ingest against its bucket's gate: `X-Webhook-Secret` first (a digest
/// comparison), else the native signature, in a signature-check slot (see [`in_check_slot`]).
async fn authenticate(state: &HttpState, gate: std::sync::Arc<Gate>, req: &Request) -> Verdict {
    let (signature, secret) = (req.credential(&MUX_SIGNATURE), req.credential(&X_WEBHOOK_SECRET));
    let signature = signature.as_deref();
    let secret = match head_verdict(&gate, secret.as_deref(), signature) {
        Ok(verdict) => return verdict,
        Err(secret) => secret,
    };
    let (mux, signed) = (gate.is_mux(), signature.is_some());
    let revision = gate.revision;
    let (shared, signature, body) = (state.shared.clone(), signature.map(str::to_string), req.body.clone());
    let native = in_check_slot(state, body.len(), move || gate.native(&shared, signature.as_deref(), &body)).await;
    let native = native.unwrap_or_else(|e| {
        let message = match e {
            ApiError::Internal(e) => e.to_string(),
            other => other.to_string(),
        };
        (NativeCheck::Unreadable(message), 0)
    });
    verify::verdict(revision, secret, Some(native), mux, signed)
}

/// Runs a signature check in one of [`HttpState::signature_checks`]' slots, held for the
/// check only. Every check takes one, small bodies too (ten secrets over 63 KiB are still
/// 630 KiB of hashing); a small body is hashed right here, a large one on the blocking pool,
/// so that milliseconds of hashing do not hold up this worker's other connections.
async fn in_check_slot<T: Send + 'static>(
    state: &HttpState,
    body_len: usize,
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let _slot = state
        .signature_checks
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
    if body_len < 16 << 10 {
        return Ok(check());
    }
    tokio::task::spawn_blocking(check)
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the signature check failed: {e}")))
}

/// How long an ingest waits for its bucket's adapter to come back before a 503.
const RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long an ingest waits for its adapter actor, queued or starting, before a 503.
const CALL_TIMEOUT_MS: u64 = 30_000;

/// 404 when the bucket or its adapter does not exist; 503 when it exists but its actor is
/// not running. Answered once a request has waited [`RESTART_WAIT`] (a restart takes
/// milliseconds), so the actor most likely stopped after repeated failures: the message
/// says where to look and how to start it again.
fn no_running_adapter(state: &HttpState, id: &BucketId) -> ApiError {
    match state.shared.store.get::<Bucket>(Keyspace::BUCKETS, id.as_str()) {
        Ok(Some(b)) if b.source_adapter.is_some() => ApiError::Unavailable(format!(
            "the source adapter of this bucket is not running (restarting, or stopped after failing repeatedly: \
             GET /v1/buckets/{id}/source-adapter/status says which, the daemon's log says why, and a PATCH of the \
             bucket starts it again); retry later"
        )),
        Ok(Some(_)) => ApiError::NotFound(format!("bucket {id} has no source adapter")),
        Ok(None) => ApiError::NotFound(format!("bucket {id} not found")),
        Err(e) => e.into(),
    }
}

/// A bucket's adapter; 404 without one (the `source-adapter/` routes' answer).
pub(super) fn adapter_of(bucket: &Bucket) -> Result<&crate::adapter::spec::SourceAdapter, ApiError> {
    bucket
        .source_adapter
        .as_ref()
        .ok_or_else(|| ApiError::NotFound(format!("bucket {} has no source adapter", bucket.bucket_id)))
}

/// `GET /v1/buckets/{bucket_id}/source-adapter/status`.
async fn status(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let bucket = load_bucket(state, req, id)?;
    let adapter = adapter_of(&bucket)?;
    let store = &state.shared.store;
    let prefix = records::prefix(&bucket.bucket_id);
    let buffered = store.count(Keyspace::BUFFER, &prefix)?;
    let stats: AdapterStats =
        store.get(Keyspace::STATS, &records::key(&bucket.bucket_id, STATS_KEY))?.unwrap_or_default();
    let (processed, failed) = stats.last_24h(crate::util::now_millis());
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "enabled": adapter.enabled,
            "adapter_type": adapter.adapter_type,
            "events_buffered": buffered,
            "events_processed_24h": processed,
            "events_failed_24h": failed,
            "last_flush_at": stats.last_flush_at,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
            "webhook_url": webhook_url(state, &bucket.bucket_id),
            "ingest_path": ingest_path(&bucket.bucket_id),
            "actor": actor_state(state, &bucket.bucket_id),
            "last_refused_ingest": state.refusals.view(&bucket.bucket_id),
        }),
    ))
}

/// The adapter actor's state, for the status endpoint: `running`, `starting` (loading its
/// dedup set, say) or `stopped` (none runs: between a crash and its restart, for a moment,
/// or for good after failing repeatedly, until a PATCH of the bucket starts it again).
pub(super) fn actor_state(state: &HttpState, id: &BucketId) -> &'static str {
    match ActorRef::<AdapterMsg>::where_is(state.shared.names.adapter(id.as_str())).map(|a| a.get_status()) {
        Some(ractor::ActorStatus::Running) => "running",
        Some(ractor::ActorStatus::Unstarted | ractor::ActorStatus::Starting) => "starting",
        _ => "stopped",
    }
}

/// The query parameters of [`page`]'s lists.
const PAGE_PARAMS: &[&str] = &["limit", "cursor"];

/// One page of `ks` under the bucket, after the `cursor` ID, each record as `show` gives it;
/// `next_cursor` when more remain. The caller took [`PAGE_PARAMS`] when it authenticated.
fn page<T: DeserializeOwned, S: serde::Serialize>(
    state: &HttpState,
    req: &Request,
    bucket: &Bucket,
    ks: Keyspace,
    valid_cursor: fn(&str) -> bool,
    show: fn(T) -> S,
) -> Result<Response, ApiError> {
    let mut page = Page::results(req.page_limit()?);
    let after = req.cursor(valid_cursor)?.map(|c| records::key(&bucket.bucket_id, c));
    let prefix = records::prefix(&bucket.bucket_id);
    state
        .shared
        .store
        .for_each_after(ks, &prefix, after.as_deref(), |key, item: T| page.offer(&key[prefix.len()..], &show(item)))?;
    Ok(page.finish())
}

async fn list_objects(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate_list(state, PAGE_PARAMS)?;
    let bucket = load_bucket(state, req, id)?;
    let show = |o: ObjectRecord| o.shown();
    page(state, req, &bucket, Keyspace::OBJECTS, ObjectId::is_generated, show)
}

fn parse_object_id(bucket: &Bucket, oid: &str) -> Result<ObjectId, ApiError> {
    ObjectId::parse(oid)
        .ok_or_else(|| ApiError::NotFound(format!("object {oid} not found in bucket {}", bucket.bucket_id)))
}

async fn get_object(state: &HttpState, req: &Request, id: &str, oid: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let bucket = load_bucket(state, req, id)?;
    let object_id = parse_object_id(&bucket, oid)?;
    let key = records::key(&bucket.bucket_id, object_id.as_str());
    if let Some(obj) = state.shared.store.get::<ObjectRecord>(Keyspace::OBJECTS, &key)? {
        return Ok(json(StatusCode::OK, &obj.shown()));
    }
    // An ID answered as `buffered` is not an object yet: say when it will be.
    if let Some(entry) = state.shared.store.get::<records::BufferEntry>(Keyspace::BUFFER, &key)? {
        let note = entry.not_yet_note(bucket.source_adapter.as_ref().map(|a| &a.batching));
        return Err(ApiError::NotFound(format!("{note}; DELETE removes it from the buffer")));
    }
    Err(ApiError::NotFound(format!("object {oid} not found in bucket {id}")))
}

/// `DELETE …/objects/{object_id}`: removes it and publishes `object.deleted`.
async fn delete_object(state: &HttpState, req: &Request, id: &str, oid: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    req.no_fields()?; // a DELETE with `{"dry_run": true}` must not delete
    let namespace = req.namespace()?;
    let bucket_id = parse_bucket_id(id)?;
    let object_id = ObjectId::parse(oid).ok_or_else(|| ApiError::NotFound(format!("object {oid} not found")))?;
    let registry = state.shared.bucket_registry()?;
    ask!(registry, |reply| RegistryMsg::DeleteObject { namespace, bucket_id, object_id, reply })?;
    Ok(empty(StatusCode::NO_CONTENT))
}

async fn list_batches(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate_list(state, PAGE_PARAMS)?;
    let bucket = load_bucket(state, req, id)?;
    let show = |b: BatchRecord| b;
    page(state, req, &bucket, Keyspace::BATCHES, BatchId::is_generated, show)
}

async fn get_batch(state: &HttpState, req: &Request, id: &str, bid: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let bucket = load_bucket(state, req, id)?;
    let not_found = || ApiError::NotFound(format!("batch {bid} not found in bucket {id}"));
    let batch_id = BatchId::parse(bid).ok_or_else(not_found)?;
    let rec: BatchRecord = state
        .shared
        .store
        .get(Keyspace::BATCHES, &records::key(&bucket.bucket_id, batch_id.as_str()))?
        .ok_or_else(not_found)?;
    Ok(json(StatusCode::OK, &rec))
}

/// What a change of one batch (a submit, a delete) takes from its request: the caller's
/// namespace and the two IDs. Neither takes fields.
fn batch_request(
    state: &HttpState,
    req: &Request,
    id: &str,
    bid: &str,
) -> Result<(String, BucketId, BatchId), ApiError> {
    req.authenticate(state)?;
    req.no_fields()?;
    let namespace = req.namespace()?;
    let bucket_id = parse_bucket_id(id)?;
    let batch_id =
        BatchId::parse(bid).ok_or_else(|| ApiError::NotFound(format!("batch {bid} not found in bucket {id}")))?;
    Ok((namespace, bucket_id, batch_id))
}

/// `DELETE …/batches/{batch_id}`: the batch's record goes (its objects stay), 204.
async fn delete_batch(state: &HttpState, req: &Request, id: &str, bid: &str) -> Result<Response, ApiError> {
    let (namespace, bucket_id, batch_id) = batch_request(state, req, id, bid)?;
    let registry = state.shared.bucket_registry()?;
    ask!(registry, |reply| RegistryMsg::DeleteBatch { namespace, bucket_id, batch_id, reply })?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// `POST …/source-adapter/flush`: buffered events become objects and batches now (a
/// `count` source's last partial batch, or a window cut short), answered once on disk.
async fn flush(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    req.no_fields()?;
    let namespace = req.namespace()?;
    let bucket_id = parse_bucket_id(id)?;
    let registry = state.shared.bucket_registry()?;
    let (commit, flushed) = ask!(registry, |reply| RegistryMsg::FlushAdapter { namespace, bucket_id, reply })?;
    commit.finish().await?;
    Ok(json(StatusCode::OK, &flushed))
}

/// `POST …/batches/{batch_id}/submit` (auto_submit off): 409 when already submitted.
async fn submit_batch(state: &HttpState, req: &Request, id: &str, bid: &str) -> Result<Response, ApiError> {
    let (namespace, bucket_id, batch_id) = batch_request(state, req, id, bid)?;
    let registry = state.shared.bucket_registry()?;
    let rec = ask!(registry, |reply| RegistryMsg::SubmitBatch { namespace, bucket_id, batch_id, reply })?;
    Ok(json(StatusCode::OK, &rec))
}

/// Logs a refused Mux lifecycle webhook of a known connection (a 401, a 503 that Mux will
/// retry, a 422), at most once a minute per connection and kind: the log is where an
/// operator finds why Mux's deliveries fail (an ingest's refusals are in its bucket's status
/// too). An unknown connection (404) is anyone's guess, and not logged.
fn lifecycle_refused(state: &HttpState, cid: &str, e: &ApiError) {
    let reason = match e {
        ApiError::UnauthorizedMsg(_) | ApiError::Unauthorized => "unauthorized",
        ApiError::Unavailable(_) => "unavailable",
        ApiError::Validation { .. } => "invalid",
        ApiError::BadRequest { .. } => "bad_request",
        ApiError::PayloadTooLarge(_) => "too_large",
        _ => return,
    };
    let Some(id) = ConnectionId::parse(cid) else { return };
    // The messages hold no secret: they name headers, connections and buckets.
    if let Some(count) = state.lifecycle_refusals.record(&id, reason, &e.to_string()) {
        tracing::warn!(connection_id = %id, reason, refused_since_start = count, "Mux lifecycle webhook refused ({}): {e}", e.status().as_u16());
    }
}

/// `POST /v1/webhooks/mux/{connection_id}`: Mux lifecycle events for the assets of one
/// connection. No API key: this handler checks `Mux-Signature` with the connection's
/// `webhook_signing_secret`, and the registry fans the change out to the adapters that use
/// the connection; this handler waits for each bucket's answer and its commit.
/// `video.asset.deleted` and `video.asset.updated` → `{"handled": true, "action",
/// "asset_id", "objects", "errors"}` (either without an asset id: 422); anything else →
/// `{"handled": false}`. A bucket that cannot take the change right now (its actor
/// restarting, the Mux API down) makes it 503, so Mux retries.
async fn mux_webhook(state: &HttpState, req: &Request, cid: &str) -> Result<Response, ApiError> {
    let connection_id =
        ConnectionId::parse(cid).ok_or_else(|| ApiError::NotFound(format!("connection {cid} not found")))?;
    // Verified here, not in the registry (see `adapter/verify.rs`).
    let signature = req.credential(&MUX_SIGNATURE).map(String::from);
    // Read before the check: a connection changed after it has each actor check it again.
    let revision = state.shared.gates.connections_revision();
    let (shared, id, body, sig) = (state.shared.clone(), connection_id.clone(), req.body.clone(), signature.clone());
    in_check_slot(state, req.body.len(), move || verify::lifecycle(&shared, &id, sig.as_deref(), &body)).await??;
    let check =
        verify::LifecycleCheck { connection_id: connection_id.clone(), revision, signature, raw: req.body.clone() };
    let webhook = MuxWebhook {
        connection_id,
        // Like an ingest body: parsed whatever the declared Content-Type.
        payload: req.payload_json(),
        check,
    };
    let registry = state.shared.bucket_registry()?;
    let LifecyclePlan { event_type, lifecycle, waits } =
        ask!(registry, |reply| RegistryMsg::MuxWebhook { webhook: Box::new(webhook), reply })?;
    let (action, asset_id) = match &lifecycle {
        Lifecycle::Deleted { asset_id } => ("deleted", asset_id),
        Lifecycle::Updated { asset_id } => ("updated", asset_id),
        Lifecycle::Other => {
            return Ok(json(StatusCode::OK, &serde_json::json!({"handled": false, "event_type": event_type})));
        }
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let mut retry = None;
    // A bucket that found the signature no longer holds (its secret rotated meanwhile).
    let mut revoked = None;
    // The Mux API refused a bucket's fetch of the asset (its token, say): 422, as on ingest,
    // so that Mux retries once the connection is fixed (changes are idempotent: the retry
    // re-applying the other buckets' is harmless).
    let mut refused = None;
    for (bucket_id, rx) in waits {
        let answer = match tokio::time::timeout(std::time::Duration::from_secs(30), rx).await {
            Ok(Ok(a)) => a,
            _ => {
                retry = Some(format!("the source adapter of bucket {bucket_id} did not answer; retry"));
                continue;
            }
        };
        match answer {
            Ok(IngestOk { object_ids, commit, .. }) => {
                if let Some(c) = commit {
                    c.finish().await?;
                }
                objects.extend(
                    object_ids.into_iter().map(|o| serde_json::json!({"bucket_id": bucket_id, "object_id": o})),
                );
            }
            Err(IngestErr::Invalid { field, message, commit, refused_fetch: true }) => {
                let _ = commit.finish().await;
                refused = Some((field, format!("bucket {bucket_id}: {message}")));
            }
            Err(IngestErr::Invalid { message, commit, .. }) => {
                // A mapping that cannot take the new asset will not on a retry either: report it.
                let _ = commit.finish().await;
                errors.push(serde_json::json!({"bucket_id": bucket_id, "message": message}));
            }
            Err(IngestErr::Retry { message, commit }) => {
                let _ = commit.finish().await;
                retry = Some(format!("bucket {bucket_id}: {message}; retry later"));
            }
            // (Lifecycle changes are not refused today; were they, Mux would retry.)
            Err(IngestErr::ShortOfDisk) => {
                retry = Some(format!("bucket {bucket_id}: hookline is short of disk space; retry later"));
            }
            // The adapter was removed meanwhile: it no longer uses the connection.
            Err(IngestErr::Gone) => {}
            Err(IngestErr::Revoked(e)) => revoked = Some(e),
            Err(
                IngestErr::Unauthorized(..)
                | IngestErr::Disabled
                | IngestErr::Malformed(..)
                | IngestErr::Unverifiable(_),
            ) => {}
        }
    }
    if let Some(e) = revoked {
        return Err(e);
    }
    if let Some(message) = retry {
        return Err(ApiError::Unavailable(message));
    }
    if let Some((field, message)) = refused {
        return Err(ApiError::validation(field, message));
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({
            "handled": true,
            "event_type": event_type,
            "action": action,
            "asset_id": asset_id,
            "objects": objects,
            "errors": errors,
        }),
    ))
}
