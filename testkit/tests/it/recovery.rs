//! A journal that breaks a guarantee when replayed stops the start with an
//! error naming the record: never a panic, never a state that is not the
//! durable one.

use std::sync::Arc;

use wallet_actors::account::{AccountEvent, InvariantBroken, Leg, Side};
use wallet_actors::ids::{CommitId, ShardId};
use wallet_actors::ports::{append_durable, ManualClock, Origin};
use wallet_actors::record::{Applied, Commit, Record, SequencedEvent};
use wallet_actors::shard::ReplayError;
use wallet_storage::{FileJournal, JournalOptions, StorageError};
use wallet_testkit::*;

/// Opens two accounts; account 2 receives 10 (its sequence is then 2).
async fn write_some(dir: &std::path::Path) -> anyhow::Result<()> {
    let node = open(dir, test_options(4, Arc::new(ManualClock::new(1)))).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    node.ledger.open_account(wallet(2, usd())).await?;
    node.ledger.submit_one(posted(1, 1, 2, 10)).await??;
    node.stop_without_checkpoint().await;
    Ok(())
}

fn leg(account_id: u128, side: Side, value: u128) -> Leg {
    Leg {
        account_id: account(account_id),
        transfer_id: tid(99),
        side,
        posted_add: value,
        pending_add: 0,
        pending_sub: 0,
        at_ms: 0,
    }
}

async fn append(dir: &std::path::Path, record: Record) -> anyhow::Result<()> {
    let journal = FileJournal::start(&dir.join("journal"), JournalOptions::default())?;
    append_durable(&journal, Origin::Node, record).await?;
    journal.close();
    Ok(())
}

async fn reopen(dir: &std::path::Path) -> Result<(), StorageError> {
    let node =
        wallet_storage::EmbeddedLedger::open(dir, test_options(4, Arc::new(ManualClock::new(1)))).await?;
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_breaks_a_limit_stops_the_start_and_names_the_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_some(dir.path()).await?;
    // Account 2 spends 1,000 it never had.
    let debit = SequencedEvent {
        account_id: account(2),
        sequence: 3,
        event: AccountEvent::Leg(leg(2, Side::Debit, 1_000)),
    };
    append(dir.path(), Record::Applied(Applied { events: vec![debit], ..Default::default() })).await?;
    for _ in 0..2 {
        // The same clear error on every start, not a panic and not a loop.
        match reopen(dir.path()).await {
            Err(StorageError::Replay { path, offset, source }) => {
                assert!(path.extension().is_some_and(|e| e == "wal"), "{}", path.display());
                assert!(offset > 0);
                assert!(
                    matches!(*source, ReplayError::Broken(InvariantBroken::DebitsExceedCredits { account_id, .. }) if account_id == account(2)),
                    "{source}"
                );
            }
            other => anyhow::bail!("expected a replay error, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_completion_breaks_a_limit_stops_the_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_some(dir.path()).await?;
    // A commit no shard applied: recovery completes it, and its debit of
    // account 2 would pass what the account holds.
    let commit = Commit {
        commit_id: CommitId { epoch: 1, counter: 1_000, decider: ShardId(0) },
        transfers: Vec::new(),
        resolutions: Vec::new(),
        legs: vec![leg(2, Side::Debit, 1_000), leg(1, Side::Credit, 1_000)],
        applied_by: None,
        decisions: Vec::new(),
    };
    append(dir.path(), Record::Commit(commit)).await?;
    match reopen(dir.path()).await {
        Err(StorageError::Completion(error)) => {
            assert_eq!(error.commit_id, CommitId { epoch: 1, counter: 1_000, decider: ShardId(0) });
            assert!(
                matches!(error.source, ReplayError::Broken(InvariantBroken::DebitsExceedCredits { .. })),
                "{error}"
            );
        }
        other => anyhow::bail!("expected a completion error, got {other:?}"),
    }
    Ok(())
}

/// The real journal writer's sync fails: the write's outcome is unknown, so
/// the ledger refuses everything, reads included, and says it needs a
/// restart; the restart recovers what the files hold (the unsynced write
/// either whole or not at all), and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_stops_the_ledger_until_a_restart() -> anyhow::Result<()> {
    use wallet_actors::LedgerError;
    use wallet_storage::faults::{self, Fault};
    let dir = tempfile::tempdir()?;
    write_some(dir.path()).await?;
    let node = open(dir.path(), test_options(4, Arc::new(ManualClock::new(1)))).await?;
    faults::arm(faults::points::JOURNAL_SYNC, Fault::Error(1));
    assert_eq!(node.ledger.submit_one(posted(2, 1, 2, 5)).await, Err(LedgerError::Unavailable));
    assert!(node.ledger.needs_restart());
    assert!(!node.ledger.is_serving());
    // The fault is spent, but nothing is trusted until a restart.
    assert_eq!(node.ledger.submit_one(posted(3, 1, 2, 5)).await, Err(LedgerError::Unavailable));
    assert_eq!(node.ledger.account(account(2)).await, Err(LedgerError::Unavailable));
    node.stop_without_checkpoint().await;

    let node = open(dir.path(), test_options(4, Arc::new(ManualClock::new(1)))).await?;
    let credited = node.ledger.account(account(2)).await?.map(|v| v.account.balances.credits_posted);
    assert!(matches!(credited, Some(10) | Some(15)), "{credited:?}");
    node.ledger.submit_one(posted(3, 1, 2, 5)).await??;
    node.shutdown().await;
    Ok(())
}
