//! # wallet-cluster
//! wallet on NATS JetStream. Today: [`events`], the publisher that puts
//! every durable change to an account on the stream `WALLET_EVENTS`
//! exactly once, in order (`docs/ARCHITECTURE.md`, "Ledger events"). Next:
//! cluster mode (a journal and shard leases on JetStream, routing between
//! nodes; the design is in the same document).

pub mod events;
