//! Node journals on JetStream, fenced by leases: the storage cluster mode
//! builds on (`docs/ARCHITECTURE.md`, "Cluster mode: the journal and leases").
//!
//! One stream, [`STREAM`], holds each node's journal, `wallet.journal.<node>`,
//! and the leases ([`lease`]): one per node, which every journal message of
//! the node names as its condition (the fence), and one per shard, which
//! says who owns it. A node's writer ([`writer`]) puts whatever the node's
//! shards appended while its previous write was in flight into one message,
//! so the records of a node keep their order and become durable together,
//! as in the file journal (a plain message costs the server a fraction of
//! an atomic batch: BENCHMARKS.md, "journal on JetStream"). Once the node's
//! lease changed or expired, the server refuses its writes. [`read`] gives a
//! shard's records back, in order, for a node taking it over.
//!
//! - [`lease`]: take, renew and read leases;
//! - [`writer`]: the group-committing, fenced writer ([`NodeJournal`]);
//! - [`read`]: a shard's records in order.

pub(crate) mod batch;
pub mod fence;
pub mod lease;
mod message;
pub mod meta;
pub mod read;
pub mod writer;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use wallet_actors::ids::NodeId;

pub use lease::{Holder, Lease, LeaseError, LeaseState, Leased};
pub use read::{read_records, read_records_until, read_shard, ReadAt};
pub use writer::{JournalStats, NodeJournal};

/// The stream holding every node's journal and every lease.
pub const STREAM: &str = "WALLET_JOURNAL";

/// Every node's journal.
pub const JOURNAL_SUBJECTS: &str = "wallet.journal.*";

/// Every lease.
pub const LEASE_SUBJECTS: &str = "wallet.lease.>";

/// The cluster's fixed settings ([`meta`]).
pub const META_SUBJECTS: &str = "wallet.meta.>";

/// The subject of `node`'s journal: the records of the shards it owns.
pub fn journal_subject(node: NodeId) -> String {
    format!("wallet.journal.{}", node.0)
}

/// How a node reaches the journal stream, and its limits.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// `nats://HOST:PORT`.
    pub nats_url: String,
    /// Replicas of the stream (1 on one server, 3 on a three-server cluster).
    pub replicas: usize,
    /// How long a node's lease lasts without renewal: a node that stopped
    /// renewing (dead or paused) stores nothing once it has passed. Whole
    /// seconds, shorter than `shard_lease_ttl`.
    pub node_lease_ttl: Duration,
    /// How long a shard's lease lasts without renewal: another node may
    /// take the shard once it has passed. Whole seconds, longer than
    /// `node_lease_ttl` by at least one, so the old owner is fenced first.
    pub shard_lease_ttl: Duration,
    /// How often a node renews its leases; well under `node_lease_ttl`, so
    /// that a renewal may be late without losing them.
    pub renew_every: Duration,
    /// How long the writer waits for a write's acknowledgement before it
    /// counts the outcome unknown (the journal then fails, as a file
    /// journal whose write failed). With `renew_every`, under
    /// `node_lease_ttl`: a renewal waits for at most one write before it.
    pub ack_timeout: Duration,
    /// Most bytes of records gathered into one message. A shard's flush
    /// larger than that is cut at its records; a single record larger than
    /// that goes alone, up to the server's `max_payload` (`nats.conf`:
    /// 16 MB, for the largest linked request).
    pub message_bytes_max: usize,
}

impl JournalOptions {
    /// Defaults for a server at `nats_url`.
    pub fn new(nats_url: impl Into<String>) -> Self {
        JournalOptions {
            nats_url: nats_url.into(),
            replicas: 1,
            node_lease_ttl: Duration::from_secs(2),
            shard_lease_ttl: Duration::from_secs(3),
            renew_every: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(1),
            message_bytes_max: 512 * 1024,
        }
    }
}

/// What went wrong talking to the journal stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// NATS could not be reached, or refused a request.
    #[error("NATS: {0}")]
    Nats(String),
    /// The options cannot keep the guarantees.
    #[error("journal options: {0}")]
    Options(&'static str),
    /// The stream's journal was written with another shard count.
    #[error("the journal stream holds {found} shards, not {expected}; the shard count is fixed")]
    ShardCount {
        /// The count stored.
        found: u16,
        /// The count this node was started with.
        expected: u16,
    },
    /// A stored message does not decode: the stream is damaged or was
    /// written by another format.
    #[error("message {sequence} on {subject} does not decode: {reason}")]
    Decode {
        /// Its subject.
        subject: String,
        /// The stream sequence of the message.
        sequence: u64,
        /// Why.
        reason: String,
    },
}

/// Errors of the NATS client, kept as text: callers only log them or retry.
pub(crate) fn nats_error(error: impl std::fmt::Display) -> StreamError {
    StreamError::Nats(error.to_string())
}

/// Whether `error` says the stream does not exist (and nothing else).
fn stream_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(error)
            if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// How long the server remembers a message id (JetStream's default).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Bytes of a message's `max_payload` left for its headers.
const HEADER_ROOM_BYTES: usize = 4096;

/// A connection to the journal stream, created or updated at connect.
#[derive(Clone)]
pub struct JournalStream {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) options: JournalOptions,
    /// Largest message the server takes, less room for headers.
    pub(crate) payload_bytes_max: usize,
}

impl JournalStream {
    /// Connects and creates (or updates) [`STREAM`]: file storage, atomic
    /// batches (a node renews its leases together), per-message time to
    /// live (leases). Reads go to the stream's leader (no direct gets,
    /// which a lagging replica may answer).
    pub async fn connect(options: JournalOptions) -> Result<JournalStream, StreamError> {
        let whole = |ttl: Duration| ttl.subsec_nanos() == 0 && ttl.as_secs() > 0;
        if !whole(options.node_lease_ttl) || !whole(options.shard_lease_ttl) {
            return Err(StreamError::Options("lease times to live are whole seconds"));
        }
        if options.node_lease_ttl >= options.shard_lease_ttl {
            return Err(StreamError::Options(
                "a node lease must expire before the shard leases renewed with it",
            ));
        }
        let renewal_bound = options.renew_every.checked_add(options.ack_timeout);
        if options.renew_every.is_zero() || renewal_bound.is_none_or(|bound| bound >= options.node_lease_ttl)
        {
            return Err(StreamError::Options(
                "leases must be renewed, and a write acknowledged, well within a node lease",
            ));
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(crate::nats_servers(&options.nats_url))
            .await
            .map_err(nats_error)?;
        let js = jetstream::new(client.clone());
        // Never fewer replicas than the stream has: a node started without
        // the setting must not shrink a replicated journal to one copy.
        let replicas = match js.get_stream(STREAM).await {
            Ok(existing) => {
                let stored = existing.cached_info().config.num_replicas;
                if stored > options.replicas {
                    tracing::warn!(stored, asked = options.replicas, "the journal stream keeps its replicas");
                }
                stored.max(options.replicas)
            }
            Err(error) if stream_not_found(&error) => options.replicas,
            // Not known (an election, a time-out): never guess low.
            Err(error) => return Err(nats_error(error)),
        };
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec![
                JOURNAL_SUBJECTS.to_string(),
                LEASE_SUBJECTS.to_string(),
                META_SUBJECTS.to_string(),
            ],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            allow_atomic_publish: true,
            allow_message_ttl: true,
            // A write asked again with its id is stored once within it:
            // far longer than a writer asks (`node_lease_ttl`).
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        js.create_or_update_stream(config).await.map_err(nats_error)?;
        let stream = js.get_stream(STREAM).await.map_err(nats_error)?;
        let payload_bytes_max = (client.server_info().max_payload).saturating_sub(HEADER_ROOM_BYTES);
        if options.message_bytes_max > payload_bytes_max {
            return Err(StreamError::Options("message_bytes_max is over the server's max_payload"));
        }
        Ok(JournalStream { client, js, stream, options, payload_bytes_max })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &JournalOptions {
        &self.options
    }
}
