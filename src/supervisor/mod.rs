//! The root of the supervision tree.
//!
//! ```text
//! supervisor
//! ├── bucket_registry      (catalog; parent of one source-adapter actor per bucket)
//! └── delivery_registry    (parent of one delivery actor per webhook)
//! ```
//!
//! ractor has no restart strategy of its own (its default stops the parent when a child
//! exits), so this actor re-spawns a failed child under the same name, counts the restart,
//! and logs it. Past [`MAX_RESTARTS`] restarts within [`RESTART_WINDOW`] (its children's
//! together: one budget) none is restarted again: the supervisor stops, which stops the
//! daemon with an error, rather than spinning on a persistent fault.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::adapter::BucketRegistry;
use crate::delivery::DeliveryRegistry;
use crate::state::Shared;

pub const MAX_RESTARTS: usize = 20;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);

pub struct Supervisor;

pub enum SupervisorMsg {}

pub struct SupervisorState {
    shared: Shared,
    restarts: RestartBudget,
}

/// A sliding-window restart budget: at most `max` restarts within `window` of the children
/// it is kept for (the root supervisor keeps one for both registries; the bucket registry one
/// per adapter); past that the fault is persistent and restarting again would only spin.
#[derive(Debug)]
pub struct RestartBudget {
    max: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    pub fn new(max: usize, window: Duration) -> RestartBudget {
        RestartBudget { max, window, recent: VecDeque::new() }
    }

    /// Records a restart; false when the budget is spent.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        while self.recent.front().is_some_and(|t| now.duration_since(*t) > self.window) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.recent.len() <= self.max
    }
}

/// The child and the reason of an exit (failure or stop); `None` for other events.
pub fn child_exit(event: SupervisionEvent) -> Option<(ActorCell, String)> {
    match event {
        SupervisionEvent::ActorFailed(cell, err) => Some((cell, err.to_string())),
        SupervisionEvent::ActorTerminated(cell, _, reason) => Some((cell, reason.unwrap_or_else(|| "stopped".into()))),
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
enum Child {
    BucketRegistry,
    DeliveryRegistry,
}

impl Child {
    fn kind(&self) -> &'static str {
        match self {
            Child::BucketRegistry => "bucket_registry",
            Child::DeliveryRegistry => "delivery_registry",
        }
    }
}

async fn spawn_child(
    child: Child,
    myself: &ActorRef<SupervisorMsg>,
    shared: &Shared,
) -> Result<ActorCell, ActorProcessingErr> {
    let cell = match child {
        Child::BucketRegistry => {
            let (r, _) = Actor::spawn_linked(
                Some(shared.names.bucket_registry()),
                BucketRegistry,
                shared.clone(),
                myself.get_cell(),
            )
            .await?;
            r.get_cell()
        }
        Child::DeliveryRegistry => {
            let (r, _) = Actor::spawn_linked(
                Some(shared.names.delivery_registry()),
                DeliveryRegistry,
                shared.clone(),
                myself.get_cell(),
            )
            .await?;
            r.get_cell()
        }
    };
    Ok(cell)
}

impl SupervisorState {
    fn child_of(&self, cell: &ActorCell) -> Option<Child> {
        let name = cell.get_name()?;
        if name == self.shared.names.bucket_registry() {
            Some(Child::BucketRegistry)
        } else if name == self.shared.names.delivery_registry() {
            Some(Child::DeliveryRegistry)
        } else {
            None
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Shared;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, shared: Shared) -> Result<Self::State, ActorProcessingErr> {
        spawn_child(Child::BucketRegistry, &myself, &shared).await?;
        spawn_child(Child::DeliveryRegistry, &myself, &shared).await?;
        Ok(SupervisorState { shared, restarts: RestartBudget::new(MAX_RESTARTS, RESTART_WINDOW) })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, reason)) = child_exit(event) else { return Ok(()) };
        let Some(child) = state.child_of(&cell) else { return Ok(()) };
        if !state.restarts.allow() {
            tracing::error!(actor = child.kind(), %reason, "restart budget exhausted; stopping the supervision tree");
            myself.stop(Some(format!("{} failed too often", child.kind())));
            return Ok(());
        }
        tracing::warn!(actor = child.kind(), %reason, "child actor exited; restarting it");
        crate::metrics::actor_restart(child.kind());
        // The failed actor's name is unregistered by the time this event arrives.
        if let Err(e) = spawn_child(child, &myself, &state.shared).await {
            tracing::error!(actor = child.kind(), error = %e, "restart failed; stopping the supervision tree");
            myself.stop(Some("restart failed".into()));
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_budget_allows_max_then_refuses() {
        let mut b = RestartBudget::new(2, Duration::from_secs(60));
        assert!(b.allow());
        assert!(b.allow());
        assert!(!b.allow());
        let mut short = RestartBudget::new(1, Duration::from_millis(1));
        assert!(short.allow());
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.allow(), "old restarts leave the window");
    }
}
