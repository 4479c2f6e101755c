//! The in-memory part of one webhook's delivery queue: its pending deliveries by ID and
//! what they cost in bytes.
//!
//! A count bound alone is not a memory bound: each delivery holds its event, up to ~1 MiB,
//! so 10,000 held deliveries of large events came to ~12 GB for one webhook. The worker
//! therefore bounds what it holds by bytes too ([`Bounds`]); past either bound new
//! deliveries stay in the store (see the module docs of [`super::worker`]).
//!
//! The cost of a delivery is its event's stored (JSON) size plus [`DELIVERY_OVERHEAD`].
//! An event shared by several webhooks' queues counts in each of them: each queue's bound is
//! its own, and one queue's cost must not depend on which others still hold the event. (From
//! the fan-out the queues share one copy; read back from the store, each reads its own.)

use std::collections::HashMap;

use super::model::Delivery;
use crate::ids::DeliveryId;

/// What a held delivery costs beside its event: the record (IDs, attempt log, recipients)
/// and its entries in the worker's map, lists and heap. A rough figure, on the high side
/// for a fresh delivery, so that a queue of small events is still bounded by its count.
pub const DELIVERY_OVERHEAD: usize = 1024;

/// How much a worker may hold in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Most deliveries held.
    pub count: usize,
    /// Most bytes held (see [`cost`]).
    pub bytes: usize,
}

/// What a delivery costs held in memory: its event's stored size plus [`DELIVERY_OVERHEAD`].
/// (A parsed event takes somewhat more memory than its JSON; the bound is an estimate.)
pub fn cost(d: &Delivery) -> usize {
    DELIVERY_OVERHEAD.saturating_add(d.event.as_ref().map_or(0, |e| e.stored_size()))
}

/// The pending deliveries held in memory, with their total cost.
#[derive(Default)]
pub struct Held {
    /// Each delivery with the cost it was counted at (taken off as counted, whatever
    /// changes on the delivery meanwhile).
    map: HashMap<DeliveryId, (Delivery, usize)>,
    bytes: usize,
}

impl Held {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The total cost of what is held (see [`cost`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, id: &DeliveryId) -> Option<&Delivery> {
        self.map.get(id).map(|(d, _)| d)
    }

    pub fn get_mut(&mut self, id: &DeliveryId) -> Option<&mut Delivery> {
        self.map.get_mut(id).map(|(d, _)| d)
    }

    pub fn contains_key(&self, id: &DeliveryId) -> bool {
        self.map.contains_key(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&DeliveryId, &Delivery)> {
        self.map.iter().map(|(id, (d, _))| (id, d))
    }

    /// Holds `d` (whether it fits is the caller's question); `false` if it is held already.
    pub fn insert(&mut self, d: Delivery) -> bool {
        if self.map.contains_key(&d.delivery_id) {
            return false;
        }
        let c = cost(&d);
        self.bytes = self.bytes.saturating_add(c);
        self.map.insert(d.delivery_id.clone(), (d, c));
        true
    }

    pub fn remove(&mut self, id: &DeliveryId) -> Option<Delivery> {
        let (d, c) = self.map.remove(id)?;
        self.bytes = self.bytes.saturating_sub(c);
        Some(d)
    }

    /// Whether one more delivery of `cost` stays within `bounds`. An empty queue takes any
    /// one delivery, so an event larger than the byte bound is still sent (alone).
    pub fn fits(&self, cost: usize, bounds: Bounds) -> bool {
        self.map.is_empty() || (self.map.len() < bounds.count && self.bytes.saturating_add(cost) <= bounds.bytes)
    }

    /// Whether there is room for anything more (below both bounds): worth reading back from
    /// the store.
    pub fn has_room(&self, bounds: Bounds) -> bool {
        self.map.is_empty() || (self.map.len() < bounds.count && self.bytes < bounds.bytes)
    }

    /// Whether the queue has drained to half of both bounds: then a refill reads back a
    /// good slice at once, not one delivery per finished send.
    pub fn at_most_half(&self, bounds: Bounds) -> bool {
        self.map.len() <= bounds.count / 2 && self.bytes <= bounds.bytes / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventRecord;
    use crate::ids::WebhookId;
    use std::sync::Arc;

    fn event(payload_bytes: usize) -> Arc<EventRecord> {
        let payload = serde_json::json!({ "blob": "x".repeat(payload_bytes) });
        Arc::new(EventRecord::new("object.created", payload, vec![]))
    }

    fn delivery(ev: &Arc<EventRecord>, wh: &WebhookId, channel: usize) -> Delivery {
        Delivery::new(ev.clone(), wh, channel, "ch_a", "webhook", 1)
    }

    #[test]
    fn an_events_cost_is_its_stored_json_plus_the_overhead() {
        let ev = event(10_000);
        let json = serde_json::to_vec(&*ev).map(|v| v.len()).unwrap_or(0);
        assert!(json > 10_000);
        assert_eq!(ev.stored_size(), json);
        let d = delivery(&ev, &WebhookId::generate(), 0);
        assert_eq!(cost(&d), json + DELIVERY_OVERHEAD);
        let mut gone = d.clone();
        gone.event = None;
        assert_eq!(cost(&gone), DELIVERY_OVERHEAD, "a delivery whose event is gone costs its record");
    }

    #[test]
    fn bytes_are_counted_in_and_out_and_bound_what_fits() {
        let (ev, wh) = (event(100_000), WebhookId::generate());
        let c = cost(&delivery(&ev, &wh, 0));
        let bounds = Bounds { count: 100, bytes: 2 * c + c / 2 };
        let mut q = Held::default();
        assert!(q.fits(c, bounds) && q.has_room(bounds));
        // The same event to two channels: one copy in memory, counted for each delivery.
        let (a, b) = (delivery(&ev, &wh, 0), delivery(&ev, &wh, 1));
        assert!(q.insert(a.clone()));
        assert!(!q.insert(a.clone()), "held already: not counted twice");
        assert!(q.fits(c, bounds));
        assert!(q.insert(b.clone()));
        assert_eq!((q.len(), q.bytes()), (2, 2 * c));
        let shared = |id: &DeliveryId| q.get(id).and_then(|d| d.event.as_ref()).is_some_and(|e| Arc::ptr_eq(e, &ev));
        assert!(shared(&a.delivery_id) && shared(&b.delivery_id), "shared, not copied");
        assert!(!q.fits(c, bounds), "a third would pass the byte bound");
        assert!(q.has_room(bounds) && !q.at_most_half(bounds));
        // Changing a held delivery does not change what it is taken off at.
        if let Some(held) = q.get_mut(&a.delivery_id) {
            held.event = None;
        }
        assert!(q.remove(&a.delivery_id).is_some());
        assert!(q.remove(&a.delivery_id).is_none());
        assert_eq!((q.len(), q.bytes()), (1, c));
        assert!(q.at_most_half(bounds));
        assert!(q.remove(&b.delivery_id).is_some());
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn one_delivery_always_fits_an_empty_queue_and_the_count_still_binds() {
        let (big, small, wh) = (event(50_000), event(10), WebhookId::generate());
        let tiny = Bounds { count: 2, bytes: 1000 };
        let mut q = Held::default();
        let d = delivery(&big, &wh, 0);
        assert!(q.fits(cost(&d), tiny), "a huge event still goes, alone");
        q.insert(d);
        assert!(!q.fits(cost(&delivery(&small, &wh, 0)), tiny));
        assert!(!q.has_room(tiny));
        let roomy = Bounds { count: 2, bytes: usize::MAX };
        q.insert(delivery(&small, &wh, 0));
        assert!(!q.fits(DELIVERY_OVERHEAD, roomy) && !q.has_room(roomy), "the count binds too");
    }
}
