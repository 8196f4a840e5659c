//! The model test's commands and how they are drawn: accounts first opened
//! and funded (`WALLETS`, `FUNDING`), then transfers, holds, posts and voids
//! of live holds, deposits, withdrawals, resends, status changes, time,
//! rules, checkpoints and restarts.

use std::collections::BTreeMap;

use proptest::prelude::*;
use wallet_actors::risk::RuleAction;
use wallet_actors::{AccountFlags, Asset};
use wallet_testkit::model::{ModelRule, ModelRuleKind, ModelScope};
use wallet_testkit::*;

/// Wallets 1..=WALLETS, owned by users 2, 3 and 4 in turn.
pub(crate) const WALLETS: u128 = 8;
/// What setup deposits into each wallet.
pub(crate) const FUNDING: u128 = 5_000;

#[derive(Clone, Debug)]
pub(crate) enum Item {
    /// A transfer between wallets, posted or held (with a timeout or not).
    Transfer { debit: u128, credit: u128, amount: u128, hold: Option<Option<u32>> },
    /// Post the `hold`-th live hold (modulo their number; a fresh id when none).
    Post { hold: usize, amount: Option<u128> },
    /// Void the `hold`-th live hold.
    Void { hold: usize },
    /// From the settlement account of the wallet's asset into it.
    Deposit { account: u128, amount: u128 },
    /// From the wallet into its asset's settlement account.
    Withdraw { account: u128, amount: u128 },
}

#[derive(Clone, Debug)]
pub(crate) enum Command {
    /// One request of several items, linked (all or nothing) or not.
    Submit {
        items: Vec<Item>,
        linked: bool,
    },
    /// The `back`-th latest request again: the same, or with one amount changed.
    Resend {
        back: usize,
        changed: bool,
    },
    Status {
        account: u128,
        status: usize,
    },
    Advance {
        seconds: u64,
    },
    Rules(Vec<ModelRule>),
    Checkpoint,
    Restart,
    /// Stop without the final checkpoint, so the next start replays the
    /// journal. A clean close of the journal, not a crash: the crashes are
    /// `model_kill`'s (kill -9 of a child at any step) and the crash test's.
    CloseWithoutCheckpoint,
}

pub(crate) fn wallet_id() -> impl Strategy<Value = u128> {
    1..=WALLETS
}

pub(crate) fn item() -> impl Strategy<Value = Item> {
    // Half the transfers are holds, most of them expiring after a few seconds.
    let timeout = proptest::option::weighted(0.5, proptest::option::weighted(0.9, 1..5u32));
    prop_oneof![
        6 => (wallet_id(), wallet_id(), 1..600u128, timeout)
            .prop_map(|(debit, credit, amount, hold)| Item::Transfer { debit, credit, amount, hold }),
        3 => (any::<usize>(), proptest::option::of(1..400u128)).prop_map(|(hold, amount)| Item::Post { hold, amount }),
        3 => any::<usize>().prop_map(|hold| Item::Void { hold }),
        1 => (wallet_id(), 1..2_000u128).prop_map(|(account, amount)| Item::Deposit { account, amount }),
        1 => (wallet_id(), 1..800u128).prop_map(|(account, amount)| Item::Withdraw { account, amount }),
    ]
}

pub(crate) fn rule() -> impl Strategy<Value = ModelRule> {
    let kind = prop_oneof![
        (100..900u128).prop_map(ModelRuleKind::MaxUsd),
        (1..5u32, 1..5u32)
            .prop_map(|(window_seconds, count)| ModelRuleKind::Velocity { window_seconds, count }),
        (1..5u32, 200..1_500u128)
            .prop_map(|(window_seconds, amount)| ModelRuleKind::VelocityUsd { window_seconds, amount }),
    ];
    let scope = prop_oneof![
        Just(ModelScope::Global),
        (2..=4u128).prop_map(ModelScope::User),
        wallet_id().prop_map(ModelScope::Account),
    ];
    let action = prop_oneof![Just(RuleAction::Reject), Just(RuleAction::Review)];
    (1..6u128, kind, scope, action, proptest::option::of(1..5u32)).prop_map(
        |(id, kind, scope, action, timeout_seconds)| ModelRule { id, kind, scope, action, timeout_seconds },
    )
}

pub(crate) fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        14 => item().prop_map(|item| Command::Submit { items: vec![item], linked: false }),
        3 => (proptest::collection::vec(item(), 2..5), any::<bool>())
            .prop_map(|(items, linked)| Command::Submit { items, linked }),
        3 => (0..8usize, proptest::bool::weighted(0.3)).prop_map(|(back, changed)| Command::Resend { back, changed }),
        1 => (wallet_id(), 0..3usize).prop_map(|(account, status)| Command::Status { account, status }),
        5 => (1..5u64).prop_map(|seconds| Command::Advance { seconds }),
        3 => proptest::collection::vec(rule(), 0..3).prop_map(|rules| {
            // One rule per id.
            let mut by_id = BTreeMap::new();
            for rule in rules {
                by_id.insert(rule.id, rule);
            }
            Command::Rules(by_id.into_values().collect())
        }),
        1 => Just(Command::Checkpoint),
        1 => Just(Command::Restart),
        1 => Just(Command::CloseWithoutCheckpoint),
    ]
}

/// Wallet `n`: its asset (two in three USD), owner, limits and overdraft.
pub(crate) fn wallet_of(n: u128) -> (Asset, u128, AccountFlags, u128) {
    let asset = if n.is_multiple_of(3) { eur() } else { usd() };
    let user = 2 + n % 3;
    let (flags, overdraft) = match n {
        7 => {
            (AccountFlags { debits_must_not_exceed_credits: false, credits_must_not_exceed_debits: true }, 0)
        }
        5 => (AccountFlags::WALLET, 300),
        _ => (AccountFlags::WALLET, 0),
    };
    (asset, user, flags, overdraft)
}
