//! The pure steps of ingest: screen an event (filter, dedup value), then turn its metadata
//! document into an object draft (field_mapping, type check, blob_source).
//!
//! The two steps are separate on purpose: an adapter that must fetch its metadata document
//! (Mux, issue 4) screens first, fetches outside the actor, then materializes. Nothing here
//! does I/O or touches actor state.

use serde_json::Value;

use super::kind::{self, Operation};
use super::path;
use super::records::{self, BlobRef, Draft, ObjectSource};
use super::spec::{BlobType, SourceAdapter};
use crate::catalog::BucketSchema;

/// Why a payload cannot become an object. The upstream sees it as a 422 and the adapter's
/// status as `last_error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub String);

/// An event that passed the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Screened {
    pub event_type: Option<String>,
    /// The value at the dedup key, when the adapter dedups.
    pub dedup_value: Option<String>,
    pub operation: Operation,
    /// The upstream's ID of the thing (see `kind::external_id`).
    pub external_id: Option<String>,
    /// The thing's ID before this event, when the event changes it (a Supabase UPDATE of
    /// the row's primary key; see `kind::previous_external_id`): its objects are found under
    /// this ID and re-keyed to `external_id`.
    pub previous_external_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Screen {
    /// Not an event type this adapter handles (`handled: false`).
    Ignored,
    Accepted(Screened),
}

/// Filters the event and extracts its dedup value.
pub fn screen(adapter: &SourceAdapter, payload: &Value) -> Result<Screen, PayloadError> {
    // Nothing can be filtered, keyed or mapped in a bare value: it would make an empty object.
    if !payload.is_object() {
        return Err(PayloadError(format!("the payload must be a JSON object, not {}", json_type(payload))));
    }
    let event_type = kind::event_type(adapter, payload);
    // Every database webhook names its operation: a body without one is not an event to
    // leave aside (200, ignored) but not Supabase's at all, said as one without `schema` is.
    // (A `type` that is not a string, `7`, is none either: Supabase sends its operation's name.)
    if adapter.adapter_type == crate::catalog::ProviderType::Supabase
        && !payload.get("type").is_some_and(Value::is_string)
    {
        return Err(PayloadError(
            "not a Supabase database webhook payload: no \"type\" (INSERT, UPDATE, DELETE or TRUNCATE)".into(),
        ));
    }
    let handled = match &adapter.event_filter {
        Some(f) => event_type.as_ref().is_some_and(|t| f.event_types.iter().any(|e| e == t)),
        None => match kind::default_event_types(adapter.adapter_type) {
            Some(list) => event_type.as_deref().is_some_and(|t| list.contains(&t)),
            None => true,
        },
    };
    if !handled {
        return Ok(Screen::Ignored);
    }
    // A database event of the wrong shape (`record` null or a list, `table` a number) is
    // said so, before its dedup key is found missing from it.
    // Parsed once: the external ID below is read off it, not off a second parse.
    let db_event = match adapter.adapter_type == crate::catalog::ProviderType::Supabase {
        true => Some(crate::adapter::supabase::DbEvent::parse(payload).map_err(|e| PayloadError(e.to_string()))?),
        false => None,
    };
    let operation = kind::operation(adapter.adapter_type, event_type.as_deref());
    let dedup_value = match dedup_value(adapter, payload) {
        Some(v) => Some(v),
        // Dedup guards creation only: an update or delete may lack it (Supabase sends a
        // DELETE with `record: null`, the row in `old_record`).
        None if operation != Operation::Create => None,
        None => match dedup_path(adapter) {
            None => None,
            Some(_) if mux_default(adapter) => {
                return Err(PayloadError(format!(
                    "the event names no Mux asset: {}",
                    crate::adapter::mux::asset_id_problem(payload)
                )))
            }
            Some(p) => {
                return Err(PayloadError(match path::lookup(payload, p) {
                    Some(Value::Number(n)) => format!("dedup_key {p:?} is {}", path::number_key_problem(n)),
                    None => format!("dedup_key {p:?} is missing from the payload: {}", path::KEY_WANTED),
                    found => format!("dedup_key {p:?} is {}: {}", path::not_a_key(found), path::KEY_WANTED),
                }))
            }
        },
    };
    let external_id = kind::external_id(adapter, payload, dedup_value.as_deref(), db_event.as_ref())?;
    for (what, value) in [("the dedup value", &dedup_value), ("the upstream ID", &external_id)] {
        if let Some(v) = value.as_deref().filter(|v| v.len() > MAX_KEY_BYTES) {
            return Err(PayloadError(format!(
                "{what} ({}) is {} bytes long, at most {MAX_KEY_BYTES}: it is stored with the object and kept in \
                 memory as a key, so it must be an ID, not a document",
                key_source(adapter),
                v.len()
            )));
        }
    }
    if operation != Operation::Create && external_id.is_none() {
        return Err(PayloadError("this event changes an object but names no upstream ID".into()));
    }
    let previous_external_id = match operation {
        Operation::Update => kind::previous_external_id(adapter, payload).filter(|p| Some(p) != external_id.as_ref()),
        Operation::Create | Operation::Delete => None,
    };
    Ok(Screen::Accepted(Screened { event_type, dedup_value, operation, external_id, previous_external_id }))
}

/// The longest dedup value or upstream ID an event may have (a URL fits; a document does
/// not).
pub const MAX_KEY_BYTES: usize = 4096;

/// Where an adapter's dedup value and upstream ID come from, for messages.
fn key_source(adapter: &SourceAdapter) -> String {
    match adapter.adapter_type {
        crate::catalog::ProviderType::Supabase => format!("the row's {:?}, id_column", adapter.id_column()),
        _ => match dedup_path(adapter) {
            Some(p) => format!("dedup_key {p:?}"),
            None => "the event's ID".into(),
        },
    }
}

fn dedup_path(adapter: &SourceAdapter) -> Option<&str> {
    adapter.dedup_key.as_deref().or(kind::default_dedup_key(adapter.adapter_type))
}

/// Mux's default key is the asset the event is about, wherever its type keeps the id
/// (`data.id`, or `data.asset_id` for an upload or a track): one asset, one object. An
/// explicit `data.id` (seed 000's own example) means the same.
fn mux_default(adapter: &SourceAdapter) -> bool {
    adapter.adapter_type == crate::catalog::ProviderType::Mux
        && adapter.dedup_key.as_deref().is_none_or(|k| k == crate::adapter::mux::DEFAULT_DEDUP_KEY)
}

/// The event's dedup value, when the adapter dedups and the event has one. A number and its
/// decimal string are one key (7 and "7"): upstreams are not consistent.
pub fn dedup_value(adapter: &SourceAdapter, payload: &Value) -> Option<String> {
    if mux_default(adapter) {
        return crate::adapter::mux::event_asset_id(payload).map(str::to_string);
    }
    match path::lookup(payload, dedup_path(adapter)?) {
        Some(Value::String(s)) => path::string_key(s).map(str::to_string),
        Some(Value::Number(n)) => path::number_key(n),
        _ => None,
    }
}

/// The dedup set's key of a new event: the digest of its dedup value. A payload reads an
/// escape of half a UTF-16 surrogate pair as U+FFFD (see `lenient`), which would make
/// `"a\ud83d"` and `"a\ud83e"` one key, and the second event a `duplicate` that never
/// becomes an object. So a value holding U+FFFD is read again from the raw body with such
/// escapes kept as their text, and one that held a half is keyed in a space of its own
/// ([`records::dedup_hash_with_lone_halves`]); a value without one keeps the key it always
/// had.
pub fn dedup_hash(adapter: &SourceAdapter, value: &str, raw: &[u8]) -> String {
    if value.contains('\u{FFFD}') {
        let kept = crate::lenient::parse_keeping_lone_surrogates(raw).and_then(|p| dedup_value(adapter, &p));
        if let Some(kept) = kept.filter(|k| crate::lenient::holds_lone_half(k)) {
            return records::dedup_hash_with_lone_halves(&kept);
        }
    }
    records::dedup_hash(value)
}

/// Builds the object draft from the metadata document `doc` (of the event `payload`).
pub fn materialize(
    adapter: &SourceAdapter,
    schema: &BucketSchema,
    payload: &Value,
    doc: &Value,
    screened: &Screened,
) -> Result<Draft, PayloadError> {
    materialize_with_storage(adapter, schema, payload, doc, screened, None)
}

/// [`materialize`], with the public URL of the Supabase Storage bucket (see
/// [`storage_base`]) that a file field holding a path is read from.
pub fn materialize_with_storage(
    adapter: &SourceAdapter,
    schema: &BucketSchema,
    payload: &Value,
    doc: &Value,
    screened: &Screened,
    storage: Option<&url::Url>,
) -> Result<Draft, PayloadError> {
    let mut metadata = serde_json::Map::new();
    for (source, target) in &adapter.field_mapping {
        let Some(v) = path::lookup(doc, source) else { continue };
        if v.is_null() {
            continue;
        }
        // Validated at configuration; the schema cannot change under an adapter.
        if let Some(p) = schema.get(target) {
            let Some(fitted) = p.kind.fit(v) else {
                return Err(PayloadError(format!(
                    "field_mapping {source:?} → {target:?}: bucket_schema wants {}, the payload has {}",
                    p.kind.as_str(),
                    json_type(v)
                )));
            };
            // A file-type property (video, image, audio, text) holds a file reference, as
            // from blob_source.
            let file = p.kind.is_blob();
            if file && no_file(v) {
                continue;
            }
            if file {
                let Some(url) = v.as_str().and_then(file_url) else {
                    let what = match v.as_str() {
                        Some(s) if has_login(s) => {
                            "a URL with a user name or password (never stored: send a signed or public URL)".into()
                        }
                        Some(s) => match miswritten(s) {
                            Some(why) => format!("{}, which {why}", describe(v)),
                            None => describe(v),
                        },
                        None => describe(v),
                    };
                    return Err(PayloadError(format!(
                        "field_mapping {source:?} → {target:?}: {} property takes an http(s) URL, the payload has {what}",
                        crate::util::with_article(p.kind.as_str()),
                    )));
                };
                metadata.insert(target.clone(), Value::from(url));
                continue;
            }
            metadata.insert(target.clone(), fitted);
            continue;
        }
        metadata.insert(target.clone(), v.clone());
    }

    let mut blobs = Vec::new();
    let (file_field, blob_type, property, explicit) = match &adapter.blob_source {
        Some(b) => (
            b.file_field.as_deref().or(kind::default_file_field(adapter.adapter_type)),
            b.blob_type,
            b.property().to_string(),
            b.file_field.is_some(),
        ),
        // The adapter's default blob (Mux: the playback URL) goes to a `video` property, if
        // the schema has one; a metadata-only bucket gets none.
        None => {
            let ff = kind::default_file_field(adapter.adapter_type).filter(|_| kind::has_default_blob_property(schema));
            (ff, BlobType::Video, kind::DEFAULT_BLOB_PROPERTY.to_string(), false)
        }
    };
    if let Some(ff) = file_field {
        let found = path::lookup(doc, ff);
        match (found, found.and_then(Value::as_str).and_then(file_url)) {
            (_, Some(url)) => blobs.push(BlobRef { property, kind: blob_type.as_str().to_string(), url }),
            // Whatever the file field, never stored: the object's URL is shown by the API and
            // sent in every event of it, to every webhook and channel.
            (Some(Value::String(s)), None) if has_login(s) => {
                return Err(PayloadError(format!(
                    "blob_source.file_field {ff:?} is a URL with a user name or password, which hookline does not \
                     store (the object's URL is shown by the API and sent in its events): send a signed or public \
                     URL instead"
                )))
            }
            // A URL the parser would read as another (`https:///h/x` as `https://h/x`): refused
            // as a webhook's or a writeback's is, rather than stored as a URL nobody sent (nor
            // read as a Storage path).
            (Some(Value::String(s)), None) if miswritten(s).is_some() => {
                return Err(PayloadError(format!(
                    "blob_source.file_field {ff:?} {}; the payload has {}",
                    miswritten(s).unwrap_or_default(),
                    describe(&Value::String(s.clone()))
                )))
            }
            // The row says it has no file: the object has no blob (a required property is a 422
            // below). Refusing it would lose the row: Supabase does not resend.
            (Some(v), None) if no_file(v) => {}
            // A path in the adapter's Storage bucket.
            (Some(Value::String(path)), None) if storage.is_some() => {
                let Some(url) = storage.and_then(|base| storage_url(base, path)) else {
                    return Err(PayloadError(format!(
                        "blob_source.file_field {ff:?} must be an http(s) URL or a path in the Storage bucket \
                         (names separated by '/': none empty, '.' or '..', no control characters), the payload has {}",
                        describe(&Value::String(path.clone()))
                    )));
                };
                blobs.push(BlobRef { property, kind: blob_type.as_str().to_string(), url })
            }
            (Some(other), None) if explicit => {
                return Err(PayloadError(format!(
                    "blob_source.file_field {ff:?} must be an http(s) URL, the payload has {}",
                    describe(other)
                )))
            }
            (None, None) if explicit => {
                return Err(PayloadError(match kind::missing_file_reason(adapter.adapter_type, doc, ff) {
                    Some(why) => format!("blob_source.file_field {ff:?} is missing: {why}"),
                    None => format!("blob_source.file_field {ff:?} is missing from the payload"),
                }))
            }
            _ => {}
        }
    }

    for (name, p) in &schema.properties {
        if p.required && !metadata.contains_key(name) && !blobs.iter().any(|b| &b.property == name) {
            return Err(PayloadError(format!("required property {name:?} of bucket_schema has no value")));
        }
    }

    let source = ObjectSource {
        adapter_type: adapter.adapter_type,
        external_id: screened.external_id.clone(),
        event_type: screened.event_type.clone(),
        table: super::writeback::source_location(adapter.adapter_type, payload, "table"),
        schema: super::writeback::source_location(adapter.adapter_type, payload, "schema"),
    };
    Ok(Draft { metadata, blobs, source })
}

/// An http(s) URL with a host, as the URL parser writes it. The parser forgives what a
/// sender may get wrong (surrounding spaces, a space or a control character inside, a tab
/// or newline), and whoever reads the stored URL may not: so the stored form is the
/// parser's, surrounding spaces dropped, spaces and controls inside percent-encoded.
/// A URL the parser reads as another one (see [`miswritten`]) is none.
fn file_url(s: &str) -> Option<String> {
    let s = prepared(s);
    let u = url::Url::parse(&s).ok()?;
    let usable = matches!(u.scheme(), "http" | "https") && u.host().is_some() && !url_has_login(&u);
    (usable && crate::delivery::netguard::check_written(&s, &u).is_ok()).then(|| u.to_string())
}

/// `s` as [`file_url`] parses it: surrounding spaces dropped, and tabs and line breaks
/// encoded (the parser drops them wherever they are, which would silently make another URL
/// of `…/a\nb.mp4`), as any other control character is.
fn prepared(s: &str) -> String {
    s.trim().replace('\t', "%09").replace('\n', "%0A").replace('\r', "%0D")
}

/// Why `s`, an http(s) URL with a host, is refused for how it is written: the URL standard
/// reads `https:///h/x`, `https:h/x` and `https:\\h\x` all as `https://h/x`, so what would
/// be stored is not what was sent. The rule of every URL hookline keeps (a webhook's, a
/// writeback's, a connection's: `netguard::check_written`). `None` for one written as it is
/// read, and for what is no such URL (refused, or read as a Storage path, for what it is).
fn miswritten(s: &str) -> Option<String> {
    let s = prepared(s);
    let u = url::Url::parse(&s).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())?;
    crate::delivery::netguard::check_written(&s, &u).err()
}

/// `s` with what looks like a URL's login (`scheme://user:pw@`) blanked out, whether or not
/// it parses: a message quoting a refused value (stored as `last_error`) must not hold a
/// password.
fn without_login(s: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = s.find("://").map(|i| i + 3) else { return s.into() };
    let end = s[start..].find(['/', '?', '#']).map_or(s.len(), |i| start + i);
    match s[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &s[..start], &s[start + at..]).into(),
        None => s.into(),
    }
}

/// Whether `s` is an http(s) URL with a user name or a password (`https://user:pw@host/…`).
fn has_login(s: &str) -> bool {
    url::Url::parse(s.trim()).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && url_has_login(&u))
}

fn url_has_login(u: &url::Url) -> bool {
    !u.username().is_empty() || u.password().is_some()
}

/// The public URL prefix of the Supabase Storage bucket `bucket` of the project at
/// `project_url` (a prefix path of a self-hosted project kept): files are under it.
pub fn storage_base(project_url: &str, bucket: &str) -> Option<url::Url> {
    let mut u = url::Url::parse(project_url).ok()?;
    u.path_segments_mut().ok()?.pop_if_empty().extend(["storage", "v1", "object", "public", bucket]);
    Some(u)
}

/// A Storage object's public URL: `path`'s names (`/`-separated; none empty, `.`, `..` or
/// holding a control character, which the URL parser would drop: `.\t.` would become `..`)
/// under `base`, each percent-encoded as the URL needs (a leading `/` is dropped). `None`
/// for what is not such a path: a URL (`…://…`) of a scheme other than http(s).
fn storage_url(base: &url::Url, path: &str) -> Option<String> {
    let path = path.trim().trim_start_matches('/');
    if path.contains("://") {
        return None;
    }
    let names: Vec<&str> = path.split('/').collect();
    if names.iter().any(|n| n.is_empty() || *n == "." || *n == ".." || n.chars().any(char::is_control)) {
        return None;
    }
    let mut u = base.clone();
    u.path_segments_mut().ok()?.extend(&names);
    // Belt and braces: exactly those names, under the bucket.
    let depth = |u: &url::Url| u.path_segments().map_or(0, Iterator::count);
    (depth(&u) == depth(base) + names.len() && u.path().starts_with(&format!("{}/", base.path())))
        .then(|| u.to_string())
}

/// Whether building the draft needs the Storage bucket's URL: the adapter has one, and the
/// file field holds a string that is a path (not blank, not an http(s) URL). Only then are
/// its credentials read for it.
pub fn needs_storage(adapter: &SourceAdapter, doc: &Value) -> bool {
    let Some(b) = adapter.blob_source.as_ref().filter(|b| b.storage_bucket.is_some()) else { return false };
    let Some(ff) = b.file_field.as_deref() else { return false };
    match path::lookup(doc, ff) {
        Some(v @ Value::String(s)) => !no_file(v) && file_url(s).is_none() && miswritten(s).is_none(),
        _ => false,
    }
}

/// A file field that says there is no file: null, or an empty (or blank) string, which is
/// how a database column or a form commonly leaves it unset.
fn no_file(v: &Value) -> bool {
    v.is_null() || v.as_str().is_some_and(|s| s.trim().is_empty())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_i64() || n.is_u64() => "int",
        // Past 64 bits JSON parsing makes an integer a float: say so, not just "float".
        Value::Number(n) if crate::util::is_integer_past_64_bits(n) => "an integer past 64 bits (not an int)",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f.abs() >= 9_007_199_254_740_992.0) => {
            "a float past 2^53 (written with a fraction or an exponent, which JSON parsing may have rounded)"
        }
        Value::Number(_) => "float",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{:?}", without_login(s).chars().take(80).collect::<String>()),
        other => json_type(other).to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A stored adapter from an API body (test helper).
    pub(crate) fn adapter(body: Value) -> SourceAdapter {
        let i: super::super::spec::SourceAdapterInput = serde_json::from_value(body).unwrap();
        SourceAdapter {
            adapter_type: i.adapter_type,
            enabled: i.enabled,
            connection_id: None,
            sealed_credentials: None,
            event_filter: i.event_filter,
            field_mapping: i.field_mapping,
            blob_source: i.blob_source,
            batching: i.batching,
            dedup_key: i.dedup_key,
            writeback: i.writeback,
            event_type_field: i.event_type_field,
            id_column: i.id_column,
            table: i.table,
            schema: i.schema,
            webhook_secret_sha256: String::new(),
            configured_at: String::new(),
        }
    }

    #[test]
    fn a_supabase_body_without_a_type_is_not_an_event_to_ignore() {
        let a = adapter(json!({"adapter_type": "supabase", "table": "a"}));
        let body = json!({"table": "a", "schema": "public", "record": {"id": 1}});
        let Err(e) = screen(&a, &body) else { panic!("accepted") };
        assert!(e.0.starts_with("not a Supabase database webhook payload: no \"type\""), "{}", e.0);
        for odd in [json!(7), json!(true), json!(null), json!(["INSERT"])] {
            let body = json!({"type": odd, "table": "a", "schema": "public", "record": {"id": 1}});
            assert!(screen(&a, &body).is_err(), "type {odd} is not a Supabase operation");
        }
        let truncate = json!({"type": "TRUNCATE", "table": "a", "schema": "public", "record": null});
        assert!(matches!(screen(&a, &truncate), Ok(Screen::Ignored)), "a type outside the filter is still ignored");
    }

    fn schema() -> BucketSchema {
        serde_json::from_value(json!({"properties": {
            "video": {"type": "video"}, "duration": {"type": "float"}, "title": {"type": "string", "required": true}
        }}))
        .unwrap()
    }

    #[test]
    fn a_payload_is_an_object() {
        let a = adapter(json!({"adapter_type": "generic_webhook"}));
        for bare in [json!(null), json!(42), json!("s"), json!([]), json!([{"type": "x"}])] {
            let e = screen(&a, &bare).unwrap_err();
            assert!(e.0.contains("must be a JSON object"), "{bare}: {}", e.0);
        }
        assert!(screen(&a, &json!({})).is_ok());
    }

    #[test]
    fn a_dedup_value_or_upstream_id_is_at_most_4_kib() {
        let a = adapter(json!({"adapter_type": "generic_webhook", "dedup_key": "id", "field_mapping": {"t": "title"}}));
        let fits = json!({"id": "k".repeat(MAX_KEY_BYTES), "t": "x"});
        assert!(matches!(screen(&a, &fits), Ok(Screen::Accepted(_))));
        let long = json!({"id": "k".repeat(MAX_KEY_BYTES + 1), "t": "x"});
        let e = screen(&a, &long).err().unwrap();
        assert!(e.0.contains("dedup_key \"id\"") && e.0.contains("4097 bytes long, at most 4096"), "{}", e.0);
    }

    #[test]
    fn a_mapped_file_property_takes_a_url() {
        let a = adapter(json!({"adapter_type": "generic_webhook", "field_mapping": {"v": "video", "t": "title"}}));
        let ok = json!({"v": "https://cdn.example/v.mp4", "t": "x"});
        let Screen::Accepted(s) = screen(&a, &ok).unwrap() else { panic!() };
        assert_eq!(materialize(&a, &schema(), &ok, &ok, &s).unwrap().metadata["video"], "https://cdn.example/v.mp4");
        let bad = json!({"v": "not a url", "t": "x"});
        let e = materialize(&a, &schema(), &bad, &bad, &s).unwrap_err();
        assert!(e.0.contains("video property takes an http(s) URL"), "{}", e.0);
        let spaced = json!({"v": "  https://cdn.example/v.mp4\n", "t": "x"});
        let d = materialize(&a, &schema(), &spaced, &spaced, &s).unwrap();
        assert_eq!(d.metadata["video"], "https://cdn.example/v.mp4", "stored trimmed");
        let login = json!({"v": "https://u:secret@cdn.example/v.mp4", "t": "x"});
        let e = materialize(&a, &schema(), &login, &login, &s).unwrap_err();
        assert!(e.0.contains("with a user name or password") && !e.0.contains("secret"), "{}", e.0);
        // Every file type: text too (a text file's URL), as blob_source's text blobs.
        let a = adapter(json!({"adapter_type": "generic_webhook", "field_mapping": {"d": "doc", "t": "title"}}));
        let schema: BucketSchema = serde_json::from_value(json!({"properties": {
            "doc": {"type": "text"}, "title": {"type": "string"}
        }}))
        .unwrap();
        for bad in ["not a url", "ftp://x/y", "https://u:pw@h.example/x"] {
            let body = json!({"d": bad, "t": "x"});
            let e = materialize(&a, &schema, &body, &body, &s).unwrap_err();
            assert!(e.0.contains("text property takes an http(s) URL") && !e.0.contains("pw@"), "{bad}: {}", e.0);
        }
        let ok = json!({"d": "https://cdn.example/a.txt", "t": "x"});
        assert_eq!(materialize(&a, &schema, &ok, &ok, &s).unwrap().metadata["doc"], "https://cdn.example/a.txt");
    }

    #[test]
    fn a_null_or_blank_file_field_is_no_blob() {
        let a = adapter(json!({"adapter_type": "generic_webhook", "field_mapping": {"t": "title", "v": "video"},
            "blob_source": {"file_field": "u", "blob_type": "video", "target_property": "video"}}));
        for none in [json!(null), json!(""), json!(" \n")] {
            let p = json!({"u": none, "v": none, "t": "x"});
            let Screen::Accepted(s) = screen(&a, &p).unwrap() else { panic!() };
            let d = materialize(&a, &schema(), &p, &p, &s).unwrap();
            assert!(d.blobs.is_empty() && !d.metadata.contains_key("video"), "{none}");
        }
        // Missing is still a 422 (a file_field that names nothing is a mistake), as is a
        // required file property left without one.
        let p = json!({"t": "x"});
        let Screen::Accepted(s) = screen(&a, &p).unwrap() else { panic!() };
        assert!(materialize(&a, &schema(), &p, &p, &s).unwrap_err().0.contains("missing from the payload"));
        let required: BucketSchema = serde_json::from_value(
            json!({"properties": {"video": {"type": "video", "required": true}, "title": {"type": "string"}}}),
        )
        .unwrap();
        let p = json!({"u": null, "t": "x"});
        let e = materialize(&a, &required, &p, &p, &s).unwrap_err();
        assert!(e.0.contains("required property \"video\""), "{}", e.0);
    }

    #[test]
    fn a_storage_path_is_read_as_a_public_object_url() {
        let base = storage_base("https://abcd.supabase.co", "listing-images").unwrap();
        assert_eq!(base.as_str(), "https://abcd.supabase.co/storage/v1/object/public/listing-images");
        let prefixed = storage_base("https://h.example/supabase/", "b").unwrap();
        assert_eq!(prefixed.as_str(), "https://h.example/supabase/storage/v1/object/public/b");
        for (path, url) in [
            ("7/front.jpg", "https://abcd.supabase.co/storage/v1/object/public/listing-images/7/front.jpg"),
            (" /7/front.jpg ", "https://abcd.supabase.co/storage/v1/object/public/listing-images/7/front.jpg"),
            (
                "my photo #1?.jpg",
                "https://abcd.supabase.co/storage/v1/object/public/listing-images/my%20photo%20%231%3F.jpg",
            ),
            ("100%.jpg", "https://abcd.supabase.co/storage/v1/object/public/listing-images/100%25.jpg"),
        ] {
            assert_eq!(storage_url(&base, path).as_deref(), Some(url), "{path:?}");
        }
        for bad in [
            "../secret.jpg",
            "a/../../b",
            "a//b",
            "a/./b",
            "a/",
            "ftp://x/y",
            ".\t./.\t./x",
            "a/.\r./b",
            "a/.\n./b",
            "front\tphoto.jpg",
            "a\u{0}b",
        ] {
            assert_eq!(storage_url(&base, bad), None, "{bad:?}");
        }
        // A ':' is a name's character (not a scheme), and a '\\' or an encoded dot stays in its name.
        for (path, tail) in [
            ("user:42/avatar.png", "/listing-images/user:42/avatar.png"),
            ("photo:1.jpg", "/listing-images/photo:1.jpg"),
            ("a\\..\\b", "/listing-images/a%5C..%5Cb"),
            ("%2e%2e/x", "/listing-images/%252e%252e/x"),
            ("//evil.example/x", "/listing-images/evil.example/x"),
        ] {
            let url = storage_url(&base, path).unwrap_or_default();
            assert!(url.starts_with("https://abcd.supabase.co/storage/v1/") && url.ends_with(tail), "{path:?}: {url}");
        }
        // In a draft: a URL is kept, a path resolved, a bad path refused.
        let a = adapter(json!({"adapter_type": "supabase", "table": "t", "field_mapping": {"record.t": "title"},
            "blob_source": {"file_field": "record.u", "blob_type": "video", "storage_bucket": "listing-images"}}));
        let draft = |u: &str| {
            let p = json!({"type": "INSERT", "table": "t", "schema": "public", "record": {"id": 1, "t": "x", "u": u}, "old_record": null});
            let Screen::Accepted(s) = screen(&a, &p).unwrap() else { panic!() };
            materialize_with_storage(&a, &schema(), &p, &p, &s, Some(&base))
        };
        assert_eq!(draft("https://cdn.example/v.mp4").unwrap().blobs[0].url, "https://cdn.example/v.mp4");
        assert!(draft("7/v.mp4").unwrap().blobs[0].url.ends_with("/public/listing-images/7/v.mp4"));
        assert!(draft("../v.mp4").unwrap_err().0.contains("or a path in the Storage bucket"));
        // A miswritten URL is refused as one, not read as a path named `https:cdn.example`.
        for raw in ["https:cdn.example/v.mp4", "https:///cdn.example/v.mp4"] {
            assert!(draft(raw).unwrap_err().0.contains("two slashes"), "{raw}");
            assert!(!needs_storage(&a, &json!({"record": {"u": raw}})), "{raw}");
        }
        // The bucket's URL is needed (and its credentials read) for a path only.
        let doc = |u: Value| json!({"record": {"u": u}});
        assert!(needs_storage(&a, &doc(json!("7/v.mp4"))));
        for no in [json!("https://cdn.example/v.mp4"), json!(null), json!(" "), json!(7)] {
            assert!(!needs_storage(&a, &doc(no.clone())), "{no}");
        }
    }

    #[test]
    fn a_mux_playback_url_not_made_says_why() {
        let a = adapter(json!({"adapter_type": "mux", "field_mapping": {"asset_id": "title"},
            "blob_source": {"file_field": "playback_url", "blob_type": "video", "target_property": "video"}}));
        let p = json!({"type": "video.asset.ready", "data": {"id": "a1"}});
        let Screen::Accepted(s) = screen(&a, &p).unwrap() else { panic!() };
        let doc = json!({"asset_id": "a1", "playback_id": "play_5"});
        let e = materialize(&a, &schema(), &p, &doc, &s).unwrap_err();
        assert!(e.0.contains("playback_id \"play_5\" is not letters and digits"), "{}", e.0);
        // Without a playback ID at all: not a field the payload lacks, an asset without one.
        let doc = json!({"asset_id": "a1", "status": "preparing"});
        let e = materialize(&a, &schema(), &p, &doc, &s).unwrap_err();
        assert!(e.0.contains("the asset has no playback ID (its status: \"preparing\")"), "{}", e.0);
        assert!(!e.0.contains("missing from the payload"), "{}", e.0);
        // With a usable one (so not why): the plain message.
        let doc = json!({"asset_id": "a1", "playback_id": "Pb5"});
        let e = materialize(&a, &schema(), &p, &doc, &s).unwrap_err();
        assert!(e.0.ends_with("is missing from the payload"), "{}", e.0);
    }

    #[test]
    fn a_blob_url_is_stored_trimmed() {
        let a = adapter(json!({"adapter_type": "generic_webhook", "field_mapping": {"t": "title"},
            "blob_source": {"file_field": "u", "blob_type": "video", "target_property": "video"}}));
        let p = json!({"u": " https://x.test/v.mp4 ", "t": "x"});
        let Screen::Accepted(s) = screen(&a, &p).unwrap() else { panic!() };
        assert_eq!(materialize(&a, &schema(), &p, &p, &s).unwrap().blobs[0].url, "https://x.test/v.mp4");
        // What the parser forgives inside is stored as it writes it: a valid URL.
        for (raw, stored) in [
            ("https://x.test/my video.mp4", "https://x.test/my%20video.mp4"),
            ("https://x.test/a\nb.mp4", "https://x.test/a%0Ab.mp4"),
            ("https://x.test/a\tb\r.mp4", "https://x.test/a%09b%0D.mp4"),
            ("https://x.test/a\u{0}b.mp4", "https://x.test/a%00b.mp4"),
        ] {
            let p = json!({"u": raw, "t": "x"});
            assert_eq!(materialize(&a, &schema(), &p, &p, &s).unwrap().blobs[0].url, stored, "{raw:?}");
        }
        // Written as another URL than the one the parser reads (`https://x.test/v.mp4` for
        // each): refused, naming the field and why, not stored as a URL nobody sent.
        for raw in ["https:///x.test/v.mp4", "https:x.test/v.mp4", "https:\\\\x.test\\v.mp4", " HTTPS:/x.test/v.mp4"] {
            let p = json!({"u": raw, "t": "x"});
            let e = materialize(&a, &schema(), &p, &p, &s).unwrap_err();
            assert!(e.0.starts_with("blob_source.file_field \"u\" must be written https://host/"), "{raw:?}: {}", e.0);
        }
        let p = json!({"u": "HTTPS://x.test/v.mp4?q=1#f", "t": "x"});
        assert_eq!(materialize(&a, &schema(), &p, &p, &s).unwrap().blobs[0].url, "https://x.test/v.mp4?q=1#f");
        // A login in a URL refused for another reason is not quoted either.
        for raw in ["https://u:s3cret@x.test:99999/a", "ftp://u:s3cret@x.test/a", "https://u:s3cret@/a"] {
            let p = json!({"u": raw, "t": "x"});
            let e = materialize(&a, &schema(), &p, &p, &s).unwrap_err();
            assert!(!e.0.contains("s3cret") && e.0.contains("***@"), "{raw:?}: {}", e.0);
        }
        // A login in the URL is refused, not stored (nor shown, nor sent in events).
        for raw in ["https://user:pw@x.test/v.mp4", "https://user@x.test/v.mp4", " http://:pw@x.test/v.mp4"] {
            let p = json!({"u": raw, "t": "x"});
            let e = materialize(&a, &schema(), &p, &p, &s).unwrap_err();
            assert!(e.0.contains("a URL with a user name or password") && !e.0.contains("pw"), "{raw:?}: {}", e.0);
        }
    }

    #[test]
    fn filter_dedup_mapping_blob() {
        let a = adapter(json!({
            "adapter_type": "generic_webhook",
            "event_filter": {"event_types": ["asset.ready"]},
            "dedup_key": "data.id",
            "field_mapping": {"data.tracks.0.duration": "duration", "data.title": "title"},
            "blob_source": {"file_field": "data.url", "blob_type": "video", "target_property": "video"},
        }));
        assert_eq!(screen(&a, &json!({"type": "other"})).unwrap(), Screen::Ignored);
        assert_eq!(screen(&a, &json!({"data": {}})).unwrap(), Screen::Ignored);
        assert!(screen(&a, &json!({"type": "asset.ready"})).is_err(), "no dedup value");
        for (useless, said) in [
            (json!(true), "a boolean (true)"),
            (json!(""), "an empty string"),
            (json!(" "), "a blank string"),
            (json!("\t\n\u{3000}"), "a blank string"),
            (json!(null), "null"),
            (json!({"a": 1}), "an object"),
            (json!([]), "an array"),
        ] {
            let e = screen(&a, &json!({"type": "asset.ready", "data": {"id": useless}})).unwrap_err();
            assert!(e.0.starts_with(&format!("dedup_key \"data.id\" is {said}")), "{useless}: {}", e.0);
            assert!(e.0.ends_with("an ID must be a string (not blank) or a number"), "{useless}: {}", e.0);
        }
        let e = screen(&a, &json!({"type": "asset.ready", "data": "a1"})).unwrap_err();
        assert!(e.0.starts_with("dedup_key \"data.id\" is missing from the payload: an ID must be"), "{}", e.0);
        for inexact in [json!(1.5), json!(1e30)] {
            let e = screen(&a, &json!({"type": "asset.ready", "data": {"id": inexact}})).unwrap_err();
            assert!(e.0.contains("send it as a string"), "{inexact}: {}", e.0);
        }
        let p = json!({"type": "asset.ready", "data": {"id": 7, "title": "t", "url": "https://x.test/v.mp4",
            "tracks": [{"duration": 1.5}]}});
        let Screen::Accepted(s) = screen(&a, &p).unwrap() else { panic!() };
        assert_eq!(s.dedup_value.as_deref(), Some("7"));
        let d = materialize(&a, &schema(), &p, &p, &s).unwrap();
        assert_eq!(d.metadata["duration"], json!(1.5));
        assert_eq!(d.blobs[0].url, "https://x.test/v.mp4");
        assert_eq!(d.source.external_id.as_deref(), Some("7"));

        let mut bad = p.clone();
        bad["data"]["tracks"][0]["duration"] = json!("long");
        assert!(materialize(&a, &schema(), &bad, &bad, &s).unwrap_err().0.contains("float"));
        let mut no_title = p.clone();
        no_title["data"].as_object_mut().unwrap().remove("title");
        assert!(materialize(&a, &schema(), &no_title, &no_title, &s).unwrap_err().0.contains("required"));
        let mut no_url = p.clone();
        no_url["data"]["url"] = json!("not a url");
        assert!(materialize(&a, &schema(), &no_url, &no_url, &s).is_err());
    }
}
