//! Updates and deletes of existing objects, inside the source-adapter actor.
//!
//! A Supabase UPDATE/DELETE, or a Mux `video.asset.updated`/`deleted` (on the ingest route
//! when filtered in, or fanned out by the registry from `/v1/webhooks/mux/{connection_id}`),
//! names an upstream ID. The actor's in-memory external-ID index (mirrored in the `xref`
//! keyspace, written in the same batches as the objects) gives the objects made from it:
//! stored ones are re-mapped (`object.updated`) or deleted (`object.deleted`, their alerts
//! with them) in one atomic batch with their events; ones still buffered in a batch window
//! are changed in place (the flush later publishes only `object.created`, with the latest
//! content) or dropped. A Supabase UPDATE that changed the row's primary key finds the row's
//! objects under the old key (`old_record`'s) too, and re-keys them: their `external_id` and
//! index entry become the new key, stored or buffered alike.
//!
//! Reads of stored objects go to the store. A batch this actor submitted may not be visible
//! yet (submitted, not logged), so an object it re-wrote since its last barrier (an empty
//! commit: everything submitted before it is visible) is read only after one, or an update
//! right behind another of the same object would read, change and write back the version
//! before it; an indexed object the store does not show (its creation not visible yet) is
//! read again after one. That await is the only one in the actor's handler, and only on
//! these paths. This module owns no state of its own.

use ractor::RpcReplyPort;
use serde_json::Value;

use super::{AdapterState, Apply, IngestErr, IngestOk, IngestResult, IngestStatus, Origin, Step};
use crate::adapter::alert;
use crate::adapter::kind::{self, Operation};
use crate::adapter::pipeline::{self, PayloadError, Screened};
use crate::adapter::records::{self, BufferEntry, DedupMark, DigestMap, Draft, ObjectRecord};
use crate::catalog::Bucket;
use crate::events::Scopes;
use crate::ids::{BucketId, ObjectId};
use crate::store::{Batch, Keyspace, Store, StoreError};
use crate::util::now_millis;

/// An update or delete decided outside the ingest route (the Mux lifecycle webhook).
pub struct ChangeRequest {
    pub operation: Operation,
    pub event_type: String,
    /// The upstream ID (the Mux asset id).
    pub external_id: String,
    /// The upstream event, read like an ingested one (the metadata document for an update).
    pub payload: Value,
    /// The asset fetch, shared by every bucket the event goes to (see [`SharedFetch`]).
    pub fetch: SharedFetch,
    /// The request's signature, checked again here if its connection changed since.
    pub check: std::sync::Arc<crate::adapter::verify::LifecycleCheck>,
    pub reply: RpcReplyPort<IngestResult>,
}

/// One Mux API fetch of a lifecycle event's asset for all the buckets of its connection
/// (one token): the first actor that needs it fetches, the others wait for its answer. Mux
/// rate-limits asset reads; one per bucket would spend the limit with the number of buckets.
pub type SharedFetch = std::sync::Arc<tokio::sync::OnceCell<Result<Value, crate::adapter::mux::MuxApiError>>>;

/// Loads the external-ID index of one bucket (`prefix` = `{bucket_id}/`).
pub(super) fn load_index(store: &Store, prefix: &str) -> Result<DigestMap<Vec<ObjectId>>, StoreError> {
    load_by_hash(store, Keyspace::EXTERNAL_IDS, prefix, |index: &mut DigestMap<Vec<ObjectId>>, hash, oid| {
        index.entry(&hash).or_default().push(oid)
    })
}

/// The key (in the external-ID index's keyspace, where it can be no object's) that says the
/// bucket's objects may lack index entries: written by the PATCH that gives a bucket to an
/// adapter type that changes objects by external ID, taking over from none or from
/// generic_webhook (which indexes nothing, see `kind::changes_by_external_id`); deleted once
/// [`index_unindexed`] has run, at the next start of the bucket's actor.
pub(in crate::adapter) fn unindexed_marker(bucket: &BucketId) -> String {
    records::key(bucket, "unindexed")
}

/// Only what indexing needs of an object or a buffered draft (the rest is skipped).
#[derive(serde::Deserialize)]
struct Source {
    external_id: Option<String>,
}
#[derive(serde::Deserialize)]
struct Indexable {
    source: Source,
}
#[derive(serde::Deserialize)]
struct Buffered {
    draft: Indexable,
}

/// Objects (or buffered entries) read, and index entries committed, per step.
const INDEX_PAGE: usize = 10_000;

/// The marker's value once a page is done: where the next run resumes (a stop may cut a long
/// run short: the actor is killed if it does not stop in time). Any other value (the PATCH
/// writes one) means from the start.
const OBJECTS_AFTER: &str = "objects after ";
const BUFFER_AFTER: &str = "buffer after ";

/// When the bucket is marked (see [`unindexed_marker`]): adds the index entries its objects
/// and buffered entries lack, so the new adapter's events reach every object whose external
/// ID they name, as the contract says; then drops the mark. Run by the actor as it starts,
/// after its spawn returned (its messages wait for it); page by page, each page's entries
/// committed with the point reached (in the mark) before the next is read, so memory stays
/// bounded and a run cut short resumes where it was. Returns how many entries were added.
pub(super) async fn index_unindexed(store: &Store, bucket: &BucketId) -> Result<usize, StoreError> {
    index_unindexed_by(store, bucket, INDEX_PAGE).await
}

/// [`index_unindexed`] with pages of `page` records (tests use small ones).
async fn index_unindexed_by(store: &Store, bucket: &BucketId, page: usize) -> Result<usize, StoreError> {
    let marker = unindexed_marker(bucket);
    let Some(mark) = store.get::<String>(Keyspace::EXTERNAL_IDS, &marker)? else {
        return Ok(0);
    };
    let prefix = records::prefix(bucket);
    let (objects_after, buffer_after) = match (mark.strip_prefix(OBJECTS_AFTER), mark.strip_prefix(BUFFER_AFTER)) {
        (Some(k), _) => (Some(Some(k.to_string())), None),
        (None, Some(k)) => (None, Some(k.to_string())),
        (None, None) => (Some(None), None),
    };
    let mut added = 0;
    if let Some(after) = objects_after {
        let source = |o: Indexable| o.source;
        added += index_pages(store, Keyspace::OBJECTS, &prefix, &marker, after, page, source).await?;
    }
    let source = |b: Buffered| b.draft.source;
    added += index_pages(store, Keyspace::BUFFER, &prefix, &marker, buffer_after, page, source).await?;
    let mut done = Batch::new();
    done.delete(Keyspace::EXTERNAL_IDS, &marker);
    store.commit(done).await?;
    Ok(added)
}

/// [`index_unindexed`] over one keyspace of `{bucket_id}/{object_id}` records, after the key
/// `after` (from the start when `None`).
async fn index_pages<T: serde::de::DeserializeOwned>(
    store: &Store,
    ks: Keyspace,
    prefix: &str,
    marker: &str,
    mut after: Option<String>,
    page: usize,
    source: fn(T) -> Source,
) -> Result<usize, StoreError> {
    let progress = if ks == Keyspace::OBJECTS { OBJECTS_AFTER } else { BUFFER_AFTER };
    let mut added = 0;
    loop {
        let mut wanted = Vec::new();
        let mut seen = 0;
        let mut last = None;
        store.for_each_after::<T>(ks, prefix, after.as_deref(), |key, record| {
            if let Some(ext) = source(record).external_id {
                wanted.push((key.to_string(), ext));
            }
            seen += 1;
            last = Some(key.to_string());
            seen < page
        })?;
        if last.is_some() {
            after = last;
        }
        let mut batch = Batch::new();
        for (key, ext) in wanted {
            // Read, not remembered: a bucket's index may be large (one a Supabase adapter
            // filled before it was removed and added again).
            if !store.contains(Keyspace::EXTERNAL_IDS, &key)? {
                batch.put(Keyspace::EXTERNAL_IDS, &key, &records::dedup_hash(&ext));
                added += 1;
            }
        }
        if seen < page {
            if !batch.is_empty() {
                store.commit(batch).await?;
            }
            return Ok(added);
        }
        if let Some(last) = &after {
            batch.put(Keyspace::EXTERNAL_IDS, marker, &format!("{progress}{last}"));
        }
        store.commit(batch).await?;
    }
}

/// Dedup keys (object ID, hash) in object order.
type DedupKeys = Vec<(ObjectId, String)>;

/// Only what the dedup set needs of an object kept in pieces (the rest is skipped).
#[derive(serde::Deserialize)]
struct Marked {
    #[serde(default)]
    dedup: Option<DedupMark>,
}

/// Loads one bucket's dedup set (see `records.rs`): its pages, the `dkey` entries of the set
/// in force (deleted objects, tombstones, keys from before format 6), then the marks made
/// under its current dedup generation of its objects and of `buffer` (its buffer entries)
/// after the last page. Returns the set and what [`page_loaded_keys`] pages: what was read,
/// merged with the keys of the short pages (fewer than `PAGE_KEYS` keys) when that leaves
/// fewer of them (two short pages, or one and anything read), so short pages do not pile up
/// with restarts.
pub(super) fn load_dedup(
    store: &Store,
    bucket: &Bucket,
    buffer: &[BufferEntry],
) -> Result<(DigestMap<ObjectId>, Scanned), StoreError> {
    let prefix = records::prefix(&bucket.bucket_id);
    let mut set = load_by_hash(store, Keyspace::DEDUP, &prefix, |map: &mut DigestMap<ObjectId>, value, oid| {
        if let Some(hash) = records::dkey_in_force(bucket, &value) {
            map.insert(hash, oid);
        }
    })?;
    let mut last_page = None;
    let mut damaged = None;
    // Pages of fewer than PAGE_KEYS keys (each start that read anything wrote one), with
    // their keys: merged with what this start reads, so that one at most is left.
    let mut short_pages = Vec::new();
    let mut short_keys = Vec::new();
    store.for_each::<records::DedupPage>(Keyspace::DEDUP_PAGES, &prefix, |k, page| {
        // (The PATCH that switches the generation deletes the pages: one of another is a stray.)
        if page.generation == bucket.dedup_generation {
            let mut count = 0;
            for key in page.keys() {
                match key {
                    Ok((oid, hash)) => {
                        set.insert(hash, oid);
                        count += 1;
                    }
                    Err(entry) => {
                        damaged = Some(StoreError::Corrupt {
                            key: format!("{}/{k}", Keyspace::DEDUP_PAGES.name()),
                            reason: format!("not a dedup key: {entry:?}"),
                        });
                        return false;
                    }
                }
            }
            if count < records::PAGE_KEYS {
                // Read again for their copies: a full page's keys (most) are not copied.
                short_pages.push(k.to_string());
                short_keys.extend(page.keys().flatten().map(|(oid, hash)| (oid, hash.to_string())));
            }
            last_page = Some(k.to_string());
        }
        true
    })?;
    if let Some(e) = damaged {
        return Err(e);
    }
    let paged = last_page.as_deref().and_then(|k| ObjectId::parse(&k[prefix.len()..]));
    // Each object's mark is read from the start of its record (see `records::MARK_FIRST`):
    // the start of an actor waits for this scan, which must not parse objects whole.
    let mut unpaged = Vec::new();
    let mut long = Vec::new();
    let mut newest: Option<ObjectId> = None;
    let counting = |mark: Option<DedupMark>| mark.filter(|m| m.counts_in(bucket));
    store.for_each_whole(Keyspace::OBJECTS, &prefix, last_page.as_deref(), |k, whole| {
        let Some(oid) = ObjectId::parse(&k[prefix.len()..]) else { return Ok(true) };
        newest = Some(oid.clone()); // key order is ID order
        match whole {
            Some(v) => {
                let mark = records::mark_of_stored(v).map_err(|e| StoreError::Corrupt {
                    key: format!("{}/{k}", Keyspace::OBJECTS.name()),
                    reason: format!("dedup mark: {e}"),
                })?;
                if let Some(mark) = counting(mark) {
                    unpaged.push((oid, mark.hash));
                }
            }
            None => long.push((k.to_string(), oid)),
        }
        Ok(true)
    })?;
    for (key, oid) in long {
        if let Some(mark) = counting(store.get::<Marked>(Keyspace::OBJECTS, &key)?.and_then(|o| o.dedup)) {
            unpaged.push((oid, mark.hash));
        }
    }
    for e in buffer.iter().filter(|e| paged.as_ref().is_none_or(|p| &e.object_id > p)) {
        newest = newest.max(Some(e.object_id.clone()));
        if let Some(mark) = counting(e.dedup.clone()) {
            unpaged.push((e.object_id.clone(), mark.hash));
        }
    }
    // IDs made from now on sort after every one loaded, whatever the clock says: the scan
    // after the last page at the next start must find them.
    if let Some(newest) = newest.as_ref().or(paged.as_ref()) {
        crate::ids::generate_after(newest);
    }
    for (oid, hash) in &unpaged {
        set.insert(hash, oid.clone());
    }
    let mut stale = Vec::new();
    if short_pages.len() + usize::from(newest.is_some()) >= 2 {
        // Compaction: the short pages' keys are paged again with what was read. The last
        // page written is keyed by the greatest of their keys and the newest ID read, so the
        // next start's scan begins no earlier than it would have (a page's key is never
        // below its keys' IDs, and no page kept has that key: every kept page is full).
        let last_short = short_pages.last().and_then(|k| ObjectId::parse(&k[prefix.len()..]));
        newest = newest.max(last_short);
        unpaged.extend(short_keys);
        stale = short_pages;
    }
    unpaged.sort();
    Ok((set, Scanned { keys: unpaged, newest, stale }))
}

/// What [`load_dedup`] read after the last page: the keys (oldest first), and the newest ID
/// of an object or buffer entry it read (none when it read nothing); with the keys of the
/// short pages it merges, and those pages' keys (`stale`, to delete once paged again).
pub(super) struct Scanned {
    keys: DedupKeys,
    newest: Option<ObjectId>,
    stale: Vec<String>,
}

/// Writes what [`load_dedup`] read after the last page as pages, so the next start reads
/// none of it again: full pages of the keys, then the rest in a last page keyed by the
/// newest ID read (written even without keys: objects without one, of a bucket that dedups
/// by nothing, or from before format 6, are then not read again either). Usually that is one
/// short page; a bucket from before pages (or whose dedup path just changed) has its keys
/// paged here once, in commits of a few pages, not in one page of them all. The short pages
/// merged in (`stale`) are deleted in the last commit, once their keys are in the new pages
/// (a crash between commits leaves some keys in two pages: harmless), unless a new page
/// took the same key (then it holds all of that page's keys: short pages never overlap, each
/// start paging only what comes after the last page).
pub(super) async fn page_loaded_keys(store: &Store, bucket: &Bucket, scanned: Scanned) -> Result<(), StoreError> {
    const PAGES_PER_COMMIT: usize = 16;
    let Some(newest) = scanned.newest else {
        return Ok(());
    };
    let mut page = records::DedupPage::new(bucket);
    let mut batch = Batch::new();
    let mut last_full = None;
    let mut stale: std::collections::HashSet<String> = scanned.stale.into_iter().collect();
    for (oid, hash) in scanned.keys {
        if let Some(key) = page.add(bucket, &mut batch, &oid, &hash) {
            stale.remove(&key);
            last_full = Some(oid);
            if batch.len() >= PAGES_PER_COMMIT {
                store.commit(std::mem::take(&mut batch)).await?;
            }
        }
    }
    // Not when the last full page is already keyed by the newest ID: this empty page would
    // replace it.
    if !page.is_empty() || last_full.as_ref() != Some(&newest) {
        let key = records::key(&bucket.bucket_id, newest.as_str());
        stale.remove(&key);
        batch.put(Keyspace::DEDUP_PAGES, &key, &page);
    }
    for key in stale {
        batch.delete(Keyspace::DEDUP_PAGES, &key);
    }
    if !batch.is_empty() {
        store.commit(batch).await?;
    }
    Ok(())
}

/// Reads one bucket's `{bucket_id}/{object_id}` → hash entries of `ks` (the dedup keys of
/// `dkey` or the external-ID index, see `records.rs`) into a map by hash, in object (= creation) order.
pub(in crate::adapter) fn load_by_hash<M: Default>(
    store: &Store,
    ks: Keyspace,
    prefix: &str,
    mut add: impl FnMut(&mut M, String, ObjectId),
) -> Result<M, StoreError> {
    let mut map = M::default();
    store.for_each::<String>(ks, prefix, |k, hash| {
        if let Some(oid) = ObjectId::parse(&k[prefix.len()..]) {
            add(&mut map, hash, oid);
        }
        true
    })?;
    Ok(map)
}

impl AdapterState {
    /// Indexes a new object under its external ID (same batch as the object), when its
    /// adapter type can change objects by that ID (see `kind::changes_by_external_id`).
    pub(super) fn index(&mut self, batch: &mut Batch, draft: &Draft, object_id: &ObjectId) {
        if !kind::changes_by_external_id(self.adapter.adapter_type) {
            return;
        }
        if let Some(ext) = &draft.source.external_id {
            let hash = records::dedup_hash(ext);
            batch.put(Keyspace::EXTERNAL_IDS, &records::key(self.bucket_id(), object_id.as_str()), &hash);
            self.xids.entry(&hash).or_default().push(object_id.clone());
        }
    }

    fn unindex(&mut self, batch: &mut Batch, hash: &str, object_id: &ObjectId) {
        batch.delete(Keyspace::EXTERNAL_IDS, &records::key(self.bucket_id(), object_id.as_str()));
        if let Some(ids) = self.xids.get_mut(hash) {
            ids.retain(|o| o != object_id);
            if ids.is_empty() {
                self.xids.remove(hash);
            }
        }
    }

    /// Moves an object's external-ID index entry from `old_hash` to `new_hash` (same batch
    /// as the object's change). On disk the entry is keyed by object ID: the put replaces it.
    fn reindex(&mut self, batch: &mut Batch, old_hash: &str, new_hash: &str, object_id: &ObjectId) {
        batch.put(Keyspace::EXTERNAL_IDS, &records::key(self.bucket_id(), object_id.as_str()), &new_hash);
        if let Some(ids) = self.xids.get_mut(old_hash) {
            ids.retain(|o| o != object_id);
            if ids.is_empty() {
                self.xids.remove(old_hash);
            }
        }
        let ids = self.xids.entry(new_hash).or_default();
        if !ids.contains(object_id) {
            ids.push(object_id.clone());
            // Creation order, as a reload from the store gives (IDs are time-ordered).
            ids.sort();
        }
    }

    /// Gives buffered entries a new external ID, in memory only (the caller stores them, see
    /// `refresh_buffered`), keeping the buffer's byte count exact.
    fn rekey_buffered(&mut self, ids: &[ObjectId], external_id: &str) {
        for entry in self.buffer.iter_mut().filter(|e| ids.contains(&e.object_id)) {
            let old = super::stored_size(entry);
            entry.draft.source.external_id = Some(external_id.to_string());
            self.buffer_bytes = self.buffer_bytes.saturating_sub(old) + super::stored_size(entry);
        }
    }

    /// A buffered entry of a row whose key another row has taken: no external ID (see
    /// `apply_change`), stored so.
    fn detach_buffered(&mut self, batch: &mut Batch, id: &ObjectId) {
        let bucket_id = self.bucket_id().clone();
        if let Some(entry) = self.buffer.iter_mut().find(|e| &e.object_id == id) {
            let old = super::stored_size(entry);
            entry.draft.source.external_id = None;
            let new = batch.put(Keyspace::BUFFER, &records::key(&bucket_id, id.as_str()), &*entry);
            self.buffer_bytes = self.buffer_bytes.saturating_sub(old) + new;
        }
    }

    /// Deletes one object by ID (the objects API), with its index entry, its alerts and
    /// `object.deleted`.
    pub(super) async fn delete_object(&mut self, object_id: &ObjectId) -> Result<Option<super::Commit>, StoreError> {
        // Earlier submits of this actor (e.g. the object's creation) must be readable first.
        self.shared.store.commit(Batch::new()).await?;
        let key = records::key(self.bucket_id(), object_id.as_str());
        let Some(rec) = self.shared.store.get::<ObjectRecord>(Keyspace::OBJECTS, &key)? else {
            return Ok(self.delete_buffered(object_id));
        };
        let mut batch = Batch::new();
        batch.delete(Keyspace::OBJECTS, &key);
        alert::delete_for_object(&self.shared.store, self.bucket_id(), object_id, &mut batch)?;
        if let Some(ext) = &rec.source.external_id {
            let hash = records::dedup_hash(ext);
            self.unindex(&mut batch, &hash, object_id);
        }
        records::keep_dedup_key(&mut batch, &self.bucket, object_id, rec.dedup.as_ref());
        let scopes = Scopes { namespace: &self.bucket.namespace, key: object_id.as_str() };
        let event = self.shared.bus.record(&mut batch, "object.deleted", || rec.event_payload(), scopes);
        Ok(Some(self.submit(batch, vec![event])))
    }

    /// Deletes an event still in the batch buffer (its `object_id` was answered as
    /// `buffered`): it never becomes an object. Nothing is published (no `object.created`
    /// went out for it); its dedup key stays, as a deleted object's does, so an upstream
    /// retry is still a duplicate.
    fn delete_buffered(&mut self, object_id: &ObjectId) -> Option<super::Commit> {
        let entry = self.unbuffer(object_id)?;
        let mut batch = Batch::new();
        batch.delete(Keyspace::BUFFER, &records::key(self.bucket_id(), object_id.as_str()));
        if let Some(ext) = &entry.draft.source.external_id {
            let hash = records::dedup_hash(ext);
            self.unindex(&mut batch, &hash, object_id);
        }
        records::keep_dedup_key(&mut batch, &self.bucket, object_id, entry.dedup.as_ref());
        tracing::debug!(bucket_id = %self.bucket_id(), object_id = %object_id, "buffered event deleted");
        Some(self.submit(batch, Vec::new()))
    }

    /// A change from the lifecycle route: no signature or filter here (the registry
    /// verified the connection's signature). In a bucket that holds no object of that
    /// upstream ID nothing is fetched or changed; a delete leaves a tombstone there (see
    /// [`AdapterState::tombstone`]).
    pub(super) async fn change(&mut self, req: ChangeRequest) {
        let ChangeRequest { operation, event_type, external_id, payload, fetch, check, reply } = req;
        if self.closing {
            let _ = reply.send(Err(IngestErr::Gone));
            return;
        }
        if let Err(e) = check.still_holds(&self.shared) {
            let _ = reply.send(Err(IngestErr::Revoked(e)));
            return;
        }
        let dedup_value = pipeline::dedup_value(&self.adapter, &payload);
        if !self.xids.contains_key(&records::dedup_hash(&external_id)) {
            let answer = if operation == Operation::Delete {
                // No object yet: Mux may deliver the delete before a retried (or still
                // fetching) `ready`, which must not bring the asset back.
                let mut batch = Batch::new();
                if let Some(v) = &dedup_value {
                    self.tombstone(&mut batch, v);
                }
                let commit = (!batch.is_empty()).then(|| self.submit(batch, Vec::new()));
                IngestOk::new(IngestStatus::Deleted, None, commit)
            } else {
                // No object yet, but maybe one being made from a fetch now in flight, whose
                // answer may predate this update: fetched again when it comes.
                self.mark_outdated_if_creating(&external_id);
                IngestOk::new(IngestStatus::Updated, None, None)
            };
            let _ = reply.send(Ok(answer));
            return;
        }
        let screened = Screened {
            event_type: Some(event_type),
            dedup_value,
            operation,
            external_id: Some(external_id),
            previous_external_id: None,
        };
        match self.prepare(now_millis(), screened, payload, None, Origin::Lifecycle) {
            Step::Done(r) => {
                let _ = reply.send(r);
            }
            Step::Apply(a) => {
                let _ = reply.send(self.apply_change(*a).await);
            }
            Step::Fetch(mut job) => {
                job.shared = Some(fetch);
                self.spawn_fetch(*job, reply)
            }
        }
    }

    /// Applies an update (with its new draft) or a delete to the objects of its upstream ID.
    pub(super) async fn apply_change(&mut self, a: Apply) -> IngestResult {
        let now = now_millis();
        let Apply { screened, draft, dedup_hash, origin } = a;
        let Some(ext) = screened.external_id.as_deref() else {
            return Err(self.fail(now, PayloadError("this event changes an object but names no upstream ID".into())));
        };
        let hash = records::dedup_hash(ext);
        let (mut buffered, mut stored) = match self.indexed_objects(&hash).await {
            Ok(found) => found,
            Err(e) => return Err(self.retry(now, format!("read objects: {e}"))),
        };
        let mut batch = Batch::new();
        let mut events = Vec::new();
        // An update that changed the upstream ID (a Supabase UPDATE of the row's primary key:
        // `old_record` has the old one): the objects indexed under the old ID are the row's
        // too. They are updated with the others and re-keyed to the new ID (their
        // `external_id` and index entry), so later events of the row find them.
        let mut rekeyed: Vec<ObjectId> = Vec::new();
        if let (Some(previous), Some(_)) = (screened.previous_external_id.as_deref(), &draft) {
            let old_hash = records::dedup_hash(previous);
            let (old_buffered, old_stored) = match self.indexed_objects(&old_hash).await {
                Ok(found) => found,
                Err(e) => return Err(self.retry(now, format!("read objects: {e}"))),
            };
            if !old_buffered.is_empty() || !old_stored.is_empty() {
                // The row's objects are the old key's. Objects already under the new key are
                // another row's, which no longer has that key (the database keeps keys unique:
                // it was deleted unseen, say with DELETE filtered out): they keep their content
                // but leave the index, so that this row's events change this row's objects
                // only, and lose their external ID, which names this row now: a writeback of
                // theirs would write that row's results onto this one. (An object has one
                // index entry, so none is in both lists.)
                let others = buffered.len() + stored.len();
                for id in std::mem::take(&mut buffered) {
                    self.unindex(&mut batch, &hash, &id);
                    self.detach_buffered(&mut batch, &id);
                }
                for mut rec in std::mem::take(&mut stored) {
                    self.unindex(&mut batch, &hash, &rec.object_id);
                    rec.source.external_id = None;
                    batch.put(Keyspace::OBJECTS, &records::key(self.bucket_id(), rec.object_id.as_str()), &rec);
                    self.note_rewritten(&rec.object_id);
                    let scopes = Scopes { namespace: &self.bucket.namespace, key: rec.object_id.as_str() };
                    events.push(self.shared.bus.record(&mut batch, "object.updated", || rec.event_payload(), scopes));
                }
                if others > 0 {
                    tracing::info!(bucket_id = %self.bucket_id(), objects = others,
                        "a row's new primary key was another row's: that row's objects keep their content, lose their external ID and are no longer found by the key");
                }
            }
            for id in old_buffered.iter().chain(old_stored.iter().map(|r| &r.object_id)) {
                self.reindex(&mut batch, &old_hash, &hash, id);
                rekeyed.push(id.clone());
            }
            // Before `refresh_buffered` below, which stores the entries with their new content.
            self.rekey_buffered(&old_buffered, ext);
            buffered.extend(old_buffered);
            stored.extend(old_stored);
        }
        let mut object_ids: Vec<ObjectId> = buffered.clone();
        let status = match draft {
            Some(draft) => {
                let upsert = origin == Origin::Ingest && kind::upsert_on_update(self.adapter.adapter_type);
                if buffered.is_empty() && stored.is_empty() && upsert {
                    // The upsert creates the object, so dedup guards it as it guards a create:
                    // with a dedup value already in the dedup set (the row's INSERT was seen,
                    // and its object deleted since: a DELETE, or the objects API), the UPDATE
                    // is a duplicate of that object, as a re-sent INSERT would be, and does
                    // not bring the row back. Otherwise its dedup key is recorded like a
                    // create's, so the row's INSERT arriving late (retried) is a duplicate,
                    // not a second object. Without a dedup key, nothing tells a deleted row
                    // from one never seen: the UPDATE creates the object.
                    let dedup_hash = dedup_hash.or_else(|| screened.dedup_value.as_deref().map(records::dedup_hash));
                    if let Some(object_id) = dedup_hash.as_ref().and_then(|h| self.dedup.get(h)).cloned() {
                        return Ok(self.duplicate(now, object_id));
                    }
                    // A new object all the same: it waits while the disk is short.
                    if self.shared.room.short() {
                        return Err(IngestErr::ShortOfDisk);
                    }
                    return Ok(self.accept(now, draft, dedup_hash));
                }
                if buffered.is_empty() && stored.is_empty() {
                    // No object yet, but maybe one being made from a fetch now in flight,
                    // whose answer may predate this update: fetched again when it comes
                    // (whichever route brought the update: the ingest route's filter may
                    // take `video.asset.updated` too).
                    self.mark_outdated_if_creating(ext);
                }
                self.refresh_buffered(&mut batch, &mut events, &buffered, &draft);
                for mut rec in stored {
                    rec.apply(draft.clone());
                    if rekeyed.contains(&rec.object_id) {
                        rec.source.external_id = Some(ext.to_string());
                    }
                    batch.put(Keyspace::OBJECTS, &records::key(self.bucket_id(), rec.object_id.as_str()), &rec);
                    self.note_rewritten(&rec.object_id);
                    let scopes = Scopes { namespace: &self.bucket.namespace, key: rec.object_id.as_str() };
                    events.push(self.shared.bus.record(&mut batch, "object.updated", || rec.event_payload(), scopes));
                    object_ids.push(rec.object_id);
                }
                IngestStatus::Updated
            }
            None => {
                for id in &buffered {
                    if let Some(entry) = self.unbuffer(id) {
                        records::keep_dedup_key(&mut batch, &self.bucket, id, entry.dedup.as_ref());
                    }
                    batch.delete(Keyspace::BUFFER, &records::key(self.bucket_id(), id.as_str()));
                    self.unindex(&mut batch, &hash, id);
                }
                for rec in stored {
                    batch.delete(Keyspace::OBJECTS, &records::key(self.bucket_id(), rec.object_id.as_str()));
                    let alerts =
                        alert::delete_for_object(&self.shared.store, self.bucket_id(), &rec.object_id, &mut batch);
                    if let Err(e) = alerts {
                        return Err(self.retry(now, format!("read the object's alerts: {e}")));
                    }
                    // Alerts submitted a moment ago, perhaps not readable by the scan yet.
                    for (_, key) in self.unsynced_alerts.iter().filter(|(o, _)| o == &rec.object_id) {
                        batch.delete(alert::KS, key);
                    }
                    self.unindex(&mut batch, &hash, &rec.object_id);
                    records::keep_dedup_key(&mut batch, &self.bucket, &rec.object_id, rec.dedup.as_ref());
                    let scopes = Scopes { namespace: &self.bucket.namespace, key: rec.object_id.as_str() };
                    events.push(self.shared.bus.record(&mut batch, "object.deleted", || rec.event_payload(), scopes));
                    object_ids.push(rec.object_id);
                }
                if let Some(v) = &screened.dedup_value {
                    self.tombstone(&mut batch, v);
                }
                IngestStatus::Deleted
            }
        };
        self.stats.processed(now);
        self.put_stats(&mut batch);
        tracing::debug!(bucket_id = %self.bucket_id(), status = status.as_str(), objects = object_ids.len(), "change applied");
        let commit = self.submit(batch, events);
        Ok(IngestOk { status, object_id: object_ids.first().cloned(), object_ids, commit: Some(commit) })
    }

    /// Keeps a deleted Mux asset's dedup value in the dedup set even when no object of it
    /// exists yet (the delete came first, or while its `ready` was being fetched): a later
    /// create of it then answers `duplicate` instead of bringing the asset back. The entry
    /// names an object ID that no object has. Other adapters may legitimately re-create a
    /// deleted row (a Supabase INSERT after a DELETE), so they keep no tombstones.
    fn tombstone(&mut self, batch: &mut Batch, dedup_value: &str) {
        if self.adapter.adapter_type != crate::catalog::ProviderType::Mux {
            return;
        }
        let hash = records::dedup_hash(dedup_value);
        if self.dedup.contains_key(&hash) {
            return;
        }
        let id = ObjectId::generate();
        batch.put(Keyspace::DEDUP, &records::key(self.bucket_id(), id.as_str()), &hash);
        self.dedup.insert(&hash, id);
    }

    /// Waits until everything this actor submitted is readable (an empty commit: it is not
    /// logged, only queued behind them).
    async fn barrier(&mut self) -> Result<(), StoreError> {
        self.shared.store.commit(Batch::new()).await?;
        self.rewritten = Some(Default::default());
        Ok(())
    }

    /// Notes a stored object re-written (see [`AdapterState::rewritten`]).
    fn note_rewritten(&mut self, id: &ObjectId) {
        if let Some(set) = &mut self.rewritten {
            if set.len() >= super::REWRITTEN_KEPT {
                self.rewritten = None;
            } else {
                set.insert(id.clone());
            }
        }
    }

    /// Splits the objects indexed under external-ID `hash` into buffered IDs and stored
    /// records; drops index entries of objects that are gone (deleted through the objects API).
    async fn indexed_objects(&mut self, hash: &str) -> Result<(Vec<ObjectId>, Vec<ObjectRecord>), StoreError> {
        let ids = self.xids.get(hash).cloned().unwrap_or_default();
        let (buffered, kept): (Vec<ObjectId>, Vec<ObjectId>) =
            ids.into_iter().partition(|id| self.buffer.iter().any(|e| &e.object_id == id));
        // One this actor re-wrote (an update or re-key just before) may not be readable as
        // re-written yet: read now, it would be the version before that change, which this
        // one would then write back over. So wait until everything submitted is readable.
        let rewritten = |r: &Option<std::collections::HashSet<ObjectId>>, id: &ObjectId| {
            r.as_ref().is_none_or(|set| set.contains(id))
        };
        if kept.iter().any(|id| rewritten(&self.rewritten, id)) {
            self.barrier().await?;
        }
        let mut stored = Vec::new();
        let mut missing = Vec::new();
        for id in kept {
            match self
                .shared
                .store
                .get::<ObjectRecord>(Keyspace::OBJECTS, &records::key(self.bucket_id(), id.as_str()))?
            {
                Some(rec) => stored.push(rec),
                None => missing.push(id),
            }
        }
        if !missing.is_empty() {
            // Maybe our own creation of it, not applied yet: wait until everything submitted is.
            self.barrier().await?;
            let mut stale = Batch::new();
            for id in missing {
                let key = records::key(self.bucket_id(), id.as_str());
                match self.shared.store.get::<ObjectRecord>(Keyspace::OBJECTS, &key)? {
                    Some(rec) => stored.push(rec),
                    None => self.unindex(&mut stale, hash, &id),
                }
            }
            if !stale.is_empty() {
                // Housekeeping only: nobody waits for it (the committer applies it anyway).
                drop(self.shared.store.submit(stale));
            }
        }
        Ok((buffered, stored))
    }

    /// Records a failure a retry may fix and asks the upstream to retry (503).
    pub(super) fn retry(&mut self, now: u64, message: String) -> IngestErr {
        match self.fail(now, PayloadError(message)) {
            IngestErr::Invalid { message, commit, .. } => IngestErr::Retry { message, commit },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bucket_of_generation(generation: u64) -> Bucket {
        serde_json::from_value(json!({
            "bucket_id": BucketId::generate(), "bucket_name": "b", "namespace": "default",
            "bucket_schema": {"properties": {}}, "dedup_generation": generation,
            "created_at": "t", "updated_at": "t"}))
        .unwrap()
    }

    /// The dedup set at start: its pages, `dkey` entries, and the marks of the current
    /// generation of the objects and buffer entries after the last page (those before it are
    /// not read: the pages hold their keys).
    #[tokio::test]
    async fn the_dedup_set_loads_pages_deleted_keys_and_current_marks_after_the_last_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let bucket = bucket_of_generation(2);
        let other = BucketId::generate();
        let ids: Vec<ObjectId> = (0..10).map(|_| ObjectId::generate()).collect();
        let key = |b: &BucketId, id: &ObjectId| records::key(b, id.as_str());
        let mark = |h: &str, generation: u64| json!({"hash": h, "generation": generation});
        let obj = |h: &str, generation: u64| json!({"dedup": mark(h, generation), "metadata": {}});
        // Longer than a piece: kept in pieces once in sled (the reopen below puts it there),
        // its mark read from the whole value.
        let long =
            |h: &str, generation: u64| json!({"dedup": mark(h, generation), "metadata": {"pad": "x".repeat(9000)}});
        let bid = &bucket.bucket_id;
        let mut b = Batch::new();
        let mut page = records::DedupPage::new(&bucket);
        page.push(&ids[0], "p0");
        page.push(&ids[2], "p2");
        // A page of another generation (a stray): not read, and no boundary.
        let mut stray = records::DedupPage::default();
        stray.push(&ids[4], "stray");
        b.put(Keyspace::DEDUP_PAGES, &key(bid, &ids[2]), &page);
        b.put(Keyspace::DEDUP_PAGES, &key(bid, &ids[4]), &stray);
        b.put(Keyspace::OBJECTS, &key(bid, &ids[1]), &obj("before the page: not read", 2));
        b.put(Keyspace::OBJECTS, &key(bid, &ids[3]), &obj("h3", 2));
        b.put(Keyspace::OBJECTS, &key(bid, &ids[4]), &obj("h4", 1));
        b.put(Keyspace::OBJECTS, &key(bid, &ids[5]), &json!({"metadata": {}}));
        b.put(Keyspace::DEDUP, &key(bid, &ids[5]), "h5");
        b.put(Keyspace::OBJECTS, &key(bid, &ids[6]), &long("h6", 2));
        b.put(Keyspace::OBJECTS, &key(bid, &ids[7]), &long("h7", 0));
        b.put(Keyspace::OBJECTS, &key(&other, &ids[9]), &obj("h9", 2));
        store.commit(b).await.unwrap();
        drop(store);
        let store = crate::store::tests::reopen(dir.path()).await;
        let mut kept_whole = Vec::new();
        store
            .for_each_whole(Keyspace::OBJECTS, &records::prefix(bid), None, |k, whole| {
                kept_whole.push((k.to_string(), whole.is_some()));
                Ok(true)
            })
            .unwrap();
        assert_eq!(kept_whole.iter().filter(|(_, whole)| !whole).count(), 2, "the long ones: {kept_whole:?}");
        let entry = |id: &ObjectId, h: &str, generation: u64| -> BufferEntry {
            serde_json::from_value(json!({"object_id": id, "received_at_ms": 1,
                "draft": {"metadata": {}, "blobs": [], "source": {"adapter_type": "generic_webhook",
                "external_id": null, "event_type": null}}, "dedup": mark(h, generation)}))
            .unwrap()
        };
        let stale = ObjectId::generate();
        let buffer = vec![entry(&ids[8], "h8", 2), entry(&ids[0], "paged", 2), entry(&stale, "hx", 0)];

        let (set, scanned) = load_dedup(&store, &bucket, &buffer).unwrap();
        let want = [("h3", 3), ("h5", 5), ("h6", 6), ("h8", 8), ("p0", 0), ("p2", 2)];
        let want: Vec<(&str, &ObjectId)> = want.iter().map(|(h, n)| (*h, &ids[*n])).collect();
        // Exactly these keys, each naming its object.
        let holds = |set: &DigestMap<ObjectId>| {
            let got: Vec<(&str, Option<ObjectId>)> = want.iter().map(|(h, _)| (*h, set.get(h).cloned())).collect();
            (set.len(), got)
        };
        let expected = (want.len(), want.iter().map(|(h, id)| (*h, Some((*id).clone()))).collect::<Vec<_>>());
        assert_eq!(holds(&set), expected);
        // The short page's keys are merged with those read after it.
        let after: Vec<(ObjectId, String)> = [("p0", 0), ("p2", 2), ("h3", 3), ("h6", 6), ("h8", 8)]
            .iter()
            .map(|(h, n)| (ids[*n].clone(), h.to_string()))
            .collect();
        assert_eq!(scanned.keys, after, "the short page's keys and those after the last page, oldest first");
        assert_eq!(scanned.newest.as_ref(), Some(&stale), "the newest read: a buffered entry, even without a key");
        assert_eq!(scanned.stale, vec![key(bid, &ids[2])], "the short page, to delete");

        // Paged as read: the next start reads nothing after the pages, and loses nothing.
        page_loaded_keys(&store, &bucket, scanned).await.unwrap();
        let page: records::DedupPage = store.get(Keyspace::DEDUP_PAGES, &key(bid, &stale)).unwrap().unwrap();
        let paged: Vec<(ObjectId, String)> = page.keys().map(|k| k.map(|(o, h)| (o, h.to_string())).unwrap()).collect();
        assert_eq!(paged, after);
        assert!(!store.contains(Keyspace::DEDUP_PAGES, &key(bid, &ids[2])).unwrap(), "the merged page is gone");
        let (again, scanned) = load_dedup(&store, &bucket, &buffer).unwrap();
        assert_eq!(
            (scanned.keys.len(), scanned.newest, scanned.stale.len()),
            (0, None, 0),
            "one short page and nothing read: left as is"
        );
        assert_eq!(holds(&again), expected);

        // Many keys: full pages, keyed by their last keys, and the rest under the newest ID.
        let many: Vec<(ObjectId, String)> =
            (0..2 * records::PAGE_KEYS + 5).map(|n| (ObjectId::generate(), format!("k{n}"))).collect();
        let newest = ObjectId::generate();
        page_loaded_keys(
            &store,
            &bucket,
            Scanned { keys: many.clone(), newest: Some(newest.clone()), stale: Vec::new() },
        )
        .await
        .unwrap();
        let pages = pages_of(&store, bid);
        assert_eq!(
            pages.len(),
            5,
            "the stray, the one above and three new: {:?}",
            pages.iter().map(|p| &p.0).collect::<Vec<_>>()
        );
        let full = &pages[3];
        assert_eq!(full.0, key(bid, &many[2 * records::PAGE_KEYS - 1].0), "keyed by its last key");
        assert_eq!((full.1.keys().count(), full.1.generation), (records::PAGE_KEYS, 2));
        assert_eq!((pages[4].0.clone(), pages[4].1.keys().count()), (key(bid, &newest), 5));

        // Exactly full pages, the newest ID read being the last key's: that page stays whole.
        let exact: Vec<(ObjectId, String)> =
            (0..records::PAGE_KEYS).map(|n| (ObjectId::generate(), format!("x{n}"))).collect();
        let newest = exact[records::PAGE_KEYS - 1].0.clone();
        page_loaded_keys(&store, &bucket, Scanned { keys: exact, newest: Some(newest.clone()), stale: Vec::new() })
            .await
            .unwrap();
        let last: records::DedupPage = store.get(Keyspace::DEDUP_PAGES, &key(bid, &newest)).unwrap().unwrap();
        assert_eq!(last.keys().count(), records::PAGE_KEYS);
    }

    /// A bucket's dedup pages, in key order.
    fn pages_of(store: &Store, bucket: &BucketId) -> Vec<(String, records::DedupPage)> {
        store.list(Keyspace::DEDUP_PAGES, &records::prefix(bucket), None, 1000).unwrap()
    }

    /// Short pages (one per start that read anything) are merged: after a start at most one
    /// is left, every key still loads, a full page keeps its place, and the next start's scan
    /// begins no earlier than before (an object after the last short page is still read).
    #[tokio::test]
    async fn short_pages_are_merged_at_start_and_no_key_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let bucket = bucket_of_generation(0);
        let bid = &bucket.bucket_id;
        let key = |id: &ObjectId| records::key(bid, id.as_str());
        let ids: Vec<ObjectId> = (0..records::PAGE_KEYS + 8).map(|_| ObjectId::generate()).collect();
        let page_of = |range: std::ops::Range<usize>| {
            let mut p = records::DedupPage::new(&bucket);
            for n in range {
                p.push(&ids[n], &format!("k{n}"));
            }
            p
        };
        let mut b = Batch::new();
        // Short, full, short, and an empty one keyed by an ID without a key (a start that
        // read only such objects), as starts and the actor write them.
        b.put(Keyspace::DEDUP_PAGES, &key(&ids[2]), &page_of(0..3));
        b.put(Keyspace::DEDUP_PAGES, &key(&ids[records::PAGE_KEYS + 2]), &page_of(3..records::PAGE_KEYS + 3));
        b.put(
            Keyspace::DEDUP_PAGES,
            &key(&ids[records::PAGE_KEYS + 5]),
            &page_of(records::PAGE_KEYS + 3..records::PAGE_KEYS + 6),
        );
        b.put(Keyspace::DEDUP_PAGES, &key(&ids[records::PAGE_KEYS + 6]), &records::DedupPage::new(&bucket));
        store.commit(b).await.unwrap();
        let all =
            |set: &DigestMap<ObjectId>| (0..records::PAGE_KEYS + 6).all(|n| set.get(&format!("k{n}")) == Some(&ids[n]));

        let (set, scanned) = load_dedup(&store, &bucket, &[]).unwrap();
        assert!(all(&set));
        assert_eq!(scanned.keys.len(), 6, "the two short pages' keys");
        assert_eq!(scanned.newest.as_ref(), Some(&ids[records::PAGE_KEYS + 6]), "the last short page's ID");
        page_loaded_keys(&store, &bucket, scanned).await.unwrap();
        let pages = pages_of(&store, bid);
        let shape: Vec<(String, usize)> = pages.iter().map(|(k, p)| (k.clone(), p.keys().count())).collect();
        assert_eq!(
            shape,
            vec![(key(&ids[records::PAGE_KEYS + 2]), records::PAGE_KEYS), (key(&ids[records::PAGE_KEYS + 6]), 6)],
            "the full page kept, one short page at the end"
        );
        let (set, scanned) = load_dedup(&store, &bucket, &[]).unwrap();
        assert!(all(&set), "every key loads from the merged pages");
        assert_eq!((scanned.keys.len(), scanned.stale.len()), (0, 0), "nothing more to merge");

        // An object after the last page is still read, and merged with the short page.
        let mut b = Batch::new();
        let late = &ids[records::PAGE_KEYS + 7];
        let mark = DedupMark { hash: "late".into(), generation: 0 };
        b.put(Keyspace::OBJECTS, &key(late), &json!({"dedup": mark, "metadata": {}}));
        store.commit(b).await.unwrap();
        let (set, scanned) = load_dedup(&store, &bucket, &[]).unwrap();
        assert_eq!(set.get("late"), Some(late));
        assert_eq!((scanned.keys.len(), scanned.newest.as_ref()), (7, Some(late)));
        page_loaded_keys(&store, &bucket, scanned).await.unwrap();
        let pages = pages_of(&store, bid);
        assert_eq!(pages.len(), 2);
        assert_eq!((pages[1].0.clone(), pages[1].1.keys().count()), (key(late), 7));
    }

    /// Many short pages (as a daemon restarted often with a little traffic each time would
    /// leave before merging): their keys become full pages, over several commits, and each
    /// key is then in exactly one page.
    #[tokio::test]
    async fn many_short_pages_become_full_pages_each_key_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let bucket = bucket_of_generation(0);
        let bid = &bucket.bucket_id;
        let per = records::PAGE_KEYS - 6;
        let ids: Vec<ObjectId> = (0..20 * per).map(|_| ObjectId::generate()).collect();
        for chunk in ids.chunks(per) {
            let mut page = records::DedupPage::new(&bucket);
            for id in chunk {
                page.push(id, &format!("h-{id}"));
            }
            let mut b = Batch::new();
            b.put(Keyspace::DEDUP_PAGES, &records::key(bid, chunk[per - 1].as_str()), &page);
            store.commit(b).await.unwrap();
        }
        let (_, scanned) = load_dedup(&store, &bucket, &[]).unwrap();
        assert_eq!((scanned.keys.len(), scanned.stale.len()), (20 * per, 20));
        page_loaded_keys(&store, &bucket, scanned).await.unwrap();
        let pages = pages_of(&store, bid);
        let sizes: Vec<usize> = pages.iter().map(|(_, p)| p.keys().count()).collect();
        let full = (20 * per) / records::PAGE_KEYS;
        assert_eq!(sizes.len(), full + 1, "{sizes:?}");
        assert!(
            sizes[..full].iter().all(|n| *n == records::PAGE_KEYS)
                && sizes[full] == 20 * per - full * records::PAGE_KEYS
        );
        assert_eq!(
            pages[full].0,
            records::key(bid, ids[20 * per - 1].as_str()),
            "the last key's ID keys the last page"
        );
        let mut seen: Vec<ObjectId> =
            pages.iter().flat_map(|(_, p)| p.keys().map(|k| k.unwrap().0).collect::<Vec<_>>()).collect();
        seen.sort();
        assert_eq!(seen, ids, "each key in exactly one page");
        let (set, scanned) = load_dedup(&store, &bucket, &[]).unwrap();
        assert!(ids.iter().all(|id| set.get(&format!("h-{id}")) == Some(id)));
        assert_eq!((scanned.keys.len(), scanned.stale.len()), (0, 0));
    }

    /// A page's ID from the future (the clock stepped back across a restart): IDs made after
    /// the load still sort after it, so the next start's scan after the page finds them.
    #[tokio::test]
    async fn ids_made_after_loading_a_page_from_the_future_sort_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let bucket = bucket_of_generation(0);
        let ahead = ulid::Ulid::from_datetime(std::time::SystemTime::now() + std::time::Duration::from_secs(2));
        let future = ObjectId::parse(&format!("obj_{}", ahead.to_string().to_lowercase())).unwrap();
        let mut page = records::DedupPage::new(&bucket);
        page.push(&future, "f");
        let mut b = Batch::new();
        b.put(Keyspace::DEDUP_PAGES, &records::key(&bucket.bucket_id, future.as_str()), &page);
        store.commit(b).await.unwrap();
        let (set, scanned) = load_dedup(&store, &bucket, &[]).unwrap();
        assert_eq!((set.get("f"), scanned.keys.len()), (Some(&future), 0));
        assert!(ObjectId::generate() > future);
    }

    /// Objects and buffered entries without an index entry get one, page by page; the mark
    /// holds the point reached, so a run cut short resumes there; the mark goes at the end.
    #[tokio::test]
    async fn unindexed_objects_are_indexed_page_by_page_and_a_cut_run_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sled(dir.path()).unwrap();
        let bucket = BucketId::generate();
        let ids: Vec<ObjectId> = (0..8).map(|_| ObjectId::generate()).collect();
        let key = |id: &ObjectId| records::key(&bucket, id.as_str());
        let mut b = Batch::new();
        for (n, id) in ids.iter().enumerate().take(7) {
            let ext = (n != 2).then(|| format!("e{n}"));
            b.put(Keyspace::OBJECTS, &key(id), &json!({"source": {"external_id": ext}, "metadata": {"n": n}}));
        }
        // Already indexed (by an older version, say): left as it is.
        b.put(Keyspace::EXTERNAL_IDS, &key(&ids[1]), "kept");
        b.put(Keyspace::BUFFER, &key(&ids[7]), &json!({"draft": {"source": {"external_id": "e7"}}}));
        let marker = unindexed_marker(&bucket);
        // As if a run had done the objects up to the fourth and been stopped.
        b.put(Keyspace::EXTERNAL_IDS, &marker, &format!("{OBJECTS_AFTER}{}", key(&ids[3])));
        store.commit(b).await.unwrap();

        assert_eq!(index_unindexed_by(&store, &bucket, 2).await.unwrap(), 4, "objects 5-7 and the buffered one");
        let entry = |id: &ObjectId| store.get::<String>(Keyspace::EXTERNAL_IDS, &key(id)).unwrap();
        assert_eq!(entry(&ids[0]), None, "before the point reached: not read again");
        assert_eq!(entry(&ids[1]).as_deref(), Some("kept"));
        assert_eq!(entry(&ids[4]), Some(records::dedup_hash("e4")));
        assert_eq!(entry(&ids[7]), Some(records::dedup_hash("e7")));
        assert!(!store.contains(Keyspace::EXTERNAL_IDS, &marker).unwrap(), "the mark is gone");
        assert_eq!(index_unindexed_by(&store, &bucket, 2).await.unwrap(), 0, "unmarked: nothing to do");

        // Marked afresh (a PATCH): from the start; what has an entry keeps it.
        let mut b = Batch::new();
        b.put(Keyspace::EXTERNAL_IDS, &marker, "objects may lack entries");
        store.commit(b).await.unwrap();
        assert_eq!(index_unindexed_by(&store, &bucket, 2).await.unwrap(), 2, "objects 1 and 4");
        assert_eq!(entry(&ids[0]), Some(records::dedup_hash("e0")));
        assert_eq!(entry(&ids[2]), None, "no external id, no entry");
        let loaded = load_index(&store, &records::prefix(&bucket)).unwrap();
        assert_eq!(loaded.len(), 7, "every object with an external id; the mark is no entry: {loaded:?}");
    }
}
