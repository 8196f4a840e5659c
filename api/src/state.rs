//! What every handler shares, and the checks they share: which accounts a
//! caller may see, and the settlement account of each asset.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use wallet_actors::{Account, AccountId, Asset, Ledger, Rejection, UserId};
use wallet_cluster::events::{LiveEvents, LiveOptions};
use wallet_cluster::host::JournalCheck;
use wallet_storage::users::{UserStore, UserStoreError};
use wallet_storage::JournalStats;

use crate::admission::UserAdmission;
use crate::assets::AllowedAssets;
use crate::auth::{Caller, Passwords, Tokens};
use crate::domain::ledger_user_id;
use crate::error::ApiError;
use crate::login_throttle::LoginThrottle;
use crate::oidc::ExternalIssuer;

/// Most account owners remembered; past it the map starts over.
pub const OWNER_CACHE_MAX: usize = 1 << 20;

/// Shared state of the running API. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The ledger.
    pub ledger: Ledger,
    /// Users and credentials.
    pub users: UserStore,
    /// Token issuing and checking.
    pub tokens: Arc<Tokens>,
    /// Password hashing.
    pub passwords: Passwords,
    /// Failed password checks per email.
    pub login_throttle: Arc<LoginThrottle>,
    /// Each user's share of the transfers in flight.
    pub admission: Arc<UserAdmission>,
    /// What accounts users may open.
    pub account_rules: Arc<AccountRules>,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: PrometheusHandle,
    /// The journal's counters, for `/metrics`.
    pub journal_stats: Arc<JournalStats>,
    /// An external OIDC issuer whose tokens are accepted too.
    pub external: Option<Arc<ExternalIssuer>>,
    /// False once shutdown starts: `/readyz` then says 503.
    pub ready: Arc<AtomicBool>,
    /// This node's live ledger events, for Server-Sent Events streams.
    pub live_events: Arc<LiveEvents>,
    /// How often an idle event stream sends a heartbeat.
    pub events_heartbeat: Duration,
    /// Set to true when shutdown starts: open event streams end, so the
    /// graceful shutdown does not wait for them.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
    /// Held while risk rules change: each change writes the store, then
    /// hands the whole set to the ledger, and two changes interleaved could
    /// leave the ledger without one of them.
    pub rule_changes: Arc<tokio::sync::Mutex<()>>,
    /// Assets whose settlement account is known to be open.
    settled_assets: Arc<Mutex<HashSet<Asset>>>,
    /// Owners of accounts seen so far. An account's owner never changes, so
    /// this saves a shard round trip per transfer.
    owners: Arc<Mutex<HashMap<AccountId, UserId>>>,
    /// A node's journal stopped without a failed write (fenced while paused).
    journal_check: Option<JournalCheck>,
}

/// What accounts users may open.
#[derive(Clone, Debug)]
pub struct AccountRules {
    /// The assets accounts may be in.
    pub allowed_assets: AllowedAssets,
    /// Most accounts one user may open (an admin may open more for them).
    pub accounts_per_user_max: usize,
}

impl Default for AccountRules {
    fn default() -> Self {
        AccountRules { allowed_assets: AllowedAssets::default(), accounts_per_user_max: 100 }
    }
}

/// What bounds the work callers can cause, handed to [`AppState::new`].
pub struct Throttles {
    /// Failed password checks per email.
    pub login_throttle: Arc<LoginThrottle>,
    /// Each user's share of the transfers in flight.
    pub admission: Arc<UserAdmission>,
}

impl AppState {
    /// Builds the state.
    pub fn new(
        ledger: Ledger,
        users: UserStore,
        tokens: Tokens,
        passwords: Passwords,
        throttles: Throttles,
        metrics: PrometheusHandle,
        journal_stats: Arc<JournalStats>,
    ) -> AppState {
        let Throttles { login_throttle, admission } = throttles;
        AppState {
            ledger,
            users,
            tokens: Arc::new(tokens),
            passwords,
            login_throttle,
            admission,
            account_rules: Arc::default(),
            metrics,
            journal_stats,
            external: None,
            ready: Arc::new(AtomicBool::new(true)),
            live_events: Arc::new(LiveEvents::new(LiveOptions::default())),
            events_heartbeat: Duration::from_secs(15),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            rule_changes: Arc::default(),
            settled_assets: Arc::default(),
            owners: Arc::default(),
            journal_check: None,
        }
    }

    /// Asks `check` too whether the process must restart ([`AppState::needs_restart`]).
    pub fn with_journal_check(mut self, check: Option<JournalCheck>) -> AppState {
        self.journal_check = check;
        self
    }

    /// Whether the process can serve again only after a restart: a journal
    /// write failed, or a node's journal was fenced (another start or node
    /// took its lease while it was paused; its shards are someone else's).
    pub fn needs_restart(&self) -> bool {
        self.ledger.needs_restart() || self.journal_check.as_ref().is_some_and(|stopped| stopped())
    }

    /// Opens accounts under `rules`.
    pub fn with_account_rules(mut self, rules: AccountRules) -> AppState {
        self.account_rules = Arc::new(rules);
        self
    }

    /// Serves live events from `live`, with a heartbeat every `heartbeat`.
    pub fn with_live_events(mut self, live: Arc<LiveEvents>, heartbeat: Duration) -> AppState {
        self.live_events = live;
        self.events_heartbeat = heartbeat;
        self
    }

    /// Accepts the tokens of `issuer` too.
    pub fn with_external_issuer(mut self, issuer: ExternalIssuer) -> AppState {
        self.external = Some(Arc::new(issuer));
        self
    }

    /// Whether the API is taking requests.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// An account the caller may see: their own, or any for an admin.
    /// Anything else is "not found", so ids of others' accounts leak nothing.
    pub async fn visible_account(
        &self,
        caller: &Caller,
        id: AccountId,
        not_found: Rejection,
    ) -> Result<Account, ApiError> {
        // Not in the caller's own index: no shard is asked (see `caller_owns`).
        if !caller.is_admin() && !self.users.owns(caller.id(), uuid::Uuid::from_u128(id.get())).await? {
            return Err(ApiError::Rejected(not_found));
        }
        let view = self.ledger.account(id).await?.ok_or(ApiError::Rejected(not_found))?;
        if caller.is_admin() || view.account.user_id == ledger_user_id(caller.id())? {
            Ok(view.account)
        } else {
            Err(ApiError::Rejected(not_found))
        }
    }

    /// The owner of an account, if it exists.
    pub async fn owner_of(&self, id: AccountId) -> Result<Option<UserId>, ApiError> {
        if let Some(owner) = self.owners.lock().ok().and_then(|owners| owners.get(&id).copied()) {
            return Ok(Some(owner));
        }
        let Some(view) = self.ledger.account(id).await? else { return Ok(None) };
        let owner = view.account.user_id;
        if let Ok(mut owners) = self.owners.lock() {
            if owners.len() >= OWNER_CACHE_MAX {
                owners.clear();
            }
            owners.insert(id, owner);
        }
        Ok(Some(owner))
    }

    /// Refuses, as `not_found`, an account the caller may not move money
    /// from. Admins may use any; whether it exists the ledger says.
    pub async fn check_owner(
        &self,
        caller: &Caller,
        id: AccountId,
        not_found: Rejection,
    ) -> Result<(), ApiError> {
        if caller.is_admin() || self.caller_owns(caller, id).await? {
            return Ok(());
        }
        Err(ApiError::Rejected(not_found))
    }

    /// Whether `caller` owns account `id`. Asked of the caller's own account
    /// index first, a local lookup: an id the index does not name (made up,
    /// or another's) costs no shard read, so a batch of unknown sources
    /// cannot turn into as many shard reads. A named one is confirmed by the
    /// ledger (the index may name an account whose opening never happened).
    pub async fn caller_owns(&self, caller: &Caller, id: AccountId) -> Result<bool, ApiError> {
        if !self.users.owns(caller.id(), uuid::Uuid::from_u128(id.get())).await? {
            metrics::counter!("wallet_ownership_checks_total", "answered_by" => "index").increment(1);
            return Ok(false);
        }
        metrics::counter!("wallet_ownership_checks_total", "answered_by" => "ledger").increment(1);
        Ok(self.owner_of(id).await? == Some(ledger_user_id(caller.id())?))
    }

    /// Opens the settlement account of `asset` once per process.
    pub async fn ensure_settlement_account(&self, asset: Asset) -> Result<(), ApiError> {
        if self.settled_assets.lock().map(|set| set.contains(&asset)).unwrap_or(false) {
            return Ok(());
        }
        self.ledger.ensure_settlement_account(asset).await?;
        if let Ok(mut set) = self.settled_assets.lock() {
            set.insert(asset);
        }
        Ok(())
    }
}

impl From<UserStoreError> for ApiError {
    fn from(error: UserStoreError) -> Self {
        match error {
            UserStoreError::EmailTaken => {
                ApiError::Conflict { code: "email_taken", detail: "a user with this email already exists" }
            }
            other => {
                tracing::error!(error = %other, "user store failed");
                ApiError::Unavailable
            }
        }
    }
}
