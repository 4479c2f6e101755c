//! Delivery benchmark (not a test): publishes N events over HTTP, fanned out to W webhooks
//! that all point at a fast local receiver, and prints deliveries/s and the p50/p99
//! publish→receive latency.
//!
//! Run: `cargo bench --bench delivery` (env: BENCH_EVENTS=20000 BENCH_WEBHOOKS=4
//! BENCH_PUBLISHERS=256). The daemon runs in-process (`hookline::app::run`) on 127.0.0.1
//! with a temp data dir; the receiver shares the same machine.
//!
//! The machine is shared and its speed moves (the same build has measured 13–38k
//! deliveries/s), so the run is bracketed by a reference: plain HTTP POSTs from 64
//! concurrent tasks of this process to a bare local route for `BENCH_REFERENCE_SECONDS`
//! (default 3; 0 skips it), before and after. Deliveries/s is also printed as a share of
//! their mean: what the machine could do at that moment with no daemon in between.
//!
//! The daemon runs on a runtime of its own (2 worker threads, as on the 2-core machine the
//! figures come from), apart from the publishers and the receiver, as it would in its own
//! process. From the publishing's start until the last delivery, a probe on a thread of its
//! own asks the daemon's `GET /healthz` every 20 ms and the latency of its answers is printed:
//! what a liveness probe sees during a wave of deliveries. With `BENCH_DOWN_SECONDS=N` the
//! webhooks point at a closed local port instead: every attempt fails and is retried, and
//! the probe runs for N seconds after the publishing (the figures then are the probe's and
//! the attempts').

mod common;
use common::process_cpu;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookline::config::Config;
use warp::Filter;

const API_KEY: &str = "bench-api-key-0123456789abcdef";

/// glibc's malloc spends a large share of the CPU under load (sled copies tree nodes on
/// every write, serde and hyper allocate per request); mimalloc halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Plain POSTs per second to a bare local route from 64 concurrent tasks for `secs`: the
/// machine's speed at that moment, for reading the delivery figures beside it.
async fn reference(client: &reqwest::Client, url: &str, secs: u64) -> f64 {
    let end = Instant::now() + Duration::from_secs(secs);
    let body = serde_json::to_vec(&serde_json::json!({"event_type": "object.created", "payload": {"i": 1}}))
        .unwrap_or_default();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url, body) = (client.clone(), url.to_string(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                let sent = client.post(&url).header("content-type", "application/json").body(body.clone()).send().await;
                if let Ok(r) = sent {
                    if r.status().is_success() && r.bytes().await.is_ok() {
                        n += 1;
                    }
                }
            }
            n
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap_or(0);
    }
    n as f64 / secs as f64
}

fn main() -> anyhow::Result<()> {
    // As the daemon's binary does.
    hookline::app::disable_transparent_huge_pages();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let daemon_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).thread_name("daemon").enable_all().build()?;
    rt.block_on(run(daemon_rt.handle().clone()))
}

/// Asks `url` every 20 ms, from a thread and runtime of its own, until `stop`; returns the
/// latencies (ms) of the answers, and how many probes failed or took over 5 s.
fn probe(url: String, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<(Vec<f64>, usize)> {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return (Vec::new(), 0);
        };
        rt.block_on(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
            let (mut lat, mut failed) = (Vec::new(), 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t0 = Instant::now();
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => lat.push(t0.elapsed().as_secs_f64() * 1000.0),
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (lat, failed)
        })
    })
}

async fn run(daemon_rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    let events = env_usize("BENCH_EVENTS", 20_000);
    let webhooks = env_usize("BENCH_WEBHOOKS", 4);
    let publishers = env_usize("BENCH_PUBLISHERS", 256);
    let total = events * webhooks;

    // Receiver: note when each delivery arrives, keyed by its webhook-id.
    let received: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let done = Arc::new(tokio::sync::Notify::new());
    let (r, d) = (received.clone(), done.clone());
    let filter = warp::header::<String>("webhook-id").map(move |id: String| {
        let mut g = r.lock().unwrap();
        g.push((id, Instant::now()));
        if g.len() == total {
            d.notify_one();
        }
        warp::reply()
    });
    let rx_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let down_secs = env_usize("BENCH_DOWN_SECONDS", 0) as u64;
    let rx_addr = if down_secs > 0 {
        // A port just bound and released: nothing listens there.
        std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?
    } else {
        rx_listener.local_addr()?
    };
    tokio::spawn(warp::serve(filter).incoming(rx_listener).run());
    // The reference's bare route, on its own port so it counts nothing above.
    let ref_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let ref_url = format!("http://{}/", ref_listener.local_addr()?);
    tokio::spawn(warp::serve(warp::post().map(warp::reply)).incoming(ref_listener).run());
    let reference_secs = env_usize("BENCH_REFERENCE_SECONDS", 3) as u64;
    let ref_client = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let ref_before = if reference_secs > 0 { reference(&ref_client, &ref_url, reference_secs).await } else { 0.0 };

    // Daemon.
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.storage.path = dir.path().join("data");
    config.auth.api_keys = vec![API_KEY.into()];
    config.delivery.allow_insecure_http = true;
    config.delivery.allow_private_networks = true;
    config.delivery.max_in_flight_per_webhook = 64;
    // As the daemon's binary binds (its listen backlog), within the daemon's runtime.
    let listener = daemon_rt.spawn(async { hookline::http::listen::bind(([127, 0, 0, 1], 0).into()) }).await??;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = daemon_rt.spawn(hookline::app::run(config, listener, async move {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::builder().pool_max_idle_per_host(publishers).build()?;
    for _ in 0..200 {
        if client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..webhooks {
        let body = serde_json::json!({"webhook_name": format!("bench {i}"), "event_types": ["*"],
            "channels": [{"channel": "webhook", "configs": {"url": format!("http://{rx_addr}/hook/{i}")}}]});
        let resp =
            client.post(format!("{base}/v1/organizations/webhooks")).bearer_auth(API_KEY).json(&body).send().await?;
        anyhow::ensure!(resp.status() == 201, "create webhook: {}", resp.text().await?);
    }

    // Publish N events from `publishers` concurrent clients.
    let published: Arc<Mutex<HashMap<String, Instant>>> = Arc::new(Mutex::new(HashMap::with_capacity(events)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let cpu_before = process_cpu();
    let probe_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = probe(format!("{base}/healthz"), probe_stop.clone());
    let mut tasks = Vec::new();
    for _ in 0..publishers {
        let (client, base, published, next) = (client.clone(), base.clone(), published.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= events {
                    break;
                }
                let t0 = Instant::now();
                let body = serde_json::json!({"event_type": "object.created", "payload": {"i": i, "object_id": format!("obj_{i}")}});
                let resp = client.post(format!("{base}/v1/events")).bearer_auth(API_KEY).json(&body).send().await;
                let Ok(resp) = resp else { continue };
                let v: serde_json::Value = resp.json().await.unwrap_or_default();
                if let Some(e) = v["event_id"].as_str() {
                    published.lock().unwrap().insert(e.trim_start_matches("evt_").to_string(), t0);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let publish_elapsed = started.elapsed();
    let finished = if down_secs > 0 {
        tokio::time::sleep(Duration::from_secs(down_secs)).await;
        false
    } else {
        tokio::time::timeout(Duration::from_secs(300), done.notified()).await.is_ok()
    };
    let elapsed = started.elapsed();
    let cpu = process_cpu().zip(cpu_before).map(|(after, before)| after - before);
    probe_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut probes, probes_failed) =
        tokio::task::spawn_blocking(move || prober.join().unwrap_or_default()).await.unwrap_or_default();
    probes.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let got = received.lock().unwrap().clone();
    let published = published.lock().unwrap().clone();
    let ref_after = if reference_secs > 0 { reference(&ref_client, &ref_url, reference_secs).await } else { 0.0 };

    // webhook-id = del_{event ulid}_{webhook}_{channel}: join back to the publish time.
    let mut lat: Vec<f64> = got
        .iter()
        .filter_map(|(id, at)| {
            let evt = id.strip_prefix("del_")?.split('_').next()?;
            published.get(evt).map(|t0| at.duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    println!("delivery bench: {events} events x {webhooks} webhooks = {total} deliveries, {publishers} publishers");
    println!(
        "  published {} events in {:.2}s ({:.0} events/s)",
        published.len(),
        publish_elapsed.as_secs_f64(),
        published.len() as f64 / publish_elapsed.as_secs_f64()
    );
    let rate = got.len() as f64 / elapsed.as_secs_f64();
    println!(
        "  received {} deliveries in {:.2}s: {:.0} deliveries/s{}",
        got.len(),
        elapsed.as_secs_f64(),
        rate,
        if finished || down_secs > 0 { "" } else { " (TIMED OUT before all arrived)" }
    );
    if reference_secs > 0 {
        println!(
            "  reference (plain POSTs to a bare route, no daemon): {:.0} req/s before, {:.0} after; \
             deliveries/s = {:.0}% of their mean",
            ref_before,
            ref_after,
            100.0 * rate / ((ref_before + ref_after) / 2.0)
        );
    }
    if let Some(cpu) = cpu {
        // Steadier than deliveries/s on a shared machine: the whole process (publishers,
        // daemon, receiver) per delivery.
        println!(
            "  cpu: {:.2} s for the run, {:.0} µs per delivery (publishing included)",
            cpu.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / got.len().max(1) as f64
        );
    }
    println!(
        "  publish->receive latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.50),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    let at = |p: f64| {
        probes
            .get(((probes.len() as f64 * p) as usize).min(probes.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "  GET /healthz every 20 ms meanwhile: {} answered, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{}",
        probes.len(),
        at(0.50),
        at(0.99),
        probes.last().copied().unwrap_or(f64::NAN),
        if probes_failed > 0 { format!(" ({probes_failed} failed or over 5 s)") } else { String::new() }
    );
    // Store side: how many group commits carried how many batches, and their latency.
    let m = client.get(format!("{base}/metrics")).send().await?.text().await?;
    let val = |name: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    if down_secs > 0 {
        println!(
            "  receiver down: {:.0} delivery attempts in {} s after the publishing, {:.0} deliveries queued at the end",
            val("hookline_delivery_attempts_total"),
            down_secs,
            val("hookline_delivery_queue_depth")
        );
    }
    let commits = val("hookline_store_commits_total");
    println!(
        "  store: {:.0} group commits, {:.1} batches/commit, mean commit (log write + fsync) {:.1} ms",
        commits,
        val("hookline_store_commit_batches_total") / commits,
        val("hookline_store_commit_duration_seconds_sum") * 1000.0
            / val("hookline_store_commit_duration_seconds_count")
    );
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), daemon).await;
    Ok(())
}
