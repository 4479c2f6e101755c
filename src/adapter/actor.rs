//! The source-adapter actor: one per bucket with an adapter, supervised by the registry.
//!
//! It alone owns the bucket's dedup set and batch buffer (kept in memory, mirrored in the
//! store) and the adapter's counters. Each ingest is handled without awaiting the disk: the
//! actor updates its state, submits one atomic batch (object or buffer entry + dedup entry +
//! outbox event + counters) to the group committer, and replies with a [`Commit`] the HTTP
//! handler awaits before answering. So concurrent requests share fsyncs and the mailbox never
//! waits for one. A duplicate's reply carries its own (possibly empty) batch: the committer is
//! FIFO, so it resolves only after the original is durable.
//!
//! If a commit fails, the in-memory state may be ahead of the disk: the actor is told
//! ([`AdapterMsg::CommitFailed`]) and fails, and the registry restarts it. `pre_start` first
//! waits for every batch submitted before it (an empty barrier commit), then reloads from
//! the store, so a restarted actor never misses a write of its predecessor.
//!
//! Seam for asynchronous enrichment (Mux, issue 4): when `kind::metadata_document` returns
//! `Fetch`, the handler must spawn the fetch and send itself a continuation message carrying
//! the screened event and the fetched document, then run `materialize` and `accept` as
//! below (re-checking dedup, since another delivery may have been accepted meanwhile).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::Value;
use tokio::task::JoinHandle;

use super::kind::{self, MetadataSource, Operation, SignatureHeaders};
use super::pipeline::{self, PayloadError, Screen};
use super::records::{
    self, AdapterStats, BatchRecord, BatchStatus, BufferEntry, DedupEntry, Draft, ObjectRecord, STATS_KEY,
};
use super::spec::{BatchMode, SourceAdapter};
use crate::catalog::connection::ProviderConfig;
use crate::catalog::{Bucket, Connection};
use crate::events::{EventBus, EventRecord};
use crate::ids::{BatchId, BucketId, ObjectId};
use crate::state::Shared;
use crate::store::{Batch, Durable, Keyspace, StoreError};
use crate::util::now_millis;

pub struct SourceAdapterActor;

pub struct AdapterArgs {
    pub shared: Shared,
    pub bucket_id: BucketId,
}

pub enum AdapterMsg {
    Ingest(Box<IngestRequest>),
    /// Periodic: flush an overdue time window.
    Tick,
    /// Flush everything buffered now (before the adapter is removed or changed).
    Drain(RpcReplyPort<Commit>),
    /// A batch this actor submitted did not reach the disk: fail, so the restart reloads.
    CommitFailed(String),
    /// Fault injection for supervision tests.
    Crash,
}

/// One upstream delivery, as the HTTP frontend hands it over.
pub struct IngestRequest {
    pub headers: SignatureHeaders,
    pub raw: Bytes,
    /// The parsed body; a parse error is reported only to an authenticated sender.
    pub payload: Result<Value, crate::error::ApiError>,
    pub reply: RpcReplyPort<IngestResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestStatus {
    Created,
    Buffered,
    Duplicate,
    Ignored,
}

impl IngestStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            IngestStatus::Created => "created",
            IngestStatus::Buffered => "buffered",
            IngestStatus::Duplicate => "duplicate",
            IngestStatus::Ignored => "ignored",
        }
    }
}

pub struct IngestOk {
    pub status: IngestStatus,
    pub object_id: Option<ObjectId>,
    /// Await before answering (none for ignored events: nothing is stored).
    pub commit: Option<Commit>,
}

pub enum IngestErr {
    Unauthorized,
    Disabled,
    /// The adapter is being removed (drained); the bucket no longer takes events.
    Gone,
    /// The body is not JSON (400/415).
    Malformed(crate::error::ApiError),
    /// The payload cannot become an object (counted as failed; the commit holds the counters).
    Invalid {
        message: String,
        commit: Commit,
    },
}

pub type IngestResult = Result<IngestOk, IngestErr>;

/// A submitted batch and the events it recorded: await [`Commit::finish`] before answering.
pub struct Commit {
    durable: Durable,
    events: Vec<EventRecord>,
    bus: EventBus,
    owner: ActorRef<AdapterMsg>,
}

impl Commit {
    /// Waits until the batch is durable, then publishes its events. If the caller stops
    /// waiting (a client hanging up drops the handler's future), a task takes over, so the
    /// publication (or the failure report) is never skipped. No task per request otherwise.
    pub async fn finish(self) -> Result<(), StoreError> {
        let mut guard = Unfinished(Some(self));
        let result = match guard.0.as_mut() {
            Some(c) => (&mut c.durable).await,
            None => Err(StoreError::Closed),
        };
        if let Some(c) = guard.0.take() {
            c.conclude(&result);
        }
        result
    }

    fn conclude(self, result: &Result<(), StoreError>) {
        match result {
            Ok(()) => self.bus.published(&self.events),
            Err(e) => {
                let _ = self.owner.cast(AdapterMsg::CommitFailed(e.to_string()));
            }
        }
    }
}

/// A [`Commit`] whose waiter went away before it resolved: finish it in a task.
struct Unfinished(Option<Commit>);

impl Drop for Unfinished {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            tokio::spawn(async move {
                let result = (&mut c.durable).await;
                c.conclude(&result);
            });
        }
    }
}

pub struct AdapterState {
    shared: Shared,
    myself: ActorRef<AdapterMsg>,
    bucket: Bucket,
    adapter: SourceAdapter,
    /// Decrypted connection config, for native signature checks (issue 4).
    connection: Option<ProviderConfig>,
    /// sha256(dedup value) → object ID.
    dedup: HashMap<String, ObjectId>,
    /// Accepted events not yet flushed, oldest first.
    buffer: Vec<BufferEntry>,
    stats: AdapterStats,
    ticker: Option<JoinHandle<()>>,
    /// Set by `Drain`: the adapter is being removed, later events are refused.
    closing: bool,
}

impl Actor for SourceAdapterActor {
    type Msg = AdapterMsg;
    type State = AdapterState;
    type Arguments = AdapterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: AdapterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let AdapterArgs { shared, bucket_id } = args;
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
        let connection = match &adapter.connection_id {
            None => None,
            Some(id) => match store.get::<Connection>(Keyspace::CONNECTIONS, id.as_str())? {
                None => None,
                Some(c) => match c.open(&shared.secrets) {
                    Ok(cfg) => Some(cfg),
                    Err(e) => {
                        tracing::error!(bucket_id = %bucket_id, connection_id = %id, error = %e, "open connection");
                        None
                    }
                },
            },
        };
        let prefix = records::prefix(&bucket_id);
        let mut dedup = HashMap::new();
        store.for_each::<DedupEntry>(Keyspace::DEDUP, &prefix, |k, v| {
            dedup.insert(k[prefix.len()..].to_string(), v.object_id);
            true
        })?;
        let mut buffer = Vec::new();
        store.for_each::<BufferEntry>(Keyspace::BUFFER, &prefix, |_, v| {
            buffer.push(v);
            true
        })?;
        buffer.sort_by_key(|e| e.received_at_ms);
        let stats = store.get(Keyspace::STATS, &records::key(&bucket_id, STATS_KEY))?.unwrap_or_default();
        let tick = Duration::from_millis(shared.config.ingest.flush_tick_ms);
        let ticker = Some(myself.send_interval(tick, || AdapterMsg::Tick));
        tracing::debug!(bucket_id = %bucket_id, buffered = buffer.len(), dedup = dedup.len(), "source adapter started");
        Ok(AdapterState { shared, myself, bucket, adapter, connection, dedup, buffer, stats, ticker, closing: false })
    }

    async fn post_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A restart (or a mode change) may find a window that is overdue or a buffer the
        // new mode does not keep: flush it now.
        let b = &state.adapter.batching;
        let due = match b.mode {
            BatchMode::Immediate => !state.buffer.is_empty(),
            BatchMode::TimeWindow => state.window_due(now_millis()),
            BatchMode::Count => state.buffer.len() >= b.max_batch_size,
        };
        if due {
            state.flush_in_background("restart");
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AdapterMsg::Ingest(req) => {
                let IngestRequest { headers, raw, payload, reply } = *req;
                let result = state.ingest(&headers, &raw, payload);
                let _ = reply.send(result);
            }
            AdapterMsg::Tick => {
                if state.adapter.batching.mode == BatchMode::TimeWindow && state.window_due(now_millis()) {
                    state.flush_in_background("window");
                }
            }
            AdapterMsg::Drain(reply) => {
                state.closing = true;
                let mut batch = Batch::new();
                let mut events = Vec::new();
                state.flush_into(&mut batch, &mut events, "drain");
                let _ = reply.send(state.submit(batch, events));
            }
            AdapterMsg::CommitFailed(e) => {
                return Err(ActorProcessingErr::from(format!("a batch did not reach the disk: {e}")));
            }
            AdapterMsg::Crash => return Err(ActorProcessingErr::from("crash requested through /v1/debug/crash")),
        }
        Ok(())
    }
}

impl AdapterState {
    fn bucket_id(&self) -> &BucketId {
        &self.bucket.bucket_id
    }

    fn submit(&self, batch: Batch, events: Vec<EventRecord>) -> Commit {
        Commit {
            durable: self.shared.store.submit(batch),
            events,
            bus: self.shared.bus.clone(),
            owner: self.myself.clone(),
        }
    }

    fn put_stats(&self, batch: &mut Batch) {
        batch.put(Keyspace::STATS, &records::key(self.bucket_id(), STATS_KEY), &self.stats);
    }

    fn window_due(&self, now_ms: u64) -> bool {
        self.buffer
            .first()
            .is_some_and(|oldest| now_ms >= oldest.received_at_ms + self.adapter.batching.window_seconds * 1000)
    }

    fn ingest(
        &mut self,
        headers: &SignatureHeaders,
        raw: &Bytes,
        payload: Result<Value, crate::error::ApiError>,
    ) -> IngestResult {
        if self.closing {
            return Err(IngestErr::Gone);
        }
        if !self.adapter.enabled {
            return Err(IngestErr::Disabled);
        }
        if !kind::authentic(&self.adapter, headers, raw, self.connection.as_ref()) {
            return Err(IngestErr::Unauthorized);
        }
        let payload = payload.map_err(IngestErr::Malformed)?;
        let now = now_millis();
        let screened = match pipeline::screen(&self.adapter, &payload) {
            Err(e) => return Err(self.fail(now, e)),
            Ok(Screen::Ignored) => {
                return Ok(IngestOk { status: IngestStatus::Ignored, object_id: None, commit: None })
            }
            Ok(Screen::Accepted(s)) => s,
        };
        let dedup_hash = screened.dedup_value.as_deref().map(records::dedup_hash);
        if let Some(object_id) = dedup_hash.as_ref().and_then(|h| self.dedup.get(h)).cloned() {
            self.stats.processed(now);
            let mut batch = Batch::new();
            self.put_stats(&mut batch);
            let commit = self.submit(batch, Vec::new());
            return Ok(IngestOk { status: IngestStatus::Duplicate, object_id: Some(object_id), commit: Some(commit) });
        }
        if screened.operation != Operation::Create {
            // Issue 4 (Mux/Supabase update and delete). No arm produces these yet.
            return Ok(IngestOk { status: IngestStatus::Ignored, object_id: None, commit: None });
        }
        let draft = match kind::metadata_document(self.adapter.adapter_type, &payload) {
            MetadataSource::Inline(doc) => {
                pipeline::materialize(&self.adapter, &self.bucket.bucket_schema, &payload, doc, &screened)
            }
            MetadataSource::Fetch(_) => Err(PayloadError("this adapter's metadata fetch is not available yet".into())),
        };
        let draft = match draft {
            Ok(d) => d,
            Err(e) => return Err(self.fail(now, e)),
        };
        Ok(self.accept(now, draft, dedup_hash))
    }

    /// Stores an accepted event: an object now (immediate) or a buffer entry.
    fn accept(&mut self, now: u64, draft: Draft, dedup_hash: Option<String>) -> IngestOk {
        let object_id = ObjectId::generate();
        let mut batch = Batch::new();
        let mut events = Vec::new();
        if let Some(h) = dedup_hash {
            let entry = DedupEntry { object_id: object_id.clone(), at_ms: now };
            batch.put(Keyspace::DEDUP, &records::key(self.bucket_id(), &h), &entry);
            self.dedup.insert(h, object_id.clone());
        }
        self.stats.processed(now);
        let status = match self.adapter.batching.mode {
            BatchMode::Immediate => {
                let rec = ObjectRecord::new(object_id.clone(), self.bucket_id().clone(), draft, None);
                batch.put(Keyspace::OBJECTS, &records::key(self.bucket_id(), object_id.as_str()), &rec);
                events.push(self.shared.bus.record(&mut batch, "object.created", rec.event_payload(), Vec::new()));
                crate::metrics::ingest_objects_created(1);
                IngestStatus::Created
            }
            BatchMode::TimeWindow | BatchMode::Count => {
                let entry = BufferEntry { object_id: object_id.clone(), received_at_ms: now, draft };
                batch.put(Keyspace::BUFFER, &records::key(self.bucket_id(), object_id.as_str()), &entry);
                self.buffer.push(entry);
                crate::metrics::ingest_buffered();
                if self.buffer.len() >= self.adapter.batching.max_batch_size {
                    // Flush early, in the same atomic batch (the buffer put above is undone by
                    // the flush's delete of the same key).
                    self.flush_into(&mut batch, &mut events, "size");
                }
                IngestStatus::Buffered
            }
        };
        self.put_stats(&mut batch);
        IngestOk { status, object_id: Some(object_id), commit: Some(self.submit(batch, events)) }
    }

    fn fail(&mut self, now: u64, e: PayloadError) -> IngestErr {
        self.stats.failed(now, e.0.clone());
        let mut batch = Batch::new();
        self.put_stats(&mut batch);
        IngestErr::Invalid { message: e.0, commit: self.submit(batch, Vec::new()) }
    }

    /// Turns the whole buffer into objects and batches of at most `max_batch_size`.
    fn flush_into(&mut self, batch: &mut Batch, events: &mut Vec<EventRecord>, trigger: &'static str) {
        if self.buffer.is_empty() {
            return;
        }
        let max = self.adapter.batching.max_batch_size.max(1);
        let bucket_id = self.bucket_id().clone();
        let mut pending = std::mem::take(&mut self.buffer);
        while !pending.is_empty() {
            let take = pending.len().min(max);
            let chunk: Vec<BufferEntry> = pending.drain(..take).collect();
            let batch_id = BatchId::generate();
            let mut object_ids = Vec::with_capacity(chunk.len());
            for e in chunk {
                let key = records::key(&bucket_id, e.object_id.as_str());
                let rec = ObjectRecord::new(e.object_id, bucket_id.clone(), e.draft, Some(batch_id.clone()));
                batch.put(Keyspace::OBJECTS, &key, &rec);
                batch.delete(Keyspace::BUFFER, &key);
                events.push(self.shared.bus.record(batch, "object.created", rec.event_payload(), Vec::new()));
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
            };
            if self.adapter.batching.auto_submit {
                br.submit();
                events.push(self.shared.bus.record(batch, "batch.completed", br.completed_payload(), Vec::new()));
            }
            batch.put(Keyspace::BATCHES, &records::key(&bucket_id, br.batch_id.as_str()), &br);
            crate::metrics::ingest_flush(trigger);
            crate::metrics::ingest_objects_created(br.object_ids.len());
            tracing::debug!(bucket_id = %bucket_id, batch_id = %br.batch_id, objects = br.object_ids.len(), trigger, "flushed");
            self.stats.last_flush_at = Some(now);
        }
        self.put_stats(batch);
    }

    /// A flush nobody waits for (timer, restart): its commit is awaited in a task.
    fn flush_in_background(&mut self, trigger: &'static str) {
        let mut batch = Batch::new();
        let mut events = Vec::new();
        self.flush_into(&mut batch, &mut events, trigger);
        if batch.is_empty() {
            return;
        }
        let commit = self.submit(batch, events);
        tokio::spawn(async move {
            let _ = commit.finish().await;
        });
    }
}
