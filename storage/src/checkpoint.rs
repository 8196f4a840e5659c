//! Checkpoints, and rebuilding the shards from durable state: what the
//! embedded node does in the background while it serves. A checkpoint
//! writes what the shards changed to the snapshot and retires the journal
//! segments it covers; a rebuild reads the snapshot and the journal back
//! exactly as a restart does ([`replay`]) and starts new shards on them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wallet_actors::ports::{append_durable, Journal, Origin, Stored};
use wallet_actors::record::Record;
use wallet_actors::recovery::{Recovered, Recovery};
use wallet_actors::shard::HistoryEntry;
use wallet_actors::{Ledger, LedgerError};

use crate::embedded::RecoveryReport;
use crate::faults::{at_point, points};
use crate::journal::{read_journal_from, read_segments, segments, FileJournal, JournalStats};
use crate::runs::{HistoryChunk, HistoryRuns, TransferRuns, HISTORY_CHUNK_ENTRIES_MAX};
use crate::scan::SegmentScan;
use crate::snapshot::{CheckpointMeta, SnapshotStore};
use crate::StorageError;

/// What one checkpoint did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Accounts written.
    pub accounts: usize,
    /// Transfers moved to the on-disk index.
    pub transfers: usize,
    /// Journal segments deleted.
    pub segments_deleted: usize,
    /// Commits still waiting for a shard.
    pub open_commits: usize,
}

fn journal_failed(error: wallet_actors::ports::JournalError) -> StorageError {
    tracing::error!(%error, "journal failed during a checkpoint");
    StorageError::Ledger(LedgerError::Unavailable)
}

pub(crate) fn spawn_checkpoints(
    checkpointer: Checkpointer,
    stats: Arc<JournalStats>,
    every_bytes: u64,
    check_ms: u64,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_bytes = 0u64;
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                _ = tokio::time::sleep(std::time::Duration::from_millis(check_ms.max(1))) => {}
            }
            let bytes = stats.bytes.load(std::sync::atomic::Ordering::Relaxed);
            if bytes.saturating_sub(last_bytes) < every_bytes {
                continue;
            }
            last_bytes = bytes;
            if let Err(error) = checkpointer.run().await {
                tracing::error!(%error, "checkpoint failed");
            }
        }
    })
}

/// Rebuilds the shards from the snapshot and the journal whenever they
/// fail, until the ledger stops ([`wallet_actors::Ledger::supervise`]). A
/// journal failure is not mended here: whether its last records are
/// durable is unknown until the process restarts and reads the files; the
/// rebuild's barrier fails then, and it is retried with a growing pause.
pub(crate) fn spawn_supervision(
    checkpointer: Checkpointer,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ledger = checkpointer.ledger.clone();
    ledger.supervise(
        move || {
            let checkpointer = checkpointer.clone();
            async move { checkpointer.rebuild().await }
        },
        stopped,
    )
}

/// The captured history as chunks of one account each, entries in order,
/// at most [`HISTORY_CHUNK_ENTRIES_MAX`] per chunk. A stable sort by account
/// keeps each account's entries in sequence order.
fn history_chunks(captured: &[wallet_actors::shard::Captured]) -> Vec<HistoryChunk> {
    let mut entries: Vec<&HistoryEntry> = captured.iter().flat_map(|shard| shard.history.iter()).collect();
    entries.sort_by_key(|entry| entry.account_id);
    entries
        .chunk_by(|a, b| a.account_id == b.account_id)
        .flat_map(|run| run.chunks(HISTORY_CHUNK_ENTRIES_MAX))
        .map(|run| HistoryChunk {
            account_id: run[0].account_id,
            entries: run.iter().map(|&entry| entry.clone()).collect(),
        })
        .collect()
}

/// State read back from storage: the snapshot, then the journal after it.
pub(crate) struct Replayed {
    pub(crate) recovered: Recovered,
    pub(crate) completions: Vec<Record>,
    pub(crate) report: RecoveryReport,
    pub(crate) meta: CheckpointMeta,
}

/// The ledger's view of what this node stores beyond the journal.
pub(crate) fn stored(
    snapshot: &SnapshotStore,
    runs: &Arc<TransferRuns>,
    history: &Arc<HistoryRuns>,
) -> Stored {
    Stored {
        transfers: Some(runs.clone()),
        history: Some(history.clone()),
        decisions: Some(Arc::new(snapshot.clone())),
        accounts: Some(Arc::new(snapshot.clone())),
    }
}

/// Reads the snapshot's meta and holds, then replays the journal from the
/// segment it names (accounts are read from the snapshot when named).
pub(crate) fn replay(
    snapshot: &SnapshotStore,
    stored: &Stored,
    journal_dir: &Path,
    shard_count: u16,
) -> Result<Replayed, StorageError> {
    let loaded = snapshot.load()?;
    let meta = loaded.meta.clone().unwrap_or_default();
    let (holds, open_commits) = (loaded.holds, meta.open_commits.clone());
    let mut recovery = Recovery::from_snapshot(shard_count, holds, open_commits, meta.commit_epoch, stored);
    let marker = loaded.meta.as_ref().map(|meta| meta.replay_from_segment);
    recovery.number_decisions(meta.next_decision_id, marker);
    let summary = read_journal_from(journal_dir, meta.replay_from_segment, |record, at| {
        recovery.apply(record).map_err(|source| StorageError::Replay {
            path: at.path.to_path_buf(),
            offset: at.offset,
            source: Box::new(source),
        })
    })?;
    let mut report = RecoveryReport {
        journal: summary,
        snapshot_accounts: recovery.activated() as usize,
        checkpoint_markers_after_snapshot: recovery.checkpoint_markers_after_snapshot(),
        leftover_segments: segments(journal_dir)?
            .into_iter()
            .filter(|&s| s < meta.replay_from_segment)
            .count(),
        ..RecoveryReport::default()
    };
    let (recovered, completions) = recovery.finish()?;
    report.completed_commits = completions.len();
    Ok(Replayed { recovered, completions, report, meta })
}

/// Reads the segments a checkpoint retires (from the meta in force up to
/// `segment`) for the transfers they stored and the commits still waiting
/// for a shard. Older segments a failed deletion left behind were retired
/// by an earlier checkpoint, so they are skipped.
fn scan_retired(
    journal_dir: &Path,
    previous: &CheckpointMeta,
    segment: u64,
    shard_count: u16,
    runs: &Arc<TransferRuns>,
) -> Result<
    (Vec<wallet_actors::registry::TransferRecord>, Vec<wallet_actors::recovery::OpenCommit>),
    StorageError,
> {
    let older: Vec<u64> = segments(journal_dir)?
        .into_iter()
        .filter(|&i| i >= previous.replay_from_segment && i < segment)
        .collect();
    let mut scan = SegmentScan::new(shard_count, previous.open_commits.clone(), runs.clone());
    read_segments(journal_dir, &older, false, |record, _| {
        scan.apply(record);
        Ok(())
    })?;
    scan.finish()
}

/// Waits (at most [`EVENTS_WAIT_MS`]) until the events' feed is done with
/// every entry it was handed so far.
async fn wait_for_events(events: &dyn wallet_actors::ports::EventSink) {
    let (handed, _) = events.progress();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(EVENTS_WAIT_MS);
    loop {
        let (_, done) = events.progress();
        if done >= handed {
            return;
        }
        if std::time::Instant::now() >= deadline {
            // Not reconciled yet: these events are published only if the
            // node keeps running (a restart replays from the new snapshot).
            metrics::counter!("wallet_events_checkpoint_unsettled_total").increment(1);
            tracing::warn!(
                unpublished = handed - done,
                "a checkpoint went ahead with events not yet published"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Everything a checkpoint needs; cheap to clone into a task.
#[derive(Clone)]
pub(crate) struct Checkpointer {
    pub(crate) ledger: Ledger,
    pub(crate) journal: Arc<FileJournal>,
    pub(crate) snapshot: SnapshotStore,
    pub(crate) runs: Arc<TransferRuns>,
    pub(crate) history: Arc<HistoryRuns>,
    pub(crate) meta: Arc<tokio::sync::Mutex<CheckpointMeta>>,
    pub(crate) journal_dir: PathBuf,
    pub(crate) shard_count: u16,
    pub(crate) events: Option<Arc<dyn wallet_actors::ports::EventSink>>,
}

/// How long a checkpoint waits for the events publisher to publish what the
/// checkpoint takes out of recovery's replay (`docs/ARCHITECTURE.md`,
/// "Ledger events", invariant 4).
const EVENTS_WAIT_MS: u64 = 10_000;

impl Checkpointer {
    /// The checkpoint protocol (see `docs/ARCHITECTURE.md`, "Snapshots"):
    /// 1. rotate the journal to a new segment `k`: every record already
    ///    appended is in a segment before `k`;
    /// 2. capture what every shard changed: it includes all those records;
    /// 3. append a checkpoint marker and wait until it is durable, so that
    ///    nothing captured is less durable than the journal;
    /// 4. read the segments before `k` for the transfers they stored and the
    ///    commits still waiting for a shard;
    /// 5. write all of it to sled, meta last, and flush;
    /// 6. delete the segments before `k`, and drop those transfers from memory.
    pub(crate) async fn run(&self) -> Result<CheckpointReport, StorageError> {
        let mut meta = self.meta.lock().await;
        let started = std::time::Instant::now();
        let journal = self.journal.clone();
        let segment = tokio::task::spawn_blocking(move || journal.rotate())
            .await
            .map_err(|_| StorageError::Ledger(LedgerError::Unavailable))?
            .map_err(journal_failed)?;
        at_point(points::CHECKPOINT_ROTATED)?;
        let captured = self.ledger.capture().await?;
        at_point(points::CHECKPOINT_CAPTURED)?;
        let marker = Record::Checkpoint { replay_from_segment: segment };
        // Callbacks run in journal order, so when the marker's runs, the
        // decisions numbered are exactly those of the records before it:
        // this snapshot holds them, and replay numbers the rest from there.
        let (numbered, at_marker) = tokio::sync::oneshot::channel();
        let ledger = self.ledger.clone();
        self.journal.append(
            Origin::Node,
            marker,
            Box::new(move |result| {
                let _ = numbered.send(result.map(|()| ledger.next_decision_id()));
            }),
        );
        let next_decision_id = at_marker
            .await
            .unwrap_or(Err(wallet_actors::ports::JournalError::Closed))
            .map_err(journal_failed)?;
        at_point(points::CHECKPOINT_MARKED)?;
        // Every record before the marker is durable, so its history was
        // handed to the events' feed: wait until it is published.
        // Whatever is still unpublished is recorded with the snapshot.
        let events_unsettled = match &self.events {
            Some(events) => {
                wait_for_events(events.as_ref()).await;
                events.unsettled()
            }
            None => Vec::new(),
        };
        let decisions: Vec<_> =
            self.ledger.recent_decisions().into_iter().filter(|d| d.id < next_decision_id).collect();
        let journal_dir = self.journal_dir.clone();
        let snapshot = self.snapshot.clone();
        let runs = self.runs.clone();
        let history = self.history.clone();
        let previous = meta.clone();
        let commit_epoch = self.ledger.commit_epoch();
        let shard_count = self.shard_count;
        let (mut report, new_meta, transfers, deleted) = tokio::task::spawn_blocking(move || {
            let (transfers, open_commits) =
                scan_retired(&journal_dir, &previous, segment, shard_count, &runs)?;
            let scanned_ms = started.elapsed().as_millis() as u64;
            let new_meta = CheckpointMeta {
                replay_from_segment: segment,
                open_commits,
                commit_epoch,
                next_decision_id,
                events_unsettled,
            };
            // The index first: until the meta names the new segment, the
            // journal still has these transfers, so a crash in between only
            // makes the next checkpoint write them again (the newest wins).
            runs.add(transfers.clone())?;
            at_point(points::CHECKPOINT_INDEXED)?;
            history.add(history_chunks(&captured))?;
            at_point(points::CHECKPOINT_HISTORY)?;
            let indexed_ms = started.elapsed().as_millis() as u64;
            snapshot.write(&captured, &decisions, &new_meta)?;
            at_point(points::CHECKPOINT_SNAPSHOT)?;
            tracing::debug!(
                scanned_ms,
                indexed_ms,
                written_ms = started.elapsed().as_millis() as u64,
                "checkpoint written"
            );
            // The new meta is durable: the checkpoint is in force from here,
            // whether or not the old segments can be deleted now.
            let deleted = FileJournal::delete_before(&journal_dir, segment)
                .and_then(|deleted| at_point(points::CHECKPOINT_DONE).map(|()| deleted));
            let report = CheckpointReport {
                accounts: captured.iter().map(|c| c.accounts.len()).sum(),
                transfers: transfers.len(),
                segments_deleted: 0,
                open_commits: new_meta.open_commits.len(),
            };
            Ok::<_, StorageError>((report, new_meta, transfers, deleted))
        })
        .await
        .map_err(|_| StorageError::Ledger(LedgerError::Unavailable))??;
        *meta = new_meta;
        self.ledger.registry().evict(&transfers);
        self.ledger.forget_flushed_history();
        self.ledger.forget_decisions_up_to(next_decision_id.saturating_sub(1));
        // Segments a failed deletion left are deleted by the next checkpoint
        // (it deletes every segment before its own), and neither its scan nor
        // recovery reads them: both start at the meta's segment.
        match deleted {
            Ok(deleted) => report.segments_deleted = deleted,
            Err(error) => {
                tracing::error!(%error, "the checkpoint is in force, but deleting the segments it retired failed");
                return Err(error);
            }
        }
        metrics::counter!("wallet_checkpoints_total").increment(1);
        metrics::histogram!("wallet_checkpoint_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(?report, elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint");
        Ok(report)
    }
}

impl Checkpointer {
    /// Rebuilds every shard from durable state after one failed (see
    /// `docs/ARCHITECTURE.md`, "Supervision"): no checkpoint runs meanwhile;
    /// the failed generation is halted, so nothing more of it reaches the
    /// journal; a barrier record makes everything it did write durable;
    /// then the snapshot and the journal are read back exactly as at a
    /// restart, and the new shards take over.
    async fn rebuild(&self) -> Result<(), StorageError> {
        let mut meta = self.meta.lock().await;
        let started = std::time::Instant::now();
        self.ledger.halt().await;
        // An empty record: once durable, so is everything appended before.
        append_durable(self.journal.as_ref(), Origin::Node, Record::Batch(Vec::new()))
            .await
            .map_err(journal_failed)?;
        let (snapshot, journal_dir) = (self.snapshot.clone(), self.journal_dir.clone());
        let stored = stored(&self.snapshot, &self.runs, &self.history);
        let shard_count = self.shard_count;
        let replayed =
            tokio::task::spawn_blocking(move || replay(&snapshot, &stored, &journal_dir, shard_count))
                .await
                .map_err(|_| StorageError::Ledger(LedgerError::Unavailable))??;
        let Replayed { recovered, completions, report, meta: read_meta } = replayed;
        self.ledger.restart(recovered, completions).await?;
        *meta = read_meta;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            records = report.journal.records,
            "shards rebuilt from durable state"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use wallet_actors::account::{Balances, Leg, Side};
    use wallet_actors::ports::HistoryIndex;
    use wallet_actors::shard::{Captured, HistoryEntry, HistoryEvent};
    use wallet_actors::{AccountId, TransferId};

    use super::*;

    /// A settlement account takes a leg of every deposit: millions of
    /// history entries in one checkpoint are written in chunks a frame can
    /// hold, read back page by page, and survive a merge.
    #[test]
    fn millions_of_legs_of_one_account_are_written_and_read_back() -> Result<(), StorageError> {
        const LEGS: u64 = 2_500_000;
        let settlement = AccountId::new(u128::MAX).unwrap_or_else(|_| unreachable!());
        let entry = |sequence: u64| HistoryEntry {
            account_id: settlement,
            sequence,
            event: HistoryEvent::Leg(Leg {
                account_id: settlement,
                transfer_id: TransferId::new(u128::from(sequence)).unwrap_or_else(|_| unreachable!()),
                side: Side::Debit,
                posted_add: 1_000,
                pending_add: 0,
                pending_sub: 0,
                at_ms: 0,
            }),
            balances: Balances { debits_posted: u128::from(sequence) * 1_000, ..Balances::default() },
            at_ms: 0,
        };
        let captured =
            Captured { history: Arc::new((2..2 + LEGS).map(entry).collect()), ..Captured::default() };
        let chunks = history_chunks(std::slice::from_ref(&captured));
        assert!(chunks.iter().all(|chunk| chunk.entries.len() <= HISTORY_CHUNK_ENTRIES_MAX));
        let dir = tempfile::tempdir().map_err(|e| StorageError::io(Path::new("tmp"), e))?;
        let runs = HistoryRuns::open(dir.path())?;
        runs.add(chunks)?;
        let page = |after: u64| {
            runs.history(settlement, after, 1_000)
                .map(|entries| entries.iter().map(|e| e.sequence).collect::<Vec<_>>())
                .map_err(|_| StorageError::Decode { offset: after })
        };
        for after in [1, 1_234_567, LEGS - 10] {
            let sequences = page(after)?;
            let expected: Vec<u64> = (after + 1..=(after + 1_000).min(LEGS + 1)).collect();
            assert_eq!(sequences, expected, "page after {after}");
        }
        // A later, smaller run merges with it (the newer two merge while the
        // older is at most twice as big): still readable, and reopened too.
        let later = Captured {
            history: Arc::new((2 + LEGS..2 + 2 * LEGS).map(entry).collect()),
            ..Captured::default()
        };
        runs.add(history_chunks(std::slice::from_ref(&later)))?;
        assert_eq!(runs.stats().0, 1, "the two runs merged");
        drop(runs);
        let runs = HistoryRuns::open(dir.path())?;
        let sequences = runs
            .history(settlement, LEGS - 5, 10)
            .map_err(|_| StorageError::Decode { offset: 0 })?
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>();
        assert_eq!(sequences, (LEGS - 4..LEGS + 6).collect::<Vec<_>>());
        Ok(())
    }
}
