//! The SMS channel: a text to every number of the channel through the Twilio-compatible
//! Messages API of `[delivery.sms]` (`POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json`,
//! form `To`, `From`, `Body`, HTTP basic auth with the account SID and auth token).
//!
//! Every number not yet reached is sent to in order; one that fails does not hold back the
//! others. The delivery remembers which numbers were reached (`done_recipients`), so a retry
//! (on the common schedule) texts only the ones that failed. A crash between a provider's
//! answer and the outcome's write can still text a number twice: at least once, as on every
//! channel.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};

use super::http::{exchange_hiding, parse_uri, post};
use super::{summarize, AttemptResult, Channel, ChannelDeps, Message, SendFuture, SmsConfig};
use crate::config::SmsSettings;
use crate::delivery::netguard::check_url;
use crate::delivery::retry::Outcome;
use crate::delivery::template::Template;

pub const DEFAULT_TEMPLATE: &str = "hookline: {{ webhook_name }}: {{ event_type }} ({{ event_id }})";

/// Longest body sent (the Messages API's limit); a longer rendering is cut. Counted in UTF-16
/// code units, as the provider counts: an emoji is two of them, so 1,000 rockets are over.
pub const MAX_BODY_CHARS: usize = 1600;

/// The first [`MAX_BODY_CHARS`] UTF-16 code units of `text`, never half a character.
fn cut(text: &str) -> &str {
    let mut units = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > MAX_BODY_CHARS {
            return &text[..i];
        }
    }
    text
}

/// The provider API shared by every SMS channel.
pub struct SmsApi {
    messages_url: url::Url,
    messages_uri: http::Uri,
    /// `Basic base64(sid:token)`, marked sensitive.
    authorization: HeaderValue,
    /// The header value and the token, hidden in error excerpts (a provider's error page may
    /// echo the request).
    hidden: Vec<String>,
    from: String,
    timeout: Duration,
}

impl SmsApi {
    pub fn new(s: &SmsSettings) -> Result<SmsApi, String> {
        let base = s.api_base.trim_end_matches('/');
        let messages_url = url::Url::parse(&format!("{base}/2010-04-01/Accounts/{}/Messages.json", s.account_sid))
            .map_err(|e| format!("delivery.sms.api_base: {e}"))?;
        let messages_uri = parse_uri(&messages_url).map_err(|e| format!("delivery.sms.api_base: {e}"))?;
        let credentials = format!("{}:{}", s.account_sid, s.auth_token.as_deref().unwrap_or_default());
        let mut authorization =
            HeaderValue::try_from(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(credentials)))
                .map_err(|_| "delivery.sms: the credentials do not make a valid header".to_string())?;
        authorization.set_sensitive(true);
        let mut hidden = vec![String::from_utf8_lossy(authorization.as_bytes()).into_owned()];
        hidden.extend(s.auth_token.clone());
        Ok(SmsApi {
            messages_url,
            messages_uri,
            authorization,
            hidden,
            from: s.from.clone(),
            timeout: Duration::from_secs(s.timeout_seconds),
        })
    }
}

pub struct SmsChannel {
    to: Vec<String>,
    template: Template,
    api: Arc<SmsApi>,
    deps: ChannelDeps,
}

impl SmsChannel {
    pub fn new(config: &SmsConfig, api: Arc<SmsApi>, deps: ChannelDeps) -> Result<SmsChannel, String> {
        let template = Template::load(config.template.as_deref().unwrap_or(DEFAULT_TEMPLATE))
            .map_err(|e| format!("template: {e}"))?;
        Ok(SmsChannel { to: config.to.clone(), template, api, deps })
    }

    async fn attempt(&self, msg: &Message<'_>) -> AttemptResult {
        let api = &self.api;
        if let Err(e) = check_url(&api.messages_url, self.deps.policy) {
            return AttemptResult::failed(Outcome::Retriable, "refused", e);
        }
        let text: String = match self.template.render(msg.event, msg.webhook_name) {
            Ok(t) => cut(t.trim()).to_string(),
            Err(e) => {
                return AttemptResult::failed(Outcome::Permanent, "error", format!("template failed to render: {e}"))
            }
        };
        // The provider refuses an empty body: a permanent failure here, not retries until max_age.
        if text.is_empty() {
            return AttemptResult::failed(Outcome::Permanent, "error", super::slack::EMPTY);
        }
        let mut reached = Vec::new();
        let mut failed: Vec<(String, AttemptResult)> = Vec::new();
        let mut last_ok = None;
        let (mut stopped, mut untried, mut out_of_time) = (0, 0, 0);
        for to in &self.to {
            if msg.done_recipients.contains(to) {
                continue;
            }
            if msg.stopping.is_cancelled() {
                stopped += 1;
                continue;
            }
            // After a failure of the provider itself the rest waits for the retry.
            if failed.last().is_some_and(|(_, r): &(String, AttemptResult)| provider_wide(r).is_some()) {
                untried += 1;
                continue;
            }
            if msg.out_of_time(!reached.is_empty()) {
                out_of_time += 1;
                continue;
            }
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("To", to)
                .append_pair("From", &api.from)
                .append_pair("Body", &text)
                .finish();
            let mut req = post(api.messages_uri.clone(), form);
            let h = req.headers_mut();
            h.insert(AUTHORIZATION, api.authorization.clone());
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-www-form-urlencoded"));
            let hidden: Vec<&str> = api.hidden.iter().map(String::as_str).collect();
            // Biased: an answer that came with the cut-off counts.
            let sent = tokio::select! {
                biased;
                r = exchange_hiding(&self.deps.client, req, api.timeout, &hidden) => Some(r),
                () = msg.cut_off.cancelled() => None,
            };
            let Some(r) = sent else {
                stopped += 1;
                continue;
            };
            if r.outcome == Outcome::Delivered {
                reached.push(to.clone());
                last_ok = Some(r);
            } else {
                failed.push((to.clone(), r));
            }
        }
        let why = failed.last().and_then(|(_, r)| provider_wide(r)).filter(|_| untried > 0);
        let mut result = summarize(self.to.len(), reached, failed, last_ok, "numbers");
        if let Some(why) = why {
            result.error = result.error.map(|e| format!("{e}; {untried} not tried ({why}: sent on the retry)"));
        }
        super::ended_early(result, stopped, out_of_time, "number(s)", msg.budget.1)
    }
}

/// Why a failed send speaks for the provider, not for its number, if it does: a 429 (the
/// rest waits for the retry and its Retry-After), or a provider that cannot be reached or
/// does not answer in time (each other number would wait as long again: with 50 numbers and
/// a 10 s timeout, one attempt would hold its webhook's slot for over 8 minutes).
fn provider_wide(r: &AttemptResult) -> Option<&'static str> {
    match (r.status_code, r.result) {
        (Some(429), _) => Some("rate limited"),
        (_, "connect") => Some("the provider could not be reached"),
        (_, "timeout") => Some("the provider did not answer in time"),
        _ => None,
    }
}

impl Channel for SmsChannel {
    fn kind(&self) -> &'static str {
        "sms"
    }

    fn send<'a>(&'a self, msg: &'a Message<'a>) -> SendFuture<'a> {
        Box::pin(self.attempt(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_cut_at_1600_utf16_units() {
        assert_eq!(cut(&"a".repeat(1700)).len(), 1600);
        let rockets = "🚀".repeat(1000);
        assert_eq!(cut(&rockets).chars().count(), 800, "an emoji is two units");
        // Never half a surrogate pair: 1599 units of ASCII, then an emoji that would need 2.
        let edge = format!("{}🚀", "a".repeat(1599));
        assert_eq!(cut(&edge), "a".repeat(1599));
        assert_eq!(cut("short"), "short");
    }

    #[test]
    fn the_messages_url_follows_the_twilio_layout() {
        let s = SmsSettings {
            api_base: "https://api.example.com/".into(),
            account_sid: "AC123".into(),
            auth_token: Some("t".into()),
            from: "+15550001111".into(),
            timeout_seconds: 10,
        };
        let api = SmsApi::new(&s).unwrap();
        assert_eq!(api.messages_url.as_str(), "https://api.example.com/2010-04-01/Accounts/AC123/Messages.json");
    }

    fn ok() -> AttemptResult {
        AttemptResult {
            outcome: Outcome::Delivered,
            status_code: Some(201),
            error: None,
            retry_after: None,
            result: "2xx",
            reached: Vec::new(),
            interrupted: false,
        }
    }

    #[test]
    fn a_failed_number_fails_the_attempt_and_keeps_the_reached_ones() {
        let two = vec!["+15550000000".to_string(), "+15550002222".to_string()];
        let r = summarize(3, two.clone(), Vec::new(), Some(ok()), "numbers");
        assert_eq!((r.outcome, &r.reached, r.status_code), (Outcome::Delivered, &two, Some(201)));
        let bad = AttemptResult::failed(Outcome::Retriable, "4xx", "HTTP 400: invalid number");
        let r = summarize(3, two.clone(), vec![("+15550001111".into(), bad)], Some(ok()), "numbers");
        assert_eq!((r.outcome, r.result, &r.reached), (Outcome::Retriable, "4xx", &two));
        assert_eq!(r.error.as_deref(), Some("1 of 3 numbers failed; to +15550001111: HTTP 400: invalid number"));
    }

    #[test]
    fn the_default_template_names_the_webhook() {
        let event =
            crate::events::EventRecord { event_id: crate::ids::EventId::parse("evt_1").unwrap(), ..Template::sample() };
        let text = Template::compile(DEFAULT_TEMPLATE).unwrap().render(&event, "oncall").unwrap();
        assert_eq!(text, "hookline: oncall: object.created (evt_1)");
    }
}
