//! The sends under hostile receivers and templates: a 429 hold that must not outlive a
//! change of URL, a runaway template over large events held to bounded memory, a 2xx whose
//! body never ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use warp::Filter;

use crate::outbound::{create_webhook, deliveries, publish};
use crate::support::{eventually, Options, TestApp};

/// What a receiver saw: when, and the body.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Instant, Value)>>>);

impl Seen {
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A receiver on 127.0.0.1 answering `status`, with `Retry-After: retry_after` when set.
async fn receiver(status: u16, retry_after: Option<&'static str>) -> (String, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let filter = warp::body::bytes().map(move |body: bytes::Bytes| {
        s.0.lock().unwrap().push((Instant::now(), serde_json::from_slice(&body).unwrap_or(Value::Null)));
        let reply = warp::reply::with_status("answer", warp::http::StatusCode::from_u16(status).unwrap());
        let mut resp = warp::Reply::into_response(reply);
        if let Some(ra) = retry_after {
            resp.headers_mut().insert("retry-after", warp::http::HeaderValue::from_static(ra));
        }
        resp
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind a receiver");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(warp::serve(filter).incoming(listener).run());
    (format!("http://127.0.0.1:{port}/hook"), seen)
}

async fn app_on(delivery: &str) -> TestApp {
    let timeout = if delivery.contains("request_timeout_seconds") { "" } else { "request_timeout_seconds = 2\n" };
    TestApp::start_with(Options {
        delivery_toml: Some(format!(
            "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n{timeout}{delivery}"
        )),
        ..Options::default()
    })
    .await
}

/// A channel held by its receiver's 429 (`Retry-After: 120`) is PATCHed to another URL, a
/// receiver that is not rate limited, keeping its `channel_id` (as the README asks, so that
/// its pending deliveries follow it): the hold was the old receiver's answer and goes with
/// it, so an event published after the PATCH reaches the new receiver at once.
#[tokio::test]
async fn a_patch_to_a_new_url_does_not_keep_the_old_receivers_429_hold() {
    let app = app_on("max_age_hours = 1\nretry_schedule_seconds = [1, 120]\n").await;
    let (limited_url, limited) = receiver(429, Some("120")).await;
    let (fresh_url, fresh) = receiver(200, None).await;
    let channel = json!({"channel": "webhook", "configs": {"url": limited_url}});
    let (id, _) =
        create_webhook(&app, json!({"webhook_name": "moved", "event_types": ["*"], "channels": [channel]})).await;
    publish(&app, "object.updated", json!({"n": "a"})).await;
    let got_429 = || async {
        deliveries(&app, &id, None).await.iter().any(|d| d["attempts"][0]["status_code"].as_u64() == Some(429))
    };
    assert!(eventually(Duration::from_secs(10), got_429).await, "no 429; log:\n{}", app.log());
    assert_eq!(limited.count(), 1);

    // The receiver moves: the channel, by its ID, now points at a receiver that takes anything.
    let (_, view) = app.get(&format!("/v1/organizations/webhooks/{id}")).await;
    let mut ch: Value = view["channels"][0].clone();
    ch["configs"]["url"] = json!(fresh_url);
    let (s, r) = app.patch(&format!("/v1/organizations/webhooks/{id}"), json!({"channels": [ch]})).await;
    assert_eq!(s, 200, "{r}");

    let patched = Instant::now();
    publish(&app, "object.updated", json!({"n": "b"})).await;
    let arrived = eventually(Duration::from_secs(15), || async { fresh.count() >= 1 }).await;
    assert!(
        arrived,
        "an event published after the PATCH reached nobody in {:?}: the new receiver is held by the old \
         one's Retry-After; deliveries: {:#?}",
        patched.elapsed(),
        deliveries(&app, &id, None)
            .await
            .iter()
            .map(|d| (d["status"].clone(), d["next_attempt_at"].clone(), d["attempts"].clone()))
            .collect::<Vec<_>>()
    );
}

/// The daemon's peak resident memory (VmHWM), in MiB: the process whose command line names
/// this test's config.
fn daemon_peak_mib(app: &TestApp) -> u64 {
    let config = app.dir.path().join("config.toml").display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&config) {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
            if let Some(kb) = status.lines().find(|l| l.starts_with("VmHWM")) {
                return kb.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024;
            }
        }
    }
    panic!("daemon process not found");
}

/// A runaway template over large payloads fails its deliveries, not the daemon's memory: a
/// render gets 2 fuel more a payload byte (one fuel pays for 64 bytes made, and 4 let one
/// render of a 1 MB event make about 256 MB), and such renders run one at a time (a webhook
/// renders up to 16 sends at once). Six such events, one webhook.
#[tokio::test]
async fn a_runaway_template_over_large_events_stays_within_bounded_memory() {
    let app = app_on("max_age_hours = 1\nretry_schedule_seconds = [1]\n").await;
    let (url, _seen) = receiver(200, None).await;
    let mut template = String::from("{% set a0 = payload.s %}");
    for i in 0..9 {
        template.push_str(&format!("{{% set a{} = a{i} ~ a{i} %}}", i + 1));
    }
    template.push_str("{{ a9 | length }}");
    let channel = json!({"channel": "webhook", "configs": {"url": url, "payload_template": template}});
    let (id, _) =
        create_webhook(&app, json!({"webhook_name": "runaway", "event_types": ["*"], "channels": [channel]})).await;
    let before = daemon_peak_mib(&app);
    for n in 0..6 {
        publish(&app, "object.created", json!({"n": n, "s": "x".repeat(1_000_000)})).await;
    }
    let all_dead =
        eventually(Duration::from_secs(120), || async { deliveries(&app, &id, Some("dead")).await.len() == 6 }).await;
    let peak = daemon_peak_mib(&app);
    assert!(all_dead, "the six deliveries did not fail; log:\n{}", app.log());
    let ds = deliveries(&app, &id, Some("dead")).await;
    assert!(ds[0]["attempts"][0]["error"].as_str().unwrap_or("").contains("fuel"), "{:?}", ds[0]["attempts"]);
    assert!(peak < 768, "peak memory {peak} MiB (before the events: {before} MiB) for six 1 MB events");
}

/// A receiver on 127.0.0.1 that reads a request's head and answers `head` (a status
/// line and headers), then holds the connection without ending the body.
async fn never_ending(head: &'static [u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind a receiver");
    let port = l.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut buf, mut got) = (vec![0u8; 65536], Vec::new());
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(head).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            });
        }
    });
    format!("http://127.0.0.1:{port}/hook")
}

/// A receiver that answers `200 OK` at once (as seeds 001/002 ask: "respond 2xx quickly")
/// but does not end its response (a streaming framework, a proxy holding a chunked body
/// open): the status decides, and the attempt is done within a moment, not at the request
/// timeout (which held an in-flight slot, and left the success unrecorded meanwhile).
#[tokio::test]
async fn a_2xx_is_done_when_its_status_arrives_not_at_the_timeout() {
    let app = app_on("request_timeout_seconds = 5\nmax_age_hours = 1\nretry_schedule_seconds = [1]\n").await;
    let url = never_ending(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n").await;
    let (id, _) = create_webhook(
        &app,
        json!({"webhook_name": "streamer", "event_types": ["*"], "channels": [{"channel": "webhook", "configs": {"url": url}}]}),
    )
    .await;
    let published = Instant::now();
    publish(&app, "object.created", json!({"n": 1})).await;
    let done =
        eventually(Duration::from_secs(20), || async { deliveries(&app, &id, Some("succeeded")).await.len() == 1 })
            .await;
    let took = published.elapsed();
    assert!(done, "not delivered; log:\n{}", app.log());
    let d = &deliveries(&app, &id, Some("succeeded")).await[0];
    let ms = d["attempts"][0]["duration_ms"].as_u64().unwrap();
    assert!(ms < 1_000, "the 200 came at once, but the attempt took {ms} ms (succeeded {took:?} after publishing)");
}
