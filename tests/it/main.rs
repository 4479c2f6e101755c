//! hookline's integration tests: one binary, a module per capability. Each test starts the
//! real daemon on 127.0.0.1 with its own temp data dir (see `support`).

mod support;

mod alerts;
mod channel_sends;
mod channels;
mod dashboards;
mod dedup_sets;
mod fan_out;
mod foundation;
mod inbound;
mod inbound_crash;
mod ingest_auth;
mod outbound;
mod outbound_crash;
mod outbound_crosscheck;
mod outbound_memory;
mod outbound_receiver;
mod outbound_retry;
mod pages;
mod providers;
mod row_keys;
mod supervision;
mod writeback;
mod writeback_backlog;
