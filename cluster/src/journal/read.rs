//! A shard's records read back from the journal stream, in order: what a
//! node taking a shard over replays after the shard's snapshot. A shard's
//! records may sit in the journals of several nodes (it moved), so every
//! node's journal after the position is read, in stream order.
//!
//! Up to the stream's last sequence as read at the start, an ordered
//! consumer filtered on the journal subjects streams the messages (the
//! server skips the lease messages in between, which outnumber journal
//! messages on an idle node); then the tail after it is read with "the next
//! journal message from here" gets, each answered by the stream's leader,
//! until there is no more, in case the stream's last sequence came from a
//! replica that lags. (With a replicated stream, whether the consumer's
//! server may lag the leader is not checked yet: tested on one server.)

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::RawMessageErrorKind;
use futures_util::StreamExt;
use wallet_actors::ids::ShardId;
use wallet_actors::ports::Origin;
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
    read_records(stream, after, |sequence, origin, record| {
        if origin == Origin::Shard(shard) {
            records.push((sequence, record));
        }
        Ok::<_, StreamError>(())
    })
    .await?;
    Ok(records)
}

/// Where a record was read: the stream sequence of the message holding it,
/// and the journal subject it was written on (the writer's node).
#[derive(Clone, Copy, Debug)]
pub struct ReadAt<'a> {
    /// The message's stream sequence.
    pub sequence: u64,
    /// Its subject, `wallet.journal.<node>`.
    pub subject: &'a str,
}

/// Hands every record of every node's journal after stream sequence
/// `after` to `each`, in stream order, with the sequence of the message
/// holding it and its origin; stops at the first error.
pub async fn read_records<E: From<StreamError>>(
    stream: &JournalStream,
    after: u64,
    mut each: impl FnMut(u64, Origin, Record) -> Result<(), E>,
) -> Result<(), E> {
    let mut each = |at: ReadAt<'_>, origin, record| each(at.sequence, origin, record);
    let last = stream.stream.get_info().await.map_err(nats_error)?.state.last_sequence;
    read_windows(stream, after, last, &mut each).await?;
    let mut next = after.max(last) + 1;
    while let Some(message) = next_journal_message(stream, next).await? {
        next = message.sequence + 1;
        hand_over(message.sequence, &message.subject, &message.payload, &mut each)?;
    }
    Ok(())
}

/// As [`read_records`], for the messages with sequences `after + 1..=last`
/// only, each record with where it was read.
pub async fn read_records_until<E: From<StreamError>>(
    stream: &JournalStream,
    after: u64,
    last: u64,
    mut each: impl FnMut(ReadAt<'_>, Origin, Record) -> Result<(), E>,
) -> Result<(), E> {
    read_windows(stream, after, last, &mut each).await
}

/// Hands over the records of the journal messages `after + 1..=last`, in
/// order, streamed by an ordered consumer (the server sends them in
/// batches, payloads as stored, where a get per message cost a request and
/// a base64 JSON answer each).
async fn read_windows<E: From<StreamError>>(
    stream: &JournalStream,
    after: u64,
    last: u64,
    each: &mut impl FnMut(ReadAt<'_>, Origin, Record) -> Result<(), E>,
) -> Result<(), E> {
    if last <= after {
        return Ok(());
    }
    let config = pull::OrderedConfig {
        filter_subject: JOURNAL_SUBJECTS.to_string(),
        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
        ..Default::default()
    };
    let mut consumer = stream.stream.create_consumer(config).await.map_err(nats_error)?;
    if consumer.info().await.map_err(nats_error)?.num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await.map_err(nats_error)?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(nats_error)?;
        let info = message.info().map_err(nats_error)?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        if sequence > last {
            break;
        }
        hand_over(sequence, &message.subject, &message.payload, each)?;
        if sequence == last || pending == 0 {
            break;
        }
    }
    Ok(())
}

/// The first journal message at `from` or after, from the stream's leader.
async fn next_journal_message(
    stream: &JournalStream,
    from: u64,
) -> Result<Option<StreamMessage>, StreamError> {
    let request = stream.stream.raw_message_builder().next_by_subject(JOURNAL_SUBJECTS).sequence(from);
    match request.send().await {
        Ok(message) => Ok(Some(message)),
        Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(nats_error(error)),
    }
}

/// How many of a node's journal messages from a checkpoint's position on
/// are looked at for its marker: the checkpoint appends it right after it
/// captured the shards, a few group commits after the position.
const MARKER_SEARCH: usize = 1_024;

/// The sequence of the message on `subject` holding the checkpoint marker
/// naming `position`, among that node's first messages from `position` on.
pub(crate) async fn find_checkpoint_marker(
    stream: &JournalStream,
    subject: &str,
    position: u64,
) -> Result<Option<u64>, StreamError> {
    let mut from = position;
    for _ in 0..MARKER_SEARCH {
        let request = stream.stream.raw_message_builder().next_by_subject(subject).sequence(from);
        let message = match request.send().await {
            Ok(message) => message,
            Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(error) => return Err(nats_error(error)),
        };
        if holds_marker(&message.payload, position) {
            return Ok(Some(message.sequence));
        }
        from = message.sequence + 1;
    }
    Ok(None)
}

/// Whether the message at `sequence` is on `subject` and holds the
/// checkpoint marker naming `position`: the stream is the one the marker's
/// checkpoint was taken from, not one that lost messages and was written
/// again since.
pub(crate) async fn is_checkpoint_marker(
    stream: &JournalStream,
    subject: &str,
    sequence: u64,
    position: u64,
) -> Result<bool, StreamError> {
    match stream.stream.raw_message_builder().sequence(sequence).send().await {
        Ok(message) => Ok(message.subject.as_str() == subject && holds_marker(&message.payload, position)),
        Err(error) if error.kind() == RawMessageErrorKind::NoMessageFound => Ok(false),
        Err(error) => Err(nats_error(error)),
    }
}

fn holds_marker(payload: &[u8], position: u64) -> bool {
    let mut found = false;
    let _ = hand_over::<StreamError>(0, "", payload, &mut |_, origin, record| {
        found |= origin == Origin::Node
            && matches!(record, Record::Checkpoint { replay_from_segment } if replay_from_segment == position);
        Ok(())
    });
    found
}

/// Decodes `message`'s frames and hands each record to `each`.
fn hand_over<E: From<StreamError>>(
    sequence: u64,
    subject: &str,
    payload: &[u8],
    each: &mut impl FnMut(ReadAt<'_>, Origin, Record) -> Result<(), E>,
) -> Result<(), E> {
    let at = ReadAt { sequence, subject };
    let damaged = |reason: String| StreamError::Decode { subject: subject.to_string(), sequence, reason };
    let mut offset = 0;
    loop {
        match decode_at::<(Origin, Record)>(payload, offset, RECORD_FORMAT_VERSION) {
            Ok(Decoded::Frame((origin, record), end)) => {
                each(at, origin, record)?;
                offset = end;
            }
            Ok(Decoded::End) => return Ok(()),
            Ok(Decoded::Invalid { .. }) => {
                return Err(damaged(format!("no valid frame at byte {offset}")).into())
            }
            Err(error) => return Err(damaged(error.to_string()).into()),
        }
    }
}
