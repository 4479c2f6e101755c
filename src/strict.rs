//! API bodies read by name only: a struct is filled from a JSON object, never from an array.
//!
//! serde's derived structs also take a sequence, field by field in declaration order, and a
//! `serde_json::Value` offers one wherever the JSON holds an array. So `"batching":
//! ["count", 5, 7]` was saved as mode `count`, a 5 s window and batches of 7, and a
//! connection's `provider_config` could be a list of its credentials by position: settings
//! no one named, taken silently. [`Strict`] wraps a value so that, at any depth, an array
//! where a struct is expected is the 422 "must be an object, not a list" (see
//! `error::deserialize_at`), while everything else reads as `serde_json::Value` reads it (an
//! enum given neither a string nor an object is refused as before, in words that name its
//! variants rather than "expected string or map").
//!
//! One gap is serde's, not this module's: a value serde buffers before it knows its type
//! (an untagged enum, a `flatten`ed field, an adjacently tagged enum whose content comes
//! before its tag) is read by serde's own buffer, which still takes an array as a struct.
//! The API's bodies hold no struct in the first two (a Mux connection's untagged signing
//! secrets are strings), and a channel's `channel` tag sorts before its `configs` in
//! serde_json's maps, which keep keys sorted.

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde_json::{Error, Value};

/// A JSON value to deserialize with structs taken from objects only.
pub struct Strict(pub Value);

/// `Deserializer` methods that hand the value to `Value`'s own, unwrapped: what they read
/// holds no struct.
macro_rules! forward_to_value {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.0.$method(visitor)
        }
    )*};
}

impl<'de> Deserializer<'de> for Strict {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visit_seq(items, visitor),
            Value::Object(map) => visit_map(map, visitor),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Strict(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visit_seq(items, visitor),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visit_map(map, visitor),
            other => other.deserialize_map(visitor),
        }
    }

    /// The point of the type: an object, or the error serde would give any other non-map.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(map) => visit_map(map, visitor),
            Value::Array(_) => Err(de::Error::invalid_type(Unexpected::Seq, &visitor)),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::String(variant) => visitor.visit_enum(Enum { variant, value: None }),
            Value::Object(map) => {
                let mut entries = map.into_iter();
                match (entries.next(), entries.next()) {
                    (Some((variant, value)), None) => visitor.visit_enum(Enum { variant, value: Some(value) }),
                    // serde_json's own words.
                    _ => Err(de::Error::invalid_value(Unexpected::Map, &"map with a single key")),
                }
            }
            // Value would say "expected string or map", which names neither the choices nor
            // anything an API user writes: name the variants instead.
            other => Err(de::Error::invalid_type(unexpected(&other), &OneOf(variants))),
        }
    }

    // Scalars read exactly as `Value` reads them (its number conversions, its errors).
    forward_to_value! {
        deserialize_bool
        deserialize_i8
        deserialize_i16
        deserialize_i32
        deserialize_i64
        deserialize_i128
        deserialize_u8
        deserialize_u16
        deserialize_u32
        deserialize_u64
        deserialize_u128
        deserialize_f32
        deserialize_f64
        deserialize_char
        deserialize_str
        deserialize_string
        deserialize_bytes
        deserialize_byte_buf
        deserialize_unit
        deserialize_identifier
        deserialize_ignored_any
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, Error> {
        self.0.deserialize_unit_struct(name, v)
    }
}

/// As serde_json does: the visitor must take every element.
fn visit_seq<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, Error> {
    let len = items.len();
    let mut seq = Seq(items.into_iter());
    let out = visitor.visit_seq(&mut seq)?;
    if seq.0.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in array"))
    }
}

fn visit_map<'de, V: Visitor<'de>>(map: serde_json::Map<String, Value>, visitor: V) -> Result<V::Value, Error> {
    let len = map.len();
    let mut access = Map { entries: map.into_iter(), value: None };
    let out = visitor.visit_map(&mut access)?;
    if access.entries.len() == 0 {
        Ok(out)
    } else {
        Err(de::Error::invalid_length(len, &"fewer elements in map"))
    }
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Seq {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.0.next().map(|v| seed.deserialize(Strict(v))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Map {
    entries: serde_json::map::IntoIter,
    /// The value of the key last handed out.
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for Map {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.entries.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(Strict(Value::String(key))).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(Strict(value)),
            None => Err(de::Error::custom("a map's value was asked for before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

/// An externally tagged enum: `"variant"` or `{"variant": content}`.
struct Enum {
    variant: String,
    value: Option<Value>,
}

impl<'de> EnumAccess<'de> for Enum {
    type Error = Error;
    type Variant = Variant;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Variant), Error> {
        let variant = seed.deserialize(Strict(Value::String(self.variant)))?;
        Ok((variant, Variant(self.value)))
    }
}

struct Variant(Option<Value>);

impl<'de> VariantAccess<'de> for Variant {
    type Error = Error;

    fn unit_variant(self) -> Result<(), Error> {
        match self.0 {
            None => Ok(()),
            Some(value) => serde::Deserialize::deserialize(Strict(value)),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        match self.0 {
            Some(value) => seed.deserialize(Strict(value)),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &"newtype variant")),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Array(items)) => visit_seq(items, visitor),
            Some(other) => Err(de::Error::invalid_type(unexpected(&other), &"tuple variant")),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &"tuple variant")),
        }
    }

    fn struct_variant<V: Visitor<'de>>(self, _fields: &'static [&'static str], visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Some(Value::Object(map)) => visit_map(map, visitor),
            Some(other) => Err(de::Error::invalid_type(unexpected(&other), &"struct variant")),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &"struct variant")),
        }
    }
}

/// What an enum takes, in the words of its variants: `one of "a", "b"`.
struct OneOf(&'static [&'static str]);

impl de::Expected for OneOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.0.iter().map(|v| format!("{v:?}")).collect();
        write!(f, "one of {}", names.join(", "))
    }
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (None, Some(i), _) => Unexpected::Signed(i),
            (_, _, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        mode: String,
        #[serde(default)]
        size: Option<u32>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Plain,
        Wrapped(Inner),
        Pair(u8, u8),
        Named { x: u8 },
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        inner: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        by_name: BTreeMap<String, Inner>,
        #[serde(default)]
        kinds: Vec<Kind>,
        #[serde(default)]
        ratio: Option<f64>,
    }

    fn read(v: Value) -> Result<Outer, String> {
        Outer::deserialize(Strict(v)).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_what_value_reads() {
        let v = json!({
            "inner": {"mode": "a", "size": 3},
            "list": [{"mode": "b"}],
            "by_name": {"k": {"mode": "c", "size": null}},
            "kinds": ["plain", {"wrapped": {"mode": "d"}}, {"pair": [1, 2]}, {"named": {"x": 4}}],
            "ratio": 5,
        });
        let strict = read(v.clone()).unwrap();
        assert_eq!(strict, serde_json::from_value::<Outer>(v).unwrap());
        assert_eq!(strict.kinds[3], Kind::Named { x: 4 });
        assert_eq!(strict.ratio, Some(5.0));
        assert_eq!(read(json!({"inner": null})).unwrap().inner, None);
    }

    #[test]
    fn refuses_an_array_for_a_struct_at_any_depth() {
        // Each of these serde alone reads by position.
        for v in [
            json!({"inner": ["a", 3]}),
            json!({"list": [["b"]]}),
            json!({"by_name": {"k": ["c"]}}),
            json!({"kinds": [{"wrapped": ["d"]}]}),
        ] {
            assert!(serde_json::from_value::<Outer>(v.clone()).is_ok(), "serde alone refuses {v}");
            let e = read(v.clone()).unwrap_err();
            assert!(e.starts_with("invalid type: sequence, expected struct Inner"), "{v}: {e}");
        }
        assert!(read(json!([{"mode": "a"}])).unwrap_err().starts_with("invalid type: sequence, expected struct Outer"));
        assert!(read(json!({"kinds": [{"named": [4]}]})).unwrap_err().starts_with("invalid type: sequence"));
    }

    #[test]
    fn other_errors_are_values_own() {
        assert_eq!(
            read(json!({"inner": {"mode": 1}})).unwrap_err(),
            serde_json::from_value::<Outer>(json!({"inner": {"mode": 1}})).unwrap_err().to_string()
        );
        assert!(read(json!({"inner": {"mode": "a", "oops": 1}})).unwrap_err().contains("unknown field `oops`"));
        assert!(read(json!({"kinds": [{"pair": [1, 2, 3]}]})).is_err());
        assert!(read(json!({"kinds": ["wrapped"]})).is_err());
        // An enum given no string nor map names its variants (Value says "string or map").
        assert_eq!(
            read(json!({"kinds": [null]})).unwrap_err(),
            r#"invalid type: null, expected one of "plain", "wrapped", "pair", "named""#
        );
        for many in [json!({"kinds": [{"plain": null, "pair": [1, 2]}]}), json!({"kinds": [{}]})] {
            assert_eq!(read(many.clone()).unwrap_err(), serde_json::from_value::<Outer>(many).unwrap_err().to_string());
        }
    }
}
