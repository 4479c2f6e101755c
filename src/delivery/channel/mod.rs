//! The channel seam: how one delivery reaches a receiver.
//!
//! [`ChannelConfig`] is the API/storage shape of a channel (`{"channel", "configs"}`) with
//! its validation; [`Channel`] is the sending side, built once per webhook config. Only the
//! HTTP channel (`webhook`) sends in this build. Slack, email and SMS configs are parsed and
//! validated against the contract's shapes (so the later implementation plugs into the same
//! seam), but creating a webhook with them is refused with a 422 saying they are not
//! supported yet: accepting them and silently failing every delivery would be dishonest.

pub mod http;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::netguard::NetPolicy;
use super::retry::Outcome;
use super::template::Template;
use crate::error::ApiError;
use crate::events::EventRecord;

/// One channel of a webhook, as the API takes it and the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "channel", content = "configs", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    Webhook(http::HttpConfig),
    Slack(SlackConfig),
    Email(EmailConfig),
    Sms(SmsConfig),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub webhook_url: String,
    #[serde(default)]
    pub template: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub to: Vec<String>,
    #[serde(default)]
    pub subject_template: Option<String>,
    #[serde(default)]
    pub body_template: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    pub to: Vec<String>,
    #[serde(default)]
    pub template: Option<String>,
}

impl ChannelConfig {
    /// The `channel` name (also the metrics label).
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Webhook(_) => "webhook",
            ChannelConfig::Slack(_) => "slack",
            ChannelConfig::Email(_) => "email",
            ChannelConfig::Sms(_) => "sms",
        }
    }

    /// Validates the config; `at` is the field path of this channel (`channels[0]`).
    pub fn validate(&self, at: &str, policy: NetPolicy) -> Result<(), ApiError> {
        let field = |f: &str| format!("{at}.configs.{f}");
        let template = |f: &str, src: &Option<String>| -> Result<(), ApiError> {
            match src {
                Some(s) => Template::compile(s).map(|_| ()).map_err(|e| ApiError::validation(field(f), e)),
                None => Ok(()),
            }
        };
        match self {
            ChannelConfig::Webhook(c) => return c.validate(at, policy),
            ChannelConfig::Slack(c) => {
                let u = url::Url::parse(&c.webhook_url)
                    .map_err(|e| ApiError::validation(field("webhook_url"), format!("not a URL: {e}")))?;
                super::netguard::check_url(&u, policy).map_err(|e| ApiError::validation(field("webhook_url"), e))?;
                template("template", &c.template)?;
            }
            ChannelConfig::Email(c) => {
                if c.to.is_empty() {
                    return Err(ApiError::validation(field("to"), "list at least one address"));
                }
                for (i, a) in c.to.iter().enumerate() {
                    let ok = a.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'));
                    if !ok {
                        return Err(ApiError::validation(format!("{}[{i}]", field("to")), "not an email address"));
                    }
                }
                template("subject_template", &c.subject_template)?;
                template("body_template", &c.body_template)?;
            }
            ChannelConfig::Sms(c) => {
                if c.to.is_empty() {
                    return Err(ApiError::validation(field("to"), "list at least one phone number"));
                }
                for (i, n) in c.to.iter().enumerate() {
                    let digits = n.strip_prefix('+').unwrap_or("");
                    if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(ApiError::validation(
                            format!("{}[{i}]", field("to")),
                            "not an E.164 phone number like +15551234567",
                        ));
                    }
                }
                template("template", &c.template)?;
            }
        }
        Err(ApiError::validation(
            format!("{at}.channel"),
            format!(
                "the {} channel is not supported by this version of hookline yet; only \"webhook\" (HTTP) channels can be created",
                self.kind()
            ),
        ))
    }

    /// The config as shown by the API and kept in plain text: secrets and custom header
    /// values (they usually carry credentials) replaced by a placeholder. The real values live
    /// only in the sealed copy.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(s) = v.pointer_mut("/configs/secret") {
            if !s.is_null() {
                *s = serde_json::Value::String(REDACTED.into());
            }
        }
        if let Some(headers) = v.pointer_mut("/configs/headers").and_then(|h| h.as_object_mut()) {
            for value in headers.values_mut() {
                *value = serde_json::Value::String(REDACTED.into());
            }
        }
        v
    }
}

pub const REDACTED: &str = "********";

/// What a channel needs besides its config: the shared HTTP client and the settings.
#[derive(Clone)]
pub struct ChannelDeps {
    pub client: reqwest::Client,
    pub policy: NetPolicy,
    pub default_timeout: Duration,
}

/// One delivery attempt's input.
pub struct Message<'a> {
    /// The delivery ID: the `webhook-id`, identical on every retry of this delivery.
    pub id: &'a str,
    pub event: &'a EventRecord,
    /// HMAC key of the webhook's signing secret.
    pub signing_key: &'a [u8],
}

/// One delivery attempt's result.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub outcome: Outcome,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The receiver's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// Bounded metrics label: `2xx`, `4xx`, `5xx`, `3xx`, `timeout`, `connect`, `refused`, `error`.
    pub result: &'static str,
}

impl AttemptResult {
    /// An attempt that got no HTTP answer (refused, timed out, or never sent).
    pub fn failed(outcome: Outcome, result: &'static str, error: impl Into<String>) -> AttemptResult {
        AttemptResult { outcome, status_code: None, error: Some(error.into()), retry_after: None, result }
    }
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = AttemptResult> + Send + 'a>>;

/// The sending side of a channel.
pub trait Channel: Send + Sync {
    fn kind(&self) -> &'static str;
    fn send<'a>(&'a self, msg: &'a Message<'a>) -> SendFuture<'a>;
}

/// Builds the sender for a stored config.
pub fn build(config: &ChannelConfig, deps: &ChannelDeps) -> Arc<dyn Channel> {
    match config {
        ChannelConfig::Webhook(c) => match http::HttpChannel::new(c.clone(), deps.clone()) {
            Ok(ch) => Arc::new(ch),
            Err(e) => Arc::new(Unsupported { kind: "webhook", reason: e }),
        },
        other => Arc::new(Unsupported {
            kind: other.kind(),
            reason: format!("the {} channel is not supported by this version of hookline", other.kind()),
        }),
    }
}

/// A channel that cannot send (not implemented, or a stored config that no longer
/// compiles): every attempt fails permanently with the reason.
struct Unsupported {
    kind: &'static str,
    reason: String,
}

impl Channel for Unsupported {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn send<'a>(&'a self, _msg: &'a Message<'a>) -> SendFuture<'a> {
        Box::pin(async move { AttemptResult::failed(Outcome::Permanent, "error", self.reason.clone()) })
    }
}

/// Headers a webhook config may not set: hookline owns them.
pub fn reserved_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("webhook-")
        || matches!(n.as_str(), "host" | "content-length" | "transfer-encoding" | "connection" | "x-mixpeek-secret")
}

pub type Headers = BTreeMap<String, String>;
