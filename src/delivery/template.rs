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
const NAME: &str = "payload_template";

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
        tmpl.render(Self::context(event)).map_err(describe)
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
