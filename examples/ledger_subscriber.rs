//! Ledger subscriber: rebuilds every account's balance from the ledger
//! events on NATS JetStream, as a consumer of `docs/EVENTS.md` would.
//!
//! ```sh
//! cargo run --release -p wallet-api --example ledger_subscriber -- \
//!     --nats-url nats://127.0.0.1:4222 --state subscriber.json \
//!     --until-idle-ms 2000 --api-url http://127.0.0.1:8080 --token "$ADMIN_TOKEN"
//! ```
//!
//! A durable pull consumer (`--durable`, filter `wallet.events.>`, deliver
//! all, explicit acks) reads the stream in batches. An account's event is
//! applied only if its `sequence` is the last applied plus one; a lower one
//! is a repeat (skipped and acknowledged). A higher one means the events
//! between have not come yet: after a crash, the batch the consumer had
//! handed out comes again only after the ack wait, so newer events can come
//! first. They are read back from the account's subject in the stream; one
//! that is not there either is a gap, reported, and the run exits non-zero.
//!
//! The state (per account: last sequence, its stream position and balance)
//! is written to `--state` (a temporary file, then renamed) after each batch
//! and before the batch is acknowledged: a crash at any point loses nothing,
//! and what is delivered again is skipped by its sequence.
//!
//! `--until-idle-ms` ends the run once no message came for that long. With
//! `--api-url` and `--token` (or `WALLET_TOKEN`, an admin's token) it then
//! compares each account's sequence and balance with `GET
//! /v1/accounts/{id}`. It prints one JSON line: `accounts`,
//! `events_applied`, `duplicates_skipped`, `read_back`, `gaps`,
//! `mismatches`, and exits non-zero if there is a gap or a mismatch.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use clap::Parser;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Parser, Debug)]
struct Args {
    /// The NATS server the node publishes to.
    #[arg(long, env = "WALLET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The durable consumer's name: runs with the same name go on where the last one acknowledged.
    #[arg(long, default_value = "ledger-subscriber")]
    durable: String,
    /// Where the rebuilt balances are kept between runs (JSON).
    #[arg(long)]
    state: PathBuf,
    /// Exit once no message came for this many milliseconds (otherwise run for ever).
    #[arg(long)]
    until_idle_ms: Option<u64>,
    /// The wallet API to compare the rebuilt balances with, at the end.
    #[arg(long)]
    api_url: Option<String>,
    /// An admin's access token for `--api-url`.
    #[arg(long, env = "WALLET_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Messages fetched at once (below the consumer's 1000 unacknowledged).
    #[arg(long, default_value_t = 500)]
    batch_max: usize,
}

const STREAM: &str = "WALLET_EVENTS";
const SUBJECTS: &str = "wallet.events.>";
/// How long to wait before asking again when the stream had nothing new.
const POLL_IDLE: Duration = Duration::from_millis(100);

/// What the subscriber needs of an event; other fields are ignored, so new
/// ones do not break it.
#[derive(Deserialize)]
struct Event {
    account_id: String,
    sequence: u64,
    balance: Balance,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Balance {
    available: String,
    debits_posted: String,
    credits_posted: String,
    debits_pending: String,
    credits_pending: String,
}

/// One account as rebuilt.
#[derive(Serialize, Deserialize)]
struct Account {
    /// The last sequence applied.
    sequence: u64,
    /// Where that event is in the stream (where a read-back starts).
    stream_sequence: u64,
    balance: Balance,
}

/// What is saved to `--state`; the counters are over the consumer's life.
#[derive(Default, Serialize, Deserialize)]
struct State {
    accounts: BTreeMap<String, Account>,
    events_applied: u64,
    duplicates_skipped: u64,
    read_back: u64,
}

enum Outcome {
    Applied,
    Duplicate,
    /// The account's events between the last applied and this one are missing.
    Ahead,
}

impl State {
    fn load(path: &Path) -> anyhow::Result<State> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written whole to a temporary file and renamed over the old one, so a
    /// crash leaves either the old state or the new one.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let mut file =
            std::fs::File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(&serde_json::to_vec(self)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path).with_context(|| format!("renaming to {}", path.display()))?;
        // The rename itself is durable once the directory is.
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::File::open(directory)?.sync_all()?;
        Ok(())
    }

    fn apply(&mut self, event: Event, stream_sequence: u64) -> Outcome {
        let last = self.accounts.get(&event.account_id).map_or(0, |account| account.sequence);
        if event.sequence <= last {
            self.duplicates_skipped += 1;
            return Outcome::Duplicate;
        }
        if event.sequence > last + 1 {
            return Outcome::Ahead;
        }
        let account = Account { sequence: event.sequence, stream_sequence, balance: event.balance };
        self.accounts.insert(event.account_id, account);
        self.events_applied += 1;
        Outcome::Applied
    }
}

#[derive(Serialize)]
struct Summary {
    accounts: usize,
    events_applied: u64,
    duplicates_skipped: u64,
    read_back: u64,
    gaps: usize,
    mismatches: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let summary = runtime.block_on(run(&args))?;
    println!("{}", serde_json::to_string(&summary)?);
    if summary.gaps > 0 || summary.mismatches > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Summary> {
    let api = match (&args.api_url, &args.token) {
        (Some(url), Some(token)) => Some((url.trim_end_matches('/'), token.as_str())),
        (Some(_), None) => anyhow::bail!("--api-url needs --token (or WALLET_TOKEN)"),
        (None, _) => None,
    };
    let mut state = State::load(&args.state)?;
    let client = async_nats::connect(&args.nats_url)
        .await
        .with_context(|| format!("connecting to {}", args.nats_url))?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(STREAM).await.with_context(|| format!("opening the stream {STREAM}"))?;
    let config = pull::Config {
        durable_name: Some(args.durable.clone()),
        filter_subject: SUBJECTS.to_string(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ..Default::default()
    };
    let consumer: PullConsumer =
        stream.get_or_create_consumer(&args.durable, config).await.context("opening the consumer")?;

    let mut gaps = Vec::new();
    let mut last_message = Instant::now();
    while gaps.is_empty() {
        let mut batch = consumer
            .fetch()
            .max_messages(args.batch_max.max(1))
            .messages()
            .await
            .map_err(|error| anyhow::anyhow!("fetching: {error}"))?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            messages.push(message.map_err(|error| anyhow::anyhow!("fetching: {error}"))?);
        }
        if messages.is_empty() {
            if let Some(idle_ms) = args.until_idle_ms {
                if last_message.elapsed() >= Duration::from_millis(idle_ms) {
                    break;
                }
            }
            tokio::time::sleep(POLL_IDLE).await;
            continue;
        }
        last_message = Instant::now();
        let mut done = Vec::with_capacity(messages.len());
        for message in messages {
            let position =
                message.info().map_err(|error| anyhow::anyhow!("message info: {error}"))?.stream_sequence;
            let event: Event = serde_json::from_slice(&message.payload)
                .with_context(|| format!("stream message {position} is not an event"))?;
            let (account, sequence) = (event.account_id.clone(), event.sequence);
            if let Outcome::Ahead = state.apply(event, position) {
                if !read_back(&stream, &mut state, &account, sequence, position).await? {
                    let last = state.accounts.get(&account).map_or(0, |a| a.sequence);
                    gaps.push(format!("account {account}: event {sequence} after {last}, the ones between are not in the stream"));
                    // Not acknowledged: the next run meets it again.
                    continue;
                }
                let event: Event = serde_json::from_slice(&message.payload)?;
                state.apply(event, position);
            }
            done.push(message);
        }
        state.save(&args.state)?;
        for message in done {
            message.ack().await.map_err(|error| anyhow::anyhow!("acknowledging: {error}"))?;
        }
    }
    client.flush().await.context("sending the acknowledgements")?;
    for gap in &gaps {
        eprintln!("gap: {gap}");
    }

    let mut mismatches = Vec::new();
    if let Some((url, token)) = api {
        mismatches = compare(url, token, &state).await?;
        for mismatch in &mismatches {
            eprintln!("mismatch: {mismatch}");
        }
    }
    Ok(Summary {
        accounts: state.accounts.len(),
        events_applied: state.events_applied,
        duplicates_skipped: state.duplicates_skipped,
        read_back: state.read_back,
        gaps: gaps.len(),
        mismatches: mismatches.len(),
    })
}

/// Applies the account's events from after the last applied one up to (not
/// including) `sequence`, read from its subject before stream position
/// `before`. False if one of them is not there: a gap in the stream.
async fn read_back(
    stream: &Stream,
    state: &mut State,
    account: &str,
    sequence: u64,
    before: u64,
) -> anyhow::Result<bool> {
    let subject = format!("wallet.events.{account}");
    let mut from = state.accounts.get(account).map_or(1, |a| a.stream_sequence + 1);
    loop {
        let last = state.accounts.get(account).map_or(0, |a| a.sequence);
        if last + 1 >= sequence {
            return Ok(true);
        }
        let message = match stream.direct_get_next_for_subject(subject.as_str(), Some(from)).await {
            Ok(message) => message,
            Err(error) if error.kind() == DirectGetErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(anyhow::anyhow!("reading {subject} back: {error}")),
        };
        if message.sequence >= before {
            return Ok(false);
        }
        from = message.sequence + 1;
        let event: Event = serde_json::from_slice(&message.payload)
            .with_context(|| format!("stream message {} is not an event", message.sequence))?;
        match state.apply(event, message.sequence) {
            Outcome::Applied => state.read_back += 1,
            Outcome::Duplicate => {}
            Outcome::Ahead => return Ok(false),
        }
    }
}

/// What the API says of each account, where it differs from the rebuilt one.
async fn compare(url: &str, token: &str, state: &State) -> anyhow::Result<Vec<String>> {
    // The API is the ledger's own service; a proxy set for the outside is not on the way.
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?;
    let mut mismatches = Vec::new();
    for (id, account) in &state.accounts {
        let reply = client
            .get(format!("{url}/v1/accounts/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("reading account {id}"))?;
        let status = reply.status();
        if !status.is_success() {
            mismatches.push(format!("account {id}: the API answered {status}"));
            continue;
        }
        #[derive(Deserialize)]
        struct View {
            sequence: u64,
            balance: Balance,
        }
        let view: View = reply.json().await.with_context(|| format!("account {id}: the API's body"))?;
        if view.sequence != account.sequence || view.balance != account.balance {
            mismatches.push(format!(
                "account {id}: rebuilt sequence {} {:?}, the API's {} {:?}",
                account.sequence, account.balance, view.sequence, view.balance
            ));
        }
    }
    Ok(mismatches)
}
