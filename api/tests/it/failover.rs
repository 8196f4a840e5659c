//! Kill -9 under load, with three real `wallet node --standby` processes on
//! one real nats-server: of the serving node, again and again (a standby
//! takes over each time, and one that lost the race to another stands by
//! again), and of the nats-server. Each time no transfer that got a 2xx is
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
    let mut cluster = Cluster::start().await?;
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

/// kill -9 of the nats-server under load, back 2 s later: the serving
/// node's journal stops on a write whose outcome is unknown, and it asks
/// for a restart (`/healthz` 503), which the test gives it as an
/// orchestrator would; a node serves again, and nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_nats_server_under_load_loses_and_repeats_nothing() -> anyhow::Result<()> {
    if node_mode() {
        return Ok(());
    }
    let mut cluster = Cluster::start().await?;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster.nats.kill()?;
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| cluster.nats.restart())?;
        // A node that asks for a restart gets one.
        let serving = cluster.serving(Duration::from_secs(60)).await?;
        eprintln!("node {} serves {:?} after nats-server was killed", serving + 1, killed.elapsed());
    }
    cluster.finish().await
}
