//! Stored JSON put together from parts serialized once.
//!
//! A time_window or count flush turns up to `max_batch_size` buffer entries into objects in
//! one go, inside the bucket's actor, and every request to that bucket waits meanwhile. Most
//! of an object's JSON is its draft (metadata, blobs, source), which was serialized already
//! when the event was accepted, for its buffer entry. So the entry keeps that part
//! (`records::DraftJson`) and the flush puts the object's JSON together around it, instead
//! of walking the draft's values again.
//!
//! The result is byte for byte what serializing the whole record gives (tested in
//! `records.rs`): every part is a JSON object written by the same serializer, and the parts
//! are joined field list to field list, in the record's field order. This module owns only
//! the joining; the records' shapes stay in `records.rs`.

use serde::Serialize;

/// Writes one JSON object from the fields of several, in order.
pub(crate) struct ObjectWriter(Vec<u8>);

impl ObjectWriter {
    pub(crate) fn with_capacity(capacity: usize) -> ObjectWriter {
        ObjectWriter(Vec::with_capacity(capacity))
    }

    /// Appends the fields of `value`, which must serialize as a JSON object (a struct or a
    /// map). `None` if it does not (the caller then serializes the whole record instead).
    pub(crate) fn fields_of<T: Serialize>(&mut self, value: &T) -> Option<()> {
        let at = self.0.len();
        serde_json::to_writer(&mut self.0, value).ok()?;
        self.took(at)
    }

    /// [`ObjectWriter::fields_of`] a JSON object already serialized.
    pub(crate) fn fields_of_json(&mut self, object: &[u8]) -> Option<()> {
        let at = self.0.len();
        self.0.extend_from_slice(object);
        self.took(at)
    }

    /// Appends one field, named `name` (a plain identifier: written as is), with `json` (a
    /// serialized JSON value) as its value.
    pub(crate) fn field_json(&mut self, name: &str, json: &[u8]) {
        self.0.push(if self.0.is_empty() { b'{' } else { b',' });
        self.0.push(b'"');
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
        self.0.extend_from_slice(json);
    }

    /// Turns the object appended at `at` (`{…}`) into fields of the one being written: its
    /// closing brace goes, and its opening one becomes a comma after earlier fields.
    fn took(&mut self, at: usize) -> Option<()> {
        let ok = self.0.len() >= at + 2 && self.0[at] == b'{' && self.0.last() == Some(&b'}');
        if !ok {
            self.0.truncate(at);
            return None;
        }
        self.0.pop();
        if self.0.len() == at + 1 {
            self.0.truncate(at); // `{}`: no fields
        } else if at > 0 {
            self.0[at] = b',';
        }
        Some(())
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        if self.0.is_empty() {
            self.0.push(b'{');
        }
        self.0.push(b'}');
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn joined(parts: &[serde_json::Value]) -> Option<String> {
        let mut w = ObjectWriter::with_capacity(64);
        for p in parts {
            w.fields_of(p)?;
        }
        Some(String::from_utf8(w.finish()).unwrap())
    }

    #[test]
    fn objects_are_joined_field_list_to_field_list_and_empty_ones_add_nothing() {
        assert_eq!(
            joined(&[json!({"a": 1}), json!({}), json!({"b": {"c": [1, "}"]}})]).unwrap(),
            r#"{"a":1,"b":{"c":[1,"}"]}}"#
        );
        assert_eq!(joined(&[json!({}), json!({"b": 2})]).unwrap(), r#"{"b":2}"#);
        assert_eq!(joined(&[json!({}), json!({})]).unwrap(), "{}");
        assert_eq!(joined(&[]).unwrap(), "{}");
    }

    #[test]
    fn a_part_that_is_no_object_is_refused() {
        for bad in [json!("{x}"), json!([1]), json!(null), json!(1)] {
            assert_eq!(joined(&[json!({"a": 1}), bad.clone()]), None, "{bad}");
        }
        let mut w = ObjectWriter::with_capacity(8);
        assert_eq!(w.fields_of_json(b"{"), None, "too short to be an object");
        assert_eq!(w.fields_of_json(b"[1]"), None);
        assert_eq!(w.finish(), b"{}", "nothing of a refused part stays");
    }

    #[test]
    fn a_field_is_written_with_its_value_as_given() {
        let mut w = ObjectWriter::with_capacity(32);
        w.field_json("first", b"[1,2]");
        w.fields_of(&json!({"b": true})).unwrap();
        w.field_json("last", br#"{"x":"y"}"#);
        assert_eq!(String::from_utf8(w.finish()).unwrap(), r#"{"first":[1,2],"b":true,"last":{"x":"y"}}"#);
    }
}
