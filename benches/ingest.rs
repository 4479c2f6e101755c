//! Ingest throughput and latency over loopback, beside a bare warp route (the ceiling).
//!
//! `cargo bench --bench ingest` (release). Each scenario runs its server (hookline on a fresh
//! data dir for each scenario, or the bare route) on its own 2-thread tokio runtime in this
//! process and drives it from another runtime with N concurrent keep-alive connections for
//! `BENCH_SECONDS`, after a warm-up. Printed: requests/s and p50/p99 latency. Every ingest
//! answer is durable (fsynced through group commit). The bare route gets the same requests
//! as ingest (path, headers and body; only the IDs in them differ) and gives the same answer
//! as a created ingest, so the two differ only in what the daemon does. It is measured
//! before a scenario's first round at each connection count and again after each round
//! (with the daemon idle), and each round's share is of the mean of the two bare runs
//! around it: on a shared machine the ceiling itself moves.
//! The last scenario adds a webhook subscribed to `object.created` (a fast local receiver),
//! so each ingest also stores its event and the daemon delivers it: the full pipeline.
//! Also printed: the whole process's CPU time per request (client and server together),
//! which moves less than requests/s when the shared machine's speed does, and the part of
//! it the harness's own client took (`client`; the rest is the bare route's or the daemon's).
//! Each scenario runs at several connection counts (`BENCH_CONNECTIONS`), the bare route
//! measured before its first round at each count and after every round. The summary gives,
//! by scenario and count, the mean rate, how many of the 2 CPUs were busy and the share of
//! the bare runs around each round; then the target's figure: each scenario's ceiling (its
//! best count's mean rate) against the bare route's ceiling (its best count's mean rate, of
//! the bare runs taken around that scenario's rounds, so in the same minutes). At few
//! connections durable ingest is bound by latency, not by its CPU (each request waits for
//! its group's log sync, and the CPUs stay partly idle), while the bare route is CPU-bound
//! already: each is judged at its best. At the end of each scenario the daemon's ingest
//! outcomes are checked to be created or buffered only (a duplicate would be cheaper).
//! Environment: BENCH_SECONDS (default 5), BENCH_CONNECTIONS (default `64,128,256`: a
//! comma-separated list of counts, 1–1024), BENCH_SCENARIOS
//! (comma-separated subset of `immediate,time_window,immediate+webhook`; default all),
//! BENCH_PAD_BYTES (default 0: a string of that many bytes in each event, mapped to the
//! object's `pad` field, for the cost of large objects; the bare route receives it too),
//! BENCH_MAX_BATCH_SIZE (default 1000, kept within 1–1000: the time_window scenario's
//! `max_batch_size`, so its flush size can be varied; the window is 300 s, so the size
//! always triggers the flush),
//! BENCH_ROUNDS (default 1: each scenario runs that many times in a row, with a bare run
//! after each, and the mean and the lowest and highest share are printed; on a noisy
//! machine one round's share can move by up to about 9 points from one minute to the next).

mod common;
use common::{process_cpu, threads_cpu};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use warp::Filter;

const API_KEY: &str = "bench-api-key-0123456789abcdef";

/// glibc's malloc spends a large share of the CPU under load (sled copies tree nodes on
/// every write, serde and hyper allocate per request); mimalloc halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The name of the client runtime's threads (see [`Report::client_cpu_per_request`]).
const CLIENT_THREADS: &str = "bench-client";

/// The name of the daemon's runtime's threads; its store's threads are `hookline-*` and
/// `sled-*` (see [`daemon_cpu`]).
const DAEMON_THREADS: &str = "bench-daemon";

/// A server runtime on its own threads, named `name`; dropped (with its servers) at the end.
fn server_runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("server runtime")
}

/// Builds request number `i` of a scenario.
type MakeRequest = Arc<dyn Fn(&reqwest::Client, u64) -> reqwest::RequestBuilder + Send + Sync>;

/// An ingest request as an upstream sends it: the one form both the bare route and hookline
/// get, so they differ only in what the server does. Request `i` carries event `first + i`.
fn ingest_request(
    url: String,
    secret: String,
    body: Arc<dyn Fn(u64) -> Vec<u8> + Send + Sync>,
    first: u64,
) -> MakeRequest {
    Arc::new(move |c, i| {
        c.post(&url)
            .header("content-type", "application/json")
            .header("x-webhook-secret", &secret)
            .body(body(first + i))
    })
}

struct Report {
    name: &'static str,
    rps: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    /// CPU time of this whole process (client, server, daemon threads) per request, warm-up
    /// included: steadier than requests/s on a shared machine, where the CPU's speed moves.
    cpu_per_request: Option<Duration>,
    /// The part of it spent in the harness's own client (its runtime's threads): the rest is
    /// the server's, the daemon's or the bare route's.
    client_cpu_per_request: Option<Duration>,
    /// For a bare run: the CPU the (idle) daemon beside it took meanwhile, which the bare
    /// route's rate would pay for.
    daemon_cpu: Option<Duration>,
}

/// CPU time so far of the daemon's threads: its runtime's, its store's and sled's.
fn daemon_cpu() -> Option<Duration> {
    Some(threads_cpu(DAEMON_THREADS)? + threads_cpu("hookline-")? + threads_cpu("sled")?)
}

/// Drives `make_req(i)` with `conns` concurrent workers for `secs` seconds (after 1 s warm-up).
async fn drive(name: &'static str, client: reqwest::Client, conns: usize, secs: u64, make_req: MakeRequest) -> Report {
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let cpu_before = process_cpu();
    let client_before = threads_cpu(CLIENT_THREADS);
    let warmup = Instant::now() + Duration::from_secs(1);
    let end = warmup + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, counter, errors, make_req) = (client.clone(), counter.clone(), errors.clone(), make_req.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let now = Instant::now();
                if now >= end {
                    return lat;
                }
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let ok = match make_req(&client, i).send().await {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let _ = r.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                if now >= warmup {
                    if ok {
                        lat.push(now.elapsed());
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    let sent = counter.load(Ordering::Relaxed).max(1);
    let per_request = |after: Option<Duration>, before: Option<Duration>| {
        after.zip(before).map(|(after, before)| after.saturating_sub(before) / sent as u32)
    };
    let cpu_per_request = per_request(process_cpu(), cpu_before);
    let client_cpu_per_request = per_request(threads_cpu(CLIENT_THREADS), client_before);
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    Report {
        name,
        rps: all.len() as f64 / secs as f64,
        p50: pct(0.50),
        p99: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
        cpu_per_request,
        client_cpu_per_request,
        daemon_cpu: None,
    }
}

/// `BENCH_CONNECTIONS`: a comma-separated list of connection counts, each scenario run at
/// each (default 64, 128 and 256).
fn connection_counts() -> Vec<usize> {
    let raw = std::env::var("BENCH_CONNECTIONS").unwrap_or_else(|_| "64,128,256".into());
    let counts: Vec<usize> =
        raw.split(',').filter_map(|c| c.trim().parse().ok()).filter(|&c| (1..=1024).contains(&c)).collect();
    assert!(!counts.is_empty(), "BENCH_CONNECTIONS: connection counts from 1 to 1024, comma-separated (got {raw:?})");
    counts
}

/// hookline in this process on a fresh data dir, one per scenario: a scenario run on the
/// store an earlier one grew would pay for it (sled's cache and file, the memory this VM
/// provides slowly: see the README's Known limitations), so the order of the scenarios
/// would weigh on their figures.
struct Daemon {
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    fn start(rt: &tokio::runtime::Runtime) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = hookline::config::Config::default();
        config.storage.path = dir.path().join("data");
        config.auth.api_keys = vec![API_KEY.into()];
        config.delivery.allow_insecure_http = true;
        config.delivery.allow_private_networks = true;
        config.server.shutdown_timeout_seconds = 5;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr, task) = rt.block_on(async {
            // As the daemon's binary binds (its listen backlog).
            let listener = hookline::http::listen::bind(([127, 0, 0, 1], 0).into()).expect("bind");
            let addr = listener.local_addr().expect("addr");
            let shutdown = async move {
                let _ = stopped.await;
            };
            (addr, tokio::spawn(hookline::app::run(config, listener, shutdown)))
        });
        Daemon { base: format!("http://{addr}"), stop, task, _dir: dir }
    }

    /// Stops it as a SIGTERM would (the store flushed), before its data dir goes.
    fn stop(self, rt: &tokio::runtime::Runtime) {
        let _ = self.stop.send(());
        match rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), self.task).await }) {
            Ok(Ok(Ok(()))) => {}
            other => panic!("the daemon did not stop cleanly: {other:?}"),
        }
    }
}

/// Every run's figures, by scenario and connection count, for the summary.
#[derive(Default)]
struct Sweep {
    /// The bare route's runs: (the scenario they were taken around, connection count,
    /// (rate, CPUs busy) of each).
    bare: Vec<BareRuns>,
    runs: Vec<ScenarioRuns>,
}

/// Bare runs taken around one scenario's rounds at one connection count.
type BareRuns = (&'static str, usize, Vec<(f64, f64)>);
/// A scenario at a connection count, and its rounds: (rate, CPUs busy, share of the bare
/// runs around it).
type ScenarioRuns = (&'static str, usize, Vec<(f64, f64, f64)>);

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = v.into_iter().fold((0.0, 0), |(s, n), x| (s + x, n + 1));
    sum / f64::from(n.max(1))
}

/// How many CPUs a run kept busy: rate × CPU per request (a run bound by latency, not by
/// the CPU, leaves some idle).
fn busy(r: &Report) -> f64 {
    r.cpu_per_request.map_or(0.0, |c| r.rps * c.as_secs_f64())
}

impl Sweep {
    fn bare(&mut self, mode: &'static str, conns: usize, r: &Report) {
        match self.bare.iter_mut().find(|(m, c, _)| *m == mode && *c == conns) {
            Some((_, _, runs)) => runs.push((r.rps, busy(r))),
            None => self.bare.push((mode, conns, vec![(r.rps, busy(r))])),
        }
    }

    fn scenario(&mut self, mode: &'static str, conns: usize, r: &Report, share: f64) {
        match self.runs.iter_mut().find(|(m, c, _)| *m == mode && *c == conns) {
            Some((_, _, rounds)) => rounds.push((r.rps, busy(r), share)),
            None => self.runs.push((mode, conns, vec![(r.rps, busy(r), share)])),
        }
    }

    /// The figures by scenario and connection count, then the target's figure: each
    /// scenario's ceiling (its best count's mean rate) against the bare route's ceiling (its
    /// best count's mean rate) in the same minutes, the bare runs taken around that
    /// scenario's rounds. Each at its best count, so that neither is judged where it is
    /// bound by something else than its CPU (ingest by the log syncs at few connections),
    /// and against bare runs of the same stretch, so that the machine's drift between
    /// scenarios does not fall on the ratio.
    fn print(&self) {
        println!();
        println!("summary: means by connection count (share: of the bare runs around each round, at its count)");
        let mut modes: Vec<&'static str> = Vec::new();
        for (mode, conns, rounds) in &self.runs {
            if !modes.contains(mode) {
                modes.push(mode);
            }
            let bare: Vec<(f64, f64)> =
                self.bare.iter().filter(|b| b.0 == *mode && b.1 == *conns).flat_map(|b| b.2.clone()).collect();
            println!(
                "  {mode:<26} {conns:>4} connections {:>9.0} req/s  {:.2} CPUs busy  {:>5.1}% of the bare route \
                 ({:.0} req/s, {:.2} CPUs busy)",
                mean(rounds.iter().map(|r| r.0)),
                mean(rounds.iter().map(|r| r.1)),
                mean(rounds.iter().map(|r| r.2)),
                mean(bare.iter().map(|b| b.0)),
                mean(bare.iter().map(|b| b.1)),
            );
        }
        println!("the target's figure: ceiling against ceiling (each at its best connection count, the bare runs");
        println!("around this scenario's rounds):");
        let rate = |r: &ScenarioRuns| mean(r.2.iter().map(|x| x.0));
        let bare_rate = |b: &BareRuns| mean(b.2.iter().map(|x| x.0));
        for mode in modes {
            let best = self.runs.iter().filter(|r| r.0 == mode).max_by(|a, b| rate(a).total_cmp(&rate(b)));
            let bare = self.bare.iter().filter(|b| b.0 == mode).max_by(|a, b| bare_rate(a).total_cmp(&bare_rate(b)));
            if let (Some(run), Some(bare)) = (best, bare) {
                println!(
                    "  {mode:<26} {:.1}% of the bare route ({:.0} req/s at {} connections; the bare route {:.0} at {})",
                    100.0 * rate(run) / bare_rate(bare),
                    rate(run),
                    run.1,
                    bare_rate(bare),
                    bare.1
                );
            }
        }
    }
}

fn print(r: &Report, ceiling: Option<f64>) {
    let share =
        ceiling.map(|c| format!("  ({:.0}% of bare, before/after mean)", 100.0 * r.rps / c)).unwrap_or_default();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let client = r.client_cpu_per_request.map(|c| format!(" (client {:.0})", us(c))).unwrap_or_default();
    let cpu = r
        .cpu_per_request
        .map(|c| format!("   cpu {:>4.0} µs/req{client}, {:.2} CPUs busy", us(c), busy(r)))
        .unwrap_or_default();
    let idle = r.daemon_cpu.map(|d| format!("  (the idle daemon: {:.0} ms of CPU)", d.as_secs_f64() * 1e3));
    let share = share + &idle.unwrap_or_default();
    println!(
        "{:<26} {:>9.0} req/s   p50 {:>7.2} ms   p99 {:>7.2} ms{}   errors {}{}",
        r.name,
        r.rps,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        cpu,
        r.errors,
        share
    );
}

/// The daemon's `/metrics` text.
fn scrape(rt: &tokio::runtime::Runtime, client: &reqwest::Client, base: &str) -> String {
    rt.block_on(async { client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap() })
}

/// The samples of metric `name` in a `/metrics` text, summed by their first label's value
/// (`""` for a sample without labels).
fn metric_sum(metrics: &str, name: &str) -> Vec<(String, f64)> {
    let mut sums: Vec<(String, f64)> = Vec::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((labels, value)) => (labels, value),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(value) => ("", value),
                None => continue, // another metric whose name starts with this one
            },
        };
        let first = labels.split(',').next().and_then(|l| l.split_once('=')).map(|(_, v)| v.trim_matches('"'));
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let key = first.unwrap_or_default().to_string();
        match sums.iter_mut().find(|(k, _)| *k == key) {
            Some((_, sum)) => *sum += value,
            None => sums.push((key, value)),
        }
    }
    sums
}

/// Group-commit figures from `/metrics` between two scrapes: how many batches each fsync
/// covered. (The metrics recorder is the process's, shared by every daemon the bench starts.)
fn print_commit_stats(metrics: &str, before: &str) {
    let sum = |name: &str| -> f64 {
        let total = |text: &str| metric_sum(text, name).iter().map(|(_, v)| v).sum::<f64>();
        total(metrics) - total(before)
    };
    let commits = sum("hookline_store_commits_total");
    let batches = sum("hookline_store_commit_batches_total");
    let secs = sum("hookline_store_commit_duration_seconds_sum");
    let flush = sum("hookline_store_flush_duration_seconds_sum") / sum("hookline_store_flush_duration_seconds_count");
    if commits > 0.0 {
        println!(
            "{:<26} {:.0} group commits this round, {:.1} batches per commit, {:.2} ms per commit (log write + \
             fsync), of which flush {:.2} ms",
            "",
            commits,
            batches / commits,
            1e3 * secs / commits,
            1e3 * flush
        );
    }
}

fn main() {
    // As the daemon's binary does; for the bare route too (the same process).
    hookline::app::disable_transparent_huge_pages();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let secs = env_num("BENCH_SECONDS", 5);
    let counts = connection_counts();
    let only = std::env::var("BENCH_SCENARIOS").unwrap_or_default();
    let rounds = env_num("BENCH_ROUNDS", 1).max(1);
    // Named apart from the server's threads, so a per-thread CPU reading (`/proc/…/task`)
    // tells the harness's client from the daemon.
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(CLIENT_THREADS)
        .enable_all()
        .build()
        .expect("rt");
    let most = counts.iter().copied().max().unwrap_or(64);
    let client = reqwest::Client::builder().pool_max_idle_per_host(most).build().expect("client");
    let listed = counts.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ");
    println!("ingest bench: {listed} connections, {secs} s per round, {rounds} round(s) per scenario, loopback");

    // 1. The ceiling: a bare warp route answering 200. It gets the requests ingest gets, byte
    // for byte but for the IDs (the same path, headers and body, with a bucket ID and a secret
    // of the same form), and answers the same JSON as a created ingest: the ceiling of the
    // frontend for this traffic, not for a lighter request.
    let answer =
        json!({"handled": true, "status": "created", "object_id": hookline::ids::ObjectId::generate().as_str()});
    let bare_rt = server_runtime("bench-bare");
    let bare_addr = bare_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let route = warp::post().and(warp::body::bytes()).map(move |_b: bytes::Bytes| {
            warp::reply::with_status(warp::reply::json(&answer), warp::http::StatusCode::OK)
        });
        tokio::spawn(warp::serve(route).incoming(listener).run());
        addr
    });
    let pad_bytes = env_num("BENCH_PAD_BYTES", 0) as usize;
    if pad_bytes > 0 {
        println!("each event carries a {pad_bytes}-byte string, mapped into its object");
    }
    // Each body is put together from text made once: serializing a long string per request
    // (escaping it byte by byte) would be the client's cost, charged to both routes.
    let pad = match pad_bytes {
        0 => String::new(),
        n => format!(r#","pad":"{}""#, "x".repeat(n)),
    };
    let body =
        Arc::new(move |i: u64| format!(r#"{{"type":"item.ready","data":{{"id":"e{i}","n":{i}{pad}}}}}"#).into_bytes());
    let bare_url =
        format!("http://{bare_addr}/v1/buckets/{}/source-adapter/ingest", hookline::ids::BucketId::generate());
    let bare_secret = const_hex::encode(rand::random::<[u8; 32]>());
    let bare_req = ingest_request(bare_url, bare_secret, body.clone(), 0);
    // The machine is shared: the ceiling is measured again after every round of every
    // scenario, and each round's share is of the mean of the bare runs just before and after it.
    let run_bare = |conns: usize| {
        let before = daemon_cpu();
        let mut report = client_rt.block_on(drive("bare warp route", client.clone(), conns, secs, bare_req.clone()));
        report.daemon_cpu = daemon_cpu().zip(before).map(|(after, before)| after.saturating_sub(before));
        report
    };

    // 2. hookline itself, in-process (see `Daemon`).
    let hook_rt = server_runtime(DAEMON_THREADS);
    // A fast receiver for the last scenario's webhook, on the server runtime.
    let delivered = Arc::new(AtomicU64::new(0));
    let rx_addr = hook_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let d = delivered.clone();
        let route = warp::post().map(move || {
            d.fetch_add(1, Ordering::Relaxed);
            warp::reply()
        });
        tokio::spawn(warp::serve(route).incoming(listener).run());
        addr
    });
    // The contract's range: another value would only fail the adapter's PATCH.
    let max_batch_size = env_num("BENCH_MAX_BATCH_SIZE", 1000).clamp(1, 1000);
    if max_batch_size != 1000 {
        println!("time_window batches of {max_batch_size} events");
    }
    let mut sweep = Sweep::default();
    for (mode, batching) in [
        ("ingest immediate", json!({"mode": "immediate"})),
        ("ingest time_window", json!({"mode": "time_window", "window_seconds": 300, "max_batch_size": max_batch_size})),
        ("ingest immediate+webhook", json!({"mode": "immediate"})),
    ] {
        if !only.is_empty() && !only.split(',').any(|o| mode.trim_start_matches("ingest ") == o) {
            continue;
        }
        let daemon = Daemon::start(&hook_rt);
        let base = daemon.base.clone();
        if mode.ends_with("+webhook") {
            client_rt.block_on(async {
                let body = json!({"webhook_name": "bench", "event_types": ["object.created"],
                    "channels": [{"channel": "webhook", "configs": {"url": format!("http://{rx_addr}/")}}]});
                let r = client
                    .post(format!("{base}/v1/organizations/webhooks"))
                    .bearer_auth(API_KEY)
                    .json(&body)
                    .send()
                    .await
                    .expect("create webhook");
                assert_eq!(r.status(), 201, "create webhook");
            });
        }
        let (bucket, secret) = client_rt.block_on(async {
            // The daemon may still be starting.
            let mut tries = 0;
            let bucket = loop {
                let r = client
                    .post(format!("{base}/v1/buckets"))
                    .bearer_auth(API_KEY)
                    .json(&json!({"bucket_name": mode, "bucket_schema": {"properties": {"n": {"type": "int"}, "pad": {"type": "string"}}}}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        break r.json::<serde_json::Value>().await.unwrap()["bucket_id"].as_str().unwrap().to_string()
                    }
                    _ if tries < 100 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!("create bucket: {other:?}"),
                }
            };
            let mut field_mapping = json!({"data.n": "n"});
            if pad_bytes > 0 {
                field_mapping["data.pad"] = "pad".into();
            }
            let r: serde_json::Value = client
                .patch(format!("{base}/v1/buckets/{bucket}"))
                .bearer_auth(API_KEY)
                .json(&json!({"source_adapter": {"adapter_type": "generic_webhook", "dedup_key": "data.id",
                    "field_mapping": field_mapping, "batching": batching}}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (bucket, r["source_adapter"]["webhook_secret"].as_str().unwrap().to_string())
        });
        let url = format!("{base}/v1/buckets/{bucket}/source-adapter/ingest");
        // Each round's events are new ones (not duplicates of an earlier round's), whatever
        // its connection count.
        let mut round_no = 0;
        for &conns in &counts {
            // Measured before the scenario's first round at each count, then after every round.
            let mut bare = run_bare(conns);
            print(&bare, None);
            sweep.bare(mode, conns, &bare);
            let mut shares = Vec::with_capacity(rounds as usize);
            for _ in 0..rounds {
                let (b, url, secret) = (body.clone(), url.clone(), secret.clone());
                let first = round_no * 1_000_000_000;
                round_no += 1;
                let received_before = delivered.load(Ordering::Relaxed);
                let metrics_before = scrape(&client_rt, &client, &base);
                let report =
                    client_rt.block_on(drive(mode, client.clone(), conns, secs, ingest_request(url, secret, b, first)));
                let received = delivered.load(Ordering::Relaxed) - received_before;
                let m = scrape(&client_rt, &client, &base);
                // The daemon must be idle while the ceiling is measured again: let queued
                // deliveries drain (until none arrived for a second, at most a minute).
                let mut last = delivered.load(Ordering::Relaxed);
                for _ in 0..60 {
                    std::thread::sleep(Duration::from_secs(1));
                    let now = delivered.load(Ordering::Relaxed);
                    if now == last {
                        break;
                    }
                    last = now;
                }
                let bare_after = run_bare(conns);
                let ceiling = (bare.rps + bare_after.rps) / 2.0;
                shares.push(100.0 * report.rps / ceiling);
                sweep.scenario(mode, conns, &report, 100.0 * report.rps / ceiling);
                print(&report, Some(ceiling));
                if mode.ends_with("+webhook") {
                    println!("{:<26} {received} deliveries received by the end of the run (the rest were queued)", "");
                }
                print_commit_stats(&m, &metrics_before);
                print(&bare_after, None);
                sweep.bare(mode, conns, &bare_after);
                bare = bare_after;
            }
            if shares.len() > 1 {
                let mean = shares.iter().sum::<f64>() / shares.len() as f64;
                let (min, max) = shares.iter().fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(*s), hi.max(*s)));
                println!(
                    "{mode} at {conns} connections: {} rounds, {mean:.1}% of the bare route on average (rounds \
                     ranged {min:.0}–{max:.0}%)",
                    shares.len()
                );
            }
        }
        // Every request was a new event, answered created or buffered (a duplicate would be
        // cheaper, and would flatter the rate).
        let outcomes = metric_sum(&scrape(&client_rt, &client, &base), "hookline_ingest_requests_total");
        let other: Vec<_> = outcomes.iter().filter(|(o, n)| *n > 0.0 && o != "created" && o != "buffered").collect();
        assert!(other.is_empty(), "{mode}: ingest outcomes other than created or buffered: {other:?}");
        daemon.stop(&hook_rt);
    }
    sweep.print();
    drop(hook_rt);
    drop(bare_rt);
}
