//! Shard journals on JetStream, fenced by leases: the storage cluster mode
//! builds on (`docs/ARCHITECTURE.md`, "Cluster mode: the journal and leases").
//!
//! One stream, [`STREAM`], holds each node's journal, `wallet.journal.<node>`,
//! and the leases ([`lease`]): one per node, which every journal message of
//! the node names as its condition, and one per shard, which says who owns
//! it. A node's writer ([`writer`]) puts whatever the node's shards
//! appended while its previous write was in flight into one message, so
//! the records of a node keep their order and become durable together, as
//! in the file journal (a plain message costs the server a fraction of an
//! atomic batch: BENCHMARKS.md, "Journal on JetStream"). Once another node
//! has taken over, the old owner's writes are refused by the server. [`read`]
//! gives a shard's records back, in order, for a node taking it over.
//!
//! - [`lease`]: take, renew and read leases;
//! - [`writer`]: the group-committing, fenced writer ([`ShardJournal`]);
//! - [`read`]: a shard's records in order.

mod batch;
pub mod lease;
pub mod read;
pub mod writer;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use wallet_actors::ids::NodeId;

pub use lease::{Lease, LeaseError, Leased};
pub use read::read_shard;
pub use writer::{JournalStats, ShardJournal};

/// The stream holding every node's journal and every lease.
pub const STREAM: &str = "WALLET_JOURNAL";

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
    /// How long the writer waits for a batch's acknowledgement before it
    /// counts the outcome unknown (the journal then fails, as a file
    /// journal whose write failed).
    pub ack_timeout: Duration,
    /// Most payload bytes in one message (under the server's `max_payload`).
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
            ack_timeout: Duration::from_secs(5),
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

/// A connection to the journal stream, created or updated at connect.
#[derive(Clone)]
pub struct JournalStream {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: stream::Stream,
    pub(crate) options: JournalOptions,
}

impl JournalStream {
    /// Connects and creates (or updates) [`STREAM`]: file storage, atomic
    /// batches (a node renews its leases together), per-message
    /// time to live (leases), direct gets (reads of a lease or a record
    /// without a consumer).
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
        if options.renew_every >= options.node_lease_ttl {
            return Err(StreamError::Options("leases must be renewed more often than they expire"));
        }
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(&options.nats_url)
            .await
            .map_err(nats_error)?;
        let js = jetstream::new(client.clone());
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec!["wallet.journal.*".to_string(), "wallet.lease.>".to_string()],
            storage: stream::StorageType::File,
            num_replicas: options.replicas,
            allow_direct: true,
            allow_atomic_publish: true,
            allow_message_ttl: true,
            ..Default::default()
        };
        js.create_or_update_stream(config).await.map_err(nats_error)?;
        let stream = js.get_stream(STREAM).await.map_err(nats_error)?;
        Ok(JournalStream { client, js, stream, options })
    }

    /// The options it was opened with.
    pub fn options(&self) -> &JournalOptions {
        &self.options
    }
}
