//! Rate limits (tower_governor, token buckets): per client address on every
//! `/v1` route, per bearer token on top of it, and a strict one per client
//! address on sign-up, login and refresh. A refused request gets 429 with
//! `Retry-After` and a problem document.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header::AUTHORIZATION, Request, Response};
use axum::response::IntoResponse;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};

use tower_governor::key_extractor::{KeyExtractor, PeerIpKeyExtractor};
use tower_governor::{GovernorError, GovernorLayer};

use crate::error::ApiError;

/// The limiter middleware: no extra headers.
type Plain = governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>;

/// How often idle buckets are dropped, so the key maps stay bounded by the
/// number of recent clients.
const RETAIN_INTERVAL: Duration = Duration::from_secs(60);

/// A bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Sustained rate.
    pub per_second: f64,
    /// Largest burst.
    pub burst: u32,
}

/// The three limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Per client address, every `/v1` route.
    pub per_address: Bucket,
    /// Per bearer token (per client address for anonymous requests).
    pub per_token: Bucket,
    /// Per client address, sign-up, login and refresh.
    pub login: Bucket,
}

/// Keys requests by their bearer token, or by client address without one.
#[derive(Clone, Copy, Debug)]
pub struct TokenKeyExtractor;

/// A per-token key: a hash of the token, or the address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TokenKey {
    /// Hash of the `Authorization` header.
    Token(u64),
    /// Client address.
    Address(IpAddr),
}

impl KeyExtractor for TokenKeyExtractor {
    type Key = TokenKey;

    fn extract<T>(&self, request: &Request<T>) -> Result<Self::Key, GovernorError> {
        if let Some(value) = request.headers().get(AUTHORIZATION) {
            let mut hasher = DefaultHasher::new();
            value.as_bytes().hash(&mut hasher);
            return Ok(TokenKey::Token(hasher.finish()));
        }
        request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| TokenKey::Address(address.ip()))
            .ok_or(GovernorError::UnableToExtractKey)
    }
}

fn refused(error: GovernorError) -> Response<Body> {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            ApiError::RateLimited { retry_after_seconds: wait_time.max(1) }.into_response()
        }
        GovernorError::UnableToExtractKey | GovernorError::Other { .. } => ApiError::Internal.into_response(),
    }
}

fn config<K: KeyExtractor + Send + Sync + 'static>(
    bucket: Bucket,
    key: K,
) -> Option<Arc<GovernorConfig<K, Plain>>>
where
    K::Key: Send + Sync + 'static,
{
    let period_ns = (1e9 / bucket.per_second.max(1e-6)).clamp(1.0, 1e15) as u64;
    let config = GovernorConfigBuilder::default()
        .key_extractor(key)
        .per_nanosecond(period_ns)
        .burst_size(bucket.burst.max(1))
        .finish()?;
    let config = Arc::new(config);
    let weak: Weak<_> = Arc::downgrade(&config);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RETAIN_INTERVAL).await;
            // Gone once the router is dropped.
            let Some(config) = weak.upgrade() else { return };
            config.limiter().retain_recent();
        }
    });
    Some(config)
}

/// The layers, built once per router.
pub struct RateLayers {
    /// Per client address.
    pub per_address: GovernorLayer<PeerIpKeyExtractor, Plain, Body>,
    /// Per token.
    pub per_token: GovernorLayer<TokenKeyExtractor, Plain, Body>,
    /// Login.
    pub login: GovernorLayer<PeerIpKeyExtractor, Plain, Body>,
}

impl RateLayers {
    /// Builds the layers; `None` if a bucket is unusable (zero rate or burst).
    pub fn new(limits: RateLimits) -> Option<RateLayers> {
        Some(RateLayers {
            per_address: GovernorLayer::new(config(limits.per_address, PeerIpKeyExtractor)?)
                .error_handler(refused),
            per_token: GovernorLayer::new(config(limits.per_token, TokenKeyExtractor)?)
                .error_handler(refused),
            login: GovernorLayer::new(config(limits.login, PeerIpKeyExtractor)?).error_handler(refused),
        })
    }
}
