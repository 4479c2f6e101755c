//! The adapter metadata of a Mux asset: the flat document that `field_mapping` and
//! `blob_source.file_field` read.
//!
//! Input is a Mux asset object, either the `data` of a `video.asset.*` webhook or the `data`
//! of `GET /video/v1/assets/{id}`; both have the same shape. Pure functions, no I/O. Fields
//! the asset does not carry are left out of the document (not set to null), so a mapping of
//! an absent field behaves like any other missing dot-path.

use serde_json::{Map, Value};

/// Where Mux serves HLS playback and thumbnails for a playback id.
const STREAM_BASE: &str = "https://stream.mux.com";
const IMAGE_BASE: &str = "https://image.mux.com";

/// The playback id to expose: the first `public` one (playable without a token), else the
/// first one of any policy (`signed`, `drm`: the URL then needs a token the user adds).
pub fn playback_id(asset: &Value) -> Option<(&str, Option<&str>)> {
    let ids = asset.get("playback_ids")?.as_array()?;
    let with_id = |p: &&Value| p.get("id").and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let chosen = ids
        .iter()
        .filter(with_id)
        .find(|p| p.get("policy").and_then(Value::as_str) == Some("public"))
        .or_else(|| ids.iter().find(with_id))?;
    Some((chosen.get("id")?.as_str()?, chosen.get("policy").and_then(Value::as_str)))
}

/// True when the asset lacks a usable playback id, so the adapter must fetch the full asset
/// from the Mux API before it can build `playback_url` (Mux webhooks may omit `playback_ids`).
pub fn needs_fetch(asset: &Value) -> bool {
    playback_id(asset).is_none()
}

/// The id of an asset object (`data.id` of a `video.asset.*` event; see `event_asset_id` for
/// the id an event is about).
pub fn asset_id(asset: &Value) -> Option<&str> {
    asset.get("id").and_then(Value::as_str).and_then(crate::adapter::path::string_key)
}

/// The first track of `type: video`.
fn video_track(asset: &Value) -> Option<&Value> {
    asset.get("tracks")?.as_array()?.iter().find(|t| t.get("type").and_then(Value::as_str) == Some("video"))
}

fn non_null(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

/// Mux's API gives `created_at` as a string of unix seconds (`"1607876845"`), its webhook
/// examples as RFC 3339. Objects should not depend on which path filled them: normalise
/// unix seconds to RFC 3339 and pass anything else through.
fn normalise_created_at(v: &Value) -> Value {
    let secs = match v {
        Value::String(s) if !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    };
    secs.and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map(|t| Value::String(crate::util::rfc3339(t)))
        .unwrap_or_else(|| v.clone())
}

/// Whether URLs are made from a playback ID. Mux's IDs are letters and digits; anything
/// else would make a URL that points elsewhere (`../x`) or is not a URL: no URLs then, the
/// ID stays as it came.
pub fn usable_playback_id(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Builds the adapter metadata of a Mux asset (see the module doc).
///
/// Keys: `asset_id`, `playback_id`, `playback_policy`, `playback_url`, `thumbnail_url`,
/// `duration`, `resolution_tier`, `max_resolution_tier`, `aspect_ratio`, `max_frame_rate`,
/// `passthrough`, `meta`, `created_at`, `status`.
pub fn asset_metadata(asset: &Value) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    let field = |k: &str| non_null(asset.get(k)).cloned();
    let video = video_track(asset);

    put("asset_id", asset_id(asset).map(Value::from));
    if let Some((id, policy)) = playback_id(asset) {
        put("playback_id", Some(Value::from(id)));
        put("playback_policy", policy.map(Value::from));
        if usable_playback_id(id) {
            put("playback_url", Some(Value::from(format!("{STREAM_BASE}/{id}.m3u8"))));
            put("thumbnail_url", Some(Value::from(format!("{IMAGE_BASE}/{id}/thumbnail.jpg"))));
        }
    }
    put("duration", field("duration").or_else(|| video.and_then(|t| non_null(t.get("duration")).cloned())));
    // `resolution_tier` (1080p, 2160p…) is the current field; `max_stored_resolution`
    // (SD/HD/FHD/UHD) is its deprecated predecessor, still the only one in older payloads.
    put("resolution_tier", field("resolution_tier").or_else(|| field("max_stored_resolution")));
    put("max_resolution_tier", field("max_resolution_tier"));
    put("aspect_ratio", field("aspect_ratio"));
    put(
        "max_frame_rate",
        field("max_stored_frame_rate").or_else(|| video.and_then(|t| non_null(t.get("max_frame_rate")).cloned())),
    );
    put("passthrough", field("passthrough"));
    put("meta", field("meta"));
    put("created_at", field("created_at").map(|v| normalise_created_at(&v)));
    put("status", field("status"));
    Value::Object(m)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// The `video.asset.ready` example from Mux's webhook documentation (seed 003), verbatim.
    pub(crate) const SEED_003_READY: &str = r#"{
  "type": "video.asset.ready",
  "request_id": null,
  "object": {
    "type": "asset",
    "id": "0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002"
  },
  "id": "3a56ac3d-33da-4366-855b-f592d898409d",
  "environment": {
    "name": "Demo pages",
    "id": "j0863n"
  },
  "data": {
    "tracks": [
      {
        "type": "video",
        "max_width": 1280,
        "max_height": 544,
        "max_frame_rate": 23.976,
        "id": "0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002",
        "duration": 153.361542
      },
      {
        "type": "audio",
        "max_channels": 2,
        "max_channel_layout": "stereo",
        "id": "FzB95vBizv02bYNqO5QVzNWRrVo5SnQju",
        "duration": 153.361497
      }
    ],
    "status": "ready",
    "max_stored_resolution": "SD",
    "max_stored_frame_rate": 23.976,
    "id": "0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002",
    "duration": 153.361542,
    "created_at": "2018-02-15T01:04:45.000Z",
    "aspect_ratio": "40:17"
  },
  "created_at": "2018-02-15T01:04:45.000Z",
  "accessor_source": null,
  "accessor": null
}"#;

    /// A `GET /video/v1/assets/{id}` response in the shape of Mux's API reference.
    pub(crate) fn api_asset(id: &str) -> Value {
        json!({
            "id": id,
            "status": "ready",
            "created_at": "1607876845",
            "duration": 23.8,
            "aspect_ratio": "16:9",
            "max_stored_resolution": "HD",
            "resolution_tier": "1080p",
            "max_resolution_tier": "1080p",
            "max_stored_frame_rate": 29.97,
            "video_quality": "basic",
            "encoding_tier": "baseline",
            "mp4_support": "none",
            "master_access": "none",
            "ingest_type": "on_demand_url",
            "passthrough": "order-42",
            "meta": {"title": "Launch video", "external_id": "vid-42"},
            "playback_ids": [
                {"policy": "signed", "id": "SiGnEdPlAyBaCk00"},
                {"policy": "public", "id": "PuBlIcPlAyBaCk01"}
            ],
            "tracks": [
                {"type": "video", "id": "vt1", "max_width": 1920, "max_height": 1080, "max_frame_rate": 29.97, "duration": 23.8},
                {"type": "audio", "id": "at1", "max_channels": 2, "duration": 23.8}
            ]
        })
    }

    #[test]
    fn seed_003_example_without_playback_ids_needs_a_fetch() {
        let event: Value = serde_json::from_str(SEED_003_READY).unwrap();
        let data = &event["data"];
        assert!(needs_fetch(data));
        assert_eq!(asset_id(data), Some("0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002"));
        assert_eq!(
            asset_metadata(data),
            json!({
                "asset_id": "0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002",
                "duration": 153.361542,
                "resolution_tier": "SD",
                "aspect_ratio": "40:17",
                "max_frame_rate": 23.976,
                "created_at": "2018-02-15T01:04:45.000Z",
                "status": "ready"
            })
        );
    }

    #[test]
    fn api_asset_gives_the_full_document_with_the_public_playback_id() {
        let asset = api_asset("AsSeT123");
        assert!(!needs_fetch(&asset));
        assert_eq!(
            asset_metadata(&asset),
            json!({
                "asset_id": "AsSeT123",
                "playback_id": "PuBlIcPlAyBaCk01",
                "playback_policy": "public",
                "playback_url": "https://stream.mux.com/PuBlIcPlAyBaCk01.m3u8",
                "thumbnail_url": "https://image.mux.com/PuBlIcPlAyBaCk01/thumbnail.jpg",
                "duration": 23.8,
                "resolution_tier": "1080p",
                "max_resolution_tier": "1080p",
                "aspect_ratio": "16:9",
                "max_frame_rate": 29.97,
                "passthrough": "order-42",
                "meta": {"title": "Launch video", "external_id": "vid-42"},
                "created_at": "2020-12-13T16:27:25Z",
                "status": "ready"
            })
        );
    }

    #[test]
    fn falls_back_to_the_first_playback_id_and_the_video_track() {
        let asset = json!({
            "id": "a1",
            "playback_ids": [{"policy": "signed", "id": "s1"}, {"policy": "drm", "id": "d1"}],
            "tracks": [{"type": "audio", "duration": 9.0}, {"type": "video", "max_frame_rate": 25, "duration": 10.5}],
            "passthrough": null
        });
        let m = asset_metadata(&asset);
        assert_eq!(m["playback_id"], "s1");
        assert_eq!(m["playback_policy"], "signed");
        assert_eq!(m["playback_url"], "https://stream.mux.com/s1.m3u8");
        assert_eq!(m["max_frame_rate"], 25);
        assert_eq!(m["duration"], 10.5);
        assert!(m.get("passthrough").is_none(), "null fields are left out");
    }

    #[test]
    fn empty_or_broken_playback_ids_need_a_fetch() {
        for asset in [
            json!({"id": "a"}),
            json!({"id": "a", "playback_ids": []}),
            json!({"id": "a", "playback_ids": null}),
            json!({"id": "a", "playback_ids": [{"policy": "public"}]}),
            json!({"id": "a", "playback_ids": [{"policy": "public", "id": ""}]}),
            json!({"id": "a", "playback_ids": "nope"}),
        ] {
            assert!(needs_fetch(&asset), "{asset}");
            assert!(asset_metadata(&asset).get("playback_url").is_none());
        }
        assert!(!needs_fetch(&json!({"playback_ids": [{"id": "p"}]})), "a policy is not required");
    }

    #[test]
    fn a_playback_id_that_is_not_letters_and_digits_makes_no_url() {
        for id in ["a b", "../../x", "p?q=1"] {
            let m = asset_metadata(&json!({"id": "a", "playback_ids": [{"policy": "public", "id": id}]}));
            assert_eq!(m["playback_id"], id);
            assert!(m.get("playback_url").is_none() && m.get("thumbnail_url").is_none(), "{m}");
        }
    }

    #[test]
    fn non_objects_give_an_empty_document() {
        for v in [json!(null), json!(3), json!("x"), json!([])] {
            assert_eq!(asset_metadata(&v), json!({}));
            assert!(needs_fetch(&v));
            assert_eq!(asset_id(&v), None);
        }
    }

    #[test]
    fn created_at_is_normalised_from_unix_seconds() {
        assert_eq!(normalise_created_at(&json!("0")), json!("1970-01-01T00:00:00Z"));
        assert_eq!(normalise_created_at(&json!(1607876845)), json!("2020-12-13T16:27:25Z"));
        assert_eq!(normalise_created_at(&json!("2018-02-15T01:04:45.000Z")), json!("2018-02-15T01:04:45.000Z"));
        assert_eq!(normalise_created_at(&json!("99999999999999999999")), json!("99999999999999999999"));
    }
}
