//! Wire types: the JSON the API reads and writes, separate from the domain
//! types and converted with `TryFrom`. Request types refuse unknown fields,
//! so a client cannot slip in a balance or an owner. Ids are UUID text,
//! amounts are strings of integer minor units.
//!
//! One module per route group, as in [`crate::routes`]; this one keeps what
//! several groups share.
//! - [`users`]: sign-up, profile and user views.
//! - [`sessions`]: logins, refreshes, password changes and token responses.
//! - [`accounts`]: opening accounts, account and balance views, history.
//! - [`money`]: deposits, withdrawals, transfers, batches, holds.
//! - [`risk`]: risk rules (body, parameters, view) and their decisions.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wallet_actors::Amount;

use crate::error::ApiError;

pub mod accounts;
pub mod money;
pub mod risk;
pub mod sessions;
pub mod users;

/// Parses a wire amount, naming the field when it is wrong.
pub fn parse_amount(field: &'static str, text: &str) -> Result<Amount, ApiError> {
    Amount::parse(text).map_err(|source| ApiError::InvalidInput { field, source })
}

/// `GET /v1/users` and `GET /v1/accounts` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most items (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[param(format = "uuid")]
    pub cursor: Option<String>,
    /// Admin only: whose accounts.
    #[param(format = "uuid")]
    pub user_id: Option<String>,
}

/// A page of items.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
