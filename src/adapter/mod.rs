//! Source adapters: the inbound side.
//!
//! - [`registry`]: the bucket registry actor, owner of the catalog and parent/supervisor of
//!   the per-bucket adapter actors.
//! - [`actor`]: one source-adapter actor per bucket with an adapter; it alone owns that
//!   bucket's dedup set and batch buffer (mirrored in the store).
//! - [`spec`]: the `source_adapter` settings (API shape, validation, stored form, secrets).
//! - [`kind`]: every per-provider decision (generic_webhook, mux, supabase).
//! - [`pipeline`]: the pure ingest steps (filter, dedup value, mapping, type check, blob).
//! - [`records`]: what is stored (objects, batches, buffer, dedup, counters) and its keys.
//! - [`path`]: dot-paths into JSON.
//! - [`mux`], [`supabase`]: provider specifics (signatures, asset metadata, payloads).
//! - [`writeback`]: pushing results back to the source (settings, jobs, the sending worker).
//! - [`alert`]: alerts on objects (`POST …/objects/{id}/alerts`): record, writeback job and
//!   `alert.triggered` in one batch.
//!
//! This module must not touch outbound delivery state: it records events on the bus.

pub mod actor;
pub mod alert;
pub mod kind;
pub mod mux;
pub mod path;
pub mod pipeline;
pub mod records;
pub mod registry;
pub mod spec;
pub mod supabase;
pub mod unreadable;
pub mod verify;
pub mod writeback;

pub use registry::{BucketRegistry, RegistryMsg};
