//! Replay: applying journal records to a shard at recovery, checking
//! every account's guarantees as it goes.

use super::*;

impl ShardState {
    /// Replays an [`Applied`] record (recovery).
    pub fn replay_applied(&mut self, applied: &Applied) -> Result<(), ReplayError> {
        for sequenced in &applied.events {
            if !self.owns(sequenced.account_id) {
                continue;
            }
            // A passivated account's snapshot is newer than its opening.
            self.activate(sequenced.account_id)?;
            match &sequenced.event {
                AccountEvent::Opened(account) => {
                    if let std::collections::hash_map::Entry::Vacant(slot) = self.accounts.entry(account.id) {
                        slot.insert(Slot {
                            account: account.clone(),
                            reserved: Reserved::default(),
                            touched: self.epoch,
                        });
                        self.dirty_accounts.insert(account.id);
                        self.record_history(account.id, 1, HistoryEvent::Opened, account.created_at_ms);
                    }
                }
                AccountEvent::StatusChanged(_) => {
                    if let Some(slot) = self.accounts.get_mut(&sequenced.account_id) {
                        if sequenced.sequence > slot.account.sequence {
                            slot.account.try_apply(sequenced.sequence, &sequenced.event)?;
                            self.dirty_accounts.insert(sequenced.account_id);
                            if let AccountEvent::StatusChanged(status) = sequenced.event {
                                self.record_history(
                                    sequenced.account_id,
                                    sequenced.sequence,
                                    HistoryEvent::StatusChanged(status),
                                    applied.at_ms,
                                );
                            }
                        }
                    }
                }
                AccountEvent::Leg(leg) => {
                    self.try_apply_leg(leg, Some(sequenced.sequence))?;
                }
            }
        }
        for transfer in &applied.transfers {
            if transfer.kind == TransferKind::Pending && self.owns(transfer.debit_account_id) {
                self.create_hold(transfer);
            }
        }
        for resolution in &applied.resolutions {
            self.remove_hold(resolution.pending_id);
        }
        Ok(())
    }

    /// Replays this shard's part of a commit: with `sequences` as recorded
    /// by [`crate::record::Record::CommitApplied`], or with fresh ones when a
    /// crash came between the commit and its application. Returns the
    /// sequences used.
    pub fn replay_commit(
        &mut self,
        commit: &Commit,
        sequences: Option<&[u64]>,
    ) -> Result<Vec<u64>, ReplayError> {
        let mut used = Vec::new();
        for leg in &commit.legs {
            if self.owns(leg.account_id) {
                self.activate(leg.account_id)?;
                let sequence = sequences.and_then(|s| s.get(used.len()).copied());
                used.push(self.try_apply_leg(leg, sequence)?.sequence);
            }
        }
        for transfer in &commit.transfers {
            if transfer.kind == TransferKind::Pending && self.owns(transfer.debit_account_id) {
                self.create_hold(transfer);
            }
        }
        for resolution in &commit.resolutions {
            self.remove_hold(resolution.pending_id);
        }
        Ok(used)
    }
}
