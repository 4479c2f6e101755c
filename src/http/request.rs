//! A parsed request and the checks every handler shares: auth, namespace, JSON bodies.

use std::collections::HashMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use warp::http::{HeaderMap, Method};

use crate::catalog::{valid_namespace, DEFAULT_NAMESPACE};
use crate::error::ApiError;

use super::HttpState;

pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn new(method: Method, path: &str, query: &str, headers: HeaderMap, body: Bytes) -> Request {
        let query = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        Request { method, path: path.to_string(), query, headers, body }
    }

    /// Path segments, ignoring a trailing slash.
    pub fn segments(&self) -> Vec<&str> {
        segments(&self.path)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Requires a valid admin API key.
    pub fn authenticate(&self, state: &HttpState) -> Result<(), ApiError> {
        if state.keys.verify_header(self.header("authorization")) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized)
        }
    }

    /// The `X-Namespace` of the request (default `default`).
    pub fn namespace(&self) -> Result<String, ApiError> {
        match self.header("x-namespace") {
            None => Ok(DEFAULT_NAMESPACE.to_string()),
            Some(ns) if valid_namespace(ns) => Ok(ns.to_string()),
            Some(_) => Err(ApiError::BadRequest {
                code: "invalid_namespace",
                message: "X-Namespace must be 1–64 characters of letters, digits, - and _".into(),
            }),
        }
    }

    /// Refuses a declared non-JSON body (415). A missing Content-Type is accepted.
    pub fn require_json_content_type(&self) -> Result<(), ApiError> {
        match self.header("content-type") {
            None => Ok(()),
            Some(ct) => {
                let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                if mime == "application/json" || mime.ends_with("+json") {
                    Ok(())
                } else {
                    Err(ApiError::UnsupportedMediaType(format!("expected Content-Type: application/json, got {ct:?}")))
                }
            }
        }
    }

    /// The body as any JSON value: 415 for a non-JSON content type, 400 when it does not parse.
    pub fn json_value(&self) -> Result<serde_json::Value, ApiError> {
        self.require_json_content_type()?;
        parse_json(&self.body)
    }

    /// The body as `T`: 400 for malformed JSON, 422 naming the field for a wrong shape.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let value = self.json_value()?;
        from_value(value)
    }

    /// A query parameter parsed as `T`, 422 naming it when it does not parse.
    pub fn query_param<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.query.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| ApiError::validation(name, format!("invalid value {v:?}"))),
        }
    }

    /// A list endpoint's `limit`: 1 to [`MAX_PAGE`], 100 when absent; anything else is a 422
    /// (not silently another page size).
    pub fn page_limit(&self) -> Result<usize, ApiError> {
        match self.query_param::<usize>("limit")? {
            None => Ok(100),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(ApiError::validation("limit", format!("must be within 1–{MAX_PAGE}, got {n}"))),
        }
    }
}

/// The largest page a list endpoint returns.
pub const MAX_PAGE: usize = 1000;

/// Parses a body as JSON whatever its declared type: 400 when empty or malformed.
pub fn parse_json(body: &Bytes) -> Result<serde_json::Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest {
            code: "malformed_json",
            message: "request body is empty; expected JSON".into(),
        });
    }
    serde_json::from_slice(body).map_err(ApiError::bad_json)
}

/// A path's segments, empty ones (doubled or trailing slashes) left out: how the router sees it.
pub fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Deserializes a request body, mapping failures to 422 with the dot-path of the field. A
/// body must be a JSON object: serde would also take an array as a struct's fields by
/// position, and its errors would name Rust types.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    crate::error::deserialize_at(None, value)
}
