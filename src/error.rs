//! API errors and their one mapping to HTTP.
//!
//! Handlers return [`ApiError`]; `http/` turns it into the contract's JSON body
//! `{"error": {"code", "message"}}` with the fitting status. Internal errors are logged where
//! they are turned into a 500 and never leak details to the client.

use warp::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid API key; send it as Authorization: Bearer <key>")]
    Unauthorized,
    #[error("{0}")]
    UnauthorizedMsg(String),
    #[error("{0}")]
    NotFound(String),
    /// 405: `route` is the route's pattern, `allow` what it takes (also the `Allow` header).
    #[error("{method} is not allowed on {route}; use {}", one_of(&allowed(allow)))]
    MethodNotAllowed { method: String, route: &'static str, allow: &'static [&'static str] },
    #[error("{0}")]
    Conflict(String),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 408: the client did not send its whole body in time.
    #[error("request body not received within {0} s")]
    RequestTimeout(u64),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: a setting is invalid. `field` is the dot-path of the offending field.
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// The methods a route takes, as a 405 names them (message and `Allow` header): HEAD is
/// taken wherever GET is (see `http::methods!`).
pub fn allowed(allow: &[&'static str]) -> Vec<&'static str> {
    let mut all = allow.to_vec();
    if all.contains(&"GET") && !all.contains(&"HEAD") {
        all.push("HEAD");
    }
    all
}

/// `A`, `A or B`, `A, B or C`.
fn one_of(items: &[&str]) -> String {
    match items.split_last() {
        Some((last, [])) => last.to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation { field: field.into(), message: message.into() }
    }

    /// A 422 without the value its message quotes (see [`without_value`]); others as they are.
    pub fn unquoted(self) -> Self {
        match self {
            ApiError::Validation { field, message } => ApiError::Validation { field, message: without_value(&message) },
            other => other,
        }
    }

    /// 503 for new work while the data disk is under `storage.min_free_mb` (see
    /// `store/room.rs`). No figures: the sender may be anyone; the log and metrics have them.
    pub fn short_of_disk() -> Self {
        ApiError::Unavailable(
            "hookline is short of disk space and takes no new events until some is freed; nothing was stored: \
             retry later"
                .into(),
        )
    }

    pub fn bad_json(e: impl std::fmt::Display) -> Self {
        let e = e.to_string();
        // serde_json stops at its 128th level (its stack's guard): the body may well be JSON.
        if let Some(at) = e.strip_prefix("recursion limit exceeded") {
            return ApiError::BadRequest {
                code: "malformed_json",
                message: format!(
                    "request body nests arrays and objects deeper than 127 levels{at}, which hookline does not read"
                ),
            };
        }
        ApiError::BadRequest { code: "malformed_json", message: format!("request body is not valid JSON: {e}") }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::UnauthorizedMsg(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest { code, .. } => code,
            ApiError::Unauthorized | ApiError::UnauthorizedMsg(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Validation { .. } => "validation_failed",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// The JSON body. 5xx bodies say nothing about internals; messages are cut at
    /// [`MAX_MESSAGE_CHARS`].
    pub fn body(&self) -> serde_json::Value {
        let message = match self {
            ApiError::Internal(_) => "internal error; see the daemon logs".to_string(),
            // A message quotes what the client sent (an ID in the path, a field name): a
            // huge one is not echoed back whole.
            ApiError::NotFound(m) => unplaceholder(m),
            other => cut(other.to_string()),
        };
        let mut err = serde_json::json!({ "code": self.code(), "message": message });
        if let ApiError::Validation { field, .. } = self {
            err["field"] = serde_json::Value::String(cut(field.clone()));
        }
        serde_json::json!({ "error": err })
    }
}

/// A not-found message, [`cut`], that names a path segment still holding a placeholder
/// copied from the docs (`/v1/buckets/{bucket_id}/…`, which most clients send as
/// `%7Bbucket_id%7D`; a real ID holds no braces): the placeholder as written, and what to do.
fn unplaceholder(message: &str) -> String {
    let shown = message.replace("%7B", "{").replace("%7b", "{").replace("%7D", "}").replace("%7d", "}");
    let placeholder = shown.split_whitespace().any(|word| {
        let (Some(open), Some(close)) = (word.find('{'), word.rfind('}')) else { return false };
        open < close
    });
    if !placeholder {
        return cut(message.to_string());
    }
    format!("{} (the path holds a placeholder from the docs: put the real ID in its place)", cut(shown))
}

/// The longest error message (or field) sent, in characters; the rest is cut with "…".
const MAX_MESSAGE_CHARS: usize = 500;

/// `s` cut to [`MAX_MESSAGE_CHARS`], "…" marking the cut: what an answer sends, and what a
/// stored error keeps (an adapter's `last_error` is written again with every ingest).
pub fn cut(s: String) -> String {
    match s.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s,
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            // Not this request's fault, and over at the restart that follows: the sender
            // should retry (the cause is in the daemon log, not in the answer).
            crate::store::StoreError::Failed(_) => ApiError::Unavailable(
                "storage is failing (a full disk?) and hookline is restarting; retry later".into(),
            ),
            e => ApiError::Internal(anyhow::Error::new(e)),
        }
    }
}

/// Deserializes `value` as `T`; a failure is a 422 whose `field` is the dot-path of the
/// offending field, under `prefix` when given (e.g. `provider_config`). An array where `T`
/// (or anything within it) expects an object is refused, not read by position.
pub fn deserialize_at<T: serde::de::DeserializeOwned>(
    prefix: Option<&str>,
    value: serde_json::Value,
) -> Result<T, ApiError> {
    // Strict: a struct from an object only, at any depth (see `strict.rs`).
    serde_path_to_error::deserialize(crate::strict::Strict(value)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde names a missing field only in its message (`missing field `x``), with the
        // path pointing at the parent; pull the name out so the 422 names the field itself.
        let missing = inner.strip_prefix("missing field `").and_then(|r| r.split('`').next()).map(str::to_string);
        let mut parts: Vec<String> = Vec::new();
        if let Some(p) = prefix {
            parts.push(p.to_string());
        }
        if path != "." {
            parts.push(path);
        }
        if let Some(m) = missing {
            parts.push(m);
        }
        let field = if parts.is_empty() { "body".to_string() } else { parts.join(".") };
        // A key serde read as a field name (a channel's `url` beside `channel` and `configs`)
        // comes back as an invalid string value at its own path: it is an unknown field.
        let key = field.rsplit(['.', '[']).next().unwrap_or_default();
        let as_key = format!("invalid value: string \"{key}\", expected ");
        let message = match inner.strip_prefix(&as_key) {
            Some(expected) => format!("unknown field \"{key}\", expected {expected}"),
            None => plain_words(&inner),
        };
        ApiError::validation(field, message)
    })
}

/// A message of [`deserialize_at`] without the value it quotes, for fields that may hold a
/// secret sent in the wrong type (`"service_role_key": 98765…`): `must be a string, not the
/// number 98765` becomes `must be a string, not a number`.
pub fn without_value(message: &str) -> String {
    for (quoted, kind) in [("not the number ", "not a number"), ("not the string ", "not a string")] {
        if let Some(i) = message.find(quoted) {
            return format!("{}{kind}", &message[..i]);
        }
    }
    match message.split_once(" is not valid here: ") {
        Some((value, rest)) if value.starts_with("the number ") || value.starts_with("the string ") => {
            format!("this value is not valid here: {rest}")
        }
        _ => message.to_string(),
    }
}

/// serde's messages in the API's words: `invalid type: string "5", expected f64` becomes
/// `must be a number, not the string "5"`, and Rust's backticks become quotes. What serde
/// says is kept otherwise (it names what was expected).
fn plain_words(serde: &str) -> String {
    fn want(w: &str) -> String {
        match w {
            "f32" | "f64" => "a number".into(),
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more".into(),
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".into(),
            "a boolean" => "true or false".into(),
            "a sequence" => "a list".into(),
            // A tagged enum is an object too (a webhook's channel: `{"channel": …, "configs": …}`).
            w if w == "a map" || w.starts_with("struct ") || w.contains("tagged enum ") => "an object".into(),
            w => w.into(),
        }
    }
    fn got(g: &str) -> String {
        match g.split_once(' ') {
            Some(("string", s)) => format!("the string {s}"),
            Some(("integer" | "floating", _)) => {
                format!("the number {}", g.rsplit(' ').next().unwrap_or(g).trim_matches('`'))
            }
            Some(("boolean", b)) => b.to_string(),
            _ if g == "map" => "an object".into(),
            _ if g == "sequence" => "a list".into(),
            _ => g.into(),
        }
    }
    let text = if let Some((g, w)) = serde.strip_prefix("invalid type: ").and_then(|r| r.split_once(", expected ")) {
        format!("must be {}, not {}", want(w), got(g))
    } else if let Some((g, w)) = serde.strip_prefix("invalid value: ").and_then(|r| r.split_once(", expected ")) {
        if want(w) != w {
            format!("must be {}, not {}", want(w), got(g))
        } else {
            format!("{} is not valid here: expected {w}", got(g))
        }
    } else {
        serde.to_string()
    };
    text.replace('`', "\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_can_be_left_out_of_a_message() {
        assert_eq!(without_value("must be a string, not the number 98765432123"), "must be a string, not a number");
        assert_eq!(without_value(r#"must be a number, not the string "s3cr3t""#), "must be a number, not a string");
        assert_eq!(
            without_value(r#"the string "s3cr3t" is not valid here: expected one of a, b"#),
            "this value is not valid here: expected one of a, b"
        );
        assert_eq!(without_value("must be an object, not a list"), "must be an object, not a list");
    }

    #[test]
    fn serde_messages_are_put_in_plain_words() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            timeout: Option<f64>,
            count: Option<u32>,
            on: Option<bool>,
            list: Option<Vec<String>>,
        }
        let msg = |v: serde_json::Value| match deserialize_at::<T>(None, v).unwrap_err() {
            ApiError::Validation { field, message } => format!("{field}: {message}"),
            other => panic!("{other:?}"),
        };
        assert_eq!(msg(serde_json::json!({"timeout": "5"})), r#"timeout: must be a number, not the string "5""#);
        assert_eq!(
            msg(serde_json::json!({"count": -1})),
            "count: must be a whole number, 0 or more, not the number -1"
        );
        assert_eq!(msg(serde_json::json!({"on": 1})), "on: must be true or false, not the number 1");
        assert_eq!(msg(serde_json::json!({"list": {}})), "list: must be a list, not an object");
        let unknown = msg(serde_json::json!({"url": 1}));
        assert!(unknown.starts_with(r#"url: unknown field "url", expected one of "timeout""#), "{unknown}");
    }

    /// A path copied from the docs with its placeholder still in it is answered with the
    /// placeholder as written and a hint; braces alone (a real ID cannot hold them) do not.
    #[test]
    fn a_placeholder_left_in_a_path_is_named() {
        let message = |m: &str| ApiError::NotFound(m.into()).body()["error"]["message"].as_str().unwrap().to_string();
        assert_eq!(
            message("bucket %7Bbucket_id%7D not found"),
            "bucket {bucket_id} not found (the path holds a placeholder from the docs: put the real ID in its place)"
        );
        assert_eq!(
            message("object %7bobject_id%7d not found").split(" (").next(),
            Some("object {object_id} not found")
        );
        assert_eq!(message("bucket bkt_1 not found"), "bucket bkt_1 not found");
        assert_eq!(message("bucket %7Dx%7B not found"), "bucket %7Dx%7B not found", "not a placeholder");
        let sent_raw = message("object {object_id} not found in bucket bkt_1");
        assert!(sent_raw.starts_with("object {object_id} not found in bucket bkt_1 (the path holds"), "{sent_raw}");
        let second = message("object %7Dx not found in bucket %7Bbucket_id%7D");
        assert!(second.starts_with("object }x not found in bucket {bucket_id} (the path holds"), "{second}");
        let long = message(&format!("bucket %7B{}%7D not found", "x".repeat(5000)));
        assert!(
            long.ends_with("… (the path holds a placeholder from the docs: put the real ID in its place)"),
            "{long}"
        );
    }

    #[test]
    fn a_huge_echoed_value_is_cut() {
        let id = "x".repeat(5000);
        let body = ApiError::NotFound(format!("webhook {id} not found")).body();
        let message = body["error"]["message"].as_str().unwrap();
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(message.starts_with("webhook xxx") && message.ends_with('…'));
        let short = ApiError::NotFound("bucket b not found".into()).body();
        assert_eq!(short["error"]["message"], "bucket b not found");
    }
}
