//! Fencing a start of another node for good (`wallet_cluster::journal::fence`),
//! against a real nats-server: a shard whose holder is fenced is taken
//! without waiting for its lease to expire, an evicted start stores
//! nothing more, a later start of a node keeps the shards of the earlier
//! one, and a shard whose lease expired is taken only once every node
//! whose node lease expired is evicted (an expiry on the stream's leader
//! may not have happened on every replica; an eviction, a message, has).

use std::time::Duration;

use wallet_actors::ids::ShardId;
use wallet_actors::ports::{JournalError, Origin};
use wallet_actors::record::Record;
use wallet_cluster::journal::fence::{self, Fence};
use wallet_cluster::journal::{
    lease, JournalOptions, JournalStream, LeaseError, LeaseState, Leased, NodeJournal,
};

use crate::shard_journal::{
    append, holding, nats, options, outcome, runtime, stored, until, until_free, A, B,
};

#[test]
fn a_shard_whose_holder_is_fenced_is_taken_before_its_lease_expires() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        // Shard leases outlive node leases by four seconds here, so the
        // take below happens while A's shard lease surely still lives.
        let options = JournalOptions { shard_lease_ttl: Duration::from_secs(5), ..options(&server) };
        let stream = JournalStream::connect(options).await?;
        let shard = ShardId(9);
        let a = holding(&stream, A, shard).await?;
        append(&a, shard, Record::Epoch(1)).await?;
        // While A lives, its shard is A's.
        let rival = NodeJournal::start(stream.clone(), B).await?;
        anyhow::ensure!(
            matches!(rival.take(shard).await, Err(LeaseError::Held { by: A, .. })),
            "a live node's shard was taken"
        );
        // A stalls (a pause, a death) before a write, renewing nothing.
        a.stall_next_write(Duration::from_secs(3));
        let (on_durable, late) = outcome();
        a.append(Origin::Shard(shard), &Record::Epoch(2), on_durable);
        until_free(&stream, Leased::Node(A)).await?;
        let (holder, _) = lease::holder(&stream, Leased::Shard(shard))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no holder"))?;
        anyhow::ensure!(holder.node == A, "A's shard lease expired already: the test proves nothing");
        // A's node lease is gone, so A is fenced: B evicts it (settling
        // that on every replica) and takes the shard at once.
        rival.take(shard).await?;
        anyhow::ensure!(
            matches!(lease::state(&stream, Leased::Node(A)).await?, LeaseState::Released { .. }),
            "A's node lease was not evicted"
        );
        append(&rival, shard, Record::Epoch(100)).await?;
        let refused = late.await?;
        anyhow::ensure!(refused == Err(JournalError::Fenced), "the fenced node wrote: {refused:?}");
        anyhow::ensure!(append(&a, shard, Record::Epoch(3)).await == Err(JournalError::Fenced));
        append(&rival, shard, Record::Epoch(101)).await?;
        anyhow::ensure!(stored(&stream, shard).await? == vec![1, 100, 101]);
        Ok(())
    })
}

#[test]
fn an_evicted_start_is_fenced_and_a_renewing_one_cannot_be_evicted() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        // Leases far longer than the test: only the eviction ends A's.
        let options = JournalOptions {
            node_lease_ttl: Duration::from_secs(30),
            shard_lease_ttl: Duration::from_secs(31),
            ..options(&server)
        };
        let stream = JournalStream::connect(options).await?;
        let shard = ShardId(11);
        let a = holding(&stream, A, shard).await?;
        append(&a, shard, Record::Epoch(1)).await?;
        let node_lease = |stream: JournalStream| async move {
            lease::holder(&stream, Leased::Node(A)).await?.ok_or_else(|| anyhow::anyhow!("A holds no lease"))
        };
        // A renews: the message seen before is not the last any more, and
        // an eviction naming it is refused.
        let (holder, seen) = node_lease(stream.clone()).await?;
        until("A renews", || a.node_lease().is_some_and(|lease| lease.sequence > seen)).await?;
        anyhow::ensure!(
            matches!(fence::evict(&stream, holder, seen).await, Err(LeaseError::Changed { .. })),
            "a renewing start was evicted"
        );
        let (_, shard_sequence) = lease::holder(&stream, Leased::Shard(shard))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no holder"))?;
        anyhow::ensure!(!a.fenced());
        anyhow::ensure!(matches!(
            fence::fence(&stream, holder, shard_sequence).await?,
            Fence::Leasing { .. }
        ));
        // A stalls before a write; its last node lease message is evicted.
        a.stall_next_write(Duration::from_secs(2));
        let (on_durable, late) = outcome();
        a.append(Origin::Shard(shard), &Record::Epoch(2), on_durable);
        // (A renewal sent just before the stall may land after the read:
        // the eviction is refused then, and read again.)
        let mut evicted = None;
        for _ in 0..10 {
            let (holder, last) = node_lease(stream.clone()).await?;
            match fence::evict(&stream, holder, last).await {
                Ok(()) => {
                    evicted = Some(holder);
                    break;
                }
                Err(LeaseError::Changed { .. }) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(error) => return Err(error.into()),
            }
        }
        let holder = evicted.ok_or_else(|| anyhow::anyhow!("A's node lease was never evicted"))?;
        let (_, shard_sequence) = lease::holder(&stream, Leased::Shard(shard))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no holder"))?;
        anyhow::ensure!(fence::fence(&stream, holder, shard_sequence).await? == Fence::Fenced);
        let b = holding(&stream, B, shard).await?;
        append(&b, shard, Record::Epoch(100)).await?;
        let refused = late.await?;
        anyhow::ensure!(refused == Err(JournalError::Fenced), "the evicted start wrote: {refused:?}");
        anyhow::ensure!(a.fenced());
        anyhow::ensure!(stored(&stream, shard).await? == vec![1, 100]);
        Ok(())
    })
}

#[test]
fn the_shards_of_a_superseded_start_wait_for_the_later_start_of_its_node() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let shard = ShardId(12);
        let first = holding(&stream, A, shard).await?;
        append(&first, shard, Record::Epoch(1)).await?;
        // A restarts: the later start holds A's node lease, the shard lease
        // is still the earlier start's. Another node does not take it: the
        // later start of A takes its shards back.
        let second = NodeJournal::start(stream.clone(), A).await?;
        let rival = NodeJournal::start(stream.clone(), B).await?;
        anyhow::ensure!(
            matches!(rival.take(shard).await, Err(LeaseError::Held { by: A, .. })),
            "another node took a restarted node's shard"
        );
        second.take(shard).await?;
        append(&second, shard, Record::Epoch(2)).await?;
        anyhow::ensure!(stored(&stream, shard).await? == vec![1, 2]);
        Ok(())
    })
}

#[test]
fn a_shard_whose_lease_expired_is_taken_after_the_expired_node_leases_are_evicted() -> anyhow::Result<()> {
    let (_dir, server) = nats()?;
    runtime()?.block_on(async {
        let stream = JournalStream::connect(options(&server)).await?;
        let shard = ShardId(13);
        let a = holding(&stream, A, shard).await?;
        append(&a, shard, Record::Epoch(1)).await?;
        // A stalls before a write until both its leases expired: its
        // shard's lease subject is empty and names nobody.
        a.stall_next_write(Duration::from_secs(4));
        let (on_durable, late) = outcome();
        a.append(Origin::Shard(shard), &Record::Epoch(2), on_durable);
        until_free(&stream, Leased::Shard(shard)).await?;
        anyhow::ensure!(lease::state(&stream, Leased::Node(A)).await? == LeaseState::Free);
        // B takes the free shard; first it evicts A, a member whose node
        // lease expired, so that no replica still holding A's message
        // could take A's write after B's.
        let b = holding(&stream, B, shard).await?;
        anyhow::ensure!(
            matches!(lease::state(&stream, Leased::Node(A)).await?, LeaseState::Released { .. }),
            "A's expired node lease was not evicted before its shard was taken"
        );
        // B's own node lease lives: B is not evicted by its own take.
        anyhow::ensure!(matches!(lease::state(&stream, Leased::Node(B)).await?, LeaseState::Held { .. }));
        append(&b, shard, Record::Epoch(100)).await?;
        let refused = late.await?;
        anyhow::ensure!(refused == Err(JournalError::Fenced), "the expired start wrote: {refused:?}");
        anyhow::ensure!(stored(&stream, shard).await? == vec![1, 100]);
        Ok(())
    })
}
