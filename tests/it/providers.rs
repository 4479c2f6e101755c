//! Mux and Supabase adapters, Mux lifecycle webhooks, over HTTP against the real daemon.
//!
//! - The Mux signature scheme cross-checked against Mux's official Node SDK, both on crafted
//!   cases and on the exact bodies and headers the daemon accepted.
//! - Mux ingest: signatures (valid, tampered, stale, wrong secret, rotated), the asset fetch
//!   from a fake Mux API on 127.0.0.1 (basic auth checked), dedup on the asset id.
//! - Supabase: INSERT → UPDATE → DELETE of one row walks one object through
//!   created/updated/deleted, seen through the objects API and by an outbound receiver.
//! - `/v1/webhooks/mux/{connection_id}`: re-map and cascade delete across two buckets that
//!   share a connection, and nothing in a bucket of another connection.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hookline::adapter::mux::{self, MuxSignatureError, DEFAULT_TOLERANCE_SECS};
use serde_json::{json, Value};
use warp::Filter;

use crate::outbound::{create_webhook, http_channel};
use crate::outbound_receiver::Receiver;
use crate::support::{eventually, metric_value, stop_and_open, stored_events, Options, TestApp};

/// Mux's `video.asset.ready` example (seed 003), as raw bytes on the wire.
const SEED_003_READY: &str = r#"{"type":"video.asset.ready","request_id":null,"object":{"type":"asset","id":"0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002"},"id":"3a56ac3d-33da-4366-855b-f592d898409d","environment":{"name":"Demo pages","id":"j0863n"},"data":{"tracks":[{"type":"video","max_width":1280,"max_height":544,"max_frame_rate":23.976,"id":"0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002","duration":153.361542},{"type":"audio","max_channels":2,"max_channel_layout":"stereo","id":"FzB95vBizv02bYNqO5QVzNWRrVo5SnQju","duration":153.361497}],"status":"ready","max_stored_resolution":"SD","max_stored_frame_rate":23.976,"id":"0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002","duration":153.361542,"created_at":"2018-02-15T01:04:45.000Z","aspect_ratio":"40:17"},"created_at":"2018-02-15T01:04:45.000Z","accessor_source":null,"accessor":null}"#;

struct Case {
    name: &'static str,
    body: String,
    header: String,
    secret: &'static str,
    /// What hookline's verifier says.
    ours: Result<(), MuxSignatureError>,
    /// What the SDK must say.
    sdk_ok: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs tests/crosscheck/verify_mux_signature.cjs on the cases; returns the SDK's verdicts.
fn sdk_verdicts(cases: &[Case]) -> Vec<Value> {
    let sdk = repo().join("target/crosscheck/node/node_modules/@mux/mux-node/package.json");
    assert!(
        sdk.exists(),
        "Mux's Node SDK is not installed at {}: run tests/crosscheck/setup.sh (needs node and npm)",
        sdk.display()
    );
    let mut child = Command::new("node")
        .arg(repo().join("tests/crosscheck/verify_mux_signature.cjs"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `node` ({e}): install Node.js, then run tests/crosscheck/setup.sh"));
    let mut input = String::new();
    for c in cases {
        let expect = if c.sdk_ok { "ok" } else { "fail" };
        input += &json!({"body": c.body, "header": c.header, "secret": c.secret, "expect": expect}).to_string();
        input.push('\n');
    }
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(2), "run tests/crosscheck/setup.sh: {stderr}");
    let verdicts: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(verdicts.len(), cases.len(), "node script output: {stdout}\nstderr: {stderr}");
    verdicts
}

#[test]
fn mux_signatures_agree_with_the_official_node_sdk() {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (secret, old_secret) = ("mux-signing-secret-new", "mux-signing-secret-old");
    let seed = SEED_003_READY.to_string();
    // Non-ASCII and odd whitespace: the MAC is over the raw bytes, not re-serialised JSON.
    let unicode =
        "{ \"type\": \"video.asset.ready\",\n  \"data\": {\"id\": \"a1\", \"passthrough\": \"caf\u{e9} \u{1f3ac}\"} }"
            .to_string();
    let v1 = |secret: &str, t: i64, body: &str| {
        mux::sign(secret, t, body.as_bytes()).split_once(",v1=").unwrap().1.to_string()
    };
    let rotated = format!("t={now},v1={},v1={}", v1(old_secret, now, &seed), v1(secret, now, &seed));
    let stale_t = now - DEFAULT_TOLERANCE_SECS - 60;
    let future_t = now + DEFAULT_TOLERANCE_SECS + 60;

    let cases = vec![
        Case {
            name: "seed 003 example",
            body: seed.clone(),
            header: mux::sign(secret, now, seed.as_bytes()),
            secret,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "raw unicode body",
            body: unicode.clone(),
            header: mux::sign(secret, now, unicode.as_bytes()),
            secret,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "rotation, new secret",
            body: seed.clone(),
            header: rotated.clone(),
            secret,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "rotation, old secret",
            body: seed.clone(),
            header: rotated.clone(),
            secret: old_secret,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "tampered body",
            body: seed.replace("\"ready\"", "\"errored\""),
            header: mux::sign(secret, now, seed.as_bytes()),
            secret,
            ours: Err(MuxSignatureError::Mismatch),
            sdk_ok: false,
        },
        Case {
            name: "wrong secret",
            body: seed.clone(),
            header: mux::sign("someone-else", now, seed.as_bytes()),
            secret,
            ours: Err(MuxSignatureError::Mismatch),
            sdk_ok: false,
        },
        Case {
            name: "stale timestamp",
            body: seed.clone(),
            header: mux::sign(secret, stale_t, seed.as_bytes()),
            secret,
            ours: Err(MuxSignatureError::Stale { skew_secs: now - stale_t }),
            sdk_ok: false,
        },
        // A deliberate difference: the SDK only bounds the age, hookline also refuses a
        // timestamp more than 5 minutes in the future (a signature made for later replay).
        Case {
            name: "future timestamp",
            body: seed.clone(),
            header: mux::sign(secret, future_t, seed.as_bytes()),
            secret,
            ours: Err(MuxSignatureError::Stale { skew_secs: now - future_t }),
            sdk_ok: true,
        },
    ];

    // The cases are built around `now`; the node run happens within the tolerance, and ours
    // is checked at the same `now`, so no case depends on timing.
    for c in &cases {
        let ours = mux::verify_signature(&c.header, c.body.as_bytes(), &[c.secret], now, DEFAULT_TOLERANCE_SECS);
        assert_eq!(ours, c.ours, "hookline on case {:?}", c.name);
    }
    let verdicts = sdk_verdicts(&cases);
    for (c, v) in cases.iter().zip(&verdicts) {
        let sdk_ok = v["result"] == "ok";
        assert_eq!(sdk_ok, c.sdk_ok, "@mux/mux-node on case {:?}: {v}", c.name);
        // Where the SDK accepts a current timestamp, hookline accepts too, and vice versa.
        if c.name != "future timestamp" {
            assert_eq!(sdk_ok, c.ours.is_ok(), "hookline and the SDK disagree on case {:?}: {v}", c.name);
        }
    }
}

// ---------------------------------------------------------------------------------------
// End to end through the daemon.

const SIGNING_SECRET: &str = "mux-whsec-current";
const OLD_SIGNING_SECRET: &str = "mux-whsec-previous";
const TOKEN_ID: &str = "mux-token-id";
const TOKEN_SECRET: &str = "mux-token-secret";
const SEED_ASSET: &str = "0201p02fGKPE7MrbC269XRD7LpcHhrmbu0002";

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The asset of seed 003 as `GET /video/v1/assets/{id}` returns it: the webhook's fields plus
/// what Mux's API reference documents (playback_ids, passthrough, meta, resolution_tier).
fn api_asset(id: &str) -> Value {
    let seed: Value = serde_json::from_str(SEED_003_READY).unwrap();
    let mut a = seed["data"].clone();
    a["id"] = json!(id);
    a["created_at"] = json!("1518656685");
    a["resolution_tier"] = json!("720p");
    a["passthrough"] = json!("order-42");
    a["meta"] = json!({"title": "Demo pages video"});
    a["playback_ids"] = json!([{"policy": "public", "id": format!("PB{id}")}]);
    a
}

/// A fake Mux API on 127.0.0.1: checks basic auth like Mux, serves [`api_asset`], counts
/// calls.
/// (asset id, Authorization header) of each call.
type Calls = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct FakeMux {
    addr: SocketAddr,
    calls: Calls,
    /// Fetches of assets whose id starts with "HeLd" wait until this is closed
    /// ([`FakeMux::release_held`]).
    held: Arc<tokio::sync::Semaphore>,
}

impl FakeMux {
    async fn start() -> FakeMux {
        use base64::Engine;
        let expected =
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN_ID}:{TOKEN_SECRET}")));
        let calls: Calls = Arc::default();
        let c = calls.clone();
        let held = Arc::new(tokio::sync::Semaphore::new(0));
        let h = held.clone();
        let route = warp::path!("video" / "v1" / "assets" / String)
            .and(warp::get())
            .and(warp::header::optional::<String>("authorization"))
            .then(move |id: String, auth: Option<String>| {
                let nth = {
                    let mut calls = c.lock().unwrap();
                    calls.push((id.clone(), auth.clone()));
                    calls.iter().filter(|(i, _)| *i == id).count()
                };
                let expected = expected.clone();
                let held = h.clone();
                async move {
                    // An asset whose id starts with "SlOw" takes a second to fetch.
                    if id.starts_with("SlOw") {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    // One whose id starts with "HeLd" waits until the test releases it.
                    if id.starts_with("HeLd") {
                        let _ = held.acquire().await;
                    }
                    let (status, body) = if auth.as_deref() != Some(expected.as_str()) {
                        (
                            401,
                            json!({"error": {"type": "unauthorized", "messages": ["Unauthorized request"]}})
                                .to_string(),
                        )
                    } else if id == "gone" {
                        (404, json!({"error": {"type": "not_found"}}).to_string())
                    } else if id == "down" {
                        (503, json!({"error": {"type": "service_unavailable"}}).to_string())
                    } else if id.starts_with("GaRbLeD") {
                        // A 200 that is not the API's answer (a proxy's page, a cut body).
                        (200, "<html>upstream maintenance</html>".to_string())
                    } else if id.starts_with("HeLdUp") {
                        // An asset that changes: its title says which fetch of it this is.
                        let mut asset = api_asset(&id);
                        asset["meta"]["title"] = json!(format!("fetch {nth}"));
                        (200, json!({"data": asset}).to_string())
                    } else {
                        (200, json!({"data": api_asset(&id)}).to_string())
                    };
                    warp::http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(body)
                        .unwrap()
                }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        FakeMux { addr, calls, held }
    }

    /// Lets the held fetches ("HeLd…" assets) answer, now and from now on.
    fn release_held(&self) {
        self.held.close();
    }

    fn toml(&self) -> String {
        format!("[mux]\napi_base = \"http://{}\"\ntimeout_seconds = 2\n", self.addr)
    }

    fn calls(&self) -> Vec<(String, Option<String>)> {
        self.calls.lock().unwrap().clone()
    }
}

async fn mux_connection(app: &TestApp, signing_secret: &str) -> String {
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux-production", "provider_type": "mux", "provider_config": {
                "access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET,
                "webhook_signing_secret": signing_secret}}),
        )
        .await;
    assert_eq!(s, 201, "create connection: {b}");
    b["connection_id"].as_str().unwrap().to_string()
}

/// A Mux connection with API credentials and no `webhook_signing_secret`: the create answer.
async fn unsigned_mux_connection(app: &TestApp) -> Value {
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux-unsigned", "provider_type": "mux", "provider_config": {
                "access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    b
}

fn video_schema() -> Value {
    json!({"video": {"type": "video"}, "duration": {"type": "float"}, "resolution": {"type": "string"},
        "thumbnail_url": {"type": "string"}, "title": {"type": "string"}, "external": {"type": "string"}})
}

/// Seed 000's Mux example, plus `data.*` and `passthrough` mappings.
async fn mux_bucket(app: &TestApp, name: &str, connection_id: &str) -> (String, String) {
    let bucket = app.create_bucket(name, video_schema()).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {
                "adapter_type": "mux",
                "connection_id": connection_id,
                "event_filter": {"event_types": ["video.asset.ready"]},
                "field_mapping": {"duration": "duration", "resolution_tier": "resolution",
                    "thumbnail_url": "thumbnail_url", "data.meta.title": "title", "passthrough": "external"},
                "blob_source": {"file_field": "playback_url", "blob_type": "video", "target_property": "video"},
                "batching": {"mode": "immediate"},
                "dedup_key": "data.id"
            }}),
        )
        .await;
    assert_eq!(s, 200, "configure mux adapter: {b}");
    (bucket, b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string())
}

async fn objects(app: &TestApp, bucket: &str) -> Vec<Value> {
    let (s, b) = app.get(&format!("/v1/buckets/{bucket}/objects")).await;
    assert_eq!(s, 200, "{b}");
    b["results"].as_array().unwrap().clone()
}

fn ready_event(asset_id: &str, with_playback: bool) -> String {
    let mut v: Value = serde_json::from_str(SEED_003_READY).unwrap();
    v["data"]["id"] = json!(asset_id);
    v["object"]["id"] = json!(asset_id);
    if with_playback {
        v["data"]["playback_ids"] = json!([{"policy": "public", "id": format!("PB{asset_id}")}]);
        v["data"]["passthrough"] = json!("inline");
    }
    v.to_string()
}

/// A daemon whose Mux API is a [`FakeMux`], with time for a held fetch (the bound is 25 s),
/// and a Mux bucket on a connection signing with [`SIGNING_SECRET`].
struct HeldFetch {
    fake: FakeMux,
    app: TestApp,
    conn: String,
    bucket: String,
}

impl HeldFetch {
    async fn start(bucket_name: &str) -> HeldFetch {
        let fake = FakeMux::start().await;
        let extra_toml = format!("[mux]\napi_base = \"http://{}\"\ntimeout_seconds = 25\n", fake.addr);
        let app = TestApp::start_with(Options { extra_toml, ..Default::default() }).await;
        let conn = mux_connection(&app, SIGNING_SECRET).await;
        let (bucket, _) = mux_bucket(&app, bucket_name, &conn).await;
        HeldFetch { fake, app, conn, bucket }
    }
}

/// `body` ingested into `bucket`, signed, from a task of its own: (status, answer).
fn spawn_ingest(app: &TestApp, bucket: &str, body: &str) -> tokio::task::JoinHandle<(u16, Value)> {
    let (client, url) = (reqwest::Client::new(), app.url(&format!("/v1/buckets/{bucket}/source-adapter/ingest")));
    let (body, header) = (body.to_string(), mux::sign(SIGNING_SECRET, now(), body.as_bytes()));
    tokio::spawn(async move {
        let r = client.post(url).header("Mux-Signature", header).body(body).send().await.unwrap();
        (r.status().as_u16(), r.json::<Value>().await.unwrap_or_default())
    })
}

/// A lifecycle update of an asset whose `ready` is still being fetched finds no object to
/// change; the fetch's answer may predate the update, so the asset is fetched again and the
/// object made from the newer answer (it kept the older state, the update acknowledged).
#[tokio::test]
async fn an_update_during_the_ready_fetch_is_not_lost() {
    let HeldFetch { fake, app, conn, bucket } = HeldFetch::start("updated-mid-fetch").await;
    let asset = "HeLdUpDaTe01";
    // No playback ids: the asset is fetched. Two deliveries of it (Mux retried one), both
    // waiting for that fetch (one, shared) when the update comes.
    let body = ready_event(asset, false);
    let (first, second) = (spawn_ingest(&app, &bucket, &body), spawn_ingest(&app, &bucket, &body));
    let fetching = || async { fake.calls().iter().any(|(id, _)| id == asset) };
    assert!(eventually(Duration::from_secs(20), fetching).await, "the asset fetch never started");
    // (Time for the second delivery to join the fetch; one later is a duplicate all the same.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let updated = json!({"type": "video.asset.updated", "object": {"type": "asset", "id": asset},
        "id": "evt-upd-mid", "data": {"id": asset, "status": "ready", "meta": {"title": "renamed"}}});
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &updated).await;
    assert_eq!((s, r["objects"].as_array().map(Vec::len)), (200, Some(0)), "no object yet: {r}");
    fake.release_held();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    let mut statuses = [a.1["status"].as_str().unwrap_or_default(), b.1["status"].as_str().unwrap_or_default()];
    statuses.sort_unstable();
    assert_eq!((a.0, b.0, statuses), (200, 200, ["created", "duplicate"]), "{a:?} {b:?}");
    // The shared fetch, then each delivery's own again (the second's only if it had joined).
    let calls = fake.calls().iter().filter(|(id, _)| id == asset).count();
    assert!(calls == 3 || calls == 2, "{calls} fetches");
    let objects = objects(&app, &bucket).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    let title = objects[0]["metadata"]["title"].as_str().unwrap_or_default();
    assert!(title == "fetch 2" || title == "fetch 3", "made from an answer after the update: {objects:?}");
}

/// The same through the ingest route, whose filter may take `video.asset.updated` too: the
/// update finds no object yet (200 `updated`, none named), and the object is made from an
/// answer fetched after it, not from the fetch that predates it.
#[tokio::test]
async fn an_ingest_route_update_during_the_ready_fetch_is_not_lost() {
    let fake = FakeMux::start().await;
    let extra_toml = format!("[mux]\napi_base = \"http://{}\"\ntimeout_seconds = 25\n", fake.addr);
    let app = TestApp::start_with(Options { extra_toml, ..Default::default() }).await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let bucket = app.create_bucket("ingest-route-update", video_schema()).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {
                "adapter_type": "mux", "connection_id": conn,
                "event_filter": {"event_types": ["video.asset.ready", "video.asset.updated"]},
                "field_mapping": {"data.meta.title": "title"},
                "blob_source": {"file_field": "playback_url", "blob_type": "video", "target_property": "video"},
                "batching": {"mode": "immediate"}
            }}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let asset = "HeLdUpInGeSt01";
    let ready = spawn_ingest(&app, &bucket, &ready_event(asset, false)); // no playback ids: fetched (held)
    let fetching = || async { fake.calls().iter().any(|(id, _)| id == asset) };
    assert!(eventually(Duration::from_secs(20), fetching).await, "the asset fetch never started");
    // The update carries the whole asset (its playback ids too): mapped as it is, no fetch.
    let updated = json!({"type": "video.asset.updated", "object": {"type": "asset", "id": asset},
        "id": "evt-upd-ingest", "data": {"id": asset, "status": "ready", "meta": {"title": "renamed"},
        "playback_ids": [{"policy": "public", "id": format!("PB{asset}")}]}});
    let (s, r) = spawn_ingest(&app, &bucket, &updated.to_string()).await.unwrap();
    assert_eq!((s, r["status"].as_str(), &r["object_ids"]), (200, Some("updated"), &json!([])), "{r}");
    fake.release_held();
    let (s, r) = ready.await.unwrap();
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let objects = objects(&app, &bucket).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    let calls = fake.calls().iter().filter(|(id, _)| id == asset).count();
    assert_eq!(calls, 2, "the held fetch, then one after the update");
    assert_eq!(objects[0]["metadata"]["title"], "fetch 2", "made from the answer fetched after the update");
}

/// Deliveries of one asset's creation while its fetch is in flight wait for that fetch: six
/// at once make one read of the asset from the Mux API (which rate-limits them), one object
/// and five duplicates of it.
#[tokio::test]
async fn deliveries_of_one_asset_share_its_fetch() {
    let HeldFetch { fake, app, bucket, .. } = HeldFetch::start("shared-fetch").await;
    let asset = "HeLdShArEd01";
    let body = ready_event(asset, false); // no playback ids: fetched
    let pending: Vec<_> = (0..6).map(|_| spawn_ingest(&app, &bucket, &body)).collect();
    let fetching = || async { fake.calls().iter().any(|(id, _)| id == asset) };
    assert!(eventually(Duration::from_secs(20), fetching).await, "the asset fetch never started");
    // Time for the others to reach the adapter (one later still makes no second read: it
    // finds the fetch's answer, or the object in the dedup set).
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.release_held();
    let mut statuses = Vec::new();
    for p in pending {
        let (s, r) = p.await.unwrap();
        assert_eq!(s, 200, "{r}");
        statuses.push(r["status"].as_str().unwrap_or_default().to_string());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, ["created", "duplicate", "duplicate", "duplicate", "duplicate", "duplicate"]);
    assert_eq!(fake.calls().iter().filter(|(id, _)| id == asset).count(), 1, "{:?}", fake.calls());
    assert_eq!(objects(&app, &bucket).await.len(), 1);
}

/// A PATCH of the bucket while an ingest's asset fetch is in flight restarts the adapter; the
/// ingest goes to the new adapter once (whenever the old one let it go), not a 503 because
/// the fetch outlasted the wait for a restart.
///
/// A lifecycle update came during that fetch too: the old adapter's fetch ends with it (no
/// fetch again there), and the new adapter's fetch, made after the update, is the one the
/// object is made from: two fetches, not three.
#[tokio::test]
async fn an_ingest_whose_fetch_outlasts_a_restart_goes_to_the_new_adapter() {
    let HeldFetch { fake, app, conn, bucket } = HeldFetch::start("patched-mid-fetch").await;
    let asset = "HeLdUpPaTcHeD01";
    let pending = spawn_ingest(&app, &bucket, &ready_event(asset, false)); // no playback ids: fetched
    let fetching = || async { fake.calls().iter().any(|(id, _)| id == asset) };
    assert!(eventually(Duration::from_secs(20), fetching).await, "the asset fetch never started");
    let updated = json!({"type": "video.asset.updated", "object": {"type": "asset", "id": asset},
        "id": "evt-upd-restart", "data": {"id": asset, "status": "ready", "meta": {"title": "renamed"}}});
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &updated).await;
    assert_eq!((s, r["objects"].as_array().map(Vec::len)), (200, Some(0)), "no object yet: {r}");
    // Longer than the wait for a restart (2 s), then the PATCH (the adapter as it is).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, view) = app.get(&format!("/v1/buckets/{bucket}")).await;
    let mut adapter = view["source_adapter"].clone();
    for shown in ["effective", "ingest_path", "webhook_url"] {
        adapter.as_object_mut().unwrap().remove(shown);
    }
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter})).await;
    assert_eq!(s, 200, "{b}");
    fake.release_held();
    let (s, r) = pending.await.unwrap();
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let objects = objects(&app, &bucket).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(fake.calls().iter().filter(|(id, _)| id == asset).count(), 2, "the old adapter fetched again");
    assert_eq!(objects[0]["metadata"]["title"], "fetch 2", "{objects:?}");
}

/// A Mux API answer hookline cannot read (a proxy's page, a cut body) is the API's failure,
/// not the event's: an ingest and a lifecycle update are 503s, so Mux sends them again,
/// rather than a 422 and a lifecycle change acknowledged and dropped.
#[tokio::test]
async fn an_unreadable_mux_api_answer_is_retried() {
    let fake = FakeMux::start().await;
    let app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let (bucket, _) = mux_bucket(&app, "unreadable", &conn).await;
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let fetched = ready_event("GaRbLeDnEw", false);
    let h = mux::sign(SIGNING_SECRET, now(), fetched.as_bytes());
    let (s, r) = app.post_raw(&ingest, fetched, &[("Mux-Signature", &h)]).await;
    assert_eq!(s, 503, "{r}");
    assert!(r["error"]["message"].as_str().unwrap_or_default().contains("not JSON"), "{r}");
    // An asset made from a webhook that carried it whole, then changed: the change needs the
    // asset fetched, and the fetch's answer is unreadable.
    let whole = ready_event("GaRbLeDoLd", true);
    let h = mux::sign(SIGNING_SECRET, now(), whole.as_bytes());
    let (s, r) = app.post_raw(&ingest, whole, &[("Mux-Signature", &h)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let updated = json!({"type": "video.asset.updated", "object": {"type": "asset", "id": "GaRbLeDoLd"},
        "id": "evt-upd", "data": {"id": "GaRbLeDoLd", "status": "ready", "duration": 5.0}});
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &updated).await;
    assert_eq!(s, 503, "{r}");
    assert!(fake.calls().iter().any(|(id, _)| id == "GaRbLeDoLd"), "the change fetched the asset");
    // The operator finds why Mux's deliveries fail in the log.
    let logged = eventually(Duration::from_secs(5), || async {
        app.log().lines().any(|l| l.contains("Mux lifecycle webhook refused (503)") && l.contains("not JSON"))
    });
    assert!(logged.await, "{}", app.log());
    let m = app.metrics().await;
    assert_eq!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", "dependency_failed")]), 1.0, "{m}");
}

#[tokio::test]
async fn mux_ingest_checks_signatures_fetches_assets_and_agrees_with_the_sdk() {
    let fake = FakeMux::start().await;
    let app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let (bucket, webhook_secret) = mux_bucket(&app, "mux-videos", &conn).await;
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let body = SEED_003_READY;
    let t = now();

    // Refused: nothing stored, the Mux API never asked.
    let tampered = body.replace("\"duration\":153.361542", "\"duration\":1.0");
    let refused = [
        ("no signature", body.to_string(), None),
        ("tampered body", tampered, Some(mux::sign(SIGNING_SECRET, t, body.as_bytes()))),
        ("stale timestamp", body.to_string(), Some(mux::sign(SIGNING_SECRET, t - 301, body.as_bytes()))),
        ("wrong secret", body.to_string(), Some(mux::sign("not-the-secret", t, body.as_bytes()))),
        ("malformed", body.to_string(), Some("t=abc,v1=00".to_string())),
    ];
    for (case, b, header) in refused {
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("Mux-Signature", h.as_str())).collect();
        let (s, r) = app.post_raw(&ingest, b, &headers).await;
        assert_eq!(s, 401, "{case}: {r}");
    }
    assert!(objects(&app, &bucket).await.is_empty());
    assert!(fake.calls().is_empty());

    // Seed 003's example lacks playback ids: the asset is fetched with basic auth.
    let header = mux::sign(SIGNING_SECRET, t, body.as_bytes());
    let (s, r) = app.post_raw(&ingest, body, &[("Mux-Signature", &header)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let object_id = r["object_id"].as_str().unwrap().to_string();
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0, SEED_ASSET);
    let (_, obj) = app.get(&format!("/v1/buckets/{bucket}/objects/{object_id}")).await;
    assert_eq!(obj["metadata"]["duration"], json!(153.361542));
    assert_eq!(obj["metadata"]["resolution"], "720p");
    assert_eq!(obj["metadata"]["title"], "Demo pages video");
    assert_eq!(obj["metadata"]["external"], "order-42");
    assert_eq!(obj["metadata"]["thumbnail_url"], format!("https://image.mux.com/PB{SEED_ASSET}/thumbnail.jpg"));
    assert_eq!(
        obj["blobs"],
        json!([{"property": "video", "type": "video", "url": format!("https://stream.mux.com/PB{SEED_ASSET}.m3u8")}])
    );
    assert_eq!(
        obj["source"],
        json!({"adapter_type": "mux", "external_id": SEED_ASSET, "event_type": "video.asset.ready"})
    );

    // Mux redelivers: the asset id dedups.
    let again = mux::sign(SIGNING_SECRET, t + 1, body.as_bytes());
    let (s, r) = app.post_raw(&ingest, body, &[("Mux-Signature", &again)]).await;
    assert_eq!((s, r["status"].as_str(), r["object_id"].as_str()), (200, Some("duplicate"), Some(object_id.as_str())));

    // Rotation: Mux signs with the old and the new secret; we hold the new one.
    let rotated_body = ready_event("AsSeTrOtAtEd01", true);
    let v1 = |secret: &str| mux::sign(secret, t, rotated_body.as_bytes()).split_once(",v1=").unwrap().1.to_string();
    let rotated = format!("t={t},v1={},v1={}", v1(OLD_SIGNING_SECRET), v1(SIGNING_SECRET));
    let (s, r) = app.post_raw(&ingest, rotated_body.clone(), &[("Mux-Signature", &rotated)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    // The webhook carried playback ids: no fetch.
    assert_eq!(fake.calls().len(), 1);
    let (_, obj) = app.get(&format!("/v1/buckets/{bucket}/objects/{}", r["object_id"].as_str().unwrap())).await;
    assert_eq!(obj["metadata"]["external"], "inline");

    // Fallback: X-Webhook-Secret with the adapter's secret, no Mux-Signature.
    let fallback = ready_event("AsSeTfAlLbAcK1", true);
    let (s, r) = app.post_raw(&ingest, fallback, &[("X-Webhook-Secret", &webhook_secret)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");

    // Other event types: not handled, nothing stored.
    let created = ready_event("AsSeTcReAtEd01", true).replace("video.asset.ready", "video.asset.created");
    let h = mux::sign(SIGNING_SECRET, t, created.as_bytes());
    let (s, r) = app.post_raw(&ingest, created, &[("Mux-Signature", &h)]).await;
    assert_eq!((s, r["handled"].as_bool()), (200, Some(false)), "{r}");

    // A fetch Mux answers 404 for: 422 naming the cause, counted as failed.
    let gone = ready_event("gone", false);
    let h = mux::sign(SIGNING_SECRET, t, gone.as_bytes());
    let (s, r) = app.post_raw(&ingest, gone, &[("Mux-Signature", &h)]).await;
    assert_eq!(s, 422, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("not found"), "{r}");
    // The Mux API failing: 503 so Mux retries, counted apart from hookline's own errors.
    let down = ready_event("down", false);
    let h = mux::sign(SIGNING_SECRET, t, down.as_bytes());
    let (s, r) = app.post_raw(&ingest, down, &[("Mux-Signature", &h)]).await;
    assert_eq!(s, 503, "{r}");
    let m = app.metrics().await;
    assert_eq!(metric_value(&m, "hookline_ingest_requests_total", &[("outcome", "dependency_failed")]), 1.0, "{m}");
    assert!(app.log().contains("a dependency failed"), "logged");
    assert!(fake.calls().iter().all(|(_, auth)| auth.as_deref().is_some_and(|a| a.starts_with("Basic "))));
    assert_eq!(objects(&app, &bucket).await.len(), 3);

    // The credentials never reach the log.
    let log = app.log();
    for secret in [SIGNING_SECRET, TOKEN_SECRET] {
        assert!(!log.contains(secret), "{secret} in the daemon log");
    }

    // What the daemon accepted, Mux's own SDK accepts too.
    let accepted = vec![
        Case {
            name: "daemon-accepted seed 003",
            body: body.to_string(),
            header,
            secret: SIGNING_SECRET,
            ours: Ok(()),
            sdk_ok: true,
        },
        Case {
            name: "daemon-accepted rotation",
            body: rotated_body,
            header: rotated,
            secret: SIGNING_SECRET,
            ours: Ok(()),
            sdk_ok: true,
        },
    ];
    for (c, v) in accepted.iter().zip(sdk_verdicts(&accepted)) {
        assert_eq!(v["result"], "ok", "@mux/mux-node refuses what hookline accepted ({}): {v}", c.name);
    }
}

#[tokio::test]
async fn mux_adapter_configuration_rules() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("cfg", video_schema()).await;
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "sb", "provider_type": "supabase",
                "provider_config": {"url": "https://x.supabase.co", "service_role_key": "srk"}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let sb = b["connection_id"].as_str().unwrap().to_string();
    let cases = [
        (json!({"adapter_type": "mux", "connection_id": sb}), "source_adapter.connection_id"),
        (
            json!({"adapter_type": "mux", "writeback": {"field_mapping": [{"source_path": "a", "target_field": "b"}]}}),
            "source_adapter.writeback",
        ),
        (
            json!({"adapter_type": "mux", "connection": {"credentials": {"access_token_id": "x"}}}),
            "source_adapter.connection.credentials.access_token_secret",
        ),
        (json!({"adapter_type": "supabase", "id_column": "no-dash"}), "source_adapter.id_column"),
        // A shown placeholder is not a secret (the whole credentials as one keeps the stored ones).
        (
            json!({"adapter_type": "mux", "connection": {"credentials": {"access_token_id": "x",
                "access_token_secret": "y", "webhook_signing_secret": "(set; never shown)"}}}),
            "source_adapter.connection.credentials.webhook_signing_secret",
        ),
        // The blob's property, named or by default, must be in the schema with its type.
        (
            json!({"adapter_type": "generic_webhook", "blob_source": {"file_field": "url", "blob_type": "image"}}),
            "source_adapter.blob_source.target_property",
        ),
    ];
    for (adapter, field) in cases {
        let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({"source_adapter": adapter})).await;
        assert_eq!(s, 422, "{adapter} → {b}");
        assert_eq!(b["error"]["field"], field, "{b}");
    }
    // A Mux adapter on a metadata-only bucket (no `video` property) stores no blob.
    let plain = app.create_bucket("novideo", json!({"title": {"type": "string"}})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{plain}"),
            json!({"source_adapter": {"adapter_type": "mux", "connection": {"credentials": {
                "access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET, "webhook_signing_secret": SIGNING_SECRET}},
                "batching": {"mode": "immediate"}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let body = ready_event("AsSeTmEtAoNlY1", true);
    let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) =
        app.post_raw(&format!("/v1/buckets/{plain}/source-adapter/ingest"), body, &[("Mux-Signature", &h)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let objs = objects(&app, &plain).await;
    assert_eq!(objs[0]["blobs"], json!([]), "{}", objs[0]);
    // Inline credentials are accepted and never shown.
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "mux", "connection": {"credentials": {
                "access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET, "webhook_signing_secret": SIGNING_SECRET}}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(!b.to_string().contains(TOKEN_SECRET));
    // ... and verify Mux-Signature like a connection does.
    let body = ready_event("AsSeTiNlInE001", true);
    let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) =
        app.post_raw(&format!("/v1/buckets/{bucket}/source-adapter/ingest"), body, &[("Mux-Signature", &h)]).await;
    assert_eq!(s, 200, "{r}");
}

fn db_event(op: &str, record: Value, old_record: Value) -> Value {
    json!({"type": op, "table": "listings", "schema": "public", "record": record, "old_record": old_record})
}

/// A Supabase row's file column holding a Storage path (as tables keep files) is resolved
/// to the object's public URL under the adapter's project and `blob_source.storage_bucket`;
/// a URL is kept; a path that climbs out is a 422. The setting is refused where it cannot
/// work.
#[tokio::test]
async fn a_supabase_storage_path_becomes_its_public_url() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("photos", json!({"title": {"type": "string"}, "image": {"type": "image"}})).await;
    let path = format!("/v1/buckets/{bucket}");
    let adapter = |extra: Value| {
        let mut a = json!({"adapter_type": "supabase", "table": "listings",
            "connection": {"credentials": {"url": "https://abcd.supabase.co", "service_role_key": "srk-storage"}},
            "field_mapping": {"record.title": "title"},
            "blob_source": {"file_field": "record.image", "blob_type": "image", "storage_bucket": "listing-images"},
            "batching": {"mode": "immediate"}});
        if let (Some(a), Some(extra)) = (a.as_object_mut(), extra.as_object()) {
            a.extend(extra.clone());
        }
        json!({ "source_adapter": a })
    };
    for (extra, why) in [
        (json!({"adapter_type": "generic_webhook", "connection": null, "table": null}), "only a supabase adapter"),
        (json!({"adapter_type": "mux", "connection": null, "table": null}), "only a supabase adapter"),
        (json!({"connection": null}), "needs the project's URL"),
        (json!({"connection": {}}), "needs the project's URL"),
        (json!({"connection": {"credentials": {}}}), "needs the project's URL"),
        (json!({"connection": {"credentials": null}}), "needs the project's URL"),
        (
            json!({"blob_source": {"file_field": "record.image", "blob_type": "image", "storage_bucket": "../x"}}),
            "bucket name",
        ),
    ] {
        let (s, b) = app.patch(&path, adapter(extra.clone())).await;
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(
            (s, b["error"]["field"].as_str()),
            (422, Some("source_adapter.blob_source.storage_bucket")),
            "{extra}: {b}"
        );
        assert!(message.contains(why), "{extra}: {b}");
    }
    let (s, b) = app.patch(&path, adapter(json!({}))).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["source_adapter"]["blob_source"]["storage_bucket"], "listing-images", "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap_or_default().to_string();
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let send = |id: u64, image: &str| {
        let row = json!({"id": id, "title": "Loft", "image": image});
        let body = db_event("INSERT", row, Value::Null).to_string();
        let (app, ingest, secret) = (&app, ingest.clone(), secret.clone());
        async move { app.post_raw(&ingest, body, &[("X-Webhook-Secret", &secret)]).await }
    };
    for (id, image, url) in [
        (
            1,
            "7/front photo.jpg",
            "https://abcd.supabase.co/storage/v1/object/public/listing-images/7/front%20photo.jpg",
        ),
        (2, "https://cdn.example/i.jpg", "https://cdn.example/i.jpg"),
    ] {
        let (s, r) = send(id, image).await;
        assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{image}: {r}");
        let (_, o) =
            app.get(&format!("/v1/buckets/{bucket}/objects/{}", r["object_id"].as_str().unwrap_or_default())).await;
        assert_eq!(o["blobs"], json!([{"property": "image", "type": "image", "url": url}]), "{o}");
    }
    // A row without a file needs no URL: no blob, as without storage_bucket.
    let (s, r) = send(4, "").await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let (s, r) = send(3, "../../auth/v1/admin").await;
    assert_eq!((s, r["error"]["field"].as_str()), (422, Some("payload")), "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("a path in the Storage bucket")), "{r}");
}

#[tokio::test]
async fn supabase_row_walks_one_object_through_created_updated_deleted() {
    let app = TestApp::start().await;
    let rx = Receiver::start(200).await;
    create_webhook(
        &app,
        json!({"webhook_name": "objects", "event_types": ["object.created", "object.updated", "object.deleted"],
            "channels": [http_channel(&rx.url("/hook"))]}),
    )
    .await;
    let bucket = app
        .create_bucket(
            "listings",
            json!({"title": {"type": "string"}, "price": {"type": "int"}, "video": {"type": "video"}}),
        )
        .await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {
                "adapter_type": "supabase",
                "table": "listings",
                "connection": {"credentials": {"url": "https://abcd.supabase.co", "service_role_key": "srk-secret"}},
                "event_filter": {"event_types": ["INSERT", "UPDATE", "DELETE"]},
                "id_column": "listing_id",
                "field_mapping": {"record.title": "title", "record.price": "price"},
                "blob_source": {"file_field": "record.video_url", "blob_type": "video"},
                "batching": {"mode": "immediate"},
                "writeback": {"trigger": "on_alert", "field_mapping": [{"source_path": "verdict", "target_field": "mp_verdict"}]}
            }}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let send = |v: Value| {
        let (app, ingest, secret) = (&app, ingest.clone(), secret.clone());
        async move {
            app.post_raw(&ingest, v.to_string(), &[("X-Webhook-Secret", &secret), ("Content-Type", "application/json")])
                .await
        }
    };
    let row = json!({"listing_id": 42, "title": "Loft", "price": 1000, "video_url": "https://cdn.example/v.mp4"});
    let (s, r) = send(db_event("INSERT", row.clone(), Value::Null)).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let oid = r["object_id"].as_str().unwrap().to_string();

    let row2 = json!({"listing_id": 42, "title": "Loft (renovated)", "price": 1200, "video_url": "https://cdn.example/v2.mp4"});
    let (s, r) = send(db_event("UPDATE", row2.clone(), row.clone())).await;
    assert_eq!((s, r["status"].as_str(), r["object_id"].as_str()), (200, Some("updated"), Some(oid.as_str())), "{r}");
    // Two UPDATEs of one row are both applied (no dedup swallows the second).
    let row3 =
        json!({"listing_id": 42, "title": "Loft (sold)", "price": 1300, "video_url": "https://cdn.example/v2.mp4"});
    let (s, r) = send(db_event("UPDATE", row3.clone(), row2)).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("updated")), "{r}");
    let objs = objects(&app, &bucket).await;
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["object_id"], oid.as_str());
    assert_eq!(objs[0]["metadata"], json!({"title": "Loft (sold)", "price": 1300}));
    assert_eq!(objs[0]["blobs"][0]["url"], "https://cdn.example/v2.mp4");
    assert_eq!(objs[0]["source"]["external_id"], "42");
    assert_eq!(objs[0]["source"]["event_type"], "UPDATE");

    // An UPDATE of a row hookline never saw creates its object (upsert).
    let other = json!({"listing_id": "7", "title": "Studio", "price": 500, "video_url": "https://cdn.example/s.mp4"});
    let (s, r) = send(db_event("UPDATE", other.clone(), other.clone())).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    // A row without the id column: 422.
    let (s, r) = send(db_event("INSERT", json!({"title": "x"}), Value::Null)).await;
    assert_eq!(s, 422, "{r}");
    // An event of the wrong shape says so, not that its key is missing.
    for (row, said) in [(Value::Null, "INSERT payload has no record (the row, an object)"), (json!([1]), "record: ")] {
        let (s, r) = send(db_event("INSERT", row.clone(), Value::Null)).await;
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(s == 422 && message.contains(said) && !message.contains("dedup"), "{row}: {r}");
    }

    let (s, r) = send(db_event("DELETE", Value::Null, row3)).await;
    assert_eq!((s, r["status"].as_str(), r["object_ids"].clone()), (200, Some("deleted"), json!([oid])), "{r}");
    let (s, _) = app.get(&format!("/v1/buckets/{bucket}/objects/{oid}")).await;
    assert_eq!(s, 404);
    assert_eq!(objects(&app, &bucket).await.len(), 1, "the other row's object stays");
    // A row without a file (a null or empty column: the property is not required) is an
    // object without a blob, not a 422 (Supabase does not resend: the row would be lost).
    for (id, none) in [(8, Value::Null), (9, json!("")), (10, json!("  "))] {
        let row = json!({"listing_id": id, "title": "No video", "price": 1, "video_url": none});
        let (s, r) = send(db_event("INSERT", row, Value::Null)).await;
        assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{none}: {r}");
        let (s, o) = app.get(&format!("/v1/buckets/{bucket}/objects/{}", r["object_id"].as_str().unwrap())).await;
        assert_eq!((s, o["blobs"].clone(), o["metadata"]["title"].as_str()), (200, json!([]), Some("No video")), "{o}");
    }
    // A row whose file is cleared: its object loses the blob (the object copies the row).
    let with = json!({"listing_id": 12, "title": "Had video", "price": 1, "video_url": "https://cdn.example/12.mp4"});
    let (_, r) = send(db_event("INSERT", with.clone(), Value::Null)).await;
    let cleared_oid = r["object_id"].as_str().unwrap_or_default().to_string();
    let without = json!({"listing_id": 12, "title": "Had video", "price": 1, "video_url": null});
    let (s, r) = send(db_event("UPDATE", without, with)).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("updated")), "{r}");
    let (_, o) = app.get(&format!("/v1/buckets/{bucket}/objects/{cleared_oid}")).await;
    assert_eq!(o["blobs"], json!([]), "{o}");
    // A value that is not a URL still is (a sender's mistake the upstream must hear of).
    let row = json!({"listing_id": 11, "title": "x", "price": 1, "video_url": "listing-videos/11.mp4"});
    let (s, r) = send(db_event("INSERT", row, Value::Null)).await;
    assert_eq!((s, r["error"]["message"].as_str().is_some_and(|m| m.contains("http(s) URL"))), (422, true), "{r}");

    // The receiver sees the walk, in order, for the same object.
    let walk = || {
        rx.captured()
            .iter()
            .map(|c| c.json())
            .filter(|e| e["payload"]["object_id"] == oid.as_str())
            .map(|e| (e["event_type"].as_str().unwrap_or("").to_string(), e["payload"]["metadata"]["title"].clone()))
            .collect::<Vec<_>>()
    };
    assert!(eventually(Duration::from_secs(20), || async { walk().len() >= 4 }).await, "{:?}", walk());
    let mut seen = walk();
    seen.sort_by_key(|(t, title)| (t != "object.created", t == "object.deleted", title.to_string()));
    assert_eq!(
        seen,
        vec![
            ("object.created".to_string(), json!("Loft")),
            ("object.updated".to_string(), json!("Loft (renovated)")),
            ("object.updated".to_string(), json!("Loft (sold)")),
            ("object.deleted".to_string(), json!("Loft (sold)")),
        ]
    );
    // Each names its cache scopes: the bucket's namespace and the object.
    for e in rx.captured().iter().map(|c| c.json()).filter(|e| e["payload"]["object_id"] == oid.as_str()) {
        let scopes = json!([{"scope": "namespace", "id": "default"}, {"scope": "key", "id": oid}]);
        assert_eq!(e["cache_scopes"], scopes, "{e}");
    }
    assert!(!app.log().contains("srk-secret"));
}

#[tokio::test]
async fn supabase_update_of_a_buffered_row_changes_it_in_place() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("buffered", json!({"title": {"type": "string"}})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "supabase", "field_mapping": {"record.title": "title"},
                "batching": {"mode": "time_window", "window_seconds": 5}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let h = [("X-Webhook-Secret", secret.as_str()), ("Content-Type", "application/json")];
    let (s, r) =
        app.post_raw(&ingest, db_event("INSERT", json!({"id": 1, "title": "a"}), Value::Null).to_string(), &h).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("buffered")), "{r}");
    let oid = r["object_id"].clone();
    let (s, r) = app
        .post_raw(&ingest, db_event("UPDATE", json!({"id": 1, "title": "b"}), json!({"id": 1})).to_string(), &h)
        .await;
    assert_eq!((s, r["status"].as_str(), &r["object_id"]), (200, Some("updated"), &oid), "{r}");
    // DELETE is not in the default filter (INSERT, UPDATE).
    let (s, r) = app.post_raw(&ingest, db_event("DELETE", Value::Null, json!({"id": 1})).to_string(), &h).await;
    assert_eq!((s, r["handled"].as_bool()), (200, Some(false)), "{r}");
    let flushed = eventually(Duration::from_secs(20), || async { objects(&app, &bucket).await.len() == 1 }).await;
    assert!(flushed);
    let objs = objects(&app, &bucket).await;
    assert_eq!((&objs[0]["object_id"], &objs[0]["metadata"]["title"]), (&oid, &json!("b")));
}

/// Signs and posts a lifecycle event to `/v1/webhooks/mux/{conn}`.
async fn lifecycle(app: &TestApp, conn: &str, secret: &str, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    let h = mux::sign(secret, now(), body.as_bytes());
    app.post_raw(&format!("/v1/webhooks/mux/{conn}"), body, &[("Mux-Signature", &h)]).await
}

#[tokio::test]
async fn mux_lifecycle_remaps_and_cascades_across_buckets_of_one_connection() {
    let fake = FakeMux::start().await;
    let mut app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let other_conn = mux_connection(&app, "other-secret").await;
    let (b1, _) = mux_bucket(&app, "one", &conn).await;
    let (b2, _) = mux_bucket(&app, "two", &conn).await;
    let (b3, _) = mux_bucket(&app, "elsewhere", &other_conn).await;
    let asset = "AsSeTsHaReD001";
    for (bucket, secret) in [(&b1, SIGNING_SECRET), (&b2, SIGNING_SECRET), (&b3, "other-secret")] {
        let body = ready_event(asset, true);
        let h = mux::sign(secret, now(), body.as_bytes());
        let (s, r) =
            app.post_raw(&format!("/v1/buckets/{bucket}/source-adapter/ingest"), body, &[("Mux-Signature", &h)]).await;
        assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    }
    let path = format!("/v1/webhooks/mux/{conn}");

    // Authentication: signature required, checked with this connection's secret.
    let deleted = json!({"type": "video.asset.deleted", "object": {"type": "asset", "id": asset},
        "id": "evt-del", "data": {"id": asset, "status": "ready"}});
    let (s, _) = app.post_raw(&path, deleted.to_string(), &[]).await;
    assert_eq!(s, 401);
    let (s, _) = lifecycle(&app, &conn, "other-secret", &deleted).await;
    assert_eq!(s, 401);
    let body = deleted.to_string();
    let stale = mux::sign(SIGNING_SECRET, now() - 600, body.as_bytes());
    let (s, _) = app.post_raw(&path, body.clone(), &[("Mux-Signature", &stale)]).await;
    assert_eq!(s, 401);
    // A valid signature beside another: which counts would be a guess, so neither does.
    let good = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) = app.post_raw(&path, body.clone(), &[("Mux-Signature", &good), ("Mux-Signature", &stale)]).await;
    assert_eq!(s, 401, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("Mux-Signature was sent 2 times"), "{r}");
    // Refusals are logged, once a minute per connection and kind (four 401s: one line).
    let logged =
        eventually(Duration::from_secs(5), || async { app.log().contains("Mux lifecycle webhook refused (401)") });
    assert!(logged.await, "{}", app.log());
    assert_eq!(app.log().matches("Mux lifecycle webhook refused (401)").count(), 1, "{}", app.log());
    let unknown_path = "/v1/webhooks/mux/conn_doesnotexist";
    let (s, _) = app.post_raw(unknown_path, body.clone(), &[("Mux-Signature", &good), ("Mux-Signature", &stale)]).await;
    assert_eq!(s, 404, "an unknown connection is a 404 whatever its headers");
    let (s, unknown) = lifecycle(&app, "conn_doesnotexist", SIGNING_SECRET, &deleted).await;
    assert_eq!(s, 404);
    // Another provider's connection gets the same answer: nothing tells it apart.
    let (_, sb) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "sb", "provider_type": "supabase",
                "provider_config": {"url": "https://x.supabase.co", "service_role_key": "srk"}}),
        )
        .await;
    let sb = sb["connection_id"].as_str().unwrap();
    let (s, other) = lifecycle(&app, sb, SIGNING_SECRET, &deleted).await;
    assert_eq!(s, 404);
    let msg = |v: &Value, id: &str| v["error"]["message"].as_str().unwrap_or("").replace(id, "ID");
    assert_eq!(msg(&other, sb), msg(&unknown, "conn_doesnotexist"), "{other} vs {unknown}");
    for b in [&b1, &b2, &b3] {
        assert_eq!(objects(&app, b).await.len(), 1, "nothing changed on 401/404");
    }

    // Other events: acknowledged, not handled.
    let (s, r) =
        lifecycle(&app, &conn, SIGNING_SECRET, &json!({"type": "video.live_stream.idle", "data": {"id": "L1"}})).await;
    assert_eq!((s, &r["handled"]), (200, &json!(false)), "{r}");
    // An asset change that names no asset: refused, as on the ingest route, not acknowledged.
    // The message says what the event had instead.
    for (nameless, said) in [
        (json!({"type": "video.asset.deleted"}), "data is missing and object.id is missing"),
        (json!({"type": "video.asset.updated", "data": {"id": 5}}), "data.id is a number"),
    ] {
        let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &nameless).await;
        assert_eq!((s, r["error"]["field"].as_str()), (422, Some("payload")), "{nameless}: {r}");
        let message = r["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("names no Mux asset, so nothing changes: {said}")), "{r}");
    }

    // Updated: re-mapped from the event's asset in both buckets (no fetch: it has playback ids).
    let mut updated_asset = serde_json::from_str::<Value>(&ready_event(asset, true)).unwrap()["data"].clone();
    updated_asset["passthrough"] = json!("renamed");
    updated_asset["meta"] = json!({"title": "New title"});
    let updated =
        json!({"type": "video.asset.updated", "object": {"type": "asset", "id": asset}, "data": updated_asset});
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &updated).await;
    assert_eq!((s, &r["handled"], &r["action"]), (200, &json!(true), &json!("updated")), "{r}");
    assert_eq!(r["objects"].as_array().unwrap().len(), 2, "{r}");
    for b in [&b1, &b2] {
        let o = &objects(&app, b).await[0];
        assert_eq!((&o["metadata"]["external"], &o["metadata"]["title"]), (&json!("renamed"), &json!("New title")));
        assert_eq!(o["source"]["event_type"], "video.asset.updated");
    }
    assert_eq!(objects(&app, &b3).await[0]["metadata"]["external"], "inline", "another connection's bucket");
    // An update without playback ids fetches the asset (basic auth), then re-maps.
    let trimmed = json!({"type": "video.asset.updated", "data": {"id": asset, "status": "ready"}});
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &trimmed).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(fake.calls().len(), 1, "one fetch for both buckets of the connection (Mux rate-limits asset reads)");
    assert_eq!(objects(&app, &b2).await[0]["metadata"]["external"], "order-42", "both re-mapped from it");
    assert_eq!(objects(&app, &b1).await[0]["metadata"]["external"], "order-42");

    // Deleted: cascade in both buckets of the connection; retries are harmless.
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &deleted).await;
    assert_eq!((s, &r["action"]), (200, &json!("deleted")), "{r}");
    assert_eq!(r["objects"].as_array().unwrap().len(), 2, "{r}");
    assert!(objects(&app, &b1).await.is_empty() && objects(&app, &b2).await.is_empty());
    assert_eq!(objects(&app, &b3).await.len(), 1);
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &deleted).await;
    assert_eq!((s, r["objects"].as_array().map(Vec::len)), (200, Some(0)), "{r}");
    // A redelivered `ready` of the deleted asset does not resurrect it, after a kill -9 too.
    app.crash_restart().await;
    for bucket in [&b1, &b2] {
        let body = ready_event(asset, true);
        let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
        let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
        let (_, r) = app.post_raw(&path, body, &[("Mux-Signature", &h)]).await;
        assert_eq!(r["status"], "duplicate", "{r}");
        assert!(objects(&app, bucket).await.is_empty());
    }
}

/// Without API credentials a Mux adapter cannot fetch the asset; it maps what the
/// webhook's asset carries, through the same document as a fetched asset (the asset's
/// fields at the top level), so `duration` maps as it would after a fetch.
#[tokio::test]
async fn mux_without_credentials_maps_the_webhook_asset() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("nocreds", video_schema()).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "mux", "batching": {"mode": "immediate"},
                "field_mapping": {"duration": "duration", "data.id": "external"},
                "blob_source": {"file_field": "data.source_url", "blob_type": "video", "target_property": "video"}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let mut event: Value = serde_json::from_str(&ready_event("AsSeTnOcReDs01", false)).unwrap();
    event["data"]["source_url"] = json!("https://media.example.com/AsSeTnOcReDs01.mp4");
    let (s, r) = app
        .post_raw(
            &format!("/v1/buckets/{bucket}/source-adapter/ingest"),
            event.to_string(),
            &[("content-type", "application/json"), ("x-webhook-secret", &secret)],
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["status"], "created", "{r}");
    let objs = objects(&app, &bucket).await;
    assert_eq!(objs.len(), 1);
    assert_eq!(objs[0]["metadata"]["duration"], 153.361542, "{}", objs[0]);
    assert_eq!(objs[0]["metadata"]["external"], "AsSeTnOcReDs01", "{}", objs[0]);

    // An event about a part of an asset (here a track, filtered in) has no asset to map
    // without the API: a 422 that says so, not an object made of the track.
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "mux", "batching": {"mode": "immediate"},
                "event_filter": {"event_types": ["video.asset.track.ready"]},
                "field_mapping": {"duration": "duration", "data.id": "external"}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let track = json!({"type": "video.asset.track.ready", "object": {"type": "track", "id": "TrAcK01"},
        "data": {"id": "TrAcK01", "type": "audio", "asset_id": "AsSeTtRaCk01", "status": "ready"}});
    let (s, r) = app
        .post_raw(
            &format!("/v1/buckets/{bucket}/source-adapter/ingest"),
            track.to_string(),
            &[("content-type", "application/json"), ("x-webhook-secret", &secret)],
        )
        .await;
    assert_eq!(s, 422, "{r}");
    assert!(r.to_string().contains("credentials"), "{r}");
    assert_eq!(objects(&app, &bucket).await.len(), 1);
}

/// A row's UPDATE that arrives before its INSERT (retried after a failure) creates the object
/// (upsert); with a dedup key on the row's ID, the late INSERT is then a duplicate, not a
/// second object, and the DELETE (whose `record` is null) deletes it.
#[tokio::test]
async fn supabase_insert_after_its_upsert_is_a_duplicate() {
    let app = TestApp::start().await;
    supabase_upsert_then_insert(&app, json!("record.listing_id")).await;
}

async fn supabase_upsert_then_insert(app: &TestApp, dedup_key: Value) {
    let bucket =
        app.create_bucket(&format!("rows-{}", dedup_key.is_null()), json!({"title": {"type": "string"}})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "supabase", "id_column": "listing_id", "dedup_key": dedup_key,
                "event_filter": {"event_types": ["INSERT", "UPDATE", "DELETE"]},
                "field_mapping": {"record.title": "title"}, "batching": {"mode": "immediate"}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let send = |v: Value| {
        let (app, secret, bucket) = (app, secret.clone(), bucket.clone());
        async move {
            app.post_raw(
                &format!("/v1/buckets/{bucket}/source-adapter/ingest"),
                v.to_string(),
                &[("X-Webhook-Secret", &secret), ("Content-Type", "application/json")],
            )
            .await
        }
    };
    let row = json!({"listing_id": 7, "title": "Edited"});
    let (s, r) = send(db_event("UPDATE", row.clone(), json!({"listing_id": 7, "title": "Original"}))).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let oid = r["object_id"].clone();
    let (s, r) = send(db_event("INSERT", json!({"listing_id": 7, "title": "Original"}), Value::Null)).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("duplicate")), "{r}");
    assert_eq!(r["object_id"], oid);
    let objs = objects(app, &bucket).await;
    assert_eq!(objs.len(), 1, "{objs:?}");
    assert_eq!(objs[0]["metadata"]["title"], "Edited");
    // A real DELETE has `record: null`: no dedup value, and none is needed to delete.
    let (s, r) = send(db_event("DELETE", Value::Null, json!({"listing_id": 7, "title": "Edited"}))).await;
    assert_eq!((s, r["status"].as_str(), r["object_ids"].clone()), (200, Some("deleted"), json!([oid])), "{r}");
    assert!(objects(app, &bucket).await.is_empty());
}

/// Mux gives every webhook endpoint its own signing secret: a connection holds one per
/// endpoint (a bucket's ingest URL, the lifecycle URL), and `PATCH` replaces them (a rotation,
/// a new endpoint) without recreating the connection its adapters name.
#[tokio::test]
async fn a_mux_connection_holds_a_secret_per_endpoint_and_patch_replaces_them() {
    let fake = FakeMux::start().await;
    let app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let (ingest_secret, lifecycle_secret) = ("whsec-ingest-endpoint", "whsec-lifecycle-endpoint");
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux", "provider_type": "mux", "provider_config": {
                "access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET,
                "webhook_signing_secret": [ingest_secret, lifecycle_secret]}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let conn = b["connection_id"].as_str().unwrap().to_string();
    let (bucket, _) = mux_bucket(&app, "videos", &conn).await;
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let signed_ingest = |secret: &str, asset: &str| {
        let body = ready_event(asset, true);
        let h = mux::sign(secret, now(), body.as_bytes());
        let app = &app;
        let ingest = ingest.clone();
        async move { app.post_raw(&ingest, body, &[("Mux-Signature", &h)]).await }
    };
    let (s, r) = signed_ingest(ingest_secret, "AsSeTmUlTi01").await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let deleted = json!({"type": "video.asset.deleted", "object": {"type": "asset", "id": "AsSeTmUlTi01"},
        "data": {"id": "AsSeTmUlTi01"}});
    let (s, r) = lifecycle(&app, &conn, lifecycle_secret, &deleted).await;
    assert_eq!((s, r["objects"].as_array().map(Vec::len)), (200, Some(1)), "{r}");

    // Rotation: the new secret replaces both; the old ones are refused from then on.
    let (_, before) = app.get(&format!("/v1/organizations/connections/{conn}")).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // updated_at has whole seconds
    let (s, view) = app
        .patch(
            &format!("/v1/organizations/connections/{conn}"),
            json!({"provider_config": {"access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET,
                "webhook_signing_secret": "whsec-rotated"}}),
        )
        .await;
    assert_eq!(s, 200, "{view}");
    assert!(!view.to_string().contains("whsec") && !view.to_string().contains(TOKEN_SECRET), "{view}");
    assert_eq!(view["name"], "mux");
    assert_ne!(view["updated_at"], before["updated_at"]);
    let (s, _) = signed_ingest(ingest_secret, "AsSeTmUlTi02").await;
    assert_eq!(s, 401);
    let (s, _) = lifecycle(&app, &conn, lifecycle_secret, &deleted).await;
    assert_eq!(s, 401);
    let (s, r) = signed_ingest("whsec-rotated", "AsSeTmUlTi02").await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");

    // A rename alone keeps the configuration.
    let (s, view) = app.patch(&format!("/v1/organizations/connections/{conn}"), json!({"name": "mux-prod"})).await;
    assert_eq!((s, &view["name"]), (200, &json!("mux-prod")), "{view}");
    let (s, r) = signed_ingest("whsec-rotated", "AsSeTmUlTi03").await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");

    // What is already there changes nothing: a 200, `updated_at` kept (as a bucket's `{}`).
    let path = format!("/v1/organizations/connections/{conn}");
    for body in [json!({}), json!({"name": "mux-prod"})] {
        let (s, same) = app.patch(&path, body.clone()).await;
        assert_eq!(s, 200, "{body}: {same}");
        assert_eq!((&same["name"], &same["updated_at"]), (&view["name"], &view["updated_at"]), "{body}: {same}");
    }

    // Refused, naming the field: another provider's shape, a removal, a type change, a
    // blank name; an unknown connection is a 404.
    for (body, field) in [
        (json!({"provider_config": {"url": "https://x.supabase.co", "service_role_key": "k"}}), "provider_config"),
        (json!({"provider_config": null}), "provider_config"),
        (json!({"name": null}), "name"),
        (json!({"provider_type": "supabase"}), "provider_type"),
        (json!({"name": " "}), "name"),
        // An empty list would silently turn signature checks off, as `""` would.
        (
            json!({"provider_config": {"access_token_id": "i", "access_token_secret": "s", "webhook_signing_secret": []}}),
            "provider_config.webhook_signing_secret",
        ),
        // What the view shows in place of the secret is not a secret: saved, anyone could sign.
        (
            json!({"provider_config": {"access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET,
                "webhook_signing_secret": view["webhook_signing_secret"]}}),
            "provider_config.webhook_signing_secret",
        ),
        (
            json!({"provider_config": {"access_token_id": TOKEN_ID, "access_token_secret": "********",
                "webhook_signing_secret": "whsec-new"}}),
            "provider_config.access_token_secret",
        ),
    ] {
        let (s, r) = app.patch(&path, body.clone()).await;
        assert_eq!(s, 422, "{body}: {r}");
        assert!(r.to_string().contains(field), "{body}: {r}");
    }
    assert_eq!(view["webhook_signing_secret"], "(set; never shown)");
    let (s, _) = signed_ingest("(set; never shown)", "AsSeTmUlTi04").await;
    assert_eq!(s, 401, "the placeholder was not saved as the secret");
    let (s, r) = signed_ingest("whsec-rotated", "AsSeTmUlTi04").await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "the refused PATCHes changed nothing: {r}");
    let (s, _) = app.patch("/v1/organizations/connections/conn_01J0000000000000000000000", json!({"name": "x"})).await;
    assert_eq!(s, 404);
}

/// A direct upload's `video.upload.asset_created` is about `data.asset_id` (its `data` is the
/// upload): the asset is fetched by that id, and the asset's own `ready` later is the same
/// object (the dedup key `data.id`, seed 000's example and the default, means the asset,
/// wherever the event keeps its id).
#[tokio::test]
async fn an_upload_event_maps_its_asset_and_dedups_with_the_asset_events() {
    let fake = FakeMux::start().await;
    let app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let bucket = app.create_bucket("uploads", video_schema()).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "mux", "connection_id": conn,
                "event_filter": {"event_types": ["video.upload.asset_created", "video.upload.created", "video.asset.ready"]},
                "field_mapping": {"duration": "duration", "data.id": "external"},
                "blob_source": {"file_field": "playback_url", "blob_type": "video", "target_property": "video"},
                "batching": {"mode": "immediate"}, "dedup_key": "data.id"}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let send = |event: Value| {
        let body = event.to_string();
        let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
        let (app, ingest) = (&app, ingest.clone());
        async move { app.post_raw(&ingest, body, &[("Mux-Signature", &h)]).await }
    };
    let upload = json!({"type": "video.upload.asset_created", "id": "evt-up-1",
        "object": {"type": "upload", "id": "UpLoAd001"},
        "data": {"id": "UpLoAd001", "asset_id": "AsSeTuP001", "status": "asset_created",
                 "new_asset_settings": {"playback_policies": ["public"]}}});
    let (s, r) = send(upload).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let object_id = r["object_id"].clone();
    assert_eq!(fake.calls().iter().map(|c| c.0.as_str()).collect::<Vec<_>>(), ["AsSeTuP001"], "fetched by asset id");
    let o = &objects(&app, &bucket).await[0];
    assert_eq!(o["source"]["external_id"], "AsSeTuP001", "{o}");
    assert_eq!(o["metadata"]["external"], "AsSeTuP001", "data.id is the fetched asset's: {o}");
    assert!(o["blobs"][0]["url"].as_str().unwrap().starts_with("https://stream.mux.com/"), "{o}");

    // The asset's own ready: the same object.
    let (s, r) = send(serde_json::from_str(&ready_event("AsSeTuP001", true)).unwrap()).await;
    assert_eq!((s, r["status"].as_str(), &r["object_id"]), (200, Some("duplicate"), &object_id), "{r}");
    // An upload with no asset yet cannot become an object: a 422 that says why.
    let created = json!({"type": "video.upload.created", "data": {"id": "UpLoAd002", "status": "waiting"}});
    let (s, r) = send(created).await;
    assert_eq!(s, 422, "{r}");
    assert!(r.to_string().contains("data.asset_id"), "{r}");
    assert_eq!(objects(&app, &bucket).await.len(), 1);
}

/// Mux may deliver an asset's delete before a retried `ready`, or while the `ready` is still
/// fetching the asset: the cascade delete leaves a tombstone, so the asset does not come back,
/// also after a restart.
#[tokio::test]
async fn a_mux_delete_that_comes_first_is_not_undone_by_a_late_ready() {
    let fake = FakeMux::start().await;
    let mut app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let (bucket, _) = mux_bucket(&app, "videos", &conn).await;
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let deleted = |asset: &str| json!({"type": "video.asset.deleted", "object": {"type": "asset", "id": asset}, "data": {"id": asset}});
    let signed = |body: &str| mux::sign(SIGNING_SECRET, now(), body.as_bytes());

    // The delete first: nothing to delete yet.
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &deleted("AsSeTgOnE01")).await;
    assert_eq!((s, r["objects"].as_array().map(Vec::len)), (200, Some(0)), "{r}");
    app.restart().await;
    let body = ready_event("AsSeTgOnE01", true);
    let h = signed(&body);
    let (s, r) = app.post_raw(&ingest, body, &[("Mux-Signature", &h)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("duplicate")), "after a restart too: {r}");
    assert!(objects(&app, &bucket).await.is_empty());

    // The delete while the ready is fetching its asset (the fake API takes a second).
    let body = ready_event("SlOwAsSeT01", false);
    let h = signed(&body);
    let late = {
        let (client, url) = (app.client.clone(), app.url(&ingest));
        tokio::spawn(async move {
            let r = client.post(url).header("Mux-Signature", h).body(body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &deleted("SlOwAsSeT01")).await;
    assert_eq!(s, 200, "{r}");
    let (s, r) = late.await.unwrap();
    assert_eq!((s, r["status"].as_str()), (200, Some("duplicate")), "{r}");
    assert!(objects(&app, &bucket).await.is_empty());
    // Other assets are not affected.
    let body = ready_event("AsSeTkEpT01", true);
    let h = signed(&body);
    let (s, r) = app.post_raw(&ingest, body, &[("Mux-Signature", &h)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
}

/// A master key that cannot open the connection (changed, or the wrong one restored) is the
/// operator's problem, not the sender's: a correctly signed Mux request gets 503 (Mux
/// retries) saying why, not a 401 that blames the signature, nor a 500.
#[tokio::test]
async fn a_master_key_that_cannot_open_the_connection_is_a_503_not_a_bad_signature() {
    let key_a = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let key_b = "HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";
    let fake = FakeMux::start().await;
    let mut app = TestApp::start_with(Options {
        extra_toml: fake.toml(),
        env: vec![("HOOKLINE_MASTER_KEY".into(), key_a.into())],
        ..Default::default()
    })
    .await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let (bucket, webhook_secret) = mux_bucket(&app, "mux-keys", &conn).await;
    app.stop();
    app.set_env("HOOKLINE_MASTER_KEY", key_b);
    app.start_again().await;

    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let body = ready_event("AsSeTkEyS01", true);
    let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) = app.post_raw(&ingest, body.clone(), &[("Mux-Signature", &h)]).await;
    assert_eq!(s, 503, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("decrypted"), "{r}");
    // An unauthenticated request records nothing: the operator learns why from the log.
    let (_, st) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    assert_eq!(st["last_error"], Value::Null, "{st}");
    assert!(app.log().contains("open connection"), "the log says which connection");
    // A wrong signature is still a 401 only when it can be checked; without a Mux-Signature,
    // X-Webhook-Secret still authenticates (the event carries its playback IDs: no fetch).
    let (s, r) = app.post_raw(&ingest, body, &[("X-Webhook-Secret", &webhook_secret)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");

    let (s, r) =
        lifecycle(&app, &conn, SIGNING_SECRET, &json!({"type": "video.asset.deleted", "data": {"id": "AsSeTkEyS01"}}))
            .await;
    assert_eq!(s, 503, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("master key"), "{r}");
    assert_eq!(objects(&app, &bucket).await.len(), 1, "nothing deleted");
}

/// The first line of the answer to a POST whose head says it has a body that is never sent,
/// if one comes within 3 s (the daemon waits `read_timeout`, 30 s, for a body it reads).
async fn answer_without_body(addr: SocketAddr, path: &str, mux_signature: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nMux-Signature: {mux_signature}\r\nContent-Length: 1000\r\n\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut answer)).await.ok()?.ok()?;
    String::from_utf8_lossy(&answer[..n]).lines().next().map(str::to_string)
}

/// A Mux signature that no body could make valid (malformed, stale, or for a connection with
/// no signing secret) is refused from the request's head, on ingest and on the lifecycle
/// route: a sender that declares a body and never sends it is answered 401 at once, instead
/// of holding a share of the upstream body budget until its read timeout. A well-formed,
/// fresh signature waits for its body, which it is checked against.
#[tokio::test]
async fn a_mux_signature_no_body_could_make_valid_is_refused_from_the_head() {
    let fake = FakeMux::start().await;
    let app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let (bucket, _) = mux_bucket(&app, "mux-head", &conn).await;
    let t = now();
    let tag = "00".repeat(32);
    let stale = format!("t={},v1={tag}", t - DEFAULT_TOLERANCE_SECS - 60);
    let fresh = format!("t={t},v1={tag}");
    for path in [format!("/v1/buckets/{bucket}/source-adapter/ingest"), format!("/v1/webhooks/mux/{conn}")] {
        for refused in [stale.as_str(), "t=abc,v1=00"] {
            let answer = answer_without_body(app.addr, &path, refused).await;
            assert!(answer.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 401")), "{path} {refused}: {answer:?}");
        }
        assert_eq!(answer_without_body(app.addr, &path, &fresh).await, None, "{path}: the body is waited for");
    }
    // A connection without a signing secret: no signature can be checked against it.
    let b = unsigned_mux_connection(&app).await;
    let unsigned = b["connection_id"].as_str().unwrap().to_string();
    let (other, _) = mux_bucket(&app, "mux-head-unsigned", &unsigned).await;
    for path in [format!("/v1/buckets/{other}/source-adapter/ingest"), format!("/v1/webhooks/mux/{unsigned}")] {
        let answer = answer_without_body(app.addr, &path, &fresh).await;
        assert!(answer.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 401")), "{path}: {answer:?}");
    }
    // The refusals are recorded as the body's check would record them.
    let (_, st) = app.get(&format!("/v1/buckets/{other}/source-adapter/status")).await;
    assert_eq!(st["last_refused_ingest"]["reason"], "no_signing_secret", "{st}");
    assert!(fake.calls().is_empty());
}

/// Bodies that their head does not authenticate (a `Mux-Signature`, checked against the
/// body once it is in) take at most half of the upstream body budget: senders of forged,
/// well-formed signatures that stall mid-body cannot crowd out an upstream that
/// `X-Webhook-Secret` authenticates from its head.
#[tokio::test]
async fn unauthenticated_mux_bodies_leave_half_the_budget_to_authenticated_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = FakeMux::start().await;
    let app = TestApp::start_with(Options {
        extra_toml: fake.toml(),
        server_toml: "max_body_bytes = 262144\nmax_upstream_body_memory_mb = 1\n".into(),
        ..Default::default()
    })
    .await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let (bucket, webhook_secret) = mux_bucket(&app, "mux-budget", &conn).await;
    let path = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let forged = format!("t={},v1={}", now(), "00".repeat(32));
    // Four senders of forged signatures declare 250,000 bytes and send 190,000 (a 256 KiB
    // buffer each: the whole 1 MiB, were they allowed it), then stall.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: x\r\nMux-Signature: {forged}\r\nContent-Length: 250000\r\n\r\n");
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&vec![b' '; 190_000]).await.unwrap();
        stalled.push(c);
    }
    // Two of them got their share (a buffer of 256 KiB each: half the budget together); the
    // others were refused (503) once their bytes came in. Three when the server read the four
    // interleaved (a loaded machine): buffers grow by doubling, so two that reached 128 KiB
    // while a third already held 256 KiB are refused as they double, and only one is left.
    let answers = futures::future::join_all(stalled.iter_mut().map(|c| async move {
        let mut answer = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(5), c.read(&mut answer)).await {
            Ok(Ok(n)) => String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 503"),
            _ => false,
        }
    }))
    .await;
    let refused = answers.iter().filter(|r| **r).count();
    assert!((2..=3).contains(&refused), "{refused} of the unauthenticated senders refused: 2 past half the budget");
    // An upstream its secret authenticates still gets a body as large.
    let body = ready_event("AsSeTbUdGeT01", true);
    let padded = format!("{}{}", body, " ".repeat(190_000));
    let (s, r) = app.post_raw(&path, padded, &[("X-Webhook-Secret", webhook_secret.as_str())]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    drop(stalled);
}

/// A caller that hangs up before its ingest is answered loses nothing: the Mux API holds the
/// asset fetch (so the request waits in the daemon, past authentication, for the actor's
/// answer) until the daemon has dropped the request of the closed connection (its log says
/// so); then the fetch returns, the actor creates the object, and its answer, commit
/// included, has no receiver. The dropped commit finishes itself: `object.created` is
/// delivered, once. Mux, never answered, redelivers: a duplicate of that object.
#[tokio::test]
async fn an_ingest_whose_caller_hung_up_still_publishes_its_event() {
    use tokio::io::AsyncWriteExt;
    let fake = FakeMux::start().await;
    let mut app = TestApp::start_with(Options {
        // Time enough for the held fetch (the bound is 25 s).
        extra_toml: format!("[mux]\napi_base = \"http://{}\"\ntimeout_seconds = 25\n", fake.addr),
        // For the connection's end (`hookline::http`, debug).
        env: vec![("RUST_LOG".into(), "info,hookline::http=debug".into())],
        ..Default::default()
    })
    .await;
    let hook = Receiver::start(200).await;
    let channels = json!([http_channel(&hook.url("/created"))]);
    create_webhook(&app, json!({"webhook_name": "created", "event_types": ["object.created"], "channels": channels}))
        .await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let (bucket, _) = mux_bucket(&app, "hung-up", &conn).await;
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let asset = "HeLdAsSeT01";
    let body = ready_event(asset, false); // no playback ids: the asset is fetched
    let header = mux::sign(SIGNING_SECRET, now(), body.as_bytes());

    // The request on a connection of its own, closed once the fetch has started.
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST {ingest} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nMux-Signature: {header}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        app.addr,
        body.len()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let fetching = || async { fake.calls().iter().any(|(id, _)| id == asset) };
    assert!(eventually(Duration::from_secs(20), fetching).await, "the asset fetch never started");
    let ended = || app.log().matches("HTTP connection ended with an error").count();
    let before = ended();
    drop(tcp);
    assert!(
        eventually(Duration::from_secs(20), || async { ended() > before }).await,
        "the daemon did not drop the request; log:\n{}",
        app.log()
    );
    fake.release_held();

    // Created, and published, though nobody was answered.
    assert!(eventually(Duration::from_secs(20), || async { hook.count() >= 1 }).await, "no object.created");
    let objects = objects(&app, &bucket).await;
    assert_eq!(objects.len(), 1, "{objects:?}");
    let oid = objects[0]["object_id"].as_str().unwrap().to_string();
    assert_eq!(objects[0]["source"]["external_id"], asset);
    let envelope = hook.captured()[0].json();
    assert_eq!(envelope["event_type"], "object.created", "{envelope}");
    assert_eq!(envelope["payload"]["object_id"], oid.as_str(), "{envelope}");
    let created = metric_value(&app.metrics().await, "hookline_ingest_requests_total", &[("outcome", "created")]);
    assert_eq!(created, 0.0, "the request was never answered (its handler was dropped)");

    // Mux redelivers: a duplicate of the object, no second fetch.
    let again = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) = app.post_raw(&ingest, body, &[("Mux-Signature", &again)]).await;
    assert_eq!((s, r["status"].as_str(), r["object_id"].as_str()), (200, Some("duplicate"), Some(oid.as_str())), "{r}");
    assert_eq!(fake.calls().len(), 1);

    // One event recorded, one delivered (the stopped daemon delivers nothing more).
    let backend = stop_and_open(&mut app).await;
    let events = stored_events(&backend, "object.created");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["payload"]["object_id"], oid.as_str());
    assert_eq!(hook.count(), 1);
}

/// A Supabase bucket with `adapter` (merged over INSERT/UPDATE/DELETE, `record.title` →
/// title, immediate); returns the bucket and its webhook secret.
async fn supabase_rows(app: &TestApp, name: &str, adapter: Value) -> (String, String) {
    let bucket = app.create_bucket(name, json!({"title": {"type": "string"}})).await;
    let mut config = json!({"adapter_type": "supabase",
        "event_filter": {"event_types": ["INSERT", "UPDATE", "DELETE"]},
        "field_mapping": {"record.title": "title"}, "batching": {"mode": "immediate"}});
    for (k, v) in adapter.as_object().unwrap() {
        config[k] = v.clone();
    }
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), json!({ "source_adapter": config })).await;
    assert_eq!(s, 200, "{b}");
    (bucket, b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string())
}

/// Posts a database-webhook payload to the bucket's ingest URL; asserts a 200.
async fn post_row(app: &TestApp, bucket: &str, secret: &str, v: Value) -> Value {
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let (s, r) = app
        .post_raw(&ingest, v.to_string(), &[("X-Webhook-Secret", secret), ("Content-Type", "application/json")])
        .await;
    assert_eq!(s, 200, "{v} → {r}");
    r
}

/// Posts an INSERT of each row `{id, title: "t"}`; asserts each is `created`; their object IDs.
async fn insert_rows(app: &TestApp, bucket: &str, secret: &str, ids: &[i64]) -> Vec<Value> {
    let mut made = Vec::new();
    for id in ids {
        let r = post_row(app, bucket, secret, db_event("INSERT", json!({"id": id, "title": "t"}), Value::Null)).await;
        assert_eq!(r["status"], "created", "{r}");
        made.push(r["object_id"].clone());
    }
    made
}

/// An UPDATE that changed the row's primary key (`old_record.id` 200, `record.id` 201)
/// updates the row's object, found under the old key, and re-keys it: its external_id and
/// index entry become 201, so the next UPDATE and the DELETE of 201 (after a restart too:
/// the index entry on disk moved) reach it, and no second object is made.
#[tokio::test]
async fn supabase_update_of_the_primary_key_rekeys_the_rows_object() {
    let mut app = TestApp::start().await;
    let (bucket, secret) = supabase_rows(&app, "rekey", json!({})).await;
    let (b, s) = (bucket.as_str(), secret.as_str());
    let r = post_row(&app, b, s, db_event("INSERT", json!({"id": 200, "title": "a"}), Value::Null)).await;
    assert_eq!(r["status"], "created", "{r}");
    let oid = r["object_id"].clone();
    let key_change = db_event("UPDATE", json!({"id": 201, "title": "b"}), json!({"id": 200, "title": "a"}));
    let r = post_row(&app, b, s, key_change.clone()).await;
    assert_eq!((&r["status"], &r["object_id"], &r["object_ids"]), (&json!("updated"), &oid, &json!([oid])), "{r}");
    let objs = objects(&app, b).await;
    assert_eq!(objs.len(), 1, "{objs:?}");
    assert_eq!((&objs[0]["object_id"], &objs[0]["source"]["external_id"]), (&oid, &json!("201")));
    assert_eq!(objs[0]["metadata"]["title"], "b");
    // The same key change delivered again finds the object under its new key.
    let r = post_row(&app, b, s, key_change).await;
    assert_eq!((&r["status"], &r["object_id"]), (&json!("updated"), &oid), "{r}");
    assert_eq!(objects(&app, b).await.len(), 1);

    app.restart().await;
    let r = post_row(&app, b, s, db_event("UPDATE", json!({"id": 201, "title": "c"}), json!({"id": 201}))).await;
    assert_eq!((&r["status"], &r["object_id"]), (&json!("updated"), &oid), "{r}");
    let objs = objects(&app, b).await;
    assert_eq!((objs.len(), &objs[0]["metadata"]["title"]), (1, &json!("c")), "{objs:?}");
    let r = post_row(&app, b, s, db_event("DELETE", Value::Null, json!({"id": 201, "title": "c"}))).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("deleted"), &json!([oid])), "{r}");
    assert!(objects(&app, b).await.is_empty());
}

/// A key change onto a key that another object already has (row 2 was deleted unseen, its
/// DELETE filtered out, and row 1 took its key) changes row 1's object only: row 2's object
/// keeps its content, loses the key and is no longer found by it, so the row's later UPDATE
/// and DELETE (after a restart too) reach its own object alone.
#[tokio::test]
async fn a_key_change_onto_a_taken_key_changes_the_rows_own_object_only() {
    let mut app = TestApp::start().await;
    let (bucket, secret) =
        supabase_rows(&app, "taken", json!({"event_filter": {"event_types": ["INSERT", "UPDATE"]}})).await;
    let (b, s) = (bucket.as_str(), secret.as_str());
    let made = insert_rows(&app, b, s, &[1, 2]).await;
    let (one, two) = (&made[0], &made[1]);
    let r = post_row(&app, b, s, db_event("DELETE", Value::Null, json!({"id": 2}))).await;
    assert_eq!(r["status"], "ignored", "filtered out: {r}");
    let key_change = db_event("UPDATE", json!({"id": 2, "title": "one, now 2"}), json!({"id": 1}));
    let r = post_row(&app, b, s, key_change).await;
    assert_eq!((&r["status"], &r["object_id"], &r["object_ids"]), (&json!("updated"), one, &json!([one])), "{r}");
    let title = |objs: &[Value], oid: &Value| {
        let o = objs.iter().find(|o| &o["object_id"] == oid).unwrap();
        (o["metadata"]["title"].clone(), o["source"]["external_id"].clone())
    };
    let objs = objects(&app, b).await;
    assert_eq!(objs.len(), 2, "{objs:?}");
    assert_eq!(title(&objs, one), (json!("one, now 2"), json!("2")));
    // Its content as it was, without the key that names row 1 now.
    assert_eq!(title(&objs, two), (json!("t"), Value::Null), "row 2's object");

    let r = post_row(&app, b, s, db_event("UPDATE", json!({"id": 2, "title": "again"}), json!({"id": 2}))).await;
    assert_eq!(&r["object_ids"], &json!([one]), "{r}");
    app.restart().await;
    let (s2, body) = app
        .patch(
            &format!("/v1/buckets/{b}"),
            json!({"source_adapter": {"adapter_type": "supabase",
            "event_filter": {"event_types": ["INSERT", "UPDATE", "DELETE"]},
            "field_mapping": {"record.title": "title"}, "batching": {"mode": "immediate"}}}),
        )
        .await;
    assert_eq!(s2, 200, "{body}");
    let r = post_row(&app, b, s, db_event("DELETE", Value::Null, json!({"id": 2}))).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("deleted"), &json!([one])), "{r}");
    let objs = objects(&app, b).await;
    assert_eq!(objs.len(), 1, "{objs:?}");
    assert_eq!(title(&objs, two), (json!("t"), Value::Null));
}

/// An UPDATE right behind a key change of its row (sent 0.2 ms after it, so that it reaches
/// the actor while the key change is submitted but perhaps not yet readable) reads the object
/// as the key change left it: it keeps the new key. Before, it could read the record from
/// before the key change and write it back, the old key with it, under the new key's index
/// entry (writebacks would then have gone to the old row). A race: 150 rounds of a key
/// change and three updates 0.1, 0.25 and 0.5 ms behind it.
#[tokio::test]
async fn an_update_right_behind_a_key_change_keeps_the_new_key() {
    let app = TestApp::start().await;
    let (bucket, secret) = supabase_rows(&app, "rekey-race", json!({})).await;
    let (b, s) = (bucket.as_str(), secret.as_str());
    let (mut both, mut stale) = (0, Vec::new());
    for n in 0..150 {
        let (old, new) = (100_000 + 2 * n, 100_001 + 2 * n);
        let r = post_row(&app, b, s, db_event("INSERT", json!({"id": old, "title": "a"}), Value::Null)).await;
        let oid = r["object_id"].clone();
        let first = post_row(&app, b, s, db_event("UPDATE", json!({"id": new, "title": "b"}), json!({"id": old})));
        let app = &app;
        let behind = move |micros: u64| async move {
            tokio::time::sleep(Duration::from_micros(micros)).await;
            post_row(app, b, s, db_event("UPDATE", json!({"id": new, "title": "c"}), json!({"id": new}))).await
        };
        let (r1, r2, r3, r4) = tokio::join!(first, behind(100), behind(250), behind(500));
        if [r1, r2, r3, r4].iter().any(|r| r["object_id"] != oid) {
            continue; // an update overtook the key change (an upsert): not this interleaving
        }
        both += 1;
        let (_, o) = app.get(&format!("/v1/buckets/{b}/objects/{}", oid.as_str().unwrap())).await;
        if o["source"]["external_id"] != json!(new.to_string()) {
            stale.push(o);
        }
    }
    assert!(both > 0, "the interleaving never happened");
    assert!(stale.is_empty(), "{} of {both} objects went back to the old key: {stale:?}", stale.len());
}

/// Objects a generic_webhook adapter made are not indexed by external ID (its events only
/// create). An adapter type that changes objects by that ID, configured on the bucket after
/// it, indexes them first, so its DELETE reaches every object whose external_id it names (the
/// contract), the buffered one included, and after a restart too.
#[tokio::test]
async fn an_adapter_taking_over_from_generic_webhook_reaches_its_objects() {
    let mut app = TestApp::start().await;
    let bucket = app.create_bucket("takeover", json!({"title": {"type": "string"}})).await;
    let path = format!("/v1/buckets/{bucket}");
    let generic = |mode: &str| {
        json!({"source_adapter": {"adapter_type": "generic_webhook", "dedup_key": "record.id",
            "field_mapping": {"record.title": "title"}, "batching": {"mode": mode, "window_seconds": 300}}})
    };
    let (s, b) = app.patch(&path, generic("immediate")).await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let (bk, sc) = (bucket.as_str(), secret.as_str());
    let made = insert_rows(&app, bk, sc, &[7, 8]).await;
    let (s, b) = app.patch(&path, generic("time_window")).await;
    assert_eq!(s, 200, "{b}");
    let r = post_row(&app, bk, sc, db_event("INSERT", json!({"id": 9, "title": "t"}), Value::Null)).await;
    assert_eq!(r["status"], "buffered", "{r}");
    let buffered = r["object_id"].clone();

    let (s, b) = app
        .patch(
            &path,
            json!({"source_adapter": {"adapter_type": "supabase",
                "event_filter": {"event_types": ["INSERT", "UPDATE", "DELETE"]},
                "field_mapping": {"record.title": "title"}, "batching": {"mode": "time_window", "window_seconds": 300}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // (Indexed by the new actor once started: the DELETEs wait for it.)
    for (id, oid) in [(7, &made[0]), (9, &buffered)] {
        let r = post_row(&app, bk, sc, db_event("DELETE", Value::Null, json!({"id": id}))).await;
        assert_eq!((&r["status"], &r["object_ids"]), (&json!("deleted"), &json!([oid])), "{id}: {r}");
    }
    assert!(app.log().contains("objects indexed by external ID"), "log:\n{}", app.log());
    app.restart().await;
    let r = post_row(&app, bk, sc, db_event("DELETE", Value::Null, json!({"id": 8}))).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("deleted"), &json!([made[1]])), "{r}");
    assert!(objects(&app, bk).await.is_empty());
}

/// Short of disk (`storage.min_free_mb` over what the disk has), only new objects wait: a
/// re-sent INSERT is still a duplicate, an UPDATE and a DELETE of rows with objects still
/// apply, while an INSERT and an UPDATE of a row without an object (an upsert) are 503.
#[tokio::test]
async fn short_of_disk_changes_and_duplicates_go_on() {
    let mut app = TestApp::start().await;
    let (bucket, secret) = supabase_rows(&app, "short", json!({"dedup_key": "record.id"})).await;
    let (b, s) = (bucket.as_str(), secret.as_str());
    let made = insert_rows(&app, b, s, &[1, 2]).await;
    app.set_storage_toml("min_free_mb = 1073741824".into());
    app.restart().await;
    let r = post_row(&app, b, s, db_event("INSERT", json!({"id": 1, "title": "t"}), Value::Null)).await;
    assert_eq!((&r["status"], &r["object_id"]), (&json!("duplicate"), &made[0]), "{r}");
    let r = post_row(&app, b, s, db_event("UPDATE", json!({"id": 1, "title": "u"}), json!({"id": 1}))).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("updated"), &json!([made[0]])), "{r}");
    let r = post_row(&app, b, s, db_event("DELETE", Value::Null, json!({"id": 2}))).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("deleted"), &json!([made[1]])), "{r}");
    // The deleted row's key outlives its object, across a kill -9 too.
    app.crash_restart().await;
    let r = post_row(&app, b, s, db_event("INSERT", json!({"id": 2, "title": "t"}), Value::Null)).await;
    assert_eq!((&r["status"], &r["object_id"]), (&json!("duplicate"), &made[1]), "{r}");
    let ingest = format!("/v1/buckets/{b}/source-adapter/ingest");
    let h = [("X-Webhook-Secret", s), ("Content-Type", "application/json")];
    for event in [
        db_event("INSERT", json!({"id": 3, "title": "t"}), Value::Null),
        db_event("UPDATE", json!({"id": 4, "title": "t"}), json!({"id": 4})),
    ] {
        let (st, r) = app.post_raw(&ingest, event.to_string(), &h).await;
        assert_eq!((st, r["error"]["code"].as_str()), (503, Some("unavailable")), "{event} → {r}");
    }
    let objs = objects(&app, b).await;
    assert_eq!(objs.len(), 1, "{objs:?}");
    assert_eq!((&objs[0]["object_id"], &objs[0]["metadata"]["title"]), (&made[0], &json!("u")));
}

/// The same for a row still in its batch window: the buffered entry is updated in place and
/// re-keyed (its byte count kept exact), a later UPDATE of the new key finds it, and the
/// flush makes one object with the new key and the latest content.
#[tokio::test]
async fn supabase_update_of_the_primary_key_rekeys_a_buffered_row() {
    let app = TestApp::start().await;
    let window = json!({"batching": {"mode": "time_window", "window_seconds": 5}});
    let (bucket, secret) = supabase_rows(&app, "rekey-buffered", window).await;
    let (b, s) = (bucket.as_str(), secret.as_str());
    let exact = || async {
        let (st, v) = app.get(&format!("/v1/debug/buffer/{b}")).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["counted"], v["actual"], "{v}");
    };
    let r = post_row(&app, b, s, db_event("INSERT", json!({"id": "300", "title": "a"}), Value::Null)).await;
    assert_eq!(r["status"], "buffered", "{r}");
    let oid = r["object_id"].clone();
    let r =
        post_row(&app, b, s, db_event("UPDATE", json!({"id": "301-longer", "title": "b"}), json!({"id": "300"}))).await;
    assert_eq!((&r["status"], &r["object_id"]), (&json!("updated"), &oid), "{r}");
    exact().await;
    let r = post_row(
        &app,
        b,
        s,
        db_event("UPDATE", json!({"id": "301-longer", "title": "c"}), json!({"id": "301-longer"})),
    )
    .await;
    assert_eq!((&r["status"], &r["object_id"]), (&json!("updated"), &oid), "{r}");
    exact().await;
    assert!(eventually(Duration::from_secs(20), || async { !objects(&app, b).await.is_empty() }).await);
    let objs = objects(&app, b).await;
    assert_eq!(objs.len(), 1, "{objs:?}");
    assert_eq!(
        (&objs[0]["object_id"], &objs[0]["source"]["external_id"], &objs[0]["metadata"]["title"]),
        (&oid, &json!("301-longer"), &json!("c"))
    );
    let r = post_row(&app, b, s, db_event("DELETE", Value::Null, json!({"id": "301-longer"}))).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("deleted"), &json!([oid])), "{r}");
}

/// With `dedup_key` on the row's ID, an UPDATE that arrives after the row's DELETE (a late
/// retry) is not an upsert: like a re-sent INSERT of the deleted row, it is a `duplicate` of
/// the deleted object, and nothing comes back. Without a dedup key nothing tells a deleted
/// row from one never seen, and the UPDATE creates the object (upsert).
#[tokio::test]
async fn supabase_update_after_the_rows_delete_is_a_duplicate_with_a_dedup_key() {
    let app = TestApp::start().await;
    let (bucket, secret) = supabase_rows(&app, "deleted-rows", json!({"dedup_key": "record.id"})).await;
    let (b, s) = (bucket.as_str(), secret.as_str());
    let row = json!({"id": 700, "title": "gone"});
    let r = post_row(&app, b, s, db_event("INSERT", row.clone(), Value::Null)).await;
    assert_eq!(r["status"], "created", "{r}");
    let oid = r["object_id"].clone();
    let r = post_row(&app, b, s, db_event("DELETE", Value::Null, row.clone())).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("deleted"), &json!([oid])), "{r}");
    let late_update = db_event("UPDATE", json!({"id": 700, "title": "back?"}), row.clone());
    let r = post_row(&app, b, s, late_update.clone()).await;
    assert_eq!(r, json!({"handled": true, "status": "duplicate", "object_id": oid}), "{r}");
    // Even when its record is one the mapping would refuse (a title that is not a string):
    // a duplicate is answered before the record is mapped.
    let odd = db_event("UPDATE", json!({"id": 700, "title": 5}), row.clone());
    let r = post_row(&app, b, s, odd).await;
    assert_eq!(r, json!({"handled": true, "status": "duplicate", "object_id": oid}), "{r}");
    // What a re-sent INSERT of the deleted row answers (README): the same.
    let r = post_row(&app, b, s, db_event("INSERT", row.clone(), Value::Null)).await;
    assert_eq!(r, json!({"handled": true, "status": "duplicate", "object_id": oid}), "{r}");
    assert!(objects(&app, b).await.is_empty(), "the deleted row stays deleted");
    // A row the adapter never saw is still upserted by its UPDATE.
    let r = post_row(&app, b, s, db_event("UPDATE", json!({"id": 701, "title": "new"}), json!({"id": 701}))).await;
    assert_eq!(r["status"], "created", "{r}");

    // Without a dedup key: the late UPDATE creates the object again (documented upsert).
    let (bucket, secret) = supabase_rows(&app, "deleted-rows-nokey", json!({})).await;
    let (b, s) = (bucket.as_str(), secret.as_str());
    post_row(&app, b, s, db_event("INSERT", row.clone(), Value::Null)).await;
    post_row(&app, b, s, db_event("DELETE", Value::Null, row)).await;
    let r = post_row(&app, b, s, late_update).await;
    assert_eq!(r["status"], "created", "{r}");
    assert_eq!(objects(&app, b).await.len(), 1);
}

/// PATCHes a Mux connection to the fake's valid token and `SIGNING_SECRET`.
async fn fix_mux_connection(app: &TestApp, conn: &str) -> (u16, Value) {
    app.patch(
        &format!("/v1/organizations/connections/{conn}"),
        json!({"provider_config": {"access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET,
            "webhook_signing_secret": SIGNING_SECRET}}),
    )
    .await
}

/// The status endpoint's record of the bucket's last refused ingest.
async fn last_refused(app: &TestApp, bucket: &str) -> Value {
    let (s, st) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    assert_eq!(s, 200, "{st}");
    assert!(st["last_error"].is_null(), "a refused ingest replaced the stored last_error: {st}");
    st["last_refused_ingest"].clone()
}

/// A Mux adapter without API credentials is accepted, with a warning that says what it
/// costs: a `video.asset.ready` without playback IDs (seed 003's example) makes an object
/// without its video, since there is no token to fetch the asset with.
#[tokio::test]
async fn a_mux_adapter_without_api_credentials_is_warned_about() {
    let app = TestApp::start().await;
    let bucket = app.create_bucket("no-token", video_schema()).await;
    let adapter = json!({"source_adapter": {"adapter_type": "mux", "batching": {"mode": "immediate"}}});
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), adapter).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["warnings"].to_string().contains("no Mux API credentials"), "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let (s, r) = app.post_raw(&ingest, ready_event("NoToKeN01", false), &[("X-Webhook-Secret", &secret)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let (_, o) = app.get(&format!("/v1/buckets/{bucket}/objects/{}", r["object_id"].as_str().unwrap())).await;
    assert_eq!(o["blobs"], json!([]), "{o}");
    // With a connection that has them, no such warning.
    let (_, c) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux", "provider_type": "mux", "provider_config": {
                "access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET}}),
        )
        .await;
    let with = json!({"source_adapter": {"adapter_type": "mux", "connection_id": c["connection_id"], "batching": {"mode": "immediate"}}});
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), with).await;
    assert_eq!(s, 200, "{b}");
    assert!(!b["warnings"].to_string().contains("no Mux API credentials"), "{b}");
    // The video schema has the `video` property the playback URL goes to: no word of it.
    assert!(!b["warnings"].to_string().contains("blob_source"), "{b}");
}

/// A Mux connection may hold only signing secrets (no API token): signed ingests are checked
/// and the webhook's asset mapped, nothing is fetched, and the adapter is warned about it.
/// Inline credentials may be a signing secret alone too. Half a token, nothing at all, or a
/// secret with a line break copied with it is a 422 naming the field.
#[tokio::test]
async fn a_mux_connection_may_only_check_signatures() {
    let fake = FakeMux::start().await;
    let extra_toml = format!("[mux]\napi_base = \"http://{}\"\n", fake.addr);
    let app = TestApp::start_with(Options { extra_toml, ..Default::default() }).await;
    let create = |config: Value| {
        app.post(
            "/v1/organizations/connections",
            json!({"name": "m", "provider_type": "mux", "provider_config": config}),
        )
    };
    for (config, field) in [
        (json!({}), "provider_config"),
        (json!({"access_token_id": TOKEN_ID, "webhook_signing_secret": "s"}), "provider_config.access_token_secret"),
        (json!({"access_token_secret": TOKEN_SECRET}), "provider_config.access_token_id"),
        (json!({"webhook_signing_secret": "whsec\n"}), "provider_config.webhook_signing_secret"),
        (json!({"webhook_signing_secret": ["a", "b\r\n"]}), "provider_config.webhook_signing_secret.1"),
        (json!({"access_token_id": TOKEN_ID, "access_token_secret": "s\n"}), "provider_config.access_token_secret"),
    ] {
        let (s, b) = create(config.clone()).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{config}: {b}");
    }
    let (s, c) = create(json!({"webhook_signing_secret": SIGNING_SECRET})).await;
    assert_eq!((s, &c["webhook_signing_secret"]), (201, &json!("(set; never shown)")), "{c}");
    let bucket = app.create_bucket("sig-only", video_schema()).await;
    let adapter = |conn: Value| {
        let mut a = json!({"adapter_type": "mux", "batching": {"mode": "immediate"}});
        a.as_object_mut().unwrap().extend(conn.as_object().unwrap().clone());
        json!({ "source_adapter": a })
    };
    let (s, b) =
        app.patch(&format!("/v1/buckets/{bucket}"), adapter(json!({"connection_id": c["connection_id"]}))).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["warnings"].to_string().contains("no Mux API credentials"), "{b}");
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let signed = |body: String| {
        let header = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
        let (app, ingest) = (&app, ingest.clone());
        async move { app.post_raw(&ingest, body, &[("Mux-Signature", header.as_str())]).await }
    };
    let (s, r) = signed(ready_event("SiGoNlY01", true)).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let (_, o) = app.get(&format!("/v1/buckets/{bucket}/objects/{}", r["object_id"].as_str().unwrap())).await;
    assert_eq!(o["blobs"][0]["url"], "https://stream.mux.com/PBSiGoNlY01.m3u8", "{o}");
    let (s, r) = signed(ready_event("SiGoNlY02", false)).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    assert!(fake.calls().is_empty(), "no token, nothing fetched: {:?}", fake.calls());
    let (s, r) = app.post_raw(&ingest, ready_event("SiGoNlY03", true), &[("Mux-Signature", "t=1,v1=00")]).await;
    assert_eq!(s, 401, "{r}");

    // Inline credentials: a signing secret alone.
    let inline = adapter(json!({"connection": {"credentials": {"webhook_signing_secret": SIGNING_SECRET}}}));
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), inline).await;
    assert_eq!(s, 200, "{b}");
    let (s, r) = signed(ready_event("SiGoNlY04", true)).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let half =
        adapter(json!({"connection": {"credentials": {"access_token_id": TOKEN_ID, "webhook_signing_secret": "x"}}}));
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), half).await;
    let field = "source_adapter.connection.credentials.access_token_secret";
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{b}");
}

/// A Mux adapter left to its default blob (the playback URL, into a `video` property) in a
/// bucket without that property makes every object without it: the PATCH answer says so.
#[tokio::test]
async fn a_mux_adapter_whose_playback_url_goes_nowhere_is_warned_about() {
    let app = TestApp::start().await;
    let (_, c) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux", "provider_type": "mux", "provider_config": {
                "access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET}}),
        )
        .await;
    let adapter = json!({"source_adapter": {"adapter_type": "mux", "connection_id": c["connection_id"],
        "batching": {"mode": "immediate"}}});
    for (name, schema) in [
        ("no-video", json!({"duration": {"type": "float"}})),
        ("string-video", json!({"video": {"type": "string"}})),
        ("clip-video", json!({"clip": {"type": "video"}})),
    ] {
        let bucket = app.create_bucket(name, schema.clone()).await;
        let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), adapter.clone()).await;
        assert_eq!(s, 200, "{b}");
        let warnings = b["warnings"].to_string();
        assert!(warnings.contains("source_adapter.blob_source") && warnings.contains("playback_url"), "{schema}: {b}");
        // A property of type video under another name is pointed out.
        assert_eq!(warnings.contains("target_property"), name == "clip-video", "{schema}: {b}");
        let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
        let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
        let (s, r) = app.post_raw(&ingest, ready_event("MeTaOnLy01", true), &[("X-Webhook-Secret", &secret)]).await;
        assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
        let (_, o) = app.get(&format!("/v1/buckets/{bucket}/objects/{}", r["object_id"].as_str().unwrap())).await;
        assert_eq!(o["blobs"], json!([]), "as warned: {o}");
    }
}

#[tokio::test]
async fn a_refused_mux_ingest_says_why_and_a_missing_signing_secret_is_flagged() {
    let app = TestApp::start().await;
    // No webhook_signing_secret: accepted, but the connection's view says so…
    let b = unsigned_mux_connection(&app).await;
    assert!(b["webhook_signing_secret"].is_null(), "{b}");
    let conn = b["connection_id"].as_str().unwrap().to_string();
    let (_, view) = app.get(&format!("/v1/organizations/connections/{conn}")).await;
    assert!(
        view.as_object().unwrap().contains_key("webhook_signing_secret") && view["webhook_signing_secret"].is_null()
    );
    // … and so does the answer of the adapter's PATCH.
    let bucket = app.create_bucket("unsigned", video_schema()).await;
    let adapter =
        json!({"source_adapter": {"adapter_type": "mux", "connection_id": conn, "batching": {"mode": "immediate"}}});
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), adapter.clone()).await;
    assert_eq!(s, 200, "{b}");
    let warnings = b["warnings"].to_string();
    assert!(warnings.contains("no webhook_signing_secret") && warnings.contains(&format!("connections/{conn}")), "{b}");
    let webhook_secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    assert!(last_refused(&app, &bucket).await.is_null());

    // A signed ingest: 401 saying the connection has no signing secret; the status (admin
    // only) says which connection and how to set one, the anonymous answer does not.
    let body = ready_event("AsSeTrEaSoN01", true);
    let signed = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) = app.post_raw(&ingest, body.clone(), &[("Mux-Signature", &signed)]).await;
    assert_eq!(s, 401, "{r}");
    let answered = r["error"]["message"].as_str().unwrap();
    assert!(answered.contains("Mux connection has no webhook_signing_secret"), "{answered}");
    assert!(!answered.contains(conn.as_str()) && !answered.contains("/v1/organizations"), "{answered}");
    let refused = last_refused(&app, &bucket).await;
    assert_eq!(
        (refused["reason"].as_str(), refused["count_since_start"].as_u64()),
        (Some("no_signing_secret"), Some(1))
    );
    let m = refused["message"].as_str().unwrap();
    assert!(m.contains(&format!("connection {conn} has no webhook_signing_secret")), "{m}");
    assert!(m.contains(&format!("PATCH /v1/organizations/connections/{conn}")) && !m.ends_with('…'), "{m}");
    // X-Webhook-Secret still authenticates.
    let (s, r) = app.post_raw(&ingest, body.clone(), &[("X-Webhook-Secret", &webhook_secret)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");

    // With a signing secret set, the connection says so (never showing it), the PATCH warns no more…
    let (s, b) = fix_mux_connection(&app, &conn).await;
    assert_eq!((s, b["webhook_signing_secret"].as_str()), (200, Some("(set; never shown)")), "{b}");
    assert!(!b.to_string().contains(SIGNING_SECRET));
    let (_, list) = app.get("/v1/organizations/connections").await;
    assert!(!list.to_string().contains(SIGNING_SECRET) && list.to_string().contains("(set; never shown)"), "{list}");
    let (s, b) = app.patch(&format!("/v1/buckets/{bucket}"), adapter).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("warnings").is_none(), "{b}");

    // … and each refusal says why, never showing a secret or the signature that was expected.
    let t = now();
    let tampered = body.replace("AsSeTrEaSoN01", "AsSeTrEaSoN02");
    let expected_v1 =
        |t: i64, b: &str| mux::sign(SIGNING_SECRET, t, b.as_bytes()).split_once(",v1=").unwrap().1.to_string();
    // (case, body, headers, what the 401 says, the status's reason)
    type Case<'a> = (&'a str, String, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("nothing", body.clone(), vec![], "no webhook signature", "no_signature"),
        (
            "stale",
            body.clone(),
            vec![("Mux-Signature", mux::sign(SIGNING_SECRET, t - 301, body.as_bytes()))],
            "s old",
            "stale_timestamp",
        ),
        (
            "future",
            body.clone(),
            // Not t + 301: the daemon's clock may read a second past `t` by then, and 300 s
            // ahead is within the tolerance.
            vec![("Mux-Signature", mux::sign(SIGNING_SECRET, t + 360, body.as_bytes()))],
            "in the future",
            "future_timestamp",
        ),
        (
            "malformed",
            body.clone(),
            vec![("Mux-Signature", "t=abc,v1=00".into())],
            "malformed Mux-Signature",
            "malformed_signature",
        ),
        (
            "wrong secret",
            body.clone(),
            vec![("Mux-Signature", mux::sign("not-the-secret", t, body.as_bytes()))],
            "does not match the body",
            "signature_mismatch",
        ),
        (
            "tampered",
            tampered.clone(),
            vec![("Mux-Signature", signed.clone())],
            "does not match the body",
            "signature_mismatch",
        ),
        (
            "wrong X-Webhook-Secret",
            body.clone(),
            vec![("X-Webhook-Secret", "nope".into())],
            "X-Webhook-Secret does not match",
            "wrong_webhook_secret",
        ),
    ];
    for (i, (case, b, headers, says, reason)) in cases.into_iter().enumerate() {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (s, r) = app.post_raw(&ingest, b.clone(), &h).await;
        assert_eq!(s, 401, "{case}: {r}");
        let m = r["error"]["message"].as_str().unwrap();
        assert!(m.contains(says) && !m.ends_with('…'), "{case}: {m}");
        let v1s = [expected_v1(t, &b), expected_v1(t - 301, &b), expected_v1(t + 360, &b)];
        for leak in [SIGNING_SECRET, webhook_secret.as_str(), &v1s[0], &v1s[1], &v1s[2]] {
            assert!(!m.contains(leak), "{case}: {m}");
        }
        let refused = last_refused(&app, &bucket).await;
        assert_eq!(refused["reason"], reason, "{case}: {refused}");
        assert_eq!(refused["count_since_start"].as_u64(), Some(i as u64 + 2), "{case}: {refused}");
    }
    // Nothing was stored for them: one object (the X-Webhook-Secret ingest), no failures.
    assert_eq!(objects(&app, &bucket).await.len(), 1);
    let (_, st) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    assert_eq!(st["events_failed_24h"], 0, "{st}");
    // The log has the reasons (rate-limited), never the secrets.
    let log = app.log();
    assert!(log.contains("ingest refused") && log.contains("signature_mismatch"), "{log}");
    assert!(!log.contains(SIGNING_SECRET) && !log.contains(&webhook_secret));

    // An empty list of signing secrets is refused, as "" is, naming the field.
    let (s, r) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux-empty", "provider_type": "mux", "provider_config": {
                "access_token_id": TOKEN_ID, "access_token_secret": TOKEN_SECRET, "webhook_signing_secret": []}}),
        )
        .await;
    assert_eq!((s, r["error"]["field"].as_str()), (422, Some("provider_config.webhook_signing_secret")), "{r}");
}

#[tokio::test]
async fn a_mux_token_refused_by_mux_is_blamed_on_the_connection_not_the_payload() {
    let fake = FakeMux::start().await;
    let app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let (s, b) = app
        .post(
            "/v1/organizations/connections",
            json!({"name": "mux-revoked", "provider_type": "mux", "provider_config": {
                "access_token_id": TOKEN_ID, "access_token_secret": "revoked-token-secret",
                "webhook_signing_secret": SIGNING_SECRET}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let conn = b["connection_id"].as_str().unwrap().to_string();
    let (bucket, _) = mux_bucket(&app, "revoked", &conn).await;
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    // No playback ids: the asset is fetched, and Mux answers 401 to the token.
    let body = ready_event("AsSeTtOkEn01", false);
    let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) = app.post_raw(&ingest, body.clone(), &[("Mux-Signature", &h)]).await;
    assert_eq!(s, 422, "{r}");
    assert_eq!(r["error"]["field"], "source_adapter.connection_id", "{r}");
    let m = r["error"]["message"].as_str().unwrap();
    assert!(m.contains(&format!("connection {conn}")) && m.contains("refused its access token (HTTP 401)"), "{m}");
    assert!(m.contains(&format!("PATCH /v1/organizations/connections/{conn}")) && !m.ends_with('…'), "{m}");
    assert!(!m.starts_with("payload") && !m.contains("revoked-token-secret"), "{m}");
    assert_eq!(fake.calls().len(), 1);
    let (_, st) = app.get(&format!("/v1/buckets/{bucket}/source-adapter/status")).await;
    assert!(m.ends_with(st["last_error"].as_str().unwrap()), "{st}");
    assert_eq!(st["events_failed_24h"], 1, "{st}");

    // Fixed connection: Mux's retry of the same event goes through.
    let (s, b) = fix_mux_connection(&app, &conn).await;
    assert_eq!(s, 200, "{b}");
    let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) = app.post_raw(&ingest, body, &[("Mux-Signature", &h)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");

    // A lifecycle update that needs a fetch, while Mux refuses the token again: a 422 as
    // on ingest, not a 200 that would lose the change (Mux retries only a non-2xx).
    let (s, b) = app
        .patch(
            &format!("/v1/organizations/connections/{conn}"),
            json!({"provider_config": {"access_token_id": TOKEN_ID, "access_token_secret": "revoked-again",
                "webhook_signing_secret": SIGNING_SECRET}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let updated = json!({"type": "video.asset.updated", "data": {"id": "AsSeTtOkEn01", "status": "ready"}});
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &updated).await;
    assert_eq!((s, r["error"]["field"].as_str()), (422, Some("source_adapter.connection_id")), "{r}");
    let m = r["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains(&format!("bucket {bucket}")) && m.contains("refused its access token (HTTP 401)"), "{m}");
    // So is an asset Mux does not know (a token of another environment, usually).
    let (s, _) = fix_mux_connection(&app, &conn).await;
    assert_eq!(s, 200);
    let body = ready_event("gone", true);
    let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
    let (s, r) = app.post_raw(&ingest, body, &[("Mux-Signature", &h)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "{r}");
    let unknown = json!({"type": "video.asset.updated", "data": {"id": "gone", "status": "ready"}});
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &unknown).await;
    assert_eq!(s, 422, "{r}");
    assert!(r["error"]["message"].as_str().is_some_and(|m| m.contains("\"gone\" not found")), "{r}");
    // Fixed: Mux's retry of the update goes through.
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &updated).await;
    assert_eq!((s, r["action"].as_str()), (200, Some("updated")), "{r}");
    assert_eq!(r["objects"].as_array().map(Vec::len), Some(1), "{r}");
}

#[tokio::test]
async fn a_mux_adapter_view_shows_the_effective_filter_and_dedup_key() {
    let app = TestApp::start().await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let bucket = app.create_bucket("effective", video_schema()).await;
    let path = format!("/v1/buckets/{bucket}");
    let (s, b) = app
        .patch(&path, json!({"source_adapter": {"adapter_type": "mux", "connection_id": conn, "batching": {"mode": "immediate"}}}))
        .await;
    assert_eq!(s, 200, "{b}");
    let defaults = json!({"event_filter": {"event_types": ["video.asset.ready"]}, "dedup_key": "data.id",
        "defaults": ["event_filter", "dedup_key"]});
    assert_eq!(b["source_adapter"]["effective"], defaults, "{b}");
    let (_, got) = app.get(&path).await;
    assert_eq!(got["source_adapter"]["effective"], defaults, "{got}");
    assert!(got["source_adapter"].get("event_filter").is_none(), "{got}");

    // The GET view sent back unchanged keeps the defaults as defaults.
    let (s, b) = app.patch(&path, json!({"source_adapter": got["source_adapter"].clone()})).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["source_adapter"]["effective"], defaults, "{b}");
    assert!(b["source_adapter"].get("event_filter").is_none() && b["source_adapter"].get("dedup_key").is_none(), "{b}");

    // Set ones are shown as set, and they are what is applied.
    let (s, b) = app
        .patch(
            &path,
            json!({"source_adapter": {"adapter_type": "mux", "connection_id": conn, "batching": {"mode": "immediate"},
                "event_filter": {"event_types": ["video.asset.created"]}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        b["source_adapter"]["effective"],
        json!({"event_filter": {"event_types": ["video.asset.created"]}, "dedup_key": "data.id", "defaults": ["dedup_key"]})
    );
    let ready = ready_event("AsSeTeFfEcT01", true);
    let h = mux::sign(SIGNING_SECRET, now(), ready.as_bytes());
    let (s, r) = app.post_raw(&format!("{path}/source-adapter/ingest"), ready, &[("Mux-Signature", &h)]).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("ignored")), "{r}");
}

/// A Supabase row key and a Mux asset ID refused say what the payload had there, as a
/// generic dedup value does (newcomer black-box review).
#[tokio::test]
async fn a_row_key_or_asset_id_refused_says_what_the_payload_had() {
    let app = TestApp::start().await;
    let (bucket, secret) = supabase_rows(&app, "rows-said", json!({})).await;
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let headers = [("X-Webhook-Secret", secret.as_str()), ("Content-Type", "application/json")];
    for (id, said) in [
        (None, "the row's \"id\" (id_column) is missing"),
        (Some(Value::Null), "the row's \"id\" (id_column) is null"),
        (Some(json!(" ")), "the row's \"id\" (id_column) is a blank string"),
        (Some(json!({"a": 1})), "the row's \"id\" (id_column) is an object"),
        (Some(json!(["7"])), "the row's \"id\" (id_column) is an array"),
        (Some(json!(false)), "the row's \"id\" (id_column) is a boolean (false)"),
    ] {
        let mut record = json!({"title": "t"});
        if let Some(id) = id.clone() {
            record["id"] = id;
        }
        let (s, r) = app.post_raw(&ingest, db_event("INSERT", record, Value::Null).to_string(), &headers).await;
        assert_eq!(s, 422, "{id:?}: {r}");
        let message = r["error"]["message"].as_str().unwrap_or_default().trim_start_matches("payload: ");
        assert!(message.starts_with(said) && message.contains("a string (not blank) or a number"), "{message}");
    }
    // A NUL no Postgres text holds: a forged row, whose writeback could only ever fail.
    let record = json!({"id": "row\u{0}7", "title": "t"});
    let (s, r) = app.post_raw(&ingest, db_event("INSERT", record, Value::Null).to_string(), &headers).await;
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(s == 422 && message.contains("\"id\" (id_column) holds a NUL character"), "{r}");
    assert!(objects(&app, &bucket).await.is_empty());

    let bucket = app.create_bucket("assets-said", video_schema()).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "mux", "batching": {"mode": "immediate"},
                "field_mapping": {"duration": "duration"}}}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let secret = b["source_adapter"]["webhook_secret"].as_str().unwrap().to_string();
    let ingest = format!("/v1/buckets/{bucket}/source-adapter/ingest");
    let headers = [("X-Webhook-Secret", secret.as_str()), ("Content-Type", "application/json")];
    for (data, said) in [
        (json!({"status": "ready"}), "data.id is missing"),
        (json!({"id": null}), "data.id is null"),
        (json!({"id": ""}), "data.id is an empty string"),
        (json!({"id": 7}), "data.id is a number"),
    ] {
        let event = json!({"type": "video.asset.ready", "data": data});
        let (s, r) = app.post_raw(&ingest, event.to_string(), &headers).await;
        assert_eq!(s, 422, "{data}: {r}");
        let message = r["error"]["message"].as_str().unwrap_or_default().trim_start_matches("payload: ");
        assert!(message.starts_with(&format!("the event names no Mux asset: {said}")), "{data}: {message}");
    }
}

/// A credential that goes into an HTTP header (a Supabase service_role_key in `apikey` and
/// `Authorization`, a Mux token in basic auth) must be ASCII: the README's placeholder `…`
/// was taken, and sent as raw bytes in those headers (newcomer black-box review).
#[tokio::test]
async fn a_header_credential_that_is_not_ascii_is_refused() {
    let app = TestApp::start().await;
    let cases = [
        (
            json!({"provider_type": "supabase", "provider_config": {"url": "https://abcd.supabase.co", "service_role_key": "…"}}),
            "provider_config.service_role_key",
        ),
        (
            json!({"provider_type": "supabase", "provider_config": {"url": "https://abcd.supabase.co", "service_role_key": "eyJhbGciOi\u{00e9}"}}),
            "provider_config.service_role_key",
        ),
        (
            json!({"provider_type": "mux", "provider_config": {"access_token_id": "tok\u{00e9}n", "access_token_secret": "s"}}),
            "provider_config.access_token_id",
        ),
        (
            json!({"provider_type": "mux", "provider_config": {"access_token_id": "t", "access_token_secret": "…"}}),
            "provider_config.access_token_secret",
        ),
    ];
    for (mut body, field) in cases {
        body["name"] = json!("creds");
        let (s, b) = app.post("/v1/organizations/connections", body.clone()).await;
        assert_eq!((s, b["error"]["field"].as_str()), (422, Some(field)), "{body}: {b}");
        let message = b["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("ASCII") && !message.contains('…'), "{message}");
    }
    // Inline credentials too.
    let bucket = app.create_bucket("inline-creds", json!({"title": {"type": "string"}})).await;
    let (s, b) = app
        .patch(
            &format!("/v1/buckets/{bucket}"),
            json!({"source_adapter": {"adapter_type": "supabase", "table": "listings",
                "field_mapping": {"record.title": "title"},
                "connection": {"credentials": {"url": "https://abcd.supabase.co", "service_role_key": "…"}}}}),
        )
        .await;
    assert_eq!(
        (s, b["error"]["field"].as_str()),
        (422, Some("source_adapter.connection.credentials.service_role_key")),
        "{b}"
    );
    assert_eq!(app.get("/v1/organizations/connections").await.1["results"], json!([]), "nothing saved");
}

/// A Mux tombstone (a lifecycle delete of an asset the bucket has no object of) is
/// kept with its set across a change of dedup path, and counts again once the path is set
/// back, across kill -9.
#[tokio::test]
async fn a_mux_tombstone_follows_its_dedup_set_across_a_switch_and_back() {
    let fake = FakeMux::start().await;
    let mut app = TestApp::start_with(Options { extra_toml: fake.toml(), ..Default::default() }).await;
    let conn = mux_connection(&app, SIGNING_SECRET).await;
    let (bucket, _) = mux_bucket(&app, "tomb", &conn).await;
    let asset = "AsSeTtOmBsToNe01";
    let deleted = json!({"type": "video.asset.deleted", "object": {"type": "asset", "id": asset},
        "data": {"id": asset, "status": "ready"}});
    let (s, r) = lifecycle(&app, &conn, SIGNING_SECRET, &deleted).await;
    assert_eq!(s, 200, "{r}");
    let path = format!("/v1/buckets/{bucket}");
    let adapter = |key: &str| {
        json!({"source_adapter": {
            "adapter_type": "mux", "connection_id": conn,
            "event_filter": {"event_types": ["video.asset.ready"]},
            "field_mapping": {"duration": "duration", "resolution_tier": "resolution",
                "thumbnail_url": "thumbnail_url", "data.meta.title": "title", "passthrough": "external"},
            "blob_source": {"file_field": "playback_url", "blob_type": "video", "target_property": "video"},
            "batching": {"mode": "immediate"}, "dedup_key": key}})
    };
    async fn ready(app: &TestApp, bucket: &str, asset: &str) -> (u16, Value) {
        let body = ready_event(asset, true);
        let h = mux::sign(SIGNING_SECRET, now(), body.as_bytes());
        app.post_raw(&format!("/v1/buckets/{bucket}/source-adapter/ingest"), body, &[("Mux-Signature", &h)]).await
    }
    let (s, r) = ready(&app, &bucket, asset).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("duplicate")), "the tombstone, in force: {r}");
    let (s, r) = app.patch(&path, adapter("data.passthrough")).await;
    assert!(s == 200 && r["warnings"].to_string().contains("started afresh"), "{r}");
    app.crash_restart().await;
    let (s, r) = ready(&app, &bucket, asset).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("created")), "another set: {r}");
    let (s, r) = app.patch(&path, adapter("data.id")).await;
    assert!(s == 200 && r["warnings"].to_string().contains("back in force"), "{r}");
    app.crash_restart().await;
    let (s, r) = ready(&app, &bucket, asset).await;
    assert_eq!((s, r["status"].as_str()), (200, Some("duplicate")), "the tombstone, back in force: {r}");
}
