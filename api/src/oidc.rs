//! Access tokens of an external OAuth2/OIDC issuer, checked against its
//! JWKS (a file, re-read when a token names a key it does not hold).
//!
//! Only asymmetric keys are taken from the JWKS (RSA, EC P-256/P-384,
//! Ed25519), and each key fixes its algorithm: a token whose header names
//! another algorithm is refused, so neither `alg: none` nor an HS256 token
//! "signed" with a public key gets through. `iss`, `aud`, `exp` and `sub`
//! are required and checked. The first valid token of a subject creates its
//! user (role `user`), with an id derived from the issuer and the subject.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::ApiError;

/// Least time between two re-reads of the JWKS for an unknown key id.
const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// Namespace of the user ids derived from external subjects.
const SUBJECT_NAMESPACE: Uuid = Uuid::from_u128(0x5d3f_3c1e_2b7a_4e0f_9a51_0c6d_8e2b_7f40);

/// Why the JWKS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The file could not be read.
    #[error("reading the JWKS {path}: {source}", path = path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a JWKS.
    #[error("parsing the JWKS {path}: {detail}", path = path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's words.
        detail: String,
    },
    /// No key of the file is usable.
    #[error("the JWKS {path} holds no usable public key (RSA, EC P-256/P-384, Ed25519)", path = path.display())]
    NoKeys {
        /// The file.
        path: PathBuf,
    },
}

struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

struct Keys {
    keys: Vec<Key>,
    loaded_at: Instant,
}

/// The claims read from an external token.
#[derive(Debug, Deserialize)]
pub struct ExternalClaims {
    /// The subject at the issuer.
    pub sub: String,
    /// The subject's email, if the issuer sends one.
    #[serde(default)]
    pub email: Option<String>,
    /// The subject's name, if the issuer sends one.
    #[serde(default)]
    pub name: Option<String>,
}

/// An external issuer whose tokens are accepted.
pub struct ExternalIssuer {
    issuer: String,
    audience: String,
    jwks_file: PathBuf,
    keys: RwLock<Keys>,
}

/// The algorithm a JWK fixes, or `None` for keys that are not accepted.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match jwk.common.key_algorithm {
            None | Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
            Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
            Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
            Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
            Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
            Some(_) => None,
        },
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(params) => {
            (params.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA)
        }
        // A symmetric key in a JWKS would let anyone who reads it sign tokens.
        AlgorithmParameters::OctetKey(_) => None,
    }
}

fn read_keys(path: &Path) -> Result<Vec<Key>, OidcError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| OidcError::Read { path: path.into(), source })?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|e| OidcError::Parse { path: path.into(), detail: e.to_string() })?;
    let keys: Vec<Key> = set
        .keys
        .iter()
        .filter_map(|jwk| {
            let algorithm = key_algorithm(jwk)?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some(Key { id: jwk.common.key_id.clone(), algorithm, key })
        })
        .collect();
    if keys.is_empty() {
        return Err(OidcError::NoKeys { path: path.into() });
    }
    Ok(keys)
}

fn invalid() -> ApiError {
    ApiError::Unauthorized { code: "invalid_token", detail: "the access token is not valid" }
}

impl ExternalIssuer {
    /// Reads the JWKS file; fails if it holds no usable key.
    pub fn load(issuer: String, audience: String, jwks_file: PathBuf) -> Result<ExternalIssuer, OidcError> {
        let keys = read_keys(&jwks_file)?;
        Ok(ExternalIssuer {
            issuer,
            audience,
            jwks_file,
            keys: RwLock::new(Keys { keys, loaded_at: Instant::now() }),
        })
    }

    /// The issuer's `iss`.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The local user id of a subject of this issuer.
    pub fn user_id(&self, subject: &str) -> Uuid {
        Uuid::new_v5(&SUBJECT_NAMESPACE, format!("{}\n{}", self.issuer, subject).as_bytes())
    }

    fn find(&self, header: &Header) -> Option<(Algorithm, DecodingKey)> {
        let keys = self.keys.read().ok()?;
        keys.keys
            .iter()
            .find(|k| match &header.kid {
                Some(kid) => k.id.as_deref() == Some(kid.as_str()),
                None => k.algorithm == header.alg,
            })
            .map(|k| (k.algorithm, k.key.clone()))
    }

    fn reload_if_due(&self) {
        let due = self.keys.read().map(|k| k.loaded_at.elapsed() >= RELOAD_INTERVAL).unwrap_or(false);
        if !due {
            return;
        }
        match read_keys(&self.jwks_file) {
            Ok(keys) => {
                if let Ok(mut current) = self.keys.write() {
                    *current = Keys { keys, loaded_at: Instant::now() };
                }
            }
            Err(error) => {
                tracing::warn!(%error, "re-reading the JWKS failed; keeping the keys loaded before");
                if let Ok(mut current) = self.keys.write() {
                    current.loaded_at = Instant::now();
                }
            }
        }
    }

    /// Checks a token of this issuer (signature, algorithm, `iss`, `aud`, `exp`, `sub`).
    pub fn verify(&self, token: &str, header: &Header) -> Result<ExternalClaims, ApiError> {
        let found = match self.find(header) {
            Some(found) => found,
            None => {
                self.reload_if_due();
                self.find(header).ok_or_else(invalid)?
            }
        };
        let (algorithm, key) = found;
        if header.alg != algorithm {
            return Err(invalid());
        }
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        let data =
            decode::<ExternalClaims>(token, &key, &validation).map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized { code: "token_expired", detail: "the access token has expired" }
                }
                _ => invalid(),
            })?;
        if data.claims.sub.is_empty() {
            return Err(invalid());
        }
        Ok(data.claims)
    }
}
