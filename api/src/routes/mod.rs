//! The router: every route, and the layers around them (metrics, tracing,
//! timeout, body limit, the client's address, the per-client rate limit;
//! on `/v1`, authentication and the per-user rate limit). One file per area:
//! - [`health`] serves `/healthz`, `/readyz`, `/metrics`;
//! - [`users`] serves `/v1/users` (sign-up, profile, disabling users);
//! - [`sessions`] serves `/v1/auth/token`, `/v1/auth/refresh`, `/v1/auth/logout`,
//!   `/v1/users/me/password`;
//! - [`accounts`] serves `/v1/accounts`;
//! - [`events`] serves `/v1/accounts/{id}/events` (Server-Sent Events);
//! - [`money`] serves `/v1/deposits`, `/v1/withdrawals`, `/v1/transfers`;
//! - [`risk`] serves `/v1/risk/rules`, `/v1/risk/decisions`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::X_CONTENT_TYPE_OPTIONS;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

use crate::authenticate::authenticate;
use crate::client::{client_address, TrustedProxies};
use crate::error::ApiError;
use crate::rate::{limit_per_user, RateLayers};
use crate::state::AppState;
use crate::telemetry::track_http;

pub mod accounts;
pub mod events;
pub mod health;
pub mod money;
pub mod risk;
pub mod sessions;
pub mod users;

/// Limits the router applies.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// Longest a request may take.
    pub request_timeout: Duration,
}

/// Every route of the API. `trusted` are the proxies whose
/// `X-Forwarded-For` names the client ([`crate::client`]).
pub fn router(state: AppState, limits: Limits, rates: RateLayers, trusted: Arc<TrustedProxies>) -> Router {
    let v1 = Router::new()
        .route("/v1/users", post(users::create_user).layer(rates.login.clone()).get(users::list_users))
        .route("/v1/users/me", get(users::me).patch(users::update_me))
        .route("/v1/users/me/password", post(sessions::change_password))
        .route("/v1/users/{id}/disable", post(users::disable_user))
        .route("/v1/users/{id}/enable", post(users::enable_user))
        .route("/v1/auth/token", post(sessions::token).layer(rates.login.clone()))
        .route("/v1/auth/refresh", post(sessions::refresh).layer(rates.login))
        .route("/v1/auth/logout", post(sessions::logout))
        .route("/v1/accounts", post(accounts::create_account).get(accounts::list_accounts))
        .route("/v1/accounts/{id}", get(accounts::get_account))
        .route("/v1/accounts/{id}/transfers", get(accounts::account_transfers))
        .route("/v1/accounts/{id}/events", get(events::account_events))
        .route("/v1/accounts/{id}/freeze", post(accounts::freeze))
        .route("/v1/accounts/{id}/unfreeze", post(accounts::unfreeze))
        .route("/v1/accounts/{id}/close", post(accounts::close))
        .route("/v1/deposits", post(money::deposit))
        .route("/v1/withdrawals", post(money::withdraw))
        .route("/v1/transfers", post(money::create_transfer))
        .route("/v1/transfers/batch", post(money::create_batch))
        .route("/v1/transfers/{id}", get(money::get_transfer))
        .route("/v1/transfers/{id}/post", post(money::post_pending))
        .route("/v1/transfers/{id}/void", post(money::void_pending))
        .route("/v1/risk/rules", post(risk::create_rule).get(risk::list_rules))
        .route("/v1/risk/rules/{id}", get(risk::get_rule).put(risk::replace_rule).delete(risk::delete_rule))
        .route("/v1/risk/decisions", get(risk::list_decisions))
        .layer(middleware::from_fn_with_state(rates.per_user, limit_per_user))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    // The per-client limit wraps every route, the fallback included: a
    // request to no route costs as much to answer and to count as any other.
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/openapi.json", get(crate::openapi::openapi_json))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(rates.per_client)
        .layer(middleware::from_fn_with_state(trusted, client_address))
        .layer(DefaultBodyLimit::max(limits.body_limit_bytes))
        .layer(middleware::from_fn_with_state(limits.request_timeout, timeout))
        .layer(middleware::from_fn(track_http))
        // On every answer, errors and the fallback included: a browser must
        // not guess a type other than the one sent (a JSON body as HTML).
        .layer(SetResponseHeaderLayer::overriding(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::NotFound { code: "route_not_found", what: "route" }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Answers 504 when a request takes too long. The ledger's own timeout is
/// shorter, so this fires only when something else hangs.
async fn timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}
