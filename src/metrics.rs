//! Every metric hookline exports, named and described in one place.
//!
//! Names end in `_total`, `_seconds` or `_bytes`. Labels are bounded: routes are templates
//! (`/v1/buckets/{bucket_id}`), never raw paths. The Prometheus recorder is process-global,
//! so it is installed once (`OnceLock`) and shared by every app in the process (tests start
//! several).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Histogram, Unit,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS: &str = "hookline_http_requests_total";
pub const HTTP_DURATION: &str = "hookline_http_request_duration_seconds";
pub const HTTP_BODIES_REFUSED: &str = "hookline_http_upstream_bodies_refused_total";
pub const HTTP_CONNECTIONS_REFUSED: &str = "hookline_http_connections_refused_total";
pub const ACTOR_RESTARTS: &str = "hookline_actor_restarts_total";
pub const STORE_COMMITS: &str = "hookline_store_commits_total";
pub const STORE_COMMIT_BATCHES: &str = "hookline_store_commit_batches_total";
pub const STORE_COMMIT_DURATION: &str = "hookline_store_commit_duration_seconds";
pub const STORE_FLUSH_DURATION: &str = "hookline_store_flush_duration_seconds";
pub const STORE_APPLY_DURATION: &str = "hookline_store_apply_duration_seconds";
pub const STORE_CHECKPOINT_DURATION: &str = "hookline_store_checkpoint_duration_seconds";
pub const STORE_SIZE: &str = "hookline_store_size_bytes";
pub const STORE_DISK_AVAILABLE: &str = "hookline_store_disk_available_bytes";
pub const EVENTS_PUBLISHED: &str = "hookline_events_published_total";
pub const BUCKETS: &str = "hookline_buckets";
pub const CREDENTIALS_UNREADABLE: &str = "hookline_credentials_unreadable";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets (seconds) of request latencies: 0.5 ms to 30 s (a request may wait
/// that long for a busy actor, or for its body: past 10 s a p99 would otherwise read 10).
const LATENCY: [f64; 15] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// The store's steps: an fsync into a log segment takes 0.2–0.4 ms, below the request
/// buckets' first edge; a checkpoint may take seconds.
const STORE_LATENCY: [f64; 17] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Delivery attempts: a channel's timeout may be up to 300 s (email's default is 30 s).
const ATTEMPT_LATENCY: [f64; 15] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0];

/// Installs the global recorder (once per process) and returns the render handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&LATENCY)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Prefix("hookline_store_".into()), &STORE_LATENCY))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(DELIVERY_ATTEMPT_DURATION.into()), &ATTEMPT_LATENCY)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let handle = match builder.install_recorder() {
                Ok(h) => h,
                Err(e) => {
                    // Another recorder is installed (embedding process): render an empty one.
                    tracing::warn!(error = %e, "metrics recorder already installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            };
            describe();
            zero_series();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(HTTP_REQUESTS, "HTTP requests served, by route template, method and status");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request latency by route template and method");
    describe_counter!(
        HTTP_BODIES_REFUSED,
        "Upstream request bodies (ingest, Mux lifecycle) refused with 503 because server.max_upstream_body_memory_mb was in use"
    );
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Client connections closed at once because their address already had server.max_connections_per_ip open"
    );
    describe_counter!(ACTOR_RESTARTS, "Supervised actors restarted after a failure, by actor kind");
    describe_counter!(
        STORE_COMMITS,
        "Group commits that wrote something (one log write and one fsync each), by outcome"
    );
    describe_counter!(STORE_COMMIT_BATCHES, "Batches made durable by group commits");
    describe_histogram!(
        STORE_COMMIT_DURATION,
        Unit::Seconds,
        "Time from a group's first batch to its submitters' answer (log write, fsync)"
    );
    describe_histogram!(
        STORE_FLUSH_DURATION,
        Unit::Seconds,
        "Time to write and fsync one group's record in the write-ahead log"
    );
    describe_histogram!(
        STORE_APPLY_DURATION,
        Unit::Seconds,
        "Time to move the overlay of logged writes into sled (one apply round)"
    );
    describe_histogram!(
        STORE_CHECKPOINT_DURATION,
        Unit::Seconds,
        "Time of one checkpoint (a sled flush that lets full log segments be deleted)"
    );
    describe_gauge!(STORE_SIZE, Unit::Bytes, "Data on disk: sled plus the write-ahead log");
    describe_gauge!(
        STORE_DISK_AVAILABLE,
        Unit::Bytes,
        "Space left on the data directory's filesystem for hookline (a full disk fails the store)"
    );
    describe_counter!(EVENTS_PUBLISHED, "Events recorded on the internal event bus, by event type");
    describe_gauge!(BUCKETS, "Buckets currently defined");
    describe_gauge!(
        CREDENTIALS_UNREADABLE,
        "Stored credentials the current master key cannot open, by kind (connection, adapter, webhook): what \
         needs them fails until they are set again"
    );
    describe_inbound();
    describe_outbound();
    describe_writeback();
}

/// Registers at 0 the counter series whose labels are known up front, so a fresh daemon
/// already exposes them: an alert on `increase(…[5m]) > 0` or a dashboard rate then has a
/// series before the first event, not a gap.
fn zero_series() {
    for actor in ["bucket_registry", "delivery_registry", "source_adapter", "delivery"] {
        counter!(ACTOR_RESTARTS, "actor" => actor).absolute(0);
    }
    for name in [
        STORE_COMMIT_BATCHES,
        INGEST_BUFFERED,
        INGEST_OBJECTS_CREATED,
        EVENTS_DISPATCHED,
        HTTP_BODIES_REFUSED,
        HTTP_CONNECTIONS_REFUSED,
    ] {
        counter!(name).absolute(0);
    }
    for outcome in ["ok", "error"] {
        counter!(STORE_COMMITS, "outcome" => outcome).absolute(0);
    }
    for (event_type, _) in crate::delivery::model::EVENT_TYPES.iter().chain(&[("other", "")]) {
        counter!(EVENTS_PUBLISHED, "event_type" => *event_type).absolute(0);
    }
    for outcome in [
        "created",
        "buffered",
        "duplicate",
        "ignored",
        "updated",
        "deleted",
        "unauthorized",
        "invalid",
        "disabled",
        "not_found",
        "unavailable",
        "dependency_failed",
        "error",
        "too_large",
        "timeout",
        "low_disk",
    ] {
        counter!(INGEST_REQUESTS, "outcome" => outcome).absolute(0);
    }
    // The durable answers' latency (what the dashboard's ingest panel shows) exists from the
    // start too; other outcomes' series appear with their first request.
    for outcome in ["created", "buffered", "duplicate", "ignored", "updated", "deleted"] {
        let _ = histogram!(INGEST_DURATION, "outcome" => outcome);
    }
    // So do the store's latencies: a checkpoint may not happen for days on a quiet install,
    // and a dashboard panel should show "none yet", not "no data".
    for name in [STORE_COMMIT_DURATION, STORE_FLUSH_DURATION, STORE_APPLY_DURATION, STORE_CHECKPOINT_DURATION] {
        let _ = histogram!(name);
    }
    for trigger in ["window", "size", "bytes", "drain", "manual", "restart"] {
        counter!(INGEST_FLUSHES, "trigger" => trigger).absolute(0);
    }
    for channel in ["webhook", "slack", "email", "sms"] {
        for outcome in ["succeeded", "dead"] {
            counter!(DELIVERIES, "channel" => channel, "outcome" => outcome).absolute(0);
        }
        counter!(DELIVERIES_DEAD, "channel" => channel).absolute(0);
        // The dashboard's attempt latency panel: "none yet" before the first delivery.
        let _ = histogram!(DELIVERY_ATTEMPT_DURATION, "channel" => channel);
        for result in ["2xx", "3xx", "4xx", "5xx", "timeout", "connect", "refused", "error", "interrupted"] {
            counter!(DELIVERY_ATTEMPTS, "channel" => channel, "result" => result).absolute(0);
        }
    }
    for adapter in ["supabase", "generic_webhook"] {
        for outcome in ["succeeded", "retry", "failed", "skipped", "requeued", "superseded"] {
            counter!(WRITEBACKS, "adapter" => adapter, "outcome" => outcome).absolute(0);
        }
    }
    for outcome in ["accepted", "duplicate"] {
        counter!(ALERTS, "outcome" => outcome).absolute(0);
    }
    gauge!(DELIVERY_QUEUE).set(0.0);
    gauge!(DELIVERY_QUEUE_BYTES).set(0.0);
}

/// An upstream body refused because the body memory budget was spent.
pub fn upstream_body_refused() {
    counter!(HTTP_BODIES_REFUSED).increment(1);
}

pub fn connection_refused() {
    counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
}

pub fn http_request(route: &'static str, method: &str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    with_series(&HTTP_SERIES, (route, method, status), |(c, h)| {
        c.increment(1);
        h.record(elapsed.as_secs_f64());
    });
}

/// A counter and a histogram recorded together.
type Pair = (Counter, Histogram);

thread_local! {
    /// Handles of the per-request series, by label values (see [`with_series`]).
    static HTTP_SERIES: RefCell<foldhash::HashMap<(&'static str, &'static str, u16), Pair>> = RefCell::new(foldhash::HashMap::default());
    static INGEST_SERIES: RefCell<foldhash::HashMap<&'static str, Pair>> = RefCell::new(foldhash::HashMap::default());
    /// `metrics.ingest_per_bucket`'s handles, by outcome and bucket ID (see
    /// [`ingest_bucket_request`]): bounded by the buckets that exist(ed) since the start.
    static BUCKET_SERIES: RefCell<foldhash::HashMap<&'static str, foldhash::HashMap<Box<str>, Counter>>> =
        RefCell::new(foldhash::HashMap::default());
    /// Handles of the series recorded once or more per ingest or per group commit (see
    /// [`count`] and [`observe`]), by name and label (name, value; empty for none).
    static COUNTERS: RefCell<foldhash::HashMap<OneKey, Counter>> = RefCell::new(foldhash::HashMap::default());
    static HISTOGRAMS: RefCell<foldhash::HashMap<HistogramName, Histogram>> = RefCell::new(foldhash::HashMap::default());
}

/// A series of one name and at most one label, all static: (name, label name, label value).
type OneKey = (&'static str, &'static str, &'static str);

impl SeriesKey for OneKey {
    type Handle = Counter;
    fn make(self) -> Counter {
        match self {
            (name, "", _) => counter!(name),
            (name, label, value) => counter!(name, label => value),
        }
    }
}

/// A histogram of static name and no label (a newtype: a bare `&'static str` keys the
/// ingest series).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct HistogramName(&'static str);

impl SeriesKey for HistogramName {
    type Handle = Histogram;
    fn make(self) -> Histogram {
        histogram!(self.0)
    }
}

/// Increments a counter of static name and label through a handle kept per thread (see
/// [`with_series`]): these run once or more per ingest (objects created, events published)
/// and per group commit, where a recorder lookup showed in the profile.
fn count(name: &'static str, label: (&'static str, &'static str), n: u64) {
    with_series(&COUNTERS, (name, label.0, label.1), |c| c.increment(n));
}

/// Records into a histogram of static name (no label) through a handle kept per thread.
fn observe(name: &'static str, value: f64) {
    with_series(&HISTOGRAMS, HistogramName(name), |h| h.record(value));
}

/// No label, for [`count`].
const NONE: (&str, &str) = ("", "");

/// What makes a series' handles from its label values.
trait SeriesKey: Copy + Eq + std::hash::Hash {
    type Handle;
    fn make(self) -> Self::Handle;
}

impl SeriesKey for (&'static str, &'static str, u16) {
    type Handle = Pair;
    fn make(self) -> Pair {
        let (route, method, status) = self;
        (
            counter!(HTTP_REQUESTS, "route" => route, "method" => method, "status" => status.to_string()),
            histogram!(HTTP_DURATION, "route" => route, "method" => method),
        )
    }
}

impl SeriesKey for &'static str {
    type Handle = Pair;
    fn make(self) -> Pair {
        (counter!(INGEST_REQUESTS, "outcome" => self), histogram!(INGEST_DURATION, "outcome" => self))
    }
}

/// Records into the series of `key`, through handles kept per thread: looking a series up in
/// the recorder (building its key, allocating the status label, hashing, a sharded map's
/// lock) was 2% of an ingest's CPU in a profile (about 1 µs; the bench cannot tell it from
/// noise). No lock here, and bounded by the label sets (route templates × methods × statuses,
/// ingest outcomes, the static names and labels of [`count`] and [`observe`]). Handles are
/// kept only once the recorder is installed: one taken before would be a no-op for good.
/// foldhash rather than std's SipHash: these maps are hashed several times per ingest, and
/// their keys are our own static names, which no client chooses: there is no flood to resist.
fn with_series<K: SeriesKey>(
    cache: &'static std::thread::LocalKey<RefCell<foldhash::HashMap<K, K::Handle>>>,
    key: K,
    f: impl FnOnce(&K::Handle),
) {
    if HANDLE.get().is_none() {
        return f(&key.make());
    }
    cache.with(|c| f(c.borrow_mut().entry(key).or_insert_with(|| key.make())));
}

/// A request method as a label: HTTP lets a client invent any token, and each one would be
/// a new series for good (unbounded memory and `/metrics` size, from unauthenticated requests).
fn method_label(method: &str) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "CONNECT", "TRACE"];
    KNOWN.iter().find(|m| **m == method).copied().unwrap_or("other")
}

pub fn actor_restart(kind: &'static str) {
    counter!(ACTOR_RESTARTS, "actor" => kind).increment(1);
}

/// A group commit that wrote something, or failed. (A group of empty batches, barriers,
/// writes nothing and is not counted: it would skew the commit figures low.)
pub fn store_commit(batches: usize, elapsed: Duration, ok: bool) {
    count(STORE_COMMITS, ("outcome", if ok { "ok" } else { "error" }), 1);
    if ok {
        count(STORE_COMMIT_BATCHES, NONE, batches as u64);
    }
    observe(STORE_COMMIT_DURATION, elapsed.as_secs_f64());
}

pub fn store_apply(elapsed: Duration) {
    histogram!(STORE_APPLY_DURATION).record(elapsed.as_secs_f64());
}

pub fn store_flush(elapsed: Duration) {
    observe(STORE_FLUSH_DURATION, elapsed.as_secs_f64());
}

pub fn store_checkpoint(elapsed: Duration) {
    histogram!(STORE_CHECKPOINT_DURATION).record(elapsed.as_secs_f64());
}

pub fn store_size(bytes: u64) {
    gauge!(STORE_SIZE).set(bytes as f64);
}

pub fn store_disk_available(bytes: u64) {
    gauge!(STORE_DISK_AVAILABLE).set(bytes as f64);
}

pub fn event_published(event_type: &str) {
    // Event types are a catalog plus any name a client publishes: only catalogued ones get
    // their own series (a client publishing `tenant.{id}.created` must not add one per ID).
    let label = crate::delivery::model::EVENT_TYPES.iter().find(|(t, _)| *t == event_type).map_or("other", |(t, _)| *t);
    count(EVENTS_PUBLISHED, ("event_type", label), 1);
}

pub fn buckets(n: usize) {
    gauge!(BUCKETS).set(n as f64);
}

/// `kind`: `connection`, `adapter` (inline credentials) or `webhook`; set by their owners.
pub fn credentials_unreadable(kind: &'static str, n: usize) {
    gauge!(CREDENTIALS_UNREADABLE, "kind" => kind).set(n as f64);
}

// ---- inbound (source adapters): names, descriptions, recorders ----

pub const INGEST_REQUESTS: &str = "hookline_ingest_requests_total";
pub const INGEST_DURATION: &str = "hookline_ingest_duration_seconds";
pub const INGEST_BUCKET_REQUESTS: &str = "hookline_ingest_bucket_requests_total";
pub const INGEST_BUFFERED: &str = "hookline_ingest_events_buffered_total";
pub const INGEST_FLUSHES: &str = "hookline_ingest_flushes_total";
pub const INGEST_OBJECTS_CREATED: &str = "hookline_ingest_objects_created_total";

fn describe_inbound() {
    describe_counter!(
        INGEST_REQUESTS,
        "Ingest requests by outcome: created, buffered, duplicate, ignored, updated, deleted, unauthorized, \
         invalid, disabled, not_found, unavailable, dependency_failed, error, too_large, timeout, low_disk"
    );
    describe_histogram!(INGEST_DURATION, Unit::Seconds, "Ingest latency, body read to durable answer, by outcome");
    describe_counter!(
        INGEST_BUCKET_REQUESTS,
        "Ingest requests to existing buckets by bucket_id and outcome (with metrics.ingest_per_bucket; 404s are not \
         counted here)"
    );
    describe_counter!(INGEST_BUFFERED, "Events accepted into a time_window or count buffer");
    describe_counter!(
        INGEST_FLUSHES,
        "Buffer flushes (one batch each), by trigger: window, size (max_batch_size), bytes (16 MiB buffered), drain, manual (POST …/source-adapter/flush), restart (also after a reconfiguration)"
    );
    describe_counter!(INGEST_OBJECTS_CREATED, "Objects created by source adapters");
    // Restarts of source-adapter actors: hookline_actor_restarts_total{actor="source_adapter"}.
}

/// An ingest request to `bucket` (the path's ID, as sent) answered with `outcome`. Outcomes
/// are a fixed set (see the description). Bucket IDs label only the opt-in per-bucket series,
/// whose series outlive a deleted bucket (see `config::MetricsConfig`).
pub fn ingest_request(bucket: &str, outcome: &'static str, elapsed: Duration) {
    with_series(&INGEST_SERIES, outcome, |(c, h)| {
        c.increment(1);
        h.record(elapsed.as_secs_f64());
    });
    // A 404's ID is whatever the sender made up: never a label. Every other outcome is
    // answered after the head check found the bucket (see `http::inbound::ingest_head`).
    if INGEST_PER_BUCKET.load(Ordering::Relaxed) && outcome != "not_found" && crate::ids::BucketId::is_valid(bucket) {
        ingest_bucket_request(bucket, outcome);
    }
}

/// Whether [`ingest_request`] also counts by bucket (`metrics.ingest_per_bucket`).
static INGEST_PER_BUCKET: AtomicBool = AtomicBool::new(false);

/// Set from the configuration at start-up. Process-wide, as the recorder is.
pub fn set_ingest_per_bucket(on: bool) {
    INGEST_PER_BUCKET.store(on, Ordering::Relaxed);
}

/// Counts one ingest of an existing bucket in its own series, through a handle kept per
/// thread (by outcome, then bucket: a lookup by `&str` needs no key built).
fn ingest_bucket_request(bucket: &str, outcome: &'static str) {
    let make = || counter!(INGEST_BUCKET_REQUESTS, "bucket_id" => bucket.to_string(), "outcome" => outcome);
    if HANDLE.get().is_none() {
        return make().increment(1);
    }
    BUCKET_SERIES.with(|c| {
        let mut c = c.borrow_mut();
        let by_bucket = c.entry(outcome).or_default();
        match by_bucket.get(bucket) {
            Some(counter) => counter.increment(1),
            None => {
                let counter = make();
                counter.increment(1);
                by_bucket.insert(bucket.into(), counter);
            }
        }
    });
}

pub fn ingest_buffered() {
    count(INGEST_BUFFERED, NONE, 1);
}

pub fn ingest_flush(trigger: &'static str) {
    counter!(INGEST_FLUSHES, "trigger" => trigger).increment(1);
}

pub fn ingest_objects_created(n: usize) {
    count(INGEST_OBJECTS_CREATED, NONE, n as u64);
}

// ---- outbound (delivery): names, descriptions, recorders ----

pub const WEBHOOKS: &str = "hookline_webhooks";
pub const EVENTS_DISPATCHED: &str = "hookline_events_dispatched_total";
pub const DELIVERY_ATTEMPTS: &str = "hookline_delivery_attempts_total";
pub const DELIVERY_ATTEMPT_DURATION: &str = "hookline_delivery_attempt_duration_seconds";
pub const DELIVERIES: &str = "hookline_deliveries_total";
pub const DELIVERIES_DEAD: &str = "hookline_deliveries_dead_total";
pub const DELIVERY_QUEUE: &str = "hookline_delivery_queue_depth";
pub const DELIVERY_QUEUE_BYTES: &str = "hookline_delivery_queue_bytes";

// No webhook_id label: series would outlive deleted webhooks (the exporter cannot drop
// them) and grow without bound; per-webhook detail is in the deliveries API and
// `last_error`. Channel kinds and result classes are small fixed sets.
fn describe_outbound() {
    describe_gauge!(WEBHOOKS, "Outbound webhooks currently defined");
    describe_counter!(
        EVENTS_DISPATCHED,
        "Events fanned out to webhooks (matching or not): from the outbox, or published while a webhook was active"
    );
    describe_counter!(
        DELIVERY_ATTEMPTS,
        "Delivery attempts by channel and result (2xx, 3xx, 4xx, 5xx, timeout, connect, refused, interrupted, error)"
    );
    describe_histogram!(DELIVERY_ATTEMPT_DURATION, Unit::Seconds, "Latency of one delivery attempt, by channel");
    describe_counter!(DELIVERIES, "Deliveries finished, by channel and outcome (succeeded, dead)");
    describe_counter!(
        DELIVERIES_DEAD,
        "Deliveries that went dead (max_age passed, a permanent error, or their channel was removed), by channel"
    );
    describe_gauge!(DELIVERY_QUEUE, "Pending deliveries (queued, waiting to retry, or in flight), all webhooks");
    describe_gauge!(
        DELIVERY_QUEUE_BYTES,
        Unit::Bytes,
        "What the delivery queues hold in memory: each held delivery's event at its stored size plus 1 KiB, all webhooks"
    );
}

pub fn webhooks(n: usize) {
    gauge!(WEBHOOKS).set(n as f64);
}

pub fn event_dispatched() {
    counter!(EVENTS_DISPATCHED).increment(1);
}

pub fn delivery_attempt(channel: &str, result: &'static str, elapsed: Duration) {
    let channel = bounded_channel(channel);
    counter!(DELIVERY_ATTEMPTS, "channel" => channel, "result" => result).increment(1);
    histogram!(DELIVERY_ATTEMPT_DURATION, "channel" => channel).record(elapsed.as_secs_f64());
}

pub fn delivery_finished(channel: &str, outcome: &'static str) {
    let channel = bounded_channel(channel);
    counter!(DELIVERIES, "channel" => channel, "outcome" => outcome).increment(1);
    if outcome == "dead" {
        counter!(DELIVERIES_DEAD, "channel" => channel).increment(1);
    }
}

/// The queue depth gauge, for a worker to keep: it changes on nearly every message, and a
/// kept handle skips the registry lookup of each `gauge!`.
pub fn delivery_queue_depth() -> metrics::Gauge {
    gauge!(DELIVERY_QUEUE)
}

/// The gauge of what delivery queues hold in memory, in bytes (kept as the depth's is).
pub fn delivery_queue_bytes() -> metrics::Gauge {
    gauge!(DELIVERY_QUEUE_BYTES)
}

fn bounded_channel(channel: &str) -> &'static str {
    match channel {
        "webhook" => "webhook",
        "slack" => "slack",
        "email" => "email",
        "sms" => "sms",
        _ => "other",
    }
}

// ---- Writeback (src/adapter/writeback/) ----

pub const WRITEBACKS: &str = "hookline_writebacks_total";
pub const ALERTS: &str = "hookline_alerts_total";

// No bucket label (series would outlive deleted buckets); per-bucket detail is the adapter
// status `last_error`. `adapter` is supabase|generic_webhook, `outcome`
// succeeded|retry|failed|skipped|requeued|superseded.
fn describe_writeback() {
    describe_counter!(
        WRITEBACKS,
        "Writeback attempts by adapter and outcome (succeeded; retry: failed, will retry; failed: given up; skipped: an alert's or a batch's job not queued, as it could only fail; requeued: a given-up job queued again by POST …/writebacks/{id}/retry; superseded: a waiting job a newer one of the same row took over)"
    );
    describe_counter!(
        ALERTS,
        "Alerts raised on objects (POST …/objects/{id}/alerts) by outcome: accepted, duplicate (alert_id seen before)"
    );
}

pub fn writeback(adapter: &'static str, outcome: &'static str) {
    counter!(WRITEBACKS, "adapter" => adapter, "outcome" => outcome).increment(1);
}

/// An alert answered once durable; `outcome` is accepted|duplicate.
pub fn alert(outcome: &'static str) {
    counter!(ALERTS, "outcome" => outcome).increment(1);
}
