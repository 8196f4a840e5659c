//! # wallet-cluster
//! Cluster mode on NATS JetStream: a journal and shard leases on JetStream,
//! routing between nodes. Comes after the ledger core; the traits it implements
//! (`wallet_actors::record::Journal`) are already in place.
