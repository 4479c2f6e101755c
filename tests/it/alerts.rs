//! Alerts (`POST /v1/buckets/{id}/objects/{id}/alerts`) and the `on_alert` writeback trigger,
//! over HTTP against the real daemon. The source systems are the local fake PostgREST and
//! generic receiver of `writeback.rs`; `alert.triggered` goes to a local webhook receiver.

use std::time::Duration;

use serde_json::{json, Value};

use crate::outbound_receiver::Receiver;
use crate::support::{eventually, metric_reaches, stop_and_open, stored_entries, stored_events, TestApp};
use crate::writeback::{bucket_with, db_insert, ingest, supabase_connection, Upstream, WAIT};

/// The keys of `ks` under `within` in a stopped daemon's store.
fn stored_keys(backend: &hookline::store::SledBackend, ks: &str, within: &str) -> Vec<String> {
    stored_entries(backend, ks, within).into_iter().map(|(k, _)| k).collect()
}

/// Seed 000's writeback example, as given (`on_alert`, `listing_url` as the external ID).
fn seed_writeback() -> Value {
    json!({"enabled": true, "trigger": "on_alert", "external_id_field": "listing_url",
        "field_mapping": [
            {"source_path": "verdict_classification", "target_field": "mp_verdict"},
            {"source_path": "verdict_confidence", "target_field": "mp_confidence"}]})
}

fn alerts_path(bucket: &str, object: &str) -> String {
    format!("/v1/buckets/{bucket}/objects/{object}/alerts")
}

async fn raise(app: &TestApp, bucket: &str, object: &str, body: Value) -> (u16, Value) {
    app.post(&alerts_path(bucket, object), body).await
}

/// A generic_webhook bucket (immediate) writing back `writeback` to `url`, with one object;
/// returns (bucket_id, webhook_secret, object_id).
async fn generic_with_object(app: &TestApp, name: &str, writeback: Value) -> (String, String, String) {
    let (bucket, secret) = bucket_with(
        app,
        name,
        json!({"title": {"type": "string"}, "ref": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"data.title": "title", "data.ref": "ref"},
            "batching": {"mode": "immediate"}, "writeback": writeback}),
    )
    .await;
    let r = ingest(app, &bucket, &secret, json!({"type": "ticket", "data": {"title": "Broken", "ref": "T-9"}})).await;
    assert_eq!(r["status"], "created", "{r}");
    let oid = r["object_id"].as_str().expect("object_id").to_string();
    (bucket, secret, oid)
}

fn generic_on_alert(url: &str) -> Value {
    json!({"trigger": "on_alert", "external_id_field": "ref", "writeback_url": url,
        "field_mapping": [{"source_path": "verdict_classification", "target_field": "verdict"},
                          {"source_path": "metadata.title", "target_field": "title"}]})
}

/// The seed's example end to end: a Supabase row becomes an object; an alert with the
/// processing results PATCHes the row through PostgREST with the mapped columns; the same
/// `alert_id` again is a duplicate that writes nothing twice.
#[tokio::test]
async fn supabase_on_alert_patches_the_row_with_the_mapped_results_once() {
    let mut app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let key = "srk-alert-secret-0099";
    let conn = supabase_connection(&app, &pg.url(""), key).await;
    let (bucket, secret) = bucket_with(
        &app,
        "listings",
        json!({"title": {"type": "string"}, "listing_url": {"type": "string"}}),
        json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "id_column": "listing_url", "table": "listings",
            "field_mapping": {"record.title": "title", "record.listing_url": "listing_url"},
            "batching": {"mode": "immediate"}, "writeback": seed_writeback()}),
    )
    .await;
    let r = ingest(
        &app,
        &bucket,
        &secret,
        db_insert("listings", json!({"id": 1, "title": "Loft", "listing_url": "L-1001"})),
    )
    .await;
    assert_eq!(r["status"], "created", "{r}");
    let oid = r["object_id"].as_str().unwrap().to_string();
    let oid = oid.as_str();

    let results = json!({"verdict_classification": "fake", "verdict_confidence": 0.93, "model": "v2"});
    let (s, a) = raise(&app, &bucket, oid, json!({"results": results})).await;
    assert_eq!(s, 202, "{a}");
    let alert_id = a["alert_id"].as_str().expect("alert_id").to_string();
    assert!(alert_id.starts_with("alr_"), "made when absent: {a}");
    let expect = json!({"alert_id": alert_id, "object_id": oid, "bucket_id": bucket,
        "status": "accepted", "writeback": "queued"});
    assert_eq!(a, expect);
    assert!(eventually(WAIT, || async { !pg.seen().is_empty() }).await, "no PATCH reached PostgREST");
    let req = &pg.seen()[0];
    assert_eq!(
        (req.method.as_str(), req.path.as_str(), req.query.as_str()),
        ("PATCH", "/rest/v1/listings", "listing_url=eq.L-1001")
    );
    assert_eq!(req.headers.get("apikey").map(String::as_str), Some(key));
    assert_eq!(req.body, json!({"mp_verdict": "fake", "mp_confidence": 0.93}), "only the mapped results");
    // Counted once the job's deletion is submitted: a job the duplicate below recorded
    // would be a new pending one, not one that this deletion removes unsent.
    assert!(
        metric_reaches(&app, "hookline_writebacks_total", &[("adapter", "supabase"), ("outcome", "succeeded")], 1.0)
            .await
    );

    // The same alert again: a duplicate, answered as the first, nothing queued twice.
    let (s, d) = raise(&app, &bucket, oid, json!({"alert_id": alert_id, "results": results})).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!((d["status"].as_str(), d["writeback"].as_str()), (Some("duplicate"), Some("queued")), "{d}");
    assert!(metric_reaches(&app, "hookline_alerts_total", &[("outcome", "accepted")], 1.0).await);
    assert!(metric_reaches(&app, "hookline_alerts_total", &[("outcome", "duplicate")], 1.0).await);
    // Its ID with other results: a 409, not a silent duplicate (the first results stand).
    let (s, d) =
        raise(&app, &bucket, oid, json!({"alert_id": alert_id, "results": {"verdict_classification": "real"}})).await;
    assert_eq!((s, d["error"]["code"].as_str()), (409, Some("conflict")), "{d}");
    assert!(d["error"]["message"].as_str().unwrap().contains("with other results"), "{d}");
    assert!(!app.log().contains(key), "the service-role key must never be logged");
    // A second job would have reached PostgREST by now, or still be pending in the store
    // (it was durable before the duplicate's answer; a stopped daemon sends nothing more).
    let backend = stop_and_open(&mut app).await;
    assert_eq!(pg.seen().len(), 1, "one PATCH for one alert: {:?}", pg.seen());
    assert_eq!(stored_keys(&backend, "wb", &format!("{bucket}/")), Vec::<String>::new(), "no job left");
    let alerts = stored_entries(&backend, "alert", &format!("{bucket}/{oid}/"));
    assert_eq!(alerts.len(), 1);
    let record: Value = serde_json::from_slice(&alerts[0].1).unwrap();
    assert_eq!(record["results"], results, "the first results stand");
}

#[tokio::test]
async fn generic_on_alert_posts_the_alert_id_and_trigger() {
    let app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    let (bucket, _, oid) = generic_with_object(&app, "tickets", generic_on_alert(&rx.url("/results"))).await;
    let (s, a) =
        raise(&app, &bucket, &oid, json!({"alert_id": "run-7:t-9", "results": {"verdict_classification": "spam"}}))
            .await;
    assert_eq!((s, a["writeback"].as_str()), (202, Some("queued")), "{a}");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let req = &rx.seen()[0];
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/results"));
    // The job's writeback_id, as the writebacks list names it: what a receiver drops repeats by.
    use base64::Engine;
    let id = format!("wb_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("ajob/{oid}/run-7:t-9")));
    assert_eq!(
        req.body,
        json!({"object_id": oid, "external_id": "T-9", "alert_id": "run-7:t-9", "trigger": "on_alert",
            "fields": {"verdict": "spam", "title": "Broken"}, "writeback_id": id}),
        "the results and the object are both readable"
    );
}

/// An alert whose results hold none of the mapped source paths has nothing to write back:
/// it is recorded and published, and its answer says the writeback was skipped and why
/// (rather than "queued" for a job that could only fail), as do the adapter status'
/// `last_error` and the metrics; a duplicate answers the same. The record keeps `"none"`
/// (what a binary from before "skipped" can read) beside the reason.
#[tokio::test]
async fn an_alert_with_nothing_to_write_back_says_so() {
    let mut app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    let writeback = json!({"trigger": "on_alert", "external_id_field": "ref", "writeback_url": rx.url("/results"),
        "field_mapping": [{"source_path": "verdict_classification", "target_field": "verdict"}]});
    let (bucket, _, oid) = generic_with_object(&app, "skipped", writeback).await;
    let body = json!({"alert_id": "a1", "results": {"score": 0.4}});
    let (s, a) = raise(&app, &bucket, &oid, body.clone()).await;
    assert_eq!((s, a["status"].as_str(), a["writeback"].as_str()), (202, Some("accepted"), Some("skipped")), "{a}");
    assert!(a["writeback_skipped"].as_str().unwrap_or("").contains("verdict_classification"), "{a}");
    let (_, st) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    let last_error = st["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("alert a1") && last_error.contains("skipped"), "{st}");
    let skipped = [("adapter", "generic_webhook"), ("outcome", "skipped")];
    assert!(metric_reaches(&app, "hookline_writebacks_total", &skipped, 1.0).await);
    let (s, d) = raise(&app, &bucket, &oid, body).await;
    assert_eq!((s, d["status"].as_str()), (200, Some("duplicate")), "{d}");
    assert_eq!((&d["writeback"], &d["writeback_skipped"]), (&a["writeback"], &a["writeback_skipped"]));
    // Results with the mapped path on the same object: queued and sent.
    let (s, q) =
        raise(&app, &bucket, &oid, json!({"alert_id": "a2", "results": {"verdict_classification": "ok"}})).await;
    assert_eq!((s, q["writeback"].as_str()), (202, Some("queued")), "{q}");
    assert!(q.get("writeback_skipped").is_none(), "{q}");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let backend = stop_and_open(&mut app).await;
    assert_eq!(rx.seen().len(), 1, "{:?}", rx.seen());
    assert_eq!(rx.seen()[0].body["alert_id"], "a2");
    // No job of a1 was ever recorded: none pending, none given up.
    for prefix in ["ajob", "adead"] {
        let jobs = stored_keys(&backend, "wb", &format!("{bucket}/{prefix}/"));
        assert!(jobs.iter().all(|k| !k.ends_with("/a1")), "{prefix}: {jobs:?}");
    }
    let alerts = stored_entries(&backend, "alert", &format!("{bucket}/{oid}/"));
    let a1 = alerts.iter().find(|(k, _)| k.ends_with("/a1")).expect("a1 is recorded");
    let record: Value = serde_json::from_slice(&a1.1).unwrap();
    assert_eq!(record["writeback"], "none", "{record}");
    assert!(record["writeback_skipped"].is_string(), "{record}");
}

/// The same alert sent five times at once (an upstream retrying eagerly) is one alert: one
/// 202 and four duplicates (which queue nothing), counted as such, and its writeback is sent.
#[tokio::test]
async fn the_same_alert_sent_concurrently_is_accepted_once() {
    let app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    let (bucket, _, oid) = generic_with_object(&app, "tickets", generic_on_alert(&rx.url("/results"))).await;
    let body = json!({"alert_id": "once", "results": {"verdict_classification": "spam"}});
    let answers = futures::future::join_all((0..5).map(|_| raise(&app, &bucket, &oid, body.clone()))).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 1, "{answers:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4, "{answers:?}");
    assert!(answers.iter().all(|(_, a)| a["writeback"] == "queued" && a["alert_id"] == "once"), "{answers:?}");
    assert!(metric_reaches(&app, "hookline_alerts_total", &[("outcome", "duplicate")], 4.0).await);
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
}

/// An object buffered in a bucket whose adapter stopped for good (past its restart budget):
/// the registry decides the alert, and its 409 says the flush waits for the adapter rather
/// than promising one by a time.
#[tokio::test]
async fn an_alert_on_an_object_buffered_by_a_stopped_adapter_says_so() {
    let app = TestApp::start().await;
    let (bucket, secret) = bucket_with(
        &app,
        "stalled",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"data.title": "title"},
            "batching": {"mode": "count", "max_batch_size": 100}}),
    )
    .await;
    let r = ingest(&app, &bucket, &secret, json!({"type": "t", "data": {"title": "waiting"}})).await;
    assert_eq!(r["status"], "buffered", "{r}");
    let oid = r["object_id"].as_str().expect("object_id").to_string();
    // Crash it until its restart budget is spent (a crash sent while it restarts is lost,
    // so keep crashing), then the alert is decided by the registry.
    let stopped = || async {
        let _ = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
        let (s, b) = raise(&app, &bucket, &oid, json!({"results": {"v": 1}})).await;
        s == 409 && b["error"]["message"].as_str().is_some_and(|m| m.contains("source adapter is stopped"))
    };
    assert!(eventually(Duration::from_secs(60), stopped).await);
    let labels = [("actor", "source_adapter")];
    let restarts = hookline::adapter::registry::ADAPTER_MAX_RESTARTS as f64;
    assert!(metric_reaches(&app, "hookline_actor_restarts_total", &labels, restarts).await, "stopped past its budget");
}

/// An alert's writeback is a job like a batch's: recorded before the answer, retried, and
/// still there after a crash; the alert record is too (the same ID after the restart is a
/// duplicate).
#[tokio::test]
async fn an_alert_writeback_survives_a_crash_before_the_receiver_is_up() {
    let mut app = TestApp::start().await;
    let rx = Upstream::start(503).await;
    let (bucket, _, oid) = generic_with_object(&app, "later", generic_on_alert(&rx.url("/wb"))).await;
    let body = json!({"alert_id": "a-1", "results": {"verdict_classification": "fake"}});
    let (s, a) = raise(&app, &bucket, &oid, body.clone()).await;
    assert_eq!(s, 202, "{a}");
    assert!(eventually(WAIT, || async { !rx.seen().is_empty() }).await, "first attempt");
    app.crash_restart().await;
    let (s, d) = raise(&app, &bucket, &oid, body).await;
    assert_eq!((s, d["status"].as_str()), (200, Some("duplicate")), "the record survived: {d}");
    rx.set_default(200);
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let labels = [("adapter", "generic_webhook"), ("outcome", "succeeded")];
    assert!(metric_reaches(&app, "hookline_writebacks_total", &labels, 1.0).await, "the job is done");
    // Stopped: nothing more is sent; a second job would have been sent or still be pending.
    let backend = stop_and_open(&mut app).await;
    let ok = rx.succeeded();
    assert_eq!(ok.len(), 1, "{ok:?}");
    assert_eq!(ok[0].body["alert_id"], "a-1");
    assert_eq!(ok[0].body["fields"]["verdict"], "fake");
    assert_eq!(stored_keys(&backend, "wb", &format!("{bucket}/")), Vec::<String>::new(), "no job left");
}

/// `on_batch_complete` writes back when a batch completes, not on an alert: the alert is
/// recorded with `writeback: none` and the receiver sees only the batch's request.
#[tokio::test]
async fn a_batch_writeback_does_not_fire_on_an_alert() {
    let mut app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    let (bucket, secret) = bucket_with(
        &app,
        "batched",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"}, "dedup_key": "id",
            "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"trigger": "on_batch_complete", "writeback_url": rx.url("/wb"),
                "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}}),
    )
    .await;
    let r = ingest(&app, &bucket, &secret, json!({"type": "x", "id": "row-1", "title": "T"})).await;
    let oid = r["object_id"].as_str().unwrap().to_string();
    assert!(eventually(WAIT, || async { rx.succeeded().len() == 1 }).await, "the batch's writeback");
    let (s, a) = raise(&app, &bucket, &oid, json!({"results": {"verdict_classification": "fake"}})).await;
    assert_eq!((s, a["writeback"].as_str()), (202, Some("none")), "{a}");
    // The alert's batch was durable before its answer: a job in it would have been sent by
    // now, or still be pending in the store of the stopped daemon (which sends nothing more).
    let backend = stop_and_open(&mut app).await;
    assert_eq!(rx.seen().len(), 1, "nothing for the alert: {:?}", rx.seen());
    assert!(rx.seen()[0].body.get("alert_id").is_none(), "a batch job's body is unchanged: {:?}", rx.seen());
    for prefix in ["ajob", "adead"] {
        let jobs = stored_keys(&backend, "wb", &format!("{bucket}/{prefix}/"));
        assert_eq!(jobs, Vec::<String>::new(), "no alert job");
    }
    let alerts = stored_entries(&backend, "alert", &format!("{bucket}/{oid}/"));
    assert_eq!(alerts.len(), 1, "the alert itself is recorded");
    let record: Value = serde_json::from_slice(&alerts[0].1).unwrap();
    assert_eq!(record["writeback"], "none", "{record}");
}

/// `alert.triggered` reaches a subscriber, also from a bucket whose adapter was removed (the
/// registry records the alert then: no writeback).
#[tokio::test]
async fn alert_triggered_reaches_a_webhook_subscriber() {
    let mut app = TestApp::start().await;
    let hook = Receiver::start(200).await;
    let (s, w) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "alerts", "event_types": ["alert.triggered"],
                "channels": [{"channel": "webhook", "configs": {"url": hook.url("/hook")}}]}),
        )
        .await;
    assert_eq!(s, 201, "{w}");
    let (s, cat) = app.get("/v1/organizations/webhooks/event-types").await;
    assert_eq!(s, 200);
    assert!(cat["results"].as_array().unwrap().iter().any(|t| t["event_type"] == "alert.triggered"), "{cat}");
    assert!(w.get("warnings").is_none(), "a catalogued type: {w}");

    let (bucket, _, oid) = generic_with_object(&app, "plain", generic_on_alert("http://127.0.0.1:9/wb")).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": null})).await;
    assert_eq!(s, 200, "{b}");
    let results = json!({"verdict_classification": "fake", "scores": [0.1, 0.9]});
    let (s, a) = raise(&app, &bucket, &oid, json!({"alert_id": "x-1", "results": results})).await;
    assert_eq!((s, a["writeback"].as_str()), (202, Some("none")), "no adapter, no writeback: {a}");
    assert!(eventually(WAIT, || async { hook.count() >= 1 }).await, "alert.triggered never arrived");
    let env = hook.captured()[0].json();
    assert_eq!(env["event_type"], "alert.triggered", "{env}");
    let p = &env["payload"];
    assert_eq!(
        (&p["bucket_id"], &p["object_id"], &p["alert_id"]),
        (&json!(bucket), &json!(oid), &json!("x-1")),
        "{env}"
    );
    assert_eq!(p["results"], results);
    assert!(p["fired_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{env}");
    let (s, d) = raise(&app, &bucket, &oid, json!({"alert_id": "x-1", "results": results})).await;
    assert_eq!((s, d["status"].as_str()), (200, Some("duplicate")), "{d}");
    let (s, d) = raise(&app, &bucket, &oid, json!({"alert_id": "x-1", "results": {}})).await;
    assert_eq!(s, 409, "the ID with other results: {d}");
    // An event is recorded in the outbox, durably, before its alert is answered: a
    // duplicate's would be in the store (in the outbox, or fanned out to `evt/`).
    let backend = stop_and_open(&mut app).await;
    let events = stored_events(&backend, "alert.triggered");
    assert_eq!(events.len(), 1, "a duplicate records no event: {events:?}");
    assert_eq!(events[0]["payload"]["alert_id"], "x-1");
    assert_eq!(events[0]["payload"]["results"], results, "the first results stand");
    assert_eq!(hook.count(), 1, "a duplicate publishes nothing");
}

#[tokio::test]
async fn alerts_answer_404_409_and_422_as_the_contract_does() {
    let app = TestApp::start().await;
    let (bucket, secret, oid) = generic_with_object(&app, "errors", generic_on_alert("http://127.0.0.1:9/wb")).await;
    let ok = json!({"results": {"v": 1}});

    // Unknown bucket, object, or a bucket of another namespace: 404 in the usual shape.
    for (b, o) in
        [(bucket.as_str(), "obj_01jzzzzzzzzzzzzzzzzzzzzzzz"), (bucket.as_str(), "nope"), ("bkt_0000", oid.as_str())]
    {
        let (s, e) = raise(&app, b, o, ok.clone()).await;
        assert_eq!((s, e["error"]["code"].as_str()), (404, Some("not_found")), "{b} {o}: {e}");
    }
    let (s, _) = app
        .call_as(
            reqwest::Method::POST,
            &alerts_path(&bucket, &oid),
            Some(ok.clone()),
            Some(&app.api_key),
            Some("other"),
        )
        .await;
    assert_eq!(s, 404, "another namespace's bucket");
    let (s, _) = app.call_as(reqwest::Method::POST, &alerts_path(&bucket, &oid), Some(ok.clone()), None, None).await;
    assert_eq!(s, 401);
    let (s, _) = app.call(reqwest::Method::PUT, &alerts_path(&bucket, &oid), Some(ok.clone())).await;
    assert_eq!(s, 405);

    // Bodies: results required and an object; a well-formed alert_id; no unknown keys.
    for (body, field) in [
        (json!({"alert_id": "a"}), "results"),
        (json!({"results": [1, 2]}), "results"),
        (json!({"results": "fake"}), "results"),
        (json!({"results": null}), "results"),
        (json!({"alert_id": "a/b", "results": {}}), "alert_id"),
        (json!({"alert_id": "", "results": {}}), "alert_id"),
        (json!({"alert_id": "x".repeat(129), "results": {}}), "alert_id"),
        (json!({"results": {}, "severity": "high"}), "severity"),
        (json!({"results": {"blob": "x".repeat(70_000)}}), "results"),
    ] {
        let (s, e) = raise(&app, &bucket, &oid, body.clone()).await;
        assert_eq!((s, e["error"]["field"].as_str()), (422, Some(field)), "{body}: {e}");
    }
    // An integer past 64 bits would reach receivers and the writeback rounded: refused by
    // its path (a string keeps it), as on POST /v1/events.
    let auth = format!("Bearer {}", app.api_key);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let raw = r#"{"alert_id": "big", "results": {"scores": [1, 18446744073709551616]}}"#;
    let (s, e) = app.post_raw(&alerts_path(&bucket, &oid), raw, &headers).await;
    assert_eq!((s, e["error"]["field"].as_str()), (422, Some("results.scores[1]")), "{e}");
    // Just below -2^63 too, which parsed rounds to -2^63 (an i64 holds that one).
    let raw = r#"{"alert_id": "low", "results": {"x": -9223372036854775809}}"#;
    let (s, e) = app.post_raw(&alerts_path(&bucket, &oid), raw, &headers).await;
    assert_eq!((s, e["error"]["field"].as_str()), (422, Some("results.x")), "{e}");

    // An object still in its batch buffer: 409, saying when it flushes.
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "generic_webhook", "field_mapping": {"data.title": "title"},
                "batching": {"mode": "time_window", "window_seconds": 300}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let r = ingest(&app, &bucket, &secret, json!({"type": "t", "data": {"title": "later"}})).await;
    assert_eq!(r["status"], "buffered", "{r}");
    let (s, e) = raise(&app, &bucket, r["object_id"].as_str().unwrap(), ok.clone()).await;
    assert_eq!((s, e["error"]["code"].as_str()), (409, Some("conflict")), "{e}");
    let msg = e["error"]["message"].as_str().unwrap();
    assert!(msg.contains("is buffered") && msg.contains("flushes (by 20"), "{msg}");
}

/// Deleting an object deletes its alerts: an object of the same ID cannot come back, so the
/// check is on the data files once the daemon is stopped.
#[tokio::test]
async fn deleting_an_object_deletes_its_alerts() {
    let mut app = TestApp::start().await;
    let (bucket, _, oid) = generic_with_object(&app, "gone", generic_on_alert("http://127.0.0.1:9/wb")).await;
    let (kept_bucket, _, kept) = generic_with_object(&app, "kept", generic_on_alert("http://127.0.0.1:9/wb")).await;
    for id in ["a-1", "a-2"] {
        assert_eq!(raise(&app, &bucket, &oid, json!({"alert_id": id, "results": {}})).await.0, 202);
    }
    assert_eq!(raise(&app, &kept_bucket, &kept, json!({"alert_id": "a-1", "results": {}})).await.0, 202);
    let (s, _) = app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await;
    assert_eq!(s, 204);
    assert_eq!(raise(&app, &bucket, &oid, json!({"results": {}})).await.0, 404);
    assert_eq!(app.stop(), Some(0));
    let backend = app.stopped_sled().await;
    let keys: Vec<String> = stored_entries(&backend, "alert", "").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![format!("{kept_bucket}/{kept}/a-1")], "only the other object's alert is left");
}

/// An alert raised on an object right before the object is deleted goes with it: the
/// deletion may come while the alert's batch is submitted but not yet readable (the actor
/// then deletes it by the key it remembers, `unsynced_alerts`, since a scan cannot find it).
/// Back to back (the alert answered, then the delete) and at once (both in flight, either
/// first), by the upstream (a Supabase DELETE through ingest) and through the objects API.
/// Whatever the order, the stopped daemon's store keeps no alert of a deleted object; the
/// alert of an object that stays is kept.
#[tokio::test]
async fn an_alert_raised_just_before_its_object_is_deleted_goes_with_it() {
    let mut app = TestApp::start().await;
    let (bucket, secret) = bucket_with(
        &app,
        "racing",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "supabase", "field_mapping": {"record.title": "title"},
            "event_filter": {"event_types": ["INSERT", "UPDATE", "DELETE"]},
            "batching": {"mode": "immediate"}}),
    )
    .await;
    let row = |id: u64| db_insert("rows", json!({"id": id, "title": format!("row {id}")}));
    let upstream_delete = |id: u64| {
        let (app, bucket, secret) = (&app, &bucket, &secret);
        async move {
            let del = json!({"type": "DELETE", "table": "rows", "schema": "public", "record": null,
                "old_record": {"id": id}});
            ingest(app, bucket, secret, del).await
        }
    };
    let api_delete = |oid: String| {
        let (app, bucket) = (&app, &bucket);
        async move { app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0 }
    };
    let kept = ingest(&app, &bucket, &secret, row(1000)).await["object_id"].as_str().unwrap().to_string();
    assert_eq!(raise(&app, &bucket, &kept, json!({"alert_id": "stays", "results": {}})).await.0, 202);

    // (delete by the upstream?, alert and delete at once?, rounds): at once, the delete
    // often comes while the alert's batch is not readable yet, hence the many rounds.
    let plan = [(true, false, 4), (true, true, 20), (false, false, 4), (false, true, 8)];
    let rounds = plan.iter().flat_map(|&(upstream, at_once, n)| std::iter::repeat_n((upstream, at_once), n));
    for (id, (by_upstream, at_once)) in (1u64..).zip(rounds) {
        let r = ingest(&app, &bucket, &secret, row(id)).await;
        assert_eq!(r["status"], "created", "{r}");
        let oid = r["object_id"].as_str().unwrap().to_string();
        let alert = raise(&app, &bucket, &oid, json!({"alert_id": format!("a-{id}"), "results": {"v": id}}));
        let ((s, a), deleted) = match (at_once, by_upstream) {
            (true, true) => tokio::join!(alert, upstream_delete(id)),
            (true, false) => {
                let (alert, code) = tokio::join!(alert, api_delete(oid.clone()));
                (alert, json!({"status": code}))
            }
            (false, _) => {
                let alert = alert.await;
                assert_eq!(alert.0, 202, "back to back, the alert comes first: {}", alert.1);
                let d = if by_upstream {
                    upstream_delete(id).await
                } else {
                    json!({"status": api_delete(oid.clone()).await})
                };
                (alert, d)
            }
        };
        if by_upstream {
            assert_eq!((deleted["status"].as_str(), &deleted["object_ids"]), (Some("deleted"), &json!([oid])));
        } else {
            assert_eq!(deleted["status"], 204, "objects API delete");
        }
        // At once, either order: accepted before the delete, or not found after it.
        assert!(s == 202 || s == 404, "round {id}: {s} {a}");
    }

    let backend = stop_and_open(&mut app).await;
    assert_eq!(
        stored_keys(&backend, "alert", ""),
        vec![format!("{bucket}/{kept}/stays")],
        "only the kept object's alert is left"
    );
    assert_eq!(stored_keys(&backend, "obj", ""), vec![format!("{bucket}/{kept}")], "only the kept object");
}

/// A retry sent byte for byte as the first is a duplicate, whatever its floats: numbers
/// written with 17 significant digits (C's %.17g, Java, numpy) read back from the stored
/// record exactly as the retry parses them (serde_json's float_roundtrip), not one unit off
/// and "other results" (a 409).
#[tokio::test]
async fn a_retried_alert_with_long_floats_is_a_duplicate() {
    let app = TestApp::start().await;
    let (bucket, _, oid) = generic_with_object(&app, "floats", generic_on_alert("http://127.0.0.1:9/wb")).await;
    let path = format!("/v1/buckets/{bucket}/objects/{oid}/alerts");
    let body = r#"{"alert_id": "f-1", "results": {"score": 9.0274747645682663e-1, "p": 0.30000000000000004}}"#;
    for expected in [202, 200] {
        let r = app.client.post(app.url(&path)).bearer_auth(&app.api_key).body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), expected, "{}", r.text().await.unwrap());
    }
}

/// Each write-back's outcome is stored as soon as its attempt ends, not when the slowest
/// attempt of its round does: with one receiver call hanging, the others' 2xx (other rows':
/// one row's writebacks go one at a time) are already settled (their jobs gone from the
/// store), so a stop or a crash sends none of them again.
#[tokio::test]
async fn a_writeback_outcome_is_stored_while_a_slow_one_is_in_flight() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use warp::Filter;
    // The slow attempt stays in flight for the whole test (it used to hold back the others'
    // outcomes until it ended).
    let opts = crate::support::Options {
        delivery_toml: Some(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nrequest_timeout_seconds = 120\n"
                .into(),
        ),
        ..Default::default()
    };
    let mut app = TestApp::start_with(opts).await;
    let fast = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = fast.clone();
    let route = warp::post().and(warp::body::json()).then(move |b: Value| {
        let counted = counted.clone();
        async move {
            if b["fields"]["verdict"] == "slow" {
                tokio::time::sleep(Duration::from_secs(60)).await;
            } else {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            warp::reply()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/wb", listener.local_addr().unwrap());
    tokio::spawn(warp::serve(route).incoming(listener).run());
    let (bucket, secret, oid) = generic_with_object(&app, "slow", generic_on_alert(&url)).await;
    let (s, a) =
        raise(&app, &bucket, &oid, json!({"alert_id": "slow", "results": {"verdict_classification": "slow"}})).await;
    assert_eq!(s, 202, "{a}");
    for i in 0..5 {
        let r =
            ingest(&app, &bucket, &secret, json!({"type": "ticket", "data": {"title": "t", "ref": format!("F-{i}")}}))
                .await;
        let other = r["object_id"].as_str().expect("object_id");
        let body = json!({"alert_id": format!("fast-{i}"), "results": {"verdict_classification": "fast"}});
        assert_eq!(raise(&app, &bucket, other, body).await.0, 202);
    }
    assert!(eventually(WAIT, || async { fast.load(Ordering::SeqCst) == 5 }).await, "{}", fast.load(Ordering::SeqCst));
    let settled = || async {
        metric_reaches(
            &app,
            "hookline_writebacks_total",
            &[("adapter", "generic_webhook"), ("outcome", "succeeded")],
            5.0,
        )
        .await
    };
    assert!(settled().await);
    let backend = stop_and_open(&mut app).await;
    let pending = stored_entries(&backend, "wb", &format!("{bucket}/"));
    assert_eq!(
        pending.len(),
        1,
        "only the slow job is pending: {:?}",
        pending.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert!(String::from_utf8_lossy(&pending[0].1).contains("slow"), "{:?}", String::from_utf8_lossy(&pending[0].1));
}

/// A writeback that cannot reach its target says why without its URL: the query may carry a
/// token (or a row's id), and the text is logged and shown as `last_error`.
#[tokio::test]
async fn a_failed_writeback_error_shows_no_url() {
    let app = TestApp::start().await;
    let token = "WBTOKEN-secret-in-query-0042";
    let url = format!("http://127.0.0.1:9/wb?token={token}");
    let (bucket, _, oid) = generic_with_object(&app, "quiet", generic_on_alert(&url)).await;
    let (s, a) =
        raise(&app, &bucket, &oid, json!({"alert_id": "a1", "results": {"verdict_classification": "x"}})).await;
    assert_eq!((s, a["writeback"].as_str()), (202, Some("queued")), "{a}");
    let writebacks = format!("/v1/buckets/{bucket}/source-adapter/writebacks");
    let failed = eventually(WAIT, || async {
        let (_, list) = app.get(&writebacks).await;
        list["results"][0]["last_error"].as_str().is_some_and(|e| e.contains("request failed"))
    })
    .await;
    let (_, list) = app.get(&writebacks).await;
    assert!(failed, "{list}");
    let (_, status) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    for shown in [list.to_string(), status["last_error"].to_string()] {
        assert!(!shown.contains(token) && !shown.contains("127.0.0.1:9"), "{shown}");
    }
    assert!(status["last_error"].as_str().is_some_and(|e| e.contains("request failed")), "{status}");
    // The log says the same, without the URL.
    assert!(!app.log().contains(token), "the token was logged");
}

/// An alert's writeback waiting for a retry when an UPDATE re-keys its row, then a newer
/// alert of the same object: the two are one row, so the older one's fields never land after
/// the newer one's (it would be re-keyed at its attempt and sent last, leaving the row stale).
#[tokio::test]
async fn an_older_writeback_of_a_rekeyed_row_does_not_land_after_a_newer_one() {
    let app = TestApp::start().await;
    let pg = Upstream::start(500).await;
    let conn = supabase_connection(&app, &pg.url(""), "srk-order").await;
    let (bucket, secret) = bucket_with(
        &app,
        "reordered",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "table": "items",
            "field_mapping": {"record.title": "title"}, "batching": {"mode": "immediate"},
            "writeback": {"trigger": "on_alert",
                "field_mapping": [{"source_path": "verdict", "target_field": "mp_verdict"}]}}),
    )
    .await;
    let r = ingest(&app, &bucket, &secret, db_insert("items", json!({"id": 70, "title": "a"}))).await;
    let oid = r["object_id"].as_str().expect("object_id").to_string();
    let (s, a) = raise(&app, &bucket, &oid, json!({"alert_id": "old", "results": {"verdict": "old"}})).await;
    assert_eq!(s, 202, "{a}");
    assert!(eventually(WAIT, || async { !pg.seen().is_empty() }).await, "the first attempt fails (500)");
    let update = json!({"type": "UPDATE", "table": "items", "schema": "public",
        "record": {"id": 71, "title": "a"}, "old_record": {"id": 70, "title": "a"}});
    assert_eq!(ingest(&app, &bucket, &secret, update).await["status"], "updated");
    pg.set_default(204);
    let (s, a) = raise(&app, &bucket, &oid, json!({"alert_id": "new", "results": {"verdict": "new"}})).await;
    assert_eq!(s, 202, "{a}");
    let newest = || async { pg.succeeded().iter().any(|s| s.body["mp_verdict"] == "new") };
    assert!(eventually(WAIT, newest).await, "{:?}", pg.seen());
    // Past the older job's retry (the schedule's 1 s, jittered).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let written = pg.succeeded();
    let last = written.last().expect("a PATCH");
    assert_eq!((last.query.as_str(), &last.body), ("id=eq.71", &json!({"mp_verdict": "new"})), "{written:?}");
}

/// An object's alerts can be read back: by alert_id, paged as the other lists, each with
/// its results and what it did about a writeback.
#[tokio::test]
async fn an_objects_alerts_are_listed() {
    let app = TestApp::start().await;
    let (bucket, _, oid) = generic_with_object(&app, "listed", generic_on_alert("http://127.0.0.1:9/wb")).await;
    let path = alerts_path(&bucket, &oid);
    let (s, empty) = app.get(&path).await;
    assert_eq!((s, &empty["results"], &empty["next_cursor"]), (200, &json!([]), &Value::Null), "{empty}");
    for (id, verdict) in [("b-2", "spam"), ("a-1", "ham"), ("c-3", "spam")] {
        let (s, a) =
            raise(&app, &bucket, &oid, json!({"alert_id": id, "results": {"verdict_classification": verdict}})).await;
        assert_eq!(s, 202, "{a}");
    }
    let (s, all) = app.get(&path).await;
    assert_eq!(s, 200, "{all}");
    let listed = all["results"].as_array().unwrap();
    let ids: Vec<&str> = listed.iter().map(|a| a["alert_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a-1", "b-2", "c-3"], "by alert_id: {all}");
    assert_eq!(listed[0]["results"], json!({"verdict_classification": "ham"}));
    assert_eq!((&listed[0]["object_id"], &listed[0]["bucket_id"]), (&json!(oid), &json!(bucket)));
    assert_eq!(listed[0]["writeback"], "queued", "{all}");
    assert!(listed[0]["fired_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{all}");
    // Pages.
    let (_, first) = app.get(&format!("{path}?limit=2")).await;
    assert_eq!((first["results"].as_array().map(Vec::len), first["next_cursor"].as_str()), (Some(2), Some("b-2")));
    let (_, rest) = app.get(&format!("{path}?limit=2&cursor=b-2")).await;
    assert_eq!((&rest["results"][0]["alert_id"], &rest["next_cursor"]), (&json!("c-3"), &Value::Null), "{rest}");
    for (query, field) in [("cursor=a%2Fb", "cursor"), ("limit=0", "limit"), ("status=x", "status")] {
        let (s, e) = app.get(&format!("{path}?{query}")).await;
        assert_eq!((s, e["error"]["field"].as_str()), (422, Some(field)), "{query}: {e}");
    }
    // Who may read, and of what.
    let (s, _) = app.call_as(reqwest::Method::GET, &path, None, None, None).await;
    assert_eq!(s, 401);
    assert_eq!(app.get(&alerts_path(&bucket, "obj_01jzzzzzzzzzzzzzzzzzzzzzzz")).await.0, 404);
    assert_eq!(app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0, 204);
    assert_eq!(app.get(&path).await.0, 404, "its alerts went with it");
}

/// A cursor the alerts list did not hand out is a 422 naming `cursor`, as on every other list,
/// not an empty page or a position: alert IDs are the caller's, so a cursor is taken only
/// when it is the `alert_id` of one of the object's alerts (a page's `next_cursor` always is:
/// an alert goes only with its object).
#[tokio::test]
async fn an_alerts_cursor_it_did_not_hand_out_is_refused() {
    let app = TestApp::start().await;
    let (bucket, _, oid) = generic_with_object(&app, "cursors", generic_on_alert("http://127.0.0.1:9/wb")).await;
    let path = alerts_path(&bucket, &oid);
    for id in ["a-1", "b-2", "c-3"] {
        let (s, a) =
            raise(&app, &bucket, &oid, json!({"alert_id": id, "results": {"verdict_classification": "x"}})).await;
        assert_eq!(s, 202, "{a}");
    }
    for cursor in ["zzz", "AL1", "b-20", "alr_01jzzzzzzzzzzzzzzzzzzzzzzz", "a%2Fb"] {
        let (s, e) = app.get(&format!("{path}?cursor={cursor}")).await;
        assert_eq!((s, e["error"]["field"].as_str()), (422, Some("cursor")), "{cursor}: {e}");
        assert!(e["error"]["message"].as_str().is_some_and(|m| m.contains("not a cursor of this list")), "{e}");
    }
    // What it hands out still pages.
    let (_, first) = app.get(&format!("{path}?limit=1")).await;
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let (s, rest) = app.get(&format!("{path}?cursor={cursor}")).await;
    assert_eq!(s, 200, "{rest}");
    let ids: Vec<&str> = rest["results"].as_array().unwrap().iter().map(|a| a["alert_id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["b-2", "c-3"], "{rest}");
}
