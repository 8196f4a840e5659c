//! The writer of a node's journal: one task that takes whatever the node's
//! shards appended while its previous write was in flight and publishes it
//! as one message on `wallet.journal.<node>`, on the condition that the
//! node's lease subject still ends with this start's lease message. Between
//! writes it renews the node's lease and all its shards' leases in one
//! atomic batch, and takes new shard leases in such a batch too: so every
//! shard lease it holds was last written together with its node lease, which
//! lives shorter, and no shard lease of a node expires while the node's
//! writes can still be stored.
//!
//! Outcomes of a write:
//! - acknowledged: every record in it is durable; callbacks run in append
//!   order;
//! - refused because the node lease changed (nothing of it was stored): the
//!   node is fenced; this and every later record fails with
//!   [`JournalError::Fenced`] (a renewal of this start whose answer was
//!   lost is told apart by reading the lease, and the write goes again);
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
use tokio::sync::{mpsc, oneshot};
use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::{JournalError, OnDurable};
use wallet_actors::record::Record;

use super::batch::{publish, Outgoing};
use super::lease::{self, Holder, Lease, LeaseError, Leased};
use super::message::{encode_frames, Message};
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
    Take(ShardId, oneshot::Sender<Result<Lease, LeaseError>>),
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
pub struct NodeJournal {
    sender: mpsc::UnboundedSender<Command>,
    stats: Arc<JournalStats>,
    held: Arc<Mutex<Held>>,
    holder: Holder,
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    // A panic while holding it leaves plain data behind, still valid.
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a lease take again while the lease changed under it: an earlier
/// start of this node still renewing until it finds itself superseded.
async fn with_retries<F, Fut>(mut take: F) -> Result<Lease, LeaseError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Lease, LeaseError>>,
{
    const ATTEMPTS: u32 = 10;
    let mut attempt = 1;
    loop {
        match take().await {
            Err(LeaseError::Changed { .. }) if attempt < ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            outcome => return outcome,
        }
    }
}

impl NodeJournal {
    /// Takes `node`'s lease for a new start (superseding an earlier start
    /// of the same node, whose writes are refused from then on) and starts
    /// its writer on the current tokio runtime. It writes for no shard
    /// until it took their leases with [`NodeJournal::take`].
    pub async fn start(stream: JournalStream, node: NodeId) -> Result<NodeJournal, LeaseError> {
        let incarnation = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
        let holder = Holder { node, incarnation };
        let node_lease = with_retries(|| lease::take(&stream, Leased::Node(node), holder)).await?;
        let (sender, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(JournalStats::default());
        let held = Arc::new(Mutex::new(Held { node: Some(node_lease), shards: BTreeMap::new() }));
        let writer = Writer {
            stream,
            holder,
            held: held.clone(),
            failed: None,
            stats: stats.clone(),
            #[cfg(feature = "fault-injection")]
            stall: None,
        };
        tokio::spawn(writer.run(receiver));
        Ok(NodeJournal { sender, stats, held, holder })
    }

    /// Takes `shard`'s lease (free, or held by an earlier start of this
    /// node) together with a renewal of every lease the node holds, and
    /// writes for it from then on.
    pub async fn take(&self, shard: ShardId) -> Result<Lease, LeaseError> {
        with_retries(|| async {
            let (reply, taken) = oneshot::channel();
            let closed = || LeaseError::Stream(super::StreamError::Nats("the journal writer stopped".into()));
            self.sender.send(Command::Take(shard, reply)).map_err(|_| closed())?;
            taken.await.map_err(|_| closed())?
        })
        .await
    }

    /// Stops writing and renewing for `shard` (after what was appended
    /// before); its lease then expires.
    pub fn release(&self, shard: ShardId) {
        let _ = self.sender.send(Command::Release(shard));
    }

    /// The shards it writes for now.
    pub fn shards(&self) -> Vec<ShardId> {
        lock(&self.held).shards.keys().copied().collect()
    }

    /// Whether the node lost its lease: it stores nothing more.
    pub fn fenced(&self) -> bool {
        lock(&self.held).node.is_none()
    }

    /// This start of the node, as its lease messages name it.
    pub fn holder(&self) -> Holder {
        self.holder
    }

    /// The node's lease as the writer knows it now (`None` once fenced).
    pub fn node_lease(&self) -> Option<Lease> {
        lock(&self.held).node
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
        // Encoded on the caller's thread, as the file journal does.
        let frames = encode_frames(shard, record);
        if let Err(mpsc::error::SendError(Command::Append(_, _, on_durable))) =
            self.sender.send(Command::Append(shard, frames, on_durable))
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

struct Writer {
    stream: JournalStream,
    holder: Holder,
    held: Arc<Mutex<Held>>,
    /// Set once a write's outcome is unknown, a record could not be
    /// written, or the node was fenced.
    failed: Option<JournalError>,
    stats: Arc<JournalStats>,
    #[cfg(feature = "fault-injection")]
    stall: Option<std::time::Duration>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Command>) {
        let mut renew_ticks = tokio::time::interval(self.stream.options.renew_every);
        renew_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What did not fit into the last message: the first of the next.
        let mut carried: Option<Command> = None;
        loop {
            let first = match carried.take() {
                Some(command) => command,
                None => tokio::select! {
                    biased;
                    _ = renew_ticks.tick() => {
                        let _ = self.renew(None).await;
                        continue;
                    }
                    command = receiver.recv() => match command {
                        Some(command) => command,
                        None => return,
                    },
                },
            };
            let mut message = Message::default();
            carried = self.gather(first, &mut message).await;
            while carried.is_none() {
                match receiver.try_recv() {
                    Ok(command) => carried = self.gather(command, &mut message).await,
                    Err(_) => break,
                }
            }
            self.write(message).await;
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        lock(&self.held)
    }

    /// Adds `command` to `message`, or hands it back if it is a record that
    /// does not fit (it starts the next message). Callbacks keep append
    /// order: a record refused here is answered with the message's others.
    async fn gather(&mut self, command: Command, message: &mut Message) -> Option<Command> {
        match command {
            Command::Take(shard, reply) => {
                // Leases change between writes only: write what came first.
                if !message.is_empty() {
                    return Some(Command::Take(shard, reply));
                }
                let _ = reply.send(self.take(shard).await);
            }
            Command::Release(shard) => drop(self.held().shards.remove(&shard)),
            #[cfg(feature = "fault-injection")]
            Command::StallNextWrite(pause) => self.stall = Some(pause),
            Command::WhenDurable(on_durable) => message.push_barrier(on_durable),
            Command::Append(shard, frames, on_durable) => {
                let holds = self.held().shards.contains_key(&shard);
                let frames = match (frames, holds) {
                    (Err(error), _) => {
                        // As the file journal: a record that cannot be
                        // written stops the journal, so none after it is
                        // durable while it is not.
                        self.failed.get_or_insert(error);
                        message.push_refused(on_durable, error);
                        return None;
                    }
                    (Ok(_), false) => {
                        message.push_refused(on_durable, JournalError::Fenced);
                        return None;
                    }
                    (Ok(frames), true) if frames.len() > self.stream.payload_bytes_max => {
                        tracing::error!(
                            bytes = frames.len(),
                            "a journal record is larger than the server takes"
                        );
                        let error = JournalError::Io { kind: std::io::ErrorKind::InvalidData };
                        self.failed.get_or_insert(error);
                        message.push_refused(on_durable, error);
                        return None;
                    }
                    (Ok(frames), true) => frames,
                };
                if !message.fits(&frames, self.stream.options.message_bytes_max) {
                    return Some(Command::Append(shard, Ok(frames), on_durable));
                }
                message.push_record(frames, on_durable);
            }
        }
        None
    }

    /// Publishes `message` fenced by the node lease, until it is
    /// acknowledged, refused, or its outcome is unknown; then answers its
    /// callbacks in order.
    async fn write(&mut self, message: Message) {
        #[cfg(feature = "fault-injection")]
        if let Some(pause) = self.stall.take() {
            tokio::time::sleep(pause).await;
        }
        let payload = Bytes::from(message.bytes);
        let outcome = loop {
            if payload.is_empty() {
                break self.failed.map_or(Ok(()), Err);
            }
            let node_lease = self.held().node;
            let (Some(node_lease), None) = (node_lease, self.failed) else {
                break Err(self.failed.unwrap_or(JournalError::Fenced));
            };
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Expected-Last-Subject-Sequence", node_lease.sequence.to_string().as_str());
            headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", node_lease.of.subject().as_str());
            let subject = journal_subject(self.holder.node);
            let outgoing = Outgoing { subject, headers, payload: payload.clone() };
            match publish(&self.stream, vec![outgoing]).await.map_err(|error| error.kind()) {
                Ok(_) => {
                    self.stats.messages.fetch_add(1, Ordering::Relaxed);
                    self.stats.records.fetch_add(message.records, Ordering::Relaxed);
                    break Ok(());
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
        };
        for (on_durable, refused) in message.callbacks {
            on_durable(refused.map_or(outcome, Err));
        }
    }

    fn fence(&mut self) {
        tracing::error!(node = self.holder.node.0, "this node lost its lease: it stores nothing more");
        self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
        let mut held = self.held();
        held.node = None;
        held.shards.clear();
        drop(held);
        self.failed = Some(JournalError::Fenced);
    }

    /// Reads the node's lease after a refusal: a newer message of this
    /// start is adopted; anything else means the node is fenced.
    async fn check_node_lease(&mut self, mine: Lease) {
        match lease::holder(&self.stream, mine.of).await {
            Ok(Some((holder, sequence))) if holder == self.holder && sequence > mine.sequence => {
                self.held().node = Some(Lease { sequence, ..mine });
            }
            Ok(_) => self.fence(),
            // Cannot tell whether the node still holds it: stop, as on an
            // unknown outcome.
            Err(error) => {
                tracing::error!(%error, "cannot read the node lease after a refused write; the journal stops");
                self.failed = Some(JournalError::Io { kind: std::io::ErrorKind::Other });
            }
        }
    }

    /// Takes `shard` in one atomic batch with a renewal of all held leases.
    async fn take(&mut self, shard: ShardId) -> Result<Lease, LeaseError> {
        if self.held().shards.len() >= SHARDS_PER_NODE_MAX && !self.held().shards.contains_key(&shard) {
            return Err(LeaseError::TooMany);
        }
        let expected = lease::expected_for_take(&self.stream, Leased::Shard(shard), self.holder).await?;
        self.renew(Some((shard, expected))).await?;
        self.held().shards.get(&shard).copied().ok_or(LeaseError::Changed { of: Leased::Shard(shard) })
    }

    /// Renews the node lease and every shard lease (and takes `new`, a
    /// shard and the sequence its lease subject must end with) in one
    /// atomic batch. If the batch is refused, reads them to learn which were
    /// lost, drops those, and renews the rest once more (without `new`).
    async fn renew(&mut self, new: Option<(ShardId, u64)>) -> Result<(), LeaseError> {
        let mut new = new;
        let mut refused = None;
        for _attempt in 0..2 {
            let mut leases: Vec<Lease> = {
                let held = self.held();
                let Some(node) = held.node.filter(|_| self.failed.is_none()) else {
                    return Err(LeaseError::Changed { of: Leased::Node(self.holder.node) });
                };
                std::iter::once(node).chain(held.shards.values().copied()).collect()
            };
            if let Some((shard, expected)) = new {
                leases.push(Lease { of: Leased::Shard(shard), holder: self.holder, sequence: expected });
            }
            let messages = leases.iter().map(|l| (l.of, l.holder, l.sequence)).collect();
            match lease::publish_leases(&self.stream, messages).await {
                Ok(sequences) => {
                    self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    let mut held = self.held();
                    for (lease, sequence) in leases.into_iter().zip(sequences) {
                        let renewed = Lease { sequence, ..lease };
                        match lease.of {
                            Leased::Node(_) => held.node = Some(renewed),
                            Leased::Shard(shard) => drop(held.shards.insert(shard, renewed)),
                        }
                    }
                    return Ok(());
                }
                Err(LeaseError::Changed { of }) => {
                    self.find_lost(leases, new.map(|(shard, _)| shard)).await;
                    new = None;
                    refused = Some(LeaseError::Changed { of });
                }
                // Unknown outcome: the leases stay; a refused write or the
                // next renewal tells.
                Err(error) => {
                    tracing::warn!(%error, "lease renewal failed");
                    return Err(error);
                }
            }
        }
        Err(refused.unwrap_or(LeaseError::Changed { of: Leased::Node(self.holder.node) }))
    }

    /// After a refused renewal: drops the shards whose lease is not this
    /// start's any more (or cannot be read: not writing a shard is always
    /// safe), adopts newer messages of this start, and fences the node if
    /// its own lease is lost. `taking` was not held yet: it is only read.
    async fn find_lost(&mut self, leases: Vec<Lease>, taking: Option<ShardId>) {
        for mine in leases {
            let holder = lease::holder(&self.stream, mine.of).await;
            let ours =
                matches!(&holder, Ok(Some((h, sequence))) if *h == self.holder && *sequence >= mine.sequence);
            match (mine.of, holder) {
                (Leased::Node(_), Ok(Some((_, sequence)))) if ours => {
                    self.held().node = Some(Lease { sequence, ..mine });
                }
                (Leased::Node(_), Ok(_)) => return self.fence(),
                (Leased::Node(_), Err(error)) => {
                    tracing::warn!(%error, "cannot read the node lease; trying again at the next renewal");
                }
                (Leased::Shard(shard), _) if Some(shard) == taking => {}
                (Leased::Shard(shard), Ok(Some((_, sequence)))) if ours => {
                    self.held().shards.insert(shard, Lease { sequence, ..mine });
                }
                (Leased::Shard(shard), _) => {
                    tracing::warn!(
                        shard = shard.0,
                        "this node lost the shard's lease; it writes nothing more for it"
                    );
                    self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                    self.held().shards.remove(&shard);
                }
            }
        }
    }
}
