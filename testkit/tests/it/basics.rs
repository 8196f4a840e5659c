//! Deposits, transfers, holds and restarts on a real data directory.

use std::sync::Arc;

use wallet_actors::ports::ManualClock;
use wallet_actors::{AccountStatus, LedgerError, Rejection, TransferStatus};
use wallet_testkit::*;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_move_money_and_survive_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = clock();
    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=5 {
        ledger.open_account(wallet(id, usd())).await?;
    }
    // Fund, then move money within and across shards.
    let results = ledger.submit((2..=5).map(|id| posted(id * 100, 1, id, 1_000)).collect(), false).await?;
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    // Items of one unlinked batch are independent: none sees another's effect.
    let results = ledger.submit(vec![posted(1, 2, 3, 400), posted(3, 5, 2, 1_001)], false).await?;
    assert!(results[0].is_ok(), "{results:?}");
    assert_eq!(results[1], Err(Rejection::InsufficientFunds));
    ledger.submit_one(posted(2, 3, 4, 1_400)).await??;

    // Replay returns the first outcome and moves nothing.
    let replay = ledger.submit_one(posted(1, 2, 3, 400)).await??;
    assert!(replay.replayed);
    assert_eq!(ledger.submit_one(posted(1, 2, 3, 401)).await?, Err(Rejection::ExistsWithDifferentFields));

    let balances = |accounts: Vec<wallet_actors::Account>| {
        let mut v: Vec<(u128, i128)> = accounts.iter().map(|a| (a.id.get(), a.balances.posted())).collect();
        v.sort();
        v
    };
    let before = balances(ledger.accounts().await?);
    assert_eq!(before, vec![(1, -4_000), (2, 600), (3, 0), (4, 2_400), (5, 1_000)]);
    node.shutdown().await;

    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    assert_eq!(balances(node.ledger.accounts().await?), before);
    assert!(node.ledger.submit_one(posted(1, 2, 3, 400)).await??.replayed);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_post_void_and_expire() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = clock();
    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    ledger.open_account(wallet(2, usd())).await?;
    ledger.open_account(wallet(3, usd())).await?;
    ledger.submit_one(posted(10, 1, 2, 1_000)).await??;

    ledger.submit_one(pending(11, 2, 3, 600, None)).await??;
    assert_eq!(ledger.submit_one(posted(12, 2, 3, 401)).await?, Err(Rejection::InsufficientFunds));
    assert_eq!(ledger.submit_one(post(13, 11, Some(601))).await?, Err(Rejection::ExceedsPendingAmount));
    let posted_hold = ledger.submit_one(post(13, 11, Some(250))).await??;
    assert_eq!(posted_hold.record.transfer.amount.get(), 250);
    assert_eq!(ledger.transfer(tid(11)).map(|r| r.status), Some(TransferStatus::Posted));
    assert_eq!(ledger.submit_one(void(14, 11)).await?, Err(Rejection::PendingTransferAlreadyPosted));

    ledger.submit_one(pending(15, 2, 3, 100, Some(5))).await??;
    ledger.submit_one(pending(16, 2, 3, 100, None)).await??;
    ledger.submit_one(void(17, 16)).await??;
    clock.advance_ms(6_000);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ledger.transfer(tid(15)).map(|r| r.status) != Some(TransferStatus::Expired) {
        assert!(std::time::Instant::now() < deadline, "hold 15 did not expire");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let view = ledger.account(account(2)).await?.ok_or_else(|| anyhow::anyhow!("account 2"))?;
    assert_eq!(view.account.balances.debits_pending, 0);
    assert_eq!(view.account.balances.debits_posted, 250);
    assert_eq!(view.account.balances.available(), 750);

    // Close needs a zero balance.
    assert_eq!(
        ledger.set_account_status(account(2), AccountStatus::Closed).await,
        Err(LedgerError::Rejected(Rejection::AccountBalanceNotZero))
    );
    ledger.set_account_status(account(3), AccountStatus::Frozen).await?;
    assert_eq!(ledger.submit_one(posted(18, 2, 3, 1)).await?, Err(Rejection::CreditAccountFrozen));
    node.shutdown().await;

    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    let view = node.ledger.account(account(2)).await?.ok_or_else(|| anyhow::anyhow!("account 2"))?;
    assert_eq!(view.account.balances.available(), 750);
    assert_eq!(node.ledger.transfer(tid(15)).map(|r| r.status), Some(TransferStatus::Expired));
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_batches_are_all_or_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open(dir.path(), test_options(8, clock())).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=9 {
        ledger.open_account(wallet(id, usd())).await?;
    }
    ledger.open_account(wallet(10, eur())).await?;
    ledger.submit_one(posted(1, 1, 2, 100)).await??;
    // 2 -> 3 -> 4 -> 5: each spends what the one before gave it.
    let chain = vec![posted(2, 2, 3, 100), posted(3, 3, 4, 100), posted(4, 4, 5, 100)];
    let results = ledger.submit(chain.clone(), true).await?;
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|o| !o.replayed)), "{results:?}");
    let retried = ledger.submit(chain, true).await?;
    assert!(retried.iter().all(|r| r.as_ref().is_ok_and(|o| o.replayed)), "{retried:?}");
    // One bad leg fails them all.
    let results = ledger.submit(vec![posted(5, 5, 6, 50), posted(6, 6, 10, 50)], true).await?;
    assert_eq!(results, vec![Err(Rejection::LinkedTransferFailed), Err(Rejection::AssetMismatch)]);
    let view = ledger.account(account(5)).await?.ok_or_else(|| anyhow::anyhow!("account 5"))?;
    assert_eq!(view.account.balances.available(), 100);
    assert_eq!(view.reserved, Default::default());
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_ids_are_reserved() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open(dir.path(), test_options(4, clock())).await?;
    let settlement = wallet_actors::settlement_account_id(&usd());
    assert!(wallet_actors::is_reserved_account_id(settlement));
    let mut squatter = wallet(1, usd());
    squatter.id = settlement;
    assert_eq!(
        node.ledger.open_account(squatter).await,
        Err(LedgerError::Rejected(Rejection::ReservedAccountId))
    );
    let opened = node.ledger.ensure_settlement_account(usd()).await?;
    assert_eq!(opened.id, settlement);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_accounts_passivate_and_come_back_when_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = clock();
    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=9 {
        ledger.open_account(wallet(id, usd())).await?;
        ledger.submit_one(posted(id, 1, id, 100)).await??;
    }
    ledger.submit_one(pending(50, 2, 3, 40, None)).await??;
    assert_eq!(ledger.resident_accounts().await?, 9);
    // The snapshot has them all; untouched since, they leave memory (the
    // tests passivate after every snapshot).
    node.checkpoint().await?;
    let second = std::time::Duration::from_secs(10);
    eventually("passivation", second, || async { Ok(ledger.resident_accounts().await? == 0) }).await?;
    // Named again, each comes back as it was: balances, holds, history.
    let account_2 = ledger.account(account(2)).await?.map(|v| v.account.balances);
    assert_eq!(account_2.map(|b| (b.credits_posted, b.debits_pending)), Some((100, 40)));
    ledger.submit_one(post(51, 50, Some(30))).await??;
    ledger.submit_one(posted(52, 4, 5, 100)).await??;
    assert_eq!(ledger.submit_one(posted(53, 4, 5, 1)).await?, Err(Rejection::InsufficientFunds));
    assert_eq!(ledger.history(account(4), 0, 10).await?.len(), 3);
    assert_eq!(ledger.resident_accounts().await?, 4);
    assert_eq!(ledger.accounts().await?.len(), 9);
    node.stop_without_checkpoint().await;
    let node = open(dir.path(), test_options(4, clock)).await?;
    // Recovery read back only the accounts the journal tail names.
    assert_eq!(node.recovery.snapshot_accounts, 4);
    let balances: Vec<i128> = node.ledger.accounts().await?.iter().map(|a| a.balances.posted()).collect();
    assert_eq!(balances, vec![-800, 70, 130, 0, 200, 100, 100, 100, 100]);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_when_snapshots_fall_behind() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = test_options(4, clock());
    options.ledger.unsnapshotted_transfers_max = 10;
    options.checkpoint_bytes = u64::MAX; // no snapshot unless asked
    let node = open(dir.path(), options).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    ledger.open_account(wallet(2, usd())).await?;
    for id in 1..=10 {
        ledger.submit_one(posted(id, 1, 2, 1)).await??;
    }
    // Ten transfers wait for a snapshot: the next request is refused,
    // changing nothing, until one takes them out of memory.
    assert_eq!(ledger.submit_one(posted(11, 1, 2, 1)).await, Err(LedgerError::Overloaded));
    node.checkpoint().await?;
    ledger.submit_one(posted(11, 1, 2, 1)).await??;
    assert!(ledger.submit_one(posted(3, 1, 2, 1)).await??.replayed);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_whose_checkpoint_never_finished_is_taken_again() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = clock();
    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=5 {
        ledger.open_account(wallet(id, usd())).await?;
        ledger.submit_one(posted(id, 1, id, 100 * id)).await??;
    }
    ledger.submit_one(pending(50, 2, 3, 40, None)).await??;
    // A checkpoint captures, then fails before writing (a full disk, a
    // timeout): nothing it captured is confirmed.
    let lost = ledger.capture().await?;
    assert_eq!(lost.iter().map(|c| c.accounts.len()).sum::<usize>(), 5);
    // The next one must write those accounts and the hold all the same;
    // then they may leave memory (the tests passivate after every snapshot).
    node.checkpoint().await?;
    let second = std::time::Duration::from_secs(10);
    eventually("passivation", second, || async { Ok(ledger.resident_accounts().await? == 0) }).await?;
    let want = vec![-1_400, 200, 300, 400, 500];
    let posted_of = |accounts: Vec<wallet_actors::Account>| -> Vec<i128> {
        accounts.iter().map(|a| a.balances.posted()).collect()
    };
    assert_eq!(posted_of(ledger.accounts().await?), want);
    node.stop_without_checkpoint().await;
    let node = open(dir.path(), test_options(4, clock)).await?;
    assert_eq!(posted_of(node.ledger.accounts().await?), want);
    let held = node.ledger.account(account(2)).await?.map(|v| v.account.balances.debits_pending);
    assert_eq!(held, Some(40));
    node.shutdown().await;
    Ok(())
}
