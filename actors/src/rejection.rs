//! Every way a command can be refused, each with a stable code.
//!
//! A rejection is a named result, never a panic: the command changed nothing.
//! The order of the [`Rejection`] variants is the order of the checks, and a
//! linked batch reports the first failing transfer by that order.

use serde::{Deserialize, Serialize};

use crate::risk::{RiskHit, RuleAction, RuleKindCode};

/// Input that cannot even be built into a domain value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    /// An id of zero, which means "no id".
    #[error("{what} must not be zero")]
    ZeroId {
        /// Which id.
        what: &'static str,
    },
    /// An amount that is not a string of decimal digits.
    #[error("amount must be a string of decimal digits in minor units")]
    MalformedAmount,
    /// An amount above [`crate::amount::AMOUNT_MAX`].
    #[error("amount is above the maximum")]
    AmountTooLarge,
    /// An asset code or scale out of range.
    #[error("asset code must be 1-12 of A-Z, 0-9, _ and scale at most 18")]
    MalformedAsset,
}

/// Why the ledger refused a transfer or an account command. Each variant has a
/// stable snake_case [`Rejection::code`]. The declaration order is the check
/// order; [`Ord`] follows it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, thiserror::Error,
)]
pub enum Rejection {
    /// Another transfer in the same linked batch failed, so this one was not applied.
    #[error("another transfer in the linked batch failed")]
    LinkedTransferFailed,
    /// The transfer id was already used with different fields.
    #[error("the transfer id was already used with different fields")]
    ExistsWithDifferentFields,
    /// The same transfer id is being applied right now by another request.
    #[error("a transfer with this id is in flight; retry")]
    InFlight,
    /// Debit and credit account are the same.
    #[error("debit and credit account must differ")]
    SameAccount,
    /// The amount is zero.
    #[error("amount must be greater than zero")]
    ZeroAmount,
    /// A timeout was given for a transfer that is not pending.
    #[error("a timeout applies only to pending transfers")]
    TimeoutReservedForPending,
    /// The reference is longer than allowed.
    #[error("reference is too long")]
    ReferenceTooLong,
    /// The metadata is larger than allowed.
    #[error("metadata is too large")]
    MetadataTooLarge,
    /// The linked batch has more transfers than allowed, or none.
    #[error("batch size is out of range")]
    BatchSizeOutOfRange,
    /// The pending transfer to post or void does not exist.
    #[error("pending transfer not found")]
    PendingTransferNotFound,
    /// The transfer named as pending is not a pending transfer.
    #[error("the referenced transfer is not pending")]
    PendingTransferNotPending,
    /// The debit account does not exist.
    #[error("debit account not found")]
    DebitAccountNotFound,
    /// The credit account does not exist.
    #[error("credit account not found")]
    CreditAccountNotFound,
    /// Debit and credit account hold different assets.
    #[error("accounts hold different assets")]
    AssetMismatch,
    /// The debit account is closed.
    #[error("debit account is closed")]
    DebitAccountClosed,
    /// The credit account is closed.
    #[error("credit account is closed")]
    CreditAccountClosed,
    /// The debit account is frozen.
    #[error("debit account is frozen")]
    DebitAccountFrozen,
    /// The credit account is frozen.
    #[error("credit account is frozen")]
    CreditAccountFrozen,
    /// The pending transfer was already posted.
    #[error("pending transfer already posted")]
    PendingTransferAlreadyPosted,
    /// The pending transfer was already voided.
    #[error("pending transfer already voided")]
    PendingTransferAlreadyVoided,
    /// The pending transfer already expired.
    #[error("pending transfer already expired")]
    PendingTransferExpired,
    /// Another post or void of the same pending transfer is in flight.
    #[error("the pending transfer is being posted or voided by another request")]
    PendingTransferBusy,
    /// A post asked for more than the pending amount.
    #[error("amount exceeds the pending amount")]
    ExceedsPendingAmount,
    /// A balance would pass `u128`.
    #[error("a balance would overflow")]
    Overflow,
    /// The debit account lacks the funds (credits minus debits, plus any overdraft).
    #[error("insufficient funds")]
    InsufficientFunds,
    /// The credit account's credits would exceed its debits.
    #[error("credits would exceed debits")]
    ExceedsDebits,
    /// A `blocked_account` risk rule names the debit or credit account.
    #[error("a risk rule blocks this account")]
    RiskBlockedAccount(crate::risk::RiskHit),
    /// A `new_account_limit` risk rule caps what this young account may send.
    #[error("a risk rule limits transfers from new accounts")]
    RiskNewAccountLimit(crate::risk::RiskHit),
    /// A `max_amount` risk rule caps one transfer.
    #[error("a risk rule caps the amount of one transfer")]
    RiskMaxAmountExceeded(crate::risk::RiskHit),
    /// A `velocity_count` or `velocity_amount` risk rule caps debits in a window.
    #[error("a risk rule caps debits within a time window")]
    RiskVelocityExceeded(crate::risk::RiskHit),
    /// A `review` risk rule matched: the ledger turns the transfer into a
    /// review hold and applies it again; callers never see this.
    #[error("a risk rule holds the transfer for review")]
    RiskReview(crate::risk::RiskHit),
    /// The account id is already taken by an account with other fields.
    #[error("an account with this id exists with different fields")]
    AccountExists,
    /// The account id is in the range reserved for settlement accounts.
    #[error("the account id is reserved")]
    ReservedAccountId,
    /// The account is not found (account commands).
    #[error("account not found")]
    AccountNotFound,
    /// The account is closed and cannot change state.
    #[error("account is closed")]
    AccountClosed,
    /// Close asked of an account with a non-zero balance.
    #[error("account balance is not zero")]
    AccountBalanceNotZero,
    /// Close asked of an account with pending transfers.
    #[error("account has pending transfers")]
    AccountHasPending,
    /// The status change is not allowed from the current status.
    #[error("the account is not in a status that allows this")]
    InvalidStatusTransition,
}

impl Rejection {
    /// The risk rule behind a risk rejection.
    pub fn risk_hit(self) -> Option<crate::risk::RiskHit> {
        use Rejection::*;
        match self {
            RiskBlockedAccount(hit)
            | RiskNewAccountLimit(hit)
            | RiskMaxAmountExceeded(hit)
            | RiskVelocityExceeded(hit)
            | RiskReview(hit) => Some(hit),
            _ => None,
        }
    }

    /// A stable snake_case name for clients and metrics.
    pub fn code(self) -> &'static str {
        use Rejection::*;
        match self {
            LinkedTransferFailed => "linked_transfer_failed",
            ExistsWithDifferentFields => "exists_with_different_fields",
            InFlight => "in_flight",
            SameAccount => "same_account",
            ZeroAmount => "zero_amount",
            TimeoutReservedForPending => "timeout_reserved_for_pending",
            ReferenceTooLong => "reference_too_long",
            MetadataTooLarge => "metadata_too_large",
            BatchSizeOutOfRange => "batch_size_out_of_range",
            PendingTransferNotFound => "pending_transfer_not_found",
            PendingTransferNotPending => "pending_transfer_not_pending",
            DebitAccountNotFound => "debit_account_not_found",
            CreditAccountNotFound => "credit_account_not_found",
            AssetMismatch => "asset_mismatch",
            DebitAccountClosed => "debit_account_closed",
            CreditAccountClosed => "credit_account_closed",
            DebitAccountFrozen => "debit_account_frozen",
            CreditAccountFrozen => "credit_account_frozen",
            PendingTransferAlreadyPosted => "pending_transfer_already_posted",
            PendingTransferAlreadyVoided => "pending_transfer_already_voided",
            PendingTransferExpired => "pending_transfer_expired",
            PendingTransferBusy => "pending_transfer_busy",
            ExceedsPendingAmount => "exceeds_pending_amount",
            Overflow => "overflow",
            InsufficientFunds => "insufficient_funds",
            ExceedsDebits => "exceeds_debits",
            RiskBlockedAccount(_) => "risk_blocked_account",
            RiskNewAccountLimit(_) => "risk_new_account_limit",
            RiskMaxAmountExceeded(_) => "risk_max_amount_exceeded",
            RiskVelocityExceeded(_) => "risk_velocity_exceeded",
            RiskReview(_) => "risk_review",
            AccountExists => "account_exists",
            ReservedAccountId => "reserved_account_id",
            AccountNotFound => "account_not_found",
            AccountClosed => "account_closed",
            AccountBalanceNotZero => "account_balance_not_zero",
            AccountHasPending => "account_has_pending",
            InvalidStatusTransition => "invalid_status_transition",
        }
    }
}

/// What the shard answers for a violated rule: a rejection named for the
/// kind, or for a review rule the request to turn the transfer into a
/// review hold. (Here, not in `risk`, so that `risk` does not depend on
/// this module while this one names its `RiskHit`.)
impl From<RiskHit> for Rejection {
    fn from(hit: RiskHit) -> Rejection {
        if hit.action == RuleAction::Review {
            return Rejection::RiskReview(hit);
        }
        match hit.kind {
            RuleKindCode::BlockedAccount => Rejection::RiskBlockedAccount(hit),
            RuleKindCode::NewAccountLimit => Rejection::RiskNewAccountLimit(hit),
            RuleKindCode::MaxAmount => Rejection::RiskMaxAmountExceeded(hit),
            RuleKindCode::VelocityCount | RuleKindCode::VelocityAmount => {
                Rejection::RiskVelocityExceeded(hit)
            }
        }
    }
}
