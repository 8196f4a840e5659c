//! The hash maps of the hot path. Keys are client-chosen ids, so the hasher
//! must be seeded (no chosen-collision attacks) but need not be SipHash:
//! foldhash is both seeded and several times faster.

/// A `HashMap` with a seeded foldhash hasher.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A `HashSet` with a seeded foldhash hasher.
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
