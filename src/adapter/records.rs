//! What the inbound side keeps in the store, and the keys it keeps it under.
//!
//! | keyspace | key | value |
//! |---|---|---|
//! | `obj` | `{bucket_id}/{object_id}` | [`ObjectRecord`] |
//! | `batch` | `{bucket_id}/{batch_id}` | [`BatchRecord`] |
//! | `buf` | `{bucket_id}/{object_id}` | [`BufferEntry`] (accepted, not yet flushed) |
//! | `dkey` | `{bucket_id}/{object_id}` | sha256 of a dedup value no live record carries (hex string; `@{generation}` after it for a set not in force) |
//! | `dpage` | `{bucket_id}/{object_id}` | [`DedupPage`]: keys up to that object's, as accepted |
//! | `stats` | `{bucket_id}/adapter` | [`AdapterStats`] |
//! | `xref` | `{bucket_id}/{object_id}` | sha256 of the object's external id (hex string) |
//! | `xref` | `{bucket_id}/unindexed` | a string: the objects may lack `xref` entries (see below) |
//!
//! The dedup set is the dedup keys ([`DedupMark`]) that objects and buffer entries carry in
//! their own records, plus `dkey`: the keys of deleted objects and entries (a deleted
//! object's event stays a duplicate), Mux tombstones (keyed by an object ID no object has),
//! and the keys format 5 wrote for every object. A key lives in the record because
//! an entry of its own was a second sled insert per ingest, the largest single cost left in
//! the ingest profile (format 6; older objects' keys are in `dkey`, where format 5 put every
//! key). The mark is stored, never shown: the API and event payloads show
//! [`ObjectRecord::shown`]. A mark names the bucket's `dedup_generation` it was made under:
//! when the dedup path changes, the PATCH puts another generation in force (a new one, or
//! the one kept for the scope it goes back to: see `Bucket::switch_dedup`), and marks of
//! other generations no longer count, with no object rewritten. Its `dkey` entries are
//! tagged with the generation left (`{hash}@{generation}`; an untagged entry is of the
//! generation in force), those of a generation the bucket no longer keeps deleted, and its
//! `dpage` entries deleted: an actor whose set is one kept from before has no pages of it,
//! so its start reads every object's mark.
//!
//! So that an actor's start need not read every object for its mark (a scan of the whole
//! bucket, whose pages then fill sled's cache), the actor also writes the keys it accepts
//! in pages: every [`PAGE_KEYS`]th key's batch adds a `dpage` entry with the keys accepted
//! since the last one, keyed by the last one's object ID. At start it reads the pages, and
//! the marks only of the objects and buffer entries after the last page, then pages what it
//! read (keys or not) under the newest ID read, so the next start does not read it again
//! (`lifecycle::page_loaded_keys`), merged with the short page an earlier start left: at
//! most one page of fewer than [`PAGE_KEYS`] keys is left after a start. IDs made after
//! that sort after every ID read, whatever the clock says (`ids::generate_after`).
//!
//! `xref` is the external-ID index, which maps an upstream's ID (a
//! Mux asset, a Supabase row) to the objects made from it so lifecycle events (update,
//! delete) find them. Objects are indexed when made only by adapter types whose events do
//! that (mux, supabase): generic_webhook's only ever create, and an index entry was a sled
//! insert per ingest for nothing. When such a type takes a bucket over from none or from
//! generic_webhook, the PATCH marks the bucket `unindexed` and its actor, as it starts,
//! indexes the objects already there (`lifecycle::index_unindexed`), so its events reach
//! every object whose external ID they name (the mark is no object ID: loading skips it);
//! entries older versions wrote for generic objects are kept and used. The adapter actor
//! holds the dedup set and the index in memory, by hash, and loads them with scans when it
//! starts. On disk `dkey` and `xref` are keyed by object ID on purpose: IDs are time-ordered,
//! so every write appends at the end of the tree, where keyed by hash each landed on a
//! random page, which cost sled several times more per insert. An `xref` entry is written in
//! the same batch as its object or buffer entry and deleted with its object (and replaced,
//! in the batch that re-keys it, when a Supabase UPDATE changes the row's primary key); a
//! `dkey` entry is written in the batch that deletes its object (or, a tombstone, by the
//! Mux delete that found no object) and goes only with the bucket or a change of dedup path.
//! Object and batch IDs are time-ordered, so key order is creation order (cursor pagination).
//! The bucket registry deletes every `{bucket_id}/` prefix with the bucket.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::catalog::{Bucket, ProviderType};
use crate::ids::{BatchId, BucketId, ObjectId};
use crate::store::{Batch, Keyspace};

/// `{bucket_id}/{id}`, allocated once at its final size (`format!` grows its buffer).
pub fn key(bucket: &BucketId, id: &str) -> String {
    [bucket.as_str(), "/", id].concat()
}

pub fn prefix(bucket: &BucketId) -> String {
    format!("{}/", bucket.as_str())
}

pub const STATS_KEY: &str = "adapter";

/// The dedup set's key for a dedup value: fixed length whatever the upstream sends.
pub fn dedup_hash(value: &str) -> String {
    const_hex::encode(Sha256::digest(value.as_bytes()))
}

/// [`dedup_hash`] of a dedup value that held lone surrogate halves, as
/// `lenient::parse_keeping_lone_surrogates` keeps them: digested after a byte that no UTF-8
/// text holds (0xFF), so that it is no other value's key, whatever that value spells.
pub fn dedup_hash_with_lone_halves(kept: &str) -> String {
    const_hex::encode(Sha256::new().chain_update([0xFF]).chain_update(kept.as_bytes()).finalize())
}

/// A map keyed by [`dedup_hash`] digests (the dedup set, the external-ID index), each held as
/// the 32 bytes its hex encodes: the dedup set grows with every object, and a 64-character
/// `String` per key cost about 75 bytes more an entry (745 against 797 MB of resident memory
/// after 700,000 time_window ingests), an allocation per insert, and a pointer to follow for
/// every probe and every rehash of the table. foldhash rather than std's SipHash: rehashing with
/// SipHash showed in the ingest profile. SipHash guards against keys crafted to collide;
/// these keys are SHA-256 digests hashed with a per-process random seed, which no sender can
/// steer. Callers keep using the hex strings the store holds.
#[derive(Debug, Clone)]
pub struct DigestMap<V>(foldhash::HashMap<DigestKey, V>);

/// A [`dedup_hash`] digest as bytes (see [`DigestMap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DigestKey([u8; 32]);

impl DigestKey {
    /// The digest a [`dedup_hash`] string encodes. Anything else (nothing the daemon stores;
    /// tests' short names) is keyed by its own digest, so equal strings still meet.
    pub fn of(hash: &str) -> DigestKey {
        DigestKey(const_hex::decode_to_array(hash).unwrap_or_else(|_| Sha256::digest(hash.as_bytes()).into()))
    }
}

impl<V> Default for DigestMap<V> {
    fn default() -> Self {
        DigestMap(foldhash::HashMap::default())
    }
}

impl<V> DigestMap<V> {
    pub fn get(&self, hash: &str) -> Option<&V> {
        self.0.get(&DigestKey::of(hash))
    }

    pub fn get_mut(&mut self, hash: &str) -> Option<&mut V> {
        self.0.get_mut(&DigestKey::of(hash))
    }

    pub fn contains_key(&self, hash: &str) -> bool {
        self.0.contains_key(&DigestKey::of(hash))
    }

    pub fn insert(&mut self, hash: &str, value: V) -> Option<V> {
        self.0.insert(DigestKey::of(hash), value)
    }

    pub fn remove(&mut self, hash: &str) -> Option<V> {
        self.0.remove(&DigestKey::of(hash))
    }

    pub fn entry(&mut self, hash: &str) -> std::collections::hash_map::Entry<'_, DigestKey, V> {
        self.0.entry(DigestKey::of(hash))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An object's (or buffer entry's) key in its bucket's dedup set, kept in its record (see
/// the module doc). Stored, never shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupMark {
    /// [`dedup_hash`] of the dedup value.
    pub hash: String,
    /// The bucket's `dedup_generation` when it was made: a mark of another one is of a set
    /// not in force (before a change of dedup path, or after one that was set back).
    #[serde(default, skip_serializing_if = "crate::util::is_zero")]
    pub generation: u64,
}

impl DedupMark {
    pub fn new(hash: String, bucket: &Bucket) -> DedupMark {
        DedupMark { hash, generation: bucket.dedup_generation }
    }

    /// In the bucket's dedup set now (not from before a change of dedup path).
    pub fn counts_in(&self, bucket: &Bucket) -> bool {
        self.generation == bucket.dedup_generation
    }
}

/// Keys per [`DedupPage`]: a page is one write of about 25 KB per this many accepted keys,
/// and an actor's start reads the marks of the objects made since the last page (fewer
/// than this many keys, and objects without one). (Pages of
/// 1,024 keys cost the ingest bench more CPU per request, and 1.5 ms more at p99, than pages
/// of 256: each is one larger log record and more sled pieces in one go.)
pub const PAGE_KEYS: usize = 256;

/// A page of dedup keys (see the module doc), oldest first, as one string of
/// `{object_id}:{hash},` per key: written as one value per [`PAGE_KEYS`] ingests, a string
/// serializes in a fraction of the time a list of pairs took (which showed in the ingest
/// profile), and appending to it allocates nothing per key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DedupPage {
    /// The bucket's `dedup_generation` its keys were accepted under (see [`DedupMark`]).
    #[serde(default, skip_serializing_if = "crate::util::is_zero")]
    pub generation: u64,
    keys: String,
    #[serde(skip)]
    len: usize,
}

impl DedupPage {
    pub fn new(bucket: &Bucket) -> DedupPage {
        DedupPage { generation: bucket.dedup_generation, ..DedupPage::default() }
    }

    pub fn push(&mut self, object_id: &ObjectId, hash: &str) {
        if self.keys.is_empty() {
            self.keys.reserve(PAGE_KEYS * (object_id.as_str().len() + hash.len() + 2));
        }
        for part in [object_id.as_str(), ":", hash, ","] {
            self.keys.push_str(part);
        }
        self.len += 1;
    }

    /// Pushes a key; once the page holds [`PAGE_KEYS`], puts it in `batch` under that key's
    /// object ID and starts a fresh page of `bucket`'s generation. Returns the stored key of
    /// the page put, if one was.
    pub fn add(&mut self, bucket: &Bucket, batch: &mut Batch, object_id: &ObjectId, hash: &str) -> Option<String> {
        self.push(object_id, hash);
        if self.len < PAGE_KEYS {
            return None;
        }
        let full = std::mem::replace(self, DedupPage::new(bucket));
        let page_key = key(&bucket.bucket_id, object_id.as_str());
        batch.put(Keyspace::DEDUP_PAGES, &page_key, &full);
        Some(page_key)
    }

    /// How many keys were pushed (0 for a page read back: count [`DedupPage::keys`]).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, oldest first; `Err` with the entry for one that does not read as a key
    /// (a damaged page: its keys would be lost).
    pub fn keys(&self) -> impl Iterator<Item = Result<(ObjectId, &str), String>> {
        self.keys.split(',').filter(|k| !k.is_empty()).map(|k| {
            let (oid, hash) = k.split_once(':').ok_or_else(|| k.to_string())?;
            Ok((ObjectId::parse(oid).ok_or_else(|| k.to_string())?, hash))
        })
    }
}

/// How a stored [`ObjectRecord`] with a dedup mark starts (the mark is its first field).
pub const MARK_FIRST: &[u8] = b"{\"dedup\":";

/// The dedup mark of a stored object record read from the start of its JSON, without
/// parsing the rest: `Ok(None)` for a record without one.
pub fn mark_of_stored(record: &[u8]) -> serde_json::Result<Option<DedupMark>> {
    let Some(rest) = record.strip_prefix(MARK_FIRST) else {
        return Ok(None);
    };
    serde_json::Deserializer::from_slice(rest).into_iter::<DedupMark>().next().transpose()
}

/// The write that keeps a deleted object's (or buffer entry's) dedup key in the dedup set,
/// added to the batch that deletes it: a retry of its event stays a duplicate. A key of a
/// set kept from before (not in force) is kept for it, tagged with its generation.
pub fn keep_dedup_key(batch: &mut Batch, bucket: &Bucket, object_id: &ObjectId, mark: Option<&DedupMark>) {
    let Some(mark) = mark else { return };
    let key = key(&bucket.bucket_id, object_id.as_str());
    if mark.counts_in(bucket) {
        batch.put(Keyspace::DEDUP, &key, &mark.hash);
    } else if bucket.keeps_dedup_generation(mark.generation) {
        batch.put(Keyspace::DEDUP, &key, &tagged_dkey(&mark.hash, mark.generation));
    }
}

/// A `dkey` value of a key accepted under dedup `generation` while another is in force.
fn tagged_dkey(hash: &str, generation: u64) -> String {
    format!("{hash}@{generation}")
}

/// A stored `dkey` value read: its hash and, when tagged, the generation the tag names
/// (`Some(None)`: a tag that does not read as one, which counts in no set).
fn read_dkey(value: &str) -> (&str, Option<Option<u64>>) {
    match value.rsplit_once('@') {
        None => (value, None),
        Some((hash, generation)) => (hash, Some(generation.parse().ok())),
    }
}

/// The dedup key a stored `dkey` value holds, if it counts in the bucket's set in force:
/// untagged (accepted under the generation in force: see [`keep_dedup_keys`]) or tagged
/// with that generation.
pub fn dkey_in_force<'a>(bucket: &Bucket, value: &'a str) -> Option<&'a str> {
    match read_dkey(value) {
        (hash, None) => Some(hash),
        (hash, Some(generation)) => (generation == Some(bucket.dedup_generation)).then_some(hash),
    }
}

/// At a switch of the dedup set in force (`bucket` as switched, `left` the generation it
/// left): the untagged `dkey` entries, which were the set left, are tagged with `left`, those
/// of the set now in force (one kept from before) untagged, and the entries of a generation
/// the bucket no longer keeps deleted. So an untagged entry is always of the set in force.
pub fn keep_dedup_keys(
    store: &crate::store::Store,
    batch: &mut Batch,
    bucket: &Bucket,
    left: u64,
) -> Result<(), crate::store::StoreError> {
    store.for_each::<String>(Keyspace::DEDUP, &prefix(&bucket.bucket_id), |k, value| {
        match read_dkey(&value) {
            (_, None) if !bucket.keeps_dedup_generation(left) => batch.delete(Keyspace::DEDUP, k),
            (hash, None) => {
                batch.put(Keyspace::DEDUP, k, &tagged_dkey(hash, left));
            }
            (_, Some(Some(g))) if !bucket.keeps_dedup_generation(g) => batch.delete(Keyspace::DEDUP, k),
            (hash, Some(Some(g))) if g == bucket.dedup_generation => {
                batch.put(Keyspace::DEDUP, k, hash);
            }
            // Kept for its own set, or an unreadable tag (counts in no set): left as it is.
            _ => {}
        }
        true
    })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobRef {
    pub property: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectSource {
    pub adapter_type: ProviderType,
    pub external_id: Option<String>,
    pub event_type: Option<String>,
    /// Supabase: the table and schema of the row (where a writeback PATCHes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
}

/// An object's content before it has an ID and timestamps (what a buffer entry holds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Draft {
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub blobs: Vec<BlobRef>,
    pub source: ObjectSource,
}

impl Draft {
    /// Takes the mapped content of a newer draft of the same upstream thing (see [`refresh`]).
    pub fn refresh(&mut self, newer: Draft) {
        refresh(&mut self.metadata, &mut self.blobs, &mut self.source, newer);
    }
}

/// What a newer event about the same upstream thing replaces, for a buffered draft and a
/// stored object alike: metadata and blobs; the external ID and adapter type stay, the event
/// type becomes the latest one.
fn refresh(
    metadata: &mut serde_json::Map<String, serde_json::Value>,
    blobs: &mut Vec<BlobRef>,
    source: &mut ObjectSource,
    newer: Draft,
) {
    *metadata = newer.metadata;
    *blobs = newer.blobs;
    source.event_type = newer.source.event_type;
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Its key in the dedup set (none without a dedup value, or from before format 6: then
    /// the key is in `dkey`). Kept through updates; never shown (see [`ObjectRecord::shown`]).
    /// The first field on purpose: stored, a marked record starts with [`MARK_FIRST`], so an
    /// actor's start reads the marks of a bucket's objects without parsing them whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupMark>,
    pub object_id: ObjectId,
    pub bucket_id: BucketId,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    pub blobs: Vec<BlobRef>,
    pub source: ObjectSource,
    /// The batch that created it (time_window and count modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<BatchId>,
    pub created_at: String,
    pub updated_at: String,
}

impl ObjectRecord {
    pub fn new(
        object_id: ObjectId,
        bucket_id: BucketId,
        draft: Draft,
        batch_id: Option<BatchId>,
        dedup: Option<DedupMark>,
    ) -> ObjectRecord {
        let now = crate::util::now_rfc3339();
        ObjectRecord {
            object_id,
            bucket_id,
            metadata: draft.metadata,
            blobs: draft.blobs,
            source: draft.source,
            batch_id,
            created_at: now.clone(),
            updated_at: now,
            dedup,
        }
    }

    /// Replaces the mapped content with a newer draft of the same upstream thing (see
    /// [`refresh`]).
    pub fn apply(&mut self, draft: Draft) {
        refresh(&mut self.metadata, &mut self.blobs, &mut self.source, draft);
        self.updated_at = crate::util::now_rfc3339();
    }

    /// The object as the API, event payloads and writeback documents show it: the record
    /// without its dedup mark.
    pub fn shown(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut v {
            m.remove("dedup");
        }
        v
    }

    /// The `object.created` / `object.updated` / `object.deleted` payload: the object snapshot.
    pub fn event_payload(&self) -> serde_json::Value {
        self.shown()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Flushed, waiting for `POST …/submit` (auto_submit off).
    Pending,
    Submitted,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub batch_id: BatchId,
    pub bucket_id: BucketId,
    pub object_ids: Vec<ObjectId>,
    pub status: BatchStatus,
    pub created_at: String,
    pub submitted_at: Option<String>,
    pub completed_at: Option<String>,
    /// Objects of the batch deleted before its submit: taken out of `object_ids` then, as
    /// `batch.completed` leaves them out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_object_ids: Vec<ObjectId>,
}

impl BatchRecord {
    /// Submits the batch. There is no processor yet, so a submitted batch completes at
    /// once; the caller records `batch.completed` with [`BatchRecord::completed_payload`].
    pub fn submit(&mut self) {
        let now = crate::util::now_rfc3339();
        self.status = BatchStatus::Completed;
        self.submitted_at = Some(now.clone());
        self.completed_at = Some(now);
    }

    /// The `batch.completed` payload. `deleted`: the batch's objects deleted before it
    /// completed (a pending batch waits for its submit): not among `object_ids`, counted
    /// apart, so `succeeded + failed + deleted = objects`.
    pub fn completed_payload(&self, deleted: &[ObjectId]) -> serde_json::Value {
        let completed: Vec<&ObjectId> = self.object_ids.iter().filter(|id| !deleted.contains(id)).collect();
        serde_json::json!({
            "batch_id": self.batch_id,
            "bucket_id": self.bucket_id,
            "object_ids": completed,
            "collection_ids": [],
            "counts": {"objects": self.object_ids.len(), "succeeded": completed.len(), "failed": 0,
                       "deleted": self.object_ids.len() - completed.len()},
        })
    }
}

/// An accepted event waiting for its batch. The object ID is assigned on acceptance so a
/// duplicate can name it before the flush.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferEntry {
    pub object_id: ObjectId,
    pub received_at_ms: u64,
    pub draft: Draft,
    /// Its key in the dedup set, passed to its object at the flush (see [`ObjectRecord`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupMark>,
}

impl BufferEntry {
    /// Why an ID answered as `buffered` is not an object yet, and when it will be: "object
    /// … is buffered: it is created when its batch flushes (by …)". Callers add what to do.
    pub fn not_yet_note(&self, batching: Option<&crate::adapter::spec::Batching>) -> String {
        let when = match batching {
            Some(b) if b.mode == crate::adapter::spec::BatchMode::TimeWindow => {
                let due_ms = self.received_at_ms + b.window_seconds * 1000;
                format!("by {}", crate::util::millis_to_rfc3339(due_ms))
            }
            _ => "once its batch is full".to_string(),
        };
        format!("object {} is buffered: it is created when its batch flushes ({when})", self.object_id)
    }
}

/// Hourly counters over the last 24 hours, plus the last flush and error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdapterStats {
    /// `(unix hour, processed, failed)`, oldest first, at most 24 entries.
    pub hours: Vec<(u64, u64, u64)>,
    pub last_flush_at: Option<String>,
    pub last_error: Option<String>,
    /// When `last_error` happened (absent for errors stored before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
}

impl AdapterStats {
    const HOUR_MS: u64 = 3_600_000;

    fn slot(&mut self, now_ms: u64) -> &mut (u64, u64, u64) {
        let hour = now_ms / Self::HOUR_MS;
        self.hours.retain(|h| h.0 + 24 > hour);
        if self.hours.last().is_none_or(|h| h.0 != hour) {
            self.hours.push((hour, 0, 0));
        }
        let last = self.hours.len() - 1;
        &mut self.hours[last]
    }

    pub fn processed(&mut self, now_ms: u64) {
        self.slot(now_ms).1 += 1;
    }

    pub fn failed(&mut self, now_ms: u64, error: String) {
        self.slot(now_ms).2 += 1;
        self.error(now_ms, error);
    }

    /// As stored, with a `last_error` from before errors were cut (see [`AdapterStats::error`])
    /// cut now: the record is written again with every ingest.
    pub fn bounded(mut self) -> AdapterStats {
        self.last_error = self.last_error.map(crate::error::cut);
        self
    }

    /// Records an error that is not an event's (a writeback's).
    ///
    /// Cut as an answer's message is: a refused event's message may quote its payload (a
    /// serde error quotes the offending string whole), and this record is written again in
    /// every later ingest's batch.
    pub fn error(&mut self, now_ms: u64, error: String) {
        self.last_error = Some(crate::error::cut(error));
        self.last_error_at = Some(crate::util::millis_to_rfc3339(now_ms));
    }

    /// (processed, failed) within the 24 hourly slots ending now.
    pub fn last_24h(&self, now_ms: u64) -> (u64, u64) {
        let hour = now_ms / Self::HOUR_MS;
        self.hours.iter().filter(|h| h.0 + 24 > hour).fold((0, 0), |acc, h| (acc.0 + h.1, acc.1 + h.2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_map_finds_a_digest_by_its_hex_and_nothing_else() {
        let (a, b) = (dedup_hash("asset-1"), dedup_hash("asset-2"));
        let mut map = DigestMap::default();
        assert_eq!(map.insert(&a, 1), None);
        assert_eq!(map.insert(&a, 2), Some(1), "one key per digest");
        assert_eq!((map.get(&a), map.get(&b), map.len()), (Some(&2), None, 1));
        // Held as the bytes the hex encodes: the 32 bytes of the SHA-256.
        assert_eq!(DigestKey::of(&a).0.as_slice(), Sha256::digest("asset-1").as_slice());
        // A string that is no digest is keyed by its own, apart from any digest's hex.
        assert_eq!(map.insert("not-a-digest", 3), None);
        assert_eq!((map.get("not-a-digest"), map.get("not-a-digest!"), map.len()), (Some(&3), None, 2));
        assert_eq!(map.remove(&a), Some(2));
        assert!(!map.contains_key(&a) && map.contains_key("not-a-digest"));
    }

    #[test]
    fn a_dedup_page_reads_back_its_keys_in_order() {
        let ids: Vec<ObjectId> = (0..3).map(|_| ObjectId::generate()).collect();
        let mut page = DedupPage::default();
        for (n, id) in ids.iter().enumerate() {
            page.push(id, &dedup_hash(&n.to_string()));
        }
        assert_eq!(page.len(), 3);
        let stored = serde_json::to_vec(&page).unwrap();
        let back: DedupPage = serde_json::from_slice(&stored).unwrap();
        let keys: Vec<(ObjectId, String)> = back.keys().map(|k| k.map(|(o, h)| (o, h.to_string())).unwrap()).collect();
        let want: Vec<(ObjectId, String)> =
            ids.iter().enumerate().map(|(n, id)| (id.clone(), dedup_hash(&n.to_string()))).collect();
        assert_eq!(keys, want);
        assert!(DedupPage::default().keys().next().is_none());
        let damaged: DedupPage = serde_json::from_str(r#"{"keys": "obj_1:h,nonsense,"}"#).unwrap();
        assert_eq!(damaged.keys().filter(Result::is_err).count(), 1);
    }

    /// A marked record, as stored, starts with its mark (what `mark_of_stored` reads); the
    /// mark is not shown.
    #[test]
    fn a_stored_record_starts_with_its_mark_which_is_never_shown() {
        let draft = Draft {
            metadata: serde_json::Map::from_iter([("dedup".to_string(), serde_json::json!({"hash": "not a mark"}))]),
            blobs: Vec::new(),
            source: ObjectSource {
                adapter_type: ProviderType::GenericWebhook,
                external_id: None,
                event_type: None,
                table: None,
                schema: None,
            },
        };
        let mark = DedupMark { hash: dedup_hash("v"), generation: 3 };
        let rec = ObjectRecord::new(ObjectId::generate(), BucketId::generate(), draft, None, Some(mark.clone()));
        let stored = serde_json::to_vec(&rec).unwrap();
        assert!(stored.starts_with(MARK_FIRST), "{}", String::from_utf8_lossy(&stored));
        assert_eq!(mark_of_stored(&stored).unwrap(), Some(mark));
        assert_eq!(serde_json::from_slice::<ObjectRecord>(&stored).unwrap(), rec);
        let shown = rec.shown();
        assert!(shown.get("dedup").is_none(), "{shown}");
        assert_eq!(shown["metadata"]["dedup"]["hash"], "not a mark", "the metadata's own keys stay");

        let unmarked = ObjectRecord { dedup: None, ..rec };
        let stored = serde_json::to_vec(&unmarked).unwrap();
        assert_eq!(mark_of_stored(&stored).unwrap(), None, "{}", String::from_utf8_lossy(&stored));
        assert!(mark_of_stored(b"{\"dedup\":{\"hash\":7}}").is_err(), "a damaged mark is an error");
    }

    #[test]
    fn stats_roll_over_24_hours() {
        let mut s = AdapterStats::default();
        let h = AdapterStats::HOUR_MS;
        s.processed(0);
        s.processed(1);
        s.failed(h, "x".into());
        assert_eq!(s.last_24h(h), (2, 1));
        assert_eq!(s.last_24h(24 * h), (0, 1));
        s.processed(30 * h);
        assert_eq!(s.hours.len(), 1);
        assert_eq!(s.last_24h(30 * h), (1, 0));
        assert_eq!(s.last_error.as_deref(), Some("x"));
    }
}
