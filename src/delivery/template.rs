//! Jinja2 payload templates (minijinja), compiled once and rendered per delivery.
//!
//! In scope: `event_type`, `event_id`, `payload`, `created_at` (and `cache_scopes`).
//! Rendering is bounded by fuel so a runaway loop cannot pin a worker. Undefined values are
//! "chainable" (`payload.a.b` of a missing `a` renders empty instead of failing), so a
//! template that compiles and renders a sample event at create time does not turn into a
//! runtime surprise for events with a different payload shape.

use minijinja::{Environment, UndefinedBehavior};

use crate::events::EventRecord;

/// Instructions one render may spend (generous for real templates, fatal for runaways).
const FUEL: u64 = 100_000;
/// More for a payload that needs it (see `Template::render_large`): `tojson` spends about 17
/// per byte of output, which `indent` can make larger than the payload.
const FUEL_PER_PAYLOAD_BYTE: u64 = 64;
/// The name minijinja gives the template in its errors ("in template:1"): neutral, since the
/// same code compiles payload, subject, body and message templates.
const NAME: &str = "template";

/// A compiled template.
pub struct Template {
    env: Environment<'static>,
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Template")
    }
}

impl Template {
    /// Compiles `source` and renders it once against a sample event, so syntax errors,
    /// unknown filters and fuel exhaustion are reported when the webhook is saved.
    pub fn compile(source: &str) -> Result<Template, String> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_filter("pretty_json", pretty_json);
        env.add_template_owned(NAME, source.to_string()).map_err(describe)?;
        let t = Template { env };
        let sample = Self::sample();
        // The sample has an empty payload, so data-dependent errors (`payload.n * 2` of a
        // missing `n`) are expected; only errors no event could avoid are reported.
        if let Err(e) = t.env.get_template(NAME).and_then(|tmpl| tmpl.render(Self::context(&sample))) {
            use minijinja::ErrorKind as K;
            if matches!(
                e.kind(),
                K::SyntaxError
                    | K::UnknownFilter
                    | K::UnknownTest
                    | K::UnknownFunction
                    | K::UnknownMethod
                    | K::TooManyArguments
                    | K::MissingArgument
                    | K::TemplateNotFound
                    | K::BadInclude
                    | K::OutOfFuel
                    | K::InvalidDelimiter
                    | K::BadEscape
            ) {
                return Err(describe(e));
            }
        }
        Ok(t)
    }

    /// Renders the sample event used by [`Template::compile`] (for checks at save time).
    pub fn render_sample(&self) -> Result<String, String> {
        self.render(&Self::sample())
    }

    pub fn render(&self, event: &EventRecord) -> Result<String, String> {
        let tmpl = self.env.get_template(NAME).map_err(describe)?;
        match tmpl.render(Self::context(event)) {
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => self.render_large(event).map_err(|_| describe(e)),
            other => other.map_err(describe),
        }
    }

    /// Fuel in proportion to the payload: `tojson` and loops over a large payload spend
    /// some per byte, and an accepted event must not be refused for its size. A runaway
    /// template still stops, within [`FUEL_PER_PAYLOAD_BYTE`] × the payload's size.
    ///
    /// Such a render may take a while (a runaway one over a megabyte: about a second), so on a
    /// multi-threaded runtime it tells tokio to move other tasks off this thread meanwhile.
    fn render_large(&self, event: &EventRecord) -> Result<String, minijinja::Error> {
        let render = || {
            let bytes = serde_json::to_vec(&event.payload).map(|v| v.len()).unwrap_or(0) as u64;
            let mut env = self.env.clone();
            env.set_fuel(Some(FUEL.saturating_add(bytes.saturating_mul(FUEL_PER_PAYLOAD_BYTE))));
            env.get_template(NAME)?.render(Self::context(event))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(render)
            }
            _ => render(),
        }
    }

    fn sample() -> EventRecord {
        EventRecord {
            event_id: crate::ids::EventId::generate(),
            event_type: "object.created".into(),
            created_at: crate::util::now_rfc3339(),
            payload: serde_json::json!({}),
            cache_scopes: Vec::new(),
            stored: false,
        }
    }

    fn context(event: &EventRecord) -> minijinja::Value {
        minijinja::context! {
            event_type => &event.event_type,
            event_id => event.event_id.as_str(),
            payload => minijinja::Value::from(minijinja::value::Serde(&event.payload)),
            created_at => &event.created_at,
            cache_scopes => minijinja::Value::from(minijinja::value::Serde(&event.cache_scopes)),
        }
    }
}

/// `{{ payload | pretty_json }}`: indented JSON for people (Slack, email, SMS). `tojson`
/// escapes `&`, `<`, `>` and `'` as `\u0026`… so its output is safe inside HTML: right in a
/// JSON body, noise in a chat message.
fn pretty_json(value: minijinja::Value) -> Result<String, minijinja::Error> {
    serde_json::to_string_pretty(&value)
        .map_err(|e| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string()))
}

fn describe(e: minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        if !s.contains("line") {
            s.push_str(&format!(" (line {line})"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> EventRecord {
        EventRecord {
            event_id: crate::ids::EventId::parse("evt_1").unwrap(),
            event_type: "object.created".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            payload: serde_json::json!({"object_id": "obj_9", "n": 3}),
            cache_scopes: vec![],
            stored: false,
        }
    }

    #[test]
    fn renders_event_fields() {
        let t = Template::compile(
            r#"{"t": "{{ event_type }}", "id": {{ payload.object_id | tojson }}, "missing": "{{ payload.a.b }}"}"#,
        )
        .unwrap();
        let out = t.render(&event()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["t"], "object.created");
        assert_eq!(v["id"], "obj_9");
        assert_eq!(v["missing"], "");
    }

    #[test]
    fn pretty_json_is_for_people() {
        let mut e = event();
        e.payload = serde_json::json!({"url": "https://e.test/a?b=1&c=2", "html": "<b>'x'</b>"});
        let out = Template::compile("{{ payload | pretty_json }}").unwrap().render(&e).unwrap();
        assert!(out.contains(r#""url": "https://e.test/a?b=1&c=2""#) && out.contains("<b>'x'</b>"), "{out}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), e.payload);
        let escaped = Template::compile("{{ payload | tojson }}").unwrap().render(&e).unwrap();
        assert!(escaped.contains("\\u0026"), "tojson escapes for HTML: {escaped}");
    }

    #[test]
    fn errors_are_reported_at_compile_time() {
        assert!(Template::compile("{{ unclosed").is_err());
        assert!(Template::compile("{{ x | no_such_filter }}").is_err());
        // Data-dependent failures are not held against the template at create time.
        assert!(Template::compile("{{ payload.count * 2 }}").is_ok());
        let err = Template::compile("{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}")
            .unwrap_err();
        assert!(err.to_lowercase().contains("fuel"), "{err}");
    }
}

#[cfg(test)]
mod fuel_tests {
    use super::*;

    fn big_event(kb: usize) -> EventRecord {
        let items: Vec<serde_json::Value> =
            (0..kb * 1024 / 40).map(|i| serde_json::json!({"k": format!("value-{i:08}"), "n": i})).collect();
        EventRecord {
            event_id: crate::ids::EventId::parse("evt_1").unwrap(),
            event_type: "object.created".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            payload: serde_json::json!({ "items": items }),
            cache_scopes: vec![],
            stored: false,
        }
    }

    #[test]
    fn a_large_payload_renders_in_full() {
        let event = big_event(1024);
        let expected = serde_json::to_string(&event.payload).unwrap();
        let t = Template::compile("{\"data\": {{ payload | tojson }}}").unwrap();
        let out = t.render(&event).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["data"], event.payload);
        assert!(out.len() > expected.len());
        let indented = Template::compile("{{ payload | tojson(indent=2) }}").unwrap().render(&event).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&indented).unwrap(), event.payload);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_render_inside_a_runtime_works_on_either_flavor() {
        let event = big_event(512);
        let t = Template::compile("{{ payload | tojson }}").unwrap();
        let multi = t.render(&event).unwrap();
        let single = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async move { t.render(&event).unwrap() })
        })
        .await
        .unwrap();
        assert_eq!(multi, single);
    }

    #[test]
    fn a_runaway_template_still_stops_on_a_large_payload() {
        let t = Template::compile(
            "{% for i in payload['items'] %}{% for j in payload['items'] %}{{ j.k }}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let err = t.render(&big_event(64)).unwrap_err();
        assert!(err.contains("fuel"), "{err}");
    }
}
