//! What a checkpoint reads from the journal segments it is about to delete:
//! the transfers they stored (with their latest status), and the commits that
//! some shard has still not applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use wallet_actors::ids::{CommitId, ShardId};
use wallet_actors::record::{Commit, Record, Resolution};
use wallet_actors::recovery::OpenCommit;
use wallet_actors::registry::TransferRecord;
use wallet_actors::{Transfer, TransferId};

use crate::runs::TransferRuns;
use crate::StorageError;

/// Folds records, in journal order, into what the snapshot needs.
pub struct SegmentScan {
    open: BTreeMap<CommitId, (Commit, BTreeSet<ShardId>)>,
    transfers: BTreeMap<TransferId, TransferRecord>,
    resolutions: Vec<Resolution>,
    index: Arc<TransferRuns>,
    shard_count: u16,
}

impl SegmentScan {
    /// Starts from the commits the previous checkpoint left open.
    pub fn new(shard_count: u16, open: Vec<OpenCommit>, index: Arc<TransferRuns>) -> Self {
        SegmentScan {
            open: open
                .into_iter()
                .map(|o| (o.commit.commit_id, (o.commit, o.waiting.into_iter().collect())))
                .collect(),
            transfers: BTreeMap::new(),
            resolutions: Vec::new(),
            index,
            shard_count,
        }
    }

    fn add_transfers(&mut self, transfers: &[Arc<Transfer>], resolutions: &[Resolution]) {
        for transfer in transfers {
            let status = transfer.initial_status();
            self.transfers.insert(transfer.id, TransferRecord { transfer: transfer.clone(), status });
        }
        for resolution in resolutions {
            match self.transfers.get_mut(&resolution.pending_id) {
                Some(record) => record.status = resolution.status,
                None => self.resolutions.push(*resolution),
            }
        }
    }

    /// Applies one record.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Applied(applied) => self.add_transfers(&applied.transfers, &applied.resolutions),
            Record::Commit(commit) => {
                self.add_transfers(&commit.transfers, &commit.resolutions);
                let mut waiting: BTreeSet<ShardId> =
                    commit.legs.iter().map(|leg| leg.account_id.shard(self.shard_count)).collect();
                if let Some(applied) = &commit.applied_by {
                    waiting.remove(&applied.shard_id);
                }
                if !waiting.is_empty() {
                    self.open.insert(commit.commit_id, (commit, waiting));
                }
            }
            Record::CommitApplied { commit_id, shard_id, .. } => {
                if let Some((_, waiting)) = self.open.get_mut(&commit_id) {
                    waiting.remove(&shard_id);
                    if waiting.is_empty() {
                        self.open.remove(&commit_id);
                    }
                }
            }
            Record::Checkpoint { .. } | Record::Decisions(_) | Record::Epoch(_) => {}
            Record::Batch(records) => {
                for record in records {
                    self.apply(record);
                }
            }
        }
    }

    /// The transfers to index (including older ones whose status changed)
    /// and the commits still open.
    pub fn finish(mut self) -> Result<(Vec<TransferRecord>, Vec<OpenCommit>), StorageError> {
        for resolution in std::mem::take(&mut self.resolutions) {
            if let Some(mut record) = self.index.get(resolution.pending_id.into())? {
                record.status = resolution.status;
                self.transfers.insert(resolution.pending_id, record);
            }
        }
        let open = self
            .open
            .into_values()
            .map(|(commit, waiting)| OpenCommit { commit, waiting: waiting.into_iter().collect() })
            .collect();
        Ok((self.transfers.into_values().collect(), open))
    }
}
