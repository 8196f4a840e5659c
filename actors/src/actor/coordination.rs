//! Messages of a coordinated commit (a linked batch over many shards):
//! reserve for the coordinator; then the decider (the lowest shard the
//! commit touches) applies its legs and appends the deciding record, and
//! the others apply or release what it decided.

use std::sync::Arc;

use super::{Answer, Owed, ReplyTo, RunningShard};
use crate::ids::CommitId;
use crate::record::{Commit, Record, ShardApplied};
use crate::shard::{commit_record, Planned};
use crate::LedgerError;

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

    /// As the decider: applies this shard's legs and appends the commit
    /// record, which says so (`applied_by`, so no `CommitApplied` follows),
    /// answering once it is durable. The other shards' answers to
    /// `Prepare` came after their outboxes were appended, so every record
    /// this commit relies on is ahead of it in the journal.
    pub(super) fn commit(
        &mut self,
        commit_id: CommitId,
        committed: Vec<Arc<[Planned]>>,
        mine: Vec<u32>,
        aborted: Vec<u32>,
        to: ReplyTo,
    ) {
        let owed = Owed::new(self.shared.router.clone(), to, Answer::Committed);
        if self.shared.poisoned.load(std::sync::atomic::Ordering::Relaxed) {
            owed.pay(Err(LedgerError::Unavailable));
            return;
        }
        for index in aborted {
            self.state.abort_prepared((commit_id, index));
        }
        let mut sequences = Vec::new();
        for &index in &mine {
            sequences.extend(self.state.commit_prepared((commit_id, index)));
        }
        let shard_id = self.state.shard_id();
        let applied_by = (!mine.is_empty()).then_some(ShardApplied { shard_id, sequences });
        let commit = commit_record(commit_id, committed.iter().flat_map(|op| op.iter()), applied_by);
        self.journal_commit(commit, committed, move |result| owed.pay(result));
    }

    /// Appends a deciding `Commit` record of `ops`. Once durable, records
    /// their transfers and decisions (in the callback, so in journal order:
    /// a checkpoint that retires the record finds its transfers in the
    /// registry, to evict, and its decisions numbered), then calls `then`;
    /// a failed write poisons the generation and `then` hears unavailable.
    pub(super) fn journal_commit<O>(
        &mut self,
        commit: Commit,
        ops: O,
        then: impl FnOnce(Result<(), LedgerError>) + Send + 'static,
    ) where
        O: AsRef<[Arc<[Planned]>]> + Send + 'static,
    {
        let decisions = commit.decisions.clone();
        let shared = self.shared.clone();
        self.journal(
            Record::Commit(commit),
            Box::new(move |result| match result {
                Ok(()) => {
                    let planned = || ops.as_ref().iter().flat_map(|op| op.iter());
                    let resolutions: Vec<_> = planned().filter_map(Planned::resolution).collect();
                    shared
                        .registry
                        .record_durable(planned().filter_map(|p| p.transfer.as_ref()), &resolutions);
                    shared.decisions.durable(&decisions);
                    then(Ok(()));
                }
                Err(error) => {
                    shared.poison(error);
                    then(Err(LedgerError::Unavailable));
                }
            }),
        );
    }
}
