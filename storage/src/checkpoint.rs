//! Checkpoints, and rebuilding the shards from durable state: what a node
//! does in the background while it serves, written once for any journal
//! ([`CheckpointLog`]: the embedded node's files, a node's stream). A
//! checkpoint writes what the shards changed to the snapshot and retires
//! the journal it covers; a rebuild reads the snapshot and the journal back
//! exactly as a restart does ([`LocalSnapshots::replay`]) and starts new
//! shards on them.

use std::sync::Arc;

use wallet_actors::ports::{append_durable, EventSink, Origin};
use wallet_actors::record::Record;
use wallet_actors::shard::HistoryEntry;
use wallet_actors::{Ledger, LedgerError};

use crate::faults::{at_point, points};
use crate::log::{CheckpointLog, JournalReader};
use crate::runs::{HistoryChunk, HISTORY_CHUNK_ENTRIES_MAX};
use crate::scan::SegmentScan;
use crate::snapshot::CheckpointMeta;
use crate::snapshots::{LocalSnapshots, Replayed};
use crate::StorageError;

/// What one checkpoint did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Accounts written.
    pub accounts: usize,
    /// Transfers moved to the on-disk index.
    pub transfers: usize,
    /// Journal parts deleted (file segments; a node's stream keeps its messages).
    pub segments_deleted: usize,
    /// Commits still waiting for a shard.
    pub open_commits: usize,
}

pub(crate) fn journal_failed(error: wallet_actors::ports::JournalError) -> StorageError {
    tracing::error!(%error, "journal failed during a checkpoint");
    StorageError::Ledger(LedgerError::Unavailable)
}

fn blocking_failed(_: tokio::task::JoinError) -> StorageError {
    StorageError::Ledger(LedgerError::Unavailable)
}

pub(crate) fn spawn_checkpoints<L: CheckpointLog>(
    checkpointer: Checkpointer<L>,
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
            let bytes = checkpointer.log.bytes_written();
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
/// durable is unknown until the process restarts and reads them back; the
/// rebuild's barrier fails then, and it is retried with a growing pause.
pub(crate) fn spawn_supervision<L: CheckpointLog>(
    checkpointer: Checkpointer<L>,
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

/// Waits (at most [`EVENTS_WAIT_MS`]) until the events' feed is done with
/// every entry it was handed so far.
async fn wait_for_events(events: &dyn EventSink) {
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
pub(crate) struct Checkpointer<L> {
    pub(crate) ledger: Ledger,
    pub(crate) log: Arc<L>,
    pub(crate) snapshots: LocalSnapshots,
    pub(crate) meta: Arc<tokio::sync::Mutex<CheckpointMeta>>,
    pub(crate) shard_count: u16,
    pub(crate) events: Option<Arc<dyn EventSink>>,
}

impl<L> Clone for Checkpointer<L> {
    fn clone(&self) -> Self {
        Checkpointer {
            ledger: self.ledger.clone(),
            log: self.log.clone(),
            snapshots: self.snapshots.clone(),
            meta: self.meta.clone(),
            shard_count: self.shard_count,
            events: self.events.clone(),
        }
    }
}

/// How long a checkpoint waits for the events publisher to publish what the
/// checkpoint takes out of recovery's replay (`docs/ARCHITECTURE.md`,
/// "Ledger events", invariant 4).
const EVENTS_WAIT_MS: u64 = 10_000;

impl<L: CheckpointLog> Checkpointer<L> {
    /// The checkpoint protocol (see `docs/ARCHITECTURE.md`, "Snapshots"):
    /// 1. rotate the journal to a new position `k`: every record already
    ///    appended is before `k`, or in what step 2 captures;
    /// 2. capture what every shard changed: it includes all those records;
    /// 3. append a checkpoint marker and wait until it is durable, so that
    ///    nothing captured is less durable than the journal;
    /// 4. read the journal before `k` for the transfers it stored and the
    ///    commits still waiting for a shard;
    /// 5. write all of it to sled, meta last, and flush;
    /// 6. retire the journal before `k` (the file journal deletes its
    ///    segments), and drop those transfers from memory.
    pub(crate) async fn run(&self) -> Result<CheckpointReport, StorageError> {
        let mut meta = self.meta.lock().await;
        let started = std::time::Instant::now();
        let position = self.log.rotate().await?;
        at_point(points::CHECKPOINT_ROTATED)?;
        let captured = self.ledger.capture().await?;
        at_point(points::CHECKPOINT_CAPTURED)?;
        let marker = Record::Checkpoint { replay_from_segment: position };
        // Callbacks run in journal order, so when the marker's runs, the
        // decisions numbered are exactly those of the records before it:
        // this snapshot holds them, and replay numbers the rest from there.
        let (numbered, at_marker) = tokio::sync::oneshot::channel();
        let ledger = self.ledger.clone();
        self.log.journal().append(
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
        let scan = SegmentScan::new(self.shard_count, meta.open_commits.clone(), self.snapshots.runs.clone());
        let (transfers, open_commits) =
            self.log.reader().scan(meta.replay_from_segment, position, scan).await?.finish()?;
        let scanned_ms = started.elapsed().as_millis() as u64;
        let new_meta = CheckpointMeta {
            replay_from_segment: position,
            open_commits,
            commit_epoch: self.ledger.commit_epoch(),
            next_decision_id,
            events_unsettled,
        };
        let snapshots = self.snapshots.clone();
        let (written, indexed) = (new_meta.clone(), transfers.clone());
        let accounts = tokio::task::spawn_blocking(move || {
            // The index first: until the meta names the new position, the
            // journal still has these transfers, so a crash in between only
            // makes the next checkpoint write them again (the newest wins).
            snapshots.runs.add(indexed)?;
            at_point(points::CHECKPOINT_INDEXED)?;
            snapshots.history.add(history_chunks(&captured))?;
            at_point(points::CHECKPOINT_HISTORY)?;
            let indexed_ms = started.elapsed().as_millis() as u64;
            snapshots.store.write(&captured, &decisions, &written)?;
            at_point(points::CHECKPOINT_SNAPSHOT)?;
            tracing::debug!(
                scanned_ms,
                indexed_ms,
                written_ms = started.elapsed().as_millis() as u64,
                "checkpoint written"
            );
            Ok::<_, StorageError>(captured.iter().map(|c| c.accounts.len()).sum())
        })
        .await
        .map_err(blocking_failed)??;
        // The new meta is durable: the checkpoint is in force from here,
        // whether or not the old journal can be retired now.
        let retired = self.log.retire_before(position).await.and_then(|deleted| {
            at_point(points::CHECKPOINT_DONE)?;
            Ok(deleted)
        });
        let mut report = CheckpointReport {
            accounts,
            transfers: transfers.len(),
            segments_deleted: 0,
            open_commits: new_meta.open_commits.len(),
        };
        *meta = new_meta;
        self.ledger.registry().evict(&transfers);
        self.ledger.forget_flushed_history();
        self.ledger.forget_decisions_up_to(next_decision_id.saturating_sub(1));
        // Segments a failed deletion left are deleted by the next checkpoint
        // (it deletes every segment before its own), and neither its scan nor
        // recovery reads them: both start at the meta's position.
        match retired {
            Ok(deleted) => report.segments_deleted = deleted,
            Err(error) => {
                tracing::error!(%error, "the checkpoint is in force, but retiring the journal it covers failed");
                return Err(error);
            }
        }
        metrics::counter!("wallet_checkpoints_total").increment(1);
        metrics::histogram!("wallet_checkpoint_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(?report, elapsed_ms = started.elapsed().as_millis() as u64, "checkpoint");
        Ok(report)
    }

    /// Rebuilds every shard from durable state after one failed (see
    /// `docs/ARCHITECTURE.md`, "Supervision"): no checkpoint runs meanwhile;
    /// the failed generation is halted, so nothing more of it reaches the
    /// journal; the journal is made writable again (a node retakes shard
    /// leases it lost); a barrier record makes everything the failed shards
    /// did write durable; then the snapshot and the journal are read back
    /// exactly as at a restart, and the new shards take over.
    async fn rebuild(&self) -> Result<(), StorageError> {
        let mut meta = self.meta.lock().await;
        let started = std::time::Instant::now();
        self.ledger.halt().await;
        self.log.writable().await?;
        // An empty record: once durable, so is everything appended before.
        append_durable(self.log.journal().as_ref(), Origin::Node, Record::Batch(Vec::new()))
            .await
            .map_err(journal_failed)?;
        let replayed = self.snapshots.replay(self.log.reader(), self.shard_count).await?;
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
    use crate::runs::HistoryRuns;
    use std::path::Path;

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
