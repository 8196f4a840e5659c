//! The embedded single node: one process, one data directory, no NATS.
//!
//! Layout of the data directory:
//! - `meta.json`: settings fixed at creation (the shard count);
//! - `journal/`: the file journal's segments;
//! - `snapshot/`: the sled snapshot store (accounts, holds, risk decisions);
//! - `index/`: the transfers of retired journal segments, in sorted runs;
//! - `history/`: account history older than the last checkpoint, in sorted runs;
//! - `LOCK`: held while a process has the directory open.
//!
//! Opening recovers: it loads the snapshot, reads the journal from the
//! snapshot's segment on (cutting a torn tail), replays it into the shards,
//! completes any commit a crash interrupted, then serves. While serving, a
//! checkpoint runs whenever a journal segment's worth of records has been
//! written, and once more at shutdown; see [`EmbeddedLedger::checkpoint`].

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wallet_actors::ports::{Clock, SystemClock};
use wallet_actors::{Ledger, LedgerConfig};

use crate::checkpoint::CheckpointReport;
use crate::journal::{FileJournal, JournalOptions, JournalStats, ReadSummary};
use crate::log::{FileJournalDir, FileLog};
use crate::snapshots::{CheckpointEvery, Checkpoints, LocalSnapshots, Replayed, Serving};
use crate::StorageError;

/// How to open an embedded ledger.
#[derive(Clone)]
pub struct EmbeddedOptions {
    /// The ledger's settings.
    pub ledger: LedgerConfig,
    /// The journal's settings.
    pub journal: JournalOptions,
    /// The clock (tests move it by hand).
    pub clock: Arc<dyn Clock>,
    /// A checkpoint runs once the journal has grown by this many bytes.
    pub checkpoint_bytes: u64,
    /// How often the journal's growth is looked at.
    pub checkpoint_check_ms: u64,
    /// sled's cache size.
    pub snapshot_cache_bytes: u64,
    /// Where durable history goes for the ledger events (a publisher), if anywhere.
    pub events: Option<Arc<dyn wallet_actors::ports::EventSink>>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            ledger: LedgerConfig::default(),
            journal: JournalOptions::default(),
            clock: Arc::new(SystemClock),
            checkpoint_bytes: 64 << 20,
            checkpoint_check_ms: 500,
            snapshot_cache_bytes: 64 << 20,
            events: None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[allow(dead_code)] // `format` is checked by serde's presence, kept for later versions.
struct Meta {
    format: u32,
    shard_count: u16,
}

/// A running embedded ledger and the storage under it.
pub struct EmbeddedLedger {
    /// The ledger.
    pub ledger: Ledger,
    journal: Arc<FileJournal>,
    checkpoints: Checkpoints<FileLog>,
    _lock: DataDirLock,
    /// What recovery found when this ledger opened.
    pub recovery: RecoveryReport,
    data_dir: PathBuf,
}

/// What recovery found when a ledger opened: what it read, and the traces
/// a crash leaves at the points it may interrupt (the crash tests count
/// them to show their kills landed there).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// What it read from the journal.
    pub journal: ReadSummary,
    /// Accounts read back from the snapshot (those the journal tail names;
    /// the others stay on disk until first named).
    pub snapshot_accounts: usize,
    /// Commits whose legs some shard had not applied (a crash between a
    /// `Commit` and its `CommitApplied`), completed now.
    pub completed_commits: usize,
    /// Checkpoints that made their marker durable but not their meta.
    pub checkpoint_markers_after_snapshot: usize,
    /// Segments a checkpoint retired but had not deleted yet.
    pub leftover_segments: usize,
    /// Index and history run files no manifest lists (a checkpoint or a
    /// merge stopped while writing them), deleted now.
    pub leftover_runs: usize,
}

impl EmbeddedLedger {
    /// Opens (creating if needed) the ledger stored in `data_dir`.
    pub async fn open(data_dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedLedger, StorageError> {
        let lock = DataDirLock::take(data_dir)?;
        EmbeddedLedger::open_locked(data_dir, options, lock).await
    }

    /// As [`EmbeddedLedger::open`], with the directory's lock already taken
    /// (by a caller that opens more in it first).
    pub async fn open_locked(
        data_dir: &Path,
        options: EmbeddedOptions,
        lock: DataDirLock,
    ) -> Result<EmbeddedLedger, StorageError> {
        let started = std::time::Instant::now();
        let shard_count = check_meta(data_dir, options.ledger.shard_count)?;
        let journal_dir = FileJournalDir(data_dir.join("journal"));
        let opening = std::time::Instant::now();
        let snapshots = LocalSnapshots::open(data_dir, options.snapshot_cache_bytes).await?;
        tracing::debug!(opened_ms = opening.elapsed().as_millis() as u64, "snapshot opened");
        let Replayed { recovered, completions, report, meta } =
            snapshots.replay(&journal_dir, shard_count).await?;
        tracing::info!(replayed_ms = started.elapsed().as_millis() as u64, ?report, "recovered");
        let journal = Arc::new(FileJournal::start(&journal_dir.0, options.journal.clone())?);
        let log = Arc::new(FileLog { dir: journal_dir, journal: journal.clone() });
        let serving = Serving {
            config: options.ledger,
            clock: options.clock,
            events: options.events,
            every: CheckpointEvery { bytes: options.checkpoint_bytes, check_ms: options.checkpoint_check_ms },
        };
        let (ledger, checkpoints) =
            Checkpoints::start_ledger(log, snapshots, recovered, completions, meta, serving).await?;
        Ok(EmbeddedLedger {
            ledger,
            journal,
            checkpoints,
            _lock: lock,
            recovery: report,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Takes a checkpoint now: snapshot what changed, move older transfers
    /// to the on-disk index, and delete the journal segments it covers.
    pub async fn checkpoint(&self) -> Result<CheckpointReport, StorageError> {
        self.checkpoints.run().await
    }

    /// Every transfer, in memory or in the on-disk index, with its current
    /// status (audits and tests: reads them all).
    pub fn all_transfers(&self) -> Result<Vec<wallet_actors::registry::TransferRecord>, StorageError> {
        self.checkpoints.snapshots().all_transfers(&self.ledger)
    }

    /// The journal's counters.
    pub fn journal_stats(&self) -> Arc<JournalStats> {
        self.journal.stats()
    }

    /// Where the data lives.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the shards, makes everything acknowledged durable, and takes a
    /// last checkpoint so the next start replays little.
    pub async fn shutdown(self) {
        self.stop(true).await;
    }

    /// Stops like a crash would, as far as storage can tell: no last
    /// checkpoint, so the next start replays the journal (tests).
    pub async fn stop_without_checkpoint(self) {
        self.stop(false).await;
    }

    async fn stop(self, checkpoint: bool) {
        self.checkpoints.stop(checkpoint).await;
        let journal = self.journal.clone();
        let _ = tokio::task::spawn_blocking(move || journal.close()).await;
    }
}

fn check_meta(data_dir: &Path, shard_count: u16) -> Result<u16, StorageError> {
    let path = data_dir.join("meta.json");
    match fs::read(&path) {
        Ok(bytes) => {
            let meta: Meta = serde_json::from_slice(&bytes)
                .map_err(|_| StorageError::Corrupt { path: path.clone(), offset: 0 })?;
            if meta.shard_count != shard_count {
                return Err(StorageError::ShardCountMismatch {
                    found: meta.shard_count,
                    expected: shard_count,
                });
            }
            Ok(meta.shard_count)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let text = format!("{{\"format\":1,\"shard_count\":{shard_count}}}\n");
            let temporary = data_dir.join("meta.json.tmp");
            fs::write(&temporary, text).map_err(|e| StorageError::io(&temporary, e))?;
            fs::File::open(&temporary)
                .and_then(|f| f.sync_all())
                .map_err(|e| StorageError::io(&temporary, e))?;
            fs::rename(&temporary, &path).map_err(|e| StorageError::io(&path, e))?;
            fs::File::open(data_dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(data_dir, e))?;
            Ok(shard_count)
        }
        Err(error) => Err(StorageError::io(&path, error)),
    }
}

/// An exclusive lock on a data directory (`data_dir/LOCK`), held while a
/// process has the directory open; the OS drops it when the process dies,
/// so a kill -9 leaves no stale lock.
pub struct DataDirLock(#[allow(dead_code)] fs::File);

impl DataDirLock {
    /// Takes it (creating the directory if needed), or says who holds it.
    pub fn take(data_dir: &Path) -> Result<DataDirLock, StorageError> {
        fs::create_dir_all(data_dir).map_err(|e| StorageError::io(data_dir, e))?;
        lock_dir(data_dir).map(DataDirLock)
    }
}

fn lock_dir(data_dir: &Path) -> Result<fs::File, StorageError> {
    let path = data_dir.join("LOCK");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StorageError::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StorageError::Locked { path: data_dir.to_path_buf() }),
        Err(fs::TryLockError::Error(error)) => Err(StorageError::io(&path, error)),
    }
}
