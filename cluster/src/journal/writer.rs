//! The writer of a node's journal: one task that takes whatever the node's
//! shards appended while its previous write was in flight and publishes it
//! as one message on `wallet.journal.<node>`, on the condition that the
//! node's lease subject still ends with this start's lease message. Between
//! writes it renews the node's lease and all its shards' leases in one
//! atomic batch, and takes new shard leases in such a batch too: so every
//! shard lease it holds was last written together with its node lease, which
//! lives shorter, and no lease of a shard it writes for expires while its
//! writes can still be stored. Renewals are due every `renew_every`, also
//! while writes queue up back to back.
//!
//! Outcomes of a write:
//! - acknowledged: every record in it is durable; callbacks run in append
//!   order;
//! - refused because the node lease changed (nothing of it was stored): the
//!   node is fenced; this and every later record fails with
//!   [`JournalError::Fenced`] (a renewal of this start whose answer was
//!   lost is told apart by reading the lease, and the write goes again);
//! - no answer in time, or a lost connection: the message may or may not be
//!   stored. Every message carries a `Nats-Msg-Id` of its own, so the
//!   writer asks again with the same id (renewing the leases when due
//!   meanwhile): the server stores it once, whether or not the first try
//!   got there, and the answer to a later try settles the outcome (a server
//!   that stalled for a second, a reconnect). Nothing later is sent
//!   meanwhile, so order is kept. Past [`JournalOptions::node_lease_ttl`]
//!   of asking (the node's lease is most likely gone by then) its records
//!   fail, and so does every later one, as a file journal does after a
//!   failed write: only reading the stream back tells what is durable.
//!
//! [`JournalOptions::node_lease_ttl`]: super::JournalOptions::node_lease_ttl

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::ErrorCode;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::{Journal, JournalError, OnDurable, Origin};
use wallet_actors::record::Record;

use super::batch::{condition_unchecked, jetstream_code, publish, Outgoing};
use super::fence::{self, Fence};
use super::lease::{self, Holder, Lease, LeaseError, LeaseState, Leased};

mod leases;
use super::message::{cut_within, encode_frames, Message};
use super::{journal_subject, JournalStream};

/// Most shards one node holds: its leases are renewed in one atomic batch,
/// which takes at most 1,000 messages (the server's default), one of them
/// the node's own lease.
pub const SHARDS_PER_NODE_MAX: usize = 999;

/// Shard lease reads a take has in flight at once.
const LEASE_READS_IN_FLIGHT: usize = 16;

/// How long the writer waits before it asks again about a write whose
/// outcome is unknown (a lost connection fails at once).
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// What the writer did, for benchmarks and metrics.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Messages acknowledged.
    pub messages: AtomicU64,
    /// Records acknowledged.
    pub records: AtomicU64,
    /// Bytes of the messages acknowledged.
    pub bytes: AtomicU64,
    /// Lease renewals acknowledged (one per renewal of all leases).
    pub renewals: AtomicU64,
    /// Shard leases found lost, and the node lease if it was.
    pub leases_lost: AtomicU64,
    /// Tries of a write asked again after its outcome was unknown.
    pub retries: AtomicU64,
}

enum Command {
    /// A record's frames (or why they could not be made).
    Append {
        origin: Origin,
        frames: Result<Vec<u8>, JournalError>,
        on_durable: OnDurable,
        /// The rest of a record whose first part went in an earlier message.
        continues: bool,
    },
    WhenDurable(OnDurable),
    /// The shards wanted, and those not held yet with the sequences their
    /// lease subjects must end with.
    Take(Vec<ShardId>, Vec<(ShardId, u64)>, oneshot::Sender<Result<Vec<Lease>, LeaseError>>),
    Release(ShardId, oneshot::Sender<()>),
    #[cfg(feature = "fault-injection")]
    StallNextWrite(std::time::Duration),
}

/// What one try of a journal write came to.
enum Tried {
    /// Acknowledged (the first try's, if this was asked again).
    Stored,
    /// Refused: the node lease's subject does not end where this start
    /// thinks (fenced, or a renewal of ours whose answer was lost).
    WrongLease,
    /// Stored or not: asking again with the same id settles it.
    Unknown(PublishErrorKind),
    /// An error that asking again does not settle.
    Failed(PublishErrorKind),
}

/// What gathering a command leaves to do.
enum Next {
    /// Gather more into the same message.
    More,
    /// Write the message; this command starts the next one.
    Carry(Command),
    /// Write the message now (leases were just taken or released: a due
    /// renewal is looked at before anything else).
    Stop,
}

/// The leases a writer holds: its node's (`None` once fenced) and its shards'.
#[derive(Debug, Default)]
struct Held {
    node: Option<Lease>,
    shards: BTreeMap<ShardId, Lease>,
    /// The journal stopped (fenced, or a write's outcome unknown): it
    /// writes, renews and releases nothing more.
    stopped: bool,
}

/// A node's journal on JetStream. Cheap to clone.
#[derive(Clone)]
pub struct NodeJournal {
    stream: JournalStream,
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
async fn with_retries<T, F, Fut>(mut take: F) -> Result<T, LeaseError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, LeaseError>>,
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
        fence::join(&stream, node).await?;
        let node_lease = with_retries(|| lease::take(&stream, Leased::Node(node), holder)).await?;
        let stream_renew_every = stream.options.renew_every;
        let (sender, receiver) = mpsc::unbounded_channel();
        let stats = Arc::new(JournalStats::default());
        let held =
            Arc::new(Mutex::new(Held { node: Some(node_lease), shards: BTreeMap::new(), stopped: false }));
        let writer = Writer {
            stream: stream.clone(),
            holder,
            held: held.clone(),
            failed: None,
            next_renewal: Instant::now() + stream_renew_every,
            writes: 0,
            stats: stats.clone(),
            #[cfg(feature = "fault-injection")]
            stall: None,
        };
        tokio::spawn(writer.run(receiver));
        Ok(NodeJournal { stream, sender, stats, held, holder })
    }

    /// Takes `shard`'s lease (free, held by an earlier start of this node,
    /// or by a fenced start of another) together with a renewal of every
    /// lease the node holds, and writes for it from then on.
    pub async fn take(&self, shard: ShardId) -> Result<Lease, LeaseError> {
        let taken = self.take_all(vec![shard]).await?;
        taken.into_iter().next().ok_or(LeaseError::Changed { of: Leased::Shard(shard) })
    }

    /// Takes the leases of `shards` as [`NodeJournal::take`] does, all in
    /// one atomic batch: all of them, or none. The leases are read here,
    /// not in the writer, whose renewals must not wait behind the reads.
    pub async fn take_all(&self, shards: Vec<ShardId>) -> Result<Vec<Lease>, LeaseError> {
        with_retries(|| async {
            let new = self.to_take(&shards).await?;
            let (reply, taken) = oneshot::channel();
            let closed = || LeaseError::Stream(super::StreamError::Nats("the journal writer stopped".into()));
            self.sender.send(Command::Take(shards.clone(), new, reply)).map_err(|_| closed())?;
            taken.await.map_err(|_| closed())?
        })
        .await
    }

    /// The shards of `shards` not held yet, each with the sequence its
    /// lease subject must end with for this start to take it: free,
    /// released, held by an earlier start of this node, or by a start of
    /// another node that is fenced for good ([`fence::fence`]); `Held` if
    /// another node's start may still write.
    async fn to_take(&self, shards: &[ShardId]) -> Result<Vec<(ShardId, u64)>, LeaseError> {
        let held = self.shards();
        let mut wanted: Vec<ShardId> = shards.iter().copied().filter(|shard| !held.contains(shard)).collect();
        wanted.sort_unstable();
        wanted.dedup();
        if held.len() + wanted.len() > SHARDS_PER_NODE_MAX {
            return Err(LeaseError::TooMany);
        }
        let reads = futures_util::stream::iter(wanted.iter().copied())
            .map(|shard| lease::state(&self.stream, Leased::Shard(shard)))
            .buffered(LEASE_READS_IN_FLIGHT)
            .collect::<Vec<_>>();
        let rounds = 1 + wanted.len() / LEASE_READS_IN_FLIGHT;
        let deadline = self.stream.options.ack_timeout * rounds as u32;
        let states = tokio::time::timeout(deadline, reads)
            .await
            .map_err(|_| super::StreamError::Nats("reading the shard leases timed out".into()))?;
        let states = states.into_iter().collect::<Result<Vec<LeaseState>, super::StreamError>>()?;
        if states.contains(&LeaseState::Free) {
            fence::evict_expired(&self.stream).await?;
        }
        let mut fenced: HashMap<Holder, bool> = HashMap::new();
        let mut new = Vec::with_capacity(wanted.len());
        for (shard, state) in wanted.into_iter().zip(states) {
            let of = Leased::Shard(shard);
            match state {
                LeaseState::Held { holder, sequence } if holder.node != self.holder.node => {
                    let gone = match fenced.get(&holder) {
                        Some(gone) => *gone,
                        None => {
                            let gone = fence::fence(&self.stream, holder, sequence).await? == Fence::Fenced;
                            fenced.insert(holder, gone);
                            gone
                        }
                    };
                    if !gone {
                        return Err(LeaseError::Held { of, by: holder.node });
                    }
                    new.push((shard, sequence));
                }
                state => new.push((shard, state.last_sequence())),
            }
        }
        Ok(new)
    }

    /// Stops writing and renewing for `shard` once what was appended
    /// before is written, then releases its lease: another node may take
    /// it at once. Returns when done (if the release itself fails, the
    /// lease expires instead).
    pub async fn release(&self, shard: ShardId) {
        let (done, released) = oneshot::channel();
        if self.sender.send(Command::Release(shard, done)).is_ok() {
            let _ = released.await;
        }
    }

    /// The shards it writes for now.
    pub fn shards(&self) -> Vec<ShardId> {
        lock(&self.held).shards.keys().copied().collect()
    }

    /// Whether the node lost its lease: it stores nothing more.
    pub fn fenced(&self) -> bool {
        lock(&self.held).node.is_none()
    }

    /// Whether the journal stopped, fenced or after a write whose outcome
    /// is unknown: it stores, renews and releases nothing more, and its
    /// shards are for others to take once their leases expire.
    pub fn stopped(&self) -> bool {
        lock(&self.held).stopped
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

    /// Queues `record` of `origin`; `on_durable` runs once the stream
    /// acknowledged it, or with the reason it may not be stored (a shard's
    /// record needs the shard's lease, the node's own only the node's).
    pub fn append(&self, origin: Origin, record: &Record, on_durable: OnDurable) {
        // Encoded on the caller's thread, as the file journal does.
        let frames = encode_frames(origin, record);
        if let Err(mpsc::error::SendError(Command::Append { on_durable, .. })) =
            self.sender.send(Command::Append { origin, frames, on_durable, continues: false })
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
    /// When the leases are renewed next, whether or not writes are queued.
    next_renewal: Instant,
    /// Messages written so far: with the holder, each one's `Nats-Msg-Id`.
    writes: u64,
    stats: Arc<JournalStats>,
    #[cfg(feature = "fault-injection")]
    stall: Option<std::time::Duration>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::UnboundedReceiver<Command>) {
        // What did not fit into the last message: the first of the next.
        let mut carried: Option<Command> = None;
        loop {
            // Due renewals go first, also while writes queue up back to back.
            if Instant::now() >= self.next_renewal {
                let _ = self.renew(Vec::new()).await;
            }
            let first = match carried.take() {
                Some(command) => command,
                None => tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(self.next_renewal.into()) => continue,
                    command = receiver.recv() => match command {
                        Some(command) => command,
                        None => return,
                    },
                },
            };
            let mut message = Message::default();
            let mut next = self.gather(first, &mut message).await;
            while let Next::More = next {
                match receiver.try_recv() {
                    Ok(command) => next = self.gather(command, &mut message).await,
                    Err(_) => break,
                }
            }
            if let Next::Carry(command) = next {
                carried = Some(command);
            }
            self.write(message).await;
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        lock(&self.held)
    }

    /// Adds `command` to `message`, or hands back what does not fit (it
    /// starts the next message). Callbacks keep append order: a record
    /// refused here is answered in its turn with the message's others.
    async fn gather(&mut self, command: Command, message: &mut Message) -> Next {
        match command {
            // Leases change between writes only: what came first is written
            // first, and a due renewal is looked at right after.
            Command::Take(shards, new, reply) => {
                if !message.is_empty() {
                    return Next::Carry(Command::Take(shards, new, reply));
                }
                let _ = reply.send(self.take(shards, new).await);
                return Next::Stop;
            }
            Command::Release(shard, done) => {
                if !message.is_empty() {
                    return Next::Carry(Command::Release(shard, done));
                }
                self.release(shard).await;
                let _ = done.send(());
                return Next::Stop;
            }
            #[cfg(feature = "fault-injection")]
            Command::StallNextWrite(pause) => self.stall = Some(pause),
            Command::WhenDurable(on_durable) => message.push_barrier(on_durable),
            Command::Append { origin, frames, on_durable, continues } => {
                let holds = match origin {
                    Origin::Shard(shard) => self.held().shards.contains_key(&shard),
                    Origin::Node => true,
                };
                match (frames, holds) {
                    (Err(error), _) => self.refuse(message, on_durable, error, true),
                    // The rest of a flush whose first part may be stored.
                    (Ok(_), false) if continues => {
                        let error = JournalError::Io { kind: std::io::ErrorKind::Other };
                        self.refuse(message, on_durable, error, false)
                    }
                    // A stopped journal holds no shard: its reason, not the lease's.
                    (Ok(_), false) => {
                        let error = self.failed.unwrap_or(JournalError::NotHeld);
                        self.refuse(message, on_durable, error, false)
                    }
                    (Ok(frames), true) => {
                        return self.add_record(message, origin, frames, on_durable, continues)
                    }
                }
            }
        }
        Next::More
    }

    /// Answers `on_durable` with `error` in its turn. A record that cannot
    /// be written (`stops`) stops the journal, as in the file journal, so
    /// none after it is durable while it is not.
    fn refuse(&mut self, message: &mut Message, on_durable: OnDurable, error: JournalError, stops: bool) {
        if stops {
            self.stop(error);
        }
        message.push_refused(on_durable, error);
    }

    /// Stops the journal with `error`: nothing is written, renewed or
    /// released from now on; its shards' leases expire.
    fn stop(&mut self, error: JournalError) {
        self.failed.get_or_insert(error);
        let mut held = self.held();
        held.stopped = true;
        held.shards.clear();
    }

    /// Adds a record's frames, cutting a record larger than a message at a
    /// frame boundary (an outbox flush holds many) and handing back the
    /// rest, with the callback, for the next message.
    fn add_record(
        &mut self,
        message: &mut Message,
        origin: Origin,
        frames: Vec<u8>,
        on_durable: OnDurable,
        continues: bool,
    ) -> Next {
        let max = self.stream.options.message_bytes_max;
        if message.fits(&frames, max) {
            message.push_record(frames, on_durable, continues);
            return Next::More;
        }
        if !message.is_empty() {
            return Next::Carry(Command::Append { origin, frames: Ok(frames), on_durable, continues });
        }
        let cut = cut_within(&frames, max);
        if cut > self.stream.payload_bytes_max {
            tracing::error!(bytes = cut, "a journal record is larger than the server takes");
            let error = JournalError::Io { kind: std::io::ErrorKind::InvalidData };
            self.refuse(message, on_durable, error, true);
            return Next::More;
        }
        if cut == frames.len() {
            message.push_record(frames, on_durable, continues);
            return Next::More;
        }
        message.push_part(&frames[..cut]);
        let rest = Ok(frames[cut..].to_vec());
        Next::Carry(Command::Append { origin, frames: rest, on_durable, continues: true })
    }

    /// Publishes `message` fenced by the node lease, until it is
    /// acknowledged, refused, or its outcome is unknown; then answers its
    /// callbacks in order.
    async fn write(&mut self, message: Message) {
        // A stall waits for a write that stores something (an empty one,
        // a barrier alone, would spend it for nothing).
        #[cfg(feature = "fault-injection")]
        if !message.bytes.is_empty() {
            if let Some(pause) = self.stall.take() {
                tokio::time::sleep(pause).await;
            }
        }
        let payload = Bytes::from(message.bytes);
        let outcome = match payload.is_empty() {
            true => self.failed.map_or(Ok(()), Err),
            false => self.store(&payload, message.records).await,
        };
        for callback in message.callbacks {
            callback.answer(outcome);
        }
    }

    /// Publishes `payload` (a message of `records` records) under an id of
    /// its own until an answer settles whether it is stored: asked again
    /// while the outcome is unknown, for at most a node lease.
    async fn store(&mut self, payload: &Bytes, records: u64) -> Result<(), JournalError> {
        self.writes += 1;
        let id = format!("{}-{:x}-{}", self.holder.node.0, self.holder.incarnation, self.writes);
        let first_sent = Instant::now();
        let mut asked_again = false;
        loop {
            // Due renewals go first, also while a write is asked again.
            if asked_again && Instant::now() >= self.next_renewal {
                let _ = self.renew(Vec::new()).await;
            }
            let node_lease = self.held().node;
            let (Some(node_lease), None) = (node_lease, self.failed) else {
                return Err(match self.failed.unwrap_or(JournalError::Fenced) {
                    // An earlier try may be stored: not "refused".
                    JournalError::Fenced if asked_again => {
                        JournalError::Io { kind: std::io::ErrorKind::Other }
                    }
                    error => error,
                });
            };
            let sent = Instant::now();
            match self.publish(payload, &id, node_lease).await {
                Tried::Stored => {
                    self.stats.messages.fetch_add(1, Ordering::Relaxed);
                    self.stats.records.fetch_add(records, Ordering::Relaxed);
                    self.stats.bytes.fetch_add(payload.len() as u64, Ordering::Relaxed);
                    // The file journal's names: a write's records, and the
                    // time until they were durable (here the stream's
                    // acknowledgement, which with `sync_interval: always`
                    // follows the server's fsync).
                    metrics::histogram!("wallet_journal_batch_records").record(records as f64);
                    metrics::histogram!("wallet_journal_fsync_seconds").record(sent.elapsed().as_secs_f64());
                    return Ok(());
                }
                // Fenced, unless it was a renewal of ours whose answer was lost.
                Tried::WrongLease => self.check_node_lease(node_lease).await,
                Tried::Unknown(kind) if first_sent.elapsed() < self.stream.options.node_lease_ttl => {
                    tracing::warn!(?kind, "a journal write's outcome is unknown; asking again with its id");
                    metrics::counter!("wallet_journal_write_retries_total").increment(1);
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    asked_again = true;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Tried::Unknown(kind) | Tried::Failed(kind) => {
                    tracing::error!(?kind, "a journal write's outcome is unknown; the journal stops");
                    let kind = match kind {
                        PublishErrorKind::TimedOut => std::io::ErrorKind::TimedOut,
                        _ => std::io::ErrorKind::BrokenPipe,
                    };
                    self.stop(JournalError::Io { kind });
                }
            }
        }
    }

    /// Publishes `payload` once as message `id`, fenced by `node_lease`.
    async fn publish(&self, payload: &Bytes, id: &str, node_lease: Lease) -> Tried {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", id);
        headers.insert("Nats-Expected-Last-Subject-Sequence", node_lease.sequence.to_string().as_str());
        headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", node_lease.of.subject().as_str());
        let subject = journal_subject(self.holder.node);
        let outgoing = Outgoing { subject, headers, payload: payload.clone() };
        let Err(error) = publish(&self.stream, vec![outgoing]).await else { return Tried::Stored };
        match error.kind() {
            PublishErrorKind::WrongLastSequence => Tried::WrongLease,
            // Another node's conditional write on the node lease subject
            // in flight (an eviction), or a new leader catching up: not
            // stored, and not refused for the lease; asking again tells.
            kind if condition_unchecked(&error) => Tried::Unknown(kind),
            // "No stream": no responders while a NATS cluster elects the
            // stream's leader.
            kind @ (PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::StreamNotFound) => Tried::Unknown(kind),
            // A replicated stream still settling an earlier try of this id.
            kind if jetstream_code(&error) == Some(ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT) => {
                Tried::Unknown(kind)
            }
            kind => Tried::Failed(kind),
        }
    }
}

/// The ledger's port: a node's ledger writes through its journal.
impl Journal for NodeJournal {
    fn append(&self, origin: Origin, record: Record, on_durable: OnDurable) {
        NodeJournal::append(self, origin, &record, on_durable);
    }

    fn when_durable(&self, on_durable: OnDurable) {
        NodeJournal::when_durable(self, on_durable);
    }
}
