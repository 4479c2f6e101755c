//! The delivery registry actor: parent and supervisor of the per-webhook delivery actors.

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::state::Shared;

pub struct DeliveryRegistry;

pub enum DeliveryMsg {
    /// Fault injection for supervision tests (`/v1/debug/crash`).
    Crash,
}

pub struct DeliveryState {
    #[allow(dead_code)]
    shared: Shared,
}

impl Actor for DeliveryRegistry {
    type Msg = DeliveryMsg;
    type State = DeliveryState;
    type Arguments = Shared;

    async fn pre_start(&self, _myself: ActorRef<Self::Msg>, shared: Shared) -> Result<Self::State, ActorProcessingErr> {
        Ok(DeliveryState { shared })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DeliveryMsg::Crash => Err(ActorProcessingErr::from("crash requested through /v1/debug/crash")),
        }
    }
}
