//! Password hashes: argon2id with a random salt, computed on blocking threads.
//!
//! Each hash takes the configured memory (19 MiB by default) and a thread
//! for tens of milliseconds, so hashing is bounded: at most `hashes_max`
//! run at once and as many wait; a request beyond is refused at once
//! (503 `hashing_busy`, `Retry-After: 1`) rather than queued without end
//! (unbounded, 512 blocking threads of 19 MiB each could be asked for).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as Argon2Algorithm, Argon2, Params, Version};
use rand_core::OsRng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::domain::Password;
use crate::error::ApiError;
use crate::random::random_token;

/// Hashes and checks passwords with argon2id, off the async threads.
#[derive(Clone)]
pub struct Passwords {
    params: Params,
    /// A hash of a random password, checked when the email is unknown so that
    /// a login takes as long whether or not the user exists.
    decoy: Arc<String>,
    /// Hashes running.
    running: Arc<Semaphore>,
    /// Hashes running or waiting to run.
    admitted: Arc<Semaphore>,
}

/// Leave to hash: held until the hash is computed, even if the request
/// that asked has gone.
struct HashPermit {
    _admitted: OwnedSemaphorePermit,
    _running: OwnedSemaphorePermit,
}

impl Passwords {
    /// Argon2id with `memory_kib` and `iterations` (OWASP: 19456 KiB, 2), one
    /// lane; at most `hashes_max` hashes at once, and as many waiting.
    pub async fn new(memory_kib: u32, iterations: u32, hashes_max: usize) -> Result<Passwords, ApiError> {
        let params = Params::new(memory_kib, iterations, 1, None).map_err(|_| ApiError::Internal)?;
        let hashes_max = hashes_max.clamp(1, Semaphore::MAX_PERMITS / 2);
        let mut passwords = Passwords {
            params,
            decoy: Arc::new(String::new()),
            running: Arc::new(Semaphore::new(hashes_max)),
            admitted: Arc::new(Semaphore::new(hashes_max * 2)),
        };
        let decoy = Password::parse(random_token(16))?;
        passwords.decoy = Arc::new(passwords.hash(decoy).await?);
        Ok(passwords)
    }

    /// Waits for leave to hash, or refuses when too many wait already.
    async fn permit(&self) -> Result<HashPermit, ApiError> {
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| ApiError::HashingBusy)?;
        let running = self.running.clone().acquire_owned().await.map_err(|_| ApiError::Internal)?;
        Ok(HashPermit { _admitted: admitted, _running: running })
    }

    fn argon2(params: Params) -> Argon2<'static> {
        Argon2::new(Argon2Algorithm::Argon2id, Version::V0x13, params)
    }

    /// A PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) with a random salt.
    pub async fn hash(&self, password: Password) -> Result<String, ApiError> {
        let params = self.params.clone();
        let permit = self.permit().await?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
        let permit = self.permit().await?;
        let matches = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let Ok(parsed) = PasswordHash::new(&hash) else { return false };
            Passwords::argon2(params).verify_password(password.as_bytes(), &parsed).is_ok()
        })
        .await
        .map_err(|_| ApiError::Internal)?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn beyond_the_running_and_waiting_hashes_a_check_is_refused() -> Result<(), ApiError> {
        let passwords = Passwords::new(64, 1, 1).await?;
        let running = passwords.permit().await?;
        let waiting = tokio::spawn({
            let passwords = passwords.clone();
            async move { passwords.permit().await.map(drop) }
        });
        while passwords.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = passwords.verify("whatever1".into(), None).await;
        assert!(matches!(refused, Err(ApiError::HashingBusy)), "{refused:?}");
        drop(running);
        waiting.await.map_err(|_| ApiError::Internal)??;
        assert!(!passwords.verify("whatever1".into(), None).await?, "free again");
        Ok(())
    }
}
