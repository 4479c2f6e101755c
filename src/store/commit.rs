//! Group commit: many writers, one log write and one fsync.
//!
//! A sync costs about the same whether it covers one batch or a thousand, so the log thread
//! drains every batch waiting in its queue, writes them as one record of the write-ahead log
//! ([`super::wal`]) and syncs it. Under load the queue fills while a sync is running, so
//! groups grow exactly when it pays off; when idle a lone batch is committed at once.
//!
//! A synced group goes into the overlay ([`super::overlay`]), where every read looks first,
//! and only then are its submitters answered: a write is visible to readers once it is on
//! disk, not before. Order of submission is order of logging and of visibility; an empty
//! batch is a barrier ("everything submitted before me is durable and visible").
//!
//! Three helper threads keep the rest off that path: the apply thread moves the overlay
//! into the backend every [`APPLY_EVERY`] (sooner when it grows large), the checkpoint thread
//! flushes the backend once a log segment is fully applied and then retires it (see
//! `wal::remove_through`), and the prep thread makes the next segment before it is needed
//! (see `wal::Segment::create`).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::overlay::Overlay;
use super::wal::{self, Segment};
use super::{Backend, Batch, Op, StoreError};

/// Most batches merged into one log record.
const MAX_GROUP: usize = 512;

/// The largest log-record buffer the log thread keeps between groups: one a rare large group
/// (a burst of big ingests, a full flush) grew is let go, not held for the process's life.
const RECORD_KEEP: usize = 4 << 20;

type Done = oneshot::Sender<Result<(), StoreError>>;

struct Request {
    batch: Batch,
    done: Done,
    /// [`Committer::close`]: answered once everything before it is in the backend and
    /// checkpointed, after which the store threads end.
    close: bool,
}

/// What the log loop tells the apply thread.
enum ToApply {
    /// The overlay grew large (or the log waits for room): apply now.
    Wake,
    /// Closing: apply everything, checkpoint everything, then answer.
    Close(Done),
}

/// What the apply thread tells the checkpoint thread.
enum ToCheckpoint {
    /// Every write of the log segments up to this one is in the backend.
    Through(u64),
    /// Closing: answer once the earlier checkpoints are done.
    Close(Done),
}

/// How often the apply thread moves the overlay into the backend. Longer keeps more
/// short-lived writes out of sled (a key rewritten within the interval reaches it once, a
/// new key deleted within it never: a time_window buffer entry flushed, an outbox event
/// fanned out) at the cost of a larger overlay for reads to merge, bounded by its size
/// ([`super::overlay::SOFT_BYTES`]) whatever the interval. 400 ms rather than 100: with
/// time_window batches of 1,000 flushing every 50 ms under load, a quarter of the buffer
/// entries outlived a 100 ms layer, one in sixteen outlive this one (measured: the apply
/// thread's CPU per time_window ingest a quarter lower, 2026-12-05).
const APPLY_EVERY: Duration = Duration::from_millis(400);

#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Request>,
    /// Set once a write failed: see `log_loop`.
    poisoned: Arc<AtomicBool>,
    /// The number of the segment the log last wrote to (`u64::MAX` before the first write).
    writing: Arc<AtomicU64>,
}

impl Committer {
    /// Starts the log, apply, prep and checkpoint threads. `next_segment` is the first free
    /// segment number in `wal_dir` (see [`wal::recover`]). Blocking file and sled calls
    /// happen on these threads, never on a runtime worker.
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        overlay: Arc<Overlay>,
        wal_dir: PathBuf,
        next_segment: u64,
    ) -> Result<Committer, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let poisoned = Arc::new(AtomicBool::new(false));
        // Rendezvous: the prep thread holds at most one finished spare, waiting to hand it over.
        let (spare_tx, spare_rx) = sync_mpsc::sync_channel::<Segment>(0);
        let (apply_tx, apply_rx) = sync_mpsc::channel::<ToApply>();
        let (checkpoint_tx, checkpoint_rx) = sync_mpsc::channel::<ToCheckpoint>();
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map(drop)
                .map_err(|e| StoreError::Io(format!("start the store's {name} thread: {e}")))
        };
        let dir = wal_dir.clone();
        spawn("hookline-walprep", Box::new(move || prep_loop(dir, next_segment, spare_tx)))?;
        let (b, flag) = (backend.clone(), poisoned.clone());
        spawn("hookline-ckpt", Box::new(move || checkpoint_loop(b, wal_dir, checkpoint_rx, flag)))?;
        let (b, o, flag) = (backend, overlay.clone(), poisoned.clone());
        spawn("hookline-apply", Box::new(move || apply_loop(b, o, apply_rx, checkpoint_tx, flag)))?;
        let (flag, writing) = (poisoned.clone(), Arc::new(AtomicU64::new(u64::MAX)));
        let at = writing.clone();
        spawn("hookline-commit", Box::new(move || log_loop(rx, spare_rx, overlay, apply_tx, flag, at)))?;
        Ok(Committer { tx, poisoned, writing })
    }

    /// The segment the log last wrote to, if any: while the store runs, no one but an
    /// operator's hand deletes it (checkpoints delete only segments before it), so its file
    /// gone means writes that can no longer be replayed (see `Store::log_lost`).
    pub(crate) fn writing_segment(&self) -> Option<u64> {
        Some(self.writing.load(Ordering::Relaxed)).filter(|n| *n != u64::MAX)
    }

    /// False once a write has failed (the store then refuses every write), and once the
    /// store is closed (its log thread gone: every write would fail with `Closed`).
    pub(crate) fn healthy(&self) -> bool {
        !self.poisoned.load(Ordering::Relaxed) && !self.tx.is_closed()
    }

    pub(crate) fn submit(&self, batch: Batch) -> Durable {
        self.send(batch, false)
    }

    /// Ends the store: everything submitted before is logged, moved into the backend and
    /// checkpointed (so the next start replays nothing), then the store threads end and
    /// every later write fails with `Closed`.
    pub(crate) fn close(&self) -> Durable {
        self.send(Batch::new(), true)
    }

    fn send(&self, batch: Batch, close: bool) -> Durable {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(r)) = self.tx.send(Request { batch, done, close }) {
            let _ = r.done.send(Err(StoreError::Closed));
        }
        Durable(rx)
    }
}

/// Resolves when a submitted batch is on disk and visible to reads (or failed to get there).
pub struct Durable(oneshot::Receiver<Result<(), StoreError>>);

impl Future for Durable {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.0).poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(_)) => Poll::Ready(Err(StoreError::Closed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Poisons the store if its thread unwinds: a dead log, apply or checkpoint thread must
/// show in `/readyz` and stop further writes, not fail silently.
struct PoisonOnPanic(Arc<AtomicBool>, &'static str);

impl Drop for PoisonOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(thread = self.1, "store thread panicked; refusing further writes");
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

fn poison(flag: &AtomicBool, what: &str, e: &dyn std::fmt::Display) -> StoreError {
    tracing::error!(error = %e, "{what} failed; refusing further writes");
    flag.store(true, Ordering::Relaxed);
    StoreError::Failed(format!("a write failed ({e}); check the disk and restart hookline"))
}

/// The error of every write after another store thread (apply, checkpoint) failed.
fn earlier_failure() -> StoreError {
    StoreError::Failed("an earlier store operation failed; check the disk and the log, then restart hookline".into())
}

/// The log loop: one record and one sync per group, then into the overlay and answered.
///
/// After a failed write the loop refuses every later write with that error: a caller that
/// learned "earlier writes are durable" from a later empty batch (a duplicate's answer, an
/// actor's reload barrier) must never be told so when an earlier write was lost. A failing
/// disk needs an operator: `/readyz` reports it, and the daemon stops (see `app.rs`) for its
/// service manager to start it again.
fn log_loop(
    mut rx: mpsc::UnboundedReceiver<Request>,
    spares: sync_mpsc::Receiver<Segment>,
    overlay: Arc<Overlay>,
    apply: sync_mpsc::Sender<ToApply>,
    poisoned: Arc<AtomicBool>,
    writing: Arc<AtomicU64>,
) {
    let _guard = PoisonOnPanic(poisoned.clone(), "log");
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
    let mut failure: Option<StoreError> = None;
    let mut segment: Option<Segment> = None;
    let mut record = Vec::new();
    let spin = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    while let Some(first) = next_request(&mut rx, spin) {
        let started = Instant::now();
        if failure.is_none() && poisoned.load(Ordering::Relaxed) {
            // Another store thread failed (an apply, a checkpoint): log nothing more, or a
            // write refused to its client would come back at the next start's replay.
            failure = Some(earlier_failure());
        }
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        // A close ends the group: whatever was queued after it is refused (dropped).
        let mut closing = None;
        if let Some(at) = group.iter().position(|r| r.close) {
            group.truncate(at + 1);
            closing = group.pop().map(|r| r.done);
        }
        let many = group.len() > 1;
        let mut merged = Batch::new();
        let mut done = Vec::with_capacity(group.len());
        for r in group.drain(..) {
            merged.extend(r.batch);
            done.push(r.done);
        }
        if many {
            drop_overwritten(&mut merged);
        }
        let mut result = failure.clone().map_or(Ok(()), Err);
        let writes = !merged.is_empty();
        if result.is_ok() && !merged.is_empty() {
            // Memory stays bounded when the backend falls behind the log: wait for room
            // (unless the apply thread failed: it will never make any).
            while overlay.full() && !poisoned.load(Ordering::Relaxed) {
                let _ = apply.send(ToApply::Wake);
                overlay.wait_applied(Duration::from_millis(10));
            }
            if overlay.full() {
                let e = earlier_failure();
                failure = Some(e.clone());
                result = Err(e);
            }
        }
        if result.is_ok() && !merged.is_empty() {
            let logged_to = wal::record(&merged, &mut record).and_then(|()| {
                let synced = Instant::now();
                let no = append(&mut segment, &spares, &record)?;
                crate::metrics::store_flush(synced.elapsed());
                Ok(no)
            });
            match logged_to {
                Ok(no) => {
                    writing.store(no, Ordering::Relaxed);
                    if overlay.insert(merged, no) {
                        let _ = apply.send(ToApply::Wake);
                    }
                }
                Err(e) => {
                    let e = poison(&poisoned, "write-ahead log write", &e);
                    failure = Some(e.clone());
                    result = Err(e);
                }
            }
        }
        if writes || result.is_err() {
            crate::metrics::store_commit(done.len(), started.elapsed(), result.is_ok());
        }
        for d in done {
            let _ = d.send(result.clone());
        }
        if record.capacity() > RECORD_KEEP {
            record = Vec::new();
        }
        if let Some(close) = closing {
            rx.close(); // `healthy()` turns false now, before the close is answered
            if let Err(sync_mpsc::SendError(ToApply::Close(close))) = apply.send(ToApply::Close(close)) {
                let _ = close.send(Err(StoreError::Closed));
            }
            return;
        }
    }
}

/// How long the log thread looks for the next request before it sleeps on the queue.
const SPIN: Duration = Duration::from_micros(50);

/// The next request, `None` once every sender is gone. Under load the next group's first
/// request usually arrives within microseconds of a sync: looking for it a little (yielding
/// the CPU meanwhile) spares both sides a futex sleep and wake-up. Measured, ingest
/// immediate: p50 latency 1.47–1.51 ms against 1.56–1.60 ms, 43–44 µs of CPU per request
/// against 45–47 µs, in five interleaved pairs (2026-12-04). Costs at most 50 µs of CPU
/// per group when idle. Not on a single CPU (or a quota of one): nothing could arrive while
/// this thread holds it.
fn next_request(rx: &mut mpsc::UnboundedReceiver<Request>, spin: bool) -> Option<Request> {
    if !spin {
        return rx.blocking_recv();
    }
    let until = Instant::now() + SPIN;
    loop {
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() < until => std::thread::yield_now(),
            Err(mpsc::error::TryRecvError::Empty) => return rx.blocking_recv(),
        }
    }
}

/// How long the log waits for a spare segment before it gives up (and fails the store):
/// the preparing thread retries meanwhile, so a moment without space costs a pause, not the
/// store.
const SPARE_WAIT: Duration = Duration::from_secs(10);

/// Appends one record to the current segment, moving to a fresh one when it is full.
/// Returns the number of the segment that holds it.
fn append(segment: &mut Option<Segment>, spares: &sync_mpsc::Receiver<Segment>, record: &[u8]) -> std::io::Result<u64> {
    if !segment.as_ref().is_some_and(|s| s.fits(record.len())) {
        let mut next = spares.recv_timeout(SPARE_WAIT).map_err(|e| match e {
            sync_mpsc::RecvTimeoutError::Timeout => std::io::Error::other(format!(
                "no write-ahead log segment could be prepared within {} s (is the disk full? see the earlier errors)",
                SPARE_WAIT.as_secs()
            )),
            sync_mpsc::RecvTimeoutError::Disconnected => std::io::Error::other("log segment preparation stopped"),
        })?;
        if !next.fits(record.len()) {
            // Larger than a whole segment: give it one of its own size, in place of the spare.
            let (no, dir) = (next.no, next.dir().to_path_buf());
            drop(next);
            next = Segment::create(&dir, no, wal::capacity_for(record.len()))?;
        }
        *segment = Some(next);
    }
    let seg = segment.as_mut().ok_or_else(|| std::io::Error::other("no log segment"))?;
    seg.append(record)?;
    Ok(seg.no)
}

/// Keeps one segment ready for the log loop (numbers ascending from `next`).
/// A failure to make one (a full disk) is retried, with a growing pause, until it succeeds:
/// it is handed nothing meanwhile, so a failure that passes costs the log nothing (an error
/// handed over would fail the store when it is taken, maybe hours later).
fn prep_loop(dir: PathBuf, mut next: u64, spares: sync_mpsc::SyncSender<Segment>) {
    let mut failures = 0u32;
    loop {
        match Segment::create(&dir, next, wal::SEGMENT_BYTES) {
            Ok(seg) => {
                if failures > 0 {
                    tracing::info!(segment = next, failures, "write-ahead log segment prepared after earlier failures");
                    failures = 0;
                }
                if spares.send(seg).is_err() {
                    return; // the log loop is gone; a spare left behind replays as empty
                }
                next += 1;
            }
            Err(_) if !dir.is_dir() => return, // the store's directory is gone: nobody to serve
            Err(e) => {
                // Said once, then every 64th try: a full disk can last a while. The number is
                // tried again (the next start would take a gap in the numbers for a lost one).
                if failures.is_multiple_of(64) {
                    tracing::error!(error = %e, segment = next, failures, "prepare a write-ahead log segment; retrying");
                }
                failures = failures.saturating_add(1);
                std::thread::sleep(Duration::from_millis(100).saturating_mul(failures.min(20)));
            }
        }
    }
}

/// Moves the overlay into the backend every [`APPLY_EVERY`], or when woken because it
/// grew large, and tells the checkpoint thread which log segments the backend now holds.
fn apply_loop(
    backend: Arc<dyn Backend>,
    overlay: Arc<Overlay>,
    wake: sync_mpsc::Receiver<ToApply>,
    checkpoint: sync_mpsc::Sender<ToCheckpoint>,
    poisoned: Arc<AtomicBool>,
) {
    let _guard = PoisonOnPanic(poisoned.clone(), "apply");
    // The highest segment with a write in the backend, and the highest checkpointed.
    let mut applied: Option<u64> = None;
    let mut covered: Option<u64> = None;
    let mut close: Option<Done> = None;
    loop {
        // The log loop gone (a close, or every store handle dropped): last round.
        let mut last_round = match wake.recv_timeout(APPLY_EVERY) {
            Ok(ToApply::Wake) | Err(sync_mpsc::RecvTimeoutError::Timeout) => false,
            Ok(ToApply::Close(done)) => {
                close = Some(done);
                true
            }
            Err(sync_mpsc::RecvTimeoutError::Disconnected) => true,
        };
        while let Ok(m) = wake.try_recv() {
            if let ToApply::Close(done) = m {
                close = Some(done);
                last_round = true;
            }
        }
        if poisoned.load(Ordering::Relaxed) {
            // Keep the log for the next start's replay; reads still see the overlay.
            if last_round {
                if let Some(done) = close {
                    let _ = done.send(Err(StoreError::Io("the store failed earlier; its log is kept".into())));
                }
                return;
            }
            continue;
        }
        if let Some(frozen) = overlay.freeze() {
            let started = Instant::now();
            if let Err(e) = Overlay::apply(&frozen, backend.as_ref()) {
                drop(poison(&poisoned, "store apply", &e));
                continue;
            }
            overlay.applied();
            crate::metrics::store_apply(started.elapsed());
            applied = applied.max(frozen.segment);
        }
        // Later layers may still hold writes of the newest applied segment, never of an
        // earlier one; at shutdown there are no later layers.
        let through = if last_round { applied } else { applied.and_then(|s| s.checked_sub(1)) };
        if let Some(t) = through.filter(|t| covered.is_none_or(|c| *t > c)) {
            covered = Some(t);
            let _ = checkpoint.send(ToCheckpoint::Through(t));
        }
        if last_round {
            if let Some(done) = close {
                if let Err(sync_mpsc::SendError(ToCheckpoint::Close(done))) = checkpoint.send(ToCheckpoint::Close(done))
                {
                    let _ = done.send(Err(StoreError::Closed));
                }
            }
            return;
        }
    }
}

/// Flushes the backend once a segment is fully applied, then retires the segments it covers.
fn checkpoint_loop(
    backend: Arc<dyn Backend>,
    dir: PathBuf,
    rx: sync_mpsc::Receiver<ToCheckpoint>,
    poisoned: Arc<AtomicBool>,
) {
    let _guard = PoisonOnPanic(poisoned.clone(), "checkpoint");
    let mut close = None;
    while let Ok(first) = rx.recv() {
        // Coalesce: one flush covers every segment finished meanwhile.
        let mut through = None;
        for m in std::iter::once(first).chain(rx.try_iter()) {
            match m {
                ToCheckpoint::Through(n) => through = through.max(Some(n)),
                ToCheckpoint::Close(done) => close = Some(done),
            }
        }
        if let Some(through) = through.filter(|_| !poisoned.load(Ordering::Relaxed)) {
            let started = Instant::now();
            // Once flushed, the log starts after `through`: a start-up that then misses one of
            // the later segments knows acknowledged writes are gone (see `wal::recover`).
            let flushed = backend
                .apply(&super::format::log_from_batch(through + 1))
                .and_then(|()| futures::executor::block_on(backend.flush()));
            match flushed {
                Ok(()) => {
                    crate::metrics::store_checkpoint(started.elapsed());
                    if let Err(e) = wal::remove_through(&dir, through) {
                        tracing::warn!(error = %e, "remove checkpointed log segments (they replay harmlessly)");
                    }
                }
                // After a failed flush the backend may have dropped the pages it could not
                // write, so no later flush may vouch for them: keep the whole log, refuse
                // writes, and let an operator restart (the replay restores everything
                // acknowledged).
                Err(e) => drop(poison(&poisoned, "checkpoint flush (the log is kept for replay)", &e)),
            }
        }
        if let Some(done) = close.take() {
            let result = if poisoned.load(Ordering::Relaxed) {
                Err(StoreError::Io("the store failed earlier; its log is kept for the next start".into()))
            } else {
                Ok(())
            };
            let _ = done.send(result);
            return;
        }
    }
}

/// Within one atomic write only the last operation on a key matters: drop the earlier ones
/// (e.g. a bucket's counters, rewritten by every ingest of the group). foldhash (seeded per
/// process) rather than std's SipHash: every key of a group is hashed here, on the log
/// thread, and the keys are mostly IDs hookline generated; SipHash's stronger resistance to
/// a hash flood would be paid for by every write.
fn drop_overwritten(batch: &mut Batch) {
    let keep: Vec<bool> = {
        let mut seen = foldhash::HashSet::with_capacity_and_hasher(batch.ops.len(), Default::default());
        batch
            .ops
            .iter()
            .rev()
            .map(|op| {
                let key = match op {
                    Op::Put(k, _) | Op::PutNew(k, _) | Op::Delete(k) => k.as_slice(),
                };
                seen.insert(key)
            })
            .collect()
    };
    if keep.iter().all(|k| *k) {
        return;
    }
    let mut keep = keep.into_iter().rev();
    batch.ops.retain(|_| keep.next().unwrap_or(true));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spare that cannot be made for a while (here its temporary name is taken by a
    /// directory; in life, a full disk) is retried, and the log is handed nothing until one
    /// is made: no error waits in the channel to fail the store later.
    #[test]
    fn a_spare_that_fails_for_a_while_is_retried_and_no_error_is_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = wal::segment_path(dir.path(), 7).with_extension("tmp");
        std::fs::create_dir(&blocker).unwrap();
        let (tx, rx) = sync_mpsc::sync_channel::<Segment>(0);
        let path = dir.path().to_path_buf();
        std::thread::spawn(move || prep_loop(path, 7, tx));
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "nothing while it fails");
        std::fs::remove_dir(&blocker).unwrap();
        let seg = rx.recv_timeout(Duration::from_secs(5)).expect("made once the cause is gone");
        assert_eq!(seg.no, 7, "the same number, tried again");
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).expect("and on from there").no, 8);
    }
}
