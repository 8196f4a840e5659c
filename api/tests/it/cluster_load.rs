//! A cluster under load for the failover tests: three real `wallet node
//! --standby` processes on one real nats-server, funded accounts, clients
//! sending transfers over HTTP to whichever node serves (the same id until
//! an answer says what became of it), and the checks at the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::event_books::{self, Books};
use crate::helpers::{login, Server};

pub const NODES: usize = 3;
const ACCOUNTS: usize = 8;
const CLIENTS: usize = 8;
const FUNDING: i64 = 10_000;
const ADMIN_PASSWORD: &str = "admin-password-1";

/// What a client learnt of one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// 200 or 201: applied.
    Applied,
    /// A 4xx: refused, nothing changed.
    Refused,
    /// No definitive answer before the load stopped.
    Unknown,
}

#[derive(Clone, Debug)]
struct Sent {
    from: usize,
    to: usize,
    amount: i64,
    outcome: Outcome,
    /// The request, sent again to learn an unknown outcome.
    body: serde_json::Value,
}

/// The nodes' addresses, which change when a killed node starts again.
pub type Bases = Arc<Mutex<Vec<String>>>;

pub fn bases_now(bases: &Bases) -> Vec<String> {
    bases.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

fn start_node(root: &std::path::Path, id: usize, url: &str) -> anyhow::Result<Server> {
    let id = id.to_string();
    // One client address and one user send all the load.
    let unlimited = ["--rate-limit-per-second", "--user-rate-limit-per-second"]
        .into_iter()
        .chain(["--rate-limit-burst", "--user-rate-limit-burst"])
        .flat_map(|flag| [flag, "100000"]);
    let mut flags = vec!["--node-id", &id, "--nats-url", url, "--standby"];
    flags.extend(unlimited);
    Server::start_until(&root.join(format!("node-{id}")), Some(ADMIN_PASSWORD), &flags, "standing by")
}

async fn ready(client: &reqwest::Client, base: &str) -> bool {
    let probe = client.get(format!("{base}/readyz")).timeout(Duration::from_secs(2)).send().await;
    probe.is_ok_and(|reply| reply.status() == StatusCode::OK)
}

/// The index of the node that serves, once one does (at most `within`).
pub async fn serving(client: &reqwest::Client, bases: &Bases, within: Duration) -> anyhow::Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        for (index, base) in bases_now(bases).iter().enumerate() {
            if ready(client, base).await {
                return Ok(index);
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no node serves after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one transfer until an answer says what became of it, to whichever
/// node serves (the same id every time), or until `stop` is set.
async fn send(
    client: &reqwest::Client,
    bases: &Bases,
    admin: &str,
    body: &serde_json::Value,
    stop: &AtomicBool,
) -> Outcome {
    loop {
        for base in bases_now(bases) {
            let reply = client
                .post(format!("{base}/v1/transfers"))
                .bearer_auth(admin)
                .json(body)
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            match reply.map(|reply| reply.status()) {
                Ok(StatusCode::OK | StatusCode::CREATED) => return Outcome::Applied,
                // 409 in_flight: an earlier attempt still runs; 429: later.
                Ok(status)
                    if status.is_client_error()
                        && ![StatusCode::CONFLICT, StatusCode::TOO_MANY_REQUESTS].contains(&status) =>
                {
                    return Outcome::Refused
                }
                // A standby, a node going down, a time-out: the outcome is
                // unknown until an answer with the same id says.
                _ => {}
            }
        }
        if stop.load(Ordering::Relaxed) {
            return Outcome::Unknown;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client_loop(
    client: reqwest::Client,
    bases: Bases,
    admin: String,
    accounts: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> HashMap<Uuid, Sent> {
    let mut sent = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let random = Uuid::new_v4().as_u128();
        let from = (random % ACCOUNTS as u128) as usize;
        let to = (from + 1 + (random >> 8) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
        // Now and then more than an account holds: refused.
        let amount = 1 + ((random >> 16) % 3_000) as i64;
        let id = Uuid::new_v4();
        let body = json!({
            "id": id, "from_account_id": accounts[from], "to_account_id": accounts[to],
            "amount": amount.to_string(),
        });
        let outcome = send(&client, &bases, &admin, &body, &stop).await;
        sent.insert(id, Sent { from, to, amount, outcome, body });
    }
    sent
}

async fn open_accounts(client: &reqwest::Client, base: &str, admin: &str) -> anyhow::Result<Vec<String>> {
    let mut accounts = Vec::new();
    for _ in 0..ACCOUNTS {
        let opened = client
            .post(format!("{base}/v1/accounts"))
            .bearer_auth(admin)
            .json(&json!({"asset": "EUR"}))
            .send()
            .await?;
        anyhow::ensure!(opened.status() == StatusCode::CREATED, "opening: {}", opened.status());
        let account = opened.json::<serde_json::Value>().await?["id"].as_str().context("no id")?.to_string();
        let deposit = json!({"id": Uuid::new_v4(), "account_id": account, "amount": FUNDING.to_string()});
        let funded =
            client.post(format!("{base}/v1/deposits")).bearer_auth(admin).json(&deposit).send().await?;
        anyhow::ensure!(funded.status() == StatusCode::CREATED, "depositing: {}", funded.status());
        accounts.push(account);
    }
    Ok(accounts)
}

/// Three standbys on one nats-server, funded accounts, and clients that
/// send transfers to whichever node serves.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nats: wallet_testkit::nats::NatsServer,
    pub url: String,
    pub nodes: Vec<Server>,
    pub bases: Bases,
    pub client: reqwest::Client,
    admin: String,
    accounts: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<HashMap<Uuid, Sent>>>,
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let nats = wallet_testkit::nats::NatsServer::start(&dir.path().join("nats"))?;
        let url = nats.url();
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            nodes.push(start_node(dir.path(), id, &url)?);
        }
        let bases: Bases = Arc::new(Mutex::new(nodes.iter().map(|node| node.base.clone()).collect()));
        let client = reqwest::Client::builder().no_proxy().connect_timeout(Duration::from_secs(1)).build()?;
        let first = serving(&client, &bases, Duration::from_secs(60)).await?;
        let base = bases_now(&bases)[first].clone();
        let admin = login(&client, &base, "admin@wallet.local", ADMIN_PASSWORD).await?;
        let accounts = Arc::new(open_accounts(&client, &base, &admin).await?);
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..CLIENTS)
            .map(|_| {
                let (client, bases, admin) = (client.clone(), bases.clone(), admin.clone());
                tokio::spawn(client_loop(client, bases, admin, accounts.clone(), stop.clone()))
            })
            .collect();
        Ok(Cluster { dir, nats, url, nodes, bases, client, admin, accounts, stop, clients })
    }

    /// The node that serves, once one does.
    pub async fn serving(&self) -> anyhow::Result<usize> {
        serving(&self.client, &self.bases, Duration::from_secs(30)).await
    }

    /// Kills node `index` (if it runs) and starts it again as a standby.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        // Processes block: not on a worker the clients need.
        tokio::task::block_in_place(|| {
            if self.nodes[index].running()? {
                self.nodes[index].signal("-KILL")?;
                self.nodes[index].wait()?;
            }
            self.nodes[index] = start_node(self.dir.path(), index + 1, &self.url)?;
            anyhow::Ok(())
        })?;
        self.bases.lock().unwrap_or_else(PoisonError::into_inner)[index] = self.nodes[index].base.clone();
        Ok(())
    }

    /// Stops the load, learns every outcome, and checks that every node
    /// runs, that the books hold exactly what was applied, and that the
    /// events hold every change once, in order.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.stop.store(true, Ordering::Relaxed);
        let mut sent: HashMap<Uuid, Sent> = HashMap::new();
        for client in std::mem::take(&mut self.clients) {
            sent.extend(client.await?);
        }
        // An outcome a client never learnt (its last attempt timed out when
        // the load stopped) is learnt the way a client would: the same
        // request again, until an answer says (a lookup could run before it
        // applies).
        let unknown = sent.values().filter(|transfer| transfer.outcome == Outcome::Unknown).count();
        eprintln!("{unknown} transfers of unknown outcome when the load stopped, sent again");
        let resolved = AtomicBool::new(false);
        for transfer in sent.values_mut().filter(|transfer| transfer.outcome == Outcome::Unknown) {
            let learnt = tokio::time::timeout(
                Duration::from_secs(60),
                send(&self.client, &self.bases, &self.admin, &transfer.body, &resolved),
            );
            transfer.outcome = learnt.await.context("an outcome stayed unknown for 60 s")?;
        }
        // Every node is up: two stand by, one serves (none exited on losing a race).
        let now = self.serving().await?;
        let base = bases_now(&self.bases)[now].clone();
        for (index, node) in self.nodes.iter_mut().enumerate() {
            anyhow::ensure!(node.running()?, "node {} exited", index + 1);
        }
        check_books(&self.client, &base, &self.admin, &self.accounts, &sent).await?;
        // Events, whichever node published them: each account's once
        // each, in order, up to what the API says.
        let books = Books {
            client: self.client.clone(),
            base,
            user: self.admin.clone(),
            accounts: self.accounts.to_vec(),
        };
        event_books::wait_until_published(&self.url, &books).await
    }
}

/// Every transfer whose outcome a client never learnt is looked up; then
/// each account holds its funding plus what applied transfers moved.
async fn check_books(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    accounts: &[String],
    sent: &HashMap<Uuid, Sent>,
) -> anyhow::Result<()> {
    // Looked up 16 at a time: a run applies tens of thousands.
    let lookups = futures_util::stream::iter(sent.iter().map(|(id, transfer)| async move {
        let found = client.get(format!("{base}/v1/transfers/{id}")).bearer_auth(admin).send().await?;
        match found.status() {
            StatusCode::OK => anyhow::Ok((*id, transfer, true)),
            StatusCode::NOT_FOUND => Ok((*id, transfer, false)),
            status => anyhow::bail!("reading transfer {id}: {status}"),
        }
    }));
    let looked_up: Vec<_> = lookups.buffer_unordered(16).collect().await;
    let mut expected = [FUNDING; ACCOUNTS];
    let (mut applied, mut refused) = (0, 0);
    for looked_up in looked_up {
        let (id, transfer, stored) = looked_up?;
        match transfer.outcome {
            Outcome::Applied => anyhow::ensure!(stored, "acknowledged transfer {id} is missing"),
            Outcome::Refused => anyhow::ensure!(!stored, "refused transfer {id} was stored"),
            Outcome::Unknown => anyhow::bail!("transfer {id}: outcome still unknown"),
        }
        if stored {
            applied += 1;
            expected[transfer.from] -= transfer.amount;
            expected[transfer.to] += transfer.amount;
        } else if transfer.outcome == Outcome::Refused {
            refused += 1;
        }
    }
    eprintln!("transfers: {applied} applied, {refused} refused");
    anyhow::ensure!(applied > 100, "too little load to tell: {applied} transfers applied");
    for (index, account) in accounts.iter().enumerate() {
        let read = client.get(format!("{base}/v1/accounts/{account}")).bearer_auth(admin).send().await?;
        let body: serde_json::Value = read.json().await?;
        let available: i64 = body["balance"]["available"].as_str().context("no balance")?.parse()?;
        anyhow::ensure!(
            available == expected[index],
            "account {account} holds {available}, its transfers say {}",
            expected[index]
        );
    }
    let total: i64 = expected.iter().sum();
    anyhow::ensure!(total == FUNDING * ACCOUNTS as i64, "the books do not balance: {total}");
    Ok(())
}
