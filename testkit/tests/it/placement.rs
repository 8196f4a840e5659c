//! Shard placement over a real nats-server (`wallet_cluster::placement`):
//! live nodes split the shards evenly, the shards of a node that stops are
//! taken over once its leases expire, and a joining node gets its share by
//! orderly releases; at no moment do two nodes write for one shard.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::Origin;
use wallet_actors::record::Record;
use wallet_cluster::journal::{read_shard, JournalStream, NodeJournal};
use wallet_cluster::placement::{self, PlacementOptions};

use crate::shard_journal::{nats, options, runtime};

const SHARDS: u16 = 12;

/// A node: its journal and its placement loop.
struct Node {
    journal: NodeJournal,
    stop: tokio::sync::watch::Sender<bool>,
    placing: tokio::task::JoinHandle<()>,
}

impl Node {
    async fn start(stream: &JournalStream, id: u32) -> anyhow::Result<Node> {
        let journal = NodeJournal::start(stream.clone(), NodeId(id)).await?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let options = PlacementOptions { shard_count: SHARDS, check_every: Duration::from_millis(100) };
        let placing = placement::spawn(stream.clone(), journal.clone(), options, stopped);
        Ok(Node { journal, stop, placing })
    }

    /// Stops placing and drops the journal: its leases are no longer
    /// renewed, as when the process dies.
    async fn die(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.placing.await?;
        drop(self.journal);
        Ok(())
    }

    fn shards(&self) -> BTreeSet<ShardId> {
        self.journal.shards().into_iter().collect()
    }
}

/// Waits until the nodes hold `counts` shards each, checking all along that
/// no shard is held by two of them; returns how long it took.
async fn until_split(nodes: &[&Node], counts: &[usize]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let held: Vec<BTreeSet<ShardId>> = nodes.iter().map(|node| node.shards()).collect();
        let all: usize = held.iter().map(BTreeSet::len).sum();
        let distinct: BTreeSet<ShardId> = held.iter().flatten().copied().collect();
        anyhow::ensure!(all == distinct.len(), "a shard held twice: {held:?}");
        if held.iter().map(BTreeSet::len).collect::<Vec<_>>() == counts {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(15), "never split as {counts:?}: {held:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Appends records naming `id` to every shard `node` holds, every 2 ms,
/// until `stop` fires (appends for a shard just released are refused).
fn keep_writing(
    node: &Node,
    id: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let journal = node.journal.clone();
    tokio::spawn(async move {
        let mut n = id * 1_000_000_000;
        while !*stop.borrow_and_update() {
            for shard in journal.shards() {
                n += 1;
                journal.append(Origin::Shard(shard), &Record::Epoch(n), Box::new(|_| {}));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

#[test]
fn the_shards_of_a_node_that_dies_are_taken_over_within_seconds() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let (a, b, c) =
            (Node::start(&stream, 1).await?, Node::start(&stream, 2).await?, Node::start(&stream, 3).await?);
        until_split(&[&a, &b, &c], &[4, 4, 4]).await?;
        c.die().await?;
        // Its shard leases expire two seconds after their last renewal.
        let took = until_split(&[&a, &b], &[6, 6]).await?;
        anyhow::ensure!(took < Duration::from_secs(5), "the takeover took {took:?}");
        let owners = placement::owners(&stream, SHARDS).await?;
        anyhow::ensure!(owners.iter().all(|owner| matches!(owner, Some(NodeId(1 | 2)))), "{owners:?}");
        Ok(())
    })
}

#[test]
fn a_joining_node_gets_its_share_by_releases() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let (a, b) = (Node::start(&stream, 1).await?, Node::start(&stream, 2).await?);
        until_split(&[&a, &b], &[6, 6]).await?;
        // Every node keeps writing to the shards it holds, through the
        // handover, records naming it.
        let (stop_writing, writing) = tokio::sync::watch::channel(false);
        let writers: Vec<_> =
            [(&a, 1u64), (&b, 2)].map(|(node, id)| keep_writing(node, id, writing.clone())).into();
        let d = Node::start(&stream, 4).await?;
        let d_writer = keep_writing(&d, 4, writing.clone());
        // Released shards are free at once: no lease has to expire.
        let took = until_split(&[&a, &b, &d], &[4, 4, 4]).await?;
        anyhow::ensure!(took < Duration::from_secs(2), "the handover took {took:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop_writing.send(true);
        for writer in writers.into_iter().chain([d_writer]) {
            writer.await?;
        }
        // In every shard's journal, each node's records come in one run:
        // no node wrote for a shard after another had taken it.
        for shard in (0..SHARDS).map(ShardId) {
            let writers: Vec<u64> = read_shard(&stream, shard, 0)
                .await?
                .into_iter()
                .filter_map(|(_, record)| match record {
                    Record::Epoch(n) => Some(n / 1_000_000_000),
                    _ => None,
                })
                .collect();
            let mut runs: Vec<u64> = writers.clone();
            runs.dedup();
            let distinct: BTreeSet<u64> = runs.iter().copied().collect();
            anyhow::ensure!(runs.len() == distinct.len(), "shard {}: writers interleave: {runs:?}", shard.0);
            anyhow::ensure!(!writers.is_empty(), "shard {} was never written", shard.0);
        }
        Ok(())
    })
}
