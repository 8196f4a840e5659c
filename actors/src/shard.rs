//! A shard's state: the accounts hashed to it, their pending holds, and the
//! legs prepared but not yet committed. Pure: no actor, no I/O, so every rule
//! is testable as a function. [`crate::actor`] wraps it in a ractor actor.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::account::{
    Account, AccountEvent, AccountStatus, InvariantBroken, Leg, Reserved, SameOpPosted, Side,
};
use crate::asset::Asset;
use crate::hash::{HashMap, HashSet};
use crate::ids::{AccountId, CommitId, ShardId, TransferId, UserId};
use crate::ports::{AccountSource, ReadError};
use crate::record::{Applied, Commit, Resolution, SequencedEvent};
use crate::rejection::Rejection;
use crate::risk::{Debit, RuleSet, UserWindow};
use crate::transfer::{Transfer, TransferKind, TransferStatus};

mod apply;
mod history;
mod replay;
mod reserve;
mod users;

/// A transfer made ready for the shards: its two legs and what it does to holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The transfer to store; `None` for the expiry of a hold.
    pub transfer: Option<Arc<Transfer>>,
    /// `[debit leg, credit leg]`.
    pub legs: [Leg; 2],
    /// What happens to holds.
    pub hold: HoldChange,
    /// For a hold a review rule made of the transfer: that decision, which
    /// goes in the same record as the hold.
    pub decision: Option<crate::risk::Decision>,
}

/// What a planned transfer does to pending holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldChange {
    /// Nothing.
    None,
    /// It creates a hold (a pending transfer).
    Create,
    /// It ends a hold.
    Resolve(Resolution),
}

impl Planned {
    /// The resolution it carries, if any.
    pub fn resolution(&self) -> Option<Resolution> {
        match self.hold {
            HoldChange::Resolve(resolution) => Some(resolution),
            _ => None,
        }
    }
}

/// The commit record of planned transfers: their transfers, resolutions and
/// every leg, in order.
pub fn commit_record<'a>(
    commit_id: CommitId,
    planned: impl IntoIterator<Item = &'a Planned>,
    applied_by: Option<crate::record::ShardApplied>,
) -> Commit {
    let mut commit = Commit {
        commit_id,
        transfers: Vec::new(),
        resolutions: Vec::new(),
        legs: Vec::new(),
        applied_by,
        decisions: Vec::new(),
    };
    for planned in planned {
        commit.legs.extend_from_slice(&planned.legs);
        commit.decisions.extend(planned.decision);
        if let Some(transfer) = &planned.transfer {
            commit.transfers.push(transfer.clone());
        }
        if let Some(resolution) = planned.resolution() {
            commit.resolutions.push(resolution);
        }
    }
    commit
}

/// An open hold, owned by the shard of its debit account.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    /// The pending transfer.
    pub pending_id: TransferId,
    /// Its debit account.
    pub debit_account_id: AccountId,
    /// Its credit account.
    pub credit_account_id: AccountId,
    /// The amount held.
    pub amount: u128,
    /// When it expires by itself.
    pub expires_at_ms: Option<u64>,
    /// A post, void or expiry of it is prepared and not yet decided.
    #[serde(skip)]
    busy: bool,
}

/// One entry of an account's history: an event and the balances right after it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// The account.
    pub account_id: AccountId,
    /// The event's sequence number.
    pub sequence: u64,
    /// What happened.
    pub event: HistoryEvent,
    /// The account's balances after it.
    pub balances: crate::account::Balances,
    /// When it happened, in ledger milliseconds since the Unix epoch (the
    /// same after a replay: it comes from the record, not the clock).
    pub at_ms: u64,
}

/// What a history entry records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HistoryEvent {
    /// The account was opened.
    Opened,
    /// Its status changed.
    StatusChanged(AccountStatus),
    /// A transfer moved its totals.
    Leg(Leg),
}

/// What changed in a shard since its last capture: the part of a snapshot
/// that this shard contributes.
#[derive(Clone, Debug, Default)]
pub struct Captured {
    /// Accounts that changed, as they stand now.
    pub accounts: Vec<Account>,
    /// Holds created (and still open).
    pub holds: Vec<Hold>,
    /// Holds that ended.
    pub removed_holds: Vec<TransferId>,
    /// History entries since the last confirmed capture, in the order they
    /// happened, to be written to storage (shared with the shard, which
    /// still serves reads from it until storage confirms).
    pub history: Arc<Vec<HistoryEntry>>,
    /// Users' debit windows that changed, as they stand now.
    pub user_windows: Vec<(UserId, UserWindow)>,
}

#[derive(Clone, Debug)]
struct Slot {
    account: Account,
    reserved: Reserved,
    /// The shard's epoch when a message last named this account.
    touched: u64,
}

#[derive(Clone)]
struct Source(Arc<dyn AccountSource>);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccountSource")
    }
}

/// Why durable state could not be loaded or replayed into a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// An account could not be read back from the snapshot.
    #[error("an account could not be read back from the snapshot")]
    SnapshotRead(#[from] ReadError),
    /// Applying the record (or loading the account) would break a guarantee.
    #[error(transparent)]
    Broken(#[from] InvariantBroken),
}

/// The legs of one operation that one shard reserved.
#[derive(Clone, Debug, Default)]
pub struct Reservation {
    legs: Vec<Leg>,
    busy_holds: Vec<TransferId>,
    /// Asset of every account of this shard that the operation touches.
    pub assets: Vec<(AccountId, Asset)>,
}

/// Posted amounts that earlier transfers of the same operation reserved on
/// one account: a linked batch may spend what it received earlier in itself.
#[derive(Clone, Copy, Debug)]
pub struct SameOp {
    account_id: AccountId,
    credits_posted: u128,
    debits_posted: u128,
}

impl SameOp {
    fn as_posted(&self) -> SameOpPosted {
        SameOpPosted { credits: self.credits_posted, debits: self.debits_posted }
    }
}

/// An operation prepared for a coordinated commit, and what it reserved.
type PreparedOp = (Arc<[Planned]>, Reservation);

/// Where a rejection happened: the transfer's index in its operation, and why.
pub type IndexedRejection = (u32, Rejection);

/// The state of one shard.
#[derive(Debug)]
pub struct ShardState {
    shard_id: ShardId,
    shard_count: u16,
    accounts: HashMap<AccountId, Slot>,
    /// Debit windows of the users whose home shard this is
    /// ([`UserId::home_shard`]); resident and passivated like accounts.
    users: HashMap<UserId, users::UserSlot>,
    holds: HashMap<TransferId, Hold>,
    expiries: BTreeSet<(u64, TransferId)>,
    prepared: HashMap<(CommitId, u32), PreparedOp>,
    dirty_accounts: HashSet<AccountId>,
    dirty_holds: HashSet<TransferId>,
    /// Accounts and holds captured but not yet confirmed written: a
    /// checkpoint that fails after its capture must not lose them, so the
    /// next capture takes them again.
    flushing_accounts: HashSet<AccountId>,
    flushing_holds: HashSet<TransferId>,
    /// Users' windows changed since the last capture, and captured but not
    /// yet confirmed written, as for accounts.
    dirty_users: HashSet<UserId>,
    flushing_users: HashSet<UserId>,
    /// History not yet in storage: since the last capture ...
    /// (One flat list per shard: a map of per-account lists cost an
    /// allocation of four entries per account touched, gigabytes at a
    /// million accounts.)
    history_recent: Vec<HistoryEntry>,
    /// ... and captured but not yet confirmed written.
    history_flushing: Arc<Vec<HistoryEntry>>,
    /// How many of `history_recent` went to the ledger events' feed, or
    /// were skipped because it wanted none ([`ShardState::take_new_history`],
    /// [`ShardState::skip_new_history`]); stays 0 without a feed.
    events_mark: usize,
    /// Risk rules checked with every new debit.
    rules: Arc<RuleSet>,
    /// Where passivated accounts come back from; `None`: all are resident.
    source: Option<Source>,
    /// Counts snapshots written; an account untouched for some epochs may
    /// be passivated.
    epoch: u64,
    /// Accounts activated from the source.
    activated: u64,
}

impl ShardState {
    /// An empty shard.
    pub fn new(shard_id: ShardId, shard_count: u16) -> Self {
        ShardState {
            shard_id,
            shard_count,
            accounts: HashMap::default(),
            users: HashMap::default(),
            holds: HashMap::default(),
            expiries: BTreeSet::new(),
            prepared: HashMap::default(),
            dirty_accounts: HashSet::default(),
            dirty_holds: HashSet::default(),
            flushing_accounts: HashSet::default(),
            flushing_holds: HashSet::default(),
            dirty_users: HashSet::default(),
            flushing_users: HashSet::default(),
            history_recent: Vec::new(),
            history_flushing: Arc::default(),
            events_mark: 0,
            rules: Arc::default(),
            source: None,
            epoch: 0,
            activated: 0,
        }
    }

    /// Sets where passivated accounts are read back from. With a source,
    /// accounts need not be resident: [`ShardState::activate`] loads one
    /// when a message names it.
    pub fn set_source(&mut self, source: Arc<dyn AccountSource>) {
        self.source = Some(Source(source));
    }

    /// Makes an account of this shard resident if it exists, and marks it
    /// touched. Every entry point that names accounts calls this first.
    pub fn activate(&mut self, account_id: AccountId) -> Result<(), ReplayError> {
        if !self.owns(account_id) {
            return Ok(());
        }
        let user_id = if let Some(slot) = self.accounts.get_mut(&account_id) {
            slot.touched = self.epoch;
            slot.account.user_id
        } else {
            let Some(Source(source)) = &self.source else { return Ok(()) };
            let Some(account) = source.load(account_id)? else { return Ok(()) };
            account.check_limits()?;
            self.activated += 1;
            let user_id = account.user_id;
            self.accounts
                .insert(account_id, Slot { account, reserved: Reserved::default(), touched: self.epoch });
            user_id
        };
        self.activate_user(user_id)
    }

    /// Activates every account an operation names.
    pub fn activate_op(&mut self, op: &[Planned]) -> Result<(), ReplayError> {
        for planned in op {
            for leg in &planned.legs {
                self.activate(leg.account_id)?;
            }
        }
        Ok(())
    }

    /// Number of accounts activated from the source so far.
    pub fn activated(&self) -> u64 {
        self.activated
    }

    /// Number of resident accounts.
    pub fn resident(&self) -> usize {
        self.accounts.len()
    }

    /// A snapshot has been written: passivates accounts that are in it
    /// unchanged, have nothing reserved, and were not touched in the last
    /// `idle_epochs` epochs. Returns how many. Needs a source.
    pub fn passivate_idle(&mut self, idle_epochs: u64) -> usize {
        self.epoch += 1;
        if self.source.is_none() {
            return 0;
        }
        let before = self.accounts.len();
        let epoch = self.epoch;
        // Changes not yet in storage (dirty since the capture, or captured
        // and not confirmed; history marks its account dirty) keep it.
        let (dirty, flushing) = (&self.dirty_accounts, &self.flushing_accounts);
        self.accounts.retain(|id, slot| {
            slot.reserved.legs != 0
                || slot.touched + idle_epochs >= epoch
                || dirty.contains(id)
                || flushing.contains(id)
        });
        self.passivate_idle_users(idle_epochs);
        before - self.accounts.len()
    }

    /// Replaces the risk rules; the next debit is checked against these.
    pub fn set_rules(&mut self, rules: Arc<RuleSet>) {
        self.rules = rules;
    }

    /// This shard's id.
    pub fn shard_id(&self) -> ShardId {
        self.shard_id
    }

    fn owns(&self, account_id: AccountId) -> bool {
        account_id.shard(self.shard_count) == self.shard_id
    }

    /// An account and what its prepared legs reserve.
    pub fn account(&self, account_id: AccountId) -> Option<(&Account, Reserved)> {
        self.accounts.get(&account_id).map(|slot| (&slot.account, slot.reserved))
    }

    /// Every account of the shard.
    pub fn accounts(&self) -> impl Iterator<Item = &Account> {
        self.accounts.values().map(|slot| &slot.account)
    }

    /// Every open hold of the shard.
    pub fn holds(&self) -> impl Iterator<Item = &Hold> {
        self.holds.values()
    }

    /// Number of operations prepared and not yet decided.
    pub fn prepared_count(&self) -> usize {
        self.prepared.len()
    }

    /// Opens an account. Opening again with the same fields returns the
    /// existing account and no event (idempotent).
    pub fn open_account(&mut self, account: Account) -> Result<(Account, Option<SequencedEvent>), Rejection> {
        if let Some(slot) = self.accounts.get(&account.id) {
            let existing = &slot.account;
            let same = existing.user_id == account.user_id
                && existing.asset == account.asset
                && existing.flags == account.flags
                && existing.overdraft_limit == account.overdraft_limit;
            return if same { Ok((existing.clone(), None)) } else { Err(Rejection::AccountExists) };
        }
        let mut opened = account;
        opened.sequence = 1;
        opened.status = AccountStatus::Active;
        opened.balances = Default::default();
        let event = SequencedEvent {
            account_id: opened.id,
            sequence: 1,
            event: AccountEvent::Opened(opened.clone()),
        };
        let touched = self.epoch;
        self.accounts
            .insert(opened.id, Slot { account: opened.clone(), reserved: Reserved::default(), touched });
        self.dirty_accounts.insert(opened.id);
        self.record_history(opened.id, 1, HistoryEvent::Opened, opened.created_at_ms);
        Ok((opened, Some(event)))
    }

    /// Changes an account's status: active <-> frozen; active or frozen ->
    /// closed, only at zero balance with nothing pending or in flight.
    pub fn set_status(
        &mut self,
        account_id: AccountId,
        target: AccountStatus,
        now_ms: u64,
    ) -> Result<(Account, Option<SequencedEvent>), Rejection> {
        let slot = self.accounts.get_mut(&account_id).ok_or(Rejection::AccountNotFound)?;
        let current = slot.account.status;
        if current == target {
            return Ok((slot.account.clone(), None));
        }
        if current == AccountStatus::Closed {
            return Err(Rejection::AccountClosed);
        }
        if target == AccountStatus::Closed {
            let b = &slot.account.balances;
            if b.debits_pending != 0 || b.credits_pending != 0 || slot.reserved.legs != 0 {
                return Err(Rejection::AccountHasPending);
            }
            if b.debits_posted != b.credits_posted {
                return Err(Rejection::AccountBalanceNotZero);
            }
        }
        let sequence = slot.account.sequence + 1;
        let event = AccountEvent::StatusChanged(target);
        slot.account.apply(sequence, &event);
        let account = slot.account.clone();
        self.dirty_accounts.insert(account_id);
        self.record_history(account_id, sequence, HistoryEvent::StatusChanged(target), now_ms);
        Ok((account, Some(SequencedEvent { account_id, sequence, event })))
    }
}
