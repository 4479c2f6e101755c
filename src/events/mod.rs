//! The internal event bus: durable event records in the outbox.
//!
//! Producers (the ingest pipeline, object/batch changes) call
//! [`EventBus::record`] to add an event to the *same* store batch as the change it describes,
//! so a crash can never leave one without the other (transactional outbox). After that batch
//! is durable they call [`EventBus::published`], which counts the events and wakes the
//! consumer. The consumer (the delivery side) reads `Keyspace::OUTBOX` in key (= time) order,
//! fans each event out to matching webhooks, and deletes it in the same batch that creates
//! the deliveries (and, when any matched, moves the event to `evt/`, where they read it).
//!
//! Nobody listening, nothing stored: while the delivery side has no active webhook it says
//! so ([`EventBus::set_listening`]) and events are counted but not written, which saves an
//! ingest two of its store writes (the outbox put and the fan-out's delete). A webhook
//! receives the events recorded while it is active: an event whose batch was being built
//! at the very moment a webhook was created or resumed may miss it (the flag is read when
//! the event is recorded, not when the fan-out runs).
//!
//! `POST /v1/events` does not go through the outbox: a published event changes nothing
//! else, so the delivery registry fans it out at once, in one batch (see
//! `delivery/registry.rs`), saving the outbox write, its read and its delete.
//!
//! This module owns the event record format and nothing else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::ids::EventId;
use crate::store::{Batch, Keyspace};

/// One event, as stored in the outbox and delivered: its serialized form is exactly the
/// delivery envelope (`event_id`, `event_type`, `created_at`, `payload`, `cache_scopes`), so
/// a field added here is sent to every receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: EventId,
    pub event_type: String,
    pub created_at: String,
    pub payload: serde_json::Value,
    #[serde(default)]
    pub cache_scopes: Vec<serde_json::Value>,
    /// Whether [`EventBus::record`] put it in the outbox (nobody listening: not stored).
    #[serde(skip)]
    pub stored: bool,
    /// Its stored (JSON) size once known: given by the store write or read that handled it,
    /// else measured on first ask. See [`EventRecord::stored_size`].
    #[serde(skip)]
    pub stored_size: StoredSize,
}

/// An event's stored size, set once. Never part of an event's identity: two records of
/// the same event compare equal whether or not either has been measured.
#[derive(Debug, Clone, Default)]
pub struct StoredSize(std::sync::OnceLock<usize>);

impl PartialEq for StoredSize {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl EventRecord {
    /// A new event (ID and time assigned now), not stored yet.
    pub fn new(event_type: &str, payload: serde_json::Value, cache_scopes: Vec<serde_json::Value>) -> EventRecord {
        EventRecord {
            event_id: EventId::generate(),
            event_type: event_type.to_string(),
            created_at: crate::util::now_rfc3339(),
            payload,
            cache_scopes,
            stored: false,
            stored_size: StoredSize::default(),
        }
    }

    /// The size of its stored JSON: what a delivery queue counts it at (see
    /// `delivery::queue`). Known for free from the store write or read that handled it
    /// ([`EventRecord::note_stored_size`]); else measured once, without building the JSON,
    /// and kept, so an event fanned out to many webhooks is measured once for all.
    pub fn stored_size(&self) -> usize {
        *self.stored_size.0.get_or_init(|| {
            let mut n = ByteCount(0);
            // Cannot fail for a JSON value and a writer that cannot fail.
            let _ = serde_json::to_writer(&mut n, self);
            n.0
        })
    }

    /// Records the size of its stored JSON, as a store write or read saw it (a size known
    /// already stays: it is the same record).
    pub fn note_stored_size(&self, bytes: usize) {
        let _ = self.stored_size.0.set(bytes);
    }
}

/// A writer that only counts what it is given.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The cache scopes of an event hookline emits itself (seed 001: receivers invalidate
/// retriever caches by `collection`, `namespace` or `key`). Each scope is
/// `{"scope": kind, "id": value}`: the bucket's namespace, and the key of what changed (an
/// object or batch ID). A published event (`POST /v1/events`) carries its caller's instead.
#[derive(Debug, Clone, Copy)]
pub struct Scopes<'a> {
    pub namespace: &'a str,
    pub key: &'a str,
}

impl Scopes<'_> {
    pub fn to_json(self) -> Vec<serde_json::Value> {
        vec![
            serde_json::json!({"scope": "namespace", "id": self.namespace}),
            serde_json::json!({"scope": "key", "id": self.key}),
        ]
    }
}

/// Handle shared by producers and the consumer.
#[derive(Clone)]
pub struct EventBus {
    wake: Arc<Notify>,
    /// Whether any consumer wants events stored (see the module docs). True until the
    /// delivery side has loaded its webhooks and says otherwise.
    listening: Arc<AtomicBool>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus { wake: Arc::default(), listening: Arc::new(AtomicBool::new(true)) }
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        EventBus::default()
    }

    /// Called by the consumer whenever its set of active subscriptions changes.
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::SeqCst);
    }

    /// Adds a new event to `batch` (the outbox write, unless nobody listens) and returns it.
    /// `payload` is called only if the event is stored; an unstored record has a null payload
    /// and no cache scopes.
    pub fn record(
        &self,
        batch: &mut Batch,
        event_type: &str,
        payload: impl FnOnce() -> serde_json::Value,
        scopes: Scopes<'_>,
    ) -> EventRecord {
        let listening = self.listening.load(Ordering::SeqCst);
        // Built only when it will be stored (an object's payload is a copy of the object).
        let (payload, cache_scopes) =
            if listening { (payload(), scopes.to_json()) } else { (serde_json::Value::Null, Vec::new()) };
        let rec = EventRecord { stored: listening, ..EventRecord::new(event_type, payload, cache_scopes) };
        if listening {
            batch.put_new(Keyspace::OUTBOX, rec.event_id.as_str(), &rec);
        }
        rec
    }

    /// Call once the batch holding these events is durable.
    pub fn published<'a>(&self, events: impl IntoIterator<Item = &'a EventRecord>) {
        let mut stored = false;
        for e in events {
            crate::metrics::event_published(&e.event_type);
            stored |= e.stored;
        }
        // Events recorded while nobody listened are not in the outbox: no fan-out to wake.
        if stored {
            self.wake.notify_one();
        }
    }

    /// Resolves when new events were published since the last wake-up (consumer side).
    pub async fn wait(&self) {
        self.wake.notified().await;
    }
}
