//! Risk rules and their decisions, for admins: create, list, read, replace
//! and delete rules (kept by [`crate::risk`]), and page through what they
//! decided.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;

use crate::auth::Caller;
use crate::domain::{account_id, parse_uuid};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiQuery, IdPath};
use crate::risk;
use crate::state::AppState;
use crate::wire::{DecisionQuery, DecisionView, Page, RuleBody, RuleView};

fn view(entry: &risk::RuleEntry) -> RuleView {
    RuleView::new(&entry.rule, entry.created_at_ms)
}

/// `POST /v1/risk/rules`: admin only; in force when answered.
#[utoipa::path(
    post,
    path = "/v1/risk/rules",
    tag = "risk",
    security(("bearer" = [])),
    request_body = RuleBody,
    responses(
        (status = 201, body = RuleView),
        (status = 400, description = "Malformed rule, e.g. unknown_rule_kind, invalid_parameters, window_out_of_range, malformed_amount", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admin only", body = Problem),
        (status = 409, description = "too_many_rules", body = Problem),
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
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admin only", body = Problem),
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

/// `GET /v1/risk/rules/{id}`: admin only.
#[utoipa::path(
    get,
    path = "/v1/risk/rules/{id}",
    tag = "risk",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "UUID")),
    responses(
        (status = 200, body = RuleView),
        (status = 404, description = "rule_not_found", body = Problem),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admin only", body = Problem),
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
/// body as a creation), keeping its id; in force when answered.
#[utoipa::path(
    put,
    path = "/v1/risk/rules/{id}",
    tag = "risk",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "UUID")),
    request_body = RuleBody,
    responses(
        (status = 200, body = RuleView),
        (status = 404, description = "rule_not_found", body = Problem),
        (status = 400, description = "Malformed rule, e.g. unknown_rule_kind, invalid_parameters, window_out_of_range, malformed_amount", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admin only", body = Problem),
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
    params(("id" = String, Path, description = "UUID")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "rule_not_found", body = Problem),
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admin only", body = Problem),
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
        (status = 400, description = "Malformed input", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Admin only", body = Problem),
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
