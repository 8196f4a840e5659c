//! The accept loop: HTTP/1.1 connections served by hyper, with the two
//! limits `axum::serve` has no setting for.
//!
//! - A connection cap: at most `connections_max` connections are served
//!   at once; beyond, new ones wait in the kernel's backlog until one
//!   closes, instead of each taking a task, buffers and a descriptor.
//! - A header-read time-out: a client that has not sent a whole request
//!   head within `header_read_timeout` is disconnected (hyper's
//!   `header_read_timeout`), so slow clients dribbling headers cannot hold
//!   every socket (slowloris).
//!
//! The client's address reaches the handlers as axum's
//! `ConnectInfo<SocketAddr>`, as `into_make_service_with_connect_info`
//! gave it. On shutdown the loop stops accepting and waits for the open
//! connections to finish their requests (the caller bounds the wait).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The connection limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections served at once.
    pub connections_max: usize,
    /// Longest time a client may take to send a request's head.
    pub header_read_timeout: Duration,
}

/// How long to wait after an accept error (out of descriptors, most
/// likely) before accepting again, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` completes, then waits
/// for the open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let permits = Arc::new(Semaphore::new(limits.connections_max.clamp(1, Semaphore::MAX_PERMITS)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut warned_full = false;
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit,
            () = &mut shutdown => break,
        };
        let Ok(permit) = permit else { break };
        if permits.available_permits() == 0 && !warned_full {
            tracing::warn!(
                connections_max = limits.connections_max,
                "connection cap reached; new connections wait"
            );
            warned_full = true;
        }
        if permits.available_permits() > limits.connections_max / 2 {
            warned_full = false;
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = router.clone().map_request(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            request
        });
        let connection = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
