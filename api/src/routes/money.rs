//! Money: deposits and withdrawals through the asset's settlement account,
//! transfers (single, batch), posting and voiding holds, reading a transfer.
//!
//! The transfer id is the idempotency key: a replay of the same id and body
//! answers 200 with the first outcome and moves nothing; a new transfer 201.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use wallet_actors::account::Side;
use wallet_actors::registry::TransferRecord;
use wallet_actors::transfer::BATCH_SIZE_MAX;
use wallet_actors::{settlement_account_id, Rejection, TransferId, TransferRequest, TransferResult, UserId};

use crate::auth::Caller;
use crate::domain::{client_transfer_id, derived_transfer_id, transfer_id};
use crate::error::ApiError;
use crate::extract::{optional_json, ApiBytes, ApiJson, IdPath};
use crate::openapi::{
    Authenticated, BadRequest, Conflict, Forbidden, JsonBody, NotFound, OptionalBody, Unprocessable,
};
use crate::state::AppState;
use crate::wire::money::{
    BatchBody, BatchItemView, BatchView, MoneyBody, MoneyCommand, PostBody, TransferBody, TransferCommand,
    TransferView, VoidBody,
};
use crate::wire::parse_amount;

fn count(result: &str) {
    metrics::counter!("wallet_transfers_total", "result" => result.to_string()).increment(1);
}

/// Counts what a risk rule decided in a result: a veto, or a review hold
/// made now (a replay decided nothing new).
fn count_risk(state: &AppState, result: &TransferResult) {
    let (kind, outcome) = match result {
        Err(rejection) => match rejection.risk_hit() {
            Some(hit) => (hit.kind.as_str(), "reject"),
            None => return,
        },
        Ok(outcome) if !outcome.replayed => match outcome.record.transfer.review {
            Some(rule_id) => {
                // The hold names only its rule; a rule deleted since is "unknown".
                let rules = state.ledger.rules();
                let kind = rules.rules().iter().find(|rule| rule.id == rule_id).map(|rule| rule.kind.code());
                (kind.map_or("unknown", |kind| kind.as_str()), "review")
            }
            None => return,
        },
        Ok(_) => return,
    };
    metrics::counter!("wallet_risk_decisions_total", "kind" => kind, "outcome" => outcome).increment(1);
}

/// Turns one ledger result into a response, counting it.
fn respond(state: &AppState, result: TransferResult) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    count_risk(state, &result);
    match result {
        Ok(outcome) => {
            let status = if outcome.replayed { StatusCode::OK } else { StatusCode::CREATED };
            count(if outcome.replayed { "replayed" } else { "applied" });
            Ok((status, Json(TransferView::from(&outcome.record))))
        }
        Err(rejection) => {
            count(rejection.code());
            Err(ApiError::Rejected(rejection))
        }
    }
}

/// `POST /v1/deposits`: admin only; from the asset's settlement account.
///
/// 409 `exists_with_different_fields`: the id was used with another body.
#[utoipa::path(
    post,
    path = "/v1/deposits",
    tag = "money",
    security(("bearer" = [])),
    request_body = MoneyBody,
    responses(
        (status = 201, description = "Applied", body = TransferView),
        (status = 200, description = "Replay: the first outcome", body = TransferView),
        JsonBody,
        Forbidden,
        NotFound,
        Conflict,
        Unprocessable,
        Authenticated,
    ),
)]
pub async fn deposit(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<MoneyBody>,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    caller.require_admin()?;
    settle(&state, &caller, body, Side::Credit).await
}

/// A deposit credits the account from its asset's settlement account; a
/// withdrawal debits it to there.
async fn settle(
    state: &AppState,
    caller: &Caller,
    body: MoneyBody,
    side: Side,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let command = MoneyCommand::try_from(body)?;
    let not_found = match side {
        Side::Credit => Rejection::CreditAccountNotFound,
        Side::Debit => Rejection::DebitAccountNotFound,
    };
    let account = state.visible_account(caller, command.account_id, not_found).await?;
    if account.user_id == UserId::SYSTEM {
        return Err(ApiError::Rejected(Rejection::SameAccount));
    }
    state.ensure_settlement_account(account.asset).await?;
    let settlement = settlement_account_id(&account.asset);
    let (debit_account_id, credit_account_id) = match side {
        Side::Credit => (settlement, account.id),
        Side::Debit => (account.id, settlement),
    };
    let request = TransferRequest::Transfer {
        id: command.id,
        debit_account_id,
        credit_account_id,
        amount: command.amount,
        pending: None,
        reference: command.reference,
        metadata: None,
    };
    let _admitted = state.admission.admit(caller.id(), 1)?;
    respond(state, state.ledger.submit_one(request).await?)
}

/// `POST /v1/withdrawals`: the owner or an admin; to the asset's settlement account.
///
/// 409 `exists_with_different_fields`: the id was used with another body.
#[utoipa::path(
    post,
    path = "/v1/withdrawals",
    tag = "money",
    security(("bearer" = [])),
    request_body = MoneyBody,
    responses(
        (status = 201, description = "Applied", body = TransferView),
        (status = 200, description = "Replay: the first outcome", body = TransferView),
        JsonBody,
        NotFound,
        Conflict,
        Unprocessable,
        Authenticated,
    ),
)]
pub async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<MoneyBody>,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    settle(&state, &caller, body, Side::Debit).await
}

/// `POST /v1/transfers`: from one of the caller's accounts to any account.
///
/// 404 `debit_account_not_found` for an account not the caller's; 409
/// `exists_with_different_fields`: the id was used with another body; 422 e.g.
/// `insufficient_funds`.
#[utoipa::path(
    post,
    path = "/v1/transfers",
    tag = "money",
    security(("bearer" = [])),
    request_body = TransferBody,
    responses(
        (status = 201, description = "Applied", body = TransferView),
        (status = 200, description = "Replay: the first outcome", body = TransferView),
        JsonBody,
        NotFound,
        Conflict,
        Unprocessable,
        Authenticated,
    ),
)]
pub async fn create_transfer(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<TransferBody>,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let command = TransferCommand::try_from(body)?;
    state.check_owner(&caller, command.from, Rejection::DebitAccountNotFound).await?;
    let _admitted = state.admission.admit(caller.id(), 1)?;
    respond(&state, state.ledger.submit_one(command.request).await?)
}

fn batch_error(error: &ApiError) -> BatchItemView {
    let problem = error.problem();
    BatchItemView { status: problem.status, transfer: None, error: serde_json::to_value(problem).ok() }
}

/// `POST /v1/transfers/batch`: a result per transfer; with `atomic`, all or none.
///
/// A transfer's refusal is in its result; 400 `batch_size_out_of_range` for no
/// transfers or more than 8189.
#[utoipa::path(
    post,
    path = "/v1/transfers/batch",
    tag = "money",
    security(("bearer" = [])),
    request_body = BatchBody,
    responses(
        (status = 200, description = "One result per transfer", body = BatchView),
        JsonBody,
        Authenticated,
    ),
)]
pub async fn create_batch(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BatchBody>,
) -> Result<Json<BatchView>, ApiError> {
    if body.transfers.is_empty() || body.transfers.len() > BATCH_SIZE_MAX {
        return Err(ApiError::Rejected(Rejection::BatchSizeOutOfRange));
    }
    let total = body.transfers.len();
    // Parse and authorize every item first: nothing reaches the ledger unchecked.
    let mut checked: Vec<Result<TransferRequest, ApiError>> = Vec::with_capacity(total);
    let mut allowed = std::collections::HashMap::new();
    for item in body.transfers {
        let command = match TransferCommand::try_from(item) {
            Ok(command) => command,
            Err(error) => {
                checked.push(Err(error));
                continue;
            }
        };
        let permitted = match allowed.get(&command.from) {
            Some(permitted) => *permitted,
            None => {
                let permitted =
                    match state.check_owner(&caller, command.from, Rejection::DebitAccountNotFound).await {
                        Ok(_) => true,
                        Err(ApiError::Rejected(_)) => false,
                        Err(other) => return Err(other),
                    };
                allowed.insert(command.from, permitted);
                permitted
            }
        };
        checked.push(if permitted {
            Ok(command.request)
        } else {
            Err(ApiError::Rejected(Rejection::DebitAccountNotFound))
        });
    }

    let failed = checked.iter().any(Result::is_err);
    let mut results: Vec<Option<BatchItemView>> = (0..total).map(|_| None).collect();
    let mut indexes = Vec::with_capacity(total);
    let mut requests = Vec::with_capacity(total);
    for (index, item) in checked.into_iter().enumerate() {
        match item {
            Ok(request) if !(body.atomic && failed) => {
                indexes.push(index);
                requests.push(request);
            }
            Ok(_) => {
                results[index] = Some(batch_error(&ApiError::Rejected(Rejection::LinkedTransferFailed)));
            }
            Err(error) => results[index] = Some(batch_error(&error)),
        }
    }
    if !requests.is_empty() {
        let _admitted = state.admission.admit(caller.id(), requests.len())?;
        let outcomes = state.ledger.submit(requests, body.atomic).await?;
        for (index, outcome) in indexes.into_iter().zip(outcomes) {
            results[index] = Some(match respond(&state, outcome) {
                Ok((status, Json(transfer))) => {
                    BatchItemView { status: status.as_u16(), transfer: Some(transfer), error: None }
                }
                Err(error) => batch_error(&error),
            });
        }
    }
    let results = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| batch_error(&ApiError::Rejected(Rejection::LinkedTransferFailed))))
        .collect();
    Ok(Json(BatchView { results }))
}

/// Whether the caller may see or act on a transfer: admin, or owner of either side.
async fn may_see(state: &AppState, caller: &Caller, record: &TransferRecord) -> Result<bool, ApiError> {
    if caller.is_admin() {
        return Ok(true);
    }
    for id in [record.transfer.debit_account_id, record.transfer.credit_account_id] {
        if state.caller_owns(caller, id).await? {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn visible_transfer(
    state: &AppState,
    caller: &Caller,
    id: TransferId,
    not_found: ApiError,
) -> Result<TransferRecord, ApiError> {
    match state.ledger.transfer(id) {
        Some(record) if may_see(state, caller, &record).await? => Ok(record),
        _ => Err(not_found),
    }
}

/// `GET /v1/transfers/{id}`: 404 `transfer_not_found` unless the caller is a party or an admin.
#[utoipa::path(
    get,
    path = "/v1/transfers/{id}",
    tag = "money",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 200, body = TransferView),
        BadRequest,
        NotFound,
        Authenticated,
    ),
)]
pub async fn get_transfer(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<TransferView>, ApiError> {
    let id = transfer_id("id", &id)?;
    let not_found = ApiError::NotFound { code: "transfer_not_found", what: "transfer" };
    let record = visible_transfer(&state, &caller, id, not_found).await?;
    Ok(Json(TransferView::from(&record)))
}

/// `POST /v1/transfers/{id}/post` {id?, amount?}: either party or an admin;
/// only an admin for a review hold (403 for its owner).
#[utoipa::path(
    post,
    path = "/v1/transfers/{id}/post",
    tag = "money",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    request_body(content = Option<PostBody>),
    responses(
        (status = 201, description = "Applied", body = TransferView),
        (status = 200, description = "Replay: the first outcome", body = TransferView),
        OptionalBody,
        Forbidden,
        NotFound,
        Conflict,
        Unprocessable,
        Authenticated,
    ),
)]
pub async fn post_pending(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(pending): IdPath,
    ApiBytes(body): ApiBytes,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let pending_id = transfer_id("id", &pending)?;
    let body: PostBody = optional_json(&body)?;
    let id = resolution_id(pending_id, body.id.as_deref(), "post")?;
    let amount = body.amount.as_deref().map(|a| parse_amount("amount", a)).transpose()?;
    resolve(&state, &caller, TransferRequest::PostPending { id, pending_id, amount }, pending_id).await
}

/// The id of a post or void: the client's, or one derived from the pending
/// id (in a range no client id may be in: see
/// [`crate::domain::RESERVED_TRANSFER_ID_PREFIX`]).
fn resolution_id(pending_id: TransferId, given: Option<&str>, what: &str) -> Result<TransferId, ApiError> {
    match given {
        Some(text) => client_transfer_id("id", text),
        None => derived_transfer_id(pending_id, what),
    }
}

/// Posts or voids a pending transfer the caller can see. A hold a risk rule
/// made for review is for an admin to decide: its owner gets 403.
async fn resolve(
    state: &AppState,
    caller: &Caller,
    request: TransferRequest,
    pending_id: TransferId,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let pending =
        visible_transfer(state, caller, pending_id, ApiError::Rejected(Rejection::PendingTransferNotFound))
            .await?;
    if pending.transfer.review.is_some() {
        caller.require_admin()?;
    }
    let _admitted = state.admission.admit(caller.id(), 1)?;
    respond(state, state.ledger.submit_one(request).await?)
}

/// `POST /v1/transfers/{id}/void` {id?}: either party or an admin; only an
/// admin for a review hold (403 for its owner).
#[utoipa::path(
    post,
    path = "/v1/transfers/{id}/void",
    tag = "money",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    request_body(content = Option<VoidBody>),
    responses(
        (status = 201, description = "Applied", body = TransferView),
        (status = 200, description = "Replay: the first outcome", body = TransferView),
        OptionalBody,
        Forbidden,
        NotFound,
        Conflict,
        Unprocessable,
        Authenticated,
    ),
)]
pub async fn void_pending(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(pending): IdPath,
    ApiBytes(body): ApiBytes,
) -> Result<(StatusCode, Json<TransferView>), ApiError> {
    let pending_id = transfer_id("id", &pending)?;
    let body: VoidBody = optional_json(&body)?;
    let id = resolution_id(pending_id, body.id.as_deref(), "void")?;
    resolve(&state, &caller, TransferRequest::VoidPending { id, pending_id }, pending_id).await
}
