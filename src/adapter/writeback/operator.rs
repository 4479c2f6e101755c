//! The operator's side of writeback jobs: `GET …/source-adapter/writebacks` lists a bucket's
//! pending and dead jobs, `POST …/writebacks/{writeback_id}/retry` re-queues a dead one, or
//! has the running worker send a pending one now (`actor/writebacks.rs`; the routes are in
//! `http/writebacks.rs`). Without them a writeback that failed for good (wrong
//! credentials for a day, a column missing until a migration) could be seen only in the log
//! and the status' latest `last_error`, and never sent again.
//!
//! # `writeback_id`
//! `wb_` + the unpadded base64url (RFC 4648 §5) of the job's pending key within its bucket:
//! `job/{batch_id}/{object_id}` or `ajob/{object_id}/{alert_id}`. Made from the key alone, it
//! is the same across attempts and restarts, and the same while the job is pending and once
//! it is dead (its `dead/` or `adead/` key holds the same parts), so a retry's answer and the
//! list name one job one way. Base64url because hookline matches path segments as sent,
//! without percent-decoding, and a caller's alert ID may hold `.` and `:`: the encoding is
//! `[A-Za-z0-9_-]` only, whatever the alert ID. Decoding accepts the canonical encoding of a
//! well-formed key only (the IDs in it parse), so no other string names the same job.
//!
//! # List order
//! By `writeback_id`'s key: alert jobs (by object, then alert ID), then batch jobs (by
//! batch, then object), each shown with its status as read now. A job re-queued while an
//! operator pages through keeps its place (only its status changes), so it is shown once.
//!
//! # The re-queue
//! [`requeue`] is decided by whoever owns the bucket's state: the adapter actor while it runs
//! (its worker sends the jobs), else the registry (no worker runs then). One atomic batch
//! deletes the dead record and puts the job back under its pending key with `attempts` 0 and
//! its clock (`created_at`, next attempt) at now, so `delivery.max_age_hours` counts from the
//! retry; `last_error` stays until the next attempt replaces it. The worker finds the key at
//! its next scan (`worker::POLL`): it forgot the key when it gave the job up, so it reads it
//! as a new job (and waits for a barrier before its first attempt, as for any new job).
//!
//! Reads the store; no network I/O.

use std::collections::BTreeSet;
use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::{json, Value};

use super::job::{Job, KS};
use crate::adapter::spec::SourceAdapter;
use crate::error::ApiError;
use crate::ids::{AlertId, BatchId, BucketId, ObjectId};
use crate::store::{Batch, Store, StoreError};
use crate::util::millis_to_rfc3339;

/// The prefix of every `writeback_id`.
const ID_PREFIX: &str = "wb_";

/// The longest string [`WritebackId::parse`] decodes: the encoding of the longest key
/// (`ajob/` + an object ID of 68 + `/` + an alert ID of 128) is about 270 characters.
const MAX_ID_LEN: usize = 512;

/// Whether a job is still being tried or was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Dead,
}

impl Status {
    /// The `status` query parameter's values.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "pending" => Some(Status::Pending),
            "dead" => Some(Status::Dead),
            _ => None,
        }
    }
}

/// The two kinds of job, in list order (their pending keys' order: `ajob/` < `job/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Alert,
    Batch,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Alert, Kind::Batch];

    /// The key directory of this kind's jobs in `status` (the table in `job.rs`).
    fn dir(self, status: Status) -> &'static str {
        match (self, status) {
            (Kind::Alert, Status::Pending) => "ajob",
            (Kind::Alert, Status::Dead) => "adead",
            (Kind::Batch, Status::Pending) => "job",
            (Kind::Batch, Status::Dead) => "dead",
        }
    }

    /// The kind whose pending directory is `dir`.
    fn of_pending_dir(dir: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.dir(Status::Pending) == dir)
    }
}

/// A job's identity within its bucket: what caused it, for which object (see the module
/// doc for its string form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WritebackId {
    /// `job/{batch_id}/{object_id}`.
    Batch { batch_id: BatchId, object_id: ObjectId },
    /// `ajob/{object_id}/{alert_id}`.
    Alert { object_id: ObjectId, alert_id: AlertId },
}

impl WritebackId {
    /// The ID of `job` (`None` for one without a cause, which hookline never makes).
    pub fn of(job: &Job) -> Option<WritebackId> {
        match (&job.alert_id, &job.batch_id) {
            (Some(a), _) => Some(WritebackId::Alert { object_id: job.object_id.clone(), alert_id: a.clone() }),
            (None, Some(b)) => Some(WritebackId::Batch { batch_id: b.clone(), object_id: job.object_id.clone() }),
            (None, None) => None,
        }
    }

    /// Decodes a `writeback_id`; `None` for anything [`fmt::Display`] would not have made.
    pub fn parse(s: &str) -> Option<WritebackId> {
        let encoded = s.strip_prefix(ID_PREFIX).filter(|e| s.len() <= MAX_ID_LEN && !e.is_empty())?;
        let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
        let (dir, rest) = std::str::from_utf8(&bytes).ok()?.split_once('/')?;
        let id = WritebackId::from_rest(Kind::of_pending_dir(dir)?, rest)?;
        // One string per job: base64 can carry the same bytes with other trailing bits.
        (id.to_string() == s).then_some(id)
    }

    /// Whether the IDs it is made of have the form hookline generates (an alert ID is the
    /// caller's): what a list's cursor must have, see `ids.rs`'s `is_generated`.
    pub fn of_generated_ids(&self) -> bool {
        match self {
            WritebackId::Batch { batch_id, object_id } => {
                BatchId::is_generated(batch_id.as_str()) && ObjectId::is_generated(object_id.as_str())
            }
            WritebackId::Alert { object_id, .. } => ObjectId::is_generated(object_id.as_str()),
        }
    }

    /// The job of `kind` whose key ends with `rest` (`{batch_id}/{object_id}` or
    /// `{object_id}/{alert_id}`).
    fn from_rest(kind: Kind, rest: &str) -> Option<WritebackId> {
        let (first, second) = rest.split_once('/')?;
        match kind {
            Kind::Batch => {
                Some(WritebackId::Batch { batch_id: BatchId::parse(first)?, object_id: ObjectId::parse(second)? })
            }
            // An alert ID never holds a `/`, so `second` is all of it.
            Kind::Alert => {
                Some(WritebackId::Alert { object_id: ObjectId::parse(first)?, alert_id: AlertId::parse(second)? })
            }
        }
    }

    /// The ID of the job stored under `key` (a key of the `wb` keyspace in `bucket`), and
    /// the job's status; `None` for a key this binary does not write.
    pub fn from_key(bucket: &BucketId, key: &str) -> Option<(Status, WritebackId)> {
        let (dir, rest) = key.strip_prefix(bucket.as_str())?.strip_prefix('/')?.split_once('/')?;
        let (kind, status) = Kind::ALL
            .into_iter()
            .flat_map(|k| [(k, Status::Pending), (k, Status::Dead)])
            .find(|(k, s)| k.dir(*s) == dir)?;
        Some((status, WritebackId::from_rest(kind, rest)?))
    }

    fn kind(&self) -> Kind {
        match self {
            WritebackId::Batch { .. } => Kind::Batch,
            WritebackId::Alert { .. } => Kind::Alert,
        }
    }

    /// The key's last two parts: where the job sorts within its kind.
    fn rest(&self) -> String {
        match self {
            WritebackId::Batch { batch_id, object_id } => format!("{batch_id}/{object_id}"),
            WritebackId::Alert { object_id, alert_id } => format!("{object_id}/{alert_id}"),
        }
    }

    /// The job's key in `bucket` while it has `status` (the same as `Job::key` and
    /// `Job::dead_key` of the job it names).
    pub fn key(&self, bucket: &BucketId, status: Status) -> String {
        format!("{}/{}/{}", bucket.as_str(), self.kind().dir(status), self.rest())
    }

    pub fn object_id(&self) -> &ObjectId {
        match self {
            WritebackId::Batch { object_id, .. } | WritebackId::Alert { object_id, .. } => object_id,
        }
    }
}

impl fmt::Display for WritebackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = format!("{}/{}", self.kind().dir(Status::Pending), self.rest());
        write!(f, "{ID_PREFIX}{}", URL_SAFE_NO_PAD.encode(key))
    }
}

/// A job as the API shows it. `next_attempt_at` is null for a dead job; `table` and `schema`
/// (Supabase: where the row lives) are left out when the job has none.
pub fn view(status: Status, id: &WritebackId, job: &Job) -> Value {
    let mut v = json!({
        "writeback_id": id.to_string(),
        "status": status,
        "object_id": id.object_id(),
        "external_id": job.external_id,
        "fields": job.fields,
        "attempts": job.attempts,
        "created_at": millis_to_rfc3339(job.created_at_ms),
        "next_attempt_at": (status == Status::Pending).then(|| millis_to_rfc3339(job.next_attempt_ms)),
        "last_error": job.last_error,
    });
    match id {
        WritebackId::Batch { batch_id, .. } => v["batch_id"] = json!(batch_id),
        WritebackId::Alert { alert_id, .. } => v["alert_id"] = json!(alert_id),
    }
    for (name, value) in [("table", &job.table), ("schema", &job.schema)] {
        if let Some(x) = value {
            v[name] = json!(x);
        }
    }
    v
}

/// The job `id` of `bucket` as it is now: pending, dead, or `None` (never made, or written
/// back and gone).
pub fn find(store: &Store, bucket: &BucketId, id: &WritebackId) -> Result<Option<(Status, Job)>, StoreError> {
    read_now(store, bucket, id, &[Status::Pending, Status::Dead])
}

/// The order in which a job's directories are read when `statuses` are asked for: with both,
/// pending, dead, then pending again. A job moves between them in one atomic write, but two
/// reads are not one snapshot: a retry (dead → pending) landing between the pending read and
/// the dead one would hide the job from both, and the third read finds it. (A give-up,
/// pending → dead, in that gap is found by the dead read.)
fn read_order(statuses: &[Status]) -> &[Status] {
    match statuses {
        [Status::Pending, Status::Dead] => &[Status::Pending, Status::Dead, Status::Pending],
        other => other,
    }
}

/// The job `id` in the first of `statuses` (see [`read_order`]) that holds it.
fn read_now(
    store: &Store,
    bucket: &BucketId,
    id: &WritebackId,
    statuses: &[Status],
) -> Result<Option<(Status, Job)>, StoreError> {
    for s in read_order(statuses) {
        if let Some(job) = store.get::<Job>(KS, &id.key(bucket, *s))? {
            return Ok(Some((*s, job)));
        }
    }
    Ok(None)
}

/// Visits the jobs of `bucket` (those with `status` when given) in list order (see the
/// module doc), strictly after the job `after` when given; `f` returns `false` to stop.
/// Keys are read `chunk` at a time per directory (a page's limit and one more is enough),
/// and a job's record only when it is visited.
pub fn for_each(
    store: &Store,
    bucket: &BucketId,
    status: Option<Status>,
    after: Option<&WritebackId>,
    chunk: usize,
    mut f: impl FnMut(Status, &WritebackId, Job) -> bool,
) -> Result<(), StoreError> {
    // A kind's directories are merged without repeats and each job read as it is now
    // (pending first, see [`read_order`]), so a job re-queued meanwhile is shown once.
    let statuses = match status {
        Some(s) => vec![s],
        None => vec![Status::Pending, Status::Dead],
    };
    for kind in Kind::ALL {
        let mut from = match after {
            Some(a) if a.kind() > kind => continue,
            Some(a) if a.kind() == kind => Some(a.rest()),
            _ => None,
        };
        loop {
            let (rests, more) = next_rests(store, bucket, kind, &statuses, from.as_deref(), chunk.max(1))?;
            for rest in rests {
                let id = WritebackId::from_rest(kind, &rest);
                from = Some(rest);
                let Some(id) = id else { continue };
                if let Some((s, job)) = read_now(store, bucket, &id, &statuses)? {
                    if !f(s, &id, job) {
                        return Ok(());
                    }
                }
            }
            if !more {
                break;
            }
        }
    }
    Ok(())
}

/// The first `n` key ends (see [`WritebackId::rest`]) after `from` in the directories of
/// `kind` for `statuses`, merged in order without repeats, and whether more may follow. Each
/// directory gives its first `n`, so the first `n` of their union are exact.
fn next_rests(
    store: &Store,
    bucket: &BucketId,
    kind: Kind,
    statuses: &[Status],
    from: Option<&str>,
    n: usize,
) -> Result<(Vec<String>, bool), StoreError> {
    let mut rests = BTreeSet::new();
    let mut more = false;
    // Directories scanned one after the other, as jobs are read (see [`read_order`]).
    for s in read_order(statuses) {
        let prefix = format!("{}/{}/", bucket.as_str(), kind.dir(*s));
        let after = from.map(|r| format!("{prefix}{r}"));
        let mut seen = 0;
        store.for_each_key_after(KS, &prefix, after.as_deref(), |k| {
            rests.insert(k[prefix.len()..].to_string());
            seen += 1;
            seen < n
        })?;
        more |= seen >= n;
    }
    more |= rests.len() > n;
    Ok((rests.into_iter().take(n).collect(), more))
}

/// Why a job cannot be re-queued.
#[derive(Debug, thiserror::Error)]
pub enum RequeueError {
    #[error("writeback {id} not found in bucket {bucket_id}")]
    NotFound { bucket_id: BucketId, id: String },
    /// Still being tried, with no worker running to hurry it (its next attempt is in the list).
    #[error(
        "writeback {id} is pending, and no writeback worker runs to send it now (writeback is off, or the source \
         adapter is stopped): it is tried on its own schedule once one runs (next_attempt_at in GET …/writebacks)"
    )]
    Pending { id: String },
    /// Another type of adapter's job, or one of an object another type made: re-queued, it
    /// could only fail again at once (see `Job::queued_by`).
    #[error("writeback {id} cannot be retried by this adapter: {why}")]
    OtherType { id: String, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<RequeueError> for ApiError {
    fn from(e: RequeueError) -> Self {
        match e {
            e @ RequeueError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            e @ (RequeueError::Pending { .. } | RequeueError::OtherType { .. }) => ApiError::Conflict(e.to_string()),
            RequeueError::Store(e) => e.into(),
        }
    }
}

/// The pending job `id` of `bucket`, with its store key, if it is pending.
pub fn pending(store: &Store, bucket: &BucketId, id: &WritebackId) -> Result<Option<(String, Job)>, StoreError> {
    let key = id.key(bucket, Status::Pending);
    Ok(store.get::<Job>(KS, &key)?.map(|job| (key, job)))
}

/// The re-queue of the dead job `id` of `bucket` at `now_ms` (see the module doc): the batch
/// that makes it pending again, and the job as that batch stores it. Call it after a barrier
/// (an awaited empty commit), so the worker's latest outcomes are read: a job it is giving
/// up on right now is pending until that outcome is written (a 409, not a lost retry).
pub fn requeue(
    store: &Store,
    bucket: &BucketId,
    adapter: &SourceAdapter,
    id: &WritebackId,
    now_ms: u64,
) -> Result<(Batch, Job), RequeueError> {
    let pending = id.key(bucket, Status::Pending);
    if store.contains(KS, &pending)? {
        return Err(RequeueError::Pending { id: id.to_string() });
    }
    let dead = id.key(bucket, Status::Dead);
    let Some(job) = store.get::<Job>(KS, &dead)? else {
        return Err(RequeueError::NotFound { bucket_id: bucket.clone(), id: id.to_string() });
    };
    // Mapped again: the fix an operator retries after may be the adapter's mapping.
    let mut job = super::job::remapped(store, bucket, adapter, job)?;
    if let Some(why) = job.barred_for(adapter.adapter_type) {
        return Err(RequeueError::OtherType { id: id.to_string(), why });
    }
    job.attempts = 0;
    // Its place among its row's jobs stays its cause's (see `worker.rs`).
    job.caused_at_ms = Some(job.caused_at_ms.unwrap_or(job.created_at_ms));
    job.created_at_ms = now_ms;
    job.next_attempt_ms = now_ms;
    let mut batch = Batch::new();
    batch.delete(KS, &dead);
    batch.put(KS, &pending, &job);
    Ok((batch, job))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(batch_id: Option<BatchId>, alert_id: Option<AlertId>) -> Job {
        Job {
            object_id: ObjectId::generate(),
            batch_id,
            alert_id,
            external_id: Some("42".into()),
            fields: serde_json::Map::new(),
            queued_by: None,
            object_from: None,
            table: None,
            schema: None,
            created_at_ms: 1_000,
            caused_at_ms: None,
            attempts: 5,
            next_attempt_ms: 2_000,
            last_error: Some("the target answered HTTP 500".into()),
        }
    }

    fn id_of(j: &Job) -> WritebackId {
        WritebackId::of(j).expect("a test job has a cause")
    }

    /// A cursor of the writebacks list is a `writeback_id` of generated IDs: one made of
    /// `obj_1` (it decodes) would be read as a position all the same.
    #[test]
    fn only_ids_of_generated_form_make_a_cursor() {
        let made = WritebackId::Batch { batch_id: BatchId::generate(), object_id: ObjectId::generate() };
        assert!(WritebackId::parse(&made.to_string()).is_some_and(|id| id.of_generated_ids()));
        let forged = WritebackId::Batch {
            batch_id: BatchId::generate(),
            object_id: ObjectId::parse("obj_1").expect("a parsable ID"),
        };
        assert!(WritebackId::parse(&forged.to_string()).is_some_and(|id| !id.of_generated_ids()));
        let alert = WritebackId::Alert { object_id: ObjectId::generate(), alert_id: AlertId::parse("Mine-1").unwrap() };
        assert!(alert.of_generated_ids(), "an alert ID is the caller's");
    }

    #[test]
    fn an_id_round_trips_and_names_the_jobs_keys() {
        let bucket = BucketId::generate();
        let jobs = [
            job(Some(BatchId::generate()), None),
            job(None, Some(AlertId::generate())),
            // A caller's alert ID with every character it may hold.
            job(None, Some(AlertId::parse("run-7:verdict.v2_final").unwrap())),
            job(None, Some(AlertId::parse(&"z".repeat(AlertId::MAX_LEN)).unwrap())),
        ];
        for j in &jobs {
            let id = id_of(j);
            let s = id.to_string();
            assert!(s.starts_with("wb_") && s.len() <= MAX_ID_LEN, "{s}");
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "URL-path safe: {s}");
            assert_eq!(WritebackId::parse(&s).as_ref(), Some(&id), "{s}");
            assert_eq!(id.key(&bucket, Status::Pending), j.key(&bucket));
            assert_eq!(id.key(&bucket, Status::Dead), j.dead_key(&bucket));
            assert_eq!(WritebackId::from_key(&bucket, &j.key(&bucket)), Some((Status::Pending, id.clone())));
            assert_eq!(WritebackId::from_key(&bucket, &j.dead_key(&bucket)), Some((Status::Dead, id.clone())));
        }
        // The documented form: the pending key's end, base64url without padding.
        let alert = WritebackId::Alert {
            object_id: ObjectId::parse("obj_1").unwrap(),
            alert_id: AlertId::parse("a:b.c").unwrap(),
        };
        assert_eq!(alert.to_string(), format!("wb_{}", URL_SAFE_NO_PAD.encode("ajob/obj_1/a:b.c")));
    }

    #[test]
    fn garbage_is_no_id() {
        let ok = id_of(&job(Some(BatchId::generate()), None)).to_string();
        let enc = |s: &str| format!("wb_{}", URL_SAFE_NO_PAD.encode(s));
        // 17 bytes: one `=` of padding.
        let padded = format!("wb_{}", base64::engine::general_purpose::URL_SAFE.encode("job/batch_1/obj_1"));
        assert!(padded.ends_with('='));
        let other_bits = {
            // The same bytes, spelled with other trailing bits: 13 bytes leave the last
            // character 2 bits of data and 4 spare ones (zero in the canonical form).
            const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let s = enc("ajob/obj_1/ab");
            assert!(WritebackId::parse(&s).is_some(), "canonical: {s}");
            let last = ALPHABET.iter().position(|c| s.ends_with(*c as char)).unwrap();
            format!("{}{}", &s[..s.len() - 1], ALPHABET[last | 1] as char)
        };
        for bad in [
            String::new(),
            "wb_".into(),
            ok.trim_start_matches("wb_").to_string(),
            format!("xx_{}", ok.trim_start_matches("wb_")),
            format!("{ok}="),
            padded,
            other_bits,
            "wb_!!!".into(),
            format!("wb_{}", "A".repeat(MAX_ID_LEN)),
            enc("dead/batch_1/obj_1"),
            enc("job/batch_1"),
            enc("job/obj_1/batch_1"),
            enc("job/batch_1/obj_1/x"),
            enc("ajob/obj_1/a/b"),
            enc("ajob/obj_1/"),
            enc("ajob/obj_1/a b"),
            format!("wb_{}", URL_SAFE_NO_PAD.encode([0xff, 0xfe, b'/', b'x'])),
        ] {
            assert_eq!(WritebackId::parse(&bad), None, "{bad:?}");
        }
        let bucket = BucketId::generate();
        let b = bucket.as_str();
        for key in [format!("{b}/nope/batch_1/obj_1"), format!("{b}/job//obj_1"), "bkt_other/job/batch_1/obj_1".into()]
        {
            assert_eq!(WritebackId::from_key(&bucket, &key), None, "{key}");
        }
    }

    #[test]
    fn the_view_shows_the_job_by_its_status() {
        let mut j = job(None, Some(AlertId::parse("review-7").unwrap()));
        j.table = Some("listings".into());
        let id = id_of(&j);
        let dead = view(Status::Dead, &id, &j);
        assert_eq!(dead["status"], "dead");
        assert_eq!(dead["writeback_id"], id.to_string());
        assert_eq!(dead["alert_id"], "review-7");
        assert!(dead.get("batch_id").is_none() && dead.get("schema").is_none(), "{dead}");
        assert_eq!(dead["table"], "listings");
        assert_eq!(dead["next_attempt_at"], Value::Null);
        assert_eq!(dead["created_at"], "1970-01-01T00:00:01Z");
        assert_eq!(dead["last_error"], "the target answered HTTP 500");
        let pending = view(Status::Pending, &id, &j);
        assert_eq!(pending["next_attempt_at"], "1970-01-01T00:00:02Z");
    }

    #[tokio::test]
    async fn a_dead_job_is_requeued_and_listed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let bucket = BucketId::generate();
        let batch_job = job(Some(BatchId::generate()), None);
        let alert_job = job(None, Some(AlertId::parse("a-1").unwrap()));
        let pending_job = job(Some(BatchId::generate()), None);
        let mut b = Batch::new();
        b.put(KS, &batch_job.dead_key(&bucket), &batch_job);
        b.put(KS, &alert_job.dead_key(&bucket), &alert_job);
        b.put(KS, &pending_job.key(&bucket), &pending_job);
        // Another bucket's job is not this one's.
        b.put(KS, &pending_job.key(&BucketId::generate()), &pending_job);
        store.commit(b).await.unwrap();

        let list = |status: Option<Status>, after: Option<&WritebackId>, n: usize| {
            let mut out = Vec::new();
            for_each(&store, &bucket, status, after, n, |s, id, _| {
                out.push((s, id.clone()));
                true
            })
            .unwrap();
            out
        };
        let all = list(None, None, 1);
        let (a, b1, b2) = (id_of(&alert_job), id_of(&batch_job), id_of(&pending_job));
        assert_eq!(all, [(Status::Dead, a.clone()), (Status::Dead, b1.clone()), (Status::Pending, b2.clone())]);
        assert_eq!(list(None, None, 100), all, "the same whatever the scan's chunk");
        assert_eq!(list(Some(Status::Dead), None, 1), all[..2]);
        assert_eq!(list(Some(Status::Pending), None, 1), all[2..]);
        assert_eq!(list(None, Some(&a), 1), all[1..], "after a cursor");
        assert_eq!(list(None, Some(&b1), 1), all[2..]);

        // No writeback to map the jobs with: they are re-queued as they are.
        let adapter = crate::adapter::pipeline::tests::adapter(json!({"adapter_type": "generic_webhook"}));
        let requeue = |id: &WritebackId| requeue(&store, &bucket, &adapter, id, 9_000);
        let err = requeue(&b2).unwrap_err();
        assert!(matches!(err, RequeueError::Pending { .. }), "{err}");
        let unknown = id_of(&job(Some(BatchId::generate()), None));
        assert!(matches!(requeue(&unknown), Err(RequeueError::NotFound { .. })));

        let (batch, requeued) = requeue(&b1).unwrap();
        assert_eq!((requeued.attempts, requeued.created_at_ms, requeued.next_attempt_ms), (0, 9_000, 9_000));
        assert_eq!(requeued.caused_at_ms, Some(1_000), "its place among its row's jobs is its cause's");
        assert_eq!(requeued.last_error, batch_job.last_error, "kept until the next attempt replaces it");
        store.commit(batch).await.unwrap();
        assert_eq!(store.get::<Job>(KS, &batch_job.key(&bucket)).unwrap(), Some(requeued));
        assert!(!store.contains(KS, &batch_job.dead_key(&bucket)).unwrap());
        assert_eq!(list(None, None, 1)[1], (Status::Pending, b1), "same place, now pending");
    }
}
