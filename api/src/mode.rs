//! Which ledger a start opens: `wallet serve` or `wallet node`.

use wallet_actors::ids::NodeId;

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
        /// Waits for the shards however long another node holds them.
        standby: bool,
    },
}
