//! Users and tokens: sign-up, the caller's profile, the admin's user list,
//! login and refresh.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use uuid::Uuid;

use crate::auth::{random_token, refresh_token_hash, Caller};
use crate::domain::{now_ms, parse_uuid, Email, UserName};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::openapi::{Authenticated, BadRequest, Conflict, Forbidden, JsonBody, Unauthorized, V1};
use crate::state::AppState;
use crate::users::{RefreshRecord, Role, StoredUser};
use crate::wire::{
    ListQuery, NewUser, NewUserBody, Page, RefreshBody, TokenBody, TokenView, UpdateUserBody, UserView,
};

/// Default page size of listings.
pub const PAGE_SIZE_DEFAULT: usize = 100;

/// The position after which a page of a numbered list (history by
/// sequence, decisions by id) starts, and its size: `cursor` is the
/// `next_cursor` of the previous page.
pub fn numbered_page(cursor: Option<&str>, limit: Option<usize>) -> Result<(u64, usize), ApiError> {
    let after = match cursor {
        Some(text) => text.parse::<u64>().map_err(|_| ApiError::InvalidField {
            code: "invalid_cursor",
            detail: "cursor must be the next_cursor of a previous page".into(),
        })?,
        None => 0,
    };
    Ok((after, limit.unwrap_or(PAGE_SIZE_DEFAULT).clamp(1, crate::users::LIST_LIMIT_MAX)))
}

/// `POST /v1/users`: anyone may sign up, as a user; 409 `email_taken`.
#[utoipa::path(
    post,
    path = "/v1/users",
    tag = "users",
    request_body = NewUserBody,
    responses(
        (status = 201, description = "Signed up", body = UserView),
        JsonBody,
        Conflict,
        V1,
    ),
)]
pub async fn create_user(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<NewUserBody>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let NewUser { email, name, password } = NewUser::try_from(body)?;
    if state.users.by_email(email.as_str())?.is_some() {
        return Err(crate::users::UserStoreError::EmailTaken.into());
    }
    let user = StoredUser {
        id: Uuid::new_v4(),
        email: email.as_str().to_string(),
        name: name.as_str().to_string(),
        password_hash: state.passwords.hash(password).await?,
        role: Role::User,
        created_at_ms: now_ms(),
    };
    state.users.create(&user).await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))))
}

/// `GET /v1/users/me`.
#[utoipa::path(
    get,
    path = "/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = UserView),
        Authenticated,
    ),
)]
pub async fn me(caller: Caller) -> Json<UserView> {
    Json(UserView::from(&caller.user))
}

/// `PATCH /v1/users/me`: profile fields only.
#[utoipa::path(
    patch,
    path = "/v1/users/me",
    tag = "users",
    security(("bearer" = [])),
    request_body = UpdateUserBody,
    responses(
        (status = 200, body = UserView),
        JsonBody,
        Authenticated,
    ),
)]
pub async fn update_me(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<UpdateUserBody>,
) -> Result<Json<UserView>, ApiError> {
    let mut user = caller.user;
    if let Some(name) = body.name {
        user.name = UserName::parse(&name)?.as_str().to_string();
        state.users.update(&user).await?;
    }
    Ok(Json(UserView::from(&user)))
}

/// `GET /v1/users`: admin only.
#[utoipa::path(
    get,
    path = "/v1/users",
    tag = "users",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = Page<UserView>),
        BadRequest,
        Forbidden,
        Authenticated,
    ),
)]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<UserView>>, ApiError> {
    caller.require_admin()?;
    if query.user_id.is_some() {
        return Err(ApiError::MalformedBody {
            code: "unknown_field",
            detail: "user_id is not a filter here".into(),
        });
    }
    let after = query.cursor.as_deref().map(|c| parse_uuid("cursor", c)).transpose()?;
    let limit = query.limit.unwrap_or(PAGE_SIZE_DEFAULT).clamp(1, crate::users::LIST_LIMIT_MAX);
    let users = state.users.list(after, limit)?;
    let next_cursor = (users.len() == limit).then(|| users.last().map(|u| u.id.to_string())).flatten();
    Ok(Json(Page { items: users.iter().map(UserView::from).collect(), next_cursor }))
}

async fn issue(state: &AppState, user: Uuid) -> Result<TokenView, ApiError> {
    let access_token = state.tokens.access_token(user)?;
    let refresh_token = format!("wrt_{}", random_token(32));
    let record = RefreshRecord { user_id: user, expires_at_ms: now_ms() + state.tokens.refresh_ttl_ms() };
    state.users.put_refresh(&refresh_token_hash(&refresh_token), &record).await?;
    Ok(TokenView {
        access_token,
        token_type: "Bearer".to_string(),
        expires_in: state.tokens.access_ttl_seconds(),
        refresh_token,
    })
}

/// `POST /v1/auth/token`: email and password for a token pair; 401 `invalid_credentials`.
#[utoipa::path(
    post,
    path = "/v1/auth/token",
    tag = "auth",
    request_body = TokenBody,
    responses(
        (status = 200, body = TokenView),
        JsonBody,
        Unauthorized,
        V1,
    ),
)]
pub async fn token(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Json<TokenView>, ApiError> {
    let invalid = ApiError::Unauthorized { code: "invalid_credentials", detail: "wrong email or password" };
    let email = Email::parse(&body.email).ok();
    // Counted per email whether or not someone has it (no account can have
    // a malformed one, so those are not counted).
    let attempt = email.as_ref().map(|email| state.login_throttle.begin(email.as_str())).transpose()?;
    let user = match &email {
        Some(email) => state.users.by_email(email.as_str())?,
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
    Ok(Json(issue(&state, user.id).await?))
}

/// `POST /v1/auth/refresh`: a refresh token (used up) for a new pair; 401
/// `invalid_refresh_token`.
#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "auth",
    request_body = RefreshBody,
    responses(
        (status = 200, body = TokenView),
        JsonBody,
        Unauthorized,
        V1,
    ),
)]
pub async fn refresh(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<Json<TokenView>, ApiError> {
    let invalid =
        ApiError::Unauthorized { code: "invalid_refresh_token", detail: "the refresh token is not valid" };
    let record = state.users.take_refresh(&refresh_token_hash(&body.refresh_token)).await?.ok_or(invalid)?;
    if record.expires_at_ms <= now_ms() || state.users.get(record.user_id)?.is_none() {
        return Err(ApiError::Unauthorized {
            code: "invalid_refresh_token",
            detail: "the refresh token is not valid",
        });
    }
    Ok(Json(issue(&state, record.user_id).await?))
}
