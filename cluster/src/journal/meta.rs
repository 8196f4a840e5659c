//! The cluster's fixed settings on the journal stream: the shard count,
//! written by the first node that starts and checked by every later start
//! (a node counting shards differently would send records to the wrong
//! shards), as `meta.json` does in the embedded node's data directory.

use async_nats::header::HeaderMap;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;

use super::batch::{condition_refused, publish, Outgoing};
use super::{nats_error, JournalStream, StreamError};

/// The subject of the settings message (one, written once).
pub const META_SUBJECT: &str = "wallet.meta.settings";

/// The layout of journal messages: frames of `(Origin, Record)`. Stored
/// with the settings, so that a later layout can tell a stream it cannot read.
const JOURNAL_FORMAT: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    shard_count: u16,
    #[serde(default = "first_format")]
    journal_format: u32,
}

/// Settings written before the layout was named are of the first layout.
fn first_format() -> u32 {
    1
}

/// Writes `shard_count` if the stream has no settings yet; otherwise checks
/// that it is the one stored.
pub async fn ensure_shard_count(stream: &JournalStream, shard_count: u16) -> Result<(), StreamError> {
    loop {
        match stream.stream.get_last_raw_message_by_subject(META_SUBJECT).await {
            Ok(message) => {
                let stored: Meta =
                    serde_json::from_slice(&message.payload).map_err(|error| StreamError::Decode {
                        subject: META_SUBJECT.to_string(),
                        sequence: message.sequence,
                        reason: error.to_string(),
                    })?;
                if stored.shard_count != shard_count {
                    return Err(StreamError::ShardCount { found: stored.shard_count, expected: shard_count });
                }
                if stored.journal_format != JOURNAL_FORMAT {
                    return Err(StreamError::Options("the journal stream was written in another format"));
                }
                return Ok(());
            }
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(error) => return Err(nats_error(error)),
        }
        // Only if the subject is still empty: two first starts race, one wins.
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let meta = Meta { shard_count, journal_format: JOURNAL_FORMAT };
        let payload = serde_json::to_vec(&meta).map_err(nats_error)?;
        let outgoing = Outgoing { subject: META_SUBJECT.to_string(), headers, payload: Bytes::from(payload) };
        match publish(stream, vec![outgoing]).await {
            Ok(_) => return Ok(()),
            // Another start wrote first: read what it wrote.
            Err(error) if condition_refused(&error) => {}
            Err(error) => return Err(nats_error(error)),
        }
    }
}
