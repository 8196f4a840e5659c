//! # wallet-api: the HTTP API (axum) and the `wallet` binary
//!
//! `wallet serve` runs the embedded single node: the ledger (see
//! `wallet-storage`'s `EmbeddedLedger`) and this API in one process.
//!
//! Modules:
//! - [`settings`]: the command line and its `WALLET_*` environment variables.
//! - [`startup`]: [`Application`]: build from settings, bind, run until shutdown.
//! - [`routes`]: the router and one module per area (health, users, accounts, money, risk).
//! - [`wire`]: the JSON types on the wire, one module per route group, converted to domain
//!   types with `TryFrom`.
//! - [`domain`]: values parsed at the edge (email, password, name, UUID ids, timestamps).
//! - [`error`]: [`ApiError`], and the one place that maps errors to statuses and codes.
//! - [`extract`]: extractors whose failures are problem documents too.
//! - [`admission`]: each user's share of the transfers in flight.
//! - [`assets`]: the assets accounts may be opened in (ISO 4217 and configured ones).
//! - [`auth`]: argon2id passwords, JWT access tokens, refresh tokens, the `Caller`.
//! - [`authenticate`]: how a request finds its `Caller` (middleware and extractor).
//! - [`bootstrap`]: the administrator made at start, never by promoting a user.
//! - [`serve`]: the accept loop: a connection cap and a header-read time-out.
//! - [`openapi`]: the OpenAPI document, generated from the handlers and wire types.
//! - [`client`]: the client's address (behind trusted proxies), and the key limits count it by.
//! - [`random`]: random tokens and hex, shared by auth, sessions and keys.
//! - [`rate`]: rate limits per client, per authenticated user, and on logins.
//! - [`login_throttle`]: failed logins per email, with a growing delay.
//! - [`keys`]: the token signing keys (ids, rotation) and the generated secret's 0600 file.
//! - [`oidc`]: tokens of an external OAuth2/OIDC issuer, checked against its JWKS.
//! - [`sessions`]: refresh-token families: rotation, reuse detection, absolute lifetime.
//!   The user store itself (users, sessions, owned accounts, risk rules) is
//!   `wallet_storage::users`.
//! - [`risk`]: risk rules kept for the ledger: stored, configured defaults, handed over.
//! - [`state`]: what handlers share, and the object-level authorization checks.
//! - [`telemetry`]: tracing, the Prometheus recorder, request metrics.

pub mod admission;
pub mod assets;
pub mod auth;
pub mod authenticate;
pub mod bootstrap;
pub mod client;
pub mod domain;
pub mod error;
pub mod extract;
pub mod keys;
pub mod login_throttle;
pub mod mode;
pub mod oidc;
pub mod openapi;
pub mod random;
pub mod rate;
pub mod risk;
pub mod routes;
pub mod serve;
pub mod sessions;
pub mod settings;
pub mod standing_by;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod wire;

pub use error::ApiError;
pub use mode::Mode;
pub use settings::{Cli, Command, LogFormat, NodeSettings, Settings};
pub use startup::{Application, StartupError};
