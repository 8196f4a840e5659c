//! How a request finds its [`Caller`]: the [`authenticate`] middleware
//! reads the bearer token once per request (ours, or the external issuer's)
//! and the user it names as stored now, and every protected route takes
//! the caller it found as an extractor. The caller's role is read from the
//! user store on every request, not trusted from the token.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::Algorithm;
use wallet_storage::users::{Role, StoredUser};

use crate::auth::Caller;
use crate::domain::{now_ms, Email, UserName};
use crate::error::ApiError;
use crate::oidc::{ExternalClaims, ExternalIssuer};
use crate::state::AppState;

/// Authenticates the request whose headers are `headers`: its bearer
/// token, ours or the external issuer's, and the user it names as stored
/// now.
pub async fn caller_from_headers(headers: &HeaderMap, state: &AppState) -> Result<Caller, ApiError> {
    let missing =
        || ApiError::Unauthorized { code: "missing_token", detail: "send Authorization: Bearer <token>" };
    let header = headers.get(AUTHORIZATION).ok_or_else(missing)?;
    let header = header.to_str().map_err(|_| missing())?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(missing)?;
    let invalid =
        || ApiError::Unauthorized { code: "invalid_token", detail: "the access token is not valid" };
    let token_header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
    // Our tokens are HS256 and only HS256; an external issuer's are asymmetric.
    if token_header.alg != Algorithm::HS256 {
        let external = state.external.as_ref().ok_or_else(invalid)?;
        let claims = external.verify(token, &token_header).await?;
        let user = external_user(state, external, claims).await?;
        return Caller::enabled(user);
    }
    let verified = state.tokens.verify(token)?;
    // A directory out of reach is `unavailable` (503, retry), as elsewhere.
    let user = state.users.get(verified.user_id).await?;
    let user = user.ok_or(ApiError::Unauthorized {
        code: "invalid_token",
        detail: "the access token's user does not exist",
    })?;
    // Disabling ends sessions too; say why the token stopped working.
    let caller = Caller::enabled(user)?;
    if verified.session_epoch != caller.user.session_epoch {
        return Err(ApiError::Unauthorized {
            code: "token_revoked",
            detail: "the user's sessions ended after this token was issued; log in again",
        });
    }
    Ok(caller)
}

/// How a request's `Authorization` header authenticated, found once per
/// request by [`authenticate`] and kept in its extensions: the per-user
/// rate limit counts the caller's id, and the handler's [`Caller`] is this.
#[derive(Clone, Debug)]
pub struct Authentication(pub Result<Caller, ApiError>);

/// Authenticates a request that carries an `Authorization` header (one
/// without is left alone: it may be for a public route).
pub async fn authenticate(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    if request.headers().contains_key(AUTHORIZATION) {
        let outcome = caller_from_headers(request.headers(), &state).await;
        request.extensions_mut().insert(Authentication(outcome));
    }
    next.run(request).await
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        match parts.extensions.remove::<Authentication>() {
            Some(Authentication(outcome)) => outcome,
            None => caller_from_headers(&parts.headers, state).await,
        }
    }
}

/// The local user of an external subject, created at its first token.
async fn external_user(
    state: &AppState,
    external: &ExternalIssuer,
    claims: ExternalClaims,
) -> Result<StoredUser, ApiError> {
    let id = external.user_id(&claims.sub);
    if let Some(user) = state.users.get(id).await? {
        return Ok(user);
    }
    let email = claims.email.as_deref().and_then(|e| Email::parse(e).ok()).map(|e| e.as_str().to_string());
    let name = claims.name.as_deref().and_then(|n| UserName::parse(n).ok()).map(|n| n.as_str().to_string());
    let user = StoredUser {
        id,
        email: email.unwrap_or_default(),
        name: name.unwrap_or_else(|| claims.sub.chars().take(crate::domain::NAME_LEN_MAX).collect()),
        // Not a PHC string: no password ever matches; the issuer authenticates.
        password_hash: String::new(),
        role: Role::User,
        created_at_ms: now_ms(),
        disabled: false,
        session_epoch: 0,
    };
    tracing::info!(user = %id, issuer = external.issuer(), "first token of an external subject: user created");
    Ok(state.users.create_external(&user).await?)
}
