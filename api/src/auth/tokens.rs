//! Access tokens: HS256 JWTs that must carry `exp`, `iss`, `aud` and `sub`,
//! signed with the current key and naming it in `kid`; a previous key
//! still checks the tokens it signed ([`crate::keys`]).

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::now_ms;
use crate::error::ApiError;
use crate::keys::SigningKey;
use crate::sessions::SessionPolicy;

/// Shortest accepted token secret, in bytes.
pub const SECRET_LEN_MIN: usize = 32;

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
    /// The user's session epoch when issued ([`wallet_storage::users::StoredUser::session_epoch`]).
    #[serde(default)]
    pub session_epoch: u64,
}

/// What a valid access token says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Whose token.
    pub user_id: Uuid,
    /// The user's session epoch when it was issued.
    pub session_epoch: u64,
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

/// A key that checks tokens.
struct CheckingKey {
    kid: String,
    decoding: DecodingKey,
}

/// Issues and checks tokens.
pub struct Tokens {
    encoding: EncodingKey,
    /// The current key's id.
    kid: String,
    /// The current key first, then the previous one if any.
    checking: Vec<CheckingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    access_ttl_seconds: u64,
    refresh_ttl_seconds: u64,
    session_lifetime_seconds: u64,
}

impl Tokens {
    /// Tokens signed with `current` (HS256), and checked with it or `previous`.
    pub fn new(
        current: &SigningKey,
        previous: Option<&SigningKey>,
        issuer: String,
        audience: String,
        access_ttl_seconds: u64,
        refresh_ttl_seconds: u64,
        session_lifetime_seconds: u64,
    ) -> Tokens {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        let checking = std::iter::once(current)
            .chain(previous)
            .map(|key| CheckingKey { kid: key.kid.clone(), decoding: DecodingKey::from_secret(&key.secret) })
            .collect();
        Tokens {
            encoding: EncodingKey::from_secret(&current.secret),
            kid: current.kid.clone(),
            checking,
            validation,
            issuer,
            audience,
            access_ttl_seconds,
            refresh_ttl_seconds,
            session_lifetime_seconds,
        }
    }

    /// A signed access token for `user`, in their session epoch `session_epoch`.
    pub fn access_token(&self, user: Uuid, session_epoch: u64) -> Result<String, ApiError> {
        let now = now_ms() / 1000;
        let claims = Claims {
            sub: user.to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            exp: now + self.access_ttl_seconds,
            iat: now,
            session_epoch,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        encode(&header, &claims, &self.encoding).map_err(|_| ApiError::Internal)
    }

    /// The user an access token names, and its session epoch, if it is valid.
    pub fn verify(&self, token: &str) -> Result<Verified, ApiError> {
        let invalid =
            ApiError::Unauthorized { code: "invalid_token", detail: "the access token is not valid" };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid.clone())?;
        // A token without a `kid` was signed before keys had ids: with the current key.
        let key = match header.kid {
            Some(kid) => self.checking.iter().find(|key| key.kid == kid).ok_or_else(|| invalid.clone())?,
            None => self.checking.first().ok_or_else(|| invalid.clone())?,
        };
        let data =
            decode::<Claims>(token, &key.decoding, &self.validation).map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized { code: "token_expired", detail: "the access token has expired" }
                }
                _ => {
                    ApiError::Unauthorized { code: "invalid_token", detail: "the access token is not valid" }
                }
            })?;
        let user_id = Uuid::try_parse(&data.claims.sub).map_err(|_| invalid)?;
        Ok(Verified { user_id, session_epoch: data.claims.session_epoch })
    }

    /// Access lifetime in seconds.
    pub fn access_ttl_seconds(&self) -> u64 {
        self.access_ttl_seconds
    }

    /// How long sessions and refresh tokens live.
    pub fn session_policy(&self) -> SessionPolicy {
        SessionPolicy {
            refresh_ttl_ms: self.refresh_ttl_seconds.saturating_mul(1000),
            lifetime_ms: self.session_lifetime_seconds.saturating_mul(1000),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(secret: &[u8]) -> Tokens {
        Tokens::new(&SigningKey::new(secret), None, "wallet".into(), "wallet-api".into(), 60, 600, 6000)
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() -> Result<(), ApiError> {
        let ours = tokens(&[7; 32]);
        let user = Uuid::new_v4();
        let token = ours.access_token(user, 7)?;
        assert_eq!(ours.verify(&token)?, Verified { user_id: user, session_epoch: 7 });
        assert!(tokens(&[8; 32]).verify(&token).is_err());
        let other_audience =
            Tokens::new(&SigningKey::new(&[7; 32]), None, "wallet".into(), "other".into(), 60, 600, 6000);
        assert!(other_audience.verify(&token).is_err());
        Ok(())
    }

    #[test]
    fn a_previous_key_checks_its_tokens_until_it_is_dropped() -> Result<(), ApiError> {
        let (old, new) = (SigningKey::new(&[1; 32]), SigningKey::new(&[2; 32]));
        let make = |current: &SigningKey, previous: Option<&SigningKey>| {
            Tokens::new(current, previous, "wallet".into(), "wallet-api".into(), 60, 600, 6000)
        };
        let user = Uuid::new_v4();
        let before = make(&old, None).access_token(user, 0)?;
        let rotating = make(&new, Some(&old));
        assert_eq!(rotating.verify(&before)?.user_id, user);
        let after = rotating.access_token(user, 0)?;
        assert_eq!(jsonwebtoken::decode_header(&after).ok().and_then(|h| h.kid), Some(new.kid.clone()));
        let rotated = make(&new, None);
        assert_eq!(rotated.verify(&after)?.user_id, user);
        assert!(rotated.verify(&before).is_err(), "the old key is gone");
        Ok(())
    }
}
