//! One journal write being gathered: its frames, and the callbacks to
//! answer once its outcome is known, in append order.

use wallet_actors::ports::{JournalError, OnDurable, Origin};
use wallet_actors::record::{Record, RECORD_FORMAT_VERSION};
use wallet_storage::frame;

/// Encodes `record` of `origin` as frames of `(origin, record)`, in the
/// file journal's framing. A batch (a shard's outbox) becomes one frame per
/// record it holds, as in the file journal, so no frame is larger than its
/// largest record.
pub(crate) fn encode_frames(origin: Origin, record: &Record) -> Result<Vec<u8>, JournalError> {
    fn into(origin: Origin, record: &Record, buffer: &mut Vec<u8>) -> Result<(), JournalError> {
        match record {
            Record::Batch(records) => records.iter().try_for_each(|record| into(origin, record, buffer)),
            record => frame::encode_into(&(origin, record), RECORD_FORMAT_VERSION, buffer)
                .map_err(|_| JournalError::Io { kind: std::io::ErrorKind::InvalidData }),
        }
    }
    let mut buffer = Vec::with_capacity(128);
    into(origin, record, &mut buffer)?;
    Ok(buffer)
}

/// Where to cut `frames` so that the first part holds whole frames within
/// `max` bytes (at least one frame, however large).
pub(crate) fn cut_within(frames: &[u8], max: usize) -> usize {
    let mut cut = 0;
    while cut + frame::HEADER_LEN <= frames.len() {
        let header = &frames[cut..cut + 4];
        let len =
            frame::HEADER_LEN + u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if cut > 0 && cut + len > max {
            break;
        }
        cut = (cut + len).min(frames.len());
    }
    // Bytes that do not parse as frames are never cut (encode_frames
    // makes none).
    if cut == 0 {
        frames.len()
    } else {
        cut
    }
}

/// What a callback is answered with.
pub(crate) struct Callback {
    pub(crate) on_durable: OnDurable,
    /// The error it gets whatever the write's outcome (a record refused
    /// before it was written, a barrier after one), if any.
    pub(crate) refused: Option<JournalError>,
    /// Its record began in an earlier message, already stored: a refusal
    /// of this one does not mean nothing of it was written.
    pub(crate) continues: bool,
}

impl Callback {
    /// The answer, given the write's outcome.
    pub(crate) fn answer(self, outcome: Result<(), JournalError>) {
        let result = match (self.refused, outcome) {
            (Some(error), _) => Err(error),
            (None, Err(JournalError::Fenced | JournalError::NotHeld)) if self.continues => {
                Err(JournalError::Io { kind: std::io::ErrorKind::Other })
            }
            (None, outcome) => outcome,
        };
        (self.on_durable)(result);
    }
}

/// A write being gathered.
#[derive(Default)]
pub(crate) struct Message {
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: u64,
    pub(crate) callbacks: Vec<Callback>,
}

impl Message {
    /// Whether nothing was gathered yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.callbacks.is_empty() && self.bytes.is_empty()
    }

    /// Whether `frames` go into this message within `max`.
    pub(crate) fn fits(&self, frames: &[u8], max: usize) -> bool {
        self.bytes.len() + frames.len() <= max
    }

    /// The first part of a record too large for one message: its callback
    /// goes with its last part.
    pub(crate) fn push_part(&mut self, frames: &[u8]) {
        self.bytes.extend_from_slice(frames);
    }

    pub(crate) fn push_record(&mut self, frames: Vec<u8>, on_durable: OnDurable, continues: bool) {
        if self.bytes.is_empty() {
            self.bytes = frames;
        } else {
            self.bytes.extend_from_slice(&frames);
        }
        self.records += 1;
        self.callbacks.push(Callback { on_durable, refused: None, continues });
    }

    /// A barrier: answered with the outcome of the write. A record refused
    /// for a shard the node does not hold does not fail it: such records
    /// were never the node's to write.
    pub(crate) fn push_barrier(&mut self, on_durable: OnDurable) {
        self.callbacks.push(Callback { on_durable, refused: None, continues: false });
    }

    /// A record refused before it was written, answered in its turn.
    pub(crate) fn push_refused(&mut self, on_durable: OnDurable, error: JournalError) {
        self.callbacks.push(Callback { on_durable, refused: Some(error), continues: false });
    }
}
