//! A shard's records read back from the journal stream, in order: what a
//! node taking a shard over replays after the shard's snapshot. A shard's
//! records may sit in the journals of several nodes (it moved), so every
//! node's journal after the position is read, in stream order.

use async_nats::jetstream::stream::RawMessageErrorKind;
use wallet_actors::ids::ShardId;
use wallet_actors::record::{Record, RECORD_FORMAT_VERSION};
use wallet_storage::frame::{decode_at, Decoded};

use super::{nats_error, JournalStream, StreamError, JOURNAL_SUBJECTS};

/// The records of `shard` in messages after stream sequence `after`, each
/// with the sequence of the message holding it. Read from the stream's
/// leader: a replica that lags would end the shard early.
pub async fn read_shard(
    stream: &JournalStream,
    shard: ShardId,
    after: u64,
) -> Result<Vec<(u64, Record)>, StreamError> {
    let mut records = Vec::new();
    let mut next = after + 1;
    loop {
        let request = stream.stream.raw_message_builder().next_by_subject(JOURNAL_SUBJECTS).sequence(next);
        let message = match request.send().await {
            Ok(message) => message,
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => return Ok(records),
            Err(error) => return Err(nats_error(error)),
        };
        let damaged = |reason: String| StreamError::Decode {
            subject: message.subject.to_string(),
            sequence: message.sequence,
            reason,
        };
        let mut offset = 0;
        loop {
            match decode_at::<(ShardId, Record)>(&message.payload, offset, RECORD_FORMAT_VERSION) {
                Ok(Decoded::Frame((of, record), end)) => {
                    if of == shard {
                        records.push((message.sequence, record));
                    }
                    offset = end;
                }
                Ok(Decoded::End) => break,
                Ok(Decoded::Invalid { .. }) => {
                    return Err(damaged(format!("no valid frame at byte {offset}")))
                }
                Err(error) => return Err(damaged(error.to_string())),
            }
        }
        next = message.sequence + 1;
    }
}
