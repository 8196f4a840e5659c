//! Accounts on the wire: opening one, an account and its balances as
//! shown, and its history.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wallet_actors::{Account, AccountFlags, AccountStatus};

use crate::domain::{rfc3339, uuid_text};
use crate::wire::money::TransferView;

/// Balance limits on the wire.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagsBody {
    /// No spending beyond credits plus the overdraft limit.
    #[serde(default)]
    pub debits_must_not_exceed_credits: bool,
    /// No credits beyond posted debits.
    #[serde(default)]
    pub credits_must_not_exceed_debits: bool,
}

/// `POST /v1/accounts`. Fields other than `asset` and `scale` are admin only.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccountBody {
    /// Asset code: 1 to 12 of `A-Z`, `0-9`, `_`, e.g. `USD` or `BTC`.
    #[schema(pattern = "^[A-Z0-9_]{1,12}$")]
    pub asset: String,
    /// Decimal places of the minor unit, 0 to 18. An ISO 4217 currency has
    /// its own (USD 2, JPY 0, KWD 3): omit it, or give that one
    /// (`scale_mismatch` otherwise). Required for any other asset
    /// (`missing_scale`), e.g. 8 for `BTC`.
    #[schema(maximum = 18)]
    pub scale: Option<u8>,
    /// Admin only: the account's UUID (generated when absent).
    #[schema(format = "uuid")]
    pub id: Option<String>,
    /// Admin only: the owner (the caller when absent).
    #[schema(format = "uuid")]
    pub user_id: Option<String>,
    /// Admin only: limits (a user's wallet by default).
    pub flags: Option<FlagsBody>,
    /// Admin only: overdraft allowed below zero.
    #[schema(pattern = "^[0-9]+$")]
    pub overdraft_limit: Option<String>,
}

impl From<FlagsBody> for AccountFlags {
    fn from(flags: FlagsBody) -> Self {
        AccountFlags {
            debits_must_not_exceed_credits: flags.debits_must_not_exceed_credits,
            credits_must_not_exceed_debits: flags.credits_must_not_exceed_debits,
        }
    }
}

/// An account's balances; amounts as strings of minor units.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BalanceView {
    /// What the owner may spend: posted credits minus posted and pending debits.
    #[schema(pattern = "^-?[0-9]+$")]
    pub available: String,
    /// Posted credits minus posted debits.
    #[schema(pattern = "^-?[0-9]+$")]
    pub posted: String,
    /// Sum of posted debits.
    #[schema(pattern = "^[0-9]+$")]
    pub debits_posted: String,
    /// Sum of posted credits.
    #[schema(pattern = "^[0-9]+$")]
    pub credits_posted: String,
    /// Sum of pending debits.
    #[schema(pattern = "^[0-9]+$")]
    pub debits_pending: String,
    /// Sum of pending credits.
    #[schema(pattern = "^[0-9]+$")]
    pub credits_pending: String,
}

impl From<&wallet_actors::Balances> for BalanceView {
    fn from(b: &wallet_actors::Balances) -> Self {
        BalanceView {
            available: b.available().to_string(),
            posted: b.posted().to_string(),
            debits_posted: b.debits_posted.to_string(),
            credits_posted: b.credits_posted.to_string(),
            debits_pending: b.debits_pending.to_string(),
            credits_pending: b.credits_pending.to_string(),
        }
    }
}

/// An account as shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccountView {
    /// UUID.
    #[schema(format = "uuid")]
    pub id: String,
    /// The owner's UUID.
    #[schema(format = "uuid")]
    pub user_id: String,
    /// Asset code.
    pub asset: String,
    /// Asset scale.
    pub scale: u8,
    /// `active`, `frozen` or `closed`.
    pub status: String,
    /// Balances.
    pub balance: BalanceView,
    /// Overdraft limit.
    #[schema(pattern = "^[0-9]+$")]
    pub overdraft_limit: String,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The sequence number of the account's last change (opening = 1): the
    /// balance shown is the one after its history entry and its ledger
    /// event of that number.
    pub sequence: u64,
}

fn status_text(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "active",
        AccountStatus::Frozen => "frozen",
        AccountStatus::Closed => "closed",
    }
}

impl From<&Account> for AccountView {
    fn from(account: &Account) -> Self {
        AccountView {
            id: uuid_text(account.id.get()),
            user_id: uuid_text(account.user_id.get()),
            asset: account.asset.code().to_string(),
            scale: account.asset.scale(),
            status: status_text(account.status).to_string(),
            balance: BalanceView::from(&account.balances),
            overdraft_limit: account.overdraft_limit.to_string(),
            created_at: rfc3339(account.created_at_ms),
            sequence: account.sequence,
        }
    }
}

/// `GET /v1/accounts/{id}/transfers` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Most items (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (an account sequence number).
    #[param(pattern = "^[0-9]+$")]
    pub cursor: Option<String>,
}

/// One transfer in an account's history, with the balance right after it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryItemView {
    /// The account's event sequence number (gap-free per account).
    pub sequence: u64,
    /// `debit` or `credit`: the account's side of the transfer.
    pub side: String,
    /// Added to the posted total of that side.
    #[schema(pattern = "^[0-9]+$")]
    pub posted_delta: String,
    /// Added to the pending total of that side (a new hold).
    #[schema(pattern = "^[0-9]+$")]
    pub pending_added: String,
    /// Taken from the pending total (a hold posted, voided or expired).
    #[schema(pattern = "^[0-9]+$")]
    pub pending_released: String,
    /// The account's balance right after this transfer.
    pub balance: BalanceView,
    /// When the account's totals moved (RFC 3339): for a hold's expiry, when
    /// it was found due, which the transfer's own time does not say.
    pub occurred_at: String,
    /// The transfer (for an expiry: the pending transfer that expired).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferView>,
}
