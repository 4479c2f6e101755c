//! The source-adapter actor: one per bucket with an adapter, supervised by the registry.
//!
//! It alone owns the bucket's dedup set and batch buffer (kept in memory, mirrored in the
//! store) and the adapter's counters. Each ingest is handled without awaiting the disk: the
//! actor updates its state, submits one atomic batch (object or buffer entry, its dedup key
//! inside, + outbox event + counters) to the group committer, and replies with a [`Commit`] the HTTP
//! handler awaits before answering. So concurrent requests share fsyncs and the mailbox never
//! waits for one. A duplicate's reply carries its own (possibly empty) batch: the committer is
//! FIFO, so it resolves only after the original is durable.
//!
//! If a commit fails, the in-memory state may be ahead of the disk: the actor is told
//! ([`AdapterMsg::CommitFailed`]) and fails, and the registry restarts it. `pre_start` first
//! waits for every batch submitted before it (an empty barrier commit), then reloads from
//! the store, so a restarted actor never misses a write of its predecessor.
//!
//! Asynchronous enrichment (Mux): when `kind::metadata_document` returns `Fetch`, the
//! handler spawns the fetch (`fetch.rs`) and moves on; the fetch sends back a continuation
//! message with the asset, which runs `materialize` and `accept` (re-checking dedup, since
//! another delivery may have been accepted meanwhile) and answers the original request.
//!
//! Updates and deletes of existing objects (Supabase UPDATE/DELETE, Mux lifecycle events)
//! live in `lifecycle.rs`; they find objects through the in-memory external-ID index, kept
//! like the dedup set (loaded in `pre_start`, mirrored in the same batches).

use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::alert::{AlertError, NewAlert};
use super::kind::{self, MetadataSource, Operation, SignatureHeaders};
use super::pipeline::{self, PayloadError, Screen, Screened};
use super::records::{
    self, AdapterStats, BatchRecord, BatchStatus, BufferEntry, DedupMark, DigestMap, Draft, ObjectRecord, STATS_KEY,
};
use super::spec::{BatchMode, SourceAdapter};
use super::verify::{self, Proof, Verdict};
use crate::catalog::Bucket;
use crate::events::{EventBus, EventRecord, Scopes};
use crate::ids::{BatchId, BucketId, ObjectId};
use crate::state::Shared;
use crate::store::{Batch, Durable, Keyspace, StoreError};
use crate::util::now_millis;

mod alerts;
mod fetch;
mod lifecycle;
mod writebacks;

pub use alerts::AlertAnswer;
pub(in crate::adapter) use lifecycle::unindexed_marker;
pub use lifecycle::{ChangeRequest, SharedFetch};
pub use writebacks::Requeued;

pub struct SourceAdapterActor;

pub struct AdapterArgs {
    pub shared: Shared,
    pub bucket_id: BucketId,
    /// Its writeback worker runs under it, so that the registry can end the worker of an
    /// actor it had to kill (see [`super::writeback::Lease`]).
    pub lease: super::writeback::Lease,
}

pub enum AdapterMsg {
    Ingest(Box<IngestRequest>),
    /// Periodic: flush an overdue time window.
    Tick,
    /// Flush everything buffered now (before the adapter is removed or changed).
    Drain(RpcReplyPort<Commit>),
    /// `POST …/source-adapter/flush`: flush everything buffered now and go on; replies with
    /// the commit and the batches it makes.
    Flush(RpcReplyPort<(Commit, Flushed)>),
    /// A batch this actor submitted did not reach the disk: fail, so the restart reloads.
    CommitFailed(String),
    /// Fault injection for supervision tests.
    Crash,
    /// Continuation of a Mux asset fetch started by an ingest or a change.
    Fetched(Box<fetch::Fetched>),
    /// An update or delete decided elsewhere (the Mux lifecycle route, via the registry).
    Change(Box<ChangeRequest>),
    /// The writeback worker's latest failure, shown as the status `last_error`.
    WritebackFailed(String),
    /// `DELETE …/objects/{id}` while this actor runs: deleting here serializes the delete
    /// with updates of the same object (an update cannot write a deleted object back).
    /// Replies `None` when the object does not exist.
    DeleteObject(ObjectId, RpcReplyPort<Result<Option<Commit>, StoreError>>),
    /// `GET /v1/debug/buffer/{bucket_id}` (tests): the buffer's byte count as kept, and
    /// recomputed from its entries.
    BufferBytes(RpcReplyPort<BufferBytes>),
    /// `POST /v1/debug/stall-adapter/{bucket_id}` (tests): say it is taken, then wait until
    /// the semaphore is closed, as an actor busy with a long task would (indexing after a
    /// takeover).
    Stall(std::sync::Arc<tokio::sync::Semaphore>, RpcReplyPort<()>),
    /// `POST …/objects/{id}/alerts` while this actor runs (forwarded by the registry): the
    /// actor knows what is still buffered, and records the alert with its writeback job.
    Alert(Box<NewAlert>, RpcReplyPort<Result<AlertAnswer, AlertError>>),
    /// `POST …/writebacks/{writeback_id}/retry` while this actor runs (forwarded by the
    /// registry): a dead job back under its pending key, for this actor's worker to find.
    RequeueWriteback(
        super::writeback::operator::WritebackId,
        RpcReplyPort<Result<Requeued, super::writeback::operator::RequeueError>>,
    ),
}

impl AdapterMsg {
    /// Whether the caller of a call that changes something stopped waiting for its answer
    /// (see `handle`): an admin call whose wait ran out (answered 503), or an ingest its
    /// HTTP task answered 503. The calls that change nothing, the registry's own (a drain),
    /// and Mux lifecycle changes (idempotent, and Mux retries whatever it was answered) are
    /// never dropped.
    fn caller_gone(&self) -> bool {
        match self {
            AdapterMsg::Ingest(req) => {
                req.reply.is_closed() && req.answered_503.load(std::sync::atomic::Ordering::Acquire)
            }
            AdapterMsg::DeleteObject(_, reply) => reply.is_closed(),
            AdapterMsg::Alert(_, reply) => reply.is_closed(),
            AdapterMsg::RequeueWriteback(_, reply) => reply.is_closed(),
            AdapterMsg::Flush(reply) => reply.is_closed(),
            _ => false,
        }
    }
}

/// What [`AdapterMsg::Flush`] made of the buffer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Flushed {
    /// Objects created (every buffered event).
    pub objects: usize,
    /// Their batches, of at most `max_batch_size` objects each.
    pub batch_ids: Vec<BatchId>,
}

/// The answer to [`AdapterMsg::BufferBytes`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct BufferBytes {
    pub entries: usize,
    /// As counted on every change.
    pub counted: usize,
    /// The sum of the entries' stored sizes now: equal to `counted` unless the count drifted.
    pub actual: usize,
}

/// One upstream delivery, as the HTTP frontend hands it over.
pub struct IngestRequest {
    /// The signature headers and the raw body, for a check here when the HTTP task's no
    /// longer holds (see `adapter/verify.rs`). The body is a handle, not a copy.
    pub headers: SignatureHeaders,
    pub raw: Bytes,
    pub auth: IngestAuth,
    pub reply: RpcReplyPort<IngestResult>,
    /// Set by the HTTP task when it gave up waiting and answered 503 ("retry later"): the
    /// actor then drops the request if it has not begun it. A sender that merely hung up
    /// (its own timeout, shorter than ours) is not told to retry, and some never do
    /// (Supabase's database webhooks): its request is carried out.
    pub answered_503: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How far the HTTP task got with a request: nothing is parsed before it is authenticated.
pub struct IngestAuth {
    /// What the HTTP task authenticated the request against (see `adapter/verify.rs`).
    pub proof: Proof,
    /// The body, parsed once authenticated (a parse error is reported only to an
    /// authenticated sender, after the adapter's own refusals).
    pub payload: Result<Value, crate::error::ApiError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStatus {
    Created,
    Buffered,
    Duplicate,
    Ignored,
    /// Existing objects were re-mapped (`object.updated`).
    Updated,
    /// Objects were deleted (`object.deleted`).
    Deleted,
}

impl IngestStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            IngestStatus::Created => "created",
            IngestStatus::Buffered => "buffered",
            IngestStatus::Duplicate => "duplicate",
            IngestStatus::Ignored => "ignored",
            IngestStatus::Updated => "updated",
            IngestStatus::Deleted => "deleted",
        }
    }
}

pub struct IngestOk {
    pub status: IngestStatus,
    pub object_id: Option<ObjectId>,
    /// Every object the event created or changed (updates and deletes may touch several).
    pub object_ids: Vec<ObjectId>,
    /// Await before answering (none for ignored events: nothing is stored).
    pub commit: Option<Commit>,
}

impl IngestOk {
    pub fn new(status: IngestStatus, object_id: Option<ObjectId>, commit: Option<Commit>) -> IngestOk {
        IngestOk { status, object_ids: object_id.iter().cloned().collect(), object_id, commit }
    }
}

pub enum IngestErr {
    /// 401: why (see [`verify::Refused`]).
    Unauthorized(verify::Refused),
    Disabled,
    /// A new object, while the data disk is under `storage.min_free_mb` (see `store/room.rs`):
    /// 503, nothing recorded. Changes and deletes of existing objects still go through.
    ShortOfDisk,
    /// The adapter is being removed (drained); the bucket no longer takes events.
    Gone,
    /// The body is not JSON (400/415): counted as failed (an authenticated sender's event
    /// lost to a bug of its own, which it will send again as it is); the commit holds the
    /// counters.
    Malformed(crate::error::ApiError, Commit),
    /// The event cannot become an object (counted as failed; the commit holds the counters):
    /// 422 naming `field` (`payload`, or the adapter's connection when Mux refused its token).
    Invalid {
        field: &'static str,
        message: String,
        commit: Commit,
        /// The Mux API refused the asset fetch (a refused token, an asset it does not know):
        /// not the event's fault, and a retry may pass once the connection is fixed. The
        /// lifecycle route answers 422 for it too (Mux retries), not a 200 that loses the change.
        refused_fetch: bool,
    },
    /// A native signature that cannot be checked (its secrets cannot be decrypted), on a
    /// request nothing else authenticates: 503, nothing recorded.
    Unverifiable(String),
    /// A lifecycle change whose signature no longer holds where it is applied (its
    /// connection's signing secret changed since the HTTP task's check: see
    /// [`verify::LifecycleCheck`]): the refusal (401, or 503), nothing changed.
    Revoked(crate::error::ApiError),
    /// A dependency (the Mux API) failed in a way a later retry may fix: answer 503 so the
    /// upstream retries (the failure counter is in the commit).
    Retry {
        message: String,
        commit: Commit,
    },
}

pub type IngestResult = Result<IngestOk, IngestErr>;

/// What the handler does next with an event.
enum Step {
    Done(IngestResult),
    /// Update or delete existing objects (may await a store barrier: see `lifecycle.rs`).
    Apply(Box<Apply>),
    /// Fetch the Mux asset outside the handler, then continue (see `fetch.rs`).
    Fetch(Box<fetch::FetchJob>),
}

/// A screened update or delete, with the new content for an update.
struct Apply {
    screened: Screened,
    draft: Option<Draft>,
    dedup_hash: Option<String>,
    origin: Origin,
}

/// Where a change comes from: the ingest route (the adapter's own rules, e.g. Supabase
/// upserts) or the connection-scoped lifecycle route (only existing objects change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Ingest,
    Lifecycle,
}

/// A submitted batch and the events it recorded: await [`Commit::finish`] before answering.
/// Never lost: dropped unfinished (its answer's receiver gone, a client hanging up mid-wait,
/// an error path), it finishes in a task, so its events are still published and a failure
/// still reported. No task per request otherwise.
pub struct Commit(Option<Pending>);

struct Pending {
    durable: Durable,
    events: Vec<EventRecord>,
    bus: EventBus,
    owner: ActorRef<AdapterMsg>,
}

impl Commit {
    /// Waits until the batch is durable, then publishes its events.
    pub async fn finish(mut self) -> Result<(), StoreError> {
        let result = match self.0.as_mut() {
            Some(p) => (&mut p.durable).await,
            None => Err(StoreError::Closed),
        };
        if let Some(p) = self.0.take() {
            p.conclude(&result);
        }
        result
    }
}

impl Pending {
    fn conclude(self, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => self.bus.published(&self.events),
            Err(e) => {
                let _ = self.owner.cast(AdapterMsg::CommitFailed(e.to_string()));
            }
        }
    }
}

impl Drop for Commit {
    fn drop(&mut self) {
        let Some(mut p) = self.0.take() else { return };
        // Outside a runtime (the process ending) there is no one left to tell.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let result = (&mut p.durable).await;
                p.conclude(&result);
            });
        }
    }
}

pub struct AdapterState {
    shared: Shared,
    myself: ActorRef<AdapterMsg>,
    bucket: Bucket,
    adapter: SourceAdapter,
    /// The adapter's authentication settings as published for the HTTP tasks (withdrawn
    /// when this state is dropped): ingests are accepted against these only.
    gate: verify::Published,
    /// sha256(dedup value) → object ID.
    dedup: DigestMap<ObjectId>,
    /// The keys accepted since the last dedup page (see `records.rs`), oldest first.
    unpaged: records::DedupPage,
    /// sha256(external id) → the objects (stored or buffered) made from it.
    xids: DigestMap<Vec<ObjectId>>,
    /// Mux API client, built on the first fetch.
    mux_api: Option<crate::adapter::mux::MuxApi>,
    /// Assets with a fetch in flight for an event that creates their object, and how many.
    creating: std::collections::HashMap<String, u32>,
    /// Their fetches, shared by the deliveries of one asset (see `spawn_fetch`); removed with
    /// the asset's entry in `creating`.
    create_fetches: std::collections::HashMap<String, lifecycle::SharedFetch>,
    /// Of those, the assets a lifecycle update changed meanwhile (it found no object to
    /// change): the fetch's answer may be older than the update, so it is fetched again.
    outdated: std::collections::HashSet<String>,
    /// Accepted events not yet flushed, oldest first.
    buffer: Vec<BufferEntry>,
    /// How many bytes the buffer's entries take as stored (see [`stored_size`]), kept exact
    /// through every push, refresh, removal and flush: past [`MAX_BUFFER_BYTES`] it flushes
    /// early.
    buffer_bytes: usize,
    stats: AdapterStats,
    /// Sends `Tick` every `ingest.flush_tick_ms` while a time window is open (a time_window
    /// buffer holds something), and only then: a thousand idle buckets wake nothing.
    ticker: Option<JoinHandle<()>>,
    /// Set by `Drain`: the adapter is being removed, later events are refused.
    closing: bool,
    /// Sends this bucket's writeback jobs; stopped in `post_stop` (dropping it aborts it).
    writeback: Option<super::writeback::Worker>,
    /// Alert records this actor submitted since its last barrier (an awaited empty commit):
    /// they may not be readable yet, so a delete of their object cannot find them by a scan
    /// and deletes these keys too. Cleared at every alert's barrier: it holds at most one.
    unsynced_alerts: Vec<(ObjectId, String)>,
    /// Stored objects this actor re-wrote (an update, a re-key) since its last barrier: not
    /// perhaps readable as re-written yet, so a change of one of them reads it only after a
    /// barrier (see `indexed_objects`). At most [`REWRITTEN_KEPT`]; past that, `None`: every
    /// read waits for a barrier until the next one.
    rewritten: Option<std::collections::HashSet<ObjectId>>,
}

/// How many re-written objects [`AdapterState::rewritten`] names before it gives up naming them.
const REWRITTEN_KEPT: usize = 4096;

/// The most a bucket's batch buffer holds (as stored) before it flushes early. A flush is
/// one atomic write of the buffer, its objects and their events: 1,000 events of 1 MiB made
/// a 1.9 GB log record, 9 GB of memory at its peak, and stalled every other bucket's ingest
/// for seconds.
pub const MAX_BUFFER_BYTES: usize = 16 << 20;

impl Actor for SourceAdapterActor {
    type Msg = AdapterMsg;
    type State = AdapterState;
    type Arguments = AdapterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: AdapterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let AdapterArgs { shared, bucket_id, lease } = args;
        // Barrier: everything submitted before this point (by a predecessor) is applied.
        shared.store.commit(Batch::new()).await?;
        let store = &shared.store;
        let bucket: Bucket = store
            .get(Keyspace::BUCKETS, bucket_id.as_str())?
            .ok_or_else(|| ActorProcessingErr::from(format!("bucket {bucket_id} is gone")))?;
        let adapter = bucket
            .source_adapter
            .clone()
            .ok_or_else(|| ActorProcessingErr::from(format!("bucket {bucket_id} has no source adapter")))?;
        let prefix = records::prefix(&bucket_id);
        let mut buffer = Vec::new();
        store.for_each::<BufferEntry>(Keyspace::BUFFER, &prefix, |_, v| {
            buffer.push(v);
            true
        })?;
        buffer.sort_by_key(|e| e.received_at_ms);
        let (dedup, scanned) = lifecycle::load_dedup(store, &bucket, &buffer)?;
        lifecycle::page_loaded_keys(store, &bucket, scanned).await?;
        let unpaged = records::DedupPage::new(&bucket);
        let xids = lifecycle::load_index(store, &prefix)?;
        let stats = records::AdapterStats::bounded(
            store.get(Keyspace::STATS, &records::key(&bucket_id, STATS_KEY))?.unwrap_or_default(),
        );
        let writeback = super::writeback::Worker::start(&shared, &bucket_id, &adapter, myself.clone(), &lease);
        if writeback.is_none() {
            let mut batch = Batch::new();
            let n = super::writeback::give_up_barred(store, &bucket_id, adapter.adapter_type, &mut batch)?;
            if n > 0 {
                store.commit(batch).await?;
                let kind = adapter.adapter_type.as_str();
                tracing::warn!(bucket_id = %bucket_id, jobs = n, "pending writebacks of another adapter type given up (the adapter is now {kind})");
            }
        }
        // Last, once nothing can fail: from now on the HTTP tasks check ingests against it.
        let gate = shared.gates.publish(&bucket_id, &adapter);
        tracing::debug!(bucket_id = %bucket_id, buffered = buffer.len(), dedup = dedup.len(), "source adapter started");
        Ok(AdapterState {
            shared,
            myself,
            bucket,
            adapter,
            gate,
            dedup,
            unpaged,
            xids,
            mux_api: None,
            creating: Default::default(),
            create_fetches: Default::default(),
            outdated: Default::default(),
            buffer_bytes: buffer.iter().map(stored_size).sum(),
            buffer,
            stats,
            ticker: None,
            closing: false,
            writeback,
            unsynced_alerts: Vec::new(),
            rewritten: Some(Default::default()),
        })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Here, not in pre_start: the spawn (the registry, a PATCH's answer) does not wait for
        // it; messages do (they queue until post_start returns). Only for an adapter that uses
        // the index: a bucket handed back to generic_webhook keeps its mark for a later one.
        let indexed = if crate::adapter::kind::changes_by_external_id(state.adapter.adapter_type) {
            lifecycle::index_unindexed(&state.shared.store, &state.bucket.bucket_id).await?
        } else {
            0
        };
        if indexed > 0 {
            let bucket_id = &state.bucket.bucket_id;
            tracing::info!(bucket_id = %bucket_id, entries = indexed, "objects indexed by external ID for the new adapter type");
            state.xids = lifecycle::load_index(&state.shared.store, &records::prefix(bucket_id))?;
        }
        // A restart (or a mode change) may find a window that is overdue or a buffer the
        // new mode does not keep: flush it now.
        let b = &state.adapter.batching;
        // As an ingest would: at max_batch_size (a smaller one now) or at the byte bound (a
        // crash can come between the ingest that reached it and its flush).
        let full = state.buffer.len() >= b.max_batch_size || state.buffer_bytes >= MAX_BUFFER_BYTES;
        let due = match b.mode {
            BatchMode::Immediate => !state.buffer.is_empty(),
            BatchMode::TimeWindow => state.window_due(now_millis()) || full,
            BatchMode::Count => full,
        };
        if due {
            state.flush_in_background("restart");
        }
        state.keep_ticker();
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        // Now, not when the supervisor drops the returned state: a successor may start first.
        // Awaited, so that no write of this worker's (an attempt's outcome) can land after
        // the successor's start read the jobs (see `give_up_barred`).
        if let Some(worker) = state.writeback.take() {
            worker.stop().await;
        }
        // Likewise: ractor hands a stopped actor's state to its supervisor's event, so the
        // gate would otherwise stay published until the registry handles that.
        state.gate.withdraw();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if msg.caller_gone() {
            // Answered 503 "retry" already (the wait ran out while the message queued behind
            // a slow one): done now, it would change what the caller was told is unchanged
            // (an object deleted, a second object from an ingest without a dedup key). Only a
            // message handled before its caller gives up is carried out.
            tracing::debug!(bucket_id = %state.bucket.bucket_id, "a call whose caller stopped waiting was dropped");
            return Ok(());
        }
        match msg {
            AdapterMsg::Ingest(req) => {
                let IngestRequest { headers, raw, auth, reply, .. } = *req;
                match state.ingest(&headers, &raw, auth) {
                    Step::Done(result) => {
                        let _ = reply.send(result);
                    }
                    Step::Apply(apply) => {
                        let _ = reply.send(state.apply_change(*apply).await);
                    }
                    Step::Fetch(job) => state.spawn_fetch(*job, reply),
                }
            }
            AdapterMsg::Fetched(f) => state.fetched(*f).await,
            AdapterMsg::Change(req) => state.change(*req).await,
            AdapterMsg::DeleteObject(object_id, reply) => {
                let _ = reply.send(state.delete_object(&object_id).await);
            }
            AdapterMsg::Alert(alert, reply) => {
                let _ = reply.send(state.alert(*alert).await);
            }
            AdapterMsg::RequeueWriteback(id, reply) => {
                let _ = reply.send(state.requeue_writeback(&id).await);
            }
            AdapterMsg::Tick => {
                if state.adapter.batching.mode == BatchMode::TimeWindow && state.window_due(now_millis()) {
                    state.flush_in_background("window");
                }
            }
            AdapterMsg::Drain(reply) => {
                state.closing = true;
                let (batch, events, _) = state.flush_alone("drain");
                let _ = reply.send(state.submit(batch, events));
            }
            AdapterMsg::Flush(reply) => {
                let objects = state.buffer.len();
                let (batch, events, batch_ids) = state.flush_alone("manual");
                let _ = reply.send((state.submit(batch, events), Flushed { objects, batch_ids }));
            }
            AdapterMsg::WritebackFailed(e) => {
                state.stats.error(now_millis(), e);
                let mut batch = Batch::new();
                state.put_stats(&mut batch);
                let commit = state.submit(batch, Vec::new());
                tokio::spawn(commit.finish());
            }
            AdapterMsg::CommitFailed(e) => {
                return Err(ActorProcessingErr::from(format!("a batch did not reach the disk: {e}")));
            }
            AdapterMsg::BufferBytes(reply) => {
                let actual = state.buffer.iter().map(stored_size).sum();
                let _ = reply.send(BufferBytes { entries: state.buffer.len(), counted: state.buffer_bytes, actual });
            }
            AdapterMsg::Stall(release, taken) => {
                let _ = taken.send(());
                let _ = release.acquire().await;
            }
            AdapterMsg::Crash => return Err(ActorProcessingErr::from("crash requested through /v1/debug/crash")),
        }
        // Whatever the message did to the buffer (an ingest, a flush, a delete of a buffered
        // object), the ticker runs exactly while a window is open.
        state.keep_ticker();
        Ok(())
    }
}

/// The field a Storage path's failure names (the setting that needs the project URL).
const STORAGE_FIELD: &str = "source_adapter.blob_source.storage_bucket";

impl AdapterState {
    fn bucket_id(&self) -> &BucketId {
        &self.bucket.bucket_id
    }

    fn submit(&self, batch: Batch, events: Vec<EventRecord>) -> Commit {
        Commit(Some(Pending {
            durable: self.shared.store.submit(batch),
            events,
            bus: self.shared.bus.clone(),
            owner: self.myself.clone(),
        }))
    }

    fn put_stats(&self, batch: &mut Batch) {
        batch.put(Keyspace::STATS, &records::key(self.bucket_id(), STATS_KEY), &self.stats);
    }

    /// Starts the ticker when a time window opens and stops it when the window is gone.
    fn keep_ticker(&mut self) {
        let open = self.adapter.batching.mode == BatchMode::TimeWindow && !self.buffer.is_empty();
        match (open, self.ticker.is_some()) {
            (true, false) => {
                let tick = Duration::from_millis(self.shared.config.ingest.flush_tick_ms);
                self.ticker = Some(self.myself.send_interval(tick, || AdapterMsg::Tick));
            }
            (false, true) => {
                if let Some(t) = self.ticker.take() {
                    t.abort();
                }
            }
            _ => {}
        }
    }

    fn window_due(&self, now_ms: u64) -> bool {
        self.buffer
            .first()
            .is_some_and(|oldest| now_ms >= oldest.received_at_ms + self.adapter.batching.window_seconds * 1000)
    }

    fn ingest(&mut self, headers: &SignatureHeaders, raw: &Bytes, auth: IngestAuth) -> Step {
        if let Err(e) = self.admit(headers, raw, &auth) {
            return Step::Done(Err(e));
        }
        // After the signature: an unauthenticated caller learns nothing of the adapter's state.
        if self.closing {
            return Step::Done(Err(IngestErr::Gone));
        }
        if !self.adapter.enabled {
            return Step::Done(Err(IngestErr::Disabled));
        }
        let now = now_millis();
        let payload = match auth.payload {
            Ok(p) => p,
            Err(e) => {
                let commit = self.count_failure(now, format!("an event was refused: {e}"));
                return Step::Done(Err(IngestErr::Malformed(e, commit)));
            }
        };
        let screened = match pipeline::screen(&self.adapter, &payload) {
            Err(e) => return Step::Done(Err(self.fail(now, e))),
            Ok(Screen::Ignored) => return Step::Done(Ok(IngestOk::new(IngestStatus::Ignored, None, None))),
            Ok(Screen::Accepted(s)) => s,
        };
        // Dedup guards creation only: updates and deletes of a known thing share its key. An
        // UPDATE that may create its row's object (an upsert, see `apply_change`) is keyed as
        // its INSERT is, for that case alone.
        let dedup_hash = match screened.operation {
            Operation::Create => screened.dedup_value.as_deref().map(|v| pipeline::dedup_hash(&self.adapter, v, raw)),
            Operation::Update if kind::upsert_on_update(self.adapter.adapter_type) => {
                screened.dedup_value.as_deref().map(|v| pipeline::dedup_hash(&self.adapter, v, raw))
            }
            Operation::Update | Operation::Delete => None,
        };
        let create = screened.operation == Operation::Create;
        if let Some(object_id) = dedup_hash.as_ref().filter(|_| create).and_then(|h| self.dedup.get(h)).cloned() {
            return Step::Done(Ok(self.duplicate(now, object_id)));
        }
        // Last, so a duplicate is still answered as one (it stores nothing new).
        if screened.operation == Operation::Create && self.shared.room.short() {
            return Step::Done(Err(IngestErr::ShortOfDisk));
        }
        self.prepare(now, screened, payload, dedup_hash, Origin::Ingest)
    }

    /// Answers an event whose dedup value is in the dedup set: `duplicate`, naming the object
    /// made from it (which may have been deleted since). Counted as processed; the (stats
    /// only) commit resolves after the original's, the committer being FIFO.
    fn duplicate(&mut self, now: u64, object_id: ObjectId) -> IngestOk {
        self.stats.processed(now);
        let mut batch = Batch::new();
        self.put_stats(&mut batch);
        let commit = self.submit(batch, Vec::new());
        IngestOk::new(IngestStatus::Duplicate, Some(object_id), Some(commit))
    }

    /// Accepts a request authenticated against this actor's own gate; any other (verified
    /// against a predecessor's secrets, or a connection since changed) is
    /// checked again here, against the current adapter: the rare path, right after a change.
    fn admit(&self, headers: &SignatureHeaders, raw: &Bytes, auth: &IngestAuth) -> Result<(), IngestErr> {
        if auth.proof.holds(self.gate.revision, self.shared.gates.connections_revision()) {
            return Ok(());
        }
        match verify::authenticate(&self.shared, &self.gate, headers, raw) {
            Verdict::Authentic(_) => Ok(()),
            // Nothing is recorded for an unauthenticated request: it must not write to the
            // store or replace the operator's `last_error` (the daemon log says why).
            Verdict::Unauthorized(refused) => Err(IngestErr::Unauthorized(refused)),
            Verdict::Unverifiable(e) => Err(IngestErr::Unverifiable(e)),
        }
    }

    /// From a screened event to its effect: a create (now or after a fetch) or a change.
    fn prepare(
        &mut self,
        now: u64,
        screened: Screened,
        payload: Value,
        dedup_hash: Option<String>,
        origin: Origin,
    ) -> Step {
        if screened.operation == Operation::Delete {
            return Step::Apply(Box::new(Apply { screened, draft: None, dedup_hash, origin }));
        }
        // An UPDATE that would be an upsert of a row whose object is gone (deleted, its dedup
        // value kept) is a duplicate (see `apply_change`): answered so before its record is
        // mapped, so a record the mapping refuses (no file URL, say) does not make it a 422.
        if screened.operation == Operation::Update
            && origin == Origin::Ingest
            && kind::upsert_on_update(self.adapter.adapter_type)
            && screened.previous_external_id.is_none()
            && screened.external_id.as_deref().is_some_and(|e| !self.xids.contains_key(&records::dedup_hash(e)))
        {
            let hash = dedup_hash.clone().or_else(|| screened.dedup_value.as_deref().map(records::dedup_hash));
            if let Some(object_id) = hash.as_ref().and_then(|h| self.dedup.get(h)).cloned() {
                return Step::Done(Ok(self.duplicate(now, object_id)));
            }
        }
        let draft = match kind::metadata_document(&self.adapter, &payload) {
            Err(e) => Err(e),
            Ok(MetadataSource::Inline(doc)) => {
                let storage = match pipeline::needs_storage(&self.adapter, &doc) {
                    false => None,
                    true => match self.storage_base() {
                        Ok(Ok(base)) => Some(base),
                        Ok(Err(e)) => return Step::Done(Err(self.fail_at(now, STORAGE_FIELD, e))),
                        // Credentials that exist but cannot be read: a retry may succeed once fixed.
                        Err(e) => return Step::Done(Err(self.retry(now, e))),
                    },
                };
                let schema = &self.bucket.bucket_schema;
                pipeline::materialize_with_storage(&self.adapter, schema, &payload, &doc, &screened, storage.as_ref())
            }
            Ok(MetadataSource::Fetch(req)) => match self.fetch_job(req, &screened, &payload, &dedup_hash, origin) {
                Ok(Some(job)) => return Step::Fetch(Box::new(job)),
                // No API credentials, for an event whose `data` is a part of the asset (an
                // upload, a track): nothing to map the asset from.
                Ok(None) if crate::adapter::mux::is_asset_part_event(&payload) => {
                    Err(crate::adapter::pipeline::PayloadError(
                        "this event describes a part of the asset (an upload or a track), not the asset: mapping it \
                         needs the Mux API credentials (access_token_id/secret) to read the asset"
                            .into(),
                    ))
                }
                // No API credentials: map what the webhook's asset carries (no playback URL).
                Ok(None) => {
                    let doc = crate::adapter::mux::event_asset(&payload).map(|a| kind::mux_document(&payload, a));
                    let doc = doc.as_ref().unwrap_or(&payload);
                    pipeline::materialize(&self.adapter, &self.bucket.bucket_schema, &payload, doc, &screened)
                }
                // Credentials that exist but cannot be read: a retry may succeed once fixed.
                Err(e) => return Step::Done(Err(self.retry(now, e))),
            },
        };
        let draft = match draft {
            Ok(d) => d,
            Err(e) => return Step::Done(Err(self.fail(now, e))),
        };
        match screened.operation {
            Operation::Create => Step::Done(Ok(self.accept(now, draft, dedup_hash))),
            _ => Step::Apply(Box::new(Apply { screened, draft: Some(draft), dedup_hash, origin })),
        }
    }

    /// The public URL of the adapter's Supabase Storage bucket (`blob_source.storage_bucket`),
    /// under its connection's project URL, read for this event only. `Err`: the credentials
    /// cannot be read (a retry may get past it); `Ok(Err)`: the adapter has no usable
    /// project URL, which no retry changes.
    fn storage_base(&self) -> Result<Result<url::Url, String>, String> {
        let bucket = self.adapter.blob_source.as_ref().and_then(|b| b.storage_bucket.as_deref()).unwrap_or_default();
        Ok(match self.credentials()? {
            Some(crate::catalog::connection::ProviderConfig::Supabase(c)) => pipeline::storage_base(&c.url, bucket)
                .ok_or_else(|| "the Supabase project URL of the adapter's credentials does not parse".to_string()),
            _ => Err("needs the adapter's Supabase project URL (its connection or credentials), which it does not \
                      have"
                .to_string()),
        })
    }

    /// Stores an accepted event: an object now (immediate) or a buffer entry.
    fn accept(&mut self, now: u64, draft: Draft, dedup_hash: Option<String>) -> IngestOk {
        let object_id = ObjectId::generate();
        let mut batch = Batch::new();
        let mut events = Vec::new();
        self.index(&mut batch, &draft, &object_id);
        // The key goes in the record (see `records.rs`), and in the set now.
        let dedup = dedup_hash.map(|h| {
            self.dedup.insert(&h, object_id.clone());
            self.unpaged.add(&self.bucket, &mut batch, &object_id, &h);
            DedupMark::new(h, &self.bucket)
        });
        self.stats.processed(now);
        let status = match self.adapter.batching.mode {
            BatchMode::Immediate => {
                let rec = ObjectRecord::new(object_id.clone(), self.bucket_id().clone(), draft, None, dedup);
                batch.put(Keyspace::OBJECTS, &records::key(self.bucket_id(), object_id.as_str()), &rec);
                let scopes = Scopes { namespace: &self.bucket.namespace, key: object_id.as_str() };
                events.push(self.shared.bus.record(&mut batch, "object.created", || rec.event_payload(), scopes));
                crate::metrics::ingest_objects_created(1);
                IngestStatus::Created
            }
            BatchMode::TimeWindow | BatchMode::Count => {
                let entry = BufferEntry { object_id: object_id.clone(), received_at_ms: now, draft, dedup };
                self.buffer_bytes +=
                    batch.put_new(Keyspace::BUFFER, &records::key(self.bucket_id(), object_id.as_str()), &entry);
                self.buffer.push(entry);
                crate::metrics::ingest_buffered();
                // Flush early, in the same atomic batch (the buffer put above is undone by the
                // flush's delete of the same key): at max_batch_size, or when the buffer's
                // bytes would make one flush (a single log record, held in memory) too large.
                if self.buffer.len() >= self.adapter.batching.max_batch_size {
                    self.flush_into(&mut batch, &mut events, "size");
                } else if self.buffer_bytes >= MAX_BUFFER_BYTES {
                    self.flush_into(&mut batch, &mut events, "bytes");
                }
                IngestStatus::Buffered
            }
        };
        self.put_stats(&mut batch);
        IngestOk::new(status, Some(object_id), Some(self.submit(batch, events)))
    }

    fn fail(&mut self, now: u64, e: PayloadError) -> IngestErr {
        self.fail_at(now, "payload", e.0)
    }

    /// As [`AdapterState::fail`], for a failure another field than the payload causes.
    fn fail_at(&mut self, now: u64, field: &'static str, message: String) -> IngestErr {
        let commit = self.count_failure(now, message.clone());
        IngestErr::Invalid { field, message, commit, refused_fetch: false }
    }

    /// Counts a refused event as failed, `message` its `last_error`: the commit of the
    /// counters, which the answer waits for.
    fn count_failure(&mut self, now: u64, message: String) -> Commit {
        self.stats.failed(now, message);
        let mut batch = Batch::new();
        self.put_stats(&mut batch);
        self.submit(batch, Vec::new())
    }

    /// Turns the whole buffer into objects and batches of at most `max_batch_size`, and
    /// returns the batches' IDs.
    fn flush_into(&mut self, batch: &mut Batch, events: &mut Vec<EventRecord>, trigger: &'static str) -> Vec<BatchId> {
        let mut made = Vec::new();
        if self.buffer.is_empty() {
            return made;
        }
        let max = self.adapter.batching.max_batch_size.max(1);
        let bucket_id = self.bucket_id().clone();
        let mut pending = std::mem::take(&mut self.buffer);
        self.buffer_bytes = 0;
        let auto = self.adapter.batching.auto_submit;
        let writeback = super::writeback::on_batch_complete(&self.adapter).filter(|_| auto).cloned();
        let mut skipped = None;
        while !pending.is_empty() {
            let take = pending.len().min(max);
            let chunk: Vec<BufferEntry> = pending.drain(..take).collect();
            let batch_id = BatchId::generate();
            let mut object_ids = Vec::with_capacity(chunk.len());
            for e in chunk {
                let key = records::key(&bucket_id, e.object_id.as_str());
                let rec = ObjectRecord::new(e.object_id, bucket_id.clone(), e.draft, Some(batch_id.clone()), e.dedup);
                batch.put(Keyspace::OBJECTS, &key, &rec);
                batch.delete(Keyspace::BUFFER, &key);
                if let Some(wb) = &writeback {
                    if let Some(why) = super::writeback::record(batch, self.adapter.adapter_type, wb, &rec, &batch_id) {
                        skipped = Some(why);
                    }
                }
                let scopes = Scopes { namespace: &self.bucket.namespace, key: rec.object_id.as_str() };
                events.push(self.shared.bus.record(batch, "object.created", || rec.event_payload(), scopes));
                object_ids.push(rec.object_id);
            }
            let now = crate::util::now_rfc3339();
            let mut br = BatchRecord {
                batch_id,
                bucket_id: bucket_id.clone(),
                object_ids,
                status: BatchStatus::Pending,
                created_at: now.clone(),
                submitted_at: None,
                completed_at: None,
                deleted_object_ids: Vec::new(),
            };
            if self.adapter.batching.auto_submit {
                br.submit();
                let scopes = Scopes { namespace: &self.bucket.namespace, key: br.batch_id.as_str() };
                events.push(self.shared.bus.record(batch, "batch.completed", || br.completed_payload(&[]), scopes));
            }
            batch.put(Keyspace::BATCHES, &records::key(&bucket_id, br.batch_id.as_str()), &br);
            made.push(br.batch_id.clone());
            crate::metrics::ingest_flush(trigger);
            crate::metrics::ingest_objects_created(br.object_ids.len());
            tracing::debug!(bucket_id = %bucket_id, batch_id = %br.batch_id, objects = br.object_ids.len(), trigger, "flushed");
            self.stats.last_flush_at = Some(now);
        }
        if let Some(why) = skipped {
            // Where an operator looks for writeback failures (as for an alert's skip).
            tracing::warn!(bucket_id = %bucket_id, "{why}");
            self.stats.error(crate::util::now_millis(), why);
        }
        self.put_stats(batch);
        made
    }

    /// Replaces buffered entries' content with a newer draft of the same upstream thing, in
    /// memory and in `batch`, keeping the byte count exact; flushes when they grew past
    /// [`MAX_BUFFER_BYTES`] (same batch: the flush's deletes undo the puts).
    fn refresh_buffered(&mut self, batch: &mut Batch, events: &mut Vec<EventRecord>, ids: &[ObjectId], draft: &Draft) {
        if ids.is_empty() {
            return;
        }
        let bucket_id = self.bucket.bucket_id.clone();
        for entry in self.buffer.iter_mut().filter(|e| ids.contains(&e.object_id)) {
            let old = stored_size(entry);
            entry.draft.refresh(draft.clone());
            let new = batch.put(Keyspace::BUFFER, &records::key(&bucket_id, entry.object_id.as_str()), &*entry);
            self.buffer_bytes = self.buffer_bytes.saturating_sub(old) + new;
        }
        if self.buffer_bytes >= MAX_BUFFER_BYTES {
            self.flush_into(batch, events, "bytes");
        }
    }

    /// Takes one entry out of the buffer (not out of the store), keeping the byte count exact.
    fn unbuffer(&mut self, object_id: &ObjectId) -> Option<BufferEntry> {
        let at = self.buffer.iter().position(|e| &e.object_id == object_id)?;
        let entry = self.buffer.remove(at);
        self.buffer_bytes = self.buffer_bytes.saturating_sub(stored_size(&entry));
        Some(entry)
    }

    /// [`AdapterState::flush_into`] a store batch of its own: that batch, its events, and the
    /// IDs of the batches of objects made.
    fn flush_alone(&mut self, trigger: &'static str) -> (Batch, Vec<EventRecord>, Vec<BatchId>) {
        let mut batch = Batch::new();
        let mut events = Vec::new();
        let made = self.flush_into(&mut batch, &mut events, trigger);
        (batch, events, made)
    }

    /// A flush nobody waits for (timer, restart): its commit is awaited in a task.
    fn flush_in_background(&mut self, trigger: &'static str) {
        let (batch, events, _) = self.flush_alone(trigger);
        if batch.is_empty() {
            return;
        }
        let commit = self.submit(batch, events);
        tokio::spawn(async move {
            let _ = commit.finish().await;
        });
    }
}

/// A buffer entry's size as stored (what [`Batch::put`] returns for it): the unit of
/// [`AdapterState::buffer_bytes`].
fn stored_size(entry: &BufferEntry) -> usize {
    serde_json::to_vec(entry).map_or(0, |v| v.len())
}
