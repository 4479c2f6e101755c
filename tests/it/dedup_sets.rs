//! Dedup sets kept across changes of dedup path (`Bucket::switch_dedup`): each set counts
//! its own keys, and only while in force, through pages, buffers, deletes and kill -9.

use serde_json::{json, Value};

use crate::inbound::{bucket_with_adapter, ingest};
use crate::support::{stored_entries, TestApp};

fn adapter(key: &str) -> Value {
    json!({"adapter_type": "generic_webhook", "dedup_key": key, "batching": {"mode": "immediate"}})
}

async fn created(app: &TestApp, bucket: &str, s: &str, body: Value) -> String {
    let (st, b) = ingest(app, bucket, Some(s), &body).await;
    assert_eq!((st, b["status"].as_str()), (200, Some("created")), "{body}: {b}");
    b["object_id"].as_str().unwrap().to_string()
}

/// Once a set is back in force, its deleted keys are untagged again: on disk an untagged
/// `dkey` entry is always of the set in force (format 8; see `adapter/records.rs`).
#[tokio::test]
async fn a_restored_set_s_deleted_keys_are_untagged_again() {
    let mut app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(&app, "untag", json!({}), adapter("id")).await;
    let path = format!("/v1/buckets/{bucket}");
    let z = created(&app, &bucket, &secret, json!({"id": "z"})).await;
    assert_eq!(app.delete(&format!("{path}/objects/{z}")).await.0, 204);
    assert_eq!(app.patch(&path, json!({"source_adapter": adapter("key")})).await.0, 200);
    assert_eq!(app.patch(&path, json!({"source_adapter": adapter("id")})).await.0, 200);
    let backend = crate::support::stop_and_open(&mut app).await;
    let kept = stored_entries(&backend, "dkey", &bucket);
    assert_eq!(kept.len(), 1, "{kept:?}");
    let value: String = serde_json::from_slice(&kept[0].1).unwrap();
    assert!(!value.contains('@'), "the set in force's key, untagged: {value}");
}

fn windowed(key: &str) -> Value {
    json!({"adapter_type": "generic_webhook", "dedup_key": key, "batching": {"mode": "time_window", "window_seconds": 300}})
}

async fn status_of(app: &TestApp, bucket: &str, s: &str, body: Value) -> (String, String) {
    let (st, b) = ingest(app, bucket, Some(s), &body).await;
    assert_eq!(st, 200, "{body}: {b}");
    (b["status"].as_str().unwrap().to_string(), b["object_id"].as_str().unwrap_or_default().to_string())
}

/// Pages of two generations, buffered entries of both, deletes of either under the
/// other, kill -9 after every step: each set counts exactly its own keys when in force.
#[tokio::test]
async fn interleaved_generations_with_pages_and_buffers_across_kill9() {
    use futures::StreamExt;
    let mut app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(&app, "inter", json!({}), adapter("id")).await;
    let path = format!("/v1/buckets/{bucket}");
    let n = hookline::adapter::records::PAGE_KEYS + 40;
    let many = |prefix: &'static str, field: &'static str| {
        let (app, bucket, secret) = (&app, &bucket, &secret);
        futures::stream::iter(0..n)
            .map(move |i| async move {
                let v = format!("{prefix}{i}");
                (v.clone(), created(app, bucket, secret, json!({ field: v })).await)
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
    };
    let a: Vec<(String, String)> = many("a", "id").await;
    assert_eq!(app.patch(&path, json!({"source_adapter": adapter("key")})).await.0, 200);
    let b: Vec<(String, String)> = many("b", "key").await;
    assert_eq!(app.patch(&path, json!({"source_adapter": windowed("key")})).await.0, 200);
    let (st, bw) = status_of(&app, &bucket, &secret, json!({"key": "bw"})).await;
    assert_eq!(st, "buffered");
    app.crash_restart().await;
    // Back to id, windowed: bw stays buffered (of generation 1) while 0 is in force.
    let (st, r) = app.patch(&path, json!({"source_adapter": windowed("id")})).await;
    assert!(st == 200 && r["warnings"].to_string().contains("back in force"), "{r}");
    let (st, aw) = status_of(&app, &bucket, &secret, json!({"id": "aw"})).await;
    assert_eq!(st, "buffered");
    app.crash_restart().await;
    for (v, oid) in a.iter().step_by(7) {
        assert_eq!(status_of(&app, &bucket, &secret, json!({"id": v})).await, ("duplicate".into(), oid.clone()));
    }
    assert_eq!(status_of(&app, &bucket, &secret, json!({"id": "aw"})).await, ("duplicate".into(), aw.clone()));
    // Deletes under id: an a object, a b object, the buffered bw (generation 1).
    for oid in [&a[3].1, &b[5].1, &bw] {
        assert_eq!(app.delete(&format!("{path}/objects/{oid}")).await.0, 204, "{oid}");
    }
    app.crash_restart().await;
    assert_eq!(status_of(&app, &bucket, &secret, json!({"id": &a[3].0})).await, ("duplicate".into(), a[3].1.clone()));
    assert_eq!(status_of(&app, &bucket, &secret, json!({"id": "b9"})).await.0, "buffered", "b9 is no id key");
    // Back to key, immediate (flushes aw): b's keys and the deleted ones count.
    assert_eq!(app.patch(&path, json!({"source_adapter": adapter("key")})).await.0, 200);
    app.crash_restart().await;
    for (v, oid) in b.iter().step_by(7).chain([&b[5]]) {
        assert_eq!(status_of(&app, &bucket, &secret, json!({"key": v})).await, ("duplicate".into(), oid.clone()));
    }
    assert_eq!(status_of(&app, &bucket, &secret, json!({"key": "bw"})).await, ("duplicate".into(), bw.clone()));
    assert_eq!(status_of(&app, &bucket, &secret, json!({"key": "a4"})).await.0, "created");
    assert_eq!(status_of(&app, &bucket, &secret, json!({"key": "aw"})).await.0, "created");
    // And id once more, after a page of generation 1 keys was written by the starts.
    assert_eq!(app.patch(&path, json!({"source_adapter": adapter("id")})).await.0, 200);
    app.crash_restart().await;
    app.crash_restart().await;
    for (v, oid) in a.iter().step_by(5).chain([&a[3]]) {
        assert_eq!(status_of(&app, &bucket, &secret, json!({"id": v})).await, ("duplicate".into(), oid.clone()));
    }
    assert_eq!(status_of(&app, &bucket, &secret, json!({"id": "aw"})).await, ("duplicate".into(), aw));
    assert_eq!(status_of(&app, &bucket, &secret, json!({"id": "b9"})).await.0, "duplicate", "made under id above");
    assert_eq!(status_of(&app, &bucket, &secret, json!({"id": "b10"})).await.0, "created");
}

/// Past 8 scopes left the oldest is forgotten (and its generation not reused);
/// a delete by the registry (no adapter) of a kept set's object keeps its key for it.
#[tokio::test]
async fn the_cap_and_registry_deletes() {
    let mut app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(&app, "cap", json!({}), adapter("p0")).await;
    let path = format!("/v1/buckets/{bucket}");
    let mut made = vec![created(&app, &bucket, &secret, json!({"p0": "v"})).await];
    for i in 1..=9 {
        let (st, r) = app.patch(&path, json!({"source_adapter": adapter(&format!("p{i}"))})).await;
        assert!(st == 200 && r["warnings"].to_string().contains("started afresh"), "{r}");
        let forgot = r["warnings"].to_string().contains("the set by `p0` of generic_webhook events, the oldest");
        assert_eq!(forgot, i == 9, "the ninth switch forgets p0's set, and says so: {r}");
        made.push(created(&app, &bucket, &secret, json!({ format!("p{i}"): "v" })).await);
    }
    // p1..p8 kept, p0 forgotten: back to p0 is a new set; p3 back in force.
    app.crash_restart().await;
    let (st, r) = app.patch(&path, json!({"source_adapter": adapter("p0")})).await;
    assert!(st == 200 && r["warnings"].to_string().contains("started afresh"), "{r}");
    assert_eq!(status_of(&app, &bucket, &secret, json!({"p0": "v"})).await.0, "created");
    // Registry delete with no adapter of p3's object, then p3 again.
    assert_eq!(app.patch(&path, json!({"source_adapter": null})).await.0, 200);
    assert_eq!(app.delete(&format!("{path}/objects/{}", made[3])).await.0, 204);
    app.crash_restart().await;
    let (st, r) = app.patch(&path, json!({"source_adapter": adapter("p3")})).await;
    assert!(st == 200 && r["warnings"].to_string().contains("back in force"), "{r}");
    // A new secret (the removal kept none): from the answer.
    let secret = r["source_adapter"]["webhook_secret"].as_str().map(str::to_string).unwrap_or(secret);
    assert_eq!(status_of(&app, &bucket, &secret, json!({"p3": "v"})).await, ("duplicate".into(), made[3].clone()));
    // A new scope: none of the ten "v" marks counts.
    assert_eq!(app.patch(&path, json!({"source_adapter": adapter("q")})).await.0, 200);
    app.crash_restart().await;
    assert_eq!(status_of(&app, &bucket, &secret, json!({"q": "v"})).await.0, "created");
}
