//! The administrator made at start from `--admin-email` and
//! `--admin-password` ([`ensure_admin`]).
//!
//! Sign-up is open and emails are not verified, so an address is no proof
//! of who holds it: whoever signed up with the address an operator names
//! later would become the administrator if a start promoted the user it
//! finds there. So a start never promotes: it creates the administrator
//! when no user has the address, and records the new user's id (`meta`
//! key `admin_id`); it accepts a user who is an administrator already; and
//! it refuses to start when the address belongs to anyone else.
//!
//! A configured password that differs from the administrator's stored one
//! replaces it (the way back in for an operator who lost it) and ends every
//! session of the administrator, as any password change does.

use uuid::Uuid;
use wallet_storage::users::{Role, StoredUser, UserStoreError};

use crate::domain::{now_ms, Email, Password};
use crate::error::ApiError;
use crate::random::random_token;
use crate::settings::Settings;
use crate::state::AppState;

/// The `meta` key of the id of the administrator the last start created.
pub const ADMIN_ID_KEY: &str = "admin_id";

/// Why the administrator could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configured email or password is not acceptable.
    #[error("--admin-email or --admin-password: {0}")]
    Setting(ApiError),
    /// The configured email belongs to a user who is not an administrator.
    #[error(
        "--admin-email (WALLET_ADMIN_EMAIL) is {email}, the address of a user who is not an administrator; \
         anyone may sign up with any address, so a start never promotes an existing user: configure an \
         address no one has signed up with"
    )]
    NotAnAdmin {
        /// The configured address.
        email: String,
    },
    /// The user store failed.
    #[error("{0}")]
    Store(#[from] UserStoreError),
    /// The password could not be hashed.
    #[error("hashing the administrator's password: {0}")]
    Hash(ApiError),
}

/// Makes sure the configured administrator exists, without ever promoting
/// a user (see the module docs). Returns the password when it generated
/// one: shown once by the caller, stored only as a hash.
pub async fn ensure_admin(state: &AppState, settings: &Settings) -> Result<Option<String>, AdminError> {
    let email = Email::parse(&settings.admin_email).map_err(AdminError::Setting)?;
    let configured = match &settings.admin_password {
        Some(password) => Some(Password::parse(password.expose().to_string()).map_err(AdminError::Setting)?),
        None => None,
    };
    match state.users.by_email(email.as_str()).await? {
        Some(user) if user.role != Role::Admin => {
            Err(AdminError::NotAnAdmin { email: email.as_str().to_string() })
        }
        Some(user) => {
            // An administrator made before the id was recorded: this one.
            if state.users.meta(ADMIN_ID_KEY)?.is_none() {
                state.users.set_meta(ADMIN_ID_KEY, user.id.as_bytes()).await?;
            }
            if let Some(password) = configured {
                reset_password_if_changed(state, user, password).await?;
            }
            Ok(None)
        }
        None => {
            let (password, generated) = match configured {
                Some(password) => (password, None),
                None => {
                    let text = random_token(16);
                    (Password::parse(text.clone()).map_err(AdminError::Setting)?, Some(text))
                }
            };
            let user = StoredUser {
                id: Uuid::new_v4(),
                email: email.as_str().to_string(),
                name: "Administrator".to_string(),
                password_hash: state.passwords.hash(password).await.map_err(AdminError::Hash)?,
                role: Role::Admin,
                created_at_ms: now_ms(),
                disabled: false,
                session_epoch: 0,
            };
            match state.users.create(&user).await {
                Ok(()) => {}
                // Another node of the cluster made it at the same moment: that one it is.
                Err(UserStoreError::EmailTaken) => return Box::pin(ensure_admin(state, settings)).await,
                Err(error) => return Err(error.into()),
            }
            state.users.set_meta(ADMIN_ID_KEY, user.id.as_bytes()).await?;
            tracing::info!(user = %user.id, email = %user.email, "administrator created");
            Ok(generated)
        }
    }
}

/// Replaces the administrator's password by the configured one when they
/// differ, and ends the administrator's sessions.
async fn reset_password_if_changed(
    state: &AppState,
    user: StoredUser,
    password: Password,
) -> Result<(), AdminError> {
    let hash = Some(user.password_hash.clone());
    let matches =
        state.passwords.verify(password.expose().to_string(), hash).await.map_err(AdminError::Hash)?;
    if matches {
        return Ok(());
    }
    let password_hash = state.passwords.hash(password).await.map_err(AdminError::Hash)?;
    state.users.modify(user.id, |user| user.password_hash.clone_from(&password_hash)).await?;
    let revoked = state.users.end_sessions(user.id).await?;
    tracing::warn!(
        user = %user.id,
        revoked_sessions = revoked,
        "the administrator's password was reset from the configuration; their sessions are revoked"
    );
    Ok(())
}
