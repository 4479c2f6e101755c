//! What draining a backlog of pending writebacks costs (writeback code review): a
//! measurement, not a test. It prints the daemon's CPU time for two backlog sizes and asserts
//! nothing about time (a shared machine makes any bound flaky); run it by hand:
//!
//! ```text
//! cargo test --test it writeback_backlog -- --ignored --nocapture
//! ```
//!
//! The worker's cost per attempt should not grow with the backlog: 8× the jobs should cost
//! about 8× the CPU (before the due index it cost about 38×).

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use warp::Filter;

use crate::support::{eventually, Options, TestApp};
use crate::writeback::{bucket_with, ingest};

/// A receiver that only counts requests (all, and those answered 2xx); answers `status`,
/// which the test flips.
struct Counter {
    addr: std::net::SocketAddr,
    status: Arc<AtomicU16>,
    ok: Arc<AtomicUsize>,
    all: Arc<AtomicUsize>,
}

impl Counter {
    async fn start(status: u16) -> Counter {
        let status = Arc::new(AtomicU16::new(status));
        let (ok, all) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (s, o, a) = (status.clone(), ok.clone(), all.clone());
        let filter = warp::any().and(warp::body::bytes()).map(move |_: bytes::Bytes| {
            let code = s.load(Ordering::SeqCst);
            a.fetch_add(1, Ordering::SeqCst);
            if (200..300).contains(&code) {
                o.fetch_add(1, Ordering::SeqCst);
            }
            warp::reply::with_status("", warp::http::StatusCode::from_u16(code).expect("a status code"))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("its address");
        tokio::spawn(warp::serve(filter).incoming(listener).run());
        Counter { addr, status, ok, all }
    }
}

/// `n` generic writeback jobs left pending (their first attempt failed), then the receiver is
/// fixed and the daemon restarted with them all due: the wall and daemon CPU seconds from the
/// restart until every job is written (loading them included).
async fn drain_backlog(n: usize) -> (f64, f64) {
    let delivery = "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n\
        request_timeout_seconds = 5\nmax_age_seconds = 100000\nretry_schedule_seconds = [2]\n";
    let mut app = TestApp::start_with(Options { delivery_toml: Some(delivery.into()), ..Default::default() }).await;
    let rx = Counter::start(500).await;
    let (bucket, secret) = bucket_with(
        &app,
        "backlog",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"}, "dedup_key": "id",
            "batching": {"mode": "count", "max_batch_size": 1000},
            "writeback": {"writeback_url": format!("http://{}/wb", rx.addr),
                "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}}),
    )
    .await;
    let app_ref = &app;
    futures::stream::iter(0..n)
        .map(|i| {
            let (bucket, secret) = (bucket.clone(), secret.clone());
            async move {
                let r = ingest(app_ref, &bucket, &secret, json!({"id": format!("row-{i}"), "title": format!("t{i}")}))
                    .await;
                assert_eq!(r["status"], "buffered", "{r}");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let first = eventually(Duration::from_secs(900), || async { rx.all.load(Ordering::SeqCst) >= n }).await;
    assert!(first, "first attempts: {}", rx.all.load(Ordering::SeqCst));
    app.stop();
    rx.status.store(204, Ordering::SeqCst);
    // Past the retry delay (2 s ± 20%): every job is due at the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.start_again().await;
    let (t0, cpu0) = (Instant::now(), app.cpu_seconds());
    let drained = eventually(Duration::from_secs(1800), || async { rx.ok.load(Ordering::SeqCst) >= n }).await;
    assert!(drained, "drained {} of {n}", rx.ok.load(Ordering::SeqCst));
    (t0.elapsed().as_secs_f64(), app.cpu_seconds() - cpu0)
}

/// Prints the cost of draining 2,000 and 16,000 pending writebacks.
#[tokio::test]
#[ignore = "a measurement (minutes of CPU), run by hand with --ignored --nocapture"]
async fn writeback_backlog_drain_cpu() {
    let (t1, c1) = drain_backlog(2_000).await;
    let (t8, c8) = drain_backlog(16_000).await;
    println!(
        "2000 jobs: {t1:.1} s, {c1:.2} CPU s; 16000 jobs: {t8:.1} s, {c8:.2} CPU s; CPU ratio {:.1} (8x the jobs)",
        c8 / c1
    );
}
