//! What the ledger-event tests share: a user's four funded accounts with
//! clients moving money between them, the stream read back, and the checks
//! that each account's events are once each, in order, up to the API's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::json;
use wallet_actors::events::LedgerEvent;

use crate::helpers::login as token;

pub const PASSWORD: &str = "admin-password-1";

pub struct Books {
    pub client: reqwest::Client,
    pub base: String,
    pub user: String,
    pub accounts: Vec<String>,
}

impl Books {
    pub async fn open(base: &str) -> anyhow::Result<Books> {
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

    /// The API's sequence and available balance of each account.
    pub async fn read(&self) -> anyhow::Result<BTreeMap<String, (u64, String)>> {
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

/// Eight clients moving money between the books' accounts until stopped
/// (or until the server goes away), counting what was acknowledged.
pub struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(books: &Books) -> Load {
        let (stop, acknowledged) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let clients = (0..8usize)
            .map(|worker| {
                let (client, base, user, accounts) =
                    (books.client.clone(), books.base.clone(), books.user.clone(), books.accounts.clone());
                let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    let mut round = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let from = &accounts[(worker + round) % accounts.len()];
                        let to = &accounts[(worker + round + 1) % accounts.len()];
                        let body = json!({"id": uuid::Uuid::new_v4().to_string(), "from_account_id": from,
                            "to_account_id": to, "amount": (1 + round % 7).to_string()});
                        let url = format!("{base}/v1/transfers");
                        match client.post(url).bearer_auth(&user).json(&body).send().await {
                            Ok(reply) if reply.status().is_success() => {
                                acknowledged.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        Load { stop, acknowledged, clients }
    }

    /// Transfers acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Waits (30 s at most) until `count` transfers were acknowledged.
    pub async fn reach(&self, count: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        while self.acknowledged() < count && started.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let done = self.acknowledged();
        anyhow::ensure!(done >= count, "only {done} of {count} transfers under load");
        Ok(())
    }

    /// Stops the clients and waits for them; gives what was acknowledged.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            let _ = client.await;
        }
        self.acknowledged.load(Ordering::Relaxed)
    }
}

/// Every event in the stream, in stream order.
pub async fn stream_events(url: &str) -> anyhow::Result<Vec<LedgerEvent>> {
    let values = stream_json(url).await?;
    values.into_iter().map(|value| Ok(serde_json::from_value(value)?)).collect()
}

/// Every message in the stream as the JSON it was sent as (no field dropped
/// or defaulted by a Rust type), in stream order, read by an ordered
/// consumer (a failover test's stream holds hundreds of thousands).
pub async fn stream_json(url: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    use futures_util::StreamExt;
    let client = async_nats::connect(wallet_cluster::nats_servers(url)).await?;
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("WALLET_EVENTS").await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut events = Vec::new();
    if last == 0 {
        return Ok(events);
    }
    let consumer =
        stream.create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default()).await?;
    let mut messages = consumer.messages().await?;
    let read = async {
        while let Some(message) = messages.next().await {
            let message = message?;
            let sequence = message.info().map_err(|error| anyhow::anyhow!("{error}"))?.stream_sequence;
            anyhow::ensure!(sequence == events.len() as u64 + 1, "a gap in the stream before {sequence}");
            events.push(serde_json::from_slice(&message.payload)?);
            if sequence >= last {
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.context("reading the stream took 60 s")??;
    anyhow::ensure!(events.len() as u64 == last, "read {} of {last} events", events.len());
    Ok(events)
}

/// Each account's events are 1, 2, ... in stream order, once each; returns
/// the last event of each account.
pub fn check_order(events: &[LedgerEvent]) -> anyhow::Result<BTreeMap<String, &LedgerEvent>> {
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

/// Waits until the stream holds each account's events in order, once each,
/// up to the API's sequence and balance (reading again after a failed read).
pub async fn wait_until_published(url: &str, books: &Books) -> anyhow::Result<()> {
    let api = books.read().await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // A NATS cluster that just lost a server may time a read out.
        let events = match stream_events(url).await {
            Err(error) if Instant::now() < deadline => {
                eprintln!("reading the events failed ({error}); reading them again");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            read => read?,
        };
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
