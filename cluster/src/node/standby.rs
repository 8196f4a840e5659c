//! A standby's wait (`wallet node --standby`): before it starts its journal,
//! a standby waits until no other start of its node id runs and no other
//! node holds any shard, so it never takes some shards and then waits for
//! the rest (a live node that lost one shard's lease would never get it
//! back), never supersedes a running start of its own id, and never shows
//! as a live node while it waits.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::JournalError;

use crate::journal::fence::{self, Fence};
use crate::journal::lease::{self, Holder, LeaseError, LeaseState, Leased};
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
/// start of another node fenced for good ([`fence::fence`]: its node lease
/// is gone, and its shard leases, living a second longer, need not be
/// waited out). A node lease message the wait has seen stay the last one
/// for a whole node lease is evicted ([`Watched`]).
async fn free_for(
    stream: &JournalStream,
    node: NodeId,
    shard_count: u16,
    watched: &mut Watched,
) -> Result<bool, LeaseError> {
    if let Some((holder, sequence)) = lease::holder(stream, Leased::Node(node)).await? {
        if !evicted(stream, watched, holder, sequence).await? {
            return Ok(false);
        }
    }
    let mut fenced: Vec<Holder> = Vec::new();
    for shard in (0..shard_count).map(ShardId) {
        let LeaseState::Held { holder, sequence: shard_sequence } =
            lease::state(stream, Leased::Shard(shard)).await?
        else {
            continue;
        };
        if holder.node == node || fenced.contains(&holder) {
            continue;
        }
        let gone = match fence::fence(stream, holder, shard_sequence).await? {
            Fence::Fenced => true,
            Fence::Leasing { sequence } => evicted(stream, watched, holder, sequence).await?,
            Fence::Waiting => false,
        };
        if !gone {
            return Ok(false);
        }
        fenced.push(holder);
    }
    // Free shards are taken on the condition that their subjects are
    // empty, which an expiry on the leader alone may have made so: the
    // starts this wait watched (the node that served, most likely their
    // last holder) are fenced for good first.
    for (start, sequence) in watched.starts().filter(|(start, _)| start.node != node) {
        if fence::fence(stream, start, sequence).await? == Fence::Waiting {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Evicts the node lease message of `start` at `sequence` if the wait has
/// seen it stay the last one for a whole node lease; whether it is gone.
async fn evicted(
    stream: &JournalStream,
    watched: &mut Watched,
    start: Holder,
    sequence: u64,
) -> Result<bool, LeaseError> {
    if !watched.unrenewed_for(start, sequence, Instant::now(), stream.options.node_lease_ttl) {
        return Ok(false);
    }
    match fence::evict(stream, start, sequence).await {
        Ok(()) => Ok(true),
        // It renewed, or the server expired it meanwhile: read again.
        Err(LeaseError::Changed { .. }) => Ok(false),
        Err(error) => Err(error),
    }
}

/// The node lease messages a standby's wait has seen, each with when it
/// first saw it. A live start renews every `renew_every`, each renewal a new
/// message; one seen unchanged for a whole node lease, by this process's
/// own clock, was written at least that long ago: its start renewed
/// nothing for a node lease and may be evicted, whatever the clocks of
/// other machines say and however late the server's expiry runs.
#[derive(Debug, Default)]
pub(super) struct Watched {
    seen: HashMap<NodeId, (Holder, u64, Instant)>,
}

impl Watched {
    /// The starts seen, each with its last node lease message seen.
    fn starts(&self) -> impl Iterator<Item = (Holder, u64)> + '_ {
        self.seen.values().map(|&(start, sequence, _)| (start, sequence))
    }

    /// Whether `start`'s message at `sequence` was already its node's last
    /// when seen at least `ttl` before `now` (else it is noted as seen now).
    fn unrenewed_for(&mut self, start: Holder, sequence: u64, now: Instant, ttl: Duration) -> bool {
        match self.seen.get(&start.node) {
            Some(&(holder, seen_sequence, since)) if holder == start && seen_sequence == sequence => {
                now.saturating_duration_since(since) >= ttl
            }
            _ => {
                self.seen.insert(start.node, (start, sequence, now));
                false
            }
        }
    }
}

/// Returns once `node` may start; NATS errors meanwhile are waited out.
pub(super) async fn wait(stream: &JournalStream, node: NodeId, shard_count: u16) {
    let mut said = false;
    let mut watched = Watched::default();
    loop {
        match free_for(stream, node, shard_count, &mut watched).await {
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
/// waiting at the same moment, took the shards first (all in one batch, so
/// the loser took none); or NATS
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

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(2);

    fn start(node: u32, incarnation: u64) -> Holder {
        Holder { node: NodeId(node), incarnation }
    }

    #[test]
    fn a_node_lease_message_seen_unchanged_for_a_lease_is_unrenewed() {
        let mut watched = Watched::default();
        let at = Instant::now();
        assert!(!watched.unrenewed_for(start(1, 7), 10, at, TTL), "first seen now");
        assert!(!watched.unrenewed_for(start(1, 7), 10, at + TTL / 2, TTL));
        assert!(watched.unrenewed_for(start(1, 7), 10, at + TTL, TTL));
    }

    #[test]
    fn a_renewal_or_another_start_is_watched_afresh() {
        let mut watched = Watched::default();
        let at = Instant::now();
        assert!(!watched.unrenewed_for(start(1, 7), 10, at, TTL));
        // Renewed: a new message, seen from now on.
        assert!(!watched.unrenewed_for(start(1, 7), 11, at + TTL, TTL));
        assert!(!watched.unrenewed_for(start(1, 7), 11, at + TTL + TTL / 2, TTL));
        assert!(watched.unrenewed_for(start(1, 7), 11, at + TTL * 2, TTL));
        // Another start of the node (restarted), another node: apart.
        assert!(!watched.unrenewed_for(start(1, 8), 11, at + TTL * 3, TTL));
        assert!(!watched.unrenewed_for(start(2, 7), 11, at + TTL * 3, TTL));
        assert!(watched.unrenewed_for(start(2, 7), 11, at + TTL * 4, TTL));
    }
}
