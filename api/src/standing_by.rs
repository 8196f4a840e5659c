//! What a standby (`wallet node --standby`) serves while it waits for the
//! shards, which may be for as long as the active node lives: `/healthz`
//! says the process is well (an orchestrator must not restart it for
//! waiting), `/readyz` says 503 (a load balancer sends it nothing),
//! `/metrics` shows the process, and every other request is answered 503
//! `standing_by` with `Retry-After`, at once, instead of waiting in the
//! listen backlog. Once the ledger opens, the full API takes the port over.

use std::future::Future;
use std::io;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio::net::TcpListener;

use crate::error::ApiError;
use crate::serve::{serve, ConnectionLimits};

/// How long requests already taken may finish on the standing-by router
/// once the ledger has opened (they answer at once; this bounds a client
/// that does not read its answer).
const HAND_OVER_GRACE: Duration = Duration::from_secs(1);

fn router(metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({ "status": "standing_by" })) }))
        .route("/readyz", get(|| async { ApiError::StandingBy }))
        .route("/metrics", get(render))
        .fallback(|| async { ApiError::StandingBy })
        .with_state(metrics)
}

async fn render(State(metrics): State<PrometheusHandle>) -> Response {
    metrics.run_upkeep();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()).into_response()
}

/// Runs `opening` while a copy of `listener` serves the standing-by
/// router; returns what `opening` returned, once the standing-by server
/// has stopped accepting, so that `listener` alone serves after.
pub async fn while_opening<T>(
    listener: TcpListener,
    metrics: PrometheusHandle,
    limits: ConnectionLimits,
    opening: impl Future<Output = T>,
) -> io::Result<(TcpListener, T)> {
    let listener = listener.into_std()?;
    let copy = TcpListener::from_std(listener.try_clone()?)?;
    let listener = TcpListener::from_std(listener)?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "standing by");
    }
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<()>();
    // A task of its own: health checks are answered while the opening
    // replays, however long it holds its task.
    let mut standing_by = tokio::spawn(serve(copy, router(metrics), limits, async move {
        let _ = opened_rx.await;
    }));
    let opened = tokio::select! {
        opened = opening => opened,
        // It stops only once told to; a panic in it ends the start.
        _ = &mut standing_by => return Err(io::Error::other("the standing-by server stopped early")),
    };
    let _ = opened_tx.send(());
    // The copy stops accepting at once; then its open connections get a
    // moment to finish.
    let _ = tokio::time::timeout(HAND_OVER_GRACE, standing_by).await;
    Ok((listener, opened))
}
