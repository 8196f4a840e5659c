//! Ledger events on NATS JetStream, end to end: the real binary publishing
//! to a real nats-server, killed with SIGKILL under load and started again,
//! and the nats-server killed for longer than the stream's duplicate window
//! while transfers go on. Every account's events are in the stream once
//! each, in sequence order without a gap, and end at the API's balance.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::json;
use wallet_actors::events::LedgerEvent;
use wallet_testkit::nats::NatsServer;

use crate::helpers::{login as token, Server};

const PASSWORD: &str = "admin-password-1";

struct Books {
    client: reqwest::Client,
    base: String,
    user: String,
    accounts: Vec<String>,
}

impl Books {
    async fn open(base: &str) -> anyhow::Result<Books> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let admin = token(&client, base, "admin@wallet.local", PASSWORD).await?;
        let sign_up = json!({"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"});
        client.post(format!("{base}/v1/users")).json(&sign_up).send().await?;
        let user = token(&client, base, "ada@example.com", "correct horse battery").await?;
        let mut accounts = Vec::new();
        for _ in 0..4 {
            let reply = client
                .post(format!("{base}/v1/accounts"))
                .bearer_auth(&user)
                .json(&json!({"asset": "USD"}))
                .send()
                .await?;
            let body: serde_json::Value = reply.json().await?;
            accounts.push(body["id"].as_str().context("no account id")?.to_string());
        }
        for account in &accounts {
            let deposit =
                json!({"id": uuid::Uuid::new_v4().to_string(), "account_id": account, "amount": "1000000"});
            let reply =
                client.post(format!("{base}/v1/deposits")).bearer_auth(&admin).json(&deposit).send().await?;
            anyhow::ensure!(reply.status() == StatusCode::CREATED, "deposit: {}", reply.status());
        }
        Ok(Books { client, base: base.to_string(), user, accounts })
    }

    /// Eight clients transferring until `stop` is set or the server dies;
    /// counts what was acknowledged.
    fn load(&self, stop: Arc<AtomicBool>, acknowledged: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
        (0..8usize)
            .map(|worker| {
                let (client, base, user, accounts) =
                    (self.client.clone(), self.base.clone(), self.user.clone(), self.accounts.clone());
                let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    let mut round = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let from = &accounts[(worker + round) % accounts.len()];
                        let to = &accounts[(worker + round + 1) % accounts.len()];
                        let body = json!({"id": uuid::Uuid::new_v4().to_string(), "from_account_id": from,
                            "to_account_id": to, "amount": (1 + round % 7).to_string()});
                        match client
                            .post(format!("{base}/v1/transfers"))
                            .bearer_auth(&user)
                            .json(&body)
                            .send()
                            .await
                        {
                            Ok(reply) if reply.status().is_success() => {
                                acknowledged.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect()
    }

    /// The API's sequence and available balance of each account.
    async fn read(&self) -> anyhow::Result<BTreeMap<String, (u64, String)>> {
        let mut seen = BTreeMap::new();
        for account in &self.accounts {
            let reply = self
                .client
                .get(format!("{}/v1/accounts/{account}", self.base))
                .bearer_auth(&self.user)
                .send()
                .await?;
            let body: serde_json::Value = reply.json().await?;
            let sequence = body["sequence"].as_u64().context("no sequence")?;
            let available = body["balance"]["available"].as_str().context("no balance")?.to_string();
            seen.insert(account.clone(), (sequence, available));
        }
        Ok(seen)
    }
}

/// Every event in the stream, in stream order.
async fn stream_events(url: &str) -> anyhow::Result<Vec<LedgerEvent>> {
    let client = async_nats::connect(url).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("WALLET_EVENTS").await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut events = Vec::new();
    for sequence in 1..=last {
        let message = stream.direct_get(sequence).await?;
        events.push(serde_json::from_slice(&message.payload)?);
    }
    Ok(events)
}

/// Each account's events are 1, 2, ... in stream order, once each; returns
/// the last event of each account.
fn check_order(events: &[LedgerEvent]) -> anyhow::Result<BTreeMap<String, &LedgerEvent>> {
    let mut last: BTreeMap<String, &LedgerEvent> = BTreeMap::new();
    for event in events {
        let before = last.get(&event.account_id).map_or(0, |e| e.sequence);
        anyhow::ensure!(
            event.sequence == before + 1,
            "account {}: event {} after {before} (a repeat or a gap)",
            event.account_id,
            event.sequence
        );
        anyhow::ensure!(
            event.event_id == format!("{}:{}", event.account_id, event.sequence),
            "event id {}",
            event.event_id
        );
        last.insert(event.account_id.clone(), event);
    }
    Ok(last)
}

async fn wait_for_count(acknowledged: &AtomicU64, at_least: u64) {
    let started = Instant::now();
    while acknowledged.load(Ordering::Relaxed) < at_least && started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn every_change_is_published_once_in_order_across_kill_9_and_a_nats_outage() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let data = dir.path().join("wallet");
    // A one-second duplicate window, so the outage below outlasts it.
    let flags = ["--nats-url", url.as_str(), "--events-duplicate-window-ms", "1000"];
    let mut server = Server::start_with(&data, Some(PASSWORD), &flags)?;
    let mut books = Books::open(&server.base).await?;

    // Kill -9 the node under load, twice (it comes back on another port).
    for _ in 0..2 {
        let (stop, acknowledged) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let clients = books.load(stop.clone(), acknowledged.clone());
        wait_for_count(&acknowledged, 300).await;
        server.signal("-KILL")?;
        server.wait()?;
        stop.store(true, Ordering::Relaxed);
        for client in clients {
            let _ = client.await;
        }
        anyhow::ensure!(acknowledged.load(Ordering::Relaxed) >= 300, "too few transfers before the kill");
        // Past the duplicate window: `Nats-Msg-Id` no longer hides a second
        // publication of what the restart replays.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        server = Server::start_with(&data, Some(PASSWORD), &flags)?;
        books.base = server.base.clone();
    }

    // NATS away for three duplicate windows while money moves.
    let (stop, acknowledged) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let clients = books.load(stop.clone(), acknowledged.clone());
    wait_for_count(&acknowledged, 100).await;
    nats.kill()?;
    let outage = Instant::now();
    wait_for_count(&acknowledged, 400).await;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed())).await;
    nats.restart()?;
    wait_for_count(&acknowledged, 600).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }

    wait_until_published(&url, &books).await
}

/// Waits until the stream holds each account's events in order, once each,
/// up to the API's sequence and balance.
async fn wait_until_published(url: &str, books: &Books) -> anyhow::Result<()> {
    let api = books.read().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = stream_events(url).await?;
        let last = check_order(&events)?;
        let published: BTreeMap<String, (u64, String)> = api
            .keys()
            .filter_map(|a| last.get(a).map(|e| (a.clone(), (e.sequence, e.balance.available.clone()))))
            .collect();
        if published == api {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the stream did not catch up: {published:?}, API {api:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With room for only 50 waiting events, the queue drops most of what the
/// load makes while NATS is away; the publisher reads them back from the
/// durable history, and the stream still holds every event, in order.
#[tokio::test]
async fn events_the_queue_had_no_room_for_are_read_back_from_history() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let flags = ["--nats-url", url.as_str(), "--events-queue-max", "50"];
    let server = Server::start_with(&dir.path().join("wallet"), Some(PASSWORD), &flags)?;
    let books = Books::open(&server.base).await?;
    nats.kill()?;
    let (stop, acknowledged) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let clients = books.load(stop.clone(), acknowledged.clone());
    wait_for_count(&acknowledged, 500).await;
    nats.restart()?;
    wait_for_count(&acknowledged, 800).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    anyhow::ensure!(acknowledged.load(Ordering::Relaxed) >= 800, "too few transfers");
    wait_until_published(&url, &books).await?;
    let metrics = books.client.get(format!("{}/metrics", books.base)).send().await?.text().await?;
    anyhow::ensure!(
        metrics.contains("wallet_events_dropped_total"),
        "nothing was dropped: the test tests nothing"
    );
    Ok(())
}

/// While NATS is down the node stays ready (it serves; the outbox grows)
/// and `/metrics` says how many durable events wait; once NATS is back the
/// backlog drains.
#[tokio::test]
async fn while_nats_is_down_the_node_stays_ready_and_reports_its_backlog() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let server =
        Server::start_with(&dir.path().join("wallet"), Some(PASSWORD), &["--nats-url", url.as_str()])?;
    let books = Books::open(&server.base).await?;
    nats.kill()?;
    let (stop, acknowledged) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let clients = books.load(stop.clone(), acknowledged.clone());
    wait_for_count(&acknowledged, 200).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let _ = client.await;
    }
    let ready = books.client.get(format!("{}/readyz", books.base)).send().await?.status();
    anyhow::ensure!(ready == StatusCode::OK, "/readyz answered {ready} while NATS was down");
    let lag = |metrics: &str| -> Option<f64> {
        metrics.lines().find(|l| l.starts_with("wallet_events_outbox_lag "))?.split(' ').nth(1)?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = books.client.get(format!("{}/metrics", books.base)).send().await?.text().await?;
        if lag(&metrics).is_some_and(|waiting| waiting >= 200.0) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no backlog reported: {:?}", lag(&metrics));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.restart()?;
    wait_until_published(&url, &books).await
}
