//! A node's ledger on the JetStream journal (`wallet_cluster::node`),
//! against a real nats-server: kill -9 of the node under load, again and
//! again, loses no acknowledged transfer, applies none twice, leaves every
//! history whole and the books balanced; and a start of a node superseded by
//! a later one stores nothing more.
//!
//! Kill delays come from a seed, printed at the start (set `CRASH_SEED` to
//! run the same delays again).

use std::collections::BTreeMap;
use std::time::Duration;

use wallet_actors::ids::NodeId;
use wallet_actors::TransferRequest;
use wallet_cluster::node::NodeRecovery;
use wallet_testkit::crash;
use wallet_testkit::{posted, tid};

use crate::shard_journal::{nats, runtime};

const KILLS: u64 = 12;

#[test]
fn a_node_ledger_keeps_every_acknowledged_transfer_across_kill_9() -> anyhow::Result<()> {
    let seed = crash::seed();
    println!("node crash test seed: {seed} (CRASH_SEED={seed} runs the same kill delays)");
    let mut rng = seed | 1;
    let (root, server) = nats()?;
    let url = server.url();
    // Node 1's directory: the child's snapshots, which its next start reads.
    let dir = root.path().join("node-1");
    let child = env!("CARGO_BIN_EXE_wallet-crash-child");
    let runtime = runtime()?;
    let mut acknowledged: BTreeMap<u128, TransferRequest> = BTreeMap::new();
    let (mut loaded_runs, mut completed_commits, mut images_installed) = (0, 0, 0);
    for run in 1..=KILLS {
        let mut process = crash::spawn_child(child, &dir, run, &[(crash::NATS_URL_VAR, &url)])?;
        process.wait_ready(Duration::from_secs(60))?;
        let delay_ms = 50 + crash::next_random(&mut rng) % 500;
        let acks = process
            .kill_after(Duration::from_millis(delay_ms))
            .map_err(|e| e.context(format!("run {run}")))?;
        loaded_runs += u64::from(!acks.is_empty());
        acknowledged.extend(acks.into_iter().map(|request| (request.id().get(), request)));
        // Now and then another node checks: it waits until the killed
        // node's leases expire, and takes the shards over.
        let checker = if run % 4 == 0 { NodeId(2) } else { NodeId(1) };
        let checker_dir = root.path().join(format!("node-{}", checker.0));
        let recovery = runtime.block_on(verify(&url, checker, &checker_dir, &acknowledged, run))?;
        completed_commits += recovery.completed_commits;
        images_installed += u64::from(recovery.installed_image.is_some());
        println!("run {run}: killed after {delay_ms} ms, {recovery:?}");
    }
    println!(
        "{KILLS} kills: {loaded_runs} under load, {completed_commits} commits completed at a restart, {} \
         transfers acknowledged, {images_installed} starts from another node's snapshot image",
        acknowledged.len()
    );
    // Node 2 takes over from the images the killed child published (and
    // node 1 from those node 2 published at its shutdown).
    anyhow::ensure!(images_installed > 0, "no start installed a snapshot image");
    anyhow::ensure!(loaded_runs >= KILLS / 2, "only {loaded_runs} of {KILLS} runs were killed under load");
    anyhow::ensure!(acknowledged.len() > 1_000, "only {} transfers acknowledged", acknowledged.len());
    Ok(())
}

/// Starts `node` (node 1 supersedes the killed start; another waits for
/// its leases to expire), checks the books and a few histories, and stops it
/// cleanly (its leases released, so the next child takes them at once).
async fn verify(
    url: &str,
    node: NodeId,
    dir: &std::path::Path,
    acknowledged: &BTreeMap<u128, TransferRequest>,
    run: u64,
) -> anyhow::Result<NodeRecovery> {
    let node = crash::open_node_as(node, dir, url, 3_600_000).await?;
    let recovery = node.recovery.clone();
    crash::check_books(&node, acknowledged).await.map_err(|e| e.context(format!("run {run}")))?;
    let accounts = node.ledger.accounts().await?;
    let few: Vec<_> = accounts.into_iter().skip((run as usize * 7) % 13).step_by(5).collect();
    crash::check_history(&node, &few).await.map_err(|e| e.context(format!("run {run}")))?;
    node.shutdown().await;
    Ok(recovery)
}

#[test]
fn a_superseded_start_of_a_node_stores_nothing_more() -> anyhow::Result<()> {
    let (root, server) = nats()?;
    let url = server.url();
    // Each start on its own disk: a later start of a node (on another
    // machine, or after its disk was replaced) has no lock to stop it.
    let disk = |name: &str| root.path().join(name);
    runtime()?.block_on(async {
        let first = crash::open_node(&disk("first"), &url, 3_600_000).await?;
        crash::setup(&first.ledger).await?;
        let before = posted(1_000_001, 1, 2, 5);
        anyhow::ensure!(first.ledger.submit_one(before.clone()).await?.is_ok(), "the first start refused");
        // A later start of the same node opens while the first start still
        // runs and takes requests: the server refuses the first's writes
        // from then on, so it acknowledges nothing more. Its writer stalls
        // right before a write past its node lease, as a paused process
        // would, so that no renewal tells it first: only the server's fence
        // refuses the write.
        let late = posted(1_000_002, 3, 4, 7);
        let second = {
            first.journal().stall_next_write(Duration::from_millis(1_500));
            let submitting = tokio::spawn({
                let (ledger, late) = (first.ledger.clone(), late.clone());
                async move { ledger.submit_one(late).await }
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            let second = crash::open_node(&disk("second"), &url, 3_600_000).await?;
            anyhow::ensure!(
                second.ledger.transfer(tid(1_000_001)).is_some(),
                "the later start lost a transfer"
            );
            let answer = submitting.await?;
            anyhow::ensure!(
                !matches!(answer, Ok(Ok(_))),
                "a superseded start acknowledged a transfer: {answer:?}"
            );
            second
        };
        anyhow::ensure!(first.journal().stopped(), "the superseded start's journal did not stop");
        // Nothing of it was stored: a third start does not have it, and
        // the id is still free.
        second.shutdown().await;
        let third = crash::open_node(&disk("second"), &url, 3_600_000).await?;
        anyhow::ensure!(third.ledger.transfer(tid(1_000_002)).is_none(), "a fenced write was stored");
        anyhow::ensure!(third.ledger.submit_one(late).await?.is_ok(), "the id of a refused write is burned");
        let view = third.ledger.account(wallet_testkit::account(3)).await?;
        let debited = view.map(|view| view.account.balances.debits_posted);
        anyhow::ensure!(debited == Some(7), "account 3 was debited {debited:?} (the refused write counted?)");
        third.shutdown().await;
        drop(first);
        Ok(())
    })
}

#[test]
fn a_node_counting_shards_differently_is_refused() -> anyhow::Result<()> {
    use wallet_actors::ids::NodeId;
    use wallet_cluster::journal::StreamError;
    use wallet_cluster::node::{NodeError, NodeLedger, NodeOptions};
    let (root, server) = nats()?;
    runtime()?.block_on(async {
        let first = crash::open_node(&root.path().join("first"), &server.url(), 3_600_000).await?;
        first.shutdown().await;
        let defaults = NodeOptions::new(NodeId(2), server.url(), root.path().join("second"));
        let ledger =
            wallet_actors::LedgerConfig { shard_count: crash::SHARDS * 2, ..defaults.ledger.clone() };
        let refused = NodeLedger::open(NodeOptions { ledger, ..defaults }).await;
        anyhow::ensure!(
            matches!(refused, Err(NodeError::Stream(StreamError::ShardCount { found: crash::SHARDS, .. }))),
            "a node with another shard count opened: {:?}",
            refused.err()
        );
        Ok(())
    })
}

#[test]
fn a_start_that_supersedes_a_node_under_load_has_everything_it_acknowledged() -> anyhow::Result<()> {
    let (root, server) = nats()?;
    let url = server.url();
    let dir = root.path().join("child");
    let child = env!("CARGO_BIN_EXE_wallet-crash-child");
    let runtime = runtime()?;
    let mut acknowledged: BTreeMap<u128, TransferRequest> = BTreeMap::new();
    for run in 1..=3 {
        let mut process = crash::spawn_child(child, &dir, run, &[(crash::NATS_URL_VAR, &url)])?;
        process.wait_ready(Duration::from_secs(60))?;
        std::thread::sleep(Duration::from_millis(300));
        // A later start of the node opens while the child writes: once it
        // holds every lease the server refuses the child's writes, so
        // whatever the child acknowledged is in what the later start read.
        let node = runtime.block_on(crash::open_node(&root.path().join("later"), &url, 3_600_000))?;
        std::thread::sleep(Duration::from_millis(200));
        process.kill()?;
        let (_, acks) = process.acknowledged()?;
        anyhow::ensure!(!acks.is_empty(), "run {run}: the child acknowledged nothing");
        acknowledged.extend(acks.into_iter().map(|request| (request.id().get(), request)));
        runtime.block_on(async {
            crash::check_books(&node, &acknowledged).await.map_err(|e| e.context(format!("run {run}")))?;
            node.shutdown().await;
            anyhow::Ok(())
        })?;
    }
    Ok(())
}

/// Puts another holder's lease message on the lease subject of account 1's
/// shard, living `ttl_s` seconds (an operator, a bug), and waits until
/// `node`'s next renewal finds the shard lost; returns the shard.
pub(crate) async fn take_a_shard_lease_from(
    node: &wallet_cluster::node::NodeLedger,
    url: &str,
    ttl_s: u64,
) -> anyhow::Result<wallet_actors::ids::ShardId> {
    let lost = wallet_testkit::account(1).shard(crash::SHARDS);
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-TTL", ttl_s.to_string().as_str());
    let subject = wallet_cluster::journal::Leased::Shard(lost).subject();
    js.publish_with_headers(subject, headers, "9/1".into()).await?.await?;
    wallet_testkit::eventually("the node drops the shard", Duration::from_secs(5), || async {
        Ok(!node.journal().shards().contains(&lost))
    })
    .await?;
    Ok(lost)
}

#[test]
fn a_node_that_lost_a_shard_lease_takes_it_back_once_it_is_free() -> anyhow::Result<()> {
    use wallet_actors::ports::JournalError;
    use wallet_actors::Failure;
    let (root, server) = nats()?;
    let url = server.url();
    runtime()?.block_on(async {
        let node = crash::open_node(&root.path().join("node-1"), &url, 3_600_000).await?;
        crash::setup(&node.ledger).await?;
        // Another holder's lease message lands on one shard's subject, for
        // two seconds (an operator, a bug): the node's next renewal finds
        // the shard lost, and its writes for it are refused.
        take_a_shard_lease_from(&node, &url, 2).await?;
        // Its shards fail at the next write of that shard; the rebuild takes
        // the lease back once it is free (the other holder never renews).
        for n in 1..=5 {
            let _ = node.ledger.submit_one(posted(2_000_000 + n, 1, 2, 1)).await;
        }
        // Nothing was written for the shard: the failure is mended in
        // process, so the node does not ask to be restarted meanwhile.
        let failure = node.ledger.failure();
        anyhow::ensure!(
            matches!(failure, Some(Failure::Journal(JournalError::NotHeld))),
            "the shards failed with {failure:?}"
        );
        anyhow::ensure!(!node.ledger.needs_restart(), "a lost shard lease asks for a restart");
        wallet_testkit::eventually("the node holds every shard again", Duration::from_secs(20), || async {
            Ok(node.journal().shards().len() == usize::from(crash::SHARDS))
        })
        .await?;
        // And money moves to and from that shard's accounts again.
        for (n, (from, to)) in [(1, 2), (2, 1)].into_iter().enumerate() {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match node.ledger.submit_one(posted(3_000_000 + n as u128, from, to, 1)).await {
                    Ok(Ok(_)) => break,
                    _ if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    other => anyhow::bail!("no transfer from {from} to {to}: {other:?}"),
                }
            }
        }
        node.shutdown().await;
        Ok(())
    })
}
