//! Access tokens of an external OAuth2/OIDC issuer, checked against its
//! JWKS: a file, or a URL fetched over HTTP(S).
//!
//! Only asymmetric keys are taken from the JWKS (RSA, EC P-256/P-384,
//! Ed25519), and each key fixes its algorithm: a token whose header names
//! another algorithm is refused, so neither `alg: none` nor an HS256 token
//! "signed" with a public key gets through. `iss`, `aud`, `exp` and `sub`
//! are required and checked. The first valid token of a subject creates its
//! user (role `user`), with an id derived from the issuer and the subject.
//!
//! The keys are loaded at start (the start fails if they cannot be), and
//! loaded again when a token names a key the issuer's JWKS did not hold,
//! at most once per [`JwksSource::demand_reload_interval_min`] so that a
//! flood of made-up key ids cannot hammer the issuer. A URL is also fetched
//! again in the background every `refresh_interval`
//! ([`ExternalIssuer::spawn_refresh`]). A failed reload keeps the keys held
//! and logs a warning. A fetch has a timeout and a size cap.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Header, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::error::ApiError;

/// Least time between two re-reads of a JWKS file for an unknown key id.
const FILE_RELOAD_INTERVAL_MIN: Duration = Duration::from_secs(30);

/// Least time between two fetches of a JWKS URL for an unknown key id.
const URL_RELOAD_INTERVAL_MIN: Duration = Duration::from_secs(10);

/// How long one fetch of a JWKS URL may take, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS body accepted from a URL (real ones are a few KiB).
pub const JWKS_SIZE_MAX_BYTES: usize = 1024 * 1024;

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
    /// The HTTP client could not be built.
    #[error("building the HTTP client for the JWKS: {detail}")]
    Client {
        /// The client's words.
        detail: String,
    },
    /// The URL could not be fetched (connection, timeout, broken body).
    #[error("fetching the JWKS {url}: {detail}")]
    Fetch {
        /// The URL.
        url: String,
        /// The client's words, causes included.
        detail: String,
    },
    /// The URL answered with a redirect, which is not followed.
    #[error("fetching the JWKS {url}: HTTP status {status}, a redirect to {location}; redirects are not followed: configure the final URL")]
    Redirect {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
        /// Where it pointed.
        location: String,
    },
    /// The URL answered with a status other than success.
    #[error("fetching the JWKS {url}: HTTP status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The URL's body is larger than [`JWKS_SIZE_MAX_BYTES`].
    #[error("fetching the JWKS {url}: the body is larger than {size_max_bytes} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        size_max_bytes: usize,
    },
    /// The file or body is not a JWKS.
    #[error("parsing the JWKS {location}: {detail}")]
    Parse {
        /// The file or URL.
        location: String,
        /// The parser's words.
        detail: String,
    },
    /// No key of the JWKS is usable.
    #[error("the JWKS {location} holds no usable public key (RSA, EC P-256/P-384, Ed25519)")]
    NoKeys {
        /// The file or URL.
        location: String,
    },
}

/// Where an issuer's JWKS comes from.
#[derive(Clone, Debug)]
pub enum JwksSource {
    /// A file on disk.
    File(PathBuf),
    /// An `http` or `https` URL.
    Url {
        /// The URL.
        url: reqwest::Url,
        /// How often it is fetched again in the background.
        refresh_interval: Duration,
    },
}

impl JwksSource {
    /// Least time between two reloads caused by tokens naming unknown key ids.
    pub fn demand_reload_interval_min(&self) -> Duration {
        match self {
            JwksSource::File(_) => FILE_RELOAD_INTERVAL_MIN,
            JwksSource::Url { .. } => URL_RELOAD_INTERVAL_MIN,
        }
    }
}

/// How the keys are loaded.
enum Loader {
    File(PathBuf),
    Url { url: reqwest::Url, client: reqwest::Client },
}

impl Loader {
    async fn load(&self) -> Result<Vec<Key>, OidcError> {
        match self {
            Loader::File(path) => read_keys(path),
            Loader::Url { url, client } => parse_keys(&fetch(client, url).await?, url.as_str()),
        }
    }
}

struct Key {
    id: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
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
    loader: Loader,
    /// For a URL: how often it is fetched again in the background.
    refresh_interval: Option<Duration>,
    /// Least time between two reloads for unknown key ids.
    demand_reload_interval_min: Duration,
    keys: RwLock<Vec<Key>>,
    /// When a token naming an unknown key last caused a reload. Held during
    /// that reload, so that concurrent requests wait for it and then use its
    /// keys rather than start reloads of their own.
    demand_reloaded_at: tokio::sync::Mutex<Option<Instant>>,
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

fn parse_keys(bytes: &[u8], location: &str) -> Result<Vec<Key>, OidcError> {
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| OidcError::Parse { location: location.to_string(), detail: e.to_string() })?;
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
        return Err(OidcError::NoKeys { location: location.to_string() });
    }
    Ok(keys)
}

fn read_keys(path: &Path) -> Result<Vec<Key>, OidcError> {
    let bytes = std::fs::read(path).map_err(|source| OidcError::Read { path: path.into(), source })?;
    parse_keys(&bytes, &path.display().to_string())
}

/// An error and its causes on one line: reqwest's own message rarely says
/// why (refused, timed out, bad certificate); its sources do.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

fn http_client() -> Result<reqwest::Client, OidcError> {
    reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        // A redirect could lead anywhere, over http too: the configured URL or nothing.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("wallet/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| OidcError::Client { detail: error_chain(&e) })
}

/// The body at `url`, at most [`JWKS_SIZE_MAX_BYTES`] of it.
async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<Vec<u8>, OidcError> {
    let failed = |e: reqwest::Error| OidcError::Fetch { url: url.to_string(), detail: error_chain(&e) };
    let too_large = || OidcError::TooLarge { url: url.to_string(), size_max_bytes: JWKS_SIZE_MAX_BYTES };
    let mut response = client.get(url.clone()).send().await.map_err(failed)?;
    let status = response.status();
    if status.is_redirection() {
        let location = response.headers().get(reqwest::header::LOCATION);
        let location = location.and_then(|l| l.to_str().ok()).unwrap_or("nowhere").to_string();
        return Err(OidcError::Redirect { url: url.to_string(), status: status.as_u16(), location });
    }
    if !status.is_success() {
        return Err(OidcError::Status { url: url.to_string(), status: status.as_u16() });
    }
    if response.content_length().is_some_and(|length| length > JWKS_SIZE_MAX_BYTES as u64) {
        return Err(too_large());
    }
    // The length header may be absent or lie: count what arrives.
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > JWKS_SIZE_MAX_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn invalid() -> ApiError {
    ApiError::Unauthorized { code: "invalid_token", detail: "the access token is not valid" }
}

impl ExternalIssuer {
    /// Loads the keys from `source`; fails if they cannot be loaded or none
    /// is usable.
    pub async fn open(
        issuer: String,
        audience: String,
        source: JwksSource,
    ) -> Result<ExternalIssuer, OidcError> {
        let demand_reload_interval_min = source.demand_reload_interval_min();
        let (loader, refresh_interval) = match source {
            JwksSource::File(path) => (Loader::File(path), None),
            JwksSource::Url { url, refresh_interval } => {
                (Loader::Url { url, client: http_client()? }, Some(refresh_interval))
            }
        };
        let keys = loader.load().await?;
        Ok(ExternalIssuer {
            issuer,
            audience,
            loader,
            refresh_interval,
            demand_reload_interval_min,
            keys: RwLock::new(keys),
            demand_reloaded_at: tokio::sync::Mutex::new(None),
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

    /// For a URL source, starts fetching the keys again every refresh
    /// interval; the caller aborts the task when it stops serving.
    pub fn spawn_refresh(self: Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let period = self.refresh_interval?;
        Some(tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                self.reload("scheduled refresh").await;
            }
        }))
    }

    /// Loads the keys again; on failure keeps those held.
    async fn reload(&self, reason: &'static str) {
        match self.loader.load().await {
            Ok(keys) => {
                tracing::debug!(reason, keys = keys.len(), "reloaded the JWKS");
                if let Ok(mut current) = self.keys.write() {
                    *current = keys;
                }
            }
            Err(error) => {
                tracing::warn!(reason, %error, "reloading the JWKS failed; keeping the keys loaded before");
            }
        }
    }

    /// Reloads for a token naming an unknown key, unless such a reload was
    /// started less than the source's least interval ago.
    async fn reload_on_demand(&self) {
        let mut reloaded_at = self.demand_reloaded_at.lock().await;
        if reloaded_at.is_some_and(|at| at.elapsed() < self.demand_reload_interval_min) {
            return;
        }
        *reloaded_at = Some(Instant::now());
        self.reload("unknown key id").await;
    }

    fn find(&self, header: &Header) -> Option<(Algorithm, DecodingKey)> {
        let keys = self.keys.read().ok()?;
        keys.iter()
            .find(|k| match &header.kid {
                Some(kid) => k.id.as_deref() == Some(kid.as_str()),
                None => k.algorithm == header.alg,
            })
            .map(|k| (k.algorithm, k.key.clone()))
    }

    /// Checks a token of this issuer (signature, algorithm, `iss`, `aud`, `exp`, `sub`).
    pub async fn verify(&self, token: &str, header: &Header) -> Result<ExternalClaims, ApiError> {
        let found = match self.find(header) {
            Some(found) => found,
            None => {
                self.reload_on_demand().await;
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
