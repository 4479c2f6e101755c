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
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// A scalar rendered as the string an ID would be (strings as is, numbers and booleans in
/// their JSON form). `None` for null, objects and arrays: those cannot identify an event.
pub fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
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
        assert_eq!(lookup(&doc, "data.id.more"), None);
        assert_eq!(lookup(&doc, "data.n"), Some(&Value::Null));
        assert!(is_valid("a.b.0"));
        assert!(!is_valid("a..b") && !is_valid("") && !is_valid(".a") && !is_valid("a."));
        assert_eq!(scalar_string(&json!(12)), Some("12".into()));
        assert_eq!(scalar_string(&json!({"a": 1})), None);
    }
}
