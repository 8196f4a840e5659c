//! Rebuilding the ledger from its journal: records are applied in journal
//! order; commits whose legs a crash left unapplied are completed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::ids::{CommitId, ShardId};
use crate::ports::Stored;
use crate::record::{Commit, Record};
use crate::registry::TransferRegistry;
use crate::shard::{ReplayError, ShardState};

/// A commit that recovery could not complete: its legs would break a
/// guarantee of an account (the journal is wrong), or an account could not
/// be read back from the snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("completing commit {commit_id} on shard {}: {source}", shard_id.0)]
pub struct CompletionError {
    /// The commit.
    pub commit_id: CommitId,
    /// The shard whose legs it is.
    pub shard_id: ShardId,
    /// What went wrong.
    pub source: ReplayError,
}

/// State rebuilt from storage, ready to start a [`crate::Ledger`].
pub struct Recovered {
    /// One state per shard.
    pub shards: Vec<ShardState>,
    /// Every transfer id seen.
    pub registry: Arc<TransferRegistry>,
    /// The epoch of the commit ids this start gives: one more than any
    /// epoch the snapshot or the journal holds. Journaled before serving.
    pub epoch: u64,
    /// Risk decisions found in the journal (newer than the snapshot's), numbered.
    pub decisions: Vec<crate::risk::Decision>,
    /// The id the next durable decision gets.
    pub next_decision_id: u64,
    /// Where passivated accounts are read back from, if anywhere.
    pub account_source: Option<Arc<dyn crate::ports::AccountSource>>,
}

/// A commit some of whose shards had not applied their legs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OpenCommit {
    /// The commit record.
    pub commit: Commit,
    /// Shards yet to apply their legs.
    pub waiting: Vec<ShardId>,
}

/// Replays records into shard states.
pub struct Recovery {
    shard_count: u16,
    shards: Vec<ShardState>,
    registry: Arc<TransferRegistry>,
    open_commits: BTreeMap<CommitId, (Commit, BTreeSet<ShardId>)>,
    /// The largest epoch seen (snapshot, `Epoch` records, commit ids).
    last_epoch: u64,
    records: u64,
    decisions: Vec<crate::risk::Decision>,
    /// The id the next decision found gets.
    next_decision_id: u64,
    /// Decisions are numbered once the marker of this checkpoint is seen
    /// (those before it are in the snapshot); `None`: from the start.
    decisions_after_marker: Option<u64>,
    /// The segment of the checkpoint the snapshot comes from, if any.
    snapshot_marker: Option<u64>,
    /// Markers of later checkpoints, which did not write their meta.
    later_markers: usize,
    source: Option<Arc<dyn crate::ports::AccountSource>>,
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
            last_epoch: 0,
            records: 0,
            decisions: Vec::new(),
            next_decision_id: 1,
            decisions_after_marker: None,
            snapshot_marker: None,
            later_markers: 0,
            source: None,
        }
    }

    /// Starts from a snapshot: open holds, and commits whose legs some
    /// shards had not applied when it was taken. Accounts are read from the
    /// snapshot (`stored.accounts`) when first named, and transfers older
    /// than it from `stored.transfers`.
    pub fn from_snapshot(
        shard_count: u16,
        holds: impl IntoIterator<Item = crate::shard::Hold>,
        open_commits: Vec<OpenCommit>,
        last_epoch: u64,
        stored: &Stored,
    ) -> Self {
        let mut recovery = Recovery::new(shard_count);
        if let Some(transfers) = &stored.transfers {
            recovery.registry.set_index(transfers.clone());
        }
        if let Some(accounts) = &stored.accounts {
            recovery.set_account_source(accounts.clone());
        }
        let count = recovery.shard_count;
        for hold in holds {
            let shard = hold.debit_account_id.shard(count).0 as usize;
            recovery.shards[shard].load_hold(hold);
        }
        for open in open_commits {
            recovery.last_epoch = recovery.last_epoch.max(open.commit.commit_id.epoch);
            recovery
                .open_commits
                .insert(open.commit.commit_id, (open.commit, open.waiting.into_iter().collect()));
        }
        recovery.last_epoch = recovery.last_epoch.max(last_epoch);
        recovery
    }

    /// Numbers the decisions the journal holds the way the live ledger did:
    /// in journal order, from `next_id`, starting right after the marker of
    /// the checkpoint the snapshot comes from (`Record::Checkpoint` with
    /// `replay_from_segment == marker`), since decisions before it are in
    /// the snapshot; with no checkpoint yet (`None`), from the first record.
    pub fn number_decisions(&mut self, next_id: u64, marker: Option<u64>) {
        self.next_decision_id = next_id.max(1);
        self.decisions_after_marker = marker;
        self.snapshot_marker = marker;
    }

    /// Checkpoint markers found after the one the snapshot comes from:
    /// checkpoints a crash stopped between their marker and their meta.
    pub fn checkpoint_markers_after_snapshot(&self) -> usize {
        self.later_markers
    }

    fn keep_decisions(&mut self, decisions: &[crate::risk::Decision]) {
        if self.decisions_after_marker.is_some() {
            return;
        }
        for decision in decisions {
            self.decisions.push(crate::risk::Decision { id: self.next_decision_id, ..*decision });
            self.next_decision_id += 1;
        }
    }

    /// Commits some of whose shards have not applied their legs yet.
    pub fn open_commits(&self) -> Vec<OpenCommit> {
        self.open_commits
            .values()
            .map(|(commit, waiting)| OpenCommit {
                commit: commit.clone(),
                waiting: waiting.iter().copied().collect(),
            })
            .collect()
    }

    /// The largest epoch seen so far.
    pub fn last_epoch(&self) -> u64 {
        self.last_epoch
    }

    /// Accounts need not be loaded up front: each is read from `source`
    /// when a record or, later, a message names it.
    fn set_account_source(&mut self, source: Arc<dyn crate::ports::AccountSource>) {
        for shard in &mut self.shards {
            shard.set_source(source.clone());
        }
        self.source = Some(source);
    }

    /// Accounts read back from the source so far.
    pub fn activated(&self) -> u64 {
        self.shards.iter().map(|s| s.activated()).sum()
    }

    /// Number of records applied.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Applies one record, in journal order. Fails if an account it names
    /// cannot be read back, or if applying it would break a guarantee (the
    /// journal is wrong: opening stops, naming the record).
    pub fn apply(&mut self, record: Record) -> Result<(), ReplayError> {
        self.records += 1;
        match record {
            Record::Applied(applied) => {
                // An Applied record comes from one shard: route by its first event.
                if let Some(first) = applied.events.first() {
                    let shard = first.account_id.shard(self.shard_count);
                    self.shards[shard.0 as usize].replay_applied(&applied)?;
                }
                self.registry.record_durable(&applied.transfers, &applied.resolutions);
                self.keep_decisions(&applied.decisions);
            }
            Record::Commit(commit) => {
                self.last_epoch = self.last_epoch.max(commit.commit_id.epoch);
                self.registry.record_durable(&commit.transfers, &commit.resolutions);
                self.keep_decisions(&commit.decisions);
                let mut waiting: BTreeSet<ShardId> =
                    commit.legs.iter().map(|leg| leg.account_id.shard(self.shard_count)).collect();
                if let Some(applied) = &commit.applied_by {
                    if let Some(shard) = self.shards.get_mut(applied.shard_id.0 as usize) {
                        shard.replay_commit(&commit, Some(&applied.sequences))?;
                    }
                    waiting.remove(&applied.shard_id);
                }
                if !waiting.is_empty() {
                    self.open_commits.insert(commit.commit_id, (commit, waiting));
                }
            }
            Record::Checkpoint { replay_from_segment } => {
                if self.decisions_after_marker == Some(replay_from_segment) {
                    self.decisions_after_marker = None;
                }
                if self.snapshot_marker.is_none_or(|marker| replay_from_segment > marker) {
                    self.later_markers += 1;
                }
            }
            Record::Decisions(decisions) => self.keep_decisions(&decisions),
            Record::Epoch(epoch) => self.last_epoch = self.last_epoch.max(epoch),
            Record::Batch(records) => {
                self.records -= 1;
                for record in records {
                    self.apply(record)?;
                }
            }
            Record::CommitApplied { commit_id, shard_id, sequences } => {
                let Some((commit, waiting)) = self.open_commits.get_mut(&commit_id) else {
                    // The commit is older than the replay start: already in the snapshot.
                    return Ok(());
                };
                if let Some(shard) = self.shards.get_mut(shard_id.0 as usize) {
                    shard.replay_commit(commit, Some(&sequences))?;
                }
                waiting.remove(&shard_id);
                if waiting.is_empty() {
                    self.open_commits.remove(&commit_id);
                }
            }
        }
        Ok(())
    }

    /// Completes commits a crash interrupted and returns the recovered state
    /// with the records that say so, to be journaled before serving.
    ///
    /// Fails if a commit's legs cannot be completed: an account could not
    /// be read back, or applying them would break a guarantee.
    pub fn finish(mut self) -> Result<(Recovered, Vec<Record>), Box<CompletionError>> {
        let mut completions = Vec::new();
        for (commit_id, (commit, waiting)) in std::mem::take(&mut self.open_commits) {
            for shard_id in waiting {
                let sequences = self.shards[shard_id.0 as usize]
                    .replay_commit(&commit, None)
                    .map_err(|source| Box::new(CompletionError { commit_id, shard_id, source }))?;
                completions.push(Record::CommitApplied { commit_id, shard_id, sequences });
            }
        }
        let recovered = Recovered {
            shards: self.shards,
            registry: self.registry,
            epoch: self.last_epoch + 1,
            next_decision_id: self.next_decision_id,
            decisions: self.decisions,
            account_source: self.source,
        };
        Ok((recovered, completions))
    }
}
