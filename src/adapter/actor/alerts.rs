//! Alerts inside the source-adapter actor (see `adapter::alert`): the actor is the one
//! writer of its bucket's objects and knows what is still buffered, so an alert on one of
//! its objects is decided here, in its mailbox order with the object's flush and deletion.
//!
//! Like a delete, an alert first waits for a barrier (an empty commit) so that the actor's
//! own submitted batches are readable: the flush that created the object, or an alert of the
//! same ID a moment ago (which must answer `duplicate`, not queue a second writeback). That
//! await is on this rare admin path only. This module owns no state of its own (the actor's
//! `unsynced_alerts` lets a delete that follows before the alert is readable remove it too).

use super::{AdapterState, Commit};
use crate::adapter::alert::{self, AlertError, Fired, NewAlert};
use crate::store::Batch;

/// An alert's answer: await `commit` (none for a duplicate, or when the registry committed
/// it itself) before answering, as for an ingest.
pub struct AlertAnswer {
    pub fired: Fired,
    pub commit: Option<Commit>,
}

impl AdapterState {
    pub(super) async fn alert(&mut self, new: NewAlert) -> Result<AlertAnswer, AlertError> {
        self.shared.store.commit(Batch::new()).await?;
        // Everything submitted before the barrier is readable now.
        self.unsynced_alerts.clear();
        let mut batch = Batch::new();
        let buffer = &self.buffer;
        let mut fired = alert::fire(
            &self.shared.store,
            &self.shared.bus,
            &self.bucket,
            new,
            |id| Ok(buffer.iter().find(|e| &e.object_id == id).cloned()),
            &mut batch,
        )?;
        if let (Some(why), Some(_)) = (&fired.record.writeback_skipped, &fired.event) {
            // Where an operator looks for writeback failures (the caller has it in its answer).
            let r = &fired.record;
            let at = crate::util::now_millis();
            self.stats.error(at, format!("writeback of alert {} on object {} skipped: {why}", r.alert_id, r.object_id));
            self.put_stats(&mut batch);
        }
        let commit = fired.event.take().map(|event| {
            let r = &fired.record;
            tracing::debug!(bucket_id = %r.bucket_id, object_id = %r.object_id, alert_id = %r.alert_id, "alert");
            self.unsynced_alerts.push((r.object_id.clone(), alert::key(&r.bucket_id, &r.object_id, &r.alert_id)));
            self.submit(batch, vec![event])
        });
        Ok(AlertAnswer { fired, commit })
    }
}
