//! The shard actor: a ractor actor that owns one [`ShardState`] and hands
//! each message to it, one at a time. It routes, reserves, applies and
//! journals; it never awaits another actor, and never touches a disk.
//!
//! - this file: the actor, and which method handles each message;
//! - `accounts`, `transfers`, `coordination`: those methods, by purpose;
//! - [`msg`]: what a shard can be asked;
//! - [`outbox`]: what it holds back and sends at once, in dependency order;
//! - [`shared`]: what a generation of shards shares, and why it fails;
//! - [`supervisor`]: who hears a shard end;
//! - [`router`]: how shards reach each other;
//! - [`replies`]: answers by correlation id, so no message carries a channel.

mod accounts;
mod coordination;
mod msg;
mod outbox;
mod replies;
mod router;
mod shared;
mod supervisor;
mod transfers;

pub use msg::{ChainOp, CreditOp, OpOutcome, PrepareOutcome, ShardMsg};
pub use replies::{ask, wait_for, Answer, Owed, Replies, ReplyTo};
pub use router::LocalRouter;
pub use shared::{Failure, JournalGate, Shared};
pub use supervisor::{ShardSupervisor, SupervisorMsg};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::ports::JournalError;
use crate::record::Record;
use crate::shard::ShardState;
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
        if let Some((sink, replayed)) = state.history_for(args.shared.events.as_ref()) {
            if !replayed.is_empty() {
                sink.durable(state.shard_id(), replayed);
            }
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

/// Where one answer goes, as a function of the result: a correlation id
/// through the router, or (control messages, which stay on the node) a port.
type AnswerFn<T> = Box<dyn FnOnce(Result<T, LedgerError>) + Send + 'static>;

fn to_port<T: Send + 'static>(port: RpcReplyPort<Result<T, LedgerError>>) -> AnswerFn<T> {
    Box::new(move |result| reply(port, result))
}

impl RunningShard {
    /// Answers `to` through the router with the result, as `kind` of
    /// answer (`unavailable` if dropped unanswered: see [`Owed`]).
    fn answer_to<T: Send + 'static>(
        &self,
        to: ReplyTo,
        kind: fn(Result<T, LedgerError>) -> Answer,
    ) -> AnswerFn<T> {
        let owed = Owed::new(self.shared.router.clone(), to, kind);
        Box::new(move |result| owed.pay(result))
    }

    fn refuse_if_poisoned<T: Send + 'static>(&self, answer: AnswerFn<T>) -> Option<AnswerFn<T>> {
        if self.shared.poisoned.load(Ordering::Relaxed) {
            answer(Err(LedgerError::Unavailable));
            None
        } else {
            Some(answer)
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
            ShardMsg::OpenAccount(account, port) => self.open_account(account, port),
            ShardMsg::SetStatus(account_id, status, port) => self.set_status(account_id, status, port),
            ShardMsg::Execute(ops, to) => {
                if self.shared.poisoned.load(Ordering::Relaxed) {
                    self.shared.router.reply(to, Answer::Executed(Err(LedgerError::Unavailable)));
                    return;
                }
                self.execute(ops, to);
            }
            ShardMsg::Prepare { commit_id, ops, reply: to } => self.prepare(commit_id, ops, to),
            ShardMsg::Decide { commit_id, committed, aborted } => self.decide(commit_id, committed, aborted),
            ShardMsg::Commit { commit_id, committed, mine, aborted, reply } => {
                self.commit(commit_id, committed, mine, aborted, reply)
            }
            ShardMsg::Flush => self.flush(),
            ShardMsg::Debit(ops) => self.debit(ops),
            ShardMsg::Credit(ops) => self.credit(ops),
            ShardMsg::Refused(ops, failures) => self.refused(ops, failures),
            ShardMsg::Settle(commit_ids) => self.settle(commit_ids),
            ShardMsg::Release(commit_ids) => {
                for commit_id in commit_ids {
                    self.state.abort_prepared((commit_id, 0));
                }
            }
            ShardMsg::GetAccount(account_id, to) => {
                let found = self.state.account(account_id).map(|(a, r)| (a.clone(), r));
                self.reply_when_durable(self.answer_to(to, Answer::Read), found);
            }
            ShardMsg::DueHolds { now_ms, limit, reply: port } => {
                reply(port, self.state.due_holds(now_ms, limit));
            }
            ShardMsg::Dump(port) => {
                let accounts = self.state.accounts().cloned().collect();
                self.reply_when_durable(to_port(port), accounts);
            }
            ShardMsg::Resident(port) => reply(port, self.state.resident()),
            #[cfg(feature = "fault-injection")]
            ShardMsg::Crash => panic!("shard crash injected by a test"),
            ShardMsg::SetRules(rules, port) => {
                self.state.set_rules(rules);
                reply(port, ());
            }
            ShardMsg::ForgetFlushedHistory(idle_epochs) => self.forget_flushed_history(idle_epochs),
            ShardMsg::History { account_id, after_sequence, limit, reply: to } => {
                let entries = self.state.recent_history(account_id, after_sequence, limit);
                self.reply_when_durable(self.answer_to(to, Answer::History), entries);
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

    fn forget_flushed_history(&mut self, idle_epochs: Option<u64>) {
        self.state.forget_flushed_history();
        if let Some(idle_epochs) = idle_epochs {
            let passivated = self.state.passivate_idle(idle_epochs);
            metrics::counter!("wallet_passivations_total").increment(passivated as u64);
        }
    }

    /// Answers a read once every change it shows is durable: at once when
    /// this shard has nothing on its way to the journal, else after it. A
    /// generation that failed answers no reads: its memory may be ahead of
    /// what is durable.
    fn reply_when_durable<T: Send + 'static>(&mut self, answer: AnswerFn<T>, value: T) {
        let Some(answer) = self.refuse_if_poisoned(answer) else { return };
        if self.outbox.records.is_empty() && self.unsynced.load(Ordering::SeqCst) == 0 {
            answer(Ok(value));
            return;
        }
        self.outbox.after_durable.push(Box::new(move |result| {
            answer(result.map(|()| value).map_err(|_| LedgerError::Unavailable));
        }));
    }

    /// Journals `record` and answers `value` once it is durable.
    fn journal_then_reply<T: Send + 'static>(&mut self, record: Record, answer: AnswerFn<T>, value: T) {
        let shared = self.shared.clone();
        self.journal(
            record,
            Box::new(move |result| match result {
                Ok(()) => answer(Ok(value)),
                Err(error) => {
                    shared.poison(error);
                    answer(Err(LedgerError::Unavailable));
                }
            }),
        );
    }
}

#[cfg(test)]
mod tests;
