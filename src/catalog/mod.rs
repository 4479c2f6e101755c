//! The catalog: buckets and org-level connections, their API shapes and validation.
//!
//! This module is pure data and rules. Writes are performed by the bucket registry actor
//! (`adapter::registry`), which owns the catalog and serializes changes; reads go straight
//! to the store. Nothing here touches HTTP or actors.

pub mod bucket;
pub mod connection;

pub use bucket::{Bucket, BucketSchema, PropertyType};
pub use connection::{Connection, ProviderType};

/// Namespaces scope buckets (`X-Namespace`, default `default`).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Validates a namespace name: 1–64 of `[A-Za-z0-9_-]`.
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty() && ns.len() <= 64 && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
