//! Money on the wire: deposits, withdrawals, transfers, batches, posting
//! and voiding holds, and a transfer as shown.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wallet_actors::registry::TransferRecord;
use wallet_actors::transfer::TransferKind;
use wallet_actors::{AccountId, Amount, PendingOptions, TransferId, TransferRequest, TransferStatus};

use crate::domain::{account_id, client_transfer_id, rfc3339, uuid_text};
use crate::error::ApiError;
use crate::wire::parse_amount;

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

    #[test]
    fn unknown_fields_are_refused() {
        let text = r#"{"id":"x","from_account_id":"x","to_account_id":"x","amount":"1","balance":"9"}"#;
        let parsed: Result<TransferBody, _> = serde_json::from_str(text);
        assert!(parsed.is_err_and(|e| e.to_string().contains("unknown field")));
    }
}
