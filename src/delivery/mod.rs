//! Outbound delivery: webhook configs, the event-bus consumer (fan-out), one delivery
//! actor per webhook, the retry policy and the channels.
//!
//! - [`registry`]: owns webhook configs, fans the outbox out, supervises the workers.
//! - [`worker`]: one per webhook; owns its queue of pending deliveries. [`queue`]: the
//!   part held in memory, with what it costs in bytes. [`lease`]: what a worker's sends
//!   and outcomes leave to its successor when it fails.
//! - [`retry`]: the pure retry policy. [`throttle`]: per-channel pacing after a 429.
//!   [`netguard`]: where deliveries may go.
//! - [`channel`]: the channel seam and the HTTP channel. [`template`], [`signature`].
//! - [`client`]: the outgoing HTTP client the webhook, Slack and SMS channels send with.
//! - [`model`]: stored shapes, API bodies, validation, the event-type catalog.
//!
//! This module must not touch inbound adapter state (dedup sets, batch buffers).

pub mod channel;
pub mod client;
pub mod lease;
pub mod model;
pub mod netguard;
pub mod queue;
pub mod registry;
pub mod retry;
pub mod signature;
pub mod template;
pub mod throttle;
pub mod worker;

pub use registry::{DeliveryMsg, DeliveryRegistry};
