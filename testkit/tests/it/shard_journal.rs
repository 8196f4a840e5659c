//! Node journals on JetStream fenced by leases (`wallet_cluster::journal`),
//! against a real nats-server: records come back in order once
//! acknowledged, one node at a time holds a shard, a node paused past its
//! lease stores nothing more (the server refuses its write), and a node
//! that lost one shard's lease stops writing for that shard only.

use std::time::{Duration, Instant};

use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::JournalError;
use wallet_actors::record::Record;
use wallet_cluster::journal::{
    lease, read_shard, JournalOptions, JournalStream, LeaseError, Leased, ShardJournal,
};
use wallet_testkit::nats::NatsServer;

const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// Leases of one second (node) and two (shard), renewed every 250 ms.
fn options(server: &NatsServer) -> JournalOptions {
    JournalOptions {
        node_lease_ttl: Duration::from_secs(1),
        shard_lease_ttl: Duration::from_secs(2),
        renew_every: Duration::from_millis(250),
        ack_timeout: Duration::from_secs(2),
        ..JournalOptions::new(server.url())
    }
}

/// Appends `record` and waits for its outcome.
async fn append(journal: &ShardJournal, shard: ShardId, record: Record) -> Result<(), JournalError> {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    journal.append(
        shard,
        &record,
        Box::new(move |result| {
            let _ = sender.send(result);
        }),
    );
    receiver.await.unwrap_or(Err(JournalError::Closed))
}

/// The `Epoch` numbers stored for `shard`, in order (the tests write
/// `Epoch` records as numbered markers).
async fn stored(stream: &JournalStream, shard: ShardId) -> anyhow::Result<Vec<u64>> {
    let records = read_shard(stream, shard, 0).await?;
    records
        .into_iter()
        .map(|(_, record)| match record {
            Record::Epoch(n) => Ok(n),
            other => Err(anyhow::anyhow!("unexpected record {other:?}")),
        })
        .collect()
}

/// Waits until nobody holds `of` (its lease expired).
async fn until_free(stream: &JournalStream, of: Leased) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease::holder(stream, of).await?.is_some() {
        anyhow::ensure!(Instant::now() < deadline, "the lease of {of:?} never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[test]
fn acknowledged_records_come_back_in_order_and_share_messages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(&dir.path().join("nats"))?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let journal = ShardJournal::start(stream.clone(), A).await?;
        let shards = [ShardId(0), ShardId(1), ShardId(2)];
        for shard in shards {
            journal.hold(lease::take(&stream, Leased::Shard(shard), A).await?);
        }
        // Appended without waiting, as shards do: many per batch.
        let mut outcomes = Vec::new();
        for n in 1..=600u64 {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let shard = shards[(n % 3) as usize];
            journal.append(
                shard,
                &Record::Epoch(n),
                Box::new(move |result| {
                    let _ = sender.send(result);
                }),
            );
            outcomes.push(receiver);
        }
        for outcome in outcomes {
            outcome.await??;
        }
        for shard in shards {
            let expected: Vec<u64> = (1..=600u64).filter(|n| shards[(n % 3) as usize] == shard).collect();
            anyhow::ensure!(stored(&stream, shard).await? == expected, "shard {} lost order", shard.0);
        }
        let messages = journal.stats().messages.load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(messages < 600, "{messages} messages for 600 records: no group commit");
        Ok(())
    })
}

#[test]
fn one_node_takes_a_free_lease_and_renewal_keeps_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(&dir.path().join("nats"))?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        // Two nodes race for ten shards: each shard gets exactly one owner.
        let mut winners = 0;
        for shard in (0..10).map(|n| Leased::Shard(ShardId(n))) {
            let (a, b) = tokio::join!(lease::take(&stream, shard, A), lease::take(&stream, shard, B));
            let owners = [a.is_ok(), b.is_ok()].iter().filter(|won| **won).count();
            anyhow::ensure!(owners == 1, "{shard:?} got {owners} owners");
            for lost in [a, b].into_iter().filter_map(Result::err) {
                anyhow::ensure!(
                    matches!(lost, LeaseError::Held { .. } | LeaseError::Changed { .. }),
                    "unexpected {lost}"
                );
            }
            winners += 1;
        }
        anyhow::ensure!(winners == 10);
        // A renews shard 20 (and itself) past twice their leases.
        let shard = Leased::Shard(ShardId(20));
        let journal = ShardJournal::start(stream.clone(), A).await?;
        journal.hold(lease::take(&stream, shard, A).await?);
        tokio::time::sleep(Duration::from_millis(4_500)).await;
        anyhow::ensure!(
            matches!(lease::take(&stream, shard, B).await, Err(LeaseError::Held { by: A, .. })),
            "the renewed lease was lost"
        );
        append(&journal, ShardId(20), Record::Epoch(1)).await?;
        anyhow::ensure!(journal.stats().renewals.load(std::sync::atomic::Ordering::Relaxed) >= 10);
        // The other shards' leases, never renewed, expire.
        until_free(&stream, Leased::Shard(ShardId(0))).await?;
        Ok(())
    })
}

#[test]
fn a_node_paused_past_its_lease_stores_nothing_more() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(&dir.path().join("nats"))?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let shard = ShardId(7);
        let a = ShardJournal::start(stream.clone(), A).await?;
        a.hold(lease::take(&stream, Leased::Shard(shard), A).await?);
        append(&a, shard, Record::Epoch(1)).await?;
        // A is paused (SIGSTOP, a stalled VM) between deciding to write and
        // writing, past its leases; B takes the shard and writes.
        a.stall_next_write(Duration::from_secs(4));
        let (sender, late) = tokio::sync::oneshot::channel();
        a.append(
            shard,
            &Record::Epoch(2),
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
        );
        until_free(&stream, Leased::Shard(shard)).await?;
        anyhow::ensure!(
            lease::holder(&stream, Leased::Node(A)).await?.is_none(),
            "A's lease outlived its shard's"
        );
        let b = ShardJournal::start(stream.clone(), B).await?;
        b.hold(lease::take(&stream, Leased::Shard(shard), B).await?);
        append(&b, shard, Record::Epoch(100)).await?;
        // A wakes up and writes with the lease it had: the server refuses.
        let refused = late.await?;
        anyhow::ensure!(refused == Err(JournalError::Fenced), "the paused node wrote: {refused:?}");
        anyhow::ensure!(a.fenced() && a.shards().is_empty(), "A still counts itself an owner");
        anyhow::ensure!(append(&a, shard, Record::Epoch(3)).await == Err(JournalError::Fenced));
        append(&b, shard, Record::Epoch(101)).await?;
        anyhow::ensure!(stored(&stream, shard).await? == vec![1, 100, 101]);
        Ok(())
    })
}

#[test]
fn a_node_that_lost_one_shard_keeps_writing_the_others() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(&dir.path().join("nats"))?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let (kept, taken) = (ShardId(1), ShardId(2));
        let a = ShardJournal::start(stream.clone(), A).await?;
        a.hold(lease::take(&stream, Leased::Shard(kept), A).await?);
        a.hold(lease::take(&stream, Leased::Shard(taken), A).await?);
        append(&a, kept, Record::Epoch(1)).await?;
        append(&a, taken, Record::Epoch(1)).await?;
        // Another lease message lands on `taken` behind A's back; A's next
        // renewal of all its leases is refused whole, and A finds out which.
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
        js.publish(Leased::Shard(taken).subject(), "2".into()).await?.await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while a.shards() != vec![kept] {
            anyhow::ensure!(Instant::now() < deadline, "A never noticed: {:?}", a.shards());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        anyhow::ensure!(append(&a, taken, Record::Epoch(2)).await == Err(JournalError::Fenced));
        append(&a, kept, Record::Epoch(2)).await?;
        // Its own lease and the kept shard's were renewed again.
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        append(&a, kept, Record::Epoch(3)).await?;
        anyhow::ensure!(!a.fenced());
        anyhow::ensure!(stored(&stream, kept).await? == vec![1, 2, 3]);
        anyhow::ensure!(stored(&stream, taken).await? == vec![1]);
        Ok(())
    })
}

#[test]
fn a_killed_server_loses_no_acknowledged_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = NatsServer::start(&dir.path().join("nats"))?;
    let rt = runtime()?;
    let (acknowledged, failed) = rt.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let journal = ShardJournal::start(stream.clone(), A).await?;
        journal.hold(lease::take(&stream, Leased::Shard(ShardId(3)), A).await?);
        let (sender, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
        let writer = {
            let journal = journal.clone();
            tokio::spawn(async move {
                for n in 1..=20_000u64 {
                    let sender = sender.clone();
                    let on_durable = Box::new(move |result| {
                        let _ = sender.send((n, result));
                    });
                    journal.append(ShardId(3), &Record::Epoch(n), on_durable);
                    if n % 100 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(60)).await;
        server.kill()?;
        writer.await?;
        let (mut acknowledged, mut failed) = (Vec::new(), 0u64);
        while let Some((n, result)) = outcomes.recv().await {
            match result {
                Ok(()) => acknowledged.push(n),
                Err(_) => failed += 1,
            }
            if acknowledged.len() as u64 + failed == 20_000 {
                break;
            }
        }
        anyhow::Ok((acknowledged, failed))
    })?;
    anyhow::ensure!(!acknowledged.is_empty() && failed > 0, "the kill came too early or too late");
    server.restart()?;
    rt.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let stored = stored(&stream, ShardId(3)).await?;
        // Every acknowledged record is there once, in order; what follows
        // (stored, unacknowledged) continues the same sequence.
        anyhow::ensure!(
            stored[..acknowledged.len()] == acknowledged[..],
            "an acknowledged record is missing"
        );
        anyhow::ensure!(
            stored.iter().copied().eq(1..=stored.len() as u64),
            "a record is out of order or doubled"
        );
        Ok(())
    })
}
