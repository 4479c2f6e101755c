//! List pages, bounded by bytes as well as by count.
//!
//! A page is serialized item by item into one buffer as the store is scanned: a handler holds
//! one decoded item at a time, never a page of decoded records plus a `serde_json::Value` copy
//! of them plus the output. Items stop being added once the page holds `limit` of them or
//! [`PAGE_BYTES`]: a page is at most one item past the budget, and always holds at least one.

use serde::Serialize;
use warp::http::StatusCode;

use super::Response;

/// The byte budget of a list page. Items are added while the page is smaller than this, so a
/// page ends at most one item past it. An item is at most about `server.max_body_bytes`
/// (1 MiB by default: it was saved from one request), so 1,000 of them could otherwise make
/// a single answer of a gigabyte; at this size a page is still a few requests' worth.
pub const PAGE_BYTES: usize = 8 << 20;

/// The two shapes of a list answer.
enum Shape {
    /// `{"results": [...], "next_cursor": ...}`.
    Results,
    /// A bare JSON array (the deliveries list, which pages with `before=<last ID>`).
    Array,
}

/// One page being filled.
pub struct Page {
    out: Vec<u8>,
    items: usize,
    limit: usize,
    shape: Shape,
    /// The cursor of the last item added: where the next page starts.
    last: Option<String>,
    /// An item was offered that no longer fit: another page follows.
    more: bool,
}

impl Page {
    /// A `{"results": [...], "next_cursor": ...}` page of at most `limit` items.
    pub fn results(limit: usize) -> Page {
        Page::new(limit, Shape::Results, br#"{"results":["#)
    }

    /// A bare JSON array of at most `limit` items.
    pub fn array(limit: usize) -> Page {
        Page::new(limit, Shape::Array, b"[")
    }

    fn new(limit: usize, shape: Shape, head: &[u8]) -> Page {
        Page { out: head.to_vec(), items: 0, limit, shape, last: None, more: false }
    }

    /// Whether the page takes no more items: it has `limit` of them, or its budget of bytes.
    pub fn full(&self) -> bool {
        self.items >= self.limit || (self.items > 0 && self.out.len() >= PAGE_BYTES)
    }

    /// Adds `item` to the page.
    pub fn push(&mut self, item: &impl Serialize) {
        if self.items > 0 {
            self.out.push(b',');
        }
        let before = self.out.len();
        // Our views serialize without error (string keys, no failing serializers); should one
        // fail, its partial output is taken back and the item left out rather than the page
        // made invalid JSON.
        if let Err(e) = serde_json::to_writer(&mut self.out, item) {
            tracing::error!(error = %e, "serialize a list item");
            self.out.truncate(before - usize::from(self.items > 0));
            return;
        }
        self.items += 1;
    }

    /// For a scan: adds `item`, whose `cursor` is where a page after it starts, unless the
    /// page is full; then notes that another page follows and returns `false` (stop scanning).
    pub fn offer(&mut self, cursor: &str, item: &impl Serialize) -> bool {
        if self.full() {
            self.more = true;
            return false;
        }
        self.push(item);
        self.last = Some(cursor.to_string());
        true
    }

    /// The answer: `next_cursor` is the cursor of the last item when [`Page::offer`] was
    /// refused an item (null when the scan reached the end).
    pub fn finish(mut self) -> Response {
        self.out.push(b']');
        if let Shape::Results = self.shape {
            let next = if self.more { self.last.take() } else { None };
            self.out.extend_from_slice(br#","next_cursor":"#);
            // A string or null: cannot fail.
            let _ = serde_json::to_writer(&mut self.out, &next);
            self.out.push(b'}');
        }
        let mut resp = Response::new(self.out.into());
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut()
            .insert(warp::http::header::CONTENT_TYPE, warp::http::HeaderValue::from_static("application/json"));
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(page: Page) -> serde_json::Value {
        serde_json::from_slice(page.finish().body()).unwrap()
    }

    #[test]
    fn a_page_stops_at_its_limit_and_names_the_next_cursor() {
        let mut page = Page::results(2);
        let mut offered = 0;
        for i in 0..5 {
            if !page.offer(&format!("k{i}"), &i) {
                break;
            }
            offered += 1;
        }
        assert_eq!(offered, 2);
        assert_eq!(body(page), serde_json::json!({"results": [0, 1], "next_cursor": "k1"}));
    }

    #[test]
    fn a_scan_that_reaches_the_end_has_no_next_cursor() {
        let mut page = Page::results(2);
        assert!(page.offer("a", &"x") && page.offer("b", &"y"));
        assert_eq!(body(page), serde_json::json!({"results": ["x", "y"], "next_cursor": null}));
        assert_eq!(body(Page::results(10)), serde_json::json!({"results": [], "next_cursor": null}));
    }

    #[test]
    fn a_page_stops_past_its_byte_budget_with_at_least_one_item() {
        let big = "x".repeat(PAGE_BYTES / 4);
        let mut page = Page::results(1000);
        let mut n = 0;
        while page.offer(&format!("k{n}"), &big) {
            n += 1;
        }
        // Three items (with their quotes and commas) are under the budget, four just past it.
        assert_eq!(n, 4);
        let resp = page.finish();
        assert!(resp.body().len() <= PAGE_BYTES + big.len() + 64, "{}", resp.body().len());
        let v: serde_json::Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(v["next_cursor"], "k3");

        let huge = "x".repeat(PAGE_BYTES * 2);
        let mut page = Page::results(1000);
        assert!(page.offer("only", &huge), "an item larger than the budget still makes a page");
        assert!(!page.offer("next", &1));
        assert_eq!(body(page)["next_cursor"], "only");
    }

    #[test]
    fn an_array_page_is_a_bare_array() {
        let mut page = Page::array(3);
        for i in 0..3 {
            assert!(!page.full());
            page.push(&serde_json::json!({ "i": i }));
        }
        assert!(page.full());
        assert_eq!(body(page), serde_json::json!([{"i": 0}, {"i": 1}, {"i": 2}]));
    }
}
