//! The operator's writeback routes, in the shape of the outbound deliveries' list and retry:
//! `GET /v1/buckets/{bucket_id}/source-adapter/writebacks?status=&limit=&cursor=` lists a
//! bucket's pending and dead writeback jobs (read straight from the store, as every list),
//! `GET …/writebacks/{writeback_id}` shows one, and `POST …/writebacks/{writeback_id}/retry`
//! re-queues a dead one through the bucket registry, which forwards it to the bucket's
//! adapter actor when it runs (see `adapter/writeback/operator.rs`); the answer waits until
//! the re-queue is on disk.

use warp::http::StatusCode;

use super::admin::load_bucket;
use super::inbound::{adapter_of, parse_bucket_id};
use super::page::Page;
use super::{json, HttpState, Request, Response};
use crate::adapter::actor::Requeued;
use crate::adapter::spec::SourceAdapter;
use crate::adapter::writeback::operator::{self, Status, WritebackId};
use crate::adapter::writeback::{self, Job};
use crate::adapter::RegistryMsg;
use crate::ask;
use crate::error::ApiError;
use crate::ids::BucketId;

/// Why a pending job is not sent now (its `next_attempt_at` may be past): writeback is off.
const HELD_OFF: &str =
    "writeback is off (source_adapter.writeback is missing or has enabled: false); sent when it is enabled again";
/// … or no adapter actor runs (stopped after failing repeatedly, say), so no worker does.
const HELD_STOPPED: &str =
    "the bucket's source adapter is not running (see GET …/source-adapter/status); sent once it runs again";

/// `GET …/source-adapter/writebacks`: jobs in `writeback_id` order, `status` pending or dead
/// (both when absent), paged like the objects list (`limit`, `cursor` = the last
/// `writeback_id` of the previous page).
pub async fn list(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate_list(state, &["status", "limit", "cursor"])?;
    let bucket = load_bucket(state, req, id)?;
    let adapter = adapter_of(&bucket)?;
    let status = match req.query.get("status") {
        None => None,
        Some(s) => Some(
            Status::parse(s)
                .ok_or_else(|| ApiError::validation("status", format!("{s:?} is not one of pending, dead")))?,
        ),
    };
    let limit = req.page_limit()?;
    let after =
        req.cursor(|c| WritebackId::parse(c).is_some_and(|id| id.of_generated_ids()))?.and_then(WritebackId::parse);
    let on = Showing {
        state,
        bucket_id: &bucket.bucket_id,
        adapter: Some(adapter),
        held: held(state, &bucket.bucket_id, adapter),
    };
    let mut page = Page::results(limit);
    // One more than a page: the page's refusal of it says that another page follows.
    operator::for_each(&state.shared.store, &bucket.bucket_id, status, after.as_ref(), limit + 1, |s, id, job| {
        page.offer(&id.to_string(), &shown(&on, s, id, &job))
    })?;
    Ok(page.finish())
}

/// `GET …/writebacks/{writeback_id}`: one job as the list shows it (pending or dead); 404
/// for an unknown one (or one written back and gone).
pub async fn get(state: &HttpState, req: &Request, id: &str, wid: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let bucket = load_bucket(state, req, id)?;
    let adapter = adapter_of(&bucket)?;
    let bucket_id = &bucket.bucket_id;
    let not_found = || ApiError::NotFound(format!("writeback {wid} not found in bucket {bucket_id}"));
    let writeback_id = WritebackId::parse(wid).ok_or_else(not_found)?;
    let on = Showing { state, bucket_id, adapter: Some(adapter), held: held(state, bucket_id, adapter) };
    match operator::find(&state.shared.store, bucket_id, &writeback_id)? {
        Some((status, job)) => Ok(json(StatusCode::OK, &shown(&on, status, &writeback_id, &job))),
        None => Err(not_found()),
    }
}

/// `POST …/writebacks/{writeback_id}/retry`: 202 with the job, pending again, once that is
/// on disk; 409 for a pending job, 404 for an unknown one (or bucket, or adapter).
pub async fn retry(state: &HttpState, req: &Request, id: &str, wid: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    req.no_fields()?;
    let namespace = req.namespace()?;
    let bucket_id = parse_bucket_id(id)?;
    let writeback_id = WritebackId::parse(wid)
        .ok_or_else(|| ApiError::NotFound(format!("writeback {wid} not found in bucket {bucket_id}")))?;
    let registry = state.shared.bucket_registry()?;
    let Requeued { job, commit } = ask!(registry, |reply| RegistryMsg::RequeueWriteback {
        namespace,
        bucket_id: bucket_id.clone(),
        writeback_id: writeback_id.clone(),
        reply
    })?;
    if let Some(c) = commit {
        c.finish().await?;
    }
    // (Re-queued and durable: a bucket changed meanwhile only loses the hint.)
    let bucket = load_bucket(state, req, id).ok();
    let adapter = bucket.as_ref().and_then(|b| b.source_adapter.as_ref());
    let on = Showing { state, bucket_id: &bucket_id, adapter, held: adapter.and_then(|a| held(state, &bucket_id, a)) };
    Ok(json(StatusCode::ACCEPTED, &shown(&on, Status::Pending, &writeback_id, &job)))
}

/// Why the bucket's pending jobs wait, when nothing sends them now.
fn held(state: &HttpState, bucket_id: &BucketId, adapter: &SourceAdapter) -> Option<&'static str> {
    if !writeback::sends(adapter) {
        return Some(HELD_OFF);
    }
    (super::inbound::actor_state(state, bucket_id) == "stopped").then_some(HELD_STOPPED)
}

/// How the jobs of one bucket are shown: what [`shown`] needs besides the job.
struct Showing<'a> {
    state: &'a HttpState,
    bucket_id: &'a BucketId,
    adapter: Option<&'a SourceAdapter>,
    held: Option<&'static str>,
}

/// A job as the API shows it; a pending one that waits says why in `held`, and one whose
/// row was re-keyed since it was queued shows the key its next attempt writes (the worker
/// takes it then). That key is a hint: an object that cannot be read leaves the job's own
/// (logged), rather than failing the answer (a retry's is given once the job is re-queued).
fn shown(on: &Showing<'_>, status: Status, id: &WritebackId, job: &Job) -> serde_json::Value {
    let mut view = operator::view(status, id, job);
    if status == Status::Pending {
        if let Some(why) = on.held {
            view["held"] = why.into();
        }
        if let Some(adapter) = on.adapter {
            match writeback::next_external_id(&on.state.shared.store, on.bucket_id, adapter, job) {
                Ok(Some(now)) => view["external_id"] = now.into(),
                Ok(None) => {}
                Err(e) => tracing::error!(bucket_id = %on.bucket_id, object_id = %job.object_id, error = %e,
                    "read a writeback's object for its current key; showing the key it was queued with"),
            }
        }
    }
    view
}
