//! A cluster under load for the failover tests: three real `wallet node
//! --standby` processes on one real nats-server, funded accounts, clients
//! sending transfers over HTTP to whichever node serves (the same id until
//! an answer says what became of it), and the checks at the end.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;
use wallet_actors::events::{EventSide, LedgerEvent};

use crate::event_books::{self, Books};
use crate::helpers::{account_with_deposit, login, Server};
use wallet_testkit::nats_cluster::NatsCluster;

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
    /// 422: refused (insufficient funds), nothing changed.
    Refused,
    /// No definitive answer before the load stopped.
    Unknown,
    /// A 4xx a good request should never get.
    Unexpected(u16),
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

fn start_node(root: &std::path::Path, id: usize, nats: &NatsCluster) -> anyhow::Result<Server> {
    let id = id.to_string();
    let url = nats.urls();
    // As many copies of each stream as there are servers.
    let replicas = nats.servers.len().to_string();
    // One client address and one user send all the load.
    let unlimited = ["--rate-limit-per-second", "--user-rate-limit-per-second"]
        .into_iter()
        .chain(["--rate-limit-burst", "--user-rate-limit-burst"])
        .flat_map(|flag| [flag, "100000"]);
    let mut flags = vec!["--node-id", &id, "--nats-url", &url, "--standby"];
    flags.extend(["--journal-replicas", &replicas, "--events-replicas", &replicas]);
    flags.extend(unlimited);
    Server::start_until(&root.join(format!("node-{id}")), Some(ADMIN_PASSWORD), &flags, "standing by")
}

/// [`start_node`], again after a start that exits (NATS away, or a NATS
/// cluster electing a leader, when it reads its shared directory), as an
/// orchestrator restarts a process that exited; at most 60 s.
fn start_again(root: &std::path::Path, id: usize, nats: &NatsCluster) -> anyhow::Result<Server> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match start_node(root, id, nats) {
            Err(error) if Instant::now() < deadline => {
                eprintln!("node {id} did not start ({error}); starting it again");
                std::thread::sleep(Duration::from_millis(500));
            }
            started => return started,
        }
    }
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
                // Insufficient funds: the only refusal this load meets.
                Ok(StatusCode::UNPROCESSABLE_ENTITY) => return Outcome::Refused,
                // 409 in_flight: an earlier attempt still runs; 429: later.
                Ok(StatusCode::CONFLICT | StatusCode::TOO_MANY_REQUESTS) => {}
                // A node answering 400, 401 or 404 to a good request is a bug.
                Ok(status) if status.is_client_error() => return Outcome::Unexpected(status.as_u16()),
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
        let (account, _) = account_with_deposit(client, base, admin, &FUNDING.to_string()).await?;
        accounts.push(account);
    }
    Ok(accounts)
}

/// Three standbys on one nats-server or a NATS cluster, funded accounts,
/// and clients that send transfers to whichever node serves.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub nats: NatsCluster,
    pub url: String,
    pub nodes: Vec<Server>,
    pub bases: Bases,
    pub client: reqwest::Client,
    admin: String,
    accounts: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<HashMap<Uuid, Sent>>>,
    /// Restarts of nodes that asked for one.
    pub restarts: usize,
}

impl Cluster {
    /// The nodes on `nats_servers` NATS servers (one: a plain server;
    /// three: a NATS cluster, streams with three replicas).
    pub async fn start(nats_servers: usize) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let nats = NatsCluster::start(dir.path(), nats_servers)?;
        let url = nats.urls();
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            nodes.push(start_node(dir.path(), id, &nats)?);
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
        Ok(Cluster { dir, nats, url, nodes, bases, client, admin, accounts, stop, clients, restarts: 0 })
    }

    /// The node that serves, once one does (within `within`); meanwhile a
    /// node that asks for a restart (`/healthz` 503: its journal stopped)
    /// gets one, as an orchestrator's liveness probe would give it.
    pub async fn serving(&mut self, within: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        loop {
            for index in 0..NODES {
                let base = bases_now(&self.bases)[index].clone();
                if needs_restart(&self.client, &base).await {
                    eprintln!("node {} asks for a restart", index + 1);
                    self.restarts += 1;
                    self.restart(index)?;
                }
            }
            if let Ok(index) = serving(&self.client, &self.bases, Duration::ZERO).await {
                return Ok(index);
            }
            anyhow::ensure!(Instant::now() < deadline, "no node serves after {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills -9 nats-server `victim` and starts it again 2 s later; returns
    /// the node that serves then (a node that asks for a restart gets one)
    /// and how long after the kill.
    pub async fn kill_nats_server(&mut self, victim: usize) -> anyhow::Result<(usize, Duration)> {
        self.nats.servers[victim].kill()?;
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| self.nats.servers[victim].restart())?;
        let serving = self.serving(Duration::from_secs(60)).await?;
        Ok((serving, killed.elapsed()))
    }

    /// Kills node `index` (if it runs) and starts it again as a standby.
    pub fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.stop(index, "-KILL")?;
        self.start_again(index)
    }

    /// Stops node `index` with `signal` (if it runs) and waits until it
    /// exited; after SIGTERM it must exit 0.
    pub fn stop(&mut self, index: usize, signal: &str) -> anyhow::Result<()> {
        // Processes block: not on a worker the clients need.
        tokio::task::block_in_place(|| {
            if self.nodes[index].running()? {
                self.nodes[index].signal(signal)?;
                let exit = self.nodes[index].wait()?;
                anyhow::ensure!(
                    signal != "-TERM" || exit.success(),
                    "node {} stopped with {exit}",
                    index + 1
                );
            }
            anyhow::Ok(())
        })
    }

    /// Starts node `index` again as a standby.
    pub fn start_again(&mut self, index: usize) -> anyhow::Result<()> {
        let node = tokio::task::block_in_place(|| start_again(self.dir.path(), index + 1, &self.nats))?;
        self.nodes[index] = node;
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
        // Every node is up: one serves, the others stand by (none exited
        // on losing a race, none left asking for a restart).
        let now = self.serving(Duration::from_secs(60)).await?;
        eprintln!("{} restarts of nodes that asked for one", self.restarts);
        let bases = bases_now(&self.bases);
        for (index, node) in self.nodes.iter_mut().enumerate() {
            anyhow::ensure!(node.running()?, "node {} exited", index + 1);
            let health = self.client.get(format!("{}/healthz", bases[index])).send().await?;
            let health: serde_json::Value = health.json().await?;
            let expected = if index == now { "ok" } else { "standing_by" };
            anyhow::ensure!(health["status"] == expected, "node {}: {health}", index + 1);
        }
        let base = bases[now].clone();
        let stored = check_books(&self.client, &base, &self.admin, &self.accounts, &sent).await?;
        // Events, whichever node published them: each account's once
        // each, in order, up to what the API says, and telling what the
        // stored transfers did.
        let books = Books {
            client: self.client.clone(),
            base,
            user: self.admin.clone(),
            accounts: self.accounts.to_vec(),
        };
        event_books::wait_until_published(&self.url, &books).await?;
        let events = event_books::stream_events(&self.url).await?;
        check_events(&events, &self.accounts, &sent, &stored)
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
) -> anyhow::Result<HashSet<Uuid>> {
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
    let mut stored_ids = HashSet::new();
    for looked_up in looked_up {
        let (id, transfer, stored) = looked_up?;
        match transfer.outcome {
            Outcome::Applied => anyhow::ensure!(stored, "acknowledged transfer {id} is missing"),
            Outcome::Refused => anyhow::ensure!(!stored, "refused transfer {id} was stored"),
            Outcome::Unknown => anyhow::bail!("transfer {id}: outcome still unknown"),
            Outcome::Unexpected(status) => anyhow::bail!("transfer {id} was answered {status}"),
        }
        if stored {
            applied += 1;
            stored_ids.insert(id);
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
    Ok(stored_ids)
}

/// Each account's events tell what happened to it: every transfer event
/// moves `available` by its amount from the event before (no hold is used
/// here), and the transfers they name are the stored ones that touch the
/// account, once each, and its funding deposit.
fn check_events(
    events: &[LedgerEvent],
    accounts: &[String],
    sent: &HashMap<Uuid, Sent>,
    stored: &HashSet<Uuid>,
) -> anyhow::Result<()> {
    for (index, account) in accounts.iter().enumerate() {
        let mut available = 0i64;
        let mut named = HashSet::new();
        for event in events.iter().filter(|event| &event.account_id == account) {
            if let (Some(id), Some(side), Some(amount)) = (&event.transfer_id, &event.side, &event.amount) {
                let amount: i64 = amount.parse()?;
                available += if *side == EventSide::Debit { -amount } else { amount };
                anyhow::ensure!(
                    named.insert(id.clone()),
                    "account {account}: transfer {id} twice in its events"
                );
            }
            let shown: i64 = event.balance.available.parse()?;
            anyhow::ensure!(
                shown == available,
                "account {account}, event {}: balance {shown} where its events sum to {available}",
                event.sequence
            );
        }
        let touching: HashSet<String> = sent
            .iter()
            .filter(|(id, transfer)| stored.contains(id) && (transfer.from == index || transfer.to == index))
            .map(|(id, _)| id.to_string())
            .collect();
        let missing = touching.difference(&named).count();
        anyhow::ensure!(missing == 0, "account {account}: {missing} stored transfers have no event");
        let others: Vec<&String> = named.difference(&touching).collect();
        anyhow::ensure!(others.len() == 1, "account {account}: events of transfers never stored: {others:?}");
    }
    Ok(())
}

/// Whether the node at `base` answers `/healthz` 503: it cannot serve
/// again without a restart.
async fn needs_restart(client: &reqwest::Client, base: &str) -> bool {
    let probe = client.get(format!("{base}/healthz")).timeout(Duration::from_secs(2)).send().await;
    probe.is_ok_and(|reply| reply.status() == StatusCode::SERVICE_UNAVAILABLE)
}
