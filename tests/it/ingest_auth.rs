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
//! - An ingest waits for its adapter's gate: while the actor restarts (crashed once) it is
//!   answered by the restarted actor; when the actor is stopped for good (its restart budget
//!   spent) it answers 503 saying to retry, and stores nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::inbound::bucket_with_adapter;
use crate::support::{eventually, metric_reaches, metric_value, TestApp};

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
    // The right secret beside a wrong one (or twice): which counts would be a guess, so
    // neither does; the status says why.
    for pair in [[secret.as_str(), wrong.as_str()], [wrong.as_str(), secret.as_str()], [secret.as_str(); 2]] {
        let headers = [("x-webhook-secret", pair[0]), ("x-webhook-secret", pair[1])];
        let (s, b) = app.post_raw(&path, b"{}".to_vec(), &headers).await;
        assert_eq!(s, 401, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("X-Webhook-Secret was sent 2 times"), "{b}");
    }
    let (s, st) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    assert_eq!((s, st["last_refused_ingest"]["reason"].as_str()), (200, Some("repeated_header")), "{st}");
    // A secret whose bytes are not text (another encoding, a binary paste) was sent: it is a
    // wrong one, not a missing one, which would send its sender looking for the header.
    let mut garbled = vec![0xff_u8, 0xfe];
    garbled.extend_from_slice(secret.as_bytes());
    let header = reqwest::header::HeaderValue::from_bytes(&garbled).unwrap();
    let r = reqwest::Client::new().post(app.url(&path)).header("x-webhook-secret", header).body("{}").send().await;
    assert_eq!(r.unwrap().status().as_u16(), 401);
    let (_, st) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    assert_eq!(st["last_refused_ingest"]["reason"], "wrong_webhook_secret", "{st}");
    // A bucket without an adapter is a 404 whatever the headers.
    let bare = app.create_bucket("no-adapter", json!({})).await;
    let headers = [("x-webhook-secret", secret.as_str()), ("x-webhook-secret", secret.as_str())];
    assert_eq!(app.post_raw(&ingest_path(&bare), b"{}".to_vec(), &headers).await.0, 404);
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

/// A Mux connection's provider_config: an API token and `signing` as its signing secret.
fn mux_config(signing: &str) -> Value {
    json!({"access_token_id": "tok", "access_token_secret": "tok-secret", "webhook_signing_secret": signing})
}

/// A Mux connection (see [`mux_config`]) and a bucket `name` whose Mux adapter uses it:
/// the connection's ID and the bucket's.
async fn mux_bucket_on_a_connection(app: &TestApp, name: &str, signing: &str) -> (String, String) {
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux", "provider_type": "mux", "provider_config": mux_config(signing)}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let conn = b["connection_id"].as_str().unwrap().to_string();
    let adapter = json!({"adapter_type": "mux", "connection_id": conn, "batching": {"mode": "immediate"}});
    let (bucket, _) = bucket_with_adapter(app, name, json!({"video": {"type": "video"}}), adapter).await;
    (conn, bucket)
}

/// The same race for a Mux signature: checked against the connection's signing secret,
/// held, the connection's secret replaced (no adapter restart: the connection is read per
/// check), then re-checked by the actor against the new secret: 401.
#[tokio::test]
async fn a_mux_signature_checked_before_its_connection_changed_is_checked_again() {
    use hookline::adapter::mux;
    let app = TestApp::start().await;
    let (conn, bucket) = mux_bucket_on_a_connection(&app, "mux", "whsec-old").await;
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
        .patch(&format!("/v1/organizations/connections/{conn}"), json!({"provider_config": mux_config("whsec-new")}))
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

/// The objects of `bucket` (one page is enough here).
async fn object_ids(app: &TestApp, bucket: &str) -> Vec<String> {
    let (s, b) = app.get(&format!("/v1/buckets/{bucket}/objects?limit=1000")).await;
    assert_eq!(s, 200, "{b}");
    b["results"].as_array().unwrap().iter().map(|o| o["object_id"].as_str().unwrap().to_string()).collect()
}

/// How many times source-adapter actors were restarted.
async fn adapter_restarts(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "hookline_actor_restarts_total", &[("actor", "source_adapter")])
}

/// Whether a (new) adapter actor of `bucket` runs and answers (the debug buffer endpoint asks it).
async fn adapter_answers(app: &TestApp, bucket: &str) -> bool {
    app.get(&format!("/v1/debug/buffer/{bucket}")).await.0 == 200
}

/// An adapter crashed once is restarted, and ingests sent around the crash are answered
/// normally (200), never 503: those queued behind the crash are sent again to the new actor,
/// those arriving while it restarts wait for its gate. A request authenticated against the
/// crashed actor's gate, held until its successor is up, is checked again there and accepted.
#[tokio::test]
async fn an_ingest_during_an_adapter_restart_is_answered_once_it_is_back() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "restarting", json!({}), adapter).await;
    let path = ingest_path(&bucket);
    let h = [("x-webhook-secret", secret.as_str())];

    // Senders keep ingesting until the restarted actor answers, then a few more.
    let back = AtomicBool::new(false);
    let sender = |t: usize| {
        let (app, path, h, back) = (&app, &path, &h, &back);
        async move {
            let mut answers = Vec::new();
            let mut after = 0;
            for i in 0.. {
                if back.load(Ordering::SeqCst) {
                    after += 1;
                    if after > 3 {
                        break;
                    }
                }
                let (s, b) = app.post_raw(path, format!(r#"{{"id": "s{t}-{i}"}}"#), h).await;
                answers.push((s, b));
            }
            answers
        }
    };
    let crash = async {
        let (s, b) = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
        assert_eq!(s, 202, "{b}");
        let labels = [("actor", "source_adapter")];
        assert!(metric_reaches(&app, "hookline_actor_restarts_total", &labels, 1.0).await, "restarted");
        assert!(eventually(Duration::from_secs(20), || adapter_answers(&app, &bucket)).await, "back");
        back.store(true, Ordering::SeqCst);
    };
    let (answers, ()) = tokio::join!(futures::future::join_all((0..8).map(sender)), crash);
    let answers: Vec<(u16, Value)> = answers.into_iter().flatten().collect();
    assert!(answers.iter().all(|(s, b)| *s == 200 && b["status"] == "created"), "{answers:?}");
    let mut answered: Vec<String> = answers.iter().map(|(_, b)| b["object_id"].as_str().unwrap().to_string()).collect();

    // A request checked against the crashed actor's gate, held across the restart.
    arm(&app, &bucket).await;
    let held = spawn_ingest(&app, &bucket, r#"{"id": "held"}"#, &h);
    wait_reached(&app, &bucket, 1).await;
    let (s, b) = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
    assert_eq!(s, 202, "{b}");
    let labels = [("actor", "source_adapter")];
    assert!(metric_reaches(&app, "hookline_actor_restarts_total", &labels, 2.0).await, "restarted again");
    assert!(eventually(Duration::from_secs(20), || adapter_answers(&app, &bucket)).await, "back again");
    release(&app, &bucket).await;
    let (s, b) = held.await.unwrap();
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    answered.push(b["object_id"].as_str().unwrap().to_string());

    // Every answer is an object, none twice; one restart per crash, no more.
    let mut stored = object_ids(&app, &bucket).await;
    stored.sort();
    answered.sort();
    assert_eq!(stored, answered);
    assert_eq!(adapter_restarts(&app).await, 2.0);
}

/// An adapter stopped for good (crashed past its restart budget) publishes no gate: an
/// ingest waits for one as for a restart, then answers 503 with a message saying the
/// adapter is not running and to retry (the upstream retries); nothing is stored. Once a
/// PATCH starts the adapter again, the same event is accepted.
#[tokio::test]
async fn an_ingest_for_a_stopped_adapter_answers_503_after_waiting_for_its_gate() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "stopped", json!({}), adapter).await;
    let path = ingest_path(&bucket);
    let h = [("x-webhook-secret", secret.as_str())];
    let (s, b) = app.post_raw(&path, r#"{"id": "before"}"#, &h).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");

    // Crash it until the registry gives up on it (a crash sent while it restarts is lost,
    // so keep crashing); the registry says so in its log.
    let gave_up = || async {
        let _ = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
        app.log().contains("source adapter failed too often; leaving it stopped")
    };
    assert!(eventually(Duration::from_secs(60), gave_up).await, "log:\n{}", app.log());
    assert!(!adapter_answers(&app, &bucket).await, "no actor runs");

    for attempt in ["first", "again"] {
        let (s, b) = app.post_raw(&path, r#"{"id": "while-stopped"}"#, &h).await;
        assert_eq!((s, b["error"]["code"].as_str()), (503, Some("unavailable")), "{attempt}: {b}");
        let msg = b["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("source adapter of this bucket is not running") && msg.contains("retry"),
            "{attempt}: {msg}"
        );
        assert!(msg.contains("PATCH") && msg.contains("/source-adapter/status"), "says what to do: {msg}");
    }
    let status_path = format!("/v1/buckets/{bucket}/source-adapter/status");
    let (s, st) = app.get(&status_path).await;
    assert_eq!((s, st["actor"].as_str()), (200, Some("stopped")), "{st}");
    let why = st["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("stopped after failing") && why.contains("PATCH"), "the status says why: {st}");
    assert_eq!(object_ids(&app, &bucket).await.len(), 1, "nothing stored while stopped");
    let restarts = hookline::adapter::registry::ADAPTER_MAX_RESTARTS as f64;
    assert_eq!(adapter_restarts(&app).await, restarts, "stopped once its budget was spent");

    // Started again by a PATCH: the upstream's retry is accepted.
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"description": "back"})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app.post_raw(&path, r#"{"id": "while-stopped"}"#, &h).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    assert_eq!(object_ids(&app, &bucket).await.len(), 2);
    let (s, st) = app.get(&status_path).await;
    assert_eq!((s, st["actor"].as_str()), (200, Some("running")), "{st}");
}

/// Handling a body takes many times its size, so a body received is charged again, at 16×
/// (at most the whole bound), to a second bound of `server.max_upstream_body_memory_mb`:
/// while one large body is being handled (held here, authenticated, before it is parsed), a
/// second waits for its share, then gets 503 (upstreams retry). A small body, or the same
/// large one once the first is answered, goes through.
#[tokio::test]
async fn large_bodies_are_handled_a_bounded_number_at_once() {
    use crate::support::Options;
    let opts = Options {
        server_toml: "max_body_bytes = 262144\nmax_upstream_body_memory_mb = 4\n".into(),
        ..Options::default()
    };
    let app = TestApp::start_with(opts).await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "large", json!({}), adapter.clone()).await;
    let (other, other_secret) = bucket_with_adapter(&app, "small", json!({}), adapter).await;
    let large = |n: u32| format!("{{\"n\": {n}, \"pad\": \"{}\"}}", "x".repeat(200 << 10));
    let headers = [("x-webhook-secret", secret.as_str())];
    arm(&app, &bucket).await;
    // 200 KiB: 3.2 MiB of the 4 MiB handling bound, held at the hold.
    let first = spawn_ingest(&app, &bucket, large(1), &headers);
    wait_reached(&app, &bucket, 1).await;
    let (s, b) = app.post_raw(&ingest_path(&bucket), large(2), &headers).await;
    assert_eq!(s, 503, "{b}");
    assert!(b["error"]["message"].as_str().is_some_and(|m| m.contains("being handled")), "{b}");
    // A small body needs 16 KiB of it: not held back.
    let (s, b) = app.post_raw(&ingest_path(&other), r#"{"small": true}"#, &[("x-webhook-secret", &other_secret)]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    release(&app, &bucket).await;
    let (s, b) = first.await.unwrap();
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    let (s, b) = app.post_raw(&ingest_path(&bucket), large(2), &headers).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "the share came back: {b}");
    let m = app.metrics().await;
    assert!(metric_value(&m, "hookline_http_upstream_bodies_refused_total", &[]) >= 1.0);
    assert!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", "unavailable")]) >= 1.0);
}

/// An authenticated sender's event that hookline refuses for its body shows in the adapter's
/// status, whatever the code: not JSON (400) counts as failed, with the reason in
/// `last_error`, as a 422 does; a body past `server.max_body_bytes` (413, never read) is the
/// `last_refused_ingest`, as a 401 is. Either is lost unless the sender changes something.
#[tokio::test]
async fn refused_bodies_of_an_authenticated_sender_show_in_the_status() {
    let opts = crate::support::Options { server_toml: "max_body_bytes = 2048\n".into(), ..Default::default() };
    let app = TestApp::start_with(opts).await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "refused-bodies", json!({}), adapter).await;
    let headers = [("x-webhook-secret", secret.as_str())];
    let (s, b) = app.post_raw(&ingest_path(&bucket), r#"{"broken": "#, &headers).await;
    assert_eq!(s, 400, "{b}");
    let status = format!("/v1/buckets/{bucket}/source-adapter/status");
    let (_, st) = app.get(&status).await;
    assert_eq!(st["events_failed_24h"], 1, "{st}");
    assert!(st["last_error"].as_str().is_some_and(|e| e.contains("JSON")), "{st}");
    let (s, b) = app.post_raw(&ingest_path(&bucket), format!(r#"{{"pad": "{}"}}"#, "x".repeat(4096)), &headers).await;
    assert_eq!(s, 413, "{b}");
    let (_, st) = app.get(&status).await;
    assert_eq!(st["last_refused_ingest"]["reason"], "too_large", "{st}");
    assert_eq!(st["events_failed_24h"], 1, "the 413's event never reached the adapter: {st}");
}

/// A Mux asset's object made on a bucket whose connection signs with "whsec-old", then a
/// `video.asset.deleted` signed with that secret, verified by the HTTP task and queued behind
/// the bucket's busy actor while the connection is PATCHed with `change`: the delete's
/// answer (status, body) and the objects left.
async fn a_lifecycle_delete_across(app: &TestApp, name: &str, change: Value) -> (u16, String, usize) {
    use hookline::adapter::mux;
    let (conn, bucket) = mux_bucket_on_a_connection(app, name, "whsec-old").await;
    let asset = "AsSeTlIfEcYcLe01";
    let now = || time::OffsetDateTime::now_utc().unix_timestamp();
    let ready = json!({"type": "video.asset.ready", "object": {"type": "asset", "id": asset},
        "data": {"id": asset, "status": "ready", "playback_ids": [{"policy": "public", "id": "pbx"}]}})
    .to_string();
    let h = mux::sign("whsec-old", now(), ready.as_bytes());
    let (s, b) = app.post_raw(&ingest_path(&bucket), ready, &[("mux-signature", &h)]).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
    assert_eq!(object_ids(app, &bucket).await.len(), 1);

    // The bucket's actor is busy (as with a Mux API fetch or an index run).
    let (s, b) = app.post(&format!("/v1/debug/stall-adapter/{bucket}"), json!({})).await;
    assert_eq!(s, 200, "{b}");
    let deleted = json!({"type": "video.asset.deleted", "object": {"type": "asset", "id": asset},
        "data": {"id": asset, "status": "ready"}})
    .to_string();
    let sig = mux::sign("whsec-old", now(), deleted.as_bytes());
    let rb = app.client.post(app.url(&format!("/v1/webhooks/mux/{conn}"))).header("mux-signature", sig).body(deleted);
    let held = tokio::spawn(async move {
        let r = rb.send().await.expect("request");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    // Verified, planned, queued at the actor.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, b) = app.patch(&format!("/v1/organizations/connections/{conn}"), change).await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = app.delete(&format!("/v1/debug/stall-adapter/{bucket}")).await;
    assert_eq!(s, 200);
    let (s, text) = held.await.unwrap();
    (s, text, object_ids(app, &bucket).await.len())
}

/// The lifecycle route's counterpart of
/// `a_mux_signature_checked_before_its_connection_changed_is_checked_again`: a
/// `video.asset.deleted` signed with the connection's old signing secret, verified by the
/// HTTP task and queued behind a busy actor while the secret is replaced (PATCH answered
/// 200), is checked again by the actor and refused (401), changing nothing.
#[tokio::test]
async fn a_lifecycle_delete_signed_with_a_rotated_out_secret_is_not_applied_after_the_rotation() {
    let app = TestApp::start().await;
    // The operator rotates the signing secret: the old one must no longer authenticate anything.
    let rotation = json!({"provider_config": mux_config("whsec-new")});
    let (s, text, left) = a_lifecycle_delete_across(&app, "mux-lc", rotation).await;
    assert!(
        s == 401 && left == 1,
        "a lifecycle delete signed with the rotated-out secret was applied after the rotation: {s} {text}; objects left: {left}"
    );
}

/// The other side of the re-check: a lifecycle delete signed with the current secret,
/// queued behind a busy actor while a connection changes in a way that keeps that secret
/// (this one renamed), is still applied (200), not refused.
#[tokio::test]
async fn a_lifecycle_delete_queued_across_a_rename_of_its_connection_is_applied() {
    let app = TestApp::start().await;
    let (s, text, left) = a_lifecycle_delete_across(&app, "mux-lc-rename", json!({"name": "mux renamed"})).await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(left, 0);
}

/// When a Mux adapter's connection cannot be decrypted (the master key changed), anonymous
/// requests carrying a fresh-looking `Mux-Signature` make the daemon try it (from the head
/// and over the body): it logs that once a minute, not once per request, so that anyone
/// who knows a bucket ID cannot fill the operator's error log.
#[tokio::test]
async fn anonymous_requests_cannot_flood_the_error_log_when_credentials_are_unreadable() {
    use base64::Engine;
    let mut app = TestApp::start().await;
    let (_, bucket) = mux_bucket_on_a_connection(&app, "mux-unreadable", "whsec-x").await;
    let other_key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    app.set_env("HOOKLINE_MASTER_KEY", &other_key);
    app.restart().await;
    let before = app.log().matches("open connection").count();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let forged = format!("t={now},v1={}", "00".repeat(32));
    for _ in 0..20 {
        let (s, _) = app.post_raw(&ingest_path(&bucket), "{}", &[("mux-signature", forged.as_str())]).await;
        assert_eq!(s, 503);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = app.log().matches("open connection").count() - before;
    assert!(lines <= 2, "20 anonymous requests wrote {lines} ERROR lines \"open connection\"");
}
