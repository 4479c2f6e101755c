//! A parsed request and the checks every handler shares: auth, namespace, JSON bodies.

use std::collections::HashMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use warp::http::{HeaderMap, HeaderName, Method};

use crate::adapter::verify::Proof;
use crate::catalog::{valid_namespace, DEFAULT_NAMESPACE};
use crate::error::ApiError;
use crate::lenient;

use super::HttpState;

pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: HashMap<String, String>,
    /// A query parameter given more than once (`?limit=2&limit=3`): refused by
    /// [`Request::known_params`] rather than one of the values silently winning.
    repeated: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// An ingest its head authenticated before the body was read (see
    /// `inbound::answer_before_body`): not checked again.
    pub head_proof: Option<Proof>,
}

impl Request {
    pub fn new(method: Method, path: &str, query: &str, headers: HeaderMap, body: Bytes) -> Request {
        let mut params = HashMap::new();
        let mut repeated = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()).into_owned() {
            match params.entry(k) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    repeated.get_or_insert_with(|| e.key().clone());
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(v);
                }
            }
        }
        Request { method, path: path.to_string(), query: params, repeated, headers, body, head_proof: None }
    }

    /// Path segments, ignoring a trailing slash.
    pub fn segments(&self) -> Segments<'_> {
        segments(&self.path)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A credential header ([`sent_text`]): sent but not text is still sent.
    pub fn credential(&self, name: &HeaderName) -> Option<std::borrow::Cow<'_, str>> {
        sent_text(&self.headers, name)
    }

    /// Requires a valid admin API key, and no query parameter: every admin endpoint but the
    /// lists (see [`Request::authenticate_list`]) takes none, and a typo (`?dry_run=1` on a
    /// DELETE) must not be ignored. The 401 comes first: a caller without a key learns nothing.
    pub fn authenticate(&self, state: &HttpState) -> Result<(), ApiError> {
        self.authenticate_list(state, &[])
    }

    /// [`Request::authenticate`] for an endpoint that takes the query parameters `params`.
    pub fn authenticate_list(&self, state: &HttpState, params: &[&str]) -> Result<(), ApiError> {
        if !state.keys.verify_headers(&self.headers) {
            return Err(ApiError::Unauthorized);
        }
        self.known_params(params)
    }

    /// The `X-Namespace` of the request (default `default`).
    /// A header that is there but not text, or given twice, is refused rather than read as
    /// absent: that would silently act on the `default` namespace.
    pub fn namespace(&self) -> Result<String, ApiError> {
        let mut given = self.headers.get_all("x-namespace").iter();
        let only = match (given.next(), given.next()) {
            (None, _) => return Ok(DEFAULT_NAMESPACE.to_string()),
            (Some(ns), None) => ns.to_str().ok().filter(|ns| valid_namespace(ns)),
            (Some(_), Some(_)) => None,
        };
        match only {
            Some(ns) => Ok(ns.to_string()),
            None => Err(ApiError::BadRequest {
                code: "invalid_namespace",
                message: "X-Namespace must be given once, 1–64 characters of letters, digits, - and _".into(),
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

    /// Refuses a compressed body (415 naming the encoding): hookline does not inflate request
    /// bodies (a small gzip can inflate past any size limit), and parsing the compressed
    /// bytes would only report "expected value at line 1 column 1".
    pub fn require_identity_encoding(&self) -> Result<(), ApiError> {
        match self.header("content-encoding").map(str::trim) {
            None | Some("") => Ok(()),
            Some(e) if e.eq_ignore_ascii_case("identity") => Ok(()),
            Some(e) => Err(ApiError::UnsupportedMediaType(format!(
                "Content-Encoding {e:?} is not supported: send the body uncompressed"
            ))),
        }
    }

    /// The body as any JSON value: 415 for a non-JSON content type or a compressed body, 400
    /// when it does not parse or names a key twice (an admin body's second `url` would
    /// silently win over the first).
    pub fn json_value(&self) -> Result<serde_json::Value, ApiError> {
        self.require_json_content_type()?;
        self.require_identity_encoding()?;
        parse_json_strict(&self.body)
    }

    /// For a POST that takes no fields (`…/flush`, `…/submit`, the retries) and every DELETE:
    /// nothing, `{}` or `null`. Any field is a 422 as an unknown field is elsewhere: the caller
    /// meant to set something this does not take. Such a POST's declared type is not looked at
    /// (`curl -d '{}'` says form data; the README promises it); a DELETE's is, as on the other
    /// admin routes that read a body: a body declared as anything but JSON is a 415 and
    /// deletes nothing (a PATCH sent so is a 415 too: the same request, another verb). A
    /// DELETE without a body deletes whatever type a client declares by default: there is
    /// no media to refuse.
    pub fn no_fields(&self) -> Result<(), ApiError> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if self.method == Method::DELETE {
            self.require_json_content_type()?;
        }
        self.require_identity_encoding()?;
        match parse_json_strict(&self.body)? {
            serde_json::Value::Null => Ok(()),
            serde_json::Value::Object(fields) => match fields.keys().min() {
                None => Ok(()),
                Some(k) => Err(ApiError::validation(k.as_str(), "unknown field: this endpoint takes no fields")),
            },
            _ => Err(ApiError::validation("body", "must be empty or {}: this endpoint takes no fields")),
        }
    }

    /// An upstream's payload: JSON whatever its declared type (senders label it loosely),
    /// repeated keys read as most parsers do; 415 for a compressed body.
    pub fn payload_json(&self) -> Result<serde_json::Value, ApiError> {
        self.require_identity_encoding()?;
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

    /// 422 for a query parameter the endpoint does not take: a typo (`?stauts=dead`) would
    /// otherwise be ignored, and the answer look like what was asked for.
    fn known_params(&self, known: &[&str]) -> Result<(), ApiError> {
        if let Some(k) = self.repeated.as_deref().filter(|k| known.contains(k)) {
            return Err(ApiError::validation(k, "given more than once; give it once"));
        }
        match self.query.keys().filter(|k| !known.contains(&k.as_str())).min() {
            None => Ok(()),
            Some(k) if known.is_empty() => {
                Err(ApiError::validation(k.as_str(), "unknown query parameter; this endpoint takes none"))
            }
            Some(k) => Err(ApiError::validation(
                k.as_str(),
                format!("unknown query parameter; this endpoint takes {}", known.join(", ")),
            )),
        }
    }

    /// A list endpoint's `limit`: 1 to [`MAX_PAGE`], 100 when absent; anything else is a 422
    /// (not silently another page size).
    pub fn page_limit(&self) -> Result<usize, ApiError> {
        self.page_limit_or(100)
    }

    /// [`Request::page_limit`] with another default (the lists that were not paged before).
    /// Plain decimal digits only: Rust's integer parsing also takes `+5` and `05`, and a
    /// client that sends them (a template's sign or padding) should hear so rather than come to
    /// depend on it. Every value refused gets the one message, with the range.
    pub fn page_limit_or(&self, default: usize) -> Result<usize, ApiError> {
        let Some(raw) = self.query.get("limit") else { return Ok(default) };
        let plain = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) && !raw.starts_with('0');
        match raw.parse::<usize>() {
            Ok(n) if plain && (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::validation(
                "limit",
                format!("must be within 1–{MAX_PAGE} (digits only: no sign, no leading zero), got {raw:?}"),
            )),
        }
    }

    /// A list endpoint's `cursor`, when given: an ID of the kind the list returns (`valid`),
    /// else a 422 ([`not_a_cursor`]). The item need not exist any more: the page starts just
    /// after its key.
    pub fn cursor(&self, valid: fn(&str) -> bool) -> Result<Option<&str>, ApiError> {
        match self.query.get("cursor") {
            None => Ok(None),
            Some(c) if valid(c) => Ok(Some(c)),
            Some(_) => Err(not_a_cursor()),
        }
    }
}

/// The 422 for a `cursor` a list did not hand out: read as a position, it would skip or
/// repeat items, or answer an empty page that looks like the end of the list.
pub fn not_a_cursor() -> ApiError {
    ApiError::validation("cursor", "not a cursor of this list: give a page's next_cursor as it was returned")
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
    let body = lenient::without_bom(body);
    serde_json::from_slice(body).or_else(|e| match lenient::mend_lone_surrogates(body, lenient::Mend::Replace) {
        // Mended escapes keep their length: the error, if any, is placed as in the body.
        Some(mended) => serde_json::from_slice(&mended).map_err(ApiError::bad_json),
        None => Err(ApiError::bad_json(e)),
    })
}

/// A 422 when `raw`, a JSON body, holds an integer past 64 bits: parsed, it is a double, and
/// it would reach receivers (deliveries, writebacks) rounded, where its sender could have
/// sent it as a string. `parts` gives the body's parsed fields that are passed on, by name
/// (asked for only when the text holds such an integer).
/// Named by its path when it is the only candidate (parsed, such an integer is a double of
/// 2^63 or more, as is a float written so, `1e19`, which is fine: in a body of up to 1 MiB
/// the sender should not have to search), else the candidates are listed.
pub fn refuse_rounded_integers(
    raw: &[u8],
    parts: impl FnOnce() -> Vec<(&'static str, serde_json::Value)>,
) -> Result<(), ApiError> {
    if !has_integer_past_64_bits(raw) {
        return Ok(());
    }
    // Only now: the parts' copies are not made for the usual body, which holds none.
    let parts = parts();
    fn huge(v: &serde_json::Value, path: String, found: &mut Vec<String>) {
        match v {
            serde_json::Value::Number(n) if crate::util::is_integer_past_64_bits(n) => found.push(path),
            serde_json::Value::Array(a) => {
                a.iter().enumerate().for_each(|(i, v)| huge(v, format!("{path}[{i}]"), found))
            }
            serde_json::Value::Object(o) => o.iter().for_each(|(k, v)| huge(v, format!("{path}.{k}"), found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for (name, value) in &parts {
        huge(value, name.to_string(), &mut found);
    }
    const ROUNDED: &str = "an integer past 64 bits, which would be delivered rounded: send it as a string";
    Err(match found.as_slice() {
        // The text holds one, and no part's parsed numbers show where: said of the body's
        // first part rather than let through.
        [] => ApiError::validation(parts.first().map_or("body", |(n, _)| *n), format!("holds {ROUNDED}")),
        [one] => ApiError::validation(one.clone(), format!("is {ROUNDED}")),
        several => {
            let in_one = parts.iter().map(|(n, _)| *n).find(|n| several.iter().all(|p| p.starts_with(n)));
            let field = in_one.or(parts.first().map(|(n, _)| *n)).unwrap_or("body");
            let at = several.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
            ApiError::validation(field, format!("holds {ROUNDED} (at one of: {at})"))
        }
    })
}

/// Whether a JSON text holds an integer past 64 bits (signed or not) outside its strings.
/// serde_json reads one as the nearest double, so passed on it would be another number
/// (`12345678901234567890123` delivered as `1.2345678901234568e22`, under a valid signature).
/// For a text already parsed as JSON: it only tells numbers from strings, not JSON from
/// anything else.
pub fn has_integer_past_64_bits(text: &[u8]) -> bool {
    let (mut in_string, mut i) = (false, 0);
    while let Some(&b) = text.get(i) {
        i += 1;
        match b {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'-' | b'0'..=b'9' if !in_string => {
                let start = i - 1;
                while text.get(i).is_some_and(|c| matches!(c, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')) {
                    i += 1;
                }
                let token = std::str::from_utf8(&text[start..i]).unwrap_or_default();
                let integer = !token.contains(['.', 'e', 'E']);
                if integer && token.parse::<i64>().is_err() && token.parse::<u64>().is_err() {
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

/// Like [`parse_json`], and a key given twice in one object is a 400 too. For the admin API,
/// where a repeated key is a mistake. Ingest payloads keep the usual last-wins reading: the
/// upstream's JSON is not ours to judge, and it signed those bytes.
pub fn parse_json_strict(body: &Bytes) -> Result<serde_json::Value, ApiError> {
    if body.is_empty() {
        return parse_json(body); // the empty-body message
    }
    let body = lenient::without_bom(body);
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde::Deserialize::deserialize(&mut de).and_then(|StrictValue(v)| de.end().map(|()| v));
    value.map_err(|e| match lenient::mend_lone_surrogates(body, lenient::Mend::Replace) {
        // What the admin API is sent is configuration and events of one's own: a half that
        // ingest would read as U+FFFD is named here rather than replaced.
        // (The error is the half's if mending moves or ends it: a mended escape keeps its
        // length, so any other error stays where it was.)
        Some(mended) if e.is_syntax() && moved(&e, &mended) => ApiError::BadRequest {
            code: "malformed_json",
            message: format!(
                "request body holds a \\u escape of half a UTF-16 surrogate pair without its other half \
                 (near line {}, column {}), which the admin API does not take: send both halves, or neither",
                e.line(),
                e.column()
            ),
        },
        _ => ApiError::bad_json(e),
    })
}

/// Whether `mended` parses, or fails elsewhere than `e` did. (As a `Value`, under the same
/// nesting limit as the strict parse: `IgnoredAny` has none.)
fn moved(e: &serde_json::Error, mended: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(mended)
        .map_or_else(|other| (other.line(), other.column()) != (e.line(), e.column()), |_| true)
}

/// A JSON value whose objects may not repeat a key.
struct StrictValue(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        // serde_json never yields a non-finite number.
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, serde_json::Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(serde_json::Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("the key {key:?} appears twice in one object")));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(serde_json::Value::Object(out))
    }
}

/// A path's segments: every route has fewer than eight, so they are kept inline (a request's
/// path is split up to three times on its way in, each once an allocation).
pub type Segments<'a> = smallvec::SmallVec<[&'a str; 8]>;

/// A path's segments, empty ones (doubled or trailing slashes) left out: how the router sees it.
pub fn segments(path: &str) -> Segments<'_> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// A secret hookline generated, sent back in a PATCH under `field` (copied from the answer
/// that showed it once): refused like any unknown field, but saying what to do instead
/// (leave it out, or send `rotate`); any other error as it is.
pub fn generated_secret_hint(e: ApiError, field: &str, what: &str, owner: &str, rotate: &str) -> ApiError {
    match e {
        ApiError::Validation { field: f, .. } if f == field => ApiError::validation(
            f,
            format!(
                "the {what} is generated by hookline and cannot be set; leave it out (the {owner} keeps its \
                 secret), or send \"{rotate}\": true for a new one"
            ),
        ),
        other => other,
    }
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

/// A header as sent, bytes that are not UTF-8 replaced (U+FFFD): for a credential
/// (`X-Webhook-Secret`, `Mux-Signature`), which sent in another encoding is a wrong or
/// malformed one, not a missing one (the refusal would point the sender the wrong way).
pub fn sent_text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<std::borrow::Cow<'a, str>> {
    headers.get(name).map(|v| String::from_utf8_lossy(v.as_bytes()))
}

/// The credential headers of the upstream routes, as names made once (a lookup by text
/// parses the name first, on every request).
pub const X_WEBHOOK_SECRET: HeaderName = HeaderName::from_static("x-webhook-secret");
pub const MUX_SIGNATURE: HeaderName = HeaderName::from_static("mux-signature");

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(s: &str) -> Result<serde_json::Value, ApiError> {
        parse_json_strict(&Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn integers_past_64_bits_are_found_outside_strings() {
        let found = |s: &str| has_integer_past_64_bits(s.as_bytes());
        for yes in [r#"{"a": 12345678901234567890123}"#, r#"[1, -9223372036854775809]"#, "18446744073709551616"] {
            assert!(found(yes), "{yes}");
        }
        for no in [
            r#"{"a": 18446744073709551615, "b": -9223372036854775808, "c": 1.5e300, "d": -0.0}"#,
            r#"{"s": "12345678901234567890123", "t": "a \" 99999999999999999999999"}"#,
            r#"{"12345678901234567890123": [1e25, 1E25, 123456789012345678901234.0]}"#,
        ] {
            assert!(!found(no), "{no}");
        }
    }

    #[test]
    fn a_lone_surrogate_escape_is_read_as_the_replacement_character() {
        let parse = |s: &str| parse_json(&Bytes::copy_from_slice(s.as_bytes()));
        let title = |s: &str| parse(s).unwrap()["t"].as_str().unwrap().to_string();
        assert_eq!(title(r#"{"t": "cut \ud83d"}"#), "cut \u{FFFD}");
        assert_eq!(
            title(r#"{"t": "\ude00 then \ud83d\ude00 and \uD800\u0041"}"#),
            "\u{FFFD} then \u{1F600} and \u{FFFD}A"
        );
        // Escaped backslashes and quotes are not escapes of a surrogate.
        assert_eq!(title(r#"{"t": "\\ud800 \" \ud800"}"#), "\\ud800 \" \u{FFFD}");
        assert_eq!(parse(r#"{"\ud800": 1}"#).unwrap()["\u{FFFD}"], 1);
        // Still refused: bodies that are not JSON for another reason, whatever they hold.
        for bad in [r#"{"t": "\ud800"#, r#"{"t": "\ud800",}"#, r#"{"t": "\uZZZZ"}"#, r#"{t: "\ud800"}"#] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_admin_api_names_a_lone_surrogate_half() {
        let message = |s: &str| match strict(s) {
            Err(ApiError::BadRequest { message, .. }) => message,
            other => panic!("{other:?}"),
        };
        let half = message(r#"{"payload": {"s": "\ud800"}}"#);
        assert!(half.contains("half a UTF-16 surrogate pair") && half.contains("(near line 1, column 26)"), "{half}");
        assert!(message(r#"{"s": "\ud800", x}"#).contains("surrogate"));
        // An error before the half is that error; so is one the half does not cause.
        let other = message(r#"{x, "s": "\ud800"}"#);
        assert!(other.starts_with("request body is not valid JSON: key must be a string"), "{other}");
        let deep = format!(r#"{{"b": {}{}, "a": "\ud800"}}"#, "[".repeat(200), "]".repeat(200));
        assert!(message(&deep).contains("levels"), "{}", message(&deep));
    }

    #[test]
    fn strict_parse_matches_serde_json_on_valid_bodies() {
        let body = r#"{"a": [1, -2, 3.5, 18446744073709551615, true, null, "x\u00e9"], "b": {"c": {}}, "d": []}"#;
        assert_eq!(strict(body).unwrap(), serde_json::from_str::<serde_json::Value>(body).unwrap());
    }

    #[test]
    fn strict_parse_refuses_repeated_keys_at_any_depth() {
        for body in [r#"{"url": "a", "url": "b"}"#, r#"{"x": [{"k": 1, "k": 1}]}"#] {
            let e = strict(body).unwrap_err();
            assert_eq!(e.status(), warp::http::StatusCode::BAD_REQUEST, "{body}");
            assert!(e.to_string().contains("appears twice"), "{e}");
        }
        // The same key in sibling objects is fine.
        assert!(strict(r#"[{"k": 1}, {"k": 2}]"#).is_ok());
    }

    #[test]
    fn strict_parse_refuses_what_serde_json_refuses() {
        for body in ["", "{", "{} x", "[1,]", "{\"a\": NaN}"] {
            assert_eq!(strict(body).unwrap_err().status(), warp::http::StatusCode::BAD_REQUEST, "{body:?}");
        }
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(strict(&deep).is_err(), "serde_json's recursion limit still applies");
    }
}
