//! Writeback (seed 000 "Writeback"), over HTTP against the real daemon: a batch completes →
//! one request per object reaches the source system. The source systems are local servers:
//! a fake PostgREST that records method, path, query, headers and body, and a generic
//! receiver; both can be told to fail first.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use warp::Filter;

use crate::support::{eventually, metric_reaches, Options, TestApp};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    /// What the server answered.
    pub status: u16,
}

#[derive(Default)]
struct Script {
    next: VecDeque<u16>,
    default: u16,
    seen: Vec<Seen>,
}

/// A local HTTP server recording every request (any method) and answering from a script.
pub(crate) struct Upstream {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl Upstream {
    pub(crate) async fn start(default: u16) -> Upstream {
        let script = Arc::new(Mutex::new(Script { default, ..Default::default() }));
        let s = script.clone();
        let query = warp::query::raw().or(warp::any().map(String::new)).unify();
        let filter = warp::method()
            .and(warp::path::full())
            .and(query)
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      query: String,
                      headers: warp::http::HeaderMap,
                      body: bytes::Bytes| {
                    let mut g = s.lock().unwrap();
                    let status = g.next.pop_front().unwrap_or(g.default);
                    g.seen.push(Seen {
                        method: method.to_string(),
                        path: path.as_str().to_string(),
                        query,
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect(),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        status,
                    });
                    // A failure says why, and echoes the request's credentials (as some do).
                    let body = if status >= 400 {
                        let sent = |h: &str| headers.get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        json!({"message": "rejected by upstream", "echo": [sent("authorization"), sent("apikey")]})
                            .to_string()
                    } else {
                        String::new()
                    };
                    warp::reply::with_status(body, warp::http::StatusCode::from_u16(status).unwrap())
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(filter).incoming(listener).run());
        Upstream { addr, script }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) fn then(&self, status: u16) {
        self.script.lock().unwrap().next.push_back(status);
    }

    pub(crate) fn set_default(&self, status: u16) {
        self.script.lock().unwrap().default = status;
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.script.lock().unwrap().seen.clone()
    }

    pub(crate) fn succeeded(&self) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| (200..300).contains(&s.status)).collect()
    }
}

pub(crate) fn db_insert(table: &str, record: Value) -> Value {
    json!({"type": "INSERT", "table": table, "schema": "public", "record": record, "old_record": null})
}

/// Configures `source_adapter` on a new bucket; returns (bucket_id, webhook_secret).
pub(crate) async fn bucket_with(app: &TestApp, name: &str, schema: Value, adapter: Value) -> (String, String) {
    let bucket = app.create_bucket(name, schema).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().expect("webhook_secret").to_string();
    (bucket, secret)
}

pub(crate) async fn ingest(app: &TestApp, bucket: &str, secret: &str, v: Value) -> Value {
    let (s, r) = app
        .post_raw(
            &format!("/v1/buckets/{bucket}/source-adapter/ingest"),
            v.to_string(),
            &[("X-Webhook-Secret", secret), ("Content-Type", "application/json")],
        )
        .await;
    assert_eq!(s, 200, "{r}");
    r
}

/// A Supabase connection to `url` (a local PostgREST) with `key` as its service-role key.
pub(crate) async fn supabase_connection(app: &TestApp, url: &str, key: &str) -> Value {
    let (s, conn) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "sb", "provider_type": "supabase",
                "provider_config": {"url": url, "service_role_key": key}}),
        )
        .await;
    assert_eq!(s, 201, "{conn}");
    conn
}

pub(crate) async fn status(app: &TestApp, bucket: &str) -> Value {
    app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await.1
}

#[tokio::test]
async fn supabase_count_batch_patches_each_row_through_postgrest() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let key = "srk-writeback-secret-0042";
    let conn = supabase_connection(&app, &pg.url(""), key).await;
    let (bucket, secret) = bucket_with(
        &app,
        "listings",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "table": "listings",
            "field_mapping": {"record.title": "title"},
            "batching": {"mode": "count", "max_batch_size": 2, "auto_submit": true},
            "writeback": {"enabled": true, "trigger": "on_batch_complete", "field_mapping": [
                {"source_path": "metadata.title", "target_field": "mp_title"},
                {"source_path": "status", "target_field": "mp_status"},
                {"source_path": "object_id", "target_field": "mp_object_id"}]}}),
    )
    .await;
    let r1 = ingest(&app, &bucket, &secret, db_insert("listings", json!({"id": 1, "title": "Loft"}))).await;
    assert!(pg.seen().is_empty(), "nothing is written back before the batch completes");
    let r2 = ingest(&app, &bucket, &secret, db_insert("listings", json!({"id": "b 2&x", "title": "Studio"}))).await;
    assert_eq!((r1["status"].as_str(), r2["status"].as_str()), (Some("buffered"), Some("buffered")));
    assert!(eventually(WAIT, || async { pg.seen().len() >= 2 }).await, "{:?}", pg.seen());

    let mut seen = pg.seen();
    assert_eq!(seen.len(), 2, "one PATCH per row: {seen:?}");
    seen.sort_by(|a, b| a.query.cmp(&b.query));
    let expect = [("id=eq.1", "Loft", &r1), ("id=eq.b%202%26x", "Studio", &r2)];
    for (req, (query, title, r)) in seen.iter().zip(expect) {
        assert_eq!((req.method.as_str(), req.path.as_str(), req.query.as_str()), ("PATCH", "/rest/v1/listings", query));
        assert_eq!(req.headers.get("apikey").map(String::as_str), Some(key));
        assert_eq!(req.headers.get("authorization").cloned(), Some(format!("Bearer {key}")));
        assert_eq!(req.headers.get("content-type").map(String::as_str), Some("application/json"));
        assert_eq!(req.body, json!({"mp_title": title, "mp_status": "completed", "mp_object_id": r["object_id"]}));
    }
    let (s, batches) = app.get(&format!("/v1/buckets/{bucket}/batches")).await;
    assert_eq!(s, 200);
    assert_eq!(batches["results"][0]["status"], "completed", "{batches}");
    assert!(
        metric_reaches(&app, "hookline_writebacks_total", &[("adapter", "supabase"), ("outcome", "succeeded")], 2.0)
            .await
    );
    assert!(!app.log().contains(key), "the service-role key must never be logged");
}

/// A Supabase writeback goes with the service-role key, which passes row-level security, so
/// its table is the adapter's, never the event's: the webhook secret alone must not aim
/// service-role writes at another table. A writeback without a pinned table is refused; an
/// event about another table (or schema) is a 422 that stores nothing and writes nothing.
#[tokio::test]
async fn supabase_writes_back_only_to_the_pinned_table() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let conn = supabase_connection(&app, &pg.url(""), "srk-pinned-0042").await;
    let mut adapter = json!({"adapter_type": "supabase", "connection_id": conn["connection_id"],
        "field_mapping": {"record.title": "title"},
        "batching": {"mode": "count", "max_batch_size": 1, "auto_submit": true},
        "writeback": {"enabled": true, "trigger": "on_batch_complete",
            "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}});
    let bucket = app.create_bucket("clips", json!({"title": {"type": "string"}})).await;
    let path = format!("/v1/buckets/{bucket}");
    let (s, b) = app.patch(&path, json!({ "source_adapter": adapter })).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.table")), "{b}");
    adapter["table"] = json!("clips");
    adapter["schema"] = json!("media");
    let (s, b) = app.patch(&path, json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!((&b["source_adapter"]["table"], &b["source_adapter"]["schema"]), (&json!("clips"), &json!("media")));
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();

    let event = |schema: &str, table: &str, id: u64| json!({"type": "INSERT", "table": table, "schema": schema, "record": {"id": id, "title": "pwned"}});
    for (schema, table) in [("billing", "admin_users"), ("public", "clips"), ("media", "admin_users")] {
        let (s, r) = app
            .post_raw(
                &format!("{path}/source-adapter/ingest"),
                event(schema, table, 1).to_string(),
                &[("X-Webhook-Secret", &secret), ("Content-Type", "application/json")],
            )
            .await;
        assert_eq!(s, 422, "{schema}.{table}: {r}");
        assert!(r["error"]["message"].as_str().unwrap_or("").contains("media.clips only"), "{r}");
    }
    let (_, objects) = app.get(&format!("{path}/objects")).await;
    assert_eq!(objects["results"], json!([]), "a refused event stores nothing");

    let r = ingest(
        &app,
        &bucket,
        &secret,
        json!({"type": "INSERT", "table": "clips", "schema": "media",
        "record": {"id": 7, "title": "Intro"}}),
    )
    .await;
    assert_eq!(r["status"], "buffered", "{r}");
    assert!(eventually(WAIT, || async { !pg.seen().is_empty() }).await, "{}", status(&app, &bucket).await);
    let seen = pg.seen();
    assert_eq!(seen.len(), 1, "only the pinned table's row is written: {seen:?}");
    assert_eq!((seen[0].path.as_str(), seen[0].query.as_str()), ("/rest/v1/clips", "id=eq.7"));
    assert_eq!(seen[0].headers.get("content-profile").map(String::as_str), Some("media"));
    assert_eq!(seen[0].body, json!({"title": "Intro"}));
}

/// An adapter saved before `table` existed (a writeback, no table) still ingests, but
/// writes nothing back: its jobs wait, saying why, and go through once `table` is set.
#[tokio::test]
async fn a_supabase_writeback_saved_without_a_table_waits_for_one() {
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let conn = supabase_connection(&app, &pg.url(""), "srk-legacy-0042").await;
    let adapter = json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "table": "listings",
        "field_mapping": {"record.title": "title"},
        "batching": {"mode": "count", "max_batch_size": 1, "auto_submit": true},
        "writeback": {"enabled": true, "trigger": "on_batch_complete",
            "field_mapping": [{"source_path": "status", "target_field": "mp_status"}]}});
    let (bucket, secret) = bucket_with(&app, "legacy", json!({"title": {"type": "string"}}), adapter.clone()).await;
    // As a binary from before `table` existed stored it.
    assert_eq!(app.stop(), Some(0));
    {
        let backend = app.stopped_sled().await;
        let key = format!("bkt\0{bucket}");
        let raw = backend.get(key.as_bytes()).unwrap().expect("the bucket record");
        let mut record: Value = serde_json::from_slice(&raw).unwrap();
        record["source_adapter"].as_object_mut().unwrap().remove("table");
        let mut b = Batch::new();
        b.put(Keyspace::BUCKETS, &bucket, &record);
        backend.apply(&b).unwrap();
        futures::executor::block_on(backend.flush()).unwrap();
    }
    app.start_again().await;
    let (_, view) = app.get(&format!("/v1/buckets/{bucket}")).await;
    assert_eq!(view["source_adapter"]["table"], Value::Null, "{view}");
    // Still ingests, from any table, as before; writes nothing back.
    ingest(&app, &bucket, &secret, db_insert("other", json!({"id": 3, "title": "Loft"}))).await;
    ingest(&app, &bucket, &secret, db_insert("listings", json!({"id": 4, "title": "Studio"}))).await;
    let waiting = || async {
        status(&app, &bucket).await["last_error"].as_str().unwrap_or("").contains("source_adapter.table is not set")
    };
    assert!(eventually(WAIT, waiting).await, "{}", status(&app, &bucket).await);
    assert!(pg.seen().is_empty(), "nothing goes to a table the event named: {:?}", pg.seen());
    // Pinned: the listings row is written, the other table's object is not.
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "{b}");
    assert!(eventually(WAIT, || async { !pg.seen().is_empty() }).await, "{}", status(&app, &bucket).await);
    let gone = || async { status(&app, &bucket).await["last_error"].as_str().unwrap_or("").contains("public.other") };
    assert!(eventually(WAIT, gone).await, "{}", status(&app, &bucket).await);
    let seen = pg.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].path.as_str(), seen[0].query.as_str()), ("/rest/v1/listings", "id=eq.4"));
}

/// A generic_webhook writeback POSTs to its fixed URL with the object's ID: an object with
/// no external id (no dedup_key, no external_id_field) is written back with `external_id`
/// null, not given up on.
#[tokio::test]
async fn a_generic_writeback_without_an_external_id_still_posts() {
    let app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    let (bucket, secret) = bucket_with(
        &app,
        "no-ref",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"},
            "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"writeback_url": rx.url("/results"),
                "field_mapping": [{"source_path": "metadata.title", "target_field": "t"}]}}),
    )
    .await;
    let r = ingest(&app, &bucket, &secret, json!({"type": "x", "title": "hello"})).await;
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let (_, object) = app.get(&format!("/v1/buckets/{bucket}/objects/{}", r["object_id"].as_str().unwrap())).await;
    let listed_id = {
        let (s, b) = app.get(&writebacks_path(&bucket)).await;
        assert_eq!((s, b["results"].as_array().map(Vec::len)), (200, Some(0)), "written: {b}");
        // The ID as the list would show it: `wb_` and the base64url of the job's key.
        use base64::Engine;
        let key = format!("job/{}/{}", object["batch_id"].as_str().unwrap(), r["object_id"].as_str().unwrap());
        format!("wb_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key))
    };
    let expected = json!({"object_id": r["object_id"], "external_id": null, "fields": {"t": "hello"},
        "batch_id": object["batch_id"], "trigger": "on_batch_complete", "writeback_id": listed_id});
    assert_eq!(rx.seen()[0].body, expected);
    assert!(object["batch_id"].as_str().is_some_and(|b| b.starts_with("batch_")), "{object}");
    assert!(status(&app, &bucket).await["last_error"].is_null());
}

#[tokio::test]
async fn generic_webhook_posts_with_connection_headers_and_retries_a_500() {
    let app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    rx.then(500);
    let (s, conn) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "gw", "provider_type": "generic_webhook",
                "provider_config": {"headers": {"Authorization": "Bearer gw-token-77", "X-Tenant": "t1"},
                    "url": rx.url("/results")}}),
        )
        .await;
    assert_eq!(s, 201, "{conn}");
    assert_eq!(conn["url"], rx.url("/results"), "where its headers may go is shown: {conn}");
    // Its headers go to no writeback_url outside `url`, whoever configures the adapter.
    let elsewhere = app.create_bucket("elsewhere", json!({})).await;
    for outside in [rx.url("/steal"), rx.url("/resultsx"), rx.url("/").replace("127.0.0.1", "localhost")] {
        let (s, b) = app
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/buckets/{elsewhere}"),
                Some(
                    json!({"source_adapter": {"adapter_type": "generic_webhook", "connection_id": conn["connection_id"],
                    "writeback": {"writeback_url": outside,
                        "field_mapping": [{"source_path": "object_id", "target_field": "id"}]}}}),
                ),
            )
            .await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.writeback.writeback_url")), "{b}");
    }
    let (bucket, secret) = bucket_with(
        &app,
        "tickets",
        json!({"title": {"type": "string"}, "ref": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "connection_id": conn["connection_id"],
            "field_mapping": {"data.title": "title", "data.ref": "ref"},
            "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"external_id_field": "ref", "writeback_url": rx.url("/results"),
                "field_mapping": [{"source_path": "metadata.title", "target_field": "verdict"}]}}),
    )
    .await;
    let r = ingest(&app, &bucket, &secret, json!({"type": "ticket", "data": {"title": "Broken", "ref": "T-9"}})).await;
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let seen = rx.seen();
    assert_eq!(seen.iter().map(|s| s.status).collect::<Vec<_>>(), vec![500, 200], "retried once: {seen:?}");
    // The retry is the same request: the same Idempotency-Key, a receiver's to drop repeats by.
    let keys: Vec<&str> = seen.iter().map(|s| s.headers.get("idempotency-key").map_or("", String::as_str)).collect();
    assert!(keys[0].len() == 32 && keys[0].bytes().all(|b| b.is_ascii_hexdigit()), "{keys:?}");
    assert_eq!(keys[0], keys[1]);
    for req in &seen {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/results"));
        assert_eq!(req.headers.get("authorization").map(String::as_str), Some("Bearer gw-token-77"));
        assert_eq!(req.headers.get("x-tenant").map(String::as_str), Some("t1"));
        assert_eq!(
            req.body,
            json!({"object_id": r["object_id"], "external_id": "T-9", "fields": {"verdict": "Broken"},
                "batch_id": req.body["batch_id"], "trigger": "on_batch_complete",
                "writeback_id": seen[0].body["writeback_id"]})
        );
    }
    let last_error = status(&app, &bucket).await["last_error"].as_str().unwrap_or("").to_string();
    assert!(last_error.contains("HTTP 500"), "the failed attempt shows in the status: {last_error:?}");
    assert!(last_error.contains("rejected by upstream"), "with the start of the answer: {last_error:?}");
    assert!(!last_error.contains("gw-token-77") && last_error.contains("********"), "{last_error:?}");
    let labels = |o| [("adapter", "generic_webhook"), ("outcome", o)];
    assert!(metric_reaches(&app, "hookline_writebacks_total", &labels("retry"), 1.0).await);
    assert!(metric_reaches(&app, "hookline_writebacks_total", &labels("succeeded"), 1.0).await);
    // A url that would leave this adapter's writeback_url outside is refused, naming it.
    let conn_path = format!("/v1/organizations/connections/{}", conn["connection_id"].as_str().unwrap());
    let moved = json!({"provider_config": {"headers": {"Authorization": "Bearer gw-token-77", "X-Tenant": "t1"},
        "url": rx.url("/moved")}});
    let (s, b) = app.call(reqwest::Method::PATCH, &conn_path, Some(moved)).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("provider_config.url")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains(&bucket), "{b}");
    // One with a login in it is refused too (the url is shown).
    let login = json!({"provider_config": {"headers": {"X": "y"}, "url": "https://u:p@results.example.com/"}});
    let (s, b) = app.call(reqwest::Method::PATCH, &conn_path, Some(login)).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("provider_config.url")), "{b}");
    // Without headers there is nothing to pin: a url elsewhere changes nothing.
    let bare = json!({"provider_config": {"url": rx.url("/moved")}});
    let (s, b) = app.call(reqwest::Method::PATCH, &conn_path, Some(bare)).await;
    assert_eq!(s, 200, "{b}");
    let before = rx.succeeded().len();
    ingest(&app, &bucket, &secret, json!({"type": "ticket", "data": {"title": "Again", "ref": "T-10"}})).await;
    assert!(eventually(WAIT, || async { rx.succeeded().len() > before }).await, "{:?}", rx.seen());
    let last = rx.succeeded().last().cloned().unwrap();
    assert_eq!((last.path.as_str(), last.headers.get("authorization")), ("/results", None), "no headers left");
    assert!(!app.log().contains("gw-token-77"));
}

#[tokio::test]
async fn manual_submit_writes_back_and_a_pending_writeback_survives_a_crash() {
    let mut app = TestApp::start().await;
    let rx = Upstream::start(503).await;
    let (bucket, secret) = bucket_with(
        &app,
        "manual",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook",
            "field_mapping": {"title": "title"},
            "dedup_key": "id",
            "batching": {"mode": "count", "max_batch_size": 1, "auto_submit": false},
            "writeback": {"writeback_url": rx.url("/wb"),
                "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}}),
    )
    .await;
    let r = ingest(&app, &bucket, &secret, json!({"type": "x", "id": "row-1", "title": "Kept"})).await;
    let oid = r["object_id"].as_str().unwrap().to_string();
    let (_, batches) = app.get(&format!("/v1/buckets/{bucket}/batches")).await;
    let batch_id = batches["results"][0]["batch_id"].as_str().expect("a pending batch").to_string();
    assert_eq!(batches["results"][0]["status"], "pending");
    assert!(rx.seen().is_empty(), "a pending batch writes nothing back");

    let (s, b) = app.post(&format!("/v1/buckets/{bucket}/batches/{batch_id}/submit"), json!({})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("completed")), "{b}");
    // The receiver is down: the first attempt fails, the job stays pending.
    assert!(eventually(WAIT, || async { !rx.seen().is_empty() }).await);
    app.crash_restart().await;
    rx.set_default(200);
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let ok = &rx.succeeded()[0];
    // external_id falls back to the object's source.external_id (the dedup value).
    assert_eq!(ok.body["object_id"], oid.as_str());
    assert_eq!(ok.body["external_id"], "row-1");
    assert_eq!(ok.body["fields"], json!({"title": "Kept"}), "{:?}", ok.body);
}

#[tokio::test]
async fn private_writeback_targets_are_refused_unless_allowed() {
    let delivery = |private: bool| {
        format!("[delivery]\nallow_insecure_http = true\nallow_private_networks = {private}\nrequest_timeout_seconds = 2\nmax_age_hours = 1\nretry_schedule_seconds = [1]\n")
    };
    // Configured while private targets were allowed (a literal one is refused at
    // configuration otherwise), then the rule tightened: the send-time check refuses it.
    let mut app = TestApp::start_with(Options { delivery_toml: Some(delivery(true)), ..Default::default() }).await;
    let rx = Upstream::start(200).await;
    let (bucket, secret) = bucket_with(
        &app,
        "strict",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"}, "dedup_key": "id",
            "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"writeback_url": rx.url("/wb"),
                "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}}),
    )
    .await;
    app.set_delivery_toml(delivery(false));
    app.restart().await;
    ingest(&app, &bucket, &secret, json!({"type": "x", "id": "1", "title": "t"})).await;
    let refused = eventually(WAIT, || async {
        status(&app, &bucket).await["last_error"].as_str().is_some_and(|e| e.contains("private"))
    })
    .await;
    assert!(refused, "{}", status(&app, &bucket).await);
    assert!(rx.seen().is_empty(), "nothing reaches a loopback target");
}

/// A `writeback_url` the delivery rules would refuse at send time is refused when the
/// adapter is configured (422), not retried for days.
#[tokio::test]
async fn a_writeback_url_the_rules_refuse_is_a_422() {
    let strict = Options { delivery_toml: Some("[delivery]\n".into()), ..Options::default() };
    let app = TestApp::start_with(strict).await;
    let bucket = app.create_bucket("strict", json!({"title": {"type": "string"}})).await;
    for url in [
        "http://results.example.com/wb",
        "https://127.0.0.1/wb",
        "https://10.0.0.5/wb",
        "https://localhost/wb",
        // Read by the URL standard as `https://results.example.com/wb`: not what is shown.
        "https:///results.example.com/wb",
    ] {
        let (s, b) = app
            .patch(
                &format!("/v1/buckets/{bucket}"),
                json!({"source_adapter": {"adapter_type": "generic_webhook", "batching": {"mode": "count"},
                    "writeback": {"writeback_url": url,
                        "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}}}),
            )
            .await;
        assert_eq!(s, 422, "{url}: {b}");
        assert_eq!(b["error"]["field"], "source_adapter.writeback.writeback_url", "{b}");
        // A Supabase project URL too, as a connection or as inline credentials.
        let (s, b) = app
            .post(
                "/v1/organizations/connections",
                json!({"name": "db", "provider_type": "supabase",
                    "provider_config": {"url": url, "service_role_key": "srk"}}),
            )
            .await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("provider_config.url")), "{url}: {b}");
        // And a generic_webhook connection's: no writeback_url under it could be used.
        let generic = |url: &str| {
            json!({"name": "hdrs", "provider_type": "generic_webhook",
                "provider_config": {"url": url, "headers": {"Authorization": "Bearer t"}}})
        };
        let (s, b) = app.post("/v1/organizations/connections", generic(url)).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("provider_config.url")), "{url}: {b}");
        let (s, ok) = app.post("/v1/organizations/connections", generic("https://results.example.com/")).await;
        assert_eq!(s, 201, "{ok}");
        let cid = ok["connection_id"].as_str().unwrap_or_default();
        let (s, b) = app
            .patch(
                &format!("/v1/organizations/connections/{cid}"),
                json!({"provider_config": generic(url)["provider_config"]}),
            )
            .await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("provider_config.url")), "{url}: {b}");
        let (s, b) = app
            .patch(
                &format!("/v1/buckets/{bucket}"),
                json!({"source_adapter": {"adapter_type": "supabase", "batching": {"mode": "count"},
                    "connection": {"credentials": {"url": url, "service_role_key": "srk"}}}}),
            )
            .await;
        let field = b["error"]["field"].as_str();
        assert_eq!((s, field), (422, Some("source_adapter.connection.credentials.url")), "{url}: {b}");
    }
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "db", "provider_type": "supabase",
                "provider_config": {"url": "https://abcd.supabase.co", "service_role_key": "srk"}}),
        )
        .await;
    assert_eq!(s, 201, "a public https project is fine: {b}");
}

/// `on_batch_complete` fires when a batch completes; `immediate` makes no batches, so that
/// pair is refused rather than stored and never fired. `on_alert` (fired by the alerts
/// endpoint, see `alerts.rs`) and the batching modes are accepted.
#[tokio::test]
async fn a_batch_writeback_needs_a_batching_mode() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("wb-modes", json!({"title": {"type": "string"}})).await;
    let adapter = |batching: Value, trigger: &str| {
        json!({"source_adapter": {"adapter_type": "generic_webhook", "batching": batching,
            "writeback": {"writeback_url": "http://127.0.0.1:9/wb", "trigger": trigger,
                "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}}})
    };
    let path = format!("/v1/buckets/{bucket}");
    let (s, b) = app.patch(&path, adapter(json!({"mode": "immediate"}), "on_batch_complete")).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["field"], "source_adapter.writeback.trigger", "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("count"), "says what to use: {b}");
    assert_eq!(app.get(&path).await.1["source_adapter"], Value::Null, "nothing stored");
    for (batching, trigger) in [
        (json!({"mode": "immediate"}), "on_alert"),
        (json!({"mode": "count", "max_batch_size": 1}), "on_batch_complete"),
        (json!({"mode": "time_window", "window_seconds": 5}), "on_batch_complete"),
    ] {
        let (s, b) = app.patch(&path, adapter(batching.clone(), trigger)).await;
        assert_eq!(s, 200, "{batching} {trigger}: {b}");
    }
}

/// A bucket's GET view of its adapter can be sent back as a PATCH (read, edit, write): the
/// read-only fields are ignored, the credentials placeholder keeps the stored (sealed)
/// credentials, nulls mean defaults; the secret is not re-issued, and the kept credentials
/// still authenticate the writeback.
#[tokio::test]
async fn a_get_view_sent_back_keeps_the_adapter_and_its_credentials() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let key = "srk-kept-credentials-0077";
    let (bucket, secret) = bucket_with(
        &app,
        "roundtrip",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "supabase", "table": "items",
            "connection": {"credentials": {"url": pg.url(""), "service_role_key": key}},
            "field_mapping": {"record.title": "title"},
            "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"enabled": true, "trigger": "on_batch_complete", "field_mapping": [
                {"source_path": "metadata.title", "target_field": "mp_title"}]}}),
    )
    .await;
    let path = format!("/v1/buckets/{bucket}");
    let (_, view) = app.get(&path).await;
    let mut adapter = view["source_adapter"].clone();
    assert_eq!(adapter["connection"]["credentials"], "(set; never shown)", "{view}");
    assert!(adapter["configured_at"].is_string() && adapter["ingest_path"].is_string(), "{view}");
    // As is, it changes nothing: not even when the adapter was configured, nor the bucket's
    // updated_at (both move with a real change, below).
    tokio::time::sleep(Duration::from_millis(1100)).await; // timestamps are to the second
    let (s, b) = app.patch(&path, json!({ "source_adapter": adapter.clone() })).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["source_adapter"]["configured_at"], adapter["configured_at"], "{b}");
    assert_eq!(b["updated_at"], view["updated_at"], "{b}");
    assert_eq!(b["source_adapter"]["connection"]["credentials"], "(set; never shown)", "{b}");
    // With a new description beside it: that is stored (updated_at moves), the adapter stays.
    let (s, b) = app.patch(&path, json!({ "source_adapter": adapter.clone(), "description": "rows" })).await;
    assert_eq!((s, b["description"].as_str()), (200, Some("rows")), "{b}");
    assert_eq!(b["source_adapter"]["configured_at"], adapter["configured_at"], "{b}");
    assert_ne!(b["updated_at"], view["updated_at"], "{b}");
    let (_, described) = app.get(&path).await;
    assert_eq!(described["description"], "rows", "stored: {described}");
    adapter["event_filter"] = json!({"event_types": ["INSERT"]});
    adapter["dedup_key"] = Value::Null;
    let (s, b) = app.patch(&path, json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["source_adapter"].get("webhook_secret").is_none(), "not re-issued: {b}");
    assert_eq!(b["source_adapter"]["connection"]["credentials"], "(set; never shown)", "{b}");
    assert_eq!(b["source_adapter"]["event_filter"], json!({"event_types": ["INSERT"]}), "the edit took: {b}");
    assert_ne!(b["source_adapter"]["configured_at"], adapter["configured_at"], "{b}");
    assert_ne!(b["updated_at"], view["updated_at"], "{b}");

    let r = ingest(&app, &bucket, &secret, db_insert("items", json!({"id": 5, "title": "Kept"}))).await;
    assert_eq!(r["status"], "buffered", "{r}");
    assert!(eventually(WAIT, || async { !pg.seen().is_empty() }).await, "no writeback");
    let seen = pg.seen();
    assert_eq!(seen[0].headers.get("apikey").map(String::as_str), Some(key), "the kept credentials are used");
    assert_eq!(seen[0].body, json!({"mp_title": "Kept"}));

    // The placeholder cannot stand for credentials that were never stored; null means default.
    let plain = app.create_bucket("plain", json!({})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{plain}"),
            json!({"source_adapter": {"adapter_type": "supabase", "connection": {"credentials": "(set; never shown)"}}}),
        )
        .await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.connection.credentials")), "{b}");
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{plain}"),
            json!({"source_adapter": {"adapter_type": "generic_webhook", "field_mapping": null, "batching": null, "enabled": null}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["source_adapter"]["enabled"].as_bool(), b["source_adapter"]["batching"]["mode"].as_str()),
        (Some(true), Some("time_window"))
    );
}

/// Hidden credentials never follow a new destination: a generic adapter's inline headers,
/// kept with the placeholder, are refused once its `writeback_url` (or its adapter type)
/// changes, and kept while it stays; a framing header or a value with a line break is
/// refused when the headers are given.
#[tokio::test]
async fn kept_credentials_do_not_follow_a_new_writeback_url() {
    let app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    let adapter = |url: String, credentials: Value| {
        json!({"source_adapter": {"adapter_type": "generic_webhook", "dedup_key": "id",
            "connection": {"credentials": credentials},
            "field_mapping": {"title": "title"}, "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"writeback_url": url,
                "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}}})
    };
    let bucket = app.create_bucket("kept", json!({"title": {"type": "string"}})).await;
    let path = format!("/v1/buckets/{bucket}");
    let token = json!({"headers": {"Authorization": "Bearer inline-kept-token-5150"}});
    let (s, b) = app.patch(&path, adapter(rx.url("/legit"), token)).await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();

    let kept = json!("(set; never shown)");
    for (body, what) in [
        (adapter(rx.url("/elsewhere"), kept.clone()), "a new writeback_url"),
        (
            json!({"source_adapter": {"adapter_type": "supabase", "connection": {"credentials": kept.clone()}}}),
            "another adapter type",
        ),
    ] {
        let (s, b) = app.patch(&path, body).await;
        assert_eq!(
            (s, b["error"]["field"].as_str()),
            (422, Some("source_adapter.connection.credentials")),
            "{what}: {b}"
        );
        assert!(b["error"]["message"].as_str().unwrap().contains("never follows a new destination"), "{b}");
    }
    // The same destination keeps them, and they still authenticate the writeback there.
    let (s, b) = app.patch(&path, adapter(rx.url("/legit"), kept)).await;
    assert_eq!(s, 200, "{b}");
    let r = ingest(&app, &bucket, &secret, json!({"type": "x", "id": "k-1", "title": "T"})).await;
    assert_eq!(r["status"], "buffered", "{r}");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let seen = rx.seen();
    assert!(seen.iter().all(|r| r.path == "/legit"), "{seen:?}");
    assert_eq!(seen[0].headers.get("authorization").map(String::as_str), Some("Bearer inline-kept-token-5150"));

    for (headers, why) in [
        (json!({"Host": "evil.example"}), "framing header"),
        (json!({"Transfer-Encoding": "chunked"}), "framing header"),
        (json!({"X-Ok": "a\r\nX-Injected: 1"}), "header value"),
        (json!({"X-Big": "a".repeat(8193)}), "at most 8192 bytes"),
    ] {
        let (s, b) = app.patch(&path, adapter(rx.url("/legit"), json!({ "headers": headers }))).await;
        assert_eq!(s, 422, "{headers}: {b}");
        assert!(
            b["error"]["field"].as_str().unwrap().starts_with("source_adapter.connection.credentials.headers."),
            "{b}"
        );
        assert!(b["error"]["message"].as_str().unwrap().contains(why), "{b}");
    }
}

/// A writeback waiting for a retry when its row's key changes (an UPDATE of the id column,
/// which re-keys the object) writes the row under its new key: the old one is gone, and
/// PostgREST answers a PATCH of no row with a 204. The writebacks list names that key.
#[tokio::test]
async fn a_pending_writeback_follows_its_row_to_a_new_key() {
    // Its retry 3 s later: the list is read before the worker takes the new key.
    let delivery = "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n\
        request_timeout_seconds = 2\nmax_age_seconds = 60\nretry_schedule_seconds = [3]\n";
    let app = TestApp::start_with(Options { delivery_toml: Some(delivery.into()), ..Default::default() }).await;
    let pg = Upstream::start(500).await;
    let conn = supabase_connection(&app, &pg.url(""), "srk-rekey").await;
    let (bucket, secret) = bucket_with(
        &app,
        "rekeyed",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "table": "items",
            "field_mapping": {"record.title": "title"},
            "batching": {"mode": "count", "max_batch_size": 1, "auto_submit": true},
            "writeback": {"field_mapping": [{"source_path": "status", "target_field": "mp_status"}]}}),
    )
    .await;
    ingest(&app, &bucket, &secret, db_insert("items", json!({"id": 70, "title": "a"}))).await;
    assert!(eventually(WAIT, || async { !pg.seen().is_empty() }).await, "the first attempt fails (500)");
    let update = json!({"type": "UPDATE", "table": "items", "schema": "public",
        "record": {"id": 71, "title": "a"}, "old_record": {"id": 70, "title": "a"}});
    let r = ingest(&app, &bucket, &secret, update).await;
    assert_eq!(r["status"], "updated", "{r}");
    // Listed (and shown) under the key its next attempt writes, before that attempt.
    let pending = listed(&app, &bucket, "?status=pending", 1).await;
    assert_eq!(pending[0]["external_id"], "71", "{pending:?}");
    let (s, one) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/writebacks/{}", id_of(&pending[0]))).await;
    assert_eq!((s, &one["external_id"]), (200, &json!("71")), "{one}");
    pg.set_default(204);
    assert!(eventually(WAIT, || async { !pg.succeeded().is_empty() }).await, "{:?}", pg.seen());
    let written = pg.succeeded();
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].query, "id=eq.71", "the row under its new key: {written:?}");
    assert!(pg.seen().iter().all(|s| s.status != 204 || s.query != "id=eq.70"));
}

/// A service_role_key with a line break (pasted from a file) is refused when saved: no header
/// can carry it, and a writeback sent without it runs as PostgREST's anonymous role.
#[tokio::test]
async fn a_service_role_key_with_a_line_break_is_refused() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    for key in ["srk-eyJhbGciOi\n", "srk\r\nX-Injected: 1", "srk\tkey"] {
        let config = json!({"url": pg.url(""), "service_role_key": key});
        let (s, b) = app
            .post(
                "/v1/organizations/connections",
                json!({"name": "db", "provider_type": "supabase", "provider_config": config}),
            )
            .await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some("provider_config.service_role_key")), "{b}");
        assert!(!b.to_string().contains("srk"), "the key is not echoed: {b}");
        let bucket = app.create_bucket(&format!("inline-{}", key.len()), json!({"title": {"type": "string"}})).await;
        let (s, b) = app
            .patch(
                &format!("/v1/buckets/{bucket}"),
                json!({"source_adapter": {"adapter_type": "supabase", "table": "items",
                    "connection": {"credentials": config}}}),
            )
            .await;
        let field = b["error"]["field"].as_str();
        assert_eq!((s, field), (422, Some("source_adapter.connection.credentials.service_role_key")), "{b}");
    }
    assert!(pg.seen().is_empty());
}

/// A Supabase `url` is the project URL: hookline adds `/rest/v1/{table}` itself. The API path
/// pasted from the dashboard (`…/rest/v1/`), which made every writeback PATCH
/// `/rest/v1/rest/v1/{table}`, is refused with a 422 naming the field and saying what to give,
/// on a connection's create and PATCH and in inline credentials alike; the project URL then
/// writes back to `/rest/v1/{table}`.
#[tokio::test]
async fn a_supabase_url_with_a_path_is_refused_and_the_project_url_writes_back() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let expect = "the project URL, e.g. https://abcd.supabase.co, without /rest/v1";
    let refused = |s: u16, b: &Value, field: &str| {
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{b}");
        assert!(b["error"]["message"].as_str().unwrap_or("").contains(expect), "{b}");
    };
    for (i, path) in ["/rest/v1/", "/rest/v1", "/gateway/rest/v1/"].into_iter().enumerate() {
        let config = json!({"url": pg.url(path), "service_role_key": "srk"});
        let (s, b) = app
            .post(
                "/v1/organizations/connections",
                json!({"name": "db", "provider_type": "supabase", "provider_config": config}),
            )
            .await;
        refused(s, &b, "provider_config.url");
        let bucket = app.create_bucket(&format!("inline-{i}"), json!({"title": {"type": "string"}})).await;
        let (s, b) = app
            .patch(
                &format!("/v1/buckets/{bucket}"),
                json!({"source_adapter": {"adapter_type": "supabase", "connection": {"credentials": config}}}),
            )
            .await;
        refused(s, &b, "source_adapter.connection.credentials.url");
    }
    // A prefix a self-hosted Supabase sits behind is a project URL too.
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "proxied", "provider_type": "supabase",
                "provider_config": {"url": pg.url("/supabase"), "service_role_key": "srk"}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let conn = supabase_connection(&app, &pg.url("/"), "srk").await;
    let conn_id = conn["connection_id"].as_str().unwrap();
    let (s, b) = app
        .patch(
            &format!("/v1/organizations/connections/{conn_id}"),
            json!({"provider_config": {"url": pg.url("/rest/v1/"), "service_role_key": "srk"}}),
        )
        .await;
    refused(s, &b, "provider_config.url");

    // The connection kept its project URL: a row is written back to /rest/v1/listings.
    let (bucket, secret) = bucket_with(
        &app,
        "listings",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "supabase", "connection_id": conn_id, "table": "listings",
            "field_mapping": {"record.title": "title"},
            "batching": {"mode": "count", "max_batch_size": 1, "auto_submit": true},
            "writeback": {"enabled": true, "trigger": "on_batch_complete",
                "field_mapping": [{"source_path": "status", "target_field": "mp_status"}]}}),
    )
    .await;
    ingest(&app, &bucket, &secret, db_insert("listings", json!({"id": 5, "title": "Loft"}))).await;
    assert!(eventually(WAIT, || async { !pg.seen().is_empty() }).await, "{}", status(&app, &bucket).await);
    let seen = pg.seen();
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str(), seen[0].query.as_str()),
        ("PATCH", "/rest/v1/listings", "id=eq.5")
    );
}

/// A generic connection saved before `url` was required (headers, no url): a new adapter
/// configuration with it is a 422 that says how to fix it, and once the connection is sent
/// again whole, with a url, the adapter is accepted and its writeback carries the headers.
#[tokio::test]
async fn a_generic_connection_without_a_url_is_refused_until_sent_again_whole() {
    use hookline::catalog::connection::{Connection, GenericConfig, ProviderConfig, ProviderType};
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    // Written as a binary from before urls were required wrote it.
    assert_eq!(app.stop(), Some(0));
    let conn_id = {
        let backend = app.stopped_sled().await;
        let secrets = hookline::crypto::SecretBox::load(None, &app.data_dir).unwrap();
        let headers = [("Authorization".to_string(), "Bearer legacy-token-31".to_string())].into_iter().collect();
        let cfg = ProviderConfig::Generic(GenericConfig { headers, url: None });
        let conn = Connection::new("legacy".into(), ProviderType::GenericWebhook, &cfg, &secrets);
        let mut b = Batch::new();
        b.put(Keyspace::CONNECTIONS, conn.connection_id.as_str(), &conn);
        backend.apply(&b).unwrap();
        futures::executor::block_on(backend.flush()).unwrap();
        conn.connection_id.as_str().to_string()
    };
    app.start_again().await;
    let (_, view) = app.get(&format!("/v1/organizations/connections/{conn_id}")).await;
    assert_eq!(view["url"], Value::Null, "{view}");
    let adapter = |url: &str| {
        json!({"adapter_type": "generic_webhook", "connection_id": conn_id, "field_mapping": {"ref": "ref"},
            "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"external_id_field": "ref", "writeback_url": url,
                "field_mapping": [{"source_path": "object_id", "target_field": "id"}]}})
    };
    let bucket = app.create_bucket("legacy", json!({"ref": {"type": "string"}})).await;
    let path = format!("/v1/buckets/{bucket}");
    let (s, b) = app.patch(&path, json!({"source_adapter": adapter(&rx.url("/wb"))})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.connection_id")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("the headers again and url"), "{b}");
    // Sent again whole, with a url: the adapter is accepted, its writeback carries the headers.
    let whole =
        json!({"provider_config": {"headers": {"Authorization": "Bearer legacy-token-31"}, "url": rx.url("/")}});
    let (s, b) = app.patch(&format!("/v1/organizations/connections/{conn_id}"), whole).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app.patch(&path, json!({"source_adapter": adapter(&rx.url("/wb"))})).await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    ingest(&app, &bucket, &secret, json!({"type": "x", "ref": "R-1"})).await;
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let sent = &rx.succeeded()[0];
    assert_eq!(sent.headers.get("authorization").map(String::as_str), Some("Bearer legacy-token-31"));
}

// ---- The operator API: GET …/source-adapter/writebacks, POST …/writebacks/{id}/retry ----

/// A daemon whose writebacks are given up 2 s after they were queued (one retry a second).
fn short_lived() -> Options {
    let delivery = "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n\
        request_timeout_seconds = 2\nmax_age_seconds = 2\nretry_schedule_seconds = [1]\n";
    Options { delivery_toml: Some(delivery.into()), ..Default::default() }
}

/// A generic_webhook adapter writing each object's title back to `url` as its batch (of one)
/// completes; the event's `id` is its external id.
fn generic_adapter(url: &str, writeback_enabled: bool) -> Value {
    json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"}, "dedup_key": "id",
        "batching": {"mode": "count", "max_batch_size": 1},
        "writeback": {"enabled": writeback_enabled, "writeback_url": url,
            "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}})
}

fn writebacks_path(bucket: &str) -> String {
    format!("/v1/buckets/{bucket}/source-adapter/writebacks")
}

fn retry_path(bucket: &str, writeback_id: &str) -> String {
    format!("{}/{writeback_id}/retry", writebacks_path(bucket))
}

/// A bucket `name` whose generic writeback of `title` goes to a receiver answering 500, and
/// one event (`"title": "First"`) whose writeback's first attempt has failed: the receiver,
/// the bucket and its secret.
async fn a_failing_titled_job(app: &TestApp, name: &str) -> (Upstream, String, String) {
    let rx = Upstream::start(500).await;
    let schema = json!({"title": {"type": "string"}});
    let (bucket, secret) = bucket_with(app, name, schema, generic_adapter(&rx.url("/wb"), true)).await;
    assert_eq!(ingest(app, &bucket, &secret, json!({"id": "r1", "title": "First"})).await["status"], "buffered");
    assert!(eventually(WAIT, || async { !rx.seen().is_empty() }).await, "the first attempt fails (500)");
    (rx, bucket, secret)
}

/// A PATCH that renames a writeback `target_field` (a column name fixed) applies to the jobs
/// still pending at once, with the values they hold; one the new mapping leaves nothing to
/// write is given up, saying why.
#[tokio::test]
async fn pending_writebacks_follow_a_renamed_target_field() {
    let app = TestApp::start().await;
    let (rx, bucket, secret) = a_failing_titled_job(&app, "renamed").await;
    let path = format!("/v1/buckets/{bucket}");
    let set_writeback = |writeback: Value| {
        let (app, path) = (&app, &path);
        async move {
            let (_, view) = app.get(path).await;
            let mut adapter = view["source_adapter"].clone();
            adapter["writeback"] = writeback;
            let (s, b) = app.patch(path, json!({ "source_adapter": adapter })).await;
            assert_eq!(s, 200, "{b}");
        }
    };
    let url = rx.url("/wb");
    let remap = |pairs: Value| set_writeback(json!({"writeback_url": url, "field_mapping": pairs}));
    remap(json!([{"source_path": "metadata.title", "target_field": "headline"}])).await;
    let pending = listed(&app, &bucket, "?status=pending", 1).await;
    assert_eq!(pending[0]["fields"], json!({"headline": "First"}), "{pending:?}");
    rx.set_default(204);
    let renamed = || async { rx.succeeded().iter().any(|s| s.body["fields"] == json!({"headline": "First"})) };
    assert!(eventually(WAIT, renamed).await, "{:?}", rx.seen());
    assert!(rx.succeeded().iter().all(|s| s.body["fields"].get("title").is_none()), "{:?}", rx.seen());

    rx.set_default(500);
    let before = rx.seen().len();
    assert_eq!(ingest(&app, &bucket, &secret, json!({"id": "r2", "title": "Second"})).await["status"], "buffered");
    assert!(eventually(WAIT, || async { rx.seen().len() > before }).await, "its first attempt fails (500)");
    // Writeback turned off (`{"enabled": false}` alone: no mapping), then on again: the job
    // waits as it is, and is not mapped from or to the empty mapping.
    set_writeback(json!({"enabled": false})).await;
    let pending = listed(&app, &bucket, "?status=pending", 1).await;
    assert_eq!(pending[0]["fields"], json!({"headline": "Second"}), "{pending:?}");
    remap(json!([{"source_path": "metadata.title", "target_field": "headline"}])).await;
    let pending = listed(&app, &bucket, "?status=pending", 1).await;
    assert_eq!(pending[0]["fields"], json!({"headline": "Second"}), "{pending:?}");
    // A mapping that no longer reads its source: given up, with the fields it had.
    remap(json!([{"source_path": "metadata.other", "target_field": "other"}])).await;
    let dead = listed(&app, &bucket, "?status=dead", 1).await;
    let why = dead[0]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("no longer reads any of its fields; a retry by hand maps it again"), "{dead:?}");
    assert_eq!(dead[0]["fields"], json!({"headline": "Second"}), "{dead:?}");
    assert!(listed(&app, &bucket, "?status=pending", 0).await.is_empty());
}

/// The same when the old adapter had to be killed (it did not stop within 10 s, here
/// stalled): its writeback worker is ended with it, so the PATCH moves the pending job to the
/// new mapping, and nothing is sent under the old one after the PATCH.
#[tokio::test]
async fn a_killed_adapters_pending_writebacks_follow_a_renamed_target_field() {
    let app = TestApp::start().await;
    let (rx, bucket, _) = a_failing_titled_job(&app, "killed").await;
    let (s, b) = app.post(&format!("/v1/debug/stall-adapter/{bucket}"), json!({})).await;
    assert_eq!(s, 200, "{b}");
    // (Answered once the actor has taken the stall: the PATCH's stop cannot overtake it.)
    let path = format!("/v1/buckets/{bucket}");
    let (_, view) = app.get(&path).await;
    let mut adapter = view["source_adapter"].clone();
    adapter["writeback"] = json!({"writeback_url": rx.url("/wb"),
        "field_mapping": [{"source_path": "metadata.title", "target_field": "headline"}]});
    let (s, b) = app.patch(&path, json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "{b}");
    let sent_before = rx.seen().len();
    let log = app.log();
    assert!(log.contains("source adapter did not stop in time; killing it"), "{log}");
    assert!(!log.contains("pending writebacks keep their fields"), "{log}");
    let pending = listed(&app, &bucket, "?status=pending", 1).await;
    assert_eq!(pending[0]["fields"], json!({"headline": "First"}), "{pending:?}");
    assert_eq!(app.delete(&format!("/v1/debug/stall-adapter/{bucket}")).await.0, 200);
    rx.set_default(204);
    let renamed = || async { rx.succeeded().iter().any(|s| s.body["fields"] == json!({"headline": "First"})) };
    assert!(eventually(WAIT, renamed).await, "{:?}", rx.seen());
    let after = rx.seen().into_iter().skip(sent_before).collect::<Vec<_>>();
    assert!(after.iter().all(|s| s.body["fields"].get("title").is_none()), "{after:?}");
}

/// `GET …/writebacks{query}`, which must answer 200.
async fn writebacks(app: &TestApp, bucket: &str, query: &str) -> Value {
    let (s, b) = app.get(&format!("{}{query}", writebacks_path(bucket))).await;
    assert_eq!(s, 200, "{query}: {b}");
    b
}

async fn retry(app: &TestApp, bucket: &str, writeback_id: &str) -> (u16, Value) {
    app.call(reqwest::Method::POST, &retry_path(bucket, writeback_id), None).await
}

/// The list's results, once it holds `n` with `query`.
async fn listed(app: &TestApp, bucket: &str, query: &str, n: usize) -> Vec<Value> {
    let count = || async { writebacks(app, bucket, query).await["results"].as_array().map(Vec::len) == Some(n) };
    assert!(eventually(WAIT, count).await, "{query}: {}", writebacks(app, bucket, query).await);
    writebacks(app, bucket, query).await["results"].as_array().cloned().unwrap_or_default()
}

fn id_of(job: &Value) -> String {
    job["writeback_id"].as_str().expect("a writeback_id").to_string()
}

fn is_rfc3339(v: &Value) -> bool {
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    v.as_str().is_some_and(|s| time::OffsetDateTime::parse(s, rfc3339).is_ok())
}

/// A writeback whose receiver keeps failing is given up and listed as dead with its error;
/// once the receiver is fixed, a retry (202) sends it and it leaves the list, while the other
/// dead job stays dead. The list pages, filters and refuses what it does not take as the
/// other lists do; the retry answers 404 for what does not exist and 401 without the key.
#[tokio::test]
async fn a_dead_writeback_is_listed_and_a_retry_sends_it_once_the_receiver_is_fixed() {
    let app = TestApp::start_with(short_lived()).await;
    let rx = Upstream::start(500).await;
    let (bucket, secret) =
        bucket_with(&app, "failing", json!({"title": {"type": "string"}}), generic_adapter(&rx.url("/wb"), true)).await;
    let one = ingest(&app, &bucket, &secret, json!({"type": "x", "id": "row-1", "title": "One"})).await;
    let two = ingest(&app, &bucket, &secret, json!({"type": "x", "id": "row-2", "title": "Two"})).await;
    let dead = listed(&app, &bucket, "?status=dead", 2).await;
    // Batch jobs by batch: the first object's (its batch was made first) comes first.
    for (job, (r, external_id, title)) in dead.iter().zip([(&one, "row-1", "One"), (&two, "row-2", "Two")]) {
        assert!(id_of(job).starts_with("wb_"), "{job}");
        assert_eq!((job["status"].as_str(), &job["object_id"]), (Some("dead"), &r["object_id"]), "{job}");
        assert!(job["batch_id"].as_str().is_some_and(|b| b.starts_with("batch_")) && job.get("alert_id").is_none());
        assert_eq!((job["external_id"].as_str(), &job["fields"]), (Some(external_id), &json!({ "title": title })));
        assert!(job["attempts"].as_u64().is_some_and(|n| n >= 1), "{job}");
        assert!(is_rfc3339(&job["created_at"]) && job["next_attempt_at"].is_null(), "{job}");
        let why = job["last_error"].as_str().unwrap_or_default();
        assert!(why.contains("HTTP 500") && why.contains("given up after"), "why it was given up: {job}");
        assert!(job.get("table").is_none() && job.get("held").is_none(), "{job}");
    }
    let (first, second) = (id_of(&dead[0]), id_of(&dead[1]));
    // One job by its ID: as listed.
    let one_path = format!("{}/{first}", writebacks_path(&bucket));
    assert_eq!(app.get(&one_path).await, (200, dead[0].clone()));
    for id in ["nope".to_string(), first.replace("wb_", "xx_")] {
        assert_eq!(app.get(&format!("{}/{id}", writebacks_path(&bucket))).await.0, 404, "{id}");
    }
    assert_eq!(app.get(&format!("{one_path}?verbose=1")).await.0, 422, "no query parameters");
    assert_eq!(writebacks(&app, &bucket, "?status=pending").await["results"], json!([]));
    assert_eq!(writebacks(&app, &bucket, "").await["results"].as_array().map(Vec::len), Some(2), "no status: both");

    // Pages of one: next_cursor is the last writeback_id, and the last page has none.
    for filter in ["", "status=dead&"] {
        let page = writebacks(&app, &bucket, &format!("?{filter}limit=1")).await;
        assert_eq!((id_of(&page["results"][0]), page["results"].as_array().map(Vec::len)), (first.clone(), Some(1)));
        assert_eq!(page["next_cursor"], first.as_str(), "{page}");
        let page = writebacks(&app, &bucket, &format!("?{filter}limit=1&cursor={first}")).await;
        assert_eq!((id_of(&page["results"][0]), page["results"].as_array().map(Vec::len)), (second.clone(), Some(1)));
        assert!(page["next_cursor"].is_null(), "{page}");
    }
    let path = writebacks_path(&bucket);
    for (query, field) in
        [("status=failed", "status"), ("limit=0", "limit"), ("cursor=obj_1", "cursor"), ("stauts=dead", "stauts")]
    {
        let (s, b) = app.get(&format!("{path}?{query}")).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{query}: {b}");
    }

    // Who may ask, and about what.
    for key in [Some("not-the-key"), None] {
        let (s, _) = app.call_as(reqwest::Method::GET, &path, None, key, None).await;
        assert_eq!(s, 401);
        let (s, _) = app.call_as(reqwest::Method::POST, &retry_path(&bucket, &first), None, key, None).await;
        assert_eq!(s, 401);
    }
    let (s, _) = app.call_as(reqwest::Method::GET, &path, None, Some(&app.api_key), Some("elsewhere")).await;
    assert_eq!(s, 404, "another namespace's bucket is not found");
    let unknown_bucket = hookline::ids::BucketId::generate().to_string();
    assert_eq!(app.get(&writebacks_path(&unknown_bucket)).await.0, 404);
    assert_eq!(retry(&app, &unknown_bucket, &first).await.0, 404);
    let plain = app.create_bucket("no-adapter", json!({})).await;
    let (s, b) = app.get(&writebacks_path(&plain)).await;
    assert_eq!(s, 404);
    assert!(b["error"]["message"].as_str().is_some_and(|m| m.contains("has no source adapter")), "{b}");
    assert_eq!(retry(&app, &plain, &first).await.0, 404);
    let never = hookline::adapter::writeback::operator::WritebackId::Batch {
        batch_id: hookline::ids::BatchId::generate(),
        object_id: hookline::ids::ObjectId::generate(),
    };
    for id in [never.to_string(), "nope".into(), first.replace("wb_", "xx_")] {
        let (s, b) = retry(&app, &bucket, &id).await;
        assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")), "{id}: {b}");
    }
    assert!(rx.succeeded().is_empty(), "the receiver has failed everything so far");

    // Fixed: the retry re-queues the first job, which goes through; the second stays dead.
    rx.set_default(200);
    let (s, job) = retry(&app, &bucket, &first).await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(
        (id_of(&job), job["status"].as_str(), job["attempts"].as_u64()),
        (first.clone(), Some("pending"), Some(0))
    );
    assert!(is_rfc3339(&job["next_attempt_at"]) && job.get("held").is_none(), "{job}");
    assert!(job["created_at"].as_str() > dead[0]["created_at"].as_str(), "counted from the retry: {job}");
    assert_eq!(job["last_error"], dead[0]["last_error"], "kept until the next attempt replaces it");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let left = listed(&app, &bucket, "", 1).await;
    assert_eq!((id_of(&left[0]), left[0]["status"].as_str()), (second, Some("dead")), "the retried one is done");
    assert_eq!(app.get(&one_path).await.0, 404, "written back: gone");
    let sent = rx.succeeded();
    assert_eq!(sent.len(), 1, "only the retried job is sent: {sent:?}");
    assert_eq!(
        sent[0].body,
        json!({"object_id": one["object_id"], "external_id": "row-1", "fields": {"title": "One"},
            "batch_id": dead[0]["batch_id"], "trigger": "on_batch_complete", "writeback_id": first})
    );
    let labels = [("adapter", "generic_webhook"), ("outcome", "requeued")];
    assert!(metric_reaches(&app, "hookline_writebacks_total", &labels, 1.0).await);
}

/// While writeback is off a re-queued job waits (its answer says so), is not retried again
/// (409: it is pending), and survives a restart; once writeback is on again, it is sent.
#[tokio::test]
async fn a_retry_while_writeback_is_off_waits_and_survives_a_restart() {
    let mut app = TestApp::start_with(short_lived()).await;
    let rx = Upstream::start(500).await;
    let url = rx.url("/wb");
    let (bucket, secret) =
        bucket_with(&app, "paused", json!({"title": {"type": "string"}}), generic_adapter(&url, true)).await;
    let r = ingest(&app, &bucket, &secret, json!({"type": "x", "id": "row-1", "title": "Later"})).await;
    let id = id_of(&listed(&app, &bucket, "?status=dead", 1).await[0]);
    let bucket_path = format!("/v1/buckets/{bucket}");
    let (s, b) = app.patch(&bucket_path, json!({"source_adapter": generic_adapter(&url, false)})).await;
    assert_eq!(s, 200, "{b}");
    let tried = rx.seen().len();

    let (s, job) = retry(&app, &bucket, &id).await;
    assert_eq!((s, job["status"].as_str()), (202, Some("pending")), "{job}");
    assert!(job["held"].as_str().is_some_and(|h| h.contains("writeback is off")), "says why it waits: {job}");
    let (s, b) = retry(&app, &bucket, &id).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("conflict")), "{b}");
    assert!(b["error"]["message"].as_str().is_some_and(|m| m.contains("is pending")), "{b}");

    app.restart().await;
    let pending = listed(&app, &bucket, "?status=pending", 1).await;
    assert_eq!((id_of(&pending[0]), pending[0]["attempts"].as_u64()), (id.clone(), Some(0)), "{pending:?}");
    assert_eq!((&pending[0]["created_at"], &pending[0]["held"]), (&job["created_at"], &job["held"]));
    assert_eq!(rx.seen().len(), tried, "nothing is sent while writeback is off: {:?}", rx.seen());

    rx.set_default(200);
    let (s, b) = app.patch(&bucket_path, json!({"source_adapter": generic_adapter(&url, true)})).await;
    assert_eq!(s, 200, "{b}");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    assert_eq!(rx.succeeded()[0].body["object_id"], r["object_id"]);
    listed(&app, &bucket, "", 0).await;
}

/// An alert's job is named by a URL-path-safe writeback_id whatever its caller's alert ID
/// holds. Retried while the adapter's actor is stopped (after failing past its restart
/// budget), it is re-queued by the registry and waits, saying why; once a PATCH starts the
/// adapter again, it is sent.
#[tokio::test]
async fn an_alert_writeback_is_retried_while_the_adapter_is_stopped() {
    let app = TestApp::start_with(short_lived()).await;
    let rx = Upstream::start(500).await;
    let (bucket, secret) = bucket_with(
        &app,
        "alerts",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"},
            "batching": {"mode": "immediate"},
            "writeback": {"trigger": "on_alert", "writeback_url": rx.url("/wb"),
                "field_mapping": [{"source_path": "verdict", "target_field": "verdict"}]}}),
    )
    .await;
    let r = ingest(&app, &bucket, &secret, json!({"type": "x", "title": "Flagged"})).await;
    let oid = r["object_id"].as_str().expect("object_id");
    let alert = json!({"alert_id": "run-7:verdict.v2", "results": {"verdict": "fake"}});
    let (s, a) = app.post(&format!("/v1/buckets/{bucket}/objects/{oid}/alerts"), alert).await;
    assert_eq!((s, a["writeback"].as_str()), (202, Some("queued")), "{a}");
    let dead = listed(&app, &bucket, "?status=dead", 1).await;
    let id = id_of(&dead[0]);
    assert_eq!((dead[0]["alert_id"].as_str(), dead[0].get("batch_id")), (Some("run-7:verdict.v2"), None));
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'), "{id}");

    // Crash the actor until its restart budget is spent (a crash sent while it restarts is
    // lost, so keep crashing): the registry then records that it stopped.
    let stopped = || async {
        let _ = app.post(&format!("/v1/debug/crash/adapter.{bucket}"), json!({})).await;
        status(&app, &bucket).await["last_error"].as_str().is_some_and(|e| e.contains("stopped after failing"))
    };
    assert!(eventually(Duration::from_secs(60), stopped).await, "{}", status(&app, &bucket).await);
    rx.set_default(200);
    let (s, job) = retry(&app, &bucket, &id).await;
    assert_eq!((s, job["status"].as_str(), job["alert_id"].as_str()), (202, Some("pending"), Some("run-7:verdict.v2")));
    assert!(job["held"].as_str().is_some_and(|h| h.contains("not running")), "{job}");
    assert_eq!(listed(&app, &bucket, "?status=pending", 1).await[0]["held"], job["held"]);
    assert_eq!(status(&app, &bucket).await["actor"], "stopped", "re-queued by the registry, not an actor");

    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"description": "running again"})).await;
    assert_eq!(s, 200, "{b}");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let sent = &rx.succeeded()[0].body;
    assert_eq!((sent["alert_id"].as_str(), &sent["fields"]), (Some("run-7:verdict.v2"), &json!({"verdict": "fake"})));
    listed(&app, &bucket, "", 0).await;
}

/// A Supabase writeback that reads its row's id from `external_id_field`, for an object
/// without that field, is not queued (skipped), naming the field; the object's own
/// `source.external_id` (its row's `id`, another column) is not used instead.
#[tokio::test]
async fn a_writeback_without_its_external_id_field_is_skipped_naming_it() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let conn = supabase_connection(&app, &pg.url(""), "srk-extid-0001").await;
    let bucket =
        app.create_bucket("by-url", json!({"title": {"type": "string"}, "listing_url": {"type": "string"}})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "supabase", "connection_id": conn["connection_id"],
                "table": "listings",
                "field_mapping": {"record.title": "title", "record.listing_url": "listing_url"},
                "batching": {"mode": "count", "max_batch_size": 1},
                "writeback": {"external_id_field": "listing_url",
                    "field_mapping": [{"source_path": "status", "target_field": "mp_status"},
                        {"source_path": "title", "target_field": "mp_title"}]}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // Saved, with a warning: rows are looked up by id_column (id), not by listing_url.
    assert!(b["warnings"].to_string().contains(r#"set id_column to \"listing_url\""#), "{b}");
    // And one for the property named without `metadata.`, which a batch's result does not
    // hold at its top; none for `status`, which it does.
    let warnings = b["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 2, "{b}");
    let path = warnings[1].as_str().unwrap();
    assert!(path.starts_with("source_adapter.writeback.field_mapping[1].source_path: \"title\""), "{b}");
    assert!(path.ends_with("a property of the object is metadata.title"), "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap_or_default().to_string();
    let r = ingest(&app, &bucket, &secret, db_insert("listings", json!({"id": 2001, "title": "No URL"}))).await;
    assert_eq!(r["status"], "buffered", "{r}");
    // Not queued (it could only fail, and no retry could fix it): counted and said in the
    // status, as an alert's skipped writeback is, not left in the dead list.
    assert!(metric_reaches(&app, "hookline_writebacks_total", &[("outcome", "skipped")], 1.0).await);
    let why = status(&app, &bucket).await["last_error"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("skipped") && why.contains("no listing_url (the writeback's external_id_field)"), "{why}");
    listed(&app, &bucket, "", 0).await;
    assert!(pg.seen().is_empty(), "nothing was written to another row");
}

/// A daemon with `delivery` settings and one object of a generic_webhook bucket that writes
/// `verdict` and `note` back to `url` on alerts: (app, bucket, the object's alerts path).
async fn one_row_on_alert(delivery: &str, url: &str, name: &str) -> (TestApp, String, String) {
    one_object_on_alert(delivery, url, name, true).await
}

/// [`one_row_on_alert`], its object keyed by the upstream's `id` (`keyed`: the row's
/// external ID) or not (no dedup_key: an object without an external ID).
async fn one_object_on_alert(delivery: &str, url: &str, name: &str, keyed: bool) -> (TestApp, String, String) {
    let app = TestApp::start_with(Options { delivery_toml: Some(delivery.into()), ..Default::default() }).await;
    let mut adapter = json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"},
        "batching": {"mode": "immediate"},
        "writeback": {"trigger": "on_alert", "writeback_url": url,
            "field_mapping": [{"source_path": "verdict", "target_field": "verdict"},
                {"source_path": "note", "target_field": "note"}]}});
    if keyed {
        adapter["dedup_key"] = json!("id");
    }
    let (bucket, secret) = bucket_with(&app, name, json!({"title": {"type": "string"}}), adapter).await;
    let r = ingest(&app, &bucket, &secret, json!({"type": "x", "id": "row-8", "title": "t"})).await;
    let oid = r["object_id"].as_str().expect("object_id").to_string();
    let alerts = format!("/v1/buckets/{bucket}/objects/{oid}/alerts");
    (app, bucket, alerts)
}

/// [`one_row_on_alert`] (named `name`) writing back to a receiver that fails (500), with
/// jobs tried for `max_age` seconds, `retry` seconds apart, and alert `a1` (a verdict and a
/// note) posted on the row once its first attempt failed: the job waits for its retry.
/// (receiver, app, bucket, the row's alerts path).
async fn first_alert_failed(name: &str, max_age: u64, retry: u64) -> (Upstream, TestApp, String, String) {
    first_alert_failed_on(name, max_age, retry, true).await
}

/// [`first_alert_failed`] on an object keyed or not (see [`one_object_on_alert`]).
async fn first_alert_failed_on(
    name: &str,
    max_age: u64,
    retry: u64,
    keyed: bool,
) -> (Upstream, TestApp, String, String) {
    let delivery = format!(
        "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n\
         request_timeout_seconds = 2\nmax_age_seconds = {max_age}\nretry_schedule_seconds = [{retry}]\n"
    );
    let rx = Upstream::start(500).await;
    let (app, bucket, alerts) = one_object_on_alert(&delivery, &rx.url("/wb"), name, keyed).await;
    let (s, a) = app.post(&alerts, json!({"alert_id": "a1", "results": {"verdict": "first", "note": "n1"}})).await;
    assert_eq!(s, 202, "{a}");
    assert!(eventually(WAIT, || async { rx.seen().len() == 1 }).await, "{:?}", rx.seen());
    (rx, app, bucket, alerts)
}

/// Writebacks of one row land in order: a newer job takes over an older one still waiting
/// for its retry (with the fields it lacks), so the older result never lands after it. So
/// do those of an object without an external ID (no dedup_key): it is one record to its
/// receiver all the same.
#[tokio::test]
async fn a_retried_older_writeback_never_lands_after_a_newer_one_of_its_row() {
    for keyed in [true, false] {
        older_writeback_taken_over(keyed).await;
    }
}

async fn older_writeback_taken_over(keyed: bool) {
    // Its retry is due 2 s later.
    let (rx, app, bucket, alerts) = first_alert_failed_on("ordered", 60, 2, keyed).await;
    rx.set_default(204);
    let (s, a) = app.post(&alerts, json!({"alert_id": "a2", "results": {"verdict": "second"}})).await;
    assert_eq!(s, 202, "{a}");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    // Past the first job's retry: nothing more is sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let sent: Vec<Value> = rx.succeeded().into_iter().map(|s| s.body).collect();
    assert_eq!(sent.len(), 1, "keyed {keyed}: {sent:?}");
    assert_eq!(sent[0]["alert_id"], "a2", "keyed {keyed}: {sent:?}");
    assert_eq!(
        sent[0]["fields"],
        json!({"verdict": "second", "note": "n1"}),
        "keyed {keyed}: the older job's other field carried over"
    );
    listed(&app, &bucket, "", 0).await;
    assert!(metric_reaches(&app, "hookline_writebacks_total", &[("outcome", "superseded")], 1.0).await);
}

/// A dead job retried by hand while a newer job of its row is in flight keeps its place in
/// the row's order (its cause's time): it is sent after the newer one, with only the fields
/// the newer one lacks, so it cannot put an older value back.
#[tokio::test]
async fn a_retried_dead_writeback_does_not_undo_a_newer_one_in_flight() {
    use crate::outbound_receiver::Receiver;
    let delivery = "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n\
        request_timeout_seconds = 10\nmax_age_seconds = 2\nretry_schedule_seconds = [1]\n";
    let rx = Receiver::start(500).await;
    let (app, bucket, alerts) = one_row_on_alert(delivery, &rx.url("/wb"), "requeued").await;
    let (s, a) = app.post(&alerts, json!({"alert_id": "a1", "results": {"verdict": "old", "note": "n1"}})).await;
    assert_eq!(s, 202, "{a}");
    let dead = listed(&app, &bucket, "?status=dead", 1).await;
    // The newer result goes out, slowly: the old one is retried by hand meanwhile.
    rx.set_default(200);
    // Long enough for the retry (a barrier and a commit) and a scan on a loaded machine.
    rx.then(200, Duration::from_secs(6));
    let before = rx.count();
    let (s, a) = app.post(&alerts, json!({"alert_id": "a2", "results": {"verdict": "new"}})).await;
    assert_eq!(s, 202, "{a}");
    assert!(eventually(WAIT, || async { rx.count() > before }).await, "the newer job was not sent");
    let (s, job) = retry(&app, &bucket, &id_of(&dead[0])).await;
    assert_eq!(s, 202, "{job}");
    listed(&app, &bucket, "", 0).await;
    let sent: Vec<Value> = rx.captured()[before..].iter().map(|c| serde_json::from_slice(&c.body).unwrap()).collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!((&sent[0]["alert_id"], &sent[0]["fields"]), (&json!("a2"), &json!({"verdict": "new"})), "{sent:?}");
    assert_eq!((&sent[1]["alert_id"], &sent[1]["fields"]), (&json!("a1"), &json!({"note": "n1"})), "{sent:?}");
}

/// A job that took over an older one of its row (with the field the older one had and it
/// lacks), then died, keeps that field when retried by hand: mapped again from its own
/// alert's results, which do not hold it, it would drop a result no job holds any more.
#[tokio::test]
async fn a_retried_merged_writeback_keeps_the_fields_it_took_over() {
    // It waits 3 s for its next attempt, and the newer alert takes it over.
    let (rx, app, bucket, alerts) = first_alert_failed("merged", 5, 3).await;
    let (s, a) = app.post(&alerts, json!({"alert_id": "a2", "results": {"verdict": "second"}})).await;
    assert_eq!(s, 202, "{a}");
    let dead = listed(&app, &bucket, "?status=dead", 1).await;
    assert_eq!((&dead[0]["alert_id"], &dead[0]["fields"]), (&json!("a2"), &json!({"verdict": "second", "note": "n1"})));
    // Given up by the setting this daemon has: max_age_seconds, not the hours it overrides.
    let why = dead[0]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("(delivery.max_age_seconds) was reached"), "{why}");
    listed(&app, &bucket, "?status=pending", 0).await;

    rx.set_default(200);
    let (s, job) = retry(&app, &bucket, &id_of(&dead[0])).await;
    assert_eq!((s, &job["fields"]), (202, &json!({"verdict": "second", "note": "n1"})), "{job}");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "{:?}", rx.seen());
    let sent = &rx.succeeded()[0].body;
    assert_eq!((&sent["alert_id"], &sent["fields"]), (&json!("a2"), &json!({"verdict": "second", "note": "n1"})));
    listed(&app, &bucket, "", 0).await;
}

/// PATCHes `bucket`'s adapter to a supabase one on table `things` of `pg`, writing each
/// object's title back to `column` as its batch (of one) completes.
async fn switch_to_supabase(app: &TestApp, bucket: &str, pg: &Upstream, column: &str) {
    let conn = supabase_connection(app, &pg.url(""), "srk-switched-0042").await;
    let supabase = json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "table": "things",
        "field_mapping": {"record.title": "title"}, "batching": {"mode": "count", "max_batch_size": 1},
        "writeback": {"enabled": true, "trigger": "on_batch_complete",
            "field_mapping": [{"source_path": "metadata.title", "target_field": column}]}});
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({ "source_adapter": supabase })).await;
    assert_eq!(s, 200, "{b}");
}

/// A generic_webhook bucket (`name`) whose receiver (`generic`) fails, with one job pending
/// after its first attempt, retries a minute apart (so that what happens to it next is the
/// PATCH's doing, not its next attempt's), and a PostgREST (`pg`) to switch to:
/// (app, generic, pg, bucket, secret, the pending job).
async fn generic_job_pending(name: &str) -> (TestApp, Upstream, Upstream, String, String, Value) {
    let delivery = "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n\
        request_timeout_seconds = 2\nmax_age_hours = 1\nretry_schedule_seconds = [60]\n";
    let app = TestApp::start_with(Options { delivery_toml: Some(delivery.into()), ..Default::default() }).await;
    let generic = Upstream::start(500).await;
    let pg = Upstream::start(204).await;
    let schema = json!({"title": {"type": "string"}});
    let (bucket, secret) = bucket_with(&app, name, schema, generic_adapter(&generic.url("/wb"), true)).await;
    let r = ingest(&app, &bucket, &secret, json!({"id": "t1", "title": "T1"})).await;
    assert_eq!(r["status"], "buffered", "{r}");
    assert!(eventually(WAIT, || async { !generic.seen().is_empty() }).await, "the generic target was never tried");
    let pending = listed(&app, &bucket, "?status=pending", 1).await.remove(0);
    (app, generic, pg, bucket, secret, pending)
}

/// Checks that `pending` (a generic_webhook job) was given up when the bucket's adapter
/// became a supabase one, saying why, and that a retry by hand is a 409 saying why; the job
/// as listed dead.
async fn given_up_for_its_type(app: &TestApp, bucket: &str, pending: &Value) -> Value {
    let dead = listed(app, bucket, "?status=dead", 1).await.remove(0);
    assert_eq!(id_of(&dead), id_of(pending), "{dead}");
    let why = dead["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("queued by the bucket's generic_webhook adapter") && why.contains("not retried"), "{dead}");
    let (s, b) = retry(app, bucket, &id_of(&dead)).await;
    assert_eq!(s, 409, "{b}");
    assert!(b["error"]["message"].as_str().unwrap_or_default().contains("queued by"), "{b}");
    assert_eq!(listed(app, bucket, "?status=dead", 1).await[0]["attempts"], dead["attempts"], "left dead");
    dead
}

/// A writeback is sent only by an adapter of the type that queued it: after a PATCH from
/// generic_webhook to supabase, a generic job still pending (its target failing) must not
/// become a PostgREST PATCH, with the service-role key, of whatever row its ID names. It is
/// given up, saying why; the new adapter's own jobs go out.
#[tokio::test]
async fn a_pending_writeback_is_not_sent_by_an_adapter_of_another_type() {
    let (app, _generic, pg, bucket, secret, pending) = generic_job_pending("switched").await;
    switch_to_supabase(&app, &bucket, &pg, "title2").await;
    given_up_for_its_type(&app, &bucket, &pending).await;

    // The supabase adapter's own row goes out, and only it.
    let row = json!({"type": "INSERT", "table": "things", "schema": "public", "record": {"id": 5, "title": "Five"}});
    assert_eq!(ingest(&app, &bucket, &secret, row).await["status"], "buffered");
    assert!(eventually(WAIT, || async { !pg.succeeded().is_empty() }).await, "{}", status(&app, &bucket).await);
    let seen = pg.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0].query.as_str(), &seen[0].body), ("id=eq.5", &json!({"title2": "Five"})), "{seen:?}");
}

/// The same with a new adapter that writes nothing back (no worker runs to give the job up
/// at its first attempt): it is given up at once all the same, so a PATCH back to its type
/// does not send it; a retry by hand then does.
#[tokio::test]
async fn a_pending_writeback_of_another_type_is_given_up_when_the_new_adapter_writes_nothing_back() {
    let (app, generic, pg, bucket, _secret, pending) = generic_job_pending("switched-quiet").await;
    let conn = supabase_connection(&app, &pg.url(""), "srk-switched-0043").await;
    let quiet = json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "table": "things",
        "field_mapping": {"record.title": "title"}, "batching": {"mode": "immediate"}});
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({ "source_adapter": quiet })).await;
    assert_eq!(s, 200, "{b}");
    let dead = given_up_for_its_type(&app, &bucket, &pending).await;

    // Back to generic_webhook, the target fixed: the job stays dead, and nothing is sent.
    generic.set_default(200);
    let adapter = generic_adapter(&generic.url("/wb"), true);
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({ "source_adapter": adapter })).await;
    assert_eq!(s, 200, "{b}");
    listed(&app, &bucket, "?status=dead", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(generic.succeeded().is_empty(), "{:?}", generic.seen());
    listed(&app, &bucket, "?status=pending", 0).await;
    // Its type's again: a retry by hand sends it.
    let (s, b) = retry(&app, &bucket, &id_of(&dead)).await;
    assert_eq!(s, 202, "{b}");
    assert!(eventually(WAIT, || async { !generic.succeeded().is_empty() }).await, "{:?}", generic.seen());
    assert!(pg.seen().is_empty(), "{:?}", pg.seen());
}

/// A retry maps a dead job again with the adapter's writeback as it is now: a column renamed
/// in the mapping (the fix of a "column not found") applies to the jobs that failed on it,
/// a batch's from its object and an alert's from its results too. It sent what it was queued
/// with, so no fix on hookline's side could ever get it through.
#[tokio::test]
async fn a_retried_writeback_is_mapped_again_with_the_adapter_as_it_is_now() {
    let app = TestApp::start_with(short_lived()).await;
    let rx = Upstream::start(500).await;
    let schema = json!({"title": {"type": "string"}});
    let (batches, secret) = bucket_with(&app, "remapped", schema.clone(), generic_adapter(&rx.url("/wb"), true)).await;
    ingest(&app, &batches, &secret, json!({"type": "x", "id": "row-1", "title": "One"})).await;
    let on_alert = |target: &str| {
        json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"}, "dedup_key": "id",
            "batching": {"mode": "immediate"},
            "writeback": {"enabled": true, "trigger": "on_alert", "writeback_url": rx.url("/alerts"),
                "field_mapping": [{"source_path": "verdict", "target_field": target}]}})
    };
    let (alerts, secret) = bucket_with(&app, "remapped-alerts", schema, on_alert("verdict")).await;
    let made = ingest(&app, &alerts, &secret, json!({"type": "x", "id": "row-2", "title": "Two"})).await;
    let oid = made["object_id"].as_str().unwrap();
    let (s, b) =
        app.post(&format!("/v1/buckets/{alerts}/objects/{oid}/alerts"), json!({"results": {"verdict": "fake"}})).await;
    assert_eq!((s, b["writeback"].as_str()), (202, Some("queued")), "{b}");
    let dead_batch = listed(&app, &batches, "?status=dead", 1).await;
    let dead_alert = listed(&app, &alerts, "?status=dead", 1).await;
    assert_eq!(
        (&dead_batch[0]["fields"], &dead_alert[0]["fields"]),
        (&json!({"title": "One"}), &json!({"verdict": "fake"}))
    );

    // The mappings fixed, the receiver up: each retry sends the new column.
    let mut renamed = generic_adapter(&rx.url("/wb"), true);
    renamed["writeback"]["field_mapping"][0]["target_field"] = json!("title_v2");
    for (bucket, adapter) in [(&batches, renamed), (&alerts, on_alert("verdict_v2"))] {
        let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({ "source_adapter": adapter })).await;
        assert_eq!(s, 200, "{b}");
    }
    rx.set_default(200);
    for (bucket, dead) in [(&batches, &dead_batch[0]), (&alerts, &dead_alert[0])] {
        let (s, b) = retry(&app, bucket, &id_of(dead)).await;
        assert_eq!(s, 202, "{b}");
    }
    assert!(eventually(WAIT, || async { rx.succeeded().len() == 2 }).await, "{:?}", rx.seen());
    // Mapped again, it is another request than the ones that failed: another Idempotency-Key.
    let key_of = |fields: &Value| {
        let seen = rx.seen();
        let mut keys: Vec<String> = seen
            .iter()
            .filter(|s| s.body["fields"] == *fields)
            .filter_map(|s| s.headers.get("idempotency-key").cloned())
            .collect();
        keys.dedup();
        keys
    };
    let (old, new) = (key_of(&json!({"title": "One"})), key_of(&json!({"title_v2": "One"})));
    assert!(old.len() == 1 && new.len() == 1 && old != new, "{old:?} {new:?}");
    let mut sent: Vec<Value> = rx.succeeded().iter().map(|s| s.body["fields"].clone()).collect();
    sent.sort_by_key(|f| f.to_string());
    assert_eq!(sent, [json!({"title_v2": "One"}), json!({"verdict_v2": "fake"})]);
}

/// An object a generic_webhook adapter made, in a batch submitted once the bucket's adapter
/// is a supabase one: its ID is the generic source's, which names no row of the table, so no
/// service-role PATCH is queued for it (skipped, saying why).
#[tokio::test]
async fn an_object_of_another_adapter_type_is_not_written_back() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let mut generic = generic_adapter(&Upstream::start(200).await.url("/wb"), true);
    generic["batching"]["auto_submit"] = json!(false);
    let (bucket, secret) = bucket_with(&app, "taken-over", json!({"title": {"type": "string"}}), generic).await;
    assert_eq!(
        ingest(&app, &bucket, &secret, json!({"id": "7", "title": "Generic seven"})).await["status"],
        "buffered"
    );
    let (_, batches) = app.get(&format!("/v1/buckets/{bucket}/batches")).await;
    let batch_id = batches["results"][0]["batch_id"].as_str().unwrap().to_string();

    switch_to_supabase(&app, &bucket, &pg, "title").await;
    let (s, b) = app.post(&format!("/v1/buckets/{bucket}/batches/{batch_id}/submit"), json!({})).await;
    assert_eq!((s, b["status"].as_str()), (200, Some("completed")), "{b}");
    let skipped = || async {
        status(&app, &bucket).await["last_error"].as_str().is_some_and(|e| e.contains("made by a generic_webhook"))
    };
    assert!(eventually(WAIT, skipped).await, "{}", status(&app, &bucket).await);
    assert_eq!(writebacks(&app, &bucket, "").await["results"], json!([]), "nothing queued");
    assert!(pg.seen().is_empty(), "{:?}", pg.seen());
}

/// A job stored by a binary from before jobs recorded their adapter type, pending when the
/// bucket's adapter is PATCHed from generic_webhook to supabase: its object's source says it
/// is not this adapter's, and it is given up, not sent as a service-role PATCH.
#[tokio::test]
async fn an_untyped_job_of_another_adapters_object_is_not_sent() {
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let generic = Upstream::start(500).await;
    let pg = Upstream::start(204).await;
    let schema = json!({"title": {"type": "string"}});
    let (bucket, secret) = bucket_with(&app, "untyped", schema, generic_adapter(&generic.url("/wb"), true)).await;
    ingest(&app, &bucket, &secret, json!({"id": "z1", "title": "Zed"})).await;
    listed(&app, &bucket, "?status=pending", 1).await;
    // As an older binary stored it: no queued_by.
    let backend = crate::support::stop_and_open(&mut app).await;
    let stored = crate::support::stored_entries(&backend, "wb", &format!("{bucket}/job/"));
    assert_eq!(stored.len(), 1, "{stored:?}");
    let mut job: Value = serde_json::from_slice(&stored[0].1).unwrap();
    assert_eq!(job.as_object_mut().unwrap().remove("queued_by"), Some(json!("generic_webhook")), "{job}");
    let mut b = Batch::new();
    b.put(Keyspace::custom("wb"), &stored[0].0, &job);
    backend.apply(&b).unwrap();
    futures::executor::block_on(backend.flush()).unwrap();
    drop(backend);
    app.start_again().await;

    switch_to_supabase(&app, &bucket, &pg, "title").await;
    let dead = listed(&app, &bucket, "?status=dead", 1).await;
    let why = dead[0]["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("made by a generic_webhook source adapter"), "{dead:?}");
    assert!(pg.seen().is_empty(), "{:?}", pg.seen());
}

/// A Supabase adapter on `conn` (table `listings`, rows found by `id_column`) writing an
/// alert's `verdict` back to `mp_verdict`.
fn alerting_supabase_adapter(conn: &Value, id_column: &str) -> Value {
    json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "table": "listings",
        "id_column": id_column, "field_mapping": {"record.title": "title"},
        "batching": {"mode": "immediate"},
        "writeback": {"trigger": "on_alert",
            "field_mapping": [{"source_path": "verdict", "target_field": "mp_verdict"}]}})
}

/// Raises an alert on `oid` and waits for its writeback to reach `pg`: the queries sent.
async fn alert_written_back_by(app: &TestApp, pg: &Upstream, bucket: &str, oid: &str) -> Vec<String> {
    let alert = json!({"alert_id": "a1", "results": {"verdict": "fake"}});
    let (s, a) = app.post(&format!("/v1/buckets/{bucket}/objects/{oid}/alerts"), alert).await;
    assert_eq!(s, 202, "{a}");
    assert!(eventually(WAIT, || async { !pg.seen().is_empty() }).await, "written back");
    pg.seen().iter().map(|s| s.query.clone()).collect()
}

/// A Supabase adapter's objects (and buffered events, and writeback jobs) are found by their
/// rows' `id_column` values, which cannot be worked out again for another column: a PATCH to
/// another `id_column` is a 422 naming it while the bucket holds any, since a writeback would
/// filter the new column by the old column's value (`?rank=eq.1` for the row whose `id` is 1)
/// and write another row. In an empty bucket it is taken; refused, the adapter still writes
/// its rows back by `id`.
#[tokio::test]
async fn a_supabase_id_column_cannot_change_under_existing_objects() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let conn = supabase_connection(&app, &pg.url(""), "srk-idcol-0001").await;
    let adapter = |id_column: &str| alerting_supabase_adapter(&conn, id_column);
    let (empty, _) = bucket_with(&app, "idcol-empty", json!({"title": {"type": "string"}}), adapter("id")).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{empty}"), json!({"source_adapter": adapter("rank")})).await;
    assert_eq!(s, 200, "nothing to follow it in an empty bucket: {b}");
    let (bucket, secret) = bucket_with(&app, "idcol", json!({"title": {"type": "string"}}), adapter("id")).await;
    let r = ingest(&app, &bucket, &secret, db_insert("listings", json!({"id": 1, "rank": 7, "title": "Loft"}))).await;
    let oid = r["object_id"].as_str().expect("object_id").to_string();
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter("rank")})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.id_column")), "{b}");
    let (_, view) = app.get(&format!("/v1/buckets/{bucket}")).await;
    assert_eq!(view["source_adapter"]["id_column"], "id", "unchanged: {view}");
    assert_eq!(alert_written_back_by(&app, &pg, &bucket, &oid).await, ["id=eq.1"], "the row's own id");
}

/// Credentials of another Supabase project (another connection) under a bucket with objects
/// are taken, with a warning: the objects' writebacks now go to that project, matched by the
/// same row IDs. Mended credentials of the same project (another connection to the same URL)
/// say nothing.
#[tokio::test]
async fn another_supabase_project_under_existing_objects_is_warned_about() {
    let app = TestApp::start().await;
    let (staging, prod) = (Upstream::start(204).await, Upstream::start(204).await);
    let c1 = supabase_connection(&app, &staging.url(""), "srk-staging-0001").await;
    let same_project = supabase_connection(&app, &staging.url(""), "srk-staging-0002").await;
    let c2 = supabase_connection(&app, &prod.url(""), "srk-prod-0000002").await;
    let adapter = |conn: &Value| {
        json!({"adapter_type": "supabase", "connection_id": conn["connection_id"], "table": "listings",
            "field_mapping": {"record.title": "title"}, "batching": {"mode": "immediate"}})
    };
    let (bucket, secret) = bucket_with(&app, "proj", json!({"title": {"type": "string"}}), adapter(&c1)).await;
    ingest(&app, &bucket, &secret, db_insert("listings", json!({"id": 1, "title": "staging row"}))).await;
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter(&same_project)})).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("warnings").is_none(), "the same project: {b}");
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter(&c2)})).await;
    assert_eq!(s, 200, "{b}");
    let warnings: Vec<&str> = b["warnings"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    assert!(warnings.len() == 1 && warnings[0].contains("another project"), "{warnings:?}");
}

/// A raw HTTP/1.1 server answering 204 to everything and keeping each request's header
/// lines as sent: a header given twice stays two lines (a parsed header map would hide it).
async fn raw_receiver() -> (SocketAddr, Arc<Mutex<Vec<Vec<String>>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let head = text.split("\r\n\r\n").next().unwrap_or_default();
                s.lock().unwrap().push(head.lines().map(str::to_string).collect());
                let _ = sock.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").await;
            });
        }
    });
    (addr, seen)
}

/// The values of the header `name` in a request head's lines, one per line it takes.
fn header_lines(head: &[String], name: &str) -> Vec<String> {
    head.iter()
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// Ingests one event into `bucket` (a generic adapter writing back to a raw receiver, each
/// event its own batch) and waits for its writeback: the head of the first request `seen`.
async fn one_writeback_head(
    app: &TestApp,
    seen: &Arc<Mutex<Vec<Vec<String>>>>,
    bucket: &str,
    secret: &str,
) -> Vec<String> {
    ingest(app, bucket, secret, json!({"type": "x", "title": "t"})).await;
    assert!(eventually(WAIT, || async { !seen.lock().unwrap().is_empty() }).await, "no writeback came");
    let head = seen.lock().unwrap()[0].clone();
    head
}

/// Each header a generic writeback sends goes out once (writeback code review): a
/// generic_webhook connection may not give a name twice in two letter cases, nor set the
/// writeback's own `Idempotency-Key` (a 422 naming the header, for a connection and inline
/// credentials alike, as a webhook channel refuses them); its `Content-Type` replaces the
/// default instead of going out beside it.
#[tokio::test]
async fn a_generic_connections_headers_go_out_once() {
    let app = TestApp::start().await;
    let (addr, seen) = raw_receiver().await;
    let url = format!("http://{addr}/wb");
    let connection = |headers: Value| {
        json!({"name": "hdr", "provider_type": "generic_webhook",
            "provider_config": {"url": url, "headers": headers}})
    };
    for (headers, field, why) in [
        (
            json!({"Authorization": "Bearer one-token-123", "authorization": "Bearer two-token-456"}),
            "provider_config.headers.authorization",
            "given twice",
        ),
        (json!({"Idempotency-Key": "static-key"}), "provider_config.headers.Idempotency-Key", "set by hookline"),
        (json!({"idempotency-KEY": "static-key"}), "provider_config.headers.idempotency-KEY", "set by hookline"),
    ] {
        let (s, b) = app.post("/v1/organizations/connections", connection(headers.clone())).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{headers}: {b}");
        assert!(b["error"]["message"].as_str().unwrap_or_default().contains(why), "{b}");
    }
    // A generic adapter writing back to the receiver, with `credentials` its own or
    // `connection_id` a connection's.
    let adapter = |credentials: Value| {
        let mut a = json!({"adapter_type": "generic_webhook",
            "field_mapping": {"title": "title"}, "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"writeback_url": url,
                "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}});
        a.as_object_mut().unwrap().extend(credentials.as_object().cloned().unwrap_or_default());
        a
    };
    let bucket = app.create_bucket("inline", json!({"title": {"type": "string"}})).await;
    let inline = adapter(json!({"connection": {"credentials": {"headers": {"Idempotency-Key": "static-key"}}}}));
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": inline})).await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (422, Some("source_adapter.connection.credentials.headers.Idempotency-Key")),
        "{b}"
    );

    let headers = json!({"Content-Type": "application/json; charset=utf-8", "Authorization": "Bearer one-token-123"});
    let (s, conn) = app.post("/v1/organizations/connections", connection(headers)).await;
    assert_eq!(s, 201, "{conn}");
    let with_conn = adapter(json!({"connection_id": conn["connection_id"]}));
    let (bucket, secret) = bucket_with(&app, "once", json!({"title": {"type": "string"}}), with_conn).await;
    let head = one_writeback_head(&app, &seen, &bucket, &secret).await;
    assert_eq!(header_lines(&head, "content-type"), ["application/json; charset=utf-8"], "{head:#?}");
    assert_eq!(header_lines(&head, "authorization"), ["Bearer one-token-123"], "{head:#?}");
    assert_eq!(header_lines(&head, "idempotency-key").len(), 1, "{head:#?}");
}

/// A connection saved before those headers were refused (its record written here as such
/// a binary left it) still sends each header once: its `Content-Type` in place of the
/// default, the writeback's own `Idempotency-Key` in place of its own, one of a name it
/// gives twice (writeback code review).
#[tokio::test]
async fn a_connection_stored_with_clashing_headers_sends_each_once() {
    use hookline::catalog::connection::{GenericConfig, ProviderConfig};
    use hookline::store::{Backend, Batch, Keyspace};
    let mut app = TestApp::start().await;
    let (addr, seen) = raw_receiver().await;
    let url = format!("http://{addr}/wb");
    let (s, conn) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "old", "provider_type": "generic_webhook",
                "provider_config": {"url": url, "headers": {"Authorization": "Bearer one-token-123"}}}),
        )
        .await;
    assert_eq!(s, 201, "{conn}");
    let id = conn["connection_id"].as_str().unwrap().to_string();
    let (bucket, secret) = bucket_with(
        &app,
        "stored",
        json!({"title": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "connection_id": id,
            "field_mapping": {"title": "title"}, "batching": {"mode": "count", "max_batch_size": 1},
            "writeback": {"writeback_url": url,
                "field_mapping": [{"source_path": "metadata.title", "target_field": "title"}]}}),
    )
    .await;
    assert_eq!(app.stop(), Some(0));
    {
        let backend = app.stopped_sled().await;
        let raw = crate::support::stored_entries(&backend, "conn", &id);
        let mut stored: hookline::catalog::Connection = serde_json::from_slice(&raw[0].1).unwrap();
        let secrets = hookline::crypto::SecretBox::load(None, &app.data_dir).unwrap();
        let headers = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Idempotency-Key", "static-key"),
            ("Authorization", "Bearer one-token-123"),
            ("authorization", "Bearer two-token-456"),
        ];
        let cfg = GenericConfig {
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            url: Some(url.clone()),
        };
        stored.update(None, Some(&ProviderConfig::Generic(cfg)), &secrets);
        let mut b = Batch::new();
        b.put(Keyspace::CONNECTIONS, &id, &stored);
        backend.apply(&b).unwrap();
        futures::executor::block_on(backend.flush()).unwrap();
    }
    app.start_again().await;
    let head = one_writeback_head(&app, &seen, &bucket, &secret).await;
    assert_eq!(header_lines(&head, "content-type"), ["application/json; charset=utf-8"], "{head:#?}");
    assert_eq!(header_lines(&head, "authorization").len(), 1, "{head:#?}");
    let key = header_lines(&head, "idempotency-key");
    assert!(key.len() == 1 && key[0] != "static-key", "the writeback's own, once: {head:#?}");
}

/// Inline generic credentials are held to the rule of a connection's: headers go only to a
/// writeback_url under their `url`. A writeback_url outside it is a 422 naming it, through a
/// connection or inline, rather than an adapter whose every writeback is given up.
#[tokio::test]
async fn inline_generic_credentials_hold_the_writeback_url_to_their_url() {
    let app = TestApp::start().await;
    let rx = Upstream::start(200).await;
    let schema = json!({"title": {"type": "string"}});
    let adapter = |creds: Value| {
        json!({"adapter_type": "generic_webhook", "field_mapping": {"title": "title"},
            "batching": {"mode": "count", "max_batch_size": 1},
            "connection": {"credentials": creds},
            "writeback": {"writeback_url": rx.url("/results"),
                "field_mapping": [{"source_path": "metadata.title", "target_field": "t"}]}})
    };
    let bucket = app.create_bucket("inline", schema).await;
    let outside = adapter(json!({"headers": {"X-Token": "tok-1"}, "url": rx.url("/elsewhere")}));
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": outside})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.writeback.writeback_url")), "{b}");
    let message = b["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("/elsewhere") && !message.contains("tok-1"), "{message}");
    let under = adapter(json!({"headers": {"X-Token": "tok-1"}, "url": rx.url("/")}));
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": under})).await;
    assert_eq!(s, 200, "{b}");
}

/// `POST …/retry` of a pending writeback (its cause fixed, its next attempt an hour away)
/// sends it now: 202 with `next_attempt_at` now, and the receiver gets it, rather than a 409
/// that leaves it to its schedule.
#[tokio::test]
async fn a_retry_of_a_pending_writeback_sends_it_now() {
    let delivery = "[delivery]\nallow_insecure_http = true\nallow_private_networks = true\n\
        request_timeout_seconds = 2\nretry_schedule_seconds = [3600]\n";
    let app = TestApp::start_with(Options { delivery_toml: Some(delivery.into()), ..Default::default() }).await;
    let (rx, bucket, _) = a_failing_titled_job(&app, "hurried").await;
    let pending = listed(&app, &bucket, "?status=pending", 1).await;
    let id = id_of(&pending[0]);
    let later = pending[0]["next_attempt_at"].as_str().unwrap_or_default().to_string();
    rx.set_default(204);
    let (s, job) = retry(&app, &bucket, &id).await;
    assert_eq!((s, job["status"].as_str()), (202, Some("pending")), "{job}");
    assert!(job["next_attempt_at"].as_str().is_some_and(|at| at < later.as_str()), "now, not {later}: {job}");
    assert!(eventually(WAIT, || async { !rx.succeeded().is_empty() }).await, "sent now: {:?}", rx.seen());
    assert!(eventually(WAIT, || async { writebacks(&app, &bucket, "").await["results"] == json!([]) }).await);
}

/// The `id_column` the objects were made by is kept on the bucket through the adapter's
/// removal and another adapter type meanwhile: a Supabase adapter added back with another one
/// is refused as a direct change is, and an alert on the old object still writes back its
/// row's own `id`.
#[tokio::test]
async fn the_id_column_refusal_holds_across_a_removal_and_another_type() {
    let app = TestApp::start().await;
    let pg = Upstream::start(204).await;
    let conn = supabase_connection(&app, &pg.url(""), "srk-idcol-0003").await;
    let adapter = |id_column: &str| alerting_supabase_adapter(&conn, id_column);
    let (bucket, secret) = bucket_with(&app, "idcol-bypass", json!({"title": {"type": "string"}}), adapter("id")).await;
    let r = ingest(&app, &bucket, &secret, db_insert("listings", json!({"id": 1, "rank": 7, "title": "Loft"}))).await;
    let oid = r["object_id"].as_str().expect("object_id").to_string();
    // Direct change: refused.
    let (s, _) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter("rank")})).await;
    assert_eq!(s, 422);
    // The same change in two steps.
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": null})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter("rank")})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.id_column")), "after a removal: {b}");
    let generic = json!({"adapter_type": "generic_webhook", "batching": {"mode": "immediate"}});
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": generic})).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter("rank")})).await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("source_adapter.id_column")), "after another type: {b}");
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter("id")})).await;
    assert_eq!(s, 200, "the same column back: {b}");
    assert_eq!(alert_written_back_by(&app, &pg, &bucket, &oid).await, ["id=eq.1"], "the row's own id");
}
