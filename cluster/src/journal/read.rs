//! A shard's records read back from the journal stream, in order: what a
//! node taking a shard over replays after the shard's snapshot. A shard's
//! records may sit in the journals of several nodes (it moved), so every
//! node's journal after the position is read, in stream order.

use async_nats::jetstream::stream::RawMessageErrorKind;
use wallet_actors::ids::ShardId;
use wallet_actors::ports::Origin;
use wallet_actors::record::{Record, RECORD_FORMAT_VERSION};
use wallet_storage::frame::{decode_at, Decoded};

use futures_util::StreamExt;

use super::{nats_error, JournalStream, StreamError};

/// What every node's journal subject begins with ([`super::JOURNAL_SUBJECTS`]).
const JOURNAL_PREFIX: &str = "wallet.journal.";

/// The records of `shard` in messages after stream sequence `after`, each
/// with the sequence of the message holding it. Read from the stream's
/// leader: a replica that lags would end the shard early.
pub async fn read_shard(
    stream: &JournalStream,
    shard: ShardId,
    after: u64,
) -> Result<Vec<(u64, Record)>, StreamError> {
    let mut records = Vec::new();
    read_records(stream, after, |sequence, origin, record| {
        if origin == Origin::Shard(shard) {
            records.push((sequence, record));
        }
        Ok::<_, StreamError>(())
    })
    .await?;
    Ok(records)
}

/// Stream messages read at once: gets are answered one by one by the
/// stream's leader, so many in flight keep it busy.
const READS_IN_FLIGHT: usize = 64;

/// Hands every record of every node's journal after stream sequence
/// `after`, up to the stream's last message when the read starts, to
/// `each`, in stream order, with the sequence of the message holding it and
/// its origin; stops at the first error. Each message is a get answered by
/// the stream's leader (a replica that lags would end the read early), up
/// to [`READS_IN_FLIGHT`] at once; messages that are not journal messages
/// (leases), or gone (expired leases), are skipped.
pub async fn read_records<E: From<StreamError>>(
    stream: &JournalStream,
    after: u64,
    mut each: impl FnMut(u64, Origin, Record) -> Result<(), E>,
) -> Result<(), E> {
    let last = stream.stream.get_info().await.map_err(nats_error)?.state.last_sequence;
    let gets = futures_util::stream::iter(after + 1..=last)
        .map(|sequence| stream.stream.get_raw_message(sequence))
        .buffered(READS_IN_FLIGHT);
    futures_util::pin_mut!(gets);
    while let Some(got) = gets.next().await {
        let message = match got {
            Ok(message) => message,
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => continue,
            Err(error) => return Err(nats_error(error).into()),
        };
        if !message.subject.starts_with(JOURNAL_PREFIX) {
            continue;
        }
        let damaged = |reason: String| StreamError::Decode {
            subject: message.subject.to_string(),
            sequence: message.sequence,
            reason,
        };
        let mut offset = 0;
        loop {
            match decode_at::<(Origin, Record)>(&message.payload, offset, RECORD_FORMAT_VERSION) {
                Ok(Decoded::Frame((origin, record), end)) => {
                    each(message.sequence, origin, record)?;
                    offset = end;
                }
                Ok(Decoded::End) => break,
                Ok(Decoded::Invalid { .. }) => {
                    return Err(damaged(format!("no valid frame at byte {offset}")).into())
                }
                Err(error) => return Err(damaged(error.to_string()).into()),
            }
        }
    }
    Ok(())
}
