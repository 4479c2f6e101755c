//! Group commit: many writers, one fsync.
//!
//! A flush costs about the same whether it covers one batch or a thousand (and sled charges
//! per batch applied), so the committer drains every batch waiting in its queue, applies them
//! as one backend batch, and answers each submitter only after a flush that started after
//! that apply. Under load the queue fills while a flush is running, so groups grow exactly
//! when it pays off; when idle a lone batch is committed at once. Order of submission is
//! order of application.
//!
//! Two stages, pipelined: the applier applies group N+1 while the flusher's fsync for group
//! N runs (one fsync then covers every group applied before it started). Batches submitted
//! with [`Committer::submit_unflushed`] are answered as soon as they are applied: they reach
//! the disk with the next flush (anyone's, or sled's own every 500 ms) and their writers
//! accept losing them in a crash.

use std::future::Future;
use std::pin::Pin;
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

/// Applied batches waiting for a flush, and when the first of them started applying.
struct Pending {
    waiters: Vec<Done>,
    started: Instant,
}

#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Committer {
    /// Starts the applier (its own thread) and the flusher (a task). Must be called inside a
    /// tokio runtime.
    pub(crate) fn start(backend: Arc<dyn Backend>) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel::<Pending>();
        tokio::spawn(flush_loop(backend.clone(), flush_rx));
        // sled's apply can block (waiting for log buffer space while a flush runs): on a
        // runtime worker that would stall every task queued behind it, so it gets a thread.
        let spawned =
            std::thread::Builder::new().name("hookline-commit".into()).spawn(move || apply_loop(backend, rx, flush_tx));
        if let Err(e) = spawned {
            // Without an applier every submit fails with `Closed` (the receiver is gone).
            tracing::error!(error = %e, "start the store's commit thread");
        }
        Committer { tx }
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

/// The applier: one backend write per group, then hands the durable waiters to the flusher.
fn apply_loop(
    backend: Arc<dyn Backend>,
    mut rx: mpsc::UnboundedReceiver<Request>,
    flush_tx: mpsc::UnboundedSender<Pending>,
) {
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
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
        match result {
            Ok(()) => {
                for w in applied {
                    let _ = w.send(Ok(()));
                }
                // An empty batch still waits for a flush: it is a barrier ("everything
                // submitted before me is durable").
                if !durable.is_empty() && flush_tx.send(Pending { waiters: durable, started }).is_err() {
                    tracing::error!("store flusher is gone");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                crate::metrics::store_commit(durable.len(), started.elapsed(), false);
                for w in applied.into_iter().chain(durable) {
                    let _ = w.send(Err(e.clone()));
                }
            }
        }
    }
    // All senders gone: dropping `flush_tx` lets the flusher make a final flush and end.
}

/// The flusher: one fsync for everything applied before it starts, then answers.
async fn flush_loop(backend: Arc<dyn Backend>, mut rx: mpsc::UnboundedReceiver<Pending>) {
    while let Some(Pending { mut waiters, started }) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            waiters.extend(more.waiters);
        }
        let flush_started = Instant::now();
        let result = backend.flush().await;
        crate::metrics::store_flush(flush_started.elapsed());
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit flush failed");
        }
        crate::metrics::store_commit(waiters.len(), started.elapsed(), result.is_ok());
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
    if let Err(e) = backend.flush().await {
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
