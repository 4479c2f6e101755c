//! What every component shares: config, store, secrets, and the names of the actors.
//!
//! Nothing in here is mutable state of an actor: only handles that are safe to share
//! (the store is internally synchronized; actors are found by name in ractor's registry,
//! so a restarted actor is found again without anyone holding a stale reference).

use std::sync::Arc;

use ractor::ActorRef;

use crate::adapter::RegistryMsg;
use crate::config::Config;
use crate::crypto::SecretBox;
use crate::error::ApiError;
use crate::ids::ConnectionId;
use crate::store::{Keyspace, Store, StoreError};

#[derive(Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub store: Store,
    /// The data directory's free space against `storage.min_free_mb` (sampled by `app.rs`).
    pub room: Arc<crate::store::Room>,
    pub secrets: SecretBox,
    pub names: Names,
    pub bus: crate::events::EventBus,
    /// The running adapters' authentication settings, for the HTTP task's ingest checks
    /// (snapshots published by the actors, see `adapter/verify.rs`; not their state).
    pub gates: crate::adapter::verify::Gates,
    /// Cancelled when shutdown starts: delivery workers start no more sends (a worker
    /// respawned meanwhile included).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Cancelled when the part of the shutdown's grace given to sends in flight is over (all
    /// of it but its last quarter, at most 1 s, kept for logging them), or at a second stop
    /// signal: the sends still running end as attempts cut off (logged, due again at once
    /// after the restart) instead of vanishing with the runtime.
    pub cut_off: tokio_util::sync::CancellationToken,
    /// The leases the source-adapter actors run their writeback workers under (the bucket
    /// registry's; here so that they outlive a registry that fails).
    pub adapter_leases: crate::adapter::writeback::Leases,
    /// The leases the delivery workers run under (see `delivery::lease`; here for the same
    /// reason).
    pub delivery_leases: crate::delivery::lease::Leases,
}

/// Actor names, prefixed by a per-process-instance ID so several apps can run in one
/// process (tests) without their actors colliding in ractor's global registry.
#[derive(Clone)]
pub struct Names {
    instance: Arc<str>,
}

impl Names {
    pub fn new() -> Names {
        Names { instance: Arc::from(crate::ids::random_alphanumeric(8)) }
    }

    pub fn supervisor(&self) -> String {
        format!("{}/supervisor", self.instance)
    }

    pub fn bucket_registry(&self) -> String {
        format!("{}/bucket_registry", self.instance)
    }

    pub fn delivery_registry(&self) -> String {
        format!("{}/delivery_registry", self.instance)
    }

    /// The source-adapter actor of one bucket.
    pub fn adapter(&self, bucket_id: &str) -> String {
        format!("{}/adapter/{bucket_id}", self.instance)
    }

    /// The delivery actor of one webhook.
    pub fn delivery(&self, webhook_id: &str) -> String {
        format!("{}/delivery/{webhook_id}", self.instance)
    }
}

impl Default for Names {
    fn default() -> Self {
        Names::new()
    }
}

impl Shared {
    pub fn bucket_registry(&self) -> Result<ActorRef<RegistryMsg>, ApiError> {
        ActorRef::where_is(self.names.bucket_registry())
            .ok_or_else(|| ApiError::Unavailable("the bucket registry is restarting; retry shortly".into()))
    }

    /// Buckets whose source adapter references `id` (read from the stored JSON so this
    /// module need not know the adapter's shape).
    pub fn connection_users(&self, id: &ConnectionId) -> Result<Vec<String>, StoreError> {
        let mut users = Vec::new();
        self.store.for_each::<serde_json::Value>(Keyspace::BUCKETS, "", |key, v| {
            if v.pointer("/source_adapter/connection_id").and_then(|c| c.as_str()) == Some(id.as_str()) {
                users.push(key.to_string());
            }
            true
        })?;
        Ok(users)
    }
}
