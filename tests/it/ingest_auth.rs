//! Ingest authentication and the batch buffer's byte count, against the real daemon.
//!
//! - Nothing is parsed before the sender is authenticated: unauthenticated bodies (large
//!   JSON, invalid JSON, compressed) get 401 without reaching the point where the body is
//!   parsed, shown by a debug hold armed at that point (`/v1/debug/hold-ingest/{bucket}`).
//! - A request authenticated just before its adapter changed (a rotated secret, a rotated
//!   Mux signing secret), still on its way to the actor, is checked again against the new
//!   settings: the old secret gets 401. The hold makes the race deterministic.
//! - The buffer's byte count stays exact through in-place updates and deletes of buffered
//!   entries (`/v1/debug/buffer/{bucket}`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::inbound::bucket_with_adapter;
use crate::support::{eventually, TestApp};

fn ingest_path(bucket: &str) -> String {
    format!("/v1/buckets/{bucket}/source-adapter/ingest")
}

/// How many ingests of `bucket` reached the armed hold (authenticated, not yet parsed).
async fn reached(app: &TestApp, bucket: &str) -> u64 {
    let (s, b) = app.get(&format!("/v1/debug/hold-ingest/{bucket}")).await;
    assert_eq!(s, 200, "{b}");
    b["reached"].as_u64().unwrap()
}

async fn arm(app: &TestApp, bucket: &str) {
    let (s, b) = app.post(&format!("/v1/debug/hold-ingest/{bucket}"), json!({})).await;
    assert_eq!(s, 200, "{b}");
}

async fn release(app: &TestApp, bucket: &str) {
    let (s, b) = app.delete(&format!("/v1/debug/hold-ingest/{bucket}")).await;
    assert_eq!(s, 200, "{b}");
}

/// Posts an ingest in a task of its own (it will wait at the hold); returns its answer.
fn spawn_ingest(
    app: &TestApp,
    bucket: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<(u16, Value)> {
    let mut rb = app.client.post(app.url(&ingest_path(bucket))).body(body);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    tokio::spawn(async move {
        let resp = rb.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    })
}

/// Waits until `n` ingests of `bucket` have reached the hold.
async fn wait_reached(app: &TestApp, bucket: &str, n: u64) {
    let got = eventually(Duration::from_secs(20), || async { reached(app, bucket).await == n }).await;
    assert!(got, "{n} ingest(s) did not reach the hold");
}

/// Before this change the body was parsed first and the secret checked after, in the actor;
/// the answers were the same 401s (the parse error was kept for authenticated senders), but
/// an anonymous sender made the daemon hold the parsed JSON (`[0,0,…]`: ~16× its bytes).
/// Now an unauthenticated body never reaches the parse.
#[tokio::test]
async fn an_unauthenticated_body_is_never_parsed() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "anon", json!({}), adapter).await;
    let path = ingest_path(&bucket);
    arm(&app, &bucket).await;

    let zeros = format!("[{}0]", "0,".repeat(400 << 10)); // 800 KiB of JSON, ~13 MB parsed
    let mut wrong = secret.clone();
    wrong.replace_range(0..1, if secret.starts_with('0') { "1" } else { "0" });
    let gz = vec![0x1f_u8, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0x03];
    let cases = [
        ("large JSON, no secret", zeros.clone().into_bytes(), vec![]),
        ("large JSON, wrong secret", zeros.clone().into_bytes(), vec![("x-webhook-secret", wrong.as_str())]),
        ("invalid JSON, no secret", b"{not json".to_vec(), vec![]),
        (
            "compressed, wrong secret",
            gz.clone(),
            vec![("x-webhook-secret", wrong.as_str()), ("content-encoding", "gzip")],
        ),
        // A generic adapter has no native scheme: the header authenticates nothing.
        ("a Mux-Signature on a generic adapter", b"{}".to_vec(), vec![("mux-signature", "t=1,v1=00")]),
    ];
    for (case, body, headers) in cases {
        let (s, b) = app.post_raw(&path, body, &headers).await;
        assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "{case}: {b}");
    }
    assert_eq!(reached(&app, &bucket).await, 0, "an unauthenticated ingest reached the parse");

    // An authenticated one gets there (held), and only then is its body parsed: 400 for
    // invalid JSON, 415 for a compressed body, as before.
    let held = spawn_ingest(&app, &bucket, "{not json", &[("x-webhook-secret", &secret)]);
    wait_reached(&app, &bucket, 1).await;
    release(&app, &bucket).await;
    let (s, b) = held.await.unwrap();
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("malformed_json")), "{b}");
    let (s, _) = app.post_raw(&path, gz, &[("x-webhook-secret", secret.as_str()), ("content-encoding", "gzip")]).await;
    assert_eq!(s, 415);
    // The large array, authenticated: parsed, and refused as a payload (not an object).
    let (s, b) = app.post_raw(&path, zeros, &[("x-webhook-secret", secret.as_str())]).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("validation_failed")), "{b}");
}

/// A request authenticated with the old secret, held between its check and its hand-over
/// while the secret is rotated, reaches the new actor and gets 401 there; one whose secret
/// survived the change (a reconfiguration that keeps it) is accepted after its re-check.
#[tokio::test]
async fn a_request_checked_before_a_rotation_is_checked_again() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (bucket, old) = bucket_with_adapter(&app, "rotation", json!({}), adapter.clone()).await;
    let path = ingest_path(&bucket);

    arm(&app, &bucket).await;
    let held = spawn_ingest(&app, &bucket, r#"{"id": "before"}"#, &[("x-webhook-secret", &old)]);
    wait_reached(&app, &bucket, 1).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"rotate_secret": true})).await;
    assert_eq!(s, 200, "{b}");
    let new = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    release(&app, &bucket).await;
    let (s, b) = held.await.unwrap();
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "old secret after the rotation: {b}");
    let (s, b) = app.get(&format!("/v1/buckets/{bucket}/objects")).await;
    assert_eq!((s, b["results"].as_array().map(Vec::len)), (200, Some(0)), "{b}");

    // The same race with a change that keeps the secret: re-checked, and accepted.
    arm(&app, &bucket).await;
    let held = spawn_ingest(&app, &bucket, r#"{"id": "kept"}"#, &[("x-webhook-secret", &new)]);
    wait_reached(&app, &bucket, 1).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter})).await;
    assert_eq!(s, 200, "{b}");
    release(&app, &bucket).await;
    let (s, b) = held.await.unwrap();
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");

    // And after the race, as before: old 401, new 200.
    let (s, _) = app.post_raw(&path, r#"{"id": "after"}"#, &[("x-webhook-secret", old.as_str())]).await;
    assert_eq!(s, 401);
    let (s, b) = app.post_raw(&path, r#"{"id": "after"}"#, &[("x-webhook-secret", new.as_str())]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
}

/// The same race for a Mux signature: checked against the connection's signing secret,
/// held, the connection's secret replaced (no adapter restart: the connection is read per
/// check), then re-checked by the actor against the new secret: 401.
#[tokio::test]
async fn a_mux_signature_checked_before_its_connection_changed_is_checked_again() {
    use hookline::adapter::mux;
    let app = TestApp::start().await;
    let config = |signing: &str| json!({"access_token_id": "tok", "access_token_secret": "tok-secret", "webhook_signing_secret": signing});
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux", "provider_type": "mux", "provider_config": config("whsec-old")}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let conn = b["connection_id"].as_str().unwrap().to_string();
    let adapter = json!({"adapter_type": "mux", "connection_id": conn, "batching": {"mode": "immediate"}});
    let (bucket, _) = bucket_with_adapter(&app, "mux", json!({"video": {"type": "video"}}), adapter).await;
    let signed = |secret: &str, asset: &str| {
        let body = json!({"type": "video.asset.ready", "object": {"type": "asset", "id": asset},
            "data": {"id": asset, "status": "ready", "playback_ids": [{"policy": "public", "id": format!("pb{asset}")}]}})
        .to_string();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        (mux::sign(secret, now, body.as_bytes()), body)
    };

    arm(&app, &bucket).await;
    let (header, body) = signed("whsec-old", "AsSeTrAcE01");
    let held = spawn_ingest(&app, &bucket, body, &[("mux-signature", &header)]);
    wait_reached(&app, &bucket, 1).await;
    let (s, b) = app
        .patch(&format!("/v1/organizations/connections/{conn}"), json!({"provider_config": config("whsec-new")}))
        .await;
    assert_eq!(s, 200, "{b}");
    release(&app, &bucket).await;
    let (s, b) = held.await.unwrap();
    assert_eq!((s, b["error"]["code"].as_str()), (401, Some("unauthorized")), "old signing secret: {b}");

    let (header, body) = signed("whsec-new", "AsSeTrAcE02");
    let (s, b) = app.post_raw(&ingest_path(&bucket), body, &[("mux-signature", &header)]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
}

/// The byte count of a time_window buffer stays exact while buffered rows are updated in
/// place (larger and smaller), deleted by the upstream, and deleted through the objects API.
#[tokio::test]
async fn the_buffer_byte_count_stays_exact() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "supabase", "field_mapping": {"record.title": "title"},
        "event_filter": {"event_types": ["INSERT", "UPDATE", "DELETE"]},
        "batching": {"mode": "time_window", "window_seconds": 300, "max_batch_size": 1000}});
    let (bucket, secret) = bucket_with_adapter(&app, "bytes", json!({"title": {"type": "string"}}), adapter).await;
    let path = ingest_path(&bucket);
    let h = [("x-webhook-secret", secret.as_str())];
    let row = |op: &str, id: u64, title: &str| {
        let record = if op == "DELETE" { Value::Null } else { json!({"id": id, "title": title}) };
        json!({"type": op, "table": "t", "schema": "public", "record": record, "old_record": {"id": id}}).to_string()
    };
    let exact = |step: &'static str| {
        let app = &app;
        let bucket = bucket.clone();
        async move {
            let (s, b) = app.get(&format!("/v1/debug/buffer/{bucket}")).await;
            assert_eq!(s, 200, "{b}");
            assert_eq!(b["counted"], b["actual"], "{step}: {b}");
            b["entries"].as_u64().unwrap()
        }
    };
    let mut ids = Vec::new();
    for id in 1..=4 {
        let (s, b) = app.post_raw(&path, row("INSERT", id, &"i".repeat(1000)), &h).await;
        assert_eq!((s, b["status"].as_str()), (200, Some("buffered")), "{b}");
        ids.push(b["object_id"].as_str().unwrap().to_string());
    }
    assert_eq!(exact("inserts").await, 4);
    let (long, longer) = ("l".repeat(5000), "again".repeat(300));
    for (id, title) in [(1, "s"), (2, long.as_str()), (1, longer.as_str())] {
        let (s, b) = app.post_raw(&path, row("UPDATE", id, title), &h).await;
        assert_eq!((s, b["status"].as_str()), (200, Some("updated")), "{b}");
        assert_eq!(exact("update").await, 4);
    }
    let (s, b) = app.post_raw(&path, row("DELETE", 3, ""), &h).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("deleted")), "{b}");
    assert_eq!(exact("upstream delete").await, 3);
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}/objects/{}", ids[3])).await.0, 204);
    assert_eq!(exact("objects API delete").await, 2);
}
