//! `POST /v1/webhooks/mux/{connection_id}`, the registry's part: classify, fan out.
//!
//! The HTTP task has found the connection and checked `Mux-Signature` with it (see
//! `adapter/verify.rs`); the registry owns the catalog, so it classifies the event and sends
//! a [`ChangeRequest`] to the adapter actor of every bucket whose adapter uses the
//! connection. It does not wait for them: it hands the reply receivers back to the HTTP
//! handler, so a slow bucket (a Mux API fetch) never blocks the catalog. Each adapter actor
//! changes its own objects (see `adapter/actor/lifecycle.rs`).

use serde_json::Value;
use tokio::sync::oneshot;

use super::RegistryState;
use crate::adapter::actor::{AdapterMsg, ChangeRequest, IngestResult};
use crate::adapter::kind::Operation;
use crate::adapter::mux::{self, Lifecycle};
use crate::error::ApiError;
use crate::ids::{BucketId, ConnectionId};

/// What the HTTP handler awaits: one reply per bucket that uses the connection.
pub struct LifecyclePlan {
    pub event_type: Option<String>,
    pub lifecycle: Lifecycle,
    pub waits: Vec<(BucketId, oneshot::Receiver<IngestResult>)>,
}

/// The request as the HTTP handler hands it over, its signature verified (see
/// `adapter/verify.rs`).
pub struct MuxWebhook {
    pub connection_id: ConnectionId,
    /// The parsed body (its error is reported only because the signature was valid).
    pub payload: Result<Value, ApiError>,
    /// What the signature was checked with, for each actor to check again if its
    /// connection changed meanwhile.
    pub check: crate::adapter::verify::LifecycleCheck,
}

impl RegistryState {
    pub(super) fn mux_webhook(&mut self, w: MuxWebhook) -> Result<LifecyclePlan, ApiError> {
        // The connection was read, its type checked, by `verify::lifecycle`; one deleted
        // since has no users (a connection in use cannot be deleted), so nothing changes.
        let MuxWebhook { connection_id: id, payload, check } = w;
        let check = std::sync::Arc::new(check);
        let payload = payload?;
        let event_type = mux::event_type(&payload).map(str::to_string);
        let lifecycle = mux::classify_lifecycle(&payload);
        let (operation, asset_id) = match &lifecycle {
            Lifecycle::Deleted { asset_id } => (Operation::Delete, asset_id.clone()),
            Lifecycle::Updated { asset_id } => (Operation::Update, asset_id.clone()),
            // An asset's change that names no asset is refused as on the ingest route: a
            // broken event acknowledged would hide that nothing was deleted or updated.
            Lifecycle::Other if mux::is_asset_change(event_type.as_deref()) => {
                return Err(ApiError::validation(
                    "payload",
                    format!(
                        "this {} event names no Mux asset, so nothing changes: {}",
                        event_type.as_deref().unwrap_or_default(),
                        mux::asset_id_problem(&payload)
                    ),
                ))
            }
            Lifecycle::Other => return Ok(LifecyclePlan { event_type, lifecycle, waits: Vec::new() }),
        };
        // Every bucket whose adapter uses this connection must take the change; if one is
        // not running, ask Mux to retry rather than apply it partially (changes are
        // idempotent, so the retry re-applying the others is harmless).
        let mut targets = Vec::new();
        for b in self.shared.connection_users(&id)? {
            let Some(bucket_id) = BucketId::parse(&b) else { continue };
            let Some(actor) = self.children.get(&bucket_id) else {
                return Err(ApiError::Unavailable(format!(
                    "the source adapter of bucket {bucket_id} is not running; retry shortly"
                )));
            };
            targets.push((bucket_id, actor.clone()));
        }
        let mut waits = Vec::with_capacity(targets.len());
        let fetch = crate::adapter::actor::SharedFetch::default();
        for (bucket_id, actor) in targets {
            let (tx, rx) = oneshot::channel();
            let req = ChangeRequest {
                operation,
                event_type: event_type.clone().unwrap_or_default(),
                external_id: asset_id.clone(),
                payload: payload.clone(),
                fetch: fetch.clone(),
                check: check.clone(),
                reply: tx.into(),
            };
            actor.cast(AdapterMsg::Change(Box::new(req))).map_err(|e| {
                ApiError::Unavailable(format!(
                    "the source adapter of bucket {bucket_id} did not take the event ({e}); retry"
                ))
            })?;
            waits.push((bucket_id, rx));
        }
        tracing::info!(connection_id = %id, event_type = event_type.as_deref().unwrap_or(""), buckets = waits.len(), "Mux lifecycle webhook");
        Ok(LifecyclePlan { event_type, lifecycle, waits })
    }
}
