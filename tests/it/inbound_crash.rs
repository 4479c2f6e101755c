//! Crash test: ingest under load, `kill -9` at a random moment, restart on the same data dir,
//! and check that every event answered 2xx is an object or still buffered, that none became
//! two objects, and that re-sending any of them says `duplicate` with the same object ID.
//! A second test kills the daemon while its log writes into a reused segment.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};

use crate::inbound::{bucket_with_adapter, ingest};
use crate::support::{eventually, TestApp};

const ROUNDS: usize = 5;
const SENDERS: usize = 16;

fn event(id: u64) -> Value {
    json!({"type": "item.ready", "data": {"id": format!("e{id}"), "n": id}})
}

async fn all_objects(app: &TestApp, bucket: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (s, b) = app.get(&format!("/v1/buckets/{bucket}/objects?limit=1000{q}")).await;
        assert_eq!(s, 200);
        out.extend(b["results"].as_array().unwrap().iter().cloned());
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

#[tokio::test]
async fn every_acknowledged_event_survives_kill_9_exactly_once() {
    let mut app = TestApp::start().await;
    let schema = json!({"n": {"type": "int"}});
    let adapter = |mode: Value| {
        json!({"adapter_type": "generic_webhook", "dedup_key": "data.id", "field_mapping": {"data.n": "n"},
            "batching": mode})
    };
    let (imm, imm_secret) =
        bucket_with_adapter(&app, "imm", schema.clone(), adapter(json!({"mode": "immediate"}))).await;
    // Small batches so that size flushes happen under load too.
    let (win, win_secret) = bucket_with_adapter(
        &app,
        "win",
        schema,
        adapter(json!({"mode": "time_window", "window_seconds": 5, "max_batch_size": 7})),
    )
    .await;
    let targets = [(imm.clone(), imm_secret.clone()), (win.clone(), win_secret.clone())];
    // (bucket index, event id) → object ID, for every 2xx.
    let acked: Arc<Mutex<BTreeMap<(usize, u64), String>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));

    for round in 0..ROUNDS {
        let base = app.base.clone();
        // Set at the kill: senders start no new request (a pooled connection may otherwise
        // carry them over to the restarted daemon and the round would never end).
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..SENDERS {
            let (acked, next, base, targets, stop) =
                (acked.clone(), next.clone(), base.clone(), targets.clone(), stop.clone());
            let client = crate::support::client();
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    let t = (id % 2) as usize;
                    let (bucket, secret) = &targets[t];
                    let resp = client
                        .post(format!("{base}/v1/buckets/{bucket}/source-adapter/ingest"))
                        .header("x-webhook-secret", secret)
                        .json(&event(id))
                        .send()
                        .await;
                    let Ok(resp) = resp else { return };
                    if resp.status().is_success() {
                        let Ok(b) = resp.json::<Value>().await else { return };
                        let oid = b["object_id"].as_str().expect("object_id").to_string();
                        acked.lock().unwrap().insert((t, id), oid);
                    } else {
                        return;
                    }
                }
            }));
        }
        // The kill comes at a random moment once this round's load is under way: a fixed
        // delay could end a round before a busy machine acknowledged anything.
        let before = acked.lock().unwrap().len();
        let started = std::time::Instant::now();
        while acked.lock().unwrap().len() == before && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let wait = rand::rng().random_range(50..350);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        stop.store(true, Ordering::Relaxed);
        app.crash_restart().await;
        for t in tasks {
            let _ = t.await;
        }
        assert!(acked.lock().unwrap().len() > before, "round {round}: nothing was acknowledged");
    }

    let acked = acked.lock().unwrap().clone();
    // Re-sending any acknowledged event says duplicate, naming the same object.
    for ((t, id), oid) in &acked {
        let (bucket, secret) = &targets[*t];
        let (s, b) = ingest(&app, bucket, Some(secret), &event(*id)).await;
        assert_eq!(s, 200);
        assert_eq!(b["status"], "duplicate", "event {id} on bucket {t}: {b}");
        assert_eq!(b["object_id"], oid.as_str(), "event {id}");
    }
    // Let the last window flush, then every acknowledged event is exactly one object.
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.get(&format!("/v1/buckets/{win}/source-adapter/status")).await.1["events_buffered"] == 0
        })
        .await
    );
    for (t, bucket) in [imm.as_str(), win.as_str()].into_iter().enumerate() {
        let objects = all_objects(&app, bucket).await;
        let mut seen = BTreeSet::new();
        for o in &objects {
            let ext = o["source"]["external_id"].as_str().unwrap().to_string();
            assert!(seen.insert(ext.clone()), "event {ext} became two objects");
        }
        let ids: BTreeSet<&str> = objects.iter().map(|o| o["object_id"].as_str().unwrap()).collect();
        for ((bt, id), oid) in &acked {
            if *bt == t {
                assert!(ids.contains(oid.as_str()), "acknowledged event {id} is not an object");
            }
        }
    }
    eprintln!("crash test: {} acknowledged events over {ROUNDS} kill -9 rounds", acked.len());
}

/// Whether a log segment file (`wal/*.wal`) is one made from a retired segment and already
/// written to: it holds records stamped with its own number followed by older ones (see
/// `store/wal.rs`: a reused file is not zeroed, its old records read as the end).
fn reused_and_written(path: &std::path::Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else { return false };
    let u64_at = |at: usize| bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let Some(own) = u64_at(16) else { return false };
    let (mut mine, mut older) = (0, 0);
    for at in (4096..bytes.len().saturating_sub(16)).step_by(4096) {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        match u64_at(at + 8) {
            Some(no) if len > 0 && no == own => mine += 1,
            Some(no) if len > 0 && no < own => older += 1,
            _ => {}
        }
    }
    mine > 0 && older > 0
}

/// The log reuses retired segments without zeroing them: a `kill -9` while it writes into one
/// loses no acknowledged event and replays none of the old records after the new ones (the
/// adapter's counters are written with every ingest: an old record replayed last would set
/// them back).
#[tokio::test]
async fn a_kill_9_while_the_log_writes_a_reused_segment_loses_nothing() {
    let mut app = TestApp::start().await;
    let schema = json!({"n": {"type": "int"}, "pad": {"type": "string"}});
    // Large events fill the log's 16 MiB segments in a few hundred ingests.
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "data.id",
        "field_mapping": {"data.n": "n", "data.pad": "pad"}, "batching": {"mode": "immediate"}});
    let (bucket, secret) = bucket_with_adapter(&app, "big", schema, adapter).await;
    let pad = "x".repeat(60_000);
    let big = move |id: u64| json!({"type": "item.ready", "data": {"id": format!("e{id}"), "n": id, "pad": pad}});
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (acked, next, stop, big) = (acked.clone(), next.clone(), stop.clone(), big.clone());
        let url = format!("{}/v1/buckets/{bucket}/source-adapter/ingest", app.base);
        let (client, secret) = (crate::support::client(), secret.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let Ok(resp) = client.post(&url).header("x-webhook-secret", &secret).json(&big(id)).send().await else {
                    return;
                };
                if !resp.status().is_success() {
                    return;
                }
                let Ok(b) = resp.json::<Value>().await else { return };
                acked.lock().unwrap().insert(id, b["object_id"].as_str().expect("object_id").to_string());
            }
        }));
    }
    let wal = app.data_dir.join("wal");
    let started = std::time::Instant::now();
    let in_reused = || {
        std::fs::read_dir(&wal)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == "wal") && reused_and_written(&e.path()))
    };
    while !in_reused() && started.elapsed() < Duration::from_secs(240) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(in_reused(), "no reused segment was written within 240 s ({} acknowledged)", acked.lock().unwrap().len());
    tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..100))).await;
    stop.store(true, Ordering::Relaxed);
    app.crash_restart().await;
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    let attempted = next.load(Ordering::Relaxed);
    let (s, st) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    assert_eq!(s, 200);
    let processed = st["events_processed_24h"].as_u64().unwrap();
    assert!(
        processed >= acked.len() as u64 && processed <= attempted,
        "counters after the restart: {processed} processed, {} acknowledged, {attempted} sent",
        acked.len()
    );
    // Every acknowledged event is its one object (re-sent, a small body does: dedup is by ID).
    for (id, oid) in &acked {
        let (s, b) = ingest(
            &app,
            &bucket,
            Some(&secret),
            &json!({"type": "item.ready", "data": {"id": format!("e{id}"), "n": id, "pad": ""}}),
        )
        .await;
        assert_eq!((s, b["status"].as_str()), (200, Some("duplicate")), "event {id}: {b}");
        assert_eq!(b["object_id"], oid.as_str(), "event {id}");
    }
    eprintln!("reused-segment crash: {} acknowledged, {processed} counted after the restart", acked.len());
}
