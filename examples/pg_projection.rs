//! Projects the ledger events (`docs/EVENTS.md`) into PostgreSQL, so a team
//! can report on the ledger in SQL.
//!
//! ```sh
//! cargo run --release -p wallet-api --example pg_projection -- \
//!     --nats-url nats://127.0.0.1:4222 --pg-url postgresql://postgres@127.0.0.1:5432/postgres
//! ```
//!
//! Two tables, created if missing: `accounts`, one row per account with its
//! last applied `sequence`, balance and status; `entries`, one row per event
//! (`(account_id, sequence)` is the key). A durable JetStream pull consumer
//! (`--durable`) reads the stream `WALLET_EVENTS` in batches. Each event is
//! applied in one PostgreSQL transaction that locks its account's row: only
//! if its sequence is the last applied plus one; a lower one is skipped (a
//! redelivery after a crash changes nothing); a higher one is a gap, which
//! the stream's per-account order rules out, so it is reported and the
//! projection exits non-zero. A message is acknowledged after its commit.
//!
//! At start the consumer is rewound to its acknowledgement floor: messages
//! a killed run had received but not acknowledged would otherwise come
//! back only after the ack wait, behind later events of the same accounts,
//! which would read as gaps. Everything above the floor comes again, in
//! stream order, and what was already applied is skipped. One projection
//! per durable consumer at a time.
//!
//! `--until-idle-ms N` exits after N ms without a message; otherwise it runs
//! until killed. At exit it prints one JSON line: what it applied and
//! skipped, and the error if there was one.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use clap::Parser;
use futures_util::StreamExt;
use serde_json::json;
use tokio_postgres::{Client, NoTls, Statement};
use wallet_actors::events::{EventSide, EventType, LedgerEvent};

/// The node's stream and subjects (docs/EVENTS.md).
const STREAM: &str = "WALLET_EVENTS";
const SUBJECTS: &str = "wallet.events.>";

/// The longest a pull request waits on the server when no idle limit is
/// nearer: short enough that a lost request costs little.
const PULL_WAIT_MAX: Duration = Duration::from_secs(5);

/// The shortest pull request: the server rejects tiny expiries.
const PULL_WAIT_MIN: Duration = Duration::from_millis(50);

#[derive(Parser, Debug)]
struct Args {
    /// NATS server with the ledger's JetStream stream.
    #[arg(long, env = "WALLET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// PostgreSQL connection string (`postgresql://user@host:port/db` or `host=... user=...`).
    #[arg(long, env = "DATABASE_URL")]
    pg_url: String,
    /// The durable consumer's name: its acknowledgements are the projection's position.
    #[arg(long, default_value = "pg-projection")]
    durable: String,
    /// Exit after this many milliseconds without a message (default: run until killed).
    #[arg(long)]
    until_idle_ms: Option<u64>,
    /// Messages asked for in one pull request (at most this many unacknowledged).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..))]
    batch_max: u16,
}

/// What a run did, for the summary line.
#[derive(Debug, Default)]
struct Counts {
    applied: u64,
    skipped: u64,
}

/// What became of one event.
enum Outcome {
    /// Written: it was the account's next.
    Applied,
    /// Already there (a redelivery): nothing changed.
    Skipped,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("pg_projection: no runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut counts = Counts::default();
    let result = runtime.block_on(run(&args, &mut counts));
    let error = result.as_ref().err().map(|e| format!("{e:#}"));
    println!("{}", json!({"applied": counts.applied, "skipped": counts.skipped, "error": error}));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pg_projection: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args, counts: &mut Counts) -> anyhow::Result<()> {
    let (mut database, connection) =
        tokio_postgres::connect(&args.pg_url, NoTls).await.context("connecting to PostgreSQL")?;
    let connection = tokio::spawn(connection);
    database.batch_execute(SCHEMA).await.context("creating the tables")?;
    let statements = Statements::prepare(&database).await?;

    let nats = async_nats::connect(args.nats_url.as_str()).await.context("connecting to NATS")?;
    let consumer = consumer(&nats, &args.durable).await?;

    let idle = args.until_idle_ms.map(Duration::from_millis);
    let mut last_message = Instant::now();
    loop {
        let wait = match idle {
            Some(idle) => match idle.checked_sub(last_message.elapsed()) {
                Some(left) if !left.is_zero() => left.min(PULL_WAIT_MAX),
                _ => break,
            },
            None => PULL_WAIT_MAX,
        };
        let mut batch = consumer
            .batch()
            .max_messages(usize::from(args.batch_max))
            .expires(wait.max(PULL_WAIT_MIN))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("pull request: {e}"))?;
        while let Some(message) = batch.next().await {
            let message = message.map_err(|e| anyhow::anyhow!("pulling messages: {e}"))?;
            last_message = Instant::now();
            let event: LedgerEvent = serde_json::from_slice(&message.payload)
                .with_context(|| format!("an event on {} that is not one", message.subject))?;
            match apply(&mut database, &statements, &event).await? {
                Outcome::Applied => counts.applied += 1,
                Outcome::Skipped => counts.skipped += 1,
            }
            message.ack().await.map_err(|e| anyhow::anyhow!("acknowledging {}: {e}", event.event_id))?;
        }
        anyhow::ensure!(!connection.is_finished(), "the PostgreSQL connection closed");
    }
    // Acknowledgements are sent without waiting for a reply: make sure the
    // last ones left before exiting (a lost one only means a redelivery).
    nats.flush().await.context("flushing acknowledgements")?;
    Ok(())
}

/// The durable pull consumer, created on first use, and rewound to its
/// acknowledgement floor (see the module docs for why).
async fn consumer(nats: &async_nats::Client, durable: &str) -> anyhow::Result<PullConsumer> {
    let jetstream = async_nats::jetstream::new(nats.clone());
    let stream = jetstream
        .get_stream(STREAM)
        .await
        .with_context(|| format!("no stream {STREAM}: is a node publishing to this NATS?"))?;
    let config = pull::Config {
        durable_name: Some(durable.to_string()),
        filter_subject: SUBJECTS.to_string(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ..pull::Config::default()
    };
    let consumer: PullConsumer = stream
        .get_or_create_consumer(durable, config.clone())
        .await
        .with_context(|| format!("consumer {durable}"))?;
    if stream.reset_consumer(durable, None).await.is_ok() {
        return Ok(consumer);
    }
    // A nats-server older than 2.14 cannot reset a consumer: the same by
    // recreating it from the message after its floor.
    let floor = consumer.cached_info().ack_floor.stream_sequence;
    stream.delete_consumer(durable).await.with_context(|| format!("deleting consumer {durable}"))?;
    let deliver_policy = match floor {
        0 => DeliverPolicy::All,
        floor => DeliverPolicy::ByStartSequence { start_sequence: floor + 1 },
    };
    stream
        .create_consumer(pull::Config { deliver_policy, ..config })
        .await
        .with_context(|| format!("recreating consumer {durable}"))
}

/// Both tables; `numeric(39,0)` holds any 128-bit amount.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    account_id      uuid PRIMARY KEY,
    last_sequence   bigint NOT NULL,
    status          text NOT NULL,
    available       numeric(39,0) NOT NULL,
    debits_posted   numeric(39,0) NOT NULL,
    credits_posted  numeric(39,0) NOT NULL,
    debits_pending  numeric(39,0) NOT NULL,
    credits_pending numeric(39,0) NOT NULL,
    updated_at      timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    account_id      uuid NOT NULL REFERENCES accounts,
    sequence        bigint NOT NULL,
    event_id        text NOT NULL UNIQUE,
    type            text NOT NULL,
    transfer_id     uuid,
    side            text,
    amount          numeric(39,0),
    pending_id      uuid,
    occurred_at     timestamptz NOT NULL,
    available       numeric(39,0) NOT NULL,
    debits_posted   numeric(39,0) NOT NULL,
    credits_posted  numeric(39,0) NOT NULL,
    debits_pending  numeric(39,0) NOT NULL,
    credits_pending numeric(39,0) NOT NULL,
    PRIMARY KEY (account_id, sequence)
);
";

/// Parameters are text, cast in SQL: the driver then needs no numeric,
/// UUID or time types of its own.
struct Statements {
    open: Statement,
    lock: Statement,
    entry: Statement,
    account: Statement,
}

impl Statements {
    async fn prepare(database: &Client) -> anyhow::Result<Statements> {
        let open = database
            .prepare(
                "INSERT INTO accounts (account_id, last_sequence, status, available, debits_posted,
                     credits_posted, debits_pending, credits_pending, updated_at)
                 VALUES ($1::text::uuid, 0, 'active', 0, 0, 0, 0, 0, $2::text::timestamptz)
                 ON CONFLICT (account_id) DO NOTHING",
            )
            .await?;
        let lock = database
            .prepare("SELECT last_sequence FROM accounts WHERE account_id = $1::text::uuid FOR UPDATE")
            .await?;
        let entry = database
            .prepare(
                "INSERT INTO entries (account_id, sequence, event_id, type, transfer_id, side, amount,
                     pending_id, occurred_at, available, debits_posted, credits_posted, debits_pending,
                     credits_pending)
                 VALUES ($1::text::uuid, $2, $3, $4, $5::text::uuid, $6, $7::text::numeric,
                     $8::text::uuid, $9::text::timestamptz, $10::text::numeric, $11::text::numeric,
                     $12::text::numeric, $13::text::numeric, $14::text::numeric)",
            )
            .await?;
        let account = database
            .prepare(
                "UPDATE accounts SET last_sequence = $2, status = coalesce($3, status),
                     available = $4::text::numeric, debits_posted = $5::text::numeric,
                     credits_posted = $6::text::numeric, debits_pending = $7::text::numeric,
                     credits_pending = $8::text::numeric, updated_at = $9::text::timestamptz
                 WHERE account_id = $1::text::uuid",
            )
            .await?;
        Ok(Statements { open, lock, entry, account })
    }
}

/// Applies one event in one transaction, holding its account's row lock.
async fn apply(
    database: &mut Client,
    statements: &Statements,
    event: &LedgerEvent,
) -> anyhow::Result<Outcome> {
    let sequence = i64::try_from(event.sequence).context("a sequence beyond bigint")?;
    let id = &event.account_id;
    let transaction = database.transaction().await?;
    // An account's first event makes its row, so that its lock below
    // serialises this event with any other writer of the account.
    if event.sequence == 1 {
        transaction.execute(&statements.open, &[id, &event.occurred_at]).await?;
    }
    let last: i64 = match transaction.query_opt(&statements.lock, &[id]).await? {
        Some(row) => row.try_get(0)?,
        None => 0,
    };
    if sequence <= last {
        transaction.rollback().await?;
        return Ok(Outcome::Skipped);
    }
    anyhow::ensure!(
        sequence == last + 1,
        "gap: account {id} is at sequence {last} and the next event is {} ({}); the stream keeps \
         each account's events in order, so this is a bug in the producer or the stream",
        event.sequence,
        event.event_id
    );
    let side = event.side.map(|side| match side {
        EventSide::Debit => "debit",
        EventSide::Credit => "credit",
    });
    let balance = &event.balance;
    transaction
        .execute(
            &statements.entry,
            &[
                id,
                &sequence,
                &event.event_id,
                &event.kind.name(),
                &event.transfer_id,
                &side,
                &event.amount,
                &event.pending_id,
                &event.occurred_at,
                &balance.available,
                &balance.debits_posted,
                &balance.credits_posted,
                &balance.debits_pending,
                &balance.credits_pending,
            ],
        )
        .await?;
    let status = match event.kind {
        EventType::AccountOpened | EventType::AccountUnfrozen => Some("active"),
        EventType::AccountFrozen => Some("frozen"),
        EventType::AccountClosed => Some("closed"),
        _ => None,
    };
    transaction
        .execute(
            &statements.account,
            &[
                id,
                &sequence,
                &status,
                &balance.available,
                &balance.debits_posted,
                &balance.credits_posted,
                &balance.debits_pending,
                &balance.credits_pending,
                &event.occurred_at,
            ],
        )
        .await?;
    transaction.commit().await?;
    Ok(Outcome::Applied)
}
