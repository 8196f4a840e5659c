//! Users on the wire: sign-up, profile changes, and a user as shown.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wallet_storage::users::{self, StoredUser};

use crate::domain::{rfc3339, Email, Password, UserName};
use crate::error::ApiError;

/// `POST /v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserBody {
    /// Login email.
    pub email: String,
    /// Password, at least 8 characters.
    #[schema(min_length = 8)]
    pub password: String,
    /// Display name.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
}

/// A sign-up, parsed.
#[derive(Debug)]
pub struct NewUser {
    /// Normalised email.
    pub email: Email,
    /// Display name.
    pub name: UserName,
    /// Password.
    pub password: Password,
}

impl TryFrom<NewUserBody> for NewUser {
    type Error = ApiError;

    fn try_from(body: NewUserBody) -> Result<Self, Self::Error> {
        Ok(NewUser {
            email: Email::parse(&body.email)?,
            name: UserName::parse(&body.name)?,
            password: Password::parse(body.password)?,
        })
    }
}

/// `PATCH /v1/users/me`: the profile fields a user may change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserBody {
    /// New display name.
    pub name: Option<String>,
}

/// A user as shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    /// UUID.
    #[schema(format = "uuid")]
    pub id: String,
    /// Email.
    pub email: String,
    /// Display name.
    pub name: String,
    /// `user` or `admin`.
    pub role: Role,
    /// Disabled by an administrator: none of the user's tokens work.
    pub disabled: bool,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl From<&StoredUser> for UserView {
    fn from(user: &StoredUser) -> Self {
        UserView {
            id: user.id.to_string(),
            email: user.email.clone(),
            name: user.name.clone(),
            role: user.role.into(),
            disabled: user.disabled,
            created_at: rfc3339(user.created_at_ms),
        }
    }
}

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and moves their own accounts.
    User,
    /// Everything, including deposits, freezes and other users' accounts.
    Admin,
}

impl From<users::Role> for Role {
    fn from(role: users::Role) -> Self {
        match role {
            users::Role::User => Role::User,
            users::Role::Admin => Role::Admin,
        }
    }
}
