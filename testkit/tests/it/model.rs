//! Model-based property test: random commands go to the engine (on a real
//! data directory, restarted now and then) and to the reference model; every
//! result, every account, every transfer's status and every risk decision
//! must agree, history must add up, and the books must balance.
//!
//! The commands reach the states they claim: accounts are opened and funded
//! first, posts and voids name live holds, earlier requests are sent again
//! (the same, or changed), and the run counts what it reached and fails if
//! it reached too little. `MODEL_CASES=2000` runs a nightly-sized search.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use wallet_actors::ports::ManualClock;
use wallet_actors::risk::RuleAction;
use wallet_actors::{
    settlement_account_id, AccountFlags, AccountStatus, Amount, LedgerError, NewAccount, Rejection,
    TransferRequest, UserId,
};
use wallet_storage::EmbeddedLedger;
use wallet_testkit::model::{to_rules, Model, ModelResult, ModelRule};
use wallet_testkit::model_child::{options, ChildAnswer, ChildCommand, ModelChild, MODEL_SHARDS};
use wallet_testkit::*;

mod commands;

pub(super) use commands::{command, Command};
use commands::{wallet_of, Item, FUNDING, WALLETS};

/// A command's requests or status change, built in the model's current state.
pub(super) enum Prepared {
    Submit(Vec<TransferRequest>, bool),
    Status(u128, AccountStatus),
}

/// What the runs reached, over all cases.
#[derive(Default)]
pub(super) struct Reached {
    pub(super) applied: AtomicU64,
    posts: AtomicU64,
    voids: AtomicU64,
    expiries: AtomicU64,
    replays: AtomicU64,
    conflicts: AtomicU64,
    vetoes: AtomicU64,
    reviews: AtomicU64,
    restarts_with_money: AtomicU64,
}

impl Reached {
    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn count(&self, requests: &[TransferRequest], results: &[ModelResult]) {
        for (request, result) in requests.iter().zip(results) {
            match (request, result) {
                (_, Ok(true)) => Self::add(&self.replays, 1),
                (TransferRequest::PostPending { .. }, Ok(false)) => Self::add(&self.posts, 1),
                (TransferRequest::VoidPending { .. }, Ok(false)) => Self::add(&self.voids, 1),
                (_, Ok(false)) => Self::add(&self.applied, 1),
                (_, Err(wallet_actors::Rejection::ExistsWithDifferentFields)) => {
                    Self::add(&self.conflicts, 1)
                }
                (_, Err(rejection)) if rejection.risk_hit().is_some() => Self::add(&self.vetoes, 1),
                _ => {}
            }
        }
    }

    pub(super) fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// One run: the engine on a real directory and the model, step by step.
/// The engine runs in-process, or (the kill -9 test, `model_kill`) in a
/// child process between the restarts that read it.
pub(super) struct Run {
    dir: tempfile::TempDir,
    pub(super) clock: Arc<ManualClock>,
    pub(super) node: Option<EmbeddedLedger>,
    pub(super) child: Option<ModelChild>,
    pub(super) model: Model,
    next_id: u128,
    sent: Vec<(Vec<TransferRequest>, bool)>,
    /// The last sequence a read showed for each account (reads only show
    /// durable state, so one after a restart never shows an older one).
    seen: BTreeMap<u128, u64>,
}

impl Run {
    pub(super) async fn start() -> anyhow::Result<Run> {
        let dir = tempfile::tempdir()?;
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let node = open(&Self::data_dir(&dir), options(clock.clone())).await?;
        let model = Model::new(wallet_actors::ports::Clock::now_ms(clock.as_ref()), MODEL_SHARDS);
        let mut run = Run {
            dir,
            clock,
            node: Some(node),
            child: None,
            model,
            next_id: 1,
            sent: Vec::new(),
            seen: BTreeMap::new(),
        };
        run.setup().await?;
        Ok(run)
    }

    /// A folder inside the temporary one, so the child's stderr file sits beside it.
    fn data_dir(dir: &tempfile::TempDir) -> std::path::PathBuf {
        dir.path().join("data")
    }

    pub(super) fn path(&self) -> std::path::PathBuf {
        Self::data_dir(&self.dir)
    }

    fn node(&self) -> anyhow::Result<&EmbeddedLedger> {
        self.node.as_ref().ok_or_else(|| anyhow::anyhow!("no node"))
    }

    /// The settlement accounts of both assets, the wallets, and a deposit into each.
    async fn setup(&mut self) -> anyhow::Result<()> {
        for asset in [usd(), eur()] {
            self.node()?.ledger.ensure_settlement_account(asset).await?;
            let id = settlement_account_id(&asset).get();
            self.model
                .open(id, (asset.code(), asset.scale()), AccountFlags::UNLIMITED, 0, UserId::SYSTEM.get())
                .map_err(|r| anyhow::anyhow!("{r}"))?;
        }
        for n in 1..=WALLETS {
            let (asset, owner, flags, overdraft) = wallet_of(n);
            let new = NewAccount {
                id: account(n),
                user_id: user(owner),
                asset,
                flags,
                overdraft_limit: Amount::new(overdraft)?,
            };
            self.node()?.ledger.open_account(new).await?;
            self.model
                .open(n, (asset.code(), asset.scale()), flags, overdraft, owner)
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            let fund = Item::Deposit { account: n, amount: FUNDING };
            let requests = vec![self.request(&fund)];
            self.submit(requests, false, None).await?;
        }
        Ok(())
    }

    fn fresh_id(&mut self) -> u128 {
        self.next_id += 1;
        self.next_id
    }

    fn settlement_of(n: u128) -> u128 {
        settlement_account_id(&wallet_of(n).0).get()
    }

    /// The request an item stands for, in the model's current state.
    fn request(&mut self, item: &Item) -> TransferRequest {
        let id = self.fresh_id();
        let live = self.model.live_holds();
        let hold = |index: usize, fresh: u128| if live.is_empty() { fresh } else { live[index % live.len()] };
        match *item {
            Item::Transfer { debit, credit, amount: value, hold: None } => posted(id, debit, credit, value),
            Item::Transfer { debit, credit, amount: value, hold: Some(timeout) } => {
                pending(id, debit, credit, value, timeout)
            }
            Item::Post { hold: index, amount: value } => {
                let pending_id = hold(index, id + 1_000_000);
                TransferRequest::PostPending {
                    id: tid(id),
                    pending_id: tid(pending_id),
                    amount: value.and_then(|v| Amount::new(v).ok()),
                }
            }
            Item::Void { hold: index } => void(id, hold(index, id + 1_000_000)),
            Item::Deposit { account: n, amount: value } => {
                let mut request = posted(id, 1, n, value);
                if let TransferRequest::Transfer { debit_account_id, .. } = &mut request {
                    *debit_account_id = account(Self::settlement_of(n));
                }
                request
            }
            Item::Withdraw { account: n, amount: value } => {
                let mut request = posted(id, n, 1, value);
                if let TransferRequest::Transfer { credit_account_id, .. } = &mut request {
                    *credit_account_id = account(Self::settlement_of(n));
                }
                request
            }
        }
    }

    /// The requests of a command's items. The items of an unlinked batch
    /// run concurrently, in no set order, so only those that share no
    /// account and no hold with an earlier one are kept: their outcomes do
    /// not depend on the order (settlement accounts, which have no limits,
    /// may be shared).
    fn requests(&mut self, items: &[Item], linked: bool) -> Vec<TransferRequest> {
        let mut touched = std::collections::BTreeSet::new();
        let mut requests = Vec::new();
        for item in items {
            let request = self.request(item);
            if !linked {
                let wallet =
                    |id: u128| (!wallet_actors::is_reserved_account_id(account(id))).then_some(('a', id));
                let named: Vec<(char, u128)> = match &request {
                    TransferRequest::Transfer { debit_account_id, credit_account_id, .. } => {
                        [debit_account_id.get(), credit_account_id.get()]
                            .into_iter()
                            .filter_map(wallet)
                            .collect()
                    }
                    TransferRequest::PostPending { pending_id, .. }
                    | TransferRequest::VoidPending { pending_id, .. } => {
                        let accounts = self
                            .model
                            .hold_accounts(pending_id.get())
                            .map_or(Vec::new(), |(d, c)| vec![d, c]);
                        let mut named: Vec<_> = accounts.into_iter().filter_map(wallet).collect();
                        named.push(('h', pending_id.get()));
                        named
                    }
                };
                if named.iter().any(|key| touched.contains(key)) {
                    continue;
                }
                touched.extend(named);
            }
            requests.push(request);
        }
        requests
    }

    /// The engine's results for `requests`, in-process or from the child.
    async fn engine_submit(
        &mut self,
        requests: &[TransferRequest],
        linked: bool,
    ) -> anyhow::Result<Vec<ModelResult>> {
        if let Some(child) = self.child.as_mut() {
            let command = ChildCommand::Submit { requests: requests.to_vec(), linked };
            return match child.call(&command)? {
                ChildAnswer::Submitted(results) => Ok(results),
                other => anyhow::bail!("the child answered {other:?} to a submit"),
            };
        }
        let results = self.node()?.ledger.submit(requests.to_vec(), linked).await?;
        Ok(results.into_iter().map(|r| r.map(|outcome| outcome.replayed)).collect())
    }

    pub(super) async fn engine_status(
        &mut self,
        n: u128,
        target: AccountStatus,
    ) -> anyhow::Result<Result<(), Rejection>> {
        if let Some(child) = self.child.as_mut() {
            return match child.call(&ChildCommand::Status { account: n, status: target })? {
                ChildAnswer::Status(result) => Ok(result),
                other => anyhow::bail!("the child answered {other:?} to a status change"),
            };
        }
        match self.node()?.ledger.set_account_status(account(n), target).await {
            Ok(_) => Ok(Ok(())),
            Err(LedgerError::Rejected(rejection)) => Ok(Err(rejection)),
            Err(other) => anyhow::bail!("status of {n}: {other}"),
        }
    }

    /// Moves the engine's clock and the model's on, then expires what is due in both.
    async fn advance(&mut self, ms: u64) -> anyhow::Result<(usize, usize)> {
        self.clock.advance_ms(ms);
        self.model.now_ms += ms;
        let engine = match self.child.as_mut() {
            Some(child) => match child.call(&ChildCommand::Advance { ms })? {
                ChildAnswer::Expired(expired) => expired,
                other => anyhow::bail!("the child answered {other:?} to an advance"),
            },
            None => self.node()?.ledger.expire_due().await?,
        };
        Ok((engine, self.model.expire_due()))
    }

    async fn engine_rules(&mut self, rules: &[ModelRule]) -> anyhow::Result<()> {
        match self.child.as_mut() {
            Some(child) => drop(child.call(&ChildCommand::Rules(to_rules(rules)))?),
            None => self.node()?.ledger.set_rules(to_rules(rules)).await?,
        }
        Ok(())
    }

    pub(super) async fn submit(
        &mut self,
        requests: Vec<TransferRequest>,
        linked: bool,
        reached: Option<&Reached>,
    ) -> anyhow::Result<()> {
        let engine = self.engine_submit(&requests, linked).await?;
        let expected = self.model.submit(&requests, linked);
        anyhow::ensure!(engine == expected, "{requests:?}: engine {engine:?}, model {expected:?}");
        if let Some(reached) = reached {
            reached.count(&requests, &engine);
        }
        self.remember(requests, linked);
        Ok(())
    }

    pub(super) fn remember(&mut self, requests: Vec<TransferRequest>, linked: bool) {
        if self.sent.len() == 16 {
            self.sent.remove(0);
        }
        self.sent.push((requests, linked));
    }

    /// Opens the engine in-process again, with the rules in force (rules
    /// are configuration the API keeps; the windows are ledger state).
    pub(super) async fn reopen(&mut self) -> anyhow::Result<()> {
        let node = open(&self.path(), options(self.clock.clone())).await?;
        node.ledger.set_rules(to_rules(&self.model.rules)).await?;
        self.node = Some(node);
        Ok(())
    }

    async fn restart(&mut self, checkpoint: bool) -> anyhow::Result<()> {
        let node = self.node.take().ok_or_else(|| anyhow::anyhow!("no node"))?;
        if checkpoint {
            node.shutdown().await;
        } else {
            node.stop_without_checkpoint().await;
        }
        self.reopen().await
    }

    /// What a command asks for, as requests (`Submit`, `Resend`) or as a
    /// status change; `None` for the rest.
    pub(super) fn prepare(&mut self, command: &Command) -> Option<Prepared> {
        match command {
            Command::Submit { items, linked } => {
                Some(Prepared::Submit(self.requests(items, *linked), *linked))
            }
            Command::Resend { back, changed } => {
                let (mut requests, linked) =
                    self.sent.iter().rev().nth(back % self.sent.len().max(1)).cloned()?;
                if *changed {
                    if let Some(TransferRequest::Transfer { amount, .. }) = requests.first_mut() {
                        *amount = Amount::new(amount.get() + 1).ok()?;
                    }
                }
                Some(Prepared::Submit(requests, linked))
            }
            Command::Status { account: n, status } => {
                let target = [AccountStatus::Active, AccountStatus::Frozen, AccountStatus::Closed][*status];
                Some(Prepared::Status(*n, target))
            }
            _ => None,
        }
    }

    pub(super) async fn step(&mut self, command: Command, reached: &Reached) -> anyhow::Result<()> {
        match (self.prepare(&command), command) {
            (Some(Prepared::Submit(requests, linked)), _) => {
                self.submit(requests, linked, Some(reached)).await?
            }
            (Some(Prepared::Status(n, target)), _) => {
                let engine = self.engine_status(n, target).await?;
                let expected = self.model.set_status(n, target);
                anyhow::ensure!(engine == expected, "status of {n}: engine {engine:?}, model {expected:?}");
            }
            (None, Command::Advance { seconds }) => {
                let (engine, expected) = self.advance(seconds * 1000).await?;
                anyhow::ensure!(engine == expected, "expired: engine {engine}, model {expected}");
                Reached::add(&reached.expiries, engine as u64);
            }
            (None, Command::Rules(rules)) => {
                self.engine_rules(&rules).await?;
                self.model.rules = rules;
            }
            (None, Command::Checkpoint) => match self.child.as_mut() {
                Some(child) => drop(child.call(&ChildCommand::Checkpoint)?),
                None => {
                    self.node()?.checkpoint().await?;
                }
            },
            (None, command @ (Command::Restart | Command::CloseWithoutCheckpoint)) => {
                let with_money = self.model.accounts.values().any(|a| a.credits_posted > 0);
                Reached::add(&reached.restarts_with_money, u64::from(with_money));
                self.restart(matches!(command, Command::Restart)).await?;
                return self.check(true).await;
            }
            (None, _) => {}
        }
        self.check(false).await
    }

    /// Every account, transfer status and decision against the model;
    /// reads never go back; the books balance; with `history`, every
    /// account's history adds up too (after restarts and at the end: it
    /// reads every entry).
    pub(super) async fn check(&mut self, history: bool) -> anyhow::Result<()> {
        // A child cannot be read from here; it is checked when it is killed.
        if self.child.is_some() {
            return Ok(());
        }
        let node = self.node.as_ref().ok_or_else(|| anyhow::anyhow!("no node"))?;
        let mut accounts = node.ledger.accounts().await?;
        accounts.sort_by_key(|a| a.id);
        anyhow::ensure!(accounts.len() == self.model.accounts.len(), "account count differs");
        let (mut posted, mut pending) = (0i128, 0i128);
        for account in &accounts {
            account.check_limits()?;
            let b = account.balances;
            posted += b.credits_posted as i128 - b.debits_posted as i128;
            pending += b.credits_pending as i128 - b.debits_pending as i128;
            let expected = self
                .model
                .accounts
                .get(&account.id.get())
                .ok_or_else(|| anyhow::anyhow!("extra account {}", account.id))?;
            let seen = (b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending);
            let want = (
                expected.debits_posted,
                expected.credits_posted,
                expected.debits_pending,
                expected.credits_pending,
            );
            anyhow::ensure!(
                (seen, account.sequence, account.status) == (want, expected.sequence, expected.status),
                "account {}: engine {seen:?} #{} {:?}, model {want:?} #{} {:?}",
                account.id,
                account.sequence,
                account.status,
                expected.sequence,
                expected.status
            );
            let read = node.ledger.account(account.id).await?.map(|view| view.account.sequence);
            let last = self.seen.entry(account.id.get()).or_insert(0);
            anyhow::ensure!(
                read.is_some_and(|sequence| sequence >= *last),
                "account {}: a read shows {read:?} after one showed {last}",
                account.id
            );
            *last = read.unwrap_or(*last);
        }
        if history {
            crash::check_history(node, &accounts).await?;
        }
        for (id, status, review) in self.model.statuses() {
            let seen =
                node.ledger.transfer(tid(id)).map(|record| (record.status, record.transfer.review.is_some()));
            anyhow::ensure!(
                seen == Some((status, review)),
                "transfer {id}: engine {seen:?}, model {status:?} {review}"
            );
        }
        // Decisions: ids gap-free; the same (transfer, account, rule, action)
        // as the model's (their order follows the journal, which shards
        // write concurrently within one request).
        let decisions = node.ledger.decisions(None, 0, 100_000)?;
        let ids: Vec<u64> = decisions.iter().map(|d| d.id).collect();
        anyhow::ensure!(ids == (1..=ids.len() as u64).collect::<Vec<_>>(), "decision ids {ids:?}");
        let mut engine: Vec<_> = decisions
            .iter()
            .map(|d| (d.transfer_id.get(), d.account_id.get(), d.rule_id.get(), d.outcome))
            .collect();
        let mut model = self.model.decisions.clone();
        engine.sort_by_key(|d| (d.0, d.2, d.3 == RuleAction::Review));
        model.sort_by_key(|d| (d.0, d.2, d.3 == RuleAction::Review));
        anyhow::ensure!(engine == model, "decisions: engine {engine:?}, model {model:?}");
        anyhow::ensure!(
            (posted, pending) == (0, 0),
            "books do not balance: {posted} posted, {pending} pending"
        );
        Ok(())
    }

    pub(super) async fn finish(mut self) {
        if let Some(child) = self.child.take() {
            let _ = child.kill();
        }
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }
}

/// A runner of `cases` cases from a fixed seed by default, so CI searches
/// the same cases every time and the counts are stable; `MODEL_SEED`
/// explores others.
pub(super) fn runner(cases: u32) -> TestRunner {
    let seed: u64 = std::env::var("MODEL_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(20_261_206);
    println!("model seed: {seed} (MODEL_SEED={seed} runs these cases again)");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config, rng)
}

async fn run(commands: Vec<Command>, reached: &Reached) -> anyhow::Result<()> {
    let mut run = Run::start().await?;
    for (step, command) in commands.into_iter().enumerate() {
        let context = format!("step {step}: {command:?}");
        run.step(command, reached).await.map_err(|e| e.context(context))?;
    }
    run.check(true).await?;
    Reached::add(
        &reached.reviews,
        run.model.decisions.iter().filter(|d| d.3 == RuleAction::Review).count() as u64,
    );
    run.finish().await;
    Ok(())
}

#[test]
fn engine_matches_model() -> anyhow::Result<()> {
    let cases = std::env::var("MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96);
    let reached = Reached::default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut runner = runner(cases);
    runner
        .run(&proptest::collection::vec(command(), 20..100), |commands| {
            runtime.block_on(run(commands, &reached)).map_err(|e| TestCaseError::fail(format!("{e:#}")))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let counts = [
        ("applied transfers", Reached::get(&reached.applied), 500),
        ("posts", Reached::get(&reached.posts), 50),
        ("voids", Reached::get(&reached.voids), 50),
        ("expiries", Reached::get(&reached.expiries), 50),
        ("replays", Reached::get(&reached.replays), 50),
        ("conflicting resends", Reached::get(&reached.conflicts), 10),
        ("vetoes", Reached::get(&reached.vetoes), 10),
        ("review holds", Reached::get(&reached.reviews), 10),
        ("restarts with money in the books", Reached::get(&reached.restarts_with_money), 20),
    ];
    println!("{cases} cases reached: {counts:?}");
    // The minimums are for the CI size; smaller runs only report.
    if cases >= 96 {
        for (what, count, minimum) in counts {
            anyhow::ensure!(count >= minimum, "only {count} {what} (at least {minimum} wanted)");
        }
    }
    Ok(())
}

/// Found by the property test in CI: a transfer refused by its credit shard
/// left its debit reservation in place until the release arrived, and a
/// close of the debit account right after it saw "pending".
#[test]
fn a_close_right_after_a_refused_transfer_sees_no_reservation() -> anyhow::Result<()> {
    let refused = Item::Transfer { debit: 3, credit: 6, amount: 10_000, hold: None };
    let commands = vec![
        Command::Submit { items: vec![Item::Withdraw { account: 3, amount: FUNDING }], linked: false },
        Command::Submit { items: vec![refused], linked: false },
        Command::Status { account: 3, status: 2 },
        Command::CloseWithoutCheckpoint,
        Command::Status { account: 3, status: 2 },
    ];
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(commands, &Reached::default()))
}
