//! `GET /healthz` (the process answers and can serve without a restart),
//! `GET /readyz` (the ledger answers and shutdown has not started),
//! `GET /metrics` (Prometheus text).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use wallet_actors::{settlement_account_id, Asset};

use crate::error::ApiError;
use crate::openapi::{RateLimited, Timeout, Unavailable};
use crate::state::AppState;

/// Liveness: the process is up and can serve again without a restart.
/// After a failed journal write it cannot (see `Ledger::needs_restart`):
/// then 503, so that an orchestrator's liveness probe restarts it and the
/// restart recovers from what is on disk. A crashed shard does not count:
/// it is rebuilt in the process (`/readyz` says 503 meanwhile). Nor can a
/// node whose journal was fenced (paused past its leases, another node
/// serves its shards now): 503 too.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The process is up"),
        RateLimited,
        Unavailable,
        Timeout,
    ),
)]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.needs_restart() {
        return Err(ApiError::Unavailable);
    }
    Ok(Json(json!({ "status": "ok" })))
}

/// Readiness: not stopping, the shards serve (not waiting for a rebuild),
/// and a shard answers a read; 503 otherwise.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready"),
        RateLimited,
        Unavailable,
        Timeout,
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    // Between a shard's crash and its rebuild the ledger refuses work.
    if !state.is_ready() || !state.ledger.is_serving() || state.needs_restart() {
        return Err(ApiError::Unavailable);
    }
    let probe = Asset::new("USD", 2).map_err(|_| ApiError::Internal)?;
    state.ledger.account(settlement_account_id(&probe)).await?;
    Ok(Json(json!({ "status": "ready" })))
}

/// Prometheus text exposition of every metric.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        RateLimited,
        Timeout,
    ),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("wallet_shard_actors").set(f64::from(state.ledger.config().shard_count));
    // Accounts are virtual actors: resident ones are the active actors.
    if let Ok(resident) = state.ledger.resident_accounts().await {
        metrics::gauge!("wallet_accounts_resident").set(resident as f64);
    }
    let stats = &state.journal_stats;
    // The journal keeps its own atomics; they are copied in as counters at scrape time.
    metrics::counter!("wallet_journal_records_total").absolute(stats.records.load(Ordering::Relaxed));
    metrics::counter!("wallet_journal_syncs_total").absolute(stats.syncs.load(Ordering::Relaxed));
    metrics::counter!("wallet_journal_bytes_total").absolute(stats.bytes.load(Ordering::Relaxed));
    metrics::counter!("wallet_journal_sync_microseconds_total")
        .absolute(stats.sync_micros.load(Ordering::Relaxed));
    // Idle series are forgotten (see `telemetry::prometheus`); these count
    // rare events an alert watches for, so they are touched at each scrape
    // and stay, at zero until the first one, rather than vanish and come
    // back at 1 (a jump a rate would miss).
    for rare in ["wallet_shard_rebuilds_total", "wallet_checkpoints_total", "wallet_passivations_total"] {
        metrics::counter!(rare).increment(0);
    }
    state.metrics.run_upkeep();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
        .into_response()
}
