//! `POST /v1/buckets/{bucket_id}/objects/{object_id}/alerts`: raise an alert on an object
//! (see `adapter::alert`). The handler parses and authenticates, then asks the bucket's
//! adapter actor, found by name as ingest does; without one (no adapter, or its actor is
//! stopped) it asks the bucket registry, which decides it. A classifier may raise an alert
//! per object, so alerts must not queue behind every admin write at the registry. It answers
//! once the alert's batch is durable: 202 `accepted`, or 200 `duplicate` for an `alert_id`
//! the object already has.

use warp::http::StatusCode;

use super::admin::load_bucket;
use super::page::Page;
use super::{json, HttpState, Request, Response};
use ractor::ActorRef;

use crate::adapter::actor::{AdapterMsg, AlertAnswer};
use crate::adapter::alert::{self, AlertBody, AlertRecord, AlertStatus, NewAlert};
use crate::adapter::records;
use crate::adapter::RegistryMsg;
use crate::ask;
use crate::error::ApiError;
use crate::ids::{AlertId, BucketId, ObjectId};
use crate::store::Keyspace;

pub async fn raise(state: &HttpState, req: &Request, id: &str, oid: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let namespace = req.namespace()?;
    let bucket_id =
        BucketId::parse(id).ok_or_else(|| ApiError::NotFound(format!("bucket {id} not found in this namespace")))?;
    let object_id =
        ObjectId::parse(oid).ok_or_else(|| ApiError::NotFound(format!("object {oid} not found in bucket {id}")))?;
    let alert = req.json::<AlertBody>()?.validate(object_id)?;
    // Its results reach alert.triggered's receivers and the writeback target: not rounded.
    super::request::refuse_rounded_integers(&req.body, || {
        vec![("results", serde_json::Value::Object(alert.results.clone()))]
    })?;
    let AlertAnswer { fired, commit } = match ask_actor(state, req, &bucket_id, &alert).await? {
        Some(answer) => answer,
        None => {
            let registry = state.shared.bucket_registry()?;
            ask!(registry, |reply| RegistryMsg::Alert { namespace, bucket_id, alert: Box::new(alert), reply })?
        }
    };
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

/// `GET …/objects/{object_id}/alerts`: the object's alerts, by `alert_id`, paged as the
/// other lists (`limit`, `cursor`: the `alert_id` of one of its alerts). Read from the store,
/// as the object is: what was answered is there. A 404 for an object that does not exist
/// (its alerts went with it).
pub async fn list(state: &HttpState, req: &Request, id: &str, oid: &str) -> Result<Response, ApiError> {
    req.authenticate_list(state, &["limit", "cursor"])?;
    let bucket = load_bucket(state, req, id)?;
    let not_found = || ApiError::NotFound(format!("object {oid} not found in bucket {id}"));
    let object_id = ObjectId::parse(oid).ok_or_else(not_found)?;
    let store = &state.shared.store;
    if !store.contains(Keyspace::OBJECTS, &records::key(&bucket.bucket_id, object_id.as_str()))? {
        return Err(not_found());
    }
    let mut page = Page::results(req.page_limit()?);
    let prefix = alert::object_prefix(&bucket.bucket_id, &object_id);
    // Alert IDs are the caller's, so a well-formed one (`AL1`, `zzz`) is not yet a cursor this
    // list handed out: it must name one of the object's alerts. A page's `next_cursor` always
    // does, since an alert goes only with its object (and the list with it, a 404).
    let after = match req.cursor(|c| AlertId::parse(c).is_some())?.and_then(AlertId::parse) {
        None => None,
        Some(alert_id) => {
            let key = alert::key(&bucket.bucket_id, &object_id, &alert_id);
            if !store.contains(alert::KS, &key)? {
                return Err(super::request::not_a_cursor());
            }
            Some(key)
        }
    };
    store.for_each_after(alert::KS, &prefix, after.as_deref(), |key, rec: AlertRecord| {
        page.offer(&key[prefix.len()..], &rec.view())
    })?;
    Ok(page.finish())
}

/// Asks the bucket's running adapter actor, after checking the bucket is in the request's
/// namespace. `None`: no actor runs (or it stopped before handling the alert): the registry
/// decides.
async fn ask_actor(
    state: &HttpState,
    req: &Request,
    bucket_id: &BucketId,
    alert: &NewAlert,
) -> Result<Option<AlertAnswer>, ApiError> {
    let Some(actor) = ActorRef::<AdapterMsg>::where_is(state.shared.names.adapter(bucket_id.as_str())) else {
        return Ok(None);
    };
    load_bucket(state, req, bucket_id.as_str())?;
    match ractor::call_t!(actor, |reply| AdapterMsg::Alert(Box::new(alert.clone()), reply), 30_000) {
        Ok(answer) => Ok(Some(answer?)),
        // Stopped with the alert unhandled (a PATCH restarts it): the registry finds its
        // successor, or decides itself.
        Err(ractor::RactorErr::Messaging(_)) => Ok(None),
        Err(e) => Err(ApiError::Unavailable(format!("the source adapter did not answer ({e}); retry"))),
    }
}
