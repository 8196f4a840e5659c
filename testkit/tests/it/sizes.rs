//! Sizes: nothing is written that cannot be read back, however large the
//! requests or however much one account's history grows.

use std::sync::Arc;

use wallet_actors::ports::ManualClock;
use wallet_actors::transfer::{BATCH_SIZE_MAX, METADATA_LEN_MAX, REFERENCE_LEN_MAX};
use wallet_actors::TransferRequest;
use wallet_testkit::*;

/// Requests of 8,189 transfers with the largest metadata and reference, all
/// in one shard, at once: one flush of its outbox carries far more than a
/// frame may hold (64 MiB). Every acknowledged transfer is there after a
/// restart that replays the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_of_maximum_size_requests_reads_back_whole() -> anyhow::Result<()> {
    const REQUESTS: u128 = 8;
    let dir = tempfile::tempdir()?;
    let mut options = test_options(1, Arc::new(ManualClock::new(1)));
    options.checkpoint_bytes = u64::MAX; // everything stays in the journal
    options.journal.segment_bytes_max = 1 << 30;
    let node = open(dir.path(), options.clone()).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    node.ledger.open_account(wallet(2, usd())).await?;
    let metadata = format!("\"{}\"", "m".repeat(METADATA_LEN_MAX - 2));
    let reference = "r".repeat(REFERENCE_LEN_MAX);
    let mut tasks = tokio::task::JoinSet::new();
    for request in 0..REQUESTS {
        let ledger = node.ledger.clone();
        let batch: Vec<TransferRequest> = (0..BATCH_SIZE_MAX as u128)
            .map(|i| TransferRequest::Transfer {
                id: tid(1 + request * 10_000 + i),
                debit_account_id: account(1),
                credit_account_id: account(2),
                amount: amount(1),
                pending: None,
                reference: Some(reference.clone()),
                metadata: Some(metadata.clone()),
            })
            .collect();
        tasks.spawn(async move { ledger.submit(batch, false).await });
    }
    let mut applied = 0u128;
    while let Some(done) = tasks.join_next().await {
        applied += done??.iter().filter(|r| r.is_ok()).count() as u128;
    }
    assert_eq!(applied, REQUESTS * BATCH_SIZE_MAX as u128);
    let bytes = node.journal_stats().bytes.load(std::sync::atomic::Ordering::Relaxed);
    assert!(bytes > 64 << 20, "only {bytes} bytes written");
    node.stop_without_checkpoint().await;

    let node = open(dir.path(), options).await?;
    assert_eq!(node.ledger.transfers().len() as u128, applied);
    let balance = node.ledger.account(account(2)).await?.map(|v| v.account.balances.credits_posted);
    assert_eq!(balance, Some(applied));
    node.shutdown().await;
    Ok(())
}
