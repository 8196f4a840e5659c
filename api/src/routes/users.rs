//! Users: sign-up, the caller's profile, and what administrators do with
//! users (list, disable, enable). Logins and tokens are in [`super::sessions`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use uuid::Uuid;
use wallet_storage::users::{Role, StoredUser, UserStoreError, LIST_LIMIT_MAX};

use crate::auth::Caller;
use crate::domain::{now_ms, parse_uuid, UserName};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, IdPath};
use crate::openapi::{Authenticated, BadRequest, Conflict, Forbidden, JsonBody, NotFound, V1};
use crate::state::AppState;
use crate::wire::users::{NewUser, NewUserBody, UpdateUserBody, UserView};
use crate::wire::{ListQuery, Page};

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
    Ok((after, limit.unwrap_or(PAGE_SIZE_DEFAULT).clamp(1, LIST_LIMIT_MAX)))
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
    if state.users.by_email(email.as_str()).await?.is_some() {
        return Err(UserStoreError::EmailTaken.into());
    }
    let user = StoredUser {
        id: Uuid::new_v4(),
        email: email.as_str().to_string(),
        name: name.as_str().to_string(),
        password_hash: state.passwords.hash(password).await?,
        role: Role::User,
        created_at_ms: now_ms(),
        disabled: false,
        session_epoch: 0,
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
    let Some(name) = body.name else { return Ok(Json(UserView::from(&caller.user))) };
    let name = UserName::parse(&name)?.as_str().to_string();
    let user = state.users.modify(caller.id(), |user| user.name.clone_from(&name)).await?;
    Ok(Json(UserView::from(&user.unwrap_or(caller.user))))
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
    let limit = query.limit.unwrap_or(PAGE_SIZE_DEFAULT).clamp(1, LIST_LIMIT_MAX);
    let users = state.users.list(after, limit)?;
    let next_cursor = (users.len() == limit).then(|| users.last().map(|u| u.id.to_string())).flatten();
    Ok(Json(Page { items: users.iter().map(UserView::from).collect(), next_cursor }))
}

/// Sets whether the user `id` is disabled; admin only, and not oneself.
async fn set_disabled(
    state: &AppState,
    caller: &Caller,
    id: &str,
    disabled: bool,
) -> Result<Json<UserView>, ApiError> {
    caller.require_admin()?;
    let id = parse_uuid("id", id)?;
    if id == caller.id() {
        return Err(ApiError::Conflict {
            code: "cannot_disable_self",
            detail: "an administrator cannot disable or enable themselves",
        });
    }
    let not_found = ApiError::NotFound { code: "user_not_found", what: "user" };
    let user = state.users.modify(id, |user| user.disabled = disabled).await?.ok_or(not_found)?;
    if disabled {
        let ended = state.users.end_sessions(id).await?;
        tracing::info!(user = %id, by = %caller.id(), ended_sessions = ended, "user disabled");
    } else {
        tracing::info!(user = %id, by = %caller.id(), "user enabled");
    }
    Ok(Json(UserView::from(&user)))
}

/// `POST /v1/users/{id}/disable`: admin only. The user's tokens stop
/// working at once and their sessions end; they cannot log in until enabled.
/// 409 `cannot_disable_self`.
#[utoipa::path(
    post,
    path = "/v1/users/{id}/disable",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 200, body = UserView),
        BadRequest,
        Forbidden,
        NotFound,
        Conflict,
        Authenticated,
    ),
)]
pub async fn disable_user(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<UserView>, ApiError> {
    set_disabled(&state, &caller, &id, true).await
}

/// `POST /v1/users/{id}/enable`: admin only; the user may log in again.
#[utoipa::path(
    post,
    path = "/v1/users/{id}/enable",
    tag = "users",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 200, body = UserView),
        BadRequest,
        Forbidden,
        NotFound,
        Conflict,
        Authenticated,
    ),
)]
pub async fn enable_user(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<UserView>, ApiError> {
    set_disabled(&state, &caller, &id, false).await
}
