//! Commit ids are never given twice, by any start, and name the shard whose
//! journal holds the record that decides them (`docs/ARCHITECTURE.md`,
//! "Messages between shards", invariant 5).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use wallet_actors::ids::{CommitId, ShardId};
use wallet_actors::ports::ManualClock;
use wallet_actors::record::Record;
use wallet_storage::journal::read_journal;
use wallet_testkit::*;

const SHARDS: u16 = 4;

async fn open_node(dir: &Path) -> anyhow::Result<wallet_storage::EmbeddedLedger> {
    open(dir, test_options(SHARDS, Arc::new(ManualClock::new(1)))).await
}

/// Every start takes an epoch larger than any before it: after a crash that
/// left nothing of the start durable but its epoch, after a checkpoint that
/// retired the segment holding the epoch's record, and after a clean stop.
/// So an id a crashed start gave to a commit that never became durable is
/// never given again (a participant elsewhere may still hold it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_takes_an_epoch_no_start_before_it_took() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut epochs = Vec::new();

    let node = open_node(dir.path()).await?;
    epochs.push(node.ledger.commit_epoch());
    node.stop_without_checkpoint().await;

    let node = open_node(dir.path()).await?;
    epochs.push(node.ledger.commit_epoch());
    node.ledger.open_account(unlimited(1, usd())).await?;
    node.checkpoint().await?;
    node.stop_without_checkpoint().await;

    let node = open_node(dir.path()).await?;
    epochs.push(node.ledger.commit_epoch());
    node.shutdown().await;

    let node = open_node(dir.path()).await?;
    epochs.push(node.ledger.commit_epoch());
    node.shutdown().await;

    assert!(epochs.windows(2).all(|pair| pair[0] < pair[1]), "epochs must grow: {epochs:?}");
    Ok(())
}

/// Account numbers from `from` on, one per shard, in shard order.
fn one_per_shard(from: u128) -> Vec<u128> {
    let mut found: Vec<Option<u128>> = vec![None; SHARDS as usize];
    let mut n = from;
    while found.iter().any(Option::is_none) {
        let shard = account(n).shard(SHARDS).0 as usize;
        found[shard].get_or_insert(n);
        n += 1;
    }
    found.into_iter().flatten().collect()
}

fn shard_of(n: u128) -> ShardId {
    account(n).shard(SHARDS)
}

fn commit_ids(dir: &Path) -> anyhow::Result<Vec<(CommitId, BTreeSet<ShardId>)>> {
    fn collect(record: Record, found: &mut Vec<(CommitId, BTreeSet<ShardId>)>) {
        match record {
            Record::Commit(commit) => {
                let shards = commit.legs.iter().map(|leg| leg.account_id.shard(SHARDS)).collect();
                found.push((commit.commit_id, shards));
            }
            Record::Batch(records) => records.into_iter().for_each(|r| collect(r, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    read_journal(&dir.join("journal"), |record, _| {
        collect(record, &mut found);
        Ok(())
    })?;
    Ok(found)
}

/// A transfer between two shards is decided by its credit shard; a linked
/// batch over many by the lowest shard it touches. Ids within a start are
/// distinct and carry the start's epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_id_names_its_deciding_shard() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open_node(dir.path()).await?;
    let ids = one_per_shard(100);
    let source = ids[3];
    node.ledger.open_account(unlimited(source, usd())).await?;
    for &id in &ids[..3] {
        node.ledger.open_account(wallet(id, usd())).await?;
    }
    // A chain from the last shard to each other one.
    for (n, &to) in ids[..3].iter().enumerate() {
        node.ledger.submit_one(posted(1 + n as u128, source, to, 100)).await??;
    }
    // A linked batch over shards 0, 1 and 2 only: lowest is 0.
    let batch = vec![posted(10, ids[1], ids[2], 10), posted(11, ids[2], ids[0], 10)];
    let results = node.ledger.submit(batch, true).await?;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let epoch = node.ledger.commit_epoch();
    node.stop_without_checkpoint().await;

    let commits = commit_ids(dir.path())?;
    assert_eq!(commits.len(), 4, "{commits:?}");
    for (n, &to) in ids[..3].iter().enumerate() {
        let (commit_id, shards) = &commits[n];
        assert_eq!(commit_id.decider, shard_of(to), "the chain to {to} is decided by its credit shard");
        assert_eq!(shards, &BTreeSet::from([shard_of(source), shard_of(to)]));
    }
    let (batch_id, shards) = &commits[3];
    assert_eq!(shards.len(), 3, "{shards:?}");
    assert_eq!(Some(&batch_id.decider), shards.first(), "a batch is decided by its lowest shard");
    let distinct: BTreeSet<_> = commits.iter().map(|(id, _)| id).collect();
    assert_eq!(distinct.len(), commits.len());
    assert!(commits.iter().all(|(id, _)| id.epoch == epoch), "{commits:?} in epoch {epoch}");
    Ok(())
}
