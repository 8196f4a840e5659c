//! How shards reach each other: through a [`ShardRouter`]. The embedded
//! node's is [`LocalRouter`], the shards' actor references; cluster mode
//! adds one over NATS.

use ractor::ActorRef;
use tokio::sync::oneshot;

use super::{Answer, Replies, ReplyTo, ShardMsg};
use crate::ids::ShardId;
use crate::ports::ShardRouter;
use crate::LedgerError;

/// The router of the embedded node: the shards' actor references, and the
/// answers this node waits for.
#[derive(Default)]
pub struct LocalRouter {
    shards: std::sync::OnceLock<Vec<ActorRef<ShardMsg>>>,
    replies: Replies,
}

impl LocalRouter {
    /// Sets the shards once they are spawned.
    pub fn set(&self, shards: Vec<ActorRef<ShardMsg>>) {
        let _ = self.shards.set(shards);
    }
}

impl ShardRouter for LocalRouter {
    fn send(&self, shard: ShardId, message: ShardMsg) -> Result<(), LedgerError> {
        let actor =
            self.shards.get().and_then(|s| s.get(shard.0 as usize)).ok_or(LedgerError::Unavailable)?;
        actor.cast(message).map_err(|_| LedgerError::Unavailable)
    }

    fn register(&self) -> Result<(ReplyTo, oneshot::Receiver<Answer>), LedgerError> {
        self.replies.register()
    }

    fn reply(&self, to: ReplyTo, answer: Answer) {
        self.replies.answer(to, answer);
    }

    fn cancel(&self, to: ReplyTo) {
        self.replies.cancel(to);
    }

    fn close_replies(&self) {
        self.replies.close();
    }
}
