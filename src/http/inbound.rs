//! Inbound routes: source-adapter configuration, ingest, status, objects, batches, and the
//! Mux lifecycle webhook. Handlers parse and authenticate, then message the bucket's
//! adapter actor (or the registry); they never touch adapter state themselves.

use super::{HttpState, Request, Response};
use crate::error::ApiError;

/// `PATCH /v1/buckets/{bucket_id}`: configures the bucket's source adapter.
pub async fn patch_bucket(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let _ = id;
    Err(ApiError::Unavailable("source adapters are not implemented yet".into()))
}

/// Routes under `/v1/buckets/{id}/{source-adapter,objects,batches}` and `/v1/webhooks/…`.
pub async fn route(_state: &HttpState, _req: &Request, _segs: &[&str]) -> (&'static str, Response) {
    ("(unknown)", super::error_response(&super::not_found_route()))
}
