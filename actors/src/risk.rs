//! Risk rules: checks that veto a transfer, or turn it into a hold for
//! review, in the same step as the debit account's balance check.
//!
//! A rule is checked by the shard that owns the debited account, while it
//! reserves the debit: so a veto is as exact as "insufficient funds", and a
//! velocity window counts every debit applied or in flight on that account,
//! whatever the concurrency. The window is part of the account's durable
//! state ([`DebitWindow`]): snapshots carry it and replay rebuilds it from
//! the transfers' own timestamps, so a restart forgets nothing.
//!
//! Order (documented in `docs/ARCHITECTURE.md`): rules whose action is
//! `reject` come before rules whose action is `review`; within an action, by
//! kind in the order of [`RuleKind`]'s variants; then by rule id. The first
//! violated rule decides.

use serde::{Deserialize, Serialize};

use crate::account::Account;
use crate::amount::Amount;
use crate::ids::{AccountId, TransferId, UserId};
use crate::ports::DecisionIndex;

mod user_window;
mod window;

pub use crate::ids::RuleId;
pub use user_window::{UserDebits, UserInFlight, UserWindow};
pub use window::DebitWindow;

/// Longest window a velocity rule may have: seven days.
pub const WINDOW_SECONDS_MAX: u32 = 7 * 24 * 3600;
/// Most accounts one `blocked_account` rule may list.
pub const BLOCKED_ACCOUNTS_MAX: usize = 10_000;
/// Longest rule name, in bytes.
pub const RULE_NAME_LEN_MAX: usize = 128;

/// Which debits a rule looks at: through the debited account and its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleScope {
    /// Every user's account.
    Global,
    /// The accounts of one user.
    User(UserId),
    /// One account.
    Account(AccountId),
}

impl RuleScope {
    fn matches(&self, account: &Account) -> bool {
        match self {
            RuleScope::Global => true,
            RuleScope::User(user_id) => account.user_id == *user_id,
            RuleScope::Account(account_id) => account.id == *account_id,
        }
    }
}

/// What a violated rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuleAction {
    /// The transfer fails and changes nothing.
    Reject,
    /// The transfer becomes a hold that only an admin may post or void.
    Review,
}

/// What a rule checks. The variant order is the check order within an action.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleKind {
    /// A transfer from or to one of these accounts.
    BlockedAccount {
        /// The listed accounts.
        account_ids: Vec<AccountId>,
    },
    /// An account younger than `seconds` sends more than `amount` in one transfer.
    NewAccountLimit {
        /// Age below which the account counts as new.
        seconds: u32,
        /// Asset code the limit is in; accounts of other assets are not checked.
        asset: String,
        /// Largest amount per transfer, in minor units.
        amount: Amount,
    },
    /// One transfer above `amount`.
    MaxAmount {
        /// Asset code the limit is in.
        asset: String,
        /// Largest amount, in minor units.
        amount: Amount,
    },
    /// More than `count` debits of one account within the window.
    VelocityCount {
        /// Length of the sliding window.
        window_seconds: u32,
        /// Most debits allowed within it.
        count: u32,
    },
    /// The sum debited from one account within the window would exceed `amount`.
    VelocityAmount {
        /// Asset code the limit is in.
        asset: String,
        /// Length of the sliding window.
        window_seconds: u32,
        /// Largest sum, in minor units.
        amount: Amount,
    },
}

/// A rule kind's name without its parameters: for decisions and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuleKindCode {
    /// See [`RuleKind::BlockedAccount`].
    BlockedAccount,
    /// See [`RuleKind::NewAccountLimit`].
    NewAccountLimit,
    /// See [`RuleKind::MaxAmount`].
    MaxAmount,
    /// See [`RuleKind::VelocityCount`].
    VelocityCount,
    /// See [`RuleKind::VelocityAmount`].
    VelocityAmount,
}

impl RuleKindCode {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKindCode::BlockedAccount => "blocked_account",
            RuleKindCode::NewAccountLimit => "new_account_limit",
            RuleKindCode::MaxAmount => "max_amount",
            RuleKindCode::VelocityCount => "velocity_count",
            RuleKindCode::VelocityAmount => "velocity_amount",
        }
    }
}

impl RuleKind {
    /// Its kind without parameters.
    pub fn code(&self) -> RuleKindCode {
        match self {
            RuleKind::BlockedAccount { .. } => RuleKindCode::BlockedAccount,
            RuleKind::NewAccountLimit { .. } => RuleKindCode::NewAccountLimit,
            RuleKind::MaxAmount { .. } => RuleKindCode::MaxAmount,
            RuleKind::VelocityCount { .. } => RuleKindCode::VelocityCount,
            RuleKind::VelocityAmount { .. } => RuleKindCode::VelocityAmount,
        }
    }
}

/// A risk rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// Its id.
    pub id: RuleId,
    /// A name for people.
    pub name: String,
    /// What it checks.
    pub kind: RuleKind,
    /// Which debits it looks at.
    pub scope: RuleScope,
    /// What a violation does.
    pub action: RuleAction,
    /// For `review`: seconds after which the review hold is voided by itself;
    /// never when `None`.
    pub timeout_seconds: Option<u32>,
}

/// Why a rule is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A velocity window of zero or above [`WINDOW_SECONDS_MAX`].
    #[error("window_seconds must be between 1 and {WINDOW_SECONDS_MAX}")]
    WindowOutOfRange,
    /// A `new_account_limit` with `seconds` of zero.
    #[error("seconds must be greater than zero")]
    ZeroSeconds,
    /// A `blocked_account` rule with no account or too many.
    #[error("account_ids must list 1 to {BLOCKED_ACCOUNTS_MAX} accounts")]
    BlockedAccountsOutOfRange,
    /// An empty or too long name.
    #[error("name must be 1 to {RULE_NAME_LEN_MAX} bytes")]
    NameOutOfRange,
    /// A malformed asset code.
    #[error("asset must be an asset code (1-12 of A-Z, 0-9, _)")]
    MalformedAsset,
    /// A timeout on a rule whose action is not `review`, or a zero one.
    #[error("timeout_seconds applies only to review rules and must be greater than zero")]
    TimeoutOutOfRange,
}

impl Rule {
    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.name.is_empty() || self.name.len() > RULE_NAME_LEN_MAX {
            return Err(RuleError::NameOutOfRange);
        }
        let asset_ok = |code: &str| crate::asset::Asset::new(code, 0).is_ok();
        match &self.kind {
            RuleKind::BlockedAccount { account_ids } => {
                if account_ids.is_empty() || account_ids.len() > BLOCKED_ACCOUNTS_MAX {
                    return Err(RuleError::BlockedAccountsOutOfRange);
                }
            }
            RuleKind::NewAccountLimit { seconds, asset, .. } => {
                if *seconds == 0 {
                    return Err(RuleError::ZeroSeconds);
                }
                if !asset_ok(asset) {
                    return Err(RuleError::MalformedAsset);
                }
            }
            RuleKind::MaxAmount { asset, .. } => {
                if !asset_ok(asset) {
                    return Err(RuleError::MalformedAsset);
                }
            }
            RuleKind::VelocityCount { window_seconds, .. } => {
                if *window_seconds == 0 || *window_seconds > WINDOW_SECONDS_MAX {
                    return Err(RuleError::WindowOutOfRange);
                }
            }
            RuleKind::VelocityAmount { window_seconds, asset, .. } => {
                if *window_seconds == 0 || *window_seconds > WINDOW_SECONDS_MAX {
                    return Err(RuleError::WindowOutOfRange);
                }
                if !asset_ok(asset) {
                    return Err(RuleError::MalformedAsset);
                }
            }
        }
        match (self.action, self.timeout_seconds) {
            (_, None) | (RuleAction::Review, Some(1..)) => Ok(()),
            _ => Err(RuleError::TimeoutOutOfRange),
        }
    }
}

/// A rule that a debit violated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RiskHit {
    /// The rule.
    pub rule_id: RuleId,
    /// Its kind.
    pub kind: RuleKindCode,
    /// What it does.
    pub action: RuleAction,
    /// For a review: when the hold voids itself.
    pub timeout_seconds: Option<u32>,
}

/// The rules in force, in check order. Shared read-only by every shard; a
/// change replaces the whole set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

/// A debit about to be reserved, as the rules see it.
#[derive(Clone, Copy, Debug)]
pub struct Debit<'a> {
    /// The debited account.
    pub account: &'a Account,
    /// The credited account.
    pub credit_account_id: AccountId,
    /// The amount.
    pub amount: u128,
    /// Now, in ledger milliseconds.
    pub now_ms: u64,
    /// Debits of this account reserved but not applied yet (in flight, or
    /// earlier in the same linked batch): count and sum.
    pub in_flight: (u32, u128),
    /// True for a transfer already turned into a review hold: review rules
    /// are not asked again.
    pub under_review: bool,
    /// The debits of the account's user, when this shard is the user's home
    /// shard: velocity rules scoped to that user count these. Otherwise
    /// they count the account's own.
    pub user: Option<UserDebits<'a>>,
}

impl Debit<'_> {
    /// Debits a velocity rule of `scope` counts within `window_seconds`,
    /// applied and in flight: the user's across their accounts on the home
    /// shard for a rule scoped to that user, the account's own otherwise.
    /// The sum is of the debited account's asset (an amount rule checks
    /// only debits of its own asset's code).
    fn counted(&self, scope: RuleScope, window_seconds: u32) -> (u32, u128) {
        match (scope, self.user) {
            (RuleScope::User(_), Some(user)) => {
                let asset = self.account.asset;
                let count =
                    user.window.count(window_seconds, self.now_ms).saturating_add(user.in_flight.count());
                let sum = user
                    .window
                    .sum(asset, window_seconds, self.now_ms)
                    .saturating_add(user.in_flight.sum(asset));
                (count, sum)
            }
            _ => {
                let (count, sum) = self.account.debit_window.totals(window_seconds, self.now_ms);
                (count.saturating_add(self.in_flight.0), sum.saturating_add(self.in_flight.1))
            }
        }
    }
}

impl RuleSet {
    /// The rules, sorted into check order.
    pub fn new(mut rules: Vec<Rule>) -> Self {
        rules.sort_by_key(|rule| (rule.action, rule.kind.code(), rule.id));
        RuleSet { rules }
    }

    /// The rules in check order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule `debit` violates, if any. Settlement accounts (owned
    /// by [`UserId::SYSTEM`]) are never checked.
    pub fn check(&self, debit: &Debit<'_>) -> Option<RiskHit> {
        if self.rules.is_empty() || debit.account.user_id == UserId::SYSTEM {
            return None;
        }
        let account = debit.account;
        let code = account.asset.code();
        for rule in &self.rules {
            if debit.under_review && rule.action == RuleAction::Review {
                break; // review rules come last
            }
            if !rule.scope.matches(account) {
                continue;
            }
            let violated = match &rule.kind {
                RuleKind::BlockedAccount { account_ids } => {
                    account_ids.contains(&account.id) || account_ids.contains(&debit.credit_account_id)
                }
                RuleKind::NewAccountLimit { seconds, asset, amount } => {
                    asset == code
                        && debit.now_ms.saturating_sub(account.created_at_ms) < u64::from(*seconds) * 1000
                        && debit.amount > amount.get()
                }
                RuleKind::MaxAmount { asset, amount } => asset == code && debit.amount > amount.get(),
                RuleKind::VelocityCount { window_seconds, count } => {
                    let seen = debit.counted(rule.scope, *window_seconds).0;
                    u64::from(seen) + 1 > u64::from(*count)
                }
                RuleKind::VelocityAmount { asset, window_seconds, amount } => {
                    asset == code && {
                        let sum = debit.counted(rule.scope, *window_seconds).1;
                        sum.saturating_add(debit.amount) > amount.get()
                    }
                }
            };
            if violated {
                let timeout_seconds = match rule.action {
                    RuleAction::Review => rule.timeout_seconds,
                    RuleAction::Reject => None,
                };
                let hit = RiskHit {
                    rule_id: rule.id,
                    kind: rule.kind.code(),
                    action: rule.action,
                    timeout_seconds,
                };
                return Some(hit);
            }
        }
        None
    }
}

/// What a rule decided about a transfer, kept durably for audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Position in the ledger's decision log, from 1, gap-free; given when
    /// the record that carries the decision is durable (0 in the record).
    pub id: u64,
    /// When it was decided, in ledger milliseconds.
    pub at_ms: u64,
    /// The transfer.
    pub transfer_id: TransferId,
    /// The debited account.
    pub account_id: AccountId,
    /// The rule.
    pub rule_id: RuleId,
    /// Its kind.
    pub kind: RuleKindCode,
    /// What it did.
    pub outcome: RuleAction,
}

/// The ledger's decisions: the newest in memory (since the last snapshot),
/// the rest in a [`DecisionIndex`].
///
/// A decision is numbered when the record that carries it is durable, by
/// that record's callback: callbacks run in journal order, so ids are
/// gap-free and follow the journal, and replay gives every decision the id
/// it had (it numbers the same records in the same order, from the count a
/// checkpoint recorded at its marker). A review decision travels in the same
/// record as its hold, so the two are durable together.
pub struct DecisionLog {
    inner: std::sync::Mutex<DecisionLogInner>,
}

impl Default for DecisionLog {
    fn default() -> Self {
        DecisionLog::new(1, Vec::new())
    }
}

#[derive(Default)]
struct DecisionLogInner {
    next_id: u64,
    /// Durable, not yet confirmed in the index, oldest first.
    recent: Vec<Decision>,
    index: Option<std::sync::Arc<dyn DecisionIndex>>,
}

impl DecisionLog {
    /// A log whose next id is `next_id` (at least 1), holding `recent`.
    pub fn new(next_id: u64, recent: Vec<Decision>) -> Self {
        let next_id = recent.iter().map(|d| d.id + 1).max().unwrap_or(1).max(next_id);
        DecisionLog { inner: std::sync::Mutex::new(DecisionLogInner { next_id, recent, index: None }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DecisionLogInner> {
        // A panic while holding it leaves plain data behind: still usable.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Numbers and keeps decisions whose record became durable. Called in
    /// journal order (from the records' durable callbacks, or by replay).
    pub fn durable(&self, decisions: &[Decision]) {
        if decisions.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for decision in decisions {
            let id = inner.next_id;
            inner.next_id += 1;
            inner.recent.push(Decision { id, ..*decision });
        }
    }

    /// The id the next durable decision gets.
    pub fn next_id(&self) -> u64 {
        self.lock().next_id
    }

    /// Sets where older decisions are read.
    pub fn set_index(&self, index: Option<std::sync::Arc<dyn DecisionIndex>>) {
        self.lock().index = index;
    }

    /// The decisions in memory, for a snapshot.
    pub fn recent(&self) -> Vec<Decision> {
        self.lock().recent.clone()
    }

    /// The index has everything up to `up_to_id`: drop it from memory.
    pub fn forget_up_to(&self, up_to_id: u64) {
        self.lock().recent.retain(|d| d.id > up_to_id);
    }

    /// Decisions after `after_id`, of `account_id` when given, oldest first.
    pub fn list(
        &self,
        account_id: Option<AccountId>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Decision>, crate::ports::ReadError> {
        let (index, recent) = {
            let inner = self.lock();
            let recent: Vec<Decision> = inner
                .recent
                .iter()
                .filter(|d| d.id > after_id && account_id.is_none_or(|a| a == d.account_id))
                .take(limit)
                .cloned()
                .collect();
            (inner.index.clone(), recent)
        };
        let mut found = match index {
            Some(index) => index.decisions(account_id, after_id, limit)?,
            None => Vec::new(),
        };
        found.extend(recent);
        found.sort_by_key(|d| d.id);
        found.dedup_by_key(|d| d.id);
        found.truncate(limit);
        Ok(found)
    }
}
