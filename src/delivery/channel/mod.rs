//! The channel seam: how one delivery reaches a receiver.
//!
//! [`ChannelConfig`] is the API/storage shape of a channel (`{"channel", "configs"}`) with
//! its validation; [`Channel`] is the sending side, built once per webhook config: HTTP
//! (`webhook`, [`http`]), [`slack`], [`email`] (SMTP) and [`sms`] (a Twilio-compatible API).
//! Every channel runs on the same delivery engine (queue, retries, attempt log); a channel
//! only turns one event into one attempt. Email and SMS need their provider in the config:
//! without it, creating such a channel is refused with a 422 that says which section to add,
//! rather than accepted and failed on every delivery.

pub mod email;
pub mod http;
pub mod slack;
pub mod sms;

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

impl ChannelConfig {
    /// Who answers its sends (and so whose 429 holds it): its URL, or the configured email
    /// or SMS provider, the same whatever the recipients.
    pub fn destination(&self) -> &str {
        match self {
            ChannelConfig::Webhook(c) => &c.url,
            ChannelConfig::Slack(c) => &c.webhook_url,
            ChannelConfig::Email(_) => "email",
            ChannelConfig::Sms(_) => "sms",
        }
    }
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub webhook_url: String,
    #[serde(default)]
    pub template: Option<String>,
}

// Hand-written: a Slack webhook URL is its own credential (whoever has it can post).
impl std::fmt::Debug for SlackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackConfig").field("webhook_url", &REDACTED).field("template", &self.template).finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// As written, but for surrounding whitespace (a pasted `"ops@example.com "` is stored,
    /// shown and compared as `ops@example.com`).
    #[serde(deserialize_with = "trimmed")]
    pub to: Vec<String>,
    #[serde(default)]
    pub subject_template: Option<String>,
    #[serde(default)]
    pub body_template: Option<String>,
}

fn trimmed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let mut all = Vec::<String>::deserialize(d)?;
    for a in &mut all {
        if a.trim().len() != a.len() {
            *a = a.trim().to_string();
        }
    }
    Ok(all)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    pub to: Vec<String>,
    #[serde(default)]
    pub template: Option<String>,
}

/// What a channel config is checked against when a webhook is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRules {
    pub net: NetPolicy,
    /// Whether `[delivery.email]` is configured.
    pub email: bool,
    /// Whether `[delivery.sms]` is configured.
    pub sms: bool,
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
    pub fn validate(&self, at: &str, rules: ChannelRules) -> Result<(), ApiError> {
        let field = |f: &str| format!("{at}.configs.{f}");
        let template = |f: &str, src: &Option<String>| -> Result<(), ApiError> {
            match src {
                Some(s) => Template::validate(s).map(|_| ()).map_err(|e| ApiError::validation(field(f), e)),
                None => Ok(()),
            }
        };
        let unconfigured = |section: &str| {
            ApiError::validation(
                format!("{at}.channel"),
                format!(
                    "{} channels need [delivery.{section}] in hookline's config, which this server does not have",
                    self.kind()
                ),
            )
        };
        match self {
            ChannelConfig::Webhook(c) => c.validate(at, rules.net),
            ChannelConfig::Slack(c) => {
                http::check_receiver_url(field("webhook_url"), &c.webhook_url, rules.net)?;
                match &c.template {
                    Some(src) => Template::validate(src)
                        .and_then(|t| slack::check_json_template(src, &t))
                        .map_err(|e| ApiError::validation(field("template"), e)),
                    None => Ok(()),
                }
            }
            ChannelConfig::Email(c) => {
                if !rules.email {
                    return Err(unconfigured("email"));
                }
                if c.to.is_empty() {
                    return Err(ApiError::validation(field("to"), "list at least one address"));
                }
                if c.to.len() > MAX_RECIPIENTS {
                    return Err(ApiError::validation(field("to"), format!("at most {MAX_RECIPIENTS} addresses")));
                }
                let mut seen = Vec::with_capacity(c.to.len());
                for (i, a) in c.to.iter().enumerate() {
                    let mailbox = a.parse::<lettre::message::Mailbox>().map_err(|e| {
                        ApiError::validation(format!("{}[{i}]", field("to")), format!("not an email address ({e})"))
                    })?;
                    // `ops@example` is valid to the parser and an SMTP relay, and is nearly
                    // always `ops@example.com` mistyped: every message to it would bounce.
                    let domain = mailbox.email.domain();
                    if !domain.contains('.') && !domain.eq_ignore_ascii_case("localhost") {
                        return Err(ApiError::validation(
                            format!("{}[{i}]", field("to")),
                            format!("the domain {domain:?} has no dot: give a full domain, like {domain}.com"),
                        ));
                    }
                    // No top-level domain is all digits: `a@1.2.3.4` is an IP address written
                    // without the brackets an address literal needs (and those are refused).
                    let tld = domain.rsplit('.').next().unwrap_or_default();
                    if !tld.is_empty() && tld.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(ApiError::validation(
                            format!("{}[{i}]", field("to")),
                            format!("the domain {domain:?} is an IP address, not a domain name: give a host name"),
                        ));
                    }
                    // One message per address: the same address twice would get it twice.
                    let address = mailbox.email.to_string().to_ascii_lowercase();
                    if seen.contains(&address) {
                        return Err(ApiError::validation(format!("{}[{i}]", field("to")), "listed twice"));
                    }
                    seen.push(address);
                }
                template("subject_template", &c.subject_template)?;
                template("body_template", &c.body_template)
            }
            ChannelConfig::Sms(c) => {
                if !rules.sms {
                    return Err(unconfigured("sms"));
                }
                if c.to.is_empty() {
                    return Err(ApiError::validation(field("to"), "list at least one phone number"));
                }
                if c.to.len() > MAX_RECIPIENTS {
                    return Err(ApiError::validation(field("to"), format!("at most {MAX_RECIPIENTS} numbers")));
                }
                for (i, n) in c.to.iter().enumerate() {
                    if c.to[..i].contains(n) {
                        return Err(ApiError::validation(format!("{}[{i}]", field("to")), "listed twice"));
                    }
                    // E.164: `+`, a country code (never starting with 0), 8–15 digits in all.
                    let digits = n.strip_prefix('+').unwrap_or("");
                    if !(8..=15).contains(&digits.len())
                        || !digits.bytes().all(|b| b.is_ascii_digit())
                        || digits.starts_with('0')
                    {
                        return Err(ApiError::validation(
                            format!("{}[{i}]", field("to")),
                            "not an E.164 phone number like +15551234567",
                        ));
                    }
                }
                template("template", &c.template)
            }
        }
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
        // A Slack incoming-webhook URL is its own credential: only its host is shown.
        if let ChannelConfig::Slack(c) = self {
            if let Some(u) = v.pointer_mut("/configs/webhook_url") {
                *u = serde_json::Value::String(redacted_url(&c.webhook_url));
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

/// Most recipients of one email or SMS channel.
pub const MAX_RECIPIENTS: usize = 50;

/// `https://hooks.slack.com/********-1a2b3c`: the scheme and host of a secret URL, nothing else.
///
/// A short digest of the whole URL follows the placeholder, so that two Slack channels of
/// one webhook show differently and a PATCH that sends one back is matched to the right
/// stored URL (24 bits of a hash of a URL with a long random token reveal nothing of it).
pub fn redacted_url(url: &str) -> String {
    let tag = redaction_tag(url);
    match url::Url::parse(url) {
        Ok(u) => format!("{}/{REDACTED}-{tag}", origin(&u)),
        Err(_) => format!("{REDACTED}-{tag}"),
    }
}

fn redaction_tag(url: &str) -> String {
    use sha2::Digest;
    const_hex::encode(&sha2::Sha256::digest(url.as_bytes())[..3])
}

/// Whether `shown` is how `url` is (or was) shown redacted: the current form, the form shown
/// before the port was kept, or the form before the digest.
pub fn shows_redacted(url: &str, shown: &str) -> bool {
    let portless = url::Url::parse(url)
        .ok()
        .map(|u| format!("{}://{}/{REDACTED}-{}", u.scheme(), u.host_str().unwrap_or_default(), redaction_tag(url)));
    shown == redacted_url(url) || portless.as_deref() == Some(shown) || shown == legacy_redacted_url(url)
}

/// `scheme://host[:port]` (the port when it is not the scheme's default).
fn origin(u: &url::Url) -> String {
    let host = u.host_str().unwrap_or_default();
    match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    }
}

/// The redacted form without the digest, as stored (and still shown) for Slack channels saved
/// before the digest was added; a PATCH sending it back is understood too.
pub fn legacy_redacted_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!("{}://{}/{REDACTED}", u.scheme(), u.host_str().unwrap_or_default()),
        Err(_) => REDACTED.to_string(),
    }
}

/// The header a webhook channel's `secret` is sent in.
pub const SECRET_HEADER: &str = "X-Mixpeek-Secret";

/// What a channel needs besides its config: the shared HTTP client and the settings.
#[derive(Clone)]
pub struct ChannelDeps {
    pub client: crate::delivery::client::DeliveryClient,
    pub policy: NetPolicy,
    pub default_timeout: Duration,
    /// The SMTP relay of `[delivery.email]`, when configured.
    pub mailer: Option<Arc<email::Mailer>>,
    /// The SMS API of `[delivery.sms]`, when configured.
    pub sms: Option<Arc<sms::SmsApi>>,
}

impl ChannelDeps {
    /// What channel configs are validated against.
    pub fn rules(&self) -> ChannelRules {
        ChannelRules { net: self.policy, email: self.mailer.is_some(), sms: self.sms.is_some() }
    }
}

/// One delivery attempt's input.
pub struct Message<'a> {
    /// The delivery ID: the `webhook-id`, identical on every retry of this delivery.
    pub id: &'a str,
    pub event: &'a EventRecord,
    /// The webhook's name (in the templates' scope).
    pub webhook_name: &'a str,
    /// HMAC key of the webhook's signing secret.
    pub signing_key: &'a [u8],
    /// Recipients (as written in the channel's `to`) that earlier attempts already reached.
    pub done_recipients: &'a [String],
    /// Cancelled when the daemon shuts down: a multi-recipient channel starts no send to its
    /// next recipient then, so the attempt ends (and its reached recipients are recorded)
    /// within the shutdown's grace, and the restart sends to the others only.
    pub stopping: &'a tokio_util::sync::CancellationToken,
    /// Cancelled when the shutdown's grace for sends in flight is over (see
    /// `Shared::cut_off`): a multi-recipient channel ends its current recipient's send then,
    /// counting that recipient as not sent, so that the recipients it reached are recorded.
    pub cut_off: &'a tokio_util::sync::CancellationToken,
    /// When a multi-recipient attempt stops starting sends (`delivery.max_attempt_seconds`),
    /// and that setting: the recipients left go in the next attempt, at once.
    pub budget: (std::time::Instant, std::time::Duration),
}

impl Message<'_> {
    /// Whether a multi-recipient attempt starts no send to a further recipient: past its
    /// budget, and only once it reached someone (an attempt whose first recipients fail
    /// slowly goes on to the others; a recipient failing slower than the budget would
    /// otherwise hold back those after it in every attempt).
    pub(crate) fn out_of_time(&self, reached_someone: bool) -> bool {
        reached_someone && std::time::Instant::now() >= self.budget.0
    }
}

/// A multi-recipient attempt's result once its round is over, `stopped` of its recipients
/// not tried (or cut off) because the daemon shuts down and `out_of_time` because the attempt
/// ran past `budget` (`delivery.max_attempt_seconds`; only after it reached someone, so such
/// attempts end). Either way, whatever the others gave (a permanent failure included), the
/// delivery waits for them, due at once (after the restart), and the attempt is no failure.
/// One the shutdown cut short is counted as `interrupted` in the metrics, as a single send
/// cut off is; one out of time keeps its own label.
pub(crate) fn ended_early(
    mut r: AttemptResult,
    stopped: usize,
    out_of_time: usize,
    noun: &str,
    budget: std::time::Duration,
) -> AttemptResult {
    let why = match (stopped, out_of_time) {
        (0, 0) => return r,
        (0, n) => format!(
            "{n} {noun} not tried: the attempt ran for {} s (delivery.max_attempt_seconds); sent in the next \
             attempt, at once",
            budget.as_secs()
        ),
        (n, m) => {
            r.result = CUT_OFF;
            format!("{} {noun} not tried or cut off: hookline was shutting down (sent after the restart)", n + m)
        }
    };
    r.error = Some(match r.error.take() {
        Some(e) => format!("{e}; {why}"),
        None => why,
    });
    r.outcome = Outcome::Retriable;
    r.interrupted = true;
    r
}

/// One delivery attempt's result.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub outcome: Outcome,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The receiver's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
    /// Bounded metrics label: `2xx`, `4xx`, `5xx`, `3xx`, `timeout`, `connect`, `refused`,
    /// `error`, `interrupted` ([`CUT_OFF`]).
    pub result: &'static str,
    /// Recipients this attempt reached (multi-recipient channels): not sent to again.
    pub reached: Vec<String>,
    /// Cut short before every recipient was tried, by the daemon's shutdown or the attempt's
    /// time (`delivery.max_attempt_seconds`): not a failure (no step up the retry schedule,
    /// never dead for it); the rest go out at once (after the restart).
    pub interrupted: bool,
}

impl AttemptResult {
    /// An attempt that got no HTTP answer (refused, timed out, or never sent).
    pub fn failed(outcome: Outcome, result: &'static str, error: impl Into<String>) -> AttemptResult {
        AttemptResult {
            outcome,
            status_code: None,
            error: Some(error.into()),
            retry_after: None,
            result,
            reached: Vec::new(),
            interrupted: false,
        }
    }

    /// A send still running when the shutdown's grace for sends ran out: no answer came in
    /// `waited`. Not a failure (see `interrupted`): it is due again at once after the
    /// restart. Its metrics label is [`CUT_OFF`].
    pub fn cut_off(waited: Duration) -> AttemptResult {
        let error = format!(
            "cut off by the daemon's shutdown after {:.1} s without an answer (server.shutdown_timeout_seconds); \
             sent again after the restart",
            waited.as_secs_f64()
        );
        AttemptResult { interrupted: true, ..AttemptResult::failed(Outcome::Retriable, CUT_OFF, error) }
    }
}

/// The metrics label of an attempt [`AttemptResult::cut_off`] made.
pub const CUT_OFF: &str = "interrupted";

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = AttemptResult> + Send + 'a>>;

/// The sending side of a channel.
pub trait Channel: Send + Sync {
    fn kind(&self) -> &'static str;
    fn send<'a>(&'a self, msg: &'a Message<'a>) -> SendFuture<'a>;
}

/// Builds the sender for a stored config. A config that cannot send any more (its provider
/// was removed from the config, a stored template no longer compiles) becomes a channel whose
/// every attempt fails with the reason, visible as the webhook's `last_error`.
pub fn build(config: &ChannelConfig, deps: &ChannelDeps) -> Arc<dyn Channel> {
    let kind = config.kind();
    let missing = |section: &str| format!("[delivery.{section}] is not configured on this server");
    // A missing provider is an operator's fix: its deliveries wait (retried until `max_age`)
    // instead of dying. A stored config that no longer builds cannot get better by waiting.
    let mut outcome = Outcome::Permanent;
    let built: Result<Arc<dyn Channel>, String> = match config {
        ChannelConfig::Webhook(c) => http::HttpChannel::new(c.clone(), deps.clone()).map(|ch| Arc::new(ch) as _),
        ChannelConfig::Slack(c) => slack::SlackChannel::new(c, deps.clone()).map(|ch| Arc::new(ch) as _),
        ChannelConfig::Email(c) => match &deps.mailer {
            Some(m) => email::EmailChannel::new(c, m.clone()).map(|ch| Arc::new(ch) as _),
            None => {
                outcome = Outcome::Retriable;
                Err(missing("email"))
            }
        },
        ChannelConfig::Sms(c) => match &deps.sms {
            Some(api) => sms::SmsChannel::new(c, api.clone(), deps.clone()).map(|ch| Arc::new(ch) as _),
            None => {
                outcome = Outcome::Retriable;
                Err(missing("sms"))
            }
        },
    };
    built.unwrap_or_else(|reason| Arc::new(Unsupported { kind, reason, outcome }))
}

/// A channel that cannot send (see [`build`]): every attempt fails with the reason.
struct Unsupported {
    kind: &'static str,
    reason: String,
    outcome: Outcome,
}

impl Channel for Unsupported {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn send<'a>(&'a self, _msg: &'a Message<'a>) -> SendFuture<'a> {
        Box::pin(async move { AttemptResult::failed(self.outcome, "error", self.reason.clone()) })
    }
}

/// Longest configured header value (a webhook channel's header or `secret`, a writeback
/// connection's header): what common servers take in one header line (8 KiB: nginx, Apache).
pub const MAX_HEADER_VALUE_BYTES: usize = 8 << 10;
/// Most bytes a configured header set may take, names and values: Node's default limit for
/// a request's whole head is 16 KiB (this leaves room for hookline's own headers), and
/// larger heads are refused or cut by most servers, which a send would find out only as a
/// failure retried until `max_age_hours`.
pub const MAX_HEADER_SET_BYTES: usize = 12 << 10;

/// Checks the sizes of a configured header set: `(name, value, the field an error about
/// that value names)` items (a channel's `secret` is one, sent as its header); an error
/// about the whole set names `at`.
pub fn check_header_sizes<'a>(
    at: &str,
    headers: impl Iterator<Item = (&'a str, &'a str, String)>,
) -> Result<(), crate::error::ApiError> {
    let mut total = 0;
    for (name, value, field) in headers {
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(crate::error::ApiError::validation(
                field,
                format!("at most {MAX_HEADER_VALUE_BYTES} bytes (receivers refuse longer header lines)"),
            ));
        }
        total += name.len() + value.len();
    }
    if total > MAX_HEADER_SET_BYTES {
        return Err(crate::error::ApiError::validation(
            at,
            format!(
                "the headers take {total} bytes, at most {MAX_HEADER_SET_BYTES} (receivers refuse larger requests)"
            ),
        ));
    }
    Ok(())
}

/// Checks each header of a configured set (a webhook channel's, a generic_webhook
/// connection's), errors naming `field(name)`: a name given twice in any letter case (both
/// would be sent, and a receiver reads one of them, or both joined), a name or value no header
/// line can carry, and a header hookline sets itself, for which `owned` gives the reason it
/// cannot be set (`None`: the set may hold it). One set of rules, so that what one sender
/// refuses the other does not send twice.
pub fn check_header_set<'a>(
    headers: impl IntoIterator<Item = (&'a String, &'a String)>,
    field: impl Fn(&str) -> String,
    owned: impl Fn(&str) -> Option<&'static str>,
) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    for (name, value) in headers {
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(ApiError::validation(field(name), "given twice (header names are case-insensitive)"));
        }
        if ::http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ApiError::validation(field(name), "not a valid header name"));
        }
        if ::http::header::HeaderValue::from_str(value).is_err() {
            return Err(ApiError::validation(
                field(name),
                "not a valid header value (no line breaks or control characters)",
            ));
        }
        if let Some(why) = owned(name) {
            return Err(ApiError::validation(field(name), why));
        }
    }
    Ok(())
}

/// Why a configured header cannot be set: hookline sets it, and it is not one a config may
/// replace (as it may `Content-Type`).
pub const SET_BY_HOOKLINE: &str = "this header is set by hookline and cannot be overridden";

/// Headers a webhook config may not set: hookline owns them.
pub fn reserved_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("webhook-") || n == "x-mixpeek-secret" || framing_header(&n)
}

/// Headers no configured header set may hold, whatever sends it (a webhook channel, a
/// writeback): framing and hop-by-hop headers are the HTTP client's, and a body hookline
/// sends is never compressed.
pub fn framing_header(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
            | "expect"
            | "content-encoding"
    )
}

pub type Headers = BTreeMap<String, String>;

/// One attempt's result from its sends to each recipient of a multi-recipient channel (SMS
/// numbers, email addresses): delivered when none failed, else the first failure (its status,
/// label and `Retry-After`) with every failed recipient in the error; `reached` either way.
pub(crate) fn summarize(
    total: usize,
    reached: Vec<String>,
    mut failed: Vec<(String, AttemptResult)>,
    last_ok: Option<AttemptResult>,
    noun: &str,
) -> AttemptResult {
    if failed.is_empty() {
        let mut ok = last_ok.unwrap_or(AttemptResult {
            outcome: Outcome::Delivered,
            status_code: None,
            error: None,
            retry_after: None,
            result: "2xx",
            reached: Vec::new(),
            interrupted: false,
        });
        ok.reached = reached;
        return ok;
    }
    let errors: Vec<String> =
        failed.iter().map(|(to, r)| format!("to {to}: {}", r.error.as_deref().unwrap_or("failed"))).collect();
    let retry_after = failed.iter().filter_map(|(_, r)| r.retry_after).max();
    // A rate limit speaks for the attempt (the channel is then held, see `throttle`), even
    // when another number failed first for another reason.
    let pick = failed.iter().position(|(_, r)| r.status_code == Some(429)).unwrap_or(0);
    let mut first = failed.swap_remove(pick).1;
    first.retry_after = retry_after;
    // A channel of one recipient has one reason: it speaks for itself.
    first.error = Some(if total == 1 {
        errors.join("; ")
    } else {
        format!("{} of {total} {noun} failed; {}", errors.len(), errors.join("; "))
    });
    first.reached = reached;
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_domain_needs_a_dot_but_localhost() {
        let net = NetPolicy { allow_insecure_http: false, allow_private_networks: false };
        let rules = ChannelRules { net, email: true, sms: false };
        let check = |to: &str| {
            let c: ChannelConfig =
                serde_json::from_value(serde_json::json!({"channel": "email", "configs": {"to": [to]}})).unwrap();
            c.validate("channels[0]", rules).map_err(|e| e.to_string())
        };
        assert!(check("ops@example").unwrap_err().contains("has no dot"));
        for ok in ["ops@example.com", "dev@localhost"] {
            assert!(check(ok).is_ok(), "{ok}: {:?}", check(ok));
        }
    }

    #[test]
    fn email_addresses_are_kept_without_surrounding_whitespace() {
        let c: EmailConfig = serde_json::from_value(serde_json::json!({"to": [" ops@example.com ", "Lead <l@x.io>"]}))
            .expect("an email config");
        assert_eq!(c.to, ["ops@example.com", "Lead <l@x.io>"]);
    }
}
