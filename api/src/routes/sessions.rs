//! Sessions over HTTP: login, refresh, logout, and password changes
//! ([`crate::sessions`] starts and refreshes the sessions). Token responses carry
//! `Cache-Control: no-store` (RFC 6749, 5.1): a cache between the client
//! and us must not keep a credential.

use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, PRAGMA};
use axum::http::StatusCode;
use axum::Json;
use wallet_storage::users::StoredUser;

use crate::auth::Caller;
use crate::domain::{now_ms, Email, Password, PASSWORD_LEN_MAX};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::openapi::{Authenticated, Forbidden, JsonBody, Unauthorized, V1};
use crate::sessions::Refreshed;
use crate::state::AppState;
use crate::wire::sessions::{PasswordChangeBody, RefreshBody, TokenBody, TokenView};

/// A token response's headers: no cache may keep it.
type NoStore = [(axum::http::HeaderName, &'static str); 2];

const NO_STORE: NoStore = [(CACHE_CONTROL, "no-store"), (PRAGMA, "no-cache")];

fn invalid_refresh_token() -> ApiError {
    ApiError::Unauthorized { code: "invalid_refresh_token", detail: "the refresh token is not valid" }
}

/// A token pair for `user`: a new session, or the next token of `refresh_token`'s.
fn token_view(state: &AppState, user: &StoredUser, refresh_token: String) -> Result<TokenView, ApiError> {
    Ok(TokenView {
        access_token: state.tokens.access_token(user.id, user.session_epoch)?,
        token_type: "Bearer".to_string(),
        expires_in: state.tokens.access_ttl_seconds(),
        refresh_token,
    })
}

/// `POST /v1/auth/token`: email and password for a token pair, starting a
/// session; 401 `invalid_credentials` (a disabled user's too), 429
/// `login_throttled`, 400 `invalid_password` (longer than any password
/// can be: refused before hashing), 503 `hashing_busy`.
#[utoipa::path(
    post,
    path = "/v1/auth/token",
    tag = "auth",
    request_body = TokenBody,
    responses(
        (status = 200, body = TokenView, headers(("Cache-Control" = String, description = "`no-store`"))),
        JsonBody,
        Unauthorized,
        V1,
    ),
)]
pub async fn token(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<(NoStore, Json<TokenView>), ApiError> {
    // No password is longer (sign-up refuses them): hashing one would only cost us.
    if body.password.len() > PASSWORD_LEN_MAX {
        return Err(ApiError::InvalidField {
            code: "invalid_password",
            detail: format!("a password has at most {PASSWORD_LEN_MAX} bytes"),
        });
    }
    let invalid = ApiError::Unauthorized { code: "invalid_credentials", detail: "wrong email or password" };
    let email = Email::parse(&body.email).ok();
    // Counted per email whether or not someone has it (no account can have
    // a malformed one, so those are not counted).
    let attempt = email.as_ref().map(|email| state.login_throttle.begin(email.as_str())).transpose()?;
    let user = match &email {
        Some(email) => state.users.by_email(email.as_str()).await?,
        None => None,
    };
    // An unknown email is checked against a decoy hash, so both take as long.
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    let matches = state.passwords.verify(body.password, hash).await?;
    let Some(user) = user.filter(|_| matches) else {
        if let Some(attempt) = attempt {
            attempt.failed();
        }
        return Err(invalid);
    };
    if let Some(attempt) = attempt {
        attempt.succeeded();
    }
    // The same answer as a wrong password: whoever guessed it learns nothing.
    if user.disabled {
        return Err(invalid);
    }
    let policy = state.tokens.session_policy();
    let refresh_token =
        crate::sessions::start(state.users.sessions(), user.id, user.session_epoch, now_ms(), policy).await?;
    Ok((NO_STORE, Json(token_view(&state, &user, refresh_token)?)))
}

/// `POST /v1/auth/refresh`: the session's live refresh token for a new
/// pair. 401 `invalid_refresh_token`; `refresh_token_reused` (a spent token:
/// the whole session is revoked); `session_expired` (past the session's
/// absolute lifetime: log in again); `user_disabled`.
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshBody,
    responses(
        (status = 200, body = TokenView, headers(("Cache-Control" = String, description = "`no-store`"))),
        JsonBody,
        Unauthorized,
        V1,
    ),
)]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<(NoStore, Json<TokenView>), ApiError> {
    let sessions = state.users.sessions();
    let user_id = crate::sessions::token_user(&body.refresh_token).ok_or_else(invalid_refresh_token)?;
    // Read before the token is spent: a session ended after this read
    // (logout, password change) also moves the user's session epoch on,
    // which revokes the access token issued below.
    let user = state.users.get(user_id).await?.ok_or_else(invalid_refresh_token)?;
    let policy = state.tokens.session_policy();
    match crate::sessions::refresh(sessions, &body.refresh_token, user.session_epoch, now_ms(), policy)
        .await?
    {
        Refreshed::Rotated { refresh_token, .. } => {
            if user.disabled {
                sessions.end_all(user.id).await?;
                return Err(ApiError::Unauthorized {
                    code: "user_disabled",
                    detail: "this user is disabled",
                });
            }
            Ok((NO_STORE, Json(token_view(&state, &user, refresh_token)?)))
        }
        Refreshed::Reused { .. } => Err(ApiError::Unauthorized {
            code: "refresh_token_reused",
            detail: "this refresh token was used before; the session is revoked: log in again",
        }),
        Refreshed::SessionExpired => Err(ApiError::Unauthorized {
            code: "session_expired",
            detail: "the session reached its lifetime; log in again",
        }),
        Refreshed::Unknown => Err(invalid_refresh_token()),
    }
}

/// `POST /v1/auth/logout`: ends every session of the caller: their refresh
/// tokens and access tokens stop working. 204.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Every session of the caller ended"),
        Authenticated,
    ),
)]
pub async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    let ended = state.users.end_sessions(caller.id()).await?;
    tracing::info!(user = %caller.id(), ended_sessions = ended, "logout");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/users/me/password`: changes the caller's password, given the
/// current one, and ends every session (log in again). 204; 403
/// `wrong_password`; 400 `invalid_password`; 429 `login_throttled` (wrong
/// current passwords count as failed logins).
#[utoipa::path(
    post,
    path = "/v1/users/me/password",
    tag = "users",
    security(("bearer" = [])),
    request_body = PasswordChangeBody,
    responses(
        (status = 204, description = "Changed; every session ended"),
        JsonBody,
        Forbidden,
        Authenticated,
    ),
)]
pub async fn change_password(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordChangeBody>,
) -> Result<StatusCode, ApiError> {
    let new_password = Password::parse(body.new_password)?;
    let wrong = ApiError::Denied { code: "wrong_password", detail: "the current password is wrong" };
    // A stolen access token must not buy unlimited guesses at the password.
    let attempt = Some(caller.user.email.as_str())
        .filter(|email| !email.is_empty())
        .map(|email| state.login_throttle.begin(email))
        .transpose()?;
    let matches = body.current_password.len() <= PASSWORD_LEN_MAX
        && state.passwords.verify(body.current_password, Some(caller.user.password_hash.clone())).await?;
    if !matches {
        if let Some(attempt) = attempt {
            attempt.failed();
        }
        return Err(wrong);
    }
    if let Some(attempt) = attempt {
        attempt.succeeded();
    }
    let password_hash = state.passwords.hash(new_password).await?;
    state.users.modify(caller.id(), |user| user.password_hash.clone_from(&password_hash)).await?;
    let ended = state.users.end_sessions(caller.id()).await?;
    tracing::info!(user = %caller.id(), ended_sessions = ended, "password changed");
    Ok(StatusCode::NO_CONTENT)
}
