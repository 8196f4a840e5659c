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
//! Snapshots are the embedded node's (sled and sorted runs), kept on the
//! node's own disk ([`cache`]) at a stream sequence, taken by the same
//! checkpoints in the background ([`wallet_storage::Checkpoints`] over the
//! stream, [`log`]): a start replays the stream after its snapshot, and
//! memory keeps only what changed since.
//!
//! Each checkpoint's snapshot is also published as an image any node can
//! install ([`images`]): a node taking the shards over whose own snapshot
//! is older installs the newest image and replays the stream after it.
//!
//! Not yet here: shards spread over several nodes (placement decides, routing
//! carries messages between nodes).

mod cache;
mod images;
mod log;
mod standby;

pub use images::BUCKET as SNAPSHOT_BUCKET;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::{Clock, EventSink, JournalError, SystemClock};
use wallet_actors::recovery::CompletionError;
use wallet_actors::registry::TransferRecord;
use wallet_actors::shard::ReplayError;
use wallet_actors::{Ledger, LedgerConfig, LedgerError};
use wallet_storage::{CheckpointEvery, CheckpointReport, Checkpoints, Replayed, Serving, StorageError};

use self::images::{Images, Uploader};
use self::log::{StreamLog, StreamReader};
use crate::journal::{meta, JournalOptions, JournalStream, LeaseError, NodeJournal, StreamError};

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
    /// Waits before opening until no other node holds a shard and no
    /// other start of this node runs, however long that takes ([`standby`]).
    pub standby: bool,
    /// Where durable history goes for ledger events, if anywhere.
    pub events: Option<Arc<dyn EventSink>>,
    /// The node's own directory: its snapshots (`snapshots/`), locked
    /// while it runs.
    pub data_dir: PathBuf,
    /// When checkpoints run.
    pub checkpoint: CheckpointEvery,
    /// sled's cache size.
    pub snapshot_cache_bytes: u64,
}

impl NodeOptions {
    /// Defaults for `node` on the server at `nats_url`, keeping its
    /// snapshots in `data_dir`.
    pub fn new(node: NodeId, nats_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> NodeOptions {
        let journal = JournalOptions::new(nats_url);
        let take_wait = journal.shard_lease_ttl * 2;
        NodeOptions {
            node,
            journal,
            ledger: LedgerConfig::default(),
            clock: Arc::new(SystemClock),
            take_wait,
            standby: false,
            events: None,
            data_dir: data_dir.into(),
            checkpoint: CheckpointEvery { bytes: 64 << 20, check_ms: 500 },
            snapshot_cache_bytes: 64 << 20,
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
    /// The node's snapshots could not be read or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Another node wrote the journal after this one read it (this node
    /// lost a lease meanwhile): the shards in memory lack that record, so
    /// no snapshot is taken of them.
    #[error("message {sequence} on {subject} was written by another node after this one read the stream")]
    ForeignWrite {
        /// Its stream sequence.
        sequence: u64,
        /// Its journal subject.
        subject: String,
    },
    /// The node's snapshot was taken further than the stream now goes:
    /// the stream lost acknowledged messages. Delete `snapshots/` in the
    /// node's directory to replay the stream as it is.
    #[error(
        "the node's snapshot was taken at stream sequence {snapshot_at}, but the stream ends at {last}: \
         it lost acknowledged messages (delete the node's snapshots/ to start from the stream as it is)"
    )]
    StreamBehind {
        /// Where the snapshot's replay starts.
        snapshot_at: u64,
        /// The stream's last sequence.
        last: u64,
    },
}

/// What opening read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRecovery {
    /// Records replayed.
    pub records: u64,
    /// The stream sequence the replay started at (its snapshot's; 0: none).
    pub replayed_from: u64,
    /// Accounts read back from the snapshot.
    pub snapshot_accounts: usize,
    /// Commits a crash left with legs unapplied, completed now.
    pub completed_commits: usize,
    /// The position of the image installed in place of the node's own
    /// snapshot (newer than it), if one was.
    pub installed_image: Option<u64>,
    /// How long the start took, in milliseconds: from the end of a
    /// standby's wait (a takeover's own time) or from the open.
    pub elapsed_ms: u64,
    /// Of which taking every shard's lease.
    pub leases_ms: u64,
    /// Of which opening the snapshot (and installing a newer image).
    pub snapshot_ms: u64,
    /// Of which replaying the stream after it.
    pub replay_ms: u64,
}

/// A running node's ledger and its journal.
pub struct NodeLedger {
    /// The ledger.
    pub ledger: Ledger,
    journal: NodeJournal,
    checkpoints: Checkpoints<StreamLog>,
    /// Publishes the checkpoints' snapshot images.
    uploader: Option<Uploader>,
    _lock: wallet_storage::DataDirLock,
    /// What opening read.
    pub recovery: NodeRecovery,
}

impl NodeLedger {
    /// Takes every shard's lease, replays the journal stream after the
    /// node's snapshot, and serves.
    pub async fn open(options: NodeOptions) -> Result<NodeLedger, NodeError> {
        let mut started = Instant::now();
        let lock = wallet_storage::DataDirLock::take(&options.data_dir)?;
        let stream = connect_checked(&options).await?;
        let mut images = open_images(&options, &stream).await;
        let (journal, Started { ledger, checkpoints, mut recovery, uploader }) = loop {
            if options.standby {
                // Its first try may have met a NATS election.
                if images.is_none() {
                    images = open_images(&options, &stream).await;
                }
                stand_by(&options, &stream, images.as_ref()).await;
                started = Instant::now();
            }
            match start_journal_and_ledger(&options, &stream, images.as_ref()).await {
                Ok(opened) => break opened,
                // Its journal dropped, this start's node lease expires;
                // then the wait can end again.
                Err(error) if options.standby && standby::may_stand_by_again(&error) => {
                    tracing::warn!(%error, "the start failed; standing by again");
                }
                Err(error) => return Err(error),
            }
        };
        recovery.elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(node = options.node.0, ?recovery, "node ledger recovered from the journal stream");
        Ok(NodeLedger { ledger, journal, checkpoints, uploader, _lock: lock, recovery })
    }

    /// The node's journal.
    pub fn journal(&self) -> &NodeJournal {
        &self.journal
    }

    /// Takes a checkpoint now.
    pub async fn checkpoint(&self) -> Result<CheckpointReport, StorageError> {
        self.checkpoints.run().await
    }

    /// Every transfer, in memory or in the snapshot's index (audits and
    /// tests: reads them all).
    pub fn all_transfers(&self) -> Result<Vec<TransferRecord>, StorageError> {
        self.checkpoints.snapshots().all_transfers(&self.ledger)
    }

    /// Takes a last checkpoint, stops the shards (everything acknowledged
    /// is durable already), then releases their leases after what they
    /// appended, so the next owner waits out nothing.
    pub async fn shutdown(self) {
        self.stop(true).await;
    }

    /// As [`NodeLedger::shutdown`] without the last checkpoint: the next
    /// start replays what a crash would leave it (tests).
    pub async fn stop_without_checkpoint(self) {
        self.stop(false).await;
    }

    async fn stop(self, checkpoint: bool) {
        self.checkpoints.stop(checkpoint).await;
        // Publishing needs no lease: the next owner starts meanwhile.
        release_all(&self.journal).await;
        metrics::gauge!("wallet_shards_owned").set(self.journal.shards().len() as f64);
        if let Some(uploader) = &self.uploader {
            uploader.finish(LAST_IMAGE_WAIT).await;
        }
    }
}

/// How long a shutdown waits for the last checkpoint's image to be
/// published (the next start, on any node, starts from it).
const LAST_IMAGE_WAIT: Duration = Duration::from_secs(30);

/// A started ledger and what runs beside it.
struct Started {
    ledger: Ledger,
    checkpoints: Checkpoints<StreamLog>,
    recovery: NodeRecovery,
    uploader: Option<Uploader>,
}

/// How long a standby waits out NATS errors while it connects: an election
/// takes seconds; an error that lasts longer (a setting the server refuses,
/// credentials) ends the process, where an orchestrator shows it.
const CONNECT_PATIENCE: Duration = Duration::from_secs(60);

/// Connects to the journal stream and checks its fixed settings; a standby
/// waits out NATS errors meanwhile (a NATS cluster electing a leader), as
/// it waits for the shards, for at most [`CONNECT_PATIENCE`].
async fn connect_checked(options: &NodeOptions) -> Result<JournalStream, NodeError> {
    let deadline = Instant::now() + CONNECT_PATIENCE;
    loop {
        let connected = async {
            let stream = JournalStream::connect(options.journal.clone()).await?;
            meta::ensure_shard_count(&stream, options.ledger.shard_count).await?;
            Ok::<_, NodeError>(stream)
        };
        match connected.await {
            Err(error)
                if options.standby && standby::may_stand_by_again(&error) && Instant::now() < deadline =>
            {
                tracing::warn!(%error, "standing by: cannot reach the journal stream now");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            connected => return connected,
        }
    }
}

/// The bucket of snapshot images, if it can be opened: without it the node
/// serves, and a node taking over replays more of the stream.
async fn open_images(options: &NodeOptions, stream: &JournalStream) -> Option<Images> {
    let opened =
        Images::open(stream, options.ledger.shard_count, &options.data_dir, options.snapshot_cache_bytes)
            .await;
    opened
        .inspect_err(|error| {
            tracing::warn!(%error, "no snapshot images: a node taking over replays more of the stream");
        })
        .ok()
}

/// A standby's wait ([`standby::wait`]), installing each newer snapshot
/// image meanwhile ([`images::prefetch`]), so that its takeover replays
/// only what came after the newest one.
async fn stand_by(options: &NodeOptions, stream: &JournalStream, images: Option<&Images>) {
    let (done, waited) = tokio::sync::watch::channel(false);
    let wait = async {
        standby::wait(stream, options.node, options.ledger.shard_count).await;
        let _ = done.send(true);
    };
    match images {
        Some(images) => {
            tokio::join!(wait, images::prefetch(images, stream, waited));
        }
        None => wait.await,
    }
}

/// Starts the node's journal, then [`start`]; when that fails, what was
/// taken is let go, so that a node that gave up does not keep others
/// waiting for leases it will not use.
async fn start_journal_and_ledger(
    options: &NodeOptions,
    stream: &JournalStream,
    images: Option<&Images>,
) -> Result<(NodeJournal, Started), NodeError> {
    let journal = NodeJournal::start(stream.clone(), options.node).await?;
    match start(options, stream.clone(), &journal, images).await {
        Ok(started) => Ok((journal, started)),
        Err(error) => {
            release_all(&journal).await;
            Err(error)
        }
    }
}

/// Takes every shard's lease, replays the stream after the node's
/// snapshot, starts the shards and their checkpoints.
async fn start(
    options: &NodeOptions,
    stream: JournalStream,
    journal: &NodeJournal,
    images: Option<&Images>,
) -> Result<Started, NodeError> {
    let shard_count = options.ledger.shard_count;
    // A shard held when a standby's wait just found them all free is
    // another standby's, taking them all: no use waiting for it.
    let take_wait = if options.standby { Duration::ZERO } else { options.take_wait };
    let mut phase = Instant::now();
    let mut lap = || std::mem::replace(&mut phase, Instant::now()).elapsed().as_millis() as u64;
    take_every_shard(journal, shard_count, take_wait).await?;
    let leases_ms = lap();
    // Every shard's lease is held (fencing every earlier writer), so what
    // the stream holds now is all there is.
    let (snapshots, installed_image) =
        images::open_snapshots(images, &options.data_dir, &stream, shard_count, options.snapshot_cache_bytes)
            .await?;
    let snapshot_ms = lap();
    let subject = crate::journal::journal_subject(options.node);
    let uploader = images.map(|images| Uploader::start(images.clone(), stream.clone(), subject.clone()));
    let reader = StreamReader::new(stream, subject);
    let Replayed { recovered, completions, report, meta } = snapshots.replay(&reader, shard_count).await?;
    let replay_ms = lap();
    let recovery = NodeRecovery {
        records: report.journal.records,
        replayed_from: meta.replay_from_segment,
        snapshot_accounts: report.snapshot_accounts,
        completed_commits: report.completed_commits,
        installed_image,
        elapsed_ms: 0,
        leases_ms,
        snapshot_ms,
        replay_ms,
    };
    let journal = Arc::new(journal.clone());
    let log = Arc::new(StreamLog {
        reader,
        journal,
        shard_count,
        take_wait: options.take_wait,
        publishing: images.cloned().zip(uploader.clone()),
        snapshots: snapshots.clone(),
    });
    let serving = Serving {
        config: options.ledger.clone(),
        clock: options.clock.clone(),
        events: options.events.clone(),
        every: options.checkpoint,
    };
    let (ledger, checkpoints) =
        Checkpoints::start_ledger(log, snapshots, recovered, completions, meta, serving).await?;
    Ok(Started { ledger, checkpoints, recovery, uploader })
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
/// all; after a renewal found some lost, those), all in one batch, waiting
/// up to `wait` while another node holds some (it died: its node lease
/// expires, which fences it; it is alive: this fails).
pub(crate) async fn take_every_shard(
    journal: &NodeJournal,
    shard_count: u16,
    wait: Duration,
) -> Result<(), LeaseError> {
    let deadline = Instant::now() + wait;
    let held = journal.shards();
    let missing: Vec<ShardId> = (0..shard_count).map(ShardId).filter(|shard| !held.contains(shard)).collect();
    while !missing.is_empty() {
        match journal.take_all(missing.clone()).await {
            Ok(_) => break,
            Err(LeaseError::Held { .. } | LeaseError::Changed { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error),
        }
    }
    metrics::gauge!("wallet_shards_owned").set(journal.shards().len() as f64);
    Ok(())
}
