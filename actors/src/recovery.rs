//! Rebuilding the ledger from its journal: records are applied in journal
//! order; commits whose legs a crash left unapplied are completed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ids::{CommitId, ShardId};
use crate::record::{Commit, Record};
use crate::registry::TransferRegistry;
use crate::shard::ShardState;

/// State rebuilt from storage, ready to start a [`crate::Ledger`].
pub struct Recovered {
    /// One state per shard.
    pub shards: Vec<ShardState>,
    /// Every transfer id seen.
    pub registry: Arc<TransferRegistry>,
    /// The next coordinated commit id to use.
    pub next_commit_id: u64,
}

/// Replays records into shard states.
pub struct Recovery {
    shard_count: u16,
    shards: Vec<ShardState>,
    registry: Arc<TransferRegistry>,
    open_commits: BTreeMap<CommitId, (Commit, BTreeSet<ShardId>)>,
    next_commit_id: u64,
    records: u64,
}

impl Recovery {
    /// An empty ledger of `shard_count` shards.
    pub fn new(shard_count: u16) -> Self {
        let shard_count = shard_count.max(1);
        Recovery {
            shard_count,
            shards: (0..shard_count).map(|i| ShardState::new(ShardId(i), shard_count)).collect(),
            registry: Arc::new(TransferRegistry::default()),
            open_commits: BTreeMap::new(),
            next_commit_id: 1,
            records: 0,
        }
    }

    /// Number of records applied.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Applies one record, in journal order.
    pub fn apply(&mut self, record: Record) {
        self.records += 1;
        match record {
            Record::Applied(applied) => {
                // An Applied record comes from one shard: route by its first event.
                if let Some(first) = applied.events.first() {
                    let shard = first.account_id.shard(self.shard_count);
                    self.shards[shard.0 as usize].replay_applied(&applied);
                }
                for transfer in applied.transfers {
                    self.registry.complete(transfer);
                }
                for resolution in applied.resolutions {
                    self.registry.resolve(resolution.pending_id, resolution.status);
                }
            }
            Record::Commit(commit) => {
                self.next_commit_id = self.next_commit_id.max(commit.commit_id.0 + 1);
                for transfer in &commit.transfers {
                    self.registry.complete(transfer.clone());
                }
                for resolution in &commit.resolutions {
                    self.registry.resolve(resolution.pending_id, resolution.status);
                }
                let mut waiting: BTreeSet<ShardId> =
                    commit.legs.iter().map(|leg| leg.account_id.shard(self.shard_count)).collect();
                if let Some(applied) = &commit.applied_by {
                    if let Some(shard) = self.shards.get_mut(applied.shard_id.0 as usize) {
                        shard.replay_commit(&commit, Some(&applied.sequences));
                    }
                    waiting.remove(&applied.shard_id);
                }
                if !waiting.is_empty() {
                    self.open_commits.insert(commit.commit_id, (commit, waiting));
                }
            }
            Record::CommitApplied { commit_id, shard_id, sequences } => {
                let Some((commit, waiting)) = self.open_commits.get_mut(&commit_id) else {
                    // The commit is older than the replay start: already in the snapshot.
                    return;
                };
                if let Some(shard) = self.shards.get_mut(shard_id.0 as usize) {
                    shard.replay_commit(commit, Some(&sequences));
                }
                waiting.remove(&shard_id);
                if waiting.is_empty() {
                    self.open_commits.remove(&commit_id);
                }
            }
        }
    }

    /// Completes commits a crash interrupted and returns the recovered state
    /// with the records that say so, to be journaled before serving.
    pub fn finish(mut self) -> (Recovered, Vec<Record>) {
        let mut completions = Vec::new();
        for (commit_id, (commit, waiting)) in std::mem::take(&mut self.open_commits) {
            for shard_id in waiting {
                let sequences = self.shards[shard_id.0 as usize].replay_commit(&commit, None);
                completions.push(Record::CommitApplied { commit_id, shard_id, sequences });
            }
        }
        let recovered =
            Recovered { shards: self.shards, registry: self.registry, next_commit_id: self.next_commit_id };
        (recovered, completions)
    }
}
