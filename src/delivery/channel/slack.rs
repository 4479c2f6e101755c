//! The Slack channel: a message to a Slack incoming-webhook URL.
//!
//! The `template` renders the message text (Slack `mrkdwn`); a template that renders a JSON
//! object is sent as the whole payload instead, so Block Kit layouts work too. The URL gets
//! the same checks as an HTTP channel's (https, public addresses, no redirects), and any
//! answer but a 2xx is retried on the common schedule.

use std::time::Duration;

use super::http::exchange;
use super::{AttemptResult, Channel, ChannelDeps, Message, SendFuture, SlackConfig};
use crate::delivery::netguard::check_url;
use crate::delivery::retry::Outcome;
use crate::delivery::template::Template;

/// The message when no `template` is given: the event's type and ID, and its payload.
pub const DEFAULT_TEMPLATE: &str =
    "*{{ event_type }}* `{{ event_id }}` at {{ created_at }}\n```{{ payload | tojson(indent=2) }}```";

pub struct SlackChannel {
    url: url::Url,
    template: Template,
    timeout: Duration,
    deps: ChannelDeps,
}

impl SlackChannel {
    pub fn new(config: &SlackConfig, deps: ChannelDeps) -> Result<SlackChannel, String> {
        let url =
            url::Url::parse(&config.webhook_url).map_err(|e| format!("stored webhook_url does not parse: {e}"))?;
        let template = Template::compile(config.template.as_deref().unwrap_or(DEFAULT_TEMPLATE))
            .map_err(|e| format!("template: {e}"))?;
        Ok(SlackChannel { url, template, timeout: deps.default_timeout, deps })
    }

    async fn attempt(&self, msg: &Message<'_>) -> AttemptResult {
        if let Err(e) = check_url(&self.url, self.deps.policy) {
            return AttemptResult::failed(Outcome::Retriable, "refused", e);
        }
        let text = match self.template.render(msg.event) {
            Ok(t) => t,
            Err(e) => {
                return AttemptResult::failed(Outcome::Permanent, "error", format!("template failed to render: {e}"))
            }
        };
        let body = payload(text);
        let rb = self
            .deps
            .client
            .post(self.url.clone())
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::USER_AGENT, concat!("hookline/", env!("CARGO_PKG_VERSION")))
            .body(body);
        exchange(rb, self.timeout).await
    }
}

/// The request body: a rendered JSON object as is, any other text as `{"text": …}`.
fn payload(rendered: String) -> Vec<u8> {
    if rendered.trim_start().starts_with('{')
        && serde_json::from_str::<serde_json::Value>(&rendered).is_ok_and(|v| v.is_object())
    {
        return rendered.into_bytes();
    }
    serde_json::to_vec(&serde_json::json!({ "text": rendered })).unwrap_or_default()
}

impl Channel for SlackChannel {
    fn kind(&self) -> &'static str {
        "slack"
    }

    fn send<'a>(&'a self, msg: &'a Message<'a>) -> SendFuture<'a> {
        Box::pin(self.attempt(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_wrapped_and_a_json_object_is_sent_as_is() {
        let v: serde_json::Value = serde_json::from_slice(&payload("*hi* `x`".into())).unwrap();
        assert_eq!(v, serde_json::json!({"text": "*hi* `x`"}));
        let blocks = r#"{"blocks": [{"type": "section"}]}"#.to_string();
        assert_eq!(payload(blocks.clone()), blocks.into_bytes());
        // A JSON array or a string that only looks like JSON is text.
        let v: serde_json::Value = serde_json::from_slice(&payload("[1]".into())).unwrap();
        assert_eq!(v["text"], "[1]");
        let v: serde_json::Value = serde_json::from_slice(&payload("{not json".into())).unwrap();
        assert_eq!(v["text"], "{not json");
    }

    #[test]
    fn the_default_template_compiles() {
        Template::compile(DEFAULT_TEMPLATE).unwrap();
    }
}
