//! Writeback jobs: what is recorded when a batch completes, and where it is kept.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `wb` | `{bucket_id}/job/{batch_id}/{object_id}` | pending [`Job`] |
//! | `wb` | `{bucket_id}/dead/{batch_id}/{object_id}` | [`Job`] given up (its `last_error` says why) |
//!
//! A job is recorded in the *same* store batch that marks its batch completed, so a batch
//! is never completed without its writebacks (nor the reverse). The key is deterministic
//! (batch + object), so recording twice overwrites instead of duplicating.
//!
//! # The processing result
//! hookline has no processor yet, so the "processing result" that `field_mapping`'s
//! `source_path`s read is the object itself, as the objects API shows it, plus
//! `status: "completed"`: `{object_id, bucket_id, batch_id, metadata, blobs, source,
//! created_at, updated_at, status}` (so `metadata.title` or `source.external_id`). Paths that
//! do not resolve are left out of the written fields. The record ID written to is
//! `external_id_field` read from the object's `metadata` when set, else the object's
//! `source.external_id` (for Supabase the row's primary key). The fields and the ID are
//! resolved when the job is recorded (a snapshot of the result at completion); the target
//! (URL, credentials) is read from the adapter when the job is sent.
//!
//! Pure apart from reading objects for `POST …/submit`; must not perform network I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Trigger, Writeback};
use crate::adapter::path;
use crate::adapter::records::{self, BatchRecord, ObjectRecord};
use crate::adapter::spec::SourceAdapter;
use crate::catalog::{Bucket, ProviderType};
use crate::ids::{BatchId, BucketId, ObjectId};
use crate::store::{Batch, Keyspace, Store, StoreError};

/// The job keyspace (listed in `store::Keyspace`).
pub const KS: Keyspace = Keyspace::WRITEBACKS;

/// One object's writeback, pending or given up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub object_id: ObjectId,
    pub batch_id: BatchId,
    /// The source record to update; `None` when neither `external_id_field` nor the source
    /// had one (the job is given up at its first attempt, with that reason).
    pub external_id: Option<String>,
    /// `target_field` → value, from the processing result.
    pub fields: Map<String, Value>,
    /// Supabase: where the row lives (from the event that created the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    pub created_at_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Job {
    pub fn key(&self, bucket: &BucketId) -> String {
        pending_key(bucket, &self.batch_id, &self.object_id)
    }

    pub fn dead_key(&self, bucket: &BucketId) -> String {
        format!("{}/dead/{}/{}", bucket.as_str(), self.batch_id.as_str(), self.object_id.as_str())
    }
}

fn pending_key(bucket: &BucketId, batch: &BatchId, object: &ObjectId) -> String {
    format!("{}{}/{}", pending_prefix(bucket), batch.as_str(), object.as_str())
}

/// Prefix of a bucket's pending jobs.
pub fn pending_prefix(bucket: &BucketId) -> String {
    format!("{}/job/", bucket.as_str())
}

/// The writeback settings when they fire on batch completion (enabled, `on_batch_complete`,
/// an adapter type that supports writeback). `on_alert` never fires: hookline has no alerts.
pub fn on_batch_complete(adapter: &SourceAdapter) -> Option<&Writeback> {
    adapter
        .writeback
        .as_ref()
        .filter(|w| w.enabled && w.trigger == Trigger::OnBatchComplete && adapter.adapter_type != ProviderType::Mux)
}

/// Supabase: the payload's `table` or `schema` (`field`), remembered on the object's source
/// so a writeback knows where the row lives. `None` for other adapters.
pub fn source_location(kind: ProviderType, payload: &Value, field: &str) -> Option<String> {
    match kind {
        ProviderType::Supabase => payload.get(field).and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The processing result of an object (see the module doc).
pub fn result_document(rec: &ObjectRecord) -> Value {
    let mut doc = serde_json::to_value(rec).unwrap_or_default();
    if let Value::Object(m) = &mut doc {
        m.entry("batch_id").or_insert(Value::Null);
        m.insert("status".into(), Value::from("completed"));
    }
    doc
}

/// Builds the job of one object of a completed batch.
pub fn job_for(wb: &Writeback, rec: &ObjectRecord, batch_id: &BatchId, now_ms: u64) -> Job {
    let doc = result_document(rec);
    let mut fields = Map::new();
    for m in &wb.field_mapping {
        if let Some(v) = path::lookup(&doc, &m.source_path) {
            fields.insert(m.target_field.clone(), v.clone());
        }
    }
    let external_id = match &wb.external_id_field {
        Some(f) => path::lookup(&Value::Object(rec.metadata.clone()), f).and_then(path::scalar_string),
        None => rec.source.external_id.clone(),
    };
    Job {
        object_id: rec.object_id.clone(),
        batch_id: batch_id.clone(),
        external_id,
        fields,
        table: rec.source.table.clone(),
        schema: rec.source.schema.clone(),
        created_at_ms: now_ms,
        attempts: 0,
        next_attempt_ms: now_ms,
        last_error: None,
    }
}

/// Adds the job of `rec` (an object of the completed batch `batch_id`) to `batch`.
pub fn record(batch: &mut Batch, wb: &Writeback, rec: &ObjectRecord, batch_id: &BatchId) {
    let job = job_for(wb, rec, batch_id, crate::util::now_millis());
    batch.put(KS, &job.key(&rec.bucket_id), &job);
}

/// `POST …/submit`: adds the jobs of every (still existing) object of the completed batch
/// `rec` to `batch`, when the bucket's adapter writes back on batch completion.
pub fn record_batch(store: &Store, bucket: &Bucket, rec: &BatchRecord, batch: &mut Batch) -> Result<(), StoreError> {
    let Some(wb) = bucket.source_adapter.as_ref().and_then(on_batch_complete) else { return Ok(()) };
    for object_id in &rec.object_ids {
        let key = records::key(&bucket.bucket_id, object_id.as_str());
        if let Some(obj) = store.get::<ObjectRecord>(Keyspace::OBJECTS, &key)? {
            record(batch, wb, &obj, &rec.batch_id);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::records::ObjectSource;
    use serde_json::json;

    fn object() -> ObjectRecord {
        let mut metadata = Map::new();
        metadata.insert("title".into(), json!("Loft"));
        metadata.insert("listing".into(), json!({"url": "https://x.test/l/1"}));
        ObjectRecord {
            object_id: ObjectId::generate(),
            bucket_id: BucketId::generate(),
            metadata,
            blobs: Vec::new(),
            source: ObjectSource {
                adapter_type: ProviderType::Supabase,
                external_id: Some("42".into()),
                event_type: Some("INSERT".into()),
                table: Some("listings".into()),
                schema: Some("public".into()),
            },
            batch_id: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn wb(v: Value) -> Writeback {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn fields_and_ids_come_from_the_object_as_result() {
        let o = object();
        let batch = BatchId::generate();
        let w = wb(json!({"field_mapping": [
            {"source_path": "metadata.title", "target_field": "mp_title"},
            {"source_path": "status", "target_field": "mp_status"},
            {"source_path": "batch_id", "target_field": "mp_batch"},
            {"source_path": "metadata.missing", "target_field": "mp_missing"}]}));
        let j = job_for(&w, &o, &batch, 7);
        assert_eq!(j.external_id.as_deref(), Some("42"));
        assert_eq!(j.fields.get("mp_title"), Some(&json!("Loft")));
        assert_eq!(j.fields.get("mp_status"), Some(&json!("completed")));
        assert_eq!(j.fields.get("mp_batch"), Some(&Value::Null));
        assert!(!j.fields.contains_key("mp_missing"));
        assert_eq!((j.table.as_deref(), j.schema.as_deref()), (Some("listings"), Some("public")));
        assert!(j.key(&o.bucket_id).starts_with(&pending_prefix(&o.bucket_id)));
        assert_ne!(j.key(&o.bucket_id), j.dead_key(&o.bucket_id));

        let w = wb(json!({"external_id_field": "listing.url",
            "field_mapping": [{"source_path": "object_id", "target_field": "x"}]}));
        assert_eq!(job_for(&w, &o, &batch, 7).external_id.as_deref(), Some("https://x.test/l/1"));
        let w = wb(
            json!({"external_id_field": "nope", "field_mapping": [{"source_path": "object_id", "target_field": "x"}]}),
        );
        assert_eq!(job_for(&w, &o, &batch, 7).external_id, None);
    }
}
