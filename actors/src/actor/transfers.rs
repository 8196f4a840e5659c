//! Transfer messages: operations whose legs all live here (`Execute`), and
//! the chain of a transfer between two shards (`Debit` here, `Credit`
//! there, then `Settle` or `Release` back; `Refused` when the debit side
//! failed). See `docs/ARCHITECTURE.md`, "The write paths".

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Answer, ChainOp, CreditOp, Owed, ReplyTo, RunningShard, ShardMsg};
use crate::ids::{CommitId, ShardId};
use crate::record::{Applied, Record, ShardApplied};
use crate::rejection::Rejection;
use crate::shard::{commit_record, IndexedRejection, Planned};
use crate::LedgerError;

impl RunningShard {
    pub(super) fn execute(&mut self, ops: Vec<Arc<[Planned]>>, to: ReplyTo) {
        let now_ms = self.shared.clock.now_ms();
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut record = Applied { at_ms: now_ms, ..Applied::default() };
        for op in &ops {
            match self.state.execute_local(op, now_ms) {
                Ok(applied) => {
                    record.transfers.extend(applied.transfers);
                    record.resolutions.extend(applied.resolutions);
                    record.events.extend(applied.events);
                    record.decisions.extend(applied.decisions);
                    outcomes.push(Ok(()));
                }
                Err(rejection) => outcomes.push(Err(rejection)),
            }
        }
        if record.events.is_empty() {
            self.shared.router.reply(to, Answer::Executed(Ok(outcomes)));
            return;
        }
        let registry = self.shared.registry.clone();
        let shared = self.shared.clone();
        let owed = Owed::new(self.shared.router.clone(), to, Answer::Executed);
        let transfers: Vec<_> = record.transfers.clone();
        let resolutions = record.resolutions.clone();
        let decisions = record.decisions.clone();
        self.journal(
            Record::Applied(record),
            Box::new(move |result| match result {
                Ok(()) => {
                    registry.record_durable(&transfers, &resolutions);
                    shared.decisions.durable(&decisions);
                    owed.pay(Ok(outcomes));
                }
                Err(error) => {
                    shared.poison(error);
                    owed.pay(Err(LedgerError::Unavailable));
                }
            }),
        );
    }

    pub(super) fn debit(&mut self, ops: Vec<ChainOp>) {
        let now_ms = self.shared.clock.now_ms();
        let me = self.state.shard_id();
        let mut onward: std::collections::BTreeMap<ShardId, Vec<CreditOp>> = Default::default();
        let mut refused: std::collections::BTreeMap<ShardId, (Vec<CreditOp>, Vec<IndexedRejection>)> =
            Default::default();
        for chain in ops {
            if self.shared.poisoned.load(Ordering::Relaxed) {
                self.shared.router.reply(chain.reply, Answer::Chained(Err(LedgerError::Unavailable)));
                continue;
            }
            match self.state.reserve(&chain.op, now_ms) {
                Err(rejection) if rejection.1 <= Rejection::DebitAccountNotFound => {
                    // Nothing the credit side finds can come first.
                    self.shared.router.reply(chain.reply, Answer::Chained(Ok(Err(rejection))));
                }
                Err(rejection) => {
                    let entry = refused.entry(chain.credit_shard).or_default();
                    entry.0.push(CreditOp {
                        commit_id: chain.commit_id,
                        debit_assets: self.state.assets_of(&chain.op),
                        op: chain.op,
                        debit_shard: me,
                        reply: chain.reply,
                    });
                    entry.1.push(rejection);
                }
                Ok(reservation) => {
                    let debit_assets = reservation.assets.clone();
                    self.state.hold_prepared((chain.commit_id, 0), chain.op.clone(), reservation);
                    onward.entry(chain.credit_shard).or_default().push(CreditOp {
                        commit_id: chain.commit_id,
                        op: chain.op,
                        debit_shard: me,
                        debit_assets,
                        reply: chain.reply,
                    });
                }
            }
        }
        for (shard, (ops, failures)) in refused {
            let entry = self.outbox.refused.entry(shard).or_default();
            entry.0.extend(ops);
            entry.1.extend(failures);
        }
        for (shard, credits) in onward {
            self.outbox.credits.entry(shard).or_default().extend(credits);
        }
    }

    pub(super) fn credit(&mut self, ops: Vec<CreditOp>) {
        let now_ms = self.shared.clock.now_ms();
        let me = self.state.shard_id();
        for credit in ops {
            if self.shared.poisoned.load(Ordering::Relaxed) {
                self.shared.router.reply(credit.reply, Answer::Chained(Err(LedgerError::Unavailable)));
                continue;
            }
            match self.state.accept_credit(&credit.op, &credit.debit_assets, now_ms) {
                Err(rejection) => {
                    // The release goes out at the flush, and the answer right
                    // after it: a caller who closes the debit account next
                    // must not find the refused transfer still reserved.
                    self.outbox.releases.entry(credit.debit_shard).or_default().push(credit.commit_id);
                    self.outbox.after_releases.push((credit.reply, Err(rejection)));
                }
                Ok(sequences) => {
                    let applied_by = Some(ShardApplied { shard_id: me, sequences });
                    let commit = commit_record(credit.commit_id, credit.op.iter(), applied_by);
                    let CreditOp { commit_id, op, debit_shard, reply: to, .. } = credit;
                    let owed = Owed::new(self.shared.router.clone(), to, Answer::Chained);
                    let router = self.shared.router.clone();
                    self.journal_commit(commit, [op], move |result| {
                        if result.is_ok() {
                            // Settle before answering, so that a read the
                            // caller makes next finds the debit applied.
                            let _ = router.send(debit_shard, ShardMsg::Settle(vec![commit_id]));
                        }
                        owed.pay(result.map(Ok));
                    });
                }
            }
        }
    }

    /// Transfers the debit shard refused: this side's checks added, so the
    /// caller hears the first failure by check order.
    pub(super) fn refused(&mut self, ops: Vec<CreditOp>, failures: Vec<IndexedRejection>) {
        let now_ms = self.shared.clock.now_ms();
        for (refused, failure) in ops.into_iter().zip(failures) {
            let first = self.state.first_failure(&refused.op, &refused.debit_assets, failure, now_ms);
            self.shared.router.reply(refused.reply, Answer::Chained(Ok(Err(first))));
        }
    }

    /// Applies the reserved debit side of committed transfers.
    pub(super) fn settle(&mut self, commit_ids: Vec<CommitId>) {
        for commit_id in commit_ids {
            let sequences = self.state.commit_prepared((commit_id, 0));
            let record = Record::CommitApplied { commit_id, shard_id: self.state.shard_id(), sequences };
            self.journal(record, self.shared.poison_on_failure());
        }
    }
}
