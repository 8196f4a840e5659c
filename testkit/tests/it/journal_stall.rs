//! A nats-server that stalls (a slow disk, a paused VM) for longer than a
//! journal write's acknowledgement time-out, but not as long as the node's
//! lease: the writer asks again with the same message id, so the server
//! stores the write once whether or not the first try got there, and the
//! journal goes on. Nothing acknowledged is lost, nothing is stored twice or
//! out of order, and no record fails.

use std::process::Command;
use std::time::Duration;

use wallet_actors::ids::ShardId;
use wallet_actors::ports::Origin;
use wallet_actors::record::Record;
use wallet_cluster::journal::{read_shard, JournalOptions, JournalStream, NodeJournal};

use crate::shard_journal::{nats, runtime};

const SHARD: ShardId = ShardId(0);
const RECORDS: u64 = 4_000;
/// Longer than the acknowledgement time-out below, well within a lease.
const STALL: Duration = Duration::from_millis(1_100);

fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
    Ok(())
}

#[test]
fn a_server_stalled_past_the_ack_timeout_within_the_lease_stores_each_write_once() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    let pid = server.pid().ok_or_else(|| anyhow::anyhow!("the server does not run"))?;
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
        let (sender, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
        let appender = {
            let journal = journal.clone();
            tokio::spawn(async move {
                for n in 1..=RECORDS {
                    let sender = sender.clone();
                    let on_durable = Box::new(move |result| {
                        let _ = sender.send((n, result));
                    });
                    journal.append(Origin::Shard(SHARD), &Record::Epoch(n), on_durable);
                    if n % 20 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        };
        let mut stall = None;
        for answered in 1..=RECORDS {
            let (n, result) = outcomes.recv().await.ok_or_else(|| anyhow::anyhow!("outcomes ended"))?;
            anyhow::ensure!(result.is_ok(), "record {n} failed: {result:?}");
            if answered == 300 {
                signal(pid, "-STOP")?;
                stall = Some(tokio::spawn(async move {
                    tokio::time::sleep(STALL).await;
                    signal(pid, "-CONT")
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
        let stored: Vec<u64> = read_shard(&stream, SHARD, 0)
            .await?
            .into_iter()
            .map(|(_, record)| match record {
                Record::Epoch(n) => Ok(n),
                other => Err(anyhow::anyhow!("unexpected record {other:?}")),
            })
            .collect::<anyhow::Result<_>>()?;
        anyhow::ensure!(stored.iter().copied().eq(1..=RECORDS), "stored twice, lost or out of order");
        Ok(())
    })
}
