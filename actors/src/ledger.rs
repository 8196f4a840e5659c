//! The ledger handle: checks and plans requests, claims their ids, routes
//! each operation to its shard, and coordinates operations that span shards.
//!
//! See `docs/ARCHITECTURE.md`, "The write paths", for the protocol.
//!
//! - this file: the handle and its configuration;
//! - `generation`: starting, stopping and rebuilding its shards;
//! - `accounts`, `reads`, `rules`, `expiry`: what callers ask of it besides transfers;
//! - [`submit`]: claiming ids and running a request's operations to the end;
//! - [`plan`]: requests into legs;
//! - [`route`]: operations to shards (one, a chain of two, coordinated).

mod accounts;
mod expiry;
mod generation;
mod plan;
mod reads;
mod route;
mod rules;
#[cfg(test)]
mod rules_table;
mod submit;
mod supervise;

use generation::{ask_shard, spawn_generation};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ractor::{Actor, ActorRef};
use tokio::sync::{oneshot, Notify, Semaphore};

use crate::account::{Account, AccountFlags, AccountStatus, Leg, Reserved, Side};
use crate::actor::{
    Answer, Failure, JournalGate, LocalRouter, ReplyTo, ShardActor, ShardArgs, ShardMsg, ShardSupervisor,
    Shared, SupervisorMsg,
};
use crate::amount::Amount;
use crate::asset::Asset;
use crate::ids::{stable_hash, AccountId, UserId};
use crate::ports::{append_durable, Origin, Ports, Stored};
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

/// A new account id for `user_id`, on the user's home shard among
/// `shard_count`, so that shard sees every debit of the user's accounts
/// and velocity rules scoped to the user count them all
/// (`docs/ARCHITECTURE.md`, "Risk rules"). Draws random 128-bit values from
/// `draw` until one lands there outside the reserved range: about
/// `shard_count` draws.
pub fn account_id_at_home(user_id: UserId, shard_count: u16, mut draw: impl FnMut() -> u128) -> AccountId {
    let home = user_id.home_shard(shard_count);
    loop {
        if let Ok(id) = AccountId::new(draw()) {
            if !is_reserved_account_id(id) && id.shard(shard_count) == home {
                return id;
            }
        }
    }
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
    /// Ids of the commits this generation coordinates or chains.
    commit_ids: crate::ids::CommitIds,
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

    /// The configuration it runs with.
    pub fn config(&self) -> &LedgerConfig {
        &self.cell.base.config
    }

    fn check_poisoned(&self) -> Result<(), LedgerError> {
        self.cell.current.load().check_serving()
    }

    /// Asks a control question of one shard of this node (a port answers).
    async fn ask<T: Send + 'static>(
        &self,
        shard: &ActorRef<ShardMsg>,
        message: impl FnOnce(ractor::RpcReplyPort<T>) -> ShardMsg,
    ) -> Result<T, LedgerError> {
        ask_shard(shard, Duration::from_millis(self.cell.base.config.request_timeout_ms), message).await
    }

    /// Asks the shard that owns `account_id`, through the router: the
    /// message names its answer by a correlation id, so it could go to
    /// another node. `pick` takes the answer of the kind asked for.
    async fn ask_owner<T>(
        &self,
        account_id: AccountId,
        message: impl FnOnce(ReplyTo) -> ShardMsg,
        pick: impl FnOnce(Answer) -> Option<Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        let inner = self.inner();
        let shard = account_id.shard(self.cell.base.config.shard_count);
        let timeout = Duration::from_millis(self.cell.base.config.request_timeout_ms);
        crate::actor::ask(inner.shared.router.as_ref(), shard, Some(timeout), message, pick).await
    }
}
