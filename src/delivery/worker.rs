//! The delivery actor of one webhook: owns that webhook's queue of pending deliveries.
//!
//! The queue lives in sled (`dlv/{webhook_id}/…`, written by the fan-out before anything is
//! queued here) and in this actor's memory; `pre_start` reloads it, with each delivery's
//! event read from `evt/` (stored once for all its deliveries), so a restart or a crash
//! loses nothing.
//!
//! Memory is bounded two ways, so a receiver that is down for a day costs disk, not RAM:
//! - A retry due later than `retry_in_memory_seconds` is *parked*: the delivery leaves
//!   memory and a `due/{webhook_id}/{due_ms}/{delivery_id}` entry marks it (written in the
//!   batch of the outcome that scheduled the retry; a reload makes the entries match the
//!   records, which are the truth). When the earliest parked retry comes due, the entries
//!   due within the horizon are read back. Memory therefore holds only what is ready, in
//!   flight or due soon, and new deliveries never wait behind hours of backoff.
//! - At most `max_queued_in_memory_per_webhook` deliveries, and at most
//!   `max_queued_bytes_per_webhook` bytes of them (each counted at its event's stored size
//!   plus a fixed overhead, see [`super::queue`]), are held. Past either bound the queue
//!   *spills*: new deliveries stay only in the store (they are there already), and
//!   `spilled_from` remembers the lowest key among them. Once the in-memory queue has drained
//!   to half of both, a *refill* reads parked retries that are due, then spilled deliveries
//!   in key order (= event order) from that key, reading each one's event as it goes and
//!   stopping at the first that does not fit; when it reaches the end, the spill is over. An
//!   empty queue takes any one delivery, so an event larger than the byte bound still goes.
//!
//! Sends run as tasks under the worker's lease ([`super::lease`]), at most
//! `max_in_flight_per_webhook` at a time, and leave their outcomes in it, nudging the worker
//! with [`WorkerMsg::Finished`] (so that a worker that fails leaves them to its successor,
//! which starts only once they are all in). Each channel of a webhook with several has its
//! share of that bound (see [`WorkerState::channel_cap`]), so a hung receiver cannot hold
//! every slot while the webhook's other channels (its redundancy) wait behind it. Retries wait on one timer
//! for the earliest due delivery (in memory or parked). The mailbox is therefore never
//! blocked by a slow receiver, and each webhook has its own actor, so one slow or dead
//! receiver never holds back another webhook.
//!
//! A channel that answers 429 is held for its `Retry-After`, then paced one send at a time
//! ([`super::throttle`]); a first 429 does not move its delivery up the retry schedule.
//!
//! Outcome writes are grouped: every `Done` adds to one pending [`Batch`], submitted by a
//! `Flush` [`OUTCOME_LINGER`] after the first of them (one commit for many deliveries).
//! Nothing waits on that commit but a task that logs its failure: losing an outcome in a
//! crash only means a redelivery with the same `webhook-id` (at least once), so a short
//! linger costs nothing in safety, and it keeps a busy webhook from asking for a group
//! commit (an fsync, its thread hand-offs) every few deliveries: three times fewer commits
//! and about +30% deliveries/s in the delivery bench.
//!
//! This actor must not write webhook records: `last_error` goes to the registry.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::concurrency::JoinHandle;
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort};
use rand::Rng;

use super::channel::{AttemptResult, Channel, Message};
use super::lease::{Finished, Lease, Left};
use super::model::{delivery_key, failure_kind, Attempt, Delivery, DeliveryStatus};
use super::queue::{self, Bounds, Held};
use super::registry::DeliveryMsg;
use super::retry::{Decision, Outcome, Policy};
use super::throttle::Throttles;
use crate::error::ApiError;
use crate::events::EventRecord;
use crate::ids::{DeliveryId, WebhookId};
use crate::state::Shared;
use crate::store::{Batch, Durable, Keyspace, StoreError};
use crate::util::{millis_to_rfc3339, now_millis};

type TimerHandle = JoinHandle<Result<(), MessagingErr<WorkerMsg>>>;

/// How many sends to `channel` are in flight (asked only for a throttled channel).
fn in_flight_on(queue: &Held, in_flight: &HashSet<DeliveryId>, channel: &str) -> usize {
    in_flight.iter().filter(|id| queue.get(id).is_some_and(|d| d.channel_is(channel))).count()
}

/// How long a delivery's outcome may wait to be written with later ones (see the module
/// docs); also the longest a finished delivery still shows as pending in the API.
const OUTCOME_LINGER: Duration = Duration::from_millis(20);

/// How long a refilled delivery's late `Enqueue` is still recognised.
const REFILLED_MEMORY: Duration = Duration::from_secs(10);

/// How often completed deliveries older than the retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// A webhook's sending configuration, built by the registry from the stored record with
/// its secrets opened.
pub struct WebhookRuntime {
    pub webhook_id: WebhookId,
    /// In the templates' scope, and in the worker's log lines.
    pub webhook_name: Arc<str>,
    pub is_active: bool,
    /// HMAC key of the signing secret.
    pub signing_key: Arc<[u8]>,
    /// Senders, in the webhook's channel order.
    pub channels: Vec<Arc<dyn Channel>>,
    /// The ID of each of `channels`: deliveries name their channel by ID (see
    /// `model::CHANNEL_ID`).
    pub channel_ids: Vec<String>,
    /// Each channel's [`ChannelConfig::destination`](crate::delivery::channel::ChannelConfig::destination)
    /// (none while the secrets cannot be read).
    pub destinations: Vec<String>,
    /// Set when the webhook cannot send at all (e.g. secrets unreadable): deliveries are
    /// held, not failed, and this is the webhook's `last_error`.
    pub problem: Option<String>,
}

impl WebhookRuntime {
    /// The channel a delivery goes to; `None` once it was removed from the webhook.
    fn channel(&self, d: &Delivery) -> Option<Arc<dyn Channel>> {
        let i = self.channel_ids.iter().position(|c| d.channel_is(c))?;
        self.channels.get(i).cloned()
    }

    /// Whether the delivery's channel is still one of the webhook's.
    fn has_channel(&self, d: &Delivery) -> bool {
        self.channel_ids.iter().any(|c| d.channel_is(c))
    }

    /// Whether the channel `id` (a delivery's `channel_ref`) is still one of the webhook's.
    fn has_channel_ref(&self, id: &str) -> bool {
        self.channel_ids.iter().any(|c| c == id)
    }
}

/// Settings shared by every worker.
#[derive(Clone)]
pub struct WorkerSettings {
    pub policy: Policy,
    pub max_in_flight: usize,
    /// Most pending deliveries held in memory (see the module docs).
    pub max_queued: usize,
    /// Most bytes of pending deliveries held in memory ([`queue::cost`]).
    pub max_queued_bytes: usize,
    /// Retries due later than this are parked in the store (see the module docs).
    pub park_after: Duration,
    /// Completed deliveries are kept this long for the deliveries API.
    pub retention: Duration,
    /// A multi-recipient attempt starts no send to a further recipient after this long.
    pub max_attempt: Duration,
}

impl WorkerSettings {
    fn bounds(&self) -> Bounds {
        Bounds { count: self.max_queued, bytes: self.max_queued_bytes }
    }
}

pub struct DeliveryWorker;

pub struct WorkerArgs {
    pub shared: Shared,
    /// The lease this worker runs under, and what its predecessor left (see [`super::lease`]).
    pub lease: Lease,
    pub left: Left,
    pub runtime: Arc<WebhookRuntime>,
    pub settings: WorkerSettings,
    /// The webhook's stored `last_error`, and when its failure began (`last_error_at`).
    pub last_error: Option<String>,
    pub last_error_since: Option<u64>,
}

pub enum WorkerMsg {
    /// Deliveries made durable by the fan-out.
    Enqueue(Vec<Delivery>),
    /// The webhook changed (PATCH: pause/resume, channels, signing secret). With a reply port,
    /// answered once the new settings are in force (no attempt starts under the old ones).
    Configure(Arc<WebhookRuntime>, Option<RpcReplyPort<()>>),
    /// Manual retry: re-queue now (a finished delivery gets a fresh `max_age` window).
    Retry { delivery_id: DeliveryId, reply: RpcReplyPort<Result<(serde_json::Value, Durable), ApiError>> },
    /// The retry timer fired.
    Wake,
    /// Send tasks finished: their outcomes are in the lease (see [`super::lease`]).
    Finished,
    /// Submit the grouped outcome writes.
    Flush,
    /// Shutdown (after `Shared::shutdown` is cancelled, so no send starts): answer once
    /// those in flight have finished.
    Quiesce(RpcReplyPort<()>),
    /// Drop completed deliveries past the retention.
    Prune,
    /// Fault injection for supervision tests (`/v1/debug/crash/delivery.{webhook_id}`).
    Crash,
}

pub struct WorkerState {
    shared: Shared,
    lease: Lease,
    rt: Arc<WebhookRuntime>,
    settings: WorkerSettings,
    myself: ActorRef<WorkerMsg>,
    /// Every pending delivery held in memory (ready, waiting for its retry, or in flight).
    queue: Held,
    ready: VecDeque<DeliveryId>,
    waiting: BinaryHeap<Reverse<(u64, DeliveryId)>>,
    in_flight: HashSet<DeliveryId>,
    /// Ready deliveries of channels at their share of the in-flight bound, by channel, in
    /// order: released as their channel's sends finish (see [`WorkerState::channel_cap`]).
    capped: HashMap<String, VecDeque<DeliveryId>>,
    timer: Option<(u64, TimerHandle)>,
    prune_timer: Option<JoinHandle<()>>,
    writes: Batch,
    flush_queued: bool,
    /// The last error reported to the registry (to report only changes).
    reported_error: Option<String>,
    /// The webhook's stored `last_error` and when its failure began, as this worker started:
    /// the first channel failing the same way after the start continues it (see `note_outcome`).
    stored_error: Option<(String, Option<u64>)>,
    /// When the failure reported began, for a channel's error.
    reported_since: Option<u64>,
    /// The channel whose error was reported last (none for a webhook-wide problem, and
    /// after a restart): the registry keeps a stored error of the same text only for it.
    reported_channel: Option<String>,
    /// The latest error of each channel still failing, oldest first. The webhook's
    /// `last_error` is the newest of them: one channel's success clears only its own, so a
    /// healthy channel does not hide a broken one.
    /// Each with when its channel began failing so (`since_ms`, kept while its failure only
    /// names another delivery: see `model::without_delivery_id`).
    channel_errors: Vec<(String, String, u64)>,
    /// Shutdown (`Shared::shutdown`): answered once nothing is in flight.
    quiesced: Option<RpcReplyPort<()>>,
    /// Set while the queue is spilled: every pending delivery not in `queue` has a key
    /// (`{webhook_id}/{delivery_id}`) at or after this one.
    spilled_from: Option<String>,
    /// About how many pending deliveries are only in the store (for the depth gauge).
    spilled: usize,
    /// Deliveries a refill read back in the last [`REFILLED_MEMORY`], while their own
    /// `Enqueue` may still be on its way (it is sent once the fan-out is durable, so a
    /// refill can see them first); the set and the deque hold the same IDs.
    refilled: HashSet<DeliveryId>,
    refilled_order: VecDeque<(Instant, DeliveryId)>,
    /// The earliest due time among parked retries (`None`: none parked), and how many.
    parked_due: Option<u64>,
    parked: usize,
    /// The cost of the delivery a read-back of spilled (`spill_blocked`) or parked
    /// (`parked_blocked`) deliveries last stopped at, for the byte bound: the next read-back
    /// waits until that one fits. Without it a delivery that does not fit was read again on
    /// every message (a store barrier, a scan, a decode of its event), and a due parked
    /// retry that did not fit woke the worker at once, again and again, while nothing drained
    /// (a paused webhook).
    spill_blocked: Option<usize>,
    parked_blocked: Option<usize>,
    /// This worker's share of `hookline_delivery_queue_depth`.
    depth: GaugeShare,
    /// This worker's share of `hookline_delivery_queue_bytes` (what `queue` holds).
    bytes: GaugeShare,
    /// Channels that answered 429: held, then paced (see [`super::throttle`]).
    throttles: Throttles,
}

/// However the worker ends (ractor skips `post_stop` when a handler fails), the outcome
/// writes not yet submitted go to its successor, and its lease says it is gone.
impl Drop for WorkerState {
    fn drop(&mut self) {
        self.lease.end(std::mem::replace(&mut self.writes, Batch::new()));
    }
}

/// A worker's share of a gauge summed over all workers, taken back when the worker's
/// state goes, however it goes (ractor skips `post_stop` when a handler fails).
struct GaugeShare(usize, metrics::Gauge);

impl GaugeShare {
    fn new(gauge: metrics::Gauge) -> GaugeShare {
        GaugeShare(0, gauge)
    }

    fn set(&mut self, value: usize) {
        if value != self.0 {
            self.1.increment(value as f64 - self.0 as f64);
            self.0 = value;
        }
    }
}

impl Drop for GaugeShare {
    fn drop(&mut self) {
        self.set(0);
    }
}

impl Actor for DeliveryWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: WorkerArgs,
    ) -> Result<WorkerState, ActorProcessingErr> {
        let Left { writes, finished } = args.left;
        let mut state = WorkerState {
            shared: args.shared,
            lease: args.lease,
            rt: args.runtime,
            settings: args.settings,
            myself: myself.clone(),
            queue: Held::default(),
            ready: VecDeque::new(),
            waiting: BinaryHeap::new(),
            in_flight: HashSet::new(),
            capped: HashMap::new(),
            timer: None,
            prune_timer: None,
            writes: Batch::new(),
            flush_queued: false,
            // What the registry shows: a success clears it even after a restart.
            stored_error: args.last_error.clone().map(|e| (e, args.last_error_since)),
            reported_error: args.last_error,
            reported_since: None,
            reported_channel: None,
            channel_errors: Vec::new(),
            quiesced: None,
            spilled_from: None,
            spilled: 0,
            refilled: HashSet::new(),
            refilled_order: VecDeque::new(),
            parked_due: None,
            spill_blocked: None,
            parked_blocked: None,
            parked: 0,
            depth: GaugeShare::new(crate::metrics::delivery_queue_depth()),
            bytes: GaugeShare::new(crate::metrics::delivery_queue_bytes()),
            throttles: Throttles::default(),
        };
        // (The state first: whatever fails from here, its drop ends the lease.) Let a
        // predecessor's unawaited queue writes land, and its unsubmitted ones, before the
        // queue is reloaded; then its sends' outcomes apply to the reloaded deliveries.
        if !writes.is_empty() {
            drop(state.shared.store.submit(writes));
        }
        state.shared.store.commit(crate::store::Batch::new()).await?;
        let outcomes: HashSet<String> =
            finished.iter().map(|f| delivery_key(&state.rt.webhook_id, &f.delivery_id)).collect();
        state.load(&outcomes)?;
        if !finished.is_empty() {
            // What the reload wrote (parked retries' entries, burials) is read by `adopt`.
            state.submit_writes();
            state.shared.store.commit(crate::store::Batch::new()).await?;
        }
        for f in finished {
            state.adopt(&f.delivery_id)?;
            state.done(f.delivery_id, f.result, f.at_ms, f.duration);
        }
        state.prune_timer = Some(myself.send_interval(PRUNE_EVERY, || WorkerMsg::Prune));
        if let Some(p) = state.rt.problem.clone() {
            state.report_error(Some(p));
        }
        state.arm();
        state.pump();
        state.depth.set(state.queue.len() + state.spilled + state.parked);
        state.bytes.set(state.queue.bytes());
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<WorkerMsg>, state: &mut WorkerState) -> Result<(), ActorProcessingErr> {
        if let Some((_, t)) = state.timer.take() {
            t.abort();
        }
        if let Some(t) = state.prune_timer.take() {
            t.abort();
        }
        state.submit_writes();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Enqueue(ds) => {
                let now = now_millis();
                // Fanned out to a channel a PATCH has removed since: buried below.
                let (ds, removed): (Vec<_>, Vec<_>) = ds.into_iter().partition(|d| state.rt.has_channel(d));
                for d in ds {
                    state.enqueue(d, now);
                }
                if !removed.is_empty() {
                    state.bury_late_fan_out(removed).await?;
                }
                state.arm();
                state.pump();
                state.top_up().await?;
            }
            WorkerMsg::Configure(rt, applied) => {
                let old = std::mem::replace(&mut state.rt, rt);
                if let Some(reply) = applied {
                    let _ = reply.send(());
                }
                let removed: Vec<String> =
                    old.channel_ids.iter().filter(|c| !state.rt.channel_ids.contains(c)).cloned().collect();
                let errors_before = state.channel_errors.len();
                state.channel_errors.retain(|(c, _, _)| !removed.contains(c));
                let newest = state.channel_errors.last().map(|(_, e, _)| e.clone());
                match state.rt.problem.clone() {
                    Some(p) => state.report_error(Some(p)),
                    // The problem is gone, or a failing channel was removed: so is its error.
                    // Other failures stay (a PATCH does not fix a receiver).
                    None if old.problem.is_some() && state.reported_error == old.problem => state.report_error(newest),
                    None if state.channel_errors.len() < errors_before => state.report_error(newest),
                    None => {}
                }
                if !removed.is_empty() {
                    state.throttles.forget(&removed);
                    state.drop_removed_channels(&removed).await?;
                }
                // Kept, but sent elsewhere now: an old receiver's 429 does not hold the new one.
                let moved: Vec<String> = (old.channel_ids.iter().zip(&old.destinations))
                    .filter(|(id, to)| {
                        let now_at = state.rt.channel_ids.iter().position(|c| c == *id);
                        now_at.and_then(|i| state.rt.destinations.get(i)).is_some_and(|d| d != *to)
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in state.throttles.release(&moved).into_iter().rev() {
                    state.ready.push_front(id);
                }
                state.pump();
                // A burial may have emptied the queue while deliveries wait in the store.
                state.top_up().await?;
            }
            WorkerMsg::Retry { delivery_id, reply } => {
                let r = state.retry_now(&delivery_id).await;
                let _ = reply.send(r);
                state.pump();
                state.top_up().await?;
            }
            WorkerMsg::Wake => {
                state.timer = None;
                let now = now_millis();
                while let Some(Reverse((due, _))) = state.waiting.peek() {
                    if *due > now {
                        break;
                    }
                    let Some(Reverse((due, id))) = state.waiting.pop() else { break };
                    // Stale entries (re-queued manually, already sent) are skipped.
                    let current = state.queue.get(&id).and_then(|d| d.next_attempt_ms) == Some(due);
                    if current && !state.in_flight.contains(&id) {
                        state.ready.push_back(id);
                    }
                }
                if state.parked_are_due() && state.room_for(state.parked_blocked) {
                    state.refill().await?;
                }
                state.arm();
                state.pump();
                state.top_up().await?;
            }
            WorkerMsg::Finished => {
                for f in state.lease.take_finished() {
                    state.done(f.delivery_id, f.result, f.at_ms, f.duration);
                }
                state.arm();
                state.pump();
                state.top_up().await?;
            }
            WorkerMsg::Flush => {
                state.flush_queued = false;
                state.submit_writes();
            }
            WorkerMsg::Prune => state.prune()?,
            WorkerMsg::Crash => return Err(ActorProcessingErr::from("crash requested through /v1/debug/crash")),
            WorkerMsg::Quiesce(reply) => state.quiesced = Some(reply),
        }
        if state.in_flight.is_empty() && state.quiesced.is_some() {
            if let Some(reply) = state.quiesced.take() {
                state.submit_writes();
                let _ = reply.send(());
            }
        }
        state.depth.set(state.queue.len() + state.spilled + state.parked);
        state.bytes.set(state.queue.bytes());
        Ok(())
    }
}

impl WorkerState {
    fn prefix(&self) -> String {
        format!("{}/", self.rt.webhook_id.as_str())
    }

    /// Reloads pending deliveries from the store (restart/crash recovery): the oldest up to
    /// the memory bound; the rest stay spilled, and retries due beyond the horizon stay
    /// parked. The `due/` entries are made to match the records (a crash can lose the
    /// newest ones; data from before parking has none). Only a few fields of each record are
    /// decoded in the scan (finished deliveries are most of them).
    ///
    /// `outcomes`: the keys of deliveries whose send the predecessor left an outcome of (see
    /// `pre_start`), which [`WorkerState::adopt`] and [`WorkerState::done`] apply: one of a
    /// channel removed meanwhile is left to them (its attempt logged, then succeeded or
    /// buried), not buried here without it.
    fn load(&mut self, outcomes: &HashSet<String>) -> Result<(), ActorProcessingErr> {
        let mut keys = Vec::new();
        let room = self.settings.max_queued;
        let horizon = self.horizon(now_millis());
        let (mut spilled, mut spilled_from) = (0usize, None);
        let mut should_park: HashSet<String> = HashSet::new();
        let mut parked_due = None::<u64>;
        let webhook_id = self.rt.webhook_id.clone();
        // Pending deliveries of channels removed before their burial was written (a crash
        // right after the PATCH): buried now, not sent or parked.
        let mut removed = Vec::new();
        let channel_ids = &self.rt.channel_ids;
        self.shared.store.for_each::<StatusOnly>(Keyspace::DELIVERIES, &self.prefix(), |k, d| {
            if d.status != DeliveryStatus::Pending {
                return true;
            }
            if !channel_ids.contains(&d.channel_ref()) {
                if !outcomes.contains(k) {
                    removed.push(k.to_string());
                }
                return true;
            }
            match d.next_attempt_ms {
                Some(due) if due > horizon => {
                    let id = k.rsplit('/').next().unwrap_or_default();
                    should_park.insert(due_key(&webhook_id, due, id));
                    parked_due = Some(parked_due.map_or(due, |p| p.min(due)));
                }
                _ if keys.len() < room => keys.push(k.to_string()),
                _ => {
                    spilled += 1;
                    spilled_from.get_or_insert_with(|| k.to_string());
                }
            }
            true
        })?;
        let parked = should_park.len();
        let now = now_millis();
        for k in &removed {
            if let Some(mut d) = self.shared.store.get::<Delivery>(Keyspace::DELIVERIES, k)? {
                self.bury_removed(&mut d, now);
            }
        }
        if !removed.is_empty() {
            tracing::info!(%webhook_id, buried = removed.len(), "pending deliveries of removed channels marked dead");
        }
        let mut fix = Batch::new();
        self.shared.store.for_each_key(Keyspace::DUE, &self.prefix(), |k| {
            if !should_park.remove(k) {
                fix.delete(Keyspace::DUE, k);
            }
            true
        })?;
        for k in &should_park {
            fix.put(Keyspace::DUE, k, &());
        }
        // In slices of 10k from the back (each its own small buffer), not one batch of a
        // million entries. Not awaited: entries lost in a crash are made again by the next
        // reload.
        while !fix.is_empty() {
            let slice = fix.split_off(fix.len().saturating_sub(10_000));
            self.writes.extend(slice);
            self.submit_writes();
        }
        let mut pending = Vec::with_capacity(keys.len());
        for k in &keys {
            // Pending a moment ago; only this actor finishes deliveries.
            if let Some(d) = self.shared.store.get::<Delivery>(Keyspace::DELIVERIES, k)? {
                if d.status == DeliveryStatus::Pending {
                    pending.push(d);
                }
            }
        }
        let now = now_millis();
        // As many as the byte bound allows too; the rest stay spilled, from the first left
        // (before any spilled by count: the keys are in order).
        if let Some((cut, left, cost)) = self.read_back(pending, now)? {
            self.spill_blocked = Some(cost);
            spilled += left;
            spilled_from = Some(spilled_from.filter(|from| *from < cut).unwrap_or(cut));
        }
        let in_memory = self.queue.len();
        if in_memory + spilled + parked > 0 {
            let pending = in_memory + spilled + parked;
            tracing::info!(%webhook_id, pending, in_memory, parked, "delivery queue reloaded");
        }
        self.spilled = spilled;
        self.spilled_from = spilled_from;
        self.parked = parked;
        self.parked_due = parked_due;
        Ok(())
    }

    /// A delivery from the fan-out: queued in memory, or left in the store while spilled.
    fn enqueue(&mut self, d: Delivery, now: u64) {
        self.forget_old_refills();
        // Already read back by a refill (and maybe finished since): not again.
        if !self.refilled.is_empty() && self.refilled.contains(&d.delivery_id) {
            return;
        }
        if self.spilled_from.is_none() && self.queue.fits(queue::cost(&d), self.settings.bounds()) {
            self.insert(d, now);
            return;
        }
        if self.queue.contains_key(&d.delivery_id) {
            return;
        }
        self.spill(d.key());
    }

    /// Retries due after this (for `now`) are parked (see the module docs).
    fn horizon(&self, now: u64) -> u64 {
        now + self.settings.park_after.as_millis() as u64
    }

    /// Whether the earliest parked retry is due.
    fn parked_are_due(&self) -> bool {
        self.parked_due.is_some_and(|d| d <= now_millis())
    }

    /// Whether memory has room to read back more: for the delivery a read-back last stopped
    /// at (`blocked`, its cost), or for anything at all.
    fn room_for(&self, blocked: Option<usize>) -> bool {
        let bounds = self.settings.bounds();
        match blocked {
            Some(cost) => self.queue.fits(cost, bounds),
            None => self.queue.has_room(bounds),
        }
    }

    /// The next read-backs look again, whatever they last stopped at: that delivery may be
    /// gone (retried by hand, buried).
    fn forget_blocked(&mut self) {
        (self.spill_blocked, self.parked_blocked) = (None, None);
    }

    /// Records a pending delivery (by key) as left in the store.
    fn spill(&mut self, key: String) {
        match &mut self.spilled_from {
            Some(from) if *from <= key => {}
            slot => {
                // The next read-back starts before the delivery it last stopped at.
                self.spill_blocked = None;
                if slot.is_none() {
                    let (webhook_id, in_memory) = (&self.rt.webhook_id, self.queue.len());
                    tracing::info!(%webhook_id, in_memory, "delivery queue spilled to the store");
                }
                *slot = Some(key);
            }
        }
        self.spilled += 1;
    }

    /// Queues deliveries read back from the store, in order, while they fit the bounds,
    /// remembering them (see `refilled`). Each one's event is read as it goes, so a backlog
    /// of large events is never read whole. Returns the key of the first that did not fit,
    /// how many were left from it on (they stay in the store) and its cost.
    fn read_back(&mut self, deliveries: Vec<Delivery>, now: u64) -> Result<Option<(String, usize, usize)>, StoreError> {
        let (total, bounds) = (deliveries.len(), self.settings.bounds());
        let mut events = HashMap::new();
        for (i, mut d) in deliveries.into_iter().enumerate() {
            attach_event(&self.shared.store, &mut events, &mut d)?;
            let cost = queue::cost(&d);
            if !self.queue.fits(cost, bounds) {
                return Ok(Some((d.key(), total - i, cost)));
            }
            self.remember_read_back(&d.delivery_id);
            self.insert(d, now);
        }
        Ok(None)
    }

    /// A late fan-out `Enqueue` of this delivery is to be ignored (see `refilled`).
    fn remember_read_back(&mut self, id: &DeliveryId) {
        if self.refilled.insert(id.clone()) {
            self.refilled_order.push_back((Instant::now(), id.clone()));
        }
    }

    /// Drops the refill memory older than [`REFILLED_MEMORY`].
    fn forget_old_refills(&mut self) {
        let now = Instant::now();
        while let Some((at, _)) = self.refilled_order.front() {
            if now.duration_since(*at) < REFILLED_MEMORY {
                break;
            }
            if let Some((_, id)) = self.refilled_order.pop_front() {
                self.refilled.remove(&id);
            }
        }
    }

    /// Reads back from the store while the queue is at most half full and deliveries wait
    /// there (spilled, or parked retries now due), then sends. After every message, not
    /// only a finished send: a burial or a PATCH can empty the queue too, and with nothing
    /// in flight no `Done` would come to read the rest back. A few rounds at most: a round
    /// that reads back only deliveries of a removed channel buries them all.
    async fn top_up(&mut self) -> Result<(), ActorProcessingErr> {
        for _ in 0..4 {
            let waiting = (self.spilled_from.is_some() && self.room_for(self.spill_blocked))
                || (self.parked_are_due() && self.room_for(self.parked_blocked));
            if !waiting || !self.queue.at_most_half(self.settings.bounds()) {
                break;
            }
            let before = (self.spilled_from.clone(), self.parked_due, self.queue.len());
            self.refill().await?;
            self.arm();
            self.pump();
            if (self.spilled_from.clone(), self.parked_due, self.queue.len()) == before {
                break;
            }
        }
        Ok(())
    }

    /// Reads back what memory has room for: parked retries that are due (within the
    /// horizon), then spilled deliveries, oldest first.
    async fn refill(&mut self) -> Result<(), ActorProcessingErr> {
        let parked_due = self.parked_are_due() && self.room_for(self.parked_blocked);
        let spilled = self.spilled_from.is_some() && self.room_for(self.spill_blocked);
        if !spilled && !parked_due {
            return Ok(());
        }
        // Every outcome and `due/` entry written so far must be readable first, or a
        // delivery that just finished would still read as pending and be sent again.
        self.submit_writes();
        self.shared.store.commit(Batch::new()).await?;
        if parked_due {
            self.unpark()?;
        }
        if self.spilled_from.is_none() || !self.room_for(self.spill_blocked) {
            return Ok(());
        }
        self.forget_old_refills();
        self.spill_blocked = None;
        while self.queue.has_room(self.settings.bounds()) {
            let Some(from) = self.spilled_from.clone() else { break };
            if self.refill_slice(&from)? {
                break;
            }
        }
        if self.spilled_from.is_none() {
            tracing::info!(webhook_id = %self.rt.webhook_id, "delivery queue back in memory");
            self.spilled = 0;
        }
        Ok(())
    }

    /// Reads back spilled deliveries from the key `from` on, as many as memory has room
    /// for ([`WorkerState::slice_len`] records at most); whether the byte bound stopped it
    /// (else `spilled_from` is where the next slice starts, or `None`: the spill is over).
    fn refill_slice(&mut self, from: &str) -> Result<bool, ActorProcessingErr> {
        let room = self.slice_len();
        let mut loaded = Vec::with_capacity(room.min(self.spilled.max(64)));
        let mut next = None;
        // Retries due beyond the horizon are parked: their `due/` entries bring them back
        // (checked below: after the wall clock stepped back, one may have none yet).
        let horizon = self.horizon(now_millis());
        let mut far = Vec::new();
        self.shared.store.for_each_from::<Delivery>(Keyspace::DELIVERIES, &self.prefix(), from, |k, d| {
            if d.status != DeliveryStatus::Pending || self.queue.contains_key(&d.delivery_id) {
                return true;
            }
            if d.next_attempt_ms.is_some_and(|due| due > horizon) {
                far.push(d);
                return true;
            }
            if loaded.len() == room {
                next = Some(k.to_string());
                return false;
            }
            loaded.push(d);
            true
        })?;
        for d in far {
            if let Some(due) = d.next_attempt_ms {
                let key = due_key(&self.rt.webhook_id, due, d.delivery_id.as_str());
                if !self.shared.store.contains(Keyspace::DUE, &key)? {
                    self.park(&d, due);
                }
            }
        }
        let n = loaded.len();
        match self.read_back(loaded, now_millis())? {
            Some((cut, left, cost)) => {
                self.spilled = self.spilled.saturating_sub(n - left);
                self.spilled_from = Some(cut);
                self.spill_blocked = Some(cost);
                Ok(true)
            }
            None => {
                self.spilled = self.spilled.saturating_sub(n);
                self.spilled_from = next;
                Ok(false)
            }
        }
    }

    /// How many spilled records a refill slice decodes: what the count bound has room for,
    /// or fewer when the byte bound will stop it first. The records are decoded before
    /// their events are read, so with large events most of a 5,000-record slice would be
    /// thrown away; the estimate (twice what the average held delivery says fits) errs
    /// high, since each slice rescans the store's unapplied writes, and one that falls short
    /// only means another slice. With nothing held there is no average: the count decides.
    fn slice_len(&self) -> usize {
        let bounds = self.settings.bounds();
        let by_count = bounds.count.saturating_sub(self.queue.len()).max(1);
        let Some(avg) = self.queue.bytes().checked_div(self.queue.len()) else { return by_count };
        let by_bytes = bounds.bytes.saturating_sub(self.queue.bytes()) / avg.max(1);
        by_count.min(by_bytes.saturating_mul(2).max(16))
    }

    /// Reads back the parked retries due within the horizon, as memory has room, and
    /// deletes their `due/` entries (stale ones too: a delivery retried by hand, finished or
    /// re-parked since). Called after a barrier (see `refill`).
    fn unpark(&mut self) -> Result<(), ActorProcessingErr> {
        let now = now_millis();
        let horizon = self.horizon(now);
        let bounds = self.settings.bounds();
        let room = bounds.count.saturating_sub(self.queue.len());
        // Entries to look at: those due within the horizon, a bounded number at a time.
        let cap = (2 * room + 64).min(10_000);
        let mut entries = Vec::new();
        let mut next_due = None;
        self.shared.store.for_each_key(Keyspace::DUE, &self.prefix(), |k| {
            let parsed = parse_due_key(k);
            if let Some((due, _)) = parsed.filter(|(due, _)| *due > horizon) {
                next_due = Some(due);
                return false;
            }
            if entries.len() == cap {
                next_due = Some(parsed.map_or(now, |(due, _)| due));
                return false;
            }
            entries.push((k.to_string(), parsed.map(|(due, id)| (due, id.to_string()))));
            true
        })?;
        let mut events = HashMap::new();
        self.parked_blocked = None;
        for (key, parsed) in entries {
            let record = match &parsed {
                Some((due, id)) => match DeliveryId::parse(id) {
                    // Read back meanwhile (by a refill of spilled deliveries): counted off here.
                    Some(did) if self.queue.get(&did).is_some_and(|q| q.next_attempt_ms == Some(*due)) => {
                        self.parked = self.parked.saturating_sub(1);
                        None
                    }
                    Some(did) if !self.queue.contains_key(&did) => self
                        .shared
                        .store
                        .get::<Delivery>(Keyspace::DELIVERIES, &delivery_key(&self.rt.webhook_id, &did))?
                        .filter(|d| d.status == DeliveryStatus::Pending && d.next_attempt_ms == Some(*due)),
                    _ => None,
                },
                None => None,
            };
            if let Some(mut d) = record {
                // Its event is read now, one at a time, to stop at the byte bound.
                attach_event(&self.shared.store, &mut events, &mut d)?;
                let cost = queue::cost(&d);
                if !self.queue.fits(cost, bounds) {
                    next_due = parsed.map(|(due, _)| due);
                    self.parked_blocked = Some(cost);
                    break;
                }
                self.parked = self.parked.saturating_sub(1);
                self.insert(d, now);
            }
            self.writes.delete(Keyspace::DUE, &key);
        }
        self.parked_due = next_due;
        if next_due.is_none() {
            self.parked = 0;
        }
        self.flush_soon();
        Ok(())
    }

    /// Submits the grouped writes (outcomes, `due/` entries), not awaited: a lost outcome
    /// only means a redelivery (module docs); a failure is logged.
    fn submit_writes(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let durable = self.shared.store.submit(std::mem::take(&mut self.writes));
        tokio::spawn(async move {
            if let Err(e) = durable.await {
                tracing::error!(error = %e, "write delivery outcomes and parked retries");
            }
        });
    }

    fn insert(&mut self, d: Delivery, now: u64) {
        if self.queue.contains_key(&d.delivery_id) {
            return; // already queued (a fan-out raced a reload)
        }
        let id = d.delivery_id.clone();
        match d.next_attempt_ms {
            Some(due) if due > self.horizon(now) => return self.park(&d, due),
            Some(due) if due > now => self.waiting.push(Reverse((due, id))),
            _ => self.ready.push_back(id),
        }
        self.queue.insert(d);
    }

    /// Leaves a delivery whose retry is far off in the store only, marked by a `due/`
    /// entry (its record, with that due time, is written by the caller or already is).
    fn park(&mut self, d: &Delivery, due: u64) {
        self.writes.put(Keyspace::DUE, &due_key(&self.rt.webhook_id, due, d.delivery_id.as_str()), &());
        self.flush_soon();
        self.parked += 1;
        self.parked_due = Some(self.parked_due.map_or(due, |p| p.min(due)));
    }

    /// Arms the timer for the earliest waiting delivery (one timer, re-armed when an
    /// earlier one appears).
    fn arm(&mut self) {
        let waiting = self.waiting.peek().map(|Reverse((due, _))| *due);
        // Parked retries only when memory has room for them; else a `Done` refills.
        let parked = self.parked_due.filter(|_| self.room_for(self.parked_blocked));
        let held = self.throttles.next_wake(now_millis());
        let Some(due) = [waiting, parked, held].into_iter().flatten().min() else { return };
        if let Some((t, _)) = &self.timer {
            if *t <= due {
                return;
            }
        }
        if let Some((_, h)) = self.timer.take() {
            h.abort();
        }
        let delay = Duration::from_millis(due.saturating_sub(now_millis()));
        let h = self.myself.send_after(delay, || WorkerMsg::Wake);
        self.timer = Some((due, h));
    }

    /// Starts sends while under the concurrency bound (nothing while paused, broken or
    /// shutting down).
    fn pump(&mut self) {
        if !self.rt.is_active || self.rt.problem.is_some() || self.shared.shutdown.is_cancelled() {
            return;
        }
        let now = now_millis();
        let mut rearm = false;
        // A released delivery that turns out stale (sent, or due later) sends nothing: then
        // the next of its channel is released, until one goes or none is left.
        loop {
            let released = self.release_throttled(now) | self.release_capped();
            rearm |= self.send_ready(now);
            if !released || self.in_flight.len() >= self.settings.max_in_flight {
                break;
            }
        }
        self.throttles.end_round();
        // With throttled channels, a release may have started a channel's spacing (a stale
        // one too, which sends nothing): the timer must cover its end for the next in line.
        if rearm || !self.throttles.is_empty() {
            self.arm();
        }
    }

    /// Puts the deliveries of throttled channels whose turn it is at the front of `ready`, in
    /// their order; whether there were any.
    fn release_throttled(&mut self, now: u64) -> bool {
        if self.throttles.is_empty() || self.in_flight.len() >= self.settings.max_in_flight {
            return false;
        }
        let (queue, in_flight) = (&self.queue, &self.in_flight);
        let released = self.throttles.releasable(now, |c| in_flight_on(queue, in_flight, c));
        let any = !released.is_empty();
        for id in released.into_iter().rev() {
            self.ready.push_front(id);
        }
        any
    }

    /// How many sends one channel may have in flight: all of `max_in_flight_per_webhook` for a
    /// webhook with one channel, its share for one with several (rounded down, at least 1:
    /// rounded up, 4 hung channels of 5 would hold every slot). A receiver that hangs until
    /// its timeout holds only its channel's share, and a burst of events still reaches the
    /// other channels at once (seed 004: several channels for critical events, for
    /// redundancy).
    fn channel_cap(&self) -> usize {
        (self.settings.max_in_flight / self.rt.channel_ids.len().max(1)).max(1)
    }

    /// Puts deliveries of channels below their share at the front of `ready`, in their
    /// order (all of those of a removed channel: they are buried as they come); whether there
    /// were any.
    fn release_capped(&mut self) -> bool {
        // No more than can be sent now: a delivery released but left in `ready` would be
        // passed by later releases of its channel (they go to the front), and capped again
        // behind them.
        let mut room = self.settings.max_in_flight.saturating_sub(self.in_flight.len());
        if self.capped.is_empty() || room == 0 {
            return false;
        }
        let cap = self.channel_cap();
        let (queue, in_flight, rt) = (&self.queue, &self.in_flight, &self.rt);
        let mut released = Vec::new();
        self.capped.retain(|channel, backlog| {
            let free = match rt.has_channel_ref(channel) {
                true => cap.saturating_sub(in_flight_on(queue, in_flight, channel)).min(room),
                false => backlog.len(),
            };
            let n = free.min(backlog.len());
            room = room.saturating_sub(n);
            released.extend(backlog.drain(..n));
            !backlog.is_empty()
        });
        let any = !released.is_empty();
        for id in released.into_iter().rev() {
            self.ready.push_front(id);
        }
        any
    }

    /// Sends ready deliveries while under the concurrency bound; whether the timer needs
    /// re-arming (a delivery moved to `waiting` or a throttled channel's backlog).
    fn send_ready(&mut self, now: u64) -> bool {
        let mut rearm = false;
        while self.in_flight.len() < self.settings.max_in_flight {
            let Some(id) = self.ready.pop_front() else { break };
            let Some(d) = self.queue.get(&id) else { continue };
            if self.in_flight.contains(&id) {
                continue; // a stale entry: sent already
            }
            if let Some(due) = d.next_attempt_ms.filter(|due| *due > now) {
                // Waiting for a later retry since (or the clock stepped back): the timer's.
                self.waiting.push(Reverse((due, id)));
                rearm = true;
                continue;
            }
            if !self.throttles.is_empty() {
                let (queue, in_flight) = (&self.queue, &self.in_flight);
                if !self
                    .throttles
                    .admit(&d.channel_ref(), &id, now, || in_flight_on(queue, in_flight, &d.channel_ref()))
                {
                    rearm = true; // held or busy: it waits in the channel's backlog
                    continue;
                }
            }
            let Some(channel) = self.rt.channel(d) else {
                // Its channel was removed (read back after the PATCH): no attempt to make.
                if let Some(mut d) = self.queue.remove(&id) {
                    self.bury_removed(&mut d, now);
                }
                continue;
            };
            let cap = self.channel_cap();
            if cap < self.settings.max_in_flight {
                let channel_ref = d.channel_ref();
                if in_flight_on(&self.queue, &self.in_flight, &channel_ref) >= cap {
                    // At its share: it waits for one of its channel's sends to finish (once:
                    // see `Throttles::admit`).
                    let backlog = self.capped.entry(channel_ref).or_default();
                    if !backlog.contains(&id) {
                        backlog.push_back(id);
                    }
                    continue;
                }
            }
            self.in_flight.insert(id.clone());
            let key = self.rt.signing_key.clone();
            let webhook_name = self.rt.webhook_name.clone();
            let event = d.event.clone();
            let done_recipients = d.done_recipients.clone();
            let stopping = self.shared.shutdown.clone();
            let cut_off = self.shared.cut_off.clone();
            let me = self.myself.clone();
            let lease = self.lease.clone();
            let max_attempt = self.settings.max_attempt;
            self.lease.spawn(async move {
                let at_ms = now_millis();
                let started = Instant::now();
                let budget = (started + max_attempt, max_attempt);
                let result = match event {
                    Some(event) => {
                        let msg = Message {
                            id: id.as_str(),
                            event: &event,
                            webhook_name: &webhook_name,
                            signing_key: &key,
                            done_recipients: &done_recipients,
                            stopping: &stopping,
                            cut_off: &cut_off,
                            budget,
                        };
                        // Biased: an answer that came with the cut-off is the attempt's, and
                        // a multi-recipient channel, which ends its current recipient at the
                        // cut-off itself, answers with the recipients it reached.
                        tokio::select! {
                            biased;
                            r = channel.send(&msg) => r,
                            () = cut_off.cancelled() => AttemptResult::cut_off(started.elapsed()),
                        }
                    }
                    None => AttemptResult::failed(
                        Outcome::Permanent,
                        "error",
                        "the event of this delivery is no longer stored",
                    ),
                };
                // Left in the lease, not sent in the message: a worker that failed meanwhile
                // leaves it to its successor instead of losing it with its mailbox.
                let finished = Finished { delivery_id: id, result, at_ms, duration: started.elapsed() };
                if lease.finished(finished) {
                    let _ = me.cast(WorkerMsg::Finished);
                }
            });
        }
        rearm
    }

    fn done(&mut self, id: DeliveryId, result: AttemptResult, at_ms: u64, duration: Duration) {
        self.in_flight.remove(&id);
        // Ended by the shutdown (a single send cut off, or a multi-recipient attempt stopped
        // part-way): it says nothing of the receiver, so it is not the webhook's last_error.
        let cut_off = result.interrupted || result.result == super::channel::CUT_OFF;
        let Some(mut d) = self.queue.remove(&id) else { return };
        crate::metrics::delivery_attempt(&d.channel, result.result, duration);
        d.done_recipients.extend(result.reached.iter().cloned());
        d.log_attempt(Attempt {
            at: millis_to_rfc3339(at_ms),
            status_code: result.status_code,
            error: result.error.clone(),
            duration_ms: duration.as_millis() as u64,
        });
        let now = now_millis();
        // Rate limited: the channel waits (see `throttle`), and a first 429 is not a failure
        // that climbs the schedule (a burst to Slack would otherwise end up hours apart). A
        // delivery limited twice in a row does climb: a receiver that keeps answering 429
        // gets the schedule's backoff, as any failing one does.
        let limited = result.status_code == Some(429) && result.outcome == Outcome::Retriable;
        let limited_before = d.attempts.iter().rev().nth(1).is_some_and(|a| a.status_code == Some(429));
        if limited && self.rt.has_channel(&d) {
            let hold = self.settings.policy.hold_after_429(result.retry_after);
            self.throttles.on_429(&d.channel_ref(), now, hold);
        }
        if result.outcome != Outcome::Delivered && (!limited || limited_before) && !result.interrupted {
            d.failures += 1;
        }
        let age = Duration::from_millis(now.saturating_sub(d.window_start_ms));
        let jitter = rand::rng().random_range(-1.0..=1.0);
        let decision = match result.interrupted {
            // Cut short by the shutdown or its time: due again at once (after the restart),
            // whatever its recipients gave: those not tried have not had their attempt.
            // (A recipient's 429 in that attempt still asks to wait: its Retry-After.)
            true => Decision::RetryIn(if limited { result.retry_after.unwrap_or_default() } else { Duration::ZERO }),
            false => self.settings.policy.decide(result.outcome, d.failures, age, result.retry_after, jitter),
        };
        // Its channel was removed while it was in flight: no retry to a channel that is gone.
        if decision != Decision::Succeeded && !self.rt.has_channel(&d) {
            self.bury_removed(&mut d, now);
            return;
        }
        let error = result.error.map(|e| format!("{} delivery {}: {e}", d.channel, d.delivery_id));
        match decision {
            Decision::Succeeded => {
                d.status = DeliveryStatus::Succeeded;
                d.next_attempt_ms = None;
                d.finished_at_ms = Some(now);
                crate::metrics::delivery_finished(&d.channel, "succeeded");
                self.note_outcome(&d, None);
            }
            Decision::Dead => {
                d.status = DeliveryStatus::Dead;
                d.next_attempt_ms = None;
                d.finished_at_ms = Some(now);
                crate::metrics::delivery_finished(&d.channel, "dead");
                tracing::warn!(webhook_id = %d.webhook_id, webhook_name = ?self.rt.webhook_name, delivery_id = %d.delivery_id, attempts = d.attempts.len(), "delivery is dead");
                self.note_outcome(&d, error);
            }
            Decision::RetryIn(delay) => {
                let due = now + delay.as_millis() as u64;
                d.next_attempt_ms = Some(due);
                // A send the shutdown cut off says nothing of the receiver: not its last_error.
                if !cut_off {
                    self.note_outcome(&d, error);
                }
            }
        }
        self.write(&d);
        if d.status == DeliveryStatus::Pending {
            // In the same outcome batch as the record: parked if the retry is far off.
            self.insert(d, now);
            self.arm();
        }
    }

    fn write(&mut self, d: &Delivery) {
        self.writes.put(Keyspace::DELIVERIES, &d.key(), d);
        self.flush_soon();
    }

    /// Submits the grouped writes [`OUTCOME_LINGER`] from now (unless already planned).
    fn flush_soon(&mut self) {
        if !self.flush_queued && !self.writes.is_empty() {
            self.flush_queued = true;
            self.myself.send_after(OUTCOME_LINGER, || WorkerMsg::Flush);
        }
    }

    /// A PATCH removed channels: their pending deliveries go `dead` now, each with an
    /// attempt that says why, not when next due (hours away for a parked retry). Sends in
    /// flight finish on the channel they started with.
    async fn drop_removed_channels(&mut self, removed: &[String]) -> Result<(), ActorProcessingErr> {
        // The delivery a read-back stopped at may be one of those buried.
        self.forget_blocked();
        let gone = |channel: String| removed.contains(&channel);
        let now = now_millis();
        let held: Vec<DeliveryId> = self
            .queue
            .iter()
            .filter(|(id, d)| !self.in_flight.contains(*id) && gone(d.channel_ref()))
            .map(|(id, _)| id.clone())
            .collect();
        for id in held {
            if let Some(mut d) = self.queue.remove(&id) {
                self.bury_removed(&mut d, now);
            }
        }
        // Those waiting in the store (spilled, or parked for a far-off retry), once every
        // outcome written so far is readable. (Nothing waits there unless spilled or parked:
        // then the webhook's history is not scanned. A fan-out still on its way is buried
        // by `bury_late_fan_out`.)
        if self.spilled_from.is_none() && self.parked == 0 && self.parked_due.is_none() {
            return Ok(());
        }
        self.submit_writes();
        self.shared.store.commit(Batch::new()).await?;
        let mut keys = Vec::new();
        self.shared.store.for_each::<StatusOnly>(Keyspace::DELIVERIES, &self.prefix(), |k, d| {
            if d.status == DeliveryStatus::Pending && gone(d.channel_ref()) {
                keys.push(k.to_string());
            }
            true
        })?;
        for k in keys {
            let Some(mut d) = self.shared.store.get::<Delivery>(Keyspace::DELIVERIES, &k)? else { continue };
            if d.status != DeliveryStatus::Pending || self.queue.contains_key(&d.delivery_id) {
                continue;
            }
            // Parked if it has a `due/` entry (now stale: dropped when it comes up).
            let parked = match d.next_attempt_ms {
                Some(due) => self
                    .shared
                    .store
                    .contains(Keyspace::DUE, &due_key(&self.rt.webhook_id, due, d.delivery_id.as_str()))?,
                None => false,
            };
            if parked {
                self.parked = self.parked.saturating_sub(1);
            } else if self.spilled_from.as_deref().is_some_and(|from| k.as_str() >= from) {
                self.spilled = self.spilled.saturating_sub(1);
            }
            // Its fan-out `Enqueue` may still be on its way.
            self.remember_read_back(&d.delivery_id);
            self.bury_removed(&mut d, now);
        }
        Ok(())
    }

    /// A fan-out's deliveries whose channel was removed before they arrived: buried as their
    /// stored records stand (one read back, in memory, or finished since is left alone).
    async fn bury_late_fan_out(&mut self, late: Vec<Delivery>) -> Result<(), ActorProcessingErr> {
        self.forget_old_refills();
        let late: Vec<Delivery> = late
            .into_iter()
            .filter(|d| !self.refilled.contains(&d.delivery_id) && !self.queue.contains_key(&d.delivery_id))
            .collect();
        if late.is_empty() {
            return Ok(());
        }
        // Outcomes written so far must be readable, or a finished one would read as pending.
        self.submit_writes();
        self.shared.store.commit(Batch::new()).await?;
        let now = now_millis();
        for d in late {
            let stored = self.shared.store.get::<Delivery>(Keyspace::DELIVERIES, &d.key())?;
            if let Some(mut stored) = stored.filter(|s| s.status == DeliveryStatus::Pending) {
                self.bury_removed(&mut stored, now);
            }
        }
        Ok(())
    }

    /// Marks a delivery of a removed channel `dead` (not a webhook error: the user removed it).
    fn bury_removed(&mut self, d: &mut Delivery, now: u64) {
        d.log_attempt(Attempt {
            at: millis_to_rfc3339(now),
            status_code: None,
            error: Some(CHANNEL_REMOVED.to_string()),
            duration_ms: 0,
        });
        d.status = DeliveryStatus::Dead;
        d.next_attempt_ms = None;
        d.finished_at_ms = Some(now);
        crate::metrics::delivery_finished(&d.channel, "dead");
        self.write(d);
    }

    /// Brings a pending delivery that the reload left in the store (parked, past the bounds,
    /// or of a channel removed since) into memory, past the bounds: its predecessor's send of
    /// it has an outcome to apply (see [`super::lease`]), which [`WorkerState::done`] takes
    /// only from memory.
    fn adopt(&mut self, id: &DeliveryId) -> Result<(), StoreError> {
        if self.queue.contains_key(id) {
            return Ok(());
        }
        let key = delivery_key(&self.rt.webhook_id, id);
        let Some(mut d) = self.shared.store.get::<Delivery>(Keyspace::DELIVERIES, &key)? else { return Ok(()) };
        // Finished: nothing to apply.
        if d.status != DeliveryStatus::Pending {
            return Ok(());
        }
        attach_event(&self.shared.store, &mut HashMap::new(), &mut d)?;
        if !self.rt.has_channel(&d) {
            // Of a channel removed since: the reload left it out (neither loaded, parked nor
            // counted as spilled, any `due/` entry of it deleted), for `done` to log its
            // attempt and finish it.
            self.queue.insert(d);
            return Ok(());
        }
        let parked = match d.next_attempt_ms {
            Some(due) => {
                let due_key = due_key(&self.rt.webhook_id, due, id.as_str());
                let parked = self.shared.store.contains(Keyspace::DUE, &due_key)?;
                if parked {
                    self.writes.delete(Keyspace::DUE, &due_key);
                    self.flush_soon();
                }
                parked
            }
            None => false,
        };
        match parked {
            true => self.parked = self.parked.saturating_sub(1),
            false => self.spilled = self.spilled.saturating_sub(1),
        }
        self.forget_blocked();
        // Only held: `done` decides at once where it goes next.
        self.queue.insert(d);
        Ok(())
    }

    async fn retry_now(&mut self, id: &DeliveryId) -> Result<(serde_json::Value, Durable), ApiError> {
        let now = now_millis();
        let removed = |d: &Delivery| !self.rt.has_channel(d);
        if self.queue.get(id).is_some_and(removed) {
            return Err(ApiError::Conflict(format!("delivery {id} can no longer be retried: {CHANNEL_REMOVED}")));
        }
        if let Some(d) = self.queue.get_mut(id) {
            // Still pending: just make it due now. One waiting in a throttled or capped
            // channel's backlog keeps its place there (a manual retry waits its turn too),
            // rather than go ahead of it and leave a stale entry behind. (A copy queued twice
            // in `ready` is harmless: a backlog takes a delivery once, see `Throttles::admit`.)
            let waits = self.throttles.holds(id) || self.capped.values().any(|b| b.contains(id));
            if !self.in_flight.contains(id) {
                d.next_attempt_ms = Some(now);
                if !waits {
                    self.ready.push_back(id.clone());
                }
            }
            let view = d.view();
            return Ok((view, self.shared.store.submit(Batch::new())));
        }
        // Finished: read its record once everything written before is applied (this actor's
        // grouped outcome writes, a prune's deletes), or a pruned delivery could come back.
        self.submit_writes();
        self.shared.store.commit(Batch::new()).await?;
        let key = delivery_key(&self.rt.webhook_id, id);
        let Some(mut d) = self.shared.store.get::<Delivery>(Keyspace::DELIVERIES, &key)? else {
            return Err(ApiError::NotFound(format!("delivery {id} not found for webhook {}", self.rt.webhook_id)));
        };
        if !self.rt.has_channel(&d) {
            return Err(ApiError::Conflict(format!("delivery {id} can no longer be retried: {CHANNEL_REMOVED}")));
        }
        attach_event(&self.shared.store, &mut HashMap::new(), &mut d)?;
        if d.event.is_none() {
            return Err(ApiError::Conflict(format!(
                "delivery {id} can no longer be retried: its event is no longer stored"
            )));
        }
        if d.status == DeliveryStatus::Succeeded {
            // Retrying a success means "send it again", to every recipient.
            d.done_recipients.clear();
        }
        let mut b = Batch::new();
        // Pending and not in memory: parked, spilled (counted in `spilled` already), or just
        // fanned out, its `Enqueue` still on its way (the fan-out is durable, and listed,
        // before the registry hands it over): that `Enqueue` must not queue it a second time,
        // after this retry may have sent it.
        let mut spilled = d.status == DeliveryStatus::Pending
            && self.spilled_from.as_deref().is_some_and(|from| key.as_str() >= from);
        if d.status == DeliveryStatus::Pending {
            self.remember_read_back(id);
        }
        if let (DeliveryStatus::Pending, Some(due)) = (d.status, d.next_attempt_ms) {
            // Parked: its `due/` entry goes (a stale one would be skipped anyway).
            let due_key = due_key(&self.rt.webhook_id, due, id.as_str());
            if self.shared.store.contains(Keyspace::DUE, &due_key)? {
                b.delete(Keyspace::DUE, &due_key);
                self.parked = self.parked.saturating_sub(1);
                spilled = false;
            }
        }
        if spilled {
            self.spilled = self.spilled.saturating_sub(1); // counted again below
        }
        // It may be the delivery a read-back stopped at.
        self.forget_blocked();
        // A finished delivery gets a fresh max_age window and schedule; a pending one (parked
        // or spilled) is only brought forward, as one held in memory is above: retrying it
        // by hand must not make it live past its max_age or restart its backoff.
        if d.status != DeliveryStatus::Pending {
            d.failures = 0;
            d.window_start_ms = now;
        }
        d.status = DeliveryStatus::Pending;
        d.next_attempt_ms = Some(now);
        d.finished_at_ms = None;
        b.put(Keyspace::DELIVERIES, &key, &d);
        let durable = self.shared.store.submit(b);
        let view = d.view();
        // Within the bounds as any delivery: past them it waits in the store (pending, due
        // now) and a refill reads it back; N dead 1 MiB deliveries retried by hand would
        // otherwise all be held at once.
        if self.spilled_from.is_none() && self.queue.fits(queue::cost(&d), self.settings.bounds()) {
            self.insert(d, now);
        } else {
            self.spill(d.key());
        }
        Ok((view, durable))
    }

    /// Records an attempt's error (`None`: it succeeded) for its channel, and reports the
    /// webhook's newest channel error. A removed channel's outcome says nothing.
    fn note_outcome(&mut self, d: &Delivery, error: Option<String>) {
        if !self.rt.has_channel(d) {
            return;
        }
        let had = self.channel_errors.len();
        // The same failure as this channel's last (another delivery's, say): since then. Or
        // as the stored error, from before the start (which does not say which channel's it
        // was): since its `last_error_at`.
        let since = error.as_deref().and_then(|e| {
            let failure = failure_kind(e);
            let known = self.channel_errors.iter().find(|(c, _, _)| d.channel_is(c));
            match known {
                Some((_, old, since)) => (failure_kind(old) == failure).then_some(*since),
                // Taken by the first channel failing that way: the others' are their own.
                None => {
                    let continues = self.stored_error.as_ref().is_some_and(|(old, _)| failure_kind(old) == failure);
                    continues.then(|| self.stored_error.take()).flatten().and_then(|(_, since)| since)
                }
            }
        });
        self.channel_errors.retain(|(c, _, _)| !d.channel_is(c));
        let cleared = self.channel_errors.len() < had;
        match error {
            Some(e) => self.channel_errors.push((d.channel_ref(), e, since.unwrap_or_else(now_millis))),
            // A success after a restart (no error known here) still clears the stored one.
            None if !cleared && had > 0 => return,
            None => {}
        }
        if self.rt.problem.is_none() {
            self.report_error(self.channel_errors.last().map(|(_, e, _)| e.clone()));
        }
    }

    /// Tells the registry about a change of `last_error`.
    fn report_error(&mut self, error: Option<String>) {
        // A channel's error dates from when the first channel still failing so began to (two
        // channels failing alike, their attempts taking turns, must not move it back and
        // forth; the first one recovering moves it to the other's start); another (the
        // webhook's secrets unreadable) from when it is reported.
        let failure = error.as_deref().map(failure_kind);
        let since = self
            .channel_errors
            .iter()
            .filter(|(_, e, _)| Some(failure_kind(e)) == failure)
            .map(|(_, _, since)| *since)
            .min();
        if (&error, since) == (&self.reported_error, self.reported_since) {
            return;
        }
        // Two channels can fail with the same text: which one this is tells the registry
        // whether a stored error alike in all but its delivery ID may stay.
        let channel = self.channel_errors.iter().rev().find(|(_, e, _)| Some(e) == error.as_ref()).map(|(c, _, _)| c);
        let same_channel = channel.is_some() && channel == self.reported_channel.as_ref();
        self.reported_channel = channel.cloned();
        self.reported_error = error.clone();
        self.reported_since = since;
        let since_ms = since.unwrap_or_else(now_millis);
        if let Some(reg) = ActorRef::<DeliveryMsg>::where_is(self.shared.names.delivery_registry()) {
            let webhook_id = self.rt.webhook_id.clone();
            let _ = reg.cast(DeliveryMsg::LastError { webhook_id, error, since_ms, same_channel });
        }
    }

    fn prune(&mut self) -> Result<(), ActorProcessingErr> {
        let (now, retention) = (now_millis(), self.settings.retention);
        let mut b = Batch::new();
        self.shared.store.for_each::<StatusOnly>(Keyspace::DELIVERIES, &self.prefix(), |k, d| {
            if d.expired(now, retention) {
                b.delete(Keyspace::DELIVERIES, k);
            }
            true
        })?;
        if !b.is_empty() {
            tracing::debug!(webhook_id = %self.rt.webhook_id, pruned = b.len(), "pruned finished deliveries");
            drop(self.shared.store.submit(b)); // not awaited: a lost prune is redone next time
        }
        Ok(())
    }
}

/// Why a delivery of a channel removed from its webhook is `dead`.
const CHANNEL_REMOVED: &str = "the channel of this delivery was removed from the webhook";

/// What the scans over every delivery of a webhook (reload, prune, a channel's removal)
/// read of each: decoding
/// only these fields skips building the rest (attempt logs, IDs).
#[derive(serde::Deserialize)]
struct StatusOnly {
    status: DeliveryStatus,
    window_start_ms: u64,
    next_attempt_ms: Option<u64>,
    #[serde(default)]
    finished_at_ms: Option<u64>,
    channel_index: usize,
    #[serde(default)]
    channel_id: Option<String>,
}

impl StatusOnly {
    /// Whether a finished delivery has been kept for `retention` since it finished. One
    /// stored before finish times were recorded counts as finished `retention` after its
    /// window began (retention is at least `max_age`, when most such deliveries had
    /// finished): a one-time cost of keeping old ones up to twice the retention, rather than
    /// dropping one a user may still look for. Reading its attempt log here would cost every
    /// prune a full decode.
    fn expired(&self, now_ms: u64, retention: Duration) -> bool {
        let retention = retention.as_millis() as u64;
        let finished_at = self.finished_at_ms.unwrap_or(self.window_start_ms.saturating_add(retention));
        self.status != DeliveryStatus::Pending && finished_at.saturating_add(retention) <= now_ms
    }

    /// As [`Delivery::channel_ref`].
    fn channel_ref(&self) -> String {
        self.channel_id.clone().unwrap_or_else(|| super::model::legacy_channel_id(self.channel_index))
    }
}

/// `{webhook_id}/{due_ms, 13 digits}/{delivery_id}`: parked retries in due order.
fn due_key(webhook: &WebhookId, due_ms: u64, delivery_id: &str) -> String {
    format!("{}/{due_ms:013}/{delivery_id}", webhook.as_str())
}

/// The due time and delivery ID of a `due/` key.
fn parse_due_key(key: &str) -> Option<(u64, &str)> {
    let mut parts = key.splitn(3, '/');
    let (_webhook, due, id) = (parts.next()?, parts.next()?, parts.next()?);
    Some((due.parse().ok()?, id))
}

/// Events read back, by ID: deliveries of one event (several channels) share one copy.
type EventCache = HashMap<crate::ids::EventId, Option<Arc<EventRecord>>>;

/// Attaches a delivery's event, read from `evt/` (with its stored size, for the byte
/// bound) unless `events` has it already.
fn attach_event(store: &crate::store::Store, events: &mut EventCache, d: &mut Delivery) -> Result<(), StoreError> {
    if d.event.is_some() {
        return Ok(());
    }
    let event = match events.get(&d.event_id) {
        Some(e) => e.clone(),
        None => {
            let e = store.get_sized::<EventRecord>(Keyspace::EVENTS, d.event_id.as_str())?.map(|(e, size)| {
                e.note_stored_size(size);
                Arc::new(e)
            });
            if e.is_none() {
                tracing::error!(delivery_id = %d.delivery_id, event_id = %d.event_id, "the event of a delivery is missing");
            }
            events.insert(d.event_id.clone(), e.clone());
            e
        }
    };
    d.event = event;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600 * 1000;

    fn stored(status: &str, window_start_ms: u64, finished_at_ms: Option<u64>) -> StatusOnly {
        let mut v = serde_json::json!({
            "status": status, "window_start_ms": window_start_ms, "next_attempt_ms": null, "channel_index": 0,
        });
        if let Some(f) = finished_at_ms {
            v["finished_at_ms"] = f.into();
        }
        serde_json::from_value(v).expect("a stored delivery decodes")
    }

    #[test]
    fn retention_counts_from_the_finish_not_the_queueing() {
        let retention = Duration::from_millis(72 * HOUR);
        let now = 1_000 * HOUR;
        // Queued 72 h ago, dead just now (its max_age ran out): kept for the retention.
        assert!(!stored("dead", now - 72 * HOUR, Some(now - HOUR)).expired(now, retention));
        assert!(!stored("succeeded", now - 100 * HOUR, Some(now - 71 * HOUR)).expired(now, retention));
        assert!(stored("dead", now - 100 * HOUR, Some(now - 72 * HOUR)).expired(now, retention));
        assert!(stored("succeeded", now - 80 * HOUR, Some(now - 73 * HOUR)).expired(now, retention));
        // Pending: never pruned, however old.
        assert!(!stored("pending", now - 500 * HOUR, None).expired(now, retention));
    }

    #[test]
    fn a_delivery_stored_without_a_finish_time_is_kept_as_long_as_it_could_need() {
        let retention = Duration::from_millis(24 * HOUR);
        let now = 1_000 * HOUR;
        assert!(!stored("dead", now - 30 * HOUR, None).expired(now, retention));
        assert!(stored("dead", now - 48 * HOUR, None).expired(now, retention));
    }
}
