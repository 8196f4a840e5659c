//! The shard actor: a ractor actor that owns one [`ShardState`] and hands
//! each message to it, one at a time. It routes, reserves, applies and
//! journals; it never awaits another actor, and never touches a disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::account::{Account, AccountStatus, Reserved};
use crate::asset::Asset;
use crate::ids::{AccountId, CommitId, ShardId};
use crate::record::{Applied, Clock, Journal, JournalError, OnDurable, Record, ShardApplied};
use crate::registry::TransferRegistry;
use crate::rejection::Rejection;
use crate::shard::{commit_record, Captured, HistoryEntry, Hold, IndexedRejection, Planned, ShardState};
use crate::LedgerError;

/// Where account history older than the last snapshot lives.
pub trait HistoryIndex: Send + Sync + 'static {
    /// Entries of `account_id` after `after_sequence`, oldest first, at most `limit`.
    fn history(
        &self,
        account_id: AccountId,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, crate::registry::TransferIndexError>;
}

/// How shards reach each other. In the embedded node every shard is a
/// local actor; cluster mode routes some of them over NATS.
pub trait ShardRouter: Send + Sync + 'static {
    /// Delivers `message` to `shard`, in order with earlier messages to it.
    fn send(&self, shard: ShardId, message: ShardMsg) -> Result<(), LedgerError>;
}

/// The router of the embedded node: the shards' actor references.
#[derive(Default)]
pub struct LocalRouter {
    shards: std::sync::OnceLock<Vec<ActorRef<ShardMsg>>>,
}

impl LocalRouter {
    /// Sets the shards once they are spawned.
    pub fn set(&self, shards: Vec<ActorRef<ShardMsg>>) {
        let _ = self.shards.set(shards);
    }
}

impl ShardRouter for LocalRouter {
    fn send(&self, shard: ShardId, message: ShardMsg) -> Result<(), LedgerError> {
        let actor =
            self.shards.get().and_then(|s| s.get(shard.0 as usize)).ok_or(LedgerError::Unavailable)?;
        actor.cast(message).map_err(|_| LedgerError::Unavailable)
    }
}

/// Where the outcome of one transfer operation is sent.
pub type OutcomeSender = tokio::sync::oneshot::Sender<Result<OpOutcome, LedgerError>>;

/// A transfer between two shards, as sent to its debit shard.
pub struct ChainOp {
    /// Its commit id.
    pub commit_id: CommitId,
    /// The operation (one transfer).
    pub op: Arc<[Planned]>,
    /// The shard of its credit account.
    pub credit_shard: ShardId,
    /// Where the outcome goes.
    pub reply: OutcomeSender,
}

/// A transfer between two shards, reserved by its debit shard, as sent on
/// to its credit shard.
pub struct CreditOp {
    /// Its commit id.
    pub commit_id: CommitId,
    /// The operation.
    pub op: Arc<[Planned]>,
    /// The shard that reserved the debit side.
    pub debit_shard: ShardId,
    /// Assets of the debit side's accounts, for the asset check.
    pub debit_assets: Vec<(AccountId, Asset)>,
    /// Where the outcome goes.
    pub reply: OutcomeSender,
}

/// What the shards share with the rest of the ledger.
pub struct Shared {
    /// How shards reach each other.
    pub router: Arc<dyn ShardRouter>,
    /// Where records go.
    pub journal: Arc<dyn Journal>,
    /// Transfer ids and outcomes.
    pub registry: Arc<TransferRegistry>,
    /// Risk decisions, numbered as their records become durable.
    pub decisions: crate::risk::DecisionLog,
    /// The ledger's clock.
    pub clock: Arc<dyn Clock>,
    /// Where history older than the last snapshot is read.
    pub history: std::sync::RwLock<Option<Arc<dyn HistoryIndex>>>,
    /// Set once this generation of shards failed (a journal write, a
    /// snapshot read, a shard crashed): from then on the in-memory state may
    /// be ahead of the durable one, so nothing more is accepted.
    pub poisoned: AtomicBool,
    /// Why it failed, set once, before `failed` is woken.
    pub failure: std::sync::OnceLock<Failure>,
    /// Woken when it fails (shared by every generation of the ledger).
    pub failed: Arc<tokio::sync::Notify>,
    /// Set while the shards are stopped on purpose: their ends are not failures.
    pub stopping: AtomicBool,
}

/// Why a generation of shards stopped serving. Every kind leaves the
/// durable state whole; all but a journal failure are mended by rebuilding
/// the shards from it ([`crate::Ledger::restart`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A journal write or sync failed: whether a record is durable is unknown.
    #[error("journal failed: {0}")]
    Journal(JournalError),
    /// A passivated account could not be read back from the snapshot.
    #[error("reading an account from the snapshot failed")]
    SnapshotRead,
    /// A shard actor panicked or stopped (a broken invariant).
    #[error("shard {} crashed", .0.0)]
    ShardCrashed(ShardId),
    /// A shard could not be sent a message.
    #[error("shard {} unreachable", .0.0)]
    ShardUnreachable(ShardId),
}

impl Shared {
    /// Shared state of a new generation of shards.
    pub fn new(
        router: Arc<dyn ShardRouter>,
        journal: Arc<dyn Journal>,
        registry: Arc<TransferRegistry>,
        decisions: crate::risk::DecisionLog,
        clock: Arc<dyn Clock>,
        failed: Arc<tokio::sync::Notify>,
    ) -> Shared {
        Shared {
            router,
            journal,
            registry,
            decisions,
            clock,
            history: std::sync::RwLock::new(None),
            poisoned: AtomicBool::new(false),
            failure: std::sync::OnceLock::new(),
            failed,
            stopping: AtomicBool::new(false),
        }
    }

    /// A durable-callback that poisons the ledger if the write failed.
    pub fn poison_on_failure(self: &Arc<Self>) -> OnDurable {
        let shared = self.clone();
        Box::new(move |result| {
            if let Err(error) = result {
                shared.poison(error);
            }
        })
    }

    /// Marks the ledger failed because a passivated account could not be
    /// read back: answers about it could be wrong, so none are given.
    pub fn poison_on_read(&self) {
        self.fail(Failure::SnapshotRead);
    }

    /// Marks the ledger failed because a journal write failed.
    pub fn poison(&self, error: JournalError) {
        self.fail(Failure::Journal(error));
    }

    /// Marks this generation failed (the first failure is the one kept) and
    /// wakes whoever supervises the ledger.
    pub fn fail(&self, failure: Failure) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            let _ = self.failure.set(failure);
            tracing::error!(%failure, "the ledger refuses work until its shards are rebuilt from durable state");
            self.failed.notify_one();
        }
    }
}

/// Closes a generation's way to the journal: once [`JournalGate::close`]
/// returns, nothing that generation still has in flight (a shard's last
/// flush, a coordinator's commit) can reach the journal, so a rebuild that
/// reads the journal after a barrier sees everything the old generation
/// will ever have written.
pub struct JournalGate {
    journal: Arc<dyn Journal>,
    open: std::sync::RwLock<bool>,
}

impl JournalGate {
    /// An open gate in front of `journal`.
    pub fn new(journal: Arc<dyn Journal>) -> JournalGate {
        JournalGate { journal, open: std::sync::RwLock::new(true) }
    }

    /// Refuses every later append; waits for appends under way to be queued.
    pub fn close(&self) {
        *self.open.write().unwrap_or_else(std::sync::PoisonError::into_inner) = false;
    }
}

impl Journal for JournalGate {
    fn append(&self, record: Record, on_durable: OnDurable) {
        let open = self.open.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *open {
            self.journal.append(record, on_durable);
        } else {
            drop(open);
            on_durable(Err(JournalError::Closed));
        }
    }

    fn when_durable(&self, on_durable: OnDurable) {
        let open = self.open.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *open {
            self.journal.when_durable(on_durable);
        } else {
            drop(open);
            on_durable(Err(JournalError::Closed));
        }
    }
}

/// The shard supervisor takes no messages; it only hears its shards end.
pub enum SupervisorMsg {}

/// The supervisor of one generation of shards: a shard that panics or
/// stops while the ledger is not stopping fails the generation, which wakes
/// the ledger's owner to rebuild the shards from durable state.
pub struct ShardSupervisor;

/// The supervisor's state.
pub struct SupervisorState {
    shared: Arc<Shared>,
    /// Actor ids of the shards, in shard order (filled as they start).
    shards: Arc<std::sync::Mutex<Vec<ractor::ActorId>>>,
}

impl Actor for ShardSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = (Arc<Shared>, Arc<std::sync::Mutex<Vec<ractor::ActorId>>>);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (shared, shards): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SupervisorState { shared, shards })
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: ractor::SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match &event {
            ractor::SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            ractor::SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.clone().unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if state.shared.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let id = cell.get_id();
        let position = state.shards.lock().ok().and_then(|ids| ids.iter().position(|s| *s == id));
        let shard = ShardId(position.and_then(|p| u16::try_from(p).ok()).unwrap_or(u16::MAX));
        tracing::error!(shard = shard.0, %reason, "shard actor ended");
        state.shared.fail(Failure::ShardCrashed(shard));
        Ok(())
    }
}

/// Outcome of one operation of an [`ShardMsg::Execute`].
pub type OpOutcome = Result<(), IndexedRejection>;
/// Outcome of one operation of a [`ShardMsg::Prepare`], with the assets of
/// the shard's accounts it touches for the coordinator's cross-shard checks.
pub type PrepareOutcome = (Vec<(AccountId, Asset)>, OpOutcome);

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
    /// Transfers between two shards, this one holding their debit side:
    /// reserve, then pass each on to its credit shard.
    Debit(Vec<ChainOp>),
    /// Transfers between two shards, this one holding their credit side:
    /// check, apply, journal the commit; once durable, settle the debit side
    /// and answer the caller.
    Credit(Vec<CreditOp>),
    /// A transfer the debit shard refused: add this shard's checks, so the
    /// caller hears the first failure by check order, and answer.
    Refused(Vec<CreditOp>, Vec<IndexedRejection>),
    /// Apply the reserved debit side of committed transfers.
    Settle(Vec<CommitId>),
    /// Release the reserved debit side of transfers the credit side refused.
    Release(Vec<CommitId>),
    /// Send what the shard held back (it sends this to itself).
    Flush,
    /// Read an account and its reservations. Answered once every change the
    /// answer shows is durable.
    GetAccount(AccountId, RpcReplyPort<Result<Option<(Account, Reserved)>, LedgerError>>),
    /// Holds whose timeout has passed.
    DueHolds {
        /// Now, in ledger ms.
        now_ms: u64,
        /// At most this many.
        limit: usize,
        /// The holds.
        reply: RpcReplyPort<Vec<Hold>>,
    },
    /// Every resident account (for checks), once durable as shown.
    Dump(RpcReplyPort<Result<Vec<Account>, LedgerError>>),
    /// How many accounts are resident.
    Resident(RpcReplyPort<usize>),
    /// Panics the shard, as a broken invariant would (crash tests).
    #[cfg(feature = "fault-injection")]
    Crash,
    /// Replace the risk rules; answers once they are in force.
    SetRules(Arc<crate::risk::RuleSet>, RpcReplyPort<()>),
    /// What changed since the last capture (for a snapshot).
    Capture(RpcReplyPort<Captured>),
    /// Storage wrote the last capture (history included): forget the
    /// history it held, and passivate accounts untouched for this many
    /// snapshots (none when `None`).
    ForgetFlushedHistory(Option<u64>),
    /// An account's history still in memory, once durable as shown.
    History {
        /// The account.
        account_id: AccountId,
        /// Entries after this sequence number.
        after_sequence: u64,
        /// At most this many.
        limit: usize,
        /// The entries, oldest first.
        reply: RpcReplyPort<Result<Vec<HistoryEntry>, LedgerError>>,
    },
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
    myself: Option<ActorRef<ShardMsg>>,
    outbox: Outbox,
    /// Appends of this shard's records not yet durable: while there are
    /// none (and the outbox holds no record), memory shows only durable
    /// state and a read is answered at once.
    unsynced: Arc<std::sync::atomic::AtomicU64>,
}

/// An answer that waits until what it shows is durable.
type AfterDurable = Box<dyn FnOnce(Result<(), JournalError>) + Send + 'static>;

/// Work a shard holds back until it has handled the messages already in
/// its mailbox: its records go to the journal as one frame, its messages to
/// each other shard as one message. Under load one flush carries many
/// transfers; when idle it costs one message to itself.
#[derive(Default)]
struct Outbox {
    records: Vec<(Record, OnDurable)>,
    credits: std::collections::BTreeMap<ShardId, Vec<CreditOp>>,
    refused: std::collections::BTreeMap<ShardId, (Vec<CreditOp>, Vec<IndexedRejection>)>,
    releases: std::collections::BTreeMap<ShardId, Vec<CommitId>>,
    /// Answers to callers whose transfer this shard refused: sent after
    /// the releases, so that the debit shard frees the reservation before
    /// anything the caller does next can reach it.
    after_releases: Vec<(OutcomeSender, OpOutcome)>,
    /// Answers to `Prepare`: a reservation may rely on changes whose
    /// records are still here, and the coordinator's commit record that
    /// follows must not reach the journal before them. Sent once they are
    /// appended (the journal keeps append order), so no record is ever
    /// durable before a record it depends on.
    prepared: Vec<(RpcReplyPort<Vec<PrepareOutcome>>, Vec<PrepareOutcome>)>,
    /// Answers to reads: sent once every record this shard appended so far
    /// is durable, so a read never shows what a crash could take back.
    after_durable: Vec<AfterDurable>,
    flush_scheduled: bool,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.credits.is_empty()
            && self.refused.is_empty()
            && self.releases.is_empty()
            && self.after_releases.is_empty()
            && self.prepared.is_empty()
            && self.after_durable.is_empty()
    }
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
        Ok(RunningShard {
            state: args.state,
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
        let mut record = Applied::default();
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

    /// Queues a record; it reaches the journal at the next flush, in order
    /// with every other record of this shard.
    fn journal(&mut self, record: Record, on_durable: OnDurable) {
        self.outbox.records.push((record, on_durable));
    }

    fn schedule_flush(&mut self) {
        if self.outbox.flush_scheduled || self.outbox.is_empty() {
            return;
        }
        match &self.myself {
            Some(myself) if myself.cast(ShardMsg::Flush).is_ok() => self.outbox.flush_scheduled = true,
            // Stopping: nothing will handle a Flush, so send now.
            _ => self.flush(),
        }
    }

    fn flush(&mut self) {
        self.outbox.flush_scheduled = false;
        let records = std::mem::take(&mut self.outbox.records);
        let reads = std::mem::take(&mut self.outbox.after_durable);
        if !records.is_empty() {
            let (records, callbacks): (Vec<Record>, Vec<OnDurable>) = records.into_iter().unzip();
            let record = match <[Record; 1]>::try_from(records) {
                Ok([one]) => one,
                Err(records) => Record::Batch(records),
            };
            let unsynced = self.unsynced.clone();
            unsynced.fetch_add(1, Ordering::SeqCst);
            self.shared.journal.append(
                record,
                Box::new(move |result| {
                    for on_durable in callbacks {
                        on_durable(result);
                    }
                    unsynced.fetch_sub(1, Ordering::SeqCst);
                    for read in reads {
                        read(result);
                    }
                }),
            );
        } else if !reads.is_empty() {
            self.shared.journal.when_durable(Box::new(move |result| {
                for read in reads {
                    read(result);
                }
            }));
        }
        // Every record a reservation may rely on is appended: the
        // coordinator may now append the commit that follows from it.
        for (port, outcomes) in std::mem::take(&mut self.outbox.prepared) {
            reply(port, outcomes);
        }
        let send = |shard: ShardId, message: ShardMsg, shared: &Shared| {
            if let Err(error) = shared.router.send(shard, message) {
                // Nothing can reach that shard, so the ledger stops.
                tracing::error!(%error, shard = shard.0, "shard unreachable");
                shared.fail(Failure::ShardUnreachable(shard));
            }
        };
        for (shard, (ops, failures)) in std::mem::take(&mut self.outbox.refused) {
            send(shard, ShardMsg::Refused(ops, failures), &self.shared);
        }
        for (shard, credits) in std::mem::take(&mut self.outbox.credits) {
            send(shard, ShardMsg::Credit(credits), &self.shared);
        }
        for (shard, commit_ids) in std::mem::take(&mut self.outbox.releases) {
            send(shard, ShardMsg::Release(commit_ids), &self.shared);
        }
        for (reply, outcome) in std::mem::take(&mut self.outbox.after_releases) {
            let _ = reply.send(Ok(outcome));
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
#[path = "actor_tests.rs"]
mod tests;
