//! # wallet-api
//! The HTTP API (axum) and the `wallet` binary: comes with the HTTP API issue.
