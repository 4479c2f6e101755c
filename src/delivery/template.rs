//! Jinja2 payload templates (minijinja), compiled once and rendered per delivery.
//!
//! In scope: `event_type`, `event_id`, `payload`, `created_at` (and `cache_scopes`).
//! Rendering is bounded by fuel so a runaway loop cannot pin a worker. Undefined values are
//! "chainable" (`payload.a.b` of a missing `a` renders empty instead of failing), so a
//! template that compiles and renders a sample event at create time does not turn into a
//! runtime surprise for events with a different payload shape.

use minijinja::{Environment, UndefinedBehavior};

use crate::events::EventRecord;

/// Fuel one render may spend (generous for real templates, fatal for runaways). minijinja
/// charges one per instruction and one per 64 bytes of data a template makes (strings,
/// output), checked before a known-size allocation: fuel bounds memory too.
const FUEL: u64 = 100_000;
/// More for a payload that needs it (see `Template::render_large`): `tojson` spends about a
/// quarter per byte of output, which `indent` can make larger than the payload.
const FUEL_PER_PAYLOAD_BYTE: u64 = 4;
/// The most a render may output, and the largest result of `join` (which minijinja builds
/// before charging for it): a template that loops over a payload, or joins `[big] * 1000`,
/// fails here rather than taking the daemon's memory.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// The longest template source accepted.
const MAX_SOURCE_BYTES: usize = 64 << 10;
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
    /// [`Template::compile`] for a template being saved: a new one is also held to
    /// [`MAX_SOURCE_BYTES`] (a stored one, from before the limit, still loads).
    pub fn validate(source: &str) -> Result<Template, String> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(format!("a template may be at most {} KiB", MAX_SOURCE_BYTES >> 10));
        }
        Self::compile(source)
    }

    /// Compiles `source` and renders it once against a sample event, so syntax errors,
    /// unknown filters, fuel exhaustion and outputs over the cap are reported when the
    /// webhook is saved.
    pub fn compile(source: &str) -> Result<Template, String> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_filter("pretty_json", pretty_json);
        env.add_filter("join", capped_join);
        env.add_template_owned(NAME, source.to_string()).map_err(describe)?;
        let t = Template { env };
        let sample = Self::sample();
        // The sample has an empty payload, so data-dependent errors (`payload.n * 2` of a
        // missing `n`) are expected; only errors no event could avoid are reported.
        if let Err(e) = t.env.get_template(NAME).and_then(|tmpl| capped_render(&tmpl, Self::context(&sample))) {
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
            ) || is_too_large(&e)
            {
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
        match capped_render(&tmpl, Self::context(event)) {
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
            capped_render(&env.get_template(NAME)?, Self::context(event))
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

/// A buffer that refuses to grow past [`MAX_OUTPUT_BYTES`]: what is written through it stops
/// there instead of being built whole.
struct Bounded(Vec<u8>);

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > MAX_OUTPUT_BYTES {
            return Err(std::io::Error::other("too large"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Bounded {
    fn into_string(self) -> Result<String, minijinja::Error> {
        String::from_utf8(self.0)
            .map_err(|_| minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, "not UTF-8"))
    }
}

/// Renders with the output capped at [`MAX_OUTPUT_BYTES`].
fn capped_render(tmpl: &minijinja::Template<'_, '_>, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
    let mut out = Bounded(Vec::new());
    tmpl.render_captured_to(ctx, &mut out).map_err(|e| match e.kind() {
        minijinja::ErrorKind::WriteFailure => too_large("the rendered output"),
        _ => e,
    })?;
    out.into_string()
}

const TOO_LARGE: &str = "would be larger than";

fn too_large(what: &str) -> minijinja::Error {
    minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("{what} {TOO_LARGE} {} MiB", MAX_OUTPUT_BYTES >> 20),
    )
}

fn is_too_large(e: &minijinja::Error) -> bool {
    e.kind() == minijinja::ErrorKind::InvalidOperation && e.detail().is_some_and(|d| d.contains(TOO_LARGE))
}

/// minijinja's `join`, with the size of its result checked before it is built (minijinja
/// charges fuel for the joiner's bytes, not the items').
fn capped_join(
    state: &mut minijinja::State,
    value: &minijinja::Value,
    joiner: Option<minijinja::value::StringInput<'_>>,
    attribute: Option<&str>,
    kwargs: minijinja::value::Kwargs,
) -> Result<minijinja::Value, minijinja::Error> {
    if let Ok(items) = value.try_iter() {
        let sep = match &joiner {
            Some(j) => j.as_str().len(),
            None => kwargs.get::<Option<&str>>("d")?.map_or(0, str::len),
        };
        // Measured without building anything, and paid for per item: a lazily repeated list
        // (`[''] * 10**8`) costs minijinja almost nothing to make.
        let mut size = Capped { len: 0 };
        for item in items {
            state.consume_fuel(1)?;
            size.len = size.len.saturating_add(sep);
            let fits = match item.as_str() {
                Some(s) => std::fmt::Write::write_str(&mut size, s),
                None => std::fmt::Write::write_fmt(&mut size, format_args!("{item}")),
            };
            if fits.is_err() || size.len > MAX_OUTPUT_BYTES {
                return Err(too_large("the result of join"));
            }
        }
    }
    minijinja::filters::join(state, value, joiner, attribute, kwargs)
}

/// Counts the bytes written to it, and refuses past [`MAX_OUTPUT_BYTES`] (so formatting a
/// huge value stops early instead of being built first).
struct Capped {
    len: usize,
}

impl std::fmt::Write for Capped {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.len = self.len.saturating_add(s.len());
        if self.len > MAX_OUTPUT_BYTES {
            return Err(std::fmt::Error);
        }
        Ok(())
    }
}

/// `{{ payload | pretty_json }}`: indented JSON for people (Slack, email, SMS). `tojson`
/// escapes `&`, `<`, `>` and `'` as `\u0026`… so its output is safe inside HTML: right in a
/// JSON body, noise in a chat message. Written through a [`Bounded`] buffer.
fn pretty_json(value: minijinja::Value) -> Result<String, minijinja::Error> {
    let mut out = Bounded(Vec::new());
    match serde_json::to_writer_pretty(&mut out, &value) {
        Ok(()) => out.into_string(),
        Err(e) if e.is_io() => Err(too_large("the output of pretty_json")),
        Err(e) => Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())),
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
        let pretty = Template::compile("{{ payload | pretty_json }}").unwrap().render(&event).unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&pretty).unwrap(), event.payload);
        // A loop over every item of a 1 MiB payload.
        let listed = Template::compile("{% for i in payload['items'] %}{{ i.k }}={{ i.n }}\n{% endfor %}")
            .unwrap()
            .render(&event)
            .unwrap();
        assert_eq!(listed.lines().count(), event.payload["items"].as_array().unwrap().len());
        // A loop over ~1 MiB of small numbers.
        let mut small = event.clone();
        small.payload = serde_json::json!({"v": (0..200_000).collect::<Vec<u32>>()});
        let out = Template::compile("{% for x in payload.v %}{{ x }},{% endfor %}").unwrap().render(&small).unwrap();
        assert_eq!(out.matches(',').count(), 200_000);
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

    /// The work this thread does from `start` to `spent`: its CPU time where the OS reports
    /// it (Linux), so that a busy machine's waits for a CPU are not counted; elsewhere the
    /// wall-clock time.
    struct Work(std::time::Instant, Option<std::time::Duration>);

    impl Work {
        fn cpu() -> Option<std::time::Duration> {
            // The first field of schedstat: nanoseconds this thread has run on a CPU.
            let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
            stat.split_whitespace().next()?.parse().ok().map(std::time::Duration::from_nanos)
        }

        fn start() -> Work {
            Work(std::time::Instant::now(), Work::cpu())
        }

        fn spent(&self) -> std::time::Duration {
            match (self.1, Work::cpu()) {
                (Some(before), Some(now)) => now.saturating_sub(before),
                _ => self.0.elapsed(),
            }
        }
    }

    /// Memory bombs: a join of a repeated string, at save time and triggered by an event's
    /// data, and a loop that prints the payload over and over. Each fails quickly.
    #[test]
    fn templates_cannot_take_the_daemon_s_memory() {
        let err = Template::compile("{{ ([('x' * 1000000)] * 1000) | join | length }}").unwrap_err();
        assert!(err.contains("larger than"), "{err}");
        let mut e = big_event(1);
        e.payload = serde_json::json!({"s": "x".repeat(1 << 20), "n": 2000, "sep": "y".repeat(1 << 20)});
        for source in [
            "{{ ([payload.s] * payload.n) | join }}",
            "{{ [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17] | join(payload.sep) }}",
            "{{ [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17] | join(d=payload.sep) }}",
            "{% for i in range(payload.n) %}{{ payload.s }}{% endfor %}",
            "{{ payload.s * payload.n }}",
            "{{ ([''] * 100000000) | join }}",
            "{{ [[('x' * 60000)] * 20000] | join }}",
            "{{ ([('x' * 60000)] * 20000) | pretty_json }}",
        ] {
            let started = Work::start();
            // Refused when saved, or when an event renders it.
            let err = match Template::compile(source) {
                Err(err) => err,
                Ok(t) => t.render(&e).unwrap_err(),
            };
            assert!(
                err.contains("larger than") || err.contains("fuel") || err.contains("too large"),
                "{source}: {err}"
            );
            let spent = started.spent();
            assert!(spent < std::time::Duration::from_secs(5), "{source}: {spent:?}");
        }
        // A template saved before the size limit still loads; a new one is held to it.
        let big = format!("{{{{ event_type }}}}{}", " ".repeat(MAX_SOURCE_BYTES));
        assert!(Template::compile(&big).is_ok());
        assert!(Template::validate(&big).unwrap_err().contains("KiB"));
        // The join still joins.
        let t = Template::compile("{{ ['a', 'b'] | join('-') }} {{ ['c', 'd'] | join(d='+') }} {{ 'xy' | join(',') }}");
        assert_eq!(t.unwrap().render(&e).unwrap(), "a-b c+d x,y");
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
