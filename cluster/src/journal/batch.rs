//! Publishing on JetStream: one message plainly, several as one atomic
//! batch (every message is stored, or none), for the journal stream and the
//! events stream alike. async-nats has no batch API, so the headers are set
//! by hand: every message but the last goes as a plain publish, the last
//! commits the batch and is acknowledged (`../shared/FACTS.md`, "NATS").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::ErrorCode;
use bytes::Bytes;

use super::JournalStream;

/// A message about to be published.
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// A random number per process: batch ids never repeat across restarts
/// (in a container every start may have the same process id), while the
/// server may still hold an earlier start's batch open.
pub(crate) fn process_nonce() -> u64 {
    static NONCE: OnceLock<u64> = OnceLock::new();
    *NONCE.get_or_init(|| rand_core::RngCore::next_u64(&mut rand_core::OsRng))
}

fn next_batch_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!("{:x}-{}", process_nonce(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The JetStream error code an answer carried, if it carried one.
pub(crate) fn jetstream_code(error: &PublishError) -> Option<ErrorCode> {
    let source = std::error::Error::source(error)?;
    source.downcast_ref::<async_nats::jetstream::Error>().map(async_nats::jetstream::Error::error_code)
}

/// Whether the server refused a conditional write because another write
/// got there first: its condition did not hold (10071), or, on a replicated
/// stream, another write on the subject it names was still in flight at
/// the stream's leader (10164, "wrong last sequence" with no sequence; one
/// server checks such writes in turn and answers the loser 10071). Nothing
/// of it was stored; reading the subject again tells where it stands.
pub(crate) fn condition_refused(error: &PublishError) -> bool {
    error.kind() == PublishErrorKind::WrongLastSequence
        || jetstream_code(error) == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
}

/// Whether the server refused a conditional write without checking its
/// condition against what is stored: 10164 (above), or a newly elected
/// leader that cannot check yet (10163, "temporarily unavailable"). Nothing
/// of it was stored, and it says nothing about the condition: the same
/// write may be asked again.
pub(crate) fn condition_unchecked(error: &PublishError) -> bool {
    let code = jetstream_code(error);
    code == Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT)
        || code == Some(ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY)
}

/// Publishes `messages` on the journal stream ([`publish_on`] with its
/// connection and `ack_timeout`).
pub(crate) async fn publish(
    stream: &JournalStream,
    messages: Vec<Outgoing>,
) -> Result<PublishAck, PublishError> {
    publish_on(&stream.client, &stream.js, stream.options.ack_timeout, messages).await
}

/// Publishes `messages` (one plainly, several as one atomic batch) and
/// waits at most `ack_timeout` for the acknowledgement. The messages of a
/// committed batch take consecutive stream sequences, the last one the
/// acknowledged sequence. An error other than a refusal leaves the outcome
/// unknown: the messages may be stored.
pub(crate) async fn publish_on(
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    ack_timeout: std::time::Duration,
    messages: Vec<Outgoing>,
) -> Result<PublishAck, PublishError> {
    let count = messages.len();
    let batch_id = if count > 1 { next_batch_id() } else { String::new() };
    let mut messages = messages.into_iter().enumerate().peekable();
    while let Some((index, Outgoing { subject, mut headers, payload })) = messages.next() {
        if count > 1 {
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
        }
        if messages.peek().is_some() {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|error| PublishError::with_source(PublishErrorKind::BrokenPipe, error))?;
            continue;
        }
        if count > 1 {
            headers.insert("Nats-Batch-Commit", "1");
        }
        let ack = js.send_publish(subject, PublishMessage::build().headers(headers).payload(payload)).await?;
        return match tokio::time::timeout(ack_timeout, ack).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(PublishErrorKind::TimedOut)),
        };
    }
    // Nothing to publish: callers never ask for that.
    Err(PublishError::new(PublishErrorKind::Other))
}
