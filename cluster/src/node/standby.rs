//! A standby's wait (`wallet node --standby`): before it starts its journal,
//! a standby waits until no other start of its node id runs and no other
//! node holds any shard, so it never takes some shards and then waits for
//! the rest (a live node that lost one shard's lease would never get it
//! back), never supersedes a running start of its own id, and never shows
//! as a live node while it waits.

use std::time::Duration;

use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::JournalError;

use crate::journal::lease::{self, Holder, LeaseError, Leased};
use crate::journal::{JournalStream, StreamError};
use crate::node::NodeError;
use wallet_storage::StorageError;

/// How often a standby reads the leases (while the active node lives,
/// three reads each time: its own node lease, the first shard's, and its
/// holder's node lease).
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Whether `node` may start now: its own lease is free (a start of it that
/// died has let it expire) and every shard is free, held by an earlier
/// start of `node` (which a later start takes back at once), or held by a
/// fenced start of another node (its node lease expired: it can write
/// nothing more, and its shard leases, living a second longer, need not be
/// waited out).
async fn free_for(stream: &JournalStream, node: NodeId, shard_count: u16) -> Result<bool, StreamError> {
    if lease::holder(stream, Leased::Node(node)).await?.is_some() {
        return Ok(false);
    }
    let mut fenced: Vec<Holder> = Vec::new();
    for shard in (0..shard_count).map(ShardId) {
        let Some((holder, _)) = lease::holder(stream, Leased::Shard(shard)).await? else { continue };
        if holder.node == node || fenced.contains(&holder) {
            continue;
        }
        if !lease::is_fenced(stream, holder).await? {
            return Ok(false);
        }
        fenced.push(holder);
    }
    Ok(true)
}

/// Returns once `node` may start; NATS errors meanwhile are waited out.
pub(super) async fn wait(stream: &JournalStream, node: NodeId, shard_count: u16) {
    let mut said = false;
    loop {
        match free_for(stream, node, shard_count).await {
            Ok(true) => return,
            Ok(false) if !said => {
                tracing::info!(
                    node = node.0,
                    "standing by: another start holds the shards or this node's id"
                );
                said = true;
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "standing by: cannot read the leases now"),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Whether a standby whose start failed stands by again rather than exit
/// (which would cost a standby at each failover): another standby, done
/// waiting at the same moment, took the shards first (shards are taken in
/// order from the first, so the one that took it takes them all); or NATS
/// was slow or away while it took leases, read the stream or wrote its first
/// records (a NATS cluster electing a stream's leader), so a take's or a
/// write's outcome is unknown: its leases expire, and the next wait counts
/// them as this node's own. A record that does not replay, a stream behind
/// the snapshot or a local disk that fails still ends the process.
pub(super) fn may_stand_by_again(error: &NodeError) -> bool {
    match error {
        NodeError::Lease(LeaseError::Stream(stream)) | NodeError::Stream(stream) => {
            matches!(stream, StreamError::Nats(_))
        }
        NodeError::Lease(
            LeaseError::Held { .. }
            | LeaseError::Changed { .. }
            | LeaseError::Fenced
            | LeaseError::Stopped { .. },
        ) => true,
        // A record the server cannot take fails the same way every time.
        NodeError::Journal(error) => {
            !matches!(error, JournalError::Io { kind: std::io::ErrorKind::InvalidData })
        }
        NodeError::Storage(StorageError::Journal(inner)) => {
            inner.downcast_ref::<NodeError>().is_some_and(may_stand_by_again)
        }
        _ => false,
    }
}
