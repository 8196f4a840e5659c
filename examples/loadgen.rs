//! In-process load generator for the ledger core.
//!
//! ```sh
//! cargo run --release --example loadgen -- --accounts 100000 --concurrency 256 --duration-s 10 --hot-share 0 --batch 1
//! ```
//!
//! Opens a ledger in a temporary directory (or `--data-dir`), opens and funds
//! `--accounts` wallets, then runs `--concurrency` clients, each submitting
//! requests of `--batch` transfers between random accounts (with probability
//! `--hot-share` one side is the hot account) for `--duration-s` seconds.
//! Every transfer is durable before its request returns. Ends with one JSON
//! line: throughput, request latency percentiles, RSS, and with `--restart`
//! the time to reopen the ledger. With `--nats-url` every change is also
//! published to NATS JetStream as a ledger event, as `wallet serve` does:
//! it reports events/s and the outbox lag (changes durable but not yet
//! acknowledged by JetStream) sampled every 10 ms. With `--journal-nats-url`
//! the ledger is a node whose journal is on JetStream (`wallet node`)
//! instead of the embedded node's files.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use wallet_actors::ids::stable_hash;
use wallet_actors::ids::NodeId;
use wallet_actors::ports::EventSink;
use wallet_actors::risk::{Rule, RuleAction, RuleId, RuleKind, RuleScope};
use wallet_actors::{
    settlement_account_id, AccountFlags, AccountId, Amount, Asset, Ledger, LedgerConfig, NewAccount,
    TransferId, TransferRequest, UserId,
};
use wallet_cluster::events::{EventPublisher, EventQueue, PublisherOptions};
use wallet_cluster::host::LedgerHost;
use wallet_cluster::node::{NodeLedger, NodeOptions};
use wallet_storage::{CheckpointEvery, EmbeddedLedger, EmbeddedOptions, JournalOptions};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Number of wallet accounts.
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Share of transfers that touch the hot account (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    hot_share: f64,
    /// Transfers per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Shards.
    #[arg(long, default_value_t = 64)]
    shards: u16,
    /// Data directory (a temporary one when absent).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// After the run, shut down, reopen, and report the time it took.
    #[arg(long)]
    restart: bool,
    /// Only open the ledger in `--data-dir` (made by an earlier run), read
    /// one account, and report the time to serve and the RSS, in a fresh
    /// process: what a restart costs.
    #[arg(long)]
    open_only: bool,
    /// Small sequential ids (1,000 and up) instead of random 128-bit ones:
    /// the workload of the sittings before 2026-12-06, for comparing with
    /// them (records shrink: postcard writes small integers short).
    #[arg(long)]
    sequential_ids: bool,
    /// Passivate accounts not named during this many snapshots (-1: never).
    #[arg(long, default_value_t = 8, allow_negative_numbers = true)]
    passivate_after_snapshots: i64,
    /// Skip fdatasync (measures the CPU path only; not durable).
    #[arg(long)]
    no_sync: bool,
    /// Take a checkpoint each time the journal grows by this many MiB.
    #[arg(long, default_value_t = 64)]
    checkpoint_mib: u64,
    /// sled's cache, in MiB.
    #[arg(long, default_value_t = 64)]
    snapshot_cache_mib: u64,
    /// Put five global risk rules in force during the run (one of each
    /// kind, with limits the load never reaches), to measure their cost.
    #[arg(long)]
    rules: bool,
    /// Share of requests that read one random account instead of moving
    /// money (0.0 to 1.0): reads wait until what they show is durable, and
    /// their latency is reported apart.
    #[arg(long, default_value_t = 0.0)]
    read_share: f64,
    /// Submit each request's transfers as one linked batch (all or
    /// nothing): across shards, the coordinator's prepare and commit.
    #[arg(long)]
    linked: bool,
    /// Publish ledger events to this NATS server (JetStream) during the run.
    #[arg(long)]
    nats_url: Option<String>,
    /// Run node 1 of `wallet node` instead: the journal on this NATS
    /// server (JetStream, stream `WALLET_JOURNAL`, which should be empty
    /// or the run's own), one node holding every shard.
    #[arg(long)]
    journal_nats_url: Option<String>,
}

/// One rule of each kind, global, that the load never violates: every
/// transfer pays for every check, none is refused.
fn five_rules() -> anyhow::Result<Vec<Rule>> {
    let usd = || "USD".to_string();
    let kinds = [
        RuleKind::MaxAmount { asset: usd(), amount: Amount::new(1 << 60)? },
        RuleKind::VelocityCount { window_seconds: 60, count: u32::MAX },
        RuleKind::VelocityAmount { asset: usd(), window_seconds: 86_400, amount: Amount::new(1 << 90)? },
        RuleKind::BlockedAccount { account_ids: vec![AccountId::new(u128::MAX - 7)?] },
        RuleKind::NewAccountLimit { seconds: 3_600, asset: usd(), amount: Amount::new(1 << 60)? },
    ];
    let mut rules = Vec::new();
    for (n, kind) in kinds.into_iter().enumerate() {
        rules.push(Rule {
            id: RuleId::new(n as u128 + 1)?,
            name: format!("loadgen rule {}", n + 1),
            kind,
            scope: RuleScope::Global,
            action: RuleAction::Reject,
            timeout_seconds: None,
        });
    }
    Ok(rules)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.workers).enable_all().build()?;
    runtime.block_on(run(args))
}

/// A small xorshift generator: a load generator needs speed, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Set from `--sequential-ids` before any id is made.
static SEQUENTIAL_IDS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A random-looking 128-bit id, as API clients send (UUIDs): unique for
/// each `n` (the high half is a bijection of `n`), so records have their
/// real size and ids spread over the whole space.
fn spread_id(n: u64, salt: u64) -> u128 {
    if SEQUENTIAL_IDS.load(Ordering::Relaxed) {
        return u128::from(n) + 1_000;
    }
    let high = stable_hash(u128::from(n));
    let low = stable_hash(u128::from(n) | u128::from(salt) << 64);
    u128::from(high) << 64 | u128::from(low) | 1
}

/// The `n`th wallet account.
fn account_id(n: u64) -> anyhow::Result<AccountId> {
    Ok(AccountId::new(spread_id(n, 0xacc0))?)
}

/// The next transfer id.
fn transfer_id(next: &AtomicU64) -> anyhow::Result<TransferId> {
    Ok(TransferId::new(spread_id(next.fetch_add(1, Ordering::Relaxed), 0x7a11))?)
}

/// The ledger the run drives: the embedded node in `dir`, or node 1 on the
/// JetStream journal at `--journal-nats-url`.
async fn open_host(
    args: &Args,
    dir: &std::path::Path,
    events: Option<Arc<dyn EventSink>>,
) -> anyhow::Result<LedgerHost> {
    let embedded = EmbeddedOptions { events, ..options(args) };
    Ok(match &args.journal_nats_url {
        Some(url) => {
            let defaults = NodeOptions::new(NodeId(1), url.clone(), dir);
            let checkpoint =
                CheckpointEvery { bytes: embedded.checkpoint_bytes, check_ms: embedded.checkpoint_check_ms };
            let options = NodeOptions {
                ledger: embedded.ledger,
                events: embedded.events,
                checkpoint,
                snapshot_cache_bytes: embedded.snapshot_cache_bytes,
                ..defaults
            };
            LedgerHost::Node(Box::new(NodeLedger::open(options).await.context("opening the node")?))
        }
        None => LedgerHost::Embedded(Box::new(
            EmbeddedLedger::open(dir, embedded).await.context("opening the ledger")?,
        )),
    })
}

fn options(args: &Args) -> EmbeddedOptions {
    EmbeddedOptions {
        ledger: LedgerConfig {
            shard_count: args.shards,
            passivate_after_snapshots: u64::try_from(args.passivate_after_snapshots).ok(),
            ..LedgerConfig::default()
        },
        journal: JournalOptions { sync: !args.no_sync, ..JournalOptions::default() },
        checkpoint_bytes: args.checkpoint_mib << 20,
        snapshot_cache_bytes: args.snapshot_cache_mib << 20,
        ..EmbeddedOptions::default()
    }
}

async fn open_only(args: &Args) -> anyhow::Result<()> {
    let dir = args.data_dir.clone().context("--open-only needs --data-dir")?;
    let started = Instant::now();
    let node = EmbeddedLedger::open(&dir, options(args)).await.context("opening the ledger")?;
    let found = node.ledger.account(account_id(0)?).await?.is_some();
    let open_ms = started.elapsed().as_millis() as u64;
    let resident = node.ledger.resident_accounts().await?;
    let report = serde_json::json!({
        "open_ms": open_ms,
        "account_found": found,
        "resident_accounts": resident,
        "accounts_read_by_recovery": node.recovery.snapshot_accounts,
        "rss_bytes": rss_bytes(),
    });
    node.shutdown().await;
    println!("{report}");
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<()> {
    SEQUENTIAL_IDS.store(args.sequential_ids, Ordering::Relaxed);
    if args.open_only {
        return open_only(&args).await;
    }
    let temporary = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| temporary.path().to_path_buf());
    let queue = args.nats_url.as_ref().map(|_| Arc::new(EventQueue::new(10_000_000)));
    let events = queue.clone().map(|queue| queue as Arc<dyn EventSink>);
    let node = open_host(&args, &dir, events).await?;
    let ledger = node.ledger();
    let publisher = match (&args.nats_url, &queue) {
        (Some(url), Some(queue)) => {
            Some(EventPublisher::spawn(queue.clone(), ledger.clone(), PublisherOptions::new(url.clone())))
        }
        _ => None,
    };
    let next_id = Arc::new(AtomicU64::new(1));
    let setup_s = open_and_fund(&ledger, &args, &next_id).await?;
    if args.rules {
        ledger.set_rules(five_rules()?).await?;
    }
    // The setup's events published first, so the run measures the load's own.
    let setup_events_drain_s = match &queue {
        Some(queue) => drain(queue).await?,
        None => 0.0,
    };
    let (_, published_before) = queue.as_ref().map_or((0, 0), |q| q.progress());
    let lag_sampler = queue
        .clone()
        .map(|queue| tokio::spawn(sample_lag(queue, Instant::now() + Duration::from_secs(args.duration_s))));
    let (records_before, syncs_before) = node.journal_writes();

    let tally = run_clients(&ledger, &args, &next_id).await?;
    let (_, published_after) = queue.as_ref().map_or((0, 0), |q| q.progress());
    let lag = match lag_sampler {
        Some(task) => Some(task.await??),
        None => None,
    };
    let events_drain_s = match &queue {
        Some(queue) => drain(queue).await?,
        None => 0.0,
    };
    if let Some(publisher) = publisher {
        publisher.stop().await;
    }
    let (records, syncs) = node.journal_writes();
    let (records, syncs) = (records - records_before, (syncs - syncs_before).max(1));
    let rss = rss_bytes();
    node.shutdown().await;
    let restart_ms = if args.restart {
        let reopen_started = Instant::now();
        let node = open_host(&args, &dir, None).await?;
        let restart_ms = reopen_started.elapsed().as_millis() as u64;
        node.shutdown().await;
        Some(restart_ms)
    } else {
        None
    };

    let elapsed = tally.elapsed_s;
    let (histogram, reads) = (&tally.requests, &tally.reads);
    let report = serde_json::json!({
        "accounts": args.accounts,
        "shards": args.shards,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "linked": args.linked,
        "hot_share": args.hot_share,
        "rules": if args.rules { 5 } else { 0 },
        "duration_s": elapsed,
        "durable": !args.no_sync,
        "journal": if args.journal_nats_url.is_some() { "jetstream" } else { "files" },
        "transfers_ok": tally.ok,
        "transfers_rejected": tally.rejected,
        "requests_failed": tally.failed,
        "transfers_per_sec": (tally.ok as f64 / elapsed).round(),
        "requests_per_sec": (histogram.len() as f64 / elapsed).round(),
        "p50_us": histogram.value_at_quantile(0.50),
        "p99_us": histogram.value_at_quantile(0.99),
        "p999_us": histogram.value_at_quantile(0.999),
        "max_us": histogram.max(),
        "reads_per_sec": (reads.len() as f64 / elapsed).round(),
        "read_p50_us": reads.value_at_quantile(0.50),
        "read_p99_us": reads.value_at_quantile(0.99),
        "journal_records_per_sync": (records as f64 / syncs as f64).round(),
        "rss_bytes": rss,
        "setup_s": (setup_s * 10.0).round() / 10.0,
        "restart_ms": restart_ms,
        "events": args.nats_url.is_some(),
        "events_per_sec": (published_after.saturating_sub(published_before) as f64 / elapsed).round(),
        "events_lag_p50": lag.as_ref().map(|h| h.value_at_quantile(0.50)),
        "events_lag_p99": lag.as_ref().map(|h| h.value_at_quantile(0.99)),
        "events_lag_max": lag.as_ref().map(|h| h.max()),
        "events_drain_s": (events_drain_s * 10.0).round() / 10.0,
        "setup_events_drain_s": (setup_events_drain_s * 10.0).round() / 10.0,
    });
    println!("{report}");
    Ok(())
}

/// Opens and funds the accounts, many at a time so group commit works for
/// us; returns how long it took, in seconds.
async fn open_and_fund(ledger: &Ledger, args: &Args, next_id: &Arc<AtomicU64>) -> anyhow::Result<f64> {
    let setup_started = Instant::now();
    let asset = Asset::new("USD", 2)?;
    ledger.ensure_settlement_account(asset).await?;
    let settlement = settlement_account_id(&asset);
    let gate = Arc::new(Semaphore::new(4096));
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.accounts {
        let permit = gate.clone().acquire_owned().await?;
        let ledger = ledger.clone();
        let next_id = next_id.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let id = account_id(n)?;
            let flags = AccountFlags::WALLET;
            let new =
                NewAccount { id, user_id: UserId::new(2)?, asset, flags, overdraft_limit: Amount::ZERO };
            ledger.open_account(new).await?;
            let fund = TransferRequest::Transfer {
                id: transfer_id(&next_id)?,
                debit_account_id: settlement,
                credit_account_id: id,
                amount: Amount::new(1_000_000_000_000)?,
                pending: None,
                reference: None,
                metadata: None,
            };
            ledger.submit_one(fund).await?.map_err(|r| anyhow::anyhow!("funding: {r}"))?;
            anyhow::Ok(())
        });
        while tasks.len() > 8192 {
            if let Some(done) = tasks.join_next().await {
                done??;
            }
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(setup_started.elapsed().as_secs_f64())
}

/// What the clients did: request and read latencies, and counts.
struct Tally {
    requests: Histogram<u64>,
    reads: Histogram<u64>,
    ok: u64,
    rejected: u64,
    failed: u64,
    elapsed_s: f64,
}

impl Tally {
    fn new() -> anyhow::Result<Tally> {
        Ok(Tally {
            requests: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
            reads: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
            ok: 0,
            rejected: 0,
            failed: 0,
            elapsed_s: 0.0,
        })
    }

    fn add(&mut self, other: Tally) -> anyhow::Result<()> {
        self.requests.add(other.requests)?;
        self.reads.add(other.reads)?;
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.failed += other.failed;
        Ok(())
    }
}

/// Runs `--concurrency` clients for `--duration-s` seconds.
async fn run_clients(ledger: &Ledger, args: &Args, next_id: &Arc<AtomicU64>) -> anyhow::Result<Tally> {
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..args.concurrency {
        let (ledger, next_id, args) = (ledger.clone(), next_id.clone(), args.clone());
        clients.spawn(async move { run_client(ledger, args, next_id, client, deadline).await });
    }
    let mut tally = Tally::new()?;
    while let Some(done) = clients.join_next().await {
        tally.add(done??)?;
    }
    tally.elapsed_s = started.elapsed().as_secs_f64();
    Ok(tally)
}

/// One client: reads (with `--read-share`) or requests of `--batch`
/// transfers between random accounts, one at a time, until `deadline`.
async fn run_client(
    ledger: Ledger,
    args: Args,
    next_id: Arc<AtomicU64>,
    client: usize,
    deadline: Instant,
) -> anyhow::Result<Tally> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (client as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut tally = Tally::new()?;
    while Instant::now() < deadline {
        if rng.chance(args.read_share) {
            let sent = Instant::now();
            match ledger.account(account_id(rng.below(args.accounts))?).await {
                Ok(_) => tally.reads.record(sent.elapsed().as_micros().max(1) as u64)?,
                Err(_) => tally.failed += 1,
            }
            continue;
        }
        let mut batch = Vec::with_capacity(args.batch);
        for _ in 0..args.batch {
            let (debit, credit) = pick_pair(&mut rng, &args);
            batch.push(TransferRequest::Transfer {
                id: transfer_id(&next_id)?,
                debit_account_id: account_id(debit)?,
                credit_account_id: account_id(credit)?,
                amount: Amount::new(1 + u128::from(rng.below(100)))?,
                pending: None,
                reference: None,
                metadata: None,
            });
        }
        let sent = Instant::now();
        match ledger.submit(batch, args.linked).await {
            Ok(results) => {
                for result in results {
                    if result.is_ok() {
                        tally.ok += 1
                    } else {
                        tally.rejected += 1
                    }
                }
            }
            Err(_) => tally.failed += 1,
        }
        tally.requests.record(sent.elapsed().as_micros().max(1) as u64)?;
    }
    Ok(tally)
}

/// Two different accounts; with `--hot-share` one of them is account 0.
fn pick_pair(rng: &mut Rng, args: &Args) -> (u64, u64) {
    let mut debit = rng.below(args.accounts);
    let mut credit = rng.below(args.accounts - 1);
    if credit >= debit {
        credit += 1;
    }
    if rng.chance(args.hot_share) {
        if rng.below(2) == 0 {
            debit = 0;
        } else {
            credit = 0;
        }
        if debit == credit {
            credit = 1;
        }
    }
    (debit, credit)
}

/// Waits until the publisher is done with every event it was handed;
/// returns how long that took.
async fn drain(queue: &EventQueue) -> anyhow::Result<f64> {
    let started = Instant::now();
    loop {
        let (handed, done) = queue.progress();
        if done >= handed {
            return Ok(started.elapsed().as_secs_f64());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "events not published in 10 min");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The outbox lag (events durable, not yet acknowledged by JetStream) every 10 ms until `until`.
async fn sample_lag(queue: Arc<EventQueue>, until: Instant) -> anyhow::Result<Histogram<u64>> {
    let mut lag = Histogram::<u64>::new(3)?;
    while Instant::now() < until {
        let (handed, done) = queue.progress();
        lag.record(handed.saturating_sub(done))?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(lag)
}
