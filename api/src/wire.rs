//! Wire types: the JSON the API reads and writes, separate from the domain
//! types and converted with `TryFrom`. Request types refuse unknown fields,
//! so a client cannot slip in a balance or an owner. Ids are UUID text,
//! amounts are strings of integer minor units.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wallet_actors::registry::TransferRecord;
use wallet_actors::risk::{
    Decision, Rule, RuleAction, RuleError, RuleId, RuleKind, RuleKindCode, RuleScope, BLOCKED_ACCOUNTS_MAX,
};
use wallet_actors::transfer::TransferKind;
use wallet_actors::{
    Account, AccountFlags, AccountId, AccountStatus, Amount, PendingOptions, TransferId, TransferRequest,
    TransferStatus, UserId,
};

use crate::domain::{
    account_id, client_transfer_id, parse_uuid, rfc3339, uuid_text, Email, Password, UserName,
};
use crate::error::ApiError;
use crate::users::{Role, StoredUser};

/// Parses a wire amount, naming the field when it is wrong.
pub fn parse_amount(field: &'static str, text: &str) -> Result<Amount, ApiError> {
    Amount::parse(text).map_err(|source| ApiError::InvalidInput { field, source })
}

// ---- users and tokens ----

/// `POST /v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    /// Login email.
    pub email: String,
    /// Password, at least 8 characters.
    #[schema(min_length = 8)]
    pub password: String,
    /// Display name.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// A sign-up, parsed.
#[derive(Debug)]
pub struct NewUser {
    /// Normalised email.
    pub email: Email,
    /// Display name.
    pub name: UserName,
    /// Password.
    pub password: Password,
}

impl TryFrom<NewUserBody> for NewUser {
    type Error = ApiError;

    fn try_from(body: NewUserBody) -> Result<Self, Self::Error> {
        Ok(NewUser {
            email: Email::parse(&body.email)?,
            name: UserName::parse(&body.name)?,
            password: Password::parse(body.password)?,
        })
    }
}

/// `PATCH /v1/users/me`: the profile fields a user may change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    /// New display name.
    pub name: Option<String>,
}

/// A user as shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// UUID.
    #[schema(format = "uuid")]
    pub id: String,
    /// Email.
    pub email: String,
    /// Display name.
    pub name: String,
    /// `user` or `admin`.
    pub role: Role,
    /// Disabled by an administrator: none of the user's tokens work.
    pub disabled: bool,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&StoredUser> for UserView {
    fn from(user: &StoredUser) -> Self {
        UserView {
            id: user.id.to_string(),
            email: user.email.clone(),
            name: user.name.clone(),
            role: user.role,
            disabled: user.disabled,
            created_at: rfc3339(user.created_at_ms),
        }
    }
}

/// `GET /v1/users` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most items (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[param(format = "uuid")]
    pub cursor: Option<String>,
    /// Admin only: whose accounts.
    #[param(format = "uuid")]
    pub user_id: Option<String>,
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

/// A page of items.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `POST /v1/auth/token`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Login email.
    pub email: String,
    /// Password.
    pub password: String,
}

/// `POST /v1/auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// A refresh token from an earlier token response; each works once.
    pub refresh_token: String,
}

/// `POST /v1/users/me/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeBody {
    /// The password now.
    pub current_password: String,
    /// The new one (8 characters to 256 bytes).
    pub new_password: String,
}

/// A token response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The JWT to send as `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Exchange at `POST /v1/auth/refresh` for a new pair.
    pub refresh_token: String,
}

// ---- accounts ----

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
        let b = &account.balances;
        AccountView {
            id: uuid_text(account.id.get()),
            user_id: uuid_text(account.user_id.get()),
            asset: account.asset.code().to_string(),
            scale: account.asset.scale(),
            status: status_text(account.status).to_string(),
            balance: BalanceView {
                available: b.available().to_string(),
                posted: b.posted().to_string(),
                debits_posted: b.debits_posted.to_string(),
                credits_posted: b.credits_posted.to_string(),
                debits_pending: b.debits_pending.to_string(),
                credits_pending: b.credits_pending.to_string(),
            },
            overdraft_limit: account.overdraft_limit.to_string(),
            created_at: rfc3339(account.created_at_ms),
            sequence: account.sequence,
        }
    }
}

// ---- money ----

/// `POST /v1/deposits` and `POST /v1/withdrawals`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoneyBody {
    /// Client-chosen UUID; also the idempotency key. Not in `ffffffff-…`
    /// (reserved for ids the server derives: 400 `reserved_transfer_id`).
    #[schema(format = "uuid")]
    pub id: String,
    /// The account credited (deposit) or debited (withdrawal).
    #[schema(format = "uuid")]
    pub account_id: String,
    /// Minor units.
    #[schema(pattern = "^[0-9]+$")]
    pub amount: String,
    /// Free text.
    pub reference: Option<String>,
}

/// A deposit or withdrawal, parsed.
#[derive(Debug)]
pub struct MoneyCommand {
    /// Id.
    pub id: TransferId,
    /// Account.
    pub account_id: AccountId,
    /// Amount.
    pub amount: Amount,
    /// Reference.
    pub reference: Option<String>,
}

impl TryFrom<MoneyBody> for MoneyCommand {
    type Error = ApiError;

    fn try_from(body: MoneyBody) -> Result<Self, Self::Error> {
        Ok(MoneyCommand {
            id: client_transfer_id("id", &body.id)?,
            account_id: account_id("account_id", &body.account_id)?,
            amount: parse_amount("amount", &body.amount)?,
            reference: body.reference,
        })
    }
}

/// `POST /v1/transfers`, and each item of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// Client-chosen UUID; also the idempotency key. Not in `ffffffff-…`
    /// (reserved for ids the server derives: 400 `reserved_transfer_id`).
    #[schema(format = "uuid")]
    pub id: String,
    /// The account money leaves (must be the caller's).
    #[schema(format = "uuid")]
    pub from_account_id: String,
    /// The account money reaches.
    #[schema(format = "uuid")]
    pub to_account_id: String,
    /// Minor units.
    #[schema(pattern = "^[0-9]+$")]
    pub amount: String,
    /// Hold the money instead of moving it; post or void later.
    #[serde(default)]
    pub pending: bool,
    /// For pending transfers: void by itself after this many seconds.
    pub timeout_seconds: Option<u32>,
    /// Free text, at most 128 bytes.
    pub reference: Option<String>,
    /// Any JSON, at most 1024 bytes once serialised.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A transfer, parsed.
#[derive(Debug)]
pub struct TransferCommand {
    /// Its request to the ledger.
    pub request: TransferRequest,
    /// The account debited.
    pub from: AccountId,
}

impl TryFrom<TransferBody> for TransferCommand {
    type Error = ApiError;

    fn try_from(body: TransferBody) -> Result<Self, Self::Error> {
        let id = client_transfer_id("id", &body.id)?;
        let from = account_id("from_account_id", &body.from_account_id)?;
        let to = account_id("to_account_id", &body.to_account_id)?;
        let amount = parse_amount("amount", &body.amount)?;
        let pending = match (body.pending, body.timeout_seconds) {
            (true, timeout_seconds) => Some(PendingOptions { timeout_seconds }),
            (false, None) => None,
            (false, Some(_)) => {
                return Err(ApiError::Rejected(wallet_actors::Rejection::TimeoutReservedForPending))
            }
        };
        let metadata = match body.metadata {
            None => None,
            Some(value) => Some(serde_json::to_string(&value).map_err(|_| ApiError::MalformedBody {
                code: "malformed_body",
                detail: "metadata must be JSON".to_string(),
            })?),
        };
        Ok(TransferCommand {
            request: TransferRequest::Transfer {
                id,
                debit_account_id: from,
                credit_account_id: to,
                amount,
                pending,
                reference: body.reference,
                metadata,
            },
            from,
        })
    }
}

/// `POST /v1/transfers/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The transfers, at most 8189.
    pub transfers: Vec<TransferBody>,
    /// All or nothing.
    #[serde(default)]
    pub atomic: bool,
}

/// One result of a batch: the transfer, or the problem.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchItemView {
    /// What a single request would have got: 201, 200 (replay) or an error status.
    pub status: u16,
    /// The transfer, on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferView>,
    /// The problem, on failure.
    #[schema(value_type = Option<crate::error::Problem>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// A batch response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    /// One per transfer, in order.
    pub results: Vec<BatchItemView>,
}

/// `POST /v1/transfers/{id}/post` (body optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostBody {
    /// Id of the post (derived from the pending id when absent, in the
    /// reserved range `ffffffff-…`, which a client's id may not be in).
    #[schema(format = "uuid")]
    pub id: Option<String>,
    /// How much to post (the whole hold when absent).
    #[schema(pattern = "^[0-9]+$")]
    pub amount: Option<String>,
}

/// `POST /v1/transfers/{id}/void` (body optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VoidBody {
    /// Id of the void (derived from the pending id when absent, in the
    /// reserved range `ffffffff-…`, which a client's id may not be in).
    #[schema(format = "uuid")]
    pub id: Option<String>,
}

/// A transfer as shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    /// UUID.
    #[schema(format = "uuid")]
    pub id: String,
    /// `transfer`, `pending`, `post_pending` or `void_pending`.
    pub kind: String,
    /// `posted`, `pending`, `voided` or `expired`.
    pub status: String,
    /// Debited account.
    #[schema(format = "uuid")]
    pub from_account_id: String,
    /// Credited account.
    #[schema(format = "uuid")]
    pub to_account_id: String,
    /// Minor units.
    #[schema(pattern = "^[0-9]+$")]
    pub amount: String,
    /// For post and void: the pending transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = "uuid")]
    pub pending_id: Option<String>,
    /// For holds with a timeout: when it expires (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Client JSON.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// True for a hold a risk rule made for review: only an admin may post
    /// or void it.
    #[serde(default)]
    pub review: bool,
    /// For a review hold: the rule that asked for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = "uuid")]
    pub rule_id: Option<String>,
}

/// The wire name of a transfer status.
pub fn transfer_status_text(status: TransferStatus) -> &'static str {
    match status {
        TransferStatus::Posted => "posted",
        TransferStatus::Pending => "pending",
        TransferStatus::Voided => "voided",
        TransferStatus::Expired => "expired",
    }
}

impl From<&TransferRecord> for TransferView {
    fn from(record: &TransferRecord) -> Self {
        let t = &record.transfer;
        let kind = match t.kind {
            TransferKind::Posted => "transfer",
            TransferKind::Pending => "pending",
            TransferKind::PostPending => "post_pending",
            TransferKind::VoidPending => "void_pending",
        };
        TransferView {
            id: uuid_text(t.id.get()),
            kind: kind.to_string(),
            status: transfer_status_text(record.status).to_string(),
            from_account_id: uuid_text(t.debit_account_id.get()),
            to_account_id: uuid_text(t.credit_account_id.get()),
            amount: t.amount.to_string(),
            pending_id: t.pending_id.map(|p| uuid_text(p.get())),
            expires_at: t.expires_at_ms.map(rfc3339),
            reference: t.reference().map(str::to_string),
            metadata: t.metadata().map(|m| {
                serde_json::from_str(m).unwrap_or_else(|_| serde_json::Value::String(m.to_string()))
            }),
            created_at: rfc3339(t.timestamp_ms),
            review: t.review.is_some(),
            rule_id: t.review.map(|r| uuid_text(r.get())),
        }
    }
}

// ---- risk ----

/// Which debits a rule looks at: through the debited account and its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleScopeBody {
    /// Every user's account (settlement accounts are never checked). A
    /// struct variant: serde lets a unit variant carry unknown fields.
    Global {},
    /// The accounts of one user.
    User {
        /// The user's UUID.
        #[schema(format = "uuid")]
        user_id: String,
    },
    /// One account.
    Account {
        /// The account's UUID.
        #[schema(format = "uuid")]
        account_id: String,
    },
}

/// What a violated rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleActionBody {
    /// The transfer fails with a 422 and changes nothing.
    Reject,
    /// The transfer becomes a pending hold that only an admin may post or void.
    Review,
}

impl From<RuleAction> for RuleActionBody {
    fn from(action: RuleAction) -> Self {
        match action {
            RuleAction::Reject => RuleActionBody::Reject,
            RuleAction::Review => RuleActionBody::Review,
        }
    }
}

/// The kinds of rule, as `kind` names them. Each takes its own `parameters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKindName {
    /// A transfer from or to a listed account (`BlockedAccountParameters`).
    BlockedAccount,
    /// A large transfer from a young account (`NewAccountLimitParameters`).
    NewAccountLimit,
    /// One transfer above an amount (`MaxAmountParameters`).
    MaxAmount,
    /// Too many debits of one account in a window (`VelocityCountParameters`).
    VelocityCount,
    /// Too much debited from one account in a window (`VelocityAmountParameters`).
    VelocityAmount,
}

/// The kind `text` names, if any.
fn rule_kind_code(text: &str) -> Option<RuleKindCode> {
    use RuleKindCode::*;
    [BlockedAccount, NewAccountLimit, MaxAmount, VelocityCount, VelocityAmount]
        .into_iter()
        .find(|code| code.as_str() == text)
}

/// `max_amount`: a transfer above `amount` from an account of `asset` violates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaxAmountParameters {
    /// Asset code; accounts of other assets are not checked.
    pub asset: String,
    /// Largest amount of one transfer, in minor units.
    pub amount: String,
}

/// `velocity_count`: more than `count` debits of one account within the window violate it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VelocityCountParameters {
    /// Length of the sliding window, 1 s to 7 days.
    pub window_seconds: u32,
    /// Most debits allowed within it.
    pub count: u32,
}

/// `velocity_amount`: debits of one account summing above `amount` within the window violate it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VelocityAmountParameters {
    /// Asset code; accounts of other assets are not checked.
    pub asset: String,
    /// Length of the sliding window, 1 s to 7 days.
    pub window_seconds: u32,
    /// Largest sum within it, in minor units.
    pub amount: String,
}

/// `blocked_account`: a transfer from or to a listed account violates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockedAccountParameters {
    /// Account UUIDs, 1 to 10,000; they need not exist yet.
    pub account_ids: Vec<String>,
}

/// `new_account_limit`: a transfer above `amount` from an account younger
/// than `seconds` violates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccountLimitParameters {
    /// Age below which an account counts as new.
    pub seconds: u32,
    /// Asset code; accounts of other assets are not checked.
    pub asset: String,
    /// Largest amount of one transfer from a new account, in minor units.
    pub amount: String,
}

/// A rule's parameters: the object its `kind` takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RuleParameters {
    /// For `max_amount`.
    MaxAmount(MaxAmountParameters),
    /// For `velocity_count`.
    VelocityCount(VelocityCountParameters),
    /// For `velocity_amount`.
    VelocityAmount(VelocityAmountParameters),
    /// For `blocked_account`.
    BlockedAccount(BlockedAccountParameters),
    /// For `new_account_limit`.
    NewAccountLimit(NewAccountLimitParameters),
}

/// `POST /v1/risk/rules` and `PUT /v1/risk/rules/{id}`; also a configured
/// `[[risk_rules]]` table, and a rule as the user store keeps it. `kind`
/// and `parameters` are read together, so `parameters` stays raw JSON until
/// [`RuleBody::into_rule`] knows which object to expect.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// A name for people, 1 to 128 bytes; configured rules are matched by it.
    pub name: String,
    /// What the rule checks.
    #[schema(value_type = RuleKindName)]
    pub kind: String,
    /// Which debits it looks at.
    pub scope: RuleScopeBody,
    /// What a violation does.
    pub action: RuleActionBody,
    /// The kind's parameters.
    #[schema(value_type = RuleParameters)]
    pub parameters: serde_json::Value,
    /// Review rules only: void the hold by itself after this many seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

/// Reads `parameters` as the object `kind` takes.
fn rule_parameters<T: DeserializeOwned>(kind: RuleKindCode, value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|error| {
        let detail = format!("parameters of a {} rule: {error}", kind.as_str());
        if detail.contains("unknown field") {
            ApiError::MalformedBody { code: "unknown_field", detail }
        } else {
            ApiError::InvalidField { code: "invalid_parameters", detail }
        }
    })
}

impl RuleBody {
    /// The domain rule, with id `id`: parameters read as `kind` says, ids
    /// and amounts parsed, then [`Rule::validate`]d. The one parser of
    /// rules from the API, the configuration and the store.
    pub fn into_rule(self, id: RuleId) -> Result<Rule, ApiError> {
        let code = rule_kind_code(&self.kind).ok_or_else(|| ApiError::InvalidField {
            code: "unknown_rule_kind",
            detail: format!(
                "kind must be blocked_account, new_account_limit, max_amount, velocity_count or velocity_amount, not {:?}",
                self.kind
            ),
        })?;
        let amount = |text: &str| parse_amount("parameters.amount", text);
        let kind = match code {
            RuleKindCode::BlockedAccount => {
                let p: BlockedAccountParameters = rule_parameters(code, self.parameters)?;
                // Checked before parsing: a huge list fails without parsing it.
                if p.account_ids.is_empty() || p.account_ids.len() > BLOCKED_ACCOUNTS_MAX {
                    return Err(ApiError::InvalidRule(RuleError::BlockedAccountsOutOfRange));
                }
                let account_ids = p
                    .account_ids
                    .iter()
                    .map(|text| account_id("parameters.account_ids", text))
                    .collect::<Result<Vec<_>, _>>()?;
                RuleKind::BlockedAccount { account_ids }
            }
            RuleKindCode::NewAccountLimit => {
                let p: NewAccountLimitParameters = rule_parameters(code, self.parameters)?;
                RuleKind::NewAccountLimit { seconds: p.seconds, asset: p.asset, amount: amount(&p.amount)? }
            }
            RuleKindCode::MaxAmount => {
                let p: MaxAmountParameters = rule_parameters(code, self.parameters)?;
                RuleKind::MaxAmount { asset: p.asset, amount: amount(&p.amount)? }
            }
            RuleKindCode::VelocityCount => {
                let p: VelocityCountParameters = rule_parameters(code, self.parameters)?;
                RuleKind::VelocityCount { window_seconds: p.window_seconds, count: p.count }
            }
            RuleKindCode::VelocityAmount => {
                let p: VelocityAmountParameters = rule_parameters(code, self.parameters)?;
                RuleKind::VelocityAmount {
                    asset: p.asset,
                    window_seconds: p.window_seconds,
                    amount: amount(&p.amount)?,
                }
            }
        };
        let scope = match self.scope {
            RuleScopeBody::Global {} => RuleScope::Global,
            RuleScopeBody::User { user_id } => {
                let field = "scope.user_id";
                let uuid = parse_uuid(field, &user_id)?;
                RuleScope::User(UserId::new(uuid.as_u128()).map_err(|_| ApiError::InvalidId { field })?)
            }
            RuleScopeBody::Account { account_id: text } => {
                RuleScope::Account(account_id("scope.account_id", &text)?)
            }
        };
        let action = match self.action {
            RuleActionBody::Reject => RuleAction::Reject,
            RuleActionBody::Review => RuleAction::Review,
        };
        let rule = Rule {
            id,
            name: self.name.trim().to_string(),
            kind,
            scope,
            action,
            timeout_seconds: self.timeout_seconds,
        };
        rule.validate().map_err(ApiError::InvalidRule)?;
        Ok(rule)
    }
}

/// A rule as shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    /// UUID, chosen by the server.
    #[schema(format = "uuid")]
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What the rule checks.
    #[schema(value_type = RuleKindName)]
    pub kind: String,
    /// Which debits it looks at.
    pub scope: RuleScopeBody,
    /// What a violation does.
    pub action: RuleActionBody,
    /// The kind's parameters.
    pub parameters: RuleParameters,
    /// Review rules: seconds after which the hold voids by itself; null for never.
    pub timeout_seconds: Option<u32>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl RuleView {
    /// The view of `rule`, created at `created_at_ms`.
    pub fn new(rule: &Rule, created_at_ms: u64) -> RuleView {
        let parameters = match &rule.kind {
            RuleKind::BlockedAccount { account_ids } => {
                RuleParameters::BlockedAccount(BlockedAccountParameters {
                    account_ids: account_ids.iter().map(|id| uuid_text(id.get())).collect(),
                })
            }
            RuleKind::NewAccountLimit { seconds, asset, amount } => {
                RuleParameters::NewAccountLimit(NewAccountLimitParameters {
                    seconds: *seconds,
                    asset: asset.clone(),
                    amount: amount.to_string(),
                })
            }
            RuleKind::MaxAmount { asset, amount } => RuleParameters::MaxAmount(MaxAmountParameters {
                asset: asset.clone(),
                amount: amount.to_string(),
            }),
            RuleKind::VelocityCount { window_seconds, count } => {
                RuleParameters::VelocityCount(VelocityCountParameters {
                    window_seconds: *window_seconds,
                    count: *count,
                })
            }
            RuleKind::VelocityAmount { asset, window_seconds, amount } => {
                RuleParameters::VelocityAmount(VelocityAmountParameters {
                    asset: asset.clone(),
                    window_seconds: *window_seconds,
                    amount: amount.to_string(),
                })
            }
        };
        let scope = match rule.scope {
            RuleScope::Global => RuleScopeBody::Global {},
            RuleScope::User(user_id) => RuleScopeBody::User { user_id: uuid_text(user_id.get()) },
            RuleScope::Account(id) => RuleScopeBody::Account { account_id: uuid_text(id.get()) },
        };
        RuleView {
            id: uuid_text(rule.id.get()),
            name: rule.name.clone(),
            kind: rule.kind.code().as_str().to_string(),
            scope,
            action: rule.action.into(),
            parameters,
            timeout_seconds: rule.timeout_seconds,
            created_at: rfc3339(created_at_ms),
        }
    }
}

/// `GET /v1/risk/decisions` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DecisionQuery {
    /// Only the decisions about debits of this account.
    #[param(format = "uuid")]
    pub account_id: Option<String>,
    /// Most items (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (a decision id).
    #[param(pattern = "^[0-9]+$")]
    pub cursor: Option<String>,
}

/// What a rule decided about a transfer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    /// Position in the decision log, from 1, ascending.
    pub id: u64,
    /// When it was decided (RFC 3339).
    #[schema(format = DateTime)]
    pub at: String,
    /// The transfer (refused, or held for review).
    #[schema(format = "uuid")]
    pub transfer_id: String,
    /// The debited account.
    #[schema(format = "uuid")]
    pub account_id: String,
    /// The rule.
    #[schema(format = "uuid")]
    pub rule_id: String,
    /// The rule's kind.
    #[schema(value_type = RuleKindName)]
    pub kind: String,
    /// `reject` or `review`.
    pub outcome: RuleActionBody,
}

impl From<&Decision> for DecisionView {
    fn from(decision: &Decision) -> Self {
        DecisionView {
            id: decision.id,
            at: rfc3339(decision.at_ms),
            transfer_id: uuid_text(decision.transfer_id.get()),
            account_id: uuid_text(decision.account_id.get()),
            rule_id: uuid_text(decision.rule_id.get()),
            kind: decision.kind.as_str().to_string(),
            outcome: decision.outcome.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(amount: &str) -> TransferBody {
        TransferBody {
            id: uuid::Uuid::new_v4().to_string(),
            from_account_id: uuid::Uuid::new_v4().to_string(),
            to_account_id: uuid::Uuid::new_v4().to_string(),
            amount: amount.to_string(),
            pending: false,
            timeout_seconds: None,
            reference: None,
            metadata: None,
        }
    }

    #[test]
    fn malformed_amounts_have_their_codes() {
        for (amount, code) in
            [("-1", "malformed_amount"), ("1.5", "malformed_amount"), ("1e3", "malformed_amount")]
        {
            let error = TransferCommand::try_from(body(amount)).err().map(|e| e.status_and_code().1);
            assert_eq!(error, Some(code), "{amount}");
        }
        let huge = "9".repeat(39);
        let error = TransferCommand::try_from(body(&huge)).err().map(|e| e.status_and_code().1);
        assert_eq!(error, Some("amount_too_large"));
        assert!(TransferCommand::try_from(body("1050")).is_ok());
    }

    fn rule(text: &str) -> Result<Rule, &'static str> {
        let body: RuleBody = serde_json::from_str(text).map_err(|_| "does not deserialize")?;
        let id = RuleId::new(7).map_err(|_| "zero id")?;
        body.into_rule(id).map_err(|e| e.status_and_code().1)
    }

    #[test]
    fn rules_parse_by_kind_and_refuse_what_does_not_fit() {
        let velocity = r#"{"name":" ten a minute ","kind":"velocity_count","scope":{"type":"global"},
            "action":"reject","parameters":{"window_seconds":60,"count":10}}"#;
        let parsed = rule(velocity);
        assert!(parsed.as_ref().is_ok_and(|r| r.name == "ten a minute"
            && r.kind == RuleKind::VelocityCount { window_seconds: 60, count: 10 }));
        let cases = [
            (velocity.replace("velocity_count", "velocity_cnt"), Err("unknown_rule_kind")),
            (velocity.replace("\"window_seconds\":60", "\"window_seconds\":0"), Err("window_out_of_range")),
            (velocity.replace(",\"count\":10", ""), Err("invalid_parameters")),
            (velocity.replace("\"count\":10", "\"count\":-1"), Err("invalid_parameters")),
            (velocity.replace("\"count\":10", "\"count\":10,\"burst\":1"), Err("unknown_field")),
            (
                velocity.replace("\"action\":\"reject\"", "\"action\":\"reject\",\"timeout_seconds\":5"),
                Err("timeout_out_of_range"),
            ),
            (velocity.replace("\" ten a minute \"", "\"  \""), Err("name_out_of_range")),
            (
                velocity.replace("{\"type\":\"global\"}", "{\"type\":\"global\",\"x\":1}"),
                Err("does not deserialize"),
            ),
            (
                velocity.replace("{\"type\":\"global\"}", "{\"type\":\"account\",\"account_id\":\"x\"}"),
                Err("invalid_id"),
            ),
            (
                velocity.replace("{\"type\":\"global\"}", "{\"type\":\"user\",\"user_id\":\"7\",\"y\":2}"),
                Err("does not deserialize"),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(rule(&text).map(|_| ()), expected, "{text}");
        }
        let max = r#"{"name":"cap","kind":"max_amount","scope":{"type":"global"},"action":"review",
            "timeout_seconds":60,"parameters":{"asset":"USD","amount":"AMOUNT"}}"#;
        assert!(rule(&max.replace("AMOUNT", "1000")).is_ok());
        for (amount, code) in [
            ("-1", "malformed_amount"),
            ("1.5", "malformed_amount"),
            (&"9".repeat(39)[..], "amount_too_large"),
        ] {
            assert_eq!(rule(&max.replace("AMOUNT", amount)).map(|_| ()), Err(code), "{amount}");
        }
        assert_eq!(
            rule(&max.replace("USD", "usd").replace("AMOUNT", "1")).map(|_| ()),
            Err("malformed_asset")
        );
        let blocked = r#"{"name":"b","kind":"blocked_account","scope":{"type":"global"},"action":"reject",
            "parameters":{"account_ids":[]}}"#;
        assert_eq!(rule(blocked).map(|_| ()), Err("blocked_accounts_out_of_range"));
    }

    #[test]
    fn a_rule_view_reads_back_as_its_body() -> anyhow::Result<()> {
        let account = uuid::Uuid::new_v4().to_string();
        let text = format!(
            r#"{{"name":"young","kind":"new_account_limit","scope":{{"type":"account","account_id":"{account}"}},
            "action":"reject","parameters":{{"seconds":3600,"asset":"EUR","amount":"500"}}}}"#
        );
        let parsed = rule(&text).map_err(anyhow::Error::msg)?;
        let view = serde_json::to_value(RuleView::new(&parsed, 0))?;
        assert_eq!(view["scope"], serde_json::json!({"type": "account", "account_id": account}));
        assert_eq!(view["parameters"], serde_json::json!({"seconds": 3600, "asset": "EUR", "amount": "500"}));
        assert_eq!(view["timeout_seconds"], serde_json::Value::Null);
        let body = RuleBody {
            name: view["name"].as_str().unwrap_or_default().to_string(),
            kind: view["kind"].as_str().unwrap_or_default().to_string(),
            scope: serde_json::from_value(view["scope"].clone())?,
            action: serde_json::from_value(view["action"].clone())?,
            parameters: view["parameters"].clone(),
            timeout_seconds: None,
        };
        assert_eq!(body.into_rule(parsed.id).ok(), Some(parsed));
        Ok(())
    }

    #[test]
    fn unknown_fields_are_refused() {
        let text = r#"{"id":"x","from_account_id":"x","to_account_id":"x","amount":"1","balance":"9"}"#;
        let parsed: Result<TransferBody, _> = serde_json::from_str(text);
        assert!(parsed.is_err_and(|e| e.to_string().contains("unknown field")));
    }
}
