//! The ledger handle: checks and plans requests, claims their ids, routes
//! each operation to its shard, and coordinates operations that span shards.
//!
//! See `docs/ARCHITECTURE.md`, "The write paths", for the protocol.
//!
//! - this file: the handle, its generations of shards, reads, rules;
//! - [`submit`]: claiming ids and running a request's operations to the end;
//! - [`plan`]: requests into legs;
//! - [`route`]: operations to shards (one, a chain of two, coordinated).

mod plan;
mod route;
mod submit;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ractor::{Actor, ActorRef};
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::account::{Account, AccountFlags, AccountStatus, Leg, Reserved, Side};
use crate::actor::{
    Failure, JournalGate, LocalRouter, ShardActor, ShardArgs, ShardMsg, ShardSupervisor, Shared,
    SupervisorMsg,
};
use crate::amount::Amount;
use crate::asset::Asset;
use crate::ids::{stable_hash, AccountId, UserId};
use crate::ports::{append_durable, Ports, Stored};
use crate::record::Record;
use crate::recovery::Recovered;
use crate::registry::TransferRecord;
use crate::rejection::Rejection;
use crate::risk::{Decision, DecisionLog, Rule, RuleSet};
use crate::shard::{HoldChange, Planned};
use crate::transfer::TransferStatus;
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
    /// Emptied at shutdown, so the snapshot store can close.
    account_source: std::sync::RwLock<Option<Arc<dyn crate::ports::AccountSource>>>,
}

/// What every generation of a ledger shares.
struct Base {
    config: Arc<LedgerConfig>,
    /// Woken when a generation fails.
    failed: Arc<Notify>,
    rules: std::sync::RwLock<Arc<RuleSet>>,
    /// Held by `set_rules` and by `restart` from spawning to the swap, so a
    /// rules change during a rebuild reaches the new shards.
    rules_change: tokio::sync::Mutex<()>,
    admission: Arc<Semaphore>,
    /// What every generation is plugged into; its stored parts are let go
    /// of at shutdown ([`Ledger::detach_storage`]).
    ports: std::sync::RwLock<Ports>,
}

impl Base {
    fn ports(&self) -> Ports {
        self.ports.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
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
    cell: &Base,
) -> Result<Inner, LedgerError> {
    let ports = cell.ports();
    let router = Arc::new(LocalRouter::default());
    let gate = Arc::new(JournalGate::new(ports.journal));
    let decisions = DecisionLog::new(recovered.next_decision_id, recovered.decisions);
    decisions.set_index(ports.stored.decisions);
    let mut shared = Shared::new(
        router.clone(),
        gate.clone(),
        recovered.registry,
        decisions,
        ports.clock,
        cell.failed.clone(),
    );
    shared.events = ports.events;
    shared.history = std::sync::RwLock::new(ports.stored.history);
    let shared = Arc::new(shared);
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
    /// Lets go of storage: its indexes and account source.
    fn detach_storage(&self) {
        self.shared.registry.detach_index();
        if let Ok(mut slot) = self.shared.history.write() {
            *slot = None;
        }
        if let Ok(mut slot) = self.account_source.write() {
            *slot = None;
        }
        self.shared.decisions.set_index(None);
    }

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
        ports: Ports,
        config: LedgerConfig,
    ) -> Result<Ledger, LedgerError> {
        let base = Base {
            admission: Arc::new(Semaphore::new(config.in_flight_max)),
            config: Arc::new(config),
            ports: std::sync::RwLock::new(ports),
            failed: Arc::new(Notify::new()),
            rules: Default::default(),
            rules_change: tokio::sync::Mutex::new(()),
        };
        let inner = spawn_generation(recovered, completions, &base).await?;
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
    /// read back from storage after [`Ledger::halt`]), on the same ports and
    /// rules. Every clone of this ledger serves from the new shards once
    /// this returns.
    pub async fn restart(&self, recovered: Recovered, completions: Vec<Record>) -> Result<(), LedgerError> {
        let _rules = self.cell.base.rules_change.lock().await;
        let old = self.inner();
        let inner = spawn_generation(recovered, completions, &self.cell.base).await?;
        self.cell.current.store(Arc::new(inner));
        // The old generation lets go of storage, which must be able to close.
        old.detach_storage();
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
    pub fn crash_shard(&self, shard: crate::ids::ShardId) {
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
        let account = new.opened_at(self.inner().shared.clock.now_ms());
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
        self.inner().shared.decisions.list(account_id, after_id, limit).map_err(|_| LedgerError::Unavailable)
    }

    /// Decisions held in memory, for a snapshot.
    pub fn recent_decisions(&self) -> Vec<Decision> {
        self.inner().shared.decisions.recent()
    }

    /// The id the next durable decision gets (a checkpoint reads it at its
    /// marker).
    pub fn next_decision_id(&self) -> u64 {
        self.inner().shared.decisions.next_id()
    }

    /// Storage has every decision up to `up_to_id`.
    pub fn forget_decisions_up_to(&self, up_to_id: u64) {
        self.inner().shared.decisions.forget_up_to(up_to_id);
    }

    /// Lets go of every stored part of its ports (at shutdown, after the
    /// shards stopped), so storage can close. From then on no transfer id
    /// can be claimed and no older history, decision or account read.
    pub fn detach_storage(&self) {
        let mut ports = self.cell.base.ports.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        ports.stored = Stored::default();
        drop(ports);
        self.inner().detach_storage();
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
                    at_ms: now_ms,
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
                    decision: None,
                }]));
            }
        }
        if ops.is_empty() {
            return Ok(0);
        }
        // A hold another expiry (or a post or void) got to first fails here: fine.
        let outcomes = route::run_ops(&inner, ops).await?;
        Ok(outcomes.iter().filter(|outcome| outcome.is_ok()).count())
    }
}
