//! # wallet-actors: the ledger's domain and its shard actors
//!
//! Everything here is pure or in-memory: no disk, no network, no HTTP.
//! Storage, time, other shards and subscribers plug in through [`ports`].
//!
//! Modules, from the smallest piece up:
//! - [`ids`]: `AccountId`, `UserId`, `TransferId`, `ShardId`, and stable shard placement.
//! - `hash` (internal): the hasher of in-memory maps.
//! - [`amount`], [`asset`]: money in minor units, and what it is money of.
//! - [`rejection`]: every named way a command is refused, with stable codes.
//! - [`account`]: the account, its balances, and its handler (`check`, `apply`),
//!   the only code that changes a balance.
//! - [`risk`]: risk rules checked with the debit, and velocity windows.
//! - [`transfer`]: requests, stored transfers, stateless checks.
//! - [`ports`]: every seam to the world outside the engine, and the `Ports` bundle.
//! - [`record`]: what goes in the journal.
//! - [`shard`]: one shard's accounts, holds and reservations, as plain functions.
//! - `actor` (internal): the ractor actor that owns a shard and serializes its messages.
//! - [`registry`]: transfer ids, for exactly-once and reads by id.
//! - [`recovery`]: rebuilding shards from journal records.
//! - `ledger` (internal; its types are re-exported here): the handle callers use; routes and coordinates across shards.

pub mod account;
pub(crate) mod actor;
pub mod amount;
pub mod asset;
pub mod events;
pub(crate) mod hash;
pub mod ids;
pub(crate) mod ledger;
pub mod ports;
pub mod record;
pub mod recovery;
pub mod registry;
pub mod rejection;
pub mod risk;
pub mod shard;
pub mod transfer;

pub use account::{Account, AccountEvent, AccountFlags, AccountStatus, Balances};
pub use actor::Failure;
pub use amount::Amount;
pub use asset::{iso4217_scale, Asset, AssetError};
pub use ids::{AccountId, CommitId, ShardId, TransferId, UserId};
pub use ledger::{
    account_id_at_home, is_reserved_account_id, settlement_account_id, AccountView, Ledger, LedgerConfig,
    NewAccount, TransferOutcome, TransferResult,
};
pub use rejection::{InvalidInput, Rejection};
pub use shard::{HistoryEntry, HistoryEvent};
pub use transfer::{PendingOptions, Transfer, TransferRequest, TransferStatus};

/// Why the ledger could not give a result. [`LedgerError::Rejected`] is a
/// decided "no"; the others mean the outcome is not known or not attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// The command was refused; nothing changed.
    #[error("rejected: {0}")]
    Rejected(#[from] Rejection),
    /// Too much work in flight; nothing was attempted. Retry later.
    #[error("overloaded")]
    Overloaded,
    /// Storage failed or the ledger is stopping; the outcome may be unknown.
    #[error("unavailable")]
    Unavailable,
    /// No answer in time; the outcome is unknown.
    #[error("timed out")]
    Timeout,
}
