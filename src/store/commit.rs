//! Group commit: many writers, one log write and one fsync.
//!
//! A sync costs about the same whether it covers one batch or a thousand, so the log thread
//! drains every batch waiting in its queue, writes them as one record of the write-ahead log
//! ([`super::wal`]) and syncs it. Under load the queue fills while a sync is running, so
//! groups grow exactly when it pays off; when idle a lone batch is committed at once.
//!
//! A durable group then goes to the apply thread, which writes it into the backend (sled, in
//! memory) and only then answers its submitters. So a write is visible to readers only once
//! it is on disk, and applying group N overlaps with syncing group N+1. Order of submission
//! is order of logging and of application; an empty batch is a barrier ("everything
//! submitted before me is durable and applied").
//!
//! Two helper threads keep the log short and fast: the prep thread zero-fills the next
//! segment before it is needed, and the checkpoint thread flushes the backend once a segment
//! is fully applied and then deletes it.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as sync_mpsc, Arc};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::wal::{self, Segment};
use super::{Backend, Batch, Op, StoreError};

/// Most batches merged into one log record.
const MAX_GROUP: usize = 512;

type Done = oneshot::Sender<Result<(), StoreError>>;

struct Request {
    batch: Batch,
    done: Done,
}

/// A logged group on its way to the backend.
struct Logged {
    batch: Batch,
    done: Vec<Done>,
    /// The segment holding it (`None`: nothing was logged, a barrier or a refused group).
    segment: Option<u64>,
    /// Set when logging failed: answer this instead of applying.
    failed: Option<StoreError>,
    started: Instant,
}

#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Request>,
    /// Set once a write failed: see `log_loop`.
    poisoned: Arc<AtomicBool>,
}

impl Committer {
    /// Starts the log, apply, prep and checkpoint threads. `next_segment` is the first free
    /// segment number in `wal_dir` (see [`wal::recover`]). Blocking file and sled calls
    /// happen on these threads, never on a runtime worker.
    pub(crate) fn start(
        backend: Arc<dyn Backend>,
        wal_dir: PathBuf,
        next_segment: u64,
    ) -> Result<Committer, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let poisoned = Arc::new(AtomicBool::new(false));
        // Rendezvous: the prep thread holds at most one finished spare, waiting to hand it over.
        let (spare_tx, spare_rx) = sync_mpsc::sync_channel::<std::io::Result<Segment>>(0);
        let (apply_tx, apply_rx) = sync_mpsc::channel::<Logged>();
        let (checkpoint_tx, checkpoint_rx) = sync_mpsc::channel::<u64>();
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
        let (b, flag) = (backend, poisoned.clone());
        spawn("hookline-apply", Box::new(move || apply_loop(b, apply_rx, checkpoint_tx, flag)))?;
        let flag = poisoned.clone();
        spawn("hookline-commit", Box::new(move || log_loop(rx, spare_rx, apply_tx, flag)))?;
        Ok(Committer { tx, poisoned })
    }

    /// False once a write has failed (the store then refuses every write).
    pub(crate) fn healthy(&self) -> bool {
        !self.poisoned.load(Ordering::Relaxed)
    }

    pub(crate) fn submit(&self, batch: Batch) -> Durable {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(r)) = self.tx.send(Request { batch, done }) {
            let _ = r.done.send(Err(StoreError::Closed));
        }
        Durable(rx)
    }
}

/// Resolves when a submitted batch is on disk and applied (or failed to get there).
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
    StoreError::Io(format!("an earlier write failed ({e}); check the disk and restart hookline"))
}

/// The log loop: one record and one sync per group, then on to the apply thread.
///
/// After a failed write the loop refuses every later write with that error: a caller that
/// learned "earlier writes are durable" from a later empty batch (a duplicate's answer, an
/// actor's reload barrier) must never be told so when an earlier write was lost. A failing
/// disk needs an operator; `/readyz` reports it.
fn log_loop(
    mut rx: mpsc::UnboundedReceiver<Request>,
    spares: sync_mpsc::Receiver<std::io::Result<Segment>>,
    apply: sync_mpsc::Sender<Logged>,
    poisoned: Arc<AtomicBool>,
) {
    let _guard = PoisonOnPanic(poisoned.clone(), "log");
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
    let mut failure: Option<StoreError> = None;
    let mut segment: Option<Segment> = None;
    let mut record = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let started = Instant::now();
        if failure.is_none() && poisoned.load(Ordering::Relaxed) {
            // Another store thread failed (an apply, a checkpoint): log nothing more, or a
            // write refused to its client would come back at the next start's replay.
            failure = Some(StoreError::Io(
                "an earlier store operation failed; check the disk and the log, then restart hookline".into(),
            ));
        }
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
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
        let mut logged = Logged { batch: Batch::new(), done, segment: None, failed: failure.clone(), started };
        if failure.is_none() && !merged.is_empty() {
            let logged_to = wal::record(&merged, &mut record).and_then(|()| {
                let synced = Instant::now();
                let no = append(&mut segment, &spares, &record)?;
                crate::metrics::store_flush(synced.elapsed());
                Ok(no)
            });
            match logged_to {
                Ok(no) => {
                    logged.batch = merged;
                    logged.segment = Some(no);
                }
                Err(e) => {
                    let e = poison(&poisoned, "write-ahead log write", &e);
                    failure = Some(e.clone());
                    logged.failed = Some(e);
                }
            }
        }
        if let Err(sync_mpsc::SendError(l)) = apply.send(logged) {
            let e = poison(&poisoned, "hand-off to the apply thread", &"the apply thread is gone");
            failure = Some(e.clone());
            for d in l.done {
                let _ = d.send(Err(e.clone()));
            }
        }
    }
}

/// Appends one record to the current segment, moving to a fresh one when it is full.
/// Returns the number of the segment that holds it.
fn append(
    segment: &mut Option<Segment>,
    spares: &sync_mpsc::Receiver<std::io::Result<Segment>>,
    record: &[u8],
) -> std::io::Result<u64> {
    if !segment.as_ref().is_some_and(|s| s.fits(record.len())) {
        let mut next = spares.recv().map_err(|_| std::io::Error::other("log segment preparation stopped"))??;
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

/// Keeps one zero-filled segment ready for the log loop (numbers ascending from `next`).
fn prep_loop(dir: PathBuf, mut next: u64, spares: sync_mpsc::SyncSender<std::io::Result<Segment>>) {
    loop {
        let seg = Segment::create(&dir, next, wal::SEGMENT_BYTES);
        if let Err(e) = &seg {
            tracing::error!(error = %e, "prepare a write-ahead log segment");
        }
        if spares.send(seg).is_err() {
            return; // the log loop is gone; a spare left behind replays as empty
        }
        next += 1;
    }
}

/// Applies logged groups to the backend in order and answers their submitters.
fn apply_loop(
    backend: Arc<dyn Backend>,
    rx: sync_mpsc::Receiver<Logged>,
    checkpoint: sync_mpsc::Sender<u64>,
    poisoned: Arc<AtomicBool>,
) {
    let _guard = PoisonOnPanic(poisoned.clone(), "apply");
    let mut failure: Option<StoreError> = None;
    let mut current: Option<u64> = None;
    while let Ok(logged) = rx.recv() {
        let n = logged.done.len();
        let result = match (logged.failed, &failure) {
            (Some(e), _) => Err(e),
            (None, Some(e)) => Err(e.clone()),
            (None, None) if logged.batch.is_empty() => Ok(()),
            (None, None) => backend.apply(&logged.batch).map_err(|e| {
                let e = poison(&poisoned, "store apply", &e);
                failure = Some(e.clone());
                e
            }),
        };
        crate::metrics::store_commit(n, logged.started.elapsed(), result.is_ok());
        for d in logged.done {
            let _ = d.send(result.clone());
        }
        if let Some(no) = logged.segment {
            if let Some(prev) = current.filter(|p| *p < no) {
                let _ = checkpoint.send(prev);
            }
            current = Some(no);
        }
    }
    // The log loop is gone (shutdown): checkpoint the segment in use too.
    if let Some(no) = current.filter(|_| failure.is_none()) {
        let _ = checkpoint.send(no);
    }
}

/// Flushes the backend once a segment is fully applied, then deletes the segments it covers.
fn checkpoint_loop(backend: Arc<dyn Backend>, dir: PathBuf, rx: sync_mpsc::Receiver<u64>, poisoned: Arc<AtomicBool>) {
    let _guard = PoisonOnPanic(poisoned.clone(), "checkpoint");
    while let Ok(mut through) = rx.recv() {
        // Coalesce: one flush covers every segment finished meanwhile.
        while let Ok(n) = rx.try_recv() {
            through = through.max(n);
        }
        if poisoned.load(Ordering::Relaxed) {
            continue; // keep the log: a restart replays it
        }
        let started = Instant::now();
        match futures::executor::block_on(backend.flush()) {
            Ok(()) => {
                crate::metrics::store_checkpoint(started.elapsed());
                if let Err(e) = wal::remove_through(&dir, through) {
                    tracing::warn!(error = %e, "remove checkpointed log segments (they replay harmlessly)");
                }
            }
            // After a failed flush the backend may have dropped the pages it could not write,
            // so no later flush may vouch for them: keep the whole log, refuse writes, and let
            // an operator restart (the replay restores everything acknowledged).
            Err(e) => drop(poison(&poisoned, "checkpoint flush (the log is kept for replay)", &e)),
        }
    }
}

/// Within one atomic write only the last operation on a key matters: drop the earlier ones
/// (e.g. a bucket's counters, rewritten by every ingest of the group).
fn drop_overwritten(batch: &mut Batch) {
    let keep: Vec<bool> = {
        let mut seen = std::collections::HashSet::with_capacity(batch.ops.len());
        batch
            .ops
            .iter()
            .rev()
            .map(|op| {
                let key = match op {
                    Op::Put(k, _) | Op::Delete(k) => k.as_slice(),
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
