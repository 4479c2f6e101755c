//! Manual retries and actor failures on the outbound side: a retry of a delivery behind a 429
//! waits its turn without stranding its channel, a retry of a parked delivery keeps its
//! max_age window, and a send's outcome outlives its actor when its channel is removed meanwhile.

use std::time::Duration;

use serde_json::json;

use crate::outbound::{create_webhook, deliveries, http_channel, publish};
use crate::outbound_receiver::Receiver;
use crate::support::{eventually, Options, TestApp};

fn options(settings: &str) -> Options {
    Options {
        delivery_toml: Some(format!(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nrequest_timeout_seconds = 2\n{settings}"
        )),
        ..Options::default()
    }
}

/// The ID of the webhook's first delivery without an attempt, once it is listed.
async fn unattempted(app: &TestApp, webhook_id: &str) -> String {
    for _ in 0..200 {
        let ds = deliveries(app, webhook_id, None).await;
        if let Some(d) = ds.iter().find(|d| d["attempts"].as_array().is_some_and(|a| a.is_empty())) {
            return d["delivery_id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no delivery without an attempt listed: {:?}", deliveries(app, webhook_id, None).await);
}

/// A manual retry of a delivery that waits behind a 429 keeps its place in its channel's
/// backlog, and the delivery queued after it goes one spacing after it. (It used to be queued
/// a second time: the stale second entry, released once the first had been sent, started the
/// channel's spacing with no send and no timer for its end, so the deliveries behind it
/// waited for whatever next woke the worker, here the 429'd delivery's own retry, minutes
/// later.)
#[tokio::test]
async fn a_manual_retry_behind_a_429_does_not_strand_the_channels_backlog() {
    let app = TestApp::start_with(options("max_age_hours = 1\nretry_schedule_seconds = [300]\n")).await;
    let rx = Receiver::start(200).await;
    rx.set_retry_after(2);
    rx.then(429, Duration::ZERO);
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "limited", "event_types": ["*"], "channels": [http_channel(&rx.url("/r"))]}),
    )
    .await;
    publish(&app, "object.updated", json!({"n": "a"})).await;
    let limited = || async {
        deliveries(&app, &id, None).await.iter().any(|d| d["attempts"][0]["status_code"].as_u64() == Some(429))
    };
    assert!(eventually(Duration::from_secs(10), limited).await, "no 429 recorded; log:\n{}", app.log());
    // B waits behind the 429's hold; retried by hand, it waits there (README: "a manual
    // retry waits its turn too").
    publish(&app, "object.updated", json!({"n": "b"})).await;
    let b = unattempted(&app, &id).await;
    let (s, r) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{b}/retry"), json!({})).await;
    assert_eq!(s, 202, "{r}");
    // C arrives behind B, still inside the hold.
    publish(&app, "object.updated", json!({"n": "c"})).await;
    assert_eq!(rx.count(), 1, "the hold must still be on (only the 429 so far)");
    // Paced: B goes at ~2 s, C a spacing (2.1 s) later. Give it 20 s.
    let both =
        eventually(Duration::from_secs(20), || async { deliveries(&app, &id, Some("succeeded")).await.len() == 2 })
            .await;
    let caps = rx.captured();
    let sent: Vec<String> = caps.iter().map(|c| c.json()["payload"]["n"].to_string()).collect();
    assert!(
        both,
        "b and c are not both delivered 20 s after a 2 s hold; receiver got {sent:?}; deliveries: {:#?}",
        deliveries(&app, &id, None).await.iter().map(|d| (&d["status"], &d["attempts"])).collect::<Vec<_>>()
    );
    // One spacing (2.1 s) between them: a stale second entry of b would have taken one more.
    let at = |n: &str| caps.iter().find(|c| c.json()["payload"]["n"] == n).map(|c| c.at).expect(n);
    let gap = at("c").duration_since(at("b"));
    assert!(gap < Duration::from_millis(3200), "c went {gap:?} after b, not one 2.1 s spacing: {sent:?}");
}

/// A manual retry of a *pending* delivery only "sends it now instead of at its
/// next_attempt_at" (README; only a finished one gets a fresh max_age window), also when its
/// retry is parked in the store (due later than `retry_in_memory_seconds`: with the defaults,
/// every retry from the second failure on). Such a retry used to take the path of finished
/// deliveries, its `failures` back to 0 and its max_age window started again, so each manual
/// retry kept a failing delivery alive another max_age and restarted its backoff.
#[tokio::test]
async fn a_manual_retry_of_a_parked_pending_delivery_keeps_its_max_age_window() {
    let app = TestApp::start_with(options(
        "max_age_seconds = 8\nretry_schedule_seconds = [300]\nretry_in_memory_seconds = 1\n",
    ))
    .await;
    let rx = Receiver::start(503).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "aging", "event_types": ["*"], "channels": [http_channel(&rx.url("/"))]}),
    )
    .await;
    publish(&app, "object.updated", json!({"n": 1})).await;
    assert!(eventually(Duration::from_secs(10), || async { rx.count() == 1 }).await);
    let first = rx.captured()[0].at;
    // Its retry is pulled in to the 8 s deadline: past the 1 s horizon, so parked.
    let d = loop {
        let ds = deliveries(&app, &id, None).await;
        if ds.first().is_some_and(|d| d["attempts"].as_array().is_some_and(|a| a.len() == 1)) {
            break ds[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let did = d["delivery_id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(first.elapsed())).await;
    let (s, r) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{did}/retry"), json!({})).await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["status"], "pending", "a pending delivery: {r}");
    let dead =
        eventually(Duration::from_secs(20), || async { deliveries(&app, &id, Some("dead")).await.len() == 1 }).await;
    assert!(dead, "{:?}", deliveries(&app, &id, None).await);
    let caps = rx.captured();
    let last = caps.last().unwrap().at.duration_since(first);
    let d = &deliveries(&app, &id, None).await[0];
    assert!(
        last <= Duration::from_millis(9500),
        "the last attempt came {last:?} after the first, past the 8 s max age the delivery was queued under \
         ({} attempts): the manual retry of a pending delivery gave it a fresh window; {d}",
        caps.len()
    );
}

/// A removed channel's "send in flight finishes, and is not retried if it fails" (README),
/// and every attempt is logged: also when the delivery actor failed while the send was out
/// (its successor waits for the send, see `lease.rs`). The successor's reload used to bury the
/// delivery first and then drop the send's outcome: the receiver got the event (200), yet the
/// delivery showed `dead` ("channel removed") without the 200 attempt in its log.
#[tokio::test]
async fn a_removed_channels_send_in_flight_across_an_actor_failure_keeps_its_outcome() {
    let app = TestApp::start().await;
    let slow = Receiver::start(200).await;
    slow.then(200, Duration::from_millis(1500));
    let other = Receiver::start(200).await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "two", "event_types": ["*"],
               "channels": [http_channel(&slow.url("/slow")), http_channel(&other.url("/other"))]}),
    )
    .await;
    publish(&app, "object.updated", json!({"n": 1})).await;
    assert!(eventually(Duration::from_secs(10), || async { slow.count() == 1 }).await);
    let (s, b) = app.post(&format!("/v1/debug/crash/delivery.{id}"), json!({})).await;
    assert_eq!(s, 202, "{b}");
    // While the failed actor's send is still out, the slow channel is removed.
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    let keep = w["channels"][1].clone();
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [keep]})).await;
    assert_eq!(s, 200, "{b}");
    let finished = || async { deliveries(&app, &id, None).await.iter().all(|d| d["status"] != "pending") };
    assert!(eventually(Duration::from_secs(15), finished).await, "{:?}", deliveries(&app, &id, None).await);
    assert_eq!(slow.count(), 1, "sent once");
    let ds = deliveries(&app, &id, None).await;
    let d = ds.iter().find(|d| d["channel_id"] == w["channels"][0]["channel_id"]).expect("the slow channel's delivery");
    let codes: Vec<_> = d["attempts"].as_array().unwrap().iter().map(|a| a["status_code"].clone()).collect();
    assert!(
        d["status"] == "succeeded" && codes.contains(&json!(200)),
        "the receiver answered 200, but the delivery is {} with attempts {codes:?}: {d}",
        d["status"]
    );
}

/// As above, for a delivery retried while still ready (not yet in the throttle's backlog,
/// because the webhook's in-flight bound is full): it is queued once, so the delivery after
/// it goes one spacing later. (Queued twice, both copies went into the channel's backlog when
/// the 429 came back, and the stale copy took a spacing with no send.)
#[tokio::test]
async fn a_manual_retry_of_a_ready_delivery_before_a_429_is_not_backlogged_twice() {
    let app = TestApp::start_with(options(
        "max_age_hours = 1\nretry_schedule_seconds = [300]\nmax_in_flight_per_webhook = 1\n",
    ))
    .await;
    let rx = Receiver::start(200).await;
    rx.set_retry_after(2);
    // A is in flight for 1.5 s, then answers 429 (hold 2 s, then one send per 2.1 s).
    rx.then(429, Duration::from_millis(1500));
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "limited", "event_types": ["*"], "channels": [http_channel(&rx.url("/r"))]}),
    )
    .await;
    publish(&app, "object.updated", json!({"n": "a"})).await;
    assert!(eventually(Duration::from_secs(10), || async { rx.count() == 1 }).await);
    // B is ready, behind A (the only in-flight slot); retried by hand while A is still out.
    publish(&app, "object.updated", json!({"n": "b"})).await;
    let b = unattempted(&app, &id).await;
    let (s, r) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{b}/retry"), json!({})).await;
    assert_eq!(s, 202, "{r}");
    publish(&app, "object.updated", json!({"n": "c"})).await;
    assert_eq!(rx.count(), 1, "A must still be in flight when B is retried and C published");
    let both =
        eventually(Duration::from_secs(20), || async { deliveries(&app, &id, Some("succeeded")).await.len() == 2 })
            .await;
    assert!(both, "b and c not both delivered");
    let caps = rx.captured();
    let at = |n: &str| caps.iter().find(|c| c.json()["payload"]["n"] == n).map(|c| c.at).expect(n);
    let gap = at("c").duration_since(at("b"));
    assert!(
        gap < Duration::from_millis(3200),
        "c went {gap:?} after b, not one 2.1 s spacing: the retried b was backlogged twice and its stale copy used a spacing"
    );
}
