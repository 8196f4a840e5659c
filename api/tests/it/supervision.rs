//! A shard that crashes under HTTP load is rebuilt while the server keeps
//! serving: requests in flight get 503 (their outcome unknown, a retry with
//! the same id is safe), `/readyz` says 503 until the shards serve again,
//! and afterwards every acknowledged transfer is there once and the books
//! balance.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{new_id, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_shard_is_rebuilt_while_the_server_keeps_serving() -> anyhow::Result<()> {
    let limits = [
        "--rate-limit-per-second",
        "1000000",
        "--rate-limit-burst",
        "1000000",
        "--user-rate-limit-per-second",
        "1000000",
        "--user-rate-limit-burst",
        "1000000",
    ];
    let app = Arc::new(TestApp::spawn_with(tempfile::tempdir()?, &limits).await?);
    let (_, token) = app.user("sam").await?;
    let from = app.account(&token).await?;
    let to = app.account(&token).await?;
    assert_eq!(app.deposit(&from, "100000").await?.status, StatusCode::CREATED);

    let acknowledged: Arc<Mutex<BTreeMap<String, Value>>> = Default::default();
    let unknown: Arc<Mutex<Vec<Value>>> = Default::default();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..8 {
        let (app, token, from, to) = (app.clone(), token.clone(), from.clone(), to.clone());
        let (acknowledged, unknown) = (acknowledged.clone(), unknown.clone());
        clients.spawn(async move {
            for n in 0..150 {
                let body = json!({"id": new_id(), "from_account_id": from, "to_account_id": to,
                                  "amount": format!("{}", 1 + (client + n) % 5)});
                let reply = app.post("/v1/transfers", Some(&token), &body).await?;
                let id = body["id"].as_str().unwrap_or_default().to_string();
                match reply.status {
                    StatusCode::CREATED => {
                        acknowledged.lock().map_err(|_| anyhow::anyhow!("lock"))?.insert(id, body);
                    }
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                        anyhow::ensure!(reply.code() == "unavailable" || reply.code() == "timeout");
                        unknown.lock().map_err(|_| anyhow::anyhow!("lock"))?.push(body);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => anyhow::bail!("unexpected {other}: {}", reply.body),
                }
            }
            anyhow::Ok(())
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    crash_every_shard(&app);
    // A small ledger is rebuilt within milliseconds, maybe between two
    // probes of /readyz; a second failure soon after a rebuild waits a
    // pause (100 ms) first, so that one is seen for sure.
    watch_readiness(&app, 1).await?;
    crash_every_shard(&app);
    let readiness = watch_readiness(&app, 2).await?;
    assert!(readiness.contains(&StatusCode::SERVICE_UNAVAILABLE), "/readyz never said 503: {readiness:?}");
    while let Some(done) = clients.join_next().await {
        done??;
    }
    let caught = unknown.lock().map_err(|_| anyhow::anyhow!("lock"))?.len();
    assert!(caught > 0, "no request was caught by the crash (none answered 503 or 504)");

    // Unknown outcomes, retried with the same body: applied once either way.
    let retries = std::mem::take(&mut *unknown.lock().map_err(|_| anyhow::anyhow!("lock"))?);
    for body in retries {
        let reply = app.post("/v1/transfers", Some(&token), &body).await?;
        assert!(matches!(reply.status, StatusCode::CREATED | StatusCode::OK), "{}", reply.body);
        let id = body["id"].as_str().unwrap_or_default().to_string();
        acknowledged.lock().map_err(|_| anyhow::anyhow!("lock"))?.insert(id, body);
    }
    let acknowledged = acknowledged.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    assert_eq!(acknowledged.len(), 8 * 150);
    let mut moved: u64 = 0;
    for (id, body) in &acknowledged {
        let read = app.get(&format!("/v1/transfers/{id}"), Some(&token)).await?;
        assert_eq!(read.status, StatusCode::OK, "{id}: {}", read.body);
        assert_eq!(read.body["amount"], body["amount"]);
        moved += body["amount"].as_str().and_then(|a| a.parse::<u64>().ok()).unwrap_or(0);
    }
    assert_eq!(app.available(&token, &from).await?, (100_000 - moved).to_string());
    assert_eq!(app.available(&token, &to).await?, moved.to_string());
    Ok(())
}

fn crash_every_shard(app: &TestApp) {
    for shard in 0..app.ledger.config().shard_count {
        app.ledger.crash_shard(wallet_actors::ShardId(shard));
    }
}

/// Probes /readyz until the ledger has been rebuilt `rebuilds` times and
/// serves; returns the answers seen, each change once.
async fn watch_readiness(app: &TestApp, rebuilds: u64) -> anyhow::Result<Vec<StatusCode>> {
    let mut readiness = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = app.get("/readyz", None).await?.status;
        if readiness.last() != Some(&ready) {
            readiness.push(ready);
        }
        if app.ledger.rebuilds() >= rebuilds && ready == StatusCode::OK {
            return Ok(readiness);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the shards were not rebuilt");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
