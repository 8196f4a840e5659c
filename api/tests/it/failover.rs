//! Kill -9 under load, with three real `wallet node --standby` processes on
//! one real nats-server: of the serving node, again and again (a standby
//! takes over each time, and one that lost the race to another stands by
//! again), and of the nats-server; and a rolling restart of every node. Each time no transfer that got a 2xx is
//! lost or applied twice, every refused one changed nothing, the books
//! balance, and the ledger events on the same server hold every change
//! once, in order.

use std::time::{Duration, Instant};

use crate::cluster_load::Cluster;
use crate::helpers::node_mode;

/// Kills of the serving node per run.
const KILLS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_serving_node_again_and_again_loses_and_repeats_nothing() -> anyhow::Result<()> {
    // It runs nodes whichever pass runs it: once is enough.
    if node_mode() {
        return Ok(());
    }
    let mut cluster = Cluster::start(1).await?;
    let mut takeovers = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let victim = cluster.serving(Duration::from_secs(60)).await?;
        cluster.nodes[victim].signal("-KILL")?;
        let killed = Instant::now();
        tokio::task::block_in_place(|| cluster.nodes[victim].wait())?;
        cluster.serving(Duration::from_secs(60)).await?;
        takeovers.push(killed.elapsed());
        // The killed node comes back and stands by for the new one.
        cluster.restart(victim)?;
    }
    eprintln!("takeovers after kill -9: {takeovers:?}");
    cluster.finish().await
}

/// A rolling restart under load, as an orchestrator rolls out a new
/// version: each node in turn stopped with SIGTERM (it exits 0) and started
/// again, the serving one included, which releases its leases on the way
/// out so that a standby takes over without waiting for them to expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_loses_and_repeats_nothing() -> anyhow::Result<()> {
    if node_mode() {
        return Ok(());
    }
    let mut cluster = Cluster::start(1).await?;
    let mut handovers = Vec::new();
    for index in 0..cluster.nodes.len() {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let serving = cluster.serving(Duration::from_secs(60)).await?;
        let stopping = Instant::now();
        cluster.stop(index, "-TERM")?;
        if index == serving {
            cluster.serving(Duration::from_secs(60)).await?;
            handovers.push(stopping.elapsed());
        }
        cluster.start_again(index)?;
    }
    eprintln!("another node serves {handovers:?} after SIGTERM to the serving one");
    anyhow::ensure!(cluster.restarts == 0, "a node asked for a restart during a rolling restart");
    cluster.finish().await
}

/// kill -9 of the nats-server under load, back 2 s later: the serving
/// node's journal stops on a write whose outcome is unknown, and it asks
/// for a restart (`/healthz` 503), which the test gives it as an
/// orchestrator would; a node serves again, and nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_nats_server_under_load_loses_and_repeats_nothing() -> anyhow::Result<()> {
    if node_mode() {
        return Ok(());
    }
    let mut cluster = Cluster::start(1).await?;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (serving, after) = cluster.kill_nats_server(0).await?;
        eprintln!("node {} serves {after:?} after nats-server was killed", serving + 1);
    }
    cluster.finish().await
}

/// kill -9 under load of one of three nats-servers in one NATS cluster, the
/// streams with three replicas: first the journal stream's leader, then
/// another, each back 2 s later. The other two keep a quorum, a new leader
/// is elected, the serving node's client moves to a live server and its
/// writes are asked again (or it asks for a restart and gets one); nothing
/// is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_of_three_nats_servers_under_load_loses_and_repeats_nothing() -> anyhow::Result<()> {
    if node_mode() {
        return Ok(());
    }
    let mut cluster = Cluster::start(3).await?;
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let leader = journal_leader(&cluster.url).await?;
        let victim = if round == 0 { leader } else { (leader + 1) % 3 };
        let (serving, after) = cluster.kill_nats_server(victim).await?;
        let (node, server, led) = (serving + 1, victim + 1, victim == leader);
        eprintln!(
            "node {node} serves {after:?} after nats-server {server} (journal leader: {led}) was killed"
        );
    }
    cluster.finish().await
}

/// Which of the servers (`wallet-nats-N`, from 0) leads the journal stream.
async fn journal_leader(url: &str) -> anyhow::Result<usize> {
    let client = async_nats::connect(wallet_cluster::nats_servers(url)).await?;
    let mut stream = async_nats::jetstream::new(client).get_stream(wallet_cluster::journal::STREAM).await?;
    let info = stream.info().await?;
    let leader = info.cluster.as_ref().and_then(|cluster| cluster.leader.clone()).unwrap_or_default();
    let number = leader.strip_prefix("wallet-nats-").and_then(|n| n.parse::<usize>().ok());
    number.map(|n| n - 1).ok_or_else(|| anyhow::anyhow!("no journal leader: {leader:?}"))
}
