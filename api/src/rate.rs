//! Rate limits (token buckets, governor): per client on every route, per
//! authenticated user on `/v1`, and a strict one per client on sign-up,
//! login and refresh. A refused request gets 429 with `Retry-After` and a
//! problem document.
//!
//! A client is its address as [`crate::client`] finds it (behind a trusted
//! proxy, the forwarded one), an IPv6 client its /64. A user is the id of
//! the caller the `Authorization` header authenticated
//! ([`crate::authenticate::authenticate`]), never the header's bytes: two
//! tokens of one user, or one token with extra spaces, share a bucket, and
//! an invalid token is no key at all (its request is counted per client).
//! Anonymous requests are counted per client only. Failed logins are also
//! counted per email ([`crate::login_throttle`]).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Response;
use axum::middleware::Next;
use axum::response::IntoResponse;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};
use uuid::Uuid;

use crate::authenticate::Authentication;
use crate::client::{ClientIp, ClientKey};
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

impl Bucket {
    /// The time to refill one request, within what governor takes.
    fn period(self) -> Duration {
        Duration::from_nanos((1e9 / self.per_second.max(1e-6)).clamp(1.0, 1e15) as u64)
    }
}

/// The three limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Per client, every route.
    pub per_client: Bucket,
    /// Per authenticated user, every `/v1` route.
    pub per_user: Bucket,
    /// Per client, sign-up, login and refresh.
    pub login: Bucket,
}

/// Keys requests by client ([`ClientKey`]).
#[derive(Clone, Copy, Debug)]
pub struct ClientKeyExtractor;

impl KeyExtractor for ClientKeyExtractor {
    type Key = ClientKey;

    fn extract<T>(&self, request: &axum::http::Request<T>) -> Result<Self::Key, GovernorError> {
        let extensions = request.extensions();
        if let Some(ClientIp(address)) = extensions.get::<ClientIp>() {
            return Ok(ClientKey::from(*address));
        }
        extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| ClientKey::from(peer.ip()))
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

/// Drops `limiter`'s idle buckets every [`RETAIN_INTERVAL`], until it is dropped.
fn retain_recent_while_alive<T: Send + Sync + 'static>(owner: &Arc<T>, retain: fn(&T)) {
    let weak: Weak<T> = Arc::downgrade(owner);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(RETAIN_INTERVAL).await;
            // Gone once the router is dropped.
            let Some(owner) = weak.upgrade() else { return };
            retain(&owner);
        }
    });
}

fn client_config(bucket: Bucket) -> Option<Arc<GovernorConfig<ClientKeyExtractor, Plain>>> {
    let config = GovernorConfigBuilder::default()
        .key_extractor(ClientKeyExtractor)
        .per_nanosecond(bucket.period().as_nanos() as u64)
        .burst_size(bucket.burst.max(1))
        .finish()?;
    let config = Arc::new(config);
    retain_recent_while_alive(&config, |config| config.limiter().retain_recent());
    Some(config)
}

/// The per-user limit: one bucket per authenticated user id.
pub struct UserLimiter {
    limiter: DefaultKeyedRateLimiter<Uuid>,
    clock: DefaultClock,
}

impl UserLimiter {
    fn new(bucket: Bucket) -> Option<Arc<UserLimiter>> {
        let quota = Quota::with_period(bucket.period())?.allow_burst(NonZeroU32::new(bucket.burst)?);
        let limiter = Arc::new(UserLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            clock: DefaultClock::default(),
        });
        retain_recent_while_alive(&limiter, |limiter| limiter.limiter.retain_recent());
        Some(limiter)
    }

    /// Takes one request from `user`'s bucket, or says how long to wait.
    pub fn check(&self, user: Uuid) -> Result<(), ApiError> {
        self.limiter.check_key(&user).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            ApiError::RateLimited { retry_after_seconds: seconds.max(1) }
        })
    }
}

/// Counts a request of an authenticated caller against their bucket; runs
/// after [`crate::authenticate::authenticate`].
pub async fn limit_per_user(
    State(limiter): State<Arc<UserLimiter>>,
    request: Request,
    next: Next,
) -> Response<Body> {
    if let Some(Authentication(Ok(caller))) = request.extensions().get::<Authentication>() {
        if let Err(refused) = limiter.check(caller.id()) {
            return refused.into_response();
        }
    }
    next.run(request).await
}

/// The limits, built once per router.
pub struct RateLayers {
    /// Per client.
    pub per_client: GovernorLayer<ClientKeyExtractor, Plain, Body>,
    /// Per authenticated user.
    pub per_user: Arc<UserLimiter>,
    /// Login.
    pub login: GovernorLayer<ClientKeyExtractor, Plain, Body>,
}

impl RateLayers {
    /// Builds the limits; `None` if a bucket is unusable (zero rate or burst).
    pub fn new(limits: RateLimits) -> Option<RateLayers> {
        Some(RateLayers {
            per_client: GovernorLayer::new(client_config(limits.per_client)?).error_handler(refused),
            per_user: UserLimiter::new(limits.per_user)?,
            login: GovernorLayer::new(client_config(limits.login)?).error_handler(refused),
        })
    }
}
