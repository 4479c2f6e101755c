//! The HTTP channel (`"channel": "webhook"`): POST the envelope (or the rendered
//! `payload_template`) with custom headers, `X-Mixpeek-Secret`, and Standard Webhooks
//! signature headers.
//!
//! Safety at send time: the URL's scheme and literal address are re-checked against the
//! current config, host names go through the client's guarded resolver, redirects are never
//! followed (a 3xx is a failed attempt), and at most [`RESPONSE_CAP`] bytes of the response
//! are read.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{AttemptResult, Channel, ChannelDeps, Headers, Message, SendFuture};
use crate::delivery::netguard::{check_url, NetPolicy};
use crate::delivery::retry::{classify_status, Outcome};
use crate::delivery::signature::sign;
use crate::delivery::template::Template;
use crate::error::ApiError;

/// Most response bytes read (for the error message); the rest is dropped unread.
pub const RESPONSE_CAP: usize = 4096;
/// Longest per-channel timeout accepted.
pub const MAX_TIMEOUT_SECONDS: f64 = 300.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub url: String,
    #[serde(default)]
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

impl HttpConfig {
    pub fn validate(&self, at: &str, policy: NetPolicy) -> Result<(), ApiError> {
        let field = |f: &str| format!("{at}.configs.{f}");
        let u =
            url::Url::parse(&self.url).map_err(|e| ApiError::validation(field("url"), format!("not a URL: {e}")))?;
        check_url(&u, policy).map_err(|e| ApiError::validation(field("url"), e))?;
        for (name, value) in &self.headers {
            let f = format!("{}.{name}", field("headers"));
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(ApiError::validation(f, "not a valid header name"));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(ApiError::validation(f, "not a valid header value"));
            }
            if super::reserved_header(name) {
                return Err(ApiError::validation(f, "this header is set by hookline and cannot be overridden"));
            }
        }
        if let Some(t) = self.timeout {
            if !(t > 0.0 && t <= MAX_TIMEOUT_SECONDS) {
                return Err(ApiError::validation(field("timeout"), "must be a number of seconds in (0, 300]"));
            }
        }
        if let Some(s) = &self.secret {
            if s.is_empty() || reqwest::header::HeaderValue::from_str(s).is_err() {
                return Err(ApiError::validation(field("secret"), "must be a non-empty header-safe string"));
            }
        }
        if let Some(src) = &self.payload_template {
            Template::compile(src).map_err(|e| ApiError::validation(field("payload_template"), e))?;
        }
        Ok(())
    }
}

pub struct HttpChannel {
    config: HttpConfig,
    url: url::Url,
    template: Option<Template>,
    timeout: Duration,
    deps: ChannelDeps,
}

impl HttpChannel {
    pub fn new(config: HttpConfig, deps: ChannelDeps) -> Result<HttpChannel, String> {
        let url = url::Url::parse(&config.url).map_err(|e| format!("stored URL does not parse: {e}"))?;
        let template = match &config.payload_template {
            Some(src) => Some(Template::compile(src).map_err(|e| format!("payload_template: {e}"))?),
            None => None,
        };
        let timeout = config.timeout.map(Duration::from_secs_f64).unwrap_or(deps.default_timeout);
        Ok(HttpChannel { config, url, template, timeout, deps })
    }

    async fn attempt(&self, msg: &Message<'_>) -> AttemptResult {
        if let Err(e) = check_url(&self.url, self.deps.policy) {
            return AttemptResult::failed(Outcome::Retriable, "refused", e);
        }
        let (body, content_type) = match &self.template {
            Some(t) => match t.render(msg.event) {
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
        let mut rb = self
            .deps
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, content_type);
        for (k, v) in &self.config.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        if let Some(s) = &self.config.secret {
            rb = rb.header("X-Mixpeek-Secret", s.as_str());
        }
        rb = rb
            .header("webhook-id", msg.id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body);
        exchange(rb, self.timeout).await
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

/// Sends a prepared request and turns the answer into an attempt result: any 2xx delivers;
/// anything else (a 3xx too: redirects are never followed) is retried, with the start of the
/// response body in the error. Shared by the HTTP-based channels (webhook, Slack, SMS).
pub(super) async fn exchange(rb: reqwest::RequestBuilder, timeout: Duration) -> AttemptResult {
    let mut resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => return from_reqwest(&e, timeout),
    };
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let outcome = classify_status(status);
    let mut error = None;
    // Read even a 2xx body (see `read_capped`); a failure's goes into the error message.
    let snippet = read_capped(&mut resp).await;
    if outcome != Outcome::Delivered {
        let text = String::from_utf8_lossy(&snippet);
        let text: String = text.chars().take(200).collect();
        let redirect = if (300..400).contains(&status) { " (redirects are not followed)" } else { "" };
        error = Some(if text.trim().is_empty() {
            format!("HTTP {status}{redirect}")
        } else {
            format!("HTTP {status}{redirect}: {}", text.trim())
        });
    }
    let result = match status {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "error",
    };
    AttemptResult { outcome, status_code: Some(status), error, retry_after, result, reached: Vec::new() }
}

/// Reads at most [`RESPONSE_CAP`] bytes of a response body, never the whole of a large one.
/// A small body read to its end lets the connection go back to the pool (an unread body makes
/// the client close it); a larger one is dropped unread, closing the connection.
pub async fn read_capped(resp: &mut reqwest::Response) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < RESPONSE_CAP {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c[..c.len().min(RESPONSE_CAP - body.len())]),
            _ => break,
        }
    }
    body
}

fn from_reqwest(e: &reqwest::Error, timeout: Duration) -> AttemptResult {
    if e.is_timeout() {
        return AttemptResult::failed(
            Outcome::Retriable,
            "timeout",
            format!("timed out after {:.1}s", timeout.as_secs_f64()),
        );
    }
    // The interesting part (refused by policy, connection refused, TLS) is in the sources.
    let mut chain = Vec::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push(s.to_string());
        src = s.source();
    }
    // reqwest's own message names the URL, which may be a credential (a Slack webhook).
    let detail = chain.last().cloned().unwrap_or_else(|| {
        let text = e.to_string();
        match e.url() {
            Some(u) => text.replace(u.as_str(), &super::redacted_url(u.as_str())),
            None => text,
        }
    });
    let refused = chain.iter().any(|c| c.contains("refused (delivery.allow_private_networks)"));
    let result = if refused {
        "refused"
    } else if e.is_connect() {
        "connect"
    } else {
        "error"
    };
    AttemptResult::failed(
        Outcome::Retriable,
        result,
        format!("{}: {detail}", if e.is_connect() { "connection failed" } else { "request failed" }),
    )
}

/// The shared client: guarded resolver, no redirects, no proxies (a proxy would resolve
/// names for us and bypass the address check), and hookline's `User-Agent` on every request
/// that does not set its own.
pub fn client(policy: NetPolicy) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(crate::delivery::netguard::GuardedResolver {
            allow_private_networks: policy.allow_private_networks,
        }))
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .user_agent(concat!("hookline/", env!("CARGO_PKG_VERSION")));
    builder.build().unwrap_or_else(|e| {
        tracing::error!(error = %e, "build the delivery HTTP client; falling back to defaults");
        reqwest::Client::new()
    })
}

/// For metrics: how long an attempt took.
pub fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}
