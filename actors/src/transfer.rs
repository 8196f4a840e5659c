//! Transfers: what a client asks for ([`TransferRequest`]), what the ledger
//! stores ([`Transfer`]), and the stateless first checks.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::ids::{AccountId, TransferId};
use crate::rejection::Rejection;

/// Longest reference accepted, in bytes.
pub const REFERENCE_LEN_MAX: usize = 128;
/// Largest metadata accepted, in bytes.
pub const METADATA_LEN_MAX: usize = 1024;
/// Most transfers in one request or linked batch (TigerBeetle's batch size).
pub const BATCH_SIZE_MAX: usize = 8189;

/// What a client asks the ledger to do with money. The `id` is also the
/// idempotency key: the same id with the same request returns the first
/// outcome; with a different request it is [`Rejection::ExistsWithDifferentFields`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferRequest {
    /// Move `amount` from the debit account to the credit account, at once
    /// or as a hold (`pending`).
    Transfer {
        /// Client-supplied id.
        id: TransferId,
        /// The account money leaves.
        debit_account_id: AccountId,
        /// The account money reaches.
        credit_account_id: AccountId,
        /// How much, in minor units.
        amount: Amount,
        /// `Some` makes it a pending transfer (a hold), with an optional timeout.
        pending: Option<PendingOptions>,
        /// Free text for the client, at most [`REFERENCE_LEN_MAX`] bytes.
        reference: Option<String>,
        /// Opaque client data (JSON on the wire), at most [`METADATA_LEN_MAX`] bytes.
        metadata: Option<String>,
    },
    /// Post a pending transfer: move all of it, or `amount` of it, and release the rest.
    PostPending {
        /// Client-supplied id of this post.
        id: TransferId,
        /// The pending transfer.
        pending_id: TransferId,
        /// How much to post; the whole pending amount when `None`.
        amount: Option<Amount>,
    },
    /// Void a pending transfer: release the hold.
    VoidPending {
        /// Client-supplied id of this void.
        id: TransferId,
        /// The pending transfer.
        pending_id: TransferId,
    },
}

/// Options of a pending transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOptions {
    /// Seconds after which the hold is voided by itself; never when `None`.
    pub timeout_seconds: Option<u32>,
}

impl TransferRequest {
    /// The request's id.
    pub fn id(&self) -> TransferId {
        match self {
            TransferRequest::Transfer { id, .. }
            | TransferRequest::PostPending { id, .. }
            | TransferRequest::VoidPending { id, .. } => *id,
        }
    }

    /// Checks that need no state: first in the pipeline.
    pub fn check_stateless(&self) -> Result<(), Rejection> {
        match self {
            TransferRequest::Transfer {
                debit_account_id,
                credit_account_id,
                amount,
                reference,
                metadata,
                ..
            } => {
                if debit_account_id == credit_account_id {
                    return Err(Rejection::SameAccount);
                }
                if amount.is_zero() {
                    return Err(Rejection::ZeroAmount);
                }
                if reference.as_ref().is_some_and(|r| r.len() > REFERENCE_LEN_MAX) {
                    return Err(Rejection::ReferenceTooLong);
                }
                if metadata.as_ref().is_some_and(|m| m.len() > METADATA_LEN_MAX) {
                    return Err(Rejection::MetadataTooLarge);
                }
                Ok(())
            }
            TransferRequest::PostPending { amount, .. } => {
                if amount.is_some_and(Amount::is_zero) {
                    return Err(Rejection::ZeroAmount);
                }
                Ok(())
            }
            TransferRequest::VoidPending { .. } => Ok(()),
        }
    }
}

/// What kind of movement a stored transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransferKind {
    /// Single phase: posted at once.
    Posted,
    /// A hold, to be posted, voided or expired.
    Pending,
    /// The post of a pending transfer.
    PostPending,
    /// The void of a pending transfer.
    VoidPending,
}

/// Where a transfer stands. Only pending transfers change status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TransferStatus {
    /// Money moved.
    Posted,
    /// Money held.
    Pending,
    /// Hold released by a void.
    Voided,
    /// Hold released because its timeout passed.
    Expired,
}

/// A transfer as the ledger stored it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Its id.
    pub id: TransferId,
    /// What it is.
    pub kind: TransferKind,
    /// The account money left (for post and void: the pending transfer's).
    pub debit_account_id: AccountId,
    /// The account money reached (for post and void: the pending transfer's).
    pub credit_account_id: AccountId,
    /// Amount moved, held, posted or released.
    pub amount: Amount,
    /// For post and void: the pending transfer.
    pub pending_id: Option<TransferId>,
    /// For pending transfers with a timeout: when the hold expires (ledger ms).
    pub expires_at_ms: Option<u64>,
    /// When the ledger accepted it (ms since the Unix epoch).
    pub timestamp_ms: u64,
    /// For a hold made by a `review` risk rule: that rule. Only an admin
    /// may post or void such a hold.
    pub review: Option<crate::ids::RuleId>,
    /// The request as the client sent it, to recognise replays (shared,
    /// not copied, from the caller's request).
    pub request: Arc<TransferRequest>,
}

impl Transfer {
    /// The client's reference, if any.
    pub fn reference(&self) -> Option<&str> {
        match &*self.request {
            TransferRequest::Transfer { reference, .. } => reference.as_deref(),
            _ => None,
        }
    }

    /// The client's metadata, if any.
    pub fn metadata(&self) -> Option<&str> {
        match &*self.request {
            TransferRequest::Transfer { metadata, .. } => metadata.as_deref(),
            _ => None,
        }
    }

    /// The status right after it was applied.
    pub fn initial_status(&self) -> TransferStatus {
        match self.kind {
            TransferKind::Posted | TransferKind::PostPending => TransferStatus::Posted,
            TransferKind::Pending => TransferStatus::Pending,
            TransferKind::VoidPending => TransferStatus::Voided,
        }
    }
}
