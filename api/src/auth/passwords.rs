//! Password hashes: argon2id with a random salt, computed on blocking threads.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as Argon2Algorithm, Argon2, Params, Version};
use rand_core::OsRng;

use crate::auth::random_token;
use crate::domain::Password;
use crate::error::ApiError;

/// Hashes and checks passwords with argon2id, off the async threads.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, checked when the email is unknown so that
    /// a login takes as long whether or not the user exists.
    decoy: Arc<String>,
}

impl Passwords {
    /// Argon2id with `memory_kib` and `iterations` (OWASP: 19456 KiB, 2), one lane.
    pub async fn new(memory_kib: u32, iterations: u32) -> Result<Passwords, ApiError> {
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|_| ApiError::Internal)?;
        let mut passwords = Passwords { params, decoy: Arc::new(String::new()) };
        let decoy = Password::parse(random_token(16))?;
        passwords.decoy = Arc::new(passwords.hash(decoy).await?);
        Ok(passwords)
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Argon2Algorithm::Argon2id, Version::V0x13, params)
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a random salt.
    pub async fn hash(&self, password: Password) -> Result<String, ApiError> {
        let params = self.params.clone();
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Passwords::argon2(params)
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|_| ApiError::Internal)
        })
        .await
        .map_err(|_| ApiError::Internal)?
    }

    /// Whether `password` matches `hash`; `None` checks against the decoy
    /// (and is always false).
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, ApiError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.as_str().to_string());
        let params = self.params.clone();
        let matches = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else { return false };
            Passwords::argon2(params).verify_password(password.as_bytes(), &parsed).is_ok()
        })
        .await
        .map_err(|_| ApiError::Internal)?;
        Ok(known && matches)
    }
}
