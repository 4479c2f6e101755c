//! The Mux source adapter's provider-specific parts: the `Mux-Signature` scheme
//! ([`signature`]), the metadata document built from an asset ([`asset`]), the Mux API client
//! for assets a webhook does not fully describe ([`api`]), and the adapter's defaults and
//! lifecycle-event classification (here).
//!
//! Everything here is stateless; the per-bucket adapter actor and the lifecycle endpoint call
//! it. This module must not touch the store or the catalog.

pub mod api;
pub mod asset;
pub mod signature;

use serde_json::Value;

pub use api::{MuxApi, MuxApiError};
pub use asset::{asset_id, asset_metadata, needs_fetch};
pub use signature::{sign, verify_signature, MuxSignatureError, DEFAULT_TOLERANCE_SECS, SIGNATURE_HEADER};

/// Event types a Mux adapter accepts when `event_filter` is not set.
pub const DEFAULT_EVENT_TYPES: &[&str] = &["video.asset.ready"];

/// Dedup key when none is configured: the asset id, so Mux's retries and duplicate deliveries
/// of one asset's `ready` make one object.
pub const DEFAULT_DEDUP_KEY: &str = "data.id";

/// The event type of a Mux webhook (`type`).
pub fn event_type(event: &Value) -> Option<&str> {
    event.get("type").and_then(Value::as_str)
}

/// The asset object of a `video.asset.*` webhook (`data`).
pub fn event_asset(event: &Value) -> Option<&Value> {
    event.get("data").filter(|d| d.is_object())
}

/// What `POST /v1/webhooks/mux/{connection_id}` does with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// `video.asset.deleted`: delete every object made from this asset, in every bucket that
    /// uses the connection.
    Deleted { asset_id: String },
    /// `video.asset.updated`: re-map those objects' metadata from the event's asset.
    Updated { asset_id: String },
    /// Anything else (or an asset event without an id): acknowledged with
    /// `{"handled": false}` so Mux stops retrying.
    Other,
}

/// Classifies a lifecycle webhook.
pub fn classify_lifecycle(event: &Value) -> Lifecycle {
    let id = || {
        event_asset(event)
            .and_then(asset_id)
            // `object.id` names the same asset; use it if `data` is trimmed.
            .or_else(|| event.pointer("/object/id").and_then(Value::as_str).filter(|s| !s.is_empty()))
            .map(str::to_string)
    };
    match event_type(event) {
        Some("video.asset.deleted") => id().map_or(Lifecycle::Other, |asset_id| Lifecycle::Deleted { asset_id }),
        Some("video.asset.updated") => id().map_or(Lifecycle::Other, |asset_id| Lifecycle::Updated { asset_id }),
        _ => Lifecycle::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults() {
        assert_eq!(DEFAULT_EVENT_TYPES, ["video.asset.ready"]);
        let event: Value = serde_json::from_str(asset::tests::SEED_003_READY).unwrap();
        assert_eq!(event_type(&event), Some("video.asset.ready"));
        // The default dedup key resolves to the asset id on Mux's own example.
        let pointer = format!("/{}", DEFAULT_DEDUP_KEY.replace('.', "/"));
        assert_eq!(event.pointer(&pointer).and_then(Value::as_str), Some("0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002"));
    }

    #[test]
    fn lifecycle_classification() {
        let deleted = json!({"type": "video.asset.deleted", "object": {"type": "asset", "id": "A1"}, "data": {"id": "A1", "status": "ready"}});
        assert_eq!(classify_lifecycle(&deleted), Lifecycle::Deleted { asset_id: "A1".into() });
        let updated = json!({"type": "video.asset.updated", "data": {"id": "A2", "passthrough": "new"}});
        assert_eq!(classify_lifecycle(&updated), Lifecycle::Updated { asset_id: "A2".into() });
        let trimmed = json!({"type": "video.asset.deleted", "object": {"type": "asset", "id": "A3"}});
        assert_eq!(classify_lifecycle(&trimmed), Lifecycle::Deleted { asset_id: "A3".into() });
        let ready: Value = serde_json::from_str(asset::tests::SEED_003_READY).unwrap();
        for other in [
            ready,
            json!({"type": "video.live_stream.deleted", "data": {"id": "L1"}}),
            json!({"type": "video.asset.deleted"}),
            json!({"type": "video.asset.deleted", "data": {"id": ""}}),
            json!({"data": {"id": "A1"}}),
            json!([1, 2]),
        ] {
            assert_eq!(classify_lifecycle(&other), Lifecycle::Other, "{other}");
        }
    }
}
