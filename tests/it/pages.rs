//! List pages are bounded by bytes as well as by count: large items make pages of fewer than
//! `limit` items, and following `next_cursor` returns every item exactly once.

use std::collections::HashSet;

use hookline::http::PAGE_BYTES;
use serde_json::{json, Value};

use crate::inbound::{bucket_with_adapter, ingest};
use crate::support::{TestApp, API_KEY};

/// Room for a page's envelope (`{"results":[`, `],"next_cursor":"…"}`) and its commas.
const ENVELOPE: usize = 1024;

/// One page as sent: its size in bytes and its JSON.
async fn get_page(app: &TestApp, path: &str, namespace: Option<&str>) -> (usize, Value) {
    let mut rb = app.client.get(app.url(path)).bearer_auth(API_KEY);
    if let Some(ns) = namespace {
        rb = rb.header("X-Namespace", ns);
    }
    let resp = rb.send().await.expect("request");
    assert_eq!(resp.status(), 200, "GET {path}");
    let bytes = resp.bytes().await.expect("body");
    (bytes.len(), serde_json::from_slice(&bytes).expect("a JSON page"))
}

/// Every page of a `{results, next_cursor}` list from `path` (which has a `?`), following
/// `next_cursor`; checks that each page is within the budget (past it by one item at most,
/// and filled up to it unless it is the last) and returns the items' `id_field`s in order.
async fn page_through(app: &TestApp, path: &str, namespace: Option<&str>, id_field: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}&cursor={c}"),
            None => path.to_string(),
        };
        let (bytes, page) = get_page(app, &url, namespace).await;
        pages += 1;
        let results = page["results"].as_array().expect("results");
        assert!(!results.is_empty(), "every page holds at least one item");
        let last = serde_json::to_vec(results.last().unwrap()).unwrap().len();
        assert!(
            bytes - last < PAGE_BYTES + ENVELOPE,
            "a page stops once it passes the budget: {bytes} bytes, last item {last}"
        );
        ids.extend(results.iter().map(|r| r[id_field].as_str().expect("an id").to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert!(bytes >= PAGE_BYTES, "a page is cut short only by its budget: {bytes} bytes");
                assert_eq!(c, ids.last().unwrap(), "next_cursor is the last item's ID");
                cursor = Some(c.to_string());
            }
            None => return (ids, pages),
        }
        assert!(pages < 100, "the cursor makes progress");
    }
}

fn assert_each_once(got: &[String], want: &[String]) {
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "no item twice");
    assert_eq!(unique, want.iter().collect::<HashSet<_>>(), "every item");
}

#[tokio::test]
async fn object_pages_stop_at_the_byte_budget_and_the_cursor_returns_every_object() {
    let app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(
        &app,
        "large",
        json!({"raw": {"type": "json"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"data.blob": "raw"}, "batching": {"mode": "immediate"}}),
    )
    .await;
    // 30 objects of ~700 KB: 21 MB in all, so about a dozen per page.
    let item = 700_000;
    let mut want = Vec::new();
    for i in 0..30 {
        let event = json!({"type": "thing.created", "id": format!("e{i}"), "data": {"blob": {"text": "x".repeat(item), "i": i}}});
        let (s, b) = ingest(&app, &bucket, Some(&secret), &event).await;
        assert_eq!((s, b["status"].as_str()), (200, Some("created")), "{b}");
        want.push(b["object_id"].as_str().unwrap().to_string());
    }
    let (got, pages) = page_through(&app, &format!("/v1/buckets/{bucket}/objects?limit=1000"), None, "object_id").await;
    assert_each_once(&got, &want);
    assert_eq!(got, want, "in creation order");
    assert!(pages >= 3, "30 × 700 KB take at least three pages of 8 MiB, got {pages}");
    // A limit below what fits still counts: 5 per page.
    let (got, pages) = page_through_by_count(&app, &format!("/v1/buckets/{bucket}/objects?limit=5")).await;
    assert_eq!((got, pages), (want, 6));
}

/// Pages of `limit` items (each well under the budget), following `next_cursor`.
async fn page_through_by_count(app: &TestApp, path: &str) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let url = cursor.as_ref().map_or(path.to_string(), |c| format!("{path}&cursor={c}"));
        let (_, page) = get_page(app, &url, None).await;
        pages += 1;
        ids.extend(page["results"].as_array().unwrap().iter().map(|r| r["object_id"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (ids, pages),
        }
    }
}

#[tokio::test]
async fn bucket_pages_stop_at_the_byte_budget_and_skip_other_namespaces() {
    let app = TestApp::start().await;
    // 256 properties with 2000-character descriptions: ~560 KB a bucket.
    let properties: serde_json::Map<String, Value> =
        (0..256).map(|i| (format!("p{i}"), json!({"type": "string", "description": "d".repeat(2000)}))).collect();
    let mut want = Vec::new();
    for i in 0..36 {
        let body = json!({"bucket_name": format!("wide{i}"), "bucket_schema": {"properties": &properties}});
        let (s, b) = app.call_as(reqwest::Method::POST, "/v1/buckets", Some(body), Some(API_KEY), Some("wide")).await;
        assert_eq!(s, 201, "{b}");
        want.push(b["bucket_id"].as_str().unwrap().to_string());
        if i % 5 == 0 {
            app.create_bucket(&format!("elsewhere{i}"), json!({})).await; // namespace `default`
        }
    }
    let (got, pages) = page_through(&app, "/v1/buckets?limit=1000", Some("wide"), "bucket_id").await;
    assert_each_once(&got, &want);
    assert!(pages >= 3, "36 × 560 KB take at least three pages, got {pages}");
    let (_, other) = get_page(&app, "/v1/buckets?limit=1000", None).await;
    assert_eq!(other["results"].as_array().unwrap().len(), 8, "{}", other["next_cursor"]);
}

#[tokio::test]
async fn the_webhook_list_is_whole_when_small_and_paged_at_the_byte_budget() {
    let app = TestApp::start().await;
    let channel = |i: usize| {
        json!({"channel": "webhook", "configs": {
            "url": format!("http://127.0.0.1:47799/hook/{i}"),
            "payload_template": format!("{{\"n\": {i}, \"pad\": \"{}\"}}", "p".repeat(60_000)),
        }})
    };
    let small = crate::outbound::create_webhook(
        &app,
        json!({"webhook_name": "small", "event_types": ["*"], "channels": [crate::outbound::http_channel("http://127.0.0.1:47799/s")]}),
    )
    .await
    .0;
    // Without a limit: every webhook, as before pages existed, with a null next_cursor.
    let (_, page) = get_page(&app, "/v1/organizations/webhooks", None).await;
    assert_eq!(page["results"][0]["webhook_id"], small.as_str());
    assert_eq!(page["next_cursor"], Value::Null);

    // 10 channels of 60 KB templates: ~600 KB a webhook, 16 of them pass 8 MiB.
    let mut want = vec![small];
    for i in 0..16 {
        let channels: Vec<Value> = (0..10).map(|c| channel(i * 10 + c)).collect();
        let body = json!({"webhook_name": format!("big{i}"), "event_types": ["*"], "channels": channels});
        want.push(crate::outbound::create_webhook(&app, body).await.0);
    }
    let (got, pages) = page_through(&app, "/v1/organizations/webhooks?", None, "webhook_id").await;
    assert_each_once(&got, &want);
    assert_eq!(pages, 2);
    // A limit and a cursor work as on the other lists.
    let (_, two) = get_page(&app, "/v1/organizations/webhooks?limit=2", None).await;
    assert_eq!(two["results"].as_array().unwrap().len(), 2);
    assert_eq!(two["next_cursor"], got[1].as_str());
    let (s, b) = app.get("/v1/organizations/webhooks?cursor=nope").await;
    assert_eq!((s, b["error"]["field"].as_str()), (422, Some("cursor")), "{b}");
    let (s, _) = app.get("/v1/organizations/webhooks?limit=0").await;
    assert_eq!(s, 422);
}

/// `limit` is plain decimal digits within 1–1000 on every list: a sign (`+5`), a leading zero
/// (`05`) or anything else is a 422 naming `limit`, each with the same message and the range.
#[tokio::test]
async fn limit_is_plain_digits_within_the_range_on_every_list() {
    let app = TestApp::start().await;
    let (bucket, secret) = bucket_with_adapter(
        &app,
        "limits",
        json!({"text": {"type": "string"}}),
        json!({"adapter_type": "generic_webhook", "field_mapping": {"text": "text"}, "batching": {"mode": "immediate"}}),
    )
    .await;
    let (s, b) = ingest(&app, &bucket, Some(&secret), &json!({"text": "t"})).await;
    assert_eq!(s, 200, "{b}");
    let object = b["object_id"].as_str().unwrap().to_string();
    let hook = json!({"webhook_name": "w", "event_types": ["*"], "channels": [crate::outbound::http_channel("http://127.0.0.1:9/")]});
    let (webhook, _) = crate::outbound::create_webhook(&app, hook).await;
    let lists = [
        "/v1/buckets".to_string(),
        "/v1/organizations/connections".to_string(),
        "/v1/organizations/webhooks".to_string(),
        format!("/v1/organizations/webhooks/{webhook}/deliveries"),
        format!("/v1/buckets/{bucket}/objects"),
        format!("/v1/buckets/{bucket}/batches"),
        format!("/v1/buckets/{bucket}/objects/{object}/alerts"),
        format!("/v1/buckets/{bucket}/source-adapter/writebacks"),
    ];
    for list in &lists {
        for ok in ["5", "1", "1000"] {
            let (s, b) = app.get(&format!("{list}?limit={ok}")).await;
            assert_eq!(s, 200, "{list}?limit={ok}: {b}");
        }
        for (sent, value) in [
            ("%2B5", "+5"),
            ("05", "05"),
            ("-1", "-1"),
            ("0", "0"),
            ("1001", "1001"),
            ("abc", "abc"),
            ("5.0", "5.0"),
            ("%205", " 5"),
            ("", ""),
            ("99999999999999999999999", "99999999999999999999999"),
        ] {
            let (s, b) = app.get(&format!("{list}?limit={sent}")).await;
            assert_eq!((s, b["error"]["field"].as_str()), (422, Some("limit")), "{list}?limit={sent}: {b}");
            let message = b["error"]["message"].as_str().unwrap_or_default();
            let want = format!("limit: must be within 1–1000 (digits only: no sign, no leading zero), got {value:?}");
            assert_eq!(message, want, "{list}?limit={sent}");
        }
    }
}
