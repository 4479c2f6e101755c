//! The SMS channel: a text to every number of the channel through the Twilio-compatible
//! Messages API of `[delivery.sms]` (`POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json`,
//! form `To`, `From`, `Body`, HTTP basic auth with the account SID and auth token).
//!
//! Numbers are sent to in order, and the first failure ends the attempt: the delivery is
//! retried on the common schedule and a retry texts every number again, so a number before
//! the failing one may get the message twice (deliveries are at least once on every channel).

use std::sync::Arc;
use std::time::Duration;

use super::http::exchange;
use super::{AttemptResult, Channel, ChannelDeps, Message, SendFuture, SmsConfig};
use crate::config::SmsSettings;
use crate::delivery::netguard::check_url;
use crate::delivery::retry::Outcome;
use crate::delivery::template::Template;

pub const DEFAULT_TEMPLATE: &str = "hookline: {{ event_type }} ({{ event_id }})";

/// Longest body sent (the Messages API's limit); a longer rendering is cut.
pub const MAX_BODY_CHARS: usize = 1600;

/// The provider API shared by every SMS channel.
pub struct SmsApi {
    messages_url: url::Url,
    account_sid: String,
    auth_token: String,
    from: String,
    timeout: Duration,
}

impl SmsApi {
    pub fn new(s: &SmsSettings) -> Result<SmsApi, String> {
        let base = s.api_base.trim_end_matches('/');
        let messages_url = url::Url::parse(&format!("{base}/2010-04-01/Accounts/{}/Messages.json", s.account_sid))
            .map_err(|e| format!("delivery.sms.api_base: {e}"))?;
        Ok(SmsApi {
            messages_url,
            account_sid: s.account_sid.clone(),
            auth_token: s.auth_token.clone().unwrap_or_default(),
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
        let template = Template::compile(config.template.as_deref().unwrap_or(DEFAULT_TEMPLATE))
            .map_err(|e| format!("template: {e}"))?;
        Ok(SmsChannel { to: config.to.clone(), template, api, deps })
    }

    async fn attempt(&self, msg: &Message<'_>) -> AttemptResult {
        let api = &self.api;
        if let Err(e) = check_url(&api.messages_url, self.deps.policy) {
            return AttemptResult::failed(Outcome::Retriable, "refused", e);
        }
        let text: String = match self.template.render(msg.event) {
            Ok(t) => t.trim().chars().take(MAX_BODY_CHARS).collect(),
            Err(e) => {
                return AttemptResult::failed(Outcome::Permanent, "error", format!("template failed to render: {e}"))
            }
        };
        let mut last = AttemptResult::failed(Outcome::Retriable, "error", "no recipient");
        for (i, to) in self.to.iter().enumerate() {
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("To", to)
                .append_pair("From", &api.from)
                .append_pair("Body", &text)
                .finish();
            let rb = self
                .deps
                .client
                .post(api.messages_url.clone())
                .timeout(api.timeout)
                .basic_auth(&api.account_sid, Some(&api.auth_token))
                .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(reqwest::header::USER_AGENT, concat!("hookline/", env!("CARGO_PKG_VERSION")))
                .body(form);
            last = exchange(rb, api.timeout).await;
            if last.outcome != Outcome::Delivered {
                let sent = if i == 0 { String::new() } else { format!(" (after {i} of {} sent)", self.to.len()) };
                last.error = Some(format!("to {to}{sent}: {}", last.error.as_deref().unwrap_or("failed")));
                return last;
            }
        }
        last
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

    #[test]
    fn the_default_template_compiles() {
        Template::compile(DEFAULT_TEMPLATE).unwrap();
    }
}
