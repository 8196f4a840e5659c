//! Accounts: open, read, list, freeze, unfreeze, close.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use uuid::Uuid;
use wallet_actors::{
    account_id_at_home, is_reserved_account_id, AccountFlags, AccountId, AccountStatus, Amount, NewAccount,
    Rejection,
};
use wallet_storage::users::LIST_LIMIT_MAX;

use crate::auth::Caller;
use crate::domain::{account_id, ledger_user_id, parse_uuid};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery, IdPath};
use crate::openapi::{Authenticated, BadRequest, Conflict, Forbidden, JsonBody, NotFound, Unprocessable};
use crate::routes::users::PAGE_SIZE_DEFAULT;
use crate::state::AppState;
use crate::wire::accounts::{AccountView, HistoryItemView, HistoryQuery, NewAccountBody};
use crate::wire::money::TransferView;
use crate::wire::{parse_amount, ListQuery, Page};

/// Most index entries one page of `GET /v1/accounts` reads.
const INDEX_SCAN_PER_PAGE_MAX: usize = 10 * LIST_LIMIT_MAX;

/// `POST /v1/accounts`: opens an account for the caller.
///
/// 400 `missing_scale`, `scale_mismatch`, `malformed_asset`; 403 when a user sets an
/// admin-only field; 404 `user_not_found`; 409 `account_exists`.
#[utoipa::path(
    post,
    path = "/v1/accounts",
    tag = "accounts",
    security(("bearer" = [])),
    request_body = NewAccountBody,
    responses(
        (status = 201, description = "Opened", body = AccountView),
        JsonBody,
        Forbidden,
        NotFound,
        Conflict,
        Authenticated,
    ),
)]
pub async fn create_account(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<NewAccountBody>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let privileged =
        body.id.is_some() || body.user_id.is_some() || body.flags.is_some() || body.overdraft_limit.is_some();
    if privileged {
        caller.require_admin()?;
    }
    let asset = state.account_rules.allowed_assets.asset(&body.asset, body.scale)?;
    let owner = match &body.user_id {
        Some(text) => {
            let owner = parse_uuid("user_id", text)?;
            if state.users.get(owner).await?.is_none() {
                return Err(ApiError::NotFound { code: "user_not_found", what: "user" });
            }
            owner
        }
        None => caller.id(),
    };
    let id = match &body.id {
        Some(text) => account_id("id", text)?,
        None => {
            let shard_count = state.ledger.config().shard_count;
            account_id_at_home(ledger_user_id(owner)?, shard_count, || Uuid::new_v4().as_u128())
        }
    };
    if is_reserved_account_id(id) {
        return Err(ApiError::Rejected(Rejection::ReservedAccountId));
    }
    let flags = body.flags.map(AccountFlags::from).unwrap_or(AccountFlags::WALLET);
    let overdraft_limit = match &body.overdraft_limit {
        Some(text) => parse_amount("overdraft_limit", text)?,
        None => Amount::ZERO,
    };
    let index_key = Uuid::from_u128(id.get());
    if caller.is_admin() {
        state.users.add_owned(owner, index_key).await?;
    } else {
        let accounts_max = state.account_rules.accounts_per_user_max;
        if !state.users.add_owned_capped(owner, index_key, accounts_max).await? {
            return Err(ApiError::Conflict {
                code: "too_many_accounts",
                detail: "this user has as many accounts as one user may open; an administrator may open more",
            });
        }
    }
    // After the cap (a refused opening changes nothing, not even this) and
    // before the account: a deposit into it needs the asset's settlement
    // account. Settlement ids are reserved, so no account can take one.
    if let Err(error) = state.ensure_settlement_account(asset).await {
        state.users.remove_owned(owner, index_key).await?;
        return Err(error);
    }
    let new = NewAccount { id, user_id: ledger_user_id(owner)?, asset, flags, overdraft_limit };
    match state.ledger.open_account(new).await {
        Ok(account) => Ok((StatusCode::CREATED, Json(AccountView::from(&account)))),
        Err(error) => {
            // A refused opening (e.g. the id is another's account) must not stay
            // in the owner's index; an unknown outcome may have opened it, so keep it.
            if matches!(error, wallet_actors::LedgerError::Rejected(_)) {
                state.users.remove_owned(owner, index_key).await?;
            }
            Err(error.into())
        }
    }
}

/// `GET /v1/accounts/{id}`: 404 `account_not_found` for another user's.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}",
    tag = "accounts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 200, body = AccountView),
        BadRequest,
        NotFound,
        Authenticated,
    ),
)]
pub async fn get_account(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<AccountView>, ApiError> {
    let id = account_id("id", &id)?;
    let account = state.visible_account(&caller, id, Rejection::AccountNotFound).await?;
    Ok(Json(AccountView::from(&account)))
}

/// `GET /v1/accounts`: the caller's own; an admin may pass `user_id` (403 for a user).
#[utoipa::path(
    get,
    path = "/v1/accounts",
    tag = "accounts",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = Page<AccountView>),
        BadRequest,
        Forbidden,
        Authenticated,
    ),
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Page<AccountView>>, ApiError> {
    let owner = match &query.user_id {
        Some(text) => {
            caller.require_admin()?;
            parse_uuid("user_id", text)?
        }
        None => caller.id(),
    };
    let after = query.cursor.as_deref().map(|c| parse_uuid("cursor", c)).transpose()?;
    let limit = query.limit.unwrap_or(PAGE_SIZE_DEFAULT).clamp(1, LIST_LIMIT_MAX);
    let ledger_owner = ledger_user_id(owner)?;
    let mut items = Vec::with_capacity(limit);
    let mut cursor = after;
    let mut scanned = 0;
    // An index entry whose opening never reached the ledger, or that names
    // an account of someone else, is skipped, and the page filled from the
    // entries after it; the scan is bounded, and a page cut short by the
    // bound still carries its cursor.
    let exhausted = loop {
        let wanted = limit - items.len();
        let ids = state.users.owned(owner, cursor, wanted)?;
        scanned += ids.len();
        let exhausted = ids.len() < wanted;
        for id in ids {
            cursor = Some(id);
            let id = AccountId::new(id.as_u128()).map_err(|_| ApiError::Internal)?;
            if let Some(view) = state.ledger.account(id).await? {
                if view.account.user_id == ledger_owner {
                    items.push(AccountView::from(&view.account));
                }
            }
        }
        if exhausted || items.len() == limit || scanned >= INDEX_SCAN_PER_PAGE_MAX {
            break exhausted;
        }
    };
    let next_cursor = if exhausted { None } else { cursor.map(|c| c.to_string()) };
    Ok(Json(Page { items, next_cursor }))
}

async fn set_status(
    state: &AppState,
    caller: &Caller,
    id: &str,
    status: AccountStatus,
) -> Result<Json<AccountView>, ApiError> {
    let id = account_id("id", id)?;
    state.visible_account(caller, id, Rejection::AccountNotFound).await?;
    let account = state.ledger.set_account_status(id, status).await?;
    Ok(Json(AccountView::from(&account)))
}

/// `POST /v1/accounts/{id}/freeze`: admin only; 422 `account_closed`.
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/freeze",
    tag = "accounts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 200, body = AccountView),
        BadRequest,
        Forbidden,
        NotFound,
        Unprocessable,
        Authenticated,
    ),
)]
pub async fn freeze(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<AccountView>, ApiError> {
    caller.require_admin()?;
    set_status(&state, &caller, &id, AccountStatus::Frozen).await
}

/// `POST /v1/accounts/{id}/unfreeze`: admin only; 422 `account_closed`.
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/unfreeze",
    tag = "accounts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 200, body = AccountView),
        BadRequest,
        Forbidden,
        NotFound,
        Unprocessable,
        Authenticated,
    ),
)]
pub async fn unfreeze(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<AccountView>, ApiError> {
    caller.require_admin()?;
    set_status(&state, &caller, &id, AccountStatus::Active).await
}

/// `POST /v1/accounts/{id}/close`: the owner or an admin; the balance must be zero
/// (422 `account_balance_not_zero`, `account_has_pending`).
#[utoipa::path(
    post,
    path = "/v1/accounts/{id}/close",
    tag = "accounts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID")),
    responses(
        (status = 200, body = AccountView),
        BadRequest,
        NotFound,
        Unprocessable,
        Authenticated,
    ),
)]
pub async fn close(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
) -> Result<Json<AccountView>, ApiError> {
    set_status(&state, &caller, &id, AccountStatus::Closed).await
}

/// Most history entries one page of `GET /v1/accounts/{id}/transfers` reads
/// to find its transfers. The opening and status changes are entries too
/// but not transfers, so a page reads on past them; only after this many
/// (thousands of status changes in a row) does it come back short, with a
/// `next_cursor` to go on from.
pub const HISTORY_SCAN_MAX: usize = 10 * LIST_LIMIT_MAX;

/// Largest read of the ledger's history (what `Ledger::history` allows).
const HISTORY_READ_MAX: usize = 1000;

/// `GET /v1/accounts/{id}/transfers`: the account's transfers, oldest first,
/// each with the balance right after it; paged by account sequence number.
/// A page holds `limit` transfers whenever that many follow the cursor:
/// events that are not transfers (the opening, status changes) take no
/// place in it. `next_cursor` is the last sequence number the page read.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/transfers",
    tag = "accounts",
    security(("bearer" = [])),
    params(("id" = String, Path, format = "uuid", description = "UUID"), HistoryQuery),
    responses(
        (status = 200, body = Page<HistoryItemView>),
        BadRequest,
        NotFound,
        Authenticated,
    ),
)]
pub async fn account_transfers(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<Page<HistoryItemView>>, ApiError> {
    let id = account_id("id", &id)?;
    state.visible_account(&caller, id, Rejection::AccountNotFound).await?;
    let (after, limit) = crate::routes::users::numbered_page(query.cursor.as_deref(), query.limit)?;
    let mut items = Vec::with_capacity(limit);
    let mut last_read = after;
    let mut scanned = 0;
    let mut ended = false;
    // The first read asks for just what the page lacks (most often the
    // page fills from it); each further one for twice as many, so a long
    // run of status changes costs few round trips.
    for reads in 0u32.. {
        if items.len() == limit || scanned >= HISTORY_SCAN_MAX {
            break;
        }
        let lacking = limit - items.len();
        let size = lacking.saturating_mul(1 << reads.min(10)).min(HISTORY_READ_MAX);
        let entries = state.ledger.history(id, last_read, size).await?;
        ended = entries.len() < size;
        for entry in &entries {
            if items.len() == limit {
                // Read but not used: the next page starts here.
                ended = false;
                break;
            }
            last_read = entry.sequence;
            scanned += 1;
            if let Some(item) = history_item(&state, entry) {
                items.push(item);
            }
        }
        if ended {
            break;
        }
    }
    let next_cursor = (!ended).then(|| last_read.to_string());
    Ok(Json(Page { items, next_cursor }))
}

/// The page item of a history entry, if it is a transfer's.
fn history_item(state: &AppState, entry: &wallet_actors::HistoryEntry) -> Option<HistoryItemView> {
    let wallet_actors::HistoryEvent::Leg(leg) = &entry.event else { return None };
    let side = match leg.side {
        wallet_actors::account::Side::Debit => "debit",
        wallet_actors::account::Side::Credit => "credit",
    };
    Some(HistoryItemView {
        sequence: entry.sequence,
        side: side.to_string(),
        posted_delta: leg.posted_add.to_string(),
        pending_added: leg.pending_add.to_string(),
        pending_released: leg.pending_sub.to_string(),
        balance: (&entry.balances).into(),
        occurred_at: crate::domain::rfc3339(entry.at_ms),
        transfer: state.ledger.transfer(leg.transfer_id).as_ref().map(TransferView::from),
    })
}
