//! Admin routes for the catalog: connections and buckets.

use warp::http::StatusCode;

use super::page::Page;
use super::request::from_value;
use super::{empty, json, HttpState, Request, Response};
use crate::adapter::registry::not_found_bucket;
use crate::adapter::RegistryMsg;
use crate::ask;
use crate::catalog::bucket::CreateBucket;
use crate::catalog::connection::{CreateConnection, PatchConnection};
use crate::catalog::{Bucket, Connection};
use crate::error::ApiError;
use crate::ids::{BucketId, ConnectionId};
use crate::store::Keyspace;

/// Unpaged before pages existed: without `limit` a page holds every connection that fits in
/// its byte budget (in practice all of them: a view is a name, a type, two times and at most
/// a url; only a url of a megabyte would make one large).
pub async fn list_connections(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate_list(state, &["limit", "cursor"])?;
    let mut page = Page::results(req.page_limit_or(usize::MAX)?);
    let after = req.cursor(ConnectionId::is_generated)?;
    // Record by record: one this version cannot read (a newer one's, a damaged one) is listed
    // as such, with what to do, rather than failing the whole list.
    state.shared.store.for_each_after::<serde_json::Value>(Keyspace::CONNECTIONS, "", after, |key, v| {
        match serde_json::from_value::<Connection>(v) {
            Ok(c) => page.offer(key, &c.view(&state.shared.secrets)),
            Err(e) => page.offer(
                key,
                &serde_json::json!({"connection_id": key, "error": format!(
                    "this stored connection cannot be read ({e}): written by a newer hookline, or damaged; run the \
                     version that wrote it, or DELETE it (once no adapter uses it) and create it again"
                )}),
            ),
        }
    })?;
    Ok(page.finish())
}

pub async fn create_connection(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let body: CreateConnection = req.json()?;
    let (name, provider_type, config) = body.validate()?;
    let registry = state.shared.bucket_registry()?;
    let conn =
        ask!(registry, |reply| RegistryMsg::CreateConnection { name, provider_type, config: Box::new(config), reply })?;
    Ok(json(StatusCode::CREATED, &conn.view(&state.shared.secrets)))
}

fn parse_connection_id(id: &str) -> Result<ConnectionId, ApiError> {
    ConnectionId::parse(id).ok_or_else(|| ApiError::NotFound(format!("connection {id} not found")))
}

pub async fn get_connection(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let id = parse_connection_id(id)?;
    let conn: Connection = state
        .shared
        .store
        .get(Keyspace::CONNECTIONS, id.as_str())?
        .ok_or_else(|| ApiError::NotFound(format!("connection {id} not found")))?;
    Ok(json(StatusCode::OK, &conn.view(&state.shared.secrets)))
}

pub async fn patch_connection(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let connection_id = parse_connection_id(id)?;
    let body: PatchConnection = req.json()?;
    let registry = state.shared.bucket_registry()?;
    let conn = ask!(registry, |reply| RegistryMsg::UpdateConnection { connection_id, body: Box::new(body), reply })?;
    Ok(json(StatusCode::OK, &conn.view(&state.shared.secrets)))
}

pub async fn delete_connection(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    req.no_fields()?; // a DELETE with `{"dry_run": true}` must not delete
    let connection_id = parse_connection_id(id)?;
    let registry = state.shared.bucket_registry()?;
    let id = connection_id.clone();
    ask!(registry, |reply| RegistryMsg::DeleteConnection { connection_id, reply })?;
    state.lifecycle_refusals.forget(&id);
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn list_buckets(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate_list(state, &["limit", "cursor"])?;
    let ns = req.namespace()?;
    let mut page = Page::results(req.page_limit()?);
    // Buckets are keyed by ID (time-ordered), filtered by namespace while scanning. The
    // cursor's bucket need not exist any more (deleted meanwhile).
    let after = req.cursor(BucketId::is_generated)?;
    state.shared.store.for_each_after::<Bucket>(Keyspace::BUCKETS, "", after, |key, b| {
        b.namespace != ns || page.offer(key, &super::inbound::bucket_view(state, &b))
    })?;
    Ok(page.finish())
}

pub async fn create_bucket(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let namespace = req.namespace()?;
    let body: CreateBucket = from_value(req.json_value()?)?;
    body.validate()?;
    let registry = state.shared.bucket_registry()?;
    let bucket = ask!(registry, |reply| RegistryMsg::CreateBucket { namespace, body, reply })?;
    Ok(json(StatusCode::CREATED, &super::inbound::bucket_view(state, &bucket)))
}

/// Loads a bucket visible in the request's namespace (404 otherwise).
pub fn load_bucket(state: &HttpState, req: &Request, id: &str) -> Result<Bucket, ApiError> {
    let ns = req.namespace()?;
    let Some(bucket_id) = BucketId::parse(id) else {
        return Err(ApiError::NotFound(format!("bucket {id} not found in this namespace")));
    };
    match state.shared.store.get::<Bucket>(Keyspace::BUCKETS, bucket_id.as_str())? {
        Some(b) if b.namespace == ns => Ok(b),
        _ => Err(not_found_bucket(&bucket_id, &ns)),
    }
}

pub async fn get_bucket(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let bucket = load_bucket(state, req, id)?;
    Ok(json(StatusCode::OK, &super::inbound::bucket_view(state, &bucket)))
}

pub async fn delete_bucket(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    req.no_fields()?; // a DELETE with `{"dry_run": true}` must not delete
    let namespace = req.namespace()?;
    let bucket_id =
        BucketId::parse(id).ok_or_else(|| ApiError::NotFound(format!("bucket {id} not found in this namespace")))?;
    let registry = state.shared.bucket_registry()?;
    let id = bucket_id.clone();
    ask!(registry, |reply| RegistryMsg::DeleteBucket { namespace, bucket_id, reply })?;
    state.refusals.forget(&id);
    Ok(empty(StatusCode::NO_CONTENT))
}
