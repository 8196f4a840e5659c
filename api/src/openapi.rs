//! The OpenAPI document, generated from the handlers' `#[utoipa::path]`
//! attributes and the wire types, served at `GET /v1/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{accounts, health, money, risk, users};

/// The API's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "wallet", description = "A balance ledger: accounts in any asset, exactly-once transfers. \
        Ids are UUIDs; amounts are strings of integer minor units; errors are application/problem+json \
        with a stable `code`."),
    paths(
        health::healthz, health::readyz, health::metrics,
        users::create_user, users::me, users::update_me, users::list_users, users::token, users::refresh,
        accounts::create_account, accounts::get_account, accounts::list_accounts, accounts::account_transfers,
        accounts::freeze,
        accounts::unfreeze, accounts::close,
        money::deposit, money::withdraw, money::create_transfer, money::create_batch, money::get_transfer,
        money::post_pending, money::void_pending,
        risk::create_rule, risk::list_rules, risk::get_rule, risk::replace_rule, risk::delete_rule,
        risk::list_decisions,
    ),
    modifiers(&BearerAuth),
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
