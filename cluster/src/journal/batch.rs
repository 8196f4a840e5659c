//! One atomic batch on the journal stream: every message is stored, or none.
//! async-nats has no batch API, so the headers are set by hand: every message
//! but the last goes as a plain publish, the last commits the batch and is
//! acknowledged (`../shared/FACTS.md`, "NATS").

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use bytes::Bytes;

use super::JournalStream;

/// A message about to be published.
pub(crate) struct Outgoing {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) payload: Bytes,
}

/// Names batches uniquely within this process (the server tracks a batch by
/// its id only while it is open).
pub(crate) fn batch_id(node: u32, counter: u64) -> String {
    format!("{node}-{}-{counter}", std::process::id())
}

/// Publishes `messages` (at least one) as one atomic batch and waits at
/// most the stream's `ack_timeout` for its acknowledgement. The messages of
/// a committed batch take consecutive stream sequences, the last one the
/// acknowledged sequence. An error other than a refusal leaves the outcome
/// unknown: the batch may be stored.
pub(crate) async fn publish_atomic(
    stream: &JournalStream,
    batch_id: &str,
    messages: Vec<Outgoing>,
) -> Result<PublishAck, PublishError> {
    let count = messages.len();
    for (index, message) in messages.into_iter().enumerate() {
        let Outgoing { subject, mut headers, payload } = message;
        if count > 1 {
            headers.insert("Nats-Batch-Id", batch_id);
            headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
        }
        if index + 1 < count {
            stream
                .client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|error| PublishError::with_source(PublishErrorKind::BrokenPipe, error))?;
            continue;
        }
        if count > 1 {
            headers.insert("Nats-Batch-Commit", "1");
        }
        let ack = stream
            .js
            .send_publish(subject, PublishMessage::build().headers(headers).payload(payload))
            .await?;
        return match tokio::time::timeout(stream.options.ack_timeout, ack).await {
            Ok(result) => result,
            Err(_) => Err(PublishError::new(PublishErrorKind::TimedOut)),
        };
    }
    Err(PublishError::new(PublishErrorKind::Other))
}
