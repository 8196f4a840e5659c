//! The journal's records and the traits behind which storage lives.
//!
//! The actors never touch a disk: they hand [`Record`]s to a [`Journal`] and
//! hear back once the record is durable. The embedded node's journal is a
//! file (`wallet-storage`); cluster mode adds one on NATS JetStream.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::account::{AccountEvent, Leg};
use crate::ids::{AccountId, CommitId, ShardId, TransferId};
use crate::transfer::{Transfer, TransferStatus};

/// Version of the record format; stored in every frame, checked on load.
/// 3: review decisions travel in `Applied` and `Commit`.
pub const RECORD_FORMAT_VERSION: u8 = 4;

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

/// Why a journal could not make a record durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// A write or sync failed; whether the record is durable is unknown, so
    /// the ledger stops taking writes until it is restarted and recovers.
    #[error("journal write failed: {kind}")]
    Io {
        /// The I/O error's kind.
        kind: std::io::ErrorKind,
    },
    /// The journal was shut down.
    #[error("journal is closed")]
    Closed,
}

/// Called once a record is durable, or once it is known it may not be.
pub type OnDurable = Box<dyn FnOnce(Result<(), JournalError>) + Send + 'static>;

/// An append-only durable log of [`Record`]s.
///
/// Guarantees asked of an implementation: records become durable in the
/// order appended (a durable record implies every earlier one is durable);
/// `on_durable` is called exactly once per record, after it is durable, and in
/// append order; appends never block the caller.
pub trait Journal: Send + Sync + 'static {
    /// Queues `record`; calls `on_durable` once it is durable.
    fn append(&self, record: Record, on_durable: OnDurable);

    /// Calls `on_durable` once every record appended before this call is
    /// durable (or once it is known one may not be), in order with the
    /// callbacks of those records. Reads wait on it so that they never show
    /// a change that a crash could still take back. The default appends an
    /// empty record; an implementation may write nothing at all.
    fn when_durable(&self, on_durable: OnDurable) {
        self.append(Record::Batch(Vec::new()), on_durable);
    }
}

/// Appends `record` and waits until it is durable (records recovery
/// produced, checkpoint markers, barriers: not the hot path, which never
/// waits inside a shard).
pub async fn append_durable(journal: &dyn Journal, record: Record) -> Result<(), JournalError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    journal.append(
        record,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx.await.unwrap_or(Err(JournalError::Closed))
}

/// The ledger's clock, in milliseconds since the Unix epoch. A trait so tests
/// can drive pending-transfer expiry.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(now_ms))
    }

    /// Moves it forward.
    pub fn advance_ms(&self, by_ms: u64) {
        self.0.fetch_add(by_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets it.
    pub fn set_ms(&self, now_ms: u64) {
        self.0.store(now_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
