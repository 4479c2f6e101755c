//! Writeback jobs: what is recorded when a batch completes or an alert fires, and where
//! it is kept.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `wb` | `{bucket_id}/job/{batch_id}/{object_id}` | pending [`Job`] of a completed batch |
//! | `wb` | `{bucket_id}/ajob/{object_id}/{alert_id}` | pending [`Job`] of an alert |
//! | `wb` | `{bucket_id}/dead/{batch_id}/{object_id}` | batch [`Job`] given up (its `last_error` says why) |
//! | `wb` | `{bucket_id}/adead/{object_id}/{alert_id}` | alert [`Job`] given up |
//!
//! Operators list both kinds and re-queue dead ones by their `writeback_id` (see
//! `operator.rs`).
//!
//! A job is recorded in the *same* store batch as its cause (the batch marked completed, or
//! the alert record), so neither exists without the other. The key is deterministic (cause +
//! object), so recording twice overwrites instead of duplicating. Alert jobs have their own
//! prefixes: a binary from before alerts decodes every `job/` entry as a batch job and would
//! fail on one without a `batch_id`; under `ajob/` it never sees them (they wait for an
//! upgrade), so going back a version stays safe.
//!
//! # The processing result
//! hookline has no processor of its own, so the "processing result" that `field_mapping`'s
//! `source_path`s read is, for a batch, the object itself as the objects API shows it plus
//! `status: "completed"`: `{object_id, bucket_id, batch_id, metadata, blobs, source,
//! created_at, updated_at, status}` (so `metadata.title` or `source.external_id`). For an
//! alert it is the same document with the top-level keys of the alert's `results` merged over
//! it, plus `alert_id` (so `verdict_classification`, as in seed 000's example): the caller's
//! results win over the object's fields of the same name. Paths that do not resolve are left
//! out of the written fields. The record ID written to is `external_id_field` read from the
//! object's `metadata` when set, else the object's `source.external_id` (for Supabase the
//! row's primary key). The fields are resolved when the job is recorded (a snapshot); the ID
//! too, and again before each attempt from the object as it is then (a row whose key an
//! UPDATE changed is written under its new key: see `worker.rs`); the target (URL,
//! credentials) is read from the adapter when the job is sent.
//!
//! Pure apart from reading objects (and alerts) for `POST …/submit`, a dead job's retry by
//! hand and the writebacks list; must not perform network I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Trigger, Writeback};
use crate::adapter::alert::{self, AlertRecord};
use crate::adapter::path;
use crate::adapter::records::{self, BatchRecord, ObjectRecord};
use crate::adapter::spec::SourceAdapter;
use crate::catalog::{Bucket, ProviderType};
use crate::ids::{AlertId, BatchId, BucketId, ObjectId};
use crate::store::{Batch, Keyspace, Store, StoreError};

/// The job keyspace (listed in `store::Keyspace`).
pub const KS: Keyspace = Keyspace::WRITEBACKS;

/// One object's writeback, pending or given up. Exactly one of `batch_id` and `alert_id` is
/// set (both optional so that jobs stored before alerts existed still decode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub object_id: ObjectId,
    /// The completed batch that caused it (`on_batch_complete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<BatchId>,
    /// The alert that caused it (`on_alert`); the generic_webhook body names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<AlertId>,
    /// The source record to update; `None` when neither `external_id_field` nor the source
    /// had one (a Supabase job is then not queued, see [`record`]; one stored by an older
    /// version is given up at its first attempt, with that reason).
    pub external_id: Option<String>,
    /// `target_field` → value, from the processing result.
    pub fields: Map<String, Value>,
    /// The type of the adapter that queued it: only an adapter of that type sends it. Its
    /// fields were mapped for that adapter's target; after a PATCH to another type, a job
    /// queued for a generic `writeback_url` must not become a PostgREST PATCH (with the
    /// service-role key) of whatever row its ID names, nor a Supabase row's a POST to the
    /// new `writeback_url`. Absent in jobs stored before it was recorded (then sent as
    /// before: checked by `table` alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_by: Option<ProviderType>,
    /// The adapter type that made its object (`source.adapter_type`), when another than
    /// `queued_by`: an object an adapter of another type made (before a PATCH of the
    /// bucket's adapter type, and updated since by this one, say) has an ID of that
    /// source, which names no row of this adapter's (see [`Job::foreign_object`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_from: Option<ProviderType>,
    /// Supabase: where the row lives (from the event that created the object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// When it was queued; a retry by hand restarts it (and with it the max age).
    pub created_at_ms: u64,
    /// When its cause (the batch's completion, the alert) queued it first: what orders the
    /// jobs of one row (see `worker.rs`). Absent in jobs stored before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_at_ms: Option<u64>,
    pub attempts: u32,
    pub next_attempt_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What a job is recorded for.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    Batch(&'a BatchId),
    Alert(&'a AlertId),
}

impl Job {
    /// Why an adapter of type `kind` must not send this job, if it must not: another type
    /// of adapter queued it (see [`Job::queued_by`]).
    pub fn queued_by_another(&self, kind: ProviderType) -> Option<String> {
        let by = self.queued_by.filter(|t| *t != kind)?;
        Some(format!(
            "queued by the bucket's {} adapter for its target, and the adapter is now {} adapter (its type was \
             changed): its fields and row are not this adapter's to write",
            by.as_str(),
            crate::util::with_article(kind.as_str())
        ))
    }

    /// Why this job must not be sent, if its object came from an adapter of another type
    /// than the one that queued it: its external ID is that source's, and would name some
    /// unrelated row of this adapter's (a service-role PATCH, for Supabase).
    pub fn foreign_object(&self) -> Option<String> {
        Some(made_by_another(self.object_from?, self.queued_by?))
    }

    /// Why an adapter of type `kind` must not send this job at all, if it must not: another
    /// type queued it, or its object is another type's. Such a job is given up, not sent.
    pub fn barred_for(&self, kind: ProviderType) -> Option<String> {
        self.queued_by_another(kind).or_else(|| self.foreign_object())
    }

    pub fn key(&self, bucket: &BucketId) -> String {
        self.key_under(bucket, "job", "ajob")
    }

    pub fn dead_key(&self, bucket: &BucketId) -> String {
        self.key_under(bucket, "dead", "adead")
    }

    fn key_under(&self, bucket: &BucketId, batch_dir: &str, alert_dir: &str) -> String {
        let (b, o) = (bucket.as_str(), self.object_id.as_str());
        match (&self.alert_id, &self.batch_id) {
            (Some(a), _) => format!("{b}/{alert_dir}/{o}/{}", a.as_str()),
            (None, batch) => format!("{b}/{batch_dir}/{}/{o}", batch.as_ref().map_or("", |x| x.as_str())),
        }
    }
}

/// Prefixes of a bucket's pending jobs (batch jobs, alert jobs): the worker scans both.
pub fn pending_prefixes(bucket: &BucketId) -> [String; 2] {
    [format!("{}/job/", bucket.as_str()), format!("{}/ajob/", bucket.as_str())]
}

/// Whether the adapter's writeback can send at all (enabled, an adapter type that supports
/// writeback), whatever its trigger: the worker runs then.
pub fn sends(adapter: &SourceAdapter) -> bool {
    adapter.writeback.as_ref().is_some_and(|w| w.enabled) && adapter.adapter_type != ProviderType::Mux
}

/// The writeback settings when they fire on batch completion.
pub fn on_batch_complete(adapter: &SourceAdapter) -> Option<&Writeback> {
    firing(adapter, Trigger::OnBatchComplete)
}

/// The writeback settings when they fire on an alert (`POST …/objects/{id}/alerts`).
pub fn on_alert(adapter: &SourceAdapter) -> Option<&Writeback> {
    firing(adapter, Trigger::OnAlert)
}

fn firing(adapter: &SourceAdapter, trigger: Trigger) -> Option<&Writeback> {
    adapter.writeback.as_ref().filter(|w| w.trigger == trigger && sends(adapter))
}

/// Supabase: the payload's `table` or `schema` (`field`), remembered on the object's source
/// so a writeback knows where the row lives. `None` for other adapters.
pub fn source_location(kind: ProviderType, payload: &Value, field: &str) -> Option<String> {
    match kind {
        ProviderType::Supabase => payload.get(field).and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The top-level keys of [`result_document`]: where a batch writeback's source paths start.
pub const RESULT_KEYS: &[&str] =
    &["object_id", "bucket_id", "batch_id", "metadata", "blobs", "source", "created_at", "updated_at", "status"];

/// The processing result of an object of a completed batch (see the module doc).
pub fn result_document(rec: &ObjectRecord) -> Value {
    let mut doc = rec.shown();
    if let Value::Object(m) = &mut doc {
        m.entry("batch_id").or_insert(Value::Null);
        m.insert("status".into(), Value::from("completed"));
    }
    doc
}

/// The processing result of an alert on an object: [`result_document`] with the top-level
/// keys of `results` merged over it, and `alert_id` (see the module doc).
pub fn alert_document(rec: &ObjectRecord, alert_id: &AlertId, results: &Map<String, Value>) -> Value {
    let mut doc = result_document(rec);
    if let Value::Object(m) = &mut doc {
        m.extend(results.iter().map(|(k, v)| (k.clone(), v.clone())));
        m.insert("alert_id".into(), Value::from(alert_id.as_str()));
    }
    doc
}

/// The ID of the source record a job of `rec` writes: `external_id_field` read from its
/// metadata when set, else its `source.external_id`.
pub fn external_id_of(wb: &Writeback, rec: &ObjectRecord) -> Option<String> {
    match &wb.external_id_field {
        Some(f) => path::lookup(&Value::Object(rec.metadata.clone()), f).and_then(path::scalar_string),
        None => rec.source.external_id.clone(),
    }
}

/// The source record ID a pending `job` of `bucket` writes at its next attempt, when that is
/// not the one it holds: its object's ID as it is now (a row an UPDATE re-keyed since the job
/// was queued, or one queued without an ID), which the worker takes before the attempt (see
/// `worker.rs`); `Some(None)` when its object lost its row (a Supabase object whose key
/// another row took, see [`detached`]): the job must not write the row that has it now.
/// `None` when it is the job's own, or the adapter would not send it (another type's job,
/// writeback off), or its object is gone or otherwise has no ID. So that the writebacks list
/// names the row that will be written.
pub fn next_external_id(
    store: &Store,
    bucket: &BucketId,
    adapter: &SourceAdapter,
    job: &Job,
) -> Result<Option<Option<String>>, StoreError> {
    let Some(wb) = adapter.writeback.as_ref().filter(|_| super::sends(adapter)) else { return Ok(None) };
    if job.barred_for(adapter.adapter_type).is_some() {
        return Ok(None);
    }
    let key = records::key(bucket, job.object_id.as_str());
    let Some(rec) = store.get::<ObjectRecord>(Keyspace::OBJECTS, &key)? else { return Ok(None) };
    if detached(wb, &rec) {
        return Ok(job.external_id.is_some().then_some(None));
    }
    Ok(external_id_of(wb, &rec).filter(|now| Some(now) != job.external_id.as_ref()).map(Some))
}

/// Whether `rec` is a Supabase object that no longer names a row by its key: an UPDATE gave
/// its row's key to another row (its own row deleted unseen), and the object lost its
/// external ID (see `adapter/actor/lifecycle.rs`). A job of it written by that key would
/// land on the other row. (With `external_id_field`, the job's row is that field's, which
/// the object keeps.)
fn detached(wb: &Writeback, rec: &ObjectRecord) -> bool {
    wb.external_id_field.is_none()
        && rec.source.adapter_type == crate::catalog::ProviderType::Supabase
        && rec.source.external_id.is_none()
}

/// A pending job's fields after a PATCH changed the writeback's `field_mapping` from `old`
/// to `new`, followed by source path: a field the old mapping wrote from a source the new
/// one writes under another `target_field` (a column name fixed) moves there; one whose
/// source the new mapping no longer reads goes, as does one the old mapping did not write
/// (queued under an older one: where its value came from is not known). Values stay those the
/// job holds: no object is read, so a job `coalesce` trimmed stays trimmed (read again, its
/// older values could land after a newer job's), and a source new to the mapping adds
/// nothing (a retry by hand maps a dead job afresh: see [`remapped`]). `None` when nothing
/// changes.
pub fn follow_mapping(
    old: &[super::WritebackField],
    new: &[super::WritebackField],
    fields: &Map<String, Value>,
) -> Option<Map<String, Value>> {
    let mut out = Map::new();
    for (target, value) in fields {
        if let Some(was) = old.iter().find(|m| &m.target_field == target) {
            for m in new.iter().filter(|m| m.source_path == was.source_path) {
                out.insert(m.target_field.clone(), value.clone());
            }
        }
    }
    (&out != fields).then_some(out)
}

/// Why an object an adapter of type `from` made is not written back by the bucket's `kind`
/// adapter (see [`Job::object_from`]).
pub fn made_by_another(from: ProviderType, kind: ProviderType) -> String {
    format!(
        "the object was made by {} source adapter (before the bucket's adapter became {}): its ID names no record \
         of this adapter's source, so it is not written back",
        crate::util::with_article(from.as_str()),
        kind.as_str()
    )
}

/// Builds the job of one object, its fields read from `doc` (its processing result).
pub fn job_for(
    kind: ProviderType,
    wb: &Writeback,
    rec: &ObjectRecord,
    doc: &Value,
    cause: Cause<'_>,
    now_ms: u64,
) -> Job {
    let mut fields = Map::new();
    for m in &wb.field_mapping {
        if let Some(v) = path::lookup(doc, &m.source_path) {
            fields.insert(m.target_field.clone(), v.clone());
        }
    }
    let external_id = external_id_of(wb, rec);
    let (batch_id, alert_id) = match cause {
        Cause::Batch(b) => (Some(b.clone()), None),
        Cause::Alert(a) => (None, Some(a.clone())),
    };
    Job {
        object_id: rec.object_id.clone(),
        batch_id,
        alert_id,
        external_id,
        fields,
        queued_by: Some(kind),
        object_from: Some(rec.source.adapter_type).filter(|t| *t != kind),
        table: rec.source.table.clone(),
        schema: rec.source.schema.clone(),
        created_at_ms: now_ms,
        caused_at_ms: Some(now_ms),
        attempts: 0,
        next_attempt_ms: now_ms,
        last_error: None,
    }
}

/// A dead job about to be re-queued, mapped again with the adapter's writeback settings as
/// they are now, from its object (and its alert's results), as if its cause came now: a
/// mapping fixed since (a renamed column, another `external_id_field`) applies to it, where
/// it kept sending what it was queued with. Its fields that the mapping still writes but
/// finds no value for now are kept: merged from older jobs of its row (which are gone), or
/// its own value of a field its object has lost since.
/// Kept as it is when there is nothing to map it from (its object or alert is gone), when
/// another type of adapter queued it (it fails, saying so: see [`Job::queued_by`]), or when
/// the writeback no longer fires on its cause.
pub fn remapped(store: &Store, bucket: &BucketId, adapter: &SourceAdapter, job: Job) -> Result<Job, StoreError> {
    if job.queued_by_another(adapter.adapter_type).is_some() {
        return Ok(job);
    }
    let (trigger, cause) = match (&job.alert_id, &job.batch_id) {
        (Some(a), _) => (Trigger::OnAlert, Cause::Alert(a)),
        (None, Some(b)) => (Trigger::OnBatchComplete, Cause::Batch(b)),
        (None, None) => return Ok(job),
    };
    let Some(wb) = adapter.writeback.as_ref().filter(|w| w.trigger == trigger) else { return Ok(job) };
    let key = records::key(bucket, job.object_id.as_str());
    let Some(rec) = store.get::<ObjectRecord>(Keyspace::OBJECTS, &key)? else { return Ok(job) };
    // A batch's job from the object as that batch made it, not as a later batch holds it.
    if job.batch_id.is_some() && rec.batch_id != job.batch_id {
        return Ok(job);
    }
    let doc = match &job.alert_id {
        Some(a) => match store.get::<AlertRecord>(alert::KS, &alert::key(bucket, &job.object_id, a))? {
            Some(raised) => alert_document(&rec, a, &raised.results),
            None => return Ok(job),
        },
        None => result_document(&rec),
    };
    let fresh = job_for(adapter.adapter_type, wb, &rec, &doc, cause, job.created_at_ms);
    // An object of another source (a job from before `queued_by`, or one queued then) is
    // marked so and given up; one the mapping now finds nothing in keeps what it had.
    if fresh.foreign_object().is_some() {
        return Ok(Job { queued_by: fresh.queued_by, object_from: fresh.object_from, ..job });
    }
    if fresh.fields.is_empty() {
        return Ok(job);
    }
    // What it held for a field the mapping still writes and now finds no value for stays:
    // a value an older job of its row merged into it (an earlier alert's result, say),
    // which no other job holds any more. A field the mapping no longer writes goes (a
    // renamed column the target refused).
    let mut fields: Map<String, Value> = job
        .fields
        .into_iter()
        .filter(|(target, _)| wb.field_mapping.iter().any(|m| &m.target_field == target))
        .collect();
    fields.extend(fresh.fields);
    Ok(Job {
        fields,
        // As a re-key does (see `worker.rs`): an ID the object no longer has is no better.
        external_id: fresh.external_id.or(job.external_id),
        table: fresh.table,
        schema: fresh.schema,
        queued_by: fresh.queued_by,
        object_from: fresh.object_from,
        ..job
    })
}

/// Adds the job of `rec` (an object of the completed batch `batch_id`) to `batch`, unless
/// its first attempt could only fail for good (none of the mapped fields in the object, or no
/// row to write to): then nothing is queued (counted `skipped`), and the reason is returned,
/// as an alert's is, rather than a dead job that no retry could ever fix.
pub fn record(
    batch: &mut Batch,
    kind: crate::catalog::ProviderType,
    wb: &Writeback,
    rec: &ObjectRecord,
    batch_id: &BatchId,
) -> Option<String> {
    let job = job_for(kind, wb, rec, &result_document(rec), Cause::Batch(batch_id), crate::util::now_millis());
    match could_only_fail(kind, wb, &job, "the object") {
        Some(why) => {
            crate::metrics::writeback(kind.as_str(), "skipped");
            Some(format!("writeback of object {} (batch {batch_id}) skipped: {why}", rec.object_id))
        }
        None => {
            batch.put(KS, &job.key(&rec.bucket_id), &job);
            None
        }
    }
}

/// Whether a writeback of an adapter of `kind` needs the object's external id: a Supabase
/// PATCH updates the row it names; a generic POST goes to its fixed URL with the object's ID
/// (and `external_id` null when it has none).
pub fn needs_external_id(kind: crate::catalog::ProviderType) -> bool {
    kind == crate::catalog::ProviderType::Supabase
}

/// Why a job that needs its object's external id has none: the field it is read from.
pub fn no_external_id(wb: Option<&Writeback>) -> String {
    match wb.and_then(|w| w.external_id_field.as_ref()) {
        // Not source.external_id instead: that is the row's id column, another column.
        Some(f) => format!("the object has no {f} (the writeback's external_id_field) to find its source row by"),
        None => "the object has no source external id to find its source row by (a Supabase object loses it when an \
                 UPDATE gives its row's key to another row)"
            .to_string(),
    }
}

/// Adds the job of an alert on `rec` to `batch`, unless its first attempt could only fail
/// for good (nothing to write, or no row to write to): then nothing is queued, and the
/// reason is returned for the alert's answer, where its caller sees it at once.
pub fn record_alert(
    batch: &mut Batch,
    kind: crate::catalog::ProviderType,
    wb: &Writeback,
    rec: &ObjectRecord,
    alert_id: &AlertId,
    results: &Map<String, Value>,
) -> Result<(), String> {
    let doc = alert_document(rec, alert_id, results);
    let job = job_for(kind, wb, rec, &doc, Cause::Alert(alert_id), crate::util::now_millis());
    if let Some(why) = could_only_fail(kind, wb, &job, "the results or the object") {
        return Err(why);
    }
    batch.put(KS, &job.key(&rec.bucket_id), &job);
    Ok(())
}

/// Why `job`'s first attempt could only fail for good, if it could: none of the mapped
/// fields was found (in `read_from`), or a Supabase object has no external ID to find its row
/// by. Such a job is not queued (see [`record`], [`record_alert`]).
fn could_only_fail(kind: crate::catalog::ProviderType, wb: &Writeback, job: &Job, read_from: &str) -> Option<String> {
    if let Some(why) = job.foreign_object() {
        return Some(why);
    }
    if job.fields.is_empty() {
        let paths: Vec<&str> = wb.field_mapping.iter().map(|m| m.source_path.as_str()).collect();
        return Some(format!(
            "none of the writeback field_mapping source_paths ({}) is in {read_from}",
            paths.join(", ")
        ));
    }
    (job.external_id.is_none() && needs_external_id(kind)).then(|| no_external_id(Some(wb)))
}

/// `POST …/submit`: adds the jobs of every (still existing) object of the completed batch
/// `rec` to `batch`, when the bucket's adapter writes back on batch completion.
/// Returns the last reason a job was skipped (see [`record`]), if one was.
pub fn record_batch(
    store: &Store,
    bucket: &Bucket,
    rec: &BatchRecord,
    batch: &mut Batch,
) -> Result<Option<String>, StoreError> {
    let Some(adapter) = bucket.source_adapter.as_ref() else { return Ok(None) };
    let Some(wb) = on_batch_complete(adapter) else { return Ok(None) };
    let mut skipped = None;
    for object_id in &rec.object_ids {
        let key = records::key(&bucket.bucket_id, object_id.as_str());
        if let Some(obj) = store.get::<ObjectRecord>(Keyspace::OBJECTS, &key)? {
            skipped = record(batch, adapter.adapter_type, wb, &obj, &rec.batch_id).or(skipped);
        }
    }
    Ok(skipped)
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
            dedup: Some(records::DedupMark { hash: "h".repeat(64), generation: 0 }),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    fn wb(v: Value) -> Writeback {
        serde_json::from_value(v).unwrap()
    }

    fn batch_job(w: &Writeback, o: &ObjectRecord, batch: &BatchId) -> Job {
        job_for(ProviderType::Supabase, w, o, &result_document(o), Cause::Batch(batch), 7)
    }

    #[test]
    fn result_keys_are_the_result_documents() {
        let doc = result_document(&object());
        let mut keys: Vec<&str> = doc.as_object().unwrap().keys().map(String::as_str).collect();
        let mut named = RESULT_KEYS.to_vec();
        keys.sort_unstable();
        named.sort_unstable();
        assert_eq!(keys, named);
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
        let j = batch_job(&w, &o, &batch);
        assert_eq!(j.external_id.as_deref(), Some("42"));
        assert_eq!(j.fields.get("mp_title"), Some(&json!("Loft")));
        assert_eq!(j.fields.get("mp_status"), Some(&json!("completed")));
        assert_eq!(j.fields.get("mp_batch"), Some(&Value::Null));
        assert!(!j.fields.contains_key("mp_missing"));
        assert_eq!((j.table.as_deref(), j.schema.as_deref()), (Some("listings"), Some("public")));
        let b = o.bucket_id.as_str();
        assert_eq!(
            j.key(&o.bucket_id),
            format!("{b}/job/{batch}/{}", o.object_id),
            "the key batch jobs had before alerts"
        );
        assert!(j.key(&o.bucket_id).starts_with(&pending_prefixes(&o.bucket_id)[0]));
        assert_ne!(j.key(&o.bucket_id), j.dead_key(&o.bucket_id));

        let w = wb(json!({"external_id_field": "listing.url",
            "field_mapping": [{"source_path": "object_id", "target_field": "x"}]}));
        assert_eq!(batch_job(&w, &o, &batch).external_id.as_deref(), Some("https://x.test/l/1"));
        let w = wb(
            json!({"external_id_field": "nope", "field_mapping": [{"source_path": "object_id", "target_field": "x"}]}),
        );
        assert_eq!(batch_job(&w, &o, &batch).external_id, None);
    }

    #[test]
    fn an_alert_document_is_the_object_with_the_results_over_it() {
        let o = object();
        let alert = AlertId::parse("run-1:a").unwrap();
        let results = json!({"verdict_classification": "fake", "verdict_confidence": 0.93,
            "status": "flagged", "metadata": {"note": "replaces the object's metadata"}});
        let doc = alert_document(&o, &alert, results.as_object().unwrap());
        assert_eq!(doc["verdict_classification"], "fake");
        assert_eq!(doc["verdict_confidence"], 0.93);
        assert_eq!(doc["status"], "flagged", "the results win over the object's own keys");
        assert_eq!(doc["metadata"], json!({"note": "replaces the object's metadata"}), "top-level merge, not deep");
        assert_eq!(doc["alert_id"], "run-1:a");
        assert_eq!(doc["object_id"], o.object_id.as_str(), "the object's other fields stay");
        assert_eq!(doc["source"]["external_id"], "42");
        assert!(doc.get("dedup").is_none(), "the dedup mark is stored, never shown: {doc}");
        // Without results it is the batch document plus the alert's ID.
        let plain = alert_document(&o, &alert, &Map::new());
        let mut expect = result_document(&o);
        expect["alert_id"] = json!("run-1:a");
        assert_eq!(plain, expect);
    }

    #[test]
    fn an_alert_job_maps_the_seed_example_and_has_its_own_keys() {
        let o = object();
        let alert = AlertId::parse("alr_1").unwrap();
        let w = wb(json!({"trigger": "on_alert", "field_mapping": [
            {"source_path": "verdict_classification", "target_field": "mp_verdict"},
            {"source_path": "verdict_confidence", "target_field": "mp_confidence"},
            {"source_path": "alert_id", "target_field": "mp_alert"},
            {"source_path": "metadata.title", "target_field": "mp_title"}]}));
        let results = json!({"verdict_classification": "fake", "verdict_confidence": 0.93});
        let mut batch = Batch::new();
        record_alert(&mut batch, ProviderType::Supabase, &w, &o, &alert, results.as_object().unwrap()).expect("a job");
        assert_eq!(batch.len(), 1);
        let doc = alert_document(&o, &alert, results.as_object().unwrap());
        let j = job_for(ProviderType::Supabase, &w, &o, &doc, Cause::Alert(&alert), 7);
        assert_eq!(
            Value::Object(j.fields.clone()),
            json!({"mp_verdict": "fake", "mp_confidence": 0.93, "mp_alert": "alr_1", "mp_title": "Loft"})
        );
        assert_eq!((j.batch_id.as_ref(), j.alert_id.as_ref()), (None, Some(&alert)));
        let b = o.bucket_id.as_str();
        assert_eq!(j.key(&o.bucket_id), format!("{b}/ajob/{}/alr_1", o.object_id));
        assert_eq!(j.dead_key(&o.bucket_id), format!("{b}/adead/{}/alr_1", o.object_id));
        assert!(j.key(&o.bucket_id).starts_with(&pending_prefixes(&o.bucket_id)[1]));
        let stored = serde_json::to_value(&j).unwrap();
        assert!(stored.get("batch_id").is_none(), "{stored}");
        assert_eq!(serde_json::from_value::<Job>(stored).unwrap(), j);
    }

    #[test]
    fn an_alert_job_that_could_only_fail_is_not_queued() {
        let mut o = object();
        let alert = AlertId::parse("alr_1").unwrap();
        let w = wb(json!({"trigger": "on_alert", "field_mapping": [
            {"source_path": "verdict_classification", "target_field": "mp_verdict"}]}));
        let mut batch = Batch::new();
        let other = json!({"score": 1});
        let why =
            record_alert(&mut batch, ProviderType::Supabase, &w, &o, &alert, other.as_object().unwrap()).unwrap_err();
        assert!(why.contains("verdict_classification"), "{why}");
        assert!(batch.is_empty(), "nothing to write: no job");
        // Something to write, but no row to write it to.
        o.source.external_id = None;
        let results = json!({"verdict_classification": "fake"});
        let why =
            record_alert(&mut batch, ProviderType::Supabase, &w, &o, &alert, results.as_object().unwrap()).unwrap_err();
        assert!(why.contains("external id"), "{why}");
        let by_field = wb(json!({"trigger": "on_alert", "external_id_field": "listing.nope", "field_mapping": [
            {"source_path": "verdict_classification", "target_field": "mp_verdict"}]}));
        let why = record_alert(&mut batch, ProviderType::Supabase, &by_field, &o, &alert, results.as_object().unwrap())
            .unwrap_err();
        assert!(why.contains("listing.nope"), "{why}");
        assert!(batch.is_empty());
    }

    /// A pending job's fields follow a changed mapping by source path, and only by renaming
    /// or dropping: nothing is added, no value changes.
    #[test]
    fn pending_fields_follow_a_changed_mapping_by_source() {
        let pairs = |v: Value| wb(json!({"field_mapping": v})).field_mapping;
        let old = pairs(json!([
            {"source_path": "metadata.title", "target_field": "mp_titel"},
            {"source_path": "status", "target_field": "mp_status"},
            {"source_path": "metadata.gone", "target_field": "mp_gone"}]));
        let new = pairs(json!([
            {"source_path": "metadata.title", "target_field": "mp_title"},
            {"source_path": "metadata.title", "target_field": "mp_title_copy"},
            {"source_path": "status", "target_field": "mp_status"},
            {"source_path": "metadata.added", "target_field": "mp_added"},
            {"source_path": "metadata.other", "target_field": "mp_older"}]));
        let fields = json!({"mp_titel": "T", "mp_status": "completed", "mp_gone": 1, "mp_older": 2, "mp_stray": 3});
        let Value::Object(fields) = fields else { unreachable!() };
        let moved = follow_mapping(&old, &new, &fields).expect("changed");
        assert_eq!(
            Value::Object(moved),
            json!({"mp_title": "T", "mp_title_copy": "T", "mp_status": "completed"}),
            "renamed by source; dropped when unread, or of an unknown source; none added"
        );
        let Value::Object(kept) = json!({"mp_titel": "T", "mp_status": "completed"}) else { unreachable!() };
        assert_eq!(follow_mapping(&old, &old, &kept), None, "the same mapping changes nothing");
    }

    #[test]
    fn a_job_stored_before_alerts_still_decodes_and_encodes_the_same() {
        let old = json!({"object_id": "obj_01", "batch_id": "batch_01", "external_id": "42",
            "fields": {"mp_status": "completed"}, "table": "listings", "created_at_ms": 5,
            "attempts": 2, "next_attempt_ms": 9, "last_error": "the target answered HTTP 500"});
        let j: Job = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(j.batch_id.as_ref().map(BatchId::as_str), Some("batch_01"));
        assert_eq!(j.alert_id, None);
        assert_eq!(serde_json::to_value(&j).unwrap(), old, "a batch job is written as before");
    }

    #[test]
    fn the_triggers_pick_their_writeback() {
        let mut a: SourceAdapter = serde_json::from_value(json!({
            "adapter_type": "supabase", "enabled": true, "webhook_secret_sha256": "x", "configured_at": "now",
            "batching": {"mode": "immediate"},
            "writeback": {"trigger": "on_alert", "field_mapping": [{"source_path": "a", "target_field": "b"}]}}))
        .unwrap();
        assert!(on_alert(&a).is_some() && on_batch_complete(&a).is_none() && sends(&a));
        if let Some(w) = a.writeback.as_mut() {
            w.enabled = false;
        }
        assert!(on_alert(&a).is_none() && !sends(&a));
    }
}
