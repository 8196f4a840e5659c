//! The publishing task: takes durable history entries from the queue,
//! drops those the stream already holds, renders the rest as events and
//! sends them as one atomic batch, one batch in flight at a time.
//!
//! Exactly once without trusting the duplicate window: for every account
//! the task knows the last sequence the stream holds, learnt from the stream
//! itself (`direct get` of the account subject's last message) the first
//! time it sees the account and again after any batch whose outcome is
//! unknown. `Nats-Msg-Id` only spares a round trip within the window.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use wallet_actors::events::LedgerEvent;
use wallet_actors::HistoryEntry;
use wallet_actors::{AccountId, Ledger};

use super::{subject, EventQueue, STREAM, SUBJECTS};
use crate::journal::batch::{publish_on, Outgoing};

/// Reads of an account's last event in the stream in flight at once.
const LAST_READS_AT_ONCE: usize = 64;

/// Events rendered before the task lets the runtime's other tasks run.
const RENDERED_BETWEEN_YIELDS: usize = 64;

/// How the publisher reaches NATS and shapes the stream.
#[derive(Clone, Debug)]
pub struct PublisherOptions {
    /// `nats://host:port`.
    pub nats_url: String,
    /// Replicas of the stream (1 for one server, 3 for a cluster).
    pub replicas: usize,
    /// JetStream's duplicate window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// Most events in one atomic batch (JetStream's default limit is 1,000).
    pub batch_max: usize,
    /// How long a batch's acknowledgement may take before its outcome is unknown.
    pub ack_timeout: Duration,
}

impl PublisherOptions {
    /// Defaults for `nats_url`: one replica, a two-minute window, batches of 1,000.
    pub fn new(nats_url: impl Into<String>) -> Self {
        PublisherOptions {
            nats_url: nats_url.into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            batch_max: 1000,
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// A running publisher.
pub struct EventPublisher {
    task: tokio::task::JoinHandle<()>,
}

impl EventPublisher {
    /// Starts publishing what `queue` receives from `ledger`'s shards. It
    /// connects in the background and keeps trying while NATS is away; the
    /// ledger serves meanwhile and the queue grows.
    pub fn spawn(queue: Arc<EventQueue>, ledger: Ledger, options: PublisherOptions) -> EventPublisher {
        let task = tokio::spawn(async move {
            let mut run = Run { queue, ledger, options, stream_last: HashMap::new() };
            run.serve().await;
        });
        EventPublisher { task }
    }

    /// Stops publishing; what is unpublished stays durable and is published
    /// by the next run (it reads what the stream holds first).
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

struct Run {
    queue: Arc<EventQueue>,
    ledger: Ledger,
    options: PublisherOptions,
    /// Per account, the last sequence the stream is known to hold.
    stream_last: HashMap<AccountId, u64>,
}

/// Why a step failed; every failure is retried after a pause.
type Failure = Box<dyn std::error::Error + Send + Sync>;

impl Run {
    async fn serve(&mut self) {
        let (client, stream) = self.connect().await;
        let js = jetstream::new(client.clone());
        let mut pending: Vec<HistoryEntry> = Vec::new();
        let mut pause = Duration::from_millis(50);
        let mut catch_up_pause = Duration::from_millis(50);
        loop {
            if pending.is_empty() {
                pending = self.queue.take(self.options.batch_max).await;
            }
            metrics::gauge!("wallet_events_outbox_lag").set((self.queue.len() + pending.len()) as f64);
            match self.publish(&client, &js, &stream, &pending).await {
                Ok(()) => {
                    self.queue.done(pending.len());
                    pending.clear();
                    pause = Duration::from_millis(50);
                    if self.queue.is_empty() {
                        for (account, mark) in self.queue.lagging() {
                            match self.catch_up(&client, &js, &stream, account).await {
                                Ok(()) => {
                                    self.queue.caught_up(account, mark);
                                    catch_up_pause = Duration::from_millis(50);
                                }
                                Err(error) => {
                                    tracing::warn!(%error, %account, "catching up an account's events failed; retrying");
                                    self.stream_last.remove(&account);
                                    tokio::time::sleep(catch_up_pause).await;
                                    catch_up_pause = (catch_up_pause * 2).min(Duration::from_secs(2));
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(error) => {
                    // The batch may or may not be stored: learn it from the
                    // stream before sending these accounts anything.
                    tracing::warn!(%error, events = pending.len(), "publishing ledger events failed; retrying");
                    for entry in &pending {
                        self.stream_last.remove(&entry.account_id);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Connects and creates (or updates) the stream, retrying until it can.
    async fn connect(&self) -> (async_nats::Client, stream::Stream) {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.try_connect().await {
                Ok(connected) => return connected,
                Err(error) => {
                    tracing::warn!(%error, url = %self.options.nats_url, "NATS not reachable for ledger events; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_connect(&self) -> Result<(async_nats::Client, stream::Stream), Failure> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .retry_on_initial_connect()
            .connect(crate::nats_servers(&self.options.nats_url))
            .await?;
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECTS.to_string()],
            storage: stream::StorageType::File,
            num_replicas: self.options.replicas,
            duplicate_window: self.options.duplicate_window,
            allow_direct: true,
            allow_atomic_publish: true,
            ..Default::default()
        };
        js.create_or_update_stream(config).await?;
        let stream = js.get_stream(STREAM).await?;
        tracing::info!(url = %self.options.nats_url, stream = STREAM, "publishing ledger events");
        Ok((client, stream))
    }

    /// Publishes what of `entries` the stream does not hold yet, in
    /// batches of at most `batch_max`. Entries missing before one (the
    /// queue dropped them when it was full) are read back from the durable
    /// history first, so an account's events never skip a sequence.
    async fn publish(
        &mut self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        stream: &stream::Stream,
        entries: &[HistoryEntry],
    ) -> Result<(), Failure> {
        self.learn_last(stream, entries).await?;
        let mut batch = Batch { events: Vec::new(), last: known_last(&self.stream_last, entries) };
        for entry in entries {
            let held = batch.last.get(&entry.account_id).copied().unwrap_or(0);
            if entry.sequence <= held {
                continue;
            }
            let mut after = held;
            while after + 1 < entry.sequence {
                metrics::counter!("wallet_events_read_back_total").increment(1);
                let wanted = (entry.sequence - after - 1).min(1000) as usize;
                let missing = self.ledger.history(entry.account_id, after, wanted).await?;
                let missing: Vec<_> = missing.into_iter().filter(|m| m.sequence < entry.sequence).collect();
                if missing.is_empty() {
                    return Err(format!("the history of {} lacks {}", entry.account_id, after + 1).into());
                }
                for read in &missing {
                    after = read.sequence;
                    self.add(&mut batch, read, client, js).await?;
                }
            }
            self.add(&mut batch, entry, client, js).await?;
        }
        self.send(&mut batch, client, js).await
    }

    /// Learns from the stream the last event it holds of each account among
    /// `entries` not known yet: many reads at once, since after a start
    /// every account costs one round trip (about 0.2 ms), and one at a time
    /// that would bound the publisher at a few thousand accounts a second.
    async fn learn_last(&mut self, stream: &stream::Stream, entries: &[HistoryEntry]) -> Result<(), Failure> {
        let unknown: HashSet<AccountId> =
            entries.iter().map(|e| e.account_id).filter(|a| !self.stream_last.contains_key(a)).collect();
        let found: Vec<(AccountId, Result<u64, Failure>)> = futures_util::stream::iter(unknown)
            .map(|account| async move { (account, last_in_stream(stream, account).await) })
            .buffer_unordered(LAST_READS_AT_ONCE)
            .collect()
            .await;
        for (account, last) in found {
            self.stream_last.insert(account, last?);
        }
        Ok(())
    }

    /// Adds an event to the batch, sending the batch first if it is full.
    async fn add(
        &mut self,
        batch: &mut Batch,
        entry: &HistoryEntry,
        client: &async_nats::Client,
        js: &jetstream::Context,
    ) -> Result<(), Failure> {
        if batch.events.len() >= self.options.batch_max {
            self.send(batch, client, js).await?;
        }
        batch.last.insert(entry.account_id, entry.sequence);
        batch.events.push(super::render(&self.ledger, entry)?);
        if batch.events.len().is_multiple_of(RENDERED_BETWEEN_YIELDS) {
            // A batch takes milliseconds to render: the shards' tasks on
            // the same worker must not wait for all of it.
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// Sends the batch's events, if any; then the stream holds what `last` says.
    async fn send(
        &mut self,
        batch: &mut Batch,
        client: &async_nats::Client,
        js: &jetstream::Context,
    ) -> Result<(), Failure> {
        if batch.events.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.send_batch(client, js, &batch.events).await?;
        metrics::histogram!("wallet_events_publish_seconds").record(started.elapsed().as_secs_f64());
        metrics::counter!("wallet_events_published_total").increment(batch.events.len() as u64);
        self.stream_last.extend(batch.last.iter().map(|(account, last)| (*account, *last)));
        batch.events.clear();
        Ok(())
    }

    /// Accounts whose newest entries the queue dropped: their events are
    /// read back from history, from what the stream holds on.
    async fn catch_up(
        &mut self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        stream: &stream::Stream,
        account: AccountId,
    ) -> Result<(), Failure> {
        loop {
            let held = match self.stream_last.get(&account) {
                Some(held) => *held,
                None => last_in_stream(stream, account).await?,
            };
            self.stream_last.insert(account, held);
            let entries = self.ledger.history(account, held, self.options.batch_max).await?;
            if entries.is_empty() {
                return Ok(());
            }
            self.publish(client, js, stream, &entries).await?;
        }
    }

    /// One atomic batch: all of it is stored, or none. The headers are set
    /// by hand (async-nats has no batch API): every message but the last
    /// goes as a plain publish, the last commits and is acknowledged.
    async fn send_batch(
        &mut self,
        client: &async_nats::Client,
        js: &jetstream::Context,
        events: &[LedgerEvent],
    ) -> Result<(), Failure> {
        let mut messages = Vec::with_capacity(events.len());
        for event in events {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.event_id.as_str());
            let payload = Bytes::from(serde_json::to_vec(event)?);
            let subject = format!("wallet.events.{}", event.account_id);
            messages.push(Outgoing { subject, headers, payload });
        }
        publish_on(client, js, self.options.ack_timeout, messages).await?;
        Ok(())
    }
}

/// The last sequence of `account`'s events the stream holds (0: none).
async fn last_in_stream(stream: &stream::Stream, account: AccountId) -> Result<u64, Failure> {
    match stream.direct_get_last_for_subject(subject(account)).await {
        Ok(message) => Ok(serde_json::from_slice::<LedgerEvent>(&message.payload)?.sequence),
        Err(error) if error.kind() == stream::DirectGetErrorKind::NotFound => Ok(0),
        Err(error) => Err(error.into()),
    }
}

/// Events about to be sent, and the last sequence of each account once they are.
struct Batch {
    events: Vec<LedgerEvent>,
    last: HashMap<AccountId, u64>,
}

/// The known last sequences of the accounts among `entries`.
fn known_last(known: &HashMap<AccountId, u64>, entries: &[HistoryEntry]) -> HashMap<AccountId, u64> {
    entries.iter().filter_map(|e| known.get(&e.account_id).map(|last| (e.account_id, *last))).collect()
}
