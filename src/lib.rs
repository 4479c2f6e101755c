//! hookline: webhooks in, notifications out.
//!
//! # Layout
//! - [`config`]: one serde tree, defaults, env overrides, validation.
//! - [`store`]: the on-disk format (sled behind a trait) and group commit.
//! - [`catalog`]: buckets and connections: shapes and rules.
//! - [`supervisor`]: the root actor; restarts its children.
//! - [`adapter`]: the bucket registry and the per-bucket source-adapter actors (inbound).
//! - [`delivery`]: the per-webhook delivery actors (outbound).
//! - [`http`]: the thin warp frontend: parse, authenticate, forward.
//! - [`auth`], [`crypto`]: API keys (hashed) and credentials at rest (AEAD).
//! - [`metrics`]: every metric name in one place.
//! - [`error`], [`strict`]: API errors, and API bodies read by field name only.
//! - [`lenient`]: upstream JSON read as senders write it (a BOM, lone surrogate halves).
//!
//! # Flow of an event
//! Upstream POSTs to the ingest route → `http` reads the body (size-limited) and sends it
//! to the bucket's adapter actor → the actor verifies the signature, filters, dedups, maps,
//! and submits one atomic batch (object + outbox event) to the store's group committer →
//! the HTTP answer is sent once that batch is fsynced → the outbox is fanned out to the
//! delivery actors of matching webhooks, which retry until a 2xx or `max_age_hours`.
#![forbid(unsafe_code)]

pub mod adapter;
pub mod app;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod crypto;
pub mod delivery;
pub mod error;
pub mod events;
pub mod http;
pub mod ids;
pub mod lenient;
pub mod metrics;
pub mod state;
pub mod store;
pub mod strict;
pub mod supervisor;
pub mod util;
