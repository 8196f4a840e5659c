//! One journal write being gathered: its frames, and the callbacks to
//! answer once its outcome is known, in append order.

use wallet_actors::ids::ShardId;
use wallet_actors::ports::{JournalError, OnDurable};
use wallet_actors::record::{Record, RECORD_FORMAT_VERSION};
use wallet_storage::frame;

/// Encodes `record` of `shard` as frames of `(shard, record)`, in the file
/// journal's framing. A batch (a shard's outbox) becomes one frame per
/// record it holds, as in the file journal, so no frame is larger than its
/// largest record.
pub(crate) fn encode_frames(shard: ShardId, record: &Record) -> Result<Vec<u8>, JournalError> {
    fn into(shard: ShardId, record: &Record, buffer: &mut Vec<u8>) -> Result<(), JournalError> {
        match record {
            Record::Batch(records) => records.iter().try_for_each(|record| into(shard, record, buffer)),
            record => frame::encode_into(&(shard, record), RECORD_FORMAT_VERSION, buffer)
                .map_err(|_| JournalError::Io { kind: std::io::ErrorKind::InvalidData }),
        }
    }
    let mut buffer = Vec::with_capacity(128);
    into(shard, record, &mut buffer)?;
    Ok(buffer)
}

/// A write being gathered.
#[derive(Default)]
pub(crate) struct Message {
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: u64,
    /// Each with the error it gets whatever the write's outcome (a record
    /// refused before it was written), if any.
    pub(crate) callbacks: Vec<(OnDurable, Option<JournalError>)>,
}

impl Message {
    /// Whether nothing was gathered yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.callbacks.is_empty()
    }

    /// Whether `frames` go into this message: always into an empty one
    /// (a record larger than `max` goes alone), else within `max`.
    pub(crate) fn fits(&self, frames: &[u8], max: usize) -> bool {
        self.records == 0 || self.bytes.len() + frames.len() <= max
    }

    pub(crate) fn push_record(&mut self, frames: Vec<u8>, on_durable: OnDurable) {
        if self.bytes.is_empty() {
            self.bytes = frames;
        } else {
            self.bytes.extend_from_slice(&frames);
        }
        self.records += 1;
        self.callbacks.push((on_durable, None));
    }

    /// A barrier: answered with the outcome of what came before it.
    pub(crate) fn push_barrier(&mut self, on_durable: OnDurable) {
        self.callbacks.push((on_durable, None));
    }

    /// A record refused before it was written, answered in its turn.
    pub(crate) fn push_refused(&mut self, on_durable: OnDurable, error: JournalError) {
        self.callbacks.push((on_durable, Some(error)));
    }
}
