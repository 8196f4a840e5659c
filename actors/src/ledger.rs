//! The ledger handle: checks and plans requests, claims their ids, routes
//! each operation to its shard, and coordinates operations that span shards.
//!
//! See `docs/ARCHITECTURE.md`, "Transfers across shards", for the protocol.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ractor::{Actor, ActorRef};
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::account::{Account, AccountFlags, AccountStatus, Leg, Reserved, Side};
use crate::actor::{
    ChainOp, Failure, JournalGate, LocalRouter, OpOutcome, PrepareOutcome, ShardActor, ShardArgs, ShardMsg,
    ShardSupervisor, Shared, SupervisorMsg,
};
use crate::amount::Amount;
use crate::asset::Asset;
use crate::ids::{stable_hash, AccountId, CommitId, ShardId, UserId};
use crate::record::{append_durable, Clock, Journal, Record};
use crate::recovery::Recovered;
use crate::registry::{Claim, TransferRecord};
use crate::rejection::Rejection;
use crate::risk::{Decision, DecisionIndex, DecisionLog, RiskHit, Rule, RuleSet};
use crate::shard::{HoldChange, IndexedRejection, Planned};
use crate::transfer::{Transfer, TransferKind, TransferRequest, TransferStatus, BATCH_SIZE_MAX};
use crate::LedgerError;

/// How a ledger runs.
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// Number of shards; fixed for the life of the data.
    pub shard_count: u16,
    /// Most transfers admitted at once; past it requests get `Overloaded`.
    pub in_flight_max: usize,
    /// How long a caller waits for a shard or the journal.
    pub request_timeout_ms: u64,
    /// How often due holds are expired.
    pub expiry_interval_ms: u64,
    /// Most transfers kept in memory until a snapshot takes them: past it,
    /// new requests get `Overloaded` until snapshots catch up, so memory
    /// stays bounded when storage is slower than the traffic.
    pub unsnapshotted_transfers_max: usize,
    /// Accounts not named by any message during this many snapshots are
    /// passivated (dropped from memory, read back from the snapshot when
    /// next named); `None` keeps every account resident.
    pub passivate_after_snapshots: Option<u64>,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            shard_count: 64,
            in_flight_max: 1 << 16,
            request_timeout_ms: 10_000,
            expiry_interval_ms: 100,
            passivate_after_snapshots: Some(8),
            unsnapshotted_transfers_max: 2_000_000,
        }
    }
}

/// What opening an account needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccount {
    /// Chosen by the caller.
    pub id: AccountId,
    /// Owner.
    pub user_id: UserId,
    /// Asset.
    pub asset: Asset,
    /// Limits.
    pub flags: AccountFlags,
    /// Overdraft allowed below zero (with `debits_must_not_exceed_credits`).
    pub overdraft_limit: Amount,
}

impl NewAccount {
    /// The account as it stands when opened at `created_at_ms`: active,
    /// zero balances, sequence 1.
    pub fn opened_at(self, created_at_ms: u64) -> Account {
        Account {
            id: self.id,
            user_id: self.user_id,
            asset: self.asset,
            flags: self.flags,
            overdraft_limit: self.overdraft_limit,
            status: AccountStatus::Active,
            balances: Default::default(),
            created_at_ms,
            sequence: 1,
            debit_window: Default::default(),
        }
    }
}

/// The outcome of a transfer request that was applied (now or before).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferOutcome {
    /// The stored transfer and its status.
    pub record: TransferRecord,
    /// True when the id had been applied before: nothing moved this time.
    pub replayed: bool,
}

/// Result of one transfer request.
pub type TransferResult = Result<TransferOutcome, Rejection>;

/// An account as read: its fields plus money in flight in prepared legs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountView {
    /// The account.
    pub account: Account,
    /// Money reserved by operations prepared and not yet decided.
    pub reserved: Reserved,
}

/// The top 32 bits of every settlement account id: ids in this range are
/// reserved for the system (a random UUID lands there once in 2^32).
pub const SETTLEMENT_ID_PREFIX: u128 = 0xffff_ffff << 96;

/// The id of the settlement account of an asset: where deposits come from
/// and withdrawals go. Derived from the asset so every node agrees, and in
/// a reserved range so no one else can take it first.
pub fn settlement_account_id(asset: &Asset) -> AccountId {
    let mut key: u128 = u128::from(asset.scale());
    for byte in asset.code().bytes() {
        key = key.wrapping_mul(257).wrapping_add(u128::from(byte));
    }
    let middle = u128::from(stable_hash(key) as u32) << 64;
    let low = u128::from(stable_hash(key ^ 0x005e_771e)) | 1;
    // Never zero: the prefix is set.
    AccountId::new(SETTLEMENT_ID_PREFIX | middle | low).unwrap_or_else(|_| unreachable!("prefix set"))
}

/// Whether an id is in the range reserved for settlement accounts.
pub fn is_reserved_account_id(id: AccountId) -> bool {
    id.get() & SETTLEMENT_ID_PREFIX == SETTLEMENT_ID_PREFIX
}

/// One generation of shards and what they share. A rebuild after a
/// failure ([`Ledger::restart`]) replaces it whole.
struct Inner {
    shards: Vec<ActorRef<ShardMsg>>,
    supervisor: ActorRef<SupervisorMsg>,
    gate: Arc<JournalGate>,
    shared: Arc<Shared>,
    /// The ledger's configuration (shared with every generation).
    config: Arc<LedgerConfig>,
    next_commit_id: AtomicU64,
    timeout: Duration,
    decisions: DecisionLog,
    /// Emptied at shutdown, so the snapshot store can close.
    account_source: std::sync::RwLock<Option<Arc<dyn crate::shard::AccountSource>>>,
}

/// What every generation of a ledger shares.
struct Base {
    config: Arc<LedgerConfig>,
    clock: Arc<dyn Clock>,
    /// Woken when a generation fails.
    failed: Arc<Notify>,
    rules: std::sync::RwLock<Arc<RuleSet>>,
    /// Held by `set_rules` and by `restart` from spawning to the swap, so a
    /// rules change during a rebuild reaches the new shards.
    rules_change: tokio::sync::Mutex<()>,
    admission: Arc<Semaphore>,
}

/// The current generation and what all of them share.
struct Cell {
    current: ArcSwap<Inner>,
    base: Base,
    /// Set by [`Ledger::shutdown`]: background tasks end.
    stopped: AtomicBool,
    /// How many times the shards were rebuilt.
    rebuilds: AtomicU64,
}

/// A running ledger. Cheap to clone; every clone sees the same shards,
/// also after they are rebuilt.
#[derive(Clone)]
pub struct Ledger {
    cell: Arc<Cell>,
}

/// Starts one generation of shards on recovered state, supervised.
async fn spawn_generation(
    recovered: Recovered,
    completions: Vec<Record>,
    journal: Arc<dyn Journal>,
    cell: &Base,
) -> Result<Inner, LedgerError> {
    let router = Arc::new(LocalRouter::default());
    let gate = Arc::new(JournalGate::new(journal));
    let shared = Arc::new(Shared::new(
        router.clone(),
        gate.clone(),
        recovered.registry,
        cell.clock.clone(),
        cell.failed.clone(),
    ));
    let timeout = Duration::from_millis(cell.config.request_timeout_ms);
    for record in completions {
        append_durable(shared.journal.as_ref(), record).await.map_err(|_| LedgerError::Unavailable)?;
    }
    let shard_ids: Arc<std::sync::Mutex<Vec<ractor::ActorId>>> = Default::default();
    let (supervisor, _) = Actor::spawn(None, ShardSupervisor, (shared.clone(), shard_ids.clone()))
        .await
        .map_err(|_| LedgerError::Unavailable)?;
    let mut shards = Vec::with_capacity(recovered.shards.len());
    for state in recovered.shards {
        let args = ShardArgs { state, shared: shared.clone() };
        match Actor::spawn_linked(None, ShardActor, args, supervisor.get_cell()).await {
            Ok((actor, _)) => {
                if let Ok(mut ids) = shard_ids.lock() {
                    ids.push(actor.get_id());
                }
                shards.push(actor);
            }
            Err(error) => {
                tracing::error!(%error, "a shard did not start");
                stop_shards(&shared, &shards, &supervisor, timeout).await;
                return Err(LedgerError::Unavailable);
            }
        }
    }
    router.set(shards.clone());
    let rules = cell.rules.read().map(|r| r.clone()).unwrap_or_default();
    for shard in &shards {
        let rules = rules.clone();
        if let Err(error) = ask_shard(shard, timeout, |port| ShardMsg::SetRules(rules, port)).await {
            stop_shards(&shared, &shards, &supervisor, timeout).await;
            return Err(error);
        }
    }
    Ok(Inner {
        shards,
        supervisor,
        gate,
        shared,
        timeout,
        next_commit_id: AtomicU64::new(recovered.next_commit_id),
        config: cell.config.clone(),
        decisions: DecisionLog::new(recovered.next_decision_id, recovered.decisions),
        account_source: std::sync::RwLock::new(recovered.account_source),
    })
}

/// Sends `message` to `shard` and waits up to `timeout` for its answer.
async fn ask_shard<T: Send + 'static>(
    shard: &ActorRef<ShardMsg>,
    timeout: Duration,
    message: impl FnOnce(ractor::RpcReplyPort<T>) -> ShardMsg,
) -> Result<T, LedgerError> {
    let (tx, rx) = oneshot::channel();
    shard.cast(message(tx.into())).map_err(|_| LedgerError::Unavailable)?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(LedgerError::Unavailable),
        Err(_) => Err(LedgerError::Timeout),
    }
}

impl Inner {
    /// Refuses work once this generation failed.
    fn check_serving(&self) -> Result<(), LedgerError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            Err(LedgerError::Unavailable)
        } else {
            Ok(())
        }
    }
}

/// Stops a generation's shards on purpose and waits (up to `timeout` each)
/// until they have.
async fn stop_shards(
    shared: &Shared,
    shards: &[ActorRef<ShardMsg>],
    supervisor: &ActorRef<SupervisorMsg>,
    timeout: Duration,
) {
    shared.stopping.store(true, Ordering::SeqCst);
    for shard in shards {
        shard.stop(None);
    }
    for shard in shards {
        let deadline = tokio::time::Instant::now() + timeout;
        while shard.get_status() != ractor::ActorStatus::Stopped && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // A stopped shard hands its state to its supervisor; waiting for the
    // supervisor drops it, so storage the shards held can close.
    let _ = supervisor.stop_and_wait(None, Some(timeout)).await;
}

impl Ledger {
    /// Starts the shard actors on recovered state. `completions` are records
    /// recovery produced; they are journaled before the ledger serves.
    pub async fn start(
        recovered: Recovered,
        completions: Vec<Record>,
        journal: Arc<dyn Journal>,
        clock: Arc<dyn Clock>,
        config: LedgerConfig,
    ) -> Result<Ledger, LedgerError> {
        let base = Base {
            admission: Arc::new(Semaphore::new(config.in_flight_max)),
            config: Arc::new(config),
            clock,
            failed: Arc::new(Notify::new()),
            rules: Default::default(),
            rules_change: tokio::sync::Mutex::new(()),
        };
        let inner = spawn_generation(recovered, completions, journal, &base).await?;
        let cell = Cell {
            current: ArcSwap::from_pointee(inner),
            base,
            stopped: AtomicBool::new(false),
            rebuilds: AtomicU64::new(0),
        };
        let ledger = Ledger { cell: Arc::new(cell) };
        ledger.spawn_expiry();
        Ok(ledger)
    }

    /// The current generation of shards.
    fn inner(&self) -> Arc<Inner> {
        self.cell.current.load_full()
    }

    fn spawn_expiry(&self) {
        let weak = Arc::downgrade(&self.cell);
        let interval = Duration::from_millis(self.cell.base.config.expiry_interval_ms.max(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(cell) = weak.upgrade() else { return };
                if cell.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let ledger = Ledger { cell };
                if ledger.check_poisoned().is_err() {
                    continue; // waiting for a rebuild
                }
                if let Err(error) = ledger.expire_due().await {
                    tracing::warn!(%error, "expiring holds failed");
                }
            }
        });
    }

    /// Stops the shard actors. Records already appended still become durable.
    pub async fn shutdown(&self) {
        self.cell.stopped.store(true, Ordering::SeqCst);
        let inner = self.inner();
        stop_shards(&inner.shared, &inner.shards, &inner.supervisor, inner.timeout).await;
    }

    /// Waits until the current generation of shards fails, and says why.
    /// The owner of the storage then rebuilds them: [`Ledger::halt`], make
    /// the journal's queue durable, recover from storage, [`Ledger::restart`].
    pub async fn failed(&self) -> Failure {
        loop {
            let notified = self.cell.base.failed.notified();
            if let Some(failure) = self.inner().shared.failure.get() {
                return *failure;
            }
            notified.await;
        }
    }

    /// Stops the current generation of shards for a rebuild: it refuses
    /// work, its shards stop, and once this returns nothing it still has in
    /// flight can reach the journal. Its callers whose outcome was not yet
    /// durable get `unavailable` (retrying with the same id is safe).
    pub async fn halt(&self) {
        let inner = self.inner();
        inner.shared.poisoned.store(true, Ordering::SeqCst);
        inner.gate.close();
        stop_shards(&inner.shared, &inner.shards, &inner.supervisor, inner.timeout).await;
    }

    /// Replaces the halted shards by new ones started on `recovered` (state
    /// read back from storage after [`Ledger::halt`]), keeping the rules and
    /// the history and decision indexes. Every clone of this ledger serves
    /// from the new shards once this returns.
    pub async fn restart(
        &self,
        recovered: Recovered,
        completions: Vec<Record>,
        journal: Arc<dyn Journal>,
    ) -> Result<(), LedgerError> {
        let _rules = self.cell.base.rules_change.lock().await;
        let old = self.inner();
        let inner = spawn_generation(recovered, completions, journal, &self.cell.base).await?;
        let history = old.shared.history.read().ok().and_then(|h| h.clone());
        if let Ok(mut slot) = inner.shared.history.write() {
            *slot = history;
        }
        inner.decisions.set_index(old.decisions.index());
        self.cell.current.store(Arc::new(inner));
        // The old generation lets go of storage, which must be able to close.
        if let Ok(mut slot) = old.shared.history.write() {
            *slot = None;
        }
        if let Ok(mut slot) = old.account_source.write() {
            *slot = None;
        }
        old.decisions.set_index(None);
        self.cell.rebuilds.fetch_add(1, Ordering::SeqCst);
        metrics::counter!("wallet_shard_rebuilds_total").increment(1);
        Ok(())
    }

    /// How many times the shards were rebuilt since the ledger started.
    pub fn rebuilds(&self) -> u64 {
        self.cell.rebuilds.load(Ordering::SeqCst)
    }

    /// Why the current shards failed, if they did and are not rebuilt yet.
    pub fn failure(&self) -> Option<Failure> {
        self.cell.current.load().shared.failure.get().copied()
    }

    /// Whether the process must restart to serve again: a journal write
    /// failed, and whether its records are durable only the files can say
    /// (an fsync that failed may have lost pages the page cache still
    /// shows), so no rebuild in the process is trusted.
    pub fn needs_restart(&self) -> bool {
        matches!(self.failure(), Some(Failure::Journal(_)))
    }

    /// Whether the shards serve (false between a failure and its rebuild).
    pub fn is_serving(&self) -> bool {
        self.check_poisoned().is_ok() && !self.cell.stopped.load(Ordering::Relaxed)
    }

    /// Panics a shard, as a broken invariant would (crash tests).
    #[cfg(feature = "fault-injection")]
    pub fn crash_shard(&self, shard: ShardId) {
        if let Some(actor) = self.inner().shards.get(shard.0 as usize) {
            let _ = actor.cast(ShardMsg::Crash);
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &LedgerConfig {
        &self.cell.base.config
    }

    fn shard_of(&self, account_id: AccountId) -> ActorRef<ShardMsg> {
        self.inner().shards[account_id.shard(self.cell.base.config.shard_count).0 as usize].clone()
    }

    fn check_poisoned(&self) -> Result<(), LedgerError> {
        self.cell.current.load().check_serving()
    }

    async fn ask<T: Send + 'static>(
        &self,
        shard: &ActorRef<ShardMsg>,
        message: impl FnOnce(ractor::RpcReplyPort<T>) -> ShardMsg,
    ) -> Result<T, LedgerError> {
        ask_shard(shard, Duration::from_millis(self.cell.base.config.request_timeout_ms), message).await
    }

    /// Opens an account (idempotent for the same fields).
    pub async fn open_account(&self, new: NewAccount) -> Result<Account, LedgerError> {
        self.check_poisoned()?;
        if is_reserved_account_id(new.id)
            && (new.id != settlement_account_id(&new.asset) || new.user_id != UserId::SYSTEM)
        {
            return Err(LedgerError::Rejected(Rejection::ReservedAccountId));
        }
        let shard = self.shard_of(new.id).clone();
        let account = new.opened_at(self.cell.base.clock.now_ms());
        self.ask(&shard, |port| ShardMsg::OpenAccount(account, port)).await?
    }

    /// Opens the settlement account of `asset` if it is not open yet.
    pub async fn ensure_settlement_account(&self, asset: Asset) -> Result<Account, LedgerError> {
        self.open_account(NewAccount {
            id: settlement_account_id(&asset),
            user_id: UserId::SYSTEM,
            asset,
            flags: AccountFlags::UNLIMITED,
            overdraft_limit: Amount::ZERO,
        })
        .await
    }

    /// Freezes, unfreezes or closes an account.
    pub async fn set_account_status(
        &self,
        account_id: AccountId,
        status: AccountStatus,
    ) -> Result<Account, LedgerError> {
        self.check_poisoned()?;
        let shard = self.shard_of(account_id).clone();
        self.ask(&shard, |port| ShardMsg::SetStatus(account_id, status, port)).await?
    }

    /// Reads an account. Sees every acknowledged write.
    pub async fn account(&self, account_id: AccountId) -> Result<Option<AccountView>, LedgerError> {
        let shard = self.shard_of(account_id).clone();
        let found = self.ask(&shard, |port| ShardMsg::GetAccount(account_id, port)).await??;
        Ok(found.map(|(account, reserved)| AccountView { account, reserved }))
    }

    /// How many accounts are in memory (the others are passivated).
    pub async fn resident_accounts(&self) -> Result<usize, LedgerError> {
        let mut total = 0;
        for shard in self.inner().shards.clone() {
            total += self.ask(&shard, ShardMsg::Resident).await?;
        }
        Ok(total)
    }

    /// Every account, resident or passivated (small ledgers and tests).
    pub async fn accounts(&self) -> Result<Vec<Account>, LedgerError> {
        let mut all: BTreeMap<AccountId, Account> = BTreeMap::new();
        let source = self.inner().account_source.read().ok().and_then(|s| s.clone());
        if let Some(source) = source {
            let stored = source.all().map_err(|_| LedgerError::Unavailable)?;
            all.extend(stored.into_iter().map(|account| (account.id, account)));
        }
        // Resident accounts are at least as new as their snapshot.
        for shard in self.inner().shards.clone() {
            let resident = self.ask(&shard, ShardMsg::Dump).await??;
            all.extend(resident.into_iter().map(|account| (account.id, account)));
        }
        Ok(all.into_values().collect())
    }

    /// A transfer by id, with its current status.
    pub fn transfer(&self, id: crate::ids::TransferId) -> Option<TransferRecord> {
        self.inner().shared.registry.get(id)
    }

    /// What every shard changed since the last capture, for a snapshot.
    /// Everything journaled before this call is included.
    ///
    /// Fails if the shards failed meanwhile: a shard halted for a rebuild
    /// may have captured changes whose records its closed journal gate then
    /// refused, and a snapshot must never hold what the journal does not.
    pub async fn capture(&self) -> Result<Vec<crate::shard::Captured>, LedgerError> {
        let inner = self.inner();
        let mut all = Vec::with_capacity(inner.shards.len());
        for shard in &inner.shards {
            all.push(self.ask(shard, ShardMsg::Capture).await?);
        }
        // A refusal by the gate comes after `halt` set this flag.
        inner.check_serving()?;
        Ok(all)
    }

    /// Replaces the risk rules. Once this returns, every transfer is checked
    /// against them. Rules are configuration, kept by the caller (the API
    /// stores them with its users); the ledger keeps what they decided.
    pub async fn set_rules(&self, rules: Vec<Rule>) -> Result<(), LedgerError> {
        let _changing = self.cell.base.rules_change.lock().await;
        let rules = Arc::new(RuleSet::new(rules));
        if let Ok(mut slot) = self.cell.base.rules.write() {
            *slot = rules.clone();
        }
        for shard in self.inner().shards.clone() {
            let rules = rules.clone();
            self.ask(&shard, |port| ShardMsg::SetRules(rules, port)).await?;
        }
        Ok(())
    }

    /// The risk rules in force, in check order.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.cell.base.rules.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Risk decisions after `after_id`, of `account_id` when given, oldest
    /// first, at most `limit`. Sees every acknowledged decision.
    pub fn decisions(
        &self,
        account_id: Option<AccountId>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Decision>, LedgerError> {
        self.inner().decisions.list(account_id, after_id, limit).map_err(|_| LedgerError::Unavailable)
    }

    /// Sets (or, with `None`, lets go of) where older decisions are read.
    pub fn set_decision_index(&self, index: Option<Arc<dyn DecisionIndex>>) {
        self.inner().decisions.set_index(index);
    }

    /// Decisions held in memory, for a snapshot.
    pub fn recent_decisions(&self) -> Vec<Decision> {
        self.inner().decisions.recent()
    }

    /// Storage has every decision up to `up_to_id`.
    pub fn forget_decisions_up_to(&self, up_to_id: u64) {
        self.inner().decisions.forget_up_to(up_to_id);
    }

    /// Journals decisions and waits until they are durable.
    async fn record_decisions(
        &self,
        current: &Arc<Inner>,
        decisions: Vec<Decision>,
    ) -> Result<(), LedgerError> {
        if decisions.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let shared = current.shared.clone();
        let inner = Arc::downgrade(current);
        current.decisions.number(decisions, |numbered| {
            let record = Record::Decisions(numbered.clone());
            shared.clone().journal.append(
                record,
                Box::new(move |result| {
                    match result {
                        Ok(()) => {
                            if let Some(inner) = inner.upgrade() {
                                inner.decisions.durable(&numbered);
                            }
                        }
                        Err(error) => shared.poison(error),
                    }
                    let _ = tx.send(result);
                }),
            );
        });
        match tokio::time::timeout(current.timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(_) => Err(LedgerError::Unavailable),
            Err(_) => Err(LedgerError::Timeout),
        }
    }

    /// Sets where history older than the last snapshot is read.
    pub fn set_history_index(&self, index: Arc<dyn crate::actor::HistoryIndex>) {
        if let Ok(mut slot) = self.inner().shared.history.write() {
            *slot = Some(index);
        }
    }

    /// Lets go of the history index and the account source (at shutdown,
    /// after the shards stopped), so storage can close.
    pub fn detach_history_index(&self) {
        if let Ok(mut slot) = self.inner().shared.history.write() {
            *slot = None;
        }
        if let Ok(mut slot) = self.inner().account_source.write() {
            *slot = None;
        }
    }

    /// Tells every shard that storage wrote the last capture's history.
    pub fn forget_flushed_history(&self) {
        let idle = self.cell.base.config.passivate_after_snapshots;
        for shard in &self.inner().shards {
            let _ = shard.cast(ShardMsg::ForgetFlushedHistory(idle));
        }
    }

    /// An account's history after `after_sequence`, oldest first, at most
    /// `limit` entries (1 to 1,000), each with the balances right after it.
    /// Sees every acknowledged write.
    pub async fn history(
        &self,
        account_id: AccountId,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<crate::shard::HistoryEntry>, LedgerError> {
        let limit = limit.clamp(1, 1000);
        let shard = self.shard_of(account_id).clone();
        // Memory first, then storage: an entry that moves between them in
        // between is then seen twice (and deduplicated), never missed.
        let mut entries = self
            .ask(&shard, |port| ShardMsg::History { account_id, after_sequence, limit, reply: port })
            .await??;
        let index = self.inner().shared.history.read().map_err(|_| LedgerError::Unavailable)?.clone();
        if let Some(index) = index {
            let older =
                index.history(account_id, after_sequence, limit).map_err(|_| LedgerError::Unavailable)?;
            entries.extend(older);
            entries.sort_by_key(|e| e.sequence);
            entries.dedup_by_key(|e| e.sequence);
            entries.truncate(limit);
        }
        Ok(entries)
    }

    /// The balances of an account right after its event `sequence`.
    pub async fn balances_at(
        &self,
        account_id: AccountId,
        sequence: u64,
    ) -> Result<Option<crate::account::Balances>, LedgerError> {
        let entries = self.history(account_id, sequence.saturating_sub(1), 1).await?;
        Ok(entries.into_iter().find(|e| e.sequence == sequence).map(|e| e.balances))
    }

    /// The next coordinated commit id (recorded by snapshots).
    pub fn next_commit_id(&self) -> u64 {
        self.inner().next_commit_id.load(Ordering::Relaxed)
    }

    /// The transfer registry (storage sets its index and evicts from it).
    pub fn registry(&self) -> Arc<crate::registry::TransferRegistry> {
        self.inner().shared.registry.clone()
    }

    /// Every transfer still in memory (tests and audits: it copies them all).
    pub fn transfers(&self) -> Vec<TransferRecord> {
        self.inner().shared.registry.snapshot()
    }

    /// Applies one transfer request.
    pub async fn submit_one(&self, request: TransferRequest) -> Result<TransferResult, LedgerError> {
        let mut results = self.submit(vec![request], false).await?;
        Ok(results.pop().unwrap_or(Err(Rejection::BatchSizeOutOfRange)))
    }

    /// Applies transfer requests: each on its own, or all-or-nothing when
    /// `linked`. Returns one result per request, in order. Every applied
    /// transfer is durable before this returns.
    pub async fn submit(
        &self,
        requests: Vec<TransferRequest>,
        linked: bool,
    ) -> Result<Vec<TransferResult>, LedgerError> {
        let inner = self.inner();
        inner.check_serving()?;
        if requests.is_empty() || requests.len() > BATCH_SIZE_MAX {
            return Err(LedgerError::Rejected(Rejection::BatchSizeOutOfRange));
        }
        if inner.shared.registry.recorded() >= inner.config.unsnapshotted_transfers_max {
            metrics::counter!("wallet_overloaded_total", "reason" => "snapshot_behind").increment(1);
            return Err(LedgerError::Overloaded);
        }
        let _permit = self
            .cell
            .base
            .admission
            .clone()
            .try_acquire_many_owned(requests.len() as u32)
            .map_err(|_| LedgerError::Overloaded)?;
        let now_ms = inner.shared.clock.now_ms();
        let registry = &inner.shared.registry;

        let mut results: Vec<Option<TransferResult>> = vec![None; requests.len()];
        let mut planned: Vec<(usize, Planned)> = Vec::with_capacity(requests.len());
        let mut claimed = Vec::with_capacity(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            if let Err(rejection) = request.check_stateless() {
                results[index] = Some(Err(rejection));
                continue;
            }
            let request = Arc::new(request);
            match registry.claim(&request) {
                Claim::New => {}
                Claim::Replay(record) => {
                    results[index] = Some(Ok(TransferOutcome { record, replayed: true }));
                    continue;
                }
                Claim::Conflict => {
                    results[index] = Some(Err(Rejection::ExistsWithDifferentFields));
                    continue;
                }
                Claim::InFlight => {
                    results[index] = Some(Err(Rejection::InFlight));
                    continue;
                }
                Claim::Unavailable => {
                    for id in claimed {
                        registry.release(id);
                    }
                    return Err(LedgerError::Unavailable);
                }
            }
            match self.plan(&inner, &request, now_ms) {
                Ok(p) => {
                    claimed.push(request.id());
                    planned.push((index, p));
                }
                Err(rejection) => {
                    registry.release(request.id());
                    results[index] = Some(Err(rejection));
                }
            }
        }

        if linked {
            // A linked batch retried whole gets its first outcomes back.
            if results.iter().all(|r| matches!(r, Some(Ok(_)))) {
                return Ok(results.into_iter().flatten().collect());
            }
            // Otherwise it fails as a whole at its first failure; a replay
            // mixed with new transfers counts as a failure.
            if let Some(first) = results.iter().position(|r| r.is_some()) {
                let reason = match &results[first] {
                    Some(Err(rejection)) => *rejection,
                    _ => Rejection::LinkedTransferFailed,
                };
                for id in claimed {
                    registry.release(id);
                }
                return Ok(linked_failure(results.len(), first as u32, reason));
            }
        }

        // Group planned transfers into operations.
        let ops: Vec<(Vec<usize>, Arc<[Planned]>)> = if linked {
            let (indexes, items): (Vec<usize>, Vec<Planned>) = planned.into_iter().unzip();
            vec![(indexes, items.into())]
        } else {
            planned.into_iter().map(|(index, p)| (vec![index], Arc::from(vec![p]))).collect()
        };
        // Unknown outcome on error: claims are kept so the ids cannot be
        // reused until a restart recovers what was durable.
        let mut ops = ops;
        let mut outcomes = self.run_ops(&inner, ops.iter().map(|(_, op)| op.clone()).collect()).await?;
        // A review rule answers "hold it": that transfer becomes a review
        // hold and its operation runs again. Each round turns one more
        // transfer of an operation into a hold, so this ends.
        let mut reviewed: Vec<(usize, usize, RiskHit)> = Vec::new();
        loop {
            let mut again = Vec::new();
            for (position, outcome) in outcomes.iter().enumerate() {
                if let Err((failed, Rejection::RiskReview(hit))) = outcome {
                    let (_, op) = &mut ops[position];
                    let mut items = op.to_vec();
                    let failed = *failed as usize;
                    let Some(item) = items.get(failed).and_then(|p| review_hold(p, *hit, now_ms)) else {
                        continue;
                    };
                    items[failed] = item;
                    *op = items.into();
                    reviewed.push((position, failed, *hit));
                    again.push(position);
                }
            }
            if again.is_empty() {
                break;
            }
            let rerun =
                self.run_ops(&inner, again.iter().map(|&position| ops[position].1.clone()).collect()).await?;
            for (position, outcome) in again.into_iter().zip(rerun) {
                outcomes[position] = outcome;
            }
        }
        let mut decisions = Vec::new();
        for (position, item, hit) in reviewed {
            if let (Ok(()), Some(planned)) = (&outcomes[position], ops[position].1.get(item)) {
                decisions.push(decision(planned, hit, now_ms));
            }
        }
        for ((_, op), outcome) in ops.iter().zip(&outcomes) {
            if let Err((failed, rejection)) = outcome {
                if let (Some(hit), Some(planned)) = (rejection.risk_hit(), op.get(*failed as usize)) {
                    decisions.push(decision(planned, hit, now_ms));
                }
            }
        }
        self.record_decisions(&inner, decisions).await?;
        for ((indexes, op), outcome) in ops.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    for (index, planned) in indexes.iter().zip(op.iter()) {
                        if let Some(transfer) = &planned.transfer {
                            // The outcome as applied (the registry holds the
                            // same; reading it back was a cache miss per transfer).
                            let record = TransferRecord {
                                transfer: transfer.clone(),
                                status: transfer.initial_status(),
                            };
                            results[*index] = Some(Ok(TransferOutcome { record, replayed: false }));
                        }
                    }
                }
                Err((failed, rejection)) => {
                    for (position, (index, planned)) in indexes.iter().zip(op.iter()).enumerate() {
                        if let Some(transfer) = &planned.transfer {
                            registry.release(transfer.id);
                        }
                        let reason = if position as u32 == failed {
                            self.refine(&inner, rejection, planned)
                        } else {
                            Rejection::LinkedTransferFailed
                        };
                        results[*index] = Some(Err(reason));
                    }
                }
            }
        }
        Ok(results.into_iter().map(|r| r.unwrap_or(Err(Rejection::LinkedTransferFailed))).collect())
    }

    /// A shard that finds no hold reports "not found"; the registry knows why.
    fn refine(&self, inner: &Inner, rejection: Rejection, planned: &Planned) -> Rejection {
        match (rejection, planned.hold) {
            (Rejection::PendingTransferNotFound, HoldChange::Resolve(resolution)) => {
                match inner.shared.registry.get(resolution.pending_id).map(|r| r.status) {
                    Some(TransferStatus::Posted) => Rejection::PendingTransferAlreadyPosted,
                    Some(TransferStatus::Voided) => Rejection::PendingTransferAlreadyVoided,
                    Some(TransferStatus::Expired) => Rejection::PendingTransferExpired,
                    _ => rejection,
                }
            }
            _ => rejection,
        }
    }

    /// Turns a request into its legs, looking up the pending transfer a post
    /// or void names.
    fn plan(&self, inner: &Inner, request: &Arc<TransferRequest>, now_ms: u64) -> Result<Planned, Rejection> {
        let transfer_base = |kind, debit, credit, amount, pending_id, expires_at_ms| Transfer {
            id: request.id(),
            kind,
            debit_account_id: debit,
            credit_account_id: credit,
            amount,
            pending_id,
            expires_at_ms,
            timestamp_ms: now_ms,
            review: None,
            request: request.clone(),
        };
        match &**request {
            TransferRequest::Transfer {
                id, debit_account_id, credit_account_id, amount, pending, ..
            } => {
                let (kind, posted, held, hold) = match pending {
                    None => (TransferKind::Posted, amount.get(), 0, HoldChange::None),
                    Some(_) => (TransferKind::Pending, 0, amount.get(), HoldChange::Create),
                };
                let expires_at_ms = pending
                    .and_then(|p| p.timeout_seconds)
                    .map(|s| now_ms.saturating_add(u64::from(s) * 1000));
                let leg = |account_id, side| Leg {
                    account_id,
                    transfer_id: *id,
                    side,
                    posted_add: posted,
                    pending_add: held,
                    pending_sub: 0,
                };
                Ok(Planned {
                    transfer: Some(Arc::new(transfer_base(
                        kind,
                        *debit_account_id,
                        *credit_account_id,
                        *amount,
                        None,
                        expires_at_ms,
                    ))),
                    legs: [leg(*debit_account_id, Side::Debit), leg(*credit_account_id, Side::Credit)],
                    hold,
                })
            }
            TransferRequest::PostPending { id, pending_id, amount } => {
                let pending = self.pending(inner, *pending_id)?;
                let held = pending.amount;
                let posted = amount.unwrap_or(held);
                if posted > held {
                    return Err(Rejection::ExceedsPendingAmount);
                }
                Ok(resolve_plan(
                    transfer_base(
                        TransferKind::PostPending,
                        pending.debit_account_id,
                        pending.credit_account_id,
                        posted,
                        Some(*pending_id),
                        None,
                    ),
                    *id,
                    &pending,
                    TransferStatus::Posted,
                ))
            }
            TransferRequest::VoidPending { id, pending_id } => {
                let pending = self.pending(inner, *pending_id)?;
                Ok(resolve_plan(
                    transfer_base(
                        TransferKind::VoidPending,
                        pending.debit_account_id,
                        pending.credit_account_id,
                        pending.amount,
                        Some(*pending_id),
                        None,
                    ),
                    *id,
                    &pending,
                    TransferStatus::Voided,
                ))
            }
        }
    }

    fn pending(&self, inner: &Inner, pending_id: crate::ids::TransferId) -> Result<Arc<Transfer>, Rejection> {
        let record = inner.shared.registry.get(pending_id).ok_or(Rejection::PendingTransferNotFound)?;
        if record.transfer.kind != TransferKind::Pending {
            return Err(Rejection::PendingTransferNotPending);
        }
        match record.status {
            TransferStatus::Pending => Ok(record.transfer),
            TransferStatus::Posted => Err(Rejection::PendingTransferAlreadyPosted),
            TransferStatus::Voided => Err(Rejection::PendingTransferAlreadyVoided),
            TransferStatus::Expired => Err(Rejection::PendingTransferExpired),
        }
    }

    /// Expires holds whose timeout passed; returns how many it expired.
    pub async fn expire_due(&self) -> Result<usize, LedgerError> {
        let inner = self.inner();
        inner.check_serving()?;
        let now_ms = inner.shared.clock.now_ms();
        let mut ops: Vec<Arc<[Planned]>> = Vec::new();
        for shard in inner.shards.clone() {
            let due =
                self.ask(&shard, |port| ShardMsg::DueHolds { now_ms, limit: 1024, reply: port }).await?;
            for hold in due {
                let leg = |account_id, side| Leg {
                    account_id,
                    transfer_id: hold.pending_id,
                    side,
                    posted_add: 0,
                    pending_add: 0,
                    pending_sub: hold.amount,
                };
                ops.push(Arc::from(vec![Planned {
                    transfer: None,
                    legs: [
                        leg(hold.debit_account_id, Side::Debit),
                        leg(hold.credit_account_id, Side::Credit),
                    ],
                    hold: HoldChange::Resolve(crate::record::Resolution {
                        pending_id: hold.pending_id,
                        status: TransferStatus::Expired,
                    }),
                }]));
            }
        }
        if ops.is_empty() {
            return Ok(0);
        }
        // A hold another expiry (or a post or void) got to first fails here: fine.
        let outcomes = self.run_ops(&inner, ops).await?;
        Ok(outcomes.iter().filter(|outcome| outcome.is_ok()).count())
    }

    /// Runs operations: single-shard ones on their shard, the rest through a
    /// coordinated commit. One outcome per operation, in order.
    async fn run_ops(
        &self,
        inner: &Arc<Inner>,
        ops: Vec<Arc<[Planned]>>,
    ) -> Result<Vec<OpOutcome>, LedgerError> {
        let shard_count = inner.config.shard_count;
        let mut local: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        let mut spanning: Vec<usize> = Vec::new();
        let mut chained: BTreeMap<u16, Vec<ChainOp>> = BTreeMap::new();
        let mut chain_waiting = Vec::new();
        for (index, op) in ops.iter().enumerate() {
            let mut shards = op.iter().flat_map(|p| p.legs.iter()).map(|l| l.account_id.shard(shard_count).0);
            let first = shards.next();
            match first {
                Some(first) if shards.all(|s| s == first) => local.entry(first).or_default().push(index),
                _ if op.len() == 1 => {
                    // One transfer between two shards: debit shard, then credit shard.
                    let debit_shard = op[0].legs[0].account_id.shard(shard_count);
                    let credit_shard = op[0].legs[1].account_id.shard(shard_count);
                    let (reply, receiver) = oneshot::channel();
                    let commit_id = CommitId(inner.next_commit_id.fetch_add(1, Ordering::Relaxed));
                    chained.entry(debit_shard.0).or_default().push(ChainOp {
                        commit_id,
                        op: op.clone(),
                        credit_shard,
                        reply,
                    });
                    chain_waiting.push((index, receiver));
                }
                _ => spanning.push(index),
            }
        }
        let mut outcomes: Vec<Option<OpOutcome>> = vec![None; ops.len()];
        for (shard, chain_ops) in chained {
            inner.shared.router.send(ShardId(shard), ShardMsg::Debit(chain_ops))?;
        }

        let coordinated = if spanning.is_empty() {
            None
        } else {
            let inner = inner.clone();
            let spanning_ops: Vec<Arc<[Planned]>> = spanning.iter().map(|&i| ops[i].clone()).collect();
            // Spawned so it runs to the end even if the caller goes away.
            Some(tokio::spawn(coordinate(inner, spanning_ops)))
        };

        let mut waiting = Vec::with_capacity(local.len());
        for (shard, indexes) in &local {
            let batch: Vec<Arc<[Planned]>> = indexes.iter().map(|&i| ops[i].clone()).collect();
            let (tx, rx) = oneshot::channel();
            inner.shards[*shard as usize]
                .cast(ShardMsg::Execute(batch, tx.into()))
                .map_err(|_| LedgerError::Unavailable)?;
            waiting.push((indexes, rx));
        }
        for (indexes, rx) in waiting {
            let shard_outcomes = match tokio::time::timeout(inner.timeout, rx).await {
                Ok(Ok(result)) => result?,
                Ok(Err(_)) => return Err(LedgerError::Unavailable),
                Err(_) => return Err(LedgerError::Timeout),
            };
            for (index, outcome) in indexes.iter().zip(shard_outcomes) {
                outcomes[*index] = Some(outcome);
            }
        }
        for (index, receiver) in chain_waiting {
            let outcome = match tokio::time::timeout(inner.timeout, receiver).await {
                Ok(Ok(result)) => result?,
                Ok(Err(_)) => return Err(LedgerError::Unavailable),
                Err(_) => return Err(LedgerError::Timeout),
            };
            outcomes[index] = Some(outcome);
        }
        if let Some(handle) = coordinated {
            let results = handle.await.map_err(|_| LedgerError::Unavailable)??;
            for (index, outcome) in spanning.iter().zip(results) {
                outcomes[*index] = Some(outcome);
            }
        }
        Ok(outcomes.into_iter().map(|o| o.unwrap_or(Err((0, Rejection::LinkedTransferFailed)))).collect())
    }
}

fn resolve_plan(
    transfer: Transfer,
    id: crate::ids::TransferId,
    pending: &Transfer,
    status: TransferStatus,
) -> Planned {
    let posted = if status == TransferStatus::Posted { transfer.amount.get() } else { 0 };
    let leg = |account_id, side| Leg {
        account_id,
        transfer_id: id,
        side,
        posted_add: posted,
        pending_add: 0,
        pending_sub: pending.amount.get(),
    };
    Planned {
        legs: [leg(pending.debit_account_id, Side::Debit), leg(pending.credit_account_id, Side::Credit)],
        hold: HoldChange::Resolve(crate::record::Resolution { pending_id: pending.id, status }),
        transfer: Some(Arc::new(transfer)),
    }
}

/// A transfer turned into a hold for review by `hit`'s rule: its money is
/// held, not moved, and the hold voids itself only if the rule says so.
fn review_hold(planned: &Planned, hit: RiskHit, now_ms: u64) -> Option<Planned> {
    let transfer = planned.transfer.as_ref()?;
    if transfer.review.is_some() || !matches!(planned.hold, HoldChange::None | HoldChange::Create) {
        return None;
    }
    let mut held = (**transfer).clone();
    held.kind = TransferKind::Pending;
    held.review = Some(hit.rule_id);
    held.expires_at_ms = hit.timeout_seconds.map(|s| now_ms.saturating_add(u64::from(s) * 1000));
    let mut legs = planned.legs;
    for leg in &mut legs {
        leg.pending_add += leg.posted_add;
        leg.posted_add = 0;
    }
    Some(Planned { transfer: Some(Arc::new(held)), legs, hold: HoldChange::Create })
}

/// The decision to keep for a transfer a rule vetoed or held.
fn decision(planned: &Planned, hit: RiskHit, now_ms: u64) -> Decision {
    Decision {
        id: 0,
        at_ms: now_ms,
        transfer_id: planned.legs[0].transfer_id,
        account_id: planned.legs[0].account_id,
        rule_id: hit.rule_id,
        kind: hit.kind,
        outcome: hit.action,
    }
}

fn linked_failure(len: usize, failed: u32, reason: Rejection) -> Vec<TransferResult> {
    (0..len).map(|i| Err(if i as u32 == failed { reason } else { Rejection::LinkedTransferFailed })).collect()
}

/// Operations of one coordinated commit by shard: (index in the commit, operation).
type ByShard = BTreeMap<u16, Vec<(u32, Arc<[Planned]>)>>;

/// The coordinator of operations spanning shards: prepare everywhere, decide,
/// make the decision durable in one commit record, then tell the shards.
async fn coordinate(inner: Arc<Inner>, ops: Vec<Arc<[Planned]>>) -> Result<Vec<OpOutcome>, LedgerError> {
    let shard_count = inner.config.shard_count;
    let commit_id = CommitId(inner.next_commit_id.fetch_add(1, Ordering::Relaxed));
    let mut by_shard: ByShard = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let mut shards: Vec<u16> =
            op.iter().flat_map(|p| p.legs.iter()).map(|l| l.account_id.shard(shard_count).0).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            by_shard.entry(shard).or_default().push((index as u32, op.clone()));
        }
    }

    let mut waiting = Vec::with_capacity(by_shard.len());
    for (shard, shard_ops) in &by_shard {
        let indexes: Vec<u32> = shard_ops.iter().map(|(i, _)| *i).collect();
        let (tx, rx) = oneshot::channel::<Vec<PrepareOutcome>>();
        let message = ShardMsg::Prepare { commit_id, ops: shard_ops.clone(), reply: tx.into() };
        if inner.shards[*shard as usize].cast(message).is_err() {
            abort_all(&inner, commit_id, &by_shard);
            return Err(LedgerError::Unavailable);
        }
        waiting.push((indexes, rx));
    }

    // Combine: the first failure by (transfer index, check order) wins.
    let mut failures: Vec<Option<IndexedRejection>> = vec![None; ops.len()];
    let mut assets: Vec<BTreeMap<AccountId, Asset>> = vec![BTreeMap::new(); ops.len()];
    for (indexes, rx) in waiting {
        let prepared = match tokio::time::timeout(inner.timeout, rx).await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(_)) | Err(_) => {
                abort_all(&inner, commit_id, &by_shard);
                return Err(LedgerError::Timeout);
            }
        };
        for (index, outcome) in indexes.into_iter().zip(prepared) {
            let slot = index as usize;
            let (found, outcome) = outcome;
            assets[slot].extend(found);
            match outcome {
                Ok(()) => {}
                Err(failure) => {
                    failures[slot] = Some(match failures[slot] {
                        Some(existing) if existing <= failure => existing,
                        _ => failure,
                    });
                }
            }
        }
    }
    for (slot, op) in ops.iter().enumerate() {
        for (position, planned) in op.iter().enumerate() {
            if matches!(planned.hold, HoldChange::Resolve(_)) {
                continue;
            }
            let [debit, credit] = &planned.legs;
            let (Some(a), Some(b)) =
                (assets[slot].get(&debit.account_id), assets[slot].get(&credit.account_id))
            else {
                continue;
            };
            if a != b {
                let failure = (position as u32, Rejection::AssetMismatch);
                if failures[slot].is_none_or(|existing| failure < existing) {
                    failures[slot] = Some(failure);
                }
            }
        }
    }

    let committed: Vec<usize> = (0..ops.len()).filter(|&i| failures[i].is_none()).collect();
    if !committed.is_empty() {
        let commit =
            crate::shard::commit_record(commit_id, committed.iter().flat_map(|&i| ops[i].iter()), None);
        let transfers = commit.transfers.clone();
        let resolutions = commit.resolutions.clone();
        let (tx, rx) = oneshot::channel();
        inner.shared.journal.append(
            Record::Commit(commit),
            Box::new(move |result| {
                let _ = tx.send(result);
            }),
        );
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                inner.shared.poison(error);
                return Err(LedgerError::Unavailable);
            }
            Err(_) => {
                inner.shared.poison(crate::record::JournalError::Closed);
                return Err(LedgerError::Unavailable);
            }
        }
        inner.shared.registry.record_durable(&transfers, &resolutions);
    }

    for (shard, shard_ops) in &by_shard {
        let (committed, aborted): (Vec<u32>, Vec<u32>) =
            shard_ops.iter().map(|(i, _)| *i).partition(|&i| failures[i as usize].is_none());
        // A shard that is gone cannot apply; recovery will, from the commit record.
        let _ = inner.shards[*shard as usize].cast(ShardMsg::Decide { commit_id, committed, aborted });
    }
    Ok(failures.into_iter().map(|f| f.map_or(Ok(()), Err)).collect())
}

fn abort_all(inner: &Inner, commit_id: CommitId, by_shard: &ByShard) {
    for (shard, shard_ops) in by_shard {
        let aborted = shard_ops.iter().map(|(i, _)| *i).collect();
        let _ = inner.shards[*shard as usize].cast(ShardMsg::Decide {
            commit_id,
            committed: Vec::new(),
            aborted,
        });
    }
}
