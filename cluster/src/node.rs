//! A node's ledger on the JetStream journal: the embedded node's engine,
//! unchanged, with its records written through the node's journal
//! ([`NodeJournal`]) instead of files (`docs/ARCHITECTURE.md`, "Cluster
//! mode: a node's ledger").
//!
//! This part runs **one node holding every shard**: it takes every shard's
//! lease before it reads anything, so no other node writes them while it
//! replays; it then reads every node's journal from the start of the stream,
//! in stream order, into the same recovery the embedded node runs, and
//! serves. A later start of the node (after a crash or a kill -9) supersedes
//! this one: from then on the server refuses whatever this one still sends.
//! When the shards fail (a shard panicked, say), they are rebuilt the same
//! way: a barrier, the stream read again, new shards on what it holds. A
//! journal that stopped (a write whose outcome is unknown, or fenced) is not
//! mended: the process restarts.
//!
//! Not yet here: shards spread over several nodes (placement decides, routing
//! carries messages between nodes), snapshots (every start replays the whole
//! stream, and memory holds every transfer).

use std::sync::Arc;
use std::time::{Duration, Instant};

use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::{append_durable, Clock, EventSink, JournalError, Origin, Ports, SystemClock};
use wallet_actors::record::Record;
use wallet_actors::recovery::{CompletionError, Recovered, Recovery};
use wallet_actors::shard::ReplayError;
use wallet_actors::{Ledger, LedgerConfig, LedgerError};

use crate::journal::{
    meta, read_records, JournalOptions, JournalStream, LeaseError, NodeJournal, StreamError,
};

/// How to open a node's ledger.
#[derive(Clone)]
pub struct NodeOptions {
    /// This node.
    pub node: NodeId,
    /// The journal stream and its leases.
    pub journal: JournalOptions,
    /// The ledger's settings.
    pub ledger: LedgerConfig,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// How long opening waits for shard leases another node still holds (a
    /// node that died: its leases expire); past it, opening fails.
    pub take_wait: Duration,
    /// Where durable history goes for ledger events, if anywhere.
    pub events: Option<Arc<dyn EventSink>>,
}

impl NodeOptions {
    /// Defaults for `node` on the server at `nats_url`.
    pub fn new(node: NodeId, nats_url: impl Into<String>) -> NodeOptions {
        let journal = JournalOptions::new(nats_url);
        let take_wait = journal.shard_lease_ttl * 2;
        NodeOptions {
            node,
            journal,
            ledger: LedgerConfig::default(),
            clock: Arc::new(SystemClock),
            take_wait,
            events: None,
        }
    }
}

/// Why a node's ledger could not open.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The stream could not be reached or read.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A lease could not be taken.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// A stored record does not replay: the journal breaks a guarantee.
    #[error("a record in message {sequence} does not replay: {source}")]
    Replay {
        /// The stream sequence of the message holding it.
        sequence: u64,
        /// Why.
        source: ReplayError,
    },
    /// A commit a crash interrupted cannot be completed.
    #[error("an interrupted commit cannot be completed: {0:?}")]
    Completion(Box<CompletionError>),
    /// The journal failed or stopped: the process must restart.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// The ledger did not start.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// What opening read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRecovery {
    /// Records replayed.
    pub records: u64,
    /// The stream sequence of the last message read (0: none).
    pub last_sequence: u64,
    /// Commits a crash left with legs unapplied, completed now.
    pub completed_commits: usize,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
}

/// A running node's ledger and its journal.
pub struct NodeLedger {
    /// The ledger.
    pub ledger: Ledger,
    journal: NodeJournal,
    /// What opening read.
    pub recovery: NodeRecovery,
    stop_supervision: tokio::sync::watch::Sender<bool>,
    supervision: tokio::task::JoinHandle<()>,
}

impl NodeLedger {
    /// Takes every shard's lease, replays the journal stream, and serves.
    pub async fn open(options: NodeOptions) -> Result<NodeLedger, NodeError> {
        let started = Instant::now();
        let shard_count = options.ledger.shard_count;
        let stream = JournalStream::connect(options.journal.clone()).await?;
        meta::ensure_shard_count(&stream, shard_count).await?;
        let journal = NodeJournal::start(stream.clone(), options.node).await?;
        let (ledger, mut recovery) = match start(&options, &stream, &journal).await {
            Ok(started) => started,
            Err(error) => {
                // What was taken is let go, so that a node that gave up
                // does not keep others waiting for leases it will not use.
                release_all(&journal).await;
                return Err(error);
            }
        };
        recovery.elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(node = options.node.0, ?recovery, "node ledger recovered from the journal stream");
        let (stop_supervision, stopped) = tokio::sync::watch::channel(false);
        let rebuilding = (ledger.clone(), journal.clone(), options.take_wait);
        let supervision = ledger.supervise(
            move || {
                let (ledger, journal, stream) = (rebuilding.0.clone(), rebuilding.1.clone(), stream.clone());
                async move { rebuild(&ledger, &journal, &stream, shard_count, rebuilding.2).await }
            },
            stopped,
        );
        Ok(NodeLedger { ledger, journal, recovery, stop_supervision, supervision })
    }

    /// The node's journal.
    pub fn journal(&self) -> &NodeJournal {
        &self.journal
    }

    /// Stops the shards (everything acknowledged is durable already), then
    /// releases their leases after what they appended, so the next owner
    /// waits out nothing.
    pub async fn shutdown(self) {
        let _ = self.stop_supervision.send(true);
        let _ = self.supervision.await;
        self.ledger.shutdown().await;
        release_all(&self.journal).await;
        metrics::gauge!("wallet_shards_owned").set(self.journal.shards().len() as f64);
    }
}

/// Takes every shard's lease, replays the stream and starts the shards.
async fn start(
    options: &NodeOptions,
    stream: &JournalStream,
    journal: &NodeJournal,
) -> Result<(Ledger, NodeRecovery), NodeError> {
    let shard_count = options.ledger.shard_count;
    take_every_shard(journal, shard_count, options.take_wait).await?;
    // Every shard's lease is held (fencing every earlier writer), so what
    // the stream holds now is all there is.
    let (recovered, completions, recovery) = replay(stream, shard_count).await?;
    let events = options.events.clone();
    let ports = Ports { events, ..Ports::new(Arc::new(journal.clone()), options.clock.clone()) };
    let ledger = Ledger::start(recovered, completions, ports, options.ledger.clone()).await?;
    Ok((ledger, recovery))
}

/// Most time releases take at shutdown: with NATS away each would wait for
/// its time-out, and the leases expire by themselves anyway.
const RELEASES_WAIT: Duration = Duration::from_secs(3);

/// Releases every shard lease the journal holds, in at most [`RELEASES_WAIT`].
async fn release_all(journal: &NodeJournal) {
    let releases = async {
        for shard in journal.shards() {
            journal.release(shard).await;
        }
    };
    if tokio::time::timeout(RELEASES_WAIT, releases).await.is_err() {
        tracing::warn!("releasing the shard leases took too long; the rest expire by themselves");
    }
}

/// Takes the lease of every shard the journal does not hold (at open,
/// all; after a renewal found some lost, those), waiting up to `wait` for
/// leases another node holds (it died: they expire; it is alive: this fails).
async fn take_every_shard(journal: &NodeJournal, shard_count: u16, wait: Duration) -> Result<(), LeaseError> {
    let deadline = Instant::now() + wait;
    let held = journal.shards();
    for shard in (0..shard_count).map(ShardId).filter(|shard| !held.contains(shard)) {
        loop {
            match journal.take(shard).await {
                Ok(_) => break,
                Err(LeaseError::Held { .. } | LeaseError::Changed { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
    metrics::gauge!("wallet_shards_owned").set(journal.shards().len() as f64);
    Ok(())
}

/// Reads every node's journal from the start of the stream into a recovery,
/// in stream order, and completes the commits a crash interrupted.
async fn replay(
    stream: &JournalStream,
    shard_count: u16,
) -> Result<(Recovered, Vec<Record>, NodeRecovery), NodeError> {
    let mut recovery = Recovery::new(shard_count);
    let mut last_sequence = 0;
    read_records(stream, 0, |sequence, _origin, record| {
        last_sequence = sequence;
        recovery.apply(record).map_err(|source| NodeError::Replay { sequence, source })
    })
    .await?;
    let records = recovery.records();
    let (recovered, completions) = recovery.finish().map_err(NodeError::Completion)?;
    let report = NodeRecovery { records, last_sequence, completed_commits: completions.len(), elapsed_ms: 0 };
    Ok((recovered, completions, report))
}

/// New shards on what the stream holds, after the old ones failed: once
/// the barrier is acknowledged, everything they appended is on the stream
/// (or the journal stopped, and only a restart can tell what is).
async fn rebuild(
    ledger: &Ledger,
    journal: &NodeJournal,
    stream: &JournalStream,
    shard_count: u16,
    take_wait: Duration,
) -> Result<(), NodeError> {
    let started = Instant::now();
    ledger.halt().await;
    // A shard whose lease a renewal found lost fails every write: it is
    // taken again (once whoever took it lets it go) before the replay, or
    // the shards are not rebuilt and the failure stands.
    take_every_shard(journal, shard_count, take_wait).await?;
    append_durable(journal, Origin::Node, Record::Batch(Vec::new())).await?;
    let (recovered, completions, report) = replay(stream, shard_count).await?;
    ledger.restart(recovered, completions).await?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    tracing::info!(elapsed_ms, records = report.records, "shards rebuilt from the journal stream");
    Ok(())
}
