//! # wallet-cluster
//! wallet on NATS JetStream:
//! - [`directory`]: the user store every node shares (users, sessions,
//!   the account directory, risk rules), on JetStream;
//! - [`events`]: the publisher that puts every durable change to an account
//!   on the stream `WALLET_EVENTS` exactly once, in order
//!   (`docs/ARCHITECTURE.md`, "Ledger events");
//! - [`journal`]: a node's journal on JetStream, fenced by the node's lease,
//!   and shard leases: the first part of cluster mode;
//! - [`placement`]: which node owns which shard, decided from the leases
//!   (routing between nodes comes next; the design is in the same
//!   document);
//! - [`node`]: a node's ledger writing through its journal (one node
//!   holding every shard, for now);
//! - [`host`]: either ledger, embedded or node, to whatever runs above it.

pub mod directory;
pub mod events;
pub mod host;
pub mod journal;
pub mod node;
pub mod placement;

/// The servers a NATS URL setting names: one URL, or several separated by
/// commas (members of one NATS cluster: the client connects to any that
/// answers, and moves to another when its server goes away).
pub fn nats_servers(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|server| !server.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_nats_url_names_one_server_or_several() {
        assert_eq!(super::nats_servers("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(super::nats_servers("nats://a:1, nats://b:2,"), ["nats://a:1", "nats://b:2"]);
    }
}
