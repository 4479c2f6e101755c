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
pub use asset::{asset_id, asset_metadata, needs_fetch, usable_playback_id};
pub use signature::{check_fresh, sign, verify_signature, MuxSignatureError, DEFAULT_TOLERANCE_SECS, SIGNATURE_HEADER};

/// Event types a Mux adapter accepts when `event_filter` is not set.
pub const DEFAULT_EVENT_TYPES: &[&str] = &["video.asset.ready"];

/// The event types Mux sends (seed 003's list, and the rest of Mux's webhook reference): a
/// filter naming another type is warned about when the adapter is saved, since a typo there
/// silently ignores every event it meant to take.
pub const KNOWN_EVENT_TYPES: &[&str] = &[
    "video.asset.created",
    "video.asset.ready",
    "video.asset.errored",
    "video.asset.updated",
    "video.asset.deleted",
    "video.asset.warning",
    "video.asset.non_standard_input_detected",
    "video.asset.live_stream_completed",
    "video.asset.static_renditions.ready",
    "video.asset.static_renditions.preparing",
    "video.asset.static_renditions.deleted",
    "video.asset.static_renditions.errored",
    "video.asset.static_rendition.created",
    "video.asset.static_rendition.ready",
    "video.asset.static_rendition.errored",
    "video.asset.static_rendition.deleted",
    "video.asset.static_rendition.skipped",
    "video.asset.master.ready",
    "video.asset.master.preparing",
    "video.asset.master.deleted",
    "video.asset.master.errored",
    "video.asset.track.created",
    "video.asset.track.ready",
    "video.asset.track.errored",
    "video.asset.track.deleted",
    "video.upload.asset_created",
    "video.upload.cancelled",
    "video.upload.created",
    "video.upload.errored",
    "video.live_stream.created",
    "video.live_stream.connected",
    "video.live_stream.recording",
    "video.live_stream.active",
    "video.live_stream.disconnected",
    "video.live_stream.idle",
    "video.live_stream.updated",
    "video.live_stream.enabled",
    "video.live_stream.disabled",
    "video.live_stream.deleted",
    "video.live_stream.warning",
    "video.live_stream.simulcast_target.created",
    "video.live_stream.simulcast_target.idle",
    "video.live_stream.simulcast_target.starting",
    "video.live_stream.simulcast_target.broadcasting",
    "video.live_stream.simulcast_target.errored",
    "video.live_stream.simulcast_target.deleted",
    "video.delivery.high_traffic",
];

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

/// Whether the event's `data` is not the asset but something of it: a direct upload
/// (`video.upload.*`, whose asset is `data.asset_id` once the upload made one), a track or a
/// static rendition (`video.asset.track.*`, `video.asset.static_rendition.*`, which carry
/// `data.asset_id`). An asset object itself has no `asset_id` field.
pub fn is_asset_part_event(event: &Value) -> bool {
    event_type(event).is_some_and(|t| t.starts_with("video.upload."))
        || event.pointer("/data/asset_id").is_some_and(|v| !v.is_null())
}

/// The id of the asset an event is about: `data.asset_id` for an event about a part of an
/// asset (see [`is_asset_part_event`]), else the asset's `data.id` (or `object.id` when
/// `data` is trimmed). The object's external id, and the default dedup value, so that an
/// upload's `asset_created` and its asset's `ready` are one object.
pub fn event_asset_id(event: &Value) -> Option<&str> {
    fn usable(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str).and_then(crate::adapter::path::string_key)
    }
    if is_asset_part_event(event) {
        return usable(event.pointer("/data/asset_id"));
    }
    event_asset(event).and_then(asset_id).or_else(|| usable(event.pointer("/object/id")))
}

/// Why [`event_asset_id`] finds no asset in `event`, for messages: what stands where it
/// looked (`data.id is null and object.id is missing`, `data.asset_id is an empty string`),
/// as other payload refusals say what the payload had.
pub fn asset_id_problem(event: &Value) -> String {
    use crate::adapter::path::not_a_key;
    let what = if is_asset_part_event(event) {
        format!("data.asset_id is {}", not_a_key(event.pointer("/data/asset_id")))
    } else {
        let data = match event_asset(event) {
            Some(asset) => format!("data.id is {}", not_a_key(asset.get("id"))),
            // Not an object (one is the asset, above).
            None => format!("data is {}", not_a_key(event.get("data"))),
        };
        format!("{data} and object.id is {}", not_a_key(event.pointer("/object/id")))
    };
    format!("{what} (a Mux asset ID is a string, not blank: data.id, or data.asset_id for an upload or a track)")
}

/// What `POST /v1/webhooks/mux/{connection_id}` does with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// `video.asset.deleted`: delete every object made from this asset, in every bucket that
    /// uses the connection.
    Deleted { asset_id: String },
    /// `video.asset.updated`: re-map those objects' metadata from the event's asset.
    Updated { asset_id: String },
    /// Anything else: acknowledged with `{"handled": false}` so Mux stops retrying. (Also
    /// one of the two above without an asset id, which the registry refuses: see
    /// [`is_asset_change`].)
    Other,
}

/// Classifies a lifecycle webhook.
pub fn classify_lifecycle(event: &Value) -> Lifecycle {
    let id = || event_asset_id(event).map(str::to_string);
    match event_type(event) {
        Some(DELETED) => id().map_or(Lifecycle::Other, |asset_id| Lifecycle::Deleted { asset_id }),
        Some(UPDATED) => id().map_or(Lifecycle::Other, |asset_id| Lifecycle::Updated { asset_id }),
        _ => Lifecycle::Other,
    }
}

const DELETED: &str = "video.asset.deleted";
const UPDATED: &str = "video.asset.updated";

/// Whether `event_type` is one of the asset changes the lifecycle route applies.
pub fn is_asset_change(event_type: Option<&str>) -> bool {
    matches!(event_type, Some(DELETED | UPDATED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_without_an_asset_id_says_what_it_has() {
        let problem = |e: Value| asset_id_problem(&e);
        assert!(problem(json!({"type": "video.asset.ready", "data": {"id": null}}))
            .starts_with("data.id is null and object.id is missing ("));
        assert!(problem(json!({"type": "video.asset.ready", "data": {"id": 7}, "object": {"id": ""}}))
            .starts_with("data.id is a number and object.id is an empty string ("));
        assert!(problem(json!({"type": "video.asset.ready", "data": [1]})).starts_with("data is an array and"));
        assert!(problem(json!({"type": "video.upload.cancelled", "data": {"id": "up1"}}))
            .starts_with("data.asset_id is missing ("));
    }

    #[test]
    fn an_upload_event_is_about_its_asset_id() {
        let upload = json!({"type": "video.upload.asset_created", "object": {"type": "upload", "id": "UpL1"},
            "data": {"id": "UpL1", "asset_id": "AsSeT1", "status": "asset_created"}});
        assert_eq!(event_asset_id(&upload), Some("AsSeT1"));
        let no_asset_yet = json!({"type": "video.upload.created", "data": {"id": "UpL1", "status": "waiting"}});
        assert_eq!(event_asset_id(&no_asset_yet), None, "never the upload's own id");
        let ready = json!({"type": "video.asset.ready", "data": {"id": "AsSeT1", "upload_id": "UpL1"}});
        assert_eq!(event_asset_id(&ready), Some("AsSeT1"));
        let trimmed = json!({"type": "video.asset.deleted", "object": {"type": "asset", "id": "AsSeT1"}});
        assert_eq!(event_asset_id(&trimmed), Some("AsSeT1"));
        let track = json!({"type": "video.asset.track.ready", "data": {"id": "TrAcK1", "asset_id": "AsSeT1"}});
        assert_eq!(event_asset_id(&track), Some("AsSeT1"));
        assert!(is_asset_part_event(&track) && is_asset_part_event(&no_asset_yet) && !is_asset_part_event(&ready));
    }

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
