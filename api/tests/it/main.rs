//! Integration tests: each starts the real application on port 0 with a
//! temporary data directory and talks HTTP over loopback.

mod accounts;
mod accounts_pages;
mod amplification;
mod auth;
mod binary;
mod bootstrap;
mod business_limits;
mod cluster_load;
mod event_books;
mod event_schemas;
mod event_stream;
mod events;
mod failover;
mod hashing;
mod helpers;
mod hygiene;
mod keys;
mod limits;
mod metrics;
mod money;
mod oidc;
mod projection;
mod rate_keys;
mod risk;
mod sessions;
mod subscriber;
mod supervision;
