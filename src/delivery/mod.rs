//! Outbound delivery: the event bus consumer, one delivery actor per webhook, channels.
//!
//! The delivery registry ([`registry::DeliveryRegistry`]) is the parent of the per-webhook
//! delivery actors; each of those owns its webhook's queue of pending deliveries. This
//! module must not touch inbound adapter state (dedup sets, batch buffers).

pub mod registry;

pub use registry::{DeliveryMsg, DeliveryRegistry};
