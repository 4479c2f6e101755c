//! The writeback worker of one bucket: a task owned by the bucket's source-adapter actor
//! (started in its `pre_start`, stopped in its `post_stop` or when its state is dropped, and
//! by the registry through its [`Lease`] when the actor was killed or failed), so it lives
//! and restarts with the adapter and always uses the adapter's current settings.
//! Delivery is at least once: an attempt cut short by a stop, or a crash between a 2xx and
//! the job's deletion (each outcome is stored as soon as its attempt ends), is sent again.
//!
//! It alone owns the bucket's pending jobs in memory (loaded from the store at start, so
//! pending writebacks survive restarts and crashes; indexed by due time, row and object in
//! [`Pending`], so that a pass costs about the same however many wait) and is the only
//! writer of their records once they are created while it runs (an adapter that starts without one gives up the
//! jobs it must never send: [`give_up_barred`]). New jobs are created by whoever completes a
//! batch (the adapter's flush, `POST …/submit` through the registry) or records an alert
//! (the adapter actor, or the registry while no actor runs), in that same store batch; a
//! dead job an operator retries (`operator.rs`: the adapter actor, or the registry while no
//! actor runs) is created again the same way. The worker finds them by scanning the keys of its two
//! prefixes (batch jobs, alert jobs) every [`POLL`] (cheap: keys only, and only unknown
//! keys are read): it forgets a job's key once the job is written or given up, so a
//! re-queued job is an unknown key again. Before the first attempt at a newly found job it
//! waits for an empty barrier commit, so it never writes back a result that is not durable
//! yet.
//!
//! Jobs for one source row (its table and schema, and its external ID) are kept in order:
//! one of them is in flight at a time, and a newer job takes over the older ones still
//! waiting (their fields it lacks carried over into it: the row ends with the newest value of
//! each field). Without that, an older result whose attempt failed and was retried later
//! would land after a newer one and leave the row stale. An older job in flight when a newer
//! one is found is given up if its attempt fails (the newer one carries its fields).
//!
//! Retries follow the delivery retry policy (`delivery.retry_schedule_seconds`, ±20%
//! jitter, `max_age_hours`); a job that runs out of time, or can never succeed, is moved to
//! the `dead/` keys with its error. Every attempt is counted in
//! `hookline_writebacks_total{adapter, outcome}`, and every failure is reported to the
//! adapter actor, which shows it as the status `last_error`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use ractor::ActorRef;

use super::job::{self, Job, KS};
use super::pending::Pending;
use super::send::{Failure, Sender};
use crate::adapter::actor::AdapterMsg;
use crate::adapter::spec::SourceAdapter;
use crate::delivery::netguard::NetPolicy;
use crate::delivery::retry::{Decision, Outcome, Policy};
use crate::ids::BucketId;
use crate::state::Shared;
use crate::store::Batch;
use crate::util::now_millis;

/// How often the worker looks for jobs recorded by others.
pub const POLL: Duration = Duration::from_millis(250);
/// Attempts in flight at once, per bucket.
const CONCURRENCY: usize = 8;

/// The registry's hold on the writeback worker of the adapter actor it spawns with it.
///
/// A stopped actor stops its worker in `post_stop`; a killed one does not run that, and
/// ractor hands its state (the worker's handle with it) to the registry's supervision event,
/// which the registry reads only after it has spawned the successor; a failed one drops its
/// state only after the registry was told. Either way the old worker could go on settling
/// jobs while the successor's start reads them, so the registry ends it through the lease
/// first ([`Lease::end`]).
#[derive(Clone, Default)]
pub struct Lease {
    stop: tokio_util::sync::CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Lease {
    /// Runs `work` until it ends or the lease does.
    fn spawn(&self, work: impl std::future::Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            // Biased: once the lease ends, the work takes no further step (an answer that came
            // meanwhile would otherwise be settled, or new attempts started, first).
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = work => {}
            }
        })
    }

    /// Stops what runs under the lease and waits up to `limit` for it to end (a poll under
    /// way on another thread finishes first); false if it did not.
    pub async fn end(self, limit: Duration) -> bool {
        self.stop.cancel();
        self.tasks.close();
        tokio::time::timeout(limit, self.tasks.wait()).await.is_ok()
    }
}

/// The lease of each bucket's latest adapter actor. Used by the bucket registry alone, but
/// kept in [`Shared`] rather than in the registry's state: a registry that fails takes its
/// adapter actors down with it (killed), and the registry started in its place must find
/// their leases to end their workers before it starts their successors.
pub type Leases = crate::util::SharedMap<BucketId, Lease>;

/// Handle held by the adapter actor; dropping it stops the worker.
pub struct Worker {
    task: tokio::task::JoinHandle<()>,
    /// Keys of pending jobs an operator asked to send now (see [`Worker::hurry`]).
    hurry: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Worker {
    /// Asks the worker to attempt the pending job at `key` now rather than at its scheduled
    /// time (the operator fixed the cause: `POST …/writebacks/{id}/retry` of a pending job).
    /// In memory only: after a restart the job keeps its stored schedule. A job in flight, or
    /// one the worker does not hold (yet), is left as it is; the one-attempt-per-row rule
    /// still holds.
    pub fn hurry(&self, key: String) {
        let _ = self.hurry.send(key);
    }

    /// Stops the worker and waits until its task has ended: an abort alone leaves a poll
    /// running on another thread to finish, and it may still submit a write.
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Starts the worker, under `lease`, when the adapter's writeback is enabled (either
    /// trigger); `None` otherwise (pending jobs then wait in the store until writeback is
    /// enabled again, or go with the adapter).
    pub fn start(
        shared: &Shared,
        bucket_id: &BucketId,
        adapter: &SourceAdapter,
        owner: ActorRef<AdapterMsg>,
        lease: &Lease,
    ) -> Option<Worker> {
        if !job::sends(adapter) {
            return None;
        }
        let cfg = &shared.config.delivery;
        let policy = NetPolicy::from(cfg);
        let retry = Policy {
            schedule: cfg.retry_schedule_seconds.iter().map(|s| Duration::from_secs(*s)).collect(),
            max_age: Duration::from_secs(cfg.max_age_seconds.unwrap_or(cfg.max_age_hours.saturating_mul(3600))),
        };
        let client = match super::send::client(policy) {
            Ok(c) => c,
            Err(e) => {
                // Jobs stay pending in the store (as with writeback off) until a restart.
                let msg = "build the write-back HTTP client; write-backs are paused";
                tracing::error!(bucket_id = %bucket_id, error = %e, "{msg}");
                return None;
            }
        };
        let sender = Sender {
            shared: shared.clone(),
            bucket_id: bucket_id.clone(),
            adapter: adapter.clone(),
            client,
            policy,
            timeout: Duration::from_secs(cfg.request_timeout_seconds.max(1)),
        };
        let (hurry, hurried) = tokio::sync::mpsc::unbounded_channel();
        let state = WorkerState {
            hurried,
            sender: Arc::new(sender),
            retry,
            owner,
            jobs: Pending::new(adapter.adapter_type, adapter.table()),
            durable: HashSet::new(),
            covered: HashSet::new(),
            unreadable: HashSet::new(),
            scanned_at: None,
        };
        Some(Worker { task: lease.spawn(state.run()), hurry })
    }
}

struct WorkerState {
    /// See [`Worker::hurry`].
    hurried: tokio::sync::mpsc::UnboundedReceiver<String>,
    sender: Arc<Sender>,
    retry: Policy,
    owner: ActorRef<AdapterMsg>,
    /// Pending jobs by key, which of them are in flight, and the indexes the loop reads.
    jobs: Pending,
    /// Keys known to be durable (loaded at start, or seen before a barrier).
    durable: HashSet<String>,
    /// In-flight jobs a newer job of the same row has taken over: given up if they fail.
    covered: HashSet<String>,
    /// Keys of job records that could not be read (logged once, then skipped).
    unreadable: HashSet<String>,
    /// When the store was last scanned for new jobs.
    scanned_at: Option<std::time::Instant>,
}

/// One attempt in flight: the job's key, the job, and how the attempt went.
type Attempt = futures::future::BoxFuture<'static, (String, Job, Result<(), Failure>)>;

impl WorkerState {
    fn adapter_label(&self) -> &'static str {
        self.sender.adapter.adapter_type.as_str()
    }

    async fn run(mut self) {
        let mut flying: FuturesUnordered<Attempt> = FuturesUnordered::new();
        loop {
            let failed = match self.start_due(&mut flying).await {
                Ok(()) => false,
                Err(e) => {
                    tracing::warn!(bucket_id = %self.sender.bucket_id, error = %e, "writeback scan failed; retrying");
                    true
                }
            };
            let wait = if failed || flying.len() >= CONCURRENCY {
                // After a failure, not at once again; at the cap, a completion comes first.
                POLL
            } else {
                let next = self.jobs.next_due().unwrap_or(u64::MAX);
                Duration::from_millis(next.saturating_sub(now_millis())).min(POLL)
            };
            tokio::select! {
                Some(first) = flying.next(), if !flying.is_empty() => {
                    // Each outcome is stored as soon as its attempt ends (with any that ended
                    // meanwhile): a 2xx is not sent again after a stop or a crash unless
                    // it came in the few milliseconds before its commit.
                    let mut results = vec![first];
                    while let Some(Some(r)) = flying.next().now_or_never() {
                        results.push(r);
                    }
                    for (k, _, _) in &results {
                        self.jobs.land(k);
                    }
                    if let Err(e) = self.settle(results).await {
                        tracing::warn!(bucket_id = %self.sender.bucket_id, error = %e, "store writeback outcomes");
                    }
                }
                Some(key) = self.hurried.recv() => {
                    if !self.jobs.is_flying(&key) {
                        let now = now_millis();
                        self.jobs.update(&key, |j| j.next_attempt_ms = j.next_attempt_ms.min(now));
                    }
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Finds new jobs (every [`POLL`]), then starts the due ones not in flight, longest due
    /// first, up to [`CONCURRENCY`] at once.
    async fn start_due(&mut self, flying: &mut FuturesUnordered<Attempt>) -> Result<(), crate::store::StoreError> {
        let store = self.sender.shared.store.clone();
        if self.scanned_at.is_none_or(|t| t.elapsed() >= POLL) {
            self.scanned_at = Some(std::time::Instant::now());
            let mut unknown = Vec::new();
            for prefix in job::pending_prefixes(&self.sender.bucket_id) {
                store.for_each_key(KS, &prefix, |k| {
                    if !self.jobs.contains(k) && !self.unreadable.contains(k) {
                        unknown.push(k.to_string());
                    }
                    true
                })?;
            }
            let mut found = Vec::new();
            for k in unknown {
                match store.get::<Job>(KS, &k) {
                    Ok(Some(j)) => {
                        self.jobs.insert(k.clone(), j);
                        found.push(k);
                    }
                    Ok(None) => {}
                    // One record that cannot be read holds back no other job.
                    Err(e) => {
                        tracing::error!(bucket_id = %self.sender.bucket_id, key = %k, error = %e, "unreadable writeback job; skipped");
                        self.unreadable.insert(k);
                    }
                }
            }
            if !found.is_empty() {
                let mut merged = self.rekey_older(&found);
                merged.extend(self.coalesce());
                if !merged.is_empty() {
                    // Before any attempt: a job given up here must not come back after a crash
                    // to overwrite the newer one.
                    store.commit(merged).await?;
                }
            }
        }
        // The longest due first (alert jobs sort before batch jobs and must not starve
        // them), one attempt per row at a time: a row with a job in flight waits for its
        // outcome.
        let room = CONCURRENCY.saturating_sub(flying.len());
        let due: Vec<(String, Job)> = self
            .jobs
            .due(now_millis(), room)
            .into_iter()
            .filter_map(|k| Some((k.clone(), self.jobs.get(&k)?.clone())))
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        if self.follow_rekeys(&due).await? {
            // Their rows changed: chosen again on the next pass (at once: they are due).
            return Ok(());
        }
        if due.iter().any(|(k, _)| !self.durable.contains(k)) {
            // FIFO committer: everything applied before this barrier is on disk after it.
            store.commit(Batch::new()).await?;
            self.durable.extend(due.iter().map(|(k, _)| k.clone()));
        }
        let creds = match self.sender.credentials() {
            Ok(c) => Arc::new(c),
            Err(f) => {
                // Every due job fails the same way: one round of failures.
                let results = due.into_iter().map(|(k, j)| (k, j, Err(f.clone()))).collect();
                return self.settle(results).await;
            }
        };
        for (k, j) in due {
            self.jobs.fly(&k);
            let (sender, creds) = (self.sender.clone(), creds.clone());
            flying.push(Box::pin(async move {
                let r = sender.attempt(&j, &creds).await;
                (k, j, r)
            }));
        }
        Ok(())
    }

    /// Gives the jobs about to start the source record ID of their object as it is now: an
    /// UPDATE that changed a row's key (its `id_column`, or the `external_id_field` value)
    /// re-keys the object, and a job recorded before it would write the old key, which
    /// PostgREST answers with a 204 that updated no row. Jobs of a deleted object keep
    /// theirs. A changed job is stored (the rows coalesced again) and not started on this
    /// pass: its row is another one now, maybe busy. True if any changed. (At most
    /// [`CONCURRENCY`] object reads per pass: only the jobs chosen to start.)
    async fn follow_rekeys(&mut self, due: &[(String, Job)]) -> Result<bool, crate::store::StoreError> {
        let sender = self.sender.clone();
        let mut batch = Batch::new();
        for (k, j) in due {
            // Another adapter type's job keeps the ID it was queued with (it is not sent).
            let Ok(Some(now_id)) = job::next_external_id(&sender.shared.store, &sender.bucket_id, &sender.adapter, j)
            else {
                continue;
            };
            let lost_its_row = now_id.is_none();
            let rekeyed = self.jobs.update(k, |pending| {
                pending.external_id = now_id;
                batch.put(KS, k, &*pending);
            });
            if rekeyed.is_none() {
                continue;
            }
            if lost_its_row {
                tracing::info!(bucket_id = %sender.bucket_id, object_id = %j.object_id,
                    "the object's row key was taken by another row since its writeback was queued: it is not written");
            } else {
                tracing::info!(bucket_id = %sender.bucket_id, object_id = %j.object_id,
                    "the object's source record was re-keyed since its writeback was queued: it writes the new key");
            }
        }
        if batch.is_empty() {
            return Ok(false);
        }
        batch.extend(self.coalesce());
        sender.shared.store.commit(batch).await?;
        Ok(true)
    }

    /// For jobs just found: an older pending job of the same object (queued before its row
    /// was re-keyed) takes the newer job's source record ID, so that the two are one row
    /// ([`WorkerState::coalesce`] then merges them, or marks the older one in flight as
    /// covered) and the older one's fields cannot land after the newer one's. The changed
    /// jobs' records, for the caller's commit.
    fn rekey_older(&mut self, found: &[String]) -> Batch {
        let mut batch = Batch::new();
        let kind = self.sender.adapter.adapter_type;
        for k in found {
            let Some(newer) = self.jobs.get(k).cloned() else { continue };
            // A job queued now has the object's ID as it is; a dead job retried by hand keeps
            // the one it was queued with (maybe a key the row has since left): not a guide.
            if newer.external_id.is_none() || newer.caused_at_ms != Some(newer.created_at_ms) || !self.sendable(&newer)
            {
                continue;
            }
            // Older as `coalesce` orders them: by cause, then key.
            let newer_at = (caused_at(&newer), k.as_str());
            for key in self.jobs.of_object(&newer.object_id) {
                let older = self.jobs.get(&key).is_some_and(|j| {
                    key != *k
                        && j.barred_for(kind).is_none()
                        && j.external_id != newer.external_id
                        && (caused_at(j), key.as_str()) < newer_at
                });
                if !older {
                    continue;
                }
                // An attempt in flight keeps its own copy (and is covered, below).
                let flying = self.jobs.is_flying(&key);
                self.jobs.update(&key, |j| {
                    j.external_id = newer.external_id.clone();
                    if !flying {
                        batch.put(KS, &key, &*j);
                    }
                });
            }
        }
        batch
    }

    /// Applies the retry policy to each result and stores the new job states in one batch.
    async fn settle(
        &mut self,
        results: Vec<(String, Job, Result<(), Failure>)>,
    ) -> Result<(), crate::store::StoreError> {
        let bucket = self.sender.bucket_id.clone();
        let adapter = self.adapter_label();
        let now = now_millis();
        let mut batch = Batch::new();
        let mut last_failure = None;
        for (key, mut j, result) in results {
            if self.covered.remove(&key) && result.is_err() {
                // A newer job of the same row carries its fields: no retry to land after it.
                batch.delete(KS, &key);
                self.jobs.remove(&key);
                self.durable.remove(&key);
                crate::metrics::writeback(adapter, "superseded");
                tracing::debug!(bucket_id = %bucket, object_id = %j.object_id, "writeback superseded by a newer one");
                continue;
            }
            j.attempts += 1;
            let age = Duration::from_millis(now.saturating_sub(j.created_at_ms));
            let (outcome, error) = match &result {
                Ok(()) => (Outcome::Delivered, None),
                Err(f) => (f.outcome, Some(f.message.clone())),
            };
            let decision = self.retry.decide(outcome, j.attempts, age, None, rand::random_range(-1.0..=1.0));
            match decision {
                Decision::Succeeded => {
                    batch.delete(KS, &key);
                    self.jobs.remove(&key);
                    self.durable.remove(&key);
                    crate::metrics::writeback(adapter, "succeeded");
                    tracing::debug!(bucket_id = %bucket, object_id = %j.object_id, attempts = j.attempts, "written back");
                }
                Decision::RetryIn(d) => {
                    // The ID as it is now: a re-key while the attempt ran (see `rekey_older`).
                    if let Some(current) = self.jobs.get(&key) {
                        j.external_id = current.external_id.clone();
                    }
                    j.next_attempt_ms = now + d.as_millis() as u64;
                    j.last_error = error.clone();
                    batch.put(KS, &key, &j);
                    self.jobs.insert(key, j.clone());
                    crate::metrics::writeback(adapter, "retry");
                    let msg = format!(
                        "writeback of object {} failed (attempt {}), retrying in {:.1}s: {}",
                        j.object_id,
                        j.attempts,
                        d.as_secs_f64(),
                        error.unwrap_or_default()
                    );
                    tracing::info!(bucket_id = %bucket, "{msg}");
                    last_failure = Some(msg);
                }
                Decision::Dead => {
                    if let Some(current) = self.jobs.get(&key) {
                        j.external_id = current.external_id.clone();
                    }
                    // Why it was given up, not only its last error: no retry could help, or
                    // it kept failing for as long as jobs are tried.
                    let why = match outcome {
                        Outcome::Permanent => NOT_RETRIED.to_string(),
                        _ => format!(
                            "given up after {} attempt(s) over {}: the max age of a writeback \
                             ({}) was reached",
                            j.attempts,
                            crate::util::rough_duration(age),
                            self.sender.shared.config.delivery.max_age_setting()
                        ),
                    };
                    j.last_error = Some(format!("{} ({why})", error.clone().unwrap_or_default()));
                    bury(&mut batch, &bucket, &key, &j, adapter);
                    self.jobs.remove(&key);
                    self.durable.remove(&key);
                    let msg = format!(
                        "writeback of object {} gave up after {} attempt(s): {}",
                        j.object_id,
                        j.attempts,
                        error.unwrap_or_default()
                    );
                    tracing::warn!(bucket_id = %bucket, "{msg}");
                    last_failure = Some(msg);
                }
            }
        }
        if let Some(msg) = last_failure {
            let _ = self.owner.cast(AdapterMsg::WritebackFailed(msg));
        }
        self.sender.shared.store.commit(batch).await
    }
}

/// The keys of `bucket`'s pending jobs, batch jobs' and alert jobs'.
fn pending_keys(store: &crate::store::Store, bucket: &BucketId) -> Result<Vec<String>, crate::store::StoreError> {
    let mut keys = Vec::new();
    for prefix in job::pending_prefixes(bucket) {
        store.for_each_key(KS, &prefix, |k| {
            keys.push(k.to_string());
            true
        })?;
    }
    Ok(keys)
}

/// Every pending job of `bucket` with its key, for a pass over them all with no worker
/// running; a record that cannot be read is logged and left out.
fn pending_jobs(
    store: &crate::store::Store,
    bucket: &BucketId,
) -> Result<Vec<(String, Job)>, crate::store::StoreError> {
    let mut jobs = Vec::new();
    for key in pending_keys(store, bucket)? {
        match store.get::<Job>(KS, &key) {
            Ok(Some(j)) => jobs.push((key, j)),
            Ok(None) => {}
            Err(e) => tracing::error!(bucket_id = %bucket, key = %key, error = %e, "unreadable writeback job; skipped"),
        }
    }
    Ok(jobs)
}

/// Gives up the pending job at `key` (of an adapter of type `adapter`) in `batch`: its
/// record moves to its dead key, as it is.
fn bury(batch: &mut Batch, bucket: &BucketId, key: &str, j: &Job, adapter: &'static str) {
    batch.delete(KS, key);
    batch.put(KS, &j.dead_key(bucket), j);
    crate::metrics::writeback(adapter, "failed");
}

/// Why a job given up for good was not retried (see `settle`).
const NOT_RETRIED: &str = "not retried: trying again cannot change it";

/// Gives up now, in `batch`, the pending jobs of `bucket` that an adapter of type `kind`
/// must never send (another type queued them, or their object is another type's), for an
/// adapter that starts no worker (writeback off): a worker gives them up at its first
/// attempt, but left pending here they would wait for one, and a PATCH back to their type
/// would send them after all. Returns how many; a record that cannot be read is logged and
/// left as it is.
pub fn give_up_barred(
    store: &crate::store::Store,
    bucket: &BucketId,
    kind: crate::catalog::ProviderType,
    batch: &mut Batch,
) -> Result<usize, crate::store::StoreError> {
    let mut n = 0;
    for (key, mut j) in pending_jobs(store, bucket)? {
        let Some(why) = j.barred_for(kind) else { continue };
        j.last_error = Some(format!("{why} ({NOT_RETRIED})"));
        bury(batch, bucket, &key, &j, kind.as_str());
        n += 1;
    }
    Ok(n)
}

/// After a PATCH changed the writeback's `field_mapping` from `old` to that of `adapter`
/// (same adapter type), with the bucket's actor stopped: the pending jobs of `bucket` that
/// `adapter` would send follow the new mapping (see [`job::follow_mapping`]), in `batch`, to
/// commit with the bucket's new settings. A job left with nothing to write is given up,
/// saying why. Returns how many jobs changed; a record that cannot be read is logged and
/// left as it is.
pub fn follow_mapping(
    store: &crate::store::Store,
    bucket: &BucketId,
    old: &[super::WritebackField],
    adapter: &SourceAdapter,
    batch: &mut Batch,
) -> Result<usize, crate::store::StoreError> {
    let Some(new) = adapter.writeback.as_ref().map(|w| w.field_mapping.as_slice()) else { return Ok(0) };
    let kind = adapter.adapter_type;
    let mut n = 0;
    for (key, mut j) in pending_jobs(store, bucket)? {
        if j.barred_for(kind).is_some() {
            continue; // given up at its attempt, as it is
        }
        let Some(fields) = job::follow_mapping(old, new, &j.fields) else { continue };
        n += 1;
        if fields.is_empty() {
            // Given up with the fields it had: a retry by hand maps it afresh.
            j.last_error = Some(
                "the writeback field_mapping, changed by a PATCH, no longer reads any of its fields; a retry by \
                 hand maps it again"
                    .into(),
            );
            bury(batch, bucket, &key, &j, kind.as_str());
        } else {
            j.fields = fields;
            batch.put(KS, &key, &j);
        }
    }
    Ok(n)
}

/// When a job's cause happened, which orders the jobs of a row: a dead job retried by hand
/// keeps the time it was first queued (its `created_at_ms` restarts its max age).
fn caused_at(j: &Job) -> u64 {
    j.caused_at_ms.unwrap_or(j.created_at_ms)
}

impl WorkerState {
    /// Whether this adapter may send `j` at all: not a job another type of adapter queued,
    /// nor one of an object another type made (both are given up at their attempt).
    fn sendable(&self, j: &Job) -> bool {
        j.barred_for(self.sender.adapter.adapter_type).is_none()
    }

    /// Keeps one waiting job per source row: the newest (by its cause's time, then key), with
    /// the fields of the older ones that it lacks (those the adapter still maps). The older
    /// ones are deleted, or, when in flight, given up should their attempt fail
    /// ([`WorkerState::covered`]). When the newest is itself in flight (it carries only the
    /// fields it was sent with), an older waiting job keeps only the fields the newest lacks,
    /// and goes if none is left. Returns the store writes.
    fn coalesce(&mut self) -> Batch {
        let mut batch = Batch::new();
        let mapped: HashSet<String> = match &self.sender.adapter.writeback {
            Some(w) => w.field_mapping.iter().map(|m| m.target_field.clone()).collect(),
            None => HashSet::new(),
        };
        // (A row's jobs keep their row here: trimmed or merged, their key fields stay.)
        for mut keys in self.jobs.crowded_rows() {
            keys.sort_by_cached_key(|k| (self.jobs.get(k).map_or(0, caused_at), k.clone()));
            let Some(newest) = keys.pop() else { continue };
            let Some(mut kept) = self.jobs.get(&newest).cloned() else { continue };
            let before = kept.fields.len();
            let newest_flying = self.jobs.is_flying(&newest);
            // The fields a newer job of the row carries (with the newest in flight, each older
            // waiting job keeps only fields no newer one has, so their order no longer matters).
            let mut claimed: HashSet<String> = kept.fields.keys().cloned().collect();
            // Newest first, so each field keeps its newest value.
            for k in keys.iter().rev() {
                let Some(old) = self.jobs.get(k) else { continue };
                if newest_flying {
                    if self.jobs.is_flying(k) {
                        continue;
                    }
                    let rest: serde_json::Map<String, serde_json::Value> = old
                        .fields
                        .iter()
                        .filter(|(f, _)| mapped.contains(*f) && !claimed.contains(*f))
                        .map(|(f, v)| (f.clone(), v.clone()))
                        .collect();
                    claimed.extend(rest.keys().cloned());
                    if !rest.is_empty() {
                        if rest.len() != old.fields.len() {
                            let mut trimmed = old.clone();
                            trimmed.fields = rest;
                            batch.put(KS, k, &trimmed);
                            self.jobs.insert(k.clone(), trimmed);
                        }
                        continue;
                    }
                } else {
                    for (f, v) in &old.fields {
                        if mapped.contains(f) {
                            kept.fields.entry(f.clone()).or_insert_with(|| v.clone());
                        }
                    }
                }
                if self.jobs.is_flying(k) {
                    self.covered.insert(k.clone());
                    continue;
                }
                batch.delete(KS, k);
                self.jobs.remove(k);
                self.durable.remove(k);
                crate::metrics::writeback(self.adapter_label(), "superseded");
                tracing::debug!(bucket_id = %self.sender.bucket_id, key = %k, "writeback superseded by a newer one of its row");
            }
            if !newest_flying && kept.fields.len() != before {
                batch.put(KS, &newest, &kept);
                self.jobs.insert(newest, kept);
            }
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set when the task holding it is dropped: ended, not merely told to end.
    struct Gone(Arc<AtomicBool>);
    impl Drop for Gone {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_lease_ends_what_runs_under_it_though_its_handle_lives_on() {
        let lease = Lease::default();
        let gone = Arc::new(AtomicBool::new(false));
        let guard = Gone(gone.clone());
        // As a killed actor's worker: its handle kept (in a state nobody dropped yet).
        let handle = lease.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        tokio::task::yield_now().await;
        assert!(!gone.load(Ordering::SeqCst));
        assert!(lease.clone().end(Duration::from_secs(5)).await);
        assert!(gone.load(Ordering::SeqCst), "the task ended before end() returned");
        assert!(handle.is_finished());
    }

    /// Work that is always ready takes no step once its lease ends (each of 50 rounds).
    #[tokio::test]
    async fn ended_work_takes_no_further_step() {
        for _ in 0..50 {
            let lease = Lease::default();
            let steps = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let counted = steps.clone();
            let _handle = lease.spawn(async move {
                loop {
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            });
            tokio::task::yield_now().await;
            let before = steps.load(Ordering::SeqCst);
            assert!(lease.end(Duration::from_secs(5)).await);
            assert_eq!(steps.load(Ordering::SeqCst), before, "a step after the lease ended");
        }
    }

    #[tokio::test]
    async fn a_lease_with_nothing_under_it_ends_at_once() {
        assert!(Lease::default().end(Duration::from_millis(1)).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_reports_work_that_does_not_end_in_time() {
        let lease = Lease::default();
        let (began, started) = tokio::sync::oneshot::channel();
        // A poll under way on another thread when the lease ends: it blocks that thread.
        let _handle = lease.spawn(async move {
            let _ = began.send(());
            std::thread::sleep(Duration::from_millis(500));
        });
        started.await.expect("the work began");
        assert!(!lease.end(Duration::from_millis(20)).await);
    }
}
