//! The supervisor of one generation of shards: it hears its shards end.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{Failure, Shared};
use crate::ids::ShardId;

/// The shard supervisor takes no messages; it only hears its shards end.
pub enum SupervisorMsg {}

/// The supervisor of one generation of shards: a shard that panics or
/// stops while the ledger is not stopping fails the generation, which wakes
/// the ledger's owner to rebuild the shards from durable state.
pub struct ShardSupervisor;

/// The supervisor's state.
pub struct SupervisorState {
    shared: Arc<Shared>,
    /// Actor ids of the shards, in shard order (filled as they start).
    shards: Arc<std::sync::Mutex<Vec<ractor::ActorId>>>,
}

impl Actor for ShardSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (Arc<Shared>, Arc<std::sync::Mutex<Vec<ractor::ActorId>>>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (shared, shards): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState { shared, shards })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: ractor::SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match &event {
            ractor::SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            ractor::SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.clone().unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if state.shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let id = cell.get_id();
        let position = state.shards.lock().ok().and_then(|ids| ids.iter().position(|s| *s == id));
        let shard = ShardId(position.and_then(|p| u16::try_from(p).ok()).unwrap_or(u16::MAX));
        tracing::error!(shard = shard.0, %reason, "shard actor ended");
        state.shared.fail(Failure::ShardCrashed(shard));
        Ok(())
    }
}
