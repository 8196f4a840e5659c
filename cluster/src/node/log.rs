//! A node's journal stream as checkpoints, rebuilds and restarts see it
//! (`wallet_storage::log`): positions are stream sequences. A snapshot at
//! sequence `p` holds every record in the messages before `p`; a start
//! replays the messages from `p` on, whichever node wrote them.
//!
//! The stream is never cut here: each checkpoint's snapshot is published
//! as an image other nodes install ([`super::images`]), but a node whose
//! image is missing or damaged still finds everything in the stream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wallet_actors::ports::Journal;
use wallet_actors::recovery::Recovery;
use wallet_storage::journal::ReadSummary;
use wallet_storage::log::{CheckpointLog, JournalReader};
use wallet_storage::scan::SegmentScan;
use wallet_storage::{LocalSnapshots, StorageError};

use super::images::{Images, Uploader};
use super::{take_every_shard, NodeError};
use crate::journal::{nats_error, read_records, read_records_until, JournalStream, NodeJournal};

/// A node error where storage expects its own.
pub(crate) fn stored_error(error: impl Into<NodeError>) -> StorageError {
    StorageError::Journal(Box::new(error.into()))
}

/// The journal stream, read back from the stream's leader.
pub(crate) struct StreamReader {
    pub(crate) stream: JournalStream,
    /// This node's journal subject.
    own_subject: String,
    /// The last sequence the latest replay read: the shards in memory hold
    /// every record up to it.
    replayed_to: AtomicU64,
}

impl StreamReader {
    pub(crate) fn new(stream: JournalStream, own_subject: String) -> StreamReader {
        StreamReader { stream, own_subject, replayed_to: AtomicU64::new(0) }
    }
}

impl JournalReader for StreamReader {
    /// Refuses a snapshot taken further than the stream goes: the stream
    /// lost messages it had acknowledged (restored from an older backup, or
    /// a server without `sync_interval: always` lost power), and new ones
    /// would take sequences the replay skips.
    async fn replay(
        &self,
        from: u64,
        mut recovery: Recovery,
    ) -> Result<(Recovery, ReadSummary), StorageError> {
        let info = self.stream.stream.get_info().await.map_err(|e| stored_error(nats_error(e)))?;
        let stream_last = info.state.last_sequence;
        if from > stream_last + 1 {
            return Err(stored_error(NodeError::StreamBehind { snapshot_at: from, last: stream_last }));
        }
        let mut summary = ReadSummary::default();
        let mut last = 0;
        read_records(&self.stream, from.saturating_sub(1), |sequence, _origin, record| {
            summary.records += 1;
            last = sequence;
            recovery.apply(record).map_err(|source| NodeError::Replay { sequence, source })
        })
        .await
        .map_err(stored_error)?;
        self.replayed_to.store(last.max(stream_last), Ordering::SeqCst);
        Ok((recovery, summary))
    }

    /// Refuses the range if another node wrote in it after the latest
    /// replay: the shards in memory do not hold that record (this node
    /// lost a lease, and another wrote the shard), so a snapshot of them
    /// taken now would lose it.
    async fn scan(&self, from: u64, to: u64, mut scan: SegmentScan) -> Result<SegmentScan, StorageError> {
        if to <= from.max(1) {
            return Ok(scan);
        }
        let replayed_to = self.replayed_to.load(Ordering::SeqCst);
        read_records_until(&self.stream, from.saturating_sub(1), to - 1, |at, _, record| {
            if at.sequence > replayed_to && at.subject != self.own_subject {
                return Err(NodeError::ForeignWrite {
                    sequence: at.sequence,
                    subject: at.subject.to_string(),
                });
            }
            scan.apply(record);
            Ok(())
        })
        .await
        .map_err(stored_error)?;
        Ok(scan)
    }

    fn leftovers_before(&self, _position: u64) -> Result<usize, StorageError> {
        Ok(0)
    }
}

/// The node's journal, as its checkpoints see it.
pub(crate) struct StreamLog {
    pub(crate) reader: StreamReader,
    pub(crate) journal: Arc<NodeJournal>,
    pub(crate) shard_count: u16,
    pub(crate) take_wait: Duration,
    /// Where each checkpoint's snapshot is staged, and who publishes it
    /// for other nodes.
    pub(crate) publishing: Option<(Images, Uploader)>,
    /// The snapshots the checkpoints write.
    pub(crate) snapshots: LocalSnapshots,
}

impl CheckpointLog for StreamLog {
    type Reader = StreamReader;

    fn reader(&self) -> &StreamReader {
        &self.reader
    }

    fn journal(&self) -> Arc<dyn Journal> {
        self.journal.clone()
    }

    fn bytes_written(&self) -> u64 {
        self.journal.stats().bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sequence after the stream's last: every message written before
    /// the stream answered lies before it; a record appended before this
    /// call but written after lies at it or after, and the capture that
    /// follows holds it too (replay skips it then).
    async fn rotate(&self) -> Result<u64, StorageError> {
        let info = self.reader.stream.stream.get_info().await.map_err(|e| stored_error(nats_error(e)))?;
        Ok(info.state.last_sequence + 1)
    }

    /// Retires nothing (the stream stays whole); stages the snapshot that
    /// just came in force as an image for other nodes, published in the
    /// background. Its failure fails nothing: other nodes start from an
    /// older image, or replay more of the stream.
    async fn retire_before(&self, position: u64) -> Result<usize, StorageError> {
        if let Some((images, uploader)) = &self.publishing {
            match images.stage(&self.snapshots, position).await {
                Ok(staged) => uploader.hand(staged).await,
                Err(error) => {
                    metrics::counter!("wallet_snapshot_image_failures_total").increment(1);
                    tracing::warn!(%error, position, "the snapshot image could not be staged");
                }
            }
        }
        Ok(0)
    }

    /// Takes back the shard leases a renewal found lost: every write of
    /// such a shard is refused until then.
    async fn writable(&self) -> Result<(), StorageError> {
        take_every_shard(&self.journal, self.shard_count, self.take_wait).await.map_err(stored_error)
    }
}
