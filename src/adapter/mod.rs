//! Source adapters: the inbound side.
//!
//! The bucket registry ([`registry::BucketRegistry`]) owns the catalog (buckets and
//! connections) and serializes every change to it. It will spawn one supervised
//! source-adapter actor per bucket that has an adapter; that actor alone owns the bucket's
//! dedup set and batch buffer. This module must not touch outbound delivery state.

pub mod mux;
pub mod registry;
pub mod supabase;

pub use registry::{BucketRegistry, RegistryMsg};
