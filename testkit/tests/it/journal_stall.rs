//! A nats-server that stalls (a slow disk, a paused VM) for longer than a
//! journal write's acknowledgement time-out, but not as long as the node's
//! lease: the writer asks again with the same message id, so the server
//! stores the write once whether or not the first try got there, and the
//! journal goes on. Nothing acknowledged is lost, nothing is stored twice or
//! out of order, and no record fails.

use std::time::Duration;

use wallet_actors::ids::ShardId;
use wallet_cluster::journal::{JournalOptions, JournalStream, NodeJournal};

use crate::shard_journal::{append_numbered, nats, runtime, stored};

const SHARD: ShardId = ShardId(0);
const RECORDS: u64 = 4_000;
/// Longer than the acknowledgement time-out below, well within a lease.
const STALL: Duration = Duration::from_millis(1_100);

#[test]
fn a_server_stalled_past_the_ack_timeout_within_the_lease_stores_each_write_once() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    let server = std::sync::Arc::new(server);
    let options = JournalOptions {
        node_lease_ttl: Duration::from_secs(3),
        shard_lease_ttl: Duration::from_secs(4),
        renew_every: Duration::from_millis(300),
        ack_timeout: Duration::from_millis(500),
        ..JournalOptions::new(server.url())
    };
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options).await?;
        let journal = NodeJournal::start(stream.clone(), wallet_actors::ids::NodeId(1)).await?;
        journal.take(SHARD).await?;
        let (appender, mut outcomes) = append_numbered(&journal, SHARD, RECORDS, 20);
        let mut stall = None;
        for answered in 1..=RECORDS {
            let (n, result) = outcomes.recv().await.ok_or_else(|| anyhow::anyhow!("outcomes ended"))?;
            anyhow::ensure!(result.is_ok(), "record {n} failed: {result:?}");
            if answered == 300 {
                server.signal("-STOP")?;
                let server = server.clone();
                stall = Some(tokio::spawn(async move {
                    tokio::time::sleep(STALL).await;
                    server.signal("-CONT")
                }));
            }
        }
        appender.await?;
        if let Some(stall) = stall {
            stall.await??;
        }
        anyhow::ensure!(!journal.stopped(), "the journal stopped");
        // The stall caught a write: this tested the asking again.
        let retries = journal.stats().retries.load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(retries > 0, "no write was asked again");
        let stored = stored(&stream, SHARD).await?;
        anyhow::ensure!(stored.iter().copied().eq(1..=RECORDS), "stored twice, lost or out of order");
        Ok(())
    })
}
