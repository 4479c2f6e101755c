//! The way from an event to its deliveries under change: subscriptions paused, resumed and
//! changed, channels reordered, the registry crashing and kill -9, each event delivered to
//! the webhooks subscribed when it was accepted, exactly once; and the webhook API's edges
//! (cursors, patterns, a retry while the delivery actor is stopped).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::outbound::{create_webhook, deliveries, http_channel, publish};
use crate::outbound_receiver::Receiver;
use crate::support::{eventually, TestApp};

const WAIT: Duration = Duration::from_secs(20);

/// A bucket whose generic_webhook adapter makes an object (immediately) of each event
/// `{"id": …, "n": …}`, deduplicated by `id`: its ingest path and secret.
async fn numbered_events_bucket(app: &TestApp) -> (String, String) {
    let bucket = app.create_bucket("b", json!({"n": {"type": "int"}})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "generic_webhook", "dedup_key": "id",
                "field_mapping": {"n": "n"}, "batching": {"mode": "immediate"}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    (format!("/v1/buckets/{bucket}/source-adapter/ingest"), secret)
}

fn event_ids(rx: &Receiver) -> Vec<String> {
    rx.captured().iter().filter_map(|c| c.json()["event_id"].as_str().map(String::from)).collect()
}

/// Sequential ingests and publishes interleaved with pauses, resumes, event_types changes and
/// a kill -9: every event acknowledged while a webhook was subscribed reaches it exactly once,
/// every other event never.
#[tokio::test]
async fn subscription_changes_and_a_crash_deliver_exactly_the_subscribed_events() {
    let mut app = TestApp::start().await;
    let rx_pause = Receiver::start(200).await;
    let rx_types = Receiver::start(200).await;
    let (w_pause, _) = create_webhook(
        &app,
        json!({"webhook_name": "p", "event_types": ["object.*"], "channels": [http_channel(&rx_pause.url("/"))]}),
    )
    .await;
    let (w_types, _) = create_webhook(
        &app,
        json!({"webhook_name": "t", "event_types": ["object.created"], "channels": [http_channel(&rx_types.url("/"))]}),
    )
    .await;
    let (ingest, secret) = numbered_events_bucket(&app).await;
    let mut want_pause = HashSet::new();
    let mut never_pause = HashSet::new();
    let mut want_types = HashSet::new();
    let mut never_types = HashSet::new();
    let (mut pause_on, mut types_on) = (true, true);
    let mut crash_at: Option<std::time::Instant> = None;
    for n in 0..120 {
        if n % 7 == 3 {
            pause_on = !pause_on;
            let (s, b) =
                app.patch(&format!("/v1/organizations/webhooks/{w_pause}"), json!({"is_active": pause_on})).await;
            assert_eq!(s, 200, "{b}");
        }
        if n % 11 == 5 {
            types_on = !types_on;
            let types = if types_on { json!(["object.created"]) } else { json!(["batch.completed"]) };
            let (s, b) =
                app.patch(&format!("/v1/organizations/webhooks/{w_types}"), json!({"event_types": types})).await;
            assert_eq!(s, 200, "{b}");
        }
        if n == 60 {
            // Past the documented window (outcomes are written in 20 ms groups).
            tokio::time::sleep(Duration::from_millis(300)).await;
            crash_at = Some(std::time::Instant::now());
            app.crash_restart().await;
        }
        let event_id = if n % 2 == 0 {
            let body = json!({"type": "e", "id": format!("e{n}"), "n": n}).to_string();
            let (s, r) = app.post_raw(&ingest, body, &[("x-webhook-secret", &secret)]).await;
            assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
            // The object's event: found later by its object_id in the payload.
            format!("obj:{}", r["object_id"].as_str().unwrap())
        } else {
            publish(&app, "object.created", json!({"n": n})).await
        };
        if pause_on {
            want_pause.insert(event_id.clone())
        } else {
            never_pause.insert(event_id.clone())
        };
        if types_on {
            want_types.insert(event_id)
        } else {
            never_types.insert(event_id)
        };
    }
    let key = |c: &crate::outbound_receiver::Captured| {
        let j = c.json();
        match j["payload"]["object_id"].as_str() {
            Some(o) => format!("obj:{o}"),
            _ => j["event_id"].as_str().unwrap_or("").to_string(),
        }
    };
    for (name, rx, want, never) in
        [("pause", &rx_pause, &want_pause, &never_pause), ("types", &rx_types, &want_types, &never_types)]
    {
        let ok = eventually(WAIT, || async {
            let got: HashSet<String> = rx.captured().iter().map(key).collect();
            want.is_subset(&got)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got: Vec<String> = rx.captured().iter().map(key).collect();
        let set: HashSet<String> = got.iter().cloned().collect();
        let missing: Vec<_> = want.difference(&set).collect();
        let extra: Vec<_> = set.intersection(never).collect();
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for g in &got {
            *counts.entry(g).or_default() += 1;
        }
        let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
        assert!(ok && missing.is_empty(), "{name}: missing {missing:?}");
        assert!(extra.is_empty(), "{name}: delivered though not subscribed: {extra:?}");
        let crash = crash_at.unwrap();
        let timing: Vec<String> = rx
            .captured()
            .iter()
            .filter(|c| counts.get(&key(c)).is_some_and(|n| *n > 1))
            .map(|c| {
                let ms = if c.at < crash {
                    -(crash.duration_since(c.at).as_millis() as i64)
                } else {
                    c.at.duration_since(crash).as_millis() as i64
                };
                format!("{} at {ms} ms, webhook-id {}", key(c), c.header("webhook-id").unwrap_or(""))
            })
            .collect();
        assert!(twice.is_empty(), "{name}: delivered twice: {twice:?}\n{}", timing.join("\n"));
    }
}

/// Deliveries that succeeded (and show `succeeded` in the API) a second before a `kill -9`
/// are not sent again after the restart: their outcome was written long before. Also with
/// the webhook paused after they succeeded, and resumed after the restart.
#[tokio::test]
async fn succeeded_deliveries_are_not_resent_after_a_kill_9() {
    for paused in [false, true] {
        let mut app = TestApp::start().await;
        let rx = Receiver::start(200).await;
        let (id, _) = create_webhook(
            &app,
            json!({"webhook_name": "w", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
        )
        .await;
        for n in 0..5 {
            publish(&app, "object.created", json!({"n": n})).await;
        }
        assert!(eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 5 }).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rx.count(), 5);
        let path = format!("/v1/organizations/webhooks/{id}");
        if paused {
            let (s, b) = app.patch(&path, json!({"is_active": false})).await;
            assert_eq!(s, 200, "{b}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        app.crash_restart().await;
        if paused {
            let (s, b) = app.patch(&path, json!({"is_active": true})).await;
            assert_eq!(s, 200, "{b}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let states: Vec<Value> = deliveries(&app, &id, None).await.iter().map(|d| d["status"].clone()).collect();
        assert_eq!(rx.count(), 5, "paused: {paused}; sent again after the restart: {:?}; {states:?}", event_ids(&rx));
    }
}

/// Publishes racing PATCHes that reorder, remove and re-add channels: no receiver gets an
/// event twice, each delivery that succeeded was received by its own channel's receiver, and
/// nothing is left pending.
#[tokio::test]
async fn publishes_racing_channel_changes_go_once_to_their_own_channel() {
    let app = TestApp::start().await;
    let (ra, rb) = (Receiver::start(200).await, Receiver::start(200).await);
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "w", "event_types": ["*"],
               "channels": [http_channel(&ra.url("/a")), http_channel(&rb.url("/b"))]}),
    )
    .await;
    let path = format!("/v1/organizations/webhooks/{id}");
    let publisher = async {
        let mut events = Vec::new();
        for chunk in 0..25 {
            let batch = (0..8).map(|i| publish(&app, "object.created", json!({"n": chunk * 8 + i})));
            events.extend(futures::future::join_all(batch).await);
        }
        events
    };
    let patcher = async {
        for round in 0..12 {
            let (_, w) = app.get(&path).await;
            let chans = w["channels"].as_array().unwrap().clone();
            let next: Vec<Value> = match round % 4 {
                0 => chans.iter().rev().cloned().collect(),
                1 => chans.iter().filter(|c| c["configs"]["url"].as_str().unwrap().ends_with("/b")).cloned().collect(),
                2 => {
                    let mut v = chans.clone();
                    v.push(http_channel(&ra.url("/a")));
                    v
                }
                _ => chans.clone(),
            };
            let (s, b) = app.patch(&path, json!({"channels": next})).await;
            assert_eq!(s, 200, "{b}");
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    };
    let (events, ()) = futures::join!(publisher, patcher);
    assert_eq!(events.len(), 200);
    let settled = || async {
        let (_, all) = app.get(&format!("{path}/deliveries?limit=1000")).await;
        all.as_array().unwrap().iter().all(|d| d["status"] != "pending")
    };
    assert!(eventually(WAIT, settled).await, "deliveries left pending");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, all) = app.get(&format!("{path}/deliveries?limit=1000")).await;
    for (name, rx, suffix) in [("a", &ra, "/a"), ("b", &rb, "/b")] {
        let got = event_ids(rx);
        let set: HashSet<&String> = got.iter().collect();
        assert_eq!(set.len(), got.len(), "{name}: an event received twice");
        assert!(rx.captured().iter().all(|c| c.path == suffix));
        let _ = suffix;
    }
    // Every event reached b (never removed) exactly once.
    let b_events: HashSet<String> = event_ids(&rb).into_iter().collect();
    let want: HashSet<String> = events.into_iter().collect();
    assert_eq!(b_events, want, "b missed events");
    let succeeded = all.as_array().unwrap().iter().filter(|d| d["status"] == "succeeded").count();
    assert_eq!(succeeded, ra.count() + rb.count(), "succeeded deliveries vs requests received");
}

/// Ingests acknowledged, then a pause and a `kill -9` right after its answer: after the
/// restart and a resume, every event is delivered (one delivery each).
#[tokio::test]
async fn a_pause_then_kill_9_right_after_acknowledged_ingests_loses_none() {
    let mut app = TestApp::start().await;
    let rx = Receiver::start(503).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "w", "event_types": ["object.created"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    let (ingest, secret) = numbered_events_bucket(&app).await;
    let mut objects = HashSet::new();
    let sends = (0..50).map(|n| {
        let body = json!({"type": "e", "id": format!("e{n}"), "n": n}).to_string();
        let (app, ingest, secret) = (&app, &ingest, &secret);
        async move { app.post_raw(ingest, body, &[("x-webhook-secret", secret)]).await }
    });
    for (s, r) in futures::future::join_all(sends).await {
        assert_eq!(s, 200, "{r}");
        objects.insert(r["object_id"].as_str().unwrap().to_string());
    }
    let (s, _) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"is_active": false})).await;
    assert_eq!(s, 200);
    app.crash_restart().await;
    rx.set_default(200);
    let (s, _) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"is_active": true})).await;
    assert_eq!(s, 200);
    let got = || {
        rx.captured()
            .iter()
            .filter(|c| c.json()["event_type"] == "object.created")
            .filter_map(|c| c.json()["payload"]["object_id"].as_str().map(String::from))
            .collect::<HashSet<_>>()
    };
    let ok = eventually(WAIT, || async { got().is_superset(&objects) }).await;
    let missing: Vec<_> = objects.difference(&got()).cloned().collect();
    assert!(ok, "lost across the pause and the crash: {missing:?}");
    assert_eq!(deliveries(&app, &id, None).await.len(), 50);
}

/// `before=` with the delivery ID's event part in capitals is either refused (as an object
/// list's cursor in capitals is) or read as the same position: never an empty page, which
/// the README says is the end of the list.
#[tokio::test]
async fn a_before_cursor_in_capitals_does_not_end_the_list_early() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "p", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    for i in 0..3 {
        publish(&app, "object.created", json!({"i": i})).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(eventually(WAIT, || async { deliveries(&app, &wh, None).await.len() == 3 }).await);
    let (_, first) = app.get(&format!("/v1/organizations/webhooks/{wh}/deliveries?limit=1")).await;
    let last = first[0]["delivery_id"].as_str().unwrap().to_string();
    // del_{event ULID}_{webhook}_{n}: the ULID part in capitals (webhook IDs are mixed case).
    let mut parts: Vec<String> = last.splitn(3, '_').map(String::from).collect();
    parts[1] = parts[1].to_uppercase();
    let shouted = parts.join("_");
    let (s, b) = app.get(&format!("/v1/organizations/webhooks/{wh}/deliveries?before={shouted}")).await;
    if s == 200 {
        assert_eq!(
            b.as_array().map(Vec::len),
            Some(2),
            "before={shouted} answered a page of another position (an empty page ends a client's paging): {b}"
        );
    } else {
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("before")), "{b}");
    }
}

/// A manual retry on a webhook whose delivery actor was left stopped (until a PATCH) is not
/// answered "restarting; retry shortly": retrying never helps there. It is either queued
/// (202, sent once the actor is started, as new events' deliveries wait) or refused with
/// what to do.
#[tokio::test]
async fn a_retry_while_the_delivery_actor_is_stopped_for_good_says_what_to_do() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "w", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    publish(&app, "object.created", json!({"n": 1})).await;
    assert!(eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 }).await);
    let did = deliveries(&app, &id, None).await[0]["delivery_id"].as_str().unwrap().to_string();
    crate::outbound::stop_delivery_actor_for_good(&app, &id).await;
    let (s, b) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{did}/retry"), json!({})).await;
    let said = b["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(
        s == 202 || (!said.contains("retry shortly") && said.contains("PATCH")),
        "{s} {b}: the actor is stopped until a PATCH, and the answer says to retry shortly"
    );
}

/// Publishes (with Idempotency-Keys, retried on 503 as a client would) and adapter events
/// racing repeated crashes of the delivery registry: every accepted event reaches the
/// receiver exactly once (no process crash: nothing excuses a second send).
#[tokio::test]
async fn registry_crashes_during_a_burst_lose_and_repeat_nothing() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    create_webhook(&app, json!({"webhook_name": "c", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}))
        .await;
    let auth = format!("Bearer {}", app.api_key);
    let publisher = async {
        let mut ids = HashSet::new();
        for n in 0..150 {
            let key = format!("k{n}");
            let body = json!({"event_type": "order.paid", "payload": {"n": n}}).to_string();
            loop {
                let headers = [
                    ("Authorization", auth.as_str()),
                    ("Content-Type", "application/json"),
                    ("Idempotency-Key", key.as_str()),
                ];
                let (s, b) = app.post_raw("/v1/events", body.clone(), &headers).await;
                if s == 202 || s == 200 {
                    ids.insert(b["event_id"].as_str().unwrap().to_string());
                    break;
                }
                assert_eq!(s, 503, "{b}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ids
    };
    let crasher = async {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            let (s, b) = app.post("/v1/debug/crash/delivery_registry", json!({})).await;
            assert!(s == 202 || s == 503, "{s} {b}");
        }
    };
    let (ids, ()) = futures::join!(publisher, crasher);
    assert_eq!(ids.len(), 150);
    let ok = eventually(WAIT, || async {
        let got: HashSet<String> = event_ids(&rx).into_iter().collect();
        got.is_superset(&ids)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = event_ids(&rx);
    let set: HashSet<String> = got.iter().cloned().collect();
    let missing: Vec<_> = ids.difference(&set).collect();
    assert!(ok, "lost: {missing:?}");
    let mut counts: HashMap<&String, usize> = HashMap::new();
    for g in &got {
        *counts.entry(g).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
}

/// A `prefix.*` pattern whose prefix leaves no room for a word after it within the 100
/// characters an event type may have matches no event that can ever be published: it is
/// refused (422 naming the entry), not stored with a warning that it "receives only events
/// published with that type".
#[tokio::test]
async fn a_prefix_pattern_no_event_type_can_match_is_refused() {
    let app = TestApp::start().await;
    let prefix = "a".repeat(99);
    let (s, b) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "w", "event_types": [format!("{prefix}.*")], "is_active": false,
                   "channels": [http_channel("http://127.0.0.1:9/")]}),
        )
        .await;
    // What could match it: at least 101 characters, refused by POST /v1/events.
    let (p, _) = app.post("/v1/events", json!({"event_type": format!("{prefix}.b"), "payload": {}})).await;
    assert_eq!(p, 422);
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("event_types[0]")), "{b}");
}
