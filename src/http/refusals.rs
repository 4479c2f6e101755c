//! The last refused ingest of each bucket, for the status endpoint and the log.
//!
//! A refused ingest (401) is anonymous: anyone can send one, as often as they like. So it is
//! kept in memory only, never written to the store (no write per bogus request, nothing an
//! attacker can grow on disk), and it does not replace the adapter's stored `last_error`,
//! which an anonymous sender must not be able to overwrite. One entry per bucket (the
//! latest), at most [`MAX_BUCKETS`] buckets; a restart forgets them. The log gets one line
//! per bucket and kind of refusal per [`LOG_EVERY`], so a flood does not flood it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::adapter::verify::Refusal;
use crate::ids::BucketId;

/// Most buckets remembered; past it the table is cleared (entries are only hints).
const MAX_BUCKETS: usize = 10_000;

/// At most one log line per bucket and kind of refusal this often.
const LOG_EVERY_MS: u64 = 60_000;

#[derive(Clone)]
struct Entry {
    at_ms: u64,
    kind: &'static str,
    message: String,
    /// Refused ingests since the daemon started.
    count: u64,
    logged_at_ms: u64,
    logged_kind: &'static str,
}

#[derive(Default)]
pub struct Refusals(Mutex<HashMap<BucketId, Entry>>);

impl Refusals {
    /// Records a refused ingest of `bucket_id` (and logs it, rate-limited).
    pub fn record(&self, bucket_id: &BucketId, refusal: &Refusal, message: &str) {
        let now = crate::util::now_millis();
        let kind = refusal.kind();
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_BUCKETS && !table.contains_key(bucket_id) {
            table.clear();
        }
        let e = table.entry(bucket_id.clone()).or_insert_with(|| Entry {
            at_ms: now,
            kind,
            message: String::new(),
            count: 0,
            logged_at_ms: 0,
            logged_kind: "",
        });
        e.at_ms = now;
        e.kind = kind;
        e.message = message.to_string();
        e.count += 1;
        if e.logged_kind != kind || now.saturating_sub(e.logged_at_ms) >= LOG_EVERY_MS {
            e.logged_at_ms = now;
            e.logged_kind = kind;
            // The message holds no secret (see `Refusal::message`).
            tracing::warn!(bucket_id = %bucket_id, reason = kind, refused_since_start = e.count, "ingest refused: {message}");
        }
    }

    /// The status endpoint's `last_refused_ingest`: `null` when none since the start.
    pub fn view(&self, bucket_id: &BucketId) -> serde_json::Value {
        let table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match table.get(bucket_id) {
            None => serde_json::Value::Null,
            Some(e) => serde_json::json!({
                "at": crate::util::millis_to_rfc3339(e.at_ms),
                "reason": e.kind,
                "message": e.message,
                "count_since_start": e.count,
            }),
        }
    }
}
