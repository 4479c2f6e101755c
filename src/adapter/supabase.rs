//! The Supabase source adapter's provider-specific parts: database-webhook payloads and
//! PostgREST writeback requests.
//!
//! A Supabase database webhook posts `{type: INSERT|UPDATE|DELETE, table, schema, record,
//! old_record}`. The row's primary key (`id_column`) is the object's external id: INSERT
//! creates, UPDATE updates the same object, DELETE deletes it. Writeback is a PostgREST
//! `PATCH {url}/rest/v1/{table}?{id_column}=eq.{id}` with the service-role key.
//!
//! Stateless and free of I/O except [`WritebackRequest::send`]; it must not touch the store
//! or the catalog. The service-role key never appears in `Debug` output or errors.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

/// Event types a Supabase adapter accepts when `event_filter` is not set.
pub const DEFAULT_EVENT_TYPES: &[&str] = &["INSERT", "UPDATE"];

/// Primary-key column when the adapter does not name one.
pub const DEFAULT_ID_COLUMN: &str = "id";

/// The schema of a pinned table when the adapter names none (PostgREST's default too).
pub const DEFAULT_SCHEMA: &str = "public";

/// Postgres truncates identifiers at 63 bytes (NAMEDATALEN − 1).
const MAX_IDENTIFIER_LEN: usize = 63;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    Insert,
    Update,
    Delete,
}

impl Op {
    /// The event type string, as in `event_filter.event_types`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
        }
    }
}

/// A parsed database-webhook payload. Unknown top-level fields are kept (Supabase may add
/// some) so the metadata document loses nothing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct DbEvent {
    #[serde(rename = "type")]
    pub op: Op,
    pub table: String,
    pub schema: String,
    /// The new row (INSERT, UPDATE); null on DELETE.
    #[serde(default)]
    pub record: Option<Map<String, Value>>,
    /// The previous row (UPDATE, DELETE); null on INSERT.
    #[serde(default)]
    pub old_record: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SupabaseError {
    /// The body is not a database-webhook payload; `at` names the offending field
    /// (`"table: "`), empty for the payload itself.
    #[error("not a Supabase database webhook payload: {at}{message}")]
    Payload { at: String, message: String },
    /// INSERT/UPDATE without `record`, DELETE without `old_record`.
    #[error("{op} payload has no {field} (the row, an object)")]
    MissingRow { op: &'static str, field: &'static str },
    #[error("{what} {name:?} is not a plain SQL identifier (letters, digits, _; at most 63 bytes)")]
    Identifier { what: &'static str, name: String },
    #[error("Supabase url must be an http(s) URL without query or fragment")]
    BadUrl,
    #[error("nothing to write back")]
    EmptyWriteback,
}

impl DbEvent {
    /// Parses a payload, naming the first field that does not fit.
    pub fn parse(payload: &Value) -> Result<DbEvent, SupabaseError> {
        let ev: DbEvent = serde_path_to_error::deserialize(payload).map_err(|e| {
            // The payload itself (a field missing from it) is no field to name.
            let path = e.path().to_string();
            let at = if path == "." { String::new() } else { format!("{path}: ") };
            SupabaseError::Payload { at, message: e.inner().to_string() }
        })?;
        // The row the event is about must be there, or nothing can be keyed or mapped.
        ev.row()?;
        Ok(ev)
    }

    /// The row the event is about: `record` for INSERT/UPDATE, `old_record` for DELETE.
    pub fn row(&self) -> Result<&Map<String, Value>, SupabaseError> {
        let (row, field) = match self.op {
            Op::Insert | Op::Update => (&self.record, "record"),
            Op::Delete => (&self.old_record, "old_record"),
        };
        row.as_ref().ok_or(SupabaseError::MissingRow { op: self.op.as_str(), field })
    }

    /// The row's primary key as a string: strings (not blank) and numbers are accepted,
    /// anything else (null, bool, objects) is not a usable key.
    pub fn primary_key(&self, id_column: &str) -> Option<String> {
        key_of(self.row().ok()?, id_column)
    }

    /// The document `field_mapping` reads (`record.*`, `old_record.*`, `table`, …): the
    /// payload itself, except that on DELETE `record` is the deleted row, so one mapping
    /// works for every operation.
    pub fn metadata_document(&self) -> Value {
        let mut m = self.extra.clone();
        let row = self.row().ok().cloned().map(Value::Object).unwrap_or(Value::Null);
        m.insert("type".into(), Value::from(self.op.as_str()));
        m.insert("table".into(), Value::from(self.table.clone()));
        m.insert("schema".into(), Value::from(self.schema.clone()));
        m.insert("record".into(), row);
        m.insert("old_record".into(), self.old_record.clone().map(Value::Object).unwrap_or(Value::Null));
        Value::Object(m)
    }
}

/// The primary key of an UPDATE's `old_record` (the row before it), read as
/// [`DbEvent::primary_key`] reads the row's: an UPDATE that changed the key has another one
/// here than in `record`. Read off the payload as it is, not a [`DbEvent`] (which copies the
/// rows): the event was parsed once already by then. `None` for other event types.
pub fn old_primary_key(payload: &Value, id_column: &str) -> Option<String> {
    if payload.get("type")?.as_str()? != Op::Update.as_str() {
        return None;
    }
    key_of(payload.get("old_record")?.as_object()?, id_column)
}

/// A string holding a NUL is no key: no Postgres text value can hold one, so no row has it
/// (the event is forged), and a writeback naming it could only ever fail.
fn key_of(row: &Map<String, Value>, id_column: &str) -> Option<String> {
    match row.get(id_column)? {
        Value::String(s) if s.contains('\0') => None,
        Value::String(s) => super::path::string_key(s).map(str::to_string),
        Value::Number(n) => super::path::number_key(n),
        _ => None,
    }
}

/// Convenience: the primary key of a raw payload.
pub fn primary_key(event: &DbEvent, id_column: &str) -> Option<String> {
    event.primary_key(id_column)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes: what we put in a URL path or query name
/// unquoted. Quoted or mixed-case-with-symbols identifiers are deliberately refused.
pub fn is_safe_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.len() <= MAX_IDENTIFIER_LEN
}

fn check_identifier(what: &'static str, name: &str) -> Result<(), SupabaseError> {
    if is_safe_identifier(name) {
        Ok(())
    } else {
        Err(SupabaseError::Identifier { what, name: name.chars().take(80).collect() })
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so an id with `&`, `=`,
/// `#`, `+` or spaces stays one filter value.
fn encode_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One PostgREST writeback: `PATCH {url}/rest/v1/{table}?{id_column}=eq.{id}`.
#[derive(Clone, PartialEq)]
pub struct WritebackRequest {
    pub url: String,
    /// `apikey`, `Authorization`, `Content-Type`, `Prefer`, and `Content-Profile` for a
    /// schema other than `public`.
    pub headers: Vec<(&'static str, String)>,
    /// The mapped fields, as a JSON object.
    pub body: Value,
}

impl std::fmt::Debug for WritebackRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (*k, if matches!(*k, "apikey" | "Authorization") { "<redacted>" } else { v.as_str() }))
            .collect();
        f.debug_struct("WritebackRequest")
            .field("url", &self.url)
            .field("headers", &headers)
            .field("body", &self.body)
            .finish()
    }
}

/// Where and how to write back, from the connection and the adapter config.
#[derive(Clone, Copy)]
pub struct WritebackTarget<'a> {
    /// The project URL, e.g. `https://abcd.supabase.co`.
    pub url: &'a str,
    pub service_role_key: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    pub id_column: &'a str,
}

impl WritebackRequest {
    /// Builds the request for row `id`, setting `fields` (column → value). Table, schema and
    /// column names must be safe identifiers.
    pub fn build(
        target: WritebackTarget<'_>,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Result<WritebackRequest, SupabaseError> {
        check_identifier("schema", target.schema)?;
        check_identifier("table", target.table)?;
        check_identifier("id column", target.id_column)?;
        if fields.is_empty() {
            return Err(SupabaseError::EmptyWriteback);
        }
        for column in fields.keys() {
            check_identifier("column", column)?;
        }
        let base = url::Url::parse(target.url).map_err(|_| SupabaseError::BadUrl)?;
        if !matches!(base.scheme(), "http" | "https") || base.query().is_some() || base.fragment().is_some() {
            return Err(SupabaseError::BadUrl);
        }
        let base = base.as_str().trim_end_matches('/');
        let url = format!("{base}/rest/v1/{}?{}=eq.{}", target.table, target.id_column, encode_value(id));
        let mut headers = vec![
            ("apikey", target.service_role_key.to_string()),
            ("Authorization", format!("Bearer {}", target.service_role_key)),
            ("Content-Type", "application/json".to_string()),
            ("Prefer", "return=minimal".to_string()),
        ];
        if target.schema != "public" {
            // PostgREST selects a non-default schema for writes with Content-Profile.
            headers.push(("Content-Profile", target.schema.to_string()));
        }
        Ok(WritebackRequest { url, headers, body: Value::Object(fields.clone()) })
    }

    /// Turns the request into a reqwest builder on `client` (the caller sets timeouts and
    /// judges the status: PostgREST answers 204 with `return=minimal`). `Err` names a header
    /// that cannot be sent (a key with a control or non-ASCII character, saved before keys
    /// were checked): sent without it, the request would run as PostgREST's anonymous role,
    /// and sent with it, a non-ASCII key would go out as raw bytes no server reads as meant.
    pub fn send(self, client: &reqwest::Client) -> Result<reqwest::RequestBuilder, String> {
        let mut rb = client.patch(&self.url);
        for (k, v) in &self.headers {
            let secret = matches!(*k, "apikey" | "Authorization");
            let value = reqwest::header::HeaderValue::from_str(v).ok().filter(|_| !secret || v.is_ascii());
            let Some(mut value) = value else {
                return Err(format!(
                    "the {k} header cannot be sent: the service_role_key has a control character (a line break?) or \
                     one outside ASCII; PATCH the connection (or the adapter's credentials) with the key as it is, on \
                     one line"
                ));
            };
            if secret {
                value.set_sensitive(true);
            }
            rb = rb.header(*k, value);
        }
        Ok(rb.body(self.body.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A key no header can carry (saved before keys were checked) fails the attempt, rather
    /// than go out without `apikey` and `Authorization` (PostgREST's anonymous role).
    #[test]
    fn a_key_no_header_can_carry_is_not_sent_without_it() {
        let t = WritebackTarget {
            url: "https://x.supabase.co",
            service_role_key: "srk\n",
            schema: "public",
            table: "items",
            id_column: "id",
        };
        let fields = serde_json::Map::from_iter([("a".to_string(), json!(1))]);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let e = WritebackRequest::build(t, "42", &fields).unwrap().send(&reqwest::Client::new()).unwrap_err();
        assert!(e.contains("apikey") && !e.contains("srk"), "{e}");
        // Nor one outside ASCII (the docs' placeholder), which would go out as raw bytes.
        let t = WritebackTarget { service_role_key: "…", ..t };
        let e = WritebackRequest::build(t, "42", &fields).unwrap().send(&reqwest::Client::new()).unwrap_err();
        assert!(e.contains("apikey") && e.contains("outside ASCII") && !e.contains('…'), "{e}");
    }

    /// Payload shapes as Supabase's database webhooks (pg_net) send them.
    fn insert() -> Value {
        json!({
            "type": "INSERT",
            "table": "listings",
            "schema": "public",
            "record": {"id": 42, "title": "Loft", "video_url": "https://cdn.example/v.mp4", "tags": ["a", "b"]},
            "old_record": null
        })
    }

    fn update() -> Value {
        json!({
            "type": "UPDATE",
            "table": "listings",
            "schema": "public",
            "record": {"id": 42, "title": "Loft (renovated)", "video_url": "https://cdn.example/v2.mp4"},
            "old_record": {"id": 42, "title": "Loft", "video_url": "https://cdn.example/v.mp4"}
        })
    }

    fn delete() -> Value {
        json!({
            "type": "DELETE",
            "table": "listings",
            "schema": "public",
            "record": null,
            "old_record": {"id": 42, "title": "Loft (renovated)"}
        })
    }

    #[test]
    fn parses_the_three_operations_and_finds_the_same_key() {
        for (payload, op) in [(insert(), Op::Insert), (update(), Op::Update), (delete(), Op::Delete)] {
            let ev = DbEvent::parse(&payload).unwrap();
            assert_eq!(ev.op, op);
            assert_eq!((ev.table.as_str(), ev.schema.as_str()), ("listings", "public"));
            assert_eq!(ev.primary_key(DEFAULT_ID_COLUMN).as_deref(), Some("42"), "{op:?}");
            assert_eq!(primary_key(&ev, "id"), ev.primary_key("id"));
        }
        assert_eq!(DEFAULT_EVENT_TYPES, [Op::Insert.as_str(), Op::Update.as_str()]);
    }

    #[test]
    fn primary_keys_accept_strings_and_numbers_only() {
        let with = |id: Value| {
            DbEvent::parse(
                &json!({"type": "INSERT", "table": "t", "schema": "public", "record": {"id": id, "uuid": "7d9f-…"}}),
            )
            .unwrap()
        };
        assert_eq!(
            with(json!("b5f3c1de-0000-4000-8000-000000000001")).primary_key("id").as_deref(),
            Some("b5f3c1de-0000-4000-8000-000000000001")
        );
        assert_eq!(with(json!(7)).primary_key("id").as_deref(), Some("7"));
        assert_eq!(with(json!(-7)).primary_key("id").as_deref(), Some("-7"));
        // A key must be exact: a fraction, or an integer past 64 bits (rounded by JSON
        // parsing), is refused; an integral float is its integer.
        assert_eq!(with(json!(1.5)).primary_key("id"), None);
        assert_eq!(with(json!(7.0)).primary_key("id").as_deref(), Some("7"));
        for bad in [json!(null), json!(true), json!(""), json!("  "), json!({"a": 1}), json!([1])] {
            assert_eq!(with(bad.clone()).primary_key("id"), None, "{bad}");
        }
        assert_eq!(with(json!(1)).primary_key("missing"), None);
        assert_eq!(with(json!(1)).primary_key("uuid").as_deref(), Some("7d9f-…"), "a configured id_column");
    }

    #[test]
    fn metadata_document_has_record_for_every_operation() {
        let doc = DbEvent::parse(&insert()).unwrap().metadata_document();
        assert_eq!(doc, insert(), "INSERT: the payload itself");
        let doc = DbEvent::parse(&update()).unwrap().metadata_document();
        assert_eq!(doc, update());
        assert_eq!(doc["record"]["title"], "Loft (renovated)");
        assert_eq!(doc["old_record"]["title"], "Loft");
        let doc = DbEvent::parse(&delete()).unwrap().metadata_document();
        assert_eq!(doc["record"], json!({"id": 42, "title": "Loft (renovated)"}), "DELETE: the old row as record");
        assert_eq!(doc["old_record"], doc["record"]);
        assert_eq!(doc["type"], "DELETE");
        // Unknown top-level fields survive.
        let mut p = insert();
        p["commit_timestamp"] = json!("2026-01-15T10:03:22Z");
        assert_eq!(DbEvent::parse(&p).unwrap().metadata_document()["commit_timestamp"], "2026-01-15T10:03:22Z");
    }

    #[test]
    fn rejects_payloads_that_are_not_database_webhooks() {
        let err = |v: Value| DbEvent::parse(&v).unwrap_err();
        assert!(
            matches!(err(json!({"type": "TRUNCATE", "table": "t", "schema": "s"})), SupabaseError::Payload { at, .. } if at == "type: ")
        );
        assert!(matches!(err(json!({"type": "INSERT", "schema": "s", "record": {}})), SupabaseError::Payload { .. }));
        assert!(
            matches!(err(json!({"type": "INSERT", "table": 3, "schema": "s"})), SupabaseError::Payload { at, .. } if at == "table: ")
        );
        assert!(
            matches!(err(json!({"type": "INSERT", "table": "t", "schema": "s", "record": [1]})), SupabaseError::Payload { at, .. } if at == "record: ")
        );
        assert!(matches!(err(json!([1])), SupabaseError::Payload { .. }));
        // A field missing from the payload itself names no field before it.
        let missing = err(json!({"type": "INSERT", "table": "t", "record": {}})).to_string();
        assert_eq!(missing, "not a Supabase database webhook payload: missing field `schema`");
        assert_eq!(
            err(json!({"type": "INSERT", "table": "t", "schema": "s", "record": null})),
            SupabaseError::MissingRow { op: "INSERT", field: "record" }
        );
        assert_eq!(
            err(json!({"type": "DELETE", "table": "t", "schema": "s", "record": null, "old_record": null})),
            SupabaseError::MissingRow { op: "DELETE", field: "old_record" }
        );
    }

    fn target<'a>(table: &'a str, id_column: &'a str) -> WritebackTarget<'a> {
        WritebackTarget {
            url: "https://abcd.supabase.co/",
            service_role_key: "service-role-key-xyz",
            schema: "public",
            table,
            id_column,
        }
    }

    #[test]
    fn builds_the_postgrest_patch() {
        let fields = json!({"mp_verdict": "ok", "mp_confidence": 0.93}).as_object().unwrap().clone();
        let req = WritebackRequest::build(target("listings", "id"), "42", &fields).unwrap();
        assert_eq!(req.url, "https://abcd.supabase.co/rest/v1/listings?id=eq.42");
        assert_eq!(
            req.headers,
            vec![
                ("apikey", "service-role-key-xyz".to_string()),
                ("Authorization", "Bearer service-role-key-xyz".to_string()),
                ("Content-Type", "application/json".to_string()),
                ("Prefer", "return=minimal".to_string()),
            ]
        );
        assert_eq!(req.body, json!({"mp_verdict": "ok", "mp_confidence": 0.93}));
        let dbg = format!("{req:?}");
        assert!(!dbg.contains("service-role-key-xyz") && dbg.contains("<redacted>"), "{dbg}");

        // Ids are percent-encoded so they stay one filter value.
        let req = WritebackRequest::build(target("listings", "slug"), "a b&c=d#e/é+", &fields).unwrap();
        assert_eq!(req.url, "https://abcd.supabase.co/rest/v1/listings?slug=eq.a%20b%26c%3Dd%23e%2F%C3%A9%2B");

        // A non-public schema is selected with Content-Profile.
        let t = WritebackTarget { schema: "media", url: "http://127.0.0.1:54321", ..target("clips", "id") };
        let req = WritebackRequest::build(t, "7", &fields).unwrap();
        assert_eq!(req.url, "http://127.0.0.1:54321/rest/v1/clips?id=eq.7");
        assert!(req.headers.contains(&("Content-Profile", "media".to_string())));
    }

    #[test]
    fn refuses_unsafe_names_and_urls() {
        let fields = json!({"ok_col": 1}).as_object().unwrap().clone();
        for (table, col) in
            [("a;drop", "id"), ("listings", "id=eq.1&x"), ("", "id"), ("1abc", "id"), ("t", &"c".repeat(64))]
        {
            assert!(
                matches!(
                    WritebackRequest::build(target(table, col), "1", &fields),
                    Err(SupabaseError::Identifier { .. })
                ),
                "{table} {col}"
            );
        }
        let bad_field = json!({"x\"y": 1}).as_object().unwrap().clone();
        assert!(matches!(
            WritebackRequest::build(target("t", "id"), "1", &bad_field),
            Err(SupabaseError::Identifier { what: "column", .. })
        ));
        assert_eq!(WritebackRequest::build(target("t", "id"), "1", &Map::new()), Err(SupabaseError::EmptyWriteback));
        for url in ["ftp://x", "not a url", "https://x.supabase.co/?a=b", "https://x#f"] {
            let t = WritebackTarget { url, ..target("t", "id") };
            assert_eq!(WritebackRequest::build(t, "1", &fields), Err(SupabaseError::BadUrl), "{url}");
        }
        assert!(is_safe_identifier("_private_2") && is_safe_identifier("Listings"));
    }

    #[tokio::test]
    async fn send_produces_the_postgrest_request_form() {
        use warp::Filter;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // A stand-in for PostgREST on 127.0.0.1 that records what it receives.
        let route = warp::patch()
            .and(warp::path!("rest" / "v1" / String))
            .and(warp::query::raw())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(move |table: String, query: String, headers: warp::http::HeaderMap, body: bytes::Bytes| {
                let h = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let _ = tx.send((table, query, h("apikey"), h("authorization"), h("content-type"), h("prefer"), body));
                warp::reply::with_status(warp::reply(), warp::http::StatusCode::NO_CONTENT)
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());

        let fields = json!({"mp_verdict": "ok"}).as_object().unwrap().clone();
        let url = format!("http://{addr}");
        let t = WritebackTarget { url: &url, ..target("listings", "id") };
        let resp = WritebackRequest::build(t, "42", &fields)
            .unwrap()
            .send(&reqwest::Client::new())
            .unwrap()
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
        let (table, query, apikey, auth, ctype, prefer, body) = rx.recv().await.unwrap();
        assert_eq!((table.as_str(), query.as_str()), ("listings", "id=eq.42"));
        assert_eq!(apikey, "service-role-key-xyz");
        assert_eq!(auth, "Bearer service-role-key-xyz");
        assert_eq!((ctype.as_str(), prefer.as_str()), ("application/json", "return=minimal"));
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), json!({"mp_verdict": "ok"}));
    }
}
