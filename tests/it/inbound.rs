//! Inbound: source adapters, ingest, objects, batches.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{
    contains_bytes, data_files, eventually, metric_value, stop_and_open, stored_entries, Options, TestApp,
};

/// Creates a bucket with `properties` and configures `adapter` on it; returns (bucket_id,
/// webhook_secret).
pub async fn bucket_with_adapter(app: &TestApp, name: &str, properties: Value, adapter: Value) -> (String, String) {
    let id = app.create_bucket(name, properties).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{id}"), json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "configure adapter: {b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().expect("webhook_secret on first configuration");
    (id, secret.to_string())
}

pub async fn ingest(app: &TestApp, bucket: &str, secret: Option<&str>, body: &Value) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    match secret {
        Some(s) => app.post_raw(&path, raw, &[("content-type", "application/json"), ("x-webhook-secret", s)]).await,
        None => app.post_raw(&path, raw, &[("content-type", "application/json")]).await,
    }
}

/// Every object of the bucket, page by page (a page ends early at 8 MiB of large objects).
async fn objects(app: &TestApp, bucket: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut path = format!("/v1/buckets/{bucket}/objects?limit=1000");
    loop {
        let (s, b) = app.get(&path).await;
        assert_eq!(s, 200, "{b}");
        all.extend(b["results"].as_array().unwrap().iter().cloned());
        match b["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/buckets/{bucket}/objects?limit=1000&cursor={c}"),
            None => return all,
        }
    }
}

async fn status(app: &TestApp, bucket: &str) -> Value {
    let (s, b) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    assert_eq!(s, 200, "{b}");
    b
}

fn schema() -> Value {
    json!({
        "video": {"type": "video"},
        "duration": {"type": "float"},
        "resolution": {"type": "string"},
        "width": {"type": "int"},
        "raw": {"type": "json"},
    })
}

fn mux_like_event(id: &str, kind: &str) -> Value {
    json!({
        "type": kind,
        "id": format!("evt-{id}"),
        "data": {
            "id": id,
            "max_stored_resolution": "SD",
            "tracks": [{"type": "video", "max_width": 1280, "duration": 153.36}, {"type": "audio", "duration": 153.3}],
            "playback_url": format!("https://stream.example.test/{id}.m3u8"),
            "passthrough": {"k": [1, 2]},
        }
    })
}

fn full_adapter(mode: Value) -> Value {
    json!({
        "adapter_type": "generic_webhook",
        "event_filter": {"event_types": ["video.asset.ready"]},
        "field_mapping": {
            "data.tracks.0.duration": "duration",
            "data.max_stored_resolution": "resolution",
            "data.tracks.0.max_width": "width",
            "data.passthrough": "raw",
        },
        "blob_source": {"file_field": "data.playback_url", "blob_type": "video", "target_property": "video"},
        "batching": mode,
        "dedup_key": "data.id",
    })
}

#[tokio::test]
async fn configure_validate_and_show_the_secret_once() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("cfg", schema()).await;
    let path = format!("/v1/buckets/{bucket}");
    let (_, mux_conn) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "m", "provider_type": "mux", "provider_config": {"access_token_id": "a", "access_token_secret": "b"}}),
        )
        .await;
    let mux_conn = mux_conn["connection_id"].as_str().unwrap().to_string();
    let cases = [
        (json!({"adapter_type": "ftp"}), "source_adapter.adapter_type"),
        (
            json!({"adapter_type": "generic_webhook", "batching": {"window_seconds": 4}}),
            "source_adapter.batching.window_seconds",
        ),
        (
            json!({"adapter_type": "generic_webhook", "batching": {"window_seconds": 301}}),
            "source_adapter.batching.window_seconds",
        ),
        (
            json!({"adapter_type": "generic_webhook", "batching": {"max_batch_size": 0}}),
            "source_adapter.batching.max_batch_size",
        ),
        (
            json!({"adapter_type": "generic_webhook", "batching": {"max_batch_size": 1001}}),
            "source_adapter.batching.max_batch_size",
        ),
        (json!({"adapter_type": "generic_webhook", "batching": {"mode": "hourly"}}), "source_adapter.batching.mode"),
        (
            json!({"adapter_type": "generic_webhook", "field_mapping": {"data.x": "missing"}}),
            r#"source_adapter.field_mapping["data.x"]"#,
        ),
        // A key that is not a dot-path is named quoted.
        (
            json!({"adapter_type": "generic_webhook", "field_mapping": {"": "title"}}),
            "source_adapter.field_mapping[\"\"]",
        ),
        (
            json!({"adapter_type": "generic_webhook", "field_mapping": {"a..b": "title"}}),
            "source_adapter.field_mapping[\"a..b\"]",
        ),
        (json!({"adapter_type": "generic_webhook", "dedup_key": "a..b"}), "source_adapter.dedup_key"),
        (
            json!({"adapter_type": "generic_webhook", "event_filter": {"event_types": ["ok", " "]}}),
            "source_adapter.event_filter.event_types",
        ),
        (
            json!({"adapter_type": "generic_webhook", "event_filter": {"event_types": []}}),
            "source_adapter.event_filter.event_types",
        ),
        (
            json!({"adapter_type": "generic_webhook", "blob_source": {"blob_type": "pdf"}}),
            "source_adapter.blob_source.blob_type",
        ),
        (
            json!({"adapter_type": "generic_webhook", "blob_source": {"target_property": "nope"}}),
            "source_adapter.blob_source.target_property",
        ),
        (json!({"adapter_type": "generic_webhook", "unknown": 1}), "source_adapter.unknown"),
        (
            json!({"adapter_type": "generic_webhook", "connection_id": "conn_doesnotexist"}),
            "source_adapter.connection_id",
        ),
        (json!({"adapter_type": "generic_webhook", "connection_id": mux_conn}), "source_adapter.connection_id"),
        (json!({"adapter_type": "mux", "event_type_field": "kind"}), "source_adapter.event_type_field"),
        (json!({"enabled": true}), "source_adapter.adapter_type"),
    ];
    for (adapter, field) in cases {
        let (s, b) = app.patch(&path, json!({ "source_adapter": adapter })).await;
        assert_eq!(s, 422, "{adapter}: {b}");
        assert_eq!(b["error"]["field"], field, "{adapter}: {b}");
    }
    assert_eq!(app.patch(&path, json!({"sauce": 1})).await.0, 422);
    assert_eq!(app.patch(&path, json!({"rotate_secret": true})).await.0, 422, "nothing to rotate");
    // A choice given no string says what the choices are.
    let (s, b) = app
        .patch(&path, json!({"source_adapter": {"adapter_type": "generic_webhook", "batching": {"mode": null}}}))
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.batching.mode")), "{b}");
    assert_eq!(
        b["error"]["message"],
        r#"source_adapter.batching.mode: must be one of "immediate", "time_window", "count", not null"#,
        "{b}"
    );

    // Every field of seed 000's table is accepted and shown back (secrets excepted).
    let (_, gconn) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "g", "provider_type": "generic_webhook", "provider_config": {}}),
        )
        .await;
    let gconn = gconn["connection_id"].as_str().unwrap().to_string();
    let mut adapter =
        full_adapter(json!({"mode": "count", "window_seconds": 5, "max_batch_size": 7, "auto_submit": false}));
    adapter["enabled"] = json!(true);
    adapter["connection_id"] = json!(gconn);
    adapter["connection"] = json!({"credentials": {"headers": {"X-Api-Key": "INLINE-CRED-NEVER-SHOWN"}}});
    adapter["writeback"] = json!({"enabled": true, "trigger": "on_alert", "writeback_url": "https://example.test/wb",
        "field_mapping": [{"source_path": "verdict", "target_field": "mp_verdict"}]});
    adapter["event_type_field"] = json!("type");
    let (s, b) = app.patch(&path, json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "{b}");
    let sa = &b["source_adapter"];
    let secret = sa["webhook_secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 64);
    assert_eq!(sa["adapter_type"], "generic_webhook");
    assert_eq!(sa["connection_id"], gconn.as_str());
    assert_eq!(
        sa["batching"],
        json!({"mode": "count", "window_seconds": 5, "max_batch_size": 7, "auto_submit": false})
    );
    assert_eq!(sa["ingest_path"], format!("/v1/buckets/{bucket}/source-adapter/ingest"));
    assert!(!b.to_string().contains("INLINE-CRED-NEVER-SHOWN") && !b.to_string().contains("sha256"));

    // Later reads never show it; a reconfiguration keeps it; rotate_secret replaces it.
    let (_, got) = app.get(&path).await;
    assert_eq!(got["source_adapter"]["dedup_key"], "data.id");
    assert_eq!(got["source_adapter"]["ingest_path"], format!("/v1/buckets/{bucket}/source-adapter/ingest"));
    assert!(got["source_adapter"].get("webhook_secret").is_none() && !got.to_string().contains(&secret));
    let (s, b) = app.patch(&path, json!({"source_adapter": full_adapter(json!({"mode": "immediate"}))})).await;
    assert_eq!(s, 200);
    assert!(b["source_adapter"].get("webhook_secret").is_none(), "no new secret: {b}");
    assert_eq!(b["source_adapter"]["enabled"], true, "defaults apply");
    // A secret copied back into the next PATCH: refused, saying how to get a new one.
    let mut copied = full_adapter(json!({"mode": "immediate"}));
    copied["webhook_secret"] = json!(secret);
    let (s, b) = app.patch(&path, json!({"source_adapter": copied})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.webhook_secret")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or_default().contains("rotate_secret"), "{b}");
    assert!(!b.to_string().contains(&secret), "the secret is not echoed: {b}");
    // A bucket's schema and name are fixed at creation: the 422 says so, not "unknown field".
    for (field, value) in
        [("bucket_schema", json!({"properties": {"n": {"type": "int"}}})), ("bucket_name", json!("x"))]
    {
        let (s, b) = app.patch(&path, json!({ field: value })).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("cannot be changed") && message.contains("create a new bucket"), "{b}");
    }
    assert_eq!(ingest(&app, &bucket, Some(&secret), &mux_like_event("a1", "video.asset.ready")).await.0, 200);
    let (s, b) = app.patch(&path, json!({"rotate_secret": true})).await;
    assert_eq!(s, 200);
    let rotated = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    assert_ne!(rotated, secret);
    assert_eq!(ingest(&app, &bucket, Some(&secret), &mux_like_event("a2", "video.asset.ready")).await.0, 401);
    assert_eq!(ingest(&app, &bucket, Some(&rotated), &mux_like_event("a2", "video.asset.ready")).await.0, 200);
    // Said false outside and true inside: a contradiction, refused, the secret kept.
    let (_, view) = app.get(&path).await;
    let mut inside = view["source_adapter"].clone();
    inside["rotate_secret"] = json!(true);
    let (s, b) = app.patch(&path, json!({"rotate_secret": false, "source_adapter": inside})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("rotate_secret")), "{b}");
    assert_eq!(ingest(&app, &bucket, Some(&rotated), &mux_like_event("a2", "video.asset.ready")).await.0, 200);

    // The connection is in use: 409 until the adapter is removed with null. (An event type
    // listed twice is kept once, as a webhook's are.)
    let (s, b) = app
        .patch(
            &path,
            json!({"source_adapter": {"adapter_type": "generic_webhook", "connection_id": gconn,
                "event_filter": {"event_types": ["b", "a", "b", "a"]}}}),
        )
        .await;
    assert_eq!((s, &b["source_adapter"]["event_filter"]), (200, &json!({"event_types": ["b", "a"]})), "{b}");
    assert_eq!(app.delete(&format!("/v1/organizations/connections/{gconn}")).await.0, 409);
    let (s, b) = app.patch(&path, json!({"source_adapter": null, "rotate_secret": true})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("rotate_secret")), "{b}");
    let (s, b) = app.patch(&path, json!({"source_adapter": null})).await;
    assert_eq!(s, 200);
    assert_eq!(b["source_adapter"], Value::Null);
    assert_eq!(app.delete(&format!("/v1/organizations/connections/{gconn}")).await.0, 204);
    assert_eq!(ingest(&app, &bucket, Some(&rotated), &mux_like_event("a3", "video.asset.ready")).await.0, 404);
    assert_eq!(app.get(&format!("{path}/source-adapter/status")).await.0, 404);
    assert_eq!(objects(&app, &bucket).await.len(), 2, "objects stay when the adapter goes");
    // So does the dedup set: a re-added adapter still knows a1 (an upstream retry arriving
    // across a reconfiguration is no second object).
    let (s, b) = app.patch(&path, json!({"source_adapter": full_adapter(json!({"mode": "immediate"}))})).await;
    assert_eq!(s, 200, "{b}");
    let fresh = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let kept = b["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str);
    assert!(kept.clone().all(|w| !w.contains("dedup set")), "the same path keeps the set: {b}");
    let (s, r) = ingest(&app, &bucket, Some(&fresh), &mux_like_event("a1", "video.asset.ready")).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("duplicate")), "{r}");
    assert_eq!(objects(&app, &bucket).await.len(), 2);
    // Another dedup path starts the set afresh: values deduped under data.id say nothing
    // about duplicates under id.
    let mut by_event_id = full_adapter(json!({"mode": "immediate"}));
    by_event_id["dedup_key"] = json!("id");
    let (s, b) = app.patch(&path, json!({"source_adapter": by_event_id})).await;
    assert_eq!(s, 200, "{b}");
    // Said in the answer: the old keys no longer count (the old set is kept for a way back).
    let said: Vec<&str> = b["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(
        said.iter().any(|w| w.contains("dedup set started afresh")
            && w.contains("`data.id` of generic_webhook events")
            && w.contains("now by `id` of generic_webhook events")
            && w.contains("the old set is kept")),
        "{b}"
    );
    // Its id "a1" is a value the old set holds (as data.id): new under the new path.
    let mut e = mux_like_event("z9", "video.asset.ready");
    e["id"] = json!("a1");
    let (s, r) = ingest(&app, &bucket, Some(&fresh), &e).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let (s, r) = ingest(&app, &bucket, Some(&fresh), &e).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("duplicate")), "{r}");
    assert_eq!(objects(&app, &bucket).await.len(), 3);

    // No secret in the data files or the log.
    for (f, bytes) in data_files(&app.data_dir) {
        for needle in [secret.as_bytes(), rotated.as_bytes(), b"INLINE-CRED-NEVER-SHOWN".as_slice()] {
            assert!(!contains_bytes(&bytes, needle), "secret in {}", f.display());
        }
    }
    assert!(!app.log().contains(&secret) && !app.log().contains(&rotated));
}

/// serde would read an array as a struct's fields by position: `"batching": ["count", 5, 7]`
/// was saved as mode count, 5 s, batches of 7. Every body refuses it with a 422 naming the
/// field, in words (not Rust's type names), and stores nothing.
#[tokio::test]
async fn an_array_is_no_object_anywhere_in_a_body() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("arrays", schema()).await;
    let path = format!("/v1/buckets/{bucket}");
    for (adapter, field) in [
        (json!({"adapter_type": "generic_webhook", "batching": ["count", 5, 7, false]}), "source_adapter.batching"),
        (json!({"adapter_type": "generic_webhook", "event_filter": [["x.y"]]}), "source_adapter.event_filter"),
        (
            json!({"adapter_type": "generic_webhook", "blob_source": ["u", "video", "video"]}),
            "source_adapter.blob_source",
        ),
        (json!([]), "source_adapter"),
    ] {
        let (s, b) = app.patch(&path, json!({ "source_adapter": adapter })).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{adapter}: {b}");
        assert_eq!(b["error"]["message"], format!("{field}: must be an object, not a list"), "{b}");
    }
    let (_, shown) = app.get(&path).await;
    assert!(shown["source_adapter"].is_null(), "nothing configured: {shown}");

    let (s, b) = app.post("/v1/buckets", json!({"bucket_name": "arr2", "bucket_schema": [{"a": ["string"]}]})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("bucket_schema")), "{b}");
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "x", "provider_type": "supabase", "provider_config": ["https://x.supabase.co", "key"]}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("provider_config")), "{b}");
    assert_eq!(b["error"]["message"], "provider_config: must be an object, not a list", "{b}");
    let (_, list) = app.get("/v1/organizations/connections").await;
    assert_eq!(list["results"].as_array().map(Vec::len), Some(0), "{list}");
    // A webhook's channel (a tagged enum) too.
    let channel = json!(["webhook", {"url": "https://example.com/hook"}]);
    let (s, b) = app
        .post("/v1/organizations/webhooks", json!({"webhook_name": "w", "event_types": ["x.y"], "channels": [channel]}))
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0]")), "{b}");
    assert_eq!(b["error"]["message"], "channels[0]: must be an object, not a list", "{b}");
}

#[tokio::test]
async fn immediate_ingest_maps_filters_dedups_and_reports() {
    let app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(&app, "imm", schema(), full_adapter(json!({"mode": "immediate"}))).await;
    let s = Some(secret.as_str());

    let (st, b) = ingest(&app, &bucket, s, &mux_like_event("asset-1", "video.asset.ready")).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["handled"], true);
    assert_eq!(b["status"], "created");
    let oid = b["object_id"].as_str().unwrap().to_string();
    assert!(oid.starts_with("obj_"));
    let (st, obj) = app.get(&format!("/v1/buckets/{bucket}/objects/{oid}")).await;
    assert_eq!(st, 200);
    assert_eq!(obj["bucket_id"], bucket.as_str());
    assert_eq!(obj["metadata"], json!({"duration": 153.36, "resolution": "SD", "width": 1280, "raw": {"k": [1, 2]}}));
    assert_eq!(
        obj["blobs"],
        json!([{"property": "video", "type": "video", "url": "https://stream.example.test/asset-1.m3u8"}])
    );
    assert_eq!(
        obj["source"],
        json!({"adapter_type": "generic_webhook", "external_id": "asset-1", "event_type": "video.asset.ready"})
    );
    assert!(obj["created_at"].as_str().unwrap().ends_with('Z') && obj["updated_at"].is_string());

    // Filter, duplicate, type mismatch, missing dedup value, malformed body.
    let (st, b) = ingest(&app, &bucket, s, &mux_like_event("asset-2", "video.asset.created")).await;
    assert_eq!((st, b.clone()), (200, json!({"handled": false, "status": "ignored"})));
    let (st, b) = ingest(&app, &bucket, s, &mux_like_event("asset-1", "video.asset.ready")).await;
    assert_eq!(st, 200);
    assert_eq!(b, json!({"handled": true, "status": "duplicate", "object_id": oid}));
    let mut bad = mux_like_event("asset-3", "video.asset.ready");
    bad["data"]["tracks"][0]["duration"] = json!("long");
    let (st, b) = ingest(&app, &bucket, s, &bad).await;
    assert_eq!(st, 422, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("float"), "{b}");
    let mut no_id = mux_like_event("x", "video.asset.ready");
    no_id["data"].as_object_mut().unwrap().remove("id");
    assert_eq!(ingest(&app, &bucket, s, &no_id).await.0, 422);
    // A blank value names nothing: refused too, rather than made the key every later blank
    // event would be a `duplicate` of.
    let mut blank = mux_like_event("x", "video.asset.ready");
    blank["data"]["id"] = json!(" \t");
    let (st, b) = ingest(&app, &bucket, s, &blank).await;
    assert_eq!(st, 422, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("(not blank)"), "{b}");
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let (st, b) = app.post_raw(&path, "{not json", &[("x-webhook-secret", secret.as_str())]).await;
    assert_eq!((st, b["error"]["code"].as_str()), (400, Some("malformed_json")));
    assert_eq!(app.post_raw(&path, "{not json", &[]).await.0, 401, "signature first");
    let big = vec![b'a'; 1024 * 1024 + 1];
    assert_eq!(app.post_raw(&path, big, &[("x-webhook-secret", secret.as_str())]).await.0, 413);
    assert_eq!(ingest(&app, "bkt_nosuchbucket", s, &json!({})).await.0, 404);
    let plain = app.create_bucket("plain", json!({})).await;
    assert_eq!(ingest(&app, &plain, s, &json!({})).await.0, 404, "bucket without adapter");
    assert_eq!(app.call(Method::GET, &path, None).await.0, 405);

    let st = status(&app, &bucket).await;
    assert_eq!(st["enabled"], true);
    assert_eq!(st["adapter_type"], "generic_webhook");
    assert_eq!(st["events_buffered"], 0);
    assert_eq!(st["events_processed_24h"], 2, "created + duplicate: {st}");
    // Three 422s and the authenticated 400 (the 401 and the 413 never reached the adapter).
    assert_eq!(st["events_failed_24h"], 4, "{st}");
    assert!(st["last_error"].as_str().unwrap().contains("JSON"), "the latest, the 400's: {st}");
    assert!(st["last_error_at"].as_str().unwrap().starts_with("20"), "when it happened: {st}");
    assert_eq!(st["last_refused_ingest"]["reason"], "too_large", "{st}");
    assert_eq!(st["last_flush_at"], Value::Null);
    assert_eq!(st["webhook_url"], Value::Null, "no server.public_url configured");
    assert_eq!(st["ingest_path"], format!("/v1/buckets/{bucket}/source-adapter/ingest"), "{st}");
    assert_eq!(st["actor"], "running", "{st}");
    // An upstream's repeated key is read as most parsers do (the last one wins); only the
    // admin API refuses them.
    let twice = r#"{"type": "video.asset.created", "type": "video.asset.ready", "data": {"id": "asset-1"}}"#;
    let (st, b) = app.post_raw(&path, twice, &[("x-webhook-secret", secret.as_str())]).await;
    assert_eq!((st, b["status"].as_str()), (200, Some("duplicate")), "{b}");
    // A bare JSON value is no event: 422, nothing stored.
    let (st, b) = ingest(&app, &bucket, s, &json!([{"type": "video.asset.ready"}])).await;
    assert_eq!(st, 422, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("JSON object"), "{b}");

    // Pagination and delete.
    for i in 0..4 {
        assert_eq!(ingest(&app, &bucket, s, &mux_like_event(&format!("p{i}"), "video.asset.ready")).await.0, 200);
    }
    let (_, p1) = app.get(&format!("/v1/buckets/{bucket}/objects?limit=3")).await;
    assert_eq!(p1["results"].as_array().unwrap().len(), 3);
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = app.get(&format!("/v1/buckets/{bucket}/objects?limit=3&cursor={cursor}")).await;
    assert_eq!(p2["results"].as_array().unwrap().len(), 2);
    assert_eq!(p2["next_cursor"], Value::Null);
    assert_eq!(app.get(&format!("/v1/buckets/{bucket}/objects?cursor=zzz")).await.0, 422);
    // Only a cursor of the form the list returns: a made-up one, or one in capitals (which
    // sorts before its own ID and would repeat items), is a 422, not an empty or a long page.
    let upper = cursor.to_uppercase().replacen("OBJ_", "obj_", 1);
    for made_up in ["obj_1", "obj_ZZZZ", upper.as_str(), "batch_01m960d6vyzz9rn98fbdr6v1k8"] {
        let (s, b) = app.get(&format!("/v1/buckets/{bucket}/objects?cursor={made_up}")).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("cursor")), "{made_up}: {b}");
    }
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0, 204);
    assert_eq!(app.get(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0, 404);
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0, 404);
    assert_eq!(objects(&app, &bucket).await.len(), 4);
    // Another namespace does not see the bucket's objects.
    let (st, _) = app
        .call_as(Method::GET, &format!("/v1/buckets/{bucket}/objects"), None, Some(&app.api_key), Some("other"))
        .await;
    assert_eq!(st, 404);

    // A disabled adapter refuses events (503: the upstream retries) until re-enabled.
    let mut disabled = full_adapter(json!({"mode": "immediate"}));
    disabled["enabled"] = json!(false);
    assert_eq!(app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": disabled})).await.0, 200);
    assert_eq!(ingest(&app, &bucket, s, &mux_like_event("d1", "video.asset.ready")).await.0, 503);
    // The signature is checked first: a stranger cannot tell a disabled adapter.
    assert_eq!(ingest(&app, &bucket, None, &mux_like_event("d1", "video.asset.ready")).await.0, 401);
    assert_eq!(ingest(&app, &bucket, Some("wrong"), &mux_like_event("d1", "video.asset.ready")).await.0, 401);
    assert_eq!(status(&app, &bucket).await["enabled"], false);

    let m = app.metrics().await;
    for outcome in ["created", "duplicate", "ignored", "invalid", "unauthorized", "disabled", "too_large"] {
        assert!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", outcome)]) >= 1.0, "{outcome}");
    }
    let ingest_413 = [("route", "/v1/buckets/{bucket_id}/source-adapter/ingest"), ("status", "413")];
    assert!(metric_value(&m, "hookline_http_requests_total", &ingest_413) >= 1.0, "a 413 is labelled with its route");
    assert!(metric_value(&m, "hookline_ingest_objects_created_total", &[]) >= 5.0);
    assert!(metric_value(&m, "hookline_events_published_total", &[("event_type", "object.created")]) >= 5.0);
    assert!(metric_value(&m, "hookline_events_published_total", &[("event_type", "object.deleted")]) >= 1.0);
    assert!(m.contains("hookline_ingest_duration_seconds_bucket"));
}

#[tokio::test]
async fn generic_event_type_field_and_default_filter() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "event_type_field": "meta.kind",
        "event_filter": {"event_types": ["row.insert"]}, "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "etf", json!({}), adapter).await;
    let (s, b) = ingest(&app, &bucket, Some(&secret), &json!({"meta": {"kind": "row.insert"}})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")));
    let (_, b) = ingest(&app, &bucket, Some(&secret), &json!({"type": "row.insert"})).await;
    assert_eq!(b["status"], "ignored");
    // No filter, no dedup key: every event is an object.
    let (b2, s2) = bucket_with_adapter(
        &app,
        "all",
        json!({}),
        json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"}}),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(ingest(&app, &b2, Some(&s2), &json!({"anything": 1})).await.1["status"], "created");
    }
    assert_eq!(objects(&app, &b2).await.len(), 2);
}

/// A UTF-8 byte order mark is ignored (RFC 8259 allows it; some encoders write one), and a
/// compressed body is a 415 naming its encoding, not a confusing parse error, on ingest and
/// on the admin API alike.
#[tokio::test]
async fn a_bom_is_ignored_and_a_compressed_body_is_a_415() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "bom", json!({}), adapter).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(br#"{"id": "b1"}"#);
    let (s, b) = app.post_raw(&path, bom, &[("x-webhook-secret", secret.as_str())]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    let gz = [0x1f_u8, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03];
    let (s, b) =
        app.post_raw(&path, gz.to_vec(), &[("x-webhook-secret", secret.as_str()), ("content-encoding", "gzip")]).await;
    assert_eq!(s, 415, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("gzip"), "{b}");
    let key = format!("Bearer {}", app.api_key);
    let (s, b) = app
        .post_raw(
            "/v1/events",
            gz.to_vec(),
            &[("authorization", key.as_str()), ("content-type", "application/json"), ("content-encoding", "gzip")],
        )
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (415, Some("unsupported_media_type")), "{b}");
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(br#"{"event_type": "custom.bom", "payload": {}}"#);
    let (s, b) = app.post_raw("/v1/events", bom, &[("authorization", key.as_str())]).await;
    assert_eq!(s, 202, "{b}");
}

/// JavaScript senders write half a surrogate pair as an escape when they cut a string inside
/// an emoji: valid JSON, which a Rust string cannot hold. The event is taken, the lone half
/// read as U+FFFD (a 400 would make the upstream drop it); a whole pair stays the character.
#[tokio::test]
async fn a_lone_surrogate_escape_is_taken_as_the_replacement_character() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "data.id",
        "field_mapping": {"data.title": "title"}, "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "surrogates", json!({"title": {"type": "string"}}), adapter).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let headers = [("x-webhook-secret", secret.as_str())];
    let cut = br#"{"type": "t", "data": {"id": "s1\ud800", "title": "cut \ud83d, whole \ud83d\ude00"}}"#;
    let (s, b) = app.post_raw(&path, cut.to_vec(), &headers).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    let (_, obj) = app.get(&format!("/v1/buckets/{bucket}/objects/{}", b["object_id"].as_str().unwrap())).await;
    assert_eq!(obj["metadata"]["title"], "cut \u{FFFD}, whole \u{1F600}", "{obj}");
    // Its dedup value is read the same way each time: a resend is a duplicate.
    let (s, again) = app.post_raw(&path, cut.to_vec(), &headers).await;
    assert_eq!(
        (s, again["status"].as_str(), &again["object_id"]),
        (200, Some("duplicate"), &b["object_id"]),
        "{again}"
    );
    // Other lone halves, U+FFFD itself, and text that spells a half are other IDs: each is
    // an object of its own, though the payloads read the halves as U+FFFD. Each entry: the
    // ID as the body writes it, and the entry before it whose object it is (None: a new one).
    let mut ids = vec![b["object_id"].clone()];
    let cases: [(&str, Option<usize>); 10] = [
        (r#"s1\ud801"#, None),
        (r#"s1\udc00"#, None),
        (r#"s1\ufffd"#, None),
        // The character written as itself is the same ID as its escape.
        ("s1\u{FFFD}", Some(3)),
        (r#"s1\\uD800"#, None),
        (r#"s1\\ud800"#, None),
        (r#"\ud800\\uD800"#, None),
        (r#"\\uD800\ud800"#, None),
        // A backslash written as `\u005C` is the same backslash, beside a half or not.
        (r#"s1\u005CuD800"#, Some(5)),
        (r#"\u005cuD800\ud800"#, Some(8)),
    ];
    for (id, same_as) in cases {
        let body = format!(r#"{{"type": "t", "data": {{"id": "{id}", "title": "x"}}}}"#);
        let (s, other) = app.post_raw(&path, body.clone().into_bytes(), &headers).await;
        let status = if same_as.is_some() { "duplicate" } else { "created" };
        assert_eq!((s, other["status"].as_str()), (200, Some(status)), "{id}: {other}");
        match same_as {
            None => assert!(!ids.contains(&other["object_id"]), "{id}: {other}"),
            Some(i) => assert_eq!(other["object_id"], ids[i], "{id}: {other}"),
        }
        ids.push(other["object_id"].clone());
        let (_, again) = app.post_raw(&path, body.into_bytes(), &headers).await;
        assert_eq!((again["status"].as_str(), &again["object_id"]), (Some("duplicate"), &other["object_id"]), "{id}");
    }
    // A value without a half (U+FFFD and a backslash, say) is one key, whether or not its
    // body holds a half elsewhere.
    let plain = br#"{"type": "t", "data": {"id": "s4\ufffd\\x", "title": "x"}}"#;
    let beside = br#"{"type": "t", "data": {"id": "s4\ufffd\\x", "title": "cut \ud83d"}}"#;
    let (_, first) = app.post_raw(&path, plain.to_vec(), &headers).await;
    assert_eq!(first["status"], "created", "{first}");
    let (_, again) = app.post_raw(&path, beside.to_vec(), &headers).await;
    assert_eq!((again["status"].as_str(), &again["object_id"]), (Some("duplicate"), &first["object_id"]), "{again}");
    // A body malformed for another reason is still a 400, which names that reason.
    let (s, b) = app.post_raw(&path, br#"{"data": {"id": "s2\ud800",}}"#.to_vec(), &headers).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("malformed_json")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("trailing comma at line 1 column 28"), "{b}");
}

/// The `object_id` of a `buffered` answer: a GET says it is buffered and when it flushes;
/// a DELETE takes it out of the buffer, so it never becomes an object (its dedup key stays).
#[tokio::test]
async fn a_buffered_object_can_be_asked_about_and_deleted() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id",
        "batching": {"mode": "count", "max_batch_size": 2, "auto_submit": true}});
    let (bucket, secret) = bucket_with_adapter(&app, "buffered", json!({}), adapter).await;
    let s = Some(secret.as_str());
    let (_, a) = ingest(&app, &bucket, s, &json!({"id": "a"})).await;
    assert_eq!(a["status"], "buffered", "{a}");
    let oid = a["object_id"].as_str().unwrap();
    let (st, b) = app.get(&format!("/v1/buckets/{bucket}/objects/{oid}")).await;
    assert_eq!(st, 404, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("is buffered"), "{b}");
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0, 204);
    let (st, b) = app.get(&format!("/v1/buckets/{bucket}/objects/{oid}")).await;
    assert_eq!(st, 404);
    assert!(b["error"]["message"].as_str().unwrap().contains("not found"), "{b}");
    assert_eq!(status(&app, &bucket).await["events_buffered"], 0);
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0, 404);
    // Its key is still known; the next two events fill a batch without it.
    assert_eq!(ingest(&app, &bucket, s, &json!({"id": "a"})).await.1["status"], "duplicate");
    for id in ["b", "c"] {
        assert_eq!(ingest(&app, &bucket, s, &json!({"id": id})).await.1["status"], "buffered");
    }
    let got = objects(&app, &bucket).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|o| o["object_id"] != oid), "{got:?}");
}

/// Bodies on the keyless routes are charged to `server.max_upstream_body_memory_mb` as they
/// arrive: while a slow sender holds most of it, another large body gets 503 (upstreams
/// retry) instead of more memory; small ones still pass, and the share comes back when the
/// slow sender goes away.
#[tokio::test]
async fn slow_large_upstream_bodies_cannot_take_unbounded_memory() {
    use tokio::io::AsyncWriteExt;
    let opts = Options { server_toml: "max_upstream_body_memory_mb = 1\n".into(), ..Options::default() };
    let app = TestApp::start_with(opts).await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "budget", json!({}), adapter).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    // Declares 1 MiB, sends 300 KiB, then stalls (with the right secret: a request its head
    // already refuses never has its body read, see the next test).
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: {secret}\r\nContent-Length: 1048576\r\n\r\n");
    slow.write_all(head.as_bytes()).await.unwrap();
    // A body is charged by the buffer holding it (grown by doubling): 300 KiB take 512 KiB,
    // half the budget; a 600 KiB body would need 1 MiB.
    slow.write_all(&vec![b' '; 300 << 10]).await.unwrap();
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(600 << 10));
    let headers = [("x-webhook-secret", secret.as_str())];
    let status_of = |body: String| {
        let rb = app.client.post(app.url(&path)).header("x-webhook-secret", secret.as_str()).body(body);
        async move {
            let r = rb.send().await.ok()?;
            let close = r.headers().get("connection").is_some_and(|v| v == "close");
            Some((r.status().as_u16(), close))
        }
    };
    // The 503 closes the connection and says so, else the client would send its next request
    // on a connection that is closing (which failed). Sent by hand: past the point where it is
    // refused (the buffer growing from 512 KiB), the sender pauses, then sends the rest, and
    // only then reads. The rest must still be read by the daemon, and the answer follow: a
    // daemon that answered and closed at once would refuse the rest with a reset (the write
    // fails), and a client still sending when the reset comes can lose the answer.
    // Meanwhile, in the sender's pause, a body needing the 512 KiB the refused one held is
    // taken: the refused body's share went back at the refusal, not after its rest was read.
    let medium = format!("{{\"pad\": \"{}\"}}", "x".repeat(400 << 10));
    let refused_while_sending = || {
        let in_the_pause = status_of(medium.clone());
        let (addr, body) = (app.addr, big.clone());
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nX-Webhook-Secret: {secret}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        async move {
            use tokio::io::AsyncReadExt;
            let mut conn = tokio::net::TcpStream::connect(addr).await.ok()?;
            let (first, rest) = body.as_bytes().split_at(520 << 10);
            let sent = async {
                conn.write_all(head.as_bytes()).await?;
                conn.write_all(first).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                let taken = in_the_pause.await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                // In pieces: a write to a connection the peer has closed succeeds once, the
                // next fails.
                for piece in rest.chunks(4 << 10) {
                    conn.write_all(piece).await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok::<_, std::io::Error>(taken)
            };
            let sent = tokio::time::timeout(Duration::from_secs(5), sent).await;
            let mut answer = Vec::new();
            let ended = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer)).await;
            let head = String::from_utf8_lossy(&answer).to_ascii_lowercase();
            let refused = head.starts_with("http/1.1 503") && head.contains("\r\nconnection: close\r\n");
            Some(refused && matches!(sent, Ok(Ok(Some((200, false))))) && matches!(ended, Ok(Ok(_))))
        }
    };
    let refused = eventually(Duration::from_secs(10), || async { refused_while_sending().await == Some(true) }).await;
    assert!(refused, "a second large body was not refused (503, Connection: close) while the budget was held");
    // An HTTP client that writes the whole body before it reads gets the 503 too, every time:
    // the rest of a refused body is read and dropped before the answer, so the close does not
    // reset the connection under it (it once did, and the client saw a transport error).
    for attempt in 0..3 {
        assert_eq!(status_of(big.clone()).await, Some((503, true)), "attempt {attempt}");
    }
    let (s, b) = app.post_raw(&path, r#"{"small": true}"#, &headers).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    drop(slow);
    let back =
        eventually(Duration::from_secs(10), || async { status_of(big.clone()).await.map(|r| r.0) == Some(200) }).await;
    assert!(back, "the stalled sender's share did not come back");
    let m = app.metrics().await;
    assert!(metric_value(&m, "hookline_http_upstream_bodies_refused_total", &[]) >= 1.0);
}

/// A request to an upstream route that its head already refuses (an unknown bucket or Mux
/// connection, a wrong or missing secret) is answered without its body being read: anonymous
/// senders that stall mid-body cannot spend the upstream body budget, which an authentic
/// sender then needs whole. Nor can bodies sent to the other keyless routes (the probes,
/// `/metrics`) or with another method than POST to the upstream ones: none is read past
/// 64 KiB, nor charged.
#[tokio::test]
async fn requests_refused_by_their_head_take_no_upstream_body_budget() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opts = Options { server_toml: "max_upstream_body_memory_mb = 1\n".into(), ..Options::default() };
    let app = TestApp::start_with(opts).await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "budget", json!({}), adapter).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let targets = [
        ("POST", "/v1/buckets/bkt_nosuchbucket/source-adapter/ingest".to_string(), "", 404),
        ("POST", path.clone(), "X-Webhook-Secret: not-the-secret\r\n", 401),
        ("POST", path.clone(), "", 401),
        ("POST", "/v1/webhooks/mux/conn_nosuchconnection".to_string(), "Mux-Signature: t=1,v1=00\r\n", 404),
    ];
    let bodyless = [
        ("GET", "/healthz".to_string(), "", 200),
        ("GET", "/metrics".to_string(), "", 200),
        ("PUT", path.clone(), &*format!("X-Webhook-Secret: {secret}\r\n"), 405),
        ("GET", "/v1/webhooks/mux/conn_nosuchconnection".to_string(), "Mux-Signature: t=1,v1=00\r\n", 405),
    ];
    // 24 senders to the upstream routes and 16 to the others declare 1 MiB, send 60 KiB (a
    // 64 KiB buffer each: 2.5 MiB in all, were they charged), then stall.
    let mut stalled = Vec::new();
    for i in 0..40 {
        let (method, target, header, expected) =
            if i < 24 { &targets[i % targets.len()] } else { &bodyless[i % bodyless.len()] };
        let mut c = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n{header}Content-Length: 1048576\r\n\r\n");
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&vec![b' '; 60 << 10]).await.unwrap();
        stalled.push((c, *expected));
    }
    // Meanwhile an authentic 600 KiB body (a 1 MiB buffer: the whole budget) is taken.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(600 << 10));
    let (s, b) = app.post_raw(&path, big, &[("x-webhook-secret", secret.as_str())]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    // Each stalled sender has its answer, and is told the connection closes.
    for (mut c, expected) in stalled {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer)).await;
        assert!(read.is_ok_and(|r| r.is_ok()), "no answer before the connection closed");
        let text = String::from_utf8_lossy(&answer).to_lowercase();
        assert!(text.starts_with(&format!("http/1.1 {expected} ")), "{text}");
        assert!(text.contains("connection: close"), "{text}");
    }
    let m = app.metrics().await;
    assert_eq!(metric_value(&m, "hookline_http_upstream_bodies_refused_total", &[]), 0.0);
    assert_eq!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", "unauthorized")]), 12.0);
}

/// A path copied from the docs with its placeholder left in (`{bucket_id}`, which an HTTP
/// client sends as `%7Bbucket_id%7D`) is a 404 that shows the placeholder as written and
/// says what to do, on the ingest route and the admin API alike.
#[tokio::test]
async fn a_placeholder_left_in_a_path_is_named_in_the_404() {
    let app = TestApp::start().await;
    let hint = "(the path holds a placeholder from the docs: put the real ID in its place)";
    let (s, b) = app.post_raw("/v1/buckets/%7Bbucket_id%7D/source-adapter/ingest", "{}", &[]).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(b["error"]["message"], format!("bucket {{bucket_id}} not found {hint}"), "{b}");
    let (s, b) = app.get("/v1/buckets/%7Bbucket_id%7D/objects").await;
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(s, 404, "{b}");
    assert!(message.starts_with("bucket {bucket_id} not found") && message.ends_with(hint), "{b}");
    let (s, b) = app.get("/v1/buckets/bkt_nosuchbucket/objects").await;
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(s == 404 && message.starts_with("bucket bkt_nosuchbucket not found") && !message.contains(hint), "{b}");
}

/// A batch buffer flushes early once it holds 16 MiB, whatever max_batch_size says: one
/// flush is one atomic write held in memory, and 1,000 events of 1 MiB made a 1.9 GB one.
#[tokio::test]
async fn a_buffer_of_large_events_flushes_by_its_size() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "field_mapping": {"pad": "pad"},
        "batching": {"mode": "count", "max_batch_size": 1000, "auto_submit": true}});
    let (bucket, secret) = bucket_with_adapter(&app, "large", json!({"pad": {"type": "string"}}), adapter).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let pad = "x".repeat(600 << 10);
    let mut flushed_at = None;
    for i in 0..40 {
        let body = json!({"n": i, "pad": pad}).to_string();
        let (s, b) = app.post_raw(&path, body, &[("x-webhook-secret", secret.as_str())]).await;
        assert_eq!((s, b["status"].as_str()), (200, Some("buffered")), "{b}");
        if status(&app, &bucket).await["events_buffered"] == 0 {
            flushed_at = Some(i + 1);
            break;
        }
    }
    // 16 MiB of 600 KiB events: the 28th fills it.
    assert_eq!(flushed_at, Some(28), "the buffer did not flush by its size");
    assert_eq!(objects(&app, &bucket).await.len(), 28);
    let m = app.metrics().await;
    assert_eq!(metric_value(&m, "hookline_ingest_flushes_total", &[("trigger", "bytes")]), 1.0);
}

/// Values over 4 KiB are stored in pieces (store/pieces.rs): deleting an object, deleting a
/// buffered event and flushing a batch leave none behind, and the live ones read back whole
/// after a restart. The pieces in the stopped store are exactly those of its live values.
/// A restart comes between the writes and the deletes: a key written and deleted within one
/// overlay round (store/overlay.rs) never reaches sled, and its pieces would not be tested.
#[tokio::test]
async fn large_objects_leave_no_pieces_behind() {
    let mut app = TestApp::start().await;
    let properties = json!({"pad": {"type": "string"}});
    let adapter = |mode: Value| json!({"adapter_type": "generic_webhook", "dedup_key": "id", "field_mapping": {"pad": "pad"}, "batching": mode});
    let (now, now_secret) =
        bucket_with_adapter(&app, "now", properties.clone(), adapter(json!({"mode": "immediate"}))).await;
    let counted = json!({"mode": "count", "max_batch_size": 3, "auto_submit": true});
    let (later, later_secret) = bucket_with_adapter(&app, "later", properties, adapter(counted)).await;
    let pad = |kib: usize, c: char| c.to_string().repeat(kib << 10);
    async fn send(app: &TestApp, bucket: &str, secret: &str, id: &str, pad: String, status: &str) -> String {
        let (s, b) = ingest(app, bucket, Some(secret), &json!({"id": id, "pad": pad})).await;
        assert_eq!((s, b["status"].as_str()), (200, Some(status)), "{id}: {b}");
        b["object_id"].as_str().unwrap().to_string()
    }
    let a1 = send(&app, &now, &now_secret, "a1", pad(50, 'a'), "created").await;
    let a2 = send(&app, &now, &now_secret, "a2", pad(30, 'b'), "created").await;
    let b0 = send(&app, &later, &later_secret, "b0", pad(20, 'c'), "buffered").await;
    send(&app, &later, &later_secret, "b1", pad(20, 'd'), "buffered").await;
    assert_eq!(app.stop(), Some(0), "a clean stop");
    app.start_again().await;

    assert_eq!(app.delete(&format!("/v1/buckets/{now}/objects/{a1}")).await.0, 204);
    assert_eq!(app.delete(&format!("/v1/buckets/{later}/objects/{b0}")).await.0, 204);
    // b1 (from before the restart), b2 and b3 make the batch.
    send(&app, &later, &later_secret, "b2", pad(20, 'e'), "buffered").await;
    send(&app, &later, &later_secret, "b3", pad(20, 'f'), "buffered").await;
    assert_eq!(objects(&app, &later).await.len(), 3, "the count batch flushed");
    assert_eq!(app.stop(), Some(0), "a clean stop");
    {
        let backend = app.stopped_sled().await;
        let mut live = 0;
        let mut expected = 0;
        for v in stored_values(&backend) {
            if v.len() > hookline::store::PIECE {
                live += 1;
                expected += v.len().div_ceil(hookline::store::PIECE);
            }
        }
        // a2 and the batch's three objects; nothing of a1, b0 or the buffer.
        assert_eq!(live, 4, "long values in the store");
        assert_eq!(backend.piece_count(), expected, "pieces beyond those of the live values");
    }
    app.start_again().await;
    let (s, got) = app.get(&format!("/v1/buckets/{now}/objects/{a2}")).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["metadata"]["pad"].as_str(), Some(pad(30, 'b').as_str()), "a2 read back whole");
    assert_eq!(app.get(&format!("/v1/buckets/{now}/objects/{a1}")).await.0, 404);
    let mut pads: Vec<String> =
        objects(&app, &later).await.iter().map(|o| o["metadata"]["pad"].as_str().unwrap().to_string()).collect();
    pads.sort();
    assert_eq!(pads, vec![pad(20, 'd'), pad(20, 'e'), pad(20, 'f')], "the flushed objects read back whole");
}

/// Every value of a stopped daemon's store, whatever its keyspace, made whole.
fn stored_values(backend: &hookline::store::SledBackend) -> Vec<Vec<u8>> {
    use hookline::store::Backend;
    let mut found = Vec::new();
    backend
        .scan_from(b"", b"", &mut |_, v| {
            found.push(v.to_vec());
            Ok(true)
        })
        .expect("scan the store");
    found
}

/// A filter that can never match would acknowledge every event as ignored (the upstream
/// never retries): Supabase types are checked, and a Mux type Mux does not send is warned of.
#[tokio::test]
async fn event_filters_that_cannot_match_are_refused_or_warned() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("filters", json!({})).await;
    let path = format!("/v1/buckets/{bucket}");
    let patch = |adapter: Value| app.patch(&path, json!({ "source_adapter": adapter }));
    for bad in [json!(["insert"]), json!(["INSERT", "BOGUS"])] {
        let (s, b) = patch(json!({"adapter_type": "supabase", "event_filter": {"event_types": bad}})).await;
        assert_eq!(s, 422, "{b}");
        assert_eq!(b["error"]["field"], "source_adapter.event_filter.event_types", "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("INSERT, UPDATE or DELETE"), "{b}");
    }
    let (s, b) =
        patch(json!({"adapter_type": "supabase", "event_filter": {"event_types": ["INSERT", "DELETE"]}})).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("warnings").is_none(), "{b}");

    let (s, b) = patch(
        json!({"adapter_type": "mux", "event_filter": {"event_types": ["video.asset.redy", "video.asset.ready"]}}),
    )
    .await;
    assert_eq!(s, 200, "a type Mux may add later is allowed: {b}");
    // (These adapters have no signing secret either, which is warned of too.)
    let filter_warnings = |b: &Value| -> Vec<String> {
        let all = b["warnings"].as_array().cloned().unwrap_or_default();
        let all: Vec<String> = all.iter().map(|w| w.as_str().unwrap().to_string()).collect();
        assert!(all.iter().any(|w| w.contains("webhook_signing_secret")), "{b}");
        all.into_iter().filter(|w| w.contains("event_filter")).collect()
    };
    let warnings = filter_warnings(&b);
    assert_eq!(warnings.len(), 1, "{b}");
    assert!(warnings[0].contains("video.asset.redy"), "{b}");
    let (s, b) = patch(json!({"adapter_type": "mux", "event_filter": {"event_types": ["video.asset.ready", "video.upload.asset_created"]}})).await;
    assert_eq!(s, 200, "{b}");
    assert!(filter_warnings(&b).is_empty(), "{b}");
}

/// A batching setting the mode never reads (a count batch has no timer; `immediate` makes
/// no batches) is accepted, as a bucket's view may be sent back, but warned of; the defaults
/// and time_window's settings are not.
#[tokio::test]
async fn batching_settings_the_mode_ignores_are_warned_of() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("modes", json!({})).await;
    let path = format!("/v1/buckets/{bucket}");
    let warnings = |batching: Value| {
        let body = json!({"source_adapter": {"adapter_type": "generic_webhook", "batching": batching}});
        let (app, path) = (&app, &path);
        async move {
            let (s, b) = app.patch(path, body).await;
            assert_eq!(s, 200, "{b}");
            let all = b["warnings"].as_array().cloned().unwrap_or_default();
            all.iter().map(|w| w.as_str().unwrap().to_string()).collect::<Vec<_>>()
        }
    };
    let w = warnings(json!({"mode": "count", "window_seconds": 10})).await;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("source_adapter.batching.window_seconds has no effect in mode count"), "{w:?}");
    let w = warnings(json!({"mode": "immediate", "max_batch_size": 5, "auto_submit": false})).await;
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w.iter().all(|w| w.contains("no effect in mode immediate")), "{w:?}");
    for quiet in [
        json!({"mode": "count", "max_batch_size": 5, "auto_submit": false}),
        json!({"mode": "time_window", "window_seconds": 10, "max_batch_size": 5}),
        json!({"mode": "immediate", "window_seconds": 30, "max_batch_size": 100, "auto_submit": true}),
    ] {
        assert_eq!(warnings(quiet.clone()).await, Vec::<String>::new(), "{quiet}");
    }
}

/// A configuration that would refuse every event is refused instead: a required property
/// that neither field_mapping nor the blob fills. A writeback turned off needs nothing else.
#[tokio::test]
async fn a_required_property_nothing_fills_is_refused_and_writeback_can_just_be_off() {
    let app = TestApp::start().await;
    let schema = json!({"title": {"type": "string", "required": true}, "video": {"type": "video", "required": true}});
    let bucket = app.create_bucket("required", schema).await;
    let path = format!("/v1/buckets/{bucket}");
    let patch = |adapter: Value| app.patch(&path, json!({ "source_adapter": adapter }));
    let blob = json!({"file_field": "url", "blob_type": "video"});
    for (adapter, unfilled) in [
        (json!({"adapter_type": "generic_webhook", "blob_source": blob}), "title"),
        (json!({"adapter_type": "generic_webhook", "field_mapping": {"t": "title"}}), "video"),
    ] {
        let (s, b) = patch(adapter.clone()).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.field_mapping")), "{adapter}: {b}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("{unfilled:?}")) && msg.contains("filled by nothing"), "{msg}");
    }
    // A blob_source without a file field could never find its file for a generic adapter
    // (there is no default one): refused as such.
    let no_field = json!({"adapter_type": "generic_webhook", "field_mapping": {"t": "title"}, "blob_source": {"blob_type": "video"}});
    let (s, b) = patch(no_field).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.blob_source.file_field")), "{b}");
    // Filled by a mapping and the blob; Mux's default blob (its playback URL) fills `video`.
    let (s, b) =
        patch(json!({"adapter_type": "generic_webhook", "field_mapping": {"t": "title"}, "blob_source": blob})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = patch(json!({"adapter_type": "mux", "field_mapping": {"data.passthrough": "title"}})).await;
    assert_eq!(s, 200, "{b}");
    let off_bucket = app.create_bucket("off", json!({"title": {"type": "string"}})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{off_bucket}"),
            json!({"source_adapter": {"adapter_type": "generic_webhook", "field_mapping": {"t": "title"},
                "writeback": {"enabled": false}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["source_adapter"]["writeback"]["enabled"], false, "{b}");
}

/// Numeric dedup values: a number and its decimal string are one key, but a number JSON
/// parsing cannot keep exactly (past 64 bits, or with a fraction) is refused with a 422 that
/// says so, rather than rounded into another event's key and dropped as its duplicate.
#[tokio::test]
async fn numeric_dedup_keys_are_exact_or_refused() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "data.id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "numeric", json!({"n": {"type": "int"}}), adapter).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let headers = [("x-webhook-secret", secret.as_str())];
    let send = |body: &'static str| app.post_raw(&path, body, &headers);

    let (s, b) = send(r#"{"data": {"id": 7.0}}"#).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    let (s, b) = send(r#"{"data": {"id": "7"}}"#).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("duplicate")), "7.0, 7 and \"7\" are one key: {b}");
    let (s, b) = send(r#"{"data": {"id": 18446744073709551615}}"#).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "u64::MAX is exact: {b}");
    for big in [r#"{"data": {"id": 12345678901234567890123}}"#, r#"{"data": {"id": 12345678901234567890124}}"#] {
        let (s, b) = send(big).await;
        assert_eq!(s, 422, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("send it as a string"), "{b}");
    }
    let (s, b) = send(r#"{"data": {"id": 1.5}}"#).await;
    assert_eq!(s, 422, "{b}");
    // Written as a float past 2^53 it is rounded too, and the message says so.
    let (s, b) = send(r#"{"data": {"id": 9007199254740993.0}}"#).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("past 2^53"), "{b}");
    // As strings, the two big IDs are two events.
    for big in [r#"{"data": {"id": "12345678901234567890123"}}"#, r#"{"data": {"id": "12345678901234567890124"}}"#] {
        assert_eq!(send(big).await.1["status"], "created");
    }
    assert_eq!(objects(&app, &bucket).await.len(), 4);
}

/// The status's `last_error` belongs to an adapter type: a PATCH to another type drops it, a
/// PATCH of the same type keeps it (its `last_error_at` says how old it is).
#[tokio::test]
async fn another_adapter_type_starts_without_the_old_last_error() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "data.id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "switch", json!({}), adapter).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let (s, b) = app.post_raw(&path, r#"{"data": {}}"#, &[("x-webhook-secret", secret.as_str())]).await;
    assert_eq!(s, 422, "{b}");
    let bucket_path = format!("/v1/buckets/{bucket}");
    let patch = |adapter: Value| app.call(Method::PATCH, &bucket_path, Some(json!({"source_adapter": adapter})));
    let (s, b) = patch(json!({"adapter_type": "generic_webhook", "dedup_key": "data.id",
                              "batching": {"mode": "count", "max_batch_size": 10}}))
    .await;
    assert_eq!(s, 200, "{b}");
    let st = status(&app, &bucket).await;
    assert!(st["last_error"].as_str().unwrap().contains("dedup_key"), "same type: kept: {st}");
    let (s, b) = patch(json!({"adapter_type": "supabase", "batching": {"mode": "immediate"}})).await;
    assert_eq!(s, 200, "{b}");
    let st = status(&app, &bucket).await;
    assert_eq!((&st["last_error"], &st["last_error_at"]), (&Value::Null, &Value::Null), "{st}");
    assert_eq!(st["events_failed_24h"], 1, "the counters stay: {st}");
}

/// A refused event whose message quotes a long value of it (serde's error for a Supabase
/// `record` that is a string quotes the string whole) leaves a `last_error` cut as the 422's
/// message is: the stats record holding it is written again with every later ingest.
#[tokio::test]
async fn a_long_value_in_a_refused_event_is_cut_in_last_error() {
    let mut app = TestApp::start().await;
    let adapter = json!({"adapter_type": "supabase", "field_mapping": {"record.title": "title"},
                         "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "long-error", json!({"title": {"type": "string"}}), adapter).await;
    let huge = "x".repeat(900 * 1024);
    let event = json!({"type": "INSERT", "table": "t", "schema": "public", "record": huge, "old_record": null});
    let (s, b) = ingest(&app, &bucket, Some(&secret), &event).await;
    assert_eq!(s, 422, "{b}");
    let row = json!({"type": "INSERT", "table": "t", "schema": "public", "record": {"id": 1, "title": "t"},
                     "old_record": null});
    let (s, b) = ingest(&app, &bucket, Some(&secret), &row).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    let st = status(&app, &bucket).await;
    let last_error = st["last_error"].as_str().unwrap_or_default();
    assert!(last_error.starts_with("invalid type") || last_error.contains("record"), "{last_error:.200}");
    assert!(last_error.ends_with('…') && last_error.chars().count() <= 501, "{} chars", last_error.len());
    let backend = crate::support::stop_and_open(&mut app).await;
    let stored: usize = crate::support::stored_entries(&backend, "stats", &bucket).iter().map(|(_, v)| v.len()).sum();
    assert!(stored > 0 && stored < 8 * 1024, "the stats record is {stored} bytes");
}

/// An int property takes an integral float (`5.0`, as JavaScript and many ORMs send it) and
/// stores it as `5`; a fraction or a number past 64 bits is still refused.
#[tokio::test]
async fn int_properties_take_integral_floats() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "field_mapping": {"data.n": "n"},
                         "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "ints", json!({"n": {"type": "int"}}), adapter).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let headers = [("x-webhook-secret", secret.as_str())];
    let (s, b) = app.post_raw(&path, r#"{"data": {"n": 5.0}}"#, &headers).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    for refused in [r#"{"data": {"n": 5.5}}"#, r#"{"data": {"n": 1e300}}"#] {
        let (s, b) = app.post_raw(&path, refused, &headers).await;
        assert_eq!(s, 422, "{refused}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("bucket_schema wants int"), "{b}");
    }
    let stored = objects(&app, &bucket).await;
    assert_eq!(stored.len(), 1);
    let n = &stored[0]["metadata"]["n"];
    assert!(n.is_i64() && n.as_i64() == Some(5), "stored as an integer: {n}");
}

#[tokio::test]
async fn the_same_event_five_times_concurrently_makes_one_object() {
    let app = TestApp::start().await;
    for mode in ["immediate", "time_window"] {
        let (bucket, secret) =
            bucket_with_adapter(&app, &format!("dup-{mode}"), schema(), full_adapter(json!({"mode": mode}))).await;
        let ev = mux_like_event("same", "video.asset.ready");
        let results = futures::future::join_all((0..5).map(|_| ingest(&app, &bucket, Some(&secret), &ev))).await;
        let ids: std::collections::BTreeSet<String> =
            results.iter().map(|(_, b)| b["object_id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids.len(), 1, "{results:?}");
        let statuses: Vec<&str> = results.iter().map(|(_, b)| b["status"].as_str().unwrap()).collect();
        assert_eq!(statuses.iter().filter(|s| **s == "duplicate").count(), 4, "{statuses:?}");
        assert!(results.iter().all(|(s, _)| *s == 200));
        if mode == "immediate" {
            assert_eq!(objects(&app, &bucket).await.len(), 1);
        } else {
            assert_eq!(status(&app, &bucket).await["events_buffered"], 1);
        }
    }
}

#[tokio::test]
async fn wrong_or_missing_secret_is_401_and_stores_nothing() {
    let app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(&app, "sec", schema(), full_adapter(json!({"mode": "immediate"}))).await;
    let ev = mux_like_event("s1", "video.asset.ready");
    let mut wrong = secret.clone();
    wrong.replace_range(0..1, if secret.starts_with('0') { "1" } else { "0" });
    for (secret, why) in [(None, "missing"), (Some(wrong.as_str()), "wrong"), (Some(""), "empty")] {
        let (s, b) = ingest(&app, &bucket, secret, &ev).await;
        assert_eq!(s, 401, "{why}: {b}");
        assert_eq!(b["error"]["code"], "unauthorized");
    }
    assert!(objects(&app, &bucket).await.is_empty());
    let st = status(&app, &bucket).await;
    assert_eq!((st["events_processed_24h"].as_u64(), st["events_failed_24h"].as_u64()), (Some(0), Some(0)));
    // The rejected deliveries were not recorded for dedup: the real one creates.
    assert_eq!(ingest(&app, &bucket, Some(&secret), &ev).await.1["status"], "created");
    let m = app.metrics().await;
    assert!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", "unauthorized")]) >= 3.0);
}

/// An adapter's window ticker runs only while a window is open (idle buckets wake nothing):
/// a window open across a restart and one opened after a flush closed the last both flush
/// when due, by the ticker (`trigger="window"`), not by the restart's overdue check.
#[tokio::test]
async fn a_window_open_across_a_restart_or_after_a_flush_flushes_when_due() {
    let mut app = TestApp::start().await;
    let adapter = full_adapter(json!({"mode": "time_window", "window_seconds": 5, "max_batch_size": 100}));
    let (bucket, secret) = bucket_with_adapter(&app, "tw-tick", schema(), adapter).await;
    let window_flushes = |m: &str| metric_value(m, "hookline_ingest_flushes_total", &[("trigger", "window")]);
    let (s, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event("t0", "video.asset.ready")).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("buffered")), "{b}");
    app.restart().await;
    assert!(eventually(Duration::from_secs(15), || async { objects(&app, &bucket).await.len() == 1 }).await);
    assert_eq!(window_flushes(&app.metrics().await), 1.0, "flushed by the restarted actor's ticker");
    // The window is closed; the next event opens another, which flushes as well.
    let (s, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event("t1", "video.asset.ready")).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("buffered")), "{b}");
    assert!(eventually(Duration::from_secs(15), || async { objects(&app, &bucket).await.len() == 2 }).await);
    assert!(eventually(Duration::from_secs(5), || async { window_flushes(&app.metrics().await) == 2.0 }).await);
}

#[tokio::test]
async fn time_window_flushes_after_its_window_into_a_completed_batch() {
    let app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(
        &app,
        "tw",
        schema(),
        full_adapter(json!({"mode": "time_window", "window_seconds": 5, "max_batch_size": 100})),
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event(&format!("w{i}"), "video.asset.ready")).await;
        assert_eq!((s, b["status"].as_str(), b["handled"].as_bool()), (200, Some("buffered"), Some(true)));
        ids.push(b["object_id"].as_str().unwrap().to_string());
    }
    // Before the flush: buffered, and a duplicate already names the future object.
    assert_eq!(status(&app, &bucket).await["events_buffered"], 3);
    assert!(objects(&app, &bucket).await.is_empty());
    let (_, dup) = ingest(&app, &bucket, Some(&secret), &mux_like_event("w1", "video.asset.ready")).await;
    assert_eq!(dup["status"], "duplicate");
    assert_eq!(dup["object_id"], ids[1].as_str());

    assert!(eventually(Duration::from_secs(15), || async { objects(&app, &bucket).await.len() == 3 }).await);
    let got: Vec<String> =
        objects(&app, &bucket).await.iter().map(|o| o["object_id"].as_str().unwrap().to_string()).collect();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want, "objects keep the IDs given on acceptance");
    let st = status(&app, &bucket).await;
    assert_eq!(st["events_buffered"], 0);
    assert!(st["last_flush_at"].as_str().unwrap().ends_with('Z'));
    let (_, batches) = app.get(&format!("/v1/buckets/{bucket}/batches")).await;
    let batches = batches["results"].as_array().unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0]["status"], "completed", "auto_submit defaults to true");
    assert_eq!(batches[0]["object_ids"].as_array().unwrap().len(), 3);
    assert!(batches[0]["submitted_at"].is_string() && batches[0]["completed_at"].is_string());
    let bid = batches[0]["batch_id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/v1/buckets/{bucket}/batches/{bid}")).await.1["batch_id"], bid);
    // The counters move once the flush's commit is acknowledged, a moment after the objects
    // become readable.
    let counted = eventually(Duration::from_secs(10), || async {
        let m = app.metrics().await;
        metric_value(&m, "hookline_ingest_flushes_total", &[("trigger", "window")]) >= 1.0
            && metric_value(&m, "hookline_events_published_total", &[("event_type", "batch.completed")]) >= 1.0
    })
    .await;
    assert!(counted, "flush and batch.completed not counted");
}

/// A PATCH that lowers a time_window's max_batch_size to or below what is buffered flushes
/// at once, into batches of the new size, as an ingest reaching it would (not a window later).
#[tokio::test]
async fn a_smaller_max_batch_size_flushes_a_window_at_once() {
    let app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(
        &app,
        "tw-shrink",
        schema(),
        full_adapter(json!({"mode": "time_window", "window_seconds": 300, "max_batch_size": 100})),
    )
    .await;
    for i in 0..3 {
        let (s, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event(&format!("s{i}"), "video.asset.ready")).await;
        assert_eq!((s, b["status"].as_str()), (200, Some("buffered")), "{b}");
    }
    let shrunk = full_adapter(json!({"mode": "time_window", "window_seconds": 300, "max_batch_size": 2}));
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({ "source_adapter": shrunk })).await;
    assert_eq!(s, 200, "{b}");
    let flushed = eventually(Duration::from_secs(10), || async { objects(&app, &bucket).await.len() == 3 }).await;
    assert!(flushed, "{}", status(&app, &bucket).await);
    assert_eq!(status(&app, &bucket).await["events_buffered"], 0);
    let (_, batches) = app.get(&format!("/v1/buckets/{bucket}/batches")).await;
    let mut sizes: Vec<usize> =
        batches["results"].as_array().unwrap().iter().map(|b| b["object_ids"].as_array().unwrap().len()).collect();
    sizes.sort();
    assert_eq!(sizes, vec![1, 2], "{batches}");
}

/// `POST …/source-adapter/flush` turns a count source's last partial batch into objects at
/// once (batches of at most max_batch_size), durably; with nothing buffered it makes none.
#[tokio::test]
async fn a_partial_batch_can_be_flushed_by_hand() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id",
        "batching": {"mode": "count", "max_batch_size": 2, "auto_submit": true}});
    let (bucket, secret) = bucket_with_adapter(&app, "partial", json!({}), adapter).await;
    let flush = format!("/v1/buckets/{bucket}/source-adapter/flush");
    let mut buffered = Vec::new();
    for id in ["a", "b", "c"] {
        let (_, b) = ingest(&app, &bucket, Some(&secret), &json!({"id": id})).await;
        buffered.push(b["object_id"].as_str().unwrap().to_string());
    }
    // a and b filled a batch; c waits.
    assert_eq!(objects(&app, &bucket).await.len(), 2);
    assert_eq!(status(&app, &bucket).await["events_buffered"], 1);
    let (s, b) = app.post(&flush, json!({})).await;
    assert_eq!(s, 200, "{b}");
    // Answered once on disk: a crash right after the answer loses nothing.
    let mut app = app;
    app.kill9();
    app.start_again().await;
    assert_eq!(b["objects"], 1, "{b}");
    let bid = b["batch_ids"][0].as_str().expect("the batch made").to_string();
    assert_eq!(b["batch_ids"].as_array().unwrap().len(), 1, "{b}");
    let (s, batch) = app.get(&format!("/v1/buckets/{bucket}/batches/{bid}")).await;
    assert_eq!(s, 200, "{batch}");
    assert_eq!(batch["object_ids"], json!([buffered[2]]), "{batch}");
    assert_eq!(batch["status"], "completed", "auto_submit applies: {batch}");
    let st = status(&app, &bucket).await;
    assert_eq!(st["events_buffered"], 0, "{st}");
    assert!(st["last_flush_at"].is_string(), "{st}");
    assert_eq!(objects(&app, &bucket).await.len(), 3);
    let (s, b) = app.post(&flush, json!({})).await;
    assert_eq!((s, &b), (200, &json!({"objects": 0, "batch_ids": []})));
    assert_eq!(ingest(&app, &bucket, Some(&secret), &json!({"id": "c"})).await.1["status"], "duplicate");
    assert_eq!(ingest(&app, &bucket, Some(&secret), &json!({"id": "d"})).await.1["status"], "buffered");
    assert_eq!(app.post(&flush, json!({})).await.1["objects"], 1);
    assert!(crate::support::metric_reaches(&app, "hookline_ingest_flushes_total", &[("trigger", "manual")], 1.0).await);
    // Errors: no adapter, no bucket, no key, another method.
    let plain = app.create_bucket("plain", json!({})).await;
    let (s, b) = app.post(&format!("/v1/buckets/{plain}/source-adapter/flush"), json!({})).await;
    assert_eq!(s, 404, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("has no source adapter"), "{b}");
    assert_eq!(app.post("/v1/buckets/bkt_nope/source-adapter/flush", json!({})).await.0, 404);
    assert_eq!(app.call_as(reqwest::Method::POST, &flush, Some(json!({})), None, None).await.0, 401);
    assert_eq!(app.get(&flush).await.0, 405);
}

/// A GET's status and body as text (for answers the test's JSON parser cannot take).
async fn get_text(app: &TestApp, path: &str) -> (u16, String) {
    let resp = app.client.get(app.url(path)).bearer_auth(&app.api_key).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// An event nested as deep as a request body may be (serde_json's limit: 127 levels, the
/// body included) is stored a level or more deeper, in its object, outbox entry or buffer
/// entry: all of them read back. Before, such an event stopped the outbox for every
/// webhook, made the object unlistable and the adapter unable to start after a restart.
#[tokio::test]
async fn events_nested_as_deep_as_a_body_may_be_read_back_everywhere() {
    let mut app = TestApp::start().await;
    let hook = crate::outbound_receiver::Receiver::start(200).await;
    let (s, w) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "deep", "event_types": ["object.created"],
                "channels": [{"channel": "webhook", "configs": {"url": hook.url("/hook")}}]}),
        )
        .await;
    assert_eq!(s, 201, "{w}");
    let props = json!({"j": {"type": "json"}, "t": {"type": "string"}});
    let mapping = json!({"jj": "j", "t": "t"});
    let now = json!({"adapter_type": "generic_webhook", "field_mapping": mapping, "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "deep", props.clone(), now).await;
    let later = json!({"adapter_type": "generic_webhook", "field_mapping": mapping,
        "batching": {"mode": "count", "max_batch_size": 2, "auto_submit": true}});
    let (buffering, buffer_secret) = bucket_with_adapter(&app, "deep-buffer", props, later).await;
    // {"jj": [[…]]}: 126 arrays in an object, the deepest body the parser takes.
    let deep = |arrays: usize| format!("{{\"jj\": {}{}}}", "[".repeat(arrays), "]".repeat(arrays));
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let (s, b) = app.post_raw(&path, deep(127), &[("x-webhook-secret", secret.as_str())]).await;
    assert_eq!(s, 400, "past the parser's limit: {b}");
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("request body nests arrays and objects deeper than 127 levels at line 1"), "{b}");
    let (s, b) = app.post_raw(&path, deep(126), &[("x-webhook-secret", secret.as_str())]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    let oid = b["object_id"].as_str().unwrap().to_string();
    // Read as text: the answers are deeper than the test's own JSON parser takes.
    let (s, o) = get_text(&app, &format!("/v1/buckets/{bucket}/objects/{oid}")).await;
    assert_eq!(s, 200, "{o}");
    assert!(o.contains(&"[".repeat(126)), "{o}");
    let (s, list) = get_text(&app, &format!("/v1/buckets/{bucket}/objects")).await;
    assert_eq!(s, 200, "{list}");
    assert!(list.contains(&oid), "{list}");
    // The outbox goes on: this event and the next are delivered.
    assert_eq!(ingest(&app, &bucket, Some(&secret), &json!({"t": "after"})).await.1["status"], "created");
    assert!(eventually(Duration::from_secs(15), || async { hook.count() >= 2 }).await, "{}", app.log());
    let buffered_path = format!("/v1/buckets/{buffering}/source-adapter/ingest");
    let (s, b) = app.post_raw(&buffered_path, deep(126), &[("x-webhook-secret", buffer_secret.as_str())]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("buffered")), "{b}");
    // The buffer is read back at start: the adapter runs, and its batch fills.
    app.kill9();
    app.start_again().await;
    assert_eq!(status(&app, &buffering).await["events_buffered"], 1);
    let r = ingest(&app, &buffering, Some(&buffer_secret), &json!({"t": "second"})).await;
    assert_eq!((r.0, r.1["status"].as_str()), (200, Some("buffered")), "{:?}", r.1);
    let (s, list) = get_text(&app, &format!("/v1/buckets/{buffering}/objects")).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list.matches("\"object_id\"").count(), 2, "{list}");
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0, 204);
    assert!(eventually(Duration::from_secs(15), || async { hook.count() >= 4 }).await, "{}", app.log());
}

/// An adapter that cannot start (here: a buffer entry damaged on disk) is `stopped` in its
/// status, and the status' `last_error` says why, not only the daemon log.
#[tokio::test]
async fn an_adapter_that_cannot_start_says_why_in_its_status() {
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "count", "max_batch_size": 5}});
    let (bucket, secret) = bucket_with_adapter(&app, "damaged", json!({}), adapter).await;
    let (_, b) = ingest(&app, &bucket, Some(&secret), &json!({"x": 1})).await;
    let oid = b["object_id"].as_str().unwrap().to_string();
    assert_eq!(app.stop(), Some(0));
    {
        let backend = app.stopped_sled().await;
        let mut damage = Batch::new();
        damage.put(Keyspace::BUFFER, &format!("{bucket}/{oid}"), &"not a buffer entry");
        backend.apply(&damage).unwrap();
        futures::executor::block_on(backend.flush()).unwrap();
    }
    app.start_again().await;
    let st = status(&app, &bucket).await;
    assert_eq!(st["actor"], "stopped", "{st}");
    let why = st["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("could not start at start-up") && why.contains("unreadable"), "{st}");
    assert_eq!(ingest(&app, &bucket, Some(&secret), &json!({"x": 2})).await.0, 503);
}

#[tokio::test]
async fn count_flushes_at_size_and_waits_for_submit() {
    let app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(
        &app,
        "cnt",
        schema(),
        full_adapter(json!({"mode": "count", "max_batch_size": 3, "auto_submit": false})),
    )
    .await;
    for i in 0..2 {
        let (_, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event(&format!("c{i}"), "video.asset.ready")).await;
        assert_eq!(b["status"], "buffered");
    }
    assert!(objects(&app, &bucket).await.is_empty());
    let (_, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event("c2", "video.asset.ready")).await;
    assert_eq!(b["status"], "buffered");
    // The third event filled the batch: flushed in the same durable write as its answer.
    assert_eq!(objects(&app, &bucket).await.len(), 3);
    assert_eq!(status(&app, &bucket).await["events_buffered"], 0);
    let (_, batches) = app.get(&format!("/v1/buckets/{bucket}/batches")).await;
    let batch = &batches["results"][0];
    assert_eq!(batch["status"], "pending");
    assert_eq!(batch["submitted_at"], Value::Null);
    let bid = batch["batch_id"].as_str().unwrap();
    // One of its objects is deleted before the submit: batch.completed does not count it
    // as succeeded.
    let hook = crate::outbound_receiver::Receiver::start(200).await;
    let (s, w) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "batches", "event_types": ["batch.completed"],
                "channels": [{"channel": "webhook", "configs": {"url": hook.url("/hook")}}]}),
        )
        .await;
    assert_eq!(s, 201, "{w}");
    let gone = batch["object_ids"][1].as_str().unwrap();
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}/objects/{gone}")).await.0, 204);
    let submit = format!("/v1/buckets/{bucket}/batches/{bid}/submit");
    // It takes no fields: one given is refused (not silently ignored), and nothing happens.
    let (s, b) = app.post(&submit, json!({"force": true})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("force")), "{b}");
    let auth = format!("Bearer {}", app.api_key);
    let (s, b) = app.post_raw(&submit, "[1]", &[("Authorization", &auth)]).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("body")), "{b}");
    assert_eq!(app.get(&format!("/v1/buckets/{bucket}/batches/{bid}")).await.1["status"], "pending");
    // An empty body (what `curl -X POST` sends) or {} is fine.
    let (s, b) = app.post_raw(&submit, "", &[("Authorization", &auth)]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("completed")), "{b}");
    // The answer and the stored batch agree with the event: the deleted object apart.
    assert_eq!(b["object_ids"].as_array().unwrap().len(), 2, "{b}");
    assert!(!b["object_ids"].as_array().unwrap().iter().any(|o| o == gone), "{b}");
    assert_eq!(b["deleted_object_ids"], json!([gone]), "{b}");
    assert_eq!(app.get(&format!("/v1/buckets/{bucket}/batches/{bid}")).await.1, b);
    assert_eq!(app.post(&submit, json!({})).await.0, 409);
    assert!(eventually(Duration::from_secs(15), || async { hook.count() >= 1 }).await, "batch.completed never arrived");
    let p = hook.captured()[0].json()["payload"].clone();
    assert_eq!(p["counts"], json!({"objects": 3, "succeeded": 2, "failed": 0, "deleted": 1}), "{p}");
    let listed: Vec<&str> = p["object_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(listed.len(), 2, "{p}");
    assert!(!listed.contains(&gone), "{p}");
    assert_eq!(app.post(&format!("/v1/buckets/{bucket}/batches/batch_nope/submit"), json!({})).await.0, 404);
}

/// A batch's record can be deleted (they would pile up, one per flush): a pending one is
/// then never submitted. Its objects stay.
#[tokio::test]
async fn a_batch_is_deleted_and_its_objects_stay() {
    let app = TestApp::start().await;
    let batching = json!({"mode": "count", "max_batch_size": 2, "auto_submit": false});
    let (bucket, secret) = bucket_with_adapter(&app, "del-batch", schema(), full_adapter(batching)).await;
    for i in 0..4 {
        let (s, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event(&format!("d{i}"), "video.asset.ready")).await;
        assert_eq!((s, b["status"].as_str()), (200, Some("buffered")), "{b}");
    }
    let (_, batches) = app.get(&format!("/v1/buckets/{bucket}/batches")).await;
    let ids: Vec<String> =
        batches["results"].as_array().unwrap().iter().map(|b| b["batch_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2, "{batches}");
    let (pending, completed) = (&ids[0], &ids[1]);
    let (s, b) = app.post(&format!("/v1/buckets/{bucket}/batches/{completed}/submit"), json!({})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("completed")), "{b}");

    // A DELETE takes no fields: one given is refused and nothing is deleted.
    let one = format!("/v1/buckets/{bucket}/batches/{pending}");
    let (s, b) = app.call(reqwest::Method::DELETE, &one, Some(json!({"dry_run": true}))).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("dry_run")), "{b}");
    assert_eq!(app.get(&one).await.0, 200);
    for id in [pending, completed] {
        let path = format!("/v1/buckets/{bucket}/batches/{id}");
        assert_eq!(app.delete(&path).await.0, 204, "{id}");
        let (s, b) = app.get(&path).await;
        assert_eq!(s, 404, "{b}");
        assert_eq!(app.delete(&path).await.0, 404, "deleted once");
    }
    let (s, b) = app.post(&format!("/v1/buckets/{bucket}/batches/{pending}/submit"), json!({})).await;
    assert_eq!(s, 404, "a deleted batch is not submitted: {b}");
    let (_, batches) = app.get(&format!("/v1/buckets/{bucket}/batches")).await;
    assert_eq!(batches["results"], json!([]), "{batches}");
    let objects = objects(&app, &bucket).await;
    assert_eq!(objects.len(), 4, "{objects:?}");
    // Unknown and malformed IDs, and another bucket's batch, are 404s.
    let (other, _) = bucket_with_adapter(&app, "other", schema(), full_adapter(json!({"mode": "immediate"}))).await;
    for path in [
        format!("/v1/buckets/{bucket}/batches/batch_nope"),
        format!("/v1/buckets/{other}/batches/{completed}"),
        "/v1/buckets/bkt_nope/batches/batch_nope".to_string(),
    ] {
        assert_eq!(app.delete(&path).await.0, 404, "{path}");
    }
}

#[tokio::test]
async fn buffered_events_and_dedup_survive_a_crash_and_an_actor_failure() {
    let mut app = TestApp::start().await;
    let (bucket, secret) =
        bucket_with_adapter(&app, "crash", schema(), full_adapter(json!({"mode": "time_window", "window_seconds": 5})))
            .await;
    let (_, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event("k1", "video.asset.ready")).await;
    let oid = b["object_id"].as_str().unwrap().to_string();
    app.crash_restart().await;
    assert_eq!(status(&app, &bucket).await["events_buffered"], 1, "the buffer is durable");
    let (_, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event("k1", "video.asset.ready")).await;
    assert_eq!(b, json!({"handled": true, "status": "duplicate", "object_id": oid}));

    // The adapter actor fails: it is restarted (and counted) and keeps its state.
    let (s, _) = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
    assert_eq!(s, 202);
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric_value(&app.metrics().await, "hookline_actor_restarts_total", &[("actor", "source_adapter")]) >= 1.0
        })
        .await
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            ingest(&app, &bucket, Some(&secret), &mux_like_event("k1", "video.asset.ready")).await.1["status"]
                == "duplicate"
        })
        .await
    );
    assert!(eventually(Duration::from_secs(15), || async { objects(&app, &bucket).await.len() == 1 }).await);
    assert_eq!(objects(&app, &bucket).await[0]["object_id"], oid.as_str());

    // Deleting the bucket stops its adapter.
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}")).await.0, 204);
    assert_eq!(ingest(&app, &bucket, Some(&secret), &mux_like_event("k2", "video.asset.ready")).await.0, 404);
}

/// The dedup set as a restart (kill -9) rebuilds it: the keys live objects and buffered
/// entries carry in their records, and the keys of deleted ones, all still duplicates with
/// their object IDs; after a change of dedup path, none of them counts, across a restart
/// too, and once the path is set back every one counts again (an object deleted meanwhile
/// included), as do the other path's when it is set again. The key is stored, never shown:
/// not in the objects API, not in event payloads.
#[tokio::test]
async fn the_dedup_set_is_rebuilt_at_restart_from_objects_buffer_and_deleted_keys() {
    let mut app = TestApp::start().await;
    let adapter = |mode: Value, key: &str| json!({"adapter_type": "generic_webhook", "dedup_key": key, "field_mapping": {"n": "n"}, "batching": mode});
    let (bucket, secret) = bucket_with_adapter(
        &app,
        "rebuilt",
        json!({"n": {"type": "int"}}),
        adapter(json!({"mode": "immediate"}), "id"),
    )
    .await;
    let s = Some(secret.as_str());
    let hook = crate::outbound_receiver::Receiver::start(200).await;
    let channels = json!([crate::outbound::http_channel(&hook.url("/objects"))]);
    let types = json!(["object.created", "object.deleted"]);
    crate::outbound::create_webhook(&app, json!({"webhook_name": "o", "event_types": types, "channels": channels}))
        .await;
    let mut ids = std::collections::BTreeMap::new();
    for id in ["live", "gone"] {
        let (st, b) = ingest(&app, &bucket, s, &json!({"id": id, "n": 1})).await;
        assert_eq!((st, b["status"].as_str()), (200, Some("created")), "{b}");
        ids.insert(id, b["object_id"].as_str().unwrap().to_string());
    }
    let path = format!("/v1/buckets/{bucket}");
    let windowed = adapter(json!({"mode": "time_window", "window_seconds": 300}), "id");
    assert_eq!(app.patch(&path, json!({"source_adapter": windowed})).await.0, 200);
    for id in ["waiting", "dropped"] {
        let (st, b) = ingest(&app, &bucket, s, &json!({"id": id, "n": 2})).await;
        assert_eq!((st, b["status"].as_str()), (200, Some("buffered")), "{b}");
        ids.insert(id, b["object_id"].as_str().unwrap().to_string());
    }
    for id in ["gone", "dropped"] {
        assert_eq!(app.delete(&format!("{path}/objects/{}", ids[id])).await.0, 204, "{id}");
    }
    let (st, obj) = app.get(&format!("{path}/objects/{}", ids["live"])).await;
    assert_eq!((st, obj.get("dedup")), (200, None), "{obj}");
    assert_eq!(obj["object_id"], ids["live"].as_str());
    let listed = objects(&app, &bucket).await;
    assert!(listed.iter().all(|o| o.get("dedup").is_none() && o["metadata"]["n"] == 1), "{listed:?}");

    app.crash_restart().await;
    for (id, oid) in &ids {
        let (st, b) = ingest(&app, &bucket, s, &json!({"id": id, "n": 3})).await;
        assert_eq!((st, b), (200, json!({"handled": true, "status": "duplicate", "object_id": oid})), "{id}");
    }
    assert_eq!(status(&app, &bucket).await["events_buffered"], 1, "waiting, still buffered");

    // Another dedup path: the values are new under it, across a restart too, once each.
    let by_key = adapter(json!({"mode": "immediate"}), "key");
    assert_eq!(app.patch(&path, json!({"source_adapter": by_key})).await.0, 200);
    app.crash_restart().await;
    for id in ids.keys() {
        let (st, b) = ingest(&app, &bucket, s, &json!({"key": id, "n": 4})).await;
        assert_eq!((st, b["status"].as_str()), (200, Some("created")), "{id}: {b}");
    }
    // An object of the old path deleted now keeps its key for the old path's set, not in force.
    assert_eq!(app.delete(&format!("{path}/objects/{}", ids["live"])).await.0, 204);
    app.crash_restart().await;
    for id in ids.keys() {
        let (st, b) = ingest(&app, &bucket, s, &json!({"key": id, "n": 5})).await;
        assert_eq!((st, b["status"].as_str()), (200, Some("duplicate")), "{id}: {b}");
    }
    // waiting (flushed by the switch to immediate) and the four new ones.
    assert_eq!(objects(&app, &bucket).await.len(), 5);

    // The first path set back (a mistaken change undone): its set is in force again, every
    // key of it a duplicate of its first object, across a restart; then the second's again.
    let (st, b) = app.patch(&path, json!({"source_adapter": adapter(json!({"mode": "immediate"}), "id")})).await;
    let said = b["warnings"].to_string();
    assert!(st == 200 && said.contains("is back in force") && said.contains("`id` of generic_webhook"), "{b}");
    app.crash_restart().await;
    for (id, oid) in &ids {
        let (st, b) = ingest(&app, &bucket, s, &json!({"id": id, "n": 6})).await;
        assert_eq!((st, b), (200, json!({"handled": true, "status": "duplicate", "object_id": oid})), "{id}");
    }
    assert_eq!(app.patch(&path, json!({"source_adapter": by_key})).await.0, 200);
    app.crash_restart().await;
    for id in ids.keys() {
        let (st, b) = ingest(&app, &bucket, s, &json!({"key": id, "n": 7})).await;
        assert_eq!((st, b["status"].as_str()), (200, Some("duplicate")), "{id}: {b}");
    }
    assert_eq!(objects(&app, &bucket).await.len(), 5);

    // object.created for live, gone, waiting and the four new ones; object.deleted for gone
    // and live (a buffered entry deleted was never announced). A kill -9 may have come
    // between a delivery and its record: the receiver tells those by event_id.
    let distinct = || {
        let all = hook.captured().into_iter().map(|c| c.json()).map(|e| (e["event_id"].to_string(), e));
        all.collect::<std::collections::BTreeMap<String, Value>>()
    };
    assert!(eventually(Duration::from_secs(15), || async { distinct().len() >= 9 }).await, "{:?}", distinct());
    let backend = stop_and_open(&mut app).await;
    let envelopes = distinct();
    let deleted = envelopes.values().filter(|e| e["event_type"] == "object.deleted").count();
    assert_eq!((envelopes.len(), deleted), (9, 2), "{envelopes:?}");
    for e in envelopes.values() {
        assert!(e["payload"]["object_id"].is_string() && e["payload"].get("dedup").is_none(), "{e}");
    }
    let marked = stored_entries(&backend, "obj", "").iter().filter(|(_, v)| contains_bytes(v, b"\"dedup\"")).count();
    assert_eq!(marked, 5, "every object carries its key in its record");
    // gone, dropped and live: the first path's deleted keys, kept for its set (not in force).
    let kept = stored_entries(&backend, "dkey", "");
    assert_eq!(kept.len(), 3, "{kept:?}");
    assert!(kept.iter().all(|(_, v)| contains_bytes(v, b"@0\"")), "tagged with the first path's generation: {kept:?}");
}

/// Past pages of keys (`PAGE_KEYS`), an actor's start reads the pages and only the objects
/// after the last: every key, paged or not, is still a duplicate after a kill -9, and new
/// ones are not.
#[tokio::test]
async fn dedup_keys_past_a_page_survive_a_crash() {
    use futures::StreamExt;
    let mut app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "paged", json!({}), adapter).await;
    let made: Vec<(usize, String)> = futures::stream::iter(0..1100)
        .map(|n| {
            let (app, bucket, secret) = (&app, &bucket, &secret);
            async move {
                let (st, b) = ingest(app, bucket, Some(secret), &json!({"id": format!("e{n}")})).await;
                assert_eq!((st, b["status"].as_str()), (200, Some("created")), "{b}");
                (n, b["object_id"].as_str().unwrap().to_string())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    app.crash_restart().await;
    let page = hookline::adapter::records::PAGE_KEYS;
    assert!(4 * page < 1100 && 1100 < 5 * page, "four full pages and some keys after them");
    async fn all_duplicates(app: &TestApp, bucket: &str, secret: &str, made: &[(usize, String)]) {
        futures::stream::iter(made)
            .for_each_concurrent(16, |(n, oid)| async move {
                let (st, b) = ingest(app, bucket, Some(secret), &json!({"id": format!("e{n}")})).await;
                assert_eq!((st, b), (200, json!({"handled": true, "status": "duplicate", "object_id": oid})), "e{n}");
            })
            .await;
    }
    all_duplicates(&app, &bucket, &secret, &made).await;
    let (_, b) = ingest(&app, &bucket, Some(&secret), &json!({"id": "new"})).await;
    assert_eq!(b["status"], "created", "{b}");
    let new_id = b["object_id"].as_str().unwrap().to_string();
    app.crash_restart().await;
    let (_, b) = ingest(&app, &bucket, Some(&secret), &json!({"id": "new"})).await;
    assert_eq!((b["status"].as_str(), b["object_id"].as_str()), (Some("duplicate"), Some(new_id.as_str())), "{b}");
    // The keys after the four pages are in the page the first restart wrote: still known.
    all_duplicates(&app, &bucket, &secret, &made).await;
    let backend = stop_and_open(&mut app).await;
    // Four pages from the ingests, then one short page: the first start paged what it read
    // after them, the second merged that page with what it read (the key "new").
    let pages = stored_entries(&backend, "dpage", "");
    let keys: usize = pages
        .iter()
        .map(|(_, v)| serde_json::from_slice::<Value>(v).unwrap()["keys"].as_str().unwrap().matches(',').count())
        .sum();
    assert_eq!((pages.len(), keys), (5, 1101), "every key in a page once");
}

/// An object deleted while its bucket has no adapter (the registry deletes it, no actor
/// runs) keeps its key too: the adapter added again, after a kill -9, still answers its
/// event `duplicate`.
#[tokio::test]
async fn an_object_deleted_without_an_adapter_keeps_its_dedup_key() {
    let mut app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "bare", json!({}), adapter.clone()).await;
    let (st, b) = ingest(&app, &bucket, Some(&secret), &json!({"id": "x"})).await;
    assert_eq!((st, b["status"].as_str()), (200, Some("created")), "{b}");
    let oid = b["object_id"].as_str().unwrap().to_string();
    let path = format!("/v1/buckets/{bucket}");
    assert_eq!(app.patch(&path, json!({"source_adapter": null})).await.0, 200);
    assert_eq!(app.delete(&format!("{path}/objects/{oid}")).await.0, 204);
    app.crash_restart().await;
    let (st, b) = app.patch(&path, json!({"source_adapter": adapter})).await;
    assert_eq!(st, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let (st, b) = ingest(&app, &bucket, Some(&secret), &json!({"id": "x"})).await;
    assert_eq!((st, b), (200, json!({"handled": true, "status": "duplicate", "object_id": oid})));
    assert!(objects(&app, &bucket).await.is_empty());
}

/// A data dir of format 2 (dedup set and external-ID index keyed by hash) is migrated at
/// start, and its dedup keys still hold: the same event is a duplicate of the same object.
#[tokio::test]
async fn dedup_keys_survive_the_migration_from_format_2() {
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(&app, "mig", schema(), full_adapter(json!({"mode": "immediate"}))).await;
    let event = mux_like_event("asset-1", "video.asset.ready");
    let (st, b) = ingest(&app, &bucket, Some(&secret), &event).await;
    assert_eq!((st, b["status"].as_str()), (200, Some("created")), "{b}");
    let oid = b["object_id"].as_str().unwrap().to_string();
    assert_eq!(app.stop(), Some(0));

    // Rewrite the entries the way a format-2 binary kept them: the dedup key in an entry of
    // its own, keyed by hash, not in the object's record.
    {
        let backend = app.stopped_sled().await;
        for ks in ["dkey", "xref"] {
            // generic_webhook objects have no external-ID entry (nothing upstream changes them
            // by that ID); older versions wrote one, as a format-2 binary did: added below.
            assert_eq!(stored_entries(&backend, ks, "").len(), 0, "a live object's key is in its record ({ks})");
        }
        let objects = stored_entries(&backend, "obj", "");
        assert_eq!(objects.len(), 1);
        let (key, raw) = &objects[0];
        let mut record: Value = serde_json::from_slice(raw).unwrap();
        let mark = record.as_object_mut().unwrap().remove("dedup").expect("the object carries its dedup key");
        let hash = mark["hash"].as_str().unwrap().to_string();
        assert_eq!(hash.len(), 64, "{mark}");
        let (bucket_id, object_id) = key.split_once('/').unwrap();
        assert_eq!(object_id, oid);
        let mut b = Batch::new();
        b.put(Keyspace::OBJECTS, key, &record);
        b.put(Keyspace::custom("dedup"), &format!("{bucket_id}/{hash}"), &json!({"object_id": oid, "at_ms": 1}));
        b.put(Keyspace::custom("xid"), &format!("{bucket_id}/{hash}/{oid}"), &oid);
        b.put(Keyspace::META, "format_version", &2u32);
        backend.apply(&b).unwrap();
        futures::executor::block_on(backend.flush()).unwrap();
    }

    app.start_again().await;
    let (st, b) = ingest(&app, &bucket, Some(&secret), &event).await;
    assert_eq!(st, 200, "{b}; log:\n{}", app.log());
    assert_eq!(b, json!({"handled": true, "status": "duplicate", "object_id": oid}));
    assert!(app.log().contains("data directory migrated"), "log:\n{}", app.log());
}

/// Under `storage.min_free_mb` of free disk (here a floor no disk has), new objects wait: an
/// ingest that would make one and a published event are 503 with nothing stored (after the
/// 401 for a bad secret), while admin writes, reads and `/readyz` go on, and the log and
/// metrics say why.
#[tokio::test]
async fn short_of_disk_new_events_are_refused_and_nothing_is_stored() {
    let opts = Options { storage_toml: "min_free_mb = 1073741824".into(), ..Options::default() };
    let app = TestApp::start_with(opts).await;
    // Admin writes go on (an operator may need them to free space).
    let (bucket, secret) =
        bucket_with_adapter(&app, "full", schema(), full_adapter(json!({"mode": "immediate"}))).await;
    let (st, b) = ingest(&app, &bucket, Some(&secret), &mux_like_event("k1", "video.asset.ready")).await;
    assert_eq!((st, b["error"]["code"].as_str()), (503, Some("unavailable")), "{b}");
    let message = b["error"]["message"].as_str().unwrap();
    assert!(message.contains("short of disk space") && message.contains("nothing was stored"), "{b}");
    assert!(!message.contains("MiB"), "no figures for an anonymous sender: {b}");
    assert!(objects(&app, &bucket).await.is_empty());
    // Authentication first: an anonymous sender learns nothing of the disk.
    let (st, b) = ingest(&app, &bucket, Some("wrong-secret"), &mux_like_event("k1", "video.asset.ready")).await;
    assert_eq!(st, 401, "{b}");
    let (st, b) = app.post("/v1/events", json!({"event_type": "object.updated", "payload": {"n": 1}})).await;
    assert_eq!(st, 503, "{b}");

    let (st, b) = app.get("/readyz").await;
    assert_eq!((st, &b["status"], &b["disk_room"]), (200, &json!("ready"), &json!(false)), "{b}");
    let m = app.metrics().await;
    assert_eq!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", "low_disk")]), 1.0);
    assert!(metric_value(&m, "hookline_store_disk_available_bytes", &[]) > 0.0);
    assert!(app.log().contains("short of disk space"), "log:\n{}", app.log());
}

/// Editing a bucket while its upstream sends is no outage: a description PATCH leaves the
/// adapter running, and an adapter PATCH (which restarts it) makes ingests wait for it
/// rather than answer 503.
#[tokio::test]
async fn patching_a_bucket_while_ingesting_loses_no_request() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("busy", schema()).await;
    let path = format!("/v1/buckets/{bucket}");
    let adapter = full_adapter(json!({"mode": "immediate"}));
    let (s, b) = app.patch(&path, json!({ "source_adapter": adapter.clone() })).await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let senders = (0..4).map(|t| {
        let (app, bucket, secret) = (&app, &bucket, &secret);
        async move {
            let mut codes = Vec::new();
            for i in 0..40 {
                let event = mux_like_event(&format!("t{t}-{i}"), "video.asset.ready");
                codes.push(ingest(app, bucket, Some(secret), &event).await.0);
            }
            codes
        }
    });
    let patcher = async {
        for i in 0..6 {
            let body = if i % 2 == 0 {
                json!({ "description": format!("edit {i}") })
            } else {
                json!({ "source_adapter": adapter.clone() })
            };
            assert_eq!(app.patch(&path, body).await.0, 200);
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    };
    let (codes, ()) = tokio::join!(futures::future::join_all(senders), patcher);
    let codes: Vec<u16> = codes.into_iter().flatten().collect();
    assert!(codes.iter().all(|c| *c == 200), "{codes:?}");
    assert_eq!(objects(&app, &bucket).await.len(), 160);
}

/// An adapter that failed past its restart budget stays stopped (ingest answers 503) until a
/// PATCH of its bucket, even one that changes only the description, starts it again.
#[tokio::test]
async fn any_patch_starts_an_adapter_stopped_after_its_restart_budget() {
    let app = TestApp::start().await;
    let (bucket, secret) =
        bucket_with_adapter(&app, "fragile", schema(), full_adapter(json!({"mode": "immediate"}))).await;
    let send = |id: &'static str| {
        let (app, bucket, secret) = (&app, &bucket, &secret);
        async move { ingest(app, bucket, Some(secret), &mux_like_event(id, "video.asset.ready")).await.0 }
    };
    assert_eq!(send("f1").await, 200);
    for _ in 0..=hookline::adapter::registry::ADAPTER_MAX_RESTARTS {
        let (s, _) = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
        if s != 202 {
            break; // already stopped for good
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(eventually(Duration::from_secs(20), || async { send("f2").await == 503 }).await);
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"description": "try again"})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(send("f3").await, 200);
    // Stopped again, its own settings sent back (which leave a running adapter alone) start it.
    for _ in 0..=hookline::adapter::registry::ADAPTER_MAX_RESTARTS {
        let (s, _) = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
        if s != 202 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(eventually(Duration::from_secs(20), || async { send("f4").await == 503 }).await);
    let (_, view) = app.get(&format!("/v1/buckets/{bucket}")).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": view["source_adapter"]})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(send("f5").await, 200);
}

/// While a bucket's adapter actor is stopped (past its restart budget), DELETE of an event it
/// buffered removes it, as with the actor running: 204, and once a PATCH starts the adapter
/// again its flush makes no object of it; a re-sent copy is still a duplicate.
#[tokio::test]
async fn a_buffered_event_is_deleted_while_its_adapter_is_stopped() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id",
                         "batching": {"mode": "time_window", "window_seconds": 300}});
    let (bucket, secret) = bucket_with_adapter(&app, "stopped-buffer", json!({}), adapter).await;
    let (s, b) = ingest(&app, &bucket, Some(&secret), &json!({"id": "x"})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("buffered")), "{b}");
    let (s, kept) = ingest(&app, &bucket, Some(&secret), &json!({"id": "y"})).await;
    assert_eq!((s, kept["status"].as_str()), (200, Some("buffered")), "{kept}");
    let oid = b["object_id"].as_str().expect("object_id").to_string();
    for _ in 0..=hookline::adapter::registry::ADAPTER_MAX_RESTARTS {
        let (s, _) = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
        if s != 202 {
            break; // already stopped for good
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let stopped = || async { status(&app, &bucket).await["actor"] == "stopped" };
    assert!(eventually(Duration::from_secs(20), stopped).await);
    let object = format!("/v1/buckets/{bucket}/objects/{oid}");
    let (s, b) = app.get(&object).await;
    assert!(s == 404 && b["error"]["message"].as_str().is_some_and(|m| m.contains("buffered")), "{s} {b}");
    let (s, b) = app.delete(&object).await;
    assert_eq!(s, 204, "{b}");
    let (s, _) = app.delete(&object).await;
    assert_eq!(s, 404, "deleted once");
    let (_, view) = app.get(&format!("/v1/buckets/{bucket}")).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": view["source_adapter"]})).await;
    assert_eq!(s, 200, "{b}");
    let (s, f) = app.post(&format!("/v1/buckets/{bucket}/source-adapter/flush"), json!({})).await;
    assert_eq!(s, 200, "{f}");
    let made: Vec<Value> = objects(&app, &bucket).await;
    let ids: Vec<&str> = made.iter().filter_map(|o| o["object_id"].as_str()).collect();
    assert_eq!(ids, [kept["object_id"].as_str().expect("object_id")], "the other buffered event only");
    let (s, b) = ingest(&app, &bucket, Some(&secret), &json!({"id": "x"})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("duplicate")), "its dedup key kept: {b}");
}

/// A bucket whose adapter actor is busy (stalled here through a debug endpoint; in life,
/// indexing its objects after a takeover, or flushing a large buffer) holds up the admin
/// calls to its own bucket only: the registry hands the wait for that actor to a task, so
/// other buckets' calls and catalog writes are answered meanwhile, and the held call is
/// answered once the actor is free.
#[tokio::test]
async fn a_busy_adapter_actor_holds_up_its_own_bucket_only() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (busy, secret) = bucket_with_adapter(&app, "busy", json!({}), adapter.clone()).await;
    let (other, other_secret) = bucket_with_adapter(&app, "other", json!({}), adapter).await;
    let object = |b: Value| b["object_id"].as_str().expect("object_id").to_string();
    let busy_object = object(ingest(&app, &busy, Some(&secret), &json!({"id": "a"})).await.1);
    let other_object = object(ingest(&app, &other, Some(&other_secret), &json!({"id": "b"})).await.1);

    let (s, b) = app.post(&format!("/v1/debug/stall-adapter/{busy}"), json!({})).await;
    assert_eq!(s, 200, "{b}");
    let held = tokio::spawn(
        crate::support::client()
            .delete(app.url(&format!("/v1/buckets/{busy}/objects/{busy_object}")))
            .bearer_auth(&app.api_key)
            .send(),
    );
    // Let the held delete reach the registry first (were it later, this test would prove nothing,
    // but not fail).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (Bounded, so that a registry held up fails here rather than after its 25 s timeout.)
    let meanwhile = async {
        let (s, b) = app.delete(&format!("/v1/buckets/{other}/objects/{other_object}")).await;
        assert_eq!(s, 204, "another bucket's object is deleted meanwhile: {b}");
        app.create_bucket("meanwhile", json!({})).await;
        let (s, b) = app.post(&format!("/v1/buckets/{other}/source-adapter/flush"), json!({})).await;
        assert_eq!(s, 200, "{b}");
    };
    tokio::time::timeout(Duration::from_secs(10), meanwhile).await.expect("other calls are answered meanwhile");
    assert!(!held.is_finished(), "the busy bucket's delete waits for its actor");

    let (s, _) = app.delete(&format!("/v1/debug/stall-adapter/{busy}")).await;
    assert_eq!(s, 200);
    let r = held.await.unwrap().unwrap();
    assert_eq!(r.status(), 204, "answered once its actor is free");
    assert_eq!(app.get(&format!("/v1/buckets/{busy}/objects/{busy_object}")).await.0, 404);
    assert_eq!(app.get(&format!("/v1/buckets/{other}/objects/{other_object}")).await.0, 404);
}

/// Removing the adapter of a bucket whose actor is stuck holds up the registry for at most
/// the flush's 10 s and the stop's 10 s: the removal answers 503 within the HTTP side's 30 s
/// (its own message, changing nothing: the adapter stays), and catalog calls queued behind it
/// are answered for what they did, never a 503 for something done anyway.
#[tokio::test]
async fn a_removal_stuck_on_its_actor_answers_in_time_and_holds_up_no_other_call_for_good() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (busy, _) = bucket_with_adapter(&app, "busy", json!({}), adapter.clone()).await;
    let fresh = app.create_bucket("fresh", json!({})).await;
    let (s, b) = app.post(&format!("/v1/debug/stall-adapter/{busy}"), json!({})).await;
    assert_eq!(s, 200, "{b}");
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    let send = |method: Method, path: String, body: Value| {
        let request = patient.request(method, app.url(&path)).bearer_auth(&app.api_key).json(&body);
        async move {
            let r = request.send().await.expect("an answer");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or_default())
        }
    };
    let removal = tokio::spawn(send(Method::PATCH, format!("/v1/buckets/{busy}"), json!({"source_adapter": null})));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let connection = json!({"name": "made-once", "provider_type": "generic_webhook"});
    let ((cs, cb), (ps, pb)) = tokio::join!(
        send(Method::POST, "/v1/organizations/connections".into(), connection),
        send(Method::PATCH, format!("/v1/buckets/{fresh}"), json!({"source_adapter": adapter}))
    );
    let (rs, rb) = removal.await.unwrap();
    let said = rb["error"]["message"].as_str().unwrap_or_default();
    assert!(rs == 503 && said.contains("could not flush its buffer"), "the removal's own answer: {rs} {rb}");
    let (s, b) = app.delete(&format!("/v1/debug/stall-adapter/{busy}")).await;
    assert!(s == 200 || s == 404, "{s} {b}");
    let (_, view) = app.get(&format!("/v1/buckets/{busy}")).await;
    assert!(view["source_adapter"].is_object(), "the refused removal changed nothing: {view}");
    assert_eq!(cs, 201, "answered for what it did: {cb}");
    assert_eq!(ps, 200, "{pb}");
    assert!(pb["source_adapter"]["webhook_secret"].is_string(), "its secret shown: {pb}");
    let (_, list) = app.get("/v1/organizations/connections").await;
    let made = list["results"].as_array().map_or(0, |r| r.iter().filter(|c| c["name"] == "made-once").count());
    assert_eq!(made, 1, "{list}");
}

/// A PATCH replaces `source_adapter` whole: one meant as a pause (`adapter_type` and
/// `enabled: false` alone) drops the mapping, the dedup key and the batching, and its
/// `warnings` name them; the adapter's own view sent back with `enabled: false` warns of none.
#[tokio::test]
async fn a_patch_that_leaves_settings_out_names_them() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "field_mapping": {"data.title": "title"},
                         "batching": {"mode": "count", "max_batch_size": 10}});
    let (bucket, _) = bucket_with_adapter(&app, "paused", json!({"title": {"type": "string"}}), adapter).await;
    let (_, view) = app.get(&format!("/v1/buckets/{bucket}")).await;
    let mut whole = view["source_adapter"].clone();
    whole["enabled"] = json!(false);
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": whole})).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("warnings").is_none(), "the whole adapter, paused: {b}");
    let pause = json!({"source_adapter": {"adapter_type": "generic_webhook", "enabled": false}});
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), pause).await;
    assert_eq!(s, 200, "{b}");
    let warnings: Vec<&str> = b["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(warnings.len() == 1 && warnings[0].contains("field_mapping, batching, dedup_key;"), "{warnings:?}");
}

/// `metrics.ingest_per_bucket`: ingest requests counted by bucket and outcome, for buckets
/// that exist only (the ID of a 404, which any sender can make up, never becomes a label);
/// off by default.
#[tokio::test]
async fn ingest_requests_are_counted_per_bucket_when_asked() {
    let per_bucket = Options { extra_toml: "[metrics]\ningest_per_bucket = true\n".into(), ..Options::default() };
    let app = TestApp::start_with(per_bucket).await;
    let immediate = full_adapter(json!({"mode": "immediate"}));
    let windowed = full_adapter(json!({"mode": "time_window", "window_seconds": 300}));
    let (a, secret_a) = bucket_with_adapter(&app, "a", schema(), immediate.clone()).await;
    let (b, secret_b) = bucket_with_adapter(&app, "b", schema(), windowed).await;
    for (id, want) in [("p1", "created"), ("p2", "created"), ("p1", "duplicate")] {
        let (s, body) = ingest(&app, &a, Some(&secret_a), &mux_like_event(id, "video.asset.ready")).await;
        assert_eq!((s, body["status"].as_str()), (200, Some(want)), "{body}");
    }
    assert_eq!(
        ingest(&app, &b, Some(&secret_b), &mux_like_event("q1", "video.asset.ready")).await.1["status"],
        "buffered"
    );
    assert_eq!(ingest(&app, &b, Some("wrong"), &mux_like_event("q2", "video.asset.ready")).await.0, 401);
    // 404s: a bucket without an adapter, and an ID no bucket has.
    let bare = app.create_bucket("no-adapter", schema()).await;
    for id in [bare.as_str(), "bkt_madeup"] {
        assert_eq!(ingest(&app, id, Some(&secret_a), &mux_like_event("r1", "video.asset.ready")).await.0, 404);
    }
    let m = app.metrics().await;
    let count = |bucket: &str, outcome: &str| {
        metric_value(&m, "hookline_ingest_bucket_requests_total", &[("bucket_id", bucket), ("outcome", outcome)])
    };
    assert_eq!(
        [count(&a, "created"), count(&a, "duplicate"), count(&b, "buffered"), count(&b, "unauthorized")],
        [2.0, 1.0, 1.0, 1.0],
        "{m}"
    );
    assert_eq!(count(&a, "buffered") + count(&b, "created"), 0.0);
    assert!(!m.contains(&format!("bucket_id=\"{bare}\"")) && !m.contains("bkt_madeup"), "{m}");
    assert_eq!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", "not_found")]), 2.0);

    // Off by default: the outcome series only.
    let plain = TestApp::start().await;
    let (c, secret_c) = bucket_with_adapter(&plain, "c", schema(), immediate).await;
    assert_eq!(ingest(&plain, &c, Some(&secret_c), &mux_like_event("s1", "video.asset.ready")).await.0, 200);
    let m = plain.metrics().await;
    assert_eq!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", "created")]), 1.0);
    assert!(!m.contains("hookline_ingest_bucket_requests_total{"), "{m}");
}

/// An ingest its adapter does not take within 30 s (busy, here stalled) is a 503 the
/// upstream retries, counted as `unavailable` (not `error`, hookline's own failure); the
/// event it held is taken once the actor is free, and the retry is its duplicate.
#[tokio::test]
async fn an_ingest_a_busy_adapter_does_not_take_in_time_is_unavailable() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "busy", json!({}), adapter).await;
    let (s, b) = app.post(&format!("/v1/debug/stall-adapter/{bucket}"), json!({})).await;
    assert_eq!(s, 200, "{b}");
    // A client that waits longer than the daemon's 30 s (the tests' client gives up at 30 s).
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let r = patient
        .post(app.url(&format!("/v1/buckets/{bucket}/source-adapter/ingest")))
        .header("x-webhook-secret", &secret)
        .json(&json!({"id": "held"}))
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    let b: Value = r.json().await.unwrap_or_default();
    assert_eq!(s, 503, "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or_default().contains("did not answer within 30 s"), "{b}");
    let m = app.metrics().await;
    let outcome = |o: &str| metric_value(&m, "hookline_ingest_requests_total", &[("outcome", o)]);
    assert_eq!((outcome("unavailable"), outcome("error")), (1.0, 0.0));
    let (s, _) = app.delete(&format!("/v1/debug/stall-adapter/{bucket}")).await;
    assert_eq!(s, 200);
    let retried =
        || async { ingest(&app, &bucket, Some(&secret), &json!({"id": "held"})).await.1["status"] == "duplicate" };
    assert!(eventually(Duration::from_secs(10), retried).await, "the held event was taken once the actor was free");
}

/// A dedup value that cannot be a key is refused saying what the payload had there (missing,
/// null, a blank string, an object, an array, a boolean), as every other payload error says
/// what it found, rather than one message for all of them (newcomer black-box review).
#[tokio::test]
async fn a_dedup_value_refused_says_what_the_payload_had() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "data.id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "dedup-said", json!({}), adapter).await;
    for (id, said) in [
        (None, "is missing from the payload"),
        (Some(Value::Null), "is null"),
        (Some(json!("")), "is an empty string"),
        (Some(json!("  ")), "is a blank string"),
        (Some(json!({})), "is an object"),
        (Some(json!([1])), "is an array"),
        (Some(json!(true)), "is a boolean (true)"),
    ] {
        let mut body = json!({"type": "t", "data": {}});
        if let Some(id) = id.clone() {
            body["data"]["id"] = id;
        }
        let (s, b) = ingest(&app, &bucket, Some(&secret), &body).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("payload")), "{id:?}: {b}");
        let message = b["error"]["message"].as_str().unwrap_or_default().trim_start_matches("payload: ");
        assert!(message.starts_with(&format!("dedup_key \"data.id\" {said}")), "{id:?}: {message}");
        assert!(message.contains("a string (not blank) or a number"), "{id:?}: {message}");
    }
}

/// A blob URL from a payload is held to the rule of every URL hookline stores: written as
/// it is read. `https:///x`, `https:host/x` and backslashes were silently stored as another
/// URL (`https://x/`, `https://host/x`); now a 422 naming the payload path and saying why,
/// while a URL that is fine as it is is still stored (newcomer black-box review).
#[tokio::test]
async fn a_blob_url_the_url_standard_reads_as_another_is_refused() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"},
        "field_mapping": {"poster": "poster"},
        "blob_source": {"file_field": "data.url", "blob_type": "video", "target_property": "video"}});
    let schema = json!({"video": {"type": "video"}, "poster": {"type": "image"}});
    let (bucket, secret) = bucket_with_adapter(&app, "blob-urls", schema, adapter).await;
    for raw in ["https:///x.test/v.mp4", "https:x.test/v.mp4", "https:\\\\x.test\\v.mp4", "https://x.test\\v.mp4"] {
        let (s, b) = ingest(&app, &bucket, Some(&secret), &json!({"data": {"url": raw}})).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("payload")), "{raw}: {b}");
        let message = b["error"]["message"].as_str().unwrap_or_default().trim_start_matches("payload: ");
        assert!(message.starts_with("blob_source.file_field \"data.url\""), "{raw}: {message}");
        assert!(message.contains("two slashes and no backslash"), "{raw}: {message}");
        // The same URL mapped onto a file property by field_mapping.
        let body = json!({"data": {"url": "https://x.test/v.mp4"}, "poster": raw});
        let (s, b) = ingest(&app, &bucket, Some(&secret), &body).await;
        assert_eq!(s, 422, "{raw}: {b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("\"poster\"") && message.contains("two slashes"), "{raw}: {message}");
    }
    assert!(objects(&app, &bucket).await.is_empty(), "nothing stored");
    let (s, b) = ingest(&app, &bucket, Some(&secret), &json!({"data": {"url": " https://x.test/a b.mp4 "}})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    let objs = objects(&app, &bucket).await;
    assert_eq!(objs[0]["blobs"][0]["url"], "https://x.test/a%20b.mp4", "{}", objs[0]);
}

/// The article fits the word: `an image property`, not `a image property` (newcomer
/// black-box review).
#[tokio::test]
async fn a_refusal_naming_a_property_type_reads_right() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"},
        "field_mapping": {"poster": "poster", "clip": "clip", "film": "film"}});
    let schema = json!({"poster": {"type": "image"}, "clip": {"type": "audio"}, "film": {"type": "video"}});
    let (bucket, secret) = bucket_with_adapter(&app, "articles", schema, adapter).await;
    for (field, kind) in [("poster", "an image"), ("clip", "an audio"), ("film", "a video")] {
        let (s, b) = ingest(&app, &bucket, Some(&secret), &json!({ field: "not a url" })).await;
        assert_eq!(s, 422, "{b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!(": {kind} property takes an http(s) URL")), "{message}");
    }
}

/// A 503 says when to retry (`Retry-After`), as the README's errors table says every 503
/// does: here an ingest into a disabled adapter (newcomer black-box review).
#[tokio::test]
async fn an_ingest_refused_with_a_503_says_when_to_retry() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "enabled": false});
    let (bucket, secret) = bucket_with_adapter(&app, "disabled", json!({}), adapter).await;
    let r = app
        .client
        .post(app.url(&format!("/v1/buckets/{bucket}/source-adapter/ingest")))
        .header("x-webhook-secret", &secret)
        .json(&json!({"id": "e1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(retry_after.as_deref(), Some("5"), "{:?}", r.headers());
    let b: Value = r.json().await.unwrap_or_default();
    assert!(b["error"]["message"].as_str().unwrap_or_default().contains("disabled"), "{b}");
}

/// A `last_error` stored whole by an older binary (a 900 KB quoted value) is cut when the
/// adapter loads its stats, not rewritten whole by every later ingest until another error.
#[tokio::test]
async fn a_stored_oversized_last_error_is_cut_when_loaded() {
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "bigerr", json!({}), adapter).await;
    assert_eq!(ingest(&app, &bucket, Some(&secret), &json!({"id": "a"})).await.0, 200);
    let backend = crate::support::stop_and_open(&mut app).await;
    let stored = crate::support::stored_entries(&backend, "stats", &bucket);
    assert_eq!(stored.len(), 1, "{:?}", stored.iter().map(|e| &e.0).collect::<Vec<_>>());
    let mut stats: Value = serde_json::from_slice(&stored[0].1).unwrap();
    stats["last_error"] = json!(format!("an event was refused: {}", "x".repeat(900_000)));
    let mut b = Batch::new();
    b.put(Keyspace::custom("stats"), &stored[0].0, &stats);
    backend.apply(&b).unwrap();
    futures::executor::block_on(backend.flush()).unwrap();
    drop(backend);
    app.start_again().await;
    for i in 0..3 {
        assert_eq!(ingest(&app, &bucket, Some(&secret), &json!({"id": format!("b{i}")})).await.0, 200);
    }
    let backend = crate::support::stop_and_open(&mut app).await;
    let stored = crate::support::stored_entries(&backend, "stats", &bucket);
    let len = serde_json::from_slice::<Value>(&stored[0].1).unwrap()["last_error"].as_str().map_or(0, str::len);
    assert!(len <= 4 * 501, "last_error is still {len} bytes, rewritten with each ingest");
}
