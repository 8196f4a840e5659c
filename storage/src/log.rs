//! The journal as checkpoints, rebuilds and restarts see it: a line of
//! positions, each a point a replay may start from. The embedded node's
//! positions are its file journal's segments; a node's (`wallet node`) are
//! the sequences of its JetStream journal stream. The snapshot protocol
//! (`docs/ARCHITECTURE.md`, "Snapshots (sled) and truncation") is written
//! once against these two traits ([`crate::checkpoint`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wallet_actors::ports::Journal;
use wallet_actors::recovery::Recovery;

use crate::journal::{read_journal_from, read_segments, segments, FileJournal, ReadSummary};
use crate::scan::SegmentScan;
use crate::StorageError;

/// Reads a journal back from a position: what a restart and a checkpoint's
/// scan need.
pub trait JournalReader: Send + Sync + 'static {
    /// Applies every record from `from` on to `recovery`, in journal order,
    /// stopping at the first record that does not replay.
    fn replay(
        &self,
        from: u64,
        recovery: Recovery,
    ) -> impl Future<Output = Result<(Recovery, ReadSummary), StorageError>> + Send;

    /// Applies the records at positions `from..to` to `scan` (what a
    /// checkpoint at `to` retires).
    fn scan(
        &self,
        from: u64,
        to: u64,
        scan: SegmentScan,
    ) -> impl Future<Output = Result<SegmentScan, StorageError>> + Send;

    /// Parts before `position` still stored although a checkpoint retired
    /// them (a deletion that failed), for the recovery report.
    fn leftovers_before(&self, position: u64) -> Result<usize, StorageError>;
}

/// The journal a checkpoint runs against.
pub trait CheckpointLog: Send + Sync + 'static {
    /// How it is read back.
    type Reader: JournalReader;

    /// How it is read back.
    fn reader(&self) -> &Self::Reader;

    /// The journal records go through (checkpoint markers, barriers).
    fn journal(&self) -> Arc<dyn Journal>;

    /// Bytes written so far: a checkpoint runs after enough of them.
    fn bytes_written(&self) -> u64;

    /// A position to replay from for a state captured after this returns:
    /// every record appended before the call lies before it or is in that
    /// state, and every record appended after the call lies at it or after
    /// (replay skips what a snapshot already has, so a record both captured
    /// and replayed is harmless).
    fn rotate(&self) -> impl Future<Output = Result<u64, StorageError>> + Send;

    /// Drops what lies before `position` (a snapshot holds it now); returns
    /// how many parts went. A log others still read keeps everything.
    fn retire_before(&self, position: u64) -> impl Future<Output = Result<usize, StorageError>> + Send;

    /// Makes the log writable again before shards are rebuilt on it (a
    /// node takes back shard leases a renewal found lost); the file journal
    /// has nothing to do.
    fn writable(&self) -> impl Future<Output = Result<(), StorageError>> + Send;
}

/// The embedded node's journal directory, read back.
#[derive(Clone, Debug)]
pub struct FileJournalDir(pub PathBuf);

impl FileJournalDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

fn blocking_failed(_: tokio::task::JoinError) -> StorageError {
    StorageError::Ledger(wallet_actors::LedgerError::Unavailable)
}

impl JournalReader for FileJournalDir {
    async fn replay(
        &self,
        from: u64,
        mut recovery: Recovery,
    ) -> Result<(Recovery, ReadSummary), StorageError> {
        let dir = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let summary = read_journal_from(&dir, from, |record, at| {
                recovery.apply(record).map_err(|source| StorageError::Replay {
                    path: at.path.to_path_buf(),
                    offset: at.offset,
                    source: Box::new(source),
                })
            })?;
            Ok((recovery, summary))
        })
        .await
        .map_err(blocking_failed)?
    }

    async fn scan(&self, from: u64, to: u64, mut scan: SegmentScan) -> Result<SegmentScan, StorageError> {
        let dir = self.0.clone();
        tokio::task::spawn_blocking(move || {
            // Older segments a failed deletion left behind were retired by
            // an earlier checkpoint: not read again.
            let retiring: Vec<u64> = segments(&dir)?.into_iter().filter(|&i| i >= from && i < to).collect();
            read_segments(&dir, &retiring, false, |record, _| {
                scan.apply(record);
                Ok(())
            })?;
            Ok(scan)
        })
        .await
        .map_err(blocking_failed)?
    }

    fn leftovers_before(&self, position: u64) -> Result<usize, StorageError> {
        Ok(segments(self.path())?.into_iter().filter(|&s| s < position).count())
    }
}

/// The embedded node's file journal, as its checkpoints see it.
pub struct FileLog {
    /// Its directory.
    pub dir: FileJournalDir,
    /// The running journal.
    pub journal: Arc<FileJournal>,
}

impl CheckpointLog for FileLog {
    type Reader = FileJournalDir;

    fn reader(&self) -> &FileJournalDir {
        &self.dir
    }

    fn journal(&self) -> Arc<dyn Journal> {
        self.journal.clone()
    }

    fn bytes_written(&self) -> u64 {
        self.journal.stats().bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn rotate(&self) -> Result<u64, StorageError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.rotate())
            .await
            .map_err(blocking_failed)?
            .map_err(crate::checkpoint::journal_failed)
    }

    async fn retire_before(&self, position: u64) -> Result<usize, StorageError> {
        let dir = self.dir.0.clone();
        tokio::task::spawn_blocking(move || FileJournal::delete_before(&dir, position))
            .await
            .map_err(blocking_failed)?
    }

    async fn writable(&self) -> Result<(), StorageError> {
        Ok(())
    }
}
