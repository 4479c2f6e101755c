//! The Slack channel: a message to a Slack incoming-webhook URL.
//!
//! The `template` renders the message text (Slack `mrkdwn`; payload values go in as they are,
//! so a `<!channel>` in one pings the channel unless it goes through `| mrkdwn`, as in the
//! default template). A template that starts with `{` is a JSON
//! template: its rendering must be a JSON object, sent as the whole payload (Block Kit), and
//! values belong in it through `| tojson` (a raw `"{{ payload.x }}"` breaks on a quote; the
//! attempt then fails with that reason instead of posting something else). The URL gets
//! the same checks as an HTTP channel's (https, public addresses, no redirects), and any
//! answer but a 2xx is retried on the common schedule. The URL is a secret (it is all it
//! takes to post): an error excerpt that echoes it shows `********` instead.

use std::time::Duration;

use super::http::{exchange_hiding, parse_uri, post};
use super::{AttemptResult, Channel, ChannelDeps, Message, SendFuture, SlackConfig};
use crate::delivery::netguard::check_url;
use crate::delivery::retry::Outcome;
use crate::delivery::template::Template;

/// The message when no `template` is given: the event's type and ID, the webhook's name,
/// and the payload in a code block. The name and the payload are escaped as Slack asks
/// (`mrkdwn`): a `<!channel>` or a `<https://…|…>` link in either, which an upstream's
/// payload may hold, is shown, not acted on. The payload's backticks are written as the JSON
/// escape `\u0060` (the same JSON), so that none of its strings can close the code block.
/// The payload is cut at [`DEFAULT_PAYLOAD_CHARS`] (before the escaping, so no `&amp;` is cut
/// in two): a message is for people, and Slack cuts a long one itself, code block and all.
pub const DEFAULT_TEMPLATE: &str = concat!(
    "*{{ event_type }}* `{{ event_id }}` at {{ created_at }} ({{ webhook_name | mrkdwn }})\n",
    r"```{{ payload | pretty_json | truncate(3000, true, ' … (cut: the whole payload is in the event)', 0) ",
    r"| mrkdwn | replace('`', '\\u0060') }}```",
);

/// How much of the pretty-printed payload [`DEFAULT_TEMPLATE`] shows, in characters, the
/// cut's marker included (the `3000` in it).
pub const DEFAULT_PAYLOAD_CHARS: usize = 3000;

pub struct SlackChannel {
    url: url::Url,
    uri: http::Uri,
    template: Template,
    /// Whether the template is a JSON template (see the module docs).
    json: bool,
    timeout: Duration,
    /// The parts of the URL that are its secret (see [`secret_parts`]), hidden in errors.
    hidden: Vec<String>,
    deps: ChannelDeps,
}

/// What of a webhook URL an error excerpt must not show: the API shows the URL redacted, so
/// a receiver that echoes it ("Cannot POST /services/T…/B…/token") must not leak it through
/// `last_error`. The whole URL, its path (with the query) and its last path segment (Slack's
/// token), and the query alone.
fn secret_parts(url: &url::Url) -> Vec<String> {
    let mut parts = vec![url.as_str().to_string()];
    let path_and_query = match url.query() {
        Some(q) => {
            parts.push(q.to_string());
            format!("{}?{q}", url.path())
        }
        None => url.path().to_string(),
    };
    parts.push(path_and_query);
    if let Some(last) = url.path_segments().and_then(|mut s| s.next_back()) {
        parts.push(last.to_string());
    }
    parts
}

impl SlackChannel {
    pub fn new(config: &SlackConfig, deps: ChannelDeps) -> Result<SlackChannel, String> {
        let url =
            url::Url::parse(&config.webhook_url).map_err(|e| format!("stored webhook_url does not parse: {e}"))?;
        let source = config.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
        let template = Template::load(source).map_err(|e| format!("template: {e}"))?;
        let json = is_json_template(source);
        let uri = parse_uri(&url).map_err(|_| "stored webhook_url is not a valid request URI".to_string())?;
        let hidden = secret_parts(&url);
        Ok(SlackChannel { url, uri, template, json, timeout: deps.default_timeout, hidden, deps })
    }

    async fn attempt(&self, msg: &Message<'_>) -> AttemptResult {
        if let Err(e) = check_url(&self.url, self.deps.policy) {
            return AttemptResult::failed(Outcome::Retriable, "refused", e);
        }
        let text = match self.template.render(msg.event, msg.webhook_name) {
            Ok(t) => t,
            Err(e) => {
                return AttemptResult::failed(Outcome::Permanent, "error", format!("template failed to render: {e}"))
            }
        };
        let body = match payload(text, self.json).and_then(|b| says_something(&b).then_some(b).ok_or_else(no_content)) {
            Ok(b) => b,
            Err(e) => return AttemptResult::failed(Outcome::Permanent, "error", e),
        };
        let mut req = post(self.uri.clone(), body);
        req.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        let hidden: Vec<&str> = self.hidden.iter().map(String::as_str).collect();
        exchange_hiding(&self.deps.client, req, self.timeout, &hidden).await
    }
}

/// Whether a template source is a JSON template: it starts with `{` that does not open a
/// Jinja tag (`{{`, `{%`, `{#`), so `{{ event_type }}: …` is a text template.
pub fn is_json_template(source: &str) -> bool {
    let mut chars = source.trim_start().chars();
    chars.next() == Some('{') && !matches!(chars.next(), Some('{' | '%' | '#'))
}

/// Checked when a webhook is saved, on the compiled `template` of `source`: a JSON template
/// must render a JSON object for a sample event (a rendering that fails on the sample's
/// empty payload is left to the send).
pub fn check_json_template(source: &str, template: &Template) -> Result<(), String> {
    if !is_json_template(source) {
        return Ok(());
    }
    match template.render_sample() {
        Ok(rendered) => payload(rendered, true).map(drop),
        Err(_) => Ok(()),
    }
}

/// Why a message that renders to nothing is not sent (also for SMS and email).
pub const EMPTY: &str = "the template rendered an empty message (a missing value renders empty: use `| default(…)`)";

/// The request body: a JSON template's rendering as is (it must be an object), any other
/// text as `{"text": …}`.
fn payload(rendered: String, json: bool) -> Result<Vec<u8>, String> {
    if !json {
        // Slack refuses empty text (`no_text`): a permanent failure here, not 72 h of retries.
        if rendered.trim().is_empty() {
            return Err(EMPTY.into());
        }
        return Ok(serde_json::to_vec(&serde_json::json!({ "text": rendered })).unwrap_or_default());
    }
    match serde_json::from_str::<serde_json::Value>(&rendered) {
        Ok(v) if v.is_object() => Ok(rendered.into_bytes()),
        Ok(_) => Err("the template (it starts with '{') rendered JSON that is not an object".into()),
        Err(e) => Err(format!(
            "the template (it starts with '{{') rendered invalid JSON ({e}); insert values with `| tojson`"
        )),
    }
}

/// Whether a message body with a `text` gives Slack something to show: that text is not
/// null or blank, or a `blocks` or `attachments` list is not empty. Slack refuses such a
/// message (`no_text`): a JSON template whose value was missing (`{"text": null}`) is a
/// permanent failure here, as blank text is, not 72 h of retries. A body without `text` is
/// sent as it is: a Workflow Builder trigger (`hooks.slack.com/triggers/…`) takes keys of
/// its own. (At the send only: the sample event a template is checked with when saved has
/// no payload values.)
fn says_something(body: &[u8]) -> bool {
    let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(body) else { return false };
    let Some(text) = m.get("text") else { return true };
    let list = |k: &str| m.get(k).and_then(|v| v.as_array()).is_some_and(|a| !a.is_empty());
    text.as_str().is_some_and(|t| !t.trim().is_empty()) || list("blocks") || list("attachments")
}

fn no_content() -> String {
    "the template rendered a Slack message whose text is null or blank, with no blocks or attachments (a missing \
     value renders null or empty: use `| default(…)`); Slack refuses it"
        .into()
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
    fn text_is_wrapped_and_a_json_template_is_sent_as_is() {
        let v: serde_json::Value = serde_json::from_slice(&payload("*hi* `x`".into(), false).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"text": "*hi* `x`"}));
        // Text that looks like JSON is still text when the template is not a JSON template.
        let v: serde_json::Value = serde_json::from_slice(&payload("{\"a\": 1}".into(), false).unwrap()).unwrap();
        assert_eq!(v["text"], "{\"a\": 1}");
        let blocks = r#"{"blocks": [{"type": "section"}]}"#.to_string();
        assert_eq!(payload(blocks.clone(), true).unwrap(), blocks.into_bytes());
        let err = payload(r#"{"text": "say "hi""}"#.into(), true).unwrap_err();
        assert!(err.contains("tojson"), "{err}");
        assert!(payload("[1]".into(), true).unwrap_err().contains("not an object"));
        assert_eq!(payload(" \n".into(), false).unwrap_err(), EMPTY, "Slack refuses empty text");
        for nothing in [r#"{"text": null}"#, r#"{"text": " "}"#, r#"{"text": "", "blocks": []}"#, r#"{"text": 7}"#] {
            assert!(!says_something(nothing.as_bytes()), "{nothing}");
        }
        let trigger = r#"{"listing": "Loft", "verdict": "fake"}"#; // a workflow trigger's own keys
        for something in [r#"{"text": "hi"}"#, r#"{"text": null, "blocks": [{"type": "divider"}]}"#, trigger] {
            assert!(says_something(something.as_bytes()), "{something}");
        }
        assert!(is_json_template("  {\"blocks\": []}") && is_json_template("{ \"text\": 1 }"));
        assert!(!is_json_template("*{{ event_type }}*") && !is_json_template("{{ event_type }}: done"));
        assert!(!is_json_template("{% if payload %}x{% endif %}") && !is_json_template("{# note #}x"));
        let check = |src: &str| check_json_template(src, &Template::compile(src).unwrap());
        assert!(check(r#"{"text": {{ event_type | tojson }}}"#).is_ok());
        assert!(check(r#"{"text": "{{ event_type }}" "#).unwrap_err().contains("invalid JSON"));
    }

    #[test]
    fn an_echoed_url_is_hidden_in_errors() {
        let url = url::Url::parse("https://hooks.slack.com/services/T0SECRET/B0SECRET/XoXsecretTOKEN123").unwrap();
        let parts = secret_parts(&url);
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let hide = |body: &str| super::super::http::excerpt_hiding(body.as_bytes(), &parts);
        assert_eq!(
            hide("<pre>Cannot POST /services/T0SECRET/B0SECRET/XoXsecretTOKEN123</pre>"),
            "<pre>Cannot POST ********</pre>"
        );
        assert_eq!(hide("invalid_token XoXsecretTOKEN123"), "invalid_token ********");
        assert_eq!(hide("no_service"), "no_service", "Slack's own answers stay readable");
        let q = url::Url::parse("https://example.com/hook?token=s3cr3tvalue").unwrap();
        assert!(secret_parts(&q).contains(&"token=s3cr3tvalue".to_string()));
    }

    #[test]
    fn the_default_template_names_the_webhook_without_its_markup() {
        let event = Template::sample();
        let text = Template::compile(DEFAULT_TEMPLATE).unwrap().render(&event, "ops <!channel> & co").unwrap();
        assert!(text.contains("(ops &lt;!channel&gt; &amp; co)"), "{text}");
        assert!(text.starts_with("*object.created*"), "{text}");
    }

    /// An upstream's payload is the sender's text: it cannot leave the code block, ping the
    /// channel or make a link, and it stays the same JSON.
    #[test]
    fn the_default_template_shows_the_payload_without_its_markup() {
        let mut event = Template::sample();
        let title = "```\n<!channel> log in at <https://evil.example/login|https://slack.com> & `now` ```";
        event.payload = serde_json::json!({"metadata": {"title": title}});
        let text = Template::compile(DEFAULT_TEMPLATE).unwrap().render(&event, "ops").unwrap();
        let (_, block) = text.split_once("```").unwrap();
        let block = block.strip_suffix("```").unwrap();
        assert!(!block.contains('`') && !block.contains('<') && !block.contains('>'), "{text}");
        let shown = block.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(v["metadata"]["title"], title, "{text}");
    }

    /// A large payload is cut, saying so, and what is shown is still escaped.
    #[test]
    fn the_default_template_cuts_a_large_payload() {
        let mut event = Template::sample();
        event.payload = serde_json::json!({"log": "<x> ".repeat(200_000)});
        let text = Template::compile(DEFAULT_TEMPLATE).unwrap().render(&event, "ops").unwrap();
        let (_, block) = text.split_once("```").unwrap();
        let block = block.strip_suffix("```").unwrap();
        assert!(block.ends_with(" … (cut: the whole payload is in the event)"), "{}", &block[block.len() - 80..]);
        let shown = block.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
        assert_eq!(shown.chars().count(), DEFAULT_PAYLOAD_CHARS, "the marker included: {}", &block[..80]);
        assert!(!block.contains('<') && text.len() < 20_000, "{}", text.len());
    }

    #[test]
    fn a_json_template_must_insert_the_webhook_name_as_json() {
        for (source, ok) in
            [(r#"{"text": "{{ webhook_name }}"}"#, false), (r#"{"text": {{ webhook_name | tojson }}}"#, true)]
        {
            let t = Template::validate(source).unwrap();
            assert_eq!(check_json_template(source, &t).is_ok(), ok, "{source}");
        }
    }
}
