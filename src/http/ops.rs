//! Operational routes: liveness, readiness, metrics, and (opt-in) fault injection.

use ractor::ActorRef;
use warp::http::StatusCode;

use super::{json, HttpState, Request, Response};
use crate::adapter::RegistryMsg;
use crate::delivery::DeliveryMsg;
use crate::error::ApiError;

pub async fn healthz(_state: &HttpState) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &serde_json::json!({"status": "ok"})))
}

/// Ready when the store answers and the registries are running.
pub async fn readyz(state: &HttpState) -> Result<Response, ApiError> {
    let store_ok = state.shared.store.healthy()
        && state.shared.store.contains(crate::store::Keyspace::META, "format_version").unwrap_or(false);
    let names = &state.shared.names;
    let buckets_ok = ActorRef::<RegistryMsg>::where_is(names.bucket_registry()).is_some();
    let delivery_ok = ActorRef::<DeliveryMsg>::where_is(names.delivery_registry()).is_some();
    let ready = store_ok && buckets_ok && delivery_ok;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "store": store_ok,
        "bucket_registry": buckets_ok,
        "delivery_registry": delivery_ok,
        // Still ready when false (reads, deletes and deliveries go on), but new objects and
        // published events are refused until space is freed (`storage.min_free_mb`).
        "disk_room": !state.shared.room.short(),
    });
    Ok(json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body))
}

pub async fn metrics(state: &HttpState) -> Result<Response, ApiError> {
    crate::metrics::store_size(state.shared.store.size_on_disk());
    // What is left for the store to grow into: a write the disk refuses fails the store (and
    // stops the daemon), so this is the gauge to alert on, well before it reaches 0.
    // The last sample (`app.rs` takes one every second; one here could land out of order).
    let free = state.shared.room.available();
    if free != u64::MAX {
        crate::metrics::store_disk_available(free);
    }
    let mut resp = Response::new(state.metrics.render().into());
    resp.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(resp)
}

/// `POST /v1/debug/crash/{actor}`: makes a supervised actor fail, to prove it is restarted.
/// Only routed when `server.enable_debug_endpoints` is on.
pub async fn crash(state: &HttpState, req: &Request, actor: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let names = &state.shared.names;
    let sent = match actor {
        "bucket_registry" => {
            ActorRef::<RegistryMsg>::where_is(names.bucket_registry()).map(|a| a.cast(RegistryMsg::Crash).is_ok())
        }
        "delivery_registry" => {
            ActorRef::<DeliveryMsg>::where_is(names.delivery_registry()).map(|a| a.cast(DeliveryMsg::Crash).is_ok())
        }
        // `delivery.{webhook_id}`: that webhook's delivery actor.
        a if a.starts_with("delivery.") => {
            ActorRef::<crate::delivery::worker::WorkerMsg>::where_is(names.delivery(&a["delivery.".len()..]))
                .map(|r| r.cast(crate::delivery::worker::WorkerMsg::Crash).is_ok())
        }
        // `adapter.{bucket_id}`: that bucket's source-adapter actor.
        a if a.starts_with("adapter.") => {
            ActorRef::<crate::adapter::actor::AdapterMsg>::where_is(names.adapter(&a["adapter.".len()..]))
                .map(|r| r.cast(crate::adapter::actor::AdapterMsg::Crash).is_ok())
        }
        _ => return Err(ApiError::NotFound(format!("no crashable actor {actor:?}"))),
    };
    match sent {
        Some(true) => Ok(json(StatusCode::ACCEPTED, &serde_json::json!({"crashing": actor}))),
        _ => Err(ApiError::Unavailable(format!("{actor} is not running"))),
    }
}

/// Ingests held by a test, after authentication and before their body is parsed and handed
/// to the actor (`/v1/debug/hold-ingest/{bucket_id}`): what makes a request racing a
/// change of its adapter (a rotated secret) reproducible, and shows that an unauthenticated
/// one never gets that far. Consulted only when `server.enable_debug_endpoints` is on (one
/// flag read per ingest otherwise).
#[derive(Default)]
pub struct IngestHolds {
    enabled: bool,
    /// Bucket ID → the armed hold.
    armed: std::sync::Mutex<std::collections::HashMap<String, Hold>>,
    /// Bucket ID → what releases its stalled adapter actor (see [`stall_adapter`]).
    stalls: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Semaphore>>>,
}

struct Hold {
    /// How many ingests reached the hold since it was armed.
    reached: usize,
    /// No permits: waiters wake when it is closed (released).
    release: std::sync::Arc<tokio::sync::Semaphore>,
}

impl IngestHolds {
    pub fn new(enabled: bool) -> IngestHolds {
        IngestHolds { enabled, armed: Default::default(), stalls: Default::default() }
    }

    fn armed(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Hold>> {
        lock(&self.armed)
    }

    /// Waits while a hold is armed for the bucket; true if it waited.
    pub async fn hold(&self, bucket_id: &crate::ids::BucketId) -> bool {
        if !self.enabled {
            return false;
        }
        let release = match self.armed().get_mut(bucket_id.as_str()) {
            Some(h) => {
                h.reached += 1;
                h.release.clone()
            }
            None => return false,
        };
        // Closed on release: the acquire then fails, and the request goes on.
        let _ = release.acquire().await;
        true
    }
}

/// `POST` arms a hold on the bucket's ingests, `GET` says how many reached it
/// (`{"reached": n}`), `DELETE` releases them and disarms it. Debug endpoints only.
pub async fn hold_ingest(state: &HttpState, req: &Request, bucket_id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let mut armed = state.holds.armed();
    let reached = match req.method {
        warp::http::Method::POST => {
            armed
                .entry(bucket_id.to_string())
                .or_insert_with(|| Hold { reached: 0, release: std::sync::Arc::new(tokio::sync::Semaphore::new(0)) });
            0
        }
        warp::http::Method::DELETE => armed.remove(bucket_id).map_or(0, |h| {
            h.release.close();
            h.reached
        }),
        _ => armed.get(bucket_id).map_or(0, |h| h.reached),
    };
    Ok(json(StatusCode::OK, &serde_json::json!({"reached": reached})))
}

/// How long `POST /v1/debug/stall-adapter` waits for the actor to take the stall.
const STALL_TAKEN: std::time::Duration = std::time::Duration::from_secs(10);

/// `POST /v1/debug/stall-adapter/{bucket_id}` makes the bucket's adapter actor wait, as
/// an actor busy with a long task would (indexing after a takeover), until `DELETE` on the
/// same path: what makes "a busy bucket holds up no other" testable. Debug endpoints only.
pub async fn stall_adapter(state: &HttpState, req: &Request, bucket_id: &str) -> Result<Response, ApiError> {
    use crate::adapter::actor::AdapterMsg;
    req.authenticate(state)?;
    let release = match req.method {
        warp::http::Method::POST => {
            let actor = ActorRef::<AdapterMsg>::where_is(state.shared.names.adapter(bucket_id))
                .ok_or_else(|| ApiError::NotFound(format!("no running source adapter for bucket {bucket_id}")))?;
            let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
            // An earlier stall is released first, or the actor could not take this one.
            if let Some(earlier) = lock(&state.holds.stalls).insert(bucket_id.to_string(), release.clone()) {
                earlier.close();
            }
            // Answered once the actor has taken the stall: a stop sent after this answer can
            // no longer overtake it (ractor takes a stop before queued messages).
            let taken = actor.call(|reply| AdapterMsg::Stall(release.clone(), reply), Some(STALL_TAKEN)).await;
            if !matches!(taken, Ok(ractor::rpc::CallResult::Success(()))) {
                release.close();
                lock(&state.holds.stalls).remove(bucket_id);
                return Err(ApiError::Unavailable(format!(
                    "the adapter actor did not take the stall within {} s",
                    STALL_TAKEN.as_secs()
                )));
            }
            None
        }
        _ => lock(&state.holds.stalls).remove(bucket_id),
    };
    if let Some(earlier) = release {
        earlier.close();
    }
    Ok(json(StatusCode::OK, &serde_json::json!({"stalled": req.method == warp::http::Method::POST})))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `GET /v1/debug/buffer/{bucket_id}`: the adapter's batch buffer, its byte count as kept
/// and as recomputed from its entries (tests check they are equal). Debug endpoints only.
pub async fn buffer(state: &HttpState, req: &Request, bucket_id: &str) -> Result<Response, ApiError> {
    use crate::adapter::actor::AdapterMsg;
    req.authenticate(state)?;
    let actor = ActorRef::<AdapterMsg>::where_is(state.shared.names.adapter(bucket_id))
        .ok_or_else(|| ApiError::NotFound(format!("no running source adapter for bucket {bucket_id}")))?;
    let bytes = ractor::call_t!(actor, AdapterMsg::BufferBytes, 30_000)
        .map_err(|e| ApiError::Unavailable(format!("actor did not answer: {e}")))?;
    Ok(json(StatusCode::OK, &bytes))
}
