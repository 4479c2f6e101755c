//! The bucket registry actor: owner of the catalog (buckets and connections) and parent of
//! the source-adapter actors.
//!
//! Every catalog write goes through this actor, one at a time, so checks that span records
//! ("is this connection still used by an adapter?", "is this bucket name taken?") cannot
//! race. Reads go straight to the store. On (re)start it reloads everything from the store,
//! so a crash loses nothing that was acknowledged.
//!
//! It spawns one [`SourceAdapterActor`] per bucket with an adapter (at start-up and when an
//! adapter is configured), supervises them (a failed one is restarted under its name, at most
//! [`ADAPTER_MAX_RESTARTS`] times per [`ADAPTER_RESTART_WINDOW`]), and stops them when the
//! adapter or the bucket goes. Object deletion, alerts, batch submission and the re-queue of a
//! dead writeback also pass through here: they are rare admin writes, and they must work while
//! no adapter actor runs (after an adapter was removed, or while its actor is stopped). When
//! the bucket's actor runs, the call is sent to it in the registry's turn and its answer is
//! awaited by a task (see [`Answer`]): a busy actor must not hold up every other admin call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::supervisor::RestartBudget;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::actor::{AdapterArgs, AdapterMsg, AlertAnswer, Commit, Flushed, Requeued, SourceAdapterActor};
use super::alert::NewAlert;
use super::records::{self, BatchRecord, BatchStatus, BufferEntry, ObjectRecord};
use super::spec::{self, PatchBucket, SourceAdapter, SourceAdapterInput};
use super::unreadable::Unreadable;
use super::writeback::operator::WritebackId;
use super::writeback::Lease;
use crate::catalog::bucket::CreateBucket;
use crate::catalog::connection::{PatchConnection, ProviderConfig};
use crate::catalog::{Bucket, Connection, ProviderType};
use crate::error::ApiError;
use crate::events::Scopes;
use crate::ids::{BatchId, BucketId, ConnectionId, ObjectId};
use crate::state::Shared;
use crate::store::{Batch, Keyspace, StoreError};
use crate::util::now_rfc3339;

mod mux_webhook;

pub use mux_webhook::{LifecyclePlan, MuxWebhook};

pub const ADAPTER_MAX_RESTARTS: usize = 10;
pub const ADAPTER_RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How long stopping an adapter actor may take before the registry gives up waiting.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A PATCH result: the bucket and, when one was made, the new webhook secret (shown once).
pub struct Patched {
    pub bucket: Bucket,
    pub webhook_secret: Option<String>,
    /// For the answer's `warnings`: what the PATCH did that the caller may not have meant.
    pub warnings: Vec<String>,
}

pub struct BucketRegistry;

pub enum RegistryMsg {
    CreateBucket {
        namespace: String,
        body: CreateBucket,
        reply: RpcReplyPort<Result<Bucket, ApiError>>,
    },
    DeleteBucket {
        namespace: String,
        bucket_id: BucketId,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    PatchBucket {
        namespace: String,
        bucket_id: BucketId,
        body: Box<PatchBucket>,
        reply: RpcReplyPort<Result<Patched, ApiError>>,
    },
    DeleteObject {
        namespace: String,
        bucket_id: BucketId,
        object_id: ObjectId,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    /// `POST …/objects/{id}/alerts`: forwarded to the bucket's adapter actor when it runs,
    /// recorded here otherwise (see `adapter::alert`).
    Alert {
        namespace: String,
        bucket_id: BucketId,
        alert: Box<NewAlert>,
        reply: RpcReplyPort<Result<AlertAnswer, ApiError>>,
    },
    /// `POST …/source-adapter/flush`: the adapter's buffer flushed now (any mode).
    FlushAdapter {
        namespace: String,
        bucket_id: BucketId,
        reply: RpcReplyPort<Result<(Commit, Flushed), ApiError>>,
    },
    SubmitBatch {
        namespace: String,
        bucket_id: BucketId,
        batch_id: BatchId,
        reply: RpcReplyPort<Result<BatchRecord, ApiError>>,
    },
    /// `DELETE …/batches/{batch_id}`: the batch's record only (its objects stay). Here, as
    /// a submit is: a batch cannot be deleted while it is being submitted.
    DeleteBatch {
        namespace: String,
        bucket_id: BucketId,
        batch_id: BatchId,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    /// `POST …/source-adapter/writebacks/{writeback_id}/retry`: forwarded to the bucket's
    /// adapter actor when it runs, re-queued here otherwise (see `writeback/operator.rs`).
    RequeueWriteback {
        namespace: String,
        bucket_id: BucketId,
        writeback_id: WritebackId,
        reply: RpcReplyPort<Result<Requeued, ApiError>>,
    },
    CreateConnection {
        name: String,
        provider_type: ProviderType,
        config: Box<ProviderConfig>,
        reply: RpcReplyPort<Result<Connection, ApiError>>,
    },
    /// `PATCH …/connections/{id}`: a new name and/or provider_config (validated here,
    /// against the connection's provider type).
    UpdateConnection {
        connection_id: ConnectionId,
        body: Box<PatchConnection>,
        reply: RpcReplyPort<Result<Connection, ApiError>>,
    },
    DeleteConnection {
        connection_id: ConnectionId,
        reply: RpcReplyPort<Result<(), ApiError>>,
    },
    /// `POST /v1/webhooks/mux/{connection_id}`: verify, then fan out to the adapters that
    /// use the connection (see `registry/mux_webhook.rs`).
    MuxWebhook {
        webhook: Box<MuxWebhook>,
        reply: RpcReplyPort<Result<LifecyclePlan, ApiError>>,
    },
    /// Fault injection for supervision tests (`/v1/debug/crash`).
    Crash,
}

impl RegistryMsg {
    /// Whether the caller stopped waiting for the answer (see [`BucketRegistry`]'s `handle`).
    fn caller_gone(&self) -> bool {
        use RegistryMsg::*;
        match self {
            CreateBucket { reply, .. } => reply.is_closed(),
            DeleteBucket { reply, .. } | DeleteObject { reply, .. } | DeleteBatch { reply, .. } => reply.is_closed(),
            DeleteConnection { reply, .. } => reply.is_closed(),
            PatchBucket { reply, .. } => reply.is_closed(),
            Alert { reply, .. } => reply.is_closed(),
            FlushAdapter { reply, .. } => reply.is_closed(),
            SubmitBatch { reply, .. } => reply.is_closed(),
            RequeueWriteback { reply, .. } => reply.is_closed(),
            CreateConnection { reply, .. } | UpdateConnection { reply, .. } => reply.is_closed(),
            MuxWebhook { reply, .. } => reply.is_closed(),
            Crash => false,
        }
    }
}

pub struct RegistryState {
    shared: Shared,
    myself: ActorRef<RegistryMsg>,
    /// Running adapter actors, by bucket and by actor ID (supervision events carry the ID).
    children: HashMap<BucketId, ActorRef<AdapterMsg>>,
    child_ids: HashMap<ActorId, BucketId>,
    restarts: HashMap<BucketId, RestartBudget>,
    /// Credentials the master key cannot open, for their gauge.
    unreadable: Unreadable,
}

impl Actor for BucketRegistry {
    type Msg = RegistryMsg;
    type State = RegistryState;
    type Arguments = Shared;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, shared: Shared) -> Result<Self::State, ActorProcessingErr> {
        let n = shared.store.count(Keyspace::BUCKETS, "")?;
        crate::metrics::buckets(n);
        let mut with_adapter = Vec::new();
        // Found at start, not at the first event that needs them, hours later. The daemon
        // still starts: a key changed on purpose is followed by re-entering the credentials.
        let unreadable = Unreadable::scan(&shared.store, &shared.secrets, |b| {
            if b.source_adapter.is_some() {
                with_adapter.push(b.bucket_id.clone());
            }
        })?;
        let mut state = RegistryState {
            shared,
            myself,
            children: HashMap::new(),
            child_ids: HashMap::new(),
            restarts: HashMap::new(),
            unreadable,
        };
        for id in with_adapter {
            // One broken adapter must not keep the catalog down: record why and go on.
            state.start_adapter(&id, "at start-up").await;
        }
        tracing::debug!(buckets = n, adapters = state.children.len(), "bucket registry started");
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = crate::supervisor::child_exit(event) else { return Ok(()) };
        // Children stopped on purpose were removed from the map first.
        let Some(bucket_id) = state.child_ids.remove(&cell.get_id()) else { return Ok(()) };
        state.children.remove(&bucket_id);
        let still_configured = state
            .shared
            .store
            .get::<Bucket>(Keyspace::BUCKETS, bucket_id.as_str())?
            .is_some_and(|b| b.source_adapter.is_some());
        if !still_configured {
            return Ok(());
        }
        if !state.allow_restart(&bucket_id) {
            tracing::error!(%bucket_id, %reason, "source adapter failed too often; leaving it stopped until reconfigured or restarted");
            // Shown as the status's `last_error`, beside `actor: "stopped"`. No actor of this
            // bucket runs, so nothing else writes its stats meanwhile.
            let stopped = format!(
                "the source adapter stopped after failing {ADAPTER_MAX_RESTARTS} times within {} s (last: {reason}); \
                 a PATCH of the bucket, or a restart of hookline, starts it again",
                ADAPTER_RESTART_WINDOW.as_secs()
            );
            if let Err(e) = state.record_adapter_error(&bucket_id, stopped).await {
                tracing::error!(%bucket_id, error = %e, "could not record the adapter's stop in its status");
            }
            return Ok(());
        }
        tracing::warn!(%bucket_id, %reason, "source adapter exited; restarting it");
        crate::metrics::actor_restart("source_adapter");
        state.start_adapter(&bucket_id, "after a failure").await;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A caller that stopped waiting (its 30 s ran out behind a slow call of another
        // bucket: it answered 503, "retry") must find nothing done, or its retry makes a
        // second connection, or loses a new webhook secret no one was shown. Its call is
        // dropped unread, as the delivery registry drops its own.
        if msg.caller_gone() {
            return Ok(());
        }
        match msg {
            RegistryMsg::CreateBucket { namespace, body, reply } => {
                let _ = reply.send(state.create_bucket(namespace, body).await);
            }
            RegistryMsg::DeleteBucket { namespace, bucket_id, reply } => {
                let _ = reply.send(state.delete_bucket(&namespace, &bucket_id).await);
            }
            RegistryMsg::CreateConnection { name, provider_type, config, reply } => {
                let _ = reply.send(state.create_connection(name, provider_type, &config).await);
            }
            RegistryMsg::UpdateConnection { connection_id, body, reply } => {
                let _ = reply.send(state.update_connection(&connection_id, *body).await);
            }
            RegistryMsg::DeleteConnection { connection_id, reply } => {
                let _ = reply.send(state.delete_connection(&connection_id).await);
            }
            RegistryMsg::PatchBucket { namespace, bucket_id, body, reply } => {
                let r = state.patch_bucket(&namespace, &bucket_id, *body, &|| reply.is_closed()).await;
                let _ = reply.send(r);
            }
            RegistryMsg::DeleteObject { namespace, bucket_id, object_id, reply } => {
                answer(reply, state.delete_object(&namespace, &bucket_id, &object_id).await);
            }
            RegistryMsg::Alert { namespace, bucket_id, alert, reply } => {
                answer(reply, state.alert(&namespace, &bucket_id, *alert).await);
            }
            RegistryMsg::FlushAdapter { namespace, bucket_id, reply } => {
                answer(reply, state.flush_adapter(&namespace, &bucket_id).await);
            }
            RegistryMsg::SubmitBatch { namespace, bucket_id, batch_id, reply } => {
                let _ = reply.send(state.submit_batch(&namespace, &bucket_id, &batch_id).await);
            }
            RegistryMsg::DeleteBatch { namespace, bucket_id, batch_id, reply } => {
                let _ = reply.send(state.delete_batch(&namespace, &bucket_id, &batch_id).await);
            }
            RegistryMsg::RequeueWriteback { namespace, bucket_id, writeback_id, reply } => {
                answer(reply, state.requeue_writeback(&namespace, &bucket_id, &writeback_id).await);
            }
            RegistryMsg::MuxWebhook { webhook, reply } => {
                let _ = reply.send(state.mux_webhook(*webhook));
            }
            RegistryMsg::Crash => {
                return Err(ActorProcessingErr::from("crash requested through /v1/debug/crash"));
            }
        }
        Ok(())
    }
}

impl RegistryState {
    async fn create_bucket(&mut self, namespace: String, body: CreateBucket) -> Result<Bucket, ApiError> {
        let store = &self.shared.store;
        let mut taken = false;
        store.for_each::<Bucket>(Keyspace::BUCKETS, "", |_, b| {
            taken = b.namespace == namespace && b.bucket_name == body.bucket_name;
            !taken
        })?;
        if taken {
            return Err(ApiError::Conflict(format!(
                "a bucket named {:?} already exists in namespace {namespace:?}",
                body.bucket_name
            )));
        }
        let now = now_rfc3339();
        let bucket = Bucket {
            bucket_id: BucketId::generate(),
            bucket_name: body.bucket_name,
            namespace,
            description: body.description,
            // Present: the handler's `CreateBucket::validate` refuses a body without one.
            bucket_schema: body.bucket_schema.unwrap_or_default(),
            source_adapter: None,
            dedup_scope: None,
            dedup_generation: 0,
            dedup_kept: Vec::new(),
            dedup_generation_high: 0,
            supabase_id_column: None,
            created_at: now.clone(),
            updated_at: now,
        };
        let mut b = Batch::new();
        b.put(Keyspace::BUCKETS, bucket.bucket_id.as_str(), &bucket);
        store.commit(b).await?;
        crate::metrics::buckets(store.count(Keyspace::BUCKETS, "")?);
        tracing::info!(bucket_id = %bucket.bucket_id, namespace = %bucket.namespace, "bucket created");
        Ok(bucket)
    }

    async fn delete_bucket(&mut self, namespace: &str, id: &BucketId) -> Result<(), ApiError> {
        let store = &self.shared.store.clone();
        let Some(bucket) = store.get::<Bucket>(Keyspace::BUCKETS, id.as_str())? else {
            return Err(not_found_bucket(id, namespace));
        };
        if bucket.namespace != namespace {
            return Err(not_found_bucket(id, namespace));
        }
        // Stop the adapter first so nothing writes under the bucket while it is deleted.
        self.stop_adapter(id).await;
        // Barrier: the stopped actor's last batches are applied before the scan below.
        store.commit(Batch::new()).await?;
        let mut b = Batch::new();
        b.delete(Keyspace::BUCKETS, id.as_str());
        // Everything keyed under the bucket goes with it.
        let prefix = format!("{}/", id.as_str());
        let everything = [
            Keyspace::OBJECTS,
            Keyspace::BATCHES,
            Keyspace::DEDUP,
            Keyspace::DEDUP_PAGES,
            Keyspace::BUFFER,
            Keyspace::STATS,
            Keyspace::EXTERNAL_IDS,
            Keyspace::WRITEBACKS,
            Keyspace::ALERTS,
        ];
        store.delete_under(&mut b, &everything, &prefix)?;
        store.commit(b).await?;
        self.unreadable.bucket_deleted(id);
        crate::metrics::buckets(store.count(Keyspace::BUCKETS, "")?);
        tracing::info!(bucket_id = %id, "bucket deleted");
        Ok(())
    }

    /// A URL hookline will call (writeback, a Supabase project) under the delivery side's
    /// address rules, at configuration: one they refuse would only fail every call later.
    fn check_target(&self, field: &str, raw: &str) -> Result<(), ApiError> {
        let policy = crate::delivery::netguard::NetPolicy::from(&self.shared.config.delivery);
        crate::delivery::netguard::check_target(raw, policy).map(drop).map_err(|e| ApiError::validation(field, e))
    }

    /// A connection's URL under the same rules: a Supabase project's, and a generic_webhook
    /// connection's (every writeback_url under one the rules refuse would be refused too).
    fn check_connection_target(&self, config: &ProviderConfig) -> Result<(), ApiError> {
        match config {
            ProviderConfig::Supabase(c) => self.check_target("provider_config.url", &c.url),
            ProviderConfig::Generic(g) => match g.url.as_deref() {
                Some(url) => self.check_target("provider_config.url", url),
                None => Ok(()),
            },
            ProviderConfig::Mux(_) => Ok(()),
        }
    }

    async fn create_connection(
        &mut self,
        name: String,
        provider_type: ProviderType,
        config: &ProviderConfig,
    ) -> Result<Connection, ApiError> {
        self.check_connection_target(config)?;
        let conn = Connection::new(name, provider_type, config, &self.shared.secrets);
        let mut b = Batch::new();
        b.put(Keyspace::CONNECTIONS, conn.connection_id.as_str(), &conn);
        self.shared.store.commit(b).await?;
        tracing::info!(connection_id = %conn.connection_id, provider_type = provider_type.as_str(), "connection created");
        Ok(conn)
    }

    /// Adapters read their connection when an event needs it, so the next request sees the
    /// change: nothing to tell them.
    async fn update_connection(&mut self, id: &ConnectionId, body: PatchConnection) -> Result<Connection, ApiError> {
        let store = &self.shared.store;
        let mut conn: Connection = store
            .get(Keyspace::CONNECTIONS, id.as_str())?
            .ok_or_else(|| ApiError::NotFound(format!("connection {id} not found")))?;
        let (name, config) = body.validate(conn.provider_type, &conn.name)?;
        // What is already there (`{}`, the same name) is no change: nothing written, and
        // `updated_at` stays, as for buckets and webhooks. New credentials always count.
        if config.is_none() && name.as_ref().is_none_or(|n| *n == conn.name) {
            return Ok(conn);
        }
        if let Some(config) = &config {
            self.check_connection_target(config)?;
        }
        if let Some(ProviderConfig::Generic(g)) = &config {
            self.check_generic_users(id, g)?;
        }
        conn.update(name, config.as_ref(), &self.shared.secrets);
        let mut b = Batch::new();
        b.put(Keyspace::CONNECTIONS, conn.connection_id.as_str(), &conn);
        store.commit(b).await?;
        self.unreadable.connection_written(&conn, &self.shared.secrets);
        // Ingests whose Mux-Signature was checked against the old secrets, still queued for
        // their actors, are checked again there (see `adapter/verify.rs`).
        self.shared.gates.connections_changed();
        tracing::info!(connection_id = %id, config_replaced = config.is_some(), "connection updated");
        Ok(conn)
    }

    /// A generic connection's new headers and url must cover the writeback URLs of the
    /// adapters using it: every writeback of one outside would fail from then on.
    fn check_generic_users(
        &self,
        id: &ConnectionId,
        g: &crate::catalog::connection::GenericConfig,
    ) -> Result<(), ApiError> {
        if g.headers.is_empty() {
            return Ok(());
        }
        let mut outside = Vec::new();
        for bucket_id in self.shared.connection_users(id)? {
            let Some(b) = self.shared.store.get::<Bucket>(Keyspace::BUCKETS, &bucket_id)? else { continue };
            let target = b.source_adapter.as_ref().and_then(|a| a.writeback.as_ref()?.writeback_url.clone());
            if target.is_some_and(|t| !g.allows(&t)) {
                outside.push(bucket_id);
            }
        }
        if outside.is_empty() {
            return Ok(());
        }
        Err(ApiError::validation(
            "provider_config.url",
            format!(
                "does not cover the writeback_url of the adapter of bucket(s) {}: change those first, or give a url \
                 that covers them",
                outside.join(", ")
            ),
        ))
    }

    async fn delete_connection(&mut self, id: &ConnectionId) -> Result<(), ApiError> {
        let store = &self.shared.store;
        if !store.contains(Keyspace::CONNECTIONS, id.as_str())? {
            return Err(ApiError::NotFound(format!("connection {id} not found")));
        }
        let users = self.shared.connection_users(id)?;
        if !users.is_empty() {
            return Err(ApiError::Conflict(format!(
                "connection {id} is used by the source adapter of bucket(s) {}; remove or change those adapters first",
                users.join(", ")
            )));
        }
        let mut b = Batch::new();
        b.delete(Keyspace::CONNECTIONS, id.as_str());
        store.commit(b).await?;
        self.unreadable.connection_deleted(id);
        self.shared.gates.connections_changed();
        tracing::info!(connection_id = %id, "connection deleted");
        Ok(())
    }
}

impl RegistryState {
    async fn spawn_adapter(&mut self, id: &BucketId) -> Result<(), ActorProcessingErr> {
        let name = self.shared.names.adapter(id.as_str());
        // A predecessor killed with a restarted registry may still hold the name briefly.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while ActorRef::<AdapterMsg>::where_is(name.clone()).is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A predecessor that failed or was killed may have left its writeback worker running.
        if let Some(old) = self.shared.adapter_leases.take(id) {
            if !old.end(STOP_TIMEOUT).await {
                tracing::warn!(bucket_id = %id, "the previous adapter's writeback worker did not stop in time");
            }
        }
        let lease = Lease::default();
        self.shared.adapter_leases.put(id.clone(), lease.clone());
        let args = AdapterArgs { shared: self.shared.clone(), bucket_id: id.clone(), lease };
        let (actor, _) = Actor::spawn_linked(Some(name), SourceAdapterActor, args, self.myself.get_cell()).await?;
        self.child_ids.insert(actor.get_id(), id.clone());
        self.children.insert(id.clone(), actor);
        Ok(())
    }

    /// Spawns `id`'s adapter; if it cannot start (its stored state unreadable, say), logs why
    /// and makes it the status' `last_error`, beside `actor: "stopped"`: ingests answer 503
    /// meanwhile, and the operator must learn why from the status, not only from the log.
    async fn start_adapter(&mut self, id: &BucketId, when: &str) {
        let Err(e) = self.spawn_adapter(id).await else { return };
        tracing::error!(bucket_id = %id, error = %e, "the source adapter could not start {when}");
        let why =
            format!("the source adapter could not start {when}: {e}; a PATCH of the bucket or a restart tries again");
        if let Err(e) = self.record_adapter_error(id, why).await {
            tracing::error!(bucket_id = %id, error = %e, "could not record the adapter's failure in its status");
        }
    }

    /// Stops the bucket's adapter actor, if one runs, and waits for it; not restarted. False
    /// when it may still be writing: the actor had to be killed (its `post_stop`, which stops
    /// its writeback worker, did not run) and did not die in time, or its worker did not end.
    async fn stop_adapter(&mut self, id: &BucketId) -> bool {
        let mut died = true;
        if let Some(actor) = self.children.remove(id) {
            self.child_ids.remove(&actor.get_id());
            let reason = Some("adapter reconfigured or removed".into());
            if let Err(e) = actor.stop_and_wait(reason, Some(STOP_TIMEOUT)).await {
                // It must not go on ingesting with the old settings (an old secret): kill it.
                tracing::warn!(bucket_id = %id, error = %e, "source adapter did not stop in time; killing it");
                if let Err(e) = actor.kill_and_wait(Some(STOP_TIMEOUT)).await {
                    tracing::error!(bucket_id = %id, error = %e, "source adapter did not die in time");
                    died = false;
                }
            }
        }
        // At once after a stop (its `post_stop` ended the worker); after a kill, or a failure
        // that was not restarted, the worker's handle is in a state nothing has dropped yet.
        let Some(lease) = self.shared.adapter_leases.take(id) else { return died };
        let ended = lease.end(STOP_TIMEOUT).await;
        if !ended {
            tracing::error!(bucket_id = %id, "the source adapter's writeback worker did not stop in time");
        }
        died && ended
    }

    /// Sets the adapter's `last_error` (its stats record) while no actor of the bucket runs.
    async fn record_adapter_error(&self, id: &BucketId, error: String) -> Result<(), StoreError> {
        let key = records::key(id, records::STATS_KEY);
        // Barrier: the stopped actor's last batches (its counters among them) are applied
        // before the read, or this write would roll them back.
        self.shared.store.commit(Batch::new()).await?;
        let mut stats: records::AdapterStats = self.shared.store.get(Keyspace::STATS, &key)?.unwrap_or_default();
        stats.error(crate::util::now_millis(), error);
        let mut b = Batch::new();
        b.put(Keyspace::STATS, &key, &stats);
        self.shared.store.commit(b).await
    }

    /// Records a restart of `id`'s adapter; false when its budget is spent.
    fn allow_restart(&mut self, id: &BucketId) -> bool {
        self.restarts
            .entry(id.clone())
            .or_insert_with(|| RestartBudget::new(ADAPTER_MAX_RESTARTS, ADAPTER_RESTART_WINDOW))
            .allow()
    }

    fn load_bucket(&self, namespace: &str, id: &BucketId) -> Result<Bucket, ApiError> {
        match self.shared.store.get::<Bucket>(Keyspace::BUCKETS, id.as_str())? {
            Some(b) if b.namespace == namespace => Ok(b),
            _ => Err(not_found_bucket(id, namespace)),
        }
    }

    /// `gone`: whether the caller stopped waiting; asked again just before the commit, since
    /// stopping the old actor can take seconds (a PATCH answered 503 must change nothing).
    async fn patch_bucket(
        &mut self,
        namespace: &str,
        id: &BucketId,
        body: PatchBucket,
        gone: &(dyn Fn() -> bool + Sync),
    ) -> Result<Patched, ApiError> {
        let mut bucket = self.load_bucket(namespace, id)?;
        let mut described = false;
        if let Some(d) = body.description {
            if d.as_ref().is_some_and(|d| d.chars().count() > 2000) {
                return Err(ApiError::validation("description", "at most 2000 characters"));
            }
            described = bucket.description != d;
            bucket.description = d;
        }
        let had_adapter = bucket.source_adapter.is_some();
        let rotate_outside = body.rotate_secret.unwrap_or(false);
        // The description alone: a running adapter is left alone (ingest goes on); a stopped
        // one is started again below, as by any PATCH.
        let untouched = !had_adapter_stopped(&bucket, &self.children, id);
        if body.source_adapter.is_none() && !rotate_outside && untouched {
            return self.describe_only(id, bucket, described).await;
        }
        // A failed PATCH restarts it (not one stopped after its restart budget).
        let running = self.children.contains_key(id);
        let mut webhook_secret = None;
        let mut switched_dedup = None;
        let mut warnings = Vec::new();
        let mut clear_error = false;
        // The objects a generic_webhook adapter made are not indexed by external ID: an adapter
        // type that changes objects by that ID, taking over from none or from one that does
        // not, indexes them first (see `lifecycle::index_unindexed`: its actor, as it starts).
        let mut index_existing = false;
        // The writeback mapping the pending jobs were queued under, when a PATCH changes it
        // (and not the adapter type: another type's jobs are given up): they follow it.
        let mut old_mapping = None;
        let mut batch = Batch::new();
        match body.source_adapter {
            None => {
                if rotate_outside {
                    let Some(adapter) = bucket.source_adapter.as_mut() else {
                        return Err(ApiError::validation("rotate_secret", "the bucket has no source adapter"));
                    };
                    let (secret, digest) = spec::new_secret();
                    adapter.webhook_secret_sha256 = digest;
                    webhook_secret = Some(secret);
                }
            }
            Some(None) => {
                if rotate_outside {
                    return Err(ApiError::validation(
                        "rotate_secret",
                        "the adapter is being removed: nothing to rotate",
                    ));
                }
                if had_adapter {
                    if let Err(e) = self.remove_adapter(id, &mut batch).await {
                        // Nothing was committed: the adapter runs on (a fresh actor, as a
                        // timed-out drain may still close the old one).
                        if running {
                            self.restart_adapter(id).await;
                        }
                        return Err(e);
                    }
                }
                // The dedup set stays: so does what it was built under (for a bucket from
                // before the scope was recorded, its adapter's). So do the objects, and the
                // Supabase id_column they are found by.
                if bucket.dedup_scope.is_none() {
                    bucket.dedup_scope = bucket.source_adapter.as_ref().and_then(dedup_scope);
                }
                if bucket.supabase_id_column.is_none() {
                    bucket.supabase_id_column = bucket
                        .source_adapter
                        .as_ref()
                        .filter(|a| a.adapter_type == ProviderType::Supabase)
                        .map(|a| a.id_column().to_string());
                }
                bucket.source_adapter = None;
            }
            Some(Some(input)) => {
                if let (Some(outside), Some(inside)) = (body.rotate_secret, input.rotate_secret) {
                    if outside != inside {
                        return Err(ApiError::validation(
                            "rotate_secret",
                            format!(
                                "is {outside} outside source_adapter and {inside} inside it: give it once (true makes \
                                 a new webhook_secret)"
                            ),
                        ));
                    }
                }
                let rotate = rotate_outside || input.rotate_secret.unwrap_or(false);
                let (adapter, secret) = self.build_adapter(&bucket, input, rotate)?;
                // The adapter's own settings sent back (its GET view, say), to a running
                // adapter: nothing to restart, and configured_at and updated_at stay, as for a
                // webhook. (A stopped one is started again, as by any PATCH.)
                let same = bucket.source_adapter.as_ref().is_some_and(|old| old.same_settings(&adapter));
                if same && secret.is_none() && untouched {
                    // As a restart after a PATCH would: its failures so far are forgiven.
                    self.restarts.remove(id);
                    return self.describe_only(id, bucket, described).await;
                }
                // Both mappings given: `{"enabled": false}` alone (an empty one) turns
                // writeback off, and its jobs wait as they are for it to come back.
                let kept = adapter.writeback.as_ref().filter(|w| w.enabled && !w.field_mapping.is_empty());
                old_mapping = bucket
                    .source_adapter
                    .as_ref()
                    .filter(|old| old.adapter_type == adapter.adapter_type)
                    .and_then(|old| old.writeback.as_ref())
                    .map(|w| w.field_mapping.clone())
                    .filter(|m| !m.is_empty() && kept.is_some_and(|w| &w.field_mapping != m));
                // Another adapter type: the old one's last error says nothing about it.
                let old_type = bucket.source_adapter.as_ref().map(|a| a.adapter_type);
                clear_error = old_type.is_some_and(|t| t != adapter.adapter_type);
                index_existing = super::kind::changes_by_external_id(adapter.adapter_type)
                    && !old_type.is_some_and(super::kind::changes_by_external_id);
                // Values deduped under another path (or another upstream) are not this
                // adapter's duplicates: another set is put in force (a new one, or the one
                // kept for this scope). A bucket from before the scope was recorded: its
                // current adapter's, kept even when the new adapter dedups by nothing (a later
                // one is compared with it); with no adapter, its set was deleted with the
                // adapter, as removals did then.
                if bucket.dedup_scope.is_none() {
                    bucket.dedup_scope = bucket.source_adapter.as_ref().and_then(dedup_scope);
                }
                if let Some(scope) = dedup_scope(&adapter) {
                    if let Some(old) = bucket.dedup_scope.clone().filter(|old| old != &scope) {
                        // The marks in the bucket's objects stop counting (see `records.rs`),
                        // but for a set kept from before, whose count again.
                        let switch = bucket.switch_dedup(&old, &scope);
                        warnings.push(dedup_switched(&old, &scope, &switch));
                        switched_dedup = Some(switch);
                    }
                    bucket.dedup_scope = Some(scope);
                }
                if let Some(w) = self.supabase_change(&mut bucket, &adapter)? {
                    warnings.push(w);
                }
                let dropped = bucket.source_adapter.as_ref().map(|old| old.dropped_by(&adapter)).unwrap_or_default();
                if !dropped.is_empty() {
                    warnings.push(format!(
                        "source_adapter is replaced whole, and this one leaves out (or sets back to its default) what \
                         the adapter had: {}; send the whole adapter (its GET view) with the changes to keep them",
                        dropped.join(", ")
                    ));
                }
                bucket.source_adapter = Some(adapter);
                webhook_secret = secret;
            }
        }
        bucket.updated_at = now_rfc3339();
        // The running actor holds the old settings: stop it, commit, start a fresh one (its
        // pre_start barrier sees everything the old one submitted).
        if index_existing {
            // Done by the new actor once started (its post_start), not here: a large bucket
            // takes seconds, which neither this registry (every bucket's admin calls) nor the
            // PATCH's answer (its new secret) should wait for.
            // A string, as every value of the keyspace is (the index loads them all as hashes);
            // one already there holds how far an earlier run got.
            let marker = super::actor::unindexed_marker(id);
            if !self.shared.store.contains(Keyspace::EXTERNAL_IDS, &marker)? {
                batch.put(Keyspace::EXTERNAL_IDS, &marker, "objects may lack entries");
            }
        }
        if !self.stop_adapter(id).await && old_mapping.take().is_some() {
            // It (or its worker) may still be writing jobs: rewriting them now could undo that.
            tracing::warn!(bucket_id = %id, "the old adapter or its writeback worker did not stop: pending writebacks keep their fields");
        }
        let clear = Clear { dedup: switched_dedup, error: clear_error, mapping: old_mapping };
        let committed = if gone() {
            Err(ApiError::Unavailable("the caller stopped waiting: nothing was changed".into()))
        } else {
            self.commit_patch(id, &bucket, batch, clear).await
        };
        if let Err(e) = committed {
            // Nothing was changed: the stored bucket's adapter runs again (if it was running:
            // one stopped after its restart budget stays stopped).
            if running {
                self.restart_adapter(id).await;
            }
            return Err(e);
        }
        self.unreadable.bucket_written(&bucket, &self.shared.secrets);
        if bucket.source_adapter.is_some() {
            self.restarts.remove(id);
            // The change is committed: answer it (with a new secret, its only showing) even if
            // the actor does not start; ingest then answers 503 until a PATCH or a restart
            // starts it.
            self.start_adapter(id, "after a PATCH").await;
        }
        tracing::info!(bucket_id = %id, adapter = bucket.source_adapter.is_some(), secret_rotated = webhook_secret.is_some(), "bucket patched");
        Ok(Patched { bucket, webhook_secret, warnings })
    }

    /// A PATCH that leaves the running adapter as it is: the bucket is stored again only if
    /// its description changed (`described`), and only then does `updated_at` move.
    async fn describe_only(&self, id: &BucketId, mut bucket: Bucket, described: bool) -> Result<Patched, ApiError> {
        if described {
            bucket.updated_at = now_rfc3339();
            let mut b = Batch::new();
            b.put(Keyspace::BUCKETS, id.as_str(), &bucket);
            self.shared.store.commit(b).await?;
        }
        Ok(Patched { bucket, webhook_secret: None, warnings: Vec::new() })
    }

    /// After a PATCH that failed without changing anything: a fresh actor from the stored
    /// bucket.
    async fn restart_adapter(&mut self, id: &BucketId) {
        self.stop_adapter(id).await;
        self.start_adapter(id, "after a failed PATCH").await;
    }

    /// Commits a PATCH once the old actor has stopped: the bucket, in one batch with the
    /// switch of the dedup set in force, the removal of the status's `last_error`, and the
    /// pending writebacks moved to a new mapping, as `clear` says (atomic: a failure changes
    /// nothing).
    async fn commit_patch(
        &self,
        id: &BucketId,
        bucket: &Bucket,
        mut batch: Batch,
        clear: Clear,
    ) -> Result<(), ApiError> {
        let store = &self.shared.store;
        if clear.dedup.is_some() || clear.error || clear.mapping.is_some() {
            // The stopped actor's last writes first.
            store.commit(Batch::new()).await?;
        }
        if let (Some(old), Some(adapter)) = (&clear.mapping, &bucket.source_adapter) {
            let n = super::writeback::follow_mapping(store, id, old, adapter, &mut batch)?;
            if n > 0 {
                tracing::info!(bucket_id = %id, jobs = n, "pending writebacks follow the new writeback field_mapping");
            }
        }
        if clear.error {
            let key = records::key(id, records::STATS_KEY);
            if let Some(mut stats) = store.get::<records::AdapterStats>(Keyspace::STATS, &key)? {
                if stats.last_error.take().is_some() {
                    stats.last_error_at = None;
                    batch.put(Keyspace::STATS, &key, &stats);
                }
            }
        }
        if let Some(switch) = clear.dedup {
            // Pages are of the generation left (one read at start only): an actor that takes
            // a kept set back reads its objects' marks instead.
            store.delete_under(&mut batch, &[Keyspace::DEDUP_PAGES], &records::prefix(id))?;
            records::keep_dedup_keys(store, &mut batch, bucket, switch.left)?;
            tracing::info!(bucket_id = %id, restored = switch.restored, "dedup path changed: the bucket's dedup set in force is another");
        }
        batch.put(Keyspace::BUCKETS, id.as_str(), bucket);
        store.commit(batch).await?;
        Ok(())
    }

    /// A generic connection's headers go only to the writeback URLs its `url` covers: a
    /// hidden credential never follows a destination of the adapter's choosing. A connection
    /// saved before `url` was required keeps serving an adapter whose connection and
    /// writeback_url are unchanged, and no other.
    fn check_generic_headers(
        &self,
        bucket: &Bucket,
        input: &SourceAdapterInput,
        conn: &Connection,
    ) -> Result<(), ApiError> {
        use crate::catalog::connection::ProviderConfig;
        let id = &conn.connection_id;
        let target = input.writeback.as_ref().and_then(|w| w.writeback_url.as_deref());
        // No writeback_url: its headers go nowhere.
        let Some(target) = target.filter(|_| conn.provider_type == ProviderType::GenericWebhook) else {
            return Ok(());
        };
        // Unreadable, it cannot say where its headers may go (nor would any send work).
        let Ok(ProviderConfig::Generic(g)) = conn.open(&self.shared.secrets) else {
            return Err(ApiError::validation(
                "source_adapter.connection_id",
                format!("connection {id} cannot be decrypted with the current master key"),
            ));
        };
        if g.headers.is_empty() {
            return Ok(());
        }
        match &g.url {
            Some(url) if !g.allows(target) => Err(ApiError::validation(
                "source_adapter.writeback.writeback_url",
                format!("not under {url}, the url of connection {id}: its headers are sent to no other URL"),
            )),
            None => {
                let unchanged = bucket.source_adapter.as_ref().is_some_and(|a| {
                    a.connection_id.as_ref() == Some(id)
                        && a.writeback.as_ref().and_then(|w| w.writeback_url.as_deref()) == Some(target)
                });
                if unchanged {
                    return Ok(());
                }
                Err(ApiError::validation(
                    "source_adapter.connection_id",
                    format!(
                        "connection {id} has headers but no url (it was saved before one was required): PATCH it \
                         with its whole provider_config, the headers again and url, the writeback URL they are for \
                         (a provider_config replaces the stored one: without the headers they are gone)"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Validates a new adapter configuration against the bucket and the connections.
    fn build_adapter(
        &self,
        bucket: &Bucket,
        input: SourceAdapterInput,
        rotate: bool,
    ) -> Result<(SourceAdapter, Option<String>), ApiError> {
        input.validate(&bucket.bucket_schema)?;
        // The send-time address rules, now: a URL they refuse would only fail every job.
        if let Some(raw) = input.writeback.as_ref().and_then(|w| w.writeback_url.as_deref()) {
            self.check_target("source_adapter.writeback.writeback_url", raw)?;
        }
        if let Some(url) =
            input.connection.as_ref().and_then(|c| c.credentials.given()?.get("url")).and_then(|u| u.as_str())
        {
            self.check_target("source_adapter.connection.credentials.url", url)?;
        }
        let connection_id = match &input.connection_id {
            None => None,
            Some(raw) => {
                let id = ConnectionId::parse(raw)
                    .ok_or_else(|| ApiError::validation("source_adapter.connection_id", "not a connection ID"))?;
                let Some(conn) = self.shared.store.get::<Connection>(Keyspace::CONNECTIONS, id.as_str())? else {
                    return Err(ApiError::validation(
                        "source_adapter.connection_id",
                        format!("connection {id} does not exist; create it with POST /v1/organizations/connections"),
                    ));
                };
                if conn.provider_type != input.adapter_type {
                    return Err(ApiError::validation(
                        "source_adapter.connection_id",
                        format!(
                            "connection {id} is {} connection; this adapter is {}",
                            crate::util::with_article(conn.provider_type.as_str()),
                            input.adapter_type.as_str()
                        ),
                    ));
                }
                self.check_generic_headers(bucket, &input, &conn)?;
                Some(id)
            }
        };
        let sealed_credentials = match input.connection.as_ref().map(|c| &c.credentials) {
            Some(spec::Credentials::Kept) => {
                // Sealed for this bucket (the AAD), so they move with it unchanged.
                let old = bucket.source_adapter.as_ref();
                let kept = old.and_then(|a| a.sealed_credentials.clone());
                if kept.is_none() {
                    return Err(ApiError::validation(
                        "source_adapter.connection.credentials",
                        "the adapter has no stored credentials to keep: send them as an object",
                    ));
                }
                // Hidden credentials never follow a new destination (whoever holds an API key
                // could read them back at a server of their own): a generic adapter's headers
                // go to its writeback_url, and another adapter type reads them differently.
                let url = |w: Option<&crate::adapter::writeback::Writeback>| w.and_then(|w| w.writeback_url.clone());
                let same_destination = old.is_some_and(|a| {
                    a.adapter_type == input.adapter_type && url(a.writeback.as_ref()) == url(input.writeback.as_ref())
                });
                if !same_destination {
                    return Err(ApiError::validation(
                        "source_adapter.connection.credentials",
                        "the stored credentials are kept only while adapter_type and writeback.writeback_url stay as \
                         they are (a hidden credential never follows a new destination): send them again as an object",
                    ));
                }
                kept
            }
            Some(c) => c.given().map(|m| {
                let plain = serde_json::to_vec(m).unwrap_or_default();
                self.shared.secrets.seal(&plain, bucket.bucket_id.as_str())
            }),
            None => None,
        };
        let existing = bucket.source_adapter.as_ref().map(|a| a.webhook_secret_sha256.clone());
        let (digest, secret) = match existing {
            Some(d) if !rotate => (d, None),
            _ => {
                let (secret, digest) = spec::new_secret();
                (digest, Some(secret))
            }
        };
        let adapter = SourceAdapter {
            adapter_type: input.adapter_type,
            enabled: input.enabled,
            connection_id,
            sealed_credentials,
            event_filter: input.event_filter,
            field_mapping: input.field_mapping,
            blob_source: input.blob_source,
            batching: input.batching,
            dedup_key: input.dedup_key,
            writeback: input.writeback,
            event_type_field: input.event_type_field,
            id_column: input.id_column,
            table: input.table,
            schema: input.schema,
            webhook_secret_sha256: digest,
            configured_at: now_rfc3339(),
        };
        Ok((adapter, secret))
    }

    /// Flushes the adapter's buffer (acknowledged events are never dropped), stops it, and
    /// adds the deletion of its buffer, counters and pending writebacks to `batch`. The dedup
    /// set stays with the bucket's objects: an upstream retry arriving across a removal and
    /// a new configuration is still a duplicate.
    async fn remove_adapter(&mut self, id: &BucketId, batch: &mut Batch) -> Result<(), ApiError> {
        if let Some(actor) = self.children.get(id).cloned() {
            // If the actor cannot drain, keep everything: the buffer must not be dropped.
            // With the stop that follows on a failure (`STOP_TIMEOUT`), within the HTTP side's
            // 30 s: the caller hears why, and the registry's other calls wait no longer.
            let commit = ractor::call_t!(actor, AdapterMsg::Drain, STOP_TIMEOUT.as_millis() as u64).map_err(|e| {
                ApiError::Unavailable(format!("the source adapter could not flush its buffer ({e}); retry"))
            })?;
            commit.finish().await?;
        } else {
            // No running actor to drain (it failed past its restart budget, or never started):
            // refuse rather than drop events that were acknowledged as buffered.
            let buffered = self.shared.store.count(Keyspace::BUFFER, &records::prefix(id))?;
            if buffered > 0 {
                return Err(ApiError::Unavailable(format!(
                    "the source adapter of bucket {id} is not running and holds {buffered} buffered event(s); \
                     re-enable it (PATCH the same source_adapter) so it can flush them, then remove it"
                )));
            }
        }
        self.stop_adapter(id).await;
        let prefix = records::prefix(id);
        let store = &self.shared.store;
        store.commit(Batch::new()).await?;
        store.delete_under(batch, &[Keyspace::BUFFER, Keyspace::STATS, Keyspace::WRITEBACKS], &prefix)?;
        Ok(())
    }

    async fn delete_object(
        &mut self,
        namespace: &str,
        id: &BucketId,
        object_id: &ObjectId,
    ) -> Result<Answer<()>, ApiError> {
        let bucket = self.load_bucket(namespace, id)?;
        if let Some(actor) = self.children.get(id) {
            // The adapter actor owns updates of its objects: delete through it.
            let reply = ask(actor, |reply| AdapterMsg::DeleteObject(object_id.clone(), reply))?;
            let (object_id, id) = (object_id.clone(), id.clone());
            return Ok(Answer::Later(Box::pin(async move {
                match reply.await?? {
                    Some(commit) => Ok(commit.finish().await?),
                    None => Err(ApiError::NotFound(format!("object {object_id} not found in bucket {id}"))),
                }
            })));
        }
        // No actor (no adapter, or its actor stopped): nothing else writes the bucket's
        // objects, once a stopped actor's last writes are readable.
        self.shared.store.commit(Batch::new()).await?;
        let key = records::key(id, object_id.as_str());
        let Some(obj) = self.shared.store.get::<ObjectRecord>(Keyspace::OBJECTS, &key)? else {
            return self.delete_buffered(&bucket, object_id).await;
        };
        let mut batch = Batch::new();
        batch.delete(Keyspace::OBJECTS, &key);
        super::alert::delete_for_object(&self.shared.store, id, object_id, &mut batch)?;
        if obj.source.external_id.is_some() {
            // The adapter actor's in-memory index drops the entry when it next misses it.
            batch.delete(Keyspace::EXTERNAL_IDS, &records::key(id, object_id.as_str()));
        }
        records::keep_dedup_key(&mut batch, &bucket, object_id, obj.dedup.as_ref());
        let scopes = Scopes { namespace, key: object_id.as_str() };
        let event = self.shared.bus.record(&mut batch, "object.deleted", || obj.event_payload(), scopes);
        self.shared.store.commit(batch).await?;
        self.shared.bus.published([&event]);
        Ok(Answer::Now(()))
    }

    /// A PATCH of a Supabase adapter that its bucket's data cannot follow. Objects (and
    /// buffered events, and writeback jobs) are found by their rows' values of `id_column`,
    /// and those values cannot be worked out again for another column: moved to another
    /// `id_column`, the rows' UPDATEs and DELETEs would no longer reach their objects, and a
    /// writeback would filter the new column by the old column's value (`?rank=eq.1` for the
    /// row whose `id` is 1), writing another row with the service-role key. So that is a 422
    /// while the bucket holds any of them, against the column recorded on the bucket
    /// (`Bucket::supabase_id_column`, kept through a removal or another adapter type
    /// meanwhile), which this records for a new Supabase adapter. Credentials of another
    /// project (another connection, or inline ones) are allowed, with a warning: writebacks of
    /// the objects already there go to that project, matched by the same row IDs (mended
    /// credentials of the same project carry over silently).
    fn supabase_change(&self, bucket: &mut Bucket, adapter: &SourceAdapter) -> Result<Option<String>, ApiError> {
        use crate::catalog::ProviderType::Supabase;
        let old = bucket.source_adapter.as_ref().filter(|a| a.adapter_type == Supabase);
        // The column the objects were made by: recorded on the bucket (kept through the
        // adapter's removal or another type meanwhile), else the current adapter's.
        let recorded = bucket.supabase_id_column.clone().or_else(|| old.map(|a| a.id_column().to_string()));
        if adapter.adapter_type != Supabase {
            bucket.supabase_id_column = recorded;
            return Ok(None);
        }
        let new_column = recorded.as_deref().is_some_and(|r| r != adapter.id_column());
        // Another project, not mended credentials of the same one (unreadable: not said).
        let project = |a: &SourceAdapter| match super::verify::credentials(&self.shared, &bucket.bucket_id, a) {
            Ok(Some(crate::catalog::connection::ProviderConfig::Supabase(c))) => Some(c.url),
            _ => None,
        };
        let new_connection =
            old.is_some_and(|old| matches!((project(old), project(adapter)), (Some(a), Some(b)) if a != b));
        let holds = (new_column || new_connection) && self.holds_rows(&bucket.bucket_id)?;
        if holds && new_column {
            let was = recorded.unwrap_or_default();
            return Err(ApiError::validation(
                "source_adapter.id_column",
                format!(
                    "cannot change from {was:?} to {:?} while the bucket holds objects, buffered events or writebacks \
                     made under {was:?}: they are found by their rows' {was:?} values, so the rows' later events \
                     would not reach them and their writebacks would match other rows; delete them (or use a new \
                     bucket) first",
                    adapter.id_column(),
                ),
            ));
        }
        bucket.supabase_id_column = Some(adapter.id_column().to_string());
        Ok(holds.then(|| {
            "the adapter's Supabase credentials name another project while the bucket holds objects: their \
             writebacks now go to that project, matched by the same row IDs"
                .to_string()
        }))
    }

    /// Whether the bucket holds an object, a buffered event or a writeback job.
    fn holds_rows(&self, id: &BucketId) -> Result<bool, ApiError> {
        let prefix = records::prefix(id);
        let mut any = false;
        for ks in [Keyspace::OBJECTS, Keyspace::BUFFER, Keyspace::WRITEBACKS] {
            self.shared.store.for_each_key(ks, &prefix, |_| {
                any = true;
                false
            })?;
        }
        Ok(any)
    }

    /// A buffered event's deletion while its adapter's actor is stopped, as the actor does it
    /// (`delete_buffered` there): out of the store's buffer, so the restarted actor, which
    /// loads its buffer from the store, never flushes it; nothing published; its dedup key
    /// kept.
    async fn delete_buffered(&mut self, bucket: &Bucket, object_id: &ObjectId) -> Result<Answer<()>, ApiError> {
        let id = &bucket.bucket_id;
        let key = records::key(id, object_id.as_str());
        let Some(entry) = self.shared.store.get::<BufferEntry>(Keyspace::BUFFER, &key)? else {
            return Err(ApiError::NotFound(format!("object {object_id} not found in bucket {id}")));
        };
        let mut batch = Batch::new();
        batch.delete(Keyspace::BUFFER, &key);
        if entry.draft.source.external_id.is_some() {
            batch.delete(Keyspace::EXTERNAL_IDS, &key);
        }
        records::keep_dedup_key(&mut batch, bucket, object_id, entry.dedup.as_ref());
        self.shared.store.commit(batch).await?;
        tracing::debug!(bucket_id = %id, object_id = %object_id, "buffered event deleted (adapter not running)");
        Ok(Answer::Now(()))
    }

    /// An alert: the running adapter actor decides it (it knows its buffer); without one
    /// (no adapter, or its actor stopped) nothing else writes the bucket's objects, so it is
    /// decided and committed here, the buffer read from the store.
    async fn alert(
        &mut self,
        namespace: &str,
        id: &BucketId,
        alert: NewAlert,
    ) -> Result<Answer<AlertAnswer>, ApiError> {
        let bucket = self.load_bucket(namespace, id)?;
        if let Some(actor) = self.children.get(id) {
            let reply = ask(actor, |reply| AdapterMsg::Alert(Box::new(alert), reply))?;
            return Ok(Answer::Later(Box::pin(async move { Ok(reply.await??) })));
        }
        let store = &self.shared.store;
        // A stopped actor's last writes first (its flush of the object, say).
        store.commit(Batch::new()).await?;
        let mut batch = Batch::new();
        let buffered = |oid: &ObjectId| store.get::<BufferEntry>(Keyspace::BUFFER, &records::key(id, oid.as_str()));
        let mut fired = match super::alert::fire(store, &self.shared.bus, &bucket, alert, buffered, &mut batch) {
            // No actor to flush it: say so, rather than promise a flush by a time.
            Err(super::alert::AlertError::Buffered(note)) if had_adapter_stopped(&bucket, &self.children, id) => {
                return Err(ApiError::Conflict(format!(
                    "{note}, but the bucket's source adapter is stopped (see its status), so the flush waits until it \
                     runs again; raise the alert once the object is created"
                )));
            }
            r => r?,
        };
        if let (Some(why), Some(_)) = (&fired.record.writeback_skipped, &fired.event) {
            // Not the status' `last_error`, as the actor makes it: with the actor stopped, that
            // holds why it stopped, which an operator needs more (the README says so).
            let r = &fired.record;
            tracing::warn!(bucket_id = %id, object_id = %r.object_id, alert_id = %r.alert_id, "writeback of an alert skipped: {why}");
        }
        if let Some(event) = fired.event.take() {
            store.commit(batch).await?;
            self.shared.bus.published([&event]);
        }
        Ok(Answer::Now(AlertAnswer { fired, commit: None }))
    }

    /// Asks the bucket's actor to flush its buffer. The commit is the caller's to await, so
    /// the registry does not wait for the disk.
    async fn flush_adapter(&mut self, namespace: &str, id: &BucketId) -> Result<Answer<(Commit, Flushed)>, ApiError> {
        let bucket = self.load_bucket(namespace, id)?;
        if bucket.source_adapter.is_none() {
            return Err(ApiError::NotFound(format!("bucket {id} has no source adapter")));
        }
        let Some(actor) = self.children.get(id) else {
            return Err(ApiError::Unavailable(format!(
                "the source adapter of bucket {id} is not running; re-enable it (PATCH the same source_adapter), then flush"
            )));
        };
        let reply = ask(actor, AdapterMsg::Flush)?;
        Ok(Answer::Later(Box::pin(reply)))
    }

    async fn submit_batch(
        &mut self,
        namespace: &str,
        id: &BucketId,
        batch_id: &BatchId,
    ) -> Result<BatchRecord, ApiError> {
        let bucket = self.load_bucket(namespace, id)?;
        let key = records::key(id, batch_id.as_str());
        let Some(mut rec) = self.shared.store.get::<BatchRecord>(Keyspace::BATCHES, &key)? else {
            return Err(ApiError::NotFound(format!("batch {batch_id} not found in bucket {id}")));
        };
        if rec.status != BatchStatus::Pending {
            return Err(ApiError::Conflict(format!("batch {batch_id} was already submitted")));
        }
        rec.submit();
        let mut deleted = Vec::new();
        for oid in &rec.object_ids {
            if !self.shared.store.contains(Keyspace::OBJECTS, &records::key(id, oid.as_str()))? {
                deleted.push(oid.clone());
            }
        }
        let mut batch = Batch::new();
        let scopes = Scopes { namespace, key: batch_id.as_str() };
        let event = self.shared.bus.record(&mut batch, "batch.completed", || rec.completed_payload(&deleted), scopes);
        // The record, as the event: the objects that remain, and apart those that are gone.
        rec.object_ids.retain(|o| !deleted.contains(o));
        rec.deleted_object_ids = deleted;
        batch.put(Keyspace::BATCHES, &key, &rec);
        let skipped = super::writeback::record_batch(&self.shared.store, &bucket, &rec, &mut batch)?;
        self.shared.store.commit(batch).await?;
        if let Some(why) = skipped {
            tracing::warn!(bucket_id = %id, "{why}");
            // The status' last_error, as for a skip at an adapter's own flush: through the
            // actor when it runs (it owns the counters, which a write of ours could roll back).
            let told = self.children.get(id).is_some_and(|a| a.cast(AdapterMsg::WritebackFailed(why.clone())).is_ok());
            if !told {
                if let Err(e) = self.record_adapter_error(id, why).await {
                    tracing::warn!(bucket_id = %id, error = %e, "record a skipped writeback in the status");
                }
            }
        }
        self.shared.bus.published([&event]);
        Ok(rec)
    }

    /// Deletes a batch's record, whatever its status: a pending one is then never submitted
    /// (nor `batch.completed`). Its objects stay; they keep its `batch_id`.
    async fn delete_batch(&mut self, namespace: &str, id: &BucketId, batch_id: &BatchId) -> Result<(), ApiError> {
        self.load_bucket(namespace, id)?;
        let key = records::key(id, batch_id.as_str());
        if !self.shared.store.contains(Keyspace::BATCHES, &key)? {
            return Err(ApiError::NotFound(format!("batch {batch_id} not found in bucket {id}")));
        }
        let mut batch = Batch::new();
        batch.delete(Keyspace::BATCHES, &key);
        self.shared.store.commit(batch).await?;
        tracing::info!(bucket_id = %id, batch_id = %batch_id, "batch deleted");
        Ok(())
    }

    /// A dead writeback back to pending: the running adapter actor re-queues it (its worker
    /// owns the bucket's jobs); without one no worker runs, so nothing else writes the
    /// bucket's jobs and it is re-queued here, to wait for the actor (see the README).
    async fn requeue_writeback(
        &mut self,
        namespace: &str,
        id: &BucketId,
        writeback_id: &WritebackId,
    ) -> Result<Answer<Requeued>, ApiError> {
        let bucket = self.load_bucket(namespace, id)?;
        let Some(adapter) = bucket.source_adapter.as_ref() else {
            return Err(ApiError::NotFound(format!("bucket {id} has no source adapter")));
        };
        if let Some(actor) = self.children.get(id) {
            let reply = ask(actor, |reply| AdapterMsg::RequeueWriteback(writeback_id.clone(), reply))?;
            return Ok(Answer::Later(Box::pin(async move { Ok(reply.await??) })));
        }
        let store = &self.shared.store;
        // A stopped actor's (and its worker's) last writes first.
        store.commit(Batch::new()).await?;
        let now = crate::util::now_millis();
        let (batch, job) = super::writeback::operator::requeue(store, id, adapter, writeback_id, now)?;
        store.commit(batch).await?;
        crate::metrics::writeback(adapter.adapter_type.as_str(), "requeued");
        tracing::info!(bucket_id = %id, %writeback_id, object_id = %job.object_id, "writeback re-queued while the adapter is not running");
        Ok(Answer::Now(Requeued { job, commit: None }))
    }
}

/// A registry answer: given now, or (a call that a bucket's actor answers) awaited by a task
/// of its own, so that a busy actor (indexing after a takeover, flushing a large buffer)
/// holds up the calls to its own bucket only, never the registry and every other admin call.
enum Answer<T> {
    Now(T),
    Later(futures::future::BoxFuture<'static, Result<T, ApiError>>),
}

/// Sends the answer, at once or from a task once the actor gave it.
fn answer<T: Send + 'static>(reply: RpcReplyPort<Result<T, ApiError>>, answer: Result<Answer<T>, ApiError>) {
    match answer {
        Ok(Answer::Now(v)) => drop(reply.send(Ok(v))),
        Ok(Answer::Later(wait)) => drop(tokio::spawn(async move {
            let _ = reply.send(wait.await);
        })),
        Err(e) => drop(reply.send(Err(e))),
    }
}

/// How long a call waits for a bucket's actor: less than the HTTP side waits for the
/// registry's answer (30 s), so that the caller gets this call's own message.
const ACTOR_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// Sends a bucket's actor a call now, in the registry's turn (ordered after everything the
/// registry did before, and before a later `Drain`), and returns the wait for its reply. A
/// stop of that actor (a PATCH of the bucket, its deletion) goes ahead of calls still queued:
/// they are dropped and answered 503, "retry", having changed nothing.
fn ask<R: Send + 'static>(
    actor: &ActorRef<AdapterMsg>,
    msg: impl FnOnce(RpcReplyPort<R>) -> AdapterMsg,
) -> Result<impl std::future::Future<Output = Result<R, ApiError>> + Send + 'static, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    actor.cast(msg(tx.into())).map_err(|_| ApiError::Unavailable("the source adapter is restarting; retry".into()))?;
    Ok(async move {
        match tokio::time::timeout(ACTOR_CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => Err(ApiError::Unavailable("the source adapter stopped before it answered; retry".into())),
            Err(_) => Err(ApiError::Unavailable(format!(
                "the source adapter did not answer within {} s; retry",
                ACTOR_CALL_TIMEOUT.as_secs()
            ))),
        }
    })
}

/// The 404 for a bucket not visible in `namespace`: named, since a forgotten `X-Namespace`
/// header is the usual cause.
pub fn not_found_bucket(id: &BucketId, namespace: &str) -> ApiError {
    ApiError::NotFound(format!(
        "bucket {id} not found in namespace {namespace:?} (the X-Namespace header sets it; without one, \"default\")"
    ))
}

/// Whether the bucket has an adapter whose actor is not running (stopped after its restart
/// budget, or it failed to start).
fn had_adapter_stopped(bucket: &Bucket, children: &HashMap<BucketId, ActorRef<AdapterMsg>>, id: &BucketId) -> bool {
    bucket.source_adapter.is_some() && !children.contains_key(id)
}

/// `{adapter_type}:{dedup path}`: what a bucket's dedup set is keyed by (see
/// `Bucket::dedup_scope`); `None` when the adapter does not dedup.
fn dedup_scope(adapter: &SourceAdapter) -> Option<String> {
    let path = adapter.dedup_key.as_deref().or(super::kind::default_dedup_key(adapter.adapter_type))?;
    Some(format!("{}:{path}", adapter.adapter_type.as_str()))
}

/// The warning of a PATCH whose adapter dedups by another path or upstream (scopes as
/// [`dedup_scope`] makes them): events accepted under the old one are no longer duplicates,
/// which the caller may not have meant; the old set is kept, and setting its path back
/// (`restored`: this PATCH did) makes it count again.
fn dedup_switched(old: &str, new: &str, switch: &crate::catalog::bucket::DedupSwitch) -> String {
    let said = |scope: &str| match scope.split_once(':') {
        Some((kind, path)) => format!("`{path}` of {kind} events"),
        None => format!("`{scope}`"),
    };
    let forgot = switch.forgot.as_deref().map(|f| {
        format!(
            "; the set by {}, the oldest of the {} kept, is forgotten to make room",
            said(f),
            crate::catalog::bucket::KEPT_DEDUP_SETS
        )
    });
    let (old, new, forgot) = (said(old), said(new), forgot.unwrap_or_default());
    if switch.restored {
        format!(
            "the dedup set by {new} is back in force (kept from before): events accepted while the bucket \
             deduplicated by it are duplicates again, those accepted while it deduplicated by {old} are not \
             (that set is kept in turn){forgot}"
        )
    } else {
        format!(
            "the dedup set started afresh: it deduplicated by {old}, now by {new}; an event accepted before this \
             PATCH and sent again is created again (the old set is kept: an adapter that dedups by it again brings it back){forgot}"
        )
    }
}

/// What a PATCH clears with its commit (see `commit_patch`).
struct Clear {
    /// The dedup set in force: the adapter dedups by another path or upstream.
    dedup: Option<crate::catalog::bucket::DedupSwitch>,
    /// The status's `last_error`: the adapter is of another type.
    error: bool,
    /// The writeback `field_mapping` the pending jobs were queued under, which the PATCH
    /// changed: they follow the new one (see `writeback::follow_mapping`).
    mapping: Option<Vec<super::writeback::WritebackField>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call whose caller stopped waiting is known as such before it is handled (and then
    /// dropped, changing nothing).
    #[test]
    fn a_call_whose_caller_stopped_waiting_is_known() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = RegistryMsg::DeleteConnection { connection_id: ConnectionId::generate(), reply: tx.into() };
        assert!(!msg.caller_gone());
        drop(rx);
        assert!(msg.caller_gone());
        assert!(!RegistryMsg::Crash.caller_gone());
    }
}
