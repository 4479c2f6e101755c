//! Supervision under load: registry and adapter failures, SIGTERM, secret rotation, adapter
//! removal and bucket deletion racing ingests, start-up with many buckets, the restart budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{eventually, metric_value, TestApp};

fn ingest_path(bucket: &str) -> String {
    format!("/v1/buckets/{bucket}/source-adapter/ingest")
}

async fn bucket_with(app: &TestApp, name: &str, adapter: Value) -> (String, String) {
    let id = app.create_bucket(name, json!({"n": {"type": "string"}})).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{id}"), json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "configure adapter: {b}");
    (id, b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string())
}

fn adapter(mode: Value) -> Value {
    json!({"adapter_type": "generic_webhook", "dedup_key": "id", "field_mapping": {"id": "n"}, "batching": mode})
}

async fn send(app: &TestApp, bucket: &str, secret: &str, id: &str) -> (u16, Value) {
    app.post_raw(&ingest_path(bucket), format!(r#"{{"id": "{id}"}}"#), &[("x-webhook-secret", secret)]).await
}

/// Every object of a bucket: its `n` (the event's id) → how many objects carry it.
async fn object_ns(app: &TestApp, bucket: &str) -> HashMap<String, usize> {
    let mut all = HashMap::new();
    let mut path = format!("/v1/buckets/{bucket}/objects?limit=1000");
    loop {
        let (s, b) = app.get(&path).await;
        assert_eq!(s, 200, "{b}");
        for o in b["results"].as_array().unwrap() {
            *all.entry(o["metadata"]["n"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
        match b["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/buckets/{bucket}/objects?limit=1000&cursor={c}"),
            None => return all,
        }
    }
}

async fn flush(app: &TestApp, bucket: &str) {
    let ok = eventually(Duration::from_secs(20), || async {
        app.post(&format!("/v1/buckets/{bucket}/source-adapter/flush"), json!({})).await.0 == 200
    })
    .await;
    assert!(ok, "flush");
}

/// The bucket registry fails while ingests to several buckets (immediate, time_window,
/// count) are in flight: its adapter actors go down with it. Every event answered 200 is an
/// object exactly once afterwards, nothing is answered with a 5xx other than 503, and the
/// restart is counted.
#[tokio::test]
async fn a_registry_failure_under_ingest_load_loses_and_doubles_nothing() {
    let app = TestApp::start().await;
    let modes = [
        json!({"mode": "immediate"}),
        json!({"mode": "time_window", "window_seconds": 300, "max_batch_size": 1000}),
        json!({"mode": "count", "max_batch_size": 7}),
    ];
    let mut buckets = Vec::new();
    for (i, m) in modes.iter().enumerate() {
        buckets.push(bucket_with(&app, &format!("reg-{i}"), adapter(m.clone())).await);
    }
    let stop = AtomicBool::new(false);
    let sender = |t: usize| {
        let (app, buckets, stop) = (&app, &buckets, &stop);
        async move {
            let mut answers = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (b, s) = &buckets[(t + i) % buckets.len()];
                let id = format!("t{t}-{i}");
                let (code, body) = send(app, b, s, &id).await;
                answers.push((b.clone(), id, code, body));
                i += 1;
            }
            answers
        }
    };
    let crasher = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (s, b) = app.post("/v1/debug/crash/bucket_registry", json!({})).await;
            assert_eq!(s, 202, "{b}");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (answers, ()) = tokio::join!(futures::future::join_all((0..8).map(sender)), crasher);
    let answers: Vec<_> = answers.into_iter().flatten().collect();
    let bad: Vec<_> = answers.iter().filter(|(_, _, c, _)| *c != 200 && *c != 503).collect();
    assert!(bad.is_empty(), "answers other than 200/503: {bad:?}");
    let unavailable = answers.iter().filter(|(_, _, c, _)| *c == 503).count();
    eprintln!("{} answers, {unavailable} 503", answers.len());
    for (b, _) in &buckets {
        flush(&app, b).await;
    }
    for (b, _) in &buckets {
        let stored = object_ns(&app, b).await;
        let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "objects made twice: {doubled:?}");
        for (_, id, _, _) in answers.iter().filter(|(bb, _, c, _)| bb == b && *c == 200) {
            assert!(stored.contains_key(id), "event {id} answered 200 but not stored in {b}");
        }
    }
    let restarts = metric_value(&app.metrics().await, "hookline_actor_restarts_total", &[("actor", "bucket_registry")]);
    assert!(restarts >= 3.0, "restarts counted: {restarts}");
}

/// SIGTERM while ingests are in flight: every event answered 200 is stored after the
/// restart (exactly once), and the shutdown ends within its bound.
#[tokio::test]
async fn sigterm_under_ingest_load_keeps_every_answered_event() {
    let mut app = TestApp::start().await;
    let (b1, s1) = bucket_with(&app, "term-imm", adapter(json!({"mode": "immediate"}))).await;
    let (b2, s2) = bucket_with(&app, "term-win", adapter(json!({"mode": "time_window", "window_seconds": 300}))).await;
    let buckets = vec![(b1, s1), (b2, s2)];
    let base = app.base.clone();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (base, buckets) = (base.clone(), buckets.clone());
        tasks.push(tokio::spawn(async move {
            let client = crate::support::client();
            let mut answers = Vec::new();
            for i in 0.. {
                let (b, s) = &buckets[(t + i) % 2];
                let id = format!("t{t}-{i}");
                let r = client
                    .post(format!("{base}{}", ingest_path(b)))
                    .header("x-webhook-secret", s.as_str())
                    .body(format!(r#"{{"id": "{id}"}}"#))
                    .send()
                    .await;
                match r {
                    Ok(r) => answers.push((b.clone(), id, r.status().as_u16())),
                    Err(_) => break,
                }
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let started = Instant::now();
    app.signal("TERM");
    let code = app.wait_exit(Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(code, Some(0), "clean exit; log:\n{}", app.log());
    assert!(took < Duration::from_secs(10 + 5), "shutdown took {took:?}");
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    let ok: Vec<_> = answers.iter().filter(|(_, _, c)| *c == 200).collect();
    eprintln!("{} answers, {} ok, shutdown {took:?}", answers.len(), ok.len());
    app.start_again().await;
    for (b, _) in &buckets {
        flush(&app, b).await;
        let stored = object_ns(&app, b).await;
        assert!(stored.values().all(|n| *n == 1), "doubled");
        for (_, id, _) in ok.iter().filter(|(bb, _, _)| bb == b) {
            assert!(stored.contains_key(id), "event {id} answered 200 but lost over SIGTERM");
        }
    }
}

/// A secret rotation while ingests with the old secret are in flight: once the PATCH has
/// answered with the new secret, no request sent after it with the old secret is accepted.
#[tokio::test]
async fn no_request_sent_after_a_rotation_is_accepted_with_the_old_secret() {
    let app = TestApp::start().await;
    let (bucket, old) = bucket_with(&app, "rot", adapter(json!({"mode": "immediate"}))).await;
    let rotated_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stop = AtomicBool::new(false);
    let sender = |t: usize| {
        let (app, bucket, old, stop, rotated_at) = (&app, &bucket, &old, &stop, rotated_at.clone());
        async move {
            let mut late_accepted = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let sent_after = rotated_at.lock().unwrap().is_some();
                let (s, b) = send(app, bucket, old, &format!("t{t}-{i}")).await;
                assert!(s == 200 || s == 401 || s == 503, "{s} {b}");
                if sent_after && s == 200 {
                    late_accepted.push(b);
                }
                i += 1;
            }
            late_accepted
        }
    };
    let rotator = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"rotate_secret": true})).await;
        assert_eq!(s, 200, "{b}");
        *rotated_at.lock().unwrap() = Some(Instant::now());
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (late, ()) = tokio::join!(futures::future::join_all((0..6).map(sender)), rotator);
    let late: Vec<_> = late.into_iter().flatten().collect();
    assert!(late.is_empty(), "old secret accepted after the rotation answered: {late:?}");
}

/// The adapter removed (null) and added again while ingests to its time_window buffer are in
/// flight: every event answered 200 is an object exactly once (the buffer is flushed, not
/// dropped), the answers are 200, 404 or 503 (never another 5xx), and the dedup set
/// survives: re-sending every accepted event makes no new object.
#[tokio::test]
async fn removing_and_re_adding_an_adapter_under_load_loses_nothing() {
    let app = TestApp::start().await;
    let windowed = adapter(json!({"mode": "time_window", "window_seconds": 300}));
    let (bucket, first) = bucket_with(&app, "readd", windowed.clone()).await;
    let secret: Arc<std::sync::Mutex<String>> = Arc::new(std::sync::Mutex::new(first));
    let stop = AtomicBool::new(false);
    let sender = |t: usize| {
        let (app, bucket, stop, secret) = (&app, &bucket, &stop, secret.clone());
        async move {
            let mut answers = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let s = secret.lock().unwrap().clone();
                let id = format!("t{t}-{i}");
                let (code, b) = send(app, bucket, &s, &id).await;
                answers.push((id, code, b));
                i += 1;
            }
            answers
        }
    };
    let patcher = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": null})).await;
            assert_eq!(s, 200, "remove: {b}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": windowed.clone()})).await;
            assert_eq!(s, 200, "re-add: {b}");
            *secret.lock().unwrap() = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (answers, ()) = tokio::join!(futures::future::join_all((0..6).map(sender)), patcher);
    let answers: Vec<_> = answers.into_iter().flatten().collect();
    let bad: Vec<_> = answers.iter().filter(|(_, c, _)| ![200, 401, 404, 503].contains(c)).collect();
    assert!(bad.is_empty(), "{bad:?}");
    flush(&app, &bucket).await;
    let stored = object_ns(&app, &bucket).await;
    assert!(stored.values().all(|n| *n == 1), "doubled: {stored:?}");
    let ok: Vec<_> = answers.iter().filter(|(_, c, _)| *c == 200).collect();
    for (id, _, _) in &ok {
        assert!(stored.contains_key(id), "event {id} answered 200 but lost");
    }
    let s = secret.lock().unwrap().clone();
    for (id, _, _) in ok.iter().take(50) {
        let (c, b) = send(&app, &bucket, &s, id).await;
        assert_eq!((c, b["status"].as_str()), (200, Some("duplicate")), "{id}: {b}");
    }
}

/// A bucket deleted while ingests to it are in flight: they are answered 200 (before), or
/// 404 (after), never a 5xx or a hang.
#[tokio::test]
async fn deleting_a_bucket_under_load_answers_every_ingest_cleanly() {
    let app = TestApp::start().await;
    let (bucket, secret) =
        bucket_with(&app, "del", adapter(json!({"mode": "time_window", "window_seconds": 300}))).await;
    let sender = |t: usize| {
        let (app, bucket, secret) = (&app, &bucket, &secret);
        async move {
            let mut answers = Vec::new();
            for i in 0.. {
                let (c, b) = send(app, bucket, secret, &format!("t{t}-{i}")).await;
                answers.push((c, b));
                if c == 404 {
                    break;
                }
            }
            answers
        }
    };
    let deleter = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (s, b) = app.delete(&format!("/v1/buckets/{bucket}")).await;
        assert_eq!(s, 204, "{b}");
    };
    let (answers, ()) = tokio::join!(futures::future::join_all((0..6).map(sender)), deleter);
    let answers: Vec<_> = answers.into_iter().flatten().collect();
    let bad: Vec<_> = answers.iter().filter(|(c, _)| *c != 200 && *c != 404).collect();
    assert!(bad.is_empty(), "{bad:?}");
}

/// Many buckets with adapters: the daemon starts (and a failed registry comes back) in
/// reasonable time, and ingests to the last bucket during a registry restart are answered
/// 200, not 503.
#[tokio::test]
async fn many_buckets_start_and_restart_promptly() {
    let mut app = TestApp::start().await;
    let n = 300;
    let mut buckets = Vec::new();
    for i in 0..n {
        buckets.push(bucket_with(&app, &format!("many-{i}"), adapter(json!({"mode": "immediate"}))).await);
    }
    let (last, secret) = buckets.last().unwrap().clone();
    assert_eq!(send(&app, &last, &secret, "first").await.0, 200);
    let started = Instant::now();
    app.restart().await;
    eprintln!("restart with {n} adapters: {:?}", started.elapsed());
    let t = Instant::now();
    let (s, b) = app.post("/v1/debug/crash/bucket_registry", json!({})).await;
    assert_eq!(s, 202, "{b}");
    let mut codes = Vec::new();
    for i in 0..20 {
        let (c, b) = send(&app, &last, &secret, &format!("during-{i}")).await;
        codes.push((c, b["error"]["message"].as_str().map(String::from)));
    }
    eprintln!("registry restart answers within {:?}: {codes:?}", t.elapsed());
    assert!(codes.iter().all(|(c, _)| *c == 200), "{codes:?}");
}

/// A registry that keeps failing: past the budget the daemon exits with status 1, promptly,
/// and the restarts before that are counted.
#[tokio::test]
async fn a_registry_failing_past_the_budget_stops_the_daemon_with_status_1() {
    let mut app = TestApp::start().await;
    let (bucket, secret) = bucket_with(&app, "budget", adapter(json!({"mode": "immediate"}))).await;
    assert_eq!(send(&app, &bucket, &secret, "a").await.0, 200);
    let started = Instant::now();
    let mut crashes = 0;
    while app.is_running() && started.elapsed() < Duration::from_secs(30) {
        let r = app.client.post(app.url("/v1/debug/crash/bucket_registry")).bearer_auth(&app.api_key).send().await;
        if matches!(&r, Ok(r) if r.status() == 202) {
            crashes += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let code = app.wait_exit(Duration::from_secs(20)).await;
    eprintln!("{crashes} crashes, exit {code:?} after {:?}", started.elapsed());
    assert_eq!(code, Some(1), "log:\n{}", app.log());
    assert!(app.log().contains("supervision tree stopped"), "said why");
}

/// Admin calls that go through a bucket's actor (flush, object delete) while the registry
/// fails: each is answered (200/204/404 or 503), none hangs.
#[tokio::test]
async fn admin_calls_through_an_adapter_are_answered_across_a_registry_failure() {
    let app = TestApp::start().await;
    let (bucket, secret) =
        bucket_with(&app, "adm", adapter(json!({"mode": "time_window", "window_seconds": 300}))).await;
    let stop = AtomicBool::new(false);
    let caller = |t: usize| {
        let (app, bucket, secret, stop) = (&app, &bucket, &secret, &stop);
        async move {
            let mut codes = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let (c, b) = send(app, bucket, secret, &format!("t{t}-{i}")).await;
                codes.push(c);
                let oid = b["object_id"].as_str().unwrap_or("obj_x").to_string();
                let call = async {
                    if i % 2 == 0 {
                        app.post(&format!("/v1/buckets/{bucket}/source-adapter/flush"), json!({})).await.0
                    } else {
                        app.delete(&format!("/v1/buckets/{bucket}/objects/{oid}")).await.0
                    }
                };
                let c = tokio::time::timeout(Duration::from_secs(10), call).await.expect("answered, not hung");
                codes.push(c);
                i += 1;
            }
            codes
        }
    };
    let crasher = async {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(app.post("/v1/debug/crash/bucket_registry", json!({})).await.0, 202);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::SeqCst);
    };
    let (codes, ()) = tokio::join!(futures::future::join_all((0..4).map(caller)), crasher);
    let codes: Vec<u16> = codes.into_iter().flatten().collect();
    assert!(codes.iter().all(|c| [200, 204, 404, 503].contains(c)), "{codes:?}");
}

/// A rotation of a busy (stalled) adapter's secret: requests with the old secret queued on
/// the old actor are refused (401) once it is replaced, and the PATCH answers within 30 s.
#[tokio::test]
async fn rotating_the_secret_of_a_busy_adapter_refuses_the_old_secret() {
    let app = TestApp::start().await;
    let (bucket, old) = bucket_with(&app, "busyrot", adapter(json!({"mode": "immediate"}))).await;
    let (s, b) = app.post(&format!("/v1/debug/stall-adapter/{bucket}"), json!({})).await;
    assert_eq!(s, 200, "{b}");
    let queued: Vec<_> = (0..4)
        .map(|i| {
            let (client, url, old) = (crate::support::client(), app.url(&ingest_path(&bucket)), old.clone());
            tokio::spawn(async move {
                let r = client.post(url).header("x-webhook-secret", old).body(format!(r#"{{"id": "q{i}"}}"#)).send();
                r.await.map(|r| r.status().as_u16()).unwrap_or(0)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let r = patient
        .patch(app.url(&format!("/v1/buckets/{bucket}")))
        .bearer_auth(&app.api_key)
        .json(&json!({"rotate_secret": true}))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status().as_u16(), 200, "rotation after {took:?}");
    let new = r.json::<Value>().await.unwrap()["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    for q in queued {
        assert_eq!(q.await.unwrap(), 401, "a request with the old secret");
    }
    assert_eq!(send(&app, &bucket, &old, "late").await.0, 401);
    assert_eq!(send(&app, &bucket, &new, "new").await.0, 200);
    let _ = app.delete(&format!("/v1/debug/stall-adapter/{bucket}")).await;
}

/// An object DELETE its busy actor does not take within 25 s is answered 503 ("retry") and
/// dropped, changing nothing (README): not carried out once the actor is free, which would
/// meet the caller's retry with a 404 for an object it was told was not deleted.
#[tokio::test]
async fn an_object_delete_answered_503_changes_nothing() {
    let mut app = TestApp::start().await;
    let hook = crate::outbound_receiver::Receiver::start(200).await;
    let (st, w) = app
        .post(
            "/v1/organizations/webhooks",
            json!({"webhook_name": "deletes", "event_types": ["object.deleted"],
                "channels": [{"channel": "webhook", "configs": {"url": hook.url("/hook")}}]}),
        )
        .await;
    assert_eq!(st, 201, "{w}");
    let adapter = json!({"adapter_type": "generic_webhook", "dedup_key": "id", "batching": {"mode": "immediate"}});
    let (b, s) = crate::inbound::bucket_with_adapter(&app, "busy-delete", json!({}), adapter).await;
    let oid = crate::inbound::ingest(&app, &b, Some(&s), &json!({"id": "a"})).await.1["object_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (st, _) = app.post(&format!("/v1/debug/stall-adapter/{b}"), json!({})).await;
    assert_eq!(st, 200);
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let r = patient
        .delete(app.url(&format!("/v1/buckets/{b}/objects/{oid}")))
        .bearer_auth(&app.api_key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    assert_eq!(status, 503, "{body}");
    let (st, _) = app.delete(&format!("/v1/debug/stall-adapter/{b}")).await;
    assert_eq!(st, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let backend = crate::support::stop_and_open(&mut app).await;
    let deleted = crate::support::stored_events(&backend, "object.deleted");
    let still_there = !crate::support::stored_entries(&backend, "obj", &format!("{b}/")).is_empty();
    assert!(
        still_there && deleted.is_empty(),
        "answered 503 ({body}), yet the object is {} and {} object.deleted event(s) were recorded",
        if still_there { "still there" } else { "deleted" },
        deleted.len()
    );
}

/// A sender that gives up on its answer without retrying (a Supabase database webhook: pg_net
/// waits 1 s by default, at most 5 s, and never sends again) while the bucket's actor is
/// busy: the request reached hookline whole and was never answered 503, so nothing tells the
/// sender to send it again: it is carried out (only an ingest answered 503 is dropped).
#[tokio::test]
async fn an_ingest_whose_client_hung_up_without_a_503_is_not_lost() {
    let app = TestApp::start().await;
    let adapter = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"}});
    let (b, s) = crate::inbound::bucket_with_adapter(&app, "hung-up", json!({}), adapter).await;
    let (st, _) = app.post(&format!("/v1/debug/stall-adapter/{b}"), json!({})).await;
    assert_eq!(st, 200);
    let impatient = reqwest::Client::builder().timeout(Duration::from_secs(1)).build().unwrap();
    let sent = impatient
        .post(app.url(&format!("/v1/buckets/{b}/source-adapter/ingest")))
        .header("x-webhook-secret", &s)
        .header("content-type", "application/json")
        .body(r#"{"row": "one"}"#)
        .send()
        .await;
    assert!(sent.is_err(), "the sender's 1 s ran out: {sent:?}");
    let (st, _) = app.delete(&format!("/v1/debug/stall-adapter/{b}")).await;
    assert_eq!(st, 200);
    let stored = || async {
        let (_, o) = app.get(&format!("/v1/buckets/{b}/objects")).await;
        o["results"].as_array().is_some_and(|r| r.len() == 1)
    };
    assert!(
        crate::support::eventually(Duration::from_secs(5), stored).await,
        "an ingest received whole, never answered, was dropped: {}",
        app.get(&format!("/v1/buckets/{b}/objects")).await.1
    );
}
