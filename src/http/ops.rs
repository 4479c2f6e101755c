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
    });
    Ok(json(if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body))
}

pub async fn metrics(state: &HttpState) -> Result<Response, ApiError> {
    crate::metrics::store_size(state.shared.store.size_on_disk());
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
