//! The shard actor: a ractor actor that owns one [`ShardState`] and hands
//! each message to it, one at a time. It routes, reserves, applies and
//! journals; it never awaits another actor, and never touches a disk.
//!
//! - this file: the actor and how it handles each message;
//! - [`msg`]: what a shard can be asked;
//! - [`outbox`]: what it holds back and sends at once, in dependency order;
//! - [`shared`]: what a generation of shards shares, and why it fails;
//! - [`supervisor`]: who hears a shard end;
//! - [`router`]: how shards reach each other.

mod msg;
mod outbox;
mod router;
mod shared;
mod supervisor;

pub use msg::{ChainOp, CreditOp, OpOutcome, OutcomeSender, PrepareOutcome, ShardMsg};
pub use router::LocalRouter;
pub use shared::{Failure, JournalGate, Shared};
pub use supervisor::{ShardSupervisor, SupervisorMsg, SupervisorState};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ids::ShardId;
use crate::ports::JournalError;
use crate::record::{Applied, Record, ShardApplied};
use crate::rejection::Rejection;
use crate::shard::{commit_record, IndexedRejection, Planned, ShardState};
use crate::LedgerError;
use outbox::Outbox;

/// The shard actor. Carries no data; see [`ShardArgs`] and [`ShardState`].
pub struct ShardActor;

/// What a shard actor starts from.
pub struct ShardArgs {
    /// The state recovered from storage.
    pub state: ShardState,
    /// Shared ledger parts.
    pub shared: Arc<Shared>,
}

/// A shard actor's state while running.
pub struct RunningShard {
    state: ShardState,
    shared: Arc<Shared>,
    myself: Option<ActorRef<ShardMsg>>,
    outbox: Outbox,
    /// Appends of this shard's records not yet durable: while there are
    /// none (and the outbox holds no record), memory shows only durable
    /// state and a read is answered at once.
    unsynced: Arc<std::sync::atomic::AtomicU64>,
}

/// An answer that waits until what it shows is durable.
type AfterDurable = Box<dyn FnOnce(Result<(), JournalError>) + Send + 'static>;

fn reply<T: Send + 'static>(port: RpcReplyPort<T>, value: T) {
    // The caller may have timed out and gone: that is not an error here.
    let _ = port.send(value);
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = RunningShard;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ShardArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        for account in args.state.accounts() {
            account.assert_limits();
        }
        let mut state = args.state;
        // What recovery replayed is durable: the events' feed gets it now
        // (it drops what it published before the restart).
        match &args.shared.events {
            Some(sink) if sink.wants_entries() => {
                let replayed = state.take_new_history();
                if !replayed.is_empty() {
                    sink.durable(state.shard_id(), replayed);
                }
            }
            Some(_) => state.skip_new_history(),
            None => {}
        }
        Ok(RunningShard {
            state,
            shared: args.shared,
            myself: None,
            outbox: Outbox::default(),
            unsynced: Default::default(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        running: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // What was held back for a flush still goes out: its callers wait.
        running.flush();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        running: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if running.myself.is_none() {
            running.myself = Some(myself);
        }
        running.handle(message);
        running.schedule_flush();
        Ok(())
    }
}

impl RunningShard {
    fn refuse_if_poisoned<T: Send + 'static>(
        &self,
        port: RpcReplyPort<Result<T, LedgerError>>,
    ) -> Option<RpcReplyPort<Result<T, LedgerError>>> {
        if self.shared.poisoned.load(Ordering::Relaxed) {
            reply(port, Err(LedgerError::Unavailable));
            None
        } else {
            Some(port)
        }
    }

    /// Makes the accounts a message names resident. A read that fails
    /// poisons the ledger: the message is then refused like any other.
    fn activate_for(&mut self, message: &ShardMsg) {
        let result = match message {
            ShardMsg::OpenAccount(account, _) => self.state.activate(account.id),
            ShardMsg::SetStatus(account_id, _, _) | ShardMsg::GetAccount(account_id, _) => {
                self.state.activate(*account_id)
            }
            ShardMsg::Execute(ops, _) => ops.iter().try_for_each(|op| self.state.activate_op(op)),
            ShardMsg::Prepare { ops, .. } => ops.iter().try_for_each(|(_, op)| self.state.activate_op(op)),
            ShardMsg::Debit(ops) => ops.iter().try_for_each(|chain| self.state.activate_op(&chain.op)),
            ShardMsg::Credit(ops) | ShardMsg::Refused(ops, _) => {
                ops.iter().try_for_each(|credit| self.state.activate_op(&credit.op))
            }
            // Accounts with reserved legs are never passivated; the rest
            // name no account or read only what is resident.
            _ => Ok(()),
        };
        if result.is_err() {
            self.shared.poison_on_read();
        }
    }

    fn handle(&mut self, message: ShardMsg) {
        self.activate_for(&message);
        match message {
            ShardMsg::OpenAccount(account, port) => {
                let Some(port) = self.refuse_if_poisoned(port) else { return };
                match self.state.open_account(account) {
                    Err(rejection) => reply(port, Err(LedgerError::Rejected(rejection))),
                    Ok((account, None)) => reply(port, Ok(account)),
                    Ok((account, Some(event))) => {
                        let record = Record::Applied(Applied { events: vec![event], ..Default::default() });
                        self.journal_then_reply(record, port, Ok(account));
                    }
                }
            }
            ShardMsg::SetStatus(account_id, status, port) => {
                let Some(port) = self.refuse_if_poisoned(port) else { return };
                let now_ms = self.shared.clock.now_ms();
                match self.state.set_status(account_id, status, now_ms) {
                    Err(rejection) => reply(port, Err(LedgerError::Rejected(rejection))),
                    Ok((account, None)) => reply(port, Ok(account)),
                    Ok((account, Some(event))) => {
                        let record = Record::Applied(Applied {
                            events: vec![event],
                            at_ms: now_ms,
                            ..Default::default()
                        });
                        self.journal_then_reply(record, port, Ok(account));
                    }
                }
            }
            ShardMsg::Execute(ops, port) => {
                let Some(port) = self.refuse_if_poisoned(port) else { return };
                self.execute(ops, port);
            }
            ShardMsg::Prepare { commit_id, ops, reply: port } => {
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
                self.outbox.prepared.push((port, outcomes));
            }
            ShardMsg::Decide { commit_id, committed, aborted } => {
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
            ShardMsg::Flush => self.flush(),
            ShardMsg::Debit(ops) => self.debit(ops),
            ShardMsg::Credit(ops) => self.credit(ops),
            ShardMsg::Refused(ops, failures) => {
                let now_ms = self.shared.clock.now_ms();
                for (refused, failure) in ops.into_iter().zip(failures) {
                    let first = self.state.first_failure(&refused.op, &refused.debit_assets, failure, now_ms);
                    let _ = refused.reply.send(Ok(Err(first)));
                }
            }
            ShardMsg::Settle(commit_ids) => {
                for commit_id in commit_ids {
                    let sequences = self.state.commit_prepared((commit_id, 0));
                    let record =
                        Record::CommitApplied { commit_id, shard_id: self.state.shard_id(), sequences };
                    self.journal(record, self.shared.poison_on_failure());
                }
            }
            ShardMsg::Release(commit_ids) => {
                for commit_id in commit_ids {
                    self.state.abort_prepared((commit_id, 0));
                }
            }
            ShardMsg::GetAccount(account_id, port) => {
                let found = self.state.account(account_id).map(|(a, r)| (a.clone(), r));
                self.reply_when_durable(port, found);
            }
            ShardMsg::DueHolds { now_ms, limit, reply: port } => {
                reply(port, self.state.due_holds(now_ms, limit));
            }
            ShardMsg::Dump(port) => {
                let accounts = self.state.accounts().cloned().collect();
                self.reply_when_durable(port, accounts);
            }
            ShardMsg::Resident(port) => reply(port, self.state.resident()),
            #[cfg(feature = "fault-injection")]
            ShardMsg::Crash => panic!("shard crash injected by a test"),
            ShardMsg::SetRules(rules, port) => {
                self.state.set_rules(rules);
                reply(port, ());
            }
            ShardMsg::ForgetFlushedHistory(idle_epochs) => {
                self.state.forget_flushed_history();
                if let Some(idle_epochs) = idle_epochs {
                    let passivated = self.state.passivate_idle(idle_epochs);
                    metrics::counter!("wallet_passivations_total").increment(passivated as u64);
                }
            }
            ShardMsg::History { account_id, after_sequence, limit, reply: port } => {
                let entries = self.state.recent_history(account_id, after_sequence, limit);
                self.reply_when_durable(port, entries);
            }
            ShardMsg::Capture(port) => {
                // The snapshot must not be ahead of the journal: everything
                // captured goes to the journal before the capture's caller
                // appends its checkpoint marker.
                self.flush();
                reply(port, self.state.capture())
            }
        }
    }

    fn execute(&mut self, ops: Vec<Arc<[Planned]>>, port: RpcReplyPort<Result<Vec<OpOutcome>, LedgerError>>) {
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
            reply(port, Ok(outcomes));
            return;
        }
        let registry = self.shared.registry.clone();
        let shared = self.shared.clone();
        let transfers: Vec<_> = record.transfers.clone();
        let resolutions = record.resolutions.clone();
        let decisions = record.decisions.clone();
        self.journal(
            Record::Applied(record),
            Box::new(move |result| match result {
                Ok(()) => {
                    registry.record_durable(&transfers, &resolutions);
                    shared.decisions.durable(&decisions);
                    reply(port, Ok(outcomes));
                }
                Err(error) => {
                    shared.poison(error);
                    reply(port, Err(LedgerError::Unavailable));
                }
            }),
        );
    }

    fn debit(&mut self, ops: Vec<ChainOp>) {
        let now_ms = self.shared.clock.now_ms();
        let me = self.state.shard_id();
        let mut onward: std::collections::BTreeMap<ShardId, Vec<CreditOp>> = Default::default();
        let mut refused: std::collections::BTreeMap<ShardId, (Vec<CreditOp>, Vec<IndexedRejection>)> =
            Default::default();
        for chain in ops {
            if self.shared.poisoned.load(Ordering::Relaxed) {
                let _ = chain.reply.send(Err(LedgerError::Unavailable));
                continue;
            }
            match self.state.reserve(&chain.op, now_ms) {
                Err(rejection) if rejection.1 <= Rejection::DebitAccountNotFound => {
                    // Nothing the credit side finds can come first.
                    let _ = chain.reply.send(Ok(Err(rejection)));
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

    fn credit(&mut self, ops: Vec<CreditOp>) {
        let now_ms = self.shared.clock.now_ms();
        let me = self.state.shard_id();
        for credit in ops {
            if self.shared.poisoned.load(Ordering::Relaxed) {
                let _ = credit.reply.send(Err(LedgerError::Unavailable));
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
                    let decisions = commit.decisions.clone();
                    let shared = self.shared.clone();
                    let CreditOp { commit_id, op, debit_shard, reply: port, .. } = credit;
                    self.journal(
                        Record::Commit(commit),
                        Box::new(move |result| match result {
                            Ok(()) => {
                                let resolutions: Vec<_> = op.iter().filter_map(Planned::resolution).collect();
                                shared.registry.record_durable(
                                    op.iter().filter_map(|p| p.transfer.as_ref()),
                                    &resolutions,
                                );
                                shared.decisions.durable(&decisions);
                                // Settle before answering, so that a read the
                                // caller makes next finds the debit applied.
                                let _ = shared.router.send(debit_shard, ShardMsg::Settle(vec![commit_id]));
                                let _ = port.send(Ok(Ok(())));
                            }
                            Err(error) => {
                                shared.poison(error);
                                let _ = port.send(Err(LedgerError::Unavailable));
                            }
                        }),
                    );
                }
            }
        }
    }

    /// Answers a read once every change it shows is durable: at once when
    /// this shard has nothing on its way to the journal, else after it. A
    /// generation that failed answers no reads: its memory may be ahead of
    /// what is durable.
    fn reply_when_durable<T: Send + 'static>(
        &mut self,
        port: RpcReplyPort<Result<T, LedgerError>>,
        value: T,
    ) {
        let Some(port) = self.refuse_if_poisoned(port) else { return };
        if self.outbox.records.is_empty() && self.unsynced.load(Ordering::SeqCst) == 0 {
            reply(port, Ok(value));
            return;
        }
        self.outbox.after_durable.push(Box::new(move |result| {
            reply(port, result.map(|()| value).map_err(|_| LedgerError::Unavailable));
        }));
    }

    fn journal_then_reply<T: Send + 'static>(
        &mut self,
        record: Record,
        port: RpcReplyPort<Result<T, LedgerError>>,
        value: Result<T, LedgerError>,
    ) {
        let shared = self.shared.clone();
        self.journal(
            record,
            Box::new(move |result| match result {
                Ok(()) => reply(port, value),
                Err(error) => {
                    shared.poison(error);
                    reply(port, Err(LedgerError::Unavailable));
                }
            }),
        );
    }
}

#[cfg(test)]
mod tests;
