//! The shard actor: a ractor actor that owns one [`ShardState`] and hands
//! each message to it, one at a time. It routes, reserves, applies and
//! journals; it never awaits another actor, and never touches a disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::account::{Account, AccountStatus, Reserved};
use crate::asset::Asset;
use crate::ids::{AccountId, CommitId};
use crate::record::{Applied, Clock, Journal, JournalError, OnDurable, Record};
use crate::registry::TransferRegistry;
use crate::shard::{Hold, IndexedRejection, Planned, ShardState};
use crate::LedgerError;

/// What the shards share with the rest of the ledger.
pub struct Shared {
    /// Where records go.
    pub journal: Arc<dyn Journal>,
    /// Transfer ids and outcomes.
    pub registry: Arc<TransferRegistry>,
    /// The ledger's clock.
    pub clock: Arc<dyn Clock>,
    /// Set once a journal write failed: from then on the in-memory state may
    /// be ahead of the durable one, so nothing more is accepted.
    pub poisoned: AtomicBool,
}

impl Shared {
    /// A durable-callback that poisons the ledger if the write failed.
    pub fn poison_on_failure(self: &Arc<Self>) -> OnDurable {
        let shared = self.clone();
        Box::new(move |result| {
            if let Err(error) = result {
                shared.poison(error);
            }
        })
    }

    /// Marks the ledger failed.
    pub fn poison(&self, error: JournalError) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            tracing::error!(%error, "journal failed; the ledger refuses writes until restarted");
        }
    }
}

/// Outcome of one operation of an [`ShardMsg::Execute`].
pub type OpOutcome = Result<(), IndexedRejection>;
/// Outcome of one operation of a [`ShardMsg::Prepare`]: the assets of the
/// shard's accounts it touches, for the coordinator's cross-shard checks.
pub type PrepareOutcome = Result<Vec<(AccountId, Asset)>, IndexedRejection>;

/// What a shard can be asked.
pub enum ShardMsg {
    /// Open an account; the reply comes once it is durable.
    OpenAccount(Account, RpcReplyPort<Result<Account, LedgerError>>),
    /// Freeze, unfreeze or close an account; replies once durable.
    SetStatus(AccountId, AccountStatus, RpcReplyPort<Result<Account, LedgerError>>),
    /// Reserve and apply operations whose legs all live here (each one
    /// all-or-nothing); replies once durable.
    Execute(Vec<Arc<[Planned]>>, RpcReplyPort<Result<Vec<OpOutcome>, LedgerError>>),
    /// Reserve the legs of operations that span shards, for `commit_id`.
    Prepare {
        /// The coordinated commit.
        commit_id: CommitId,
        /// The operations, by their index in the commit.
        ops: Vec<(u32, Arc<[Planned]>)>,
        /// One outcome per operation, in the same order.
        reply: RpcReplyPort<Vec<PrepareOutcome>>,
    },
    /// The coordinator's decision: apply `committed` (whose commit record is
    /// durable), release `aborted`.
    Decide {
        /// The coordinated commit.
        commit_id: CommitId,
        /// Operations to apply, in ascending order.
        committed: Vec<u32>,
        /// Operations to release.
        aborted: Vec<u32>,
    },
    /// Read an account and its reservations.
    GetAccount(AccountId, RpcReplyPort<Option<(Account, Reserved)>>),
    /// Holds whose timeout has passed.
    DueHolds {
        /// Now, in ledger ms.
        now_ms: u64,
        /// At most this many.
        limit: usize,
        /// The holds.
        reply: RpcReplyPort<Vec<Hold>>,
    },
    /// Every account (for checks and snapshots).
    Dump(RpcReplyPort<Vec<Account>>),
}

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
}

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
        Ok(RunningShard { state: args.state, shared: args.shared })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        running: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        running.handle(message);
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

    fn handle(&mut self, message: ShardMsg) {
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
                match self.state.set_status(account_id, status) {
                    Err(rejection) => reply(port, Err(LedgerError::Rejected(rejection))),
                    Ok((account, None)) => reply(port, Ok(account)),
                    Ok((account, Some(event))) => {
                        let record = Record::Applied(Applied { events: vec![event], ..Default::default() });
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
                    .map(|(index, op)| {
                        let reservation = self.state.reserve(&op, now_ms)?;
                        let assets = reservation.assets.clone();
                        self.state.hold_prepared((commit_id, index), op, reservation);
                        Ok(assets)
                    })
                    .collect();
                reply(port, outcomes);
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
                self.shared.journal.append(record, self.shared.poison_on_failure());
            }
            ShardMsg::GetAccount(account_id, port) => {
                reply(port, self.state.account(account_id).map(|(a, r)| (a.clone(), r)));
            }
            ShardMsg::DueHolds { now_ms, limit, reply: port } => {
                reply(port, self.state.due_holds(now_ms, limit));
            }
            ShardMsg::Dump(port) => reply(port, self.state.accounts().cloned().collect()),
        }
    }

    fn execute(&mut self, ops: Vec<Arc<[Planned]>>, port: RpcReplyPort<Result<Vec<OpOutcome>, LedgerError>>) {
        let now_ms = self.shared.clock.now_ms();
        let mut outcomes = Vec::with_capacity(ops.len());
        let mut record = Applied::default();
        for op in &ops {
            match self.state.execute_local(op, now_ms) {
                Ok(applied) => {
                    record.transfers.extend(applied.transfers);
                    record.resolutions.extend(applied.resolutions);
                    record.events.extend(applied.events);
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
        self.shared.journal.append(
            Record::Applied(record),
            Box::new(move |result| match result {
                Ok(()) => {
                    for transfer in transfers {
                        registry.complete(Arc::new(transfer));
                    }
                    for resolution in resolutions {
                        registry.resolve(resolution.pending_id, resolution.status);
                    }
                    reply(port, Ok(outcomes));
                }
                Err(error) => {
                    shared.poison(error);
                    reply(port, Err(LedgerError::Unavailable));
                }
            }),
        );
    }

    fn journal_then_reply<T: Send + 'static>(
        &self,
        record: Record,
        port: RpcReplyPort<Result<T, LedgerError>>,
        value: Result<T, LedgerError>,
    ) {
        let shared = self.shared.clone();
        self.shared.journal.append(
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
