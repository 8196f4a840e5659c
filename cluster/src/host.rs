//! Where a ledger runs: the embedded node's files (`wallet serve`), or a
//! node's journal on NATS JetStream (`wallet node`). What runs above it
//! (the API, the load generator) is the same.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use wallet_actors::Ledger;
use wallet_storage::{EmbeddedLedger, JournalStats};

use crate::node::NodeLedger;

/// Says whether a ledger's journal stopped ([`LedgerHost::journal_check`]).
pub type JournalCheck = Arc<dyn Fn() -> bool + Send + Sync>;

/// An open ledger and the storage under it.
pub enum LedgerHost {
    /// The embedded single node.
    Embedded(Box<EmbeddedLedger>),
    /// A node whose journal is on JetStream.
    Node(Box<NodeLedger>),
}

impl LedgerHost {
    /// The ledger.
    pub fn ledger(&self) -> Ledger {
        match self {
            LedgerHost::Embedded(embedded) => embedded.ledger.clone(),
            LedgerHost::Node(node) => node.ledger.clone(),
        }
    }

    /// The file journal's counters, for `/metrics` (a node's journal on
    /// JetStream has no files: zeros; its own figures are histograms).
    pub fn file_journal_stats(&self) -> Arc<JournalStats> {
        match self {
            LedgerHost::Embedded(embedded) => embedded.journal_stats(),
            LedgerHost::Node(_) => Arc::default(),
        }
    }

    /// Records made durable so far, and the writes that did it (file
    /// syncs, or stream messages): how much group commit gathers.
    pub fn journal_writes(&self) -> (u64, u64) {
        match self {
            LedgerHost::Embedded(embedded) => {
                let stats = embedded.journal_stats();
                (stats.records.load(Ordering::Relaxed), stats.syncs.load(Ordering::Relaxed))
            }
            LedgerHost::Node(node) => {
                let stats = node.journal().stats();
                (stats.records.load(Ordering::Relaxed), stats.messages.load(Ordering::Relaxed))
            }
        }
    }

    /// Whether the journal stopped without a failed write telling the
    /// ledger (a node fenced by a renewal: another start or node took its
    /// lease while it was paused): it stores nothing more, so it must not
    /// go on answering as if it held the shards.
    pub fn journal_check(&self) -> Option<JournalCheck> {
        match self {
            LedgerHost::Embedded(_) => None,
            LedgerHost::Node(node) => {
                let journal = node.journal().clone();
                Some(Arc::new(move || journal.stopped()))
            }
        }
    }

    /// Stops the shards with everything acknowledged durable (the embedded
    /// node takes a last checkpoint; a node releases its leases).
    pub async fn shutdown(self) {
        match self {
            LedgerHost::Embedded(embedded) => embedded.shutdown().await,
            LedgerHost::Node(node) => (*node).shutdown().await,
        }
    }
}
