//! Node journals on JetStream fenced by leases (`wallet_cluster::journal`),
//! against a real nats-server: records come back in order once
//! acknowledged, one node at a time holds a shard, a node paused past its
//! lease or superseded by a later start of itself stores nothing more (the
//! server refuses its write), a renewal whose answer was lost is not taken
//! for a loss, and a node that lost one shard's lease stops writing for that
//! shard only. Fencing another node's start for good is in `fencing`.

use std::time::{Duration, Instant};

use wallet_actors::ids::{NodeId, ShardId};
use wallet_actors::ports::{JournalError, Origin};
use wallet_actors::record::Record;
use wallet_cluster::journal::{
    lease, read_shard, Holder, JournalOptions, JournalStream, LeaseError, Leased, NodeJournal,
};
use wallet_testkit::nats::NatsServer;

pub(crate) const A: NodeId = NodeId(1);
pub(crate) const B: NodeId = NodeId(2);

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// A nats-server on a store of its own, in a directory the test may use too.
pub(crate) fn nats() -> anyhow::Result<(tempfile::TempDir, NatsServer)> {
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(&dir.path().join("nats"))?;
    Ok((dir, server))
}

/// A start of `node`'s journal that holds `shard`'s lease.
pub(crate) async fn holding(
    stream: &JournalStream,
    node: NodeId,
    shard: ShardId,
) -> anyhow::Result<NodeJournal> {
    let journal = NodeJournal::start(stream.clone(), node).await?;
    journal.take(shard).await?;
    Ok(journal)
}

/// Leases of one second (node) and two (shard), renewed every 200 ms.
pub(crate) fn options(server: &NatsServer) -> JournalOptions {
    JournalOptions {
        node_lease_ttl: Duration::from_secs(1),
        shard_lease_ttl: Duration::from_secs(2),
        renew_every: Duration::from_millis(200),
        ack_timeout: Duration::from_millis(700),
        ..JournalOptions::new(server.url())
    }
}

/// A callback that sends its outcome.
pub(crate) fn outcome(
) -> (wallet_actors::ports::OnDurable, tokio::sync::oneshot::Receiver<Result<(), JournalError>>) {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let on_durable = Box::new(move |result| {
        let _ = sender.send(result);
    });
    (on_durable, receiver)
}

/// Appends `record` and waits for its outcome.
pub(crate) async fn append(
    journal: &NodeJournal,
    shard: ShardId,
    record: Record,
) -> Result<(), JournalError> {
    let (on_durable, receiver) = outcome();
    journal.append(Origin::Shard(shard), &record, on_durable);
    receiver.await.unwrap_or(Err(JournalError::Closed))
}

/// The `Epoch` numbers stored for `shard`, in order (the tests write
/// `Epoch` records as numbered markers).
pub(crate) async fn stored(stream: &JournalStream, shard: ShardId) -> anyhow::Result<Vec<u64>> {
    let records = read_shard(stream, shard, 0).await?;
    records
        .into_iter()
        .map(|(_, record)| match record {
            Record::Epoch(n) => Ok(n),
            other => Err(anyhow::anyhow!("unexpected record {other:?}")),
        })
        .collect()
}

/// The outcome of each numbered record, as it comes.
pub(crate) type Outcomes = tokio::sync::mpsc::UnboundedReceiver<(u64, Result<(), JournalError>)>;

/// Appends `Epoch(1..=records)` for `shard` from a task of its own, as a
/// shard under load does (a millisecond's pause every `pause_every`).
pub(crate) fn append_numbered(
    journal: &NodeJournal,
    shard: ShardId,
    records: u64,
    pause_every: u64,
) -> (tokio::task::JoinHandle<()>, Outcomes) {
    let (sender, outcomes) = tokio::sync::mpsc::unbounded_channel();
    let journal = journal.clone();
    let appender = tokio::spawn(async move {
        for n in 1..=records {
            let sender = sender.clone();
            let on_durable = Box::new(move |result| {
                let _ = sender.send((n, result));
            });
            journal.append(Origin::Shard(shard), &Record::Epoch(n), on_durable);
            if n % pause_every == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
    (appender, outcomes)
}

/// Waits until nobody holds `of` (its lease expired).
pub(crate) async fn until_free(stream: &JournalStream, of: Leased) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease::holder(stream, of).await?.is_some() {
        anyhow::ensure!(Instant::now() < deadline, "the lease of {of:?} never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until `done` holds.
pub(crate) async fn until(what: &str, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        anyhow::ensure!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[test]
fn acknowledged_records_come_back_in_order_and_share_messages() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let journal = NodeJournal::start(stream.clone(), A).await?;
        let shards = [ShardId(0), ShardId(1), ShardId(2)];
        for shard in shards {
            journal.take(shard).await?;
        }
        // Appended without waiting, as shards do: many per batch.
        let mut outcomes = Vec::new();
        for n in 1..=600u64 {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let shard = shards[(n % 3) as usize];
            journal.append(
                Origin::Shard(shard),
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
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        // Two live nodes race for ten shards, each from a task of its own:
        // each shard gets exactly one owner.
        let journal = NodeJournal::start(stream.clone(), A).await?;
        let rival_journal = NodeJournal::start(stream.clone(), B).await?;
        for shard in (0..10).map(ShardId) {
            let racers = [&journal, &rival_journal].map(|racer| {
                let racer = racer.clone();
                tokio::spawn(async move { racer.take(shard).await })
            });
            let mut owners = Vec::new();
            for racer in racers {
                match racer.await? {
                    Ok(lease) => owners.push(lease.holder.node),
                    Err(LeaseError::Held { .. } | LeaseError::Changed { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            anyhow::ensure!(owners.len() == 1, "{shard:?} got owners {owners:?}");
            let (holder, _) = lease::holder(&stream, Leased::Shard(shard))
                .await?
                .ok_or_else(|| anyhow::anyhow!("no holder"))?;
            anyhow::ensure!(holder.node == owners[0], "the stream names another owner");
        }
        // A renews shard 20 (and itself) past twice their leases.
        journal.take(ShardId(20)).await?;
        let renewals = journal.stats();
        let at = Instant::now();
        until("four seconds of renewals", || at.elapsed() > Duration::from_secs(4)).await?;
        let shard = Leased::Shard(ShardId(20));
        let rival = Holder { node: B, incarnation: 1 };
        anyhow::ensure!(
            matches!(lease::take(&stream, shard, rival).await, Err(LeaseError::Held { by: A, .. })),
            "the renewed lease was lost"
        );
        append(&journal, ShardId(20), Record::Epoch(1)).await?;
        anyhow::ensure!(renewals.renewals.load(std::sync::atomic::Ordering::Relaxed) >= 10);
        Ok(())
    })
}

#[test]
fn a_node_paused_past_its_lease_stores_nothing_more() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let shard = ShardId(7);
        let a = holding(&stream, A, shard).await?;
        append(&a, shard, Record::Epoch(1)).await?;
        // A is paused (SIGSTOP, a stalled VM) between deciding to write and
        // writing, past its leases; B takes the shard and writes.
        a.stall_next_write(Duration::from_secs(4));
        let (on_durable, late) = outcome();
        a.append(Origin::Shard(shard), &Record::Epoch(2), on_durable);
        until_free(&stream, Leased::Shard(shard)).await?;
        anyhow::ensure!(
            lease::holder(&stream, Leased::Node(A)).await?.is_none(),
            "A's lease outlived its shard's"
        );
        let b = holding(&stream, B, shard).await?;
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
fn a_later_start_of_a_node_fences_the_earlier_one() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let shard = ShardId(5);
        let first = holding(&stream, A, shard).await?;
        append(&first, shard, Record::Epoch(1)).await?;
        // The first start stalls right before a write; meanwhile the node
        // restarts (or is started twice) while the first's leases live.
        first.stall_next_write(Duration::from_millis(500));
        let (on_durable, stalled) = outcome();
        first.append(Origin::Shard(shard), &Record::Epoch(2), on_durable);
        let second = holding(&stream, A, shard).await?;
        append(&second, shard, Record::Epoch(10)).await?;
        // The stalled write goes with the lease the first start had: the
        // server refuses it, and the first start does not take the newer
        // lease message, of another start, for its own.
        let refused = stalled.await?;
        anyhow::ensure!(refused == Err(JournalError::Fenced), "the earlier start wrote: {refused:?}");
        anyhow::ensure!(first.fenced() && !second.fenced());
        append(&second, shard, Record::Epoch(11)).await?;
        // A third start; the second finds out at its next renewal, before
        // it writes again.
        let third = NodeJournal::start(stream.clone(), A).await?;
        until("the second start finds itself superseded", || second.fenced()).await?;
        anyhow::ensure!(append(&second, shard, Record::Epoch(12)).await == Err(JournalError::Fenced));
        third.take(shard).await?;
        append(&third, shard, Record::Epoch(20)).await?;
        anyhow::ensure!(stored(&stream, shard).await? == vec![1, 10, 11, 20]);
        Ok(())
    })
}

#[test]
fn a_renewal_whose_answer_was_lost_is_not_taken_for_a_loss() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let shard = ShardId(4);
        let a = holding(&stream, A, shard).await?;
        append(&a, shard, Record::Epoch(1)).await?;
        // A renewal of this very start landed, but its answer never came:
        // the stream holds a newer lease message than the writer knows.
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
        let mut headers = async_nats::HeaderMap::new();
        let known = a.node_lease().ok_or_else(|| anyhow::anyhow!("no node lease"))?;
        headers.insert("Nats-Expected-Last-Subject-Sequence", known.sequence.to_string().as_str());
        headers.insert("Nats-TTL", "1");
        let holder = a.holder();
        let payload = format!("{}/{}", holder.node.0, holder.incarnation);
        js.publish_with_headers(Leased::Node(A).subject(), headers, payload.into()).await?.await?;
        // The next renewal is refused; reading the leases back, the writer
        // adopts the newer message of its own start and renews again.
        let stats = a.stats();
        let renewals = stats.renewals.load(std::sync::atomic::Ordering::Relaxed);
        until("a renewal after the refused one", || {
            stats.renewals.load(std::sync::atomic::Ordering::Relaxed) > renewals
        })
        .await?;
        anyhow::ensure!(!a.fenced(), "the writer took its own renewal for a loss");
        append(&a, shard, Record::Epoch(2)).await?;
        anyhow::ensure!(!a.fenced());
        append(&a, shard, Record::Epoch(3)).await?;
        anyhow::ensure!(stored(&stream, shard).await? == vec![1, 2, 3]);
        Ok(())
    })
}

#[test]
fn a_node_that_lost_one_shard_keeps_writing_the_others() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let (kept, taken) = (ShardId(1), ShardId(2));
        let a = holding(&stream, A, kept).await?;
        a.take(taken).await?;
        append(&a, kept, Record::Epoch(1)).await?;
        append(&a, taken, Record::Epoch(1)).await?;
        // Another lease message lands on `taken` behind A's back (an
        // operator, a bug: the protocol itself lets a shard lease go only
        // after the node lease renewed with it). A's next renewal of all
        // its leases is refused whole, and A finds out which was lost.
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
        js.publish(Leased::Shard(taken).subject(), "2/1".into()).await?.await?;
        until("A drops the lost shard", || a.shards() == vec![kept]).await?;
        anyhow::ensure!(append(&a, taken, Record::Epoch(2)).await == Err(JournalError::NotHeld));
        append(&a, kept, Record::Epoch(2)).await?;
        // Its own lease and the kept shard's go on being renewed.
        let renewals = a.stats();
        let before = renewals.renewals.load(std::sync::atomic::Ordering::Relaxed);
        until("more renewals", || renewals.renewals.load(std::sync::atomic::Ordering::Relaxed) > before + 5)
            .await?;
        append(&a, kept, Record::Epoch(3)).await?;
        anyhow::ensure!(!a.fenced());
        anyhow::ensure!(stored(&stream, kept).await? == vec![1, 2, 3]);
        anyhow::ensure!(stored(&stream, taken).await? == vec![1]);
        Ok(())
    })
}

#[test]
fn callbacks_run_in_append_order_and_records_for_shards_not_held_are_refused() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let (held, not_held) = (ShardId(1), ShardId(9));
        let a = holding(&stream, A, held).await?;
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut outcomes = Vec::new();
        for n in 0..300u64 {
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let order = order.clone();
            let on_durable = Box::new(move |result: Result<(), JournalError>| {
                order.lock().map(|mut order| order.push(n)).ok();
                let _ = sender.send(result);
            });
            match n % 10 {
                3 => a.append(Origin::Shard(not_held), &Record::Epoch(n), on_durable),
                7 => a.when_durable(on_durable),
                _ => a.append(Origin::Shard(held), &Record::Epoch(n), on_durable),
            }
            outcomes.push((n, receiver));
        }
        for (n, receiver) in outcomes {
            // A barrier covers the node's own records: one for a shard it
            // does not hold was never its to write, and fails alone.
            let expected = if n % 10 == 3 { Err(JournalError::NotHeld) } else { Ok(()) };
            anyhow::ensure!(receiver.await? == expected, "record {n}");
        }
        let order = order.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        anyhow::ensure!(order == (0..300).collect::<Vec<_>>(), "callbacks out of order: {order:?}");
        let kept: Vec<u64> = (0..300).filter(|n| n % 10 != 3 && n % 10 != 7).collect();
        anyhow::ensure!(stored(&stream, held).await? == kept);
        Ok(())
    })
}

#[test]
fn a_flush_larger_than_a_message_is_cut_at_its_records_and_renewals_go_on_under_a_backlog(
) -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let options = JournalOptions { message_bytes_max: 512, ..options(&server) };
        let stream = JournalStream::connect(options).await?;
        let shard = ShardId(6);
        let a = holding(&stream, A, shard).await?;
        // One outbox flush of 500 records, about 7 KB: cut into messages.
        append(&a, shard, Record::Batch((1..=500).map(Record::Epoch).collect())).await?;
        anyhow::ensure!(stored(&stream, shard).await? == (1..=500).collect::<Vec<_>>());
        let messages = a.stats().messages.load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(messages >= 12, "{messages} messages for a 7 KB flush of 512-byte messages");
        // A backlog of small messages written back to back for longer than
        // the one-second node lease: renewals must not wait for it to drain.
        let started = Instant::now();
        let mut outcomes = Vec::new();
        for n in 1_000..121_000u64 {
            let (on_durable, receiver) = outcome();
            a.append(Origin::Shard(shard), &Record::Epoch(n), on_durable);
            outcomes.push(receiver);
        }
        for receiver in outcomes {
            receiver.await??;
        }
        anyhow::ensure!(!a.fenced());
        anyhow::ensure!(started.elapsed() > Duration::from_secs(1), "the backlog drained too fast to tell");
        Ok(())
    })
}

#[test]
fn options_that_cannot_keep_the_fence_are_refused() -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let url = "nats://127.0.0.1:1";
        let base = JournalOptions::new(url);
        for (bad, what) in [
            (
                JournalOptions { node_lease_ttl: Duration::from_secs(3), ..base.clone() },
                "node lease not shorter",
            ),
            (
                JournalOptions { node_lease_ttl: Duration::from_millis(1500), ..base.clone() },
                "not whole seconds",
            ),
            (JournalOptions { renew_every: Duration::ZERO, ..base.clone() }, "no renewals"),
            (
                JournalOptions { ack_timeout: Duration::from_secs(2), ..base.clone() },
                "acks longer than a lease",
            ),
        ] {
            let refused = JournalStream::connect(bad).await;
            anyhow::ensure!(
                matches!(refused, Err(wallet_cluster::journal::StreamError::Options(_))),
                "{what}: {:?}",
                refused.err()
            );
        }
        Ok(())
    })
}

#[test]
fn an_unreadable_shard_lease_drops_the_shard_not_the_node() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let (kept, garbled) = (ShardId(1), ShardId(2));
        let a = holding(&stream, A, kept).await?;
        a.take(garbled).await?;
        let js = async_nats::jetstream::new(async_nats::connect(server.url()).await?);
        js.publish(Leased::Shard(garbled).subject(), "not a holder".into()).await?.await?;
        until("A drops the garbled shard", || a.shards() == vec![kept]).await?;
        append(&a, kept, Record::Epoch(1)).await?;
        anyhow::ensure!(!a.fenced());
        anyhow::ensure!(append(&a, garbled, Record::Epoch(1)).await == Err(JournalError::NotHeld));
        Ok(())
    })
}

#[test]
fn a_released_shard_is_taken_at_once_after_what_was_appended_before() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let shard = ShardId(8);
        let a = holding(&stream, A, shard).await?;
        let mut before = Vec::new();
        for n in 1..=50u64 {
            let (on_durable, receiver) = outcome();
            a.append(Origin::Shard(shard), &Record::Epoch(n), on_durable);
            before.push(receiver);
        }
        a.release(shard).await;
        let released = match lease::state(&stream, Leased::Shard(shard)).await? {
            wallet_cluster::journal::LeaseState::Released { sequence } => sequence,
            other => anyhow::bail!("not released: {other:?}"),
        };
        for receiver in before {
            receiver.await??;
        }
        // What was appended before the release was stored before it.
        let records = read_shard(&stream, shard, 0).await?;
        anyhow::ensure!(
            records.len() == 50 && records.iter().all(|(at, _)| *at < released),
            "stored after the release"
        );
        anyhow::ensure!(append(&a, shard, Record::Epoch(51)).await == Err(JournalError::NotHeld));
        // No lease to wait out: B takes the shard at once.
        let b = NodeJournal::start(stream.clone(), B).await?;
        let started = Instant::now();
        b.take(shard).await?;
        anyhow::ensure!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
        append(&b, shard, Record::Epoch(100)).await?;
        let expected: Vec<u64> = (1..=50).chain([100]).collect();
        anyhow::ensure!(stored(&stream, shard).await? == expected);
        anyhow::ensure!(!a.fenced(), "a release is not a loss");
        Ok(())
    })
}

#[test]
fn a_killed_server_loses_no_acknowledged_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = NatsServer::start(&dir.path().join("nats"))?;
    let rt = runtime()?;
    const RECORDS: u64 = 20_000;
    let acknowledged = rt.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let journal = NodeJournal::start(stream.clone(), A).await?;
        journal.take(ShardId(3)).await?;
        let (appender, mut outcomes) = append_numbered(&journal, ShardId(3), RECORDS, 100);
        // Kill the server once some records are acknowledged, mid-stream.
        let (mut acknowledged, mut answered) = (Vec::new(), 0u64);
        while let Some((n, result)) = outcomes.recv().await {
            answered += 1;
            if result.is_ok() {
                anyhow::ensure!(
                    acknowledged.len() as u64 + 1 == answered,
                    "an acknowledgement after a failure"
                );
                acknowledged.push(n);
                if acknowledged.len() == 300 {
                    server.kill()?;
                }
            }
            if answered == RECORDS {
                break;
            }
        }
        appender.await?;
        anyhow::Ok(acknowledged)
    })?;
    anyhow::ensure!((300..RECORDS as usize).contains(&acknowledged.len()), "the kill came too late");
    server.restart()?;
    rt.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let stored = stored(&stream, ShardId(3)).await?;
        // Every acknowledged record is there once, in order; what follows
        // (stored, unacknowledged) continues the same sequence.
        anyhow::ensure!(stored.starts_with(&acknowledged), "an acknowledged record is missing");
        anyhow::ensure!(
            stored.iter().copied().eq(1..=stored.len() as u64),
            "a record is out of order or doubled"
        );
        Ok(())
    })
}
