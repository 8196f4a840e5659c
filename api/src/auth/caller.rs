//! Who is calling: an authenticated user, as stored now. How a request
//! finds its caller is `crate::authenticate`.

use uuid::Uuid;
use wallet_storage::users::{Role, StoredUser};

use crate::error::ApiError;

/// Who is calling: an authenticated user, as stored now.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The user.
    pub user: StoredUser,
}

impl Caller {
    /// The caller's id.
    pub fn id(&self) -> Uuid {
        self.user.id
    }

    /// Whether the caller is an admin.
    pub fn is_admin(&self) -> bool {
        self.user.role == Role::Admin
    }

    /// Refuses callers who are not admins.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

impl Caller {
    /// `user` as a caller, unless an administrator disabled them.
    pub(crate) fn enabled(user: StoredUser) -> Result<Caller, ApiError> {
        if user.disabled {
            return Err(ApiError::Unauthorized { code: "user_disabled", detail: "this user is disabled" });
        }
        Ok(Caller { user })
    }
}
