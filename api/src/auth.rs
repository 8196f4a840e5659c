//! Authentication: argon2id password hashes, HS256 access tokens (JWT),
//! one-use refresh tokens, and the [`Caller`] extractor every protected
//! route takes.
//!
//! Access tokens must carry `exp`, `iss`, `aud` and `sub`, and are checked
//! for all four; only HS256 is accepted, so `alg: none` and algorithm
//! confusion are refused. The caller's role is read from the user store on
//! every request, not trusted from the token.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm as Argon2Algorithm, Argon2, Params, Version};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{now_ms, Email, Password, UserName};
use crate::error::ApiError;
use crate::oidc::{ExternalClaims, ExternalIssuer};
use crate::state::AppState;
use crate::users::{Role, StoredUser};

/// Shortest accepted token secret, in bytes.
pub const SECRET_LEN_MIN: usize = 32;

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

/// The claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user's UUID.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expiry (seconds since the Unix epoch).
    pub exp: u64,
    /// Issued at (seconds since the Unix epoch); optional on the way in.
    #[serde(default)]
    pub iat: u64,
}

/// A freshly issued pair of tokens.
#[derive(Debug)]
pub struct IssuedTokens {
    /// The JWT.
    pub access_token: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The one-use refresh token (only its hash is stored).
    pub refresh_token: String,
}

/// Issues and checks tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    access_ttl_seconds: u64,
    refresh_ttl_seconds: u64,
}

impl Tokens {
    /// Tokens signed with `secret` (HS256).
    pub fn new(
        secret: &[u8],
        issuer: String,
        audience: String,
        access_ttl_seconds: u64,
        refresh_ttl_seconds: u64,
    ) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Tokens {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            issuer,
            audience,
            access_ttl_seconds,
            refresh_ttl_seconds,
        }
    }

    /// A signed access token for `user`.
    pub fn access_token(&self, user: Uuid) -> Result<String, ApiError> {
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: user.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + self.access_ttl_seconds,
            iat: now,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|_| ApiError::Internal)
    }

    /// The user an access token names, if it is valid.
    pub fn verify(&self, token: &str) -> Result<Uuid, ApiError> {
        let invalid =
            ApiError::Unauthorized { code: "invalid_token", detail: "the access token is not valid" };
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|error| match error
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                ApiError::Unauthorized { code: "token_expired", detail: "the access token has expired" }
            }
            _ => ApiError::Unauthorized { code: "invalid_token", detail: "the access token is not valid" },
        })?;
        Uuid::try_parse(&data.claims.sub).map_err(|_| invalid)
    }

    /// Access lifetime in seconds.
    pub fn access_ttl_seconds(&self) -> u64 {
        self.access_ttl_seconds
    }

    /// Refresh lifetime in milliseconds.
    pub fn refresh_ttl_ms(&self) -> u64 {
        self.refresh_ttl_seconds.saturating_mul(1000)
    }
}

/// `bytes` random bytes as lower-case hex.
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buffer);
    hex(&buffer)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

/// The key a refresh token is stored under.
pub fn refresh_token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

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

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let missing =
            || ApiError::Unauthorized { code: "missing_token", detail: "send Authorization: Bearer <token>" };
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(missing)?;
        let header = header.to_str().map_err(|_| missing())?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(missing)?;
        let invalid =
            || ApiError::Unauthorized { code: "invalid_token", detail: "the access token is not valid" };
        let token_header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        // Our tokens are HS256 and only HS256; an external issuer's are asymmetric.
        if token_header.alg != Algorithm::HS256 {
            let external = state.external.as_ref().ok_or_else(invalid)?;
            let claims = external.verify(token, &token_header).await?;
            let user = external_user(state, external, claims).await?;
            return Ok(Caller { user });
        }
        let user_id = state.tokens.verify(token)?;
        let user = state.users.get(user_id).map_err(|error| {
            tracing::error!(%error, "reading a user failed");
            ApiError::Internal
        })?;
        let user = user.ok_or(ApiError::Unauthorized {
            code: "invalid_token",
            detail: "the access token's user does not exist",
        })?;
        Ok(Caller { user })
    }
}

/// The local user of an external subject, created at its first token.
async fn external_user(
    state: &AppState,
    external: &ExternalIssuer,
    claims: ExternalClaims,
) -> Result<StoredUser, ApiError> {
    let id = external.user_id(&claims.sub);
    if let Some(user) = state.users.get(id)? {
        return Ok(user);
    }
    let email = claims.email.as_deref().and_then(|e| Email::parse(e).ok()).map(|e| e.as_str().to_string());
    let name = claims.name.as_deref().and_then(|n| UserName::parse(n).ok()).map(|n| n.as_str().to_string());
    let user = StoredUser {
        id,
        email: email.unwrap_or_default(),
        name: name.unwrap_or_else(|| claims.sub.chars().take(crate::domain::NAME_LEN_MAX).collect()),
        // Not a PHC string: no password ever matches; the issuer authenticates.
        password_hash: String::new(),
        role: Role::User,
        created_at_ms: now_ms(),
    };
    tracing::info!(user = %id, issuer = external.issuer(), "first token of an external subject: user created");
    Ok(state.users.create_external(&user).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &[u8]) -> Tokens {
        Tokens::new(secret, "wallet".into(), "wallet-api".into(), 60, 600)
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() -> Result<(), ApiError> {
        let ours = tokens(&[7; 32]);
        let user = Uuid::new_v4();
        let token = ours.access_token(user)?;
        assert_eq!(ours.verify(&token)?, user);
        assert!(tokens(&[8; 32]).verify(&token).is_err());
        let other_audience = Tokens::new(&[7; 32], "wallet".into(), "other".into(), 60, 600);
        assert!(other_audience.verify(&token).is_err());
        Ok(())
    }

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0x1f]), "00ab1f");
        assert_eq!(random_token(16).len(), 32);
    }
}
