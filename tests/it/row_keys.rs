//! Supabase row keys: an UPDATE that upserts or re-keys a row, and the key an upsert and an
//! INSERT share (dedup values holding a lone surrogate half included).

use std::time::Duration;

use serde_json::{json, Value};

use crate::inbound::bucket_with_adapter;
use crate::support::TestApp;

fn db_event(op: &str, record: Value, old_record: Value) -> Value {
    json!({"type": op, "table": "listings", "schema": "public", "record": record, "old_record": old_record})
}

async fn objects(app: &TestApp, bucket: &str) -> Vec<Value> {
    let (s, b) = app.get(&format!("/v1/buckets/{bucket}/objects?limit=1000")).await;
    assert_eq!(s, 200, "{b}");
    b["results"].as_array().unwrap().clone()
}

async fn post_raw_row(app: &TestApp, bucket: &str, secret: &str, raw: &str) -> Value {
    let (s, r) = app
        .post_raw(
            &format!("/v1/buckets/{bucket}/source-adapter/ingest"),
            raw.to_string(),
            &[("X-Webhook-Secret", secret), ("Content-Type", "application/json")],
        )
        .await;
    assert_eq!(s, 200, "{raw} → {r}");
    r
}

async fn post_row(app: &TestApp, bucket: &str, secret: &str, v: Value) -> Value {
    post_raw_row(app, bucket, secret, &v.to_string()).await
}

fn supabase(extra: Value) -> Value {
    let mut a = json!({"adapter_type": "supabase",
        "event_filter": {"event_types": ["INSERT", "UPDATE", "DELETE"]},
        "field_mapping": {"record.title": "title"}, "batching": {"mode": "immediate"}});
    for (k, v) in extra.as_object().unwrap() {
        a[k] = v.clone();
    }
    a
}

/// With dedup_key on the row's ID, an UPDATE after the row's DELETE is a duplicate (README),
/// also for an ID the lenient parser keys apart (a lone surrogate half): the UPDATE is keyed
/// as the INSERT was.
#[tokio::test]
async fn late_update_of_a_deleted_row_with_a_lone_half_in_its_key_is_a_duplicate() {
    let app = TestApp::start().await;
    let adapter = supabase(json!({"dedup_key": "record.id"}));
    let (b, s) = bucket_with_adapter(&app, "s11", json!({"title": {"type": "string"}}), adapter).await;
    let row = r#"{"id": "r\ud83d", "title": "a"}"#;
    let ev = |op: &str, record: &str, old: &str| {
        format!(
            r#"{{"type": "{op}", "table": "listings", "schema": "public", "record": {record}, "old_record": {old}}}"#
        )
    };
    let r = post_raw_row(&app, &b, &s, &ev("INSERT", row, "null")).await;
    assert_eq!(r["status"], "created", "{r}");
    let oid = r["object_id"].clone();
    let r = post_raw_row(&app, &b, &s, &ev("DELETE", "null", row)).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("deleted"), &json!([oid])), "{r}");
    // The README: "an UPDATE arriving after the row's DELETE (a late retry) answers duplicate
    // with the deleted object's ID ... and the row stays deleted".
    let r = post_raw_row(&app, &b, &s, &ev("UPDATE", row, row)).await;
    assert_eq!((&r["status"], &r["object_id"]), (&json!("duplicate"), &oid), "{r}");
    assert!(objects(&app, &b).await.is_empty(), "the deleted row stays deleted");
}

/// The other way round: an UPDATE that upserts the row first (its INSERT overtaken), then
/// the INSERT: a duplicate, not a second object (README).
#[tokio::test]
async fn insert_overtaken_by_its_upsert_with_a_lone_half_in_its_key_is_a_duplicate() {
    let app = TestApp::start().await;
    let adapter = supabase(json!({"dedup_key": "record.id"}));
    let (b, s) = bucket_with_adapter(&app, "s11b", json!({"title": {"type": "string"}}), adapter).await;
    let row = r#"{"id": "r\ud83d", "title": "a"}"#;
    let ev = |op: &str, record: &str, old: &str| {
        format!(
            r#"{{"type": "{op}", "table": "listings", "schema": "public", "record": {record}, "old_record": {old}}}"#
        )
    };
    let r = post_raw_row(&app, &b, &s, &ev("UPDATE", row, row)).await;
    assert_eq!(r["status"], "created", "{r}");
    let oid = r["object_id"].clone();
    let r = post_raw_row(&app, &b, &s, &ev("INSERT", row, "null")).await;
    assert_eq!((&r["status"], &r["object_id"]), (&json!("duplicate"), &oid), "{r}");
    assert_eq!(objects(&app, &b).await.len(), 1);
}

/// PostgREST (answering `status`) and a bucket `name` whose Supabase adapter, on its
/// connection, writes an alert's `verdict` back to the row: PostgREST, the bucket, its secret.
async fn rows_written_back_on_alert(
    app: &TestApp,
    status: u16,
    name: &str,
) -> (crate::writeback::Upstream, String, String) {
    let pg = crate::writeback::Upstream::start(status).await;
    let conn = crate::writeback::supabase_connection(app, &pg.url(""), &format!("srk-{name}")).await;
    let adapter = supabase(json!({"connection_id": conn["connection_id"], "table": "listings",
        "event_filter": {"event_types": ["INSERT", "UPDATE"]},
        "writeback": {"trigger": "on_alert", "field_mapping": [{"source_path": "verdict", "target_field": "mp_verdict"}]}}));
    let (b, s) = bucket_with_adapter(app, name, json!({"title": {"type": "string"}}), adapter).await;
    (pg, b, s)
}

/// A key change onto a key another row's object still has (that row deleted unseen, its
/// DELETE filtered out): that object is no longer found by the key and loses its external
/// ID, so its writeback does not land on the re-keyed row (an alert on it would otherwise
/// PATCH, with the service-role key, the row that now has that key).
#[tokio::test]
async fn an_orphaned_objects_writeback_does_not_land_on_the_rekeyed_row() {
    let app = TestApp::start().await;
    let (pg, b, s) = rows_written_back_on_alert(&app, 204, "orphan").await;
    let one = post_row(&app, &b, &s, db_event("INSERT", json!({"id": 1, "title": "row one"}), Value::Null)).await;
    let two = post_row(&app, &b, &s, db_event("INSERT", json!({"id": 2, "title": "row two"}), Value::Null)).await;
    let (one, two) = (one["object_id"].as_str().unwrap().to_string(), two["object_id"].as_str().unwrap().to_string());
    // Row 2 is deleted (its DELETE filtered out), then row 1 takes the key 2.
    let r = post_row(&app, &b, &s, db_event("DELETE", Value::Null, json!({"id": 2}))).await;
    assert_eq!(r["status"], "ignored", "{r}");
    let r = post_row(&app, &b, &s, db_event("UPDATE", json!({"id": 2, "title": "row one"}), json!({"id": 1}))).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("updated"), &json!([one])), "{r}");
    // An alert on the deleted row's object (its content kept, found by no key any more).
    let (st, a) = app
        .post(
            &format!("/v1/buckets/{b}/objects/{two}/alerts"),
            json!({"alert_id": "a2", "results": {"verdict": "row two's"}}),
        )
        .await;
    assert!(st == 202 || st == 200, "{st} {a}");
    // Not queued: its object names no row now, and the answer says why.
    assert!(a.to_string().contains("no source external id"), "{a}");
    let (_, other) = app.get(&format!("/v1/buckets/{b}/objects/{two}")).await;
    assert_eq!(
        (&other["source"]["external_id"], &other["metadata"]["title"]),
        (&Value::Null, &json!("row two")),
        "{other}"
    );
    let (_, rekeyed) = app.get(&format!("/v1/buckets/{b}/objects/{one}")).await;
    assert_eq!(rekeyed["source"]["external_id"], "2", "{rekeyed}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let landed: Vec<_> = pg.seen().into_iter().filter(|x| x.method == "PATCH").map(|x| (x.query, x.body)).collect();
    assert!(
        !landed.iter().any(|(q, _)| q == "id=eq.2"),
        "row two's result was written onto the row that now has key 2 (row one): {landed:?}"
    );
}

/// A writeback of such an object queued before its key was taken (PostgREST failing then)
/// is not sent to the row that has the key now: its next attempt finds the object without
/// a row, and it is given up, saying why.
#[tokio::test]
async fn a_pending_writeback_of_an_object_whose_key_was_taken_is_not_sent() {
    let app = TestApp::start().await;
    let (pg, b, s) = rows_written_back_on_alert(&app, 500, "pending-orphan").await;
    post_row(&app, &b, &s, db_event("INSERT", json!({"id": 1, "title": "row one"}), Value::Null)).await;
    let two = post_row(&app, &b, &s, db_event("INSERT", json!({"id": 2, "title": "row two"}), Value::Null)).await;
    let two = two["object_id"].as_str().unwrap().to_string();
    let (st, a) = app
        .post(&format!("/v1/buckets/{b}/objects/{two}/alerts"), json!({"alert_id": "a2", "results": {"verdict": "v"}}))
        .await;
    assert!(st == 202 || st == 200, "{st} {a}");
    let patched = || async { pg.seen().iter().any(|x| x.method == "PATCH" && x.query == "id=eq.2") };
    assert!(crate::support::eventually(Duration::from_secs(20), patched).await, "the first attempt (500)");
    // Row 2 deleted unseen; row 1 takes its key; PostgREST is back.
    let r = post_row(&app, &b, &s, db_event("UPDATE", json!({"id": 2, "title": "row one"}), json!({"id": 1}))).await;
    assert_eq!(r["status"], "updated", "{r}");
    pg.set_default(204);
    let path = format!("/v1/buckets/{b}/source-adapter/writebacks");
    let (_, pending) = app.get(&format!("{path}?status=pending")).await;
    let id = pending["results"][0]["writeback_id"].as_str().expect("the pending job").to_string();
    assert_eq!(pending["results"][0]["external_id"], Value::Null, "the row it would write now: none {pending}");
    let (st, r) = app.post(&format!("{path}/{id}/retry"), json!({})).await;
    assert!(st == 202 || st == 200, "{st} {r}");
    let given_up = || async {
        let (_, dead) = app.get(&format!("{path}?status=dead")).await;
        dead["results"][0]["last_error"].as_str().is_some_and(|e| e.contains("no source external id"))
    };
    assert!(crate::support::eventually(Duration::from_secs(20), given_up).await, "{}", app.get(&path).await.1);
    assert!(pg.succeeded().iter().all(|x| x.query != "id=eq.2"), "written onto the re-keyed row: {:?}", pg.seen());
}

/// The same with both rows' objects still in a time window's buffer (and a restart before
/// the flush): the taken key's entry is flushed without an external ID, the re-keyed row's
/// with its new one.
#[tokio::test]
async fn a_buffered_object_whose_key_was_taken_is_flushed_without_it() {
    let mut app = TestApp::start().await;
    let adapter = supabase(json!({"batching": {"mode": "time_window", "window_seconds": 300}}));
    let (b, s) = bucket_with_adapter(&app, "buffered-orphan", json!({"title": {"type": "string"}}), adapter).await;
    let one = post_row(&app, &b, &s, db_event("INSERT", json!({"id": 1, "title": "row one"}), Value::Null)).await;
    let two = post_row(&app, &b, &s, db_event("INSERT", json!({"id": 2, "title": "row two"}), Value::Null)).await;
    let (one, two) = (one["object_id"].clone(), two["object_id"].clone());
    let r = post_row(&app, &b, &s, db_event("UPDATE", json!({"id": 2, "title": "one, now 2"}), json!({"id": 1}))).await;
    assert_eq!((&r["status"], &r["object_ids"]), (&json!("updated"), &json!([one])), "{r}");
    app.restart().await;
    let (st, f) = app.post(&format!("/v1/buckets/{b}/source-adapter/flush"), json!({})).await;
    assert_eq!(st, 200, "{f}");
    let objs = objects(&app, &b).await;
    let of = |id: &Value| objs.iter().find(|o| &o["object_id"] == id).cloned().unwrap_or_default();
    assert_eq!(
        (&of(&one)["source"]["external_id"], &of(&one)["metadata"]["title"]),
        (&json!("2"), &json!("one, now 2")),
        "{objs:?}"
    );
    assert_eq!(
        (&of(&two)["source"]["external_id"], &of(&two)["metadata"]["title"]),
        (&Value::Null, &json!("row two")),
        "{objs:?}"
    );
    let r = post_row(&app, &b, &s, db_event("UPDATE", json!({"id": 2, "title": "again"}), json!({"id": 2}))).await;
    assert_eq!(&r["object_ids"], &json!([one]), "{r}");
}
