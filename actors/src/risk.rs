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

pub use crate::ids::RuleId;

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
                    let (seen, _) = account.debit_window.totals(*window_seconds, debit.now_ms);
                    let total = u64::from(seen) + u64::from(debit.in_flight.0) + 1;
                    total > u64::from(*count)
                }
                RuleKind::VelocityAmount { asset, window_seconds, amount } => {
                    asset == code && {
                        let (_, sum) = account.debit_window.totals(*window_seconds, debit.now_ms);
                        sum.saturating_add(debit.in_flight.1).saturating_add(debit.amount) > amount.get()
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

/// One bucket of a [`DebitWindow`]: debits whose time falls in
/// `[EPOCH + index * width, EPOCH + (index + 1) * width)` of its level.
/// 16 bytes: the level and index share 32 bits (30 bits of seconds since
/// 2020 last until 2054), and a window's sum saturates at 2^64 - 1 minor
/// units, erring towards refusing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Bucket {
    /// The level (0, 1, 2) in the top two bits, the index below.
    key: u32,
    count: u32,
    amount: u64,
}

const LEVEL_SHIFT: u32 = 30;
const INDEX_MASK: u32 = (1 << LEVEL_SHIFT) - 1;

impl Bucket {
    fn level(&self) -> usize {
        (self.key >> LEVEL_SHIFT) as usize
    }

    fn index(&self) -> u64 {
        u64::from(self.key & INDEX_MASK)
    }
}

/// Bucket widths and how many buckets each level keeps: seconds for about
/// two minutes, minutes for about two hours, hours for a little over seven
/// days. A window uses the finest level that covers it plus one bucket.
const LEVELS: [(u64, usize); 3] = [(1_000, 128), (60_000, 128), (3_600_000, 170)];

/// The debits of an account in recent time, bounded whatever the traffic:
/// at most 426 buckets of 16 bytes per account (about 7 KiB) for one that
/// debits every second for a week; three buckets (48 bytes) for one that
/// debits now and then; nothing for one that never debits.
///
/// Exactness: a window of `W` seconds counts every debit of the last `W`
/// seconds, plus those of the bucket that straddles its start. So a debit
/// counts for at least `W` seconds and at most `W` plus one bucket width
/// (1 s for windows up to 127 s, 1 min up to 127 min, 1 h beyond). Erring
/// that way means a limit is never exceeded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DebitWindow(Vec<Bucket>);

impl DebitWindow {
    /// Counts a debit of `amount` at `at_ms`.
    pub fn record(&mut self, at_ms: u64, amount: u128) {
        let amount = u64::try_from(amount).unwrap_or(u64::MAX);
        if self.0.is_empty() {
            self.0.reserve_exact(LEVELS.len());
        }
        for (level, (width_ms, keep)) in LEVELS.iter().enumerate() {
            let index = (at_ms.saturating_sub(EPOCH_MS) / width_ms).min(u64::from(INDEX_MASK)) as u32;
            let key = (level as u32) << LEVEL_SHIFT | index;
            let end = self.0.partition_point(|b| b.level() <= level);
            match end.checked_sub(1).map(|last| &mut self.0[last]) {
                // A time earlier than the last bucket (a clock step back)
                // counts in the last bucket: later, so longer, never less.
                Some(last) if last.level() == level && last.key >= key => {
                    last.count = last.count.saturating_add(1);
                    last.amount = last.amount.saturating_add(amount);
                }
                _ => self.0.insert(end, Bucket { key, count: 1, amount }),
            }
            let start = self.0.partition_point(|b| b.level() < level);
            let newest = u64::from(index);
            let stale = self.0[start..]
                .iter()
                .take_while(|b| b.level() == level && b.index() + *keep as u64 <= newest)
                .count();
            if stale > 0 {
                self.0.drain(start..start + stale);
            }
        }
    }

    /// Count and sum of debits within the last `window_seconds` at `now_ms`
    /// (see the type's note on bucket edges).
    pub fn totals(&self, window_seconds: u32, now_ms: u64) -> (u32, u128) {
        if self.0.is_empty() {
            return (0, 0);
        }
        let window_ms = u64::from(window_seconds) * 1000;
        let level = LEVELS
            .iter()
            .position(|(width_ms, keep)| window_ms + width_ms <= width_ms * (*keep as u64))
            .unwrap_or(LEVELS.len() - 1);
        let width_ms = LEVELS[level].0;
        let start_ms = now_ms.saturating_sub(EPOCH_MS).saturating_sub(window_ms);
        let end = self.0.partition_point(|b| b.level() <= level);
        self.0[..end]
            .iter()
            .rev()
            .take_while(|b| b.level() == level && (b.index() + 1) * width_ms > start_ms)
            .fold((0u32, 0u128), |(count, sum), b| {
                (count.saturating_add(b.count), sum.saturating_add(u128::from(b.amount)))
            })
    }

    /// Whether it holds no debit.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Bucket indexes count from 2020-01-01 so that 30 bits of seconds last
/// until 2054.
const EPOCH_MS: u64 = 1_577_836_800_000;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_what_falls_inside_it() {
        let t0 = EPOCH_MS; // bucket edges are whole seconds, minutes, hours from it
        let mut window = DebitWindow::default();
        window.record(t0 + 10_000, 5);
        window.record(t0 + 10_500, 7);
        window.record(t0 + 70_000, 1);
        assert_eq!(window.totals(60, t0 + 70_000), (3, 13)); // bucket [10 s, 11 s) straddles 10 s
        assert_eq!(window.totals(60, t0 + 71_000), (1, 1));
        assert_eq!(window.totals(1, t0 + 70_999), (1, 1));
        assert_eq!(std::mem::size_of::<Bucket>(), 16);
    }

    #[test]
    fn long_windows_use_coarse_buckets_and_stay_bounded() {
        let mut window = DebitWindow::default();
        for second in 0..100_000u64 {
            window.record(EPOCH_MS + second * 1000, 1);
        }
        let levels: Vec<usize> = (0..3).map(|l| window.0.iter().filter(|b| b.level() == l).count()).collect();
        assert_eq!(levels, vec![128, 128, 28]);
        let now = EPOCH_MS + 99_999_000;
        // Exact would be 86,400; the straddling hour adds at most 3,600.
        assert_eq!(window.totals(86_400, now), (89_200, 89_200));
    }
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
