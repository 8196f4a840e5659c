//! The embedded single node: one process, one data directory, no NATS.
//!
//! Layout of the data directory:
//! - `meta.json`: settings fixed at creation (the shard count);
//! - `journal/`: the file journal's segments.
//!
//! Opening recovers: it reads the journal (cutting a torn tail), replays it
//! into the shards, completes any commit a crash interrupted, then serves.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wallet_actors::record::{Clock, SystemClock};
use wallet_actors::recovery::Recovery;
use wallet_actors::{Ledger, LedgerConfig};

use crate::journal::{read_journal, FileJournal, JournalOptions, JournalStats, ReadSummary};
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
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            ledger: LedgerConfig::default(),
            journal: JournalOptions::default(),
            clock: Arc::new(SystemClock),
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
    _lock: fs::File,
    /// What recovery read.
    pub recovered: ReadSummary,
    data_dir: PathBuf,
}

impl EmbeddedLedger {
    /// Opens (creating if needed) the ledger stored in `data_dir`.
    pub async fn open(data_dir: &Path, options: EmbeddedOptions) -> Result<EmbeddedLedger, StorageError> {
        fs::create_dir_all(data_dir).map_err(|e| StorageError::io(data_dir, e))?;
        let lock = lock_dir(data_dir)?;
        let shard_count = check_meta(data_dir, options.ledger.shard_count)?;
        let journal_dir = data_dir.join("journal");
        let mut recovery = Recovery::new(shard_count);
        let summary = read_journal(&journal_dir, |record| recovery.apply(record))?;
        let (recovered, completions) = recovery.finish();
        tracing::info!(
            records = summary.records,
            segments = summary.segments,
            completed_commits = completions.len(),
            "recovered the journal"
        );
        let journal = Arc::new(FileJournal::start(&journal_dir, options.journal.clone())?);
        let ledger = Ledger::start(
            recovered,
            completions,
            journal.clone(),
            options.clock.clone(),
            options.ledger.clone(),
        )
        .await?;
        Ok(EmbeddedLedger {
            ledger,
            journal,
            _lock: lock,
            recovered: summary,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// The journal's counters.
    pub fn journal_stats(&self) -> Arc<JournalStats> {
        self.journal.stats()
    }

    /// Where the data lives.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the shards and makes everything acknowledged durable.
    pub async fn shutdown(self) {
        self.ledger.shutdown().await;
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

/// Takes an exclusive lock on `data_dir/LOCK`; the OS drops it when the
/// process dies, so a kill -9 leaves no stale lock.
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
