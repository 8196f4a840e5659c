//! The user store shared by every node: users, credentials, sessions, the
//! account directory (who owns which account), risk rules and shared
//! settings, on the JetStream stream [`STREAM`], one subject per key
//! (`wallet.dir.<table>.<key in hex>`), the stream keeping the last message
//! of each subject (a key-value bucket, with conditions across keys).
//!
//! Every node keeps the whole directory in memory, fed in stream order by an
//! ordered consumer, and reads it there: an authentication never waits on
//! NATS. A write is one atomic batch of messages, each on the condition that
//! its subject still ends with the revision (stream sequence) the node read
//! (`Nats-Expected-Last-Subject-Sequence`; 0 for a key that must be absent),
//! so conditions hold across nodes even when this node's copy lags. It
//! answers once the server acknowledged it (stored, with `sync_interval:
//! always`) and this node's copy shows it: a node reads its own writes.
//! Another node sees them a few milliseconds later;
//! `Tables::catch_up` waits until the copy reaches the stream's last
//! sequence, for reads that must not miss a write made elsewhere; one such
//! request is in flight per node at a time, shared by every caller that
//! came while it was asked. A probe every second confirms the copy is
//! current; reads made after the last confirmation is [`STALE_AFTER`] old
//! (the feed stalled, NATS away) catch up first or fail, so a node never
//! answers from a copy that stopped following.
//!
//! A delete is a message with the header [`DELETED_HEADER`] and no payload,
//! kept as the subject's last message so that every node's copy drops the
//! key (a purge would leave other copies holding it).

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use tokio::sync::{watch, Notify, Semaphore};
use wallet_storage::tables::{Change, Expect, Stored, Table, Tables, TablesFuture, Written};
use wallet_storage::users::UserStoreError;

use crate::journal::batch::{condition_refused, publish_on, Outgoing};

mod copy;

use copy::{feed, subject, Copy, Entry};

/// The directory's stream.
pub const STREAM: &str = "WALLET_DIRECTORY";

/// Its subjects.
const SUBJECTS: &str = "wallet.dir.>";

/// The header that marks a delete.
pub const DELETED_HEADER: &str = "Wallet-Deleted";

/// How often a node confirms its copy is current.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How old the last confirmation may be when a read is answered from the
/// copy without catching up first.
pub const STALE_AFTER: Duration = Duration::from_secs(3);

/// Writes of several messages one node has in flight at once: the server
/// holds at most 50 open atomic batches per stream (shared by every node).
const BATCHES_IN_FLIGHT_MAX: usize = 16;

/// How to reach the directory.
#[derive(Clone, Debug)]
pub struct DirectoryOptions {
    /// The server.
    pub nats_url: String,
    /// Replicas of the stream (never lowered).
    pub replicas: usize,
    /// Longest wait for a write's acknowledgement, and for this node's copy
    /// to move on when it must show a write or catch up.
    pub ack_timeout: Duration,
}

impl DirectoryOptions {
    /// Defaults for the server at `nats_url`.
    pub fn new(nats_url: String) -> DirectoryOptions {
        DirectoryOptions { nats_url, replicas: 1, ack_timeout: Duration::from_secs(5) }
    }
}

/// The last answer about the stream's last sequence: when it was asked,
/// what the copy had applied just before, and what it said (a failure too:
/// callers queued behind a request that failed share its failure rather
/// than each wait out their own).
type Probe = Option<(Instant, u64, Result<u64, String>)>;

/// The shared directory as [`Tables`]. Dropping it stops its copy's feed.
pub struct SharedDirectory {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    options: DirectoryOptions,
    copy: Arc<Copy>,
    /// The stream sequence the copy has applied.
    applied: watch::Receiver<u64>,
    /// Held while the stream's last sequence is asked, so callers share it.
    probe: tokio::sync::Mutex<Probe>,
    /// When the last probe whose answer the copy reached was asked.
    confirmed: Mutex<Option<Instant>>,
    batches: Semaphore,
    feed: tokio::task::JoinHandle<()>,
}

impl Drop for SharedDirectory {
    fn drop(&mut self) {
        self.feed.abort();
    }
}

fn unavailable(what: &str, error: impl std::fmt::Display) -> UserStoreError {
    UserStoreError::Unavailable(format!("shared directory: {what}: {error}"))
}

impl SharedDirectory {
    /// Connects, creates (or updates) the stream, and returns once this
    /// node's copy holds everything the stream held at the call.
    pub async fn open(options: DirectoryOptions) -> Result<Arc<SharedDirectory>, UserStoreError> {
        // The copy's consumer is made anew after each reconnection: an
        // ordered consumer notices a restarted server only after two missed
        // heartbeats, and retries with backoff after that.
        let reconnected = Arc::new(Notify::new());
        let signal = reconnected.clone();
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let signal = signal.clone();
                async move {
                    if matches!(event, async_nats::Event::Connected) {
                        signal.notify_one();
                    }
                }
            })
            .connect(crate::nats_servers(&options.nats_url))
            .await
            .map_err(|e| unavailable("connecting", e))?;
        let js = jetstream::new(client.clone());
        let replicas = match js.get_stream(STREAM).await {
            Ok(existing) => existing.cached_info().config.num_replicas.max(options.replicas),
            Err(_) => options.replicas,
        };
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![SUBJECTS.to_string()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_messages_per_subject: 1,
            allow_atomic_publish: true,
            ..Default::default()
        };
        js.create_or_update_stream(config).await.map_err(|e| unavailable("creating the stream", e))?;
        let stream = js.get_stream(STREAM).await.map_err(|e| unavailable("opening the stream", e))?;
        let copy = Arc::new(Copy::new());
        let (applied_tx, applied) = watch::channel(0);
        let feed = tokio::spawn(feed(stream.clone(), copy.clone(), applied_tx, reconnected));
        let directory = Arc::new(SharedDirectory {
            client,
            js,
            stream,
            options,
            copy,
            applied,
            probe: tokio::sync::Mutex::new(None),
            confirmed: Mutex::new(None),
            batches: Semaphore::new(BATCHES_IN_FLIGHT_MAX),
            feed,
        });
        directory.catch_up_now().await?;
        tokio::spawn(confirm(Arc::downgrade(&directory)));
        Ok(directory)
    }

    /// Waits until the copy has applied `sequence`, as long as it moves on
    /// (a first start reads the whole directory).
    async fn wait_applied(&self, sequence: u64) -> Result<(), UserStoreError> {
        let mut applied = self.applied.clone();
        loop {
            let before = *applied.borrow();
            let reached =
                tokio::time::timeout(self.options.ack_timeout, applied.wait_for(|at| *at >= sequence))
                    .await
                    .map(|result| result.is_ok());
            match reached {
                Ok(true) => return Ok(()),
                Ok(false) => return Err(unavailable("the copy's feed", "stopped")),
                Err(_) if *applied.borrow() > before => continue,
                Err(_) => {
                    return Err(unavailable(
                        "the copy's feed",
                        format!("sequence {sequence} not reached in time"),
                    ))
                }
            }
        }
    }

    /// The stream's last sequence, as asked after `called`, with what the
    /// copy had applied just before it was asked: one request in flight at
    /// a time, its answer shared by every caller that came before it was
    /// asked.
    async fn last_sequence(&self, called: Instant) -> Result<(Instant, u64, u64), UserStoreError> {
        let mut probe = self.probe.lock().await;
        if let Some((asked, applied_before, answer)) = probe.as_ref() {
            if *asked > called {
                let last =
                    answer.clone().map_err(|e| unavailable("reading the stream's last sequence", e))?;
                return Ok((*asked, *applied_before, last));
            }
        }
        let asked = Instant::now();
        let applied_before = *self.applied.borrow();
        let answer = match tokio::time::timeout(self.options.ack_timeout, self.stream.get_info()).await {
            Ok(Ok(info)) => Ok(info.state.last_sequence),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("timed out".to_string()),
        };
        if answer.is_ok() {
            metrics::histogram!("wallet_directory_round_trip_seconds").record(asked.elapsed().as_secs_f64());
        }
        *probe = Some((asked, applied_before, answer.clone()));
        let last = answer.map_err(|e| unavailable("reading the stream's last sequence", e))?;
        Ok((asked, applied_before, last))
    }

    async fn catch_up_now(&self) -> Result<(), UserStoreError> {
        let (asked, applied, last) = self.last_sequence(Instant::now()).await?;
        // Compared with what the copy had applied before the question went
        // out: every message applied by then was in the stream when the
        // server answered, while those applied since (writes acknowledged
        // while the answer was on its way) may not have been.
        if last < applied {
            // The stream was made anew (deleted, or restored from an older
            // backup): this copy holds what it no longer does.
            tracing::error!(last, applied, "shared directory: the stream went back; restart this node");
            return Err(unavailable("the stream", format!("went back from sequence {applied} to {last}")));
        }
        self.wait_applied(last).await?;
        let mut confirmed = self.confirmed.lock().unwrap_or_else(PoisonError::into_inner);
        *confirmed = (*confirmed).max(Some(asked));
        Ok(())
    }

    async fn current_now(&self) -> Result<(), UserStoreError> {
        let confirmed = *self.confirmed.lock().unwrap_or_else(PoisonError::into_inner);
        if confirmed.is_some_and(|at| at.elapsed() < STALE_AFTER) {
            return Ok(());
        }
        metrics::counter!("wallet_directory_stale_reads_total").increment(1);
        self.catch_up_now().await
    }

    fn message(&self, change: Change) -> Outgoing {
        let mut headers = HeaderMap::new();
        let expected = match &change.expect {
            Expect::Any => None,
            // A deleted key's subject still ends with its delete; a key this
            // copy holds is refused by the server unless it was deleted since
            // (the caller catches up and reads again).
            Expect::Absent => Some(match self.copy.entry(change.table, &change.key) {
                Some(Entry { revision, value: None }) => revision,
                _ => 0,
            }),
            Expect::Still(stored) => Some(stored.revision),
        };
        if let Some(expected) = expected {
            headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        }
        let payload = match change.value {
            Some(value) => Bytes::from(value),
            None => {
                headers.insert(DELETED_HEADER, "1");
                Bytes::new()
            }
        };
        Outgoing { subject: subject(change.table, &change.key), headers, payload }
    }

    async fn write_now(&self, changes: Vec<Change>) -> Result<Written, UserStoreError> {
        if changes.is_empty() {
            return Ok(Written::Done);
        }
        let batch = match changes.len() {
            1 => None,
            _ => Some(self.batches.acquire().await.map_err(|e| unavailable("writing", e))?),
        };
        let messages = changes.into_iter().map(|change| self.message(change)).collect();
        let published = publish_on(&self.client, &self.js, self.options.ack_timeout, messages).await;
        // The server's batch is closed once it answered.
        drop(batch);
        let outcome = match published {
            Ok(ack) => self.wait_applied(ack.sequence).await.map(|()| Written::Done),
            Err(error) if condition_refused(&error) => Ok(Written::Conflict),
            Err(error) => Err(unavailable("writing", error)),
        };
        let label = match &outcome {
            Ok(Written::Done) => "done",
            Ok(Written::Conflict) => "conflict",
            Err(_) => "failed",
        };
        metrics::counter!("wallet_directory_writes_total", "outcome" => label).increment(1);
        outcome
    }
}

/// Confirms every [`PROBE_EVERY`] that the copy is current, so that reads
/// rarely wait; stops when the directory is dropped.
async fn confirm(directory: Weak<SharedDirectory>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(directory) = directory.upgrade() else { return };
        if let Err(error) = directory.catch_up_now().await {
            tracing::warn!(%error, "shared directory: cannot confirm this node's copy is current");
        }
    }
}

impl Tables for SharedDirectory {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Stored>, UserStoreError> {
        Ok(self
            .copy
            .entry(table, key)
            .and_then(|entry| entry.value.map(|bytes| Stored { bytes, revision: entry.revision })))
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Stored)>, UserStoreError> {
        Ok(self.copy.scan(table, prefix, from, limit))
    }

    fn len(&self, table: Table) -> usize {
        self.copy.len(table)
    }

    fn write(&self, changes: Vec<Change>) -> TablesFuture<'_, Written> {
        Box::pin(self.write_now(changes))
    }

    fn shared(&self) -> bool {
        true
    }

    fn catch_up(&self) -> TablesFuture<'_, ()> {
        Box::pin(self.catch_up_now())
    }

    fn current(&self) -> TablesFuture<'_, ()> {
        Box::pin(self.current_now())
    }

    fn changes(&self, table: Table) -> Option<watch::Receiver<u64>> {
        Some(self.copy.changes(table))
    }

    fn flush(&self) -> TablesFuture<'_, ()> {
        // Every write was stored before it answered.
        Box::pin(async { Ok(()) })
    }
}
