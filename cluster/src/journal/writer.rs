//! The writer of a node's journal: one task that takes whatever the node's
//! shards appended while its previous write was in flight and publishes it
//! as one message on `wallet.journal.<node>` (more, in order, past
//! `message_bytes_max`), on the condition that the node's lease subject
//! still ends with this node's lease message. Between writes it renews the
//! node's lease and its shards' leases together, so no write in flight
//! names a lease sequence a renewal has just replaced.
//!
//! Outcomes of a write:
//! - acknowledged: every record in it is durable; callbacks run in append
//!   order;
//! - refused because the node lease changed (nothing of it was stored): the
//!   node is fenced; this and every later record fails with
//!   [`JournalError::Fenced`] (a lease renewal whose answer was lost is
//!   told apart by reading the lease, and the write goes again);
//! - anything else (time-out, lost connection): the message may or may not
//!   be stored, so its records fail, and so does every later one, as a file
//!   journal does after a failed write: only reading the stream back tells
//!   what is durable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use bytes::Bytes;
use tokio::sync::mpsc;
use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::{JournalError, OnDurable};
use wallet_actors::record::{Record, RECORD_FORMAT_VERSION};

use super::batch::{publish_atomic, Outgoing};
use super::lease::{self, Lease, LeaseError, Leased};
use super::{journal_subject, JournalStream};

/// Most shards one node holds: its leases are renewed in one atomic batch,
/// which takes at most 1,000 messages (the server's default), one of them
/// the node's own lease.
pub const SHARDS_PER_NODE_MAX: usize = 999;

/// What the writer did, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Messages acknowledged.
    pub messages: AtomicU64,
    /// Records acknowledged.
    pub records: AtomicU64,
    /// Lease renewals acknowledged (one per renewal of all leases).
    pub renewals: AtomicU64,
    /// Shard leases found lost, and the node lease if it was.
    pub leases_lost: AtomicU64,
}

enum Command {
    Append(ShardId, Result<Vec<u8>, JournalError>, OnDurable),
    WhenDurable(OnDurable),
    Hold(Lease),
    Release(ShardId),
    #[cfg(feature = "fault-injection")]
    StallNextWrite(std::time::Duration),
}

/// The leases a writer holds: its node's (`None` once fenced) and its shards'.
#[derive(Debug, Default)]
struct Held {
    node: Option<Lease>,
    shards: BTreeMap<ShardId, Lease>,
}

/// A node's journal on JetStream. Cheap to clone.
#[derive(Clone)]
pub struct ShardJournal {
    sender: mpsc::UnboundedSender<Command>,
    stats: Arc<JournalStats>,
    held: Arc<Mutex<Held>>,
}

impl ShardJournal {
    /// Takes `node`'s lease and starts its writer on the current tokio
    /// runtime. It writes for no shard until given their leases with
    /// [`ShardJournal::hold`].
    pub async fn start(stream: JournalStream, node: NodeId) -> Result<ShardJournal, LeaseError> {
        let node_lease = lease::take(&stream, Leased::Node(node), node).await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(JournalStats::default());
        let held = Arc::new(Mutex::new(Held { node: Some(node_lease), shards: BTreeMap::new() }));
        let writer = Writer {
            stream,
            node,
            held: held.clone(),
            failed: None,
            renewals: 0,
            stats: stats.clone(),
            #[cfg(feature = "fault-injection")]
            stall: None,
        };
        tokio::spawn(writer.run(receiver));
        Ok(ShardJournal { sender, stats, held })
    }

    /// Writes (and renews) for the shard of `lease` (a shard lease this
    /// node took) from now on.
    pub fn hold(&self, lease: Lease) {
        let _ = self.sender.send(Command::Hold(lease));
    }

    /// Stops writing and renewing for `shard`; its lease then expires.
    pub fn release(&self, shard: ShardId) {
        let _ = self.sender.send(Command::Release(shard));
    }

    /// The shards it writes for now.
    pub fn shards(&self) -> Vec<ShardId> {
        self.held.lock().map(|held| held.shards.keys().copied().collect()).unwrap_or_default()
    }

    /// Whether the node lost its lease: it stores nothing more.
    pub fn fenced(&self) -> bool {
        self.held.lock().map(|held| held.node.is_none()).unwrap_or(true)
    }

    /// Makes the writer stop for `pause` right before its next write, as a
    /// node paused (SIGSTOP, a stalled VM) between deciding to write and
    /// writing: the write then goes with the lease it had (tests only).
    #[cfg(feature = "fault-injection")]
    pub fn stall_next_write(&self, pause: std::time::Duration) {
        let _ = self.sender.send(Command::StallNextWrite(pause));
    }

    /// What it did so far.
    pub fn stats(&self) -> Arc<JournalStats> {
        self.stats.clone()
    }

    /// Queues `record` for `shard`; `on_durable` runs once the stream
    /// acknowledged it, or with the reason it may not be stored.
    pub fn append(&self, shard: ShardId, record: &Record, on_durable: OnDurable) {
        // Encoded on the caller's thread, as the file journal does; each
        // frame names its shard, since a node's message holds many shards.
        let frame = wallet_storage::frame::encode(&(shard, record), RECORD_FORMAT_VERSION)
            .map_err(|_| JournalError::Io { kind: std::io::ErrorKind::InvalidData });
        if let Err(mpsc::error::SendError(Command::Append(_, _, on_durable))) =
            self.sender.send(Command::Append(shard, frame, on_durable))
        {
            on_durable(Err(JournalError::Closed));
        }
    }

    /// Runs `on_durable` once every record appended before is acknowledged.
    pub fn when_durable(&self, on_durable: OnDurable) {
        if let Err(mpsc::error::SendError(Command::WhenDurable(on_durable))) =
            self.sender.send(Command::WhenDurable(on_durable))
        {
            on_durable(Err(JournalError::Closed));
        }
    }
}

/// One message about to be written: its frames and their callbacks (and
/// those of barriers appended after them), in append order.
#[derive(Default)]
struct Message {
    bytes: Vec<u8>,
    records: u64,
    callbacks: Vec<OnDurable>,
}

struct Writer {
    stream: JournalStream,
    node: NodeId,
    held: Arc<Mutex<Held>>,
    /// Set once a write's outcome is unknown or the node was fenced.
    failed: Option<JournalError>,
    renewals: u64,
    stats: Arc<JournalStats>,
    #[cfg(feature = "fault-injection")]
    stall: Option<std::time::Duration>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Command>) {
        let mut renewals = tokio::time::interval(self.stream.options.renew_every);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                _ = renewals.tick() => {
                    self.renew().await;
                    continue;
                }
                command = receiver.recv() => match command {
                    Some(command) => command,
                    None => return,
                },
            };
            let mut messages = Vec::new();
            self.gather(first, &mut messages);
            while messages.len() < 2 {
                match receiver.try_recv() {
                    Ok(command) => self.gather(command, &mut messages),
                    Err(_) => break,
                }
            }
            for message in messages {
                self.write(message).await;
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding it leaves plain data behind, still valid.
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn gather(&mut self, command: Command, messages: &mut Vec<Message>) {
        match command {
            Command::Hold(lease) => match lease.of {
                Leased::Shard(shard) if self.held().shards.len() < SHARDS_PER_NODE_MAX => {
                    self.held().shards.insert(shard, lease);
                }
                of => {
                    tracing::error!(?of, "not held: a node holds at most {SHARDS_PER_NODE_MAX} shard leases")
                }
            },
            Command::Release(shard) => {
                self.held().shards.remove(&shard);
            }
            #[cfg(feature = "fault-injection")]
            Command::StallNextWrite(pause) => self.stall = Some(pause),
            Command::WhenDurable(on_durable) => match messages.last_mut() {
                Some(message) => message.callbacks.push(on_durable),
                None => on_durable(self.failed.map_or(Ok(()), Err)),
            },
            Command::Append(shard, frame, on_durable) => {
                let frame = match (self.failed, frame, self.held().shards.contains_key(&shard)) {
                    (Some(error), _, _) | (None, Err(error), _) => return on_durable(Err(error)),
                    (None, Ok(_), false) => return on_durable(Err(JournalError::Fenced)),
                    (None, Ok(frame), true) => frame,
                };
                let max = self.stream.options.message_bytes_max;
                match messages.last_mut() {
                    Some(message) if message.bytes.len() + frame.len() <= max => {
                        message.bytes.extend_from_slice(&frame);
                        message.records += 1;
                        message.callbacks.push(on_durable);
                    }
                    _ => messages.push(Message { bytes: frame, records: 1, callbacks: vec![on_durable] }),
                }
            }
        }
    }

    /// Publishes `message` fenced by the node lease, until it is
    /// acknowledged, refused, or its outcome is unknown.
    async fn write(&mut self, message: Message) {
        #[cfg(feature = "fault-injection")]
        if let Some(pause) = self.stall.take() {
            tokio::time::sleep(pause).await;
        }
        loop {
            let node_lease = self.held().node;
            let (Some(node_lease), None) = (node_lease, self.failed) else {
                let error = self.failed.unwrap_or(JournalError::Fenced);
                return message.callbacks.into_iter().for_each(|on_durable| on_durable(Err(error)));
            };
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Expected-Last-Subject-Sequence", node_lease.sequence.to_string().as_str());
            headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", node_lease.of.subject().as_str());
            let outgoing = Outgoing {
                subject: journal_subject(self.node),
                headers,
                payload: Bytes::copy_from_slice(&message.bytes),
            };
            match publish_atomic(&self.stream, "", vec![outgoing]).await.map_err(|error| error.kind()) {
                Ok(_) => {
                    self.stats.messages.fetch_add(1, Ordering::Relaxed);
                    self.stats.records.fetch_add(message.records, Ordering::Relaxed);
                    return message.callbacks.into_iter().for_each(|on_durable| on_durable(Ok(())));
                }
                // Fenced, unless it was a renewal of ours whose answer was lost.
                Err(PublishErrorKind::WrongLastSequence) => self.check_node_lease(node_lease).await,
                Err(kind) => {
                    tracing::error!(?kind, "a journal write's outcome is unknown; the journal stops");
                    let kind = match kind {
                        PublishErrorKind::TimedOut => std::io::ErrorKind::TimedOut,
                        _ => std::io::ErrorKind::BrokenPipe,
                    };
                    self.failed = Some(JournalError::Io { kind });
                }
            }
        }
    }

    /// Reads the node's lease after a refusal: a newer message of this node
    /// is adopted; anything else means the node is fenced.
    async fn check_node_lease(&mut self, mine: Lease) {
        match lease::holder(&self.stream, mine.of).await {
            Ok(Some((node, sequence))) if node == self.node && sequence > mine.sequence => {
                self.held().node = Some(Lease { sequence, ..mine });
            }
            Ok(_) => {
                tracing::error!(node = self.node.0, "this node lost its lease: it stores nothing more");
                self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                let mut held = self.held();
                held.node = None;
                held.shards.clear();
                drop(held);
                self.failed = Some(JournalError::Fenced);
            }
            // Cannot tell whether the node still holds it: stop, as on an
            // unknown outcome.
            Err(error) => {
                tracing::error!(%error, "cannot read the node lease after a refused write; the journal stops");
                self.failed = Some(JournalError::Io { kind: std::io::ErrorKind::Other });
            }
        }
    }

    /// Renews the node lease and every shard lease in one atomic batch. If
    /// the batch is refused, reads them to learn which were lost, drops
    /// those, and renews the rest.
    async fn renew(&mut self) {
        for _attempt in 0..2 {
            let leases: Vec<Lease> = {
                let held = self.held();
                match held.node {
                    Some(node) if self.failed.is_none() => {
                        std::iter::once(node).chain(held.shards.values().copied()).collect()
                    }
                    _ => return,
                }
            };
            self.renewals += 1;
            match lease::renew(&self.stream, &leases, self.renewals).await {
                Ok(renewed) => {
                    self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    let mut held = self.held();
                    for lease in renewed {
                        match lease.of {
                            Leased::Node(_) => held.node = Some(lease),
                            Leased::Shard(shard) => drop(held.shards.insert(shard, lease)),
                        }
                    }
                    return;
                }
                Err(LeaseError::Changed { .. }) => self.find_lost(leases).await,
                // Unknown outcome: the leases stay; a refused write or the
                // next renewal tells.
                Err(error) => return tracing::warn!(%error, "lease renewal failed"),
            }
        }
    }

    /// After a refused renewal: drops the shards whose lease is no longer
    /// this node's (adopting newer messages of its own), and fences the node
    /// if its own lease is lost.
    async fn find_lost(&mut self, leases: Vec<Lease>) {
        for mine in leases {
            let holder = lease::holder(&self.stream, mine.of).await;
            match (mine.of, holder) {
                (Leased::Node(_), Ok(Some((node, sequence))))
                    if node == self.node && sequence >= mine.sequence =>
                {
                    self.held().node = Some(Lease { sequence, ..mine });
                }
                (Leased::Node(_), Ok(_)) => return self.check_node_lease(mine).await,
                (Leased::Shard(shard), Ok(Some((node, sequence))))
                    if node == self.node && sequence >= mine.sequence =>
                {
                    self.held().shards.insert(shard, Lease { sequence, ..mine });
                }
                (Leased::Shard(shard), Ok(_)) => {
                    tracing::warn!(
                        shard = shard.0,
                        "this node lost the shard's lease; it writes nothing more for it"
                    );
                    self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                    self.held().shards.remove(&shard);
                }
                // Cannot tell: keep it; the next renewal asks again.
                (of, Err(error)) => tracing::warn!(%error, ?of, "cannot read a lease"),
            }
        }
    }
}
