//! Commit ids are never given twice, by any start, and name the shard whose
//! journal holds the record that decides them (`docs/ARCHITECTURE.md`,
//! "Messages between shards", invariant 5).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use wallet_actors::ids::{CommitId, ShardId};
use wallet_actors::ports::{append_durable, ManualClock, Origin};
use wallet_actors::record::Record;
use wallet_storage::journal::read_journal;
use wallet_storage::{FileJournal, JournalOptions};
use wallet_testkit::*;

const SHARDS: u16 = 4;

async fn open_node(dir: &Path) -> anyhow::Result<wallet_storage::EmbeddedLedger> {
    open(dir, test_options(SHARDS, Arc::new(ManualClock::new(1)))).await
}

/// Every start takes an epoch larger than any before it: after a crash that
/// left nothing of the start durable but its epoch, after a checkpoint that
/// retired the segment holding the epoch's record, after a rebuild in the
/// same process, and after a clean stop.
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
    // A shard crashes: the rebuild from the journal is a start of its own.
    node.ledger.crash_shard(ShardId(1));
    eventually("the rebuild", std::time::Duration::from_secs(30), || {
        let done = node.ledger.rebuilds() == 1 && node.ledger.is_serving();
        async move { Ok(done) }
    })
    .await?;
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

/// Everything the journal holds, batches opened, in order.
fn all_records(dir: &Path) -> anyhow::Result<Vec<Record>> {
    fn flatten(record: Record, into: &mut Vec<Record>) {
        match record {
            Record::Batch(records) => records.into_iter().for_each(|r| flatten(r, into)),
            record => into.push(record),
        }
    }
    let mut records = Vec::new();
    read_journal(&dir.join("journal"), |record, _| {
        flatten(record, &mut records);
        Ok(())
    })?;
    Ok(records)
}

/// A commit as the journal holds it: its id, the shards of its legs, the
/// shard that applied its legs in the same record, and the shards that
/// said so later (`CommitApplied`).
#[derive(Debug)]
struct Journaled {
    commit_id: CommitId,
    shards: BTreeSet<ShardId>,
    applied_by: Option<ShardId>,
    applied_later: BTreeSet<ShardId>,
}

fn journaled_commits(dir: &Path) -> anyhow::Result<Vec<Journaled>> {
    let mut found: Vec<Journaled> = Vec::new();
    for record in all_records(dir)? {
        match record {
            Record::Commit(commit) => found.push(Journaled {
                commit_id: commit.commit_id,
                shards: commit.legs.iter().map(|leg| leg.account_id.shard(SHARDS)).collect(),
                applied_by: commit.applied_by.map(|applied| applied.shard_id),
                applied_later: BTreeSet::new(),
            }),
            Record::CommitApplied { commit_id, shard_id, .. } => {
                if let Some(commit) = found.iter_mut().find(|c| c.commit_id == commit_id) {
                    commit.applied_later.insert(shard_id);
                }
            }
            _ => {}
        }
    }
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
    // A read waits behind its shard's earlier messages (the batch's
    // `Decide`) and for what it shows to be durable.
    for &id in &ids {
        node.ledger.account(account(id)).await?;
    }
    node.stop_without_checkpoint().await;

    let commits = journaled_commits(dir.path())?;
    assert_eq!(commits.len(), 4, "{commits:?}");
    for (n, &to) in ids[..3].iter().enumerate() {
        let commit = &commits[n];
        assert_eq!(
            commit.commit_id.decider,
            shard_of(to),
            "the chain to {to} is decided by its credit shard"
        );
        assert_eq!(commit.shards, BTreeSet::from([shard_of(source), shard_of(to)]));
    }
    // The batch's decider applied its own legs in the deciding record; only
    // the other two shards said so later.
    let batch = &commits[3];
    let lowest = batch.shards.first().copied();
    assert_eq!(batch.shards.len(), 3, "{batch:?}");
    assert_eq!(Some(batch.commit_id.decider), lowest, "a batch is decided by its lowest shard");
    assert_eq!(batch.applied_by, lowest, "{batch:?}");
    let others: BTreeSet<ShardId> = batch.shards.iter().copied().filter(|s| Some(*s) != lowest).collect();
    assert_eq!(batch.applied_later, others, "{batch:?}");
    let distinct: BTreeSet<_> = commits.iter().map(|c| c.commit_id).collect();
    assert_eq!(distinct.len(), commits.len());
    assert!(commits.iter().all(|c| c.commit_id.epoch == epoch), "{commits:?} in epoch {epoch}");
    Ok(())
}

/// A crash right after a batch's deciding record became durable, before
/// any other shard applied its legs: the start completes the other shards
/// from the record, and does not apply the decider's legs a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_other_shards_never_applied_is_completed_once_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open_node(dir.path()).await?;
    let ids = one_per_shard(200);
    node.ledger.open_account(unlimited(ids[0], usd())).await?;
    for &id in &ids[1..] {
        node.ledger.open_account(wallet(id, usd())).await?;
    }
    // Shard 0 decides; it pays shard 1, which pays shard 2, which pays shard 3.
    let batch =
        vec![posted(1, ids[0], ids[1], 30), posted(2, ids[1], ids[2], 20), posted(3, ids[2], ids[3], 10)];
    let results = node.ledger.submit(batch, true).await?;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let mut expected = Vec::new();
    for &id in &ids {
        let view = node.ledger.account(account(id)).await?.ok_or_else(|| anyhow::anyhow!("account {id}"))?;
        expected.push((view.account.balances, view.account.sequence));
    }
    node.stop_without_checkpoint().await;

    // The journal as that crash would leave it: no `CommitApplied`.
    let all = all_records(dir.path())?;
    let settled = all.iter().filter(|r| matches!(r, Record::CommitApplied { .. })).count();
    assert_eq!(settled, 3, "the three other shards said so; the decider did not");
    let records: Vec<Record> =
        all.into_iter().filter(|r| !matches!(r, Record::CommitApplied { .. })).collect();
    let decided = records.iter().find_map(|r| match r {
        Record::Commit(commit) => Some(commit.clone()),
        _ => None,
    });
    let decided = decided.ok_or_else(|| anyhow::anyhow!("no commit record"))?;
    assert_eq!(decided.applied_by.as_ref().map(|a| a.shard_id), Some(shard_of(ids[0])));
    std::fs::remove_dir_all(dir.path().join("journal"))?;
    let journal = FileJournal::start(&dir.path().join("journal"), JournalOptions::default())?;
    for record in records {
        append_durable(&journal, Origin::Node, record).await?;
    }
    journal.close();

    let node = open_node(dir.path()).await?;
    for (&id, expected) in ids.iter().zip(&expected) {
        let view = node.ledger.account(account(id)).await?.ok_or_else(|| anyhow::anyhow!("account {id}"))?;
        assert_eq!(&(view.account.balances, view.account.sequence), expected, "account {id}");
    }
    node.shutdown().await;
    Ok(())
}
