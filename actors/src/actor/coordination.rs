//! Messages of a coordinated commit (a linked batch over many shards):
//! reserve for the coordinator, then apply or release what it decided.

use std::sync::Arc;

use super::{ReplyTo, RunningShard};
use crate::ids::CommitId;
use crate::record::Record;
use crate::shard::Planned;

impl RunningShard {
    /// Reserves each operation; answered at the next flush, once every
    /// record a reservation may rely on is appended (`Outbox::prepared`).
    pub(super) fn prepare(&mut self, commit_id: CommitId, ops: Vec<(u32, Arc<[Planned]>)>, to: ReplyTo) {
        let now_ms = self.shared.clock.now_ms();
        let outcomes = ops
            .into_iter()
            .map(|(index, op)| match self.state.reserve(&op, now_ms) {
                Ok(reservation) => {
                    let assets = reservation.assets.clone();
                    self.state.hold_prepared((commit_id, index), op, reservation);
                    (assets, Ok(()))
                }
                Err(failure) => (self.state.assets_of(&op), Err(failure)),
            })
            .collect();
        self.outbox.prepared.push((to, outcomes));
    }

    /// The coordinator's decision: apply `committed` (its commit record is
    /// durable), release `aborted`.
    pub(super) fn decide(&mut self, commit_id: CommitId, committed: Vec<u32>, aborted: Vec<u32>) {
        for index in aborted {
            self.state.abort_prepared((commit_id, index));
        }
        if committed.is_empty() {
            return;
        }
        let mut sequences = Vec::new();
        for index in committed {
            sequences.extend(self.state.commit_prepared((commit_id, index)));
        }
        let record = Record::CommitApplied { commit_id, shard_id: self.state.shard_id(), sequences };
        self.journal(record, self.shared.poison_on_failure());
    }
}
