//! Outbound: webhooks API, fan-out, delivery, retries, dead letters, safety.
//! Receivers are real HTTP servers on 127.0.0.1 (the test config allows loopback + http).

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};

use crate::outbound_receiver::Receiver;
use crate::support::{eventually, metric_reaches, metric_value, stored_entries, Options, TestApp};

const WAIT: Duration = Duration::from_secs(15);

pub async fn create_webhook(app: &TestApp, body: Value) -> (String, String) {
    let (s, b) = app.post("/v1/organizations/webhooks", body).await;
    assert_eq!(s, 201, "create webhook: {b}");
    (b["webhook_id"].as_str().unwrap().to_string(), b["signing_secret"].as_str().unwrap_or("").to_string())
}

pub fn http_channel(url: &str) -> Value {
    json!({"channel": "webhook", "configs": {"url": url}})
}

pub async fn publish(app: &TestApp, event_type: &str, payload: Value) -> String {
    let (s, b) = app.post("/v1/events", json!({"event_type": event_type, "payload": payload})).await;
    assert_eq!(s, 202, "publish: {b}");
    b["event_id"].as_str().unwrap().to_string()
}

/// Whether the webhook's first delivery has a failed attempt on record, with the webhook's
/// `last_error` set (which comes first: the attempt's outcome is written after it).
pub async fn failed_attempt_recorded(app: &TestApp, webhook_id: &str) -> bool {
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{webhook_id}")).await;
    w["last_error"].is_string()
        && deliveries(app, webhook_id, None).await.first().is_some_and(|d| d["attempts"][0]["error"].is_string())
}

pub async fn deliveries(app: &TestApp, webhook_id: &str, status: Option<&str>) -> Vec<Value> {
    let q = status.map(|s| format!("?status={s}")).unwrap_or_default();
    let (s, b) = app.get(&format!("/v1/organizations/webhooks/{webhook_id}/deliveries{q}")).await;
    assert_eq!(s, 200, "deliveries: {b}");
    b.as_array().cloned().unwrap_or_default()
}

/// Verifies a Standard Webhooks signature the way a receiver would.
fn verify_signature(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    header.split(' ').any(|s| s == expected)
}

#[tokio::test]
async fn webhook_crud_validation_and_catalog() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    // Validation: 422 naming the field.
    let cases = [
        (json!({"webhook_name": "", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}), "webhook_name"),
        (
            json!({"webhook_name": "x".repeat(201), "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
            "webhook_name",
        ),
        // A newline would start a log line of the caller's choosing.
        (
            json!({"webhook_name": "a\n2026-01-01T00:00:00Z ERROR forged", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
            "webhook_name",
        ),
        (json!({"webhook_name": "a", "event_types": [], "channels": [http_channel(&rx.url("/"))]}), "event_types"),
        (
            json!({"webhook_name": "a", "event_types": ["bad type!"], "channels": [http_channel(&rx.url("/"))]}),
            "event_types[0]",
        ),
        // Dots separate words: no empty one (`object.*` would match `object.`).
        (
            json!({"webhook_name": "a", "event_types": ["object.created", "object."], "channels": [http_channel(&rx.url("/"))]}),
            "event_types[1]",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["object..created"], "channels": [http_channel(&rx.url("/"))]}),
            "event_types[0]",
        ),
        (json!({"webhook_name": "a", "event_types": ["*"], "channels": []}), "channels"),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "payload_template": "{{ oops"}}]}),
            "channels[0].configs.payload_template",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": "not a url"}}]}),
            "channels[0].configs.url",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "timeout": 0}}]}),
            "channels[0].configs.timeout",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "headers": {"webhook-id": "x"}}}]}),
            "channels[0].configs.headers.webhook-id",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "slack", "configs": {"webhook_url": "not a url"}}]}),
            "channels[0].configs.webhook_url",
        ),
        // Sizes are bounded; what is stored is what is called.
        (
            json!({"webhook_name": "a", "event_types": (0..101).map(|i| format!("t{i}")).collect::<Vec<_>>(), "channels": [http_channel(&rx.url("/"))]}),
            "event_types",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": format!("{}\r\nHost: a", rx.url("/x"))}}]}),
            "channels[0].configs.url",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": format!("{}{}", rx.url("/"), "a".repeat(2100))}}]}),
            "channels[0].configs.url",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "headers": (0..51).map(|i| (format!("x-h{i}"), json!("v"))).collect::<serde_json::Map<_, _>>()}}]}),
            "channels[0].configs.headers",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "headers": {"Upgrade": "h2c"}}}]}),
            "channels[0].configs.headers.Upgrade",
        ),
        // Header lines and the whole set are bounded as receivers bound them.
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "headers": {"X-Big": "a".repeat(8193)}}}]}),
            "channels[0].configs.headers.X-Big",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "secret": "s".repeat(8193)}}]}),
            "channels[0].configs.secret",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "secret": "s".repeat(5000), "headers": {"X-A": "a".repeat(8000)}}}]}),
            "channels[0].configs.headers",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/"), "payload_template": "x".repeat(70_000)}}]}),
            "channels[0].configs.payload_template",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "slack", "configs": {"webhook_url": "https://hooks.slack.com/services/T/B/x\ny"}}]}),
            "channels[0].configs.webhook_url",
        ),
        // A mistyped key of the channel object is named, channel_id among those it takes.
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/")}, "chanel_id": "ch_1"}]}),
            "channels[0].chanel_id",
        ),
        // This daemon has no [delivery.email] / [delivery.sms]: such channels cannot be created.
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "email", "configs": {"to": ["a@example.com"]}}]}),
            "channels[0].channel",
        ),
        (
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "sms", "configs": {"to": ["+15550001111"]}}]}),
            "channels[0].channel",
        ),
    ];
    for (body, field) in cases {
        let (s, b) = app.post("/v1/organizations/webhooks", body.clone()).await;
        assert_eq!(s, 422, "{body} → {b}");
        let got = b["error"]["field"].as_str().unwrap_or("");
        assert!(got.starts_with(field), "expected field {field}, got {got} ({b})");
        if field.ends_with("chanel_id") {
            assert!(b["error"]["message"].as_str().unwrap_or("").ends_with("channel, configs and channel_id"), "{b}");
        }
    }
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [{"channel": "pigeon", "configs": {}}]}),
        )
        .await;
    assert_eq!(s, 422, "{b}");
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "a", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))], "extra": 1}),
        )
        .await;
    assert_eq!(s, 422, "unknown field: {b}");
    // Errors in the API's words, not serde's.
    for (channel, field, message) in [
        (
            json!({"channel": "webhook", "url": rx.url("/")}),
            "channels[0].url",
            r#"unknown field "url": a channel takes channel, configs and channel_id"#,
        ),
        (
            json!({"channel": "webhook", "configs": {"url": rx.url("/"), "timeout": "5"}}),
            "channels[0].configs.timeout",
            r#"must be a number, not the string "5""#,
        ),
    ] {
        let (s, b) = app
            .post(
                "/v1/organizations/webhooks",
                json!({"webhook_name": "a", "event_types": ["*"], "channels": [channel]}),
            )
            .await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{b}");
        assert!(b["error"]["message"].as_str().unwrap().ends_with(message), "{b}");
    }

    // Create, shown once.
    let (s, created) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "Audit", "event_types": ["object.created"], "channels": [
                {"channel": "webhook", "configs": {"url": rx.url("/a"), "secret": "shh-very-secret", "headers": {"X-Team": "core", "X-Auth": "Bearer t0ken-xyz"}}}
            ]}),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["webhook_id"].as_str().unwrap();
    assert!(id.starts_with("wh_") && id.len() == 13 && id[3..].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
    assert!(created["signing_secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["is_active"], true);
    assert_eq!(created["last_error"], Value::Null);
    assert!(created.get("warnings").is_none(), "{created}");
    // A type nothing in the catalog matches is allowed (custom events), with a warning.
    let (s, typo) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "t", "event_types": ["object.craeted", "object.*"], "channels": [http_channel(&rx.url("/t"))]}),
        )
        .await;
    assert_eq!(s, 201, "{typo}");
    let warnings = typo["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{typo}");
    assert!(warnings[0].as_str().unwrap().contains("object.craeted"), "{typo}");
    let typo_id = typo["webhook_id"].as_str().unwrap();
    assert_eq!(app.delete(&format!("/v1/organizations/webhooks/{typo_id}")).await.0, 204);
    let (s, got) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert_eq!(s, 200);
    assert!(got.get("signing_secret").is_none(), "secret shown again: {got}");
    assert_eq!(got["channels"][0]["configs"]["secret"], "********");
    // Header values often carry credentials: shown (and stored in plain text) only redacted.
    assert_eq!(got["channels"][0]["configs"]["headers"]["X-Team"], "********");
    assert!(!got.to_string().contains("t0ken-xyz"), "header value shown: {got}");
    let (_, list) = app.get("/v1/organizations/webhooks").await;
    assert_eq!(list["results"].as_array().unwrap().len(), 1);

    // A PATCH that changes something bumps updated_at; one that sets what is there does not
    // (seed 004). Times have second precision: a second passes first, so a bump would show.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let path = format!("/v1/organizations/webhooks/{id}");
    // The GET view itself, sent back whole (its read-only fields are ignored), is one.
    for same in [json!({}), json!({"is_active": true}), json!({"event_types": got["event_types"]}), got.clone()] {
        let (s, b) = app.patch(&path, same.clone()).await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["updated_at"], b["created_at"], "{same} changed nothing: {b}");
    }
    // But not as another webhook's: its ID names another webhook than the path's.
    let mut other = got.clone();
    other["webhook_id"] = json!("wh_0000000000");
    let (s, b) = app.patch(&path, other).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("webhook_id")), "{b}");
    let (s, patched) = app.patch(&path, json!({"webhook_name": "Audit 2", "is_active": false})).await;
    assert_eq!(s, 200, "{patched}");
    assert_ne!(patched["updated_at"], patched["created_at"], "updated_at never moved: {patched}");
    assert_eq!(patched["webhook_name"], "Audit 2");
    assert_eq!(patched["is_active"], false);
    // Sending the redacted channel back (GET → edit → PATCH) keeps the stored secret.
    let mut channels = got["channels"].clone();
    channels[0]["configs"]["headers"]["X-Team"] = json!("platform");
    let (s, b) =
        app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": channels, "is_active": true})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["channels"][0]["configs"]["secret"], "********");
    publish(&app, "object.created", json!({})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 1 }).await);
    assert_eq!(rx.captured()[0].header("x-mixpeek-secret"), Some("shh-very-secret"));
    assert_eq!(rx.captured()[0].header("x-team"), Some("platform"));
    // The header sent back redacted kept its stored value.
    assert_eq!(rx.captured()[0].header("x-auth"), Some("Bearer t0ken-xyz"));
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"event_types": []})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("event_types")));
    // `null` is not "unchanged": it is refused, naming the field.
    for field in ["webhook_name", "event_types", "channels", "is_active"] {
        let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({ field: null })).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{b}");
        assert!(b["error"]["message"].as_str().unwrap().ends_with("not null"), "{b}");
    }

    // Catalog.
    let (s, cat) = app.get("/v1/organizations/webhooks/event-types").await;
    assert_eq!(s, 200);
    let names: Vec<&str> =
        cat["results"].as_array().unwrap().iter().map(|t| t["event_type"].as_str().unwrap()).collect();
    for t in [
        "object.created",
        "object.updated",
        "object.deleted",
        "batch.completed",
        "batch.failed",
        "cluster.execution.failed",
        "taxonomy.materialized",
        "collection.documents.written",
    ] {
        assert!(names.contains(&t), "{t} missing from {names:?}");
    }

    // Auth, 404s, delete.
    let (s, _) = app.call_as(reqwest::Method::GET, "/v1/organizations/webhooks", None, None, None).await;
    assert_eq!(s, 401);
    assert_eq!(app.get("/v1/organizations/webhooks/wh_0000000000").await.0, 404);
    assert_eq!(app.delete(&format!("/v1/organizations/webhooks/{id}")).await.0, 204);
    assert_eq!(app.get(&format!("/v1/organizations/webhooks/{id}")).await.0, 404);
    assert_eq!(app.delete(&format!("/v1/organizations/webhooks/{id}")).await.0, 404);
    // The channel secret never hits the log.
    assert!(!app.log().contains("shh-very-secret"));
    assert!(!app.log().contains(created["signing_secret"].as_str().unwrap()));
}

#[tokio::test]
async fn delivers_envelope_with_headers_and_signature() {
    let app = TestApp::start().await;
    let rx = Receiver::start(204).await;
    let (id, secret) = create_webhook(
        &app,
        json!({"webhook_name": "sig", "event_types": ["object.created"], "channels": [
            {"channel": "webhook", "configs": {"url": rx.url("/hook"), "secret": "mixpeek-shared", "headers": {"X-Custom": "yes"}}},
            {"channel": "webhook", "configs": {"url": rx.url("/ce"), "headers": {"Content-Type": "application/cloudevents+json"}}}
        ]}),
    )
    .await;
    let (s, b) = app.post("/v1/events", json!({"event_type": "object.created", "payload": {"object_id": "obj_1"}, "cache_scopes": [{"scope": "collection", "id": "c1"}]})).await;
    assert_eq!(s, 202, "{b}");
    let event_id = b["event_id"].as_str().unwrap().to_string();
    assert!(event_id.starts_with("evt_"));
    assert!(eventually(WAIT, || async { rx.count() >= 2 }).await, "nothing delivered; log:\n{}", app.log());
    let caps = rx.captured();
    // A custom Content-Type replaces the default (it is not sent twice).
    let ce = caps.iter().find(|c| c.path == "/ce").expect("the second channel");
    assert_eq!(ce.header("content-type"), Some("application/cloudevents+json"));
    let req = caps.into_iter().find(|c| c.path == "/hook").expect("the first channel");
    let env = req.json();
    assert_eq!(env["event_id"], event_id.as_str());
    assert_eq!(env["event_type"], "object.created");
    assert_eq!(env["payload"]["object_id"], "obj_1");
    assert_eq!(env["cache_scopes"][0]["scope"], "collection");
    assert!(env["created_at"].as_str().unwrap().ends_with('Z'));
    let mut keys: Vec<&str> = env.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["cache_scopes", "created_at", "event_id", "event_type", "payload"], "the envelope, nothing more");
    assert_eq!(req.header("x-mixpeek-secret"), Some("mixpeek-shared"));
    assert_eq!(req.header("x-custom"), Some("yes"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert!(req.header("user-agent").is_some_and(|ua| ua.starts_with("hookline/")), "{:?}", req.headers);
    let wid = req.header("webhook-id").unwrap();
    let ts = req.header("webhook-timestamp").unwrap();
    let sig = req.header("webhook-signature").unwrap();
    assert!(sig.starts_with("v1,"), "{sig}");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((now - ts.parse::<i64>().unwrap()).abs() < 60);
    assert!(verify_signature(&secret, wid, ts, &req.body, sig), "signature does not verify");
    assert!(!verify_signature(&secret, wid, ts, b"tampered", sig));
    // The delivery is recorded as succeeded with its attempt.
    let ok = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 2 }).await;
    assert!(ok, "{:?}", deliveries(&app, &id, None).await);
    let all = deliveries(&app, &id, None).await;
    let d = all.iter().find(|d| d["delivery_id"] == wid).expect("the first channel's delivery");
    assert_eq!(d["delivery_id"], wid);
    assert_eq!(d["event_id"], event_id.as_str());
    assert_eq!(d["event_type"], "object.created");
    assert_eq!(d["channel"], "webhook");
    assert_eq!(d["attempts"][0]["status_code"], 204);
    assert!(d["attempts"][0]["duration_ms"].is_u64());
    assert!(d["attempts"][0]["at"].is_string());
    assert_eq!(d["next_attempt_at"], Value::Null);
    // The retention of finished deliveries counts from here.
    let finished = d["finished_at"].as_str().expect("a finished delivery says when");
    assert!(finished >= d["attempts"][0]["at"].as_str().unwrap(), "{d}");
    assert!(
        metric_reaches(&app, "hookline_deliveries_total", &[("channel", "webhook"), ("outcome", "succeeded")], 1.0)
            .await,
        "hookline_deliveries_total not reached"
    );
    assert!(
        metric_reaches(&app, "hookline_delivery_attempts_total", &[("result", "2xx")], 1.0).await,
        "hookline_delivery_attempts_total not reached"
    );
    let m = app.metrics().await;
    assert!(m.contains("hookline_delivery_attempt_duration_seconds"));
    assert!(m.contains("hookline_delivery_queue_depth"));
}

/// `POST /v1/events` of `body` with `Idempotency-Key: key`.
async fn publish_keyed(app: &TestApp, key: &str, body: &str) -> (u16, Value) {
    let auth = format!("Bearer {}", app.api_key);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json"), ("Idempotency-Key", key)];
    app.post_raw("/v1/events", body.to_string(), &headers).await
}

/// `POST /v1/events` with an `Idempotency-Key`: a repeat (the same key and body, as a retry
/// after a lost answer sends) answers 200 with the first publish's `event_id` and publishes
/// nothing, also when five come at once and after a restart; the same key with another body
/// is a 409; a key that is no key is a 422 naming the header. One delivery in all.
#[tokio::test]
async fn a_publish_with_an_idempotency_key_goes_out_once() {
    let mut app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "once", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    let body = json!({"event_type": "order.paid", "payload": {"order": 7}}).to_string();
    let auth = format!("Bearer {}", app.api_key);
    let (s, first) = publish_keyed(&app, "order-7-paid", &body).await;
    assert_eq!(s, 202, "{first}");
    let event_id = first["event_id"].clone();
    let repeats = futures::future::join_all((0..5).map(|_| publish_keyed(&app, "order-7-paid", &body))).await;
    for (s, r) in repeats {
        assert_eq!((s, &r["event_id"], &r["status"]), (200, &event_id, &json!("duplicate")), "{r}");
    }
    // The same event written otherwise (spacing, key order, the default cache_scopes written
    // out), as another client or serializer retrying it would: the same event.
    for same in [
        r#"{ "payload" : { "order" : 7 } , "event_type" : "order.paid" }"#,
        r#"{"event_type": "order.paid", "payload": {"order": 7}, "cache_scopes": []}"#,
    ] {
        let (s, r) = publish_keyed(&app, "order-7-paid", same).await;
        assert_eq!((s, &r["event_id"], &r["status"]), (200, &event_id, &json!("duplicate")), "{same}: {r}");
    }
    let other = json!({"event_type": "order.paid", "payload": {"order": 8}}).to_string();
    let (s, r) = publish_keyed(&app, "order-7-paid", &other).await;
    assert_eq!((s, r["error"]["code"].as_str()), (409, Some("conflict")), "{r}");
    let scoped = r#"{"event_type": "order.paid", "payload": {"order": 7}, "cache_scopes": [{"id": "c1"}]}"#;
    let (s, r) = publish_keyed(&app, "order-7-paid", scoped).await;
    assert_eq!(s, 409, "other cache_scopes are another event: {r}");
    for bad in ["", "two words", "é"] {
        let headers = [("Authorization", auth.as_str()), ("Idempotency-Key", bad)];
        let (s, r) = app.post_raw("/v1/events", body.clone(), &headers).await;
        assert_eq!((s, r["error"]["field"].as_str()), (422, Some("Idempotency-Key")), "{bad:?}: {r}");
    }
    assert!(eventually(Duration::from_secs(10), || async { rx.count() == 1 }).await);
    app.restart().await;
    let (s, r) = publish_keyed(&app, "order-7-paid", &body).await;
    assert_eq!((s, &r["event_id"]), (200, &event_id), "remembered across a restart: {r}");
    let (s, r) = publish_keyed(&app, "order-8-paid", &body).await;
    assert_eq!(s, 202, "another key is another event: {r}");
    assert!(eventually(Duration::from_secs(10), || async { rx.count() == 2 }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.count(), 2, "one delivery per key");
    assert_eq!(deliveries(&app, &id, None).await.len(), 2);
}

/// The header size caps hold for what a PATCH stores: values it keeps (sent back as
/// `********`) count at their stored size, not as the 8 characters sent.
#[tokio::test]
async fn a_patch_keeping_hidden_headers_is_held_to_the_size_caps() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let channel = json!({"channel": "webhook", "configs": {"url": rx.url("/"), "secret": "s".repeat(8000),
        "headers": {"X-A": "a".repeat(4000)}}});
    let (id, _) =
        create_webhook(&app, json!({"webhook_name": "big", "event_types": ["*"], "channels": [channel]})).await;
    let (_, got) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    let mut channels = got["channels"].clone();
    assert_eq!(channels[0]["configs"]["secret"], "********", "{got}");
    channels[0]["configs"]["headers"]["X-B"] = json!("b".repeat(4000));
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({ "channels": channels })).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.headers")), "{b}");
    channels[0]["configs"]["headers"]["X-B"] = json!("b".repeat(200));
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({ "channels": channels })).await;
    assert_eq!(s, 200, "within the caps: {b}");
}

/// A webhook on every event with one HTTP channel to `rx`; its ID.
async fn webhook_to(app: &TestApp, rx: &Receiver) -> String {
    let channels = [http_channel(&rx.url("/"))];
    create_webhook(app, json!({"webhook_name": "c", "event_types": ["*"], "channels": channels})).await.0
}

/// Makes the webhook's delivery actor fail (debug endpoint); returns once it is restarted.
async fn crash_delivery_actor(app: &TestApp, webhook_id: &str) {
    let (s, b) = app.post(&format!("/v1/debug/crash/delivery.{webhook_id}"), json!({})).await;
    assert_eq!(s, 202, "{b}");
    assert!(metric_reaches(app, "hookline_actor_restarts_total", &[("actor", "delivery")], 1.0).await);
}

/// `hookline_actor_restarts_total{actor="delivery"}`.
async fn delivery_restarts(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "hookline_actor_restarts_total", &[("actor", "delivery")])
}

/// Makes the webhook's delivery actor fail past its restart budget (debug endpoint), so that
/// it is left stopped with the reason in the webhook's `last_error`; returns the budget.
pub(crate) async fn stop_delivery_actor_for_good(app: &TestApp, id: &str) -> usize {
    let budget = hookline::delivery::registry::MAX_WORKER_RESTARTS;
    for n in 1..=budget + 1 {
        let (s, b) = app.post(&format!("/v1/debug/crash/delivery.{id}"), json!({})).await;
        assert_eq!(s, 202, "crash {n}: {b}");
        let restarted = n.min(budget) as f64;
        assert!(eventually(WAIT, || async { delivery_restarts(app).await == restarted }).await, "crash {n}");
    }
    let stopped = || async {
        let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
        w["last_error"].as_str().unwrap_or_default().contains("delivery stopped after repeated internal failures")
    };
    assert!(eventually(WAIT, stopped).await, "left stopped with its reason");
    budget
}

/// A delivery actor that fails past its restart budget is left stopped, its deliveries
/// waiting in the store and the reason in the webhook's `last_error`; a PATCH of the webhook
/// starts it again, and what waited is delivered.
#[tokio::test]
async fn a_delivery_actor_stopped_after_failing_repeatedly_starts_again_on_a_patch() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let id = webhook_to(&app, &rx).await;
    let budget = stop_delivery_actor_for_good(&app, &id).await;
    publish(&app, "object.created", json!({"n": 1})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 0, "no actor, no send");
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"webhook_name": "revived"})).await;
    assert_eq!(s, 200, "{b}");
    assert!(eventually(WAIT, || async { rx.count() == 1 }).await, "the waiting delivery went out");
    let cleared = || async { app.get(&format!("/v1/organizations/webhooks/{id}")).await.1["last_error"].is_null() };
    assert!(eventually(WAIT, cleared).await, "the success cleared the stored reason");
    assert_eq!(delivery_restarts(&app).await, budget as f64, "a start asked for is no restart");
}

/// A send in flight when its webhook's delivery actor fails, or when the delivery registry
/// fails and its restart kills the actors, goes out once and its attempt is logged: the
/// successor starts once that send is over, takes its outcome and finds the delivery done.
/// (Before, the successor sent it again at once, and the first attempt was never logged.)
/// The successor then delivers the next event as usual.
#[tokio::test]
async fn a_send_in_flight_when_its_actor_fails_goes_once_and_is_logged() {
    for crash in ["delivery.", "delivery_registry"] {
        let app = TestApp::start().await;
        let rx = Receiver::start(200).await;
        rx.then(200, Duration::from_millis(1200)); // the first request is answered 1.2 s late
        let id = webhook_to(&app, &rx).await;
        publish(&app, "object.created", json!({"n": 1})).await;
        assert!(eventually(Duration::from_secs(10), || async { rx.count() == 1 }).await, "{crash}: not sent");
        let actor = match crash {
            "delivery." => format!("delivery.{id}"),
            other => other.to_string(),
        };
        let (s, b) = app.post(&format!("/v1/debug/crash/{actor}"), json!({})).await;
        assert_eq!(s, 202, "{b}");
        let label = if crash == "delivery." { "delivery" } else { "delivery_registry" };
        assert!(metric_reaches(&app, "hookline_actor_restarts_total", &[("actor", label)], 1.0).await, "{crash}");
        let done = || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 };
        assert!(eventually(Duration::from_secs(20), done).await, "{crash}: {:?}", deliveries(&app, &id, None).await);
        let d = deliveries(&app, &id, None).await.remove(0);
        let attempts = d["attempts"].as_array().cloned().unwrap_or_default();
        assert_eq!((attempts.len(), &attempts[0]["status_code"]), (1, &json!(200)), "{crash}: {d}");
        assert_eq!(rx.count(), 1, "{crash}: sent once");
        publish(&app, "object.created", json!({"n": 2})).await;
        assert!(eventually(Duration::from_secs(10), || async { rx.count() == 2 }).await, "{crash}: the next event");
        assert!(
            eventually(Duration::from_secs(10), || async { deliveries(&app, &id, Some("succeeded")).await.len() == 2 })
                .await
        );
    }
}

/// The outcome of a failed actor's send is applied even when its successor's reload leaves
/// that delivery in the store (older retries, due by then, fill the in-memory queue): it is
/// read back for it, so it goes once and its attempt is logged.
#[tokio::test]
async fn a_failed_actors_outcome_reaches_a_delivery_its_successor_left_in_the_store() {
    let opts = Options {
        delivery_toml: Some(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nrequest_timeout_seconds = 10\n\
             max_age_hours = 1\nretry_schedule_seconds = [3]\nretry_in_memory_seconds = 1\n\
             max_in_flight_per_webhook = 1\nmax_queued_in_memory_per_webhook = 2\n"
                .into(),
        ),
        ..Options::default()
    };
    let app = TestApp::start_with(opts).await;
    let rx = Receiver::start(200).await;
    rx.then(503, Duration::ZERO); // the first two fail: retried in ~3 s, past the 1 s horizon: parked
    rx.then(503, Duration::ZERO);
    rx.then(200, Duration::from_millis(3500)); // the third is answered 3.5 s late
    let id = webhook_to(&app, &rx).await;
    publish(&app, "object.created", json!({"n": 1})).await;
    publish(&app, "object.created", json!({"n": 2})).await;
    assert!(eventually(Duration::from_secs(10), || async { rx.count() == 2 }).await);
    publish(&app, "object.created", json!({"n": 3})).await;
    assert!(eventually(Duration::from_secs(10), || async { rx.count() == 3 }).await);
    let third = rx.captured()[2].header("webhook-id").unwrap().to_string();
    crash_delivery_actor(&app, &id).await;
    let done = || async { deliveries(&app, &id, Some("succeeded")).await.len() == 3 };
    assert!(eventually(Duration::from_secs(30), done).await, "{:?}", deliveries(&app, &id, None).await);
    let sent = rx.captured().iter().filter(|c| c.header("webhook-id") == Some(third.as_str())).count();
    let d = deliveries(&app, &id, None).await.into_iter().find(|d| d["delivery_id"] == json!(third)).unwrap();
    let attempts = d["attempts"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!((sent, attempts), (1, 1), "sent {sent} times, {attempts} attempt(s) logged: {d}");
}

/// A shutdown while a failed actor's successor waits for its sends waits for them too (the
/// cut-off ends them at the latest), and the successor takes their outcomes before the
/// store closes: after the restart the delivery is not sent again and its attempt is there.
/// (Two runtime threads: the receiver answers while the test waits for the daemon to stop.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_a_failed_actors_sends() {
    let mut app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    rx.then(200, Duration::from_millis(1500));
    let id = webhook_to(&app, &rx).await;
    publish(&app, "object.created", json!({"n": 1})).await;
    assert!(eventually(Duration::from_secs(10), || async { rx.count() == 1 }).await);
    crash_delivery_actor(&app, &id).await;
    assert_eq!(app.stop(), Some(0));
    app.start_again().await;
    let done = || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 };
    assert!(eventually(Duration::from_secs(20), done).await, "{:?}", deliveries(&app, &id, None).await);
    let d = deliveries(&app, &id, None).await.remove(0);
    let attempts = d["attempts"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!((rx.count(), attempts), (1, 1), "sent {} times: {d}", rx.count());
}

#[tokio::test]
async fn server_error_is_retried_with_the_same_webhook_id() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    rx.then(500, Duration::ZERO);
    rx.then(503, Duration::ZERO);
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "r", "event_types": ["*"], "channels": [http_channel(&rx.url("/r"))]}),
    )
    .await;
    publish(&app, "object.updated", json!({"n": 1})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 3 }).await, "retries missing; log:\n{}", app.log());
    let ok = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 }).await;
    assert!(ok);
    let caps = rx.captured();
    let ids: Vec<_> = caps.iter().map(|c| c.header("webhook-id").unwrap().to_string()).collect();
    assert!(ids.iter().all(|i| i == &ids[0]), "webhook-id changed across retries: {ids:?}");
    let d = &deliveries(&app, &id, None).await[0];
    let codes: Vec<_> = d["attempts"].as_array().unwrap().iter().map(|a| a["status_code"].as_u64().unwrap()).collect();
    assert_eq!(codes, vec![500, 503, 200]);
    assert!(d["attempts"][0]["error"].as_str().unwrap().contains("500"));
    // last_error was set while failing and cleared on success.
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert_eq!(w["last_error"], Value::Null, "{w}");
}

/// A 429 holds its channel for the `Retry-After`, then paces it (one request at a time, a
/// `Retry-After` apart): the deliveries queued behind it make no attempt meanwhile, and the
/// rate-limited one is retried after the `Retry-After`, not moved up the schedule (whose second
/// step is 10 minutes here).
#[tokio::test]
async fn a_429_holds_then_paces_its_channel() {
    let app = TestApp::start_with(queue_options("max_age_hours = 1\nretry_schedule_seconds = [1, 600]\n")).await;
    let rx = Receiver::start(200).await;
    rx.set_retry_after(1);
    rx.then(429, Duration::ZERO);
    // Every answer after the 429 takes a while, so paced requests cannot overlap.
    for _ in 0..6 {
        rx.then(200, Duration::from_millis(150));
    }
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "limited", "event_types": ["*"], "channels": [http_channel(&rx.url("/r"))]}),
    )
    .await;
    publish(&app, "object.updated", json!({"n": 0})).await;
    let limited = || async {
        deliveries(&app, &id, None).await.iter().any(|d| d["attempts"][0]["status_code"].as_u64() == Some(429))
    };
    assert!(eventually(WAIT, limited).await, "no 429 recorded; log:\n{}", app.log());
    for n in 1..=5 {
        publish(&app, "object.updated", json!({"n": n})).await;
    }
    let all = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 6 }).await;
    assert!(all, "{:?}", deliveries(&app, &id, None).await);
    let caps = rx.captured();
    assert_eq!(caps.len(), 7, "one 429, then each delivery once");
    for c in &caps[1..] {
        let after = c.at.duration_since(caps[0].at);
        assert!(after >= Duration::from_millis(950), "sent {after:?} after the 429, inside its Retry-After");
    }
    for pair in caps[1..].windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(950), "two requests {gap:?} apart: not paced");
    }
    let mut codes: Vec<Vec<u64>> = deliveries(&app, &id, None)
        .await
        .iter()
        .map(|d| d["attempts"].as_array().unwrap().iter().filter_map(|a| a["status_code"].as_u64()).collect())
        .collect();
    codes.sort();
    assert_eq!(codes, vec![vec![200], vec![200], vec![200], vec![200], vec![200], vec![429, 200]]);
}

/// A receiver that echoes the request's headers in its error body does not put the
/// channel's secret or custom header values into the API, the webhook's `last_error` or the
/// store: they are shown as `********`, as everywhere else.
#[tokio::test]
async fn a_receiver_echoing_secrets_does_not_leak_them() {
    use warp::Filter;
    const SECRET: &str = "s3cret-value-0123456789";
    const API_KEY: &str = "key-abcdef-98765-zyx";
    const TOKEN: &str = "tok-9f8e7d6c5b4a";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The bearer token alone, then the API key across the excerpt's 200-character cut (once
    // the token shows as `********`), then every header.
    let echo = warp::post().and(warp::header::headers_cloned()).map(|h: warp::http::HeaderMap| {
        let head = format!("token: {TOKEN}\n");
        let pad = "p".repeat(195 - "token: ********\n".len());
        let all: String = h.iter().map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or(""))).collect();
        warp::reply::with_status(format!("{head}{pad}{API_KEY}\n{all}"), warp::http::StatusCode::INTERNAL_SERVER_ERROR)
    });
    tokio::spawn(warp::serve(echo).incoming(listener).run());
    let channel = json!({"channel": "webhook", "configs": {"url": format!("http://{addr}/echo"), "secret": SECRET,
        "headers": {"X-Api-Key": API_KEY, "Authorization": format!("Bearer {TOKEN}")}}});
    let app = TestApp::start().await;
    let (id, _) =
        create_webhook(&app, json!({"webhook_name": "echo", "event_types": ["*"], "channels": [channel]})).await;
    publish(&app, "object.updated", json!({"n": 1})).await;
    let failed = eventually(WAIT, || async {
        deliveries(&app, &id, None).await.first().is_some_and(|d| !d["attempts"].as_array().unwrap().is_empty())
    })
    .await;
    assert!(failed, "no attempt; log:\n{}", app.log());
    let d = &deliveries(&app, &id, None).await[0];
    let error = d["attempts"][0]["error"].as_str().unwrap();
    // (The newline is a space: control characters never reach an excerpt, which is logged.)
    assert!(error.starts_with("HTTP 500: token: ******** p"), "{error}");
    assert!(error.ends_with("p*****"), "the key across the cut is hidden whole: {error}");
    assert!(!error.contains(&API_KEY[..4]) && !error.contains(&TOKEN[..4]), "{error}");
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    for text in [d.to_string(), w.to_string()] {
        assert!(!text.contains(SECRET) && !text.contains(API_KEY) && !text.contains(TOKEN), "{text}");
    }
    app.get("/healthz").await; // let the outcome's write reach the log
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (f, bytes) in crate::support::data_files(&app.data_dir) {
        for s in [SECRET, API_KEY, TOKEN] {
            assert!(!crate::support::contains_bytes(&bytes, s.as_bytes()), "{s} in plain text in {}", f.display());
        }
    }
}

/// A receiver that echoes what it was sent in another form: the Basic credentials decoded
/// (`user:password`, and the password alone), the secret lower-cased, the token
/// percent-encoded. None of these reaches an attempt, `last_error` or the data directory.
#[tokio::test]
async fn a_receiver_echoing_secrets_in_another_form_does_not_leak_them() {
    use warp::Filter;
    const SECRET: &str = "Hook-Secret-XYZ-4242";
    const USER: &str = "svc-hookline";
    const PASSWORD: &str = "Pa55 w0rd/+Q9";
    const TOKEN: &str = "Tok/En+Value==77";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = warp::post().and(warp::header::headers_cloned()).map(|h: warp::http::HeaderMap| {
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let basic = header("authorization");
        let decoded = basic
            .strip_prefix("Basic ")
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let password = decoded.split_once(':').map(|(_, p)| p.to_string()).unwrap_or_default();
        let token: String = url::form_urlencoded::byte_serialize(header("x-token").as_bytes()).collect();
        let body = format!(
            "login {decoded} refused; password={password}; secret {}; token={token}",
            header("x-mixpeek-secret").to_lowercase()
        );
        warp::reply::with_status(body, warp::http::StatusCode::UNAUTHORIZED)
    });
    tokio::spawn(warp::serve(echo).incoming(listener).run());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let channel = json!({"channel": "webhook", "configs": {"url": format!("http://{addr}/echo"), "secret": SECRET,
        "headers": {"Authorization": format!("Basic {basic}"), "X-Token": TOKEN}}});
    let app = TestApp::start().await;
    let (id, _) =
        create_webhook(&app, json!({"webhook_name": "echo2", "event_types": ["*"], "channels": [channel]})).await;
    publish(&app, "object.updated", json!({"n": 1})).await;
    let failed = eventually(WAIT, || failed_attempt_recorded(&app, &id)).await;
    assert!(failed, "no failed attempt; log:\n{}", app.log());
    let d = &deliveries(&app, &id, None).await[0];
    let error = d["attempts"][0]["error"].as_str().unwrap();
    assert_eq!(error, "HTTP 401: login ******** refused; password=********; secret ********; token=********");
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    let token_form: String = url::form_urlencoded::byte_serialize(TOKEN.as_bytes()).collect();
    let lower = SECRET.to_lowercase();
    let leaks = [PASSWORD, "w0rd/+Q9", lower.as_str(), token_form.as_str(), TOKEN];
    for text in [d.to_string(), w.to_string()] {
        for leak in leaks {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
    }
    crate::support::assert_not_in_data_files(&app, &leaks).await;
}

#[tokio::test]
async fn timeout_is_retried() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    rx.then(200, Duration::from_secs(3));
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "t", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/slow"), "timeout": 0.3}}]}),
    )
    .await;
    publish(&app, "object.created", json!({})).await;
    let ok = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 }).await;
    assert!(ok, "{:?}", deliveries(&app, &id, None).await);
    let d = &deliveries(&app, &id, None).await[0];
    let first = &d["attempts"][0];
    assert_eq!(first["status_code"], Value::Null);
    assert!(first["error"].as_str().unwrap().contains("timed out"), "{first}");
    assert_eq!(d["attempts"][1]["status_code"], 200);
    assert!(
        metric_reaches(&app, "hookline_delivery_attempts_total", &[("result", "timeout")], 1.0).await,
        "hookline_delivery_attempts_total not reached"
    );
}

/// A webhook's channels share `max_in_flight_per_webhook` (16): a receiver that hangs holds
/// only its channel's share (8 of 2 channels), and every event still reaches the other
/// channel at once (seed 004: several channels for critical events, for redundancy).
#[tokio::test]
async fn a_hung_channel_holds_only_its_share_of_the_webhooks_sends() {
    let app = TestApp::start().await;
    let hung = Receiver::start(200).await;
    for _ in 0..40 {
        hung.then(200, Duration::from_secs(60));
    }
    let fast = Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "two", "event_types": ["*"], "channels": [
            {"channel": "webhook", "configs": {"url": hung.url("/hung"), "timeout": 120}},
            http_channel(&fast.url("/fast"))]}),
    )
    .await;
    for n in 0..40 {
        publish(&app, "object.created", json!({"n": n})).await;
    }
    let all = eventually(WAIT, || async { fast.count() == 40 }).await;
    let pending = deliveries(&app, &id, Some("pending")).await.len();
    assert!(all, "{} of 40 reached the healthy channel ({pending} deliveries pending)", fast.count());
    assert_eq!(hung.count(), 8, "the hung channel has its share in flight, no more");
    // The healthy channel's outcomes are written within moments (20 ms groups): then only
    // the hung channel's 40 deliveries are pending.
    let only_hung = eventually(WAIT, || async { deliveries(&app, &id, Some("pending")).await.len() == 40 }).await;
    let pending = deliveries(&app, &id, Some("pending")).await;
    assert!(only_hung, "{} pending", pending.len());
    let channels: std::collections::HashSet<_> = pending.iter().map(|d| d["channel_id"].clone()).collect();
    assert_eq!(channels.len(), 1, "all of one channel: {channels:?}");
}

/// A webhook whose secrets the master key cannot open (the key was changed) sends nothing:
/// its deliveries wait, its `last_error` says why, and so does the daemon's log at start-up
/// (an operator reads the log first).
#[tokio::test]
async fn a_webhook_sealed_under_another_master_key_is_logged_and_waits() {
    let key_a = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let key_b = "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";
    let rx = Receiver::start(200).await;
    let mut app =
        TestApp::start_with(Options { env: vec![("HOOKLINE_MASTER_KEY".into(), key_a.into())], ..Default::default() })
            .await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "sealed", "event_types": ["*"], "channels": [http_channel(&rx.url("/sealed"))]}),
    )
    .await;
    app.set_env("HOOKLINE_MASTER_KEY", key_b);
    app.restart().await;
    assert!(app.log().contains(&format!("webhook_id={id}")) && app.log().contains("cannot be opened"), "{}", app.log());
    publish(&app, "object.created", json!({"n": 1})).await;
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert!(w["last_error"].as_str().unwrap_or_default().contains("decrypt"), "{w}");
    assert!(w["error"].as_str().unwrap_or_default().contains("cannot be decrypted"), "said by the view: {w}");
    assert!(eventually(WAIT, || async { deliveries(&app, &id, Some("pending")).await.len() == 1 }).await);
    assert_eq!(rx.count(), 0);
    let unreadable = |m: &str| metric_value(m, "hookline_credentials_unreadable", &[("kind", "webhook")]);
    assert_eq!(unreadable(&app.metrics().await), 1.0, "the metric an operator alerts on");
    // Deleted (to be made again): nothing unreadable is left.
    assert_eq!(app.delete(&format!("/v1/organizations/webhooks/{id}")).await.0, 204);
    assert_eq!(unreadable(&app.metrics().await), 0.0);
}

#[tokio::test]
async fn failing_receiver_goes_dead_then_manual_retry_delivers() {
    let app = TestApp::start_with(Options {
        delivery_toml: Some(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nrequest_timeout_seconds = 2\nmax_age_seconds = 2\nretry_schedule_seconds = [1]\n".into(),
        ),
        ..Default::default()
    })
    .await;
    let rx = Receiver::start(500).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "d", "event_types": ["*"], "channels": [http_channel(&rx.url("/d"))]}),
    )
    .await;
    publish(&app, "batch.failed", json!({"batch_id": "b1"})).await;
    let ok = eventually(WAIT, || async { deliveries(&app, &id, Some("dead")).await.len() == 1 }).await;
    assert!(ok, "{:?}", deliveries(&app, &id, None).await);
    let d = deliveries(&app, &id, Some("dead")).await.remove(0);
    assert!(d["attempts"].as_array().unwrap().len() >= 2, "{d}");
    let last_attempt = d["attempts"].as_array().unwrap().last().unwrap()["at"].as_str().unwrap().to_string();
    assert!(d["finished_at"].as_str().is_some_and(|f| f >= last_attempt.as_str()), "{d}");
    assert!(deliveries(&app, &id, Some("pending")).await.is_empty());
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert!(w["last_error"].as_str().unwrap_or("").contains("HTTP 500"), "{w}");
    // When the error began: no later than the last attempt that made it.
    let since = w["last_error_at"].as_str().unwrap_or_default();
    assert!(time::OffsetDateTime::parse(since, &time::format_description::well_known::Rfc3339).is_ok(), "{w}");
    assert!(since <= last_attempt.as_str(), "{w} vs last attempt {last_attempt}");
    assert!(
        metric_reaches(&app, "hookline_deliveries_dead_total", &[], 1.0).await,
        "hookline_deliveries_dead_total not reached"
    );
    assert!(
        metric_reaches(&app, "hookline_deliveries_total", &[("outcome", "dead")], 1.0).await,
        "hookline_deliveries_total not reached"
    );

    // Fix the receiver, retry by hand (a second later: finished_at has whole seconds, and
    // the retry's finish must be told from the first).
    rx.set_default(200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let did = d["delivery_id"].as_str().unwrap();
    let (s, b) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{did}/retry"), json!({})).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["status"], "pending");
    assert_eq!(b["finished_at"], Value::Null, "re-queued: no longer finished");
    let ok = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 }).await;
    assert!(ok, "{:?}", deliveries(&app, &id, None).await);
    // Finished again, later: the retry cleared the first finish (the retention restarts).
    let again = deliveries(&app, &id, Some("succeeded")).await.remove(0);
    let (first, second) = (d["finished_at"].as_str().unwrap(), again["finished_at"].as_str().unwrap_or(""));
    assert!(second > first, "the retry's finish, not the first one: {d} then {again}");
    let caps = rx.captured();
    assert!(caps.iter().all(|c| c.header("webhook-id") == Some(did)), "same webhook-id on manual retry");
    let (s, _) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/del_nope/retry"), json!({})).await;
    assert_eq!(s, 404);
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert_eq!(w["last_error"], Value::Null);
    assert_eq!(w["last_error_at"], Value::Null, "cleared with the error: {w}");
}

/// Deliveries failing alike keep `last_error_at` where the failure began: the error names
/// its delivery, and another delivery's same failure is no new error.
#[tokio::test]
async fn last_error_at_stays_while_deliveries_fail_alike() {
    let (app, _rx, id) = app_with_failing_receiver("max_age_seconds = 3\nretry_schedule_seconds = [1]\n").await;
    publish(&app, "batch.failed", json!({"batch_id": "b1"})).await;
    publish(&app, "batch.failed", json!({"batch_id": "b2"})).await;
    let ok = eventually(WAIT, || async { deliveries(&app, &id, Some("dead")).await.len() == 2 }).await;
    assert!(ok, "{:?}", deliveries(&app, &id, None).await);
    // Each delivery's second attempt came a second or more after the first failure.
    let second_attempts: Vec<String> = deliveries(&app, &id, Some("dead"))
        .await
        .iter()
        .map(|d| d["attempts"][1]["at"].as_str().expect("a second attempt").to_string())
        .collect();
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert!(w["last_error"].as_str().unwrap_or("").contains("HTTP 503"), "{w}");
    let since = w["last_error_at"].as_str().unwrap_or_default();
    assert!(second_attempts.iter().all(|a| since <= a.as_str()), "{w} vs second attempts {second_attempts:?}");
}

/// A receiver failing the same way (HTTP 500) with a body that differs on every answer (a
/// request number, as error pages carry a request ID or a time) keeps `last_error_at` where
/// the failure began, while `last_error` shows the newest answer; so do a restart and a
/// `kill -9`, after which the daemon no longer knows which channel the stored error was of.
#[tokio::test]
async fn last_error_at_stays_across_answers_and_restarts() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use warp::Filter;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answers = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = answers.clone();
    let fail = warp::post().map(move || {
        let n = counted.fetch_add(1, Ordering::SeqCst);
        warp::reply::with_status(format!("boom, request {n}"), warp::http::StatusCode::INTERNAL_SERVER_ERROR)
    });
    tokio::spawn(warp::serve(fail).incoming(listener).run());
    let mut app = TestApp::start_with(queue_options("retry_schedule_seconds = [1]\n")).await;
    let channel = http_channel(&format!("http://{addr}/x"));
    let (id, _) =
        create_webhook(&app, json!({"webhook_name": "boom", "event_types": ["*"], "channels": [channel]})).await;
    publish(&app, "batch.failed", json!({"batch_id": "b1"})).await;
    async fn webhook(app: &TestApp, id: &str) -> Value {
        app.get(&format!("/v1/organizations/webhooks/{id}")).await.1
    }
    let failing = |n: usize| {
        let answers = answers.clone();
        async move { eventually(WAIT, || async { answers.load(Ordering::SeqCst) >= n }).await }
    };
    assert!(failing(1).await);
    assert!(eventually(WAIT, || async { !webhook(&app, &id).await["last_error_at"].is_null() }).await);
    let began = webhook(&app, &id).await["last_error_at"].clone();
    assert!(failing(3).await, "retried every second");
    // Past the outcome's write, which follows the answer.
    assert!(eventually(WAIT, || async { webhook(&app, &id).await["last_error"] != json!(null) }).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = webhook(&app, &id).await;
    let error = w["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("HTTP 500") && !error.contains("request 0"), "the newest answer: {w}");
    assert_eq!(w["last_error_at"], began, "{w}");
    app.restart().await;
    let after = answers.load(Ordering::SeqCst) + 2;
    assert!(failing(after).await, "retried after the restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(webhook(&app, &id).await["last_error_at"], began, "after a restart");
    app.crash_restart().await;
    let after = answers.load(Ordering::SeqCst) + 2;
    assert!(failing(after).await, "retried after the kill -9");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = webhook(&app, &id).await;
    assert_eq!(w["last_error_at"], began, "after a kill -9: {w}");
    assert!(w["last_error"].as_str().unwrap_or_default().contains("HTTP 500"), "{w}");
}

/// A webhook of every event with two HTTP channels, one to each receiver, and one event
/// published to it; returns its ID.
async fn two_channels_and_an_event(app: &TestApp, first: &Receiver, second: &Receiver) -> String {
    let channels = json!([http_channel(&first.url("/x")), http_channel(&second.url("/x"))]);
    let (id, _) = create_webhook(app, json!({"webhook_name": "two", "event_types": ["*"], "channels": channels})).await;
    publish(app, "batch.failed", json!({"batch_id": "b1"})).await;
    id
}

/// Two channels failing the same way: once the first recovers, `last_error_at` is when the
/// second began failing, not the first.
#[tokio::test]
async fn last_error_at_follows_the_channel_still_failing() {
    let app = TestApp::start_with(queue_options("max_age_seconds = 30\nretry_schedule_seconds = [1]\n")).await;
    let (first, second) = (Receiver::start(503).await, Receiver::start(200).await);
    let id = two_channels_and_an_event(&app, &first, &second).await;
    assert!(eventually(WAIT, || async { first.count() >= 1 && second.count() >= 1 }).await);
    // The second channel begins failing, the same way, seconds later.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    second.set_default(503);
    publish(&app, "batch.failed", json!({"batch_id": "b2"})).await;
    assert!(eventually(WAIT, || async { second.count() >= 3 }).await);
    let (_, w0) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    let began = w0["last_error_at"].clone();
    first.set_default(200);
    let cleared = || async {
        let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
        w["last_error_at"] != began && !w["last_error_at"].is_null()
    };
    assert!(eventually(WAIT, cleared).await, "last_error_at stayed at the first channel's {began}");
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert!(w["last_error_at"].as_str() > began.as_str(), "{w} vs {began}");
}

#[tokio::test]
async fn paused_and_deleted_webhooks_receive_nothing() {
    let app = TestApp::start().await;
    let on = Receiver::start(200).await;
    let paused = Receiver::start(200).await;
    let doomed = Receiver::start(500).await;
    let (on_id, _) = create_webhook(
        &app,
        json!({"webhook_name": "on", "event_types": ["*"], "channels": [http_channel(&on.url("/"))]}),
    )
    .await;
    let (paused_id, _) = create_webhook(&app, json!({"webhook_name": "off", "event_types": ["*"], "is_active": false, "channels": [http_channel(&paused.url("/"))]})).await;
    let (doomed_id, _) = create_webhook(
        &app,
        json!({"webhook_name": "doomed", "event_types": ["*"], "channels": [http_channel(&doomed.url("/"))]}),
    )
    .await;
    publish(&app, "object.created", json!({"i": 1})).await;
    // One fan-out batch covers every webhook: once the active one has it, the paused one
    // would have been queued too if it were going to be.
    assert!(eventually(WAIT, || async { on.count() >= 1 && doomed.count() >= 1 }).await);
    assert!(deliveries(&app, &paused_id, None).await.is_empty(), "paused webhook queued a delivery");
    assert_eq!(deliveries(&app, &doomed_id, Some("pending")).await.len(), 1);

    // Delete cancels the failing queue.
    assert_eq!(app.delete(&format!("/v1/organizations/webhooks/{doomed_id}")).await.0, 204);
    let seen = doomed.count();
    // Resume the paused one; publish again: the deleted one gets nothing new, the resumed one gets only the new event.
    let (s, _) = app.patch(&format!("/v1/organizations/webhooks/{paused_id}"), json!({"is_active": true})).await;
    assert_eq!(s, 200);
    publish(&app, "object.created", json!({"i": 2})).await;
    assert!(eventually(WAIT, || async { on.count() >= 2 && paused.count() >= 1 }).await);
    assert_eq!(paused.count(), 1);
    assert_eq!(paused.captured()[0].json()["payload"]["i"], 2);
    // The outcome is recorded a moment after the receiver answered.
    assert!(eventually(WAIT, || async { deliveries(&app, &on_id, Some("succeeded")).await.len() == 2 }).await);
    // The retry timer (1 s) of the deleted webhook's delivery has passed by the time the
    // new event went through twice more; no request may have arrived since the delete.
    publish(&app, "object.created", json!({"i": 3})).await;
    assert!(eventually(WAIT, || async { on.count() >= 3 }).await);
    let (s, _) = app.get(&format!("/v1/organizations/webhooks/{doomed_id}/deliveries")).await;
    assert_eq!(s, 404);
    assert!(doomed.count() <= seen + 1, "a deleted webhook kept receiving: {} → {}", seen, doomed.count());
}

#[tokio::test]
async fn star_prefix_and_exact_subscriptions_and_templates() {
    let app = TestApp::start().await;
    let all = Receiver::start(200).await;
    let objects = Receiver::start(200).await;
    let exact = Receiver::start(200).await;
    let templated = Receiver::start(200).await;
    create_webhook(
        &app,
        json!({"webhook_name": "all", "event_types": ["*"], "channels": [http_channel(&all.url("/"))]}),
    )
    .await;
    create_webhook(
        &app,
        json!({"webhook_name": "obj", "event_types": ["object.*"], "channels": [http_channel(&objects.url("/"))]}),
    )
    .await;
    create_webhook(&app, json!({"webhook_name": "exact", "event_types": ["object.deleted"], "channels": [http_channel(&exact.url("/"))]})).await;
    let template = r#"{"text": "{{ event_type }} for {{ payload.object_id }}", "id": "{{ event_id }}", "at": "{{ created_at }}", "n": {{ payload.count * 2 }}}"#;
    create_webhook(
        &app,
        json!({"webhook_name": "tpl", "event_types": ["object.created"], "channels": [
            {"channel": "webhook", "configs": {"url": templated.url("/t"), "payload_template": template}}
        ]}),
    )
    .await;
    let e1 = publish(&app, "object.created", json!({"object_id": "obj_7", "count": 21})).await;
    publish(&app, "custom.thing", json!({})).await;
    publish(&app, "object.deleted", json!({"object_id": "obj_7"})).await;
    assert!(
        eventually(WAIT, || async {
            all.count() >= 3 && objects.count() >= 2 && exact.count() >= 1 && templated.count() >= 1
        })
        .await
    );
    let types = |r: &Receiver| {
        let mut t: Vec<String> =
            r.captured().iter().map(|c| c.json()["event_type"].as_str().unwrap_or("").to_string()).collect();
        t.sort();
        t
    };
    assert_eq!(types(&all), vec!["custom.thing", "object.created", "object.deleted"]);
    assert_eq!(types(&objects), vec!["object.created", "object.deleted"]);
    assert_eq!(types(&exact), vec!["object.deleted"]);
    let body = templated.captured()[0].json();
    assert_eq!(body["text"], "object.created for obj_7");
    assert_eq!(body["id"], e1.as_str());
    assert_eq!(body["n"], 42);
    assert!(body["at"].as_str().unwrap().ends_with('Z'));
    // A bad publish is refused.
    for bad in ["", "object.", ".created", "a..b"] {
        let (s, b) = app.post("/v1/events", json!({"event_type": bad, "payload": {}})).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("event_type")), "{bad}: {b}");
    }
    let (s, _) = app.post("/v1/events", json!({"payload": {}})).await;
    assert_eq!(s, 422);
    for bare in [json!("s"), json!([1, 2]), json!(null)] {
        let (s, b) = app.post("/v1/events", json!({"event_type": "x.y", "payload": bare})).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("payload")), "{b}");
    }
    // An integer JSON parsing would round is refused, not delivered as another number.
    let key = format!("Bearer {}", app.api_key);
    let big = br#"{"event_type": "x.y", "payload": {"n": [1, {"a": 12345678901234567890123}]}}"#;
    let (s, b) = app.post_raw("/v1/events", big.to_vec(), &[("authorization", key.as_str())]).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("payload.n[1].a")), "named by its path: {b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("send it as a string"), "{b}");
    let scoped = br#"{"event_type": "x.y", "payload": {"f": 1.5}, "cache_scopes": [12345678901234567890123]}"#;
    let (s, b) = app.post_raw("/v1/events", scoped.to_vec(), &[("authorization", key.as_str())]).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("cache_scopes[0]")), "{b}");
    // A float written with an exponent is no integer: with one beside it, both are named.
    let mixed = br#"{"event_type": "x.y", "payload": {"a": 1e19}, "cache_scopes": [123456789012345678901234]}"#;
    let (s, b) = app.post_raw("/v1/events", mixed.to_vec(), &[("authorization", key.as_str())]).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("at one of: payload.a, cache_scopes[0]"), "{b}");
    let fine =
        br#"{"event_type": "x.y", "payload": {"n": 18446744073709551615, "s": "12345678901234567890123", "f": 1e19}}"#;
    assert_eq!(app.post_raw("/v1/events", fine.to_vec(), &[("authorization", key.as_str())]).await.0, 202);
    // cache_scopes is optional: null is none, as leaving it out is.
    let unscoped = br#"{"event_type": "x.y", "payload": {}, "cache_scopes": null}"#;
    assert_eq!(app.post_raw("/v1/events", unscoped.to_vec(), &[("authorization", key.as_str())]).await.0, 202);
}

#[tokio::test]
async fn unsafe_destinations_are_refused_by_default() {
    let app = TestApp::start_with(Options {
        delivery_toml: Some("[delivery]\nretry_schedule_seconds = [1]\n".into()),
        ..Default::default()
    })
    .await;
    for url in [
        "http://example.com/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/x",
        "https://localhost:8443/x",
        "https://10.0.0.8/x",
        "https://169.254.169.254/latest/meta-data",
        // Read by the URL standard as another text (`https://example.com/x`): not what is shown.
        "https:///example.com/x",
        "https:example.com/x",
        "https:\\\\example.com\\x",
    ] {
        let (s, b) = app
            .post(
                "/v1/organizations/webhooks",
                json!({"webhook_name": "x", "event_types": ["*"], "channels": [http_channel(url)]}),
            )
            .await;
        assert_eq!(s, 422, "{url}: {b}");
        assert_eq!(b["error"]["field"], "channels[0].configs.url", "{url}: {b}");
    }
    // A host NAME that resolves to a private address passes creation but is refused when
    // resolved at send time. The machine's own hostname resolves locally (no network).
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host.as_str(), 443)).await {
        Ok(a) => a.collect(),
        Err(_) => Vec::new(),
    };
    let private = |ip: std::net::IpAddr| match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    if host.is_empty() || addrs.is_empty() || !addrs.iter().all(|a| private(a.ip())) {
        eprintln!("skipping the DNS part: hostname {host:?} resolves to {addrs:?}");
        return;
    }
    let (id, _) = create_webhook(&app, json!({"webhook_name": "dns", "event_types": ["*"], "channels": [http_channel(&format!("https://{host}:9/x"))]})).await;
    publish(&app, "object.created", json!({})).await;
    let ok = eventually(WAIT, || async {
        deliveries(&app, &id, None).await.first().is_some_and(|d| !d["attempts"].as_array().unwrap().is_empty())
    })
    .await;
    assert!(ok);
    let d = &deliveries(&app, &id, None).await[0];
    let err = d["attempts"][0]["error"].as_str().unwrap();
    assert!(err.contains("private"), "{err}");
    assert!(
        metric_reaches(&app, "hookline_delivery_attempts_total", &[("result", "refused")], 1.0).await,
        "hookline_delivery_attempts_total not reached"
    );
}

#[tokio::test]
async fn registry_crash_restarts_workers_and_keeps_delivering() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    create_webhook(&app, json!({"webhook_name": "c", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}))
        .await;
    let (s, _) = app.post("/v1/debug/crash/delivery_registry", json!({})).await;
    assert_eq!(s, 202);
    assert!(
        eventually(WAIT, || async {
            metric_value(&app.metrics().await, "hookline_actor_restarts_total", &[("actor", "delivery_registry")])
                >= 1.0
        })
        .await
    );
    // Publishing may briefly see the registry restarting (503); poll until accepted.
    let ok = eventually(WAIT, || async {
        app.post("/v1/events", json!({"event_type": "object.created", "payload": {}})).await.0 == 202
    })
    .await;
    assert!(ok);
    assert!(eventually(WAIT, || async { rx.count() >= 1 }).await, "log:\n{}", app.log());
}

/// With no active webhook the bus only counts events (nothing to fan out, nothing stored);
/// a webhook created, paused and resumed receives exactly the events published while it
/// was active.
#[tokio::test]
async fn events_reach_webhooks_active_when_they_were_published() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    publish(&app, "custom.before", json!({"n": 1})).await;
    let m = app.metrics().await;
    // Uncatalogued types share one series (a client's names must not grow the series count).
    assert!(metric_value(&m, "hookline_events_published_total", &[("event_type", "other")]) >= 1.0, "{m}");
    assert!(!m.contains("custom.before"), "{m}");
    assert_eq!(metric_value(&m, "hookline_events_dispatched_total", &[]), 0.0, "nothing stored, nothing fanned out");

    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "w", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    publish(&app, "custom.during", json!({"n": 2})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 1 }).await);

    let (s, _) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"is_active": false})).await;
    assert_eq!(s, 200);
    publish(&app, "custom.paused", json!({"n": 3})).await;
    let (s, _) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"is_active": true})).await;
    assert_eq!(s, 200);
    publish(&app, "custom.after", json!({"n": 4})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 2 }).await);
    // Give a wrongly stored event time to show up before asserting it did not.
    assert!(metric_reaches(&app, "hookline_events_dispatched_total", &[], 2.0).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut types: Vec<String> =
        rx.captured().iter().map(|c| c.json()["event_type"].as_str().unwrap_or("").to_string()).collect();
    types.sort();
    assert_eq!(types, vec!["custom.after", "custom.during"]);
}

/// A data dir of format 3 (each delivery holding a copy of its event) is migrated at start,
/// and a delivery still pending then is sent with its event.
#[tokio::test]
async fn pending_deliveries_survive_the_migration_from_format_3() {
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let rx = Receiver::start(500).await; // fails: the delivery stays pending
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "mig", "event_types": ["*"], "channels": [http_channel(&rx.url("/m"))]}),
    )
    .await;
    let event_id = publish(&app, "object.created", json!({"object_id": "obj_7", "n": 7})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 1 }).await, "no attempt; log:\n{}", app.log());
    assert_eq!(app.stop(), Some(0));

    // Put the event back inside its delivery, as a format-3 binary kept it.
    {
        let backend = app.stopped_sled().await;
        let event: Value =
            serde_json::from_slice(&backend.get(format!("evt\0{event_id}").as_bytes()).unwrap().unwrap()).unwrap();
        let mut old = Vec::new();
        for (key, v) in stored_entries(&backend, "dlv", &format!("{id}/")) {
            let mut d: Value = serde_json::from_slice(&v).unwrap();
            assert_eq!(d["status"], "pending", "{d}");
            let o = d.as_object_mut().unwrap();
            o.remove("event_id");
            o.remove("event_type");
            o.insert("event".into(), event.clone());
            old.push((key, d));
        }
        assert_eq!(old.len(), 1);
        let mut b = Batch::new();
        for (key, d) in &old {
            b.put(Keyspace::DELIVERIES, key, d);
        }
        b.delete(Keyspace::EVENTS, &event_id);
        b.put(Keyspace::META, "format_version", &3u32);
        backend.apply(&b).unwrap();
        futures::executor::block_on(backend.flush()).unwrap();
    }

    rx.set_default(200);
    let before = rx.count();
    app.start_again().await;
    assert!(eventually(WAIT, || async { rx.count() > before }).await, "not redelivered; log:\n{}", app.log());
    let env = rx.captured().last().unwrap().json();
    assert_eq!(env["event_id"], event_id.as_str());
    assert_eq!(env["payload"], json!({"object_id": "obj_7", "n": 7}));
    let ok = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 }).await;
    assert!(ok, "{:?}", deliveries(&app, &id, None).await);
}

#[tokio::test]
async fn deliveries_are_paged_newest_first() {
    let rx = Receiver::start(200).await;
    let app = TestApp::start().await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "p", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(publish(&app, "object.created", json!({"i": i})).await);
        // Event IDs are time-ordered at millisecond resolution: keep the publish order.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(eventually(WAIT, || async { deliveries(&app, &wh, Some("succeeded")).await.len() == 5 }).await);

    let page = |before: Option<String>| {
        let app = &app;
        let wh = wh.clone();
        async move {
            let q = before.map(|b| format!("&before={b}")).unwrap_or_default();
            let (s, b) = app.get(&format!("/v1/organizations/webhooks/{wh}/deliveries?limit=2{q}")).await;
            assert_eq!(s, 200, "{b}");
            b.as_array().unwrap().clone()
        }
    };
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut before = None;
    for _ in 0..4 {
        let p = page(before.clone()).await;
        sizes.push(p.len());
        if p.is_empty() {
            break;
        }
        before = p.last().map(|d| d["delivery_id"].as_str().unwrap().to_string());
        seen.extend(p.iter().map(|d| d["event_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(sizes, [2, 2, 1, 0]);
    let newest_first: Vec<String> = events.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "three pages, each older than the last, nothing twice");
    // A status filter pages the same way.
    let first_id = {
        let p = page(None).await;
        p[0]["delivery_id"].as_str().unwrap().to_string()
    };
    let (s, b) = app
        .get(&format!("/v1/organizations/webhooks/{wh}/deliveries?status=succeeded&limit=10&before={first_id}"))
        .await;
    assert_eq!(s, 200, "{b}");
    let older: Vec<&str> = b.as_array().unwrap().iter().map(|d| d["event_id"].as_str().unwrap()).collect();
    assert_eq!(older, newest_first[1..].iter().map(String::as_str).collect::<Vec<_>>());

    let dead = deliveries(&app, &wh, Some("dead")).await;
    assert!(dead.is_empty());
    for (query, field) in [
        ("before=nope", "before"),
        ("before=del_nope", "before"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        // A typo is not ignored (it would answer every delivery as if filtered).
        ("stauts=dead", "stauts"),
    ] {
        let (s, b) = app.get(&format!("/v1/organizations/webhooks/{wh}/deliveries?{query}")).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{query}: {b}");
        if field == "before" {
            let said = b["error"]["message"].as_str().unwrap_or_default();
            assert!(said.contains("not a delivery_id as this list returns") && said.contains("or not"), "{b}");
        }
    }
    let (s, b) = app.get(&format!("/v1/organizations/webhooks/{wh}/deliveries?limit=1000")).await;
    assert_eq!((s, b.as_array().map(Vec::len)), (200, Some(5)), "{b}");
}

/// A webhook whose receiver is down keeps at most `max_queued_in_memory_per_webhook`
/// deliveries in memory; the rest wait in the store, survive a `kill -9`, and go out oldest
/// first, each exactly once, once the receiver is back.
#[tokio::test]
async fn a_full_queue_spills_to_the_store_and_drains_in_order() {
    let settings = "max_age_hours = 1\nretry_schedule_seconds = [1]\nmax_in_flight_per_webhook = 1\n\
                    max_queued_in_memory_per_webhook = 3\n";
    let (mut app, down, id) = app_with_failing_receiver(settings).await;
    const N: u64 = 30;
    for n in 1..=N {
        publish(&app, "object.updated", json!({ "n": n })).await;
        // Distinct milliseconds: event IDs (and so delivery keys) follow publish order.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(
        eventually(WAIT, || async { queue_depth(&app).await == N as f64 }).await,
        "every pending delivery, spilled or not, is in the depth gauge: {}",
        queue_depth(&app).await
    );
    assert!(app.log().contains("delivery queue spilled to the store"), "{}", app.log());
    assert!(eventually(WAIT, || async { down.count() >= 3 }).await, "the receiver was tried");

    app.kill9();
    app.start_again().await;
    let log = without_colors(&app.log());
    assert!(log.contains("pending=30 in_memory=3"), "reloaded within the bound:\n{log}");

    // The receiver is back (at a new address).
    let up = Receiver::start(200).await;
    let (s, b) = app
        .patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [http_channel(&up.url("/up"))]}))
        .await;
    assert_eq!(s, 200, "{b}");
    let all = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == N as usize }).await;
    assert!(all, "{:?}", deliveries(&app, &id, Some("pending")).await.len());
    let got: Vec<u64> = up.captured().iter().map(|c| c.json()["payload"]["n"].as_u64().unwrap()).collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=N).collect::<Vec<_>>(), "each event exactly once: {got:?}");
    // The three that were retrying may interleave by their retry times; the rest keep event order.
    let later: Vec<u64> = got.iter().copied().filter(|n| *n > 3).collect();
    assert!(later.windows(2).all(|w| w[0] < w[1]), "oldest first: {got:?}");
    assert!(eventually(WAIT, || async { queue_depth(&app).await == 0.0 }).await, "depth back to 0");
}

async fn queue_depth(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "hookline_delivery_queue_depth", &[])
}

/// The log without its terminal colour codes.
pub fn without_colors(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ … m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The spill drains while the daemon runs: a slow receiver, events published from several
/// tasks at once, and every event delivered exactly once.
#[tokio::test]
async fn a_spilled_queue_drains_live_without_loss_or_duplicates() {
    let settings = "max_age_hours = 1\nretry_schedule_seconds = [1]\nmax_in_flight_per_webhook = 2\n\
                    max_queued_in_memory_per_webhook = 4\n";
    let app = TestApp::start_with(queue_options(settings)).await;
    let rx = Receiver::start(200).await;
    const N: usize = 60;
    for _ in 0..N {
        rx.then(200, Duration::from_millis(30));
    }
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "live", "event_types": ["*"], "channels": [http_channel(&rx.url("/live"))]}),
    )
    .await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..N / 4 {
                publish(&app, "object.updated", json!({ "n": t * 100 + i })).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == N }).await;
    assert!(all, "pending: {}", deliveries(&app, &id, Some("pending")).await.len());
    // A late duplicate would arrive just after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids: Vec<String> = rx.captured().iter().map(|c| c.header("webhook-id").unwrap().to_string()).collect();
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (N, N), "each delivery sent once");
    let log = app.log();
    assert!(log.contains("delivery queue spilled to the store"), "{log}");
    assert!(log.contains("delivery queue back in memory"), "{log}");
    assert!(eventually(WAIT, || async { queue_depth(&app).await == 0.0 }).await, "depth back to 0");
}

/// Retries due later than `retry_in_memory_seconds` leave memory for the store and come
/// back when due; while they wait, new events go out at once; they survive a `kill -9`;
/// a manual retry takes one out early.
#[tokio::test]
async fn far_off_retries_wait_in_the_store() {
    let settings = "max_age_hours = 2\nretry_schedule_seconds = [2, 3600]\nmax_in_flight_per_webhook = 2\n\
                    max_queued_in_memory_per_webhook = 4\nretry_in_memory_seconds = 1\n";
    let (mut app, rx, id) = app_with_failing_receiver(settings).await;
    for n in 0..6 {
        publish(&app, "object.updated", json!({ "n": n })).await;
    }
    // A 2 s retry is past the 1 s horizon: parked, read back when due (not before), tried
    // again, then parked for an hour.
    let tried_twice = || all_pending_tried(&app, &id, 6, 2);
    assert!(eventually(WAIT, tried_twice).await, "{:?}", deliveries(&app, &id, None).await);
    let caps = rx.captured();
    for d in deliveries(&app, &id, Some("pending")).await {
        let tries: Vec<_> = caps.iter().filter(|c| c.header("webhook-id") == d["delivery_id"].as_str()).collect();
        assert_eq!(tries.len(), 2);
        let gap = tries[1].at.duration_since(tries[0].at).as_secs_f64();
        assert!(gap >= 1.5, "retried after {gap} s, before its 2 s (±20%) backoff");
    }
    assert_eq!(queue_depth(&app).await, 6.0);

    // The receiver is back: new events do not wait behind the parked hour.
    rx.set_default(200);
    for n in 6..13 {
        publish(&app, "object.updated", json!({ "n": n })).await;
    }
    let seven = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 7 }).await;
    assert!(seven, "{:?}", deliveries(&app, &id, None).await);
    let parked = deliveries(&app, &id, Some("pending")).await;
    assert_eq!(parked.len(), 6);
    assert!(parked.iter().all(|d| d["attempts"].as_array().unwrap().len() == 2), "{parked:?}");

    app.kill9();
    app.start_again().await;
    let log = without_colors(&app.log());
    assert!(log.contains("pending=6 in_memory=0 parked=6"), "{log}");
    assert!(eventually(WAIT, || async { queue_depth(&app).await == 6.0 }).await, "{}", queue_depth(&app).await);

    // A manual retry takes a parked delivery out now.
    let did = parked[0]["delivery_id"].as_str().unwrap();
    let (s, b) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{did}/retry"), json!({})).await;
    assert!(s == 200 || s == 202, "{s} {b}");
    let eight = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 8 }).await;
    assert!(eight, "{:?}", deliveries(&app, &id, None).await);
    assert_eq!(deliveries(&app, &id, Some("pending")).await.len(), 5);
    assert!(eventually(WAIT, || async { queue_depth(&app).await == 5.0 }).await, "{}", queue_depth(&app).await);

    // Five parked entries on disk; deleting the webhook takes them with it.
    assert_eq!(app.stop(), Some(0));
    assert_eq!(due_entries(&app).await, 5);
    app.start_again().await;
    let (s, _) = app.delete(&format!("/v1/organizations/webhooks/{id}")).await;
    assert_eq!(s, 204);
    assert!(eventually(WAIT, || async { queue_depth(&app).await == 0.0 }).await, "{}", queue_depth(&app).await);
    assert_eq!(app.stop(), Some(0));
    assert_eq!(due_entries(&app).await, 0, "parked entries left behind");
}

/// How many `due/` entries (parked retries) a stopped daemon's store holds.
async fn due_entries(app: &TestApp) -> usize {
    due_keys(app).await.len()
}

/// The `due/` keys (without the keyspace) a stopped daemon's store holds.
async fn due_keys(app: &TestApp) -> Vec<String> {
    stored_entries(&app.stopped_sled().await, "due", "").into_iter().map(|(k, _)| k).collect()
}

/// Whether the webhook has exactly `n` pending deliveries, each tried `attempts` times.
async fn all_pending_tried(app: &TestApp, id: &str, n: usize, attempts: usize) -> bool {
    let ds = deliveries(app, id, Some("pending")).await;
    ds.len() == n && ds.iter().all(|d| d["attempts"].as_array().is_some_and(|a| a.len() == attempts))
}

/// Loopback receivers allowed, a 2 s request timeout, and `settings` (TOML lines) for the
/// queue tests.
fn queue_options(settings: &str) -> Options {
    Options {
        delivery_toml: Some(format!(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nrequest_timeout_seconds = 2\n{settings}"
        )),
        ..Options::default()
    }
}

/// A daemon with `settings` (see [`queue_options`]) and one webhook on every event type whose
/// receiver answers 503 for now.
async fn app_with_failing_receiver(settings: &str) -> (TestApp, Receiver, String) {
    let app = TestApp::start_with(queue_options(settings)).await;
    let rx = Receiver::start(503).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "queue", "event_types": ["*"], "channels": [http_channel(&rx.url("/q"))]}),
    )
    .await;
    (app, rx, id)
}

/// A reload makes the `due/` entries match the records: missing ones (data from before
/// parking, or lost in a crash) are written, stale ones deleted.
#[tokio::test]
async fn reload_reconciles_parked_entries() {
    use hookline::store::{Backend, Batch, Keyspace};
    let settings = "max_age_hours = 2\nretry_schedule_seconds = [3600]\nmax_in_flight_per_webhook = 1\n\
                    max_queued_in_memory_per_webhook = 2\nretry_in_memory_seconds = 1\n";
    let (mut app, _rx, id) = app_with_failing_receiver(settings).await;
    for n in 0..3 {
        publish(&app, "object.updated", json!({ "n": n })).await;
    }
    let tried_once = || all_pending_tried(&app, &id, 3, 1);
    assert!(eventually(WAIT, tried_once).await, "{:?}", deliveries(&app, &id, None).await);
    assert_eq!(app.stop(), Some(0));
    assert_eq!(due_entries(&app).await, 3, "each failed delivery parked for an hour");

    // Lose the entries, and leave a stale one behind.
    {
        let mut b = Batch::new();
        for k in due_keys(&app).await {
            b.delete(Keyspace::DUE, &k);
        }
        let backend = app.stopped_sled().await;
        b.put(Keyspace::DUE, &format!("{id}/0000000000001/del_gone"), &());
        backend.apply(&b).unwrap();
        futures::executor::block_on(backend.flush()).unwrap();
    }
    assert_eq!(due_entries(&app).await, 1);

    app.start_again().await;
    let log = without_colors(&app.log());
    assert!(log.contains("pending=3 in_memory=0 parked=3"), "{log}");
    assert_eq!(app.stop(), Some(0));
    let keys = due_keys(&app).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(keys.iter().all(|k| k.starts_with(&format!("{id}/")) && !k.ends_with("del_gone")), "{keys:?}");
}

/// After a restart, the spilled range can hold parked retries (the reload parks far-off
/// retries wherever their keys lie, and spills what is due beyond the memory bound). The
/// refill reads back what is due and leaves those parked: nothing is sent before its time,
/// nothing twice, and their `due/` entries stay.
#[tokio::test]
async fn a_refill_leaves_parked_retries_inside_its_range_parked() {
    let settings = "max_age_hours = 2\nretry_schedule_seconds = [3600]\nmax_in_flight_per_webhook = 1\n\
                    max_queued_in_memory_per_webhook = 2\nretry_in_memory_seconds = 1\n";
    let (mut app, rx, id) = app_with_failing_receiver(settings).await;
    for n in 0..6 {
        publish(&app, "object.updated", json!({ "n": n })).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let tried_once = || all_pending_tried(&app, &id, 6, 1);
    assert!(eventually(WAIT, tried_once).await, "{:?}", deliveries(&app, &id, None).await);
    // Key order is delivery-ID order: the three lowest are retried by hand (due now), the
    // three highest stay parked for an hour.
    let mut ids: Vec<String> =
        deliveries(&app, &id, None).await.iter().map(|d| d["delivery_id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    let (due_now, parked) = ids.split_at(3);

    // Paused, the manual retries wait in the queue (due now) instead of being sent.
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"is_active": false})).await;
    assert_eq!(s, 200, "{b}");
    for did in due_now {
        let (s, b) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{did}/retry"), json!({})).await;
        assert!(s == 200 || s == 202, "{s} {b}");
    }
    app.kill9();
    app.start_again().await;
    let log = without_colors(&app.log());
    // Two due ones in memory, the third spilled; the parked ones lie beyond it.
    assert!(log.contains("pending=6 in_memory=2 parked=3"), "{log}");

    rx.set_default(200);
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"is_active": true})).await;
    assert_eq!(s, 200, "{b}");
    let three = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 3 }).await;
    assert!(three, "{:?}", deliveries(&app, &id, None).await);
    assert!(app.log().contains("delivery queue back in memory"), "{}", app.log());
    // A parked one sent by mistake would arrive just after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let caps = rx.captured();
    let sent = |did: &str| caps.iter().filter(|c| c.header("webhook-id") == Some(did)).count();
    for did in due_now {
        assert_eq!(sent(did), 2, "{did}: the failed try, then the manual retry once");
    }
    for did in parked {
        assert_eq!(sent(did), 1, "{did}: sent again before its retry was due");
    }
    let still: Vec<String> = deliveries(&app, &id, Some("pending"))
        .await
        .iter()
        .map(|d| d["delivery_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(still.len(), 3);
    assert!(still.iter().all(|d| parked.contains(d)), "{still:?} vs {parked:?}");
    assert!(eventually(WAIT, || async { queue_depth(&app).await == 3.0 }).await, "{}", queue_depth(&app).await);
    assert_eq!(app.stop(), Some(0));
    let keys = due_keys(&app).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(parked.iter().all(|did| keys.iter().any(|k| k.ends_with(did.as_str()))), "{keys:?}");
}

/// A redacted value sent back in a PATCH is matched to the stored channel it stands for, not
/// to whatever channel had that position: removing a channel keeps the others' secrets, and
/// a hidden secret never follows a changed URL. The shared secret may also be a header.
#[tokio::test]
async fn redacted_values_follow_their_channel_not_its_position() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "two", "event_types": ["*"], "channels": [
            {"channel": "webhook", "configs": {"url": rx.url("/a"), "secret": "secret-a", "headers": {"Authorization": "token-a"}}},
            {"channel": "webhook", "configs": {"url": rx.url("/b"), "secret": "secret-b", "headers": {"Authorization": "token-b"}}}
        ]}),
    )
    .await;
    let (_, got) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    // Remove the first channel: the second, sent back as shown, keeps its own secrets.
    let (s, b) =
        app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [got["channels"][1].clone()]})).await;
    assert_eq!(s, 200, "{b}");
    publish(&app, "object.updated", json!({})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 1 }).await);
    let sent = &rx.captured()[0];
    assert_eq!(sent.path, "/b");
    assert_eq!(sent.header("x-mixpeek-secret"), Some("secret-b"));
    assert_eq!(sent.header("authorization"), Some("token-b"));

    // A hidden header sent back under its name in other letters is the same header (names
    // are case-insensitive): its value is kept.
    let mut lower = got["channels"][1].clone();
    let headers = lower["configs"]["headers"].as_object_mut().unwrap();
    assert_eq!(headers.remove("Authorization"), Some(json!("********")), "{got}");
    headers.insert("authorization".into(), json!("********"));
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [lower]})).await;
    assert_eq!(s, 200, "{b}");
    publish(&app, "object.updated", json!({})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 2 }).await);
    assert_eq!(rx.captured()[1].header("authorization"), Some("token-b"));

    // A hidden secret or header is not carried to a new URL.
    let mut moved = got["channels"][1].clone();
    moved["configs"]["url"] = json!("https://elsewhere.example.com/hook");
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [moved]})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.url")), "{b}");
    let mut unknown = got["channels"][1].clone();
    unknown["configs"]["headers"]["X-New"] = json!("********");
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [unknown]})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.headers.X-New")), "{b}");

    // Creating with a redacted value is refused; the shared secret can be a plain header.
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "copy", "event_types": ["*"], "channels": [got["channels"][0].clone()]}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.secret")), "{b}");
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "both", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {
                "url": rx.url("/c"), "secret": "s1", "headers": {"X-Mixpeek-Secret": "s2"}}}]}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.headers.X-Mixpeek-Secret")), "{b}");
    let (hid, _) = create_webhook(
        &app,
        json!({"webhook_name": "header", "event_types": ["batch.failed"], "channels": [{"channel": "webhook", "configs": {
            "url": rx.url("/h"), "headers": {"X-Mixpeek-Secret": "from-a-header"}}}]}),
    )
    .await;
    publish(&app, "batch.failed", json!({})).await;
    assert!(eventually(WAIT, || async { rx.captured().iter().any(|c| c.path == "/h") }).await);
    let sent = rx.captured().into_iter().find(|c| c.path == "/h").unwrap();
    assert_eq!(sent.header("x-mixpeek-secret"), Some("from-a-header"));
    let (_, shown) = app.get(&format!("/v1/organizations/webhooks/{hid}")).await;
    assert!(!shown.to_string().contains("from-a-header"), "{shown}");
}

/// Pending deliveries follow their channel by its `channel_id`: reordering channels does
/// not send a delivery to another channel, and removing one fails its pending deliveries
/// (`dead`) instead of handing them to whichever channel takes its place.
#[tokio::test]
async fn pending_deliveries_follow_their_channel_through_a_patch() {
    let app = TestApp::start().await;
    let a = Receiver::start(503).await;
    let b = Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "pair", "event_types": ["*"], "channels": [http_channel(&a.url("/a")), http_channel(&b.url("/b"))]}),
    )
    .await;
    let (_, got) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    let ids: Vec<&str> =
        got["channels"].as_array().unwrap().iter().map(|c| c["channel_id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|c| c.starts_with("ch_")) && ids[0] != ids[1], "{got}");
    let evt = publish(&app, "object.updated", json!({"n": 1})).await;
    assert!(eventually(WAIT, || async { a.count() >= 1 && b.count() >= 1 }).await);
    assert!(eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 }).await);

    // Swap them (as shown by the GET, with their IDs): a's retry still goes to a.
    let swapped = json!([got["channels"][1].clone(), got["channels"][0].clone()]);
    let (s, b2) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": swapped})).await;
    assert_eq!(s, 200, "{b2}");
    assert_eq!(b2["channels"][0]["channel_id"], ids[1]);
    a.set_default(200);
    assert!(eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 2 }).await);
    let to_b: Vec<_> = b.captured().into_iter().filter(|c| c.json()["event_id"] == evt.as_str()).collect();
    assert_eq!(to_b.len(), 1, "b got a's delivery too");
    assert!(a.captured().iter().filter(|c| c.json()["event_id"] == evt.as_str()).count() >= 2);
    let listed = deliveries(&app, &id, None).await;
    assert!(listed.iter().any(|d| d["channel_id"] == ids[0]) && listed.iter().any(|d| d["channel_id"] == ids[1]));

    // Remove a while one of its deliveries is pending; b is sent back without its ID (by
    // hand): it is matched by its url and keeps its ID.
    a.set_default(503);
    let evt2 = publish(&app, "object.updated", json!({"n": 2})).await;
    assert!(eventually(WAIT, || async { a.captured().iter().any(|c| c.json()["event_id"] == evt2.as_str()) }).await);
    let (s, b3) =
        app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [http_channel(&b.url("/b"))]})).await;
    assert_eq!(s, 200, "{b3}");
    assert_eq!(b3["channels"][0]["channel_id"], ids[1], "{b3}");
    let dead = eventually(WAIT, || async { deliveries(&app, &id, Some("dead")).await.len() == 1 }).await;
    assert!(dead, "{:?}", deliveries(&app, &id, None).await);
    let d = deliveries(&app, &id, Some("dead")).await.remove(0);
    assert_eq!(d["event_id"], evt2.as_str());
    assert!(d["attempts"].as_array().unwrap().last().unwrap()["error"].as_str().unwrap().contains("removed"), "{d}");
    let to_b = b.captured().into_iter().filter(|c| c.json()["event_id"] == evt2.as_str()).count();
    assert_eq!(to_b, 1, "b got the removed channel's delivery");

    // An unknown ID, one given twice, or a change of type is refused.
    let b_shown = b3["channels"][0].clone();
    let mut unknown = b_shown.clone();
    unknown["channel_id"] = json!("ch_nope");
    let (s, r) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [unknown]})).await;
    assert_eq!((s, r["error"]["field"].as_str()), (422, Some("channels[0].channel_id")), "{r}");
    let (s, r) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [b_shown, b_shown]})).await;
    assert_eq!((s, r["error"]["field"].as_str()), (422, Some("channels[1].channel_id")), "{r}");
    let slack = json!({"channel": "slack", "channel_id": ids[1], "configs": {"webhook_url": b.url("/s")}});
    let (s, r) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [slack]})).await;
    assert_eq!((s, r["error"]["field"].as_str()), (422, Some("channels[0].channel_id")), "{r}");
}

/// A failing channel's error is the webhook's `last_error` while another channel succeeds,
/// and a PATCH keeps it. Removing that channel buries its pending deliveries at the PATCH,
/// parked and spilled ones too (not when their retry comes due, an hour away here), and
/// takes its error away; a retry of one of them is a 409.
#[tokio::test]
async fn removing_a_channel_buries_its_deliveries_at_once() {
    let settings = "max_age_hours = 2\nretry_schedule_seconds = [3600]\nmax_in_flight_per_webhook = 1\n\
                    max_queued_in_memory_per_webhook = 2\nretry_in_memory_seconds = 1\n";
    let app = TestApp::start_with(queue_options(settings)).await;
    let failing = Receiver::start(503).await;
    let ok = Receiver::start(200).await;
    let channels = json!([http_channel(&failing.url("/f")), http_channel(&ok.url("/ok"))]);
    let (id, _) =
        create_webhook(&app, json!({"webhook_name": "two", "event_types": ["*"], "channels": channels})).await;
    let path = format!("/v1/organizations/webhooks/{id}");
    for n in 0..4 {
        publish(&app, "object.updated", json!({ "n": n })).await;
    }
    let tried = || all_pending_tried(&app, &id, 4, 1);
    assert!(eventually(WAIT, tried).await, "{:?}", deliveries(&app, &id, None).await);
    assert!(eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 4 }).await);
    let last_error = || async { app.get(&path).await.1["last_error"].as_str().map(str::to_string) };
    let error = last_error().await.expect("a failing channel sets last_error, the other's successes keep it");
    assert!(error.contains("503"), "{error}");

    // A PATCH that changes nothing about the receiver keeps its error.
    let (s, shown) = app.patch(&path, json!({"webhook_name": "renamed"})).await;
    assert_eq!(s, 200, "{shown}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(last_error().await.as_deref(), Some(error.as_str()));

    // Remove the failing channel: its four deliveries (parked for an hour) go dead now.
    let (s, patched) = app.patch(&path, json!({"channels": [shown["channels"][1].clone()]})).await;
    assert_eq!(s, 200, "{patched}");
    let buried = || async { deliveries(&app, &id, Some("dead")).await.len() == 4 };
    assert!(eventually(Duration::from_secs(5), buried).await, "{:?}", deliveries(&app, &id, None).await);
    assert!(deliveries(&app, &id, Some("pending")).await.is_empty());
    let dead = deliveries(&app, &id, Some("dead")).await;
    for d in &dead {
        let attempts = d["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 2, "{d}");
        assert!(attempts[1]["error"].as_str().unwrap().contains("removed"), "{d}");
    }
    assert_eq!(failing.count(), 4, "nothing more was sent to the removed channel");
    // Its error went with it (and the burial is not an error of the webhook).
    assert_eq!(last_error().await, None);

    // Retrying one is refused: it has nowhere to go.
    let del = dead[0]["delivery_id"].as_str().unwrap();
    let (s, r) = app.post(&format!("{path}/deliveries/{del}/retry"), json!({})).await;
    assert_eq!(s, 409, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("removed"), "{r}");
}

/// A webhook whose receiver answers its first request after `answer_after` (a send
/// `timeout` of `timeout_s`), an event published to it, and the daemon stopped (SIGTERM,
/// a clean exit) once that request is in: the receiver and the webhook's ID.
async fn stopped_mid_send(app: &mut TestApp, answer_after: Duration, timeout_s: u64) -> (Receiver, String) {
    let rx = Receiver::start(200).await;
    rx.then(200, answer_after);
    let configs = json!({"url": rx.url("/slow"), "timeout": timeout_s});
    let body =
        json!({"webhook_name": "slow", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": configs}]});
    let (id, _) = create_webhook(app, body).await;
    publish(app, "object.created", json!({})).await;
    assert!(eventually(WAIT, || async { rx.count() == 1 }).await);
    assert_eq!(tokio::task::block_in_place(|| app.stop()), Some(0));
    (rx, id)
}

/// SIGTERM lets a send in flight finish and records its outcome: a deploy does not cut a
/// slow receiver off, and nothing is sent again after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_deliveries_in_flight_finish() {
    let mut app = TestApp::start().await;
    let (rx, id) = stopped_mid_send(&mut app, Duration::from_secs(2), 10).await;
    let log = without_colors(&app.log());
    assert!(log.contains("deliveries in flight finished"), "{log}");

    app.start_again().await;
    let ds = deliveries(&app, &id, None).await;
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0]["status"], "succeeded", "{ds:?}");
    assert_eq!(ds[0]["attempts"].as_array().unwrap().len(), 1, "{ds:?}");
    assert_eq!(ds[0]["attempts"][0]["status_code"], 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), 1, "sent again after the restart");
}

/// A send still running when the shutdown's grace runs out is cut off and logged as an
/// attempt (not a failure: due again at once), so the attempt log shows the request the
/// receiver got; after the restart it is sent again, with the same `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_cut_off_by_the_shutdown_is_logged_as_an_attempt() {
    let mut app =
        TestApp::start_with(Options { server_toml: "shutdown_timeout_seconds = 2\n".into(), ..Options::default() })
            .await;
    let (rx, id) = stopped_mid_send(&mut app, Duration::from_secs(60), 120).await;
    let log = without_colors(&app.log());
    assert!(log.contains("those still running were cut off, each logged as an attempt"), "{log}");

    // The send after the restart takes 3 s: meanwhile the webhook shows no last_error (the
    // cut-off said nothing of the receiver).
    rx.then(200, Duration::from_secs(3));
    app.start_again().await;
    assert!(eventually(WAIT, || async { rx.count() == 2 }).await, "sent again after the restart");
    let (_, view) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert!(view["last_error"].is_null(), "{view}");
    let done = || async { deliveries(&app, &id, None).await[0]["status"] == "succeeded" };
    assert!(eventually(WAIT, done).await);
    let d = deliveries(&app, &id, None).await.remove(0);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d}");
    let first = attempts[0]["error"].as_str().unwrap_or_default();
    assert!(first.contains("cut off by the daemon's shutdown after"), "{d}");
    assert!(attempts[0]["status_code"].is_null(), "{d}");
    assert_eq!(attempts[1]["status_code"], 200, "{d}");
    let ids: Vec<String> = rx.captured().iter().filter_map(|c| c.header("webhook-id").map(str::to_string)).collect();
    assert!(ids.len() == 2 && ids[0] == ids[1], "the same webhook-id: {ids:?}");
}

/// A pending delivery of a paused webhook says it is held (its `next_attempt_at` may pass).
#[tokio::test]
async fn a_paused_webhooks_pending_deliveries_say_they_are_held() {
    let settings = "max_age_hours = 2\nretry_schedule_seconds = [3600]\n";
    let (app, _rx, id) = app_with_failing_receiver(settings).await;
    publish(&app, "object.updated", json!({"n": 1})).await;
    assert!(eventually(WAIT, || all_pending_tried(&app, &id, 1, 1)).await);
    assert!(deliveries(&app, &id, None).await[0].get("held").is_none());
    let path = format!("/v1/organizations/webhooks/{id}");
    assert_eq!(app.patch(&path, json!({"is_active": false})).await.0, 200);
    let d = deliveries(&app, &id, None).await.remove(0);
    assert!(d["held"].as_str().unwrap().contains("paused"), "{d}");
    let (s, one) = app.get(&format!("{path}/deliveries/{}", d["delivery_id"].as_str().unwrap())).await;
    assert_eq!((s, one["held"].clone()), (200, d["held"].clone()), "{one}");
    let (s, retried) =
        app.post(&format!("{path}/deliveries/{}/retry", d["delivery_id"].as_str().unwrap()), json!({})).await;
    assert_eq!((s, retried["held"].clone()), (202, d["held"].clone()), "{retried}");
    assert_eq!(app.patch(&path, json!({"is_active": true})).await.0, 200);
    assert!(deliveries(&app, &id, None).await[0].get("held").is_none());
}

/// Two channels failing with the same error text: with the one whose delivery `last_error`
/// names removed, it names the other's, still failing (it kept the removed one's, whose
/// delivery was dead, when only the delivery ID told them apart).
#[tokio::test]
async fn last_error_moves_to_the_channel_still_failing_alike_when_the_shown_one_is_removed() {
    let app = TestApp::start_with(queue_options("max_age_seconds = 60\nretry_schedule_seconds = [1]\n")).await;
    let (a, b) = (Receiver::start(503).await, Receiver::start(503).await);
    let id = two_channels_and_an_event(&app, &a, &b).await;
    let path = format!("/v1/organizations/webhooks/{id}");
    assert!(eventually(WAIT, || async { a.count() >= 1 && b.count() >= 1 }).await);
    let shown_delivery = || async {
        let error = app.get(&path).await.1["last_error"].as_str().unwrap_or_default().to_string();
        let found = deliveries(&app, &id, None).await.into_iter().find(|d| {
            let did = d["delivery_id"].as_str().unwrap_or("?");
            error.contains(&format!(" {did}:"))
        });
        found.map(|d| (d["delivery_id"].clone(), d["channel_id"].clone()))
    };
    assert!(eventually(WAIT, || async { shown_delivery().await.is_some() }).await);
    let (shown, channel) = shown_delivery().await.unwrap();
    let (_, view) = app.get(&path).await;
    let kept: Vec<Value> =
        view["channels"].as_array().unwrap().iter().filter(|c| c["channel_id"] != channel).cloned().collect();
    assert_eq!(kept.len(), 1, "{view}");
    let (s, body) = app.patch(&path, json!({"channels": kept})).await;
    assert_eq!(s, 200, "{body}");
    let moved = || async { shown_delivery().await.is_some_and(|(d, c)| d != shown && c == kept[0]["channel_id"]) };
    assert!(eventually(WAIT, moved).await, "last_error still names {shown}: {}", app.get(&path).await.1);
    let (_, w) = app.get(&path).await;
    assert!(w["last_error"].as_str().unwrap_or_default().contains("503"), "{w}");
}

/// A send in flight when its channel is removed is not retried: if it fails, it goes dead
/// at once (a retry an hour later would find no channel).
#[tokio::test]
async fn a_failed_send_of_a_removed_channel_is_not_retried() {
    let app = TestApp::start_with(queue_options("max_age_hours = 2\nretry_schedule_seconds = [3600]\n")).await;
    let (slow, ok) = (Receiver::start(200).await, Receiver::start(200).await);
    // Answers after 3 s: the PATCH below lands while the send is in flight.
    slow.then(503, Duration::from_secs(3));
    let slow_channel = json!({"channel": "webhook", "configs": {"url": slow.url("/slow"), "timeout": 6}});
    let channels = json!([slow_channel, http_channel(&ok.url("/ok"))]);
    let (id, _) = create_webhook(&app, json!({"webhook_name": "x", "event_types": ["*"], "channels": channels})).await;
    let path = format!("/v1/organizations/webhooks/{id}");
    publish(&app, "object.updated", json!({"n": 1})).await;
    assert!(eventually(WAIT, || async { slow.count() == 1 }).await);
    let (_, shown) = app.get(&path).await;
    let (s, b) = app.patch(&path, json!({"channels": [shown["channels"][1].clone()]})).await;
    assert_eq!(s, 200, "{b}");
    // Still in flight: the PATCH left it alone.
    let removed = shown["channels"][0]["channel_id"].clone();
    let pending = deliveries(&app, &id, Some("pending")).await;
    assert_eq!(pending.iter().filter(|d| d["channel_id"] == removed).count(), 1, "{pending:?}");
    let dead = || async { deliveries(&app, &id, Some("dead")).await.len() == 1 };
    assert!(eventually(Duration::from_secs(8), dead).await, "{:?}", deliveries(&app, &id, None).await);
    let d = deliveries(&app, &id, Some("dead")).await.remove(0);
    let attempts = d["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{d}");
    assert_eq!(attempts[0]["status_code"], 503, "{d}");
    assert!(attempts[1]["error"].as_str().unwrap().contains("removed"), "{d}");
}

/// A delivery still pending at start whose channel is no longer the webhook's (a crash
/// right after the PATCH, before its burial was written) is buried at start, not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_delivery_of_a_removed_channel_is_buried_at_start() {
    use hookline::store::{Backend, Batch, Keyspace};
    let settings = "max_age_hours = 2\nretry_schedule_seconds = [1]\n";
    let (mut app, rx, id) = app_with_failing_receiver(settings).await;
    publish(&app, "object.updated", json!({"n": 1})).await;
    assert!(eventually(WAIT, || all_pending_tried(&app, &id, 1, 1)).await);
    assert_eq!(tokio::task::block_in_place(|| app.stop()), Some(0));
    let sent = rx.count();
    {
        // Point the pending delivery at a channel the webhook does not have.
        let backend = app.stopped_sled().await;
        let found = stored_entries(&backend, "dlv", "");
        assert_eq!(found.len(), 1);
        let mut d: Value = serde_json::from_slice(&found[0].1).unwrap();
        d["channel_id"] = json!("ch_gone");
        let mut b = Batch::new();
        b.put(Keyspace::DELIVERIES, &found[0].0, &d);
        backend.apply(&b).unwrap();
        futures::executor::block_on(backend.flush()).unwrap();
    }
    rx.set_default(200);
    app.start_again().await;
    let dead = || async { deliveries(&app, &id, Some("dead")).await.len() == 1 };
    assert!(eventually(WAIT, dead).await, "{:?}", deliveries(&app, &id, None).await);
    let d = deliveries(&app, &id, Some("dead")).await.remove(0);
    assert!(d["attempts"].as_array().unwrap().last().unwrap()["error"].as_str().unwrap().contains("removed"), "{d}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.count(), sent, "nothing was sent for it");
}

/// After a restart, a success clears the `last_error` stored before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_after_a_restart_clears_the_stored_last_error() {
    let mut app = TestApp::start_with(queue_options("max_age_hours = 2\nretry_schedule_seconds = [1]\n")).await;
    let rx = Receiver::start(503).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "x", "event_types": ["*"], "channels": [http_channel(&rx.url("/x"))]}),
    )
    .await;
    let path = format!("/v1/organizations/webhooks/{id}");
    publish(&app, "object.updated", json!({"n": 1})).await;
    assert!(eventually(WAIT, || async { app.get(&path).await.1["last_error"].is_string() }).await);
    assert_eq!(tokio::task::block_in_place(|| app.stop()), Some(0));
    rx.set_default(200);
    app.start_again().await;
    assert!(eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 }).await);
    assert!(eventually(WAIT, || async { app.get(&path).await.1["last_error"].is_null() }).await);
}

/// Removing a channel whose retries filled the queue leaves it empty while other
/// deliveries wait spilled in the store: they are read back and sent at once (no finished
/// send would come to trigger it).
#[tokio::test]
async fn removing_a_channel_that_filled_the_queue_lets_the_spilled_rest_go() {
    let settings = "max_age_hours = 1\nretry_schedule_seconds = [30]\nmax_in_flight_per_webhook = 1\n\
                    max_queued_in_memory_per_webhook = 2\n";
    let app = TestApp::start_with(queue_options(settings)).await;
    let (down, ok) = (Receiver::start(503).await, Receiver::start(200).await);
    let channels = json!([http_channel(&down.url("/down")), http_channel(&ok.url("/ok"))]);
    let (id, _) = create_webhook(&app, json!({"webhook_name": "q", "event_types": ["*"], "channels": channels})).await;
    let path = format!("/v1/organizations/webhooks/{id}");
    for n in 0..3 {
        publish(&app, "object.updated", json!({ "n": n })).await;
    }
    // The down channel's first two retries hold the queue; the rest wait in the store.
    assert!(eventually(WAIT, || async { down.count() == 2 }).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ok.count(), 1, "the rest waits behind the retries");
    let (_, shown) = app.get(&path).await;
    let (s, b) = app.patch(&path, json!({"channels": [shown["channels"][1].clone()]})).await;
    assert_eq!(s, 200, "{b}");
    assert!(eventually(Duration::from_secs(5), || async { ok.count() == 3 }).await, "ok got {}", ok.count());
    assert!(eventually(WAIT, || async { deliveries(&app, &id, Some("dead")).await.len() == 3 }).await);
    assert_eq!(down.count(), 2);
}

/// A webhook receives the events recorded while it is active, also those still waiting in
/// the outbox when it is paused (a count batch flushes 400 `object.created` at once, and the
/// pause comes right after that ingest's answer), and none recorded before it existed.
#[tokio::test]
async fn a_pause_right_after_an_acknowledged_flush_drops_none_of_its_events() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "w", "event_types": ["object.created"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    let bucket = app.create_bucket("burst", json!({"n": {"type": "int"}})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "generic_webhook", "dedup_key": "id",
                "field_mapping": {"n": "n"}, "batching": {"mode": "count", "max_batch_size": 400}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    for n in 0..400 {
        let body = json!({"type": "e", "id": format!("e{n}"), "n": n}).to_string();
        let (s, r) = app.post_raw(&ingest, body, &[("x-webhook-secret", &secret)]).await;
        assert_eq!((s, r["status"].as_str()), (200, Some("buffered")), "{r}");
    }
    // The 400th answer came after the flush was durable: pause at once, then resume.
    let (s, _) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"is_active": false})).await;
    assert_eq!(s, 200);
    // A webhook created now was not there when they were recorded.
    let rx_late = Receiver::start(200).await;
    create_webhook(
        &app,
        json!({"webhook_name": "late", "event_types": ["*"], "channels": [http_channel(&rx_late.url("/"))]}),
    )
    .await;
    let (s, _) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"is_active": true})).await;
    assert_eq!(s, 200);
    assert!(eventually(WAIT, || async { rx.count() >= 400 }).await, "{} of 400 delivered", rx.count());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ids: Vec<String> =
        rx.captured().iter().map(|c| c.json()["event_id"].as_str().unwrap_or("").to_string()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 400);
    assert_eq!(rx_late.count(), 0, "the late webhook got events recorded before it existed");
}

/// Manual retries racing the webhook's delete answer as if they came before it (202) or
/// after it (404): never a 5xx about an actor that stopped under them.
#[tokio::test]
async fn retries_racing_a_delete_answer_202_or_404() {
    let app = TestApp::start().await;
    let rx = Receiver::start(500).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "w", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    publish(&app, "custom.x", json!({"n": 1})).await;
    assert!(eventually(WAIT, || async { !deliveries(&app, &id, None).await.is_empty() }).await);
    let did = deliveries(&app, &id, None).await[0]["delivery_id"].as_str().unwrap().to_string();
    let retry = format!("/v1/organizations/webhooks/{id}/deliveries/{did}/retry");
    let mut tasks = Vec::new();
    for i in 0..80 {
        let (client, url, key, del) = (
            app.client.clone(),
            app.url(&retry),
            app.api_key.clone(),
            app.url(&format!("/v1/organizations/webhooks/{id}")),
        );
        tasks.push(tokio::spawn(async move {
            let r = if i == 40 { client.delete(del) } else { client.post(url) };
            let r = r.bearer_auth(key).send().await.unwrap();
            (i, r.status().as_u16(), r.text().await.unwrap_or_default())
        }));
    }
    for t in tasks {
        let (i, s, body) = t.await.unwrap();
        if i == 40 {
            assert_eq!(s, 204, "the delete: {body}");
        } else {
            assert!(s == 202 || s == 404, "retry {i}: {s} {body}");
        }
    }
}

/// Templates written for Python's Jinja2 work (Python methods, `truncate`, `wordcount`); one
/// that would fail every event is refused when saved, one that fails only for some events'
/// data is not.
#[tokio::test]
async fn jinja2_templates_work_and_sure_failures_are_refused_when_saved() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let template = r#"{"t": {{ event_type.upper().replace('.', '_') | tojson }}, "kind": {{ event_type.split('.')[0] | tojson }}, "obj": {{ event_type.startswith('object') | tojson }}, "kv": {{ (payload.items() | map('join', '=') | list) | tojson }}, "keys": {{ payload.keys() | list | tojson }}, "vals": {{ payload.values() | list | length }}, "d": {{ payload.get('zz', 'dflt') | tojson }}, "short": {{ payload.note | truncate(9) | tojson }}, "words": {{ payload.note | wordcount }}}"#;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "py", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/py"), "payload_template": template}}]}),
    )
    .await;
    publish(&app, "object.created", json!({"a": "1", "note": "one two three four"})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 1 }).await, "{:?}", deliveries(&app, &id, None).await);
    let got = rx.captured()[0].json();
    assert_eq!(
        got,
        json!({"t": "OBJECT_CREATED", "kind": "object", "obj": true, "kv": ["a=1", "note=one two three four"],
               "keys": ["a", "note"], "vals": 2, "d": "dflt", "short": "one...", "words": 4})
    );
    let channel = |template: &str| json!({"webhook_name": "t", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": rx.url("/t"), "payload_template": template}}]});
    // `%` formatting of a tuple, or an unknown method of a string, fails whatever the event.
    for template in [
        r#"{{ "%s-%s" % (event_type, event_id) }}"#,
        "{{ event_type.nosuch() }}",
        "{{ payload.text | truncate(5, length=3) }}",
    ] {
        let (s, b) = app.post("/v1/organizations/webhooks", channel(template)).await;
        assert_eq!(
            (s, b["error"]["field"].as_str()),
            (422, Some("channels[0].configs.payload_template")),
            "{template}: {b}"
        );
    }
    // A failure that depends on the event's data is its delivery's, not the template's.
    for template in ["{{ payload.n * 2 }}", "{{ payload.name.upper() }}", "{{ (payload.n | default('')) - 1 }}"] {
        let (s, b) = app.post("/v1/organizations/webhooks", channel(template)).await;
        assert_eq!(s, 201, "{template}: {b}");
    }
}

/// A save's template checks run off the webhook registry: a webhook whose template takes
/// seconds to check (`~` on a long repeated list builds its text before minijinja charges
/// fuel for it) holds up neither publishing nor the deliveries of the other webhooks.
#[tokio::test]
async fn a_slow_template_check_holds_up_no_publish() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let (fast, _) = create_webhook(
        &app,
        json!({"webhook_name": "fast", "event_types": ["*"], "channels": [http_channel(&rx.url("/fast"))]}),
    )
    .await;
    let slow_body = json!({"webhook_name": "slow", "event_types": ["*"], "channels": [{"channel": "webhook",
        "configs": {"url": rx.url("/slow"), "payload_template": "{{ (([1] * 20000000) ~ '') | length }}"}}]});
    let slow = app.post("/v1/organizations/webhooks", slow_body);
    tokio::pin!(slow);
    let meanwhile = async {
        // Let the save reach the registry (its check then runs for seconds).
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&app, "object.created", json!({"n": 1})).await;
        eventually(WAIT, || async { rx.count() >= 1 }).await
    };
    // The event is published and delivered while the slow save is still being checked.
    tokio::select! {
        r = &mut slow => panic!("the slow save answered ({r:?}) before the event published after it was delivered: publishing waited behind its check (or the check got too fast to show anything)"),
        delivered = meanwhile => assert!(delivered, "{:?}", deliveries(&app, &fast, None).await),
    }
    // Its check ends as it did on the mailbox: the text is charged once built, past the fuel.
    let (s, b) = slow.await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.payload_template")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("fuel"), "{b}");
    let (_, list) = app.get("/v1/organizations/webhooks").await;
    assert_eq!(list.to_string().matches("wh_").count(), 1, "{list}");
}

/// Settings that could only fail or surprise are refused or normalized when saved: a timeout
/// too short for any answer, a header given twice in two cases; `headers: null` is no
/// headers, and an event type listed twice is one subscription.
#[tokio::test]
async fn channel_settings_are_checked_and_normalized() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let hook = |configs: Value| json!({"webhook_name": "s", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": configs}]});
    let (s, b) = app.post("/v1/organizations/webhooks", hook(json!({"url": rx.url("/"), "timeout": 0.0001}))).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.timeout")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("0.1–300 seconds"), "{b}");
    // A bad type after a repeated one is named at the index it was sent at.
    let mut body = hook(json!({"url": rx.url("/")}));
    body["event_types"] = json!(["a.b", "a.b", "bad type"]);
    let (s, b) = app.post("/v1/organizations/webhooks", body).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("event_types[2]")), "{b}");
    let (s, b) = app
        .post("/v1/organizations/webhooks", hook(json!({"url": rx.url("/"), "headers": {"X-A": "1", "x-a": "2"}})))
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].configs.headers.x-a")), "{b}");
    let (id, _) = create_webhook(&app, hook(json!({"url": rx.url("/n"), "headers": null, "timeout": 0.1}))).await;
    let (_, got) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert_eq!(got["channels"][0]["configs"]["headers"], json!({}), "{got}");
    // A GET's nulls sent back are accepted.
    let mut shown = got["channels"][0].clone();
    shown["configs"]["headers"] = Value::Null;
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [shown]})).await;
    assert_eq!(s, 200, "{b}");

    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "d", "event_types": ["zz.a", "object.created", "zz.a"], "channels": [http_channel(&rx.url("/d"))]}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["event_types"], json!(["zz.a", "object.created"]));
    assert_eq!(b["warnings"].as_array().map(Vec::len), Some(1), "{b}");
    let did = b["webhook_id"].as_str().unwrap();
    let (s, b) =
        app.patch(&format!("/v1/organizations/webhooks/{did}"), json!({"event_types": ["b.x", "b.x", "a"]})).await;
    assert_eq!((s, &b["event_types"]), (200, &json!(["b.x", "a"])), "{b}");
    assert_eq!(b["warnings"].as_array().map(Vec::len), Some(2), "{b}");
}

/// Two channels with one url: sent back without their channel_id, which hidden secret goes
/// with which settings cannot be told (422 asking for it); with it, each keeps its own.
#[tokio::test]
async fn channels_sharing_a_url_need_their_ids_in_a_patch() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "two", "event_types": ["*"], "channels": [
            {"channel": "webhook", "configs": {"url": rx.url("/same"), "secret": "secret-one", "headers": {"X-Which": "one"}}},
            {"channel": "webhook", "configs": {"url": rx.url("/same"), "secret": "secret-two", "headers": {"X-Which": "two"}, "timeout": 5}}
        ]}),
    )
    .await;
    let (_, got) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    let strip = |c: &Value| {
        let mut c = c.clone();
        c.as_object_mut().unwrap().remove("channel_id");
        c
    };
    let reversed = json!([strip(&got["channels"][1]), strip(&got["channels"][0])]);
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": reversed})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("channels[0].channel_id")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("channel_id"), "{b}");
    // As the GET shows them (with their IDs), reversed: each keeps its own secret.
    let reversed = json!([got["channels"][1].clone(), got["channels"][0].clone()]);
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": reversed})).await;
    assert_eq!(s, 200, "{b}");
    publish(&app, "object.updated", json!({})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 2 }).await);
    for c in rx.captured() {
        let which = c.header("x-which").unwrap_or_default().to_string();
        assert_eq!(c.header("x-mixpeek-secret"), Some(format!("secret-{which}").as_str()), "{:?}", c.headers);
    }
}

/// A 304 is not a redirect: its attempt says it is not a 2xx.
#[tokio::test]
async fn a_304_is_not_called_a_redirect() {
    let app = TestApp::start().await;
    let rx = Receiver::start(304).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "nm", "event_types": ["*"], "channels": [http_channel(&rx.url("/nm"))]}),
    )
    .await;
    publish(&app, "object.updated", json!({})).await;
    let attempted = || async {
        deliveries(&app, &id, None).await.first().is_some_and(|d| !d["attempts"].as_array().unwrap().is_empty())
    };
    assert!(eventually(WAIT, attempted).await);
    let d = deliveries(&app, &id, None).await.remove(0);
    let error = d["attempts"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.starts_with("HTTP 304 (not a 2xx)"), "{error}");
    assert!(!error.contains("redirect"), "{error}");
}

#[tokio::test]
async fn rotating_the_signing_secret_signs_every_later_attempt_with_the_new_one() {
    // Retries an hour apart: the only attempts are the first one and the manual retry.
    let delivery = "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n\
                    request_timeout_seconds = 2\nmax_age_hours = 2\nretry_schedule_seconds = [3600]\n";
    let app = TestApp::start_with(Options { delivery_toml: Some(delivery.into()), ..Default::default() }).await;
    let rx = Receiver::start(500).await;
    let (id, old) = create_webhook(
        &app,
        json!({"webhook_name": "rotate", "event_types": ["object.created"], "channels": [http_channel(&rx.url("/hook"))]}),
    )
    .await;
    // A delivery still pending at the rotation: its first attempt failed, signed with the old secret.
    publish(&app, "object.created", json!({"object_id": "obj_before"})).await;
    assert!(eventually(WAIT, || failed_attempt_recorded(&app, &id)).await, "no failed attempt; log:\n{}", app.log());
    let verifies = |c: &crate::outbound_receiver::Captured, secret: &str| {
        let h = |n: &str| c.header(n).unwrap().to_string();
        verify_signature(secret, &h("webhook-id"), &h("webhook-timestamp"), &c.body, &h("webhook-signature"))
    };
    let first = rx.captured()[0].clone();
    assert!(verifies(&first, &old), "the first attempt is signed with the secret of the create");

    // Rotate: the new secret is in this answer only.
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"rotate_signing_secret": true})).await;
    assert_eq!(s, 200, "{b}");
    let new = b["signing_secret"].as_str().expect("the new secret in the PATCH answer").to_string();
    assert!(new.starts_with("whsec_") && new != old, "{b}");
    let (s, got) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    assert_eq!(s, 200, "{got}");
    assert!(got.get("signing_secret").is_none() && !got.to_string().contains(&new), "secret shown again: {got}");
    let (_, list) = app.get("/v1/organizations/webhooks").await;
    assert!(!list.to_string().contains(&new), "secret in the list: {list}");
    // The answer sent back as a PATCH: its secret cannot be set, and the 422 says what to do.
    let (s, e) = app.patch(&format!("/v1/organizations/webhooks/{id}"), b.clone()).await;
    assert_eq!((s, e["error"]["field"].as_str()), (422, Some("signing_secret")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap_or_default().contains("rotate_signing_secret"), "{e}");
    assert!(!e.to_string().contains(&new), "the secret is not echoed: {e}");
    // Any other PATCH leaves it as it is (and does not show it).
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"webhook_name": "rotated"})).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("signing_secret").is_none(), "{b}");

    // The pending delivery's next attempt is signed with the new secret, not the old one.
    rx.set_default(200);
    let did = deliveries(&app, &id, Some("pending")).await[0]["delivery_id"].as_str().unwrap().to_string();
    let (s, b) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{did}/retry"), json!({})).await;
    assert!(s == 200 || s == 202, "{s} {b}");
    assert!(eventually(WAIT, || async { rx.count() >= 2 }).await, "no retry delivered; log:\n{}", app.log());
    let retried = rx.captured()[1].clone();
    assert_eq!(retried.json()["payload"]["object_id"], "obj_before");
    assert!(verifies(&retried, &new), "the retry after the rotation is signed with the new secret");
    assert!(!verifies(&retried, &old), "the retry after the rotation is still signed with the old secret");

    // So is a new event's delivery.
    publish(&app, "object.created", json!({"object_id": "obj_after"})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 3 }).await, "nothing delivered; log:\n{}", app.log());
    let after = rx.captured()[2].clone();
    assert_eq!(after.json()["payload"]["object_id"], "obj_after");
    assert!(verifies(&after, &new) && !verifies(&after, &old), "a new event is signed with the new secret only");

    // After a restart too (the new secret is what is stored).
    let mut app = app;
    app.restart().await;
    publish(&app, "object.created", json!({"object_id": "obj_restarted"})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 4 }).await, "nothing delivered; log:\n{}", app.log());
    let restarted = rx.captured()[3].clone();
    assert!(verifies(&restarted, &new) && !verifies(&restarted, &old));
    assert!(!app.log().contains(&new), "the new secret is in the daemon log");
}

/// A channel's secret sent in the wrong type (a number) is refused without being quoted.
#[tokio::test]
async fn a_channel_secret_of_the_wrong_type_is_not_echoed() {
    let app = TestApp::start().await;
    for channel in [
        json!({"channel": "webhook", "configs": {"url": "https://h.example.com/x", "headers": {"Authorization": 98765432123u64}}}),
        json!({"channel": "webhook", "configs": {"url": "https://h.example.com/x", "secret": 98765432123u64}}),
        json!({"channel": "slack", "configs": {"webhook_url": 98765432123u64}}),
        // A Slack URL pasted as the configs, or as the channel.
        json!({"channel": "slack", "configs": "https://hooks.slack.com/services/T0/B0/98765432123"}),
        json!("https://hooks.slack.com/services/T0/B0/98765432123"),
    ] {
        let (s, b) = app
            .post(
                "/v1/organizations/webhooks",
                json!({"webhook_name": "x", "event_types": ["*"], "channels": [channel]}),
            )
            .await;
        assert_eq!(s, 422, "{b}");
        assert!(b["error"]["field"].as_str().unwrap_or_default().starts_with("channels[0]"), "{b}");
        assert!(!b.to_string().contains("98765432123"), "the value is not echoed: {b}");
    }
}

/// A webhook saved before event types had to be words joined by dots (`object.`) still
/// loads and works; the start says which one to fix.
#[tokio::test]
async fn a_stored_event_type_no_event_can_have_is_warned_of_at_start() {
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let rx = crate::outbound_receiver::Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "legacy", "event_types": ["object.created"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    let backend = crate::support::stop_and_open(&mut app).await;
    let stored = crate::support::stored_entries(&backend, "wh", &id);
    let mut record: Value = serde_json::from_slice(&stored[0].1).unwrap();
    record["event_types"] = json!(["object.created", "object."]);
    let mut b = Batch::new();
    b.put(Keyspace::WEBHOOKS, &stored[0].0, &record);
    backend.apply(&b).unwrap();
    futures::executor::block_on(backend.flush()).unwrap();
    drop(backend);
    app.start_again().await;
    let warned =
        app.log().lines().any(|l| l.contains("a stored event type is not one any event can have") && l.contains(&id));
    assert!(warned, "{}", app.log());
    // It still delivers what it matches.
    publish(&app, "object.created", json!({})).await;
    assert!(eventually(WAIT, || async { rx.count() >= 1 }).await);
}

/// A name stored before the rule on white space at its ends (an older binary took it) is not
/// checked again when sent back unchanged: a webhook's GET view, edited and sent back, and a
/// connection's `{"name": <its own>}` are taken; a new name is checked.
#[tokio::test]
async fn an_unchanged_stored_name_is_not_refused_again() {
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "Audit", "event_types": ["object.created"],
               "channels": [http_channel("http://127.0.0.1:9/hook")]}),
    )
    .await;
    let (s, conn) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "Prod", "provider_type": "supabase",
                   "provider_config": {"url": "https://abcd.supabase.co", "service_role_key": "srk-0000000000001"}}),
        )
        .await;
    assert_eq!(s, 201, "{conn}");
    let cid = conn["connection_id"].as_str().unwrap().to_string();
    // As an older binary took them: a trailing space.
    let backend = crate::support::stop_and_open(&mut app).await;
    let mut b = Batch::new();
    for (ks, key, field, name) in
        [("wh", id.as_str(), "webhook_name", "Audit "), ("conn", cid.as_str(), "name", "Prod ")]
    {
        let stored = stored_entries(&backend, ks, key);
        assert_eq!(stored.len(), 1, "{ks}/{key}: {:?}", stored.iter().map(|e| &e.0).collect::<Vec<_>>());
        let mut v: Value = serde_json::from_slice(&stored[0].1).unwrap();
        v[field] = json!(name);
        b.put(Keyspace::custom(if ks == "wh" { "wh" } else { "conn" }), &stored[0].0, &v);
    }
    backend.apply(&b).unwrap();
    futures::executor::block_on(backend.flush()).unwrap();
    drop(backend);
    app.start_again().await;

    let path = format!("/v1/organizations/webhooks/{id}");
    let (_, view) = app.get(&path).await;
    assert_eq!(view["webhook_name"], "Audit ", "{view}");
    let mut paused = view.clone();
    paused["is_active"] = json!(false);
    let (s1, b1) = app.patch(&path, paused).await;
    let (s2, b2) = app.patch(&format!("/v1/organizations/connections/{cid}"), json!({"name": "Prod "})).await;
    assert_eq!((s1, s2), (200, 200), "view sent back: {b1}; connection's own name: {b2}");
    let (s, b) = app.patch(&path, json!({"webhook_name": "Audit 2 "})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("webhook_name")), "a new name is checked: {b}");
}

/// A receiver on 127.0.0.1 answering `status` to every POST after `delay`, with a
/// body that differs each time; returns its URL and a count of the answers.
async fn failing_receiver(status: u16, delay: Duration) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use warp::Filter;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answers = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = answers.clone();
    let fail = warp::post().and_then(move || {
        let counted = counted.clone();
        async move {
            tokio::time::sleep(delay).await;
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let code = warp::http::StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(warp::reply::with_status(format!("boom {status}, request {n}"), code))
        }
    });
    tokio::spawn(warp::serve(fail).incoming(listener).run());
    (format!("http://{addr}/x"), answers)
}

/// Two channels failing differently (A: HTTP 503, B: HTTP 500 and slower), their attempts
/// taking turns. The error stored at a stop is one of them; after the restart the other one
/// may report first, and the stored one's failure, going on, keeps its `last_error_at` when
/// `last_error` shows it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_error_at_of_the_stored_channel_survives_a_restart_with_two_channels() {
    use std::sync::atomic::Ordering;
    let (url_a, a) = failing_receiver(503, Duration::ZERO).await;
    let (url_b, b) = failing_receiver(500, Duration::from_millis(400)).await;
    let mut app = TestApp::start_with(queue_options("retry_schedule_seconds = [1]\n")).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "two", "event_types": ["*"], "channels": [http_channel(&url_a), http_channel(&url_b)]}),
    )
    .await;
    publish(&app, "batch.failed", json!({"batch_id": "b1"})).await;
    let both_after = |n: usize| {
        let (a, b) = (a.clone(), b.clone());
        async move { eventually(WAIT, || async { a.load(Ordering::SeqCst) >= n && b.load(Ordering::SeqCst) >= n }).await }
    };
    assert!(both_after(2).await, "both failing");
    assert_eq!(app.stop(), Some(0), "{}", app.log());
    let sled = app.stopped_sled().await;
    let stored: Vec<Value> =
        stored_entries(&sled, "wh", &id).into_iter().map(|(_, v)| serde_json::from_slice(&v).unwrap()).collect();
    drop(sled);
    let (error, began) =
        (stored[0]["last_error"].as_str().unwrap_or_default().to_string(), stored[0]["last_error_at"].clone());
    let status = ["HTTP 500", "HTTP 503"].into_iter().find(|s| error.contains(s)).expect("a channel's failure stored");
    assert!(!began.is_null(), "{}", stored[0]);
    app.start_again().await;
    let n = a.load(Ordering::SeqCst).max(b.load(Ordering::SeqCst)) + 2;
    assert!(both_after(n).await, "both retried after the restart");
    let shown_again = || async {
        let w = app.get(&format!("/v1/organizations/webhooks/{id}")).await.1;
        w["last_error"].as_str().unwrap_or_default().contains(status).then_some(w)
    };
    let mut w = None;
    for _ in 0..100 {
        w = shown_again().await;
        if w.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let w = w.expect("the stored failure shown again");
    assert_eq!(w["last_error_at"], began, "{status} went on across the restart: {w}");
}

/// A delivery actor left stopped and started again by a PATCH, with no delivery waiting, no
/// longer has a `last_error` saying it is stopped: the webhook shows no other sign of its
/// actor, and the next delivery's outcome may be days away.
#[tokio::test]
async fn a_patch_that_starts_a_stopped_delivery_actor_does_not_leave_it_reported_stopped() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let id = webhook_to(&app, &rx).await;
    let budget = stop_delivery_actor_for_good(&app, &id).await;
    let last_error = || async {
        let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
        w["last_error"].as_str().unwrap_or_default().to_string()
    };
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"webhook_name": "revived"})).await;
    assert_eq!(s, 200, "{b}");
    // The actor runs again (a crash now counts as a restart).
    let (s, b) = app.post(&format!("/v1/debug/crash/delivery.{id}"), json!({})).await;
    assert_eq!(s, 202, "the actor runs again: {b}");
    assert!(eventually(WAIT, || async { delivery_restarts(&app).await == (budget + 1) as f64 }).await);
    let shown = last_error().await;
    assert!(!shown.contains("delivery stopped"), "a running actor still reported stopped: {shown}");
}
