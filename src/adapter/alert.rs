//! Alerts on objects: `POST /v1/buckets/{bucket_id}/objects/{object_id}/alerts` with
//! `{"alert_id"?, "results": {…}}`, raised by whatever processed the object (a classifier,
//! a reviewer). Seed 000 names the writeback trigger `on_alert` but no way to raise an
//! alert; this is hookline's own.
//!
//! One alert is one atomic store batch, built here by [`fire`] for whoever owns the bucket's
//! writes: the adapter actor when it runs, else the bucket registry (a bucket without an
//! adapter, or one whose actor is stopped).
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `alert` | `{bucket_id}/{object_id}/{alert_id}` | [`AlertRecord`] |
//!
//! The batch holds the alert record, the writeback job when the adapter writes back
//! `on_alert` (see `writeback/job.rs`), and the `alert.triggered` event. The record makes an
//! alert idempotent by its ID: the same ID again on the same object is a duplicate and queues
//! nothing, across restarts too; with other results it is a 409 (the first results stand).
//! Records go with their object (every delete path calls [`delete_for_object`]) and with the
//! bucket.
//!
//! Pure apart from store reads; the callers submit the batch and publish the event.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::records::{self, BufferEntry, ObjectRecord};
use crate::catalog::Bucket;
use crate::error::ApiError;
use crate::events::{EventBus, EventRecord, Scopes};
use crate::ids::{AlertId, BucketId, ObjectId};
use crate::store::{Batch, Keyspace, Store, StoreError};

/// The alert keyspace (listed in `store::Keyspace`).
pub const KS: Keyspace = Keyspace::ALERTS;

/// The largest `results`, as JSON. It is stored with the alert and copied into its event:
/// processing results (a verdict, scores, labels) are small, and a larger document belongs
/// in the object's blobs.
pub const MAX_RESULTS_BYTES: usize = 64 << 10;

/// The event every accepted alert publishes.
pub const EVENT_TYPE: &str = "alert.triggered";

/// The request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertBody {
    /// The caller's ID for the alert (its idempotency key); made here when absent.
    #[serde(default)]
    pub alert_id: Option<String>,
    /// The processing results: any JSON object (checked in [`AlertBody::validate`], so the
    /// 422 can say what is wrong in words rather than serde's).
    pub results: Value,
}

/// A validated alert, on its way to the bucket's owner.
#[derive(Debug, Clone)]
pub struct NewAlert {
    pub object_id: ObjectId,
    pub alert_id: AlertId,
    pub results: Map<String, Value>,
}

impl AlertBody {
    /// 422 naming `alert_id` or `results` when they are not what the endpoint takes.
    pub fn validate(self, object_id: ObjectId) -> Result<NewAlert, ApiError> {
        let alert_id = match self.alert_id.as_deref() {
            None => AlertId::generate(),
            Some(raw) => AlertId::parse(raw).ok_or_else(|| {
                ApiError::validation(
                    "alert_id",
                    format!("must be 1–{} characters of letters, digits, _ . : -", AlertId::MAX_LEN),
                )
            })?,
        };
        let Value::Object(results) = self.results else {
            return Err(ApiError::validation("results", "must be a JSON object of processing results"));
        };
        let size = serde_json::to_vec(&results).map_or(usize::MAX, |v| v.len());
        if size > MAX_RESULTS_BYTES {
            return Err(ApiError::validation(
                "results",
                format!("at most {MAX_RESULTS_BYTES} bytes as JSON (got {size}); keep large documents in blobs"),
            ));
        }
        Ok(NewAlert { object_id, alert_id, results })
    }
}

/// Whether an alert queued a writeback job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WritebackQueued {
    /// The adapter writes back `on_alert`: a job was recorded with the alert.
    Queued,
    /// The adapter writes back `on_alert`, but the job could only have failed (nothing in
    /// the results to write, or no source row to write to): none was recorded. Only shown:
    /// stored as `None` with [`AlertRecord::writeback_skipped`], which a binary from before
    /// this variant ignores, so it can still read the record after a rollback.
    Skipped,
    /// No adapter, no writeback, writeback disabled, or another trigger.
    None,
}

/// One alert, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub alert_id: AlertId,
    pub object_id: ObjectId,
    pub bucket_id: BucketId,
    /// RFC 3339, when it was accepted.
    pub fired_at: String,
    pub results: Map<String, Value>,
    /// What the alert did, so a duplicate answers as the original did.
    pub writeback: WritebackQueued,
    /// Why no writeback was queued, when the adapter writes back on alerts (`writeback` is
    /// then stored as `None`, and shown as `Skipped`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writeback_skipped: Option<String>,
}

impl AlertRecord {
    /// The alert as `GET …/alerts` lists it: its event's payload, and what it did about a
    /// writeback (as its answer said).
    pub fn view(&self) -> Value {
        let mut v = self.event_payload();
        v["writeback"] = serde_json::json!(self.writeback);
        if let Some(why) = &self.writeback_skipped {
            v["writeback"] = serde_json::json!(WritebackQueued::Skipped);
            v["writeback_skipped"] = why.as_str().into();
        }
        v
    }

    /// The `alert.triggered` payload.
    pub fn event_payload(&self) -> Value {
        serde_json::json!({
            "bucket_id": self.bucket_id,
            "object_id": self.object_id,
            "alert_id": self.alert_id,
            "results": self.results,
            "fired_at": self.fired_at,
        })
    }
}

/// Whether an alert was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    /// Recorded now (202).
    Accepted,
    /// Its ID was recorded on the object before: nothing changed (200).
    Duplicate,
}

impl AlertStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertStatus::Accepted => "accepted",
            AlertStatus::Duplicate => "duplicate",
        }
    }
}

/// What [`fire`] decided.
#[derive(Debug)]
pub struct Fired {
    pub status: AlertStatus,
    pub record: AlertRecord,
    /// The `alert.triggered` event in the batch (none for a duplicate): publish it once the
    /// batch is durable.
    pub event: Option<EventRecord>,
}

impl Fired {
    /// The answer's body: the alert as listed, without its results, and whether it was new.
    pub fn view(&self) -> Value {
        let mut v = self.record.view();
        if let Value::Object(m) = &mut v {
            m.remove("results");
            m.remove("fired_at");
            m.insert("status".into(), self.status.as_str().into());
        }
        v
    }
}

/// Why an alert was refused.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("object {object_id} not found in bucket {bucket_id}")]
    NotFound { bucket_id: BucketId, object_id: ObjectId },
    /// The object is still in its batch buffer: the note says when it flushes.
    #[error("{0}; raise the alert once it is created")]
    Buffered(String),
    /// The ID was used on this object with other results: a retry must repeat its request,
    /// and new results need a new ID (as with any idempotency key).
    #[error(
        "alert {alert_id} was already raised on this object with other results (those stand); \
         send new results under a new alert_id"
    )]
    Reused { alert_id: AlertId },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AlertError> for ApiError {
    fn from(e: AlertError) -> Self {
        match e {
            e @ AlertError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            e @ (AlertError::Buffered(_) | AlertError::Reused { .. }) => ApiError::Conflict(e.to_string()),
            AlertError::Store(e) => e.into(),
        }
    }
}

pub fn key(bucket: &BucketId, object: &ObjectId, alert: &AlertId) -> String {
    format!("{}{}", object_prefix(bucket, object), alert.as_str())
}

/// Prefix of one object's alerts (the trailing `/` keeps `obj_1` from matching `obj_12`).
pub fn object_prefix(bucket: &BucketId, object: &ObjectId) -> String {
    format!("{}/{}/", bucket.as_str(), object.as_str())
}

/// Adds the deletion of an object's alert records to `batch` (the object is deleted in it).
pub fn delete_for_object(
    store: &Store,
    bucket: &BucketId,
    object: &ObjectId,
    batch: &mut Batch,
) -> Result<(), StoreError> {
    store.for_each_key(KS, &object_prefix(bucket, object), |k| {
        batch.delete(KS, k);
        true
    })
}

/// Decides an alert and, when it is new, adds its record, its writeback job and its event
/// to `batch`. The caller must have made its own earlier writes readable (a barrier), so a
/// just-flushed object or an alert of the same ID submitted a moment ago is seen.
/// `buffered` finds the object in the batch buffer, where the caller keeps it.
pub fn fire(
    store: &Store,
    bus: &EventBus,
    bucket: &Bucket,
    alert: NewAlert,
    buffered: impl FnOnce(&ObjectId) -> Result<Option<BufferEntry>, StoreError>,
    batch: &mut Batch,
) -> Result<Fired, AlertError> {
    let NewAlert { object_id, alert_id, results } = alert;
    let bucket_id = &bucket.bucket_id;
    let Some(object) = store.get::<ObjectRecord>(Keyspace::OBJECTS, &records::key(bucket_id, object_id.as_str()))?
    else {
        return Err(match buffered(&object_id)? {
            Some(entry) => {
                AlertError::Buffered(entry.not_yet_note(bucket.source_adapter.as_ref().map(|a| &a.batching)))
            }
            None => AlertError::NotFound { bucket_id: bucket_id.clone(), object_id },
        });
    };
    let key = key(bucket_id, &object_id, &alert_id);
    if let Some(record) = store.get::<AlertRecord>(KS, &key)? {
        if !same_json(&Value::Object(record.results.clone()), &Value::Object(results.clone())) {
            return Err(AlertError::Reused { alert_id });
        }
        return Ok(Fired { status: AlertStatus::Duplicate, record, event: None });
    }
    let firing = bucket.source_adapter.as_ref().and_then(|a| super::writeback::on_alert(a).map(|wb| (a, wb)));
    let (writeback, writeback_skipped) = match firing {
        Some((adapter, wb)) => {
            match super::writeback::record_alert(batch, adapter.adapter_type, wb, &object, &alert_id, &results) {
                Ok(()) => (WritebackQueued::Queued, None),
                Err(why) => {
                    crate::metrics::writeback(adapter.adapter_type.as_str(), "skipped");
                    tracing::warn!(bucket_id = %bucket_id, object_id = %object_id, alert_id = %alert_id, reason = %why, "alert writeback skipped");
                    (WritebackQueued::None, Some(why))
                }
            }
        }
        None => (WritebackQueued::None, None),
    };
    let record = AlertRecord {
        alert_id,
        object_id,
        bucket_id: bucket_id.clone(),
        fired_at: crate::util::now_rfc3339(),
        results,
        writeback,
        writeback_skipped,
    };
    batch.put(KS, &key, &record);
    let scopes = Scopes { namespace: &bucket.namespace, key: record.object_id.as_str() };
    let event = bus.record(batch, EVENT_TYPE, || record.event_payload(), scopes);
    Ok(Fired { status: AlertStatus::Accepted, record, event: Some(event) })
}

/// JSON values equal as JSON: numbers by value (`1` and `1.0` are one number, as a retrying
/// client's serializer may write either), objects whatever their key order.
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        // An integer (`7`, `7.0`) by its one decimal form, as dedup keys read it; others by value.
        (Value::Number(x), Value::Number(y)) => match (super::path::number_key(x), super::path::number_key(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn results_are_compared_as_json_values() {
        assert!(same_json(&json!({"a": 1, "b": [2, {"c": 3}]}), &json!({"b": [2.0, {"c": 3}], "a": 1.0})));
        assert!(!same_json(&json!({"a": 1}), &json!({"a": 1.5})));
        assert!(!same_json(&json!({"a": 1}), &json!({"a": "1"})));
        assert!(!same_json(&json!({"a": [1, 2]}), &json!({"a": [2, 1]})), "arrays keep their order");
        assert!(!same_json(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(same_json(&json!({"n": u64::MAX}), &json!({"n": u64::MAX})));
        assert!(same_json(&json!({"n": -3}), &json!({"n": -3.0})));
    }

    fn body(v: Value) -> Result<NewAlert, ApiError> {
        crate::error::deserialize_at::<AlertBody>(None, v)?.validate(ObjectId::generate())
    }

    fn field(r: Result<NewAlert, ApiError>) -> String {
        match r.unwrap_err() {
            ApiError::Validation { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_body_needs_results_as_an_object_and_a_well_formed_id() {
        let ok = body(json!({"alert_id": "run-7:v.2", "results": {"verdict_classification": "fake"}})).unwrap();
        assert_eq!(ok.alert_id.as_str(), "run-7:v.2");
        assert_eq!(ok.results["verdict_classification"], "fake");
        assert!(body(json!({"results": {}})).unwrap().alert_id.as_str().starts_with("alr_"), "made when absent");
        assert_eq!(field(body(json!({"alert_id": "a"}))), "results");
        for bad in [json!(null), json!([1]), json!("fake"), json!(3)] {
            assert_eq!(field(body(json!({"results": bad}))), "results");
        }
        for bad in [json!("a/b"), json!(""), json!("x".repeat(129)), json!(7)] {
            assert_eq!(field(body(json!({"alert_id": bad, "results": {}}))), "alert_id");
        }
        assert_eq!(field(body(json!({"results": {}, "extra": 1}))), "extra", "unknown fields are refused");
        let big = json!({"results": {"blob": "x".repeat(MAX_RESULTS_BYTES)}});
        assert_eq!(field(body(big)), "results");
    }

    #[test]
    fn keys_of_one_object_share_a_prefix_no_other_object_has() {
        let b = BucketId::generate();
        let (o1, a) = (ObjectId::parse("obj_1").unwrap(), AlertId::parse("x").unwrap());
        let o12 = ObjectId::parse("obj_12").unwrap();
        assert!(key(&b, &o1, &a).starts_with(&object_prefix(&b, &o1)));
        assert!(!key(&b, &o12, &a).starts_with(&object_prefix(&b, &o1)));
        assert!(object_prefix(&b, &o1).starts_with(&records::prefix(&b)), "deleted with the bucket");
    }
}
