//! Jinja2 payload templates (minijinja), compiled once and rendered per delivery.
//!
//! In scope: `event_type`, `event_id`, `payload`, `created_at`, `cache_scopes`, and the
//! `webhook_name` of the webhook delivering (seed 004: the name is notification metadata).
//! Rendering is bounded by fuel so a runaway loop cannot pin a worker. Undefined values are
//! "chainable" (`payload.a.b` of a missing `a` renders empty instead of failing), so a
//! template that compiles and renders a sample event at create time does not turn into a
//! runtime surprise for events with a different payload shape; an error that no event could
//! avoid is refused when the template is saved (see `Template::unavoidable`). Python's
//! methods (`payload.items()`, `event_type.upper()`…) come from minijinja-contrib's
//! `pycompat`, under the same fuel and size bounds as the rest. A list repeated with `*` is
//! lazy (free to make): the filters, methods and output that read a value whole pay for its
//! items first (see `prepay`).

use minijinja::value::ValueOrKwargs;
use minijinja::{Environment, UndefinedBehavior};

use crate::events::EventRecord;

/// Fuel one render may spend (generous for real templates, fatal for runaways). minijinja
/// charges one per instruction and one per 64 bytes of data a template makes (strings,
/// output), checked before a known-size allocation: fuel bounds memory too.
const FUEL: u64 = 100_000;
/// More for a payload that needs it (see `Template::render_large`): `tojson` spends about a
/// quarter per byte of output, which `indent` can make larger than the payload, and a loop
/// over a payload's items a few per item. (4 let a runaway template over a 1 MiB payload
/// make 256 MiB before it stopped.)
const FUEL_PER_PAYLOAD_BYTE: u64 = 2;
/// The most that extra may be, whatever the payload's size (`server.max_body_bytes` may allow
/// large ones): 8 Mi fuel, which pays for 512 MiB of data made. Fuel counts instructions and
/// data alike, so it cannot be cut much lower: a loop over 200,000 numbers of a 1 MiB payload
/// needs over 1 Mi.
const MAX_EXTRA_FUEL: u64 = 8 << 20;

/// Renders given extra fuel run one at a time, process-wide: each may hold tens of MiB while
/// it runs, and a webhook renders up to `max_in_flight` sends at once.
static LARGE_RENDERS: std::sync::Mutex<()> = std::sync::Mutex::new(());
/// The most a render may output, and the largest result of `join` (which minijinja builds
/// before charging for it): a template that loops over a payload, or joins `[big] * 1000`,
/// fails here rather than taking the daemon's memory.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;
/// The longest template source accepted.
const MAX_SOURCE_BYTES: usize = 64 << 10;
/// Why an empty template is refused when saved.
pub const EMPTY_SOURCE: &str = "must not be empty or blank; leave it out to use the default template";
/// The `webhook_name` of the sample event rendered when a template is saved. A real name may
/// hold a quote or markup: a JSON template that inserts it without `| tojson` fails its
/// check at save time, not every delivery later.
const SAMPLE_WEBHOOK_NAME: &str = "example \"webhook\" <&>";
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
    /// [`MAX_SOURCE_BYTES`] (a stored one, from before the limit, still loads), and may not be
    /// empty: an empty Slack, SMS or email template fails every delivery, and an empty
    /// `payload_template` posts an empty body, where leaving it out gives the default.
    pub fn validate(source: &str) -> Result<Template, String> {
        if source.trim().is_empty() {
            return Err(EMPTY_SOURCE.into());
        }
        if source.len() > MAX_SOURCE_BYTES {
            return Err(format!("a template may be at most {} KiB", MAX_SOURCE_BYTES >> 10));
        }
        Self::build(source, true)
    }

    /// Compiles `source` and renders it once against a sample event, so syntax errors,
    /// unknown filters, fuel exhaustion and outputs over the cap are reported (the tests'
    /// way to make a template). [`Template::validate`] (a template being saved) also
    /// refuses errors no event could avoid, which would otherwise take a stored channel down
    /// for every event where before only some failed.
    #[cfg(test)]
    pub(crate) fn compile(source: &str) -> Result<Template, String> {
        Self::build(source, false)
    }

    /// Compiles a stored template to deliver with: parsed, not rendered. It was checked when
    /// it was saved ([`Template::validate`]); an error that an event meets shows in that
    /// delivery's attempt. Loading runs wherever a webhook's channels are built (start-up,
    /// each save, each worker restart), some of it on the webhook registry: a sample render
    /// there would cost each of them a render, seconds for the slowest templates. (Every
    /// template is this environment, fuel, filters and methods, with `source` as its one
    /// template: [`Template::validate`] checks what this makes.)
    pub fn load(source: &str) -> Result<Template, String> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.add_filter("pretty_json", pretty_json);
        env.add_filter("mrkdwn", mrkdwn);
        env.add_filter("join", capped_join);
        // `list * n` is a lazy sequence that minijinja makes for nothing; the builtins that
        // read a value whole (serialize, stringify, compare) pay for it first (see `prepay`).
        for &name in WHOLE_VALUE_FILTERS {
            env.add_filter(name, move |state: &minijinja::State, args: minijinja::value::Rest<ValueOrKwargs>| {
                // Keyword arguments are taken as such (a `Value` would leave them unused, an
                // error) and handed on as they came.
                prepaid_builtin(state, name, &args.into_values())
            });
        }
        // What `{{ value }}` writes is also a whole-value read.
        env.set_formatter(|out, state, value| {
            prepay(state, value)?;
            minijinja::escape_formatter(out, state, value)
        });
        // Jinja2 compatibility: templates written for Python's Jinja2 call Python methods
        // (`payload.items()`, `payload.get('a', 'd')`, `event_type.upper()`, `.split('.')`…)
        // and use `truncate` / `wordcount`. minijinja-contrib's implementations pay fuel for
        // what they build; the two that could build more than they are charged for (`str.join`,
        // `str.format`) go through `py_method`. None of it reads files, the environment or the
        // network.
        env.set_unknown_method_callback(py_method);
        env.add_filter("truncate", truncate);
        env.add_filter("wordcount", wordcount);
        env.add_template_owned(NAME, source.to_string()).map_err(describe)?;
        Ok(Template { env })
    }

    /// [`Template::compile`], and with `strict` [`Template::validate`]'s extra check.
    fn build(source: &str, strict: bool) -> Result<Template, String> {
        let t = Self::load(source)?;
        let sample = Self::sample();
        if let Err(e) = t.render_context(Self::context(&sample, SAMPLE_WEBHOOK_NAME)) {
            if t.unavoidable(&e, &sample, strict) {
                return Err(describe(e));
            }
        }
        Ok(t)
    }

    /// Whether `e`, the error of rendering the sample event (an empty payload), would fail
    /// every event, so that saving the template is refused rather than every delivery dying.
    ///
    /// Data-dependent errors (`payload.n * 2` of a missing `n`) are expected on the sample and
    /// let through. An error the data cannot change is one of the kinds that concern the
    /// template itself (syntax, unknown filter, wrong arguments, fuel, size), or an invalid
    /// operation or unknown method whose operands are all defined values (`"%s" % (a, b)`,
    /// `1 + "a"`, `event_type.nosuch()`) AND that renders of the same template against
    /// payloads of other shapes (see [`Probe`]) fail at the same place too: a value made from
    /// a fallback (`payload.n | default('') - 1`) would be a number in a real event. So what
    /// is refused is a sure failure; what is let through may still fail an event (the
    /// delivery then goes `dead` with the reason).
    ///
    /// Without `strict`, only the kinds that concern the template itself count.
    fn unavoidable(&self, e: &minijinja::Error, sample: &EventRecord, strict: bool) -> bool {
        use minijinja::ErrorKind as K;
        match e.kind() {
            K::SyntaxError
            | K::UnknownFilter
            | K::UnknownTest
            | K::UnknownFunction
            | K::TooManyArguments
            | K::MissingArgument
            | K::TemplateNotFound
            | K::BadInclude
            | K::OutOfFuel
            | K::InvalidDelimiter
            | K::BadEscape => true,
            _ if is_too_large(e) => true,
            K::InvalidOperation | K::UnknownMethod if strict && (on_defined_values(e) || over_a_limit(e)) => {
                [Probe::Number, Probe::Text, Probe::Map].into_iter().all(|probe| {
                    let payload = minijinja::Value::from_object(probe);
                    match self.render_context(Self::context_with(sample, SAMPLE_WEBHOOK_NAME, payload)) {
                        Ok(_) => false,
                        // At the same place, whatever the kind (`payload.nosuch()` is an
                        // unknown method of the sample and a call of a probe's value: both
                        // fail every event); elsewhere, the data made a difference.
                        Err(again) => again.range() == e.range(),
                    }
                })
            }
            _ => false,
        }
    }

    fn render_context(&self, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
        capped_render(&self.env.get_template(NAME)?, ctx)
    }

    /// Renders the sample event used by [`Template::validate`] (for checks at save time).
    pub fn render_sample(&self) -> Result<String, String> {
        self.render(&Self::sample(), SAMPLE_WEBHOOK_NAME)
    }

    /// Renders `event` for a delivery of the webhook named `webhook_name`.
    pub fn render(&self, event: &EventRecord, webhook_name: &str) -> Result<String, String> {
        let tmpl = self.env.get_template(NAME).map_err(describe)?;
        match capped_render(&tmpl, Self::context(event, webhook_name)) {
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => {
                self.render_large(event, webhook_name).map_err(|_| describe(e))
            }
            other => other.map_err(describe),
        }
    }

    /// Fuel in proportion to the payload: `tojson` and loops over a large payload spend
    /// some per byte, and an accepted event must not be refused for its size. A runaway
    /// template still stops, within [`FUEL_PER_PAYLOAD_BYTE`] × the payload's size, at most
    /// [`MAX_EXTRA_FUEL`] more, one such render at a time (see [`LARGE_RENDERS`]).
    ///
    /// Such a render may take a while (a runaway one over a megabyte: about a second), so on a
    /// multi-threaded runtime it tells tokio to move other tasks off this thread meanwhile.
    fn render_large(&self, event: &EventRecord, webhook_name: &str) -> Result<String, minijinja::Error> {
        let render = || {
            let _one_at_a_time = LARGE_RENDERS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let bytes = serde_json::to_vec(&event.payload).map(|v| v.len()).unwrap_or(0) as u64;
            let mut env = self.env.clone();
            let extra = bytes.saturating_mul(FUEL_PER_PAYLOAD_BYTE).min(MAX_EXTRA_FUEL);
            env.set_fuel(Some(FUEL.saturating_add(extra)));
            capped_render(&env.get_template(NAME)?, Self::context(event, webhook_name))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(render)
            }
            _ => render(),
        }
    }

    /// The event rendered when a template is saved (and by channel tests): an
    /// `object.created` with an empty payload.
    pub(crate) fn sample() -> EventRecord {
        EventRecord {
            event_id: crate::ids::EventId::generate(),
            event_type: "object.created".into(),
            created_at: crate::util::now_rfc3339(),
            payload: serde_json::json!({}),
            cache_scopes: Vec::new(),
            stored: false,
            stored_size: Default::default(),
        }
    }

    fn context(event: &EventRecord, webhook_name: &str) -> minijinja::Value {
        Self::context_with(event, webhook_name, minijinja::Value::from(minijinja::value::Serde(&event.payload)))
    }

    /// The context of `event` with `payload` in place of its own (see [`Probe`]).
    fn context_with(event: &EventRecord, webhook_name: &str, payload: minijinja::Value) -> minijinja::Value {
        minijinja::context! {
            webhook_name => webhook_name,
            event_type => &event.event_type,
            event_id => event.event_id.as_str(),
            payload => payload,
            created_at => &event.created_at,
            cache_scopes => minijinja::Value::from(minijinja::value::Serde(&event.cache_scopes)),
        }
    }
}

/// A stand-in payload for [`Template::unavoidable`]: a map that has every key (and lists
/// none), each of one kind, so that a render that failed on the sample's empty payload can be
/// tried with the values an event could have.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// Every field is the number 1.
    Number,
    /// Every field is the string "x".
    Text,
    /// Every field is another such map.
    Map,
}

impl minijinja::value::Object for Probe {
    fn get_value(self: &std::sync::Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        // Not the names of a map's Python methods: `payload.get('a', '')` calls the method
        // (a key is looked up before a method, and a probe's value cannot be called).
        if matches!(key.as_str(), Some("get" | "items" | "keys" | "values")) {
            return None;
        }
        Some(match **self {
            Probe::Number => minijinja::Value::from(1),
            Probe::Text => minijinja::Value::from("x"),
            Probe::Map => minijinja::Value::from_object(Probe::Map),
        })
    }
}

/// Whether the operands of an invalid operation (`tried to use % operator on unsupported
/// types string and sequence`) or the receiver of an unknown method (`string has no method
/// named nosuch`) are all defined values: an undefined or none operand is a missing field of
/// the sample, which an event may have. minijinja gives the operands' kinds only in the
/// message (its undefined-origin record is private), so this reads the message; the unit
/// tests pin both shapes, and a message of another shape counts as data-dependent (let
/// through, as before this check existed).
fn on_defined_values(e: &minijinja::Error) -> bool {
    let Some(detail) = e.detail() else { return false };
    let kinds: Vec<&str> = match e.kind() {
        minijinja::ErrorKind::InvalidOperation => {
            let Some((_, rest)) = detail.split_once(" operator on unsupported types ") else { return false };
            let rest = rest.split(" (").next().unwrap_or(rest);
            match rest.split_once(" and ") {
                Some((a, b)) => vec![a, b],
                None => return false,
            }
        }
        minijinja::ErrorKind::UnknownMethod => match detail.split_once(" has no method named ") {
            Some((kind, _)) => vec![kind],
            None => return false,
        },
        _ => return false,
    };
    kinds.iter().all(|k| !matches!(*k, "undefined" | "none"))
}

/// Python's methods on strings, maps and lists (minijinja-contrib's `pycompat`). Each call on
/// a string or list first pays fuel for reading it (one per 64 bytes, or per item, as minijinja
/// charges for data made): `s.count('x')` in a loop over a large payload scans it every time
/// and makes nothing minijinja would charge for. `str.join` and `str.format` build their
/// result before paying for it: `join` goes
/// through [`capped_join`] (`sep.join(items)` is `items | join(sep)`), and `format` is
/// refused a width or precision over [`MAX_FORMAT_WIDTH`] (`"{:>99999999999}".format(1)`
/// would ask for terabytes).
fn py_method(
    state: &mut minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, minijinja::Error> {
    if let Some(s) = value.as_str() {
        charge_reading(state, s)?;
    } else if value.kind() == minijinja::value::ValueKind::Seq {
        state.consume_fuel(value.len().unwrap_or(0) as u64)?;
        // `count` and `index` compare items whole.
        prepay(state, value)?;
    }
    // `'{}'.format(payload.l * payload.n)` stringifies its arguments (a map's methods only
    // look up keys: their receiver is not walked, a loop may call `payload.get` often).
    for arg in args {
        prepay(state, arg)?;
    }
    if let Some(s) = value.as_str() {
        match method {
            "join" => {
                let (items,): (&minijinja::Value,) = minijinja::value::from_args(args)?;
                let sep = minijinja::Value::from(s);
                let joiner = minijinja::value::StringInput::new(state, &sep)?;
                return capped_join(
                    state,
                    items,
                    Some(joiner),
                    None,
                    minijinja::value::Kwargs::from_iter(std::iter::empty::<(&str, minijinja::Value)>()),
                );
            }
            "format" if widest_format_number(s) > MAX_FORMAT_WIDTH => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("a width or precision in format() over {MAX_FORMAT_WIDTH} {TOO_LARGE} allowed"),
                ));
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// The builtin filters that read their input (and arguments) whole: they serialize it
/// (`tojson`, `pprint`, `string`, and the string filters, which take any value as its text)
/// or compare its items (`sort`, `unique`, `min`, `max`, `dictsort`, `groupby`). minijinja
/// charges them per top-level item at most, or for their result after it is built, so each
/// goes through [`prepaid_builtin`]. Filters that only look at the top level (`length`,
/// `first`, `list`, `reverse`, `batch`…) are charged per item by minijinja already; `map`,
/// `select` and friends call the filters and tests by name, so they get these versions.
const WHOLE_VALUE_FILTERS: &[&str] = &[
    "tojson",
    "pprint",
    "string",
    "escape",
    "e",
    "safe",
    "lower",
    "upper",
    "title",
    "capitalize",
    "trim",
    "replace",
    "split",
    "lines",
    "format",
    "indent",
    "sort",
    "unique",
    "min",
    "max",
    "dictsort",
    "groupby",
];

/// Nodes of a value [`prepay`] walks for one fuel: the walk of a value that was paid for
/// when it was made costs little, but is not free (a loop may walk a large payload often).
const NODES_PER_FUEL: u64 = 2;

/// Pays, before a value is read whole, for the items minijinja made without charging: a
/// sequence repeated by `*` (`payload.l * payload.n`) is lazy, so making 90 million items
/// costs nothing, and a filter that serializes or compares them then ran for 10 s and took
/// 600 MB before its result was charged. Here every item of a sequence that is not a
/// materialized list or tuple costs one fuel, paid (by its length, when known) before any is
/// read, so such a value runs out of fuel at once; the nodes of paid-for lists and maps cost
/// a fraction (see [`NODES_PER_FUEL`]). The walk is bounded by the fuel it pays.
///
/// Not covered: the `~` operator formats its operands without a hook (minijinja 3.1 has
/// none for operators), so `(payload.l * payload.n) ~ ''` still builds the text before it is
/// charged (up to minijinja's own cap of 100 million items: about 8 s and 0.5 GB).
fn prepay(state: &minijinja::State, value: &minijinja::Value) -> Result<(), minijinja::Error> {
    use minijinja::value::{ObjectRepr, Tuple};
    use minijinja::Value;
    let mut stack = vec![value.clone()];
    let mut nodes = 0u64;
    while let Some(v) = stack.pop() {
        nodes += 1;
        if nodes.is_multiple_of(NODES_PER_FUEL) {
            state.consume_fuel(1)?;
        }
        let Some(object) = v.as_object() else { continue };
        match object.repr() {
            ObjectRepr::Map => {
                // A map's entries were made one by one (maps are never repeated lazily).
                if let Some(pairs) = object.try_iter_pairs() {
                    for (key, item) in pairs {
                        stack.push(key);
                        stack.push(item);
                    }
                }
            }
            ObjectRepr::Seq | ObjectRepr::Iterable => {
                let made =
                    v.downcast_object_ref::<Vec<Value>>().is_some() || v.downcast_object_ref::<Tuple>().is_some();
                let len = v.len();
                if !made {
                    state.consume_fuel(len.unwrap_or(0) as u64)?;
                }
                let Ok(items) = v.try_iter() else { continue };
                for item in items {
                    if !made && len.is_none() {
                        state.consume_fuel(1)?;
                    }
                    stack.push(item);
                }
            }
            // Plain objects (and kinds of a later minijinja) are not walked.
            _ => {}
        }
    }
    Ok(())
}

/// The builtin filter `name`, its arguments paid for first (see [`prepay`]). It runs as
/// minijinja ships it, in a fresh environment with the fuel this render has left (so its own
/// checks before an allocation hold), and what it spends is charged to this render. An
/// override cannot call the builtin it replaces in its own environment: the name now finds
/// the override.
fn prepaid_builtin(
    state: &minijinja::State,
    name: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, minijinja::Error> {
    for arg in args {
        prepay(state, arg)?;
    }
    let indent = if name == "tojson" { tojson_indent(args) } else { None };
    if let Some(n) = indent.filter(|n| *n > MAX_TOJSON_INDENT as f64) {
        // minijinja builds the indented text whole before any of it is charged: an indent
        // of 100 million made gigabytes of spaces from a ten-item payload. (Worded as
        // minijinja's own limits, so a save refuses a template that always exceeds it.)
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("tojson's indent of {n} is too large (at most {MAX_TOJSON_INDENT})"),
        ));
    }
    let mut env = Environment::new();
    env.set_undefined_behavior(state.undefined_behavior());
    env.set_fuel(state.fuel_levels().map(|(_, remaining)| remaining));
    let mut builtin = env.empty_state();
    let result = builtin.apply_filter(name, args);
    if let Some((spent, _)) = builtin.fuel_levels() {
        state.consume_fuel(spent)?;
    }
    result
}

/// The widest indent `tojson` may be asked for.
const MAX_TOJSON_INDENT: u64 = 16;

/// `tojson`'s indent: its second positional argument or its `indent` keyword argument (one
/// that is no number is left to minijinja to refuse).
fn tojson_indent(args: &[minijinja::Value]) -> Option<f64> {
    args.iter().skip(1).find_map(|a| {
        let n = if a.is_number() { a.clone() } else { a.get_attr("indent").ok()? };
        f64::try_from(n).ok()
    })
}

/// Pays fuel for reading `s` whole (one per 64 bytes, the rate minijinja charges for data).
fn charge_reading(state: &minijinja::State, s: &str) -> Result<(), minijinja::Error> {
    state.consume_fuel((s.len() / 64) as u64)
}

/// minijinja-contrib's `wordcount`, paying for the string it reads (see [`py_method`]): one
/// fuel per 4 bytes, since it looks up every character's Unicode category (about as slow as
/// an instruction of the engine; 64 bytes for one let a loop run for seconds).
fn wordcount(state: &minijinja::State, value: &minijinja::Value) -> Result<minijinja::Value, minijinja::Error> {
    prepay(state, value)?;
    state.consume_fuel((value.as_str().unwrap_or_default().len() / 4) as u64)?;
    minijinja_contrib::filters::wordcount(value)
}

/// The widest field `str.format` may be asked for (far more than any message needs).
const MAX_FORMAT_WIDTH: u64 = 10_000;

/// The largest number written inside a `{…}` of a `str.format` string (its widths and
/// precisions, and harmlessly its field indexes): overestimates are refused, never missed.
fn widest_format_number(s: &str) -> u64 {
    let mut widest = 0u64;
    let mut current: Option<u64> = None;
    let mut depth = 0usize;
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        match c.to_digit(10) {
            Some(d) if depth > 0 => {
                let n = current.unwrap_or(0).saturating_mul(10).saturating_add(u64::from(d));
                current = Some(n);
                widest = widest.max(n);
            }
            _ => current = None,
        }
    }
    widest
}

/// Jinja2's `truncate(s, length=255, killwords=False, end='...', leeway=None)`, by position
/// or keyword: minijinja-contrib's filter takes keywords only, and Jinja2 templates mostly
/// write `truncate(20)`. Its result is never longer than its input; reading that is paid
/// for (see [`py_method`]).
fn truncate(
    state: &mut minijinja::State,
    value: &minijinja::Value,
    args: minijinja::value::Rest<minijinja::value::ValueOrKwargs>,
) -> Result<minijinja::Value, minijinja::Error> {
    const NAMES: [&str; 4] = ["length", "killwords", "end", "leeway"];
    let mut positional = args.0.into_iter().map(minijinja::value::ValueOrKwargs::into_value).collect::<Vec<_>>();
    let kwargs = match positional.last() {
        Some(last) if last.is_kwargs() => positional.pop().map(minijinja::value::Kwargs::try_from).transpose()?,
        _ => None,
    };
    if positional.len() > NAMES.len() {
        return Err(minijinja::Error::from(minijinja::ErrorKind::TooManyArguments));
    }
    prepay(state, value)?;
    charge_reading(state, value.as_str().unwrap_or_default())?;
    let mut merged: Vec<(&str, minijinja::Value)> = NAMES.iter().copied().zip(positional.iter().cloned()).collect();
    if let Some(kwargs) = &kwargs {
        for name in kwargs.args() {
            if merged.iter().any(|(n, _)| *n == name) {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::TooManyArguments,
                    format!("truncate: {name} given by position and by keyword"),
                ));
            }
            merged.push((name, kwargs.get::<minijinja::Value>(name)?));
        }
    }
    minijinja_contrib::filters::truncate(state, value, merged.into_iter().collect())
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

/// One of minijinja's own size limits (`range(100000000)`, a sequence repeated past 100 million):
/// judged by the probes like an operation on defined values (the sample's empty payload
/// makes no value large, so the size came from the template, or from data every probe has).
fn over_a_limit(e: &minijinja::Error) -> bool {
    e.kind() == minijinja::ErrorKind::InvalidOperation
        && e.detail().is_some_and(|d| d.contains("too many elements") || d.contains("is too large"))
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
    // Items are formatted whole: a lazily repeated list in one is paid for first.
    prepay(state, value)?;
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
fn pretty_json(state: &minijinja::State, value: minijinja::Value) -> Result<String, minijinja::Error> {
    prepay(state, &value)?;
    let mut out = Bounded(Vec::new());
    match serde_json::to_writer_pretty(&mut out, &value) {
        Ok(()) => out.into_string(),
        Err(e) if e.is_io() => Err(too_large("the output of pretty_json")),
        Err(e) => Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())),
    }
}

/// `{{ value | mrkdwn }}`: text put into a Slack message as itself. Slack reads `<…>` as
/// markup (`<!channel>` notifies everyone, `<https://a|b>` is a link showing `b`) and asks
/// for `&`, `<` and `>` to be sent as `&amp;`, `&lt;` and `&gt;`, which it shows as the
/// characters. Any value, as `{{ value }}` would write it: a missing one is empty (a payload
/// without the field must not fail its delivery), a number its digits.
fn mrkdwn(state: &minijinja::State, value: minijinja::Value) -> Result<String, minijinja::Error> {
    prepay(state, &value)?;
    if value.is_undefined() {
        return Ok(String::new());
    }
    let text = match value.as_str() {
        Some(s) => std::borrow::Cow::Borrowed(s),
        None => std::borrow::Cow::Owned(value.to_string()),
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    Ok(out)
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

    pub(super) fn event() -> EventRecord {
        EventRecord {
            event_id: crate::ids::EventId::parse("evt_1").unwrap(),
            event_type: "object.created".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            payload: serde_json::json!({"object_id": "obj_9", "n": 3}),
            cache_scopes: vec![],
            stored: false,
            stored_size: Default::default(),
        }
    }

    #[test]
    fn the_webhook_name_is_in_scope() {
        let t = Template::validate("{{ webhook_name }}: {{ event_type }}").unwrap();
        assert_eq!(t.render(&event(), "media-hook").unwrap(), "media-hook: object.created");
        assert_eq!(t.render_sample().unwrap(), format!("{SAMPLE_WEBHOOK_NAME}: object.created"));
    }

    #[test]
    fn renders_event_fields() {
        let t = Template::compile(
            r#"{"t": "{{ event_type }}", "id": {{ payload.object_id | tojson }}, "missing": "{{ payload.a.b }}"}"#,
        )
        .unwrap();
        let out = t.render(&event(), "media-hook").unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["t"], "object.created");
        assert_eq!(v["id"], "obj_9");
        assert_eq!(v["missing"], "");
    }

    #[test]
    fn pretty_json_is_for_people() {
        let mut e = event();
        e.payload = serde_json::json!({"url": "https://e.test/a?b=1&c=2", "html": "<b>'x'</b>"});
        let out = Template::compile("{{ payload | pretty_json }}").unwrap().render(&e, "media-hook").unwrap();
        assert!(out.contains(r#""url": "https://e.test/a?b=1&c=2""#) && out.contains("<b>'x'</b>"), "{out}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap(), e.payload);
        let escaped = Template::compile("{{ payload | tojson }}").unwrap().render(&e, "media-hook").unwrap();
        assert!(escaped.contains("\\u0026"), "tojson escapes for HTML: {escaped}");
    }

    #[test]
    fn mrkdwn_shows_any_value_as_text() {
        let mut e = event();
        e.payload = serde_json::json!({"t": "<!here> & <https://a|b>", "n": 7, "o": {"k": "<x>"}});
        let render = |src: &str| Template::compile(src).unwrap().render(&e, "w").unwrap();
        assert_eq!(render("{{ payload.t | mrkdwn }}"), "&lt;!here&gt; &amp; &lt;https://a|b&gt;");
        assert_eq!(render("{{ payload.n | mrkdwn }}"), "7");
        assert_eq!(
            render(r#"{{ payload.o | mrkdwn }}"#),
            render("{{ payload.o }}").replace('<', "&lt;").replace('>', "&gt;")
        );
        // A missing value is empty, as `{{ payload.missing }}` is: the delivery goes on.
        assert_eq!(render("[{{ payload.missing | mrkdwn }}{{ payload.missing.x | mrkdwn }}]"), "[]");
        // In a JSON template, after `tojson`: Slack decodes `\u003c` back into `<`.
        assert_eq!(
            render(r#"{"text": {{ payload.t | mrkdwn | tojson }}}"#),
            r#"{"text": "\u0026lt;!here\u0026gt; \u0026amp; \u0026lt;https://a|b\u0026gt;"}"#
        );
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

    /// An error that the sample's empty payload does not explain fails every event: refused
    /// when saved. One a missing or differently typed field explains is let through.
    #[test]
    fn errors_no_event_could_avoid_are_refused_when_saved() {
        for source in [
            r#"{{ "%s-%s" % (event_type, event_id) }}"#,
            r#"{{ "%d" % "x" }}"#,
            r#"{{ 1 + "a" }}"#,
            r#"{{ event_type - 1 }}"#,
            r#"{{ event_type.nosuch() }}"#,
            r#"{{ payload.nosuch() }}"#,
            r#"{% if payload %}{% else %}{{ "%s" % (1, 2) }}{% endif %}"#,
            r#"{{ "%s" % ((payload.a | default('')), 1) }}"#,
            // minijinja's own limits, on sizes the template sets.
            "{{ range(100000000) | list | length }}",
        ] {
            assert!(Template::validate(source).is_err(), "{source}");
            // A stored one still loads: its events fail one by one, as they did.
            assert!(Template::compile(source).is_ok(), "{source}");
        }
        for source in [
            "{{ payload.n * 2 }}",
            "{{ payload.n + 'a' }}",
            "{{ '%d' % payload.x }}",
            "{{ payload.name.upper() }}",
            "{{ payload.items[0].name.upper() }}",
            "{{ payload['items'][0].price * 2 }}",
            "{{ payload.get('x').upper() }}",
            "{{ range(payload.n) | list }}",
            "{{ range(payload.n * 1000000) | list | length }}",
            // A fallback's type is not the type of the value an event would have.
            "{{ (payload.n | default('')) - 1 }}",
            "{{ (payload.tags | default('')).items() | list }}",
            "{{ 10 / (payload | length) }}",
        ] {
            assert!(Template::validate(source).is_ok(), "{source}: {:?}", Template::validate(source).err());
        }
    }

    /// The messages [`on_defined_values`] reads: a minijinja upgrade that changes them fails
    /// here rather than quietly letting broken templates through.
    #[test]
    fn minijinja_names_the_operands_kinds_in_its_messages() {
        let sample = Template::sample();
        let detail = |source: &str| {
            let mut env = Environment::new();
            env.set_undefined_behavior(UndefinedBehavior::Chainable);
            env.set_unknown_method_callback(py_method);
            env.add_template_owned(NAME, source.to_string()).unwrap();
            let e =
                env.get_template(NAME).unwrap().render(Template::context(&sample, SAMPLE_WEBHOOK_NAME)).unwrap_err();
            (e.kind(), e.detail().unwrap_or_default().to_string(), on_defined_values(&e))
        };
        use minijinja::ErrorKind as K;
        let (kind, text, defined) = detail(r#"{{ "%s" % (event_type, event_id) }}"#);
        assert_eq!(
            (kind, text.as_str(), defined),
            (K::InvalidOperation, "tried to use % operator on unsupported types string and sequence", true)
        );
        let (kind, text, defined) = detail("{{ payload.n * 2 }}");
        assert_eq!(kind, K::InvalidOperation);
        assert!(text.starts_with("tried to use * operator on unsupported types undefined and number"), "{text}");
        assert!(!defined);
        let (_, text, defined) = detail("{{ none + 1 }}");
        assert_eq!((text.as_str(), defined), ("tried to use + operator on unsupported types none and number", false));
        let (kind, text, defined) = detail("{{ event_type.nosuch() }}");
        assert_eq!((kind, text.as_str(), defined), (K::UnknownMethod, "string has no method named nosuch", true));
        let (kind, text, defined) = detail("{{ payload.x.upper() }}");
        assert_eq!(kind, K::UnknownMethod);
        assert!(text.starts_with("undefined has no method named upper"), "{text}");
        assert!(!defined);
        // Other invalid operations are not judged by their message.
        let (kind, _, defined) = detail("{{ 1 / 0 }}");
        assert_eq!((kind, defined), (K::InvalidOperation, false));
    }

    /// What Python's Jinja2 templates commonly use: Python methods and its filters.
    #[test]
    fn jinja2_methods_and_filters_work() {
        let mut e = event();
        e.payload = serde_json::json!({"a": 1, "name": "Ada Lovelace", "text": "one two three four"});
        let render = |source: &str| Template::compile(source).and_then(|t| t.render(&e, "media-hook"));
        let ok = |source: &str, want: &str| assert_eq!(render(source).as_deref(), Ok(want), "{source}");
        ok(
            "{% for k, v in payload.items() %}{{ k }}={{ v }};{% endfor %}",
            "a=1;name=Ada Lovelace;text=one two three four;",
        );
        ok("{{ payload.get('a', 'd') }} {{ payload.get('zz', 'd') }} {{ payload.get('zz') is none }}", "1 d True");
        ok("{{ payload.keys() | list | length }} {{ payload.values() | list | first }}", "3 1");
        ok(
            "{{ event_type.upper() }} {{ event_type.replace('.', '_') }} {{ event_type.startswith('object') }}",
            "OBJECT.CREATED object_created True",
        );
        ok(
            "{{ event_type.split('.') | last }} {{ payload.name.lower() }} {{ '-'.join(event_type.split('.')) }}",
            "created ada lovelace object-created",
        );
        ok("{{ payload.text | truncate(12) }}|{{ payload.text | truncate(9, true, '~', 0) }}", "one two...|one two ~");
        ok(
            "{{ payload.text | truncate(length=12) }}|{{ payload.text | truncate(9, killwords=true, leeway=0) }}",
            "one two...|one tw...",
        );
        ok("{{ payload.text | wordcount }} {{ '{}-{}'.format(event_type, payload.a) }}", "4 object.created-1");
        assert!(render("{{ payload.text | truncate(9, length=3) }}").unwrap_err().contains("by keyword"));
        assert!(render("{{ payload.text | truncate(1, true, '', 0, 5) }}").is_err());
        assert!(render("{{ event_type.nosuch() }}").is_err());
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
            stored_size: Default::default(),
        }
    }

    #[test]
    fn a_large_payload_renders_in_full() {
        let event = big_event(1024);
        let expected = serde_json::to_string(&event.payload).unwrap();
        let t = Template::compile("{\"data\": {{ payload | tojson }}}").unwrap();
        let out = t.render(&event, "media-hook").unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["data"], event.payload);
        assert!(out.len() > expected.len());
        let indented =
            Template::compile("{{ payload | tojson(indent=2) }}").unwrap().render(&event, "media-hook").unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&indented).unwrap(), event.payload);
        let pretty = Template::compile("{{ payload | pretty_json }}").unwrap().render(&event, "media-hook").unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&pretty).unwrap(), event.payload);
        // A loop over every item of a 1 MiB payload.
        let listed = Template::compile("{% for i in payload['items'] %}{{ i.k }}={{ i.n }}\n{% endfor %}")
            .unwrap()
            .render(&event, "media-hook")
            .unwrap();
        assert_eq!(listed.lines().count(), event.payload["items"].as_array().unwrap().len());
        // A loop over ~1 MiB of small numbers.
        let mut small = event.clone();
        small.payload = serde_json::json!({"v": (0..200_000).collect::<Vec<u32>>()});
        let out = Template::compile("{% for x in payload.v %}{{ x }},{% endfor %}")
            .unwrap()
            .render(&small, "media-hook")
            .unwrap();
        assert_eq!(out.matches(',').count(), 200_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_render_inside_a_runtime_works_on_either_flavor() {
        let event = big_event(512);
        let t = Template::compile("{{ payload | tojson }}").unwrap();
        let multi = t.render(&event, "media-hook").unwrap();
        let single = tokio::task::spawn_blocking(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async move { t.render(&event, "media-hook").unwrap() })
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
            "{{ 'y'.join([('x' * 1000000)] * 1000) | length }}",
            "{{ payload.sep.join([payload.s] * payload.n) | length }}",
            "{{ '{:>99999999999}'.format(1) }}",
            "{{ '{:.99999999999f}'.format(1.5) }}",
            "{{ ('x' * 1000000).replace('x', 'yyyyyyyyyy') | length }}",
        ] {
            let started = Work::start();
            // Refused when saved, or when an event renders it.
            let err = match Template::compile(source) {
                Err(err) => err,
                Ok(t) => t.render(&e, "media-hook").unwrap_err(),
            };
            assert!(
                err.contains("larger than") || err.contains("fuel") || err.contains("too large"),
                "{source}: {err}"
            );
            let spent = started.spent();
            assert!(spent < std::time::Duration::from_secs(5), "{source}: {spent:?}");
        }
        // A width names its own limit, not the output's.
        let wide = Template::validate("{{ '{:>10001}'.format(1) }}").unwrap_err();
        assert!(wide.contains("over 10000"), "{wide}");
        assert!(Template::validate("{{ '{:>10000}'.format(1) }}").is_ok());
        // A template saved before the size limit still loads; a new one is held to it.
        let big = format!("{{{{ event_type }}}}{}", " ".repeat(MAX_SOURCE_BYTES));
        assert!(Template::compile(&big).is_ok());
        assert!(Template::validate(&big).unwrap_err().contains("KiB"));
        // An empty template is refused when saved.
        for blank in ["", " ", "\n\t "] {
            assert_eq!(Template::validate(blank).unwrap_err(), EMPTY_SOURCE);
        }
        // The join still joins.
        let t = Template::compile("{{ ['a', 'b'] | join('-') }} {{ ['c', 'd'] | join(d='+') }} {{ 'xy' | join(',') }}");
        assert_eq!(t.unwrap().render(&e, "media-hook").unwrap(), "a-b c+d x,y");
    }

    /// The error of rendering `source` for `e`, which must come within `limit` of this
    /// thread's CPU time.
    fn render_error_within(source: &str, e: &EventRecord, limit: std::time::Duration) -> String {
        let started = Work::start();
        let err = Template::compile(source).unwrap().render(e, "media-hook").unwrap_err();
        let spent = started.spent();
        assert!(spent < limit, "{source}: {spent:?}");
        err
    }

    /// Filters and methods that read a string without making one pay for reading it: a loop
    /// that counts the words of a large payload over and over runs out of fuel.
    #[test]
    fn reading_a_large_string_again_and_again_is_paid_for() {
        let mut e = big_event(1);
        e.payload = serde_json::json!({"s": "word ".repeat(40_000), "l": vec![1; 40_000], "n": 10_000});
        for source in [
            "{% for i in range(payload.n) %}{% for j in range(payload.n) %}{{ payload.s | wordcount }}{% endfor %}{% endfor %}",
            "{% for i in range(payload.n) %}{% for j in range(payload.n) %}{{ payload.s | truncate(1000000) | length > 0 }}{% endfor %}{% endfor %}",
            "{% for i in range(payload.n) %}{% for j in range(payload.n) %}{{ payload.s.count('w') }}{% endfor %}{% endfor %}",
            "{% for i in range(payload.n) %}{% for j in range(payload.n) %}{{ payload.l.count(2) }}{% endfor %}{% endfor %}",
        ] {
            let err = render_error_within(source, &e, std::time::Duration::from_secs(5));
            assert!(err.contains("fuel"), "{source}: {err}");
        }
    }

    /// `list * n` makes a lazy sequence without paying for its items; every filter, method
    /// and output that reads it whole pays for them first, so 90 million items run out of
    /// fuel at once (before: `tojson` ran 9.3 s and took 259 MB, `pprint` 15 s and 944 MB).
    #[test]
    fn a_lazily_repeated_list_is_paid_for_before_it_is_read() {
        let mut e = big_event(1);
        e.payload = serde_json::json!({"l": [1, 2, 3], "n": 30_000_000, "s": "abc"});
        for source in [
            "{{ (payload.l * payload.n) | tojson | length }}",
            "{{ (payload.l * payload.n) | tojson(indent=2) | length }}",
            "{{ [payload.l * payload.n] | tojson | length }}",
            "{{ {'a': payload.l * payload.n} | tojson | length }}",
            "{{ (payload.l * payload.n) | unique | length }}",
            "{{ [payload.l * payload.n] | unique | length }}",
            "{{ (payload.l * payload.n) | list | length }}",
            "{{ [payload.l * payload.n, payload.l * payload.n] | sort | length }}",
            "{{ {'a': payload.l * payload.n, 'b': payload.l * payload.n} | dictsort(by='value') | length }}",
            "{{ [payload.l * payload.n] | min | length }}",
            "{{ (payload.l * payload.n) | string | length }}",
            "{{ (payload.l * payload.n) | pprint | length }}",
            "{{ [payload.l * payload.n] | pprint | length }}",
            "{{ (payload.l * payload.n) | pretty_json | length }}",
            "{{ (payload.l * payload.n) | lower | length }}",
            "{{ (payload.l * payload.n) | escape | length }}",
            "{{ (payload.l * payload.n) | indent(2) | length }}",
            "{{ [payload.l * payload.n] | map('string') | list | length }}",
            "{{ [payload.l * payload.n] | join | length }}",
            "{{ (payload.l * payload.n) | wordcount }}",
            "{{ '{}'.format(payload.l * payload.n) | length }}",
            "{{ [payload.l * payload.n].count(payload.l) }}",
            "{{ payload.l * payload.n }}",
            "{{ (payload.s * payload.n) | length }}",
        ] {
            let err = render_error_within(source, &e, std::time::Duration::from_secs(1));
            assert!(err.contains("fuel") || err.contains("too large"), "{source}: {err}");
        }
        // A small repetition, keyword arguments and the builtins' own answers are unchanged.
        e.payload = serde_json::json!({"l": [3, 1, 2], "n": 2, "m": {"b": 1, "a": 2}});
        let t = Template::compile(
            "{{ (payload.l * payload.n) | tojson }} {{ (payload.l * payload.n) | unique | sort(reverse=true) }} \
             {{ payload.m | dictsort(by='value') }} {{ payload.m | tojson(indent=2) | length }} \
             {{ 'a b' | replace('a', 'c') | upper }} {{ 'x\ny' | indent(2, true) | length }} {{ payload.l * 2 }}",
        )
        .unwrap();
        assert_eq!(
            t.render(&e, "media-hook").unwrap(),
            "[3, 1, 2, 3, 1, 2] [3, 2, 1] [('b', 1), ('a', 2)] 22 C B 7 [3, 1, 2, 3, 1, 2]"
        );
        assert!(Template::compile("{{ payload | tojson(nope=2) }}").unwrap_err().contains("nope"));
    }

    #[test]
    fn a_runaway_template_still_stops_on_a_large_payload() {
        let t = Template::compile(
            "{% for i in payload['items'] %}{% for j in payload['items'] %}{{ j.k }}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let err = t.render(&big_event(64), "media-hook").unwrap_err();
        assert!(err.contains("fuel"), "{err}");
    }

    #[test]
    fn tojson_indent_is_bounded() {
        let e = tests::event();
        let out = Template::validate("{{ payload | tojson(indent=2) }}").unwrap().render(&e, "media-hook").unwrap();
        assert!(out.contains("\n  \"n\": 3"), "{out}");
        assert!(Template::validate("{{ payload | tojson(2) }}").is_ok());
        for source in [
            "{{ payload | tojson(indent=100000000) }}",
            "{{ payload | tojson(50000000) }}",
            "{{ [[1,2],[3,4]] | tojson(indent=50000000) }}",
        ] {
            let err = Template::validate(source).err().unwrap_or_else(|| panic!("{source} was accepted"));
            assert!(err.contains("is too large (at most 16)"), "{source}: {err}");
        }
        // At delivery: an indent from the payload.
        let mut e = tests::event();
        e.payload = serde_json::json!({"i": 100000000, "a": [1, 2, 3]});
        let t = Template::compile("{{ payload.a | tojson(indent=payload.i) }}").unwrap();
        assert!(t.render(&e, "media-hook").unwrap_err().contains("indent of 100000000 is too large"));
    }
}
