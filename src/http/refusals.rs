//! The last refused ingest of each bucket, for the status endpoint and the log.
//!
//! A refused ingest (401) is anonymous: anyone can send one, as often as they like. So it is
//! kept in memory only, never written to the store (no write per bogus request, nothing an
//! attacker can grow on disk), and it does not replace the adapter's stored `last_error`,
//! which an anonymous sender must not be able to overwrite. One entry per bucket (the
//! latest, dropped with its bucket), at most [`MAX_BUCKETS`] buckets; a restart forgets
//! them. The log gets one line per bucket and kind of refusal per [`LOG_EVERY_MS`], whatever
//! the kinds alternate, so a flood does not flood it (and the line is written after the
//! table's lock is released).

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
    /// When each kind of refusal was last logged (a handful of kinds).
    logged: Vec<(&'static str, u64)>,
}

#[derive(Default)]
pub struct Refusals(Mutex<HashMap<BucketId, Entry>>);

impl Refusals {
    /// Records a refused ingest of `bucket_id` (and logs it, rate-limited: true if it did).
    pub fn record(&self, bucket_id: &BucketId, refusal: &Refusal, message: &str) -> bool {
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
            logged: Vec::new(),
        });
        e.at_ms = now;
        e.kind = kind;
        e.message = message.to_string();
        e.count += 1;
        let due = match e.logged.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, at)) if now.saturating_sub(*at) < LOG_EVERY_MS => false,
            Some((_, at)) => {
                *at = now;
                true
            }
            None => {
                e.logged.push((kind, now));
                true
            }
        };
        let count = e.count;
        drop(table);
        if due {
            // The message holds no secret (see `Refusal::message`).
            tracing::warn!(bucket_id = %bucket_id, reason = kind, refused_since_start = count, "ingest refused: {message}");
        }
        due
    }

    /// Drops a deleted bucket's entry.
    pub fn forget(&self, bucket_id: &BucketId) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(bucket_id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::mux::MuxSignatureError as E;

    /// Alternating kinds of refusal do not get a log line each: one per kind and minute.
    #[test]
    fn the_log_is_rate_limited_per_kind_whatever_the_order() {
        let r = Refusals::default();
        let b = BucketId::generate();
        let (old, bad) = (Refusal::Signature(E::Stale { skew_secs: 400 }), Refusal::Signature(E::Mismatch));
        let logged: Vec<bool> = (0..6).map(|i| r.record(&b, if i % 2 == 0 { &old } else { &bad }, "m")).collect();
        assert_eq!(logged, [true, true, false, false, false, false]);
        assert_eq!(r.view(&b)["count_since_start"], 6);
        assert_eq!(r.view(&b)["reason"], "signature_mismatch");
        r.forget(&b);
        assert!(r.view(&b).is_null(), "a deleted bucket's entry goes with it");
    }
}
