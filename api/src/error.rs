//! Every way a request fails, and the one place that maps each to an HTTP
//! status and a stable `code`, sent as `application/problem+json` (RFC 9457).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wallet_actors::risk::RuleError;
use wallet_actors::AssetError;
use wallet_actors::InvalidInput;
use wallet_actors::{LedgerError, Rejection};

/// Why a request failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ApiError {
    /// The ledger refused the command; nothing changed.
    #[error("{0}")]
    Rejected(Rejection),
    /// A value could not be built into a domain value.
    #[error("{field}: {source}")]
    InvalidInput {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        source: InvalidInput,
    },
    /// An asset code and scale that do not make an asset.
    #[error("{0}")]
    InvalidAsset(AssetError),
    /// An id that is not a UUID.
    #[error("{field} must be a UUID")]
    InvalidId {
        /// The request field.
        field: &'static str,
    },
    /// A new transfer's id in the range of ids the server derives.
    #[error("{field} is in the range reserved for ids the server derives (ffffffff-…); choose another")]
    ReservedTransferId {
        /// The request field.
        field: &'static str,
    },
    /// A risk rule whose parameters are out of range.
    #[error("{0}")]
    InvalidRule(RuleError),
    /// A field that is well-formed JSON but not an acceptable value.
    #[error("{detail}")]
    InvalidField {
        /// Stable code, e.g. `invalid_email`.
        code: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The body is not the JSON this route takes (syntax, types, unknown or missing fields).
    #[error("{detail}")]
    MalformedBody {
        /// `unknown_field` or `malformed_body`.
        code: &'static str,
        /// The parser's words.
        detail: String,
    },
    /// The body is larger than the configured limit.
    #[error("the request body is too large")]
    BodyTooLarge,
    /// The body is not `application/json`.
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    /// No valid credentials.
    #[error("{detail}")]
    Unauthorized {
        /// Stable code, e.g. `invalid_token`.
        code: &'static str,
        /// Why.
        detail: &'static str,
    },
    /// The route exists, but not with this method.
    #[error("this method is not allowed on this route")]
    MethodNotAllowed,
    /// Valid credentials, but not allowed here.
    #[error("this operation needs the admin role")]
    Forbidden,
    /// Valid credentials, but this request is refused for a reason of its own.
    #[error("{detail}")]
    Denied {
        /// Stable code, e.g. `wrong_password`.
        code: &'static str,
        /// Why.
        detail: &'static str,
    },
    /// The thing asked for does not exist, or the caller may not see it.
    #[error("{what} not found")]
    NotFound {
        /// Stable code, e.g. `user_not_found`.
        code: &'static str,
        /// What was looked for.
        what: &'static str,
    },
    /// The request conflicts with stored state outside the ledger (e.g. a taken email).
    #[error("{detail}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What conflicts.
        detail: &'static str,
    },
    /// The client sent too many requests; nothing was attempted.
    #[error("too many requests; retry after {retry_after_seconds} s")]
    RateLimited {
        /// When to retry.
        retry_after_seconds: u64,
    },
    /// Too many failed logins for this email lately; the password was not checked.
    #[error("too many failed logins for this email; retry after {retry_after_seconds} s")]
    LoginThrottled {
        /// When to retry.
        retry_after_seconds: u64,
    },
    /// Too much work in flight; nothing was attempted.
    #[error("the ledger is overloaded; retry later")]
    Overloaded,
    /// As many password hashes as allowed are computed or waiting; nothing was attempted.
    #[error("too many password checks at once; retry after 1 s")]
    HashingBusy,
    /// Storage failed or the service is stopping; the outcome may be unknown.
    #[error("the service is unavailable; the outcome is unknown, retry with the same id")]
    Unavailable,
    /// A standby that waits for the shards (`wallet node --standby`); nothing was attempted.
    #[error("this node is standing by for another; send requests to the active node")]
    StandingBy,
    /// No answer in time; the outcome may be unknown.
    #[error("timed out; the outcome is unknown, retry with the same id")]
    Timeout,
    /// A fault in this service; logged, never detailed to the client.
    #[error("internal error")]
    Internal,
}

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Rejected(rejection) => ApiError::Rejected(rejection),
            LedgerError::Overloaded => ApiError::Overloaded,
            LedgerError::Unavailable => ApiError::Unavailable,
            LedgerError::Timeout => ApiError::Timeout,
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        ApiError::Rejected(rejection)
    }
}

/// The status of a ledger rejection.
fn rejection_status(rejection: Rejection) -> StatusCode {
    use Rejection::*;
    match rejection {
        // Wrong however the ledger stands: the request itself is invalid.
        SameAccount
        | ZeroAmount
        | TimeoutReservedForPending
        | ReferenceTooLong
        | MetadataTooLarge
        | BatchSizeOutOfRange
        | ReservedAccountId => StatusCode::BAD_REQUEST,
        PendingTransferNotFound | DebitAccountNotFound | CreditAccountNotFound | AccountNotFound => {
            StatusCode::NOT_FOUND
        }
        ExistsWithDifferentFields | AccountExists | InFlight | PendingTransferBusy => StatusCode::CONFLICT,
        LinkedTransferFailed
        | PendingTransferNotPending
        | AssetMismatch
        | DebitAccountClosed
        | CreditAccountClosed
        | DebitAccountFrozen
        | CreditAccountFrozen
        | PendingTransferAlreadyPosted
        | PendingTransferAlreadyVoided
        | PendingTransferExpired
        | ExceedsPendingAmount
        | Overflow
        | InsufficientFunds
        | ExceedsDebits
        | AccountClosed
        | AccountBalanceNotZero
        | AccountHasPending
        | InvalidStatusTransition
        | RiskBlockedAccount(_)
        | RiskNewAccountLimit(_)
        | RiskMaxAmountExceeded(_)
        | RiskVelocityExceeded(_) => StatusCode::UNPROCESSABLE_ENTITY,
        // Never reaches a client: the ledger turns it into a review hold.
        RiskReview(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn invalid_input_code(input: InvalidInput) -> &'static str {
    match input {
        InvalidInput::ZeroId { .. } => "invalid_id",
        InvalidInput::MalformedAmount => "malformed_amount",
        InvalidInput::AmountTooLarge => "amount_too_large",
        InvalidInput::MalformedAsset => "malformed_asset",
    }
}

fn asset_error_code(error: AssetError) -> &'static str {
    match error {
        AssetError::Malformed(input) => invalid_input_code(input),
        AssetError::MissingScale => "missing_scale",
        AssetError::ScaleMismatch { .. } => "scale_mismatch",
    }
}

/// One code per way a rule can be out of range, named like the variant.
fn rule_error_code(error: &RuleError) -> &'static str {
    match error {
        RuleError::WindowOutOfRange => "window_out_of_range",
        RuleError::ZeroSeconds => "zero_seconds",
        RuleError::BlockedAccountsOutOfRange => "blocked_accounts_out_of_range",
        RuleError::NameOutOfRange => "name_out_of_range",
        RuleError::MalformedAsset => "malformed_asset",
        RuleError::TimeoutOutOfRange => "timeout_out_of_range",
    }
}

impl ApiError {
    /// The HTTP status and the stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Rejected(rejection) => (rejection_status(*rejection), rejection.code()),
            ApiError::InvalidInput { source, .. } => (StatusCode::BAD_REQUEST, invalid_input_code(*source)),
            ApiError::InvalidAsset(error) => (StatusCode::BAD_REQUEST, asset_error_code(*error)),
            ApiError::InvalidId { .. } => (StatusCode::BAD_REQUEST, "invalid_id"),
            ApiError::ReservedTransferId { .. } => (StatusCode::BAD_REQUEST, "reserved_transfer_id"),
            ApiError::InvalidRule(error) => (StatusCode::BAD_REQUEST, rule_error_code(error)),
            ApiError::InvalidField { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::MalformedBody { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::BodyTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            ApiError::Unauthorized { code, .. } => (StatusCode::UNAUTHORIZED, code),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Denied { code, .. } => (StatusCode::FORBIDDEN, code),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotFound { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::LoginThrottled { .. } => (StatusCode::TOO_MANY_REQUESTS, "login_throttled"),
            ApiError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "overloaded"),
            ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::StandingBy => (StatusCode::SERVICE_UNAVAILABLE, "standing_by"),
            ApiError::HashingBusy => (StatusCode::SERVICE_UNAVAILABLE, "hashing_busy"),
            ApiError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let (status, code) = self.status_and_code();
        Problem {
            kind: format!("urn:wallet:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.to_string(),
            code,
            rule_id: match self {
                ApiError::Rejected(rejection) => {
                    rejection.risk_hit().map(|hit| crate::domain::uuid_text(hit.rule_id.get()))
                }
                _ => None,
            },
        }
    }
}

/// An `application/problem+json` body, with our stable `code` added.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type: `urn:wallet:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// Stable snake_case name, for a program.
    #[schema(value_type = String)]
    pub code: &'static str,
    /// For a risk rejection: the rule that vetoed the transfer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = self.problem();
        let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        match self {
            ApiError::Unauthorized { .. } => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Overloaded | ApiError::HashingBusy | ApiError::StandingBy => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited { retry_after_seconds }
            | ApiError::LoginThrottled { retry_after_seconds } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rejection's code and status, pinned: clients switch on them, so
    /// renaming a code or moving it to another status must fail a test. The
    /// match has no wildcard, so a new rejection does not compile until it
    /// is pinned here too.
    fn pinned(rejection: Rejection) -> (&'static str, u16) {
        use Rejection::*;
        match rejection {
            LinkedTransferFailed => ("linked_transfer_failed", 422),
            ExistsWithDifferentFields => ("exists_with_different_fields", 409),
            InFlight => ("in_flight", 409),
            SameAccount => ("same_account", 400),
            ZeroAmount => ("zero_amount", 400),
            TimeoutReservedForPending => ("timeout_reserved_for_pending", 400),
            ReferenceTooLong => ("reference_too_long", 400),
            MetadataTooLarge => ("metadata_too_large", 400),
            BatchSizeOutOfRange => ("batch_size_out_of_range", 400),
            PendingTransferNotFound => ("pending_transfer_not_found", 404),
            PendingTransferNotPending => ("pending_transfer_not_pending", 422),
            DebitAccountNotFound => ("debit_account_not_found", 404),
            CreditAccountNotFound => ("credit_account_not_found", 404),
            AssetMismatch => ("asset_mismatch", 422),
            DebitAccountClosed => ("debit_account_closed", 422),
            CreditAccountClosed => ("credit_account_closed", 422),
            DebitAccountFrozen => ("debit_account_frozen", 422),
            CreditAccountFrozen => ("credit_account_frozen", 422),
            PendingTransferAlreadyPosted => ("pending_transfer_already_posted", 422),
            PendingTransferAlreadyVoided => ("pending_transfer_already_voided", 422),
            PendingTransferExpired => ("pending_transfer_expired", 422),
            PendingTransferBusy => ("pending_transfer_busy", 409),
            ExceedsPendingAmount => ("exceeds_pending_amount", 422),
            Overflow => ("overflow", 422),
            InsufficientFunds => ("insufficient_funds", 422),
            ExceedsDebits => ("exceeds_debits", 422),
            RiskBlockedAccount(_) => ("risk_blocked_account", 422),
            RiskNewAccountLimit(_) => ("risk_new_account_limit", 422),
            RiskMaxAmountExceeded(_) => ("risk_max_amount_exceeded", 422),
            RiskVelocityExceeded(_) => ("risk_velocity_exceeded", 422),
            // Never reaches a client: the ledger turns it into a review hold.
            RiskReview(_) => ("risk_review", 500),
            AccountExists => ("account_exists", 409),
            ReservedAccountId => ("reserved_account_id", 400),
            AccountNotFound => ("account_not_found", 404),
            AccountClosed => ("account_closed", 422),
            AccountBalanceNotZero => ("account_balance_not_zero", 422),
            AccountHasPending => ("account_has_pending", 422),
            InvalidStatusTransition => ("invalid_status_transition", 422),
        }
    }

    #[test]
    fn every_rejection_keeps_its_code_and_status() {
        use wallet_actors::risk::{RiskHit, RuleAction, RuleKindCode};
        use Rejection::*;
        let hit = RiskHit {
            rule_id: wallet_actors::ids::RuleId::new(1).unwrap_or_else(|_| unreachable!()),
            kind: RuleKindCode::MaxAmount,
            action: RuleAction::Reject,
            timeout_seconds: None,
        };
        let all = [
            LinkedTransferFailed,
            ExistsWithDifferentFields,
            InFlight,
            SameAccount,
            ZeroAmount,
            TimeoutReservedForPending,
            ReferenceTooLong,
            MetadataTooLarge,
            BatchSizeOutOfRange,
            PendingTransferNotFound,
            PendingTransferNotPending,
            DebitAccountNotFound,
            CreditAccountNotFound,
            AssetMismatch,
            DebitAccountClosed,
            CreditAccountClosed,
            DebitAccountFrozen,
            CreditAccountFrozen,
            PendingTransferAlreadyPosted,
            PendingTransferAlreadyVoided,
            PendingTransferExpired,
            PendingTransferBusy,
            ExceedsPendingAmount,
            Overflow,
            InsufficientFunds,
            ExceedsDebits,
            RiskBlockedAccount(hit),
            RiskNewAccountLimit(hit),
            RiskMaxAmountExceeded(hit),
            RiskVelocityExceeded(hit),
            RiskReview(hit),
            AccountExists,
            ReservedAccountId,
            AccountNotFound,
            AccountClosed,
            AccountBalanceNotZero,
            AccountHasPending,
            InvalidStatusTransition,
        ];
        let mut codes = std::collections::BTreeSet::new();
        for rejection in all {
            let (code, status) = pinned(rejection);
            assert_eq!(rejection.code(), code, "{rejection:?} renamed");
            let (got_status, got_code) = ApiError::Rejected(rejection).status_and_code();
            assert_eq!((got_status.as_u16(), got_code), (status, code), "{rejection:?}");
            assert!(codes.insert(code), "{code} twice");
        }
        assert_eq!(codes.len(), 38, "a rejection is missing from this list");
    }

    #[test]
    fn business_rejections_are_422_and_lookups_404() {
        let cases = [
            (Rejection::InsufficientFunds, 422),
            (Rejection::DebitAccountNotFound, 404),
            (Rejection::ExistsWithDifferentFields, 409),
            (Rejection::ZeroAmount, 400),
        ];
        for (rejection, status) in cases {
            let (got, code) = ApiError::Rejected(rejection).status_and_code();
            assert_eq!(got.as_u16(), status, "{rejection:?}");
            assert_eq!(code, rejection.code());
        }
        let error = ApiError::InvalidInput { field: "amount", source: InvalidInput::MalformedAmount };
        assert_eq!(error.status_and_code(), (StatusCode::BAD_REQUEST, "malformed_amount"));
        assert_eq!(ApiError::from(LedgerError::Timeout).status_and_code().0, StatusCode::GATEWAY_TIMEOUT);
        let mismatch = ApiError::InvalidAsset(AssetError::ScaleMismatch { expected: 2, given: 3 });
        assert_eq!(mismatch.status_and_code(), (StatusCode::BAD_REQUEST, "scale_mismatch"));
        assert_eq!(mismatch.to_string(), "ISO 4217 gives this currency scale 2, not 3");
    }

    /// The codes and statuses the security work (issue 18) added: clients
    /// branch on them, so a change here is a breaking change.
    #[test]
    fn security_codes_and_statuses_are_pinned() {
        let unauthorized = |code| ApiError::Unauthorized { code, detail: "" };
        let cases = [
            (ApiError::LoginThrottled { retry_after_seconds: 1 }, 429, "login_throttled"),
            (unauthorized("token_revoked"), 401, "token_revoked"),
            (unauthorized("user_disabled"), 401, "user_disabled"),
            (unauthorized("refresh_token_reused"), 401, "refresh_token_reused"),
            (unauthorized("session_expired"), 401, "session_expired"),
            (ApiError::Denied { code: "wrong_password", detail: "" }, 403, "wrong_password"),
            (ApiError::Conflict { code: "cannot_disable_self", detail: "" }, 409, "cannot_disable_self"),
            (ApiError::HashingBusy, 503, "hashing_busy"),
            (ApiError::Conflict { code: "too_many_accounts", detail: "" }, 409, "too_many_accounts"),
            (
                ApiError::InvalidField { code: "asset_not_allowed", detail: String::new() },
                400,
                "asset_not_allowed",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status_and_code(), (StatusCode::from_u16(status).unwrap_or_default(), code));
        }
    }
}
