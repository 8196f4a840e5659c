//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! attributes and the wire types, served at `GET /v1/openapi.json`.
//!
//! Every error answer is an `application/problem+json` [`Problem`], described
//! once as a shared response (`#/components/responses/NotFound`, ...). A
//! route lists the ones it can give by naming sets of them, which are
//! [`IntoResponses`] types: [`V1`] (what every `/v1` route may answer: rate
//! limits and faults), [`Authenticated`] (the same, and 401), [`JsonBody`],
//! [`OptionalBody`], then single answers such as [`NotFound`] or
//! [`Unprocessable`]. The statuses and codes themselves come from
//! [`crate::error`]; `scripts/api_fuzz` checks that every answer the server
//! gives is one the document describes.

use std::collections::BTreeMap;

use axum::Json;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, ObjectBuilder, Ref, RefOr, Type};
use utoipa::{IntoResponses, Modify, OpenApi};

use crate::error::Problem;
use crate::routes::{accounts, events, health, money, risk, sessions, users};

/// The API's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "wallet", description = "A balance ledger: accounts in any asset, exactly-once transfers. \
        Ids are UUIDs; amounts are strings of integer minor units; errors are application/problem+json \
        with a stable `code`."),
    paths(
        health::healthz, health::readyz, health::metrics,
        users::create_user, users::me, users::update_me, users::list_users, users::disable_user,
        users::enable_user,
        sessions::token, sessions::refresh, sessions::logout, sessions::change_password,
        accounts::create_account, accounts::get_account, accounts::list_accounts, accounts::account_transfers,
        accounts::freeze,
        accounts::unfreeze, accounts::close, events::account_events,
        money::deposit, money::withdraw, money::create_transfer, money::create_batch, money::get_transfer,
        money::post_pending, money::void_pending,
        risk::create_rule, risk::list_rules, risk::get_rule, risk::replace_rule, risk::delete_rule,
        risk::list_decisions,
    ),
    components(schemas(Problem)),
    modifiers(&BearerAuth, &ErrorResponses),
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme the protected paths name.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// `GET /v1/openapi.json`.
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// The media type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";

/// One error answer as the document shows it: a shared response named
/// `name`, whose body is a [`Problem`] with this status.
struct ErrorAnswer {
    status: u16,
    name: &'static str,
    description: &'static str,
    /// A header the answer carries (always, unless its description says when): name, description.
    header: Option<(&'static str, &'static str)>,
}

const BAD_REQUEST: ErrorAnswer = ErrorAnswer {
    status: 400,
    name: "BadRequest",
    description: "Malformed input: a body, query or path value that does not parse or is out of range; \
        `code` says which (e.g. malformed_body, unknown_field, malformed_query, invalid_id, \
        reserved_transfer_id, malformed_amount, amount_too_large, zero_amount, same_account, \
        malformed_asset, missing_scale, scale_mismatch, invalid_cursor, invalid_email, \
        invalid_password, invalid_name, batch_size_out_of_range, unknown_rule_kind, invalid_parameters, \
        asset_not_allowed). \
        Nothing changed.",
    header: None,
};
const UNAUTHORIZED: ErrorAnswer = ErrorAnswer {
    status: 401,
    name: "Unauthorized",
    description: "No valid credentials: missing_token, invalid_token, token_expired, token_revoked \
        (the user's sessions ended since it was issued), user_disabled; at login invalid_credentials; \
        at refresh invalid_refresh_token, refresh_token_reused (the session is revoked), \
        session_expired, user_disabled.",
    header: Some(("WWW-Authenticate", "Always `Bearer`.")),
};
const FORBIDDEN: ErrorAnswer = ErrorAnswer {
    status: 403,
    name: "Forbidden",
    description: "A valid token, but the operation needs the admin role (forbidden), or a password \
        change's current password is wrong (wrong_password).",
    header: None,
};
const NOT_FOUND: ErrorAnswer = ErrorAnswer {
    status: 404,
    name: "NotFound",
    description: "Not found, or not the caller's to see (e.g. account_not_found, transfer_not_found, \
        debit_account_not_found, credit_account_not_found, pending_transfer_not_found, user_not_found, \
        rule_not_found).",
    header: None,
};
const CONFLICT: ErrorAnswer = ErrorAnswer {
    status: 409,
    name: "Conflict",
    description: "Conflicts with what exists: exists_with_different_fields (the id was used with \
        another body), in_flight or pending_transfer_busy (retry), account_exists, email_taken, \
        too_many_rules, cannot_disable_self, too_many_accounts.",
    header: None,
};
const PAYLOAD_TOO_LARGE: ErrorAnswer = ErrorAnswer {
    status: 413,
    name: "PayloadTooLarge",
    description: "The body is larger than the server's limit (body_too_large).",
    header: None,
};
const UNSUPPORTED_MEDIA_TYPE: ErrorAnswer = ErrorAnswer {
    status: 415,
    name: "UnsupportedMediaType",
    description: "The body is not sent as application/json (unsupported_media_type).",
    header: None,
};
const UNPROCESSABLE: ErrorAnswer = ErrorAnswer {
    status: 422,
    name: "Unprocessable",
    description: "Refused by the ledger; nothing changed (e.g. insufficient_funds, asset_mismatch, \
        debit_account_frozen, credit_account_closed, pending_transfer_already_posted, \
        exceeds_pending_amount, account_balance_not_zero, invalid_status_transition, and the risk \
        rules' risk_blocked_account, risk_new_account_limit, risk_max_amount_exceeded, \
        risk_velocity_exceeded with their `rule_id`).",
    header: None,
};
const TOO_MANY_REQUESTS: ErrorAnswer = ErrorAnswer {
    status: 429,
    name: "TooManyRequests",
    description: "Rate limited (rate_limited), too many failed logins for this email lately \
        (login_throttled: the password was not checked), or the ledger is overloaded (overloaded); \
        nothing was attempted: retry after `Retry-After` seconds.",
    header: Some(("Retry-After", "Seconds to wait before retrying.")),
};
const INTERNAL: ErrorAnswer = ErrorAnswer {
    status: 500,
    name: "InternalError",
    description: "A fault in this service (internal); it is logged.",
    header: None,
};
const UNAVAILABLE: ErrorAnswer = ErrorAnswer {
    status: 503,
    name: "Unavailable",
    description: "Storage failed, or the service is stopping or rebuilding (unavailable); the outcome \
        of a write is unknown: retry it with the same id. Or too many password checks at once \
        (hashing_busy, with `Retry-After`), or a standby node waits for the shards (standing_by, \
        with `Retry-After`): nothing was attempted.",
    header: Some(("Retry-After", "Seconds to wait before retrying (with hashing_busy and standing_by).")),
};
const TIMEOUT: ErrorAnswer = ErrorAnswer {
    status: 504,
    name: "Timeout",
    description: "No answer in time (timeout); the outcome of a write is unknown: retry it with the \
        same id.",
    header: None,
};

/// Every error answer, for the document's `components.responses`.
const ERROR_ANSWERS: [&ErrorAnswer; 12] = [
    &BAD_REQUEST,
    &UNAUTHORIZED,
    &FORBIDDEN,
    &NOT_FOUND,
    &CONFLICT,
    &PAYLOAD_TOO_LARGE,
    &UNSUPPORTED_MEDIA_TYPE,
    &UNPROCESSABLE,
    &TOO_MANY_REQUESTS,
    &INTERNAL,
    &UNAVAILABLE,
    &TIMEOUT,
];

impl ErrorAnswer {
    fn response(&self) -> Response {
        let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
        let mut response =
            ResponseBuilder::new().description(self.description).content(PROBLEM_JSON, content);
        if let Some((name, description)) = self.header {
            let schema = ObjectBuilder::new().schema_type(Type::String).build();
            response = response
                .header(name, HeaderBuilder::new().schema(schema).description(Some(description)).build());
        }
        response.build()
    }
}

/// References to shared error responses, by status, for a route's list.
fn references(answers: &[&ErrorAnswer]) -> BTreeMap<String, RefOr<Response>> {
    answers
        .iter()
        .map(|answer| (answer.status.to_string(), RefOr::Ref(Ref::from_response_name(answer.name))))
        .collect()
}

/// Adds every error answer to `components.responses`, where routes refer to them.
struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for answer in ERROR_ANSWERS {
            components.responses.insert(answer.name.to_string(), RefOr::T(answer.response()));
        }
    }
}

/// Declares sets of error answers a route lists in `responses(...)`.
macro_rules! error_answers {
    ($($(#[$doc:meta])* $name:ident = [$($answer:ident),+ $(,)?];)+) => {$(
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<Response>> {
                references(&[$(&$answer),+])
            }
        }
    )+};
}

error_answers! {
    /// What every `/v1` route may answer: 429 (rate limits), 500, 503, 504
    /// (the request time limit).
    V1 = [TOO_MANY_REQUESTS, INTERNAL, UNAVAILABLE, TIMEOUT];
    /// What every route behind a bearer token may answer: [`V1`] and 401.
    Authenticated = [UNAUTHORIZED, TOO_MANY_REQUESTS, INTERNAL, UNAVAILABLE, TIMEOUT];
    /// What a route that reads a JSON body may answer about it: 400, 413, 415.
    JsonBody = [BAD_REQUEST, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE];
    /// What a route whose JSON body may be empty may answer about it: 400, 413.
    OptionalBody = [BAD_REQUEST, PAYLOAD_TOO_LARGE];
    /// 400: a malformed path or query value.
    BadRequest = [BAD_REQUEST];
    /// 401: wrong credentials (login and refresh).
    Unauthorized = [UNAUTHORIZED];
    /// 403: admin only.
    Forbidden = [FORBIDDEN];
    /// 404.
    NotFound = [NOT_FOUND];
    /// 409.
    Conflict = [CONFLICT];
    /// 429: the rate limit per client address, which holds on every route.
    RateLimited = [TOO_MANY_REQUESTS];
    /// 422: refused by the ledger.
    Unprocessable = [UNPROCESSABLE];
    /// 503.
    Unavailable = [UNAVAILABLE];
    /// 504: the request time limit, which holds on every route.
    Timeout = [TIMEOUT];
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn every_error_status_has_a_shared_answer() {
        let errors = [
            ApiError::MalformedBody { code: "malformed_body", detail: String::new() },
            ApiError::Unauthorized { code: "invalid_token", detail: "" },
            ApiError::Forbidden,
            ApiError::NotFound { code: "user_not_found", what: "user" },
            ApiError::Conflict { code: "email_taken", detail: "" },
            ApiError::BodyTooLarge,
            ApiError::UnsupportedMediaType,
            ApiError::Rejected(wallet_actors::Rejection::InsufficientFunds),
            ApiError::RateLimited { retry_after_seconds: 1 },
            ApiError::Overloaded,
            ApiError::Internal,
            ApiError::Unavailable,
            ApiError::StandingBy,
            ApiError::Timeout,
        ];
        for error in errors {
            let status = error.status_and_code().0.as_u16();
            assert!(ERROR_ANSWERS.iter().any(|answer| answer.status == status), "{status}");
        }
        // 405 answers only methods the document does not list.
        let document = ApiDoc::openapi();
        let responses = document.components.map(|c| c.responses).unwrap_or_default();
        assert_eq!(responses.len(), ERROR_ANSWERS.len());
    }
}
