//! Buckets and their schemas.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::adapter::spec::SourceAdapter;
use crate::error::ApiError;
use crate::ids::BucketId;

/// Property types a bucket schema may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropertyType {
    String,
    Int,
    Float,
    Bool,
    Json,
    Video,
    Image,
    Audio,
    Text,
}

impl PropertyType {
    /// Blob-like types hold a file reference (URL) rather than a scalar.
    pub fn is_blob(&self) -> bool {
        matches!(self, PropertyType::Video | PropertyType::Image | PropertyType::Audio | PropertyType::Text)
    }

    /// Whether a JSON value fits this type. An int property takes an integral number
    /// written as a float (`5.0`, as JavaScript and many ORMs send it): see [`Self::fit`].
    pub fn accepts(&self, v: &serde_json::Value) -> bool {
        use serde_json::Value;
        match self {
            PropertyType::String => v.is_string(),
            PropertyType::Int => v.is_i64() || v.is_u64() || integral(v).is_some(),
            PropertyType::Float => v.is_number(),
            PropertyType::Bool => v.is_boolean(),
            PropertyType::Json => true,
            PropertyType::Video | PropertyType::Image | PropertyType::Audio | PropertyType::Text => {
                matches!(v, Value::String(_))
            }
        }
    }

    /// The value as stored when it fits this type: an int written as `5.0` is stored as `5`.
    pub fn fit(&self, v: &serde_json::Value) -> Option<serde_json::Value> {
        match self {
            PropertyType::Int if !(v.is_i64() || v.is_u64()) => integral(v).map(serde_json::Value::from),
            _ => self.accepts(v).then(|| v.clone()),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            PropertyType::String => "string",
            PropertyType::Int => "int",
            PropertyType::Float => "float",
            PropertyType::Bool => "bool",
            PropertyType::Json => "json",
            PropertyType::Video => "video",
            PropertyType::Image => "image",
            PropertyType::Audio => "audio",
            PropertyType::Text => "text",
        }
    }
}

/// A float with no fractional part, below 2^53 in size (`5.0`, not `5.5` nor `1e300`).
/// Beyond 2^53 a float no longer holds every integer, so what JSON parsing made of the
/// sender's number (`9007199254740993.0`, `-9223372036854775809`, `…808.5`) may be another
/// number than the one sent: refused, not stored rounded (as for dedup keys,
/// `path::number_key`).
fn integral(v: &serde_json::Value) -> Option<i64> {
    let f = v.as_f64().filter(|_| v.is_f64())?;
    const EXACT: f64 = 9_007_199_254_740_992.0;
    (f.fract() == 0.0 && f.abs() < EXACT).then_some(f as i64)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertySchema {
    #[serde(rename = "type")]
    pub kind: PropertyType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketSchema {
    #[serde(default)]
    pub properties: BTreeMap<String, PropertySchema>,
}

impl BucketSchema {
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.properties.len() > 256 {
            return Err(ApiError::validation("bucket_schema.properties", "at most 256 properties"));
        }
        for (name, p) in &self.properties {
            if p.description.as_ref().is_some_and(|d| d.chars().count() > 2000) {
                return Err(ApiError::validation(
                    format!("bucket_schema.properties.{name}.description"),
                    "at most 2000 characters",
                ));
            }
            let ok = !name.is_empty()
                && name.len() <= 64
                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(ApiError::validation(
                    format!("bucket_schema.properties.{name}"),
                    "property names are 1–64 characters of letters, digits and _, not starting with a digit",
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&PropertySchema> {
        self.properties.get(name)
    }
}

/// A bucket as stored. Its API form is [`Bucket::view`]: the stored source adapter holds
/// secret material (a digest, sealed credentials) that responses must never carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub bucket_id: BucketId,
    pub bucket_name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub bucket_schema: BucketSchema,
    /// The source adapter (`adapter/spec.rs`); `Shared::connection_users` reads
    /// `/source_adapter/connection_id` from the stored JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_adapter: Option<SourceAdapter>,
    /// `{adapter_type}:{dedup path}` the bucket's dedup set was built under: it outlives the
    /// adapter's removal and is cleared when a new adapter dedups by another path or type.
    /// Not shown. Absent for buckets configured before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_scope: Option<String>,
    /// The generation of the dedup set in force: a change of dedup path (or adapter type)
    /// moves to another, and the dedup marks in objects of another generation do not count
    /// (see `adapter/records.rs`). Not shown.
    #[serde(default, skip_serializing_if = "crate::util::is_zero")]
    pub dedup_generation: u64,
    /// The dedup sets of scopes the bucket moved away from, most recent last (at most
    /// [`KEPT_DEDUP_SETS`]): a PATCH back to one of them makes its generation the one in
    /// force again, so a dedup_key changed by mistake and set back loses nothing. Not shown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dedup_kept: Vec<KeptDedupSet>,
    /// The highest dedup generation made so far: a new scope gets the next one, never one an
    /// object's mark may still name. 0 for buckets from before it was recorded, whose
    /// generations only ever grew (`dedup_generation` is then the highest).
    #[serde(default, skip_serializing_if = "crate::util::is_zero")]
    pub dedup_generation_high: u64,
    /// The Supabase `id_column` whose values the bucket's objects are found by (their
    /// `external_id`), kept through the adapter's removal and changes of type, as long as
    /// objects, buffered events or writebacks remain: a Supabase adapter with another one
    /// is refused meanwhile (see the registry's `supabase_change`). Not shown. Absent for
    /// buckets configured before it was recorded (their current adapter's then counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supabase_id_column: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// How many dedup sets of scopes left behind a bucket keeps (see [`Bucket::dedup_kept`]):
/// beyond it the oldest is forgotten, its deleted objects' keys deleted.
pub const KEPT_DEDUP_SETS: usize = 8;

/// A dedup set the bucket moved away from: its scope (`{adapter_type}:{dedup path}`) and the
/// generation its keys were accepted under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptDedupSet {
    pub scope: String,
    pub generation: u64,
}

/// What [`Bucket::switch_dedup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupSwitch {
    /// The generation left (now kept, under the old scope).
    pub left: u64,
    /// The new scope's set was one kept from before: its keys count again.
    pub restored: bool,
    /// The scope whose kept set was forgotten to make room (past [`KEPT_DEDUP_SETS`]).
    pub forgot: Option<String>,
}

impl Bucket {
    /// Moves the dedup set in force from scope `old` to scope `new` (`{adapter_type}:{dedup
    /// path}`, as [`Bucket::dedup_scope`] holds them): `old`'s generation is kept, and `new`
    /// takes back the generation kept for it, or a new one. The caller records `new` as the
    /// scope, and deletes the pages and keys of the generations this forgets (see
    /// [`Bucket::keeps_dedup_generation`]).
    pub fn switch_dedup(&mut self, old: &str, new: &str) -> DedupSwitch {
        let left = self.dedup_generation;
        let high = self.dedup_kept.iter().map(|k| k.generation).fold(self.dedup_generation_high.max(left), u64::max);
        let kept = self.dedup_kept.iter().position(|k| k.scope == new).map(|at| self.dedup_kept.remove(at));
        self.dedup_kept.retain(|k| k.scope != old);
        self.dedup_kept.push(KeptDedupSet { scope: old.to_string(), generation: left });
        let forgot = (self.dedup_kept.len() > KEPT_DEDUP_SETS).then(|| self.dedup_kept.remove(0).scope);
        self.dedup_generation = kept.as_ref().map_or(high + 1, |k| k.generation);
        self.dedup_generation_high = high.max(self.dedup_generation);
        DedupSwitch { left, restored: kept.is_some(), forgot }
    }

    /// Whether keys accepted under dedup `generation` are still kept: in force, or kept for
    /// a scope the bucket may come back to.
    pub fn keeps_dedup_generation(&self, generation: u64) -> bool {
        generation == self.dedup_generation || self.dedup_kept.iter().any(|k| k.generation == generation)
    }

    /// The API representation: `source_adapter` without secret material (null when none).
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "bucket_id": self.bucket_id,
            "bucket_name": self.bucket_name,
            "namespace": self.namespace,
            "description": self.description,
            "bucket_schema": self.bucket_schema,
            "source_adapter": self.source_adapter.as_ref().map(SourceAdapter::view),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// `POST /v1/buckets` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBucket {
    pub bucket_name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Required (`None`, left out or null, is a 422): it cannot be changed later, so a
    /// bucket created without one, taken as empty, could never hold a property.
    #[serde(default)]
    pub bucket_schema: Option<BucketSchema>,
}

impl CreateBucket {
    pub fn validate(&self) -> Result<(), ApiError> {
        crate::util::check_name("bucket_name", &self.bucket_name, 255)?;
        if self.description.as_ref().is_some_and(|d| d.chars().count() > 2000) {
            return Err(ApiError::validation("description", "at most 2000 characters"));
        }
        match &self.bucket_schema {
            Some(schema) => schema.validate(),
            None => Err(ApiError::validation(
                "bucket_schema",
                "required: the properties this bucket's objects hold ({} for none); it cannot be changed later",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generations are never reused: a scope set back takes its own back, a new scope the
    /// next after the highest ever made, also once the oldest kept set is forgotten.
    #[test]
    fn dedup_sets_switch_back_and_forth() {
        let mut b: Bucket = serde_json::from_value(serde_json::json!({
            "bucket_id": "bkt_0000000000000000000000000a", "bucket_name": "b", "namespace": "n",
            "bucket_schema": {}, "dedup_scope": "generic_webhook:a", "dedup_generation": 3,
            "created_at": "", "updated_at": "",
        }))
        .unwrap();
        let step = |b: &mut Bucket, new: &str| {
            let old = b.dedup_scope.replace(new.to_string()).unwrap();
            let s = b.switch_dedup(&old, new);
            (s.left, s.restored, b.dedup_generation)
        };
        assert_eq!(step(&mut b, "generic_webhook:b"), (3, false, 4));
        assert_eq!(step(&mut b, "generic_webhook:a"), (4, true, 3));
        assert!(b.keeps_dedup_generation(4) && b.keeps_dedup_generation(3) && !b.keeps_dedup_generation(2));
        // A new scope after going back: past the highest (4), not 3 + 1.
        assert_eq!(step(&mut b, "mux:data.id"), (3, false, 5));
        assert_eq!(step(&mut b, "generic_webhook:b"), (5, true, 4));
        assert_eq!(b.dedup_kept.iter().map(|k| k.generation).collect::<Vec<_>>(), [3, 5]);
        // Past KEPT_DEDUP_SETS scopes, the oldest left is forgotten; generations still grow.
        let mut forgot = Vec::new();
        for n in 0..KEPT_DEDUP_SETS {
            let old = b.dedup_scope.replace(format!("generic_webhook:p{n}")).unwrap();
            forgot.extend(b.switch_dedup(&old, &format!("generic_webhook:p{n}")).forgot);
        }
        assert_eq!(forgot, ["generic_webhook:a", "mux:data.id"]);
        assert_eq!(b.dedup_kept.len(), KEPT_DEDUP_SETS);
        assert!(!b.keeps_dedup_generation(3), "generic_webhook:a, the oldest, is forgotten");
        assert_eq!(step(&mut b, "generic_webhook:a"), (5 + KEPT_DEDUP_SETS as u64, false, 6 + KEPT_DEDUP_SETS as u64));
        // Stored and read back as it is.
        let back: Bucket = serde_json::from_value(serde_json::to_value(&b).unwrap()).unwrap();
        assert_eq!((back.dedup_kept, back.dedup_generation_high), (b.dedup_kept, b.dedup_generation_high));
    }

    #[test]
    fn schema_types_and_names() {
        let s: BucketSchema = serde_json::from_value(serde_json::json!({
            "properties": {"video": {"type": "video"}, "duration": {"type": "float"}}
        }))
        .unwrap();
        s.validate().unwrap();
        assert!(
            serde_json::from_value::<BucketSchema>(serde_json::json!({"properties": {"x": {"type": "blob"}}})).is_err()
        );
        let bad: BucketSchema =
            serde_json::from_value(serde_json::json!({"properties": {"1x": {"type": "int"}}})).unwrap();
        assert!(bad.validate().is_err());
        let long = "d".repeat(2001);
        let wordy: BucketSchema =
            serde_json::from_value(serde_json::json!({"properties": {"x": {"type": "int", "description": long}}}))
                .unwrap();
        assert!(wordy.validate().is_err(), "a property description is capped like the bucket's");
        assert!(PropertyType::Int.accepts(&serde_json::json!(3)));
        assert!(!PropertyType::Int.accepts(&serde_json::json!(3.5)));
        assert_eq!(PropertyType::Int.fit(&serde_json::json!(5.0)), Some(serde_json::json!(5)));
        assert_eq!(PropertyType::Int.fit(&serde_json::json!(-2.0)), Some(serde_json::json!(-2)));
        assert_eq!(PropertyType::Int.fit(&serde_json::json!(1e300)), None);
        assert_eq!(PropertyType::Int.fit(&serde_json::json!(9.3e18)), None);
        // Parsed from the sender's text, as an ingest is: what a float cannot hold exactly is
        // refused, never stored as another number.
        for raw in ["-9223372036854775809", "-9223372036854775808.5", "9007199254740993.0", "123456789012345678.0"] {
            let v: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert_eq!(PropertyType::Int.fit(&v), None, "{raw}");
        }
        for (raw, stored) in
            [("-9007199254740991.0", -9_007_199_254_740_991_i64), ("9007199254740991.0", 9_007_199_254_740_991)]
        {
            let v: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert_eq!(PropertyType::Int.fit(&v), Some(serde_json::json!(stored)), "{raw}");
        }
        assert_eq!(PropertyType::Float.fit(&serde_json::json!(5.0)), Some(serde_json::json!(5.0)));
        assert!(PropertyType::Float.accepts(&serde_json::json!(3)));
    }
}
