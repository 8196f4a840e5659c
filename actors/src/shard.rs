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
use crate::ids::{AccountId, CommitId, ShardId, TransferId};
use crate::ports::{AccountSource, ReadError};
use crate::record::{Applied, Commit, Resolution, SequencedEvent};
use crate::rejection::Rejection;
use crate::risk::{Debit, RuleSet};
use crate::transfer::{Transfer, TransferKind, TransferStatus};

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
            holds: HashMap::default(),
            expiries: BTreeSet::new(),
            prepared: HashMap::default(),
            dirty_accounts: HashSet::default(),
            dirty_holds: HashSet::default(),
            flushing_accounts: HashSet::default(),
            flushing_holds: HashSet::default(),
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
        if let Some(slot) = self.accounts.get_mut(&account_id) {
            slot.touched = self.epoch;
            return Ok(());
        }
        let Some(Source(source)) = &self.source else { return Ok(()) };
        if let Some(account) = source.load(account_id)? {
            account.check_limits()?;
            self.activated += 1;
            self.accounts
                .insert(account_id, Slot { account, reserved: Reserved::default(), touched: self.epoch });
        }
        Ok(())
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

    /// Checks an operation's legs that live in this shard, in order, and
    /// reserves them. All or nothing: on a rejection nothing stays reserved.
    pub fn reserve(&mut self, op: &[Planned], now_ms: u64) -> Result<Reservation, IndexedRejection> {
        let mut reservation = Reservation::default();
        // Credits posted by earlier transfers of the same linked operation may
        // be spent by later ones; credits of other operations may not.
        let mut same_op: Vec<SameOp> = Vec::new();
        for (index, planned) in op.iter().enumerate() {
            if let Err(rejection) = self.reserve_one(planned, now_ms, &mut reservation, &mut same_op) {
                self.release(&reservation);
                return Err((index as u32, rejection));
            }
        }
        Ok(reservation)
    }

    fn reserve_one(
        &mut self,
        planned: &Planned,
        now_ms: u64,
        reservation: &mut Reservation,
        same_op: &mut Vec<SameOp>,
    ) -> Result<(), Rejection> {
        let [debit, credit] = &planned.legs;
        let owns_debit = self.owns(debit.account_id);
        let owns_credit = self.owns(credit.account_id);
        // Each side's checks run in their own order; the transfer fails with
        // the smallest failure by check order, so the outcome is the same
        // whether both accounts live in this shard or in two.
        let debit_failure =
            if owns_debit { self.check_debit_side(planned, now_ms, same_op).err() } else { None };
        let credit_failure = if owns_credit { self.check_leg(credit, same_op).err() } else { None };
        let asset_failure = match (owns_debit && owns_credit, planned.hold) {
            (true, HoldChange::None | HoldChange::Create) => {
                let debit_asset = self.accounts.get(&debit.account_id).map(|s| s.account.asset);
                let credit_asset = self.accounts.get(&credit.account_id).map(|s| s.account.asset);
                match (debit_asset, credit_asset) {
                    (Some(a), Some(b)) if a != b => Some(Rejection::AssetMismatch),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(failure) = [debit_failure, credit_failure, asset_failure].into_iter().flatten().min() {
            return Err(failure);
        }
        if let (true, HoldChange::Resolve(resolution)) = (owns_debit, planned.hold) {
            if let Some(hold) = self.holds.get_mut(&resolution.pending_id) {
                hold.busy = true;
            }
            reservation.busy_holds.push(resolution.pending_id);
        }
        for (leg, owned) in [(debit, owns_debit), (credit, owns_credit)] {
            if !owned {
                continue;
            }
            let Some(slot) = self.accounts.get_mut(&leg.account_id) else { continue };
            slot.reserved.add(leg);
            reservation.legs.push(*leg);
            reservation.assets.push((leg.account_id, slot.account.asset));
            if leg.posted_add > 0 {
                let entry = match same_op.iter_mut().position(|e| e.account_id == leg.account_id) {
                    Some(position) => &mut same_op[position],
                    None => {
                        same_op.push(SameOp {
                            account_id: leg.account_id,
                            credits_posted: 0,
                            debits_posted: 0,
                        });
                        let last = same_op.len() - 1;
                        &mut same_op[last]
                    }
                };
                match leg.side {
                    Side::Debit => entry.debits_posted = entry.debits_posted.saturating_add(leg.posted_add),
                    Side::Credit => {
                        entry.credits_posted = entry.credits_posted.saturating_add(leg.posted_add)
                    }
                }
            }
        }
        Ok(())
    }

    /// The debit side's checks: the account exists, the hold (for a post,
    /// void or expiry) is open and matches, then status and balance.
    fn check_debit_side(&self, planned: &Planned, now_ms: u64, same_op: &[SameOp]) -> Result<(), Rejection> {
        let debit = &planned.legs[0];
        if !self.accounts.contains_key(&debit.account_id) {
            return Err(Rejection::DebitAccountNotFound);
        }
        if let HoldChange::Resolve(resolution) = planned.hold {
            let hold = self.holds.get(&resolution.pending_id).ok_or(Rejection::PendingTransferNotFound)?;
            if hold.busy {
                return Err(Rejection::PendingTransferBusy);
            }
            let expired = hold.expires_at_ms.is_some_and(|at| at <= now_ms);
            match resolution.status {
                TransferStatus::Posted if expired => return Err(Rejection::PendingTransferExpired),
                TransferStatus::Expired if !expired => return Err(Rejection::PendingTransferNotPending),
                _ => {}
            }
            if debit.pending_sub != hold.amount || debit.posted_add > hold.amount {
                return Err(Rejection::ExceedsPendingAmount);
            }
        }
        self.check_leg(debit, same_op)?;
        self.check_risk(planned, now_ms)
    }

    /// The risk rules, last: a transfer that fails anyway fails for that
    /// reason, and a review hold is only made of one that would succeed.
    fn check_risk(&self, planned: &Planned, now_ms: u64) -> Result<(), Rejection> {
        let (Some(transfer), false) = (&planned.transfer, self.rules.is_empty()) else { return Ok(()) };
        let debit = &planned.legs[0];
        if !debit.is_new_debit() {
            return Ok(());
        }
        let Some(slot) = self.accounts.get(&debit.account_id) else { return Ok(()) };
        let hit = self.rules.check(&Debit {
            account: &slot.account,
            credit_account_id: planned.legs[1].account_id,
            amount: debit.posted_add + debit.pending_add,
            now_ms,
            in_flight: slot.reserved.new_debits,
            under_review: transfer.review.is_some(),
        });
        hit.map_or(Ok(()), |hit| Err(hit.rejection()))
    }

    fn check_leg(&self, leg: &Leg, same_op: &[SameOp]) -> Result<(), Rejection> {
        let slot = self.accounts.get(&leg.account_id).ok_or(match leg.side {
            Side::Debit => Rejection::DebitAccountNotFound,
            Side::Credit => Rejection::CreditAccountNotFound,
        })?;
        let earlier = same_op.iter().find(|e| e.account_id == leg.account_id).copied().unwrap_or(SameOp {
            account_id: leg.account_id,
            credits_posted: 0,
            debits_posted: 0,
        });
        slot.account.check(leg, &slot.reserved, &earlier.as_posted())
    }

    /// Gives back what a reservation held.
    pub fn release(&mut self, reservation: &Reservation) {
        for leg in &reservation.legs {
            if let Some(slot) = self.accounts.get_mut(&leg.account_id) {
                slot.reserved.remove(leg);
            }
        }
        for pending_id in &reservation.busy_holds {
            if let Some(hold) = self.holds.get_mut(pending_id) {
                hold.busy = false;
            }
        }
    }

    /// Reserves and applies an operation whose legs all live in this shard:
    /// the single-shard fast path. Returns the record to journal.
    pub fn execute_local(&mut self, op: &[Planned], now_ms: u64) -> Result<Applied, IndexedRejection> {
        let reservation = self.reserve(op, now_ms)?;
        self.release(&reservation);
        let mut applied = Applied::default();
        for planned in op {
            for leg in &planned.legs {
                applied.events.push(self.apply_leg(leg));
            }
            self.apply_holds(planned);
            if let Some(transfer) = &planned.transfer {
                applied.transfers.push(transfer.clone());
            }
            if let Some(resolution) = planned.resolution() {
                applied.resolutions.push(resolution);
            }
            applied.decisions.extend(planned.decision);
        }
        Ok(applied)
    }

    /// Checks this shard's legs of an operation whose other legs another
    /// shard reserved, including the asset match against `other_assets`.
    /// On success the legs are reserved.
    fn reserve_remote(
        &mut self,
        op: &[Planned],
        other_assets: &[(AccountId, Asset)],
        now_ms: u64,
    ) -> Result<Reservation, IndexedRejection> {
        let asset_failure = op.iter().enumerate().find_map(|(index, planned)| {
            if matches!(planned.hold, HoldChange::Resolve(_)) {
                return None;
            }
            let [debit, credit] = &planned.legs;
            let asset_of = |id: AccountId| {
                other_assets
                    .iter()
                    .find(|(other, _)| *other == id)
                    .map(|(_, asset)| *asset)
                    .or_else(|| self.accounts.get(&id).map(|slot| slot.account.asset))
            };
            let (a, b) = (asset_of(debit.account_id)?, asset_of(credit.account_id)?);
            (a != b).then_some((index as u32, Rejection::AssetMismatch))
        });
        let reservation = match self.reserve(op, now_ms) {
            Err(failure) => return Err(asset_failure.map_or(failure, |asset| asset.min(failure))),
            Ok(reservation) => reservation,
        };
        if let Some(failure) = asset_failure {
            self.release(&reservation);
            return Err(failure);
        }
        Ok(reservation)
    }

    /// The credit side of a transfer between two shards, whose debit side
    /// is reserved already: checks this shard's legs and the assets, then
    /// applies them at once. Returns the sequence numbers given, in leg order.
    pub fn accept_credit(
        &mut self,
        op: &[Planned],
        debit_assets: &[(AccountId, Asset)],
        now_ms: u64,
    ) -> Result<Vec<u64>, IndexedRejection> {
        let reservation = self.reserve_remote(op, debit_assets, now_ms)?;
        self.release(&reservation);
        let mut sequences = Vec::with_capacity(reservation.legs.len());
        for planned in op {
            for leg in &planned.legs {
                if self.owns(leg.account_id) {
                    sequences.push(self.apply_leg(leg).sequence);
                }
            }
            self.apply_holds(planned);
        }
        Ok(sequences)
    }

    /// The failure this shard's legs would add to `failure`, found by the
    /// other shard: the smaller one by check order wins, so the outcome does
    /// not depend on where the accounts live. Changes nothing.
    pub fn first_failure(
        &mut self,
        op: &[Planned],
        debit_assets: &[(AccountId, Asset)],
        failure: IndexedRejection,
        now_ms: u64,
    ) -> IndexedRejection {
        match self.reserve_remote(op, debit_assets, now_ms) {
            Ok(reservation) => {
                self.release(&reservation);
                failure
            }
            Err(mine) => mine.min(failure),
        }
    }

    /// Assets of this shard's accounts that `op` names.
    pub fn assets_of(&self, op: &[Planned]) -> Vec<(AccountId, Asset)> {
        op.iter()
            .flat_map(|planned| planned.legs.iter())
            .filter_map(|leg| {
                self.accounts.get(&leg.account_id).map(|slot| (leg.account_id, slot.account.asset))
            })
            .collect()
    }

    /// Keeps a reservation made for a coordinated commit until it is decided.
    pub fn hold_prepared(&mut self, key: (CommitId, u32), op: Arc<[Planned]>, reservation: Reservation) {
        self.prepared.insert(key, (op, reservation));
    }

    /// Applies this shard's legs of a committed operation. Returns the
    /// sequence numbers given, in leg order.
    pub fn commit_prepared(&mut self, key: (CommitId, u32)) -> Vec<u64> {
        let Some((op, reservation)) = self.prepared.remove(&key) else {
            return Vec::new();
        };
        self.release(&reservation);
        let mut sequences = Vec::with_capacity(reservation.legs.len());
        for planned in op.iter() {
            for leg in &planned.legs {
                if self.owns(leg.account_id) {
                    sequences.push(self.apply_leg(leg).sequence);
                }
            }
            self.apply_holds(planned);
        }
        sequences
    }

    /// Drops a prepared operation that will not commit.
    pub fn abort_prepared(&mut self, key: (CommitId, u32)) {
        if let Some((_, reservation)) = self.prepared.remove(&key) {
            self.release(&reservation);
        }
    }

    /// Applies one leg that was checked and reserved: a broken guarantee
    /// here is a bug, so it panics and the supervisor rebuilds the shards.
    fn apply_leg(&mut self, leg: &Leg) -> SequencedEvent {
        match self.try_apply_leg(leg, None) {
            Ok(event) => event,
            Err(broken) => panic!("{broken}"),
        }
    }

    /// Applies one leg. With `sequence`, replay: an event the account already
    /// has is skipped, so replaying over a newer snapshot is harmless.
    fn try_apply_leg(&mut self, leg: &Leg, sequence: Option<u64>) -> Result<SequencedEvent, InvariantBroken> {
        let event = AccountEvent::Leg(*leg);
        let slot = self
            .accounts
            .get_mut(&leg.account_id)
            .ok_or(InvariantBroken::UnknownAccount { account_id: leg.account_id })?;
        let sequence = sequence.unwrap_or(slot.account.sequence + 1);
        if sequence > slot.account.sequence {
            slot.account.try_apply(sequence, &event)?;
            if leg.is_new_debit() && slot.account.user_id != crate::ids::UserId::SYSTEM {
                slot.account.debit_window.record(leg.at_ms, leg.posted_add + leg.pending_add);
            }
            self.dirty_accounts.insert(leg.account_id);
            self.record_history(leg.account_id, sequence, HistoryEvent::Leg(*leg), leg.at_ms);
        }
        Ok(SequencedEvent { account_id: leg.account_id, sequence, event })
    }

    fn apply_holds(&mut self, planned: &Planned) {
        let debit_account_id = planned.legs[0].account_id;
        if !self.owns(debit_account_id) {
            return;
        }
        match (planned.hold, &planned.transfer) {
            (HoldChange::Create, Some(transfer)) => self.create_hold(transfer),
            (HoldChange::Resolve(resolution), _) => self.remove_hold(resolution.pending_id),
            _ => {}
        }
    }

    fn create_hold(&mut self, transfer: &Transfer) {
        self.dirty_holds.insert(transfer.id);
        if let Some(at) = transfer.expires_at_ms {
            self.expiries.insert((at, transfer.id));
        }
        self.holds.insert(
            transfer.id,
            Hold {
                pending_id: transfer.id,
                debit_account_id: transfer.debit_account_id,
                credit_account_id: transfer.credit_account_id,
                amount: transfer.amount.get(),
                expires_at_ms: transfer.expires_at_ms,
                busy: false,
            },
        );
    }

    fn remove_hold(&mut self, pending_id: TransferId) {
        self.dirty_holds.insert(pending_id);
        if let Some(hold) = self.holds.remove(&pending_id) {
            if let Some(at) = hold.expires_at_ms {
                self.expiries.remove(&(at, pending_id));
            }
        }
    }

    fn record_history(&mut self, account_id: AccountId, sequence: u64, event: HistoryEvent, at_ms: u64) {
        let Some(slot) = self.accounts.get(&account_id) else { return };
        let entry = HistoryEntry { account_id, sequence, event, balances: slot.account.balances, at_ms };
        self.history_recent.push(entry);
    }

    /// The history entries made since the last call (or since recovery,
    /// which made the replayed ones), for the ledger events' feed. The
    /// caller hands them on once the records that made them are durable.
    pub fn take_new_history(&mut self) -> Vec<HistoryEntry> {
        let new = self.history_recent[self.events_mark.min(self.history_recent.len())..].to_vec();
        self.events_mark = self.history_recent.len();
        new
    }

    /// Marks the history made since the last take as seen without copying
    /// it: the feed wants nothing now.
    pub fn skip_new_history(&mut self) {
        self.events_mark = self.history_recent.len();
    }

    /// History entries of an account after `after_sequence` still held in
    /// memory (not yet confirmed in storage), oldest first, at most `limit`.
    pub fn recent_history(
        &self,
        account_id: AccountId,
        after_sequence: u64,
        limit: usize,
    ) -> Vec<HistoryEntry> {
        let mut entries: Vec<HistoryEntry> = self
            .history_flushing
            .iter()
            .chain(&self.history_recent)
            .filter(|e| e.account_id == account_id && e.sequence > after_sequence)
            .cloned()
            .collect();
        entries.sort_by_key(|e| e.sequence);
        entries.dedup_by_key(|e| e.sequence);
        entries.truncate(limit);
        entries
    }

    /// Storage has written what the last capture returned: forget it.
    pub fn forget_flushed_history(&mut self) {
        self.history_flushing = Arc::default();
        self.flushing_accounts.clear();
        self.flushing_holds.clear();
    }

    /// Takes what changed since the last capture, for a snapshot.
    pub fn capture(&mut self) -> Captured {
        let mut captured = Captured::default();
        // The next capture is likely as large: growing a vector of history
        // entry by entry copied it over and over (seen in profiles).
        let expected = self.history_recent.len();
        let recent = std::mem::replace(&mut self.history_recent, Vec::with_capacity(expected));
        self.events_mark = 0;
        if self.history_flushing.is_empty() {
            self.history_flushing = Arc::new(recent);
        } else {
            // A capture whose write never got confirmed is written again.
            Arc::make_mut(&mut self.history_flushing).extend(recent);
        }
        captured.history = self.history_flushing.clone();
        // Accounts and holds of a capture whose write was never confirmed
        // are taken again, as they stand now.
        self.flushing_accounts.extend(self.dirty_accounts.drain());
        self.flushing_holds.extend(self.dirty_holds.drain());
        for account_id in &self.flushing_accounts {
            if let Some(slot) = self.accounts.get(account_id) {
                captured.accounts.push(slot.account.clone());
            }
        }
        for &pending_id in &self.flushing_holds {
            match self.holds.get(&pending_id) {
                Some(hold) => captured.holds.push(hold.clone()),
                None => captured.removed_holds.push(pending_id),
            }
        }
        captured
    }

    /// Loads an open hold from a snapshot (before any replay).
    pub fn load_hold(&mut self, hold: Hold) {
        if let Some(at) = hold.expires_at_ms {
            self.expiries.insert((at, hold.pending_id));
        }
        self.holds.insert(hold.pending_id, hold);
    }

    /// Holds whose timeout has passed and that nothing is resolving, oldest first.
    pub fn due_holds(&self, now_ms: u64, limit: usize) -> Vec<Hold> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .filter_map(|(_, id)| self.holds.get(id))
            .filter(|hold| !hold.busy)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Replays an [`Applied`] record (recovery).
    pub fn replay_applied(&mut self, applied: &Applied) -> Result<(), ReplayError> {
        for sequenced in &applied.events {
            if !self.owns(sequenced.account_id) {
                continue;
            }
            // A passivated account's snapshot is newer than its opening.
            self.activate(sequenced.account_id)?;
            match &sequenced.event {
                AccountEvent::Opened(account) => {
                    if let std::collections::hash_map::Entry::Vacant(slot) = self.accounts.entry(account.id) {
                        slot.insert(Slot {
                            account: account.clone(),
                            reserved: Reserved::default(),
                            touched: self.epoch,
                        });
                        self.dirty_accounts.insert(account.id);
                        self.record_history(account.id, 1, HistoryEvent::Opened, account.created_at_ms);
                    }
                }
                AccountEvent::StatusChanged(_) => {
                    if let Some(slot) = self.accounts.get_mut(&sequenced.account_id) {
                        if sequenced.sequence > slot.account.sequence {
                            slot.account.try_apply(sequenced.sequence, &sequenced.event)?;
                            self.dirty_accounts.insert(sequenced.account_id);
                            if let AccountEvent::StatusChanged(status) = sequenced.event {
                                self.record_history(
                                    sequenced.account_id,
                                    sequenced.sequence,
                                    HistoryEvent::StatusChanged(status),
                                    applied.at_ms,
                                );
                            }
                        }
                    }
                }
                AccountEvent::Leg(leg) => {
                    self.try_apply_leg(leg, Some(sequenced.sequence))?;
                }
            }
        }
        for transfer in &applied.transfers {
            if transfer.kind == TransferKind::Pending && self.owns(transfer.debit_account_id) {
                self.create_hold(transfer);
            }
        }
        for resolution in &applied.resolutions {
            self.remove_hold(resolution.pending_id);
        }
        Ok(())
    }

    /// Replays this shard's part of a commit: with `sequences` as recorded
    /// by [`crate::record::Record::CommitApplied`], or with fresh ones when a
    /// crash came between the commit and its application. Returns the
    /// sequences used.
    pub fn replay_commit(
        &mut self,
        commit: &Commit,
        sequences: Option<&[u64]>,
    ) -> Result<Vec<u64>, ReplayError> {
        let mut used = Vec::new();
        for leg in &commit.legs {
            if self.owns(leg.account_id) {
                self.activate(leg.account_id)?;
                let sequence = sequences.and_then(|s| s.get(used.len()).copied());
                used.push(self.try_apply_leg(leg, sequence)?.sequence);
            }
        }
        for transfer in &commit.transfers {
            if transfer.kind == TransferKind::Pending && self.owns(transfer.debit_account_id) {
                self.create_hold(transfer);
            }
        }
        for resolution in &commit.resolutions {
            self.remove_hold(resolution.pending_id);
        }
        Ok(used)
    }
}
