//! Prefixed identifier newtypes.
//!
//! IDs are `{prefix}_{ulid}` in lowercase: random enough to be unguessable in practice, and
//! time-ordered so that store keys built from them sort by creation (cursor pagination
//! relies on that). Webhook IDs follow the contract's `wh_` + 10 alphanumerics instead.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new, time-ordered ID (strictly increasing within this process).
            pub fn generate() -> Self {
                $name(prefixed_ulid($prefix))
            }

            /// Accepts a client-supplied ID if it has the right prefix and only safe
            /// characters (IDs end up in store keys and URLs).
            pub fn parse(s: &str) -> Option<Self> {
                Self::is_valid(s).then(|| $name(s.to_string()))
            }

            /// Whether [`Self::parse`] accepts `s`, without making the ID.
            pub fn is_valid(s: &str) -> bool {
                s.strip_prefix(concat!($prefix, "_")).is_some_and(|rest| {
                    !rest.is_empty()
                        && rest.len() <= 64
                        && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
            }

            /// Whether `s` has the form of a generated ID (the prefix and 26 lower-case
            /// Crockford base-32 characters), as a list's `next_cursor` does. A cursor of
            /// another form would be read as a position all the same (`obj_1`, or an ID in
            /// capitals, which sorts before its own) and skip or repeat items.
            pub fn is_generated(s: &str) -> bool {
                s.strip_prefix(concat!($prefix, "_")).is_some_and(|r| {
                    r.len() == ulid::ULID_LEN
                        && r.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'h' | b'j' | b'k' | b'm' | b'n' | b'p'..=b't' | b'v'..=b'z'))
                })
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

ulid_id!(/// A bucket (`bkt_…`).
    BucketId, "bkt");
ulid_id!(/// An org-level connection holding provider credentials (`conn_…`).
    ConnectionId, "conn");
ulid_id!(/// A bucket object (`obj_…`).
    ObjectId, "obj");
ulid_id!(/// A batch of objects (`batch_…`).
    BatchId, "batch");
ulid_id!(/// An event on the bus (`evt_…`); deliveries are idempotent by it.
    EventId, "evt");
ulid_id!(/// One delivery of one event to one webhook channel (`del_…`).
    DeliveryId, "del");

/// An alert on an object (`POST …/objects/{id}/alerts`): the caller's own ID (1–128 of
/// `[A-Za-z0-9_.:-]`, so a processor can resend with the ID it made), or `alr_` + a ULID
/// made here when the caller gives none. It ends a store key, so it never holds a `/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AlertId(String);

impl AlertId {
    pub const PREFIX: &'static str = "alr";
    /// The longest caller-supplied ID.
    pub const MAX_LEN: usize = 128;

    /// A new, time-ordered ID.
    pub fn generate() -> Self {
        AlertId(prefixed_ulid(Self::PREFIX))
    }

    /// Accepts a caller's ID: 1–[`AlertId::MAX_LEN`] of `[A-Za-z0-9_.:-]`.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        ok.then(|| AlertId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AlertId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An outbound webhook subscription: `wh_` + 10 alphanumerics, as the contract pins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookId(String);

impl WebhookId {
    pub fn generate() -> Self {
        WebhookId(format!("wh_{}", random_alphanumeric(10)))
    }

    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix("wh_")?;
        (rest.len() == 10 && rest.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| WebhookId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WebhookId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

static GENERATOR: std::sync::Mutex<ulid::Generator> = std::sync::Mutex::new(ulid::Generator::new());

/// A ULID larger than every one this process made before, even within one millisecond
/// or after the clock stepped back: IDs made in order sort in order (delivery queues are
/// read back from the store in key order, oldest first).
fn monotonic_ulid() -> ulid::Ulid {
    let mut g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    // Overflow needs 2^80 IDs in one millisecond; then a plain (random) one.
    g.generate().unwrap_or_else(|_| ulid::Ulid::generate())
}

/// `{prefix}_{ulid}`, the ULID in lower case, built in one allocation (IDs are made on every
/// ingest, several per request).
fn prefixed_ulid(prefix: &str) -> String {
    let mut buf = [0u8; ulid::ULID_LEN];
    let ulid = monotonic_ulid().array_to_str(&mut buf);
    ulid.make_ascii_lowercase();
    let mut id = String::with_capacity(prefix.len() + 1 + ulid::ULID_LEN);
    id.push_str(prefix);
    id.push('_');
    id.push_str(ulid);
    id
}

/// Makes every ID generated from now on larger than `id` (an ID of this kind read from the
/// store), even if the clock stepped back across a restart: callers that scan the store
/// for IDs after one they recorded rely on it (see `adapter/records.rs`, dedup pages).
pub fn generate_after(id: &ObjectId) {
    let Some(seen) = ulid_of(id.as_str()) else {
        return;
    };
    let next_ms = seen.datetime() + std::time::Duration::from_millis(1);
    let mut g = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    // At or before the last one made: that one is larger already (this burns one increment).
    let _ = g.generate_from_datetime(next_ms);
}

/// The ULID of a `{prefix}_{ulid}` ID (it carries the creation time); `None` for another.
pub fn ulid_of(id: &str) -> Option<ulid::Ulid> {
    let (_, u) = id.split_once('_')?;
    ulid::Ulid::from_string(&u.to_uppercase()).ok()
}

/// `len` random characters from `[A-Za-z0-9]`, from the OS-seeded thread RNG.
pub fn random_alphanumeric(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len).map(|_| rng.sample(rand::distr::Alphanumeric) as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_sort_in_generation_order() {
        // Thousands per millisecond: a plain ULID would order these randomly within each.
        let ids: Vec<EventId> = (0..20_000).map(|_| EventId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()));
    }

    #[test]
    fn ids_generated_after_one_from_the_future_sort_after_it() {
        // (Not far ahead: the generator is the process's, other tests' IDs follow it.)
        let ahead = ulid::Ulid::from_datetime(std::time::SystemTime::now() + std::time::Duration::from_secs(2));
        let seen = ObjectId(format!("obj_{}", ahead.to_string().to_lowercase()));
        generate_after(&seen);
        let next = ObjectId::generate();
        assert!(next.as_str() > seen.as_str(), "{next} after {seen}");
        generate_after(&ObjectId("obj_not-a-ulid".into()));
        assert!(ObjectId::generate().as_str() > next.as_str());
    }

    #[test]
    fn ids_have_prefix_and_parse_back() {
        let b = BucketId::generate();
        let ulid = b.as_str().strip_prefix("bkt_").expect("prefixed");
        assert_eq!(ulid.len(), ulid::ULID_LEN);
        assert!(ulid.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()), "{b}");
        assert!(ulid_of(b.as_str()).is_some_and(|u| u.to_string().to_lowercase() == ulid));
        assert_eq!(BucketId::parse(b.as_str()), Some(b));
        assert_eq!(BucketId::parse("conn_abc"), None);
        assert_eq!(BucketId::parse("bkt_../x"), None);
        for s in ["bkt_", "bkt", "bkt_a/b", &format!("bkt_{}", "a".repeat(65))] {
            assert!(!BucketId::is_valid(s) && BucketId::parse(s).is_none(), "{s}");
        }
        let longest = format!("bkt_{}", "a".repeat(64));
        assert!(BucketId::is_valid(&longest) && BucketId::parse(&longest).is_some());
        let w = WebhookId::generate();
        assert_eq!(w.as_str().len(), 13);
        assert!(WebhookId::parse(w.as_str()).is_some());
        assert!(WebhookId::parse("wh_short").is_none());
    }

    #[test]
    fn alert_ids_take_a_callers_id_or_make_one() {
        let a = AlertId::generate();
        assert!(a.as_str().starts_with("alr_") && AlertId::parse(a.as_str()) == Some(a.clone()));
        assert!(AlertId::generate() > a, "time-ordered");
        for ok in ["x", "run-7:verdict.v2_final", &"a".repeat(128)] {
            assert!(AlertId::parse(ok).is_some(), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", "../x", &"a".repeat(129)] {
            assert!(AlertId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn ulid_ids_sort_by_creation() {
        let a = ObjectId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ObjectId::generate();
        assert!(a < b);
    }
}
