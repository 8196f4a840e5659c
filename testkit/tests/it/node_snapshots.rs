//! A node's snapshots (`wallet_cluster::node`, "Cluster mode: a node's
//! ledger" in docs/ARCHITECTURE.md): a start replays only the stream after
//! the node's snapshot, memory lets go of what a checkpoint wrote, another
//! node with no snapshot of its own installs the image the first published
//! (or, when it cannot read that whole, finds everything in the stream),
//! snapshots taken from another stream are never read, and a node another
//! node wrote behind takes no snapshot.

use std::collections::BTreeMap;
use std::time::Duration;

use wallet_actors::ids::NodeId;
use wallet_actors::ports::{append_durable, Origin};
use wallet_actors::record::Record;
use wallet_actors::TransferRequest;
use wallet_cluster::journal::{JournalStream, NodeJournal};
use wallet_cluster::node::{NodeLedger, NodeOptions};
use wallet_testkit::nats::NatsServer;
use wallet_testkit::{crash, posted, tid};

use crate::node_ledger::take_a_shard_lease_from;
use crate::shard_journal::{nats, options, runtime};

/// Transfers submitted before the checkpoint.
const BEFORE: u128 = 200;

/// Submits transfers `first..first + count` between the crash test's
/// accounts, each acknowledged, into `acknowledged`.
async fn transfer(
    ledger: &wallet_actors::Ledger,
    first: u128,
    count: u128,
    acknowledged: &mut BTreeMap<u128, TransferRequest>,
) -> anyhow::Result<()> {
    for id in first..first + count {
        let request = posted(id, 1 + id % 8, 1 + (id + 3) % 8, 1);
        anyhow::ensure!(ledger.submit_one(request.clone()).await?.is_ok(), "transfer {id} refused");
        acknowledged.insert(id, request);
    }
    Ok(())
}

#[test]
fn a_node_restarts_from_its_snapshot_and_another_node_from_the_stream() -> anyhow::Result<()> {
    let (root, server) = nats()?;
    let url = server.url();
    let (disk_1, disk_2) = (root.path().join("node-1"), root.path().join("node-2"));
    runtime()?.block_on(async {
        let mut acknowledged = BTreeMap::new();
        let node = crash::open_node(&disk_1, &url, 3_600_000).await?;
        crash::setup(&node.ledger).await?;
        transfer(&node.ledger, 1_000_000, BEFORE, &mut acknowledged).await?;
        node.checkpoint().await?;
        let in_memory = node.ledger.transfers().len();
        anyhow::ensure!(
            in_memory < BEFORE as usize / 10,
            "memory still holds {in_memory} transfers after a checkpoint"
        );
        transfer(&node.ledger, 2_000_000, 10, &mut acknowledged).await?;
        crash::check_books(&node, &acknowledged).await?;
        node.stop_without_checkpoint().await;

        // The same node again: the snapshot, then the stream's tail.
        let node = crash::open_node(&disk_1, &url, 3_600_000).await?;
        let recovery = node.recovery.clone();
        anyhow::ensure!(
            recovery.replayed_from > 0 && recovery.installed_image.is_none(),
            "the restart did not start from its snapshot: {recovery:?}"
        );
        anyhow::ensure!(
            recovery.records < BEFORE as u64 / 2,
            "the restart replayed {} records, not just the tail: {recovery:?}",
            recovery.records
        );
        crash::check_books(&node, &acknowledged).await?;
        transfer(&node.ledger, 3_000_000, 10, &mut acknowledged).await?;
        node.stop_without_checkpoint().await;

        // Another node has no snapshot: it installs node 1's image, and
        // replays the tail after it, node 1's checkpoint markers included.
        let other = crash::open_node_as(NodeId(2), &disk_2, &url, 3_600_000).await?;
        anyhow::ensure!(
            other.recovery.installed_image == Some(recovery.replayed_from)
                && other.recovery.replayed_from == recovery.replayed_from
                && other.recovery.records < BEFORE as u64 / 2,
            "node 2 did not start from node 1's image: {:?}",
            other.recovery
        );
        crash::check_books(&other, &acknowledged).await?;
        // A transfer the image's index holds is known there: sent again, it
        // is answered as before and moves nothing.
        let again = acknowledged.get(&1_000_000).cloned().ok_or_else(|| anyhow::anyhow!("no transfer"))?;
        anyhow::ensure!(other.ledger.submit_one(again).await?.is_ok(), "the image's transfer was refused");
        crash::check_books(&other, &acknowledged).await?;
        other.shutdown().await;
        Ok(())
    })
}

/// A standby installs each newer image while it waits, so its takeover
/// replays only the stream after the newest one and downloads nothing.
#[test]
fn a_standby_installs_images_while_it_waits() -> anyhow::Result<()> {
    let (root, server) = nats()?;
    let url = server.url();
    runtime()?.block_on(async {
        let mut acknowledged = BTreeMap::new();
        // Checkpoints only when asked, so the one image is the one the
        // standby installs while it waits.
        let mut options = crash::node_options(NodeId(1), &root.path().join("node-1"), &url, 3_600_000);
        options.checkpoint.bytes = u64::MAX;
        let node = NodeLedger::open(options).await?;
        crash::setup(&node.ledger).await?;
        let standby_dir = root.path().join("node-2");
        let options =
            NodeOptions { standby: true, ..crash::node_options(NodeId(2), &standby_dir, &url, 3_600_000) };
        let standby = tokio::spawn(NodeLedger::open(options));
        transfer(&node.ledger, 1_000_000, BEFORE, &mut acknowledged).await?;
        node.checkpoint().await?;
        let shipped = standby_dir.join("snapshots").join("shipped.json");
        wallet_testkit::eventually("the standby installs the image", Duration::from_secs(10), || async {
            Ok(shipped.exists())
        })
        .await?;
        transfer(&node.ledger, 2_000_000, 10, &mut acknowledged).await?;
        node.stop_without_checkpoint().await;
        let standby = tokio::time::timeout(Duration::from_secs(30), standby).await???;
        let recovery = standby.recovery.clone();
        anyhow::ensure!(
            recovery.installed_image.is_none()
                && recovery.replayed_from > 0
                && recovery.records < BEFORE as u64 / 2,
            "the standby did not start from the image it installed while waiting: {recovery:?}"
        );
        crash::check_books(&standby, &acknowledged).await?;
        standby.shutdown().await;
        Ok(())
    })
}

/// An image that cannot be read whole (a file of it deleted from the
/// bucket), or whose checkpoint marker is not where it says in the stream
/// (the stream lost messages and was written again since), is passed over:
/// the node replays the stream whole instead.
#[test]
fn a_node_passes_over_an_image_it_cannot_read_whole() -> anyhow::Result<()> {
    passes_over(Damage::FileDeleted)
}

#[test]
fn a_node_passes_over_an_image_whose_marker_is_not_in_the_stream() -> anyhow::Result<()> {
    passes_over(Damage::MarkerElsewhere)
}

enum Damage {
    FileDeleted,
    MarkerElsewhere,
}

fn passes_over(damage: Damage) -> anyhow::Result<()> {
    let (root, server) = nats()?;
    let url = server.url();
    runtime()?.block_on(async {
        let mut acknowledged = BTreeMap::new();
        let mut options = crash::node_options(NodeId(1), &root.path().join("node-1"), &url, 3_600_000);
        options.checkpoint.bytes = u64::MAX;
        let node = NodeLedger::open(options).await?;
        crash::setup(&node.ledger).await?;
        transfer(&node.ledger, 1_000_000, BEFORE, &mut acknowledged).await?;
        node.checkpoint().await?;
        node.stop_without_checkpoint().await;
        let bucket = async_nats::jetstream::new(async_nats::connect(url.as_str()).await?)
            .get_object_store(wallet_cluster::node::SNAPSHOT_BUCKET)
            .await?;
        let objects: Vec<_> = futures_util::TryStreamExt::try_collect(bucket.list().await?).await?;
        let named = |prefix: &str| {
            objects
                .iter()
                .find(|o| o.name.starts_with(prefix) && o.size > 0)
                .map(|o| o.name.clone())
                .ok_or_else(|| anyhow::anyhow!("no {prefix} object in the bucket: {objects:?}"))
        };
        match damage {
            Damage::FileDeleted => bucket.delete(named("file/")?.as_str()).await?,
            Damage::MarkerElsewhere => {
                let name = named("image/")?;
                let mut bytes = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut bucket.get(name.as_str()).await?, &mut bytes)
                    .await?;
                let mut image: serde_json::Value = serde_json::from_slice(&bytes)?;
                image["marker"] = serde_json::json!(1);
                bucket.put(name.as_str(), &mut serde_json::to_vec(&image)?.as_slice()).await?;
            }
        }
        let other = crash::open_node_as(NodeId(2), &root.path().join("node-2"), &url, 3_600_000).await?;
        anyhow::ensure!(
            other.recovery.installed_image.is_none() && other.recovery.replayed_from == 0,
            "node 2 started from a damaged image: {:?}",
            other.recovery
        );
        crash::check_books(&other, &acknowledged).await?;
        other.shutdown().await;
        Ok(())
    })
}

#[test]
fn snapshots_taken_from_another_stream_are_dropped() -> anyhow::Result<()> {
    let (root, first) = nats()?;
    let disk = root.path().join("node-1");
    let runtime = runtime()?;
    runtime.block_on(async {
        let node = crash::open_node(&disk, &first.url(), 3_600_000).await?;
        crash::setup(&node.ledger).await?;
        transfer(&node.ledger, 1_000_000, 1, &mut BTreeMap::new()).await?;
        node.shutdown().await;
        anyhow::Ok(())
    })?;
    drop(first);
    // A server with a store of its own: a new journal stream, in which none
    // of what the snapshot holds ever happened.
    let second = NatsServer::start(&root.path().join("another-nats"))?;
    runtime.block_on(async {
        let node = crash::open_node(&disk, &second.url(), 3_600_000).await?;
        anyhow::ensure!(node.recovery.replayed_from == 0, "a snapshot of another stream was read");
        let account = node.ledger.account(wallet_testkit::account(1)).await?;
        anyhow::ensure!(account.is_none(), "an account of another stream is served");
        anyhow::ensure!(
            node.ledger.transfer(tid(1_000_000)).is_none(),
            "a transfer of another stream is served"
        );
        node.shutdown().await;
        Ok(())
    })
}

#[test]
fn a_node_another_node_wrote_behind_takes_no_snapshot() -> anyhow::Result<()> {
    let (root, server) = nats()?;
    let url = server.url();
    runtime()?.block_on(async {
        let node = crash::open_node(&root.path().join("node-1"), &url, 3_600_000).await?;
        crash::setup(&node.ledger).await?;
        node.checkpoint().await?;
        // Node 1 loses one shard's lease (another holder's lease message
        // lands on it for a second), and node 2 takes the shard and writes
        // it: node 1's shards in memory lack that record from then on.
        let lost = take_a_shard_lease_from(&node, &url, 1).await?;
        let other = NodeJournal::start(JournalStream::connect(options(&server)).await?, NodeId(2)).await?;
        wallet_testkit::eventually("node 2 takes the shard", Duration::from_secs(10), || async {
            Ok(other.take(lost).await.is_ok())
        })
        .await?;
        // Any record will do (an old epoch changes nothing at replay).
        append_durable(&other, Origin::Shard(lost), Record::Epoch(1)).await?;
        // A snapshot of node 1's shards now would say it covers node 2's
        // record, and the next start would skip it.
        let refused = node.checkpoint().await;
        anyhow::ensure!(refused.is_err(), "node 1 took a snapshot behind node 2's write: {refused:?}");
        node.stop_without_checkpoint().await;
        Ok(())
    })
}
