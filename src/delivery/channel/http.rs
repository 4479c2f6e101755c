//! The HTTP channel (`"channel": "webhook"`): POST the envelope (or the rendered
//! `payload_template`) with custom headers, `X-Mixpeek-Secret`, and Standard Webhooks
//! signature headers.
//!
//! Safety at send time: the URL's scheme and literal address are re-checked against the
//! current config, host names go through the client's guarded resolver, redirects are never
//! followed (a 3xx is a failed attempt), and at most
//! [`crate::delivery::client::RESPONSE_CAP`] bytes of the response are read (see
//! [`crate::delivery::client`]).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http_body_util::Full;

use serde::{Deserialize, Serialize};

use super::{AttemptResult, Channel, ChannelDeps, Headers, Message, SendFuture};
use crate::delivery::client::{DeliveryClient, Request, SendError};
use crate::delivery::netguard::{check_url, NetPolicy};
use crate::delivery::retry::{classify_status, Outcome};
use crate::delivery::signature::sign;
use crate::delivery::template::Template;
use crate::error::ApiError;

/// Longest per-channel timeout accepted.
pub const MAX_TIMEOUT_SECONDS: f64 = 300.0;
/// Shortest per-channel timeout accepted: less cannot cover a TLS handshake and an answer,
/// so every attempt would time out. 0.1 s still lets a receiver on the same network (or a
/// test) be cut off quickly.
pub const MIN_TIMEOUT_SECONDS: f64 = 0.1;

/// Longest receiver URL accepted.
const MAX_URL_BYTES: usize = 2048;
/// Most custom headers on one channel.
const MAX_HEADERS: usize = 50;

/// Checks a receiver URL being saved (webhook and Slack channels), errors naming `field`:
/// its length, its text (the URL parser drops tabs and newlines silently: they are refused,
/// so what is stored and shown is what is called), then the address rules.
pub(super) fn check_receiver_url(field: String, raw: &str, policy: NetPolicy) -> Result<(), ApiError> {
    if raw.len() > MAX_URL_BYTES || raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::validation(
            field,
            format!("must be at most {MAX_URL_BYTES} bytes, without spaces or control characters"),
        ));
    }
    crate::delivery::netguard::check_target(raw, policy).map(drop).map_err(|e| ApiError::validation(field, e))
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    /// `null` is no headers, as for the other optional fields (a GET shows them as `null`).
    #[serde(default, deserialize_with = "crate::util::null_as_default")]
    pub headers: Headers,
    /// Seconds; default `delivery.request_timeout_seconds`.
    #[serde(default)]
    pub timeout: Option<f64>,
    #[serde(default)]
    pub payload_template: Option<String>,
    /// Sent as `X-Mixpeek-Secret` when set.
    #[serde(default)]
    pub secret: Option<String>,
}

// Hand-written so that a config printed for debugging never shows a secret: the URL's host
// only (its path or query may carry a token), header names only, no `secret`.
impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = url::Url::parse(&self.url).ok().and_then(|u| u.host_str().map(str::to_string));
        f.debug_struct("HttpConfig")
            .field("url_host", &host)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("payload_template", &self.payload_template)
            .field("secret", &self.secret.as_ref().map(|_| super::REDACTED))
            .finish()
    }
}

impl HttpConfig {
    /// The sizes of its headers and `secret` (see [`super::check_header_sizes`]), errors
    /// named under `at` (`channels[0]`). Run again on a PATCH once the values it kept
    /// (sent back as `********`) are back, as they are what is stored and sent.
    pub fn check_sizes(&self, at: &str) -> Result<(), ApiError> {
        let field = |f: &str| format!("{at}.configs.{f}");
        let secret = self.secret.as_deref().map(|s| (super::SECRET_HEADER, s, field("secret")));
        let named = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str(), format!("{}.{n}", field("headers"))));
        super::check_header_sizes(&field("headers"), named.chain(secret))
    }

    pub fn validate(&self, at: &str, policy: NetPolicy) -> Result<(), ApiError> {
        let field = |f: &str| format!("{at}.configs.{f}");
        check_receiver_url(field("url"), &self.url, policy)?;
        if self.headers.len() > MAX_HEADERS {
            return Err(ApiError::validation(field("headers"), format!("at most {MAX_HEADERS} headers")));
        }
        let owned = |name: &str| match name.eq_ignore_ascii_case(super::SECRET_HEADER) {
            // The shared secret may come as a header (seed 002) unless `secret` sets it.
            true => self.secret.is_some().then_some("`secret` already sets this header; send one of the two"),
            false => super::reserved_header(name).then_some(super::SET_BY_HOOKLINE),
        };
        super::check_header_set(&self.headers, |name| format!("{}.{name}", field("headers")), owned)?;
        self.check_sizes(at)?;
        if let Some(t) = self.timeout {
            if !(MIN_TIMEOUT_SECONDS..=MAX_TIMEOUT_SECONDS).contains(&t) {
                return Err(ApiError::validation(
                    field("timeout"),
                    "must be within 0.1–300 seconds (a shorter timeout would end every attempt before the \
                     receiver could answer)",
                ));
            }
        }
        if let Some(s) = &self.secret {
            if s.is_empty() || HeaderValue::from_str(s).is_err() {
                return Err(ApiError::validation(field("secret"), "must be a non-empty header-safe string"));
            }
        }
        if let Some(src) = &self.payload_template {
            Template::validate(src).map_err(|e| ApiError::validation(field("payload_template"), e))?;
        }
        Ok(())
    }
}

pub struct HttpChannel {
    url: url::Url,
    /// The URL as the request needs it, parsed once.
    uri: http::Uri,
    /// The custom headers and `X-Mixpeek-Secret`, built once.
    headers: HeaderMap,
    template: Option<Template>,
    timeout: Duration,
    deps: ChannelDeps,
}

impl HttpChannel {
    pub fn new(config: HttpConfig, deps: ChannelDeps) -> Result<HttpChannel, String> {
        let url = url::Url::parse(&config.url).map_err(|e| format!("stored URL does not parse: {e}"))?;
        let template = match &config.payload_template {
            Some(src) => Some(Template::load(src).map_err(|e| format!("payload_template: {e}"))?),
            None => None,
        };
        let uri = parse_uri(&url)?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| format!("header {k:?}: not a valid name"))?;
            let value = HeaderValue::from_str(v).map_err(|_| format!("header {k:?}: not a valid value"))?;
            headers.append(name, value);
        }
        if let Some(s) = &config.secret {
            let mut value = HeaderValue::from_str(s).map_err(|_| "secret: not a valid header value".to_string())?;
            value.set_sensitive(true);
            headers.insert("x-mixpeek-secret", value);
        }
        let timeout = config.timeout.map(Duration::from_secs_f64).unwrap_or(deps.default_timeout);
        Ok(HttpChannel { url, uri, headers, template, timeout, deps })
    }

    async fn attempt(&self, msg: &Message<'_>) -> AttemptResult {
        if let Err(e) = check_url(&self.url, self.deps.policy) {
            return AttemptResult::failed(Outcome::Retriable, "refused", e);
        }
        let (body, content_type) = match &self.template {
            Some(t) => match t.render(msg.event, msg.webhook_name) {
                Ok(s) => {
                    let ct = if serde_json::from_str::<serde_json::Value>(&s).is_ok() {
                        "application/json"
                    } else {
                        "text/plain; charset=utf-8"
                    };
                    (s.into_bytes(), ct)
                }
                Err(e) => {
                    return AttemptResult::failed(
                        Outcome::Permanent,
                        "error",
                        format!("payload_template failed to render: {e}"),
                    )
                }
            },
            // The record's serialized form is the envelope (see `EventRecord`): written straight
            // from it, without building a copy of the payload first.
            None => (serde_json::to_vec(msg.event).unwrap_or_default(), "application/json"),
        };
        let ts = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = sign(msg.signing_key, msg.id, ts, &body);
        let mut req = post(self.uri.clone(), body);
        let h = req.headers_mut();
        h.clone_from(&self.headers);
        // A custom Content-Type (validated at save time) wins over the default.
        h.entry(CONTENT_TYPE).or_insert(HeaderValue::from_static(content_type));
        for (name, value) in [
            ("webhook-id", msg.id.to_string()),
            ("webhook-timestamp", ts.to_string()),
            ("webhook-signature", signature),
        ] {
            match HeaderValue::try_from(value) {
                Ok(v) => {
                    h.insert(name, v);
                }
                Err(e) => return AttemptResult::failed(Outcome::Permanent, "error", format!("{name}: {e}")),
            }
        }
        // The channel's secret and custom header values are shown nowhere else by the API or
        // the store: not in an error either (see `excerpt_hiding`).
        let sent: Vec<&str> = self.headers.values().filter_map(|v| v.to_str().ok()).collect();
        exchange_hiding(&self.deps.client, req, self.timeout, &sent).await
    }
}

impl Channel for HttpChannel {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, msg: &'a Message<'a>) -> SendFuture<'a> {
        Box::pin(self.attempt(msg))
    }
}

/// A POST of `body` to `uri`, headers to be added.
pub(super) fn post(uri: http::Uri, body: impl Into<Bytes>) -> Request {
    let mut req = http::Request::new(Full::new(body.into()));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = uri;
    req
}

/// A stored URL as a request URI.
pub(super) fn parse_uri(url: &url::Url) -> Result<http::Uri, String> {
    http::Uri::try_from(url.as_str()).map_err(|e| format!("stored URL is not a valid request URI: {e}"))
}

/// Sends a prepared request and turns the answer into an attempt result: any 2xx delivers;
/// anything else (a 3xx too: redirects are never followed) is retried, with the start of the
/// response body in the error, the secrets `sent` (header values, a secret URL) hidden in it:
/// a receiver's body may echo the request (see [`excerpt_hiding`]). Shared by the HTTP-based
/// channels (webhook, Slack, SMS).
pub(super) async fn exchange_hiding(
    client: &DeliveryClient,
    req: Request,
    timeout: Duration,
    sent: &[&str],
) -> AttemptResult {
    let reply = match client.send(req, timeout).await {
        Ok(r) => r,
        Err(e) => {
            let result = match &e {
                SendError::Timeout(_) => "timeout",
                SendError::Refused(_) => "refused",
                SendError::Connect(_) => "connect",
                SendError::Request(_) => "error",
            };
            return AttemptResult::failed(Outcome::Retriable, result, e.to_string());
        }
    };
    let status = reply.status;
    let outcome = classify_status(status);
    let mut error = None;
    if outcome != Outcome::Delivered {
        let text = excerpt_hiding(&reply.body, sent);
        error = Some(if text.is_empty() {
            format!("HTTP {status}{}", why_not_delivered(status))
        } else {
            format!("HTTP {status}{}: {text}", why_not_delivered(status))
        });
    }
    let result = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "error",
    };
    AttemptResult {
        outcome,
        status_code: Some(status),
        error,
        retry_after: reply.retry_after,
        result,
        reached: Vec::new(),
        interrupted: false,
    }
}

/// What an error adds to a non-2xx status: a redirect (301, 302, 303, 307, 308) is not
/// followed; any other status, 304 included (an answer to a conditional GET, not a
/// redirect), is simply not a 2xx.
fn why_not_delivered(status: u16) -> &'static str {
    match status {
        301 | 302 | 303 | 307 | 308 => " (redirects are not followed)",
        300..=399 => " (not a 2xx)",
        _ => "",
    }
}

/// Shortest form of a secret hidden on its own: shorter ones ("1", "json", a 4-letter
/// password) are ordinary words too often, and blanking them out would garble the text.
const MIN_HIDDEN_CHARS: usize = 6;

/// The forms in which a receiver may echo a secret it was sent, each at least
/// [`MIN_HIDDEN_CHARS`] long: the value; its last word (the token of `Bearer <token>`); for
/// HTTP Basic credentials the decoded `user:password` and the password alone (a receiver
/// that logs the login it refused); and each of these percent-encoded (`%2B`, as in a URL),
/// form-encoded (`+` for a space) and base64-encoded (standard and URL-safe alphabets, the
/// padding left out: a receiver that echoes what it got in base64 shows the rest of its
/// padded text). Letter case is left to the matching ([`hide_in`]
/// ignores it: a receiver may lower-case a header it echoes), and as a JSON string holds
/// them (escaped; `/` also as `\/`, non-ASCII also as `\uXXXX`, and both, as PHP writes
/// them; `&<>` as `\u00XX`, as Go writes them) or an HTML page does (entities), and after
/// the `=` of a last word (`Token token="…"`). At most 55 forms a value.
pub(crate) fn secret_forms(value: &str) -> Vec<String> {
    let mut forms = Vec::with_capacity(55);
    for p in plain_forms(value) {
        use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        use base64::Engine;
        forms.extend([STANDARD_NO_PAD.encode(&p), URL_SAFE_NO_PAD.encode(&p)]);
        let form: String = url::form_urlencoded::byte_serialize(p.as_bytes()).collect();
        // As a JSON string holds it (a receiver echoing the request as JSON): `"` and `\`
        // escaped, and `/` as `\/` too, as PHP's encoder writes it.
        let json = serde_json::to_string(&p).unwrap_or_default();
        let json = json.get(1..json.len().saturating_sub(1)).unwrap_or_default().to_string();
        let slashes = json.replace('/', "\\/");
        // Python's json.dumps and PHP's json_encode write non-ASCII as `\uXXXX` by default.
        let (ascii, php) = (ascii_escaped(&json), ascii_escaped(&slashes));
        // Go's encoding/json writes `&`, `<` and `>` as `\u0026`, `\u003c`, `\u003e`; an
        // HTML page shows them (and quotes) as entities.
        let go = json.replace('&', "\\u0026").replace('<', "\\u003c").replace('>', "\\u003e");
        let html = p
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#39;");
        forms.extend([percent_encoded(&p), form, json, slashes, ascii, php, go, html, p]);
    }
    forms.retain(|f| f.chars().count() >= MIN_HIDDEN_CHARS);
    forms.sort();
    forms.dedup();
    forms
}

/// The secret as a receiver may see it before any encoding: the value, its last word, and
/// for HTTP Basic credentials the decoded `user:password` and the password (see
/// [`secret_forms`]).
fn plain_forms(value: &str) -> Vec<String> {
    use base64::Engine;
    let mut plain = vec![value.to_string()];
    if let Some((_, last)) = value.trim().rsplit_once(' ') {
        plain.push(last.to_string());
    }
    // `Token token="…"` (Rails' token scheme) and the like: what follows the last word's
    // `=`, quotes trimmed, is the credential a refusing receiver names.
    let last = value.trim().rsplit(' ').next().unwrap_or_default();
    if let Some((_, credential)) = last.rsplit_once('=') {
        plain.push(credential.trim_matches(['"', '\'']).to_string());
    }
    if let Some((scheme, credentials)) = value.trim().split_once(' ') {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(credentials.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        if let (true, Some(pair)) = (scheme.eq_ignore_ascii_case("basic"), decoded) {
            if let Some((_, password)) = pair.split_once(':') {
                plain.push(password.to_string());
            }
            plain.push(pair);
        }
    }
    plain
}

/// `s` with every non-ASCII character as JSON's `\uXXXX` (UTF-16, lower-case hex).
fn ascii_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// `s` with every byte but the URL-unreserved ones (`A-Z a-z 0-9 - . _ ~`) as `%XX`.
fn percent_encoded(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `text` with every form of every secret (see [`secret_forms`]) replaced by `********`,
/// ignoring ASCII letter case; longer forms first, so a whole value goes before its part.
pub(crate) fn hide_in(text: &str, secrets: &[&str]) -> String {
    hide_percent_decoded(&hide_forms(text, &forms_longest_first(secrets)), secrets)
}

/// `text` with every run that is a plain form of one of `secrets` (see [`plain_forms`]) once
/// its `%XX` escapes are decoded, ignoring ASCII letter case, replaced by `********`. A
/// receiver may percent-encode what it echoes in more ways than a list of forms holds: every
/// byte but the unreserved ones, or leaving `/` as it is (Python's `quote`), or `+`, or `:`.
fn hide_percent_decoded(text: &str, secrets: &[&str]) -> String {
    if !text.contains('%') {
        return text.to_string();
    }
    let bytes = text.as_bytes();
    // The decoded text (ASCII lower-cased), and where in `text` each of its bytes came from.
    let (mut decoded, mut from) = (Vec::with_capacity(bytes.len()), Vec::with_capacity(bytes.len()));
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| std::str::from_utf8(h).ok().filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit())));
        let (byte, len) = match escaped.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) => (b, 3),
            None => (bytes[i], 1),
        };
        decoded.push(byte.to_ascii_lowercase());
        from.push((i, i + len));
        i += len;
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for plain in secrets.iter().flat_map(|s| plain_forms(s)).filter(|p| p.chars().count() >= MIN_HIDDEN_CHARS) {
        let needle = plain.to_ascii_lowercase().into_bytes();
        for (at, window) in decoded.windows(needle.len()).enumerate() {
            if window == needle.as_slice() {
                runs.push((from[at].0, from[at + needle.len() - 1].1));
            }
        }
    }
    if runs.is_empty() {
        return text.to_string();
    }
    runs.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in runs {
        // Overlapping runs are hidden as one; a run that would cut a character is left (a
        // decoded match starts and ends on characters of `text`, see above, so none is).
        if start < last || !text.is_char_boundary(start) || !text.is_char_boundary(end) {
            if start < last && end > last && text.is_char_boundary(end) {
                last = end;
            }
            continue;
        }
        out.push_str(&text[last..start]);
        out.push_str(super::REDACTED);
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

/// Every form of every secret (see [`secret_forms`]), longest first.
fn forms_longest_first(secrets: &[&str]) -> Vec<String> {
    let mut forms: Vec<String> = secrets.iter().flat_map(|s| secret_forms(s)).collect();
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms
}

/// `text` with each of `forms` (longest first) replaced, ignoring ASCII letter case.
fn hide_forms(text: &str, forms: &[String]) -> String {
    let mut text = text.to_string();
    for f in forms {
        text = replace_ignoring_case(&text, f);
    }
    text
}

/// Every occurrence of `needle` in `text`, whatever the case of its ASCII letters, as
/// `********`. ASCII lower-casing keeps every byte where it was, so positions found in the
/// lower-cased text are positions (and character boundaries) of `text`.
fn replace_ignoring_case(text: &str, needle: &str) -> String {
    let hay = text.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase();
    if needle.is_empty() || !hay.contains(&needle) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, _) in hay.match_indices(&needle) {
        out.push_str(&text[last..i]);
        out.push_str(super::REDACTED);
        last = i + needle.len();
    }
    out.push_str(&text[last..]);
    out
}

/// The first 200 characters of a receiver's answer, for an error message, with every
/// secret we sent (header values, a secret URL), in any of the forms a receiver may echo it
/// in (see [`secret_forms`]), and the start of one cut off where the read stopped, replaced
/// by `********`: a receiver that echoes its request must not put a secret in `last_error`.
pub(crate) fn excerpt_hiding(body: &[u8], sent: &[&str]) -> String {
    let forms = forms_longest_first(sent);
    let mut text = hide_percent_decoded(&hide_forms(&String::from_utf8_lossy(body), &forms), sent);
    for s in &forms {
        // The start of a secret cut off where the body's read stopped (4+ characters).
        let lower = text.to_ascii_lowercase();
        let s = s.to_ascii_lowercase();
        if let Some(k) = (4..s.len()).rev().find(|&k| s.is_char_boundary(k) && lower.ends_with(&s[..k])) {
            text.truncate(text.len() - k);
            text.push_str(super::REDACTED);
        }
    }
    // Hidden before the excerpt is cut, so that no cut keeps part of one. Control characters
    // become spaces: the excerpt goes into log lines, which a receiver must not forge.
    let text: String = text.chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect();
    text.trim().to_string()
}

/// For metrics: how long an attempt took.
pub fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's encoding/json (go-httpbin's `/anything`, most Go services echoing a request)
    /// writes `&`, `<` and `>` as `\u0026`, `\u003c`, `\u003e`: a header value holding one
    /// of them, echoed so, is hidden too.
    #[test]
    fn a_secret_echoed_by_go_json_is_hidden() {
        let sent = ["k3y&s3cr3t<v4lue>"];
        let body = br#"{"headers":{"X-Api-Key":["k3y\u0026s3cr3t\u003cv4lue\u003e"]}}"#;
        let text = excerpt_hiding(body, &sent);
        assert!(!text.contains("s3cr3t"), "the secret is shown: {text}");
    }

    /// `Authorization: Token token="…"` (Rails' ActionController token scheme) or
    /// `Token token=…`: the credential is the part after `token=`, and a receiver that
    /// refuses it names it alone ("invalid token …").
    #[test]
    fn a_rails_style_token_echoed_alone_is_hidden() {
        for header in [r#"Token token="rails-tok-9f8e7d6c5b""#, "Token token=rails-tok-9f8e7d6c5b"] {
            let text = excerpt_hiding(b"{\"error\":\"invalid token rails-tok-9f8e7d6c5b\"}", &[header]);
            assert!(!text.contains("9f8e7d6c5b"), "{header}: the token is shown: {text}");
        }
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let c = HttpConfig {
            url: "https://hooks.example.com/in/SECRET-a?token=SECRET-b".into(),
            headers: Headers::from([("X-Api-Key".to_string(), "SECRET-c".to_string())]),
            timeout: Some(5.0),
            payload_template: None,
            secret: Some("SECRET-d".into()),
        };
        let slack = super::super::SlackConfig {
            webhook_url: "https://hooks.slack.com/services/SECRET-e".into(),
            template: Some("{{ event_type }}".into()),
        };
        let shown = format!("{c:?} {slack:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        for kept in ["hooks.example.com", "X-Api-Key", "event_type"] {
            assert!(shown.contains(kept), "{kept}: {shown}");
        }
    }

    #[test]
    fn only_redirects_are_called_redirects() {
        for s in [301, 302, 303, 307, 308] {
            assert_eq!(why_not_delivered(s), " (redirects are not followed)", "{s}");
        }
        for s in [300, 304, 305, 306] {
            assert_eq!(why_not_delivered(s), " (not a 2xx)", "{s}");
        }
        assert_eq!(why_not_delivered(500), "");
    }

    fn config(configs: serde_json::Value) -> Result<HttpConfig, serde_json::Error> {
        serde_json::from_value(configs)
    }

    #[test]
    fn headers_may_be_null_but_not_given_twice() {
        let policy = NetPolicy { allow_insecure_http: true, allow_private_networks: true };
        let c = config(serde_json::json!({"url": "http://127.0.0.1:9/", "headers": null})).unwrap();
        assert!(c.headers.is_empty());
        c.validate("channels[0]", policy).unwrap();
        let c = config(serde_json::json!({"url": "http://127.0.0.1:9/", "headers": {"X-A": "1", "x-a": "2"}})).unwrap();
        let err = c.validate("channels[0]", policy).unwrap_err();
        assert!(format!("{err:?}").contains("channels[0].configs.headers.x-a"), "{err:?}");
    }

    #[test]
    fn a_timeout_must_leave_time_for_an_answer() {
        let policy = NetPolicy { allow_insecure_http: true, allow_private_networks: true };
        for (t, ok) in [
            (0.0001, false),
            (0.0, false),
            (-1.0, false),
            (0.1, true),
            (0.3, true),
            (300.0, true),
            (300.5, false),
            (f64::NAN, false),
        ] {
            let c =
                HttpConfig { timeout: Some(t), ..config(serde_json::json!({"url": "http://127.0.0.1:9/"})).unwrap() };
            assert_eq!(c.validate("c", policy).is_ok(), ok, "{t}");
        }
    }

    #[test]
    fn an_excerpt_hides_what_we_sent_and_control_characters() {
        let body = b"invalid token tok-12345678 for Bearer tok-12345678\r\nX-Forged: yes\x1b[31m";
        let text = excerpt_hiding(body, &["Bearer tok-12345678", "short"]);
        assert!(!text.contains("tok-1234"), "{text}");
        assert!(!text.chars().any(char::is_control), "{text:?}");
        assert!(text.starts_with("invalid token ******** for ********"), "{text}");
        // Only the credential part of a long enough value is hidden on its own.
        assert_eq!(excerpt_hiding(b"abc is fine", &["Token abc"]), "abc is fine");
    }

    /// A receiver may echo a header in another form than it was sent: decoded, encoded for a
    /// URL, or with its case changed. Each of them is hidden.
    #[test]
    fn an_echoed_secret_is_hidden_in_any_form() {
        use base64::Engine;
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:pa ss/w0rd+1"));
        let sent = [
            basic.as_str(),
            "Bearer Tok_SeCrEt-123",
            "hook-secret-42",
            "hé-secret-42",
            "hé/x-secret-99",
            "~~~secret~~~",
        ];
        for (body, leaked) in [
            ("denied: alice:pa ss/w0rd+1".to_string(), "w0rd"),
            ("wrong password pa ss/w0rd+1 for alice".to_string(), "w0rd"),
            (format!("got {}", basic.to_lowercase()), &basic.to_lowercase()[6..]),
            ("pass=pa%20ss%2Fw0rd%2B1".to_string(), "w0rd"),
            ("pass=pa+ss%2fw0rd%2b1".to_string(), "w0rd"),
            ("authorization: bearer tok_secret-123".to_string(), "tok_secret"),
            ("token TOK_SECRET-123 expired".to_string(), "TOK_SECRET"),
            ("x-mixpeek-secret: HOOK-SECRET-42".to_string(), "SECRET-42"),
            // Echoed as JSON: `/` escaped by PHP-style encoders, `"` and `\` by every one.
            (r#"{"password":"pa ss\/w0rd+1"}"#.to_string(), "w0rd"),
            (r#"{"password":"pa ss/w0rd+1"}"#.to_string(), "w0rd"),
            // Python's json.dumps of a non-ASCII token.
            (r#"{"token":"h\u00e9-secret-42"}"#.to_string(), "secret-42"),
            // PHP's json_encode: `\/` and `\uXXXX` both.
            (r#"{"token":"h\u00e9\/x-secret-99"}"#.to_string(), "secret-99"),
            // Base64 of what was sent (`aG9vay1zZWNyZXQtNDI=`), in both alphabets.
            ("echo: aG9vay1zZWNyZXQtNDI=".to_string(), "aG9vay1zZWNyZXQtNDI"),
            ("echo: aMOpL3gtc2VjcmV0LTk5".to_string(), "aMOpL3gtc2VjcmV0LTk5"),
            ("echo: fn5+c2VjcmV0fn5+".to_string(), "c2VjcmV0"),
            ("echo: fn5-c2VjcmV0fn5-".to_string(), "c2VjcmV0"),
            // Percent-encoded in part: Python's `quote` leaves `/`; others leave `+` or `:`.
            ("quote=pa%20ss/w0rd%2B1".to_string(), "w0rd"),
            ("lower=pa%20ss/w0rd%2b1;".to_string(), "w0rd"),
            ("login=alice:pa%20ss%2Fw0rd+1".to_string(), "w0rd"),
            ("x=h%C3%A9/x-secret-99 y".to_string(), "secret-99"),
        ] {
            let text = excerpt_hiding(body.as_bytes(), &sent);
            assert!(!text.contains(leaked) && text.contains("********"), "{body} -> {text}");
        }
        // The user name alone is not the secret; a short password is not hidden on its own.
        let short = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("bob:pw1"));
        assert_eq!(excerpt_hiding(b"user alice unknown", &[&basic]), "user alice unknown");
        assert_eq!(excerpt_hiding(b"pw1 is short", &[&short]), "pw1 is short");
        assert_eq!(excerpt_hiding(b"pw%31 is short", &[&short]), "pw%31 is short");
        // Only the run that decodes to the secret goes, and the text around it stays.
        let text = hide_in("before %7E~~secret~%7e~ after 100%", &sent);
        assert_eq!(text, "before ******** after 100%");
        // Every form is at least 6 characters, and one value makes a bounded number of them.
        let forms = secret_forms(&basic);
        assert!(forms.iter().all(|f| f.len() >= MIN_HIDDEN_CHARS) && forms.len() <= 36, "{forms:?}");
        assert!(forms.contains(&"alice:pa ss/w0rd+1".to_string()) && forms.contains(&"pa%20ss%2Fw0rd%2B1".to_string()));
    }
}
