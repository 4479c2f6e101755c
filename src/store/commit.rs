//! Group commit: many writers, one fsync.
//!
//! A flush costs the same whether it covers one batch or a thousand (and sled charges per
//! batch applied), so the committer drains every batch waiting in its queue, applies them as
//! one backend batch, flushes once, and only then answers each submitter. Under load the
//! queue fills while a flush is running, so groups grow exactly when it pays off; when idle
//! a lone batch is committed at once. Order of submission is order of application.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::{Backend, Batch, StoreError};

/// Most batches merged into one backend write.
const MAX_GROUP: usize = 512;

struct Request {
    batch: Batch,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::UnboundedSender<Request>,
}

impl Committer {
    pub(crate) fn start(backend: Arc<dyn Backend>) -> Committer {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(backend, rx));
        Committer { tx }
    }

    pub(crate) fn submit(&self, batch: Batch) -> Durable {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Request { batch, done }).is_err() {
            let (done, rx) = oneshot::channel();
            let _ = done.send(Err(StoreError::Closed));
            return Durable(rx);
        }
        Durable(rx)
    }
}

/// Resolves when a submitted batch is on disk (or failed to get there).
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

async fn run(backend: Arc<dyn Backend>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut group: Vec<Request> = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = rx.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let mut merged = Batch::new();
        let mut waiters = Vec::with_capacity(group.len());
        for r in group.drain(..) {
            merged.extend(r.batch);
            waiters.push(r.done);
        }
        let result = if merged.is_empty() {
            // Still flush: an empty batch is a barrier ("everything before me is durable").
            backend.flush().await
        } else {
            match backend.apply(&merged) {
                Ok(()) => backend.flush().await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit failed");
        }
        crate::metrics::store_commit(waiters.len(), started.elapsed(), result.is_ok());
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
    // All senders gone: make sure nothing applied is left unflushed.
    if let Err(e) = backend.flush().await {
        tracing::error!(error = %e, "final store flush failed");
    }
}
