//! The retry of a writeback job (`POST …/writebacks/{writeback_id}/retry`: a dead one
//! re-queued, a pending one sent now) inside the source-adapter actor, which owns its
//! bucket's jobs while it runs (its worker sends them; see `writeback/operator.rs`). Like an
//! alert, it first waits for a barrier so that the worker's latest outcomes are readable;
//! that await is on this rare admin path only.

use super::{AdapterState, Commit};
use crate::adapter::writeback::operator::{self, RequeueError, WritebackId};
use crate::adapter::writeback::Job;
use crate::store::Batch;

/// A re-queued job: await `commit` (none when the registry committed it itself) before
/// answering, as for an ingest.
pub struct Requeued {
    pub job: Job,
    pub commit: Option<Commit>,
}

impl AdapterState {
    pub(super) async fn requeue_writeback(&mut self, id: &WritebackId) -> Result<Requeued, RequeueError> {
        self.shared.store.commit(Batch::new()).await?;
        let now = crate::util::now_millis();
        // A pending one (its cause fixed, say a connection's URL) is sent now by the worker,
        // rather than at the next step of its schedule, which may be hours away.
        if let (Some(worker), Some((key, mut job))) =
            (&self.writeback, operator::pending(&self.shared.store, self.bucket_id(), id)?)
        {
            worker.hurry(key);
            job.next_attempt_ms = job.next_attempt_ms.min(now);
            tracing::info!(bucket_id = %self.bucket_id(), writeback_id = %id, "pending writeback to be sent now");
            return Ok(Requeued { job, commit: None });
        }
        let (batch, job) = operator::requeue(&self.shared.store, self.bucket_id(), &self.adapter, id, now)?;
        let commit = self.submit(batch, Vec::new());
        // Counted once submitted (the committer is FIFO: it lands unless the store fails),
        // not by the HTTP handler, whose caller may hang up before the answer.
        crate::metrics::writeback(self.adapter.adapter_type.as_str(), "requeued");
        tracing::info!(bucket_id = %self.bucket_id(), writeback_id = %id, object_id = %job.object_id, "writeback re-queued");
        Ok(Requeued { job, commit: Some(commit) })
    }
}
