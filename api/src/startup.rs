//! One constructor for `main` and the tests: [`Application::build`] opens the
//! ledger and the user store, makes sure the admin exists ([`crate::bootstrap`]), puts the risk
//! rules in force, and binds;
//! [`Application::run_until`] serves until a shutdown future fires, then
//! drains in-flight requests and makes the journal durable.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use wallet_actors::ports::EventSink;
use wallet_actors::LedgerConfig;
use wallet_cluster::directory::{DirectoryOptions, SharedDirectory};
use wallet_cluster::events::{
    EventFeeds, EventPublisher, EventQueue, LiveEvents, LiveOptions, PublisherOptions,
};
use wallet_cluster::host::LedgerHost;
use wallet_cluster::node::{NodeError, NodeLedger, NodeOptions};
use wallet_storage::users::{UserStore, UserStoreError};
use wallet_storage::{DataDirLock, EmbeddedLedger, EmbeddedOptions, StorageError};

use crate::admission::UserAdmission;
use crate::assets::AllowedAssets;
use crate::auth::{Passwords, Tokens, SECRET_LEN_MIN};
use crate::bootstrap::{ensure_admin, AdminError};
use crate::client::TrustedProxies;
use crate::domain::Secret;
use crate::keys::{generated_secret, private_directory, KeyError, SigningKey};
use crate::login_throttle::{LoginThrottle, ThrottlePolicy};
use crate::mode::Mode;
use crate::oidc::{ExternalIssuer, JwksSource};
use crate::rate::{Bucket, RateLayers, RateLimits};
use crate::risk::RuleStartError;
use crate::routes::{router, Limits};
use crate::serve::{serve, ConnectionLimits};
use crate::settings::Settings;
use crate::standing_by;
use crate::state::{AccountRules, AppState, Throttles};
use crate::telemetry::prometheus;

/// Why the application could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The ledger's storage did not open.
    #[error("opening the ledger: {0}")]
    Storage(#[from] StorageError),
    /// A node's ledger did not open from its journal on JetStream.
    #[error("opening the node's ledger: {0}")]
    Node(#[from] NodeError),
    /// The user store did not open.
    #[error("opening the user store: {0}")]
    Users(#[from] UserStoreError),
    /// A setting is unusable.
    #[error("invalid setting {name}: {reason}")]
    Setting {
        /// Which.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The token signing keys could not be set up.
    #[error("setting up the token signing keys: {0}")]
    Keys(#[from] KeyError),
    /// The administrator could not be set up.
    #[error("setting up the administrator: {0}")]
    Admin(#[from] AdminError),
    /// The stored or configured risk rules could not be put in force.
    #[error("putting the risk rules in force: {0}")]
    Rules(#[from] RuleStartError),
    /// The listening socket could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// A standby could not answer health checks while it waited (no
    /// descriptor for a copy of its socket, or that server stopped).
    #[error("answering health checks while standing by: {0}")]
    StandingBy(std::io::Error),
}

/// A built, bound, not yet serving application.
pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    router: axum::Router,
    state: AppState,
    host: LedgerHost,
    /// The data directory's lock, when the ledger does not hold it.
    _lock: Option<DataDirLock>,
    publisher: Option<EventPublisher>,
    generated_admin_password: Option<String>,
    admin_email: String,
    shutdown_grace: Duration,
    connection_limits: ConnectionLimits,
}

impl Application {
    /// Opens everything `settings` names for the embedded single node and
    /// binds the listener (port 0 picks a free port; see [`Application::port`]).
    pub async fn build(settings: Settings) -> Result<Application, StartupError> {
        Application::build_as(settings, Mode::Embedded).await
    }

    /// As [`Application::build`], the ledger opened as `mode` says.
    pub async fn build_as(settings: Settings, mode: Mode) -> Result<Application, StartupError> {
        // Bound first: a taken port fails before any data is opened.
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|source| StartupError::Bind { address: settings.listen, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| StartupError::Bind { address: settings.listen, source })?;
        // Before any data is opened too: an issuer whose keys cannot be loaded stops the start.
        let external = external_issuer(&settings).await?;
        // The directory's lock, the user store, the keys and the settings
        // that can be refused, all before the ledger: a second start on this
        // directory stops at the lock, and a start that cannot serve stops,
        // before a node's start takes the leases (superseding the node's
        // running start).
        private_directory(&settings.data_dir)?;
        let lock = DataDirLock::take(&settings.data_dir)?;
        let users = open_users(&settings, &mode).await?;
        let tokens = tokens(&settings, &users, &mode).await?;
        let hashes_max = settings.password_hashes_max.map_or_else(
            || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
            |max| max as usize,
        );
        let passwords =
            Passwords::new(settings.password_memory_kib, settings.password_iterations, hashes_max)
                .await
                .map_err(|e| StartupError::Setting { name: "password_memory_kib", reason: e.to_string() })?;
        let rates = rate_layers(&settings)?;
        // Before the ledger opens: what it reports while opening (a node's
        // shards owned) would be lost without a recorder.
        let metrics = prometheus(Duration::from_secs(settings.metrics_idle_timeout_seconds));
        let (listener, opened) = open_ledger_on(listener, &settings, mode, lock, &metrics).await?;
        let Opened { host, publisher, live, lock } = opened;
        let login_throttle = LoginThrottle::new(ThrottlePolicy {
            failures_before_delay: settings.login_failures_before_delay,
            delay_max: Duration::from_secs(settings.login_delay_max_seconds),
            reset_after: Duration::from_secs(settings.login_failures_reset_seconds),
        });
        let state = AppState::new(
            host.ledger(),
            users,
            tokens,
            passwords,
            Throttles {
                login_throttle,
                admission: UserAdmission::new(
                    settings.user_in_flight_max.unwrap_or(settings.in_flight_max / 4),
                ),
            },
            metrics,
            host.file_journal_stats(),
        )
        .with_journal_check(host.journal_check())
        .with_live_events(live, Duration::from_millis(settings.events_heartbeat_ms))
        .with_account_rules(AccountRules {
            allowed_assets: AllowedAssets::new(&settings.assets),
            accounts_per_user_max: settings.accounts_per_user_max as usize,
        });
        let state = match external {
            Some(issuer) => state.with_external_issuer(issuer),
            None => state,
        };
        let generated_admin_password = ensure_admin(&state, &settings).await?;
        // Before serving: no transfer may pass unchecked by a stored rule.
        crate::risk::start(&state, &settings.risk_rules).await?;
        crate::risk::follow_shared_rules(&state);

        let limits = Limits {
            body_limit_bytes: settings.body_limit_bytes,
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
        };
        let trusted = Arc::new(TrustedProxies::new(settings.trusted_proxies.clone()));
        let router = router(state.clone(), limits, rates, trusted);
        let shutdown_grace = Duration::from_millis(settings.shutdown_grace_ms);
        Ok(Application {
            listener,
            address,
            router,
            state,
            host,
            _lock: lock,
            publisher,
            generated_admin_password,
            admin_email: settings.admin_email.clone(),
            shutdown_grace,
            connection_limits: connection_limits(&settings),
        })
    }

    /// The ledger it serves (for embedding it, and for tests).
    pub fn ledger(&self) -> wallet_actors::Ledger {
        self.host.ledger()
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The administrator's password if this start generated one: show it
    /// once, it is not stored anywhere but as a hash.
    pub fn generated_admin_password(&self) -> Option<&str> {
        self.generated_admin_password.as_deref()
    }

    /// The administrator's email, as configured.
    pub fn admin_email(&self) -> &str {
        &self.admin_email
    }

    /// Serves until `shutdown` completes; then stops accepting, finishes
    /// in-flight requests, stops the ledger and makes the journal and the
    /// user store durable.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let Application {
            listener,
            address,
            router,
            state,
            host,
            publisher,
            shutdown_grace,
            connection_limits,
            ..
        } = self;
        tracing::info!(%address, "serving");
        let jwks_refresh = state.external.clone().and_then(|external| external.spawn_refresh());
        let ready = state.ready.clone();
        let stopping = state.stopping.clone();
        let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = serve(listener, router, connection_limits, async move {
            shutdown.await;
            ready.store(false, Ordering::Relaxed);
            stopping.send_replace(true);
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = fired_tx.send(());
        });
        // Connections that are still busy after the grace period are dropped,
        // so that a slow client cannot hold the shutdown forever.
        let grace = shutdown_grace;
        let deadline = async move {
            if fired_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = serve => {}
            () = deadline => {
                tracing::warn!(grace_ms = grace.as_millis() as u64, "grace period over; dropping open connections");
            }
        }
        if let Some(task) = jwks_refresh {
            task.abort();
        }
        // The publisher runs through the last checkpoint, which waits for it.
        host.shutdown().await;
        if let Some(publisher) = publisher {
            publisher.stop().await;
        }
        let flushed = state.users.flush().await;
        tracing::info!("stopped; the journal is durable");
        flushed?;
        Ok(())
    }
}

/// Opens the ledger with its event feeds (live watchers, and the NATS
/// outbox when a URL is set) and starts the publisher.
/// The ledger as opened, with its event feeds.
struct Opened {
    host: LedgerHost,
    publisher: Option<EventPublisher>,
    live: Arc<LiveEvents>,
    /// The data directory's lock, if the ledger did not take it over.
    lock: Option<DataDirLock>,
}

async fn open_ledger(settings: &Settings, mode: Mode, lock: DataDirLock) -> Result<Opened, StartupError> {
    let events = settings.nats_url.as_ref().map(|_| Arc::new(EventQueue::new(settings.events_queue_max)));
    let live = Arc::new(LiveEvents::new(LiveOptions {
        watchers_max: settings.events_streams_max,
        ..LiveOptions::default()
    }));
    let outbox = events.clone().map(|queue| queue as Arc<dyn EventSink>);
    let ledger = LedgerConfig {
        shard_count: settings.shards,
        in_flight_max: settings.in_flight_max,
        request_timeout_ms: settings.ledger_timeout_ms,
        ..LedgerConfig::default()
    };
    let feeds: Arc<dyn EventSink> = Arc::new(EventFeeds::new(live.clone(), outbox));
    let (host, lock) = match mode {
        Mode::Embedded => {
            let options = EmbeddedOptions { ledger, events: Some(feeds), ..EmbeddedOptions::default() };
            let embedded = EmbeddedLedger::open_locked(&settings.data_dir, options, lock).await?;
            (LedgerHost::Embedded(Box::new(embedded)), None)
        }
        Mode::Node { node, journal_replicas, standby } => {
            let url = node_nats_url(settings)?;
            let defaults = NodeOptions::new(node, url, settings.data_dir.join("node"));
            let mut options = NodeOptions { ledger, events: Some(feeds), ..defaults };
            options.journal.replicas = journal_replicas;
            options.standby = standby;
            (LedgerHost::Node(Box::new(NodeLedger::open(options).await?)), Some(lock))
        }
    };
    let publisher = match (&settings.nats_url, events) {
        (Some(url), Some(queue)) => {
            let mut options = PublisherOptions::new(url.clone());
            options.replicas = settings.events_replicas;
            options.duplicate_window = Duration::from_millis(settings.events_duplicate_window_ms);
            Some(EventPublisher::spawn(queue, host.ledger(), options))
        }
        _ => None,
    };
    Ok(Opened { host, publisher, live, lock })
}

/// Opens the ledger as [`open_ledger`] does; a standby, which waits there
/// for as long as the active node lives, answers health checks and refuses
/// other requests on `listener` meanwhile ([`crate::standing_by`]).
async fn open_ledger_on(
    listener: TcpListener,
    settings: &Settings,
    mode: Mode,
    lock: DataDirLock,
    metrics: &PrometheusHandle,
) -> Result<(TcpListener, Opened), StartupError> {
    if !matches!(mode, Mode::Node { standby: true, .. }) {
        return Ok((listener, open_ledger(settings, mode, lock).await?));
    }
    let opening = open_ledger(settings, mode, lock);
    let (listener, opened) =
        standing_by::while_opening(listener, metrics.clone(), connection_limits(settings), opening)
            .await
            .map_err(StartupError::StandingBy)?;
    Ok((listener, opened?))
}

fn connection_limits(settings: &Settings) -> ConnectionLimits {
    ConnectionLimits {
        connections_max: settings.connections_max as usize,
        header_read_timeout: Duration::from_millis(settings.header_read_timeout_ms),
    }
}

/// The NATS server a node needs.
fn node_nats_url(settings: &Settings) -> Result<String, StartupError> {
    settings.nats_url.clone().ok_or_else(|| StartupError::Setting {
        name: "nats_url",
        reason: "a node keeps its journal on NATS JetStream: give --nats-url".into(),
    })
}

/// The user store: `users.sled` in the data directory for the embedded
/// node; for a node, the directory every node shares on JetStream.
async fn open_users(settings: &Settings, mode: &Mode) -> Result<UserStore, StartupError> {
    match mode {
        Mode::Embedded => Ok(UserStore::open(&settings.data_dir.join(wallet_storage::users::FILE_NAME))?),
        Mode::Node { journal_replicas, .. } => {
            let mut options = DirectoryOptions::new(node_nats_url(settings)?);
            options.replicas = *journal_replicas;
            Ok(UserStore::over(SharedDirectory::open(options).await?))
        }
    }
}

/// The `meta` key of the token signing secret the nodes of a cluster share
/// when none is configured.
const SHARED_SECRET_KEY: &str = "shared_jwt_secret";

/// The token issuer: the configured secrets, or one generated and kept (in
/// the data directory; for a node, in the shared directory, so a token one
/// node issued is good on every node).
async fn tokens(settings: &Settings, users: &UserStore, mode: &Mode) -> Result<Tokens, StartupError> {
    let configured = |name: &'static str, secret: &Secret| {
        if secret.expose().len() < SECRET_LEN_MIN {
            return Err(StartupError::Setting {
                name,
                reason: format!("must have at least {SECRET_LEN_MIN} bytes"),
            });
        }
        Ok(SigningKey::new(secret.expose().as_bytes()))
    };
    let current = match &settings.jwt_secret {
        Some(secret) => configured("jwt_secret", secret)?,
        None => match mode {
            Mode::Embedded => SigningKey::new(&generated_secret(&settings.data_dir, users).await?),
            Mode::Node { .. } => {
                let made = crate::random::random_token(32);
                SigningKey::new(&users.set_meta_once(SHARED_SECRET_KEY, made.as_bytes()).await?)
            }
        },
    };
    let previous =
        settings.jwt_previous_secret.as_ref().map(|s| configured("jwt_previous_secret", s)).transpose()?;
    let tokens = Tokens::new(
        &current,
        previous.as_ref(),
        settings.jwt_issuer.clone(),
        settings.jwt_audience.clone(),
        settings.access_token_ttl_seconds,
        settings.refresh_token_ttl_seconds,
        settings.session_lifetime_seconds,
    );
    Ok(tokens)
}

/// The rate limits as layers, refused when a rate or burst is not positive.
fn rate_layers(settings: &Settings) -> Result<RateLayers, StartupError> {
    RateLayers::new(RateLimits {
        per_client: Bucket { per_second: settings.rate_limit_per_second, burst: settings.rate_limit_burst },
        per_user: Bucket {
            per_second: settings.user_rate_limit_per_second,
            burst: settings.user_rate_limit_burst,
        },
        login: Bucket {
            per_second: settings.login_rate_limit_per_minute / 60.0,
            burst: settings.login_rate_limit_burst,
        },
    })
    .ok_or(StartupError::Setting { name: "rate limits", reason: "rates and bursts must be positive".into() })
}

/// The external issuer the settings name, if any, with its keys loaded:
/// `--oidc-issuer` and `--oidc-audience` go together, with exactly one of
/// `--oidc-jwks-url` and `--oidc-jwks-file`.
async fn external_issuer(settings: &Settings) -> Result<Option<ExternalIssuer>, StartupError> {
    let setting = |reason: &str| StartupError::Setting { name: "oidc", reason: reason.into() };
    let keys_given = settings.oidc_jwks_file.is_some() || settings.oidc_jwks_url.is_some();
    let (issuer, audience) = match (&settings.oidc_issuer, &settings.oidc_audience) {
        (None, None) if !keys_given => return Ok(None),
        (Some(issuer), Some(audience)) => (issuer.clone(), audience.clone()),
        _ => {
            return Err(setting(
                "--oidc-issuer and --oidc-audience go together, with --oidc-jwks-url or --oidc-jwks-file",
            ))
        }
    };
    let (source, name) = match (&settings.oidc_jwks_file, &settings.oidc_jwks_url) {
        (Some(file), None) => (JwksSource::File(file.clone()), "oidc_jwks_file"),
        (None, Some(url)) => {
            let refresh_interval = Duration::from_secs(settings.oidc_jwks_refresh_seconds);
            (JwksSource::Url { url: url.clone(), refresh_interval }, "oidc_jwks_url")
        }
        (Some(_), Some(_)) => return Err(setting("give --oidc-jwks-url or --oidc-jwks-file, not both")),
        (None, None) => {
            return Err(setting("--oidc-issuer needs the issuer's keys: --oidc-jwks-url or --oidc-jwks-file"))
        }
    };
    let opened = ExternalIssuer::open(issuer, audience, source).await;
    opened.map(Some).map_err(|e| StartupError::Setting { name, reason: e.to_string() })
}
