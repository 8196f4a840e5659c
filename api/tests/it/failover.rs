//! Kill -9 under load, with three real `wallet node --standby` processes on
//! one real nats-server: of the serving node, again and again (a standby
//! takes over each time, and one that lost the race to another stands by
//! again), and of the nats-server. Each time no transfer that got a 2xx is
//! lost or applied twice, every refused one changed nothing, the books
//! balance, and the ledger events on the same server hold every change
//! once, in order.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::cluster_load::{bases_now, serving, Cluster, NODES};

/// Kills of the serving node per run.
const KILLS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_serving_node_again_and_again_loses_and_repeats_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let mut takeovers = Vec::new();
    for _ in 0..KILLS {
        tokio::time::sleep(Duration::from_secs(6)).await;
        let victim = cluster.serving().await?;
        cluster.nodes[victim].signal("-KILL")?;
        let killed = Instant::now();
        tokio::task::block_in_place(|| cluster.nodes[victim].wait())?;
        let next = cluster.serving().await?;
        takeovers.push(killed.elapsed());
        anyhow::ensure!(next != victim, "the killed node serves");
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
    let mut cluster = Cluster::start().await?;
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        cluster.nats.kill()?;
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        tokio::task::block_in_place(|| cluster.nats.restart())?;
        // A node that asks for a restart gets one.
        let deadline = Instant::now() + Duration::from_secs(30);
        let serving = loop {
            for index in 0..NODES {
                if needs_restart(&cluster.client, &bases_now(&cluster.bases)[index]).await {
                    eprintln!("node {} asks for a restart", index + 1);
                    cluster.restart(index)?;
                }
            }
            if let Ok(index) = serving(&cluster.client, &cluster.bases, Duration::ZERO).await {
                break index;
            }
            anyhow::ensure!(Instant::now() < deadline, "no node serves 30 s after NATS came back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        eprintln!("node {} serves {:?} after nats-server was killed", serving + 1, killed.elapsed());
    }
    cluster.finish().await
}

/// Whether the node at `base` answers `/healthz` 503: it cannot serve
/// again without a restart.
async fn needs_restart(client: &reqwest::Client, base: &str) -> bool {
    let probe = client.get(format!("{base}/healthz")).timeout(Duration::from_secs(2)).send().await;
    probe.is_ok_and(|reply| reply.status() == StatusCode::SERVICE_UNAVAILABLE)
}
