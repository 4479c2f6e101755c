//! Group commit: many writers, one fsync.
//!
//! A flush costs about the same whether it covers one batch or a thousand (and sled charges
//! per batch applied), so the committer drains every batch waiting in its queue, applies them
//! as one backend batch, and answers each submitter only after a flush that started after
//! that apply. Under load the queue fills while a flush is running, so groups grow exactly
//! when it pays off; when idle a lone batch is committed at once. Order of submission is
//! order of application.
//!
//! One loop on its own thread: apply a group, flush, answer, repeat. It is deliberately not
//! pipelined: sled 0.34 writes (and syncs) its log buffer on every `apply_batch`, so the cost
//! is per *apply*, and the fewer, larger groups a serial loop collects (batches queue up
//! while a flush runs) beat applying small groups during the flush (measured: pipelining
//! doubled the applies and lost throughput). Batches submitted with
//! [`Committer::submit_unflushed`] ride along in the same groups and are answered right after
//! the apply; they reach the disk with that group's flush if it has durable batches, else
//! with the next one (or sled's own every 500 ms), and their writers accept losing them in
//! a crash.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Backend, Batch, Op, StoreError};

/// Most batches merged into one backend write.
const MAX_GROUP: usize = 512;

type Done = oneshot::Sender<Result<(), StoreError>>;

struct Request {
    batch: Batch,
    done: Done,
    /// Answer only after a flush (false: after the apply).
    durable: bool,
}

#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Request>,
    /// Set once a write failed: see `run`.
    poisoned: Arc<AtomicBool>,
}

impl Committer {
    /// Starts the commit loop on its own thread: sled's apply and flush block (log buffer
    /// writes and syncs), which on a runtime worker would stall every task queued behind it.
    pub(crate) fn start(backend: Arc<dyn Backend>) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        let poisoned = Arc::new(AtomicBool::new(false));
        let flag = poisoned.clone();
        let spawned = std::thread::Builder::new().name("hookline-commit".into()).spawn(move || run(backend, rx, flag));
        if let Err(e) = spawned {
            // Without the loop every submit fails with `Closed` (the receiver is gone).
            tracing::error!(error = %e, "start the store's commit thread");
        }
        Committer { tx, poisoned }
    }

    /// False once a write to the backend has failed (the store then refuses every write).
    pub(crate) fn healthy(&self) -> bool {
        !self.poisoned.load(Ordering::Relaxed)
    }

    pub(crate) fn submit(&self, batch: Batch) -> Durable {
        self.send(batch, true)
    }

    pub(crate) fn submit_unflushed(&self, batch: Batch) -> Durable {
        self.send(batch, false)
    }

    fn send(&self, batch: Batch, durable: bool) -> Durable {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(r)) = self.tx.send(Request { batch, done, durable }) {
            let _ = r.done.send(Err(StoreError::Closed));
        }
        Durable(rx)
    }
}

/// Resolves when a submitted batch is on disk (or failed to get there); for
/// [`crate::store::Store::submit_unflushed`], when it is applied.
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

/// The commit loop: one backend write and (when anyone needs it) one flush per group.
///
/// After a failed apply or flush the loop refuses every later write with that error: a
/// caller that learned "earlier writes are durable" from a later empty batch (a duplicate's
/// answer, an actor's reload barrier) must never be told so when an earlier write was lost.
/// A failing disk needs an operator; `/readyz` reports it.
fn run(backend: Arc<dyn Backend>, mut rx: mpsc::UnboundedReceiver<Request>, poisoned: Arc<AtomicBool>) {
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
    let mut failure: Option<StoreError> = None;
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        if let Some(e) = &failure {
            for r in group.drain(..) {
                let _ = r.done.send(Err(e.clone()));
            }
            continue;
        }
        let started = Instant::now();
        let many = group.len() > 1;
        let mut merged = Batch::new();
        let mut durable = Vec::with_capacity(group.len());
        let mut applied = Vec::new();
        for r in group.drain(..) {
            merged.extend(r.batch);
            if r.durable {
                durable.push(r.done);
            } else {
                applied.push(r.done);
            }
        }
        if many {
            drop_overwritten(&mut merged);
        }
        let result = if merged.is_empty() { Ok(()) } else { backend.apply(&merged) };
        drop(merged);
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit failed; refusing further writes");
            failure =
                Some(StoreError::Io(format!("an earlier write failed ({e}); check the disk and restart hookline")));
            poisoned.store(true, Ordering::Relaxed);
        }
        for w in applied {
            let _ = w.send(result.clone());
        }
        if durable.is_empty() {
            continue;
        }
        // Flush even after an empty apply: an empty batch is a barrier ("everything
        // submitted before me is durable").
        let result = result.and_then(|()| {
            let flush_started = Instant::now();
            let r = futures::executor::block_on(backend.flush());
            crate::metrics::store_flush(flush_started.elapsed());
            r
        });
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit flush failed; refusing further writes");
            if failure.is_none() {
                failure =
                    Some(StoreError::Io(format!("an earlier flush failed ({e}); check the disk and restart hookline")));
                poisoned.store(true, Ordering::Relaxed);
            }
        }
        crate::metrics::store_commit(durable.len(), started.elapsed(), result.is_ok());
        for w in durable {
            let _ = w.send(result.clone());
        }
    }
    // All senders gone: make sure nothing applied is left unflushed.
    if let Err(e) = futures::executor::block_on(backend.flush()) {
        tracing::error!(error = %e, "final store flush failed");
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
