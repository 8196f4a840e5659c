//! Which node owns which shard: each node decides alone, from the leases on
//! the journal stream, and the leases' conditions settle any race. Every
//! `check_every`, a node reads which nodes are live (their node lease is on
//! the stream) and who holds each shard, works out its share (the shard
//! count split evenly over the live nodes, ordered by id), takes free shards
//! while it holds fewer, and releases its highest shards while it holds more,
//! so a joining node gets its share by orderly handovers and the shards of a
//! node that died are taken once its leases expire.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use wallet_actors::ids::{NodeId, ShardId};

use crate::journal::lease::{self, Leased};
use crate::journal::writer::SHARDS_PER_NODE_MAX;
use crate::journal::{nats_error, JournalStream, LeaseError, NodeJournal, StreamError};

/// How a node places shards.
#[derive(Clone, Copy, Debug)]
pub struct PlacementOptions {
    /// Shards in the cluster; fixed for the life of the data.
    pub shard_count: u16,
    /// How often a node looks again.
    pub check_every: Duration,
}

/// How many of `shard_count` shards `me` should hold among the `live`
/// nodes: an even split, the first nodes by id taking one more each when it
/// does not divide. A node not among them (its lease is not visible yet)
/// counts itself in.
pub fn share(shard_count: u16, live: &BTreeSet<NodeId>, me: NodeId) -> usize {
    let mut live = live.clone();
    live.insert(me);
    let (count, rank) = (live.len(), live.iter().position(|node| *node == me).unwrap_or(0));
    let base = usize::from(shard_count) / count;
    // A node renews all its leases in one batch, which bounds its share.
    (base + usize::from(rank < usize::from(shard_count) % count)).min(SHARDS_PER_NODE_MAX)
}

/// The nodes whose lease is on the stream now (a subject ended by an
/// eviction, which never expires, is a dead node's).
pub async fn live_nodes(stream: &JournalStream) -> Result<BTreeSet<NodeId>, StreamError> {
    let prefix = "wallet.lease.node.";
    let mut subjects = stream.stream.info_with_subjects(format!("{prefix}*")).await.map_err(nats_error)?;
    let mut named = BTreeSet::new();
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.map_err(nats_error)?;
        if let Some(node) = subject.strip_prefix(prefix).and_then(|id| id.parse().ok()) {
            if count > 0 {
                named.insert(NodeId(node));
            }
        }
    }
    let mut live = BTreeSet::new();
    for node in named {
        if lease::holder(stream, Leased::Node(node)).await?.is_some() {
            live.insert(node);
        }
    }
    Ok(live)
}

/// Who holds each of the first `shard_count` shards (`None`: free).
pub async fn owners(stream: &JournalStream, shard_count: u16) -> Result<Vec<Option<NodeId>>, StreamError> {
    let mut owners = Vec::with_capacity(usize::from(shard_count));
    for shard in (0..shard_count).map(ShardId) {
        owners.push(lease::holder(stream, Leased::Shard(shard)).await?.map(|(holder, _)| holder.node));
    }
    Ok(owners)
}

/// What one look did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Moves {
    /// Shards taken.
    pub taken: Vec<ShardId>,
    /// Shards released.
    pub released: Vec<ShardId>,
}

/// Looks once: takes free shards up to this node's share, or releases the
/// extra ones. A shard another node took first is skipped.
pub async fn balance(
    stream: &JournalStream,
    journal: &NodeJournal,
    shard_count: u16,
) -> Result<Moves, StreamError> {
    let me = journal.holder().node;
    let target = share(shard_count, &live_nodes(stream).await?, me);
    let mut held: BTreeSet<ShardId> = journal.shards().into_iter().collect();
    let mut moves = Moves::default();
    while held.len() > target {
        let Some(highest) = held.pop_last() else { break };
        journal.release(highest).await;
        moves.released.push(highest);
    }
    if held.len() < target {
        for (index, owner) in owners(stream, shard_count).await?.into_iter().enumerate() {
            if held.len() >= target {
                break;
            }
            let shard = ShardId(index as u16);
            // Held by another node, or already ours; a shard held by an
            // earlier start of this node is taken back at once.
            if owner.is_some_and(|node| node != me) || held.contains(&shard) {
                continue;
            }
            match journal.take(shard).await {
                Ok(_) => {
                    held.insert(shard);
                    moves.taken.push(shard);
                }
                Err(LeaseError::Held { .. } | LeaseError::Changed { .. }) => {}
                Err(LeaseError::TooMany | LeaseError::Fenced | LeaseError::Stopped { .. }) => break,
                Err(LeaseError::Stream(error)) => return Err(error),
            }
        }
    }
    Ok(moves)
}

/// Balances every `check_every` until the node's journal stops (fenced, or
/// a write's outcome unknown: its shards are then for others to take once
/// their leases expire) or `stopped` fires.
pub fn spawn(
    stream: JournalStream,
    journal: NodeJournal,
    options: PlacementOptions,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !journal.stopped() {
            match balance(&stream, &journal, options.shard_count).await {
                Ok(moves) if moves != Moves::default() => {
                    tracing::info!(taken = ?moves.taken, released = ?moves.released, "shards moved");
                    metrics::counter!("wallet_shard_handovers_total", "direction" => "taken")
                        .increment(moves.taken.len() as u64);
                    metrics::counter!("wallet_shard_handovers_total", "direction" => "released")
                        .increment(moves.released.len() as u64);
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot place shards now"),
            }
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(options.check_every) => {}
            }
        }
    })
}
