//! Identifiers: accounts, users, transfers, shards, commits.
//!
//! Ids are 128-bit integers, never zero, the way TigerBeetle's are: fixed size
//! keys keep indexes and journal frames small, and a UUID fits one exactly.
//! The wire format (UUID text) is the API's business, not this module's.
//!
//! Stored (binary serde formats: postcard), an id is 16 fixed bytes: ids are
//! random (UUIDs), and a varint of a random 128-bit number takes 19 bytes
//! and a loop to write and read. Human-readable formats keep the number.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::num::NonZeroU128;

use crate::rejection::InvalidInput;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(NonZeroU128);

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.serialize_newtype_struct($what, &self.0)
                } else {
                    serializer.serialize_newtype_struct($what, &self.0.get().to_be_bytes())
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(rename = $what)]
                struct Text(NonZeroU128);
                #[derive(Deserialize)]
                #[serde(rename = $what)]
                struct Binary([u8; 16]);
                if deserializer.is_human_readable() {
                    Text::deserialize(deserializer).map(|Text(value)| $name(value))
                } else {
                    let Binary(bytes) = Binary::deserialize(deserializer)?;
                    NonZeroU128::new(u128::from_be_bytes(bytes))
                        .map($name)
                        .ok_or_else(|| serde::de::Error::custom(concat!("a zero ", $what)))
                }
            }
        }

        impl $name {
            /// Builds the id; zero is refused because it means "no id".
            pub fn new(value: u128) -> Result<Self, InvalidInput> {
                NonZeroU128::new(value).map($name).ok_or(InvalidInput::ZeroId { what: $what })
            }

            /// The id as an integer.
            pub fn get(self) -> u128 {
                self.0.get()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:032x})", stringify!($name), self.0.get())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:032x}", self.0.get())
            }
        }
    };
}

id_type!(
    /// An account's id, chosen by whoever opens it.
    AccountId, "account_id"
);
id_type!(
    /// A user's id. The settlement accounts belong to [`UserId::SYSTEM`].
    UserId, "user_id"
);
id_type!(
    /// A transfer's id, supplied by the client; it is also the idempotency key.
    TransferId, "transfer_id"
);

id_type!(
    /// A risk rule's id.
    RuleId, "rule_id"
);

impl UserId {
    /// The owner of the per-asset settlement accounts.
    pub const SYSTEM: UserId = UserId(NonZeroU128::MIN);
}

/// A node of a cluster. The embedded node is the one node,
/// [`NodeId::EMBEDDED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The embedded single node.
    pub const EMBEDDED: NodeId = NodeId(0);
}

/// Index of a shard: `0..shard_count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId(pub u16);

/// Id of one commit of transfers spanning shards. Never used twice, by any
/// start of any node: `epoch` is a number no other start used (journaled
/// before the start serves, see [`crate::record::Record::Epoch`]) and
/// `counter` counts within it, so an id a crash left undecided is never
/// reused for another commit. `decider` is the shard whose journal holds
/// (or will hold) the one record that decides it, so a participant knows
/// whom to ask (`docs/ARCHITECTURE.md`, "Messages between shards").
///
/// Ordered by epoch and counter first: the order in which they were given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommitId {
    /// The start that gave the id.
    pub epoch: u64,
    /// Its place among the ids of that start, from 1.
    pub counter: u64,
    /// The shard whose journal holds the deciding record.
    pub decider: ShardId,
}

impl CommitId {
    /// A key that sorts as the id does (epoch, counter, decider; big endian).
    pub fn to_key(self) -> [u8; 18] {
        let mut key = [0u8; 18];
        key[..8].copy_from_slice(&self.epoch.to_be_bytes());
        key[8..16].copy_from_slice(&self.counter.to_be_bytes());
        key[16..].copy_from_slice(&self.decider.0.to_be_bytes());
        key
    }
}

impl std::fmt::Display for CommitId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}@{}", self.epoch, self.counter, self.decider.0)
    }
}

/// Gives commit ids of one epoch. The epoch must be durable, and unused by
/// any other start, before the first id is given.
#[derive(Debug)]
pub struct CommitIds {
    epoch: u64,
    next: std::sync::atomic::AtomicU64,
}

impl CommitIds {
    /// Ids of `epoch`, counting from 1.
    pub fn new(epoch: u64) -> Self {
        Self { epoch, next: std::sync::atomic::AtomicU64::new(1) }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A new id, for a commit decided in `decider`'s journal.
    pub fn next(&self, decider: ShardId) -> CommitId {
        let counter = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        CommitId { epoch: self.epoch, counter, decider }
    }
}

/// A stable 64-bit mix of an account id. Shard placement must never change
/// between builds or platforms, so std's `DefaultHasher` (unspecified, and
/// seeded differently by some builds) is not used.
pub fn stable_hash(value: u128) -> u64 {
    // splitmix64's finaliser over both halves: cheap, well distributed.
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let low = value as u64;
    let high = (value >> 64) as u64;
    mix(low ^ mix(high.wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

impl AccountId {
    /// The shard that owns this account among `shard_count` shards.
    pub fn shard(self, shard_count: u16) -> ShardId {
        ShardId((stable_hash(self.get()) % u64::from(shard_count.max(1))) as u16)
    }
}

impl UserId {
    /// The user's home shard among `shard_count` shards: the API places the
    /// accounts it opens for the user there (an account whose id lands on
    /// it), so one shard sees every debit of the user's accounts and keeps
    /// the user's velocity window (`docs/ARCHITECTURE.md`, "Risk rules").
    pub fn home_shard(self, shard_count: u16) -> ShardId {
        ShardId((stable_hash(self.get()) % u64::from(shard_count.max(1))) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_ids_are_refused() {
        assert!(AccountId::new(0).is_err());
        assert!(TransferId::new(0).is_err());
        assert_eq!(UserId::new(1).ok(), Some(UserId::SYSTEM));
    }

    #[test]
    fn placement_is_stable() {
        // These values pin the hash: changing it would move every account.
        assert_eq!(stable_hash(1), 11_385_487_063_155_714_807);
        assert_eq!(
            AccountId::new(1).map(|id| id.shard(64)),
            Ok(ShardId((11_385_487_063_155_714_807_u64 % 64) as u16))
        );
    }

    #[test]
    fn placement_spreads() {
        let mut counts = [0u32; 64];
        for i in 1..=64_000u128 {
            if let Ok(id) = AccountId::new(i) {
                counts[id.shard(64).0 as usize] += 1;
            }
        }
        assert!(counts.iter().all(|&c| c > 800 && c < 1200), "{counts:?}");
    }
}
