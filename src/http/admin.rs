//! Admin routes for the catalog: connections and buckets.

use warp::http::StatusCode;

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

pub async fn list_connections(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    req.known_params(&[])?;
    let mut out = Vec::new();
    state.shared.store.for_each::<Connection>(Keyspace::CONNECTIONS, "", |_, c| {
        out.push(c.view(&state.shared.secrets));
        true
    })?;
    Ok(json(StatusCode::OK, &serde_json::json!({ "results": out })))
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
    let connection_id = parse_connection_id(id)?;
    let registry = state.shared.bucket_registry()?;
    ask!(registry, |reply| RegistryMsg::DeleteConnection { connection_id, reply })?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn list_buckets(state: &HttpState, req: &Request) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let ns = req.namespace()?;
    req.known_params(&["limit", "cursor"])?;
    let limit = req.page_limit()?;
    // Buckets are keyed by ID (time-ordered): a page starts just after its cursor, which
    // need not exist any more (deleted meanwhile).
    let cursor = match req.query.get("cursor") {
        None => None,
        Some(c) => match BucketId::parse(c) {
            Some(id) => Some(id.as_str().to_string()),
            None => return Err(ApiError::validation("cursor", "not a cursor returned by this endpoint")),
        },
    };
    let mut out: Vec<Bucket> = Vec::new();
    let mut last_key: Option<String> = None;
    let mut more = false;
    // Filtered by namespace while scanning.
    let from = cursor.as_deref().unwrap_or("");
    state.shared.store.for_each_from::<Bucket>(Keyspace::BUCKETS, "", from, |key, b| {
        if cursor.as_deref() == Some(key) || b.namespace != ns {
            return true;
        }
        if out.len() == limit {
            more = true;
            return false;
        }
        last_key = Some(key.to_string());
        out.push(b);
        true
    })?;
    let next_cursor = if more { last_key } else { None };
    let out: Vec<serde_json::Value> = out.iter().map(|b| super::inbound::bucket_view(state, b)).collect();
    Ok(json(StatusCode::OK, &serde_json::json!({ "results": out, "next_cursor": next_cursor })))
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
        _ => Err(not_found_bucket(&bucket_id)),
    }
}

pub async fn get_bucket(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let bucket = load_bucket(state, req, id)?;
    Ok(json(StatusCode::OK, &super::inbound::bucket_view(state, &bucket)))
}

pub async fn delete_bucket(state: &HttpState, req: &Request, id: &str) -> Result<Response, ApiError> {
    req.authenticate(state)?;
    let namespace = req.namespace()?;
    let bucket_id =
        BucketId::parse(id).ok_or_else(|| ApiError::NotFound(format!("bucket {id} not found in this namespace")))?;
    let registry = state.shared.bucket_registry()?;
    let id = bucket_id.clone();
    ask!(registry, |reply| RegistryMsg::DeleteBucket { namespace, bucket_id, reply })?;
    state.refusals.forget(&id);
    Ok(empty(StatusCode::NO_CONTENT))
}
