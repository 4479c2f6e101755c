//! Outbound: a webhook's in-memory queue is bounded by bytes as well as by count, so large
//! events behind a receiver that hangs cost disk, not RAM, and none is lost or sent twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use warp::Filter;

use crate::outbound::{create_webhook, deliveries, http_channel, publish, without_colors};
use crate::outbound_receiver::Receiver;
use crate::support::{eventually, metric_value, Options, TestApp};

const WAIT: Duration = Duration::from_secs(30);
/// The byte bound the tests configure, and the size of each event's payload: two such
/// deliveries fit (about 101 KiB each), a third does not.
const BUDGET: f64 = 256.0 * 1024.0;
const PAYLOAD: usize = 100 * 1024;

/// A receiver that takes requests but answers none (200) until released; it notes each
/// answered request's path, `webhook-id` and event number.
struct HeldReceiver {
    url: String,
    release: watch::Sender<bool>,
    arrived: Arc<Mutex<usize>>,
    answered: Arc<Mutex<Vec<(String, String, u64)>>>,
}

impl HeldReceiver {
    async fn start() -> HeldReceiver {
        let (release, released) = watch::channel(false);
        let (arrived, answered) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(Vec::new())));
        let (a, b) = (arrived.clone(), answered.clone());
        let filter = warp::path::full()
            .and(warp::header::optional::<String>("webhook-id"))
            .and(warp::body::bytes())
            .then(move |path: warp::path::FullPath, id: Option<String>, body: bytes::Bytes| {
                let (mut released, arrived, answered) = (released.clone(), a.clone(), b.clone());
                async move {
                    *arrived.lock().unwrap() += 1;
                    let _ = released.wait_for(|r| *r).await;
                    let n = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["payload"]["n"].as_u64());
                    answered.lock().unwrap().push((path.as_str().to_string(), id.unwrap_or_default(), n.unwrap_or(0)));
                    warp::reply()
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(warp::serve(filter).incoming(listener).run());
        HeldReceiver { url, release, arrived, answered }
    }
}

/// The tests' delivery settings, with `settings` added (a retry schedule there replaces
/// the default one of 1 s).
fn options(settings: &str) -> Options {
    let schedule = if settings.contains("retry_schedule_seconds") { "" } else { "retry_schedule_seconds = [1]\n" };
    Options {
        delivery_toml: Some(format!(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nmax_age_hours = 1\n\
             {schedule}max_queued_in_memory_per_webhook = 1000\n\
             max_queued_bytes_per_webhook = {}\n{settings}",
            BUDGET as u64
        )),
        ..Options::default()
    }
}

/// A large event (its payload about [`PAYLOAD`] bytes) numbered `n`.
fn big(n: u64) -> Value {
    json!({ "n": n, "blob": "x".repeat(PAYLOAD) })
}

/// Publishes the large events numbered `numbers`, in distinct milliseconds (so event IDs,
/// and delivery keys, follow publish order).
async fn publish_big(app: &TestApp, numbers: std::ops::RangeInclusive<u64>) {
    for n in numbers {
        publish(app, "object.created", big(n)).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A webhook on every event type with one HTTP channel to `url`; its ID.
async fn webhook_to(app: &TestApp, name: &str, url: &str) -> String {
    let body = json!({"webhook_name": name, "event_types": ["*"], "channels": [http_channel(url)]});
    create_webhook(app, body).await.0
}

async fn queue_bytes(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "hookline_delivery_queue_bytes", &[])
}

async fn queue_depth(app: &TestApp) -> f64 {
    metric_value(&app.metrics().await, "hookline_delivery_queue_depth", &[])
}

/// Two webhooks on one receiver that hangs: each holds at most the byte bound of large
/// events in memory (the same event counted in each), the rest wait in the store; once the
/// receiver answers, every event reaches each webhook exactly once.
#[tokio::test]
async fn large_events_behind_a_hanging_receiver_stay_within_the_byte_bound() {
    let app = TestApp::start_with(options("max_in_flight_per_webhook = 1\nrequest_timeout_seconds = 120\n")).await;
    let rx = HeldReceiver::start().await;
    let mut webhooks = Vec::new();
    for name in ["a", "b"] {
        webhooks.push(webhook_to(&app, name, &format!("{}/{name}", rx.url)).await);
    }
    const N: u64 = 30;
    let mut most = 0.0f64;
    for n in 1..=N {
        publish(&app, "object.created", big(n)).await;
        let bytes = queue_bytes(&app).await;
        assert!(bytes <= 2.0 * BUDGET, "after event {n}: {bytes} bytes held, bound {BUDGET} per webhook");
        most = most.max(bytes);
        // Distinct milliseconds: event IDs (and so delivery keys) follow publish order.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let all_pending = eventually(WAIT, || async { queue_depth(&app).await == 2.0 * N as f64 }).await;
    assert!(all_pending, "every delivery is pending, in memory or not: {}", queue_depth(&app).await);
    let bytes = queue_bytes(&app).await;
    assert!(bytes <= 2.0 * BUDGET, "{bytes}");
    // Each webhook holds its one in flight and one more (two ~101 KiB events fit, not three):
    // far below the 30 events (~6 MiB) a count bound of 1000 would have held.
    assert!(most >= 4.0 * PAYLOAD as f64 && bytes >= 4.0 * PAYLOAD as f64, "most {most}, now {bytes}");
    assert!(eventually(WAIT, || async { *rx.arrived.lock().unwrap() == 2 }).await, "one request in flight per webhook");
    assert!(app.log().contains("delivery queue spilled to the store"), "{}", app.log());

    rx.release.send_replace(true);
    for id in &webhooks {
        let done =
            eventually(WAIT, || async { deliveries(&app, id, Some("succeeded")).await.len() == N as usize }).await;
        assert!(done, "{id}: {} pending", deliveries(&app, id, Some("pending")).await.len());
    }
    // A late duplicate would arrive just after.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answered = rx.answered.lock().unwrap().clone();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for (_, id, _) in &answered {
        *per_id.entry(id.as_str()).or_default() += 1;
    }
    assert_eq!((answered.len(), per_id.len()), (2 * N as usize, 2 * N as usize), "each delivery sent once");
    for path in ["/a", "/b"] {
        let mut got: Vec<u64> = answered.iter().filter(|(p, _, _)| p == path).map(|(_, _, n)| *n).collect();
        got.sort_unstable();
        assert_eq!(got, (1..=N).collect::<Vec<_>>(), "{path}: every event once");
    }
    assert!(app.log().contains("delivery queue back in memory"), "{}", app.log());
    assert!(eventually(WAIT, || async { queue_bytes(&app).await == 0.0 }).await, "bytes back to 0");
    assert!(eventually(WAIT, || async { queue_depth(&app).await == 0.0 }).await, "depth back to 0");
}

/// A reload after a `kill -9` takes back from the store only what the byte bound allows
/// (the rest stays spilled), and an event larger than the whole bound still goes (alone).
#[tokio::test]
async fn a_reload_keeps_the_byte_bound_and_an_event_larger_than_it_still_goes() {
    let mut app = TestApp::start_with(options("max_in_flight_per_webhook = 2\nrequest_timeout_seconds = 2\n")).await;
    let down = Receiver::start(503).await;
    let id = webhook_to(&app, "reload", &down.url("/q")).await;
    const N: u64 = 12;
    publish_big(&app, 1..=N).await;
    // Larger than the bound by itself (about 300 KiB).
    let huge = json!({ "n": N + 1, "blob": "y".repeat(3 * PAYLOAD) });
    publish(&app, "object.created", huge).await;
    let total = N + 1;
    assert!(eventually(WAIT, || async { queue_depth(&app).await == total as f64 }).await);
    assert!(queue_bytes(&app).await <= BUDGET);
    assert!(eventually(WAIT, || async { down.count() >= 2 }).await, "the receiver was tried");

    app.kill9();
    app.start_again().await;
    let log = without_colors(&app.log());
    assert!(log.contains(&format!("pending={total} in_memory=2")), "two fit the bound:\n{log}");
    assert!(eventually(WAIT, || async { queue_bytes(&app).await > 0.0 }).await);
    let bytes = queue_bytes(&app).await;
    assert!(bytes <= BUDGET, "reloaded within the bound: {bytes}");

    let up = Receiver::start(200).await;
    let (s, b) = app
        .patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [http_channel(&up.url("/up"))]}))
        .await;
    assert_eq!(s, 200, "{b}");
    let all =
        eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == total as usize }).await;
    assert!(all, "{} pending", deliveries(&app, &id, Some("pending")).await.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let captured = up.captured();
    let mut got: Vec<u64> = captured.iter().map(|c| c.json()["payload"]["n"].as_u64().unwrap_or(0)).collect();
    got.sort_unstable();
    assert_eq!(got, (1..=total).collect::<Vec<_>>(), "each event exactly once");
    assert!(eventually(WAIT, || async { queue_bytes(&app).await == 0.0 }).await, "bytes back to 0");
}

/// A parked retry that comes due while memory holds too much for it waits, idle, until room
/// is made: it was read back, found too large and re-armed at once, a busy loop for as long
/// as nothing drained.
#[tokio::test]
async fn a_due_retry_that_does_not_fit_waits_without_spinning() {
    let settings = "max_in_flight_per_webhook = 1\nretry_schedule_seconds = [3]\nretry_in_memory_seconds = 1\n\
                    request_timeout_seconds = 60\n";
    let app = TestApp::start_with(options(settings)).await;
    let rx = Receiver::start(503).await;
    let id = webhook_to(&app, "full", &rx.url("/f")).await;
    // A fails once and is parked (its retry is due in 3 s, past the 1 s horizon).
    publish_big(&app, 1..=1).await;
    assert!(eventually(WAIT, || async { rx.count() >= 1 }).await, "the receiver was tried");
    // B is sent next and answered only after 10 s; C waits behind it (one in flight): about
    // 202 KiB of the 256 KiB held, no room for A's 101 when it comes due.
    rx.then(200, Duration::from_secs(10));
    rx.set_default(200);
    publish_big(&app, 2..=3).await;
    assert!(eventually(WAIT, || async { queue_bytes(&app).await >= 2.0 * PAYLOAD as f64 }).await);
    assert!(eventually(WAIT, || async { rx.count() == 2 }).await, "B in flight");
    // A comes due (3 s after its attempt) and cannot come back into memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = app.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = app.cpu_seconds() - before;
    // Idle, the daemon uses a few ms a second; the loop took a whole core.
    assert!(used < 0.75, "{used:.2} s of CPU in 3 s while nothing could change");
    assert_eq!((rx.count(), queue_depth(&app).await), (2, 3.0), "A and C wait, B in flight");

    // B answered: room for the rest, A included.
    let all = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == 3 }).await;
    assert!(all, "{} pending", deliveries(&app, &id, Some("pending")).await.len());
    let answered: Vec<u64> = rx.captured().iter().map(|c| c.json()["payload"]["n"].as_u64().unwrap_or(0)).collect();
    assert_eq!(answered.len(), 4, "A twice (its failure, then its retry), B and C once: {answered:?}");
    assert_eq!(answered.iter().filter(|n| **n == 1).count(), 2, "{answered:?}");
}

/// Dead deliveries retried by hand come back within the byte bound too: past it they wait
/// in the store, due now, and go as room is made (each once).
#[tokio::test]
async fn deliveries_retried_by_hand_stay_within_the_byte_bound() {
    let settings = "max_in_flight_per_webhook = 1\nmax_age_seconds = 2\nrequest_timeout_seconds = 60\n";
    let app = TestApp::start_with(options(settings)).await;
    let rx = Receiver::start(503).await;
    let id = webhook_to(&app, "dead", &rx.url("/d")).await;
    const N: u64 = 6;
    publish_big(&app, 1..=N).await;
    let dead = eventually(WAIT, || async { deliveries(&app, &id, Some("dead")).await.len() == N as usize }).await;
    assert!(dead, "{} pending", deliveries(&app, &id, Some("pending")).await.len());
    assert_eq!(queue_bytes(&app).await, 0.0);
    // The first retried is answered only after 3 s; the rest wait behind it, most in the store.
    rx.then(200, Duration::from_secs(3));
    rx.set_default(200);
    let tried = rx.count();
    for d in deliveries(&app, &id, Some("dead")).await {
        let did = d["delivery_id"].as_str().unwrap_or_default().to_string();
        let (s, b) = app.post(&format!("/v1/organizations/webhooks/{id}/deliveries/{did}/retry"), json!({})).await;
        assert_eq!(s, 202, "{b}");
        let bytes = queue_bytes(&app).await;
        assert!(bytes <= BUDGET, "{bytes} bytes held, bound {BUDGET}");
    }
    assert_eq!(queue_depth(&app).await, N as f64, "all pending again, in memory or not");
    let all = eventually(WAIT, || async { deliveries(&app, &id, Some("succeeded")).await.len() == N as usize }).await;
    assert!(all, "{} pending", deliveries(&app, &id, Some("pending")).await.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again: Vec<u64> =
        rx.captured()[tried..].iter().map(|c| c.json()["payload"]["n"].as_u64().unwrap_or(0)).collect();
    again.sort_unstable();
    assert_eq!(again, (1..=N).collect::<Vec<_>>(), "each retried delivery sent once");
    assert!(eventually(WAIT, || async { queue_bytes(&app).await == 0.0 }).await, "bytes back to 0");
}

/// A channel removed while most of its webhook's deliveries are spilled to the store
/// (count bound 2) has its spilled and held deliveries buried, the kept channel's spilled
/// ones are read back and each sent once, and the queue's depth and byte gauges return to
/// exactly 0: no count left over that would keep the queue spilled or throttled.
#[tokio::test]
async fn removing_a_channel_while_spilled_keeps_the_queue_accounting_exact() {
    let kept = Receiver::start(200).await;
    let gone = Receiver::start(200).await;
    let app = TestApp::start_with(Options {
        delivery_toml: Some(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\nmax_age_hours = 1\n\
             retry_schedule_seconds = [1]\nmax_in_flight_per_webhook = 1\nmax_queued_in_memory_per_webhook = 2\n"
                .into(),
        ),
        ..Options::default()
    })
    .await;
    let (wh, _) = create_webhook(
        &app,
        json!({"webhook_name": "two", "event_types": ["*"], "channels": [
            {"channel": "webhook", "configs": {"url": kept.url("/kept")}},
            {"channel": "webhook", "configs": {"url": gone.url("/gone")}}]}),
    )
    .await;
    // The kept receiver holds its first request: the queue fills (2) and the rest spills.
    kept.then(200, Duration::from_secs(3));
    for n in 0..6 {
        publish(&app, "object.created", json!({"n": n})).await;
    }
    assert!(eventually(WAIT, || async { kept.count() == 1 }).await);
    let (_, w) = app.get(&format!("/v1/organizations/webhooks/{wh}")).await;
    let first = w["channels"][0].clone();
    let (s, b) = app.patch(&format!("/v1/organizations/webhooks/{wh}"), json!({"channels": [first]})).await;
    assert_eq!(s, 200, "{b}");
    let settled = || async {
        let all = deliveries(&app, &wh, None).await;
        all.len() == 12 && all.iter().all(|d| d["status"] != "pending")
    };
    assert!(eventually(WAIT, settled).await, "{:?}", deliveries(&app, &wh, None).await);
    let ok = deliveries(&app, &wh, Some("succeeded")).await;
    let dead = deliveries(&app, &wh, Some("dead")).await;
    assert_eq!((ok.len(), dead.len()), (6, 6 - gone.count()), "ok {ok:?} dead {dead:?}");
    let mut seen: Vec<u64> = kept.captured().iter().map(|c| c.json()["payload"]["n"].as_u64().unwrap()).collect();
    seen.sort();
    assert_eq!(seen, [0, 1, 2, 3, 4, 5], "each event once to the kept channel");
    let gauges = || async {
        let m = app.metrics().await;
        let depth = metric_value(&m, "hookline_delivery_queue_depth", &[]);
        let bytes = metric_value(&m, "hookline_delivery_queue_bytes", &[]);
        (depth, bytes)
    };
    assert!(eventually(WAIT, || async { gauges().await == (0.0, 0.0) }).await, "{:?}", gauges().await);
    // Still exact afterwards: a new event goes through memory at once.
    publish(&app, "object.created", json!({"n": 6})).await;
    assert!(eventually(WAIT, || async { kept.count() == 7 }).await);
}
