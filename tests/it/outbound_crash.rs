//! Crash test: `kill -9` while deliveries are pending and retrying; after the restart every
//! event is delivered at least once, and duplicates carry the same `webhook-id`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use crate::outbound::{create_webhook, http_channel, publish};
use crate::outbound_receiver::Receiver;
use crate::support::{eventually, TestApp};

#[tokio::test]
async fn kill_9_loses_no_delivery() {
    let mut app = TestApp::start().await;
    // The receiver fails everything at first: deliveries pile up pending/retrying.
    let rx = Receiver::start(500).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "crash", "event_types": ["*"], "channels": [http_channel(&rx.url("/c"))]}),
    )
    .await;
    let slow = Receiver::start(200).await;
    for _ in 0..3 {
        slow.then(200, Duration::from_secs(1));
    }
    create_webhook(
        &app,
        json!({"webhook_name": "slow", "event_types": ["*"], "channels": [http_channel(&slow.url("/s"))]}),
    )
    .await;
    let mut events = Vec::new();
    for i in 0..40 {
        events.push(publish(&app, "object.created", json!({"i": i})).await);
    }
    // Some attempts happened (and failed) before the crash; some are in flight to `slow`.
    assert!(eventually(Duration::from_secs(10), || async { rx.count() >= 10 }).await);
    app.crash_restart().await;
    rx.set_default(200);
    // More events after the restart, too.
    for i in 40..50 {
        events.push(publish(&app, "object.created", json!({"i": i})).await);
    }
    let want: HashSet<String> = events.iter().cloned().collect();
    let (_, slow_list) = app.get("/v1/organizations/webhooks").await;
    let ids: Vec<String> = slow_list["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["webhook_id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.contains(&id));
    // Every event ends `succeeded` (a 2xx was received) for every webhook: one delivery
    // per event per webhook, none lost, none left pending.
    for wid in &ids {
        let succeeded = || async {
            let (_, b) =
                app.get(&format!("/v1/organizations/webhooks/{wid}/deliveries?status=succeeded&limit=1000")).await;
            b.as_array()
                .map(|a| a.iter().filter_map(|d| d["event_id"].as_str().map(String::from)).collect::<HashSet<_>>())
                .unwrap_or_default()
        };
        let ok = eventually(Duration::from_secs(30), || async { succeeded().await == want }).await;
        let got = succeeded().await;
        let missing: Vec<_> = want.difference(&got).collect();
        assert!(ok, "webhook {wid}: not delivered after kill -9: {missing:?}\nlog:\n{}", app.log());
        let (_, all) = app.get(&format!("/v1/organizations/webhooks/{wid}/deliveries?limit=1000")).await;
        assert_eq!(all.as_array().unwrap().len(), want.len(), "exactly one delivery per event");
    }
    // Each receiver saw every event.
    for r in [&rx, &slow] {
        let seen: HashSet<String> =
            r.captured().iter().filter_map(|c| c.json()["event_id"].as_str().map(String::from)).collect();
        assert!(seen.is_superset(&want));
    }
    // Duplicates (same event received twice) carry the same webhook-id.
    for r in [&rx, &slow] {
        let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
        for c in r.captured() {
            let e = c.json()["event_id"].as_str().unwrap_or("").to_string();
            ids.entry(e).or_default().insert(c.header("webhook-id").unwrap_or("").to_string());
        }
        for (e, w) in ids {
            assert_eq!(w.len(), 1, "event {e} was sent with different webhook-ids: {w:?}");
        }
    }
}
