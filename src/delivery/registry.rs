//! The delivery registry actor: owner of the webhook configs, the event-bus consumer
//! (fan-out), and parent/supervisor of one [`DeliveryWorker`] per webhook.
//!
//! Every webhook write goes through this actor, so the in-memory configs it fans out with
//! always match the store. Reads (list/get/deliveries) go straight to the store.
//!
//! Fan-out: woken by [`crate::events::EventBus::wait`], it reads the outbox in key (= time)
//! order and, in ONE batch, writes a delivery per (active matching webhook × channel), the
//! event once under `evt/` (deliveries name it), and deletes the outbox entries. The batch
//! is submitted without blocking the mailbox; once it is durable a task hands the
//! deliveries to the workers and reports back (`DrainDone`), and only then is the next
//! slice read. On (re)start it drains whatever the outbox holds. An event published through
//! `POST /v1/events` skips the outbox: it is fanned out at once, in its own batch, and the
//! publisher is answered once its deliveries are durable and queued. An hourly sweep
//! deletes the `evt/` records no delivery names any more.
//!
//! Supervision: a worker that fails is re-spawned (it reloads its queue from the store) and
//! counted in `hookline_actor_restarts_total{actor="delivery"}`; more than
//! [`MAX_WORKER_RESTARTS`] in [`RESTART_WINDOW`] leaves it stopped with a `last_error`,
//! until a PATCH of the webhook starts it again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::supervisor::RestartBudget;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::channel::{self, ChannelConfig, ChannelDeps, ChannelRules};
use super::lease::Lease;
use super::model::{self, CreateWebhook, Delivery, PatchWebhook, StoredWebhook, WebhookSecrets};
use super::netguard::NetPolicy;
use super::retry::Policy;
use super::signature;
use super::worker::{DeliveryWorker, WebhookRuntime, WorkerArgs, WorkerMsg, WorkerSettings};
use crate::error::ApiError;
use crate::events::EventRecord;
use crate::ids::{DeliveryId, EventId, WebhookId};
use crate::state::Shared;
use crate::store::{Batch, Durable, Keyspace, StoreError};
use crate::util::{now_millis, now_rfc3339};
use tokio::sync::oneshot;

/// Most outbox events fanned out per batch.
const DRAIN_SLICE: usize = 1024;
/// Most bytes of outbox events (stored form) per batch: a slice is held in memory, and its
/// events are written again in its batch (one log record), so 1,024 events of 1 MiB would
/// make one of a gigabyte. At least one event is taken.
const DRAIN_SLICE_BYTES: usize = 16 << 20;
/// How often stored events that no delivery names any more are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// A stored event younger than this is never swept, whatever the scan saw: a margin for
/// fan-out batches submitted around the scan (a batch becomes visible whole, see
/// `unreferenced_events`, so this is belt and braces).
const SWEEP_MIN_AGE: Duration = Duration::from_secs(600);
pub const MAX_WORKER_RESTARTS: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

pub struct DeliveryRegistry;

type Reply<T> = RpcReplyPort<Result<T, ApiError>>;

/// A publish's answer: its event, whether it is a repeat of an earlier publish (the same
/// `Idempotency-Key` and body: nothing new was published), and when it is on disk.
pub struct Published {
    pub event_id: EventId,
    pub repeat: bool,
    pub durable: oneshot::Receiver<Result<(), StoreError>>,
}

/// What a publish's `Idempotency-Key` names, stored under the key.
#[derive(serde::Serialize, serde::Deserialize)]
struct KeyRecord {
    event_id: EventId,
    /// The SHA-256 of the request's body, in hex: what a repeat is judged on when the
    /// record has no `event_sha256` (written by a version before it).
    body_sha256: String,
    /// The SHA-256 of the event as read (see [`PublishDigests`]), in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    event_sha256: Option<String>,
    at_ms: u64,
}

impl KeyRecord {
    /// Whether a publish with these digests repeats the one this record names.
    fn repeated_by(&self, d: &PublishDigests) -> bool {
        match &self.event_sha256 {
            Some(event) => *event == const_hex::encode(d.event),
            None => self.body_sha256 == const_hex::encode(d.body),
        }
    }
}

/// A keyed publish's SHA-256 digests: of its event as read (`event_type`, `payload`,
/// `cache_scopes`: what a repeat is judged on), and of its body's bytes (what keys recorded
/// by versions before were judged on: a repeat of one of those still matches).
pub struct PublishDigests {
    pub event: [u8; 32],
    pub body: [u8; 32],
}

/// A webhook PATCH's outcome: its view, when it is on disk, and (a rotated signing secret)
/// when the delivery actor signs with the new secret. The caller waits for both outside the
/// registry's mailbox, so a busy actor holds back only this answer.
pub struct Updated {
    pub view: serde_json::Value,
    pub durable: Durable,
    pub applied: Option<ractor::concurrency::OneshotReceiver<()>>,
}

pub enum DeliveryMsg {
    Create {
        body: CreateWebhook,
        reply: Reply<(serde_json::Value, Durable)>,
    },
    Update {
        webhook_id: WebhookId,
        patch: PatchWebhook,
        reply: Reply<Updated>,
    },
    /// A `Create` whose body was checked off the mailbox (see [`DeliveryState::check`]).
    CreateChecked {
        checked: Result<CreateWebhook, ApiError>,
        reply: Reply<(serde_json::Value, Durable)>,
    },
    /// An `Update` whose patch was checked off the mailbox.
    UpdateChecked {
        webhook_id: WebhookId,
        checked: Result<PatchWebhook, ApiError>,
        reply: Reply<Updated>,
    },
    Delete {
        webhook_id: WebhookId,
        reply: Reply<Durable>,
    },
    /// `POST /v1/events`: fan the event out now. The receiver resolves once its deliveries
    /// are durable and queued.
    Publish {
        event_type: String,
        payload: serde_json::Value,
        cache_scopes: Vec<serde_json::Value>,
        /// The request's `Idempotency-Key`, with its digests.
        key: Option<(String, PublishDigests)>,
        reply: Reply<Published>,
    },
    /// A keyed publish is on disk (or failed): its key is read from the store from now on.
    PublishSettled(String),
    /// Manual retry, forwarded to the webhook's worker (which answers `reply`).
    Retry {
        webhook_id: WebhookId,
        delivery_id: DeliveryId,
        reply: Reply<(serde_json::Value, Durable)>,
    },
    /// Whether the webhook exists (a retry whose worker stopped under it: deleted → 404).
    Exists {
        webhook_id: WebhookId,
        reply: RpcReplyPort<bool>,
    },
    /// New events may be in the outbox.
    Drain,
    /// A fan-out batch was made durable (or failed) and handed to the workers.
    DrainDone {
        epoch: u64,
        ok: bool,
        full: bool,
    },
    /// A worker's `last_error` changed.
    LastError {
        webhook_id: WebhookId,
        error: Option<String>,
        /// When the failure began (the channel's first error of this kind).
        since_ms: u64,
        /// It is the same channel's as the error reported before: one of the same text but
        /// for its delivery ID may stay as stored.
        same_channel: bool,
    },
    /// Hourly: delete stored events that no delivery names any more.
    SweepEvents,
    /// Shutdown: every worker stops starting sends and lets those in flight finish (their
    /// outcomes recorded); answered when all have.
    Quiesce(RpcReplyPort<()>),
    /// Fault injection for supervision tests (`/v1/debug/crash`).
    Crash,
    /// Start the webhook's worker now that its predecessor's lease is over (see
    /// `spawn_worker`), unless the webhook is gone or has one; `gave_up_on`: the lease whose
    /// wait ran out (see `lease::MAX_WAIT`): if it is still the current one, the worker
    /// starts without waiting for it any longer.
    Respawn {
        id: WebhookId,
        gave_up_on: Option<Lease>,
    },
}

struct Entry {
    stored: StoredWebhook,
    /// Plain channel configs (opened from `sealed`) and the signing secret.
    secrets: Option<WebhookSecrets>,
    restarts: RestartBudget,
    /// Its worker failed past its restart budget and was left stopped: a PATCH of the
    /// webhook starts it again, with a fresh budget.
    stopped: bool,
}

pub struct DeliveryState {
    shared: Shared,
    deps: ChannelDeps,
    settings: WorkerSettings,
    webhooks: HashMap<WebhookId, Entry>,
    /// The keyed publishes not yet on disk (not readable from the store yet): a repeat of
    /// one of them is told from here.
    publishing: HashMap<String, KeyRecord>,
    /// A fan-out batch is in flight; `again` = more was signalled meanwhile.
    draining: bool,
    again: bool,
    epoch: u64,
    waker: Option<tokio::task::JoinHandle<()>>,
    sweeper: Option<ractor::concurrency::JoinHandle<()>>,
    /// Saves' checks run one at a time, off the mailbox (see [`DeliveryState::check`]).
    check_slot: Arc<tokio::sync::Semaphore>,
}

impl Actor for DeliveryRegistry {
    type Msg = DeliveryMsg;
    type State = DeliveryState;
    type Arguments = Shared;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, shared: Shared) -> Result<Self::State, ActorProcessingErr> {
        // A predecessor may have submitted writes it did not wait for: let them land before
        // reloading, so a restart never forgets an acknowledged webhook change.
        shared.store.commit(crate::store::Batch::new()).await?;
        let cfg = &shared.config.delivery;
        let policy = NetPolicy::from(cfg);
        let max_age = Duration::from_secs(cfg.max_age_seconds.unwrap_or(cfg.max_age_hours.saturating_mul(3600)));
        // Providers come from the validated config; one that still cannot be set up leaves
        // its channels refused at create and failing with the reason, not the daemon down.
        let mailer = cfg.email.as_ref().and_then(|s| match channel::email::Mailer::new(s) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                tracing::error!(error = %e, "email channels are disabled");
                None
            }
        });
        let sms = cfg.sms.as_ref().and_then(|s| match channel::sms::SmsApi::new(s) {
            Ok(api) => Some(Arc::new(api)),
            Err(e) => {
                tracing::error!(error = %e, "SMS channels are disabled");
                None
            }
        });
        let deps = ChannelDeps {
            // Fails only without any TLS protocol version (impossible with ring): fatal.
            client: crate::delivery::client::DeliveryClient::new(policy)
                .map_err(|e| format!("delivery HTTP client: {e}"))?,
            policy,
            default_timeout: Duration::from_secs(cfg.request_timeout_seconds),
            mailer,
            sms,
        };
        let settings = WorkerSettings {
            policy: Policy {
                schedule: cfg.retry_schedule_seconds.iter().map(|s| Duration::from_secs(*s)).collect(),
                max_age,
            },
            max_in_flight: cfg.max_in_flight_per_webhook.max(1),
            max_queued: cfg.max_queued_in_memory_per_webhook.max(1),
            max_queued_bytes: usize::try_from(cfg.max_queued_bytes_per_webhook).unwrap_or(usize::MAX),
            park_after: Duration::from_secs(cfg.retry_in_memory_seconds.max(1)),
            retention: max_age.max(Duration::from_secs(24 * 3600)),
            max_attempt: Duration::from_secs(cfg.max_attempt_seconds.max(1)),
        };
        let mut state = DeliveryState {
            shared: shared.clone(),
            deps,
            settings,
            webhooks: HashMap::new(),
            publishing: HashMap::new(),
            draining: false,
            again: false,
            epoch: rand::random::<u64>() >> 1,
            waker: None,
            sweeper: None,
            check_slot: Arc::new(tokio::sync::Semaphore::new(1)),
        };
        let mut stored = Vec::new();
        shared.store.for_each::<StoredWebhook>(Keyspace::WEBHOOKS, "", |_, w| {
            stored.push(w);
            true
        })?;
        for w in stored {
            let secrets = open_secrets(&shared, &w);
            let id = w.webhook_id.clone();
            // Saved before event types had to be words joined by dots (`object.`): kept and
            // matched as before, but no publish can carry such a type now, and a PATCH of
            // the webhook's whole view is refused until it is fixed.
            if let Err(e) = model::check_each_event_type(&w.event_types) {
                tracing::warn!(webhook_id = %id, error = %e,
                    "a stored event type is not one any event can have now: PATCH the webhook's event_types");
            }
            state.webhooks.insert(id.clone(), Entry { stored: w, secrets, restarts: worker_budget(), stopped: false });
            state.spawn_worker(&myself, &id).await?;
        }
        state.count_webhooks();
        state.tell_bus();
        // Wake-ups from producers become Drain messages; start with one for leftovers.
        // The bus wakes ONE waiter: a waker left over from a failed registry (post_stop is
        // not guaranteed to run) forwards its wake-up to the current registry by name and
        // ends, so no wake-up is lost.
        let me = myself.clone();
        let bus = shared.bus.clone();
        let names = shared.names.clone();
        state.waker = Some(tokio::spawn(async move {
            loop {
                bus.wait().await;
                if me.cast(DeliveryMsg::Drain).is_err() {
                    if let Some(current) = ActorRef::<DeliveryMsg>::where_is(names.delivery_registry()) {
                        let _ = current.cast(DeliveryMsg::Drain);
                    }
                    break;
                }
            }
        }));
        let _ = myself.cast(DeliveryMsg::Drain);
        state.sweeper = Some(myself.send_interval(SWEEP_EVERY, || DeliveryMsg::SweepEvents));
        tracing::debug!(webhooks = state.webhooks.len(), "delivery registry started");
        Ok(state)
    }

    async fn post_stop(&self, _myself: ActorRef<Self::Msg>, state: &mut Self::State) -> Result<(), ActorProcessingErr> {
        if let Some(w) = state.waker.take() {
            w.abort();
        }
        if let Some(s) = state.sweeper.take() {
            s.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            // A caller that stopped waiting (its 30 s ran out: it answered 503, "retry") must
            // find nothing done, or its retry makes a second webhook, or a second event. A
            // save's checks (rendering its templates) can take seconds, so they are asked again
            // after those checks, just before anything is written.
            DeliveryMsg::Create { body, reply } => {
                if !reply.is_closed() {
                    state.check(
                        &myself,
                        move |rules| body.validate(rules).map(|()| body),
                        |checked| DeliveryMsg::CreateChecked { checked, reply },
                    );
                }
            }
            DeliveryMsg::CreateChecked { checked, reply } => {
                if !reply.is_closed() {
                    let r = match checked {
                        Ok(body) => state.create(&myself, body, || reply.is_closed()).await,
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(r);
                }
            }
            DeliveryMsg::Update { webhook_id, patch, reply } => {
                if !reply.is_closed() {
                    state.check(
                        &myself,
                        move |rules| patch.validate(rules).map(|()| patch),
                        |checked| DeliveryMsg::UpdateChecked { webhook_id, checked, reply },
                    );
                }
            }
            DeliveryMsg::UpdateChecked { webhook_id, checked, reply } => {
                if !reply.is_closed() {
                    let r = match checked {
                        Ok(patch) => state.update(&webhook_id, patch, || reply.is_closed()).await,
                        Err(e) => Err(e),
                    };
                    if r.is_ok() {
                        state.start_stopped_worker(&myself, &webhook_id).await;
                    }
                    let _ = reply.send(r);
                }
            }
            DeliveryMsg::Exists { webhook_id, reply } => {
                let _ = reply.send(state.webhooks.contains_key(&webhook_id));
            }
            DeliveryMsg::Delete { webhook_id, reply } => {
                if !reply.is_closed() {
                    let r = state.delete(&webhook_id).await;
                    let _ = reply.send(r);
                }
            }
            DeliveryMsg::Publish { event_type, payload, cache_scopes, key, reply } => {
                if !reply.is_closed() {
                    let _ = reply.send(state.publish_keyed(&event_type, payload, cache_scopes, key));
                }
            }
            DeliveryMsg::PublishSettled(key) => {
                state.publishing.remove(&key);
            }
            DeliveryMsg::Retry { webhook_id, delivery_id, reply } => {
                if !state.webhooks.contains_key(&webhook_id) {
                    let _ = reply.send(Err(not_found(&webhook_id)));
                } else {
                    match ActorRef::<WorkerMsg>::where_is(state.shared.names.delivery(webhook_id.as_str())) {
                        Some(w) => {
                            if let Err(ractor::MessagingErr::SendErr(WorkerMsg::Retry { reply, .. })) =
                                w.cast(WorkerMsg::Retry { delivery_id, reply })
                            {
                                let _ = reply.send(Err(unavailable(&webhook_id)));
                            }
                        }
                        // Left stopped after failing past its restart budget: retrying soon
                        // does not help, a PATCH does (its last_error says so too).
                        None if state.webhooks.get(&webhook_id).is_some_and(|e| e.stopped) => {
                            let _ = reply.send(Err(ApiError::Unavailable(format!(
                                "the delivery actor of webhook {webhook_id} is stopped after failing repeatedly (its \
                                 last_error says why, the daemon's log more): a PATCH of the webhook starts it again, \
                                 then retry"
                            ))));
                        }
                        None => {
                            let _ = reply.send(Err(unavailable(&webhook_id)));
                        }
                    }
                }
            }
            DeliveryMsg::Drain => state.drain(&myself),
            DeliveryMsg::DrainDone { epoch, ok, full } => {
                if epoch != state.epoch {
                    return Ok(()); // from before a restart
                }
                state.draining = false;
                if !ok {
                    // The store failed; try again shortly rather than spinning.
                    myself.send_after(Duration::from_secs(1), || DeliveryMsg::Drain);
                } else if full || std::mem::take(&mut state.again) {
                    state.drain(&myself);
                }
            }
            DeliveryMsg::LastError { webhook_id, error, since_ms, same_channel } => {
                state.set_last_error(&webhook_id, error, since_ms, same_channel)
            }
            DeliveryMsg::SweepEvents => state.sweep_events(),
            DeliveryMsg::Quiesce(reply) => {
                let workers: Vec<_> = state.webhooks.keys().filter_map(|id| state.worker(id)).collect();
                // Webhooks whose worker waits for a failed predecessor's sends: those sends
                // are waited for too (the cut-off ends them), then the successors started,
                // which take their outcomes, and quiesced in turn (no send starts now).
                // (A lease just over counts while it holds what it left: its successor's
                // Respawn may still be to come, behind this.)
                let deferred: Vec<_> = state
                    .webhooks
                    .keys()
                    .filter(|id| state.worker(id).is_none())
                    .filter_map(|id| state.shared.delivery_leases.get(id).map(|l| (id.clone(), l)))
                    .filter(|(_, l)| !l.is_over() || l.has_left())
                    .collect();
                let registry = myself.clone();
                // Waited for off the mailbox: the registry stays responsive meanwhile.
                tokio::spawn(async move {
                    let each = workers.iter().map(|w| w.call(WorkerMsg::Quiesce, None));
                    futures::future::join_all(each).await;
                    if !deferred.is_empty() {
                        let each = deferred.into_iter().map(|(id, lease)| {
                            let registry = registry.clone();
                            async move {
                                let gave_up_on = (!lease.over().await).then_some(lease);
                                let _ = registry.cast(DeliveryMsg::Respawn { id, gave_up_on });
                            }
                        });
                        futures::future::join_all(each).await;
                        // After the Respawns in the mailbox: it quiesces the successors.
                        let _ = registry.call(DeliveryMsg::Quiesce, None).await;
                    }
                    let _ = reply.send(());
                });
            }
            DeliveryMsg::Respawn { id, gave_up_on } => {
                if state.webhooks.contains_key(&id) && state.worker(&id).is_none() {
                    if let Err(e) = state.spawn_worker_after(&myself, &id, gave_up_on).await {
                        tracing::error!(webhook_id = %id, error = %e, "start of delivery actor failed");
                    }
                }
            }
            DeliveryMsg::Crash => {
                return Err(ActorProcessingErr::from("crash requested through /v1/debug/crash"));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            // Workers stop on purpose only when their webhook is deleted.
            _ => return Ok(()),
        };
        let Some(id) = state.webhook_of(&cell) else { return Ok(()) };
        let Some(entry) = state.webhooks.get_mut(&id) else { return Ok(()) };
        if !entry.restarts.allow() {
            tracing::error!(webhook_id = %id, %reason, "delivery actor failed too often; leaving it stopped until the webhook is patched");
            entry.stopped = true;
            state.set_last_error(
                &id,
                Some(format!(
                    "delivery stopped after repeated internal failures ({reason}); its deliveries wait: a PATCH of \
                     the webhook (or a restart of hookline) starts it again"
                )),
                now_millis(),
                false,
            );
            return Ok(());
        }
        tracing::warn!(webhook_id = %id, %reason, "delivery actor failed; restarting it");
        crate::metrics::actor_restart("delivery");
        if let Err(e) = state.spawn_worker(&myself, &id).await {
            tracing::error!(webhook_id = %id, error = %e, "restart of delivery actor failed");
        }
        Ok(())
    }
}

/// A webhook's worker's restart budget, fresh (see the module docs).
fn worker_budget() -> RestartBudget {
    RestartBudget::new(MAX_WORKER_RESTARTS, RESTART_WINDOW)
}

/// The error of a request whose caller stopped waiting (it was answered 503): never sent.
fn caller_gone() -> ApiError {
    ApiError::Unavailable("the caller stopped waiting; nothing was changed".into())
}

fn not_found(id: &WebhookId) -> ApiError {
    ApiError::NotFound(format!("webhook {id} not found"))
}

fn unavailable(id: &WebhookId) -> ApiError {
    ApiError::Unavailable(format!("the delivery actor of webhook {id} is restarting; retry shortly"))
}

/// Matches the channels of a PATCH to the stored ones, restores the redacted values sent
/// back, and returns each channel's ID (see [`model::CHANNEL_ID`]). A channel is the stored
/// channel
/// 1. whose `channel_id` it carries (as shown by a GET; 422 if there is none such, or if it
///    would change type);
/// 2. else the stored one with the same destination (url, Slack URL or its redacted form,
///    recipients). When several stored channels (not taken by an ID) share that destination,
///    only the one whose whole config the channel repeats exactly is it; otherwise which
///    stored secret, headers and pending deliveries go with it cannot be told (a GET's
///    channels sent back reordered would swap them): 422 asking for its `channel_id`;
/// 3. else, when the PATCH has as many channels as are stored, the one at its position if
///    of the same type (an edit in place by hand);
/// 4. else it is new. Stored channels matched by nothing are removed: their pending
///    deliveries fail (`dead`) instead of going to another channel.
fn reconcile_channels(
    next: &mut [ChannelConfig],
    given: &[Option<String>],
    old: &[ChannelConfig],
    old_ids: &[String],
) -> Result<Vec<String>, ApiError> {
    let mut matched: Vec<Option<usize>> = vec![None; next.len()];
    let mut claimed = vec![false; old.len()];
    for (i, id) in given.iter().enumerate().take(next.len()) {
        let Some(id) = id else { continue };
        let field = format!("channels[{i}].{}", model::CHANNEL_ID);
        let Some(j) = old_ids.iter().position(|o| o == id) else {
            return Err(ApiError::validation(
                field,
                "no channel of this webhook has this ID (leave channel_id out to add a channel)",
            ));
        };
        if claimed[j] {
            return Err(ApiError::validation(field, "this channel ID is given twice"));
        }
        if next[i].kind() != old[j].kind() {
            return Err(ApiError::validation(
                field,
                format!(
                    "that is {} channel; a channel cannot change type (remove it, add a new one)",
                    crate::util::with_article(old[j].kind())
                ),
            ));
        }
        claimed[j] = true;
        matched[i] = Some(j);
    }
    // Exact repeats of a stored channel first, whatever their order in the list: an edited
    // channel that shares its destination with an unchanged one is then left with a single
    // candidate.
    for (i, ch) in next.iter().enumerate() {
        if matched[i].is_some() {
            continue;
        }
        let same: Vec<usize> = (0..old.len())
            .filter(|&j| !claimed[j] && same_destination(ch, &old[j]) && same_config(ch, &old[j]))
            .collect();
        if let [j] = same[..] {
            claimed[j] = true;
            matched[i] = Some(j);
        }
    }
    for (i, ch) in next.iter().enumerate() {
        if matched[i].is_some() {
            continue;
        }
        let candidates: Vec<usize> = (0..old.len()).filter(|&j| !claimed[j] && same_destination(ch, &old[j])).collect();
        let j = match candidates[..] {
            [] => continue,
            [j] => j,
            _ => {
                let mut same = candidates.iter().copied().filter(|&j| same_config(ch, &old[j]));
                match (same.next(), same.next()) {
                    (Some(j), None) => j,
                    _ => {
                        return Err(ApiError::validation(
                            format!("channels[{i}].{}", model::CHANNEL_ID),
                            format!(
                                "{} stored channels of this webhook send to this destination; give this channel's \
                                 channel_id (as GET shows it) so that its stored secrets and pending deliveries stay \
                                 with it",
                                candidates.len()
                            ),
                        ))
                    }
                }
            }
        };
        claimed[j] = true;
        matched[i] = Some(j);
    }
    keep_redacted_secrets(next, &matched, old)?;
    // By position only when the list keeps its length: after a removal, positions no longer
    // say which channel is which (the edited one would take the removed one's deliveries).
    if next.len() == old.len() {
        for (i, ch) in next.iter().enumerate() {
            if matched[i].is_none() && !claimed[i] && old[i].kind() == ch.kind() {
                claimed[i] = true;
                matched[i] = Some(i);
            }
        }
    }
    Ok(matched.iter().map(|m| m.map_or_else(model::new_channel_id, |j| old_ids[j].clone())).collect())
}

/// Whether two channels send to the same place (`a` as sent in a PATCH: its Slack URL may be
/// the redacted form of `b`'s).
fn same_destination(a: &ChannelConfig, b: &ChannelConfig) -> bool {
    match (a, b) {
        (ChannelConfig::Webhook(a), ChannelConfig::Webhook(b)) => a.url == b.url,
        (ChannelConfig::Slack(a), ChannelConfig::Slack(b)) => {
            a.webhook_url == b.webhook_url
                || (a.webhook_url.contains(channel::REDACTED)
                    && channel::shows_redacted(&b.webhook_url, &a.webhook_url))
        }
        (ChannelConfig::Email(a), ChannelConfig::Email(b)) => a.to == b.to,
        (ChannelConfig::Sms(a), ChannelConfig::Sms(b)) => a.to == b.to,
        _ => false,
    }
}

/// Whether `a` (as sent) is `b` (as stored) exactly, every setting and secret included. A
/// channel that carries a redacted value never is.
fn same_config(a: &ChannelConfig, b: &ChannelConfig) -> bool {
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A PATCH that sends back a redacted placeholder (GET → edit → PATCH) keeps the stored
/// value it stands for, taken from the stored channel it identifies (`matched`: by its
/// channel ID, or its destination when that is unambiguous), never by position alone:
/// - a Slack `webhook_url` shown redacted names its channel by the digest in it;
/// - a webhook channel's `secret` or header shown redacted is kept only for a channel whose
///   `url` is unchanged, so a hidden credential is never sent to a new destination.
///
/// Anything else is a 422 asking for the value itself.
fn keep_redacted_secrets(
    next: &mut [ChannelConfig],
    matched: &[Option<usize>],
    old: &[ChannelConfig],
) -> Result<(), ApiError> {
    for (i, ch) in next.iter_mut().enumerate() {
        let stored = matched.get(i).copied().flatten().and_then(|j| old.get(j));
        match ch {
            ChannelConfig::Slack(c) if c.webhook_url.contains(channel::REDACTED) => {
                let shown = |u: &str| channel::shows_redacted(u, &c.webhook_url);
                let same = |o: &&ChannelConfig| matches!(o, ChannelConfig::Slack(o) if shown(&o.webhook_url));
                let found = stored.filter(same);
                match found {
                    Some(ChannelConfig::Slack(o)) => c.webhook_url = o.webhook_url.clone(),
                    _ => {
                        return Err(ApiError::validation(
                            format!("channels[{i}].configs.webhook_url"),
                            "the redacted URL is not the one stored for this channel (the channel its channel_id \
                             names, or else the one at its place); send the full URL",
                        ))
                    }
                }
            }
            ChannelConfig::Webhook(c) => {
                let redacted_header = c.headers.values().any(|v| v == channel::REDACTED);
                if c.secret.as_deref() != Some(channel::REDACTED) && !redacted_header {
                    continue;
                }
                let same_url = |o: &&ChannelConfig| matches!(o, ChannelConfig::Webhook(o) if o.url == c.url);
                let prev = stored.filter(same_url);
                let prev = match prev {
                    Some(ChannelConfig::Webhook(o)) => o,
                    _ => {
                        return Err(ApiError::validation(
                            format!("channels[{i}].configs.url"),
                            "a hidden secret or header (shown as ********) is kept only for a channel whose url \
                             is unchanged; send the values themselves",
                        ))
                    }
                };
                if c.secret.as_deref() == Some(channel::REDACTED) {
                    c.secret = prev.secret.clone();
                }
                for (name, value) in c.headers.iter_mut().filter(|(_, v)| *v == channel::REDACTED) {
                    // Header names are case-insensitive (a channel cannot hold `X-A` and `x-a`):
                    // `x-team` sent back keeps the value stored as `X-Team`.
                    match prev.headers.iter().find(|(stored, _)| stored.eq_ignore_ascii_case(name)) {
                        Some((_, v)) => *value = v.clone(),
                        None => {
                            return Err(ApiError::validation(
                                format!("channels[{i}].configs.headers.{name}"),
                                "shown as ******** but this channel has no such stored header; send its value",
                            ))
                        }
                    }
                }
                // Checked on the body, where a kept value counted as its 8 characters.
                c.check_sizes(&format!("channels[{i}]"))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// The channels as stored in plain text (and shown): redacted, each with its ID.
fn stored_channels(channels: &[ChannelConfig], ids: &[String]) -> Vec<serde_json::Value> {
    channels.iter().zip(ids).map(|(c, id)| model::with_channel_id(c.redacted(), id)).collect()
}

/// The webhook's secrets, or `None` (logged: its deliveries wait, and only its `last_error`
/// would say why) when they cannot be opened, as after a change of master key.
fn open_secrets(shared: &Shared, w: &StoredWebhook) -> Option<WebhookSecrets> {
    let opened = shared.secrets.open(&w.sealed, w.webhook_id.as_str()).map_err(|e| e.to_string());
    match opened.and_then(|plain| serde_json::from_slice(&plain).map_err(|e| e.to_string())) {
        Ok(secrets) => Some(secrets),
        Err(e) => {
            tracing::error!(webhook_id = %w.webhook_id, error = %e,
                "the webhook's secrets cannot be opened (a changed master key?): its deliveries wait, unsent");
            None
        }
    }
}

impl DeliveryState {
    /// Producers store events only while some webhook is active (`events/mod.rs`); call
    /// after every change to `webhooks`, before answering it.
    fn tell_bus(&self) {
        self.shared.bus.set_listening(self.any_active());
    }

    /// The webhooks gauges: how many there are, and how many of them the master key cannot
    /// open (their deliveries wait until they are deleted and made again).
    fn count_webhooks(&self) {
        crate::metrics::webhooks(self.webhooks.len());
        let sealed = self.webhooks.values().filter(|e| e.secrets.is_none()).count();
        crate::metrics::credentials_unreadable("webhook", sealed);
    }

    fn any_active(&self) -> bool {
        self.webhooks.values().any(|e| e.stored.is_active)
    }

    fn rules(&self) -> ChannelRules {
        self.deps.rules()
    }

    /// Runs a save's checks off the mailbox, then sends the registry `then(result)`.
    ///
    /// The checks render every template of the save (a sample event, and stand-in payloads
    /// for an error), which takes seconds for the slowest templates: on the mailbox, every
    /// publish and every other save would wait behind them. They need nothing of the
    /// registry's state, only the channel rules. One runs at a time, on the blocking pool, so
    /// a burst of slow saves takes one core, as it did on the mailbox, not all of them.
    fn check<T: Send + 'static>(
        &self,
        myself: &ActorRef<DeliveryMsg>,
        check: impl FnOnce(ChannelRules) -> Result<T, ApiError> + Send + 'static,
        then: impl FnOnce(Result<T, ApiError>) -> DeliveryMsg + Send + 'static,
    ) {
        let (rules, slot, myself) = (self.rules(), self.check_slot.clone(), myself.clone());
        tokio::spawn(async move {
            let checked = match slot.acquire_owned().await {
                Ok(permit) => {
                    let r = tokio::task::spawn_blocking(move || check(rules)).await;
                    drop(permit);
                    r.unwrap_or_else(|e| Err(ApiError::Internal(anyhow::anyhow!("checking the webhook: {e}"))))
                }
                Err(_) => Err(ApiError::Unavailable("the webhook registry is stopping; retry".into())),
            };
            // A registry that stopped meanwhile drops the message and its reply: the caller
            // answers 503, and nothing was done.
            let _ = myself.cast(then(checked));
        });
    }

    fn webhook_of(&self, cell: &ActorCell) -> Option<WebhookId> {
        let name = cell.get_name()?;
        let prefix = self.shared.names.delivery("");
        WebhookId::parse(name.strip_prefix(prefix.as_str())?)
    }

    fn runtime(&self, entry: &Entry) -> Arc<WebhookRuntime> {
        let w = &entry.stored;
        match &entry.secrets {
            Some(s) => Arc::new(WebhookRuntime {
                webhook_id: w.webhook_id.clone(),
                webhook_name: Arc::from(w.webhook_name.as_str()),
                is_active: w.is_active,
                signing_key: Arc::from(signature::secret_key(&s.signing_secret).unwrap_or_default()),
                channels: s.channels.iter().map(|c| channel::build(c, &self.deps)).collect(),
                channel_ids: w.channel_ids(),
                destinations: s.channels.iter().map(|c| c.destination().to_string()).collect(),
                problem: None,
            }),
            None => Arc::new(WebhookRuntime {
                webhook_id: w.webhook_id.clone(),
                webhook_name: Arc::from(w.webhook_name.as_str()),
                is_active: w.is_active,
                signing_key: Arc::from(Vec::new()),
                channels: Vec::new(),
                channel_ids: w.channel_ids(),
                destinations: Vec::new(),
                problem: Some(crate::crypto::DecryptError::Key.to_string()),
            }),
        }
    }

    /// Starts the worker of a webhook left stopped after failing past its restart budget
    /// (a PATCH of it asks for that), with a fresh budget.
    async fn start_stopped_worker(&mut self, myself: &ActorRef<DeliveryMsg>, id: &WebhookId) {
        let Some(entry) = self.webhooks.get_mut(id).filter(|e| e.stopped) else { return };
        entry.stopped = false;
        entry.restarts = worker_budget();
        // Its error said it was stopped: no longer true (a failure of its channels is
        // reported again by the worker).
        self.set_last_error(id, None, now_millis(), false);
        // Started once the PATCH is on disk: a rotated signing secret a crash could still
        // forget must sign nothing (as a running worker switches to it only then).
        if let Err(e) = self.shared.store.commit(Batch::new()).await {
            tracing::error!(webhook_id = %id, error = %e, "start of delivery actor failed: the store failed");
            return;
        }
        tracing::info!(webhook_id = %id, "starting the delivery actor left stopped, as the webhook was patched");
        if let Err(e) = self.spawn_worker(myself, id).await {
            tracing::error!(webhook_id = %id, error = %e, "start of delivery actor failed");
        }
    }

    async fn spawn_worker(&mut self, myself: &ActorRef<DeliveryMsg>, id: &WebhookId) -> Result<(), ActorProcessingErr> {
        self.spawn_worker_after(myself, id, None).await
    }

    /// [`Self::spawn_worker`]; without waiting for the predecessor's lease any longer when
    /// it is `gave_up_on` (its wait ran out; a lease after it is waited for as any).
    async fn spawn_worker_after(
        &mut self,
        myself: &ActorRef<DeliveryMsg>,
        id: &WebhookId,
        gave_up_on: Option<Lease>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(entry) = self.webhooks.get(id) else { return Ok(()) };
        let name = self.shared.names.delivery(id.as_str());
        // After a registry restart the old workers are being killed; wait for the name.
        if let Some(old) = ractor::registry::where_is(name.clone()) {
            let _ = old.kill_and_wait(Some(Duration::from_secs(5))).await;
        }
        // A predecessor that failed (or was just killed) may have sends out: its successor
        // starts once they are over (see `lease.rs`), so none goes out twice and every
        // attempt is logged. Meanwhile the webhook's deliveries wait in the store, where the
        // successor finds them.
        let given_up = |l: &Lease| gave_up_on.as_ref().is_some_and(|g| g.is(l));
        if let Some(old) = self.shared.delivery_leases.get(id).filter(|l| !given_up(l) && !l.is_over()) {
            let (registry, id) = (myself.clone(), id.clone());
            tokio::spawn(async move {
                let gave_up_on = (!old.over().await).then_some(old);
                let _ = registry.cast(DeliveryMsg::Respawn { id, gave_up_on });
            });
            return Ok(());
        }
        let left = self.shared.delivery_leases.get(id).map(|l| l.take_left()).unwrap_or_default();
        let lease = Lease::default();
        self.shared.delivery_leases.put(id.clone(), lease.clone());
        let args = WorkerArgs {
            shared: self.shared.clone(),
            lease,
            left,
            runtime: self.runtime(entry),
            settings: self.settings.clone(),
            last_error: entry.stored.last_error.clone(),
            last_error_since: entry.stored.last_error_at.as_deref().and_then(crate::util::rfc3339_to_millis),
        };
        Actor::spawn_linked(Some(name), DeliveryWorker, args, myself.get_cell()).await?;
        Ok(())
    }

    fn worker(&self, id: &WebhookId) -> Option<ActorRef<WorkerMsg>> {
        ActorRef::where_is(self.shared.names.delivery(id.as_str()))
    }

    fn seal(&self, id: &WebhookId, secrets: &WebhookSecrets) -> String {
        let plain = serde_json::to_vec(secrets).unwrap_or_default();
        self.shared.secrets.seal(&plain, id.as_str())
    }

    async fn create(
        &mut self,
        myself: &ActorRef<DeliveryMsg>,
        body: CreateWebhook,
        gone: impl Fn() -> bool,
    ) -> Result<(serde_json::Value, Durable), ApiError> {
        if gone() {
            return Err(caller_gone());
        }
        // A redacted value (copied from a GET) only means "keep the stored one" in a PATCH.
        for (i, ch) in body.channels.iter().enumerate() {
            let redacted = match ch {
                ChannelConfig::Slack(c) if c.webhook_url.contains(channel::REDACTED) => Some("webhook_url".to_string()),
                ChannelConfig::Webhook(c) if c.secret.as_deref() == Some(channel::REDACTED) => Some("secret".into()),
                ChannelConfig::Webhook(c) => {
                    c.headers.iter().find(|(_, v)| *v == channel::REDACTED).map(|(k, _)| format!("headers.{k}"))
                }
                _ => None,
            };
            if let Some(f) = redacted {
                return Err(ApiError::validation(
                    format!("channels[{i}].configs.{f}"),
                    "this is the redacted form shown by the API; send the value itself",
                ));
            }
        }
        // Events recorded before the webhook existed are not for it.
        self.settle_outbox().await?;
        let mut webhook_id = WebhookId::generate();
        while self.webhooks.contains_key(&webhook_id) {
            webhook_id = WebhookId::generate();
        }
        let secrets = WebhookSecrets { signing_secret: signature::generate_secret(), channels: body.channels };
        let channel_ids: Vec<String> = secrets.channels.iter().map(|_| model::new_channel_id()).collect();
        let now = now_rfc3339();
        let stored = StoredWebhook {
            webhook_id: webhook_id.clone(),
            webhook_name: body.webhook_name,
            event_types: body.event_types,
            channels: stored_channels(&secrets.channels, &channel_ids),
            is_active: body.is_active,
            created_at: now.clone(),
            updated_at: now,
            last_error: None,
            last_error_at: None,
            sealed: self.seal(&webhook_id, &secrets),
        };
        let mut b = Batch::new();
        b.put(Keyspace::WEBHOOKS, webhook_id.as_str(), &stored);
        let durable = self.shared.store.submit(b);
        let mut view = stored.view();
        // The one and only time the signing secret is shown.
        view["signing_secret"] = serde_json::Value::String(secrets.signing_secret.clone());
        self.webhooks.insert(
            webhook_id.clone(),
            Entry { stored, secrets: Some(secrets), restarts: worker_budget(), stopped: false },
        );
        if let Err(e) = self.spawn_worker(myself, &webhook_id).await {
            tracing::error!(webhook_id = %webhook_id, error = %e, "start delivery actor");
        }
        self.count_webhooks();
        self.tell_bus();
        tracing::info!(webhook_id = %webhook_id, "webhook created");
        Ok((view, durable))
    }

    async fn update(
        &mut self,
        id: &WebhookId,
        patch: PatchWebhook,
        gone: impl Fn() -> bool,
    ) -> Result<Updated, ApiError> {
        if gone() {
            return Err(caller_gone());
        }
        let Some(entry) = self.webhooks.get(id) else { return Err(not_found(id)) };
        patch.validate_name_against(&entry.stored.webhook_name)?;
        // A store already refusing writes (poisoned by a failed fsync) fails the PATCH here,
        // before memory changes. (A rotated secret also waits for its own write below before
        // the worker signs with it.)
        self.shared.store.commit(Batch::new()).await?;
        // What the webhook receives changes: events recorded before the change go out under
        // the settings they were recorded under (a pause must not drop, nor a resume add,
        // the events still waiting in the outbox).
        if patch.is_active.is_some() || patch.event_types.is_some() || patch.channels.is_some() {
            self.settle_outbox().await?;
        }
        let policy_sealed = {
            let Some(entry) = self.webhooks.get(id) else { return Err(not_found(id)) };
            match (patch.channels.is_some() || patch.rotate_signing_secret, &entry.secrets) {
                (true, None) => {
                    return Err(ApiError::Conflict(format!(
                        "webhook {id}'s stored secrets cannot be decrypted with the current master key; delete and recreate it"
                    )))
                }
                (true, Some(s)) => {
                    let (channels, ids) = match &patch.channels {
                        Some(channels) => {
                            let mut channels = channels.clone();
                            let ids = reconcile_channels(
                                &mut channels,
                                &patch.channel_ids,
                                &s.channels,
                                &entry.stored.channel_ids(),
                            )?;
                            (channels, ids)
                        }
                        None => (s.channels.clone(), entry.stored.channel_ids()),
                    };
                    let signing_secret = match patch.rotate_signing_secret {
                        true => signature::generate_secret(),
                        false => s.signing_secret.clone(),
                    };
                    let next = WebhookSecrets { signing_secret, channels };
                    Some((self.seal(id, &next), next, ids))
                }
                (false, _) => None,
            }
        };
        let Some(entry) = self.webhooks.get_mut(id) else { return Err(not_found(id)) };
        // Seed 004: updated_at moves when something changes, not on a PATCH that sets what
        // is already there (`{}`, or `is_active: true` on an active webhook).
        let before = (entry.stored.view(), serde_json::to_value(&entry.secrets).ok());
        let w = &mut entry.stored;
        if let Some(n) = patch.webhook_name {
            w.webhook_name = n;
        }
        if let Some(t) = patch.event_types {
            w.event_types = t;
        }
        if let Some(a) = patch.is_active {
            w.is_active = a;
        }
        if let Some((sealed, secrets, ids)) = policy_sealed {
            w.channels = stored_channels(&secrets.channels, &ids);
            w.sealed = sealed;
            entry.secrets = Some(secrets);
        }
        if before != (entry.stored.view(), serde_json::to_value(&entry.secrets).ok()) {
            entry.stored.updated_at = now_rfc3339();
        }
        let mut b = Batch::new();
        b.put(Keyspace::WEBHOOKS, id.as_str(), &entry.stored);
        let mut durable = self.shared.store.submit(b);
        let mut view = entry.stored.view();
        if patch.rotate_signing_secret {
            // The one and only time the new signing secret is shown (after the write is
            // durable: the caller waits for it before answering).
            if let Some(s) = &entry.secrets {
                view["signing_secret"] = serde_json::Value::String(s.signing_secret.clone());
            }
        }
        self.tell_bus();
        let Some(entry) = self.webhooks.get(id) else { return Err(not_found(id)) };
        let mut applied = None;
        if let Some(worker) = self.worker(id) {
            let rt = self.runtime(entry);
            if patch.rotate_signing_secret {
                // Signed with only once it is on disk (a secret the next start would forget
                // must sign nothing); the caller then waits for the worker to switch, so no
                // attempt started after the answer goes out under the old one.
                durable.await?;
                durable = self.shared.store.submit(Batch::new());
                let (tx, rx) = ractor::concurrency::oneshot();
                let _ = worker.cast(WorkerMsg::Configure(rt, Some(tx.into())));
                applied = Some(rx);
            } else {
                let _ = worker.cast(WorkerMsg::Configure(rt, None));
            }
        }
        tracing::info!(webhook_id = %id, rotated_signing_secret = patch.rotate_signing_secret, "webhook updated");
        Ok(Updated { view, durable, applied })
    }

    async fn delete(&mut self, id: &WebhookId) -> Result<Durable, ApiError> {
        if !self.webhooks.contains_key(id) {
            return Err(not_found(id));
        }
        // A store that refuses writes (poisoned by a failed fsync) fails the delete here,
        // before anything changes: not after the webhook left memory but stayed on disk (a
        // retried DELETE answered 404 while the webhook came back at the next start).
        self.shared.store.commit(Batch::new()).await?;
        self.webhooks.remove(id);
        self.tell_bus();
        if let Some(worker) = self.worker(id) {
            let _ = worker.stop_and_wait(Some("webhook deleted".into()), Some(Duration::from_secs(5))).await;
        }
        self.shared.delivery_leases.take(id);
        // Barrier: fan-out batches submitted before this point (no later one names the
        // webhook, it is gone from `webhooks`) are visible to the scan below.
        self.shared.store.commit(Batch::new()).await?;
        // The webhook and its whole queue go in one batch.
        let mut b = Batch::new();
        b.delete(Keyspace::WEBHOOKS, id.as_str());
        self.shared.store.delete_under(&mut b, &[Keyspace::DELIVERIES, Keyspace::DUE], &format!("{}/", id.as_str()))?;
        self.count_webhooks();
        tracing::info!(webhook_id = %id, "webhook deleted");
        Ok(self.shared.store.submit(b))
    }

    fn set_last_error(&mut self, id: &WebhookId, error: Option<String>, since_ms: u64, same_channel: bool) {
        let Some(entry) = self.webhooks.get_mut(id) else { return };
        // The same failure of another delivery of the same channel (the error names its
        // delivery) is no change: not written again, `last_error_at` kept. Another channel's
        // (two failing alike, the one shown removed or recovered) is: the error must name a
        // delivery that is still failing.
        let at = error.as_ref().map(|_| crate::util::millis_to_rfc3339(since_ms));
        let same_failure = match (entry.stored.last_error.as_deref(), error.as_deref()) {
            (None, None) => true,
            (Some(old), Some(new)) => {
                same_channel && model::without_delivery_id(old) == model::without_delivery_id(new)
            }
            _ => false,
        };
        if same_failure && entry.stored.last_error_at == at {
            return;
        }
        entry.stored.last_error_at = at;
        entry.stored.last_error = error;
        let mut b = Batch::new();
        b.put(Keyspace::WEBHOOKS, id.as_str(), &entry.stored);
        drop(self.shared.store.submit(b)); // not awaited: last_error is advisory and set again on the next failure
    }

    /// Fans out every event in the outbox now, with the webhooks as they are, and waits until
    /// those deliveries are durable and queued: what a subscription change needs first. A
    /// drain in flight has fanned its slice out already; the barrier makes its outbox deletes
    /// visible, so no event is fanned out twice. (The actor's mailbox waits meanwhile: no
    /// other drain can start.)
    async fn settle_outbox(&mut self) -> Result<(), StoreError> {
        self.shared.store.commit(Batch::new()).await?;
        loop {
            let (events, full): (Vec<(String, EventRecord)>, bool) =
                self.shared.store.list_within(Keyspace::OUTBOX, "", DRAIN_SLICE, DRAIN_SLICE_BYTES)?;
            if events.is_empty() {
                return Ok(());
            }
            let (batch, per_worker) = self.fan_out_slice(events);
            self.shared.store.commit(batch).await?;
            enqueue(&self.shared.names, per_worker);
            if !full {
                return Ok(());
            }
        }
    }

    /// One batch with the deliveries of a slice of outbox entries and the entries' deletes
    /// (atomic across a crash: deliveries in, outbox entries out), and the deliveries by webhook.
    fn fan_out_slice(&self, events: Vec<(String, EventRecord)>) -> (Batch, HashMap<WebhookId, Vec<Delivery>>) {
        let now = now_millis();
        let mut batch = Batch::new();
        let mut per_worker: HashMap<WebhookId, Vec<Delivery>> = HashMap::new();
        for (key, event) in events {
            self.fan_out(Arc::new(event), now, &mut batch, &mut per_worker);
            batch.delete(Keyspace::OUTBOX, &key);
        }
        (batch, per_worker)
    }

    /// Fans out the next slice of the outbox (see the module docs).
    fn drain(&mut self, myself: &ActorRef<DeliveryMsg>) {
        if self.draining {
            self.again = true;
            return;
        }
        let (events, full): (Vec<(String, EventRecord)>, bool) =
            match self.shared.store.list_within(Keyspace::OUTBOX, "", DRAIN_SLICE, DRAIN_SLICE_BYTES) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "read the outbox");
                    myself.send_after(Duration::from_secs(1), || DeliveryMsg::Drain);
                    return;
                }
            };
        if events.is_empty() {
            return;
        }
        let (batch, per_worker) = self.fan_out_slice(events);
        self.draining = true;
        self.epoch = self.epoch.wrapping_add(1);
        let epoch = self.epoch;
        // The batch is atomic across a crash (deliveries in, outbox entries out), and the
        // workers hear of the deliveries only once it is durable.
        let durable = self.shared.store.submit(batch);
        let names = self.shared.names.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let ok = match durable.await {
                Ok(()) => {
                    enqueue(&names, per_worker);
                    true
                }
                // Submitted as the shutdown closed the store: nothing failed, the next start
                // fans the events out again.
                Err(crate::store::StoreError::Closed) => {
                    tracing::info!(
                        "a fan-out was cut off by the shutdown; its events stay in the outbox for the next start"
                    );
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "fan-out batch failed; the events stay in the outbox");
                    false
                }
            };
            let _ = me.cast(DeliveryMsg::DrainDone { epoch, ok, full });
        });
    }

    /// `POST /v1/events`: one batch with the event's deliveries (and the event, once, if any
    /// webhook takes it); the workers hear of them once it is durable, then the publisher.
    /// A publish with its `Idempotency-Key`, if any: a key seen before (keys are kept for the
    /// delivery retention after their publish) with the same body is a repeat, answered with the first publish's event
    /// once that is on disk, and publishes nothing; with another body, a 409. A new key is
    /// stored in the publish's own batch, so a crash keeps both or neither.
    fn publish_keyed(
        &mut self,
        event_type: &str,
        payload: serde_json::Value,
        cache_scopes: Vec<serde_json::Value>,
        key: Option<(String, PublishDigests)>,
    ) -> Result<Published, ApiError> {
        let Some((key, digests)) = key else {
            let (event_id, durable) = self.publish(event_type, payload, cache_scopes, None);
            return Ok(Published { event_id, repeat: false, durable });
        };
        let seen = match self.publishing.get(&key) {
            Some(r) => Some((r.event_id.clone(), r.repeated_by(&digests))),
            None => self.shared.store.get::<KeyRecord>(Keyspace::PUBLISH_KEYS, &key)?.map(|r| {
                let same = r.repeated_by(&digests);
                (r.event_id, same)
            }),
        };
        match seen {
            Some((event_id, true)) => {
                // On disk once everything submitted before is: the first publish included.
                let barrier = self.shared.store.submit(Batch::new());
                let (tx, rx) = oneshot::channel();
                tokio::spawn(async move {
                    let _ = tx.send(barrier.await);
                });
                Ok(Published { event_id, repeat: true, durable: rx })
            }
            Some((event_id, false)) => Err(ApiError::Conflict(format!(
                "Idempotency-Key {key:?} was used for another event (event {event_id}): a retry must send the same \
                 event_type, payload and cache_scopes; a new event needs a new key"
            ))),
            None => {
                let record = KeyRecord {
                    event_id: EventId::generate(),
                    body_sha256: const_hex::encode(digests.body),
                    event_sha256: Some(const_hex::encode(digests.event)),
                    at_ms: now_millis(),
                };
                let (event_id, durable) = self.publish(event_type, payload, cache_scopes, Some((&key, &record)));
                self.publishing.insert(key, record);
                Ok(Published { event_id, repeat: false, durable })
            }
        }
    }

    fn publish(
        &mut self,
        event_type: &str,
        payload: serde_json::Value,
        cache_scopes: Vec<serde_json::Value>,
        key: Option<(&str, &KeyRecord)>,
    ) -> (EventId, oneshot::Receiver<Result<(), StoreError>>) {
        let mut event = EventRecord::new(event_type, payload, cache_scopes);
        let mut batch = Batch::new();
        if let Some((key, record)) = key {
            event.event_id = record.event_id.clone();
            batch.put(Keyspace::PUBLISH_KEYS, key, record);
        }
        let event = Arc::new(event);
        let mut per_worker: HashMap<WebhookId, Vec<Delivery>> = HashMap::new();
        // As for recorded events: while no webhook is active, nothing is stored.
        if self.any_active() {
            self.fan_out(event.clone(), now_millis(), &mut batch, &mut per_worker);
        }
        let durable = self.shared.store.submit(batch);
        let names = self.shared.names.clone();
        let (tx, rx) = oneshot::channel();
        let event_type = event.event_type.clone();
        let settled = key.map(|(k, _)| k.to_string());
        tokio::spawn(async move {
            let r = durable.await;
            if r.is_ok() {
                crate::metrics::event_published(&event_type);
                enqueue(&names, per_worker);
            }
            // (A registry restarted meanwhile has no such key in memory: the store has it.)
            if let (Some(key), Some(registry)) = (settled, ActorRef::<DeliveryMsg>::where_is(names.delivery_registry()))
            {
                let _ = registry.cast(DeliveryMsg::PublishSettled(key));
            }
            let _ = tx.send(r);
        });
        (event.event_id.clone(), rx)
    }

    /// Adds to `batch` a delivery per (active webhook subscribed to `event` × channel), and
    /// the event itself once if any (deliveries name it), collecting them by webhook.
    fn fan_out(
        &self,
        event: Arc<EventRecord>,
        now: u64,
        batch: &mut Batch,
        per_worker: &mut HashMap<WebhookId, Vec<Delivery>>,
    ) {
        let mut matched = false;
        for entry in self.webhooks.values().filter(|e| e.stored.is_active) {
            if !entry.stored.subscribed(&event.event_type) {
                continue;
            }
            for (idx, ch) in entry.stored.channels.iter().enumerate() {
                let kind = ch.get("channel").and_then(|c| c.as_str()).unwrap_or("webhook");
                let ch_id = entry.stored.channel_id(idx);
                let d = Delivery::new(event.clone(), &entry.stored.webhook_id, idx, &ch_id, kind, now);
                batch.put(Keyspace::DELIVERIES, &d.key(), &d);
                matched = true;
                per_worker.entry(d.webhook_id.clone()).or_default().push(d);
            }
        }
        if matched {
            // Its size, for the workers' byte bounds, comes free with the write: one
            // measure for every webhook that holds it.
            let size = batch.put(Keyspace::EVENTS, event.event_id.as_str(), &*event);
            event.note_stored_size(size);
        }
        crate::metrics::event_dispatched();
    }
}

/// Hands fanned-out deliveries (durable by now) to their webhooks' workers. A webhook
/// deleted meanwhile has no worker: its deliveries were deleted with it.
fn enqueue(names: &crate::state::Names, per_worker: HashMap<WebhookId, Vec<Delivery>>) {
    for (id, ds) in per_worker {
        if let Some(w) = ActorRef::<WorkerMsg>::where_is(names.delivery(id.as_str())) {
            let _ = w.cast(WorkerMsg::Enqueue(ds));
        }
    }
}

impl DeliveryState {
    /// Deletes the `evt/` records that no delivery names (their deliveries were pruned or
    /// their webhook deleted). Reads are cheap (keys and one field); the deletes are one
    /// unawaited batch: a lost sweep is redone at the next one.
    fn sweep_events(&self) {
        match unreferenced_events(&self.shared.store, now_millis(), SWEEP_MIN_AGE) {
            Ok(b) if !b.is_empty() => {
                tracing::debug!(events = b.len(), "swept stored events no delivery names");
                drop(self.shared.store.submit(b));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweep stored events (retried in an hour)"),
        }
        // Publish keys are kept for the retention after their publish: a repeat after that
        // publishes anew. Off the mailbox (there may be many), deleted in slices.
        let (store, retention) = (self.shared.store.clone(), self.settings.retention);
        tokio::task::spawn_blocking(move || match expired_publish_keys(&store, now_millis(), retention) {
            Ok(slices) => slices.into_iter().for_each(|b| drop(store.submit(b))),
            Err(e) => tracing::warn!(error = %e, "sweep publish keys (retried in an hour)"),
        });
    }
}

/// The deletes of every publish `Idempotency-Key` recorded more than `retention` ago, in
/// batches of at most 10,000.
fn expired_publish_keys(
    store: &crate::store::Store,
    now_ms: u64,
    retention: Duration,
) -> Result<Vec<Batch>, crate::store::StoreError> {
    const SLICE: usize = 10_000;
    let cutoff = now_ms.saturating_sub(retention.as_millis() as u64);
    let mut slices = vec![Batch::new()];
    store.for_each::<KeyRecord>(Keyspace::PUBLISH_KEYS, "", |k, r| {
        if r.at_ms < cutoff {
            if slices.last().is_some_and(|b| b.len() >= SLICE) {
                slices.push(Batch::new());
            }
            if let Some(b) = slices.last_mut() {
                b.delete(Keyspace::PUBLISH_KEYS, k);
            }
        }
        true
    })?;
    slices.retain(|b| !b.is_empty());
    Ok(slices)
}

/// The deletes of every stored event older than `min_age` that no delivery names.
///
/// Events are read first, deliveries second, on purpose: a fan-out batch writes an event
/// and its deliveries together, and a batch becomes visible whole (one step into the store's
/// overlay, which keeps it until sled holds all of it), so every event the first scan sees
/// has its deliveries visible to the second.
pub(crate) fn unreferenced_events(
    store: &crate::store::Store,
    now_ms: u64,
    min_age: Duration,
) -> Result<Batch, crate::store::StoreError> {
    #[derive(serde::Deserialize)]
    struct Named {
        event_id: String,
    }
    let cutoff = now_ms.saturating_sub(min_age.as_millis() as u64);
    let mut old = std::collections::HashSet::new();
    store.for_each_key(Keyspace::EVENTS, "", |k| {
        // Event IDs are `evt_{ulid}`: the ULID carries the creation time.
        let created = crate::ids::ulid_of(k).filter(|_| k.starts_with("evt_"));
        if created.is_some_and(|u| u.timestamp_ms() < cutoff) {
            old.insert(k.to_string());
        }
        true
    })?;
    if !old.is_empty() {
        store.for_each::<Named>(Keyspace::DELIVERIES, "", |_, d| {
            old.remove(&d.event_id);
            true
        })?;
    }
    let mut b = Batch::new();
    for k in old {
        b.delete(Keyspace::EVENTS, &k);
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key of `ks`, in store order.
    fn keys_in(store: &crate::store::Store, ks: Keyspace) -> Vec<String> {
        let mut keys = Vec::new();
        store
            .for_each_key(ks, "", |k| {
                keys.push(k.to_string());
                true
            })
            .unwrap();
        keys
    }

    /// A key recorded by a version before the event digest is judged on its body's bytes
    /// still (a retry across the upgrade is a repeat); a new one on the event as read.
    #[test]
    fn a_publish_key_is_judged_on_the_digest_it_was_recorded_with() {
        let digests = PublishDigests { event: [1; 32], body: [2; 32] };
        let old = format!(r#"{{"event_id": "evt_a", "body_sha256": "{}", "at_ms": 1}}"#, const_hex::encode([2; 32]));
        let old: KeyRecord = serde_json::from_str(&old).expect("a record of before");
        assert!(old.repeated_by(&digests));
        assert!(!old.repeated_by(&PublishDigests { event: [1; 32], body: [3; 32] }), "another body");
        let new = KeyRecord {
            event_id: EventId::generate(),
            body_sha256: const_hex::encode([9; 32]),
            event_sha256: Some(const_hex::encode([1; 32])),
            at_ms: 1,
        };
        assert!(new.repeated_by(&digests), "the same event, written otherwise");
        assert!(!new.repeated_by(&PublishDigests { event: [4; 32], body: [9; 32] }), "another event");
    }

    #[tokio::test]
    async fn publish_keys_are_forgotten_after_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_sled(dir.path()).unwrap();
        let now = now_millis();
        let mut b = Batch::new();
        for (key, age_ms) in [("old", 90_000_000), ("young", 1_000)] {
            let r = KeyRecord {
                event_id: EventId::generate(),
                body_sha256: "00".into(),
                event_sha256: None,
                at_ms: now - age_ms,
            };
            b.put(Keyspace::PUBLISH_KEYS, key, &r);
        }
        store.commit(b).await.unwrap();
        let sweep = expired_publish_keys(&store, now, Duration::from_secs(24 * 3600)).unwrap();
        assert_eq!(sweep.len(), 1, "one slice");
        for b in sweep {
            store.commit(b).await.unwrap();
        }
        assert_eq!(keys_in(&store, Keyspace::PUBLISH_KEYS), ["young"]);
    }

    #[tokio::test]
    async fn the_sweep_deletes_only_old_events_no_delivery_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open_sled(dir.path()).unwrap();
        let now = now_millis();
        let id = |age_ms: u64| format!("evt_{}", ulid::Ulid::from_parts(now - age_ms, 7).to_string().to_lowercase());
        let (old_orphan, old_named, young_orphan) = (id(3_600_000), id(3_600_000), id(1_000));
        let mut b = Batch::new();
        for e in [&old_orphan, &old_named, &young_orphan] {
            b.put(Keyspace::EVENTS, e, &serde_json::json!({"event_id": e}));
        }
        b.put(Keyspace::DELIVERIES, "wh_x/del_1", &serde_json::json!({"event_id": old_named}));
        store.commit(b).await.unwrap();

        let sweep = unreferenced_events(&store, now, Duration::from_secs(600)).unwrap();
        store.commit(sweep).await.unwrap();
        let mut left = keys_in(&store, Keyspace::EVENTS);
        left.sort();
        let mut want = vec![old_named, young_orphan];
        want.sort();
        assert_eq!(left, want);
    }

    #[test]
    fn two_deliveries_failing_alike_are_one_failure() {
        use crate::delivery::model::without_delivery_id;
        let a = without_delivery_id("webhook delivery del_1_0: HTTP 500: boom");
        assert_eq!(a, ("webhook", "HTTP 500: boom"));
        assert_eq!(a, without_delivery_id("webhook delivery del_2_0: HTTP 500: boom"));
        assert_ne!(a, without_delivery_id("slack delivery del_2_0: HTTP 500: boom"));
        assert_ne!(a, without_delivery_id("webhook delivery del_2_0: HTTP 502: boom"));
        assert_eq!(without_delivery_id("odd"), ("odd", ""));
    }
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;

    fn hook(url: &str) -> ChannelConfig {
        serde_json::from_value(serde_json::json!({"channel": "webhook", "configs": {"url": url}})).unwrap()
    }

    fn ids(next: &mut [ChannelConfig], given: &[Option<&str>]) -> Vec<String> {
        let old = [hook("https://a.example/"), hook("https://b.example/")];
        let old_ids = ["ch_a".to_string(), "ch_b".to_string()];
        let given: Vec<Option<String>> = given.iter().map(|g| g.map(str::to_string)).collect();
        reconcile_channels(next, &given, &old, &old_ids).unwrap()
    }

    #[test]
    fn channels_are_matched_by_id_then_destination_then_position() {
        // Swapped, with their IDs.
        let mut next = [hook("https://b.example/"), hook("https://a.example/")];
        assert_eq!(ids(&mut next, &[Some("ch_b"), Some("ch_a")]), ["ch_b", "ch_a"]);
        // Swapped by hand: their urls say which is which.
        assert_eq!(ids(&mut next, &[]), ["ch_b", "ch_a"]);
        // Both edited in place by hand: positions.
        let mut next = [hook("https://a2.example/"), hook("https://b2.example/")];
        assert_eq!(ids(&mut next, &[]), ["ch_a", "ch_b"]);
        // One removed: the survivor is found by its url.
        let mut next = [hook("https://b.example/")];
        assert_eq!(ids(&mut next, &[]), ["ch_b"]);
        // One removed, the other edited, by hand: no position guess (it would take a's
        // deliveries); with its ID it keeps its own.
        let mut next = [hook("https://b2.example/")];
        let got = ids(&mut next, &[]);
        assert!(got[0] != "ch_a" && got[0] != "ch_b" && got[0].starts_with("ch_"), "{got:?}");
        assert_eq!(ids(&mut next, &[Some("ch_b")]), ["ch_b"]);
        // Added at the end.
        let mut next = [hook("https://a.example/"), hook("https://b.example/"), hook("https://c.example/")];
        let got = ids(&mut next, &[]);
        assert_eq!(&got[..2], ["ch_a", "ch_b"]);
        assert!(!["ch_a", "ch_b"].contains(&got[2].as_str()));
    }

    #[test]
    fn channels_sharing_a_url_keep_their_own_id_and_secret() {
        let secret = |url: &str, s: &str, timeout: f64| -> ChannelConfig {
            serde_json::from_value(
                serde_json::json!({"channel": "webhook", "configs": {"url": url, "secret": s, "timeout": timeout}}),
            )
            .unwrap()
        };
        let old = [secret("https://u.example/", "s1", 1.0), secret("https://u.example/", "s2", 2.0)];
        let old_ids = ["ch_x".to_string(), "ch_y".to_string()];
        let secret_of = |c: &ChannelConfig| match c {
            ChannelConfig::Webhook(c) => c.secret.clone().unwrap_or_default(),
            _ => String::new(),
        };
        // As a GET shows them, reversed, without their IDs: which hidden secret goes with which
        // settings cannot be told.
        let shown = |timeout: f64| secret("https://u.example/", channel::REDACTED, timeout);
        let err = reconcile_channels(&mut [shown(2.0), shown(1.0)], &[], &old, &old_ids).unwrap_err();
        assert!(format!("{err:?}").contains("channels[0].channel_id"), "{err:?}");
        let err = reconcile_channels(&mut [hook("https://v.example/"), shown(2.0)], &[], &old, &old_ids).unwrap_err();
        assert!(format!("{err:?}").contains("channels[1].channel_id"), "{err:?}");
        // With their IDs, each keeps its own.
        let mut next = [shown(2.0), shown(1.0)];
        let got = reconcile_channels(&mut next, &[Some("ch_y".into()), Some("ch_x".into())], &old, &old_ids).unwrap();
        assert_eq!(got, ["ch_y", "ch_x"]);
        assert_eq!((secret_of(&next[0]), secret_of(&next[1])), ("s2".into(), "s1".into()));
        // One given by ID leaves one candidate for the other.
        let mut next = [shown(1.0), shown(2.0)];
        let got = reconcile_channels(&mut next, &[Some("ch_x".into()), None], &old, &old_ids).unwrap();
        assert_eq!(got, ["ch_x", "ch_y"]);
        assert_eq!((secret_of(&next[0]), secret_of(&next[1])), ("s1".into(), "s2".into()));
        // Sent back whole (secrets included), each is the stored channel it repeats.
        let mut next = [old[1].clone(), old[0].clone()];
        assert_eq!(reconcile_channels(&mut next, &[], &old, &old_ids).unwrap(), ["ch_y", "ch_x"]);
        // Edited without IDs: refused, rather than guessed.
        let mut next = [secret("https://u.example/", "s3", 1.0), secret("https://u.example/", "s4", 2.0)];
        assert!(reconcile_channels(&mut next, &[], &old, &old_ids).is_err());
        // Two Slack channels with one URL show the same redacted form: their IDs tell them apart.
        let slack = |u: &str| -> ChannelConfig {
            serde_json::from_value(serde_json::json!({"channel": "slack", "configs": {"webhook_url": u}})).unwrap()
        };
        let url = "https://hooks.slack.com/services/T1/B1/secret";
        let old = [slack(url), slack(url)];
        let err = reconcile_channels(&mut [slack(&channel::redacted_url(url))], &[], &old, &old_ids).unwrap_err();
        assert!(format!("{err:?}").contains("channels[0].channel_id"), "{err:?}");
        let mut next = [slack(&channel::redacted_url(url))];
        assert_eq!(reconcile_channels(&mut next, &[Some("ch_y".into())], &old, &old_ids).unwrap(), ["ch_y"]);
    }

    #[test]
    fn a_slack_url_shown_in_the_form_before_the_digest_is_still_understood() {
        let slack = |u: &str| -> ChannelConfig {
            serde_json::from_value(serde_json::json!({"channel": "slack", "configs": {"webhook_url": u}})).unwrap()
        };
        let old = [slack("https://hooks.slack.com/services/T1/B1/secret")];
        let old_ids = [model::legacy_channel_id(0)];
        for shown in [
            "https://hooks.slack.com/********",
            &channel::redacted_url("https://hooks.slack.com/services/T1/B1/secret"),
        ] {
            let mut next = [slack(shown)];
            let got = reconcile_channels(&mut next, &[Some("ch_0".into())], &old, &old_ids).unwrap();
            assert_eq!(got, ["ch_0"]);
            assert!(matches!(&next[0], ChannelConfig::Slack(c) if c.webhook_url.ends_with("/secret")), "{shown}");
        }
    }

    #[test]
    fn a_redacted_slack_url_keeps_its_port_and_the_form_without_it_is_understood() {
        let url = "https://hooks.example.test:8443/services/T1/B1/secret";
        let shown = channel::redacted_url(url);
        assert!(shown.starts_with("https://hooks.example.test:8443/********-"), "{shown}");
        assert!(!shown.contains("secret"));
        let tag = shown.rsplit('-').next().unwrap();
        assert!(channel::shows_redacted(url, &shown));
        assert!(channel::shows_redacted(url, &format!("https://hooks.example.test/********-{tag}")));
        assert!(channel::shows_redacted(url, "https://hooks.example.test/********"));
        assert!(!channel::shows_redacted("https://hooks.example.test:8443/services/T1/B1/other", &shown));
        // Another origin with the same digest is not this URL shown: an edit, not a redaction.
        assert!(!channel::shows_redacted(url, &format!("https://elsewhere.test/********-{tag}")));
    }
}
