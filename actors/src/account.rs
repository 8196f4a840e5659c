//! The account: its fields, its balances, and its handler, the only code
//! that changes a balance.
//!
//! Guarantees (the same words are in `docs/ARCHITECTURE.md`):
//! - balances only change through [`Account::apply`], one event at a time, each
//!   with the next sequence number (1 for the opening, then gap-free);
//! - with `debits_must_not_exceed_credits`, `debits_posted + debits_pending`
//!   never exceeds `credits_posted + overdraft_limit`;
//! - with `credits_must_not_exceed_debits`, `credits_posted + credits_pending`
//!   never exceeds `debits_posted`;
//! - no balance wraps: every sum is checked.

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::asset::Asset;
use crate::ids::{AccountId, TransferId, UserId};
use crate::rejection::Rejection;

/// Where an account stands in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AccountStatus {
    /// Moves money both ways.
    Active,
    /// Neither sends nor receives; pending holds may still be voided or expire.
    Frozen,
    /// Final: zero balance, nothing pending, nothing moves again.
    Closed,
}

/// Balance limits of an account.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccountFlags {
    /// Debits (posted and pending) may not exceed credits plus the overdraft
    /// limit: the default for a user's wallet.
    pub debits_must_not_exceed_credits: bool,
    /// Credits (posted and pending) may not exceed posted debits.
    pub credits_must_not_exceed_debits: bool,
}

impl AccountFlags {
    /// The flags of a user's wallet: no spending beyond what came in.
    pub const WALLET: AccountFlags =
        AccountFlags { debits_must_not_exceed_credits: true, credits_must_not_exceed_debits: false };
    /// No limits: the settlement account of an asset, which may go negative.
    pub const UNLIMITED: AccountFlags =
        AccountFlags { debits_must_not_exceed_credits: false, credits_must_not_exceed_debits: false };
}

/// The four running totals of an account, TigerBeetle style. Balances are
/// derived from them, never stored apart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Balances {
    /// Sum of posted debits.
    pub debits_posted: u128,
    /// Sum of posted credits.
    pub credits_posted: u128,
    /// Sum of debits held by pending transfers.
    pub debits_pending: u128,
    /// Sum of credits held by pending transfers.
    pub credits_pending: u128,
}

impl Balances {
    /// Credits minus debits, posted only (may be negative for a settlement account).
    pub fn posted(&self) -> i128 {
        signed_difference(self.credits_posted, self.debits_posted)
    }

    /// What the owner may spend: posted credits minus posted and pending debits.
    pub fn available(&self) -> i128 {
        signed_difference(self.credits_posted, self.debits_posted.saturating_add(self.debits_pending))
    }
}

fn signed_difference(plus: u128, minus: u128) -> i128 {
    // Balances are capped far below 2^127 by AMOUNT_MAX per transfer in practice;
    // saturate rather than wrap if that ever stops holding.
    if plus >= minus {
        i128::try_from(plus - minus).unwrap_or(i128::MAX)
    } else {
        i128::try_from(minus - plus).map(|v| -v).unwrap_or(i128::MIN)
    }
}

/// An account and its balances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account's id.
    pub id: AccountId,
    /// Its owner.
    pub user_id: UserId,
    /// The only asset it holds.
    pub asset: Asset,
    /// Its limits.
    pub flags: AccountFlags,
    /// How far below zero a `debits_must_not_exceed_credits` account may go.
    pub overdraft_limit: Amount,
    /// Lifecycle state.
    pub status: AccountStatus,
    /// Running totals.
    pub balances: Balances,
    /// When it was opened, in ledger milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// Sequence number of the last event applied (1 = opened).
    pub sequence: u64,
    /// Recent debits, for velocity rules (empty for settlement accounts).
    pub debit_window: crate::risk::DebitWindow,
}

/// Which side of a transfer an account is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Side {
    /// The account money leaves.
    Debit,
    /// The account money reaches.
    Credit,
}

/// One account's share of a transfer: how its totals on `side` move.
/// Every transfer is exactly two legs of equal amounts, one per side, so the
/// sum of credits minus debits over all accounts never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Leg {
    /// The account this leg changes.
    pub account_id: AccountId,
    /// The transfer it belongs to.
    pub transfer_id: TransferId,
    /// Which totals move.
    pub side: Side,
    /// Added to the posted total.
    pub posted_add: u128,
    /// Added to the pending total (a new hold).
    pub pending_add: u128,
    /// Taken from the pending total (a hold posted, voided or expired).
    pub pending_sub: u128,
    /// When the ledger took the transfer it belongs to (its timestamp; for
    /// an expiry, when the hold was found due), in ledger milliseconds since
    /// the Unix epoch: velocity windows count by it and its history entry
    /// and event say it happened then, on replay as when it was applied.
    pub at_ms: u64,
}

/// What happened to an account, in order: the journal's unit of change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    /// The account was opened (always sequence 1).
    Opened(Account),
    /// Its status changed.
    StatusChanged(AccountStatus),
    /// A transfer moved its totals.
    Leg(Leg),
}

/// Money that prepared but not yet committed legs will move: counted against
/// limits so that a commit can never break one. Volatile: after a crash
/// nothing is prepared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reserved {
    /// Debits (posted or pending) that may still be added.
    pub debits: u128,
    /// Credits (posted or pending) that may still be added.
    pub credits: u128,
    /// Number of prepared legs on this account.
    pub legs: u32,
    /// Prepared new debits (not posts of holds): count and sum, which
    /// velocity rules count as if applied.
    pub new_debits: (u32, u128),
}

impl Reserved {
    /// Counts a leg that `Account::check` let through. Every total is
    /// checked: `check` refuses a leg that would overflow one (`overflow`),
    /// so a total leaving its range here is a broken invariant, and the
    /// shard crashes so its supervisor rebuilds it from durable state.
    pub fn add(&mut self, leg: &Leg) {
        let adds = leg_adds(leg);
        let total = match leg.side {
            Side::Debit => &mut self.debits,
            Side::Credit => &mut self.credits,
        };
        *total = total.checked_add(adds).unwrap_or_else(|| panic!("reserved total overflow: {leg:?}"));
        if leg.is_new_debit() {
            let (count, sum) = &mut self.new_debits;
            *count = count.checked_add(1).unwrap_or_else(|| panic!("reserved debit count overflow: {leg:?}"));
            *sum = sum.checked_add(adds).unwrap_or_else(|| panic!("reserved debit sum overflow: {leg:?}"));
        }
        self.legs =
            self.legs.checked_add(1).unwrap_or_else(|| panic!("reserved leg count overflow: {leg:?}"));
    }

    /// Takes back what [`Reserved::add`] counted for `leg`; a total below
    /// zero is a broken invariant, as there.
    pub fn remove(&mut self, leg: &Leg) {
        let adds = leg_adds(leg);
        let total = match leg.side {
            Side::Debit => &mut self.debits,
            Side::Credit => &mut self.credits,
        };
        *total = total.checked_sub(adds).unwrap_or_else(|| panic!("reserved total below zero: {leg:?}"));
        if leg.is_new_debit() {
            let (count, sum) = &mut self.new_debits;
            *count =
                count.checked_sub(1).unwrap_or_else(|| panic!("reserved debit count below zero: {leg:?}"));
            *sum = sum.checked_sub(adds).unwrap_or_else(|| panic!("reserved debit sum below zero: {leg:?}"));
        }
        self.legs =
            self.legs.checked_sub(1).unwrap_or_else(|| panic!("reserved leg count below zero: {leg:?}"));
    }
}

fn leg_adds(leg: &Leg) -> u128 {
    leg.posted_add.checked_add(leg.pending_add).unwrap_or_else(|| panic!("leg amount overflow: {leg:?}"))
}

/// Posted amounts reserved on an account by earlier transfers of the same
/// linked operation, which later transfers of it may rely on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SameOpPosted {
    /// Posted credits.
    pub credits: u128,
    /// Posted debits.
    pub debits: u128,
}

impl Leg {
    /// Whether this leg is a new debit (a posted transfer or a new hold), the
    /// kind velocity rules count; the post of a hold was counted when held.
    pub fn is_new_debit(&self) -> bool {
        self.side == Side::Debit && self.pending_sub == 0 && (self.posted_add > 0 || self.pending_add > 0)
    }
}

impl Account {
    /// Checks a leg against this account as it would stand with `reserved`
    /// added, counting `same_op` posted by earlier transfers of the same
    /// linked operation as done. Changes nothing.
    pub fn check(&self, leg: &Leg, reserved: &Reserved, same_op: &SameOpPosted) -> Result<(), Rejection> {
        let adds = leg.posted_add.checked_add(leg.pending_add).ok_or(Rejection::Overflow)?;
        let is_release_only = adds == 0;
        match (self.status, leg.side) {
            (AccountStatus::Closed, Side::Debit) => return Err(Rejection::DebitAccountClosed),
            (AccountStatus::Closed, Side::Credit) => return Err(Rejection::CreditAccountClosed),
            (AccountStatus::Frozen, Side::Debit) if !is_release_only => {
                return Err(Rejection::DebitAccountFrozen)
            }
            (AccountStatus::Frozen, Side::Credit) if !is_release_only => {
                return Err(Rejection::CreditAccountFrozen)
            }
            _ => {}
        }
        let b = &self.balances;
        match leg.side {
            Side::Debit => {
                let posted = b.debits_posted.checked_add(leg.posted_add).ok_or(Rejection::Overflow)?;
                let pending = b
                    .debits_pending
                    .checked_add(leg.pending_add)
                    .and_then(|p| p.checked_add(reserved.debits))
                    .ok_or(Rejection::Overflow)?;
                let total = posted.checked_add(pending).ok_or(Rejection::Overflow)?;
                if self.flags.debits_must_not_exceed_credits && adds > 0 {
                    let ceiling = b
                        .credits_posted
                        .saturating_add(same_op.credits)
                        .saturating_add(self.overdraft_limit.get());
                    // A posted hold was already counted in debits_pending.
                    if total.saturating_sub(leg.pending_sub) > ceiling {
                        return Err(Rejection::InsufficientFunds);
                    }
                }
            }
            Side::Credit => {
                let posted = b.credits_posted.checked_add(leg.posted_add).ok_or(Rejection::Overflow)?;
                let pending = b
                    .credits_pending
                    .checked_add(leg.pending_add)
                    .and_then(|p| p.checked_add(reserved.credits))
                    .ok_or(Rejection::Overflow)?;
                let total = posted.checked_add(pending).ok_or(Rejection::Overflow)?;
                if self.flags.credits_must_not_exceed_debits
                    && adds > 0
                    && total.saturating_sub(leg.pending_sub) > b.debits_posted.saturating_add(same_op.debits)
                {
                    return Err(Rejection::ExceedsDebits);
                }
            }
        }
        Ok(())
    }

    /// Applies one event with its sequence number. The caller checked it
    /// first; a broken invariant here is a bug, so it panics and the shard's
    /// supervisor rebuilds the state from durable storage.
    pub fn apply(&mut self, sequence: u64, event: &AccountEvent) {
        if let Err(broken) = self.try_apply(sequence, event) {
            panic!("{broken}");
        }
    }

    /// Applies one event if the account stays within its guarantees, and
    /// says which one it would break otherwise (leaving the account as it
    /// was). Replay uses it: a journal that breaks a guarantee stops the
    /// start with an error naming the record, never a panic.
    pub fn try_apply(&mut self, sequence: u64, event: &AccountEvent) -> Result<(), InvariantBroken> {
        let account_id = self.id;
        if sequence != self.sequence.saturating_add(1) {
            return Err(InvariantBroken::SequenceGap { account_id, last: self.sequence, sequence });
        }
        // Worked out on copies (`Balances` is plain data): the account
        // changes only if the result keeps every guarantee.
        let (mut status, mut balances) = (self.status, self.balances);
        match event {
            AccountEvent::Opened(_) => return Err(InvariantBroken::OpenedTwice { account_id }),
            AccountEvent::StatusChanged(next) => status = *next,
            AccountEvent::Leg(leg) => {
                if leg.account_id != account_id {
                    return Err(InvariantBroken::WrongAccount { account_id, leg_account_id: leg.account_id });
                }
                let b = &mut balances;
                let (posted, pending) = match leg.side {
                    Side::Debit => (&mut b.debits_posted, &mut b.debits_pending),
                    Side::Credit => (&mut b.credits_posted, &mut b.credits_pending),
                };
                *pending = pending
                    .checked_sub(leg.pending_sub)
                    .and_then(|p| p.checked_add(leg.pending_add))
                    .ok_or(InvariantBroken::TotalOutOfRange { account_id })?;
                *posted = posted
                    .checked_add(leg.posted_add)
                    .ok_or(InvariantBroken::TotalOutOfRange { account_id })?;
            }
        }
        self.check_balances(&balances)?;
        (self.status, self.balances, self.sequence) = (status, balances, sequence);
        Ok(())
    }

    /// Asserts the balance guarantees; called after every change and after loading.
    pub fn assert_limits(&self) {
        if let Err(broken) = self.check_limits() {
            panic!("{broken}");
        }
    }

    /// Checks the balance guarantees (limits), without panicking.
    pub fn check_limits(&self) -> Result<(), InvariantBroken> {
        self.check_balances(&self.balances)
    }

    fn check_balances(&self, b: &Balances) -> Result<(), InvariantBroken> {
        let account_id = self.id;
        if self.flags.debits_must_not_exceed_credits
            && b.debits_posted.saturating_add(b.debits_pending)
                > b.credits_posted.saturating_add(self.overdraft_limit.get())
        {
            return Err(InvariantBroken::DebitsExceedCredits { account_id, balances: *b });
        }
        if self.flags.credits_must_not_exceed_debits
            && b.credits_posted.saturating_add(b.credits_pending) > b.debits_posted
        {
            return Err(InvariantBroken::CreditsExceedDebits { account_id, balances: *b });
        }
        Ok(())
    }
}

/// A change or a loaded state that would break one of the account's
/// guarantees. Live, it is a bug and crashes the shard; in replay or on
/// loading a snapshot, the durable data is wrong, and opening stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvariantBroken {
    /// An event's sequence number is not the account's next.
    #[error("account {account_id}: event {sequence} does not follow event {last}")]
    SequenceGap {
        /// The account.
        account_id: AccountId,
        /// Its last sequence number.
        last: u64,
        /// The event's.
        sequence: u64,
    },
    /// An opening of an account that is open.
    #[error("account {account_id} opened twice")]
    OpenedTwice {
        /// The account.
        account_id: AccountId,
    },
    /// A leg of another account.
    #[error("a leg of account {leg_account_id} applied to account {account_id}")]
    WrongAccount {
        /// The account.
        account_id: AccountId,
        /// The leg's account.
        leg_account_id: AccountId,
    },
    /// A leg of an account that does not exist.
    #[error("a leg of account {account_id}, which does not exist")]
    UnknownAccount {
        /// The account.
        account_id: AccountId,
    },
    /// A total would leave its range (release more than held, or overflow).
    #[error("account {account_id}: a total would leave its range")]
    TotalOutOfRange {
        /// The account.
        account_id: AccountId,
    },
    /// Debits would pass credits plus the overdraft limit.
    #[error("account {account_id}: debits exceed credits plus the overdraft limit: {balances:?}")]
    DebitsExceedCredits {
        /// The account.
        account_id: AccountId,
        /// Its balances as they would be.
        balances: Balances,
    },
    /// Credits would pass posted debits.
    #[error("account {account_id}: credits exceed debits: {balances:?}")]
    CreditsExceedDebits {
        /// The account.
        account_id: AccountId,
        /// Its balances as they would be.
        balances: Balances,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(side: Side, posted_add: u128, pending_add: u128) -> Leg {
        Leg {
            account_id: AccountId::new(1).unwrap_or_else(|_| unreachable!()),
            transfer_id: TransferId::new(1).unwrap_or_else(|_| unreachable!()),
            side,
            posted_add,
            pending_add,
            pending_sub: 0,
            at_ms: 0,
        }
    }

    #[test]
    fn reservations_add_and_remove_exactly() {
        let mut reserved = Reserved::default();
        let debit = leg(Side::Debit, 70, 0);
        let hold = leg(Side::Debit, 0, 30);
        let credit = leg(Side::Credit, 5, 0);
        for leg in [&debit, &hold, &credit] {
            reserved.add(leg);
        }
        assert_eq!(reserved, Reserved { debits: 100, credits: 5, legs: 3, new_debits: (2, 100) });
        for leg in [&credit, &debit, &hold] {
            reserved.remove(leg);
        }
        assert_eq!(reserved, Reserved::default());
    }

    fn account(flags: AccountFlags, balances: Balances) -> Account {
        Account {
            id: AccountId::new(1).unwrap_or_else(|_| unreachable!()),
            user_id: UserId::new(2).unwrap_or_else(|_| unreachable!()),
            asset: Asset::new("USD", 2).unwrap_or_else(|_| unreachable!()),
            flags,
            overdraft_limit: Amount::ZERO,
            status: AccountStatus::Active,
            balances,
            created_at_ms: 0,
            sequence: 1,
            debit_window: Default::default(),
        }
    }

    /// A total that would pass `u128` is refused as `overflow` before
    /// anything changes, on either side, pending or posted, reservations
    /// counted.
    #[test]
    fn a_total_that_would_overflow_is_refused() {
        let near = u128::MAX - 10;
        let none = SameOpPosted::default();
        let credits =
            account(AccountFlags::UNLIMITED, Balances { credits_posted: near, ..Balances::default() });
        assert_eq!(
            credits.check(&leg(Side::Credit, 11, 0), &Reserved::default(), &none),
            Err(Rejection::Overflow)
        );
        assert_eq!(credits.check(&leg(Side::Credit, 10, 0), &Reserved::default(), &none), Ok(()));
        let debits =
            account(AccountFlags::UNLIMITED, Balances { debits_pending: near, ..Balances::default() });
        assert_eq!(
            debits.check(&leg(Side::Debit, 0, 11), &Reserved::default(), &none),
            Err(Rejection::Overflow)
        );
        let reserved = Reserved { debits: 5, ..Reserved::default() };
        assert_eq!(debits.check(&leg(Side::Debit, 0, 6), &reserved, &none), Err(Rejection::Overflow));
        assert_eq!(debits.check(&leg(Side::Debit, 0, 5), &reserved, &none), Ok(()));
        // Posted and pending together pass u128 only in sum.
        let both = account(
            AccountFlags::WALLET,
            Balances {
                debits_posted: u128::MAX / 2 + 1,
                debits_pending: u128::MAX / 2 + 1,
                ..Balances::default()
            },
        );
        assert_eq!(
            both.check(&leg(Side::Debit, 1, 0), &Reserved::default(), &none),
            Err(Rejection::Overflow)
        );
    }

    #[test]
    #[should_panic(expected = "reserved total below zero")]
    fn releasing_more_than_was_reserved_crashes_instead_of_wrapping() {
        Reserved::default().remove(&leg(Side::Credit, 1, 0));
    }

    #[test]
    #[should_panic(expected = "reserved total overflow")]
    fn a_reserved_total_that_would_wrap_crashes() {
        let mut reserved = Reserved { debits: u128::MAX, ..Reserved::default() };
        reserved.add(&leg(Side::Debit, 1, 0));
    }
}
