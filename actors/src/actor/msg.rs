//! What a shard can be asked ([`ShardMsg`]), and the operations and
//! outcomes its messages carry.

use std::sync::Arc;

use ractor::RpcReplyPort;

use super::replies::ReplyTo;
use crate::account::{Account, AccountStatus};
use crate::asset::Asset;
use crate::ids::{AccountId, CommitId, ShardId};
use crate::shard::{Captured, Hold, IndexedRejection, Planned};
use crate::LedgerError;

/// A transfer between two shards, as sent to its debit shard.
pub struct ChainOp {
    /// Its commit id.
    pub commit_id: CommitId,
    /// The operation (one transfer).
    pub op: Arc<[Planned]>,
    /// The shard of its credit account.
    pub credit_shard: ShardId,
    /// Where the outcome goes (`Answer::Chained`).
    pub reply: ReplyTo,
}

/// A transfer between two shards, reserved by its debit shard, as sent on
/// to its credit shard.
pub struct CreditOp {
    /// Its commit id.
    pub commit_id: CommitId,
    /// The operation.
    pub op: Arc<[Planned]>,
    /// The shard that reserved the debit side.
    pub debit_shard: ShardId,
    /// Assets of the debit side's accounts, for the asset check.
    pub debit_assets: Vec<(AccountId, Asset)>,
    /// Where the outcome goes (`Answer::Chained`).
    pub reply: ReplyTo,
}

/// Outcome of one operation of an [`ShardMsg::Execute`].
pub type OpOutcome = Result<(), IndexedRejection>;
/// Outcome of one operation of a [`ShardMsg::Prepare`], with the assets of
/// the shard's accounts it touches for the coordinator's cross-shard checks.
pub type PrepareOutcome = (Vec<(AccountId, Asset)>, OpOutcome);

/// What a shard can be asked.
pub enum ShardMsg {
    /// Open an account; answers (`Answer::Account`) once it is durable.
    OpenAccount(Account, ReplyTo),
    /// Freeze, unfreeze or close an account; answers (`Answer::Account`)
    /// once durable.
    SetStatus(AccountId, AccountStatus, ReplyTo),
    /// Reserve and apply operations whose legs all live here (each one
    /// all-or-nothing); answers (`Answer::Executed`) once durable.
    Execute(Vec<Arc<[Planned]>>, ReplyTo),
    /// Reserve the legs of operations that span shards, for `commit_id`.
    Prepare {
        /// The coordinated commit.
        commit_id: CommitId,
        /// The operations, by their index in the commit.
        ops: Vec<(u32, Arc<[Planned]>)>,
        /// Where one outcome per operation goes, in the same order
        /// (`Answer::Prepared`).
        reply: ReplyTo,
    },
    /// The coordinator's decision: apply `committed` (whose commit record is
    /// durable), release `aborted`.
    Decide {
        /// The coordinated commit.
        commit_id: CommitId,
        /// Operations to apply, in ascending order.
        committed: Vec<u32>,
        /// Operations to release.
        aborted: Vec<u32>,
    },
    /// The coordinator's decision, to the commit's decider (the lowest shard
    /// it touches): apply its own legs of `mine`, release `aborted`, and
    /// append the one record that decides the commit, with every leg of
    /// `committed`; answers (`Answer::Committed`) once it is durable.
    Commit {
        /// The coordinated commit.
        commit_id: CommitId,
        /// Every operation committed, in commit order (across all shards).
        committed: Vec<Arc<[Planned]>>,
        /// This shard's operations among them, by index in the commit.
        mine: Vec<u32>,
        /// This shard's operations to release.
        aborted: Vec<u32>,
        /// Where the answer goes.
        reply: ReplyTo,
    },
    /// Transfers between two shards, this one holding their debit side:
    /// reserve, then pass each on to its credit shard.
    Debit(Vec<ChainOp>),
    /// Transfers between two shards, this one holding their credit side:
    /// check, apply, journal the commit; once durable, settle the debit side
    /// and answer the caller.
    Credit(Vec<CreditOp>),
    /// A transfer the debit shard refused: add this shard's checks, so the
    /// caller hears the first failure by check order, and answer.
    Refused(Vec<CreditOp>, Vec<IndexedRejection>),
    /// Apply the reserved debit side of committed transfers.
    Settle(Vec<CommitId>),
    /// Release the reserved debit side of transfers the credit side refused.
    Release(Vec<CommitId>),
    /// Send what the shard held back (it sends this to itself).
    Flush,
    /// Read an account and its reservations. Answered (`Answer::Read`) once
    /// every change the answer shows is durable.
    GetAccount(AccountId, ReplyTo),
    /// Holds whose timeout has passed.
    DueHolds {
        /// Now, in ledger ms.
        now_ms: u64,
        /// At most this many.
        limit: usize,
        /// The holds.
        reply: RpcReplyPort<Vec<Hold>>,
    },
    /// Every resident account (for checks), once durable as shown.
    Dump(RpcReplyPort<Result<Vec<Account>, LedgerError>>),
    /// How many accounts are resident.
    Resident(RpcReplyPort<usize>),
    /// Panics the shard, as a broken invariant would (crash tests).
    #[cfg(feature = "fault-injection")]
    Crash,
    /// Replace the risk rules; answers once they are in force.
    SetRules(Arc<crate::risk::RuleSet>, RpcReplyPort<()>),
    /// What changed since the last capture (for a snapshot).
    Capture(RpcReplyPort<Captured>),
    /// Storage wrote the last capture (history included): forget the
    /// history it held, and passivate accounts untouched for this many
    /// snapshots (none when `None`).
    ForgetFlushedHistory(Option<u64>),
    /// An account's history still in memory, once durable as shown.
    History {
        /// The account.
        account_id: AccountId,
        /// Entries after this sequence number.
        after_sequence: u64,
        /// At most this many.
        limit: usize,
        /// Where the entries go, oldest first (`Answer::History`).
        reply: ReplyTo,
    },
}
