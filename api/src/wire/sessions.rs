//! Sessions on the wire: logins, refreshes, password changes, and the
//! token response they answer with.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/auth/token`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Login email.
    pub email: String,
    /// Password.
    pub password: String,
}

/// `POST /v1/auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// A refresh token from an earlier token response; each works once.
    pub refresh_token: String,
}

/// `POST /v1/users/me/password`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChangeBody {
    /// The password now.
    pub current_password: String,
    /// The new one (8 characters to 256 bytes).
    pub new_password: String,
}

/// A token response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// The JWT to send as `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Exchange at `POST /v1/auth/refresh` for a new pair.
    pub refresh_token: String,
}
