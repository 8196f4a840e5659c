//! Where the ledger runs: the embedded node's files (`wallet serve`), or a
//! node's journal on NATS JetStream (`wallet node`). The API above it is
//! the same.

use std::sync::Arc;

use wallet_actors::ids::NodeId;
use wallet_actors::Ledger;
use wallet_cluster::node::NodeLedger;
use wallet_storage::{EmbeddedLedger, JournalStats};

/// Which ledger a start opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The embedded single node: the journal in files under `--data-dir`.
    Embedded,
    /// A node whose journal is on the JetStream server at `--nats-url`.
    Node {
        /// Its id.
        node: NodeId,
        /// Replicas of the journal stream.
        journal_replicas: usize,
    },
}

/// An open ledger and the storage under it.
pub(crate) enum LedgerHost {
    Embedded(Box<EmbeddedLedger>),
    Node(NodeLedger),
}

impl LedgerHost {
    pub(crate) fn ledger(&self) -> Ledger {
        match self {
            LedgerHost::Embedded(embedded) => embedded.ledger.clone(),
            LedgerHost::Node(node) => node.ledger.clone(),
        }
    }

    /// The file journal's counters, for `/metrics` (a node's journal on
    /// JetStream has no files: zeros).
    pub(crate) fn journal_stats(&self) -> Arc<JournalStats> {
        match self {
            LedgerHost::Embedded(embedded) => embedded.journal_stats(),
            LedgerHost::Node(_) => Arc::default(),
        }
    }

    /// Stops the shards with everything acknowledged durable (the embedded
    /// node takes a last checkpoint; a node releases its leases).
    pub(crate) async fn shutdown(self) {
        match self {
            LedgerHost::Embedded(embedded) => embedded.shutdown().await,
            LedgerHost::Node(node) => node.shutdown().await,
        }
    }
}
