//! The journal's records.
//!
//! The actors never touch a disk: they hand [`Record`]s to a
//! [`crate::ports::Journal`] and hear back once the record is durable. The
//! embedded node's journal is a file (`wallet-storage`); cluster mode adds
//! one on NATS JetStream.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::account::{AccountEvent, Leg};
use crate::ids::{AccountId, CommitId, ShardId, TransferId};
use crate::transfer::{Transfer, TransferStatus};

/// Version of the record format; stored in every frame, checked on load.
/// 3: review decisions travel in `Applied` and `Commit`.
/// 5: commit ids name their epoch and decider; `Epoch` records.
/// 6: ids are 16 fixed bytes.
pub const RECORD_FORMAT_VERSION: u8 = 6;

/// One event of one account, with its gap-free sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequencedEvent {
    /// The account.
    pub account_id: AccountId,
    /// Its sequence number: the account's previous one plus one.
    pub sequence: u64,
    /// What happened.
    pub event: AccountEvent,
}

/// A pending transfer leaving the pending state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The pending transfer.
    pub pending_id: TransferId,
    /// Posted, voided or expired.
    pub status: TransferStatus,
}

/// A durable change. A record is all-or-nothing: it is either whole in the
/// journal or absent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Work done inside one shard: transfers, their resolutions and every
    /// account event, with sequence numbers.
    Applied(Applied),
    /// The decision to commit transfers whose legs span shards. Once this is
    /// durable the transfers have happened; each shard then applies its legs
    /// and says so with [`Record::CommitApplied`]. Recovery applies any legs a
    /// crash left unapplied.
    Commit(Commit),
    /// Several records of one shard written as one frame, in order.
    Batch(Vec<Record>),
    /// A snapshot is being taken: everything before this record is in it.
    /// Nothing to apply; it marks the journal for readers.
    Checkpoint {
        /// Journal segment from which recovery replays after that snapshot.
        replay_from_segment: u64,
    },
    /// Risk rules vetoed transfers. Changes no balance; kept for audit.
    /// (A review decision travels in the record of its hold.)
    Decisions(Vec<crate::risk::Decision>),
    /// One shard applied its legs of a commit, in the commit's leg order,
    /// with these sequence numbers.
    CommitApplied {
        /// The commit.
        commit_id: CommitId,
        /// The shard.
        shard_id: ShardId,
        /// Sequence numbers given to the shard's legs, in leg order.
        sequences: Vec<u64>,
    },
    /// A start gives commit ids of this epoch from now on (see
    /// [`crate::ids::CommitId`]). Durable before the start serves, so no
    /// later start takes the same epoch even if none of its commits became
    /// durable.
    Epoch(u64),
}

/// See [`Record::Applied`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// New transfers.
    pub transfers: Vec<Arc<Transfer>>,
    /// Pending transfers posted, voided or expired.
    pub resolutions: Vec<Resolution>,
    /// Account events, in the order they were applied.
    pub events: Vec<SequencedEvent>,
    /// Review decisions of the holds among `transfers`: durable with them.
    pub decisions: Vec<crate::risk::Decision>,
    /// When the shard made it, in ledger milliseconds: the time of its
    /// status changes (legs carry their own, [`crate::account::Leg::at_ms`]).
    pub at_ms: u64,
}

/// See [`Record::Commit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// Its id.
    pub commit_id: CommitId,
    /// New transfers.
    pub transfers: Vec<Arc<Transfer>>,
    /// Pending transfers posted, voided or expired.
    pub resolutions: Vec<Resolution>,
    /// Every leg of every transfer, in order.
    pub legs: Vec<Leg>,
    /// The shard that wrote this record, when it applied its own legs in the
    /// same step (a transfer between two shards, committed by the credit
    /// side): that shard needs no [`Record::CommitApplied`].
    pub applied_by: Option<ShardApplied>,
    /// Review decisions of the holds among `transfers`: durable with them.
    pub decisions: Vec<crate::risk::Decision>,
}

/// One shard's application of its legs of a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardApplied {
    /// The shard.
    pub shard_id: ShardId,
    /// Sequence numbers given to its legs, in leg order.
    pub sequences: Vec<u64>,
}
