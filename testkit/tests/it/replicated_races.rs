//! Conditional writes that race on a stream of three replicas, against a
//! real three-server NATS cluster. There the stream's leader refuses a
//! write whose condition names a subject another conditional write is in
//! flight on with a code of its own (10164, "wrong last sequence", no
//! sequence given), where one server answers 10071: the loser must hear
//! that the lease changed, or that the email is taken, as on one server,
//! not that NATS failed (which would fail a start that could simply read
//! again, or answer a sign-up 503).

use std::time::Duration;

use wallet_actors::ids::{NodeId, ShardId};
use wallet_cluster::directory::{DirectoryOptions, SharedDirectory};
use wallet_cluster::journal::fence;
use wallet_cluster::journal::{lease, JournalOptions, JournalStream, LeaseError, Leased, NodeJournal};
use wallet_storage::users::{UserStore, UserStoreError};
use wallet_testkit::nats_cluster::NatsCluster;

use crate::shard_journal::{append_numbered, runtime};
use crate::shared_directory::user;

/// Nodes racing for each shard.
const RACERS: u32 = 4;

/// Shards raced for: enough that the in-flight refusal shows up.
const SHARDS: u16 = 40;

/// Leases of two seconds (node) and three (shard) on three replicas.
fn options(nats: &NatsCluster) -> JournalOptions {
    JournalOptions {
        replicas: 3,
        node_lease_ttl: Duration::from_secs(2),
        shard_lease_ttl: Duration::from_secs(3),
        renew_every: Duration::from_millis(300),
        ack_timeout: Duration::from_millis(1500),
        ..JournalOptions::new(nats.urls())
    }
}

#[test]
fn racing_takes_on_a_replicated_stream_give_one_owner_and_the_others_hear_changed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = NatsCluster::start(dir.path(), 3)?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&nats)).await?;
        let mut journals = Vec::new();
        for node in 1..=RACERS {
            journals.push(NodeJournal::start(stream.clone(), NodeId(node)).await?);
        }
        for shard in (0..SHARDS).map(ShardId) {
            let racers: Vec<_> = journals
                .iter()
                .map(|journal| {
                    let journal = journal.clone();
                    tokio::spawn(async move { journal.take(shard).await })
                })
                .collect();
            let mut owners = Vec::new();
            for racer in racers {
                match racer.await? {
                    Ok(lease) => owners.push(lease.holder.node),
                    Err(LeaseError::Held { .. } | LeaseError::Changed { .. }) => {}
                    Err(error) => anyhow::bail!("a take of {shard:?} that lost a race failed: {error}"),
                }
            }
            anyhow::ensure!(owners.len() == 1, "{shard:?} got owners {owners:?}");
            let (holder, _) = lease::holder(&stream, Leased::Shard(shard))
                .await?
                .ok_or_else(|| anyhow::anyhow!("{shard:?} has no holder"))?;
            anyhow::ensure!(holder.node == owners[0], "the stream names another owner of {shard:?}");
        }
        Ok(())
    })
}

#[test]
fn racing_sign_ups_on_a_replicated_directory_give_one_user_and_the_other_hears_taken() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = NatsCluster::start(dir.path(), 3)?;
    runtime()?.block_on(async {
        let node = || async {
            let options = DirectoryOptions { replicas: 3, ..DirectoryOptions::new(nats.urls()) };
            anyhow::Ok(UserStore::over(SharedDirectory::open(options).await?))
        };
        let (one, two) = (node().await?, node().await?);
        for round in 0..40 {
            let email = format!("race{round}@example.com");
            let (first, second) = (user(&email), user(&email));
            let (a, b) = tokio::join!(one.create(&first), two.create(&second));
            let made = [&a, &b].iter().filter(|outcome| outcome.is_ok()).count();
            let taken =
                [&a, &b].iter().filter(|outcome| matches!(outcome, Err(UserStoreError::EmailTaken))).count();
            anyhow::ensure!(made == 1 && taken == 1, "round {round}: {a:?} and {b:?}");
        }
        Ok(())
    })
}

#[test]
fn stale_evictions_racing_a_nodes_writes_hear_changed_and_the_node_writes_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = NatsCluster::start(dir.path(), 3)?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&nats)).await?;
        let shard = ShardId(3);
        let a = NodeJournal::start(stream.clone(), NodeId(1)).await?;
        a.take(shard).await?;
        // Another node tries to evict A with a stale view of A's node
        // lease, again and again, while A writes: each of A's writes names
        // A's node lease subject, so an eviction that reaches the leader
        // while one is in flight is refused unchecked (10164).
        let holder = a.holder();
        let evictor = {
            let stream = stream.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    match fence::evict(&stream, holder, 1).await {
                        Err(LeaseError::Changed { .. }) => {}
                        other => return Err(anyhow::anyhow!("a stale eviction came to {other:?}")),
                    }
                }
                anyhow::Ok(())
            })
        };
        let (appender, mut outcomes) = append_numbered(&a, shard, 2_000, 1);
        appender.await?;
        for _ in 0..2_000 {
            let (n, outcome) =
                outcomes.recv().await.ok_or_else(|| anyhow::anyhow!("an outcome went missing"))?;
            anyhow::ensure!(outcome.is_ok(), "record {n} failed while evictions were refused: {outcome:?}");
        }
        evictor.await??;
        anyhow::ensure!(!a.fenced() && !a.stopped());
        Ok(())
    })
}
