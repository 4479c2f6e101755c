//! Dot-paths into JSON documents: `data.tracks.0.duration`.
//!
//! A segment is an object key, or an array index when the value at that point is an array.
//! Keys that contain a dot cannot be addressed; that is the documented limit of the syntax.
//! This module is pure and owns nothing else.

use serde_json::Value;

/// Whether `path` is a usable dot-path: non-empty segments separated by single dots.
pub fn is_valid(path: &str) -> bool {
    !path.is_empty() && path.len() <= 512 && path.split('.').all(|s| !s.is_empty())
}

/// The value at `path` in `doc`, if every segment resolves.
pub fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = doc;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => items.get(index(seg)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// An array index as written in a path: decimal digits, no sign, no leading zero (`items.01`
/// or `items.+1` is no index, rather than the one parsing would make of it).
fn index(seg: &str) -> Option<usize> {
    let canonical = seg.bytes().all(|b| b.is_ascii_digit()) && (seg == "0" || !seg.starts_with('0'));
    canonical.then(|| seg.parse().ok()).flatten()
}

/// A scalar rendered as the string an ID would be (strings as is, numbers as by
/// [`number_key`], booleans in their JSON form). `None` for null, objects, arrays and numbers
/// that cannot be a key: those cannot identify an event.
pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => number_key(n),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What stands where an ID was looked for, when it is none, for messages: `missing`,
/// `null`, `an empty string`, `a blank string`, `an object`, `an array`, `a boolean (true)`
/// (or `a number`, `a string`, for a caller that takes neither). Said rather than one "not
/// a string or a number" for all: the sender sees what it sent, as a type mismatch of
/// `field_mapping` shows it.
pub fn not_a_key(v: Option<&Value>) -> String {
    match v {
        None => "missing".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::String(s)) if s.is_empty() => "an empty string".into(),
        Some(Value::String(s)) if s.trim().is_empty() => "a blank string (white space only)".into(),
        Some(Value::String(_)) => "a string".into(),
        Some(Value::Number(_)) => "a number".into(),
        Some(Value::Bool(b)) => format!("a boolean ({b})"),
        Some(Value::Array(_)) => "an array".into(),
        Some(Value::Object(_)) => "an object".into(),
    }
}

/// What an ID must be, as refusals of one end.
pub const KEY_WANTED: &str = "an ID must be a string (not blank) or a number";

/// A string as an ID: `None` when it is blank (empty, or white space only). A blank value
/// names nothing: every event carrying it would share one key, and all but the first would
/// be dropped as `duplicate`s of it.
pub fn string_key(s: &str) -> Option<&str> {
    (!s.trim().is_empty()).then_some(s)
}

/// A number as an ID: an integer in its decimal form (`7`, and `7.0` too, so both are one
/// key with `"7"`). `None` for a fraction, and for an integer past 64 bits: JSON parsing
/// rounds those to the nearest float, so two different IDs would become one key (and one
/// event would be dropped as a duplicate of the other).
pub fn number_key(n: &serde_json::Number) -> Option<String> {
    if n.is_i64() || n.is_u64() {
        return Some(n.to_string());
    }
    // Below 2^53 a float holds every integer exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < EXACT).map(|f| format!("{}", f as i64))
}

/// Why a number cannot be an ID, for error messages.
pub fn number_key_problem(n: &serde_json::Number) -> &'static str {
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 => {
            "an integer too large to keep exactly (past 64 bits, or written with a fraction or exponent past 2^53, \
             a JSON number is rounded): send it as a string"
        }
        _ => "a number with a fraction, which cannot be an exact key: send it as a string",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_and_array_indexes() {
        let doc = json!({"data": {"id": "a1", "tracks": [{"duration": 1.5}, {"duration": 2}], "n": null}});
        assert_eq!(lookup(&doc, "data.id"), Some(&json!("a1")));
        assert_eq!(lookup(&doc, "data.tracks.1.duration"), Some(&json!(2)));
        assert_eq!(lookup(&doc, "data.tracks.2.duration"), None);
        assert_eq!(lookup(&doc, "data.tracks.x"), None);
        for not_an_index in ["data.tracks.01", "data.tracks.+1", "data.tracks.-0", "data.tracks. 1"] {
            assert_eq!(lookup(&doc, &format!("{not_an_index}.duration")), None, "{not_an_index}");
        }
        assert_eq!(lookup(&doc, "data.tracks.0.duration"), Some(&json!(1.5)));
        assert_eq!(lookup(&doc, "data.id.more"), None);
        assert_eq!(lookup(&doc, "data.n"), Some(&Value::Null));
        assert!(is_valid("a.b.0"));
        assert!(!is_valid("a..b") && !is_valid("") && !is_valid(".a") && !is_valid("a."));
        assert_eq!(scalar_string(&json!(12)), Some("12".into()));
        assert_eq!(scalar_string(&json!({"a": 1})), None);
    }

    #[test]
    fn what_is_no_key_is_said() {
        let said = |v: Option<Value>| not_a_key(v.as_ref());
        assert_eq!(said(None), "missing");
        assert_eq!(said(Some(Value::Null)), "null");
        assert_eq!(said(Some(json!(""))), "an empty string");
        assert_eq!(said(Some(json!(" \t"))), "a blank string (white space only)");
        assert_eq!(said(Some(json!({}))), "an object");
        assert_eq!(said(Some(json!([1]))), "an array");
        assert_eq!(said(Some(json!(true))), "a boolean (true)");
        assert_eq!(said(Some(json!(7))), "a number");
    }

    #[test]
    fn numbers_are_keys_only_when_exact() {
        let key = |text: &str| match serde_json::from_str::<Value>(text).unwrap() {
            Value::Number(n) => number_key(&n),
            _ => unreachable!(),
        };
        assert_eq!(key("7").as_deref(), Some("7"));
        assert_eq!(key("-7").as_deref(), Some("-7"));
        assert_eq!(key("7.0").as_deref(), Some("7"), "7.0 is the key 7");
        assert_eq!(key("18446744073709551615").as_deref(), Some("18446744073709551615"), "u64::MAX is exact");
        // Two different IDs past 64 bits parse to the same float: neither may be a key.
        assert_eq!(key("18446744073709551616"), None);
        assert_eq!(key("12345678901234567890123"), None);
        assert_eq!(key("1.5"), None);
        assert_eq!(key("1e300"), None);
    }
}
