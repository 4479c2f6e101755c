//! The last refused ingest of each bucket, for the status endpoint and the log (and, keyed
//! by connection, the refused Mux lifecycle webhooks, for the log).
//!
//! A refused ingest (401) is anonymous: anyone can send one, as often as they like. So it is
//! kept in memory only, never written to the store (no write per bogus request, nothing an
//! attacker can grow on disk), and it does not replace the adapter's stored `last_error`,
//! which an anonymous sender must not be able to overwrite. One entry per bucket (the
//! latest, dropped with its bucket), at most [`MAX_KEYS`] buckets; a restart forgets
//! them. The log gets one line per bucket and kind of refusal per [`LOG_EVERY_MS`], whatever
//! the kinds alternate, so a flood does not flood it (and the line is written after the
//! table's lock is released).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};

use crate::ids::BucketId;

/// Most buckets (or connections) remembered; past it the table is cleared (entries are
/// only hints).
const MAX_KEYS: usize = 10_000;

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

/// Refusals by what was refused: a bucket's ingests, a connection's lifecycle webhooks.
pub struct Refusals<K = BucketId>(Mutex<HashMap<K, Entry>>);

impl<K> Default for Refusals<K> {
    fn default() -> Self {
        Refusals(Mutex::new(HashMap::new()))
    }
}

impl<K: Hash + Eq + Clone> Refusals<K> {
    /// Records a refusal of `kind` for `key`. Returns the refusals of `key` since the start
    /// when this one is due a log line (rate-limited, see the module doc): the caller writes
    /// it, after the table's lock is released.
    pub fn record(&self, key: &K, kind: &'static str, message: &str) -> Option<u64> {
        let now = crate::util::now_millis();
        let mut table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if table.len() >= MAX_KEYS && !table.contains_key(key) {
            table.clear();
        }
        let e = table.entry(key.clone()).or_insert_with(|| Entry {
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
        due.then_some(e.count)
    }

    /// Drops a deleted bucket's (or connection's) entry.
    pub fn forget(&self, key: &K) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(key);
    }

    /// The status endpoint's `last_refused_ingest`: `null` when none since the start.
    pub fn view(&self, key: &K) -> serde_json::Value {
        let table = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match table.get(key) {
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
    use crate::adapter::verify::Refusal;

    /// Alternating kinds of refusal do not get a log line each: one per kind and minute.
    #[test]
    fn the_log_is_rate_limited_per_kind_whatever_the_order() {
        let r = Refusals::default();
        let b = BucketId::generate();
        let (old, bad) = (Refusal::Signature(E::Stale { skew_secs: 400 }), Refusal::Signature(E::Mismatch));
        let logged: Vec<Option<u64>> =
            (0..6).map(|i| r.record(&b, if i % 2 == 0 { old.kind() } else { bad.kind() }, "m")).collect();
        assert_eq!(logged, [Some(1), Some(2), None, None, None, None]);
        assert_eq!(r.view(&b)["count_since_start"], 6);
        assert_eq!(r.view(&b)["reason"], "signature_mismatch");
        r.forget(&b);
        assert!(r.view(&b).is_null(), "a deleted bucket's entry goes with it");
    }
}
