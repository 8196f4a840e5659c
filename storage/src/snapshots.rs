//! What a node keeps on its own disk beside its journal: the sled snapshot,
//! the transfer index and the account history ([`LocalSnapshots`]), read
//! back with the journal after them at a start, and kept current by
//! checkpoints in the background ([`Checkpoints`]). The embedded node uses
//! them with its file journal; `wallet node` with its JetStream journal.
//!
//! Layout under the directory: `snapshot/` (sled: accounts, holds, risk
//! decisions, the checkpoint meta), `index/` (transfers older than the
//! snapshot, in sorted runs), `history/` (account history older than the
//! snapshot, in sorted runs).

use std::path::Path;
use std::sync::Arc;

use wallet_actors::ports::{Clock, EventSink, Ports, Stored};
use wallet_actors::record::Record;
use wallet_actors::recovery::{Recovered, Recovery};
use wallet_actors::registry::TransferRecord;
use wallet_actors::{Ledger, LedgerConfig, LedgerError, TransferStatus};

use crate::checkpoint::{spawn_checkpoints, spawn_supervision, CheckpointReport, Checkpointer};
use crate::embedded::RecoveryReport;
use crate::log::{CheckpointLog, JournalReader};
use crate::runs::{HistoryRuns, TransferRuns};
use crate::snapshot::{CheckpointMeta, SnapshotStore};
use crate::StorageError;

/// The snapshot store and the runs beside it. Cheap to clone.
#[derive(Clone)]
pub struct LocalSnapshots {
    pub(crate) store: SnapshotStore,
    pub(crate) runs: Arc<TransferRuns>,
    pub(crate) history: Arc<HistoryRuns>,
}

/// State read back: the snapshot, then the journal after it.
pub struct Replayed {
    /// The shards' state.
    pub recovered: Recovered,
    /// Records completing the commits a crash interrupted, to append first.
    pub completions: Vec<Record>,
    /// What was read.
    pub report: RecoveryReport,
    /// The checkpoint the snapshot comes from (the default: none yet).
    pub meta: CheckpointMeta,
}

impl LocalSnapshots {
    /// Opens (creating) the snapshot and runs under `dir`.
    pub async fn open(dir: &Path, cache_bytes: u64) -> Result<LocalSnapshots, StorageError> {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || LocalSnapshots::open_blocking(&dir, cache_bytes))
            .await
            .map_err(|_| StorageError::Ledger(LedgerError::Unavailable))?
    }

    pub(crate) fn open_blocking(dir: &Path, cache_bytes: u64) -> Result<LocalSnapshots, StorageError> {
        let store = SnapshotStore::open(&dir.join("snapshot"), cache_bytes)?;
        let runs = Arc::new(TransferRuns::open(&dir.join("index"))?);
        let history = Arc::new(HistoryRuns::open(&dir.join("history"))?);
        Ok(LocalSnapshots { store, runs, history })
    }

    /// The ledger's view of what is stored here.
    pub fn stored(&self) -> Stored {
        Stored {
            transfers: Some(self.runs.clone()),
            history: Some(self.history.clone()),
            decisions: Some(Arc::new(self.store.clone())),
            accounts: Some(Arc::new(self.store.clone())),
        }
    }

    /// Loads the snapshot's meta and holds, then replays the journal from
    /// the position it names (accounts are read from the snapshot when
    /// named), and works out how to complete interrupted commits.
    pub async fn replay<R: JournalReader>(
        &self,
        reader: &R,
        shard_count: u16,
    ) -> Result<Replayed, StorageError> {
        let store = self.store.clone();
        let loaded = tokio::task::spawn_blocking(move || store.load())
            .await
            .map_err(|_| StorageError::Ledger(LedgerError::Unavailable))??;
        let meta = loaded.meta.clone().unwrap_or_default();
        let stored = self.stored();
        let mut recovery = Recovery::from_snapshot(
            shard_count,
            loaded.holds,
            meta.open_commits.clone(),
            meta.commit_epoch,
            &stored,
        );
        let marker = loaded.meta.as_ref().map(|meta| meta.replay_from_segment);
        recovery.number_decisions(meta.next_decision_id, marker);
        let (recovery, summary) = reader.replay(meta.replay_from_segment, recovery).await?;
        let mut report = RecoveryReport {
            journal: summary,
            snapshot_accounts: recovery.activated() as usize,
            checkpoint_markers_after_snapshot: recovery.checkpoint_markers_after_snapshot(),
            leftover_segments: reader.leftovers_before(meta.replay_from_segment)?,
            leftover_runs: self.runs.removed_at_open() + self.history.removed_at_open(),
            ..RecoveryReport::default()
        };
        let (recovered, completions) = recovery.finish()?;
        report.completed_commits = completions.len();
        Ok(Replayed { recovered, completions, report, meta })
    }

    /// Every transfer, in memory or in the on-disk index, with its current
    /// status (audits and tests: reads them all).
    ///
    /// Memory is read first: a checkpoint running meanwhile adds transfers
    /// to the index before it drops them from memory, so each is in one
    /// read or the other. (Index first, a transfer moved in between was in
    /// neither.) Where both hold one, the later status wins: a status only
    /// moves from pending to final, and either read may be the newer (a
    /// hold resolved after the memory read reaches the index as resolved).
    pub fn all_transfers(&self, ledger: &Ledger) -> Result<Vec<TransferRecord>, StorageError> {
        let in_memory = ledger.transfers();
        let mut by_id: std::collections::BTreeMap<_, _> =
            self.runs.all()?.into_iter().map(|r| (r.transfer.id, r)).collect();
        for record in in_memory {
            match by_id.get(&record.transfer.id) {
                Some(stored)
                    if record.status == TransferStatus::Pending
                        && stored.status != TransferStatus::Pending => {}
                _ => {
                    by_id.insert(record.transfer.id, record);
                }
            }
        }
        Ok(by_id.into_values().collect())
    }
}

/// When checkpoints run.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointEvery {
    /// Once the journal has grown by this many bytes.
    pub bytes: u64,
    /// How often its growth is looked at, in milliseconds.
    pub check_ms: u64,
}

/// Checkpoints and the shards' supervision, running in the background for
/// a started ledger.
pub struct Checkpoints<L> {
    checkpointer: Checkpointer<L>,
    stop: tokio::sync::watch::Sender<bool>,
    checkpoints: tokio::task::JoinHandle<()>,
    supervision: tokio::task::JoinHandle<()>,
}

/// What a ledger starts with besides its storage.
pub struct Serving {
    /// The ledger's settings.
    pub config: LedgerConfig,
    /// Now.
    pub clock: Arc<dyn Clock>,
    /// Where durable history goes for ledger events, if anywhere.
    pub events: Option<Arc<dyn EventSink>>,
    /// When checkpoints run.
    pub every: CheckpointEvery,
}

impl<L: CheckpointLog> Checkpoints<L> {
    /// Starts the ledger on what `snapshots` replayed (`recovered`,
    /// `completions`, `meta`), writing through `log`, and its checkpoints.
    pub async fn start_ledger(
        log: Arc<L>,
        snapshots: LocalSnapshots,
        recovered: Recovered,
        completions: Vec<Record>,
        meta: CheckpointMeta,
        serving: Serving,
    ) -> Result<(Ledger, Checkpoints<L>), LedgerError> {
        let ports = Ports {
            journal: log.journal(),
            clock: serving.clock,
            stored: snapshots.stored(),
            events: serving.events.clone(),
        };
        let ledger = Ledger::start(recovered, completions, ports, serving.config).await?;
        let checkpoints =
            Checkpoints::start(ledger.clone(), log, snapshots, meta, serving.events, serving.every);
        Ok((ledger, checkpoints))
    }

    /// Starts them for `ledger`, started on what `snapshots` replayed
    /// (`meta`); hands the events' feed the accounts the last checkpoint
    /// left unpublished.
    fn start(
        ledger: Ledger,
        log: Arc<L>,
        snapshots: LocalSnapshots,
        meta: CheckpointMeta,
        events: Option<Arc<dyn EventSink>>,
        every: CheckpointEvery,
    ) -> Checkpoints<L> {
        if let Some(events) = &events {
            if !meta.events_unsettled.is_empty() {
                tracing::info!(
                    accounts = meta.events_unsettled.len(),
                    "catching up events the last checkpoint left unpublished"
                );
                events.resume(meta.events_unsettled.clone());
            }
        }
        let shard_count = ledger.config().shard_count;
        let checkpointer = Checkpointer {
            ledger,
            log,
            snapshots,
            meta: Arc::new(tokio::sync::Mutex::new(meta)),
            shard_count,
            events,
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let supervision = spawn_supervision(checkpointer.clone(), stopped.clone());
        let checkpoints = spawn_checkpoints(checkpointer.clone(), every.bytes, every.check_ms, stopped);
        Checkpoints { checkpointer, stop, checkpoints, supervision }
    }

    /// Takes a checkpoint now.
    pub async fn run(&self) -> Result<CheckpointReport, StorageError> {
        self.checkpointer.run().await
    }

    /// What is stored.
    pub fn snapshots(&self) -> &LocalSnapshots {
        &self.checkpointer.snapshots
    }

    /// Stops checkpoints and supervision (waiting for one running), takes
    /// a last checkpoint if asked (so the next start replays little), then
    /// stops the ledger's shards and lets go of the storage they read, so
    /// it can close. Everything acknowledged is durable already.
    pub async fn stop(self, last_checkpoint: bool) {
        let _ = self.stop.send(true);
        let _ = self.checkpoints.await;
        let _ = self.supervision.await;
        if last_checkpoint {
            if let Err(error) = self.checkpointer.run().await {
                tracing::warn!(%error, "last checkpoint failed; the journal still has everything");
            }
        }
        let ledger = &self.checkpointer.ledger;
        ledger.shutdown().await;
        ledger.detach_storage();
    }
}
