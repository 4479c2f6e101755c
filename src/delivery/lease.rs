//! What outlives one incarnation of a webhook's delivery actor: its sends still in flight,
//! the outcomes they could not report to it, and the outcome writes it had not submitted.
//!
//! A worker that fails (or is killed when the registry restarts) leaves sends running on
//! their own tasks. Were its successor started at once, it would find those deliveries
//! pending in the store and send them again while the first sends were still out, and the
//! first ones' outcomes would go to an actor that is gone: a duplicate, and an attempt never
//! logged. So each worker runs under a [`Lease`]: its sends are tracked, and they leave their
//! outcomes in the lease (then nudge the worker to take them), so an outcome its actor did
//! not take is still there when it is gone, and so are the outcome writes its state held
//! when it went. The registry starts a successor only once the predecessor's state is gone
//! and its sends have finished (see `registry.rs`); the successor submits the writes before
//! it reloads its queue, then applies the outcomes as if its own sends had made them.
//!
//! This module owns the leases and nothing of a worker's state.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::channel::AttemptResult;
use crate::ids::{DeliveryId, WebhookId};
use crate::store::Batch;

/// The longest a successor waits for its predecessor's sends, past which it starts anyway
/// (a send still out then may go twice, as after a crash). Every send is bounded by its
/// channel's timeout (at most 300 s for one request), and an email or SMS attempt, one
/// request per recipient, starts none after `delivery.max_attempt_seconds` (at most 600 s)
/// once it reached someone, so this is reached only by a send that ignores its bounds or an
/// attempt whose recipients all fail slowly (each within its timeout, none the provider's
/// own failure, which ends the round).
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// A send's outcome, left for the worker to take.
pub struct Finished {
    pub delivery_id: DeliveryId,
    pub result: AttemptResult,
    pub at_ms: u64,
    pub duration: Duration,
}

/// What a worker leaves to its successor.
#[derive(Default)]
pub struct Left {
    pub writes: Batch,
    pub finished: Vec<Finished>,
}

/// One worker incarnation's lease (cheap to clone: shared).
#[derive(Clone, Default)]
pub struct Lease(Arc<Inner>);

#[derive(Default)]
struct Inner {
    sends: TaskTracker,
    /// Cancelled when the worker's state is dropped, however the worker ended.
    gone: CancellationToken,
    left: Mutex<Left>,
}

impl Lease {
    /// Runs a send under the lease.
    pub fn spawn<F>(&self, send: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.0.sends.spawn(send);
    }

    /// Leaves a send's outcome for the worker (or, were it gone, its successor); whether
    /// it is the first one waiting (the worker need be nudged only then).
    pub fn finished(&self, finished: Finished) -> bool {
        let mut left = self.left();
        left.finished.push(finished);
        left.finished.len() == 1
    }

    /// The outcomes left so far, taken out.
    pub fn take_finished(&self) -> Vec<Finished> {
        std::mem::take(&mut self.left().finished)
    }

    /// Called as the worker's state is dropped: keeps its unsubmitted outcome writes, and
    /// says it is gone.
    pub fn end(&self, writes: Batch) {
        self.left().writes.extend(writes);
        self.0.gone.cancel();
    }

    /// Whether a successor may start now: the worker is gone and no send of it is out.
    pub fn is_over(&self) -> bool {
        self.0.gone.is_cancelled() && self.0.sends.is_empty()
    }

    /// Waits (at most [`MAX_WAIT`]) until the lease [`is_over`](Lease::is_over); whether
    /// it is. The worker must be stopped or stopping: a live one would keep it waiting.
    pub async fn over(&self) -> bool {
        self.0.sends.close();
        let both = async {
            self.0.gone.cancelled().await;
            self.0.sends.wait().await;
        };
        let over = tokio::time::timeout(MAX_WAIT, both).await.is_ok();
        if !over {
            tracing::warn!("a delivery actor's sends outlasted the wait for them; starting its successor anyway");
        }
        over
    }

    /// Whether `other` is this same lease (not another worker's).
    pub fn is(&self, other: &Lease) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Whether the worker left anything for a successor (outcomes, writes).
    pub fn has_left(&self) -> bool {
        let left = self.left();
        !left.finished.is_empty() || !left.writes.is_empty()
    }

    /// What the worker left, taken out (for its successor).
    pub fn take_left(&self) -> Left {
        std::mem::take(&mut *self.left())
    }

    fn left(&self) -> std::sync::MutexGuard<'_, Left> {
        self.0.left.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The current lease of each webhook's worker (in `Shared`, so that it outlives a registry
/// that fails).
pub type Leases = crate::util::SharedMap<WebhookId, Lease>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lease_is_over_once_its_worker_is_gone_and_its_sends_ended() {
        let lease = Lease::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        lease.spawn(async move {
            let _ = rx.await;
        });
        assert!(!lease.is_over(), "worker alive, a send out");
        let mut writes = Batch::new();
        writes.put(crate::store::Keyspace::STATS, "k", &1);
        lease.end(writes);
        assert!(!lease.is_over(), "a send still out");
        let waiting = tokio::spawn({
            let lease = lease.clone();
            async move { assert!(lease.over().await) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let _ = tx.send(());
        waiting.await.unwrap();
        assert!(lease.is_over());
        let left = lease.take_left();
        assert_eq!(left.writes.len(), 1, "the unsubmitted writes are handed over");
        assert!(lease.take_left().writes.is_empty(), "once");
        assert!(lease.is(&lease.clone()) && !lease.is(&Lease::default()));
    }
}
