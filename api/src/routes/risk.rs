//! Risk rules and their decisions, for admins: create, list, read, replace
//! and delete rules (kept by [`crate::risk`]), and page through what they
//! decided.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::auth::Caller;
use crate::domain::{account_id, parse_uuid};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, IdPath};
use crate::openapi::{Authenticated, BadRequest, Conflict, Forbidden, JsonBody, NotFound};
use crate::risk;
use crate::state::AppState;
use crate::wire::risk::{DecisionQuery, DecisionView, RuleBody, RuleView};
use crate::wire::Page;

fn view(entry: &risk::RuleEntry) -> RuleView {
    RuleView::new(&entry.rule, entry.created_at_ms)
}

/// `POST /v1/risk/rules`: admin only; in force when answered.
///
/// 400 for a malformed rule, e.g. `unknown_rule_kind`, `invalid_parameters`,
/// `window_out_of_range`, `malformed_amount`; 409 `too_many_rules`.
#[utoipa::path(
    post,
    path = "/v1/risk/rules",
    tag = "risk",
    security(("bearer" = [])),
    request_body = RuleBody,
    responses(
        (status = 201, description = "In force", body = RuleView),
        JsonBody,
        Forbidden,
        Conflict,
        Authenticated,
    ),
)]
pub async fn create_rule(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<(StatusCode, Json<RuleView>), ApiError> {
    caller.require_admin()?;
    let entry = risk::create(&state, body).await?;
    Ok((StatusCode::CREATED, Json(view(&entry))))
}

/// `GET /v1/risk/rules`: admin only; every rule (at most 256), oldest first.
#[utoipa::path(
    get,
    path = "/v1/risk/rules",
    tag = "risk",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<RuleView>),
        Forbidden,
        Authenticated,
    ),
)]
pub async fn list_rules(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Page<RuleView>>, ApiError> {
    caller.require_admin()?;
    let items = risk::all(&state)?.iter().map(view).collect();
    Ok(Json(Page { items, next_cursor: None }))
}

/// `GET /v1/risk/rules/{id}`: admin only; 404 `rule_not_found`.
#[utoipa::path(
    get,
    path = "/v1/risk/rules/{id}",
    tag = "risk",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 200, body = RuleView),
        BadRequest,
        Forbidden,
        NotFound,
        Authenticated,
    ),
)]
pub async fn get_rule(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<RuleView>, ApiError> {
    caller.require_admin()?;
    let entry = risk::get(&state, parse_uuid("id", &id)?)?;
    Ok(Json(view(&entry)))
}

/// `PUT /v1/risk/rules/{id}`: admin only; replaces the rule whole (same
/// body as a creation), keeping its id; in force when answered; 404
/// `rule_not_found`.
#[utoipa::path(
    put,
    path = "/v1/risk/rules/{id}",
    tag = "risk",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    request_body = RuleBody,
    responses(
        (status = 200, description = "In force", body = RuleView),
        JsonBody,
        Forbidden,
        NotFound,
        Authenticated,
    ),
)]
pub async fn replace_rule(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<Json<RuleView>, ApiError> {
    caller.require_admin()?;
    let entry = risk::replace(&state, parse_uuid("id", &id)?, body).await?;
    Ok(Json(view(&entry)))
}

/// `DELETE /v1/risk/rules/{id}`: admin only; out of force when answered.
#[utoipa::path(
    delete,
    path = "/v1/risk/rules/{id}",
    tag = "risk",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 204, description = "Deleted, out of force"),
        BadRequest,
        Forbidden,
        NotFound,
        Authenticated,
    ),
)]
pub async fn delete_rule(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    risk::remove(&state, parse_uuid("id", &id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/risk/decisions`: admin only; what the rules decided, oldest
/// first, of one debited account when `account_id` is given; paged by
/// decision id.
#[utoipa::path(
    get,
    path = "/v1/risk/decisions",
    tag = "risk",
    security(("bearer" = [])),
    params(DecisionQuery),
    responses(
        (status = 200, body = Page<DecisionView>),
        BadRequest,
        Forbidden,
        Authenticated,
    ),
)]
pub async fn list_decisions(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DecisionQuery>,
) -> Result<Json<Page<DecisionView>>, ApiError> {
    caller.require_admin()?;
    let account = query.account_id.as_deref().map(|text| account_id("account_id", text)).transpose()?;
    let (after, limit) = crate::routes::users::numbered_page(query.cursor.as_deref(), query.limit)?;
    let decisions = state.ledger.decisions(account, after, limit)?;
    let next_cursor =
        (decisions.len() == limit).then(|| decisions.last().map(|d| d.id.to_string())).flatten();
    Ok(Json(Page { items: decisions.iter().map(DecisionView::from).collect(), next_cursor }))
}
