//! `POST /v1/buckets/{bucket_id}/objects/{object_id}/alerts`: raise an alert on an object
//! (see `adapter::alert`). The handler parses and authenticates, then asks the bucket
//! registry, which forwards to the bucket's adapter actor when it runs; it answers once the
//! alert's batch is durable: 202 `accepted`, or 200 `duplicate` for an `alert_id` the
//! object already has.

use warp::http::StatusCode;

use super::{json, HttpState, Request, Response};
use crate::adapter::actor::AlertAnswer;
use crate::adapter::alert::{AlertBody, AlertStatus};
use crate::adapter::RegistryMsg;
use crate::ask;
use crate::error::ApiError;
use crate::ids::{BucketId, ObjectId};

pub async fn raise(state: &HttpState, req: &Request, id: &str, oid: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let namespace = req.namespace()?;
    let bucket_id =
        BucketId::parse(id).ok_or_else(|| ApiError::NotFound(format!("bucket {id} not found in this namespace")))?;
    let object_id =
        ObjectId::parse(oid).ok_or_else(|| ApiError::NotFound(format!("object {oid} not found in bucket {id}")))?;
    let alert = req.json::<AlertBody>()?.validate(object_id)?;
    let registry = state.shared.bucket_registry()?;
    let AlertAnswer { fired, commit } =
        ask!(registry, |reply| RegistryMsg::Alert { namespace, bucket_id, alert: Box::new(alert), reply })?;
    if let Some(c) = commit {
        c.finish().await?;
    }
    crate::metrics::alert(fired.status.as_str());
    let status = match fired.status {
        AlertStatus::Accepted => StatusCode::ACCEPTED,
        AlertStatus::Duplicate => StatusCode::OK,
    };
    Ok(json(status, &fired.view()))
}
