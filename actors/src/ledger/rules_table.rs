//! The transfer rules as data: `transfer_rules.table` lists account states,
//! a command and the expected outcome; each case runs through the planner
//! and one shard's state directly (no actors, no journal). Every case, and
//! every step of the property test below, also checks that a rejection
//! changes nothing and that the books stay balanced.

use std::sync::Arc;

use proptest::prelude::*;

use super::plan::plan;
use crate::account::{Account, AccountFlags, AccountStatus, Balances, Reserved};
use crate::amount::Amount;
use crate::asset::Asset;
use crate::ids::{AccountId, ShardId, TransferId, UserId};
use crate::registry::TransferRegistry;
use crate::rejection::Rejection;
use crate::risk::{Rule, RuleAction, RuleId, RuleKind, RuleScope, RuleSet};
use crate::shard::{Hold, ShardState};
use crate::transfer::{PendingOptions, TransferRequest};

const TABLE: &str = include_str!("transfer_rules.table");
const SOURCE: u128 = 1;
const DEBIT: u128 = 2;
const CREDIT: u128 = 3;
const HOLD_ID: u128 = 900;

/// One shard holding every account, and the transfers made durable.
struct Books {
    shard: ShardState,
    registry: TransferRegistry,
    now_ms: u64,
    next_id: u128,
}

/// Everything a rejection must leave as it was.
#[derive(Debug, PartialEq)]
struct Visible {
    accounts: Vec<(Account, Reserved)>,
    holds: Vec<Hold>,
}

fn user() -> UserId {
    UserId::new(2).unwrap_or_else(|_| unreachable!("user ids here are not zero"))
}

fn account_id(n: u128) -> AccountId {
    AccountId::new(n).unwrap_or_else(|_| unreachable!("account ids here are not zero"))
}

fn amount(n: u128) -> Amount {
    Amount::new(n).unwrap_or_else(|_| unreachable!("amounts here are in range"))
}

impl Books {
    fn new() -> Books {
        let mut books = Books {
            shard: ShardState::new(ShardId(0), 1),
            registry: TransferRegistry::default(),
            now_ms: 1_000_000,
            next_id: 1,
        };
        books.open(SOURCE, AccountFlags::UNLIMITED, 0, "USD");
        books.open(SOURCE + 100, AccountFlags::UNLIMITED, 0, "EUR");
        books
    }

    fn open(&mut self, id: u128, flags: AccountFlags, overdraft: u128, asset: &str) {
        let asset = Asset::new(asset, 2).unwrap_or_else(|_| unreachable!("asset codes here are valid"));
        let account = Account {
            id: account_id(id),
            // Sources are the system's (settlement accounts: no rule checks them).
            user_id: if id == SOURCE || id == SOURCE + 100 { UserId::SYSTEM } else { user() },
            asset,
            flags,
            overdraft_limit: Amount::new(overdraft).unwrap_or(Amount::ZERO),
            status: AccountStatus::Active,
            balances: Balances::default(),
            created_at_ms: self.now_ms,
            sequence: 0,
            debit_window: Default::default(),
        };
        let opened = self.shard.open_account(account);
        assert!(opened.is_ok(), "opening {id}: {opened:?}");
    }

    fn fresh_id(&mut self) -> TransferId {
        self.next_id += 1;
        TransferId::new(self.next_id).unwrap_or_else(|_| unreachable!("ids here are not zero"))
    }

    fn transfer(
        &mut self,
        debit: u128,
        credit: u128,
        value: u128,
        pending: Option<PendingOptions>,
    ) -> TransferRequest {
        TransferRequest::Transfer {
            id: self.fresh_id(),
            debit_account_id: account_id(debit),
            credit_account_id: account_id(credit),
            amount: amount(value),
            pending,
            reference: None,
            metadata: None,
        }
    }

    /// Runs a request as the ledger would, within one shard.
    fn run(&mut self, request: TransferRequest) -> Result<(), Rejection> {
        request.check_stateless()?;
        let request = Arc::new(request);
        let planned = plan(&self.registry, &request, self.now_ms)?;
        let applied =
            self.shard.execute_local(&[planned], self.now_ms).map_err(|(_, rejection)| rejection)?;
        self.registry.record_durable(applied.transfers.iter(), applied.resolutions.iter());
        Ok(())
    }

    /// Runs a setup step, which must succeed.
    fn setup(&mut self, request: TransferRequest) {
        let outcome = self.run(request.clone());
        assert_eq!(outcome, Ok(()), "setup step {request:?}");
    }

    fn visible(&self) -> Visible {
        let mut accounts: Vec<(Account, Reserved)> = self
            .shard
            .accounts()
            .filter_map(|a| self.shard.account(a.id))
            .map(|(a, r)| (a.clone(), r))
            .collect();
        accounts.sort_by_key(|(a, _)| a.id);
        let mut holds: Vec<Hold> = self.shard.holds().cloned().collect();
        holds.sort_by_key(|h| h.pending_id);
        Visible { accounts, holds }
    }

    fn balances(&self, id: u128) -> Balances {
        self.shard.account(account_id(id)).map(|(a, _)| a.balances).unwrap_or_default()
    }

    /// Runs `request`, checking what every command must keep: a rejection
    /// changes nothing (not even the history), and posted and pending
    /// totals balance over all accounts.
    fn step(&mut self, request: TransferRequest) -> Result<(), Rejection> {
        let before = self.visible();
        self.shard.take_new_history();
        let outcome = self.run(request);
        if outcome.is_err() {
            assert_eq!(self.visible(), before, "a rejection ({outcome:?}) changed the state");
            assert!(self.shard.take_new_history().is_empty(), "a rejection ({outcome:?}) made history");
        }
        self.assert_balanced();
        outcome
    }

    fn assert_balanced(&self) {
        let (mut posted, mut pending) = (0i128, 0i128);
        for account in self.shard.accounts() {
            let b = account.balances;
            posted += b.credits_posted as i128 - b.debits_posted as i128;
            pending += b.credits_pending as i128 - b.debits_pending as i128;
        }
        assert_eq!((posted, pending), (0, 0), "the books do not balance");
    }
}

/// What an account's spec leaves for after both sides are open: a hold
/// from it (`hold=`, debit side only), and its status, set last.
#[derive(Default)]
struct Later {
    hold: Option<String>,
    status: Option<AccountStatus>,
}

/// Sets up one side's account from its spec (`missing`: none).
fn prepare(books: &mut Books, id: u128, spec: &str) -> Later {
    let mut tokens = spec.split_whitespace();
    let flags = match tokens.next() {
        Some("wallet") => AccountFlags::WALLET,
        Some("unlimited") => AccountFlags::UNLIMITED,
        Some("receiver") => {
            AccountFlags { debits_must_not_exceed_credits: false, credits_must_not_exceed_debits: true }
        }
        Some("missing") => return Later::default(),
        other => panic!("unknown account kind {other:?}"),
    };
    let mut later = Later::default();
    let (mut overdraft, mut asset) = (0, "USD".to_string());
    let mut moves = Vec::new();
    for token in tokens {
        match token.split_once('=') {
            Some(("od", n)) => overdraft = number(n),
            Some(("asset", code)) => asset = code.to_string(),
            Some(("hold", what)) => later.hold = Some(what.to_string()),
            Some((key, n)) => moves.push((key.to_string(), number(n))),
            None if token == "frozen" => later.status = Some(AccountStatus::Frozen),
            None if token == "closed" => later.status = Some(AccountStatus::Closed),
            None => panic!("unknown token {token}"),
        }
    }
    books.open(id, flags, overdraft, &asset);
    let source = if asset == "USD" { SOURCE } else { SOURCE + 100 };
    let held = Some(PendingOptions::default());
    for (key, n) in moves {
        let request = match key.as_str() {
            "cr" => books.transfer(source, id, n, None),
            "dr" => books.transfer(id, source, n, None),
            "cp" => books.transfer(source, id, n, held),
            "dp" => books.transfer(id, source, n, held),
            other => panic!("unknown token {other}"),
        };
        books.setup(request);
    }
    later
}

fn number(text: &str) -> u128 {
    text.parse().unwrap_or_else(|_| panic!("not a number: {text}"))
}

/// Makes the debit side's hold (and resolves it as the spec says), then
/// sets each side's status.
fn finish(books: &mut Books, debit: Later, credit: Later) {
    if let Some(hold) = debit.hold.as_deref() {
        let (value, state) = hold.split_once(':').unwrap_or((hold, "open"));
        let timeout_seconds = (state == "expired").then_some(1);
        let id = TransferId::new(HOLD_ID).unwrap_or_else(|_| unreachable!());
        let request = TransferRequest::Transfer {
            id,
            debit_account_id: account_id(DEBIT),
            credit_account_id: account_id(CREDIT),
            amount: amount(number(value)),
            pending: Some(PendingOptions { timeout_seconds }),
            reference: None,
            metadata: None,
        };
        books.setup(request);
        match state {
            "posted" => {
                let resolve =
                    TransferRequest::PostPending { id: books.fresh_id(), pending_id: id, amount: None };
                books.setup(resolve);
            }
            "voided" => {
                let resolve = TransferRequest::VoidPending { id: books.fresh_id(), pending_id: id };
                books.setup(resolve);
            }
            "expired" => books.now_ms += 2_000,
            "open" => {}
            other => panic!("unknown hold state {other}"),
        }
    }
    for (id, later) in [(DEBIT, debit), (CREDIT, credit)] {
        let Some(status) = later.status else { continue };
        let changed = books.shard.set_status(account_id(id), status, books.now_ms);
        assert!(changed.is_ok(), "setting {id} {status:?}: {changed:?}");
    }
}

fn command(books: &mut Books, text: &str) -> TransferRequest {
    let pending_id = TransferId::new(HOLD_ID).unwrap_or_else(|_| unreachable!());
    let mut words = text.split_whitespace();
    match (words.next(), words.next().map(number)) {
        (Some("transfer"), Some(n)) => books.transfer(DEBIT, CREDIT, n, None),
        (Some("pending"), Some(n)) => books.transfer(DEBIT, CREDIT, n, Some(PendingOptions::default())),
        (Some("post"), n) => {
            TransferRequest::PostPending { id: books.fresh_id(), pending_id, amount: n.map(amount) }
        }
        (Some("void"), None) => TransferRequest::VoidPending { id: books.fresh_id(), pending_id },
        (Some("same_account"), None) => books.transfer(DEBIT, DEBIT, 1, None),
        _ => panic!("unknown command {text}"),
    }
}

/// Rules from the table's sixth column, `;`-separated: `max_amount N`,
/// `velocity_count N per S`, `velocity_amount N per S`, `blocked credit`,
/// `new_account_limit N`; `review` after one makes it a review rule.
fn rules_of(text: &str) -> Vec<Rule> {
    let mut rules = Vec::new();
    for (n, spec) in text.split(';').map(str::trim).filter(|r| !r.is_empty()).enumerate() {
        let words: Vec<&str> = spec.split_whitespace().collect();
        let usd = || "USD".to_string();
        let kind = match words[..] {
            ["max_amount", n, ..] => RuleKind::MaxAmount { asset: usd(), amount: amount(number(n)) },
            ["velocity_count", n, "per", s, ..] => {
                RuleKind::VelocityCount { window_seconds: number(s) as u32, count: number(n) as u32 }
            }
            ["velocity_amount", n, "per", s, ..] => RuleKind::VelocityAmount {
                asset: usd(),
                window_seconds: number(s) as u32,
                amount: amount(number(n)),
            },
            ["blocked", "credit", ..] => RuleKind::BlockedAccount { account_ids: vec![account_id(CREDIT)] },
            ["new_account_limit", n, ..] => {
                RuleKind::NewAccountLimit { seconds: 3600, asset: usd(), amount: amount(number(n)) }
            }
            _ => panic!("unknown rule {spec}"),
        };
        let review = words.last() == Some(&"review");
        rules.push(Rule {
            id: RuleId::new(n as u128 + 1).unwrap_or_else(|_| unreachable!()),
            name: spec.to_string(),
            kind,
            scope: RuleScope::Global,
            action: if review { RuleAction::Review } else { RuleAction::Reject },
            timeout_seconds: None,
        });
    }
    rules
}

fn check_after(books: &Books, name: &str, check: &str) {
    let (side, value) = check.split_once('=').unwrap_or_else(|| panic!("{name}: bad check {check}"));
    let (who, field) = side.split_once('.').unwrap_or_else(|| panic!("{name}: bad check {check}"));
    let b = books.balances(if who == "debit" { DEBIT } else { CREDIT });
    let actual: i128 = match field {
        "available" => b.available(),
        "debits_posted" => b.debits_posted as i128,
        "credits_posted" => b.credits_posted as i128,
        "debits_pending" => b.debits_pending as i128,
        "credits_pending" => b.credits_pending as i128,
        other => panic!("{name}: unknown field {other}"),
    };
    let expected: i128 = value.parse().unwrap_or_else(|_| panic!("{name}: bad number in {check}"));
    assert_eq!(actual, expected, "{name}: {check}");
}

#[test]
fn every_case_of_the_table_holds() {
    let mut cases = 0;
    for line in TABLE.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let columns: Vec<&str> = line.split('|').map(str::trim).collect();
        let (name, debit, credit, text, expected, rules) = match columns[..] {
            [name, debit, credit, text, expected] => (name, debit, credit, text, expected, ""),
            [name, debit, credit, text, expected, rules] => (name, debit, credit, text, expected, rules),
            _ => panic!("bad line: {line}"),
        };
        let mut books = Books::new();
        let debit = prepare(&mut books, DEBIT, debit);
        let credit = prepare(&mut books, CREDIT, credit);
        finish(&mut books, debit, credit);
        books.shard.set_rules(Arc::new(RuleSet::new(rules_of(rules))));
        let request = command(&mut books, text);
        let outcome = books.step(request);
        let mut expected = expected.split_whitespace();
        let code = expected.next().unwrap_or_default();
        let actual = outcome.map_or_else(|r| r.code(), |()| "ok");
        assert_eq!(actual, code, "case {name}");
        if expected.next() == Some("then") {
            for check in expected {
                check_after(&books, name, check);
            }
        }
        cases += 1;
    }
    assert!(cases >= 40, "only {cases} cases read");
}

/// A command of the property test, over accounts 2..=5 (wallets, one EUR).
#[derive(Clone, Debug)]
enum Step {
    Fund(u128, u128),
    Transfer(u128, u128, u128),
    Hold(u128, u128, u128),
    Post(usize, Option<u128>),
    Void(usize),
    Freeze(u128),
    Unfreeze(u128),
    Close(u128),
    Wait,
}

fn step_strategy() -> impl Strategy<Value = Step> {
    let account = 2u128..=5;
    let value = 1u128..=300;
    prop_oneof![
        (account.clone(), value.clone()).prop_map(|(a, v)| Step::Fund(a, v)),
        (account.clone(), account.clone(), value.clone()).prop_map(|(a, b, v)| Step::Transfer(a, b, v)),
        (account.clone(), account.clone(), value.clone()).prop_map(|(a, b, v)| Step::Hold(a, b, v)),
        (0usize..8, proptest::option::of(value)).prop_map(|(h, v)| Step::Post(h, v)),
        (0usize..8).prop_map(Step::Void),
        account.clone().prop_map(Step::Freeze),
        account.clone().prop_map(Step::Unfreeze),
        account.prop_map(Step::Close),
        Just(Step::Wait),
    ]
}

proptest! {
    /// Whatever happens, a rejected command changes nothing and the books
    /// balance after every step.
    #[test]
    fn a_rejection_changes_nothing(steps in proptest::collection::vec(step_strategy(), 1..60)) {
        let mut books = Books::new();
        for id in 2..=5u128 {
            books.open(id, AccountFlags::WALLET, 0, if id == 5 { "EUR" } else { "USD" });
        }
        let mut holds: Vec<TransferId> = Vec::new();
        for step in steps {
            let request = match step {
                Step::Fund(a, v) => books.transfer(if a == 5 { SOURCE + 100 } else { SOURCE }, a, v, None),
                Step::Transfer(a, b, v) => books.transfer(a, b, v, None),
                Step::Hold(a, b, v) => {
                    let request = books.transfer(a, b, v, Some(PendingOptions { timeout_seconds: Some(5) }));
                    holds.push(request.id());
                    request
                }
                Step::Post(h, v) => match holds.get(h) {
                    Some(&pending_id) => TransferRequest::PostPending { id: books.fresh_id(), pending_id, amount: v.map(amount) },
                    None => continue,
                },
                Step::Void(h) => match holds.get(h) {
                    Some(&pending_id) => TransferRequest::VoidPending { id: books.fresh_id(), pending_id },
                    None => continue,
                },
                Step::Freeze(a) | Step::Unfreeze(a) | Step::Close(a) => {
                    let target = match step {
                        Step::Freeze(_) => AccountStatus::Frozen,
                        Step::Unfreeze(_) => AccountStatus::Active,
                        _ => AccountStatus::Closed,
                    };
                    let before = books.visible();
                    if books.shard.set_status(account_id(a), target, books.now_ms).is_err() {
                        prop_assert_eq!(books.visible(), before);
                    }
                    continue;
                }
                Step::Wait => {
                    books.now_ms += 3_000;
                    continue;
                }
            };
            let _ = books.step(request);
        }
    }
}
