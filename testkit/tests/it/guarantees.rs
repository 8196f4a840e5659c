//! Guarantees of docs/ARCHITECTURE.md that no other test would catch
//! breaking: overdraft limits through snapshots, a snapshot that breaks a
//! limit, one id sent by many callers at once, and reads right after an
//! acknowledged transfer.

use std::sync::Arc;
use std::time::Duration;

use wallet_actors::ports::ManualClock;
use wallet_actors::shard::Captured;
use wallet_actors::Failure;
use wallet_actors::{Amount, LedgerError, Rejection};
use wallet_storage::snapshot::SnapshotStore;
use wallet_testkit::*;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

/// An overdraft lets a wallet go below zero by its limit and no further,
/// counting holds, and the limit holds the same after the account went to
/// the snapshot, left memory and came back, and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdraft_limit_holds_through_snapshots_and_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open(dir.path(), test_options(4, clock())).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    let mut overdrawn = wallet(2, usd());
    overdrawn.overdraft_limit = Amount::new(500)?;
    node.ledger.open_account(overdrawn).await?;
    node.ledger.submit_one(posted(1, 1, 2, 100)).await??;
    // 100 in, so 600 may go out: 400 now, 150 held, 50 more.
    node.ledger.submit_one(posted(2, 2, 1, 400)).await??;
    node.ledger.submit_one(pending(3, 2, 1, 150, None)).await??;
    assert_eq!(node.ledger.submit_one(posted(4, 2, 1, 51)).await?, Err(Rejection::InsufficientFunds));
    node.checkpoint().await?; // the account leaves memory (tests passivate after every snapshot)
    eventually("passivation", Duration::from_secs(10), || async {
        Ok(node.ledger.resident_accounts().await? == 0)
    })
    .await?;
    assert_eq!(node.ledger.submit_one(posted(5, 2, 1, 51)).await?, Err(Rejection::InsufficientFunds));
    node.ledger.submit_one(posted(6, 2, 1, 50)).await??;
    node.stop_without_checkpoint().await;

    let node = open(dir.path(), test_options(4, clock())).await?;
    assert_eq!(node.ledger.submit_one(posted(7, 2, 1, 1)).await?, Err(Rejection::InsufficientFunds));
    // Voiding the hold frees its 150.
    node.ledger.submit_one(void(8, 3)).await??;
    node.ledger.submit_one(posted(9, 2, 1, 150)).await??;
    let view = node.ledger.account(account(2)).await?.ok_or_else(|| anyhow::anyhow!("account 2"))?;
    assert_eq!(view.account.balances.available(), -500);
    node.shutdown().await;
    Ok(())
}

/// An account whose snapshot breaks its own limit is never served: naming
/// it fails the shards (a bad snapshot read), and nothing reads or moves
/// its money.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_breaks_a_limit_is_never_served() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open(dir.path(), test_options(4, clock())).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    node.ledger.open_account(wallet(2, usd())).await?;
    node.ledger.submit_one(posted(1, 1, 2, 100)).await??;
    node.shutdown().await; // a final checkpoint: account 2 is in the snapshot, the journal holds nothing of it

    // Damage that checksums cannot see: a valid value whose debits pass its credits.
    let store = SnapshotStore::open(&dir.path().join("snapshot"), 1 << 20)?;
    let meta = store.load()?.meta.ok_or_else(|| anyhow::anyhow!("no checkpoint meta"))?;
    let mut broken = wallet(2, usd()).opened_at(1);
    broken.balances.credits_posted = 100;
    broken.balances.debits_posted = 250;
    broken.sequence = 3;
    store.write(&[Captured { accounts: vec![broken], ..Captured::default() }], &[], &meta)?;
    drop(store);

    let node = open(dir.path(), test_options(4, clock())).await?;
    assert_eq!(node.ledger.account(account(2)).await, Err(LedgerError::Unavailable));
    assert_eq!(node.ledger.failure(), Some(Failure::SnapshotRead));
    assert_eq!(node.ledger.submit_one(posted(2, 2, 1, 1)).await, Err(LedgerError::Unavailable));
    node.stop_without_checkpoint().await;
    Ok(())
}

/// The same request sent by 64 callers at once is applied exactly once,
/// within a shard and across two: one caller hears "applied", the others a
/// replay of it or `in_flight`, and the money moves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_id_sent_by_64_callers_at_once_applies_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open(dir.path(), test_options(4, clock())).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=9 {
        node.ledger.open_account(wallet(id, usd())).await?;
    }
    for (id, credit) in (100..108u128).zip(2..=9u128) {
        let request = posted(id, 1, credit, 7);
        let mut callers = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let (ledger, request) = (node.ledger.clone(), request.clone());
            callers.spawn(async move { ledger.submit_one(request).await });
        }
        let (mut applied, mut replayed, mut in_flight) = (0, 0, 0);
        while let Some(done) = callers.join_next().await {
            match done?? {
                Ok(outcome) if outcome.replayed => replayed += 1,
                Ok(_) => applied += 1,
                Err(Rejection::InFlight) => in_flight += 1,
                Err(other) => anyhow::bail!("transfer {id}: {other}"),
            }
        }
        assert_eq!((applied, replayed + in_flight), (1, 63), "transfer {id}");
        let view = node.ledger.account(account(credit)).await?.ok_or_else(|| anyhow::anyhow!("account"))?;
        assert_eq!(view.account.balances.credits_posted, 7, "transfer {id} moved money more than once");
    }
    node.shutdown().await;
    Ok(())
}

/// Right after a transfer between two shards is acknowledged, reads of
/// both accounts (balances and history) show it, on every path: a chain
/// between two shards, a linked batch across several, one shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_right_after_an_acknowledged_transfer_see_both_sides() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open(dir.path(), test_options(4, clock())).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=9 {
        ledger.open_account(wallet(id, usd())).await?;
    }
    let mut next_id = 1u128;
    for round in 0..40u128 {
        let (debit, credit) = (1, 2 + round % 8);
        let linked = round % 3 == 0;
        let requests = if linked {
            vec![posted(next_id, debit, credit, 3), posted(next_id + 1, debit, 2 + (round + 1) % 8, 3)]
        } else {
            vec![posted(next_id, debit, credit, 3)]
        };
        next_id += 2;
        let before_debit = ledger.account(account(debit)).await?.map(|v| v.account.balances.debits_posted);
        let before_credit = ledger.account(account(credit)).await?.map(|v| v.account.balances.credits_posted);
        let results = ledger.submit(requests.clone(), linked).await?;
        anyhow::ensure!(results.iter().all(Result::is_ok), "round {round}: {results:?}");
        let debited = u128::try_from(requests.len())? * 3;
        let after_debit = ledger.account(account(debit)).await?.map(|v| v.account.balances.debits_posted);
        let after = ledger.account(account(credit)).await?.ok_or_else(|| anyhow::anyhow!("account"))?;
        assert_eq!(after_debit, before_debit.map(|d| d + debited), "round {round}: the debit side lags");
        assert!(
            Some(after.account.balances.credits_posted) > before_credit,
            "round {round}: the credit side lags"
        );
        for side in [debit, credit] {
            let view = ledger.account(account(side)).await?.ok_or_else(|| anyhow::anyhow!("account"))?;
            let history = ledger.history(account(side), view.account.sequence.saturating_sub(1), 10).await?;
            let last = history.last().map(|entry| (entry.sequence, entry.balances));
            assert_eq!(
                last,
                Some((view.account.sequence, view.account.balances)),
                "round {round}: history lags"
            );
        }
    }
    node.shutdown().await;
    Ok(())
}

/// Every history entry says when its change happened, and says the same
/// after a replay of the journal and after a checkpoint moved it to
/// storage: the time comes from the record, not from the clock at replay
/// (events rendered again after a crash must be the events first sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_times_come_from_the_records_and_survive_replay_and_checkpoints() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = clock();
    let mut options = test_options(4, clock.clone());
    options.ledger.expiry_interval_ms = 3_600_000;
    let node = open(dir.path(), options.clone()).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    clock.advance_ms(1_000);
    node.ledger.open_account(wallet(2, usd())).await?;
    clock.advance_ms(1_000);
    node.ledger.submit_one(posted(1, 1, 2, 100)).await??;
    clock.advance_ms(1_000);
    node.ledger.submit_one(pending(2, 2, 1, 30, Some(1))).await??;
    clock.advance_ms(2_000);
    anyhow::ensure!(node.ledger.expire_due().await? == 1, "the hold did not expire");
    clock.advance_ms(1_000);
    node.ledger.set_account_status(account(2), wallet_actors::AccountStatus::Frozen).await?;
    let times = |entries: Vec<wallet_actors::shard::HistoryEntry>| -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.sequence, e.at_ms - 1_700_000_000_000)).collect()
    };
    let before = times(node.ledger.history(account(2), 0, 100).await?);
    // Opened, credited, held, expired, frozen: each at its own time.
    assert_eq!(before, vec![(1, 1_000), (2, 2_000), (3, 3_000), (4, 5_000), (5, 6_000)]);
    node.stop_without_checkpoint().await;
    clock.advance_ms(60_000);
    let node = open(dir.path(), options.clone()).await?;
    assert_eq!(times(node.ledger.history(account(2), 0, 100).await?), before, "after a replay");
    node.checkpoint().await?;
    node.shutdown().await;
    let node = open(dir.path(), options).await?;
    assert_eq!(times(node.ledger.history(account(2), 0, 100).await?), before, "from storage");
    node.shutdown().await;
    Ok(())
}
