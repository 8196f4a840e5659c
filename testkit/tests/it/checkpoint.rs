//! Checkpoints: what they retire leaves memory, and a step that fails
//! leaves the ledger recoverable to exactly its acknowledged state.

use std::collections::BTreeMap;
use std::sync::Arc;

use wallet_actors::ports::ManualClock;
use wallet_actors::TransferRequest;
use wallet_storage::faults::{self, Fault};
use wallet_testkit::*;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

/// Every transfer a checkpoint retires leaves memory, whatever path applied
/// it: at rest, one checkpoint leaves the registry empty and its count of
/// unsnapshotted transfers at zero (a coordinated commit recorded after its
/// await could slip past a checkpoint's eviction and stay for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_rest_a_checkpoint_leaves_no_transfer_in_memory() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = test_options(4, clock());
    options.checkpoint_bytes = 4 << 10;
    options.checkpoint_check_ms = 1;
    let node = open(dir.path(), options).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=9 {
        ledger.open_account(wallet(id, usd())).await?;
    }
    // Linked batches across shards (the coordinator), chains and local
    // transfers, many at once, while checkpoints run every few KiB.
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..16u128 {
        let ledger = ledger.clone();
        tasks.spawn(async move {
            for step in 0..40u128 {
                let id = 1_000 + client * 1_000 + step * 4;
                let linked = vec![posted(id, 1, 2 + step % 8, 5), posted(id + 1, 1, 2 + (step + 3) % 8, 5)];
                ledger.submit(linked, true).await?;
                ledger.submit_one(posted(id + 2, 1, 2 + client % 8, 1)).await??;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    node.checkpoint().await?;
    let registry = ledger.registry();
    assert_eq!(
        (registry.len(), registry.recorded()),
        (0, 0),
        "transfers left in memory after a checkpoint at rest"
    );
    node.shutdown().await;
    Ok(())
}

/// A checkpoint whose meta is durable is in force even if deleting the
/// segments it retired fails: the next checkpoints scan from its segment
/// with its open commits (not the older meta's), and a restart recovers
/// every acknowledged transfer exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_segment_deletion_leaves_the_checkpoint_in_force() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = test_options(4, clock());
    options.journal.segment_bytes_max = 4 << 10;
    options.checkpoint_bytes = u64::MAX; // only when the test asks
    let node = open(dir.path(), options.clone()).await?;
    let ledger = node.ledger.clone();
    ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=9 {
        ledger.open_account(wallet(id, usd())).await?;
    }
    // Linked batches across shards leave commits open across checkpoints.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..8u128 {
        let (ledger, stop) = (ledger.clone(), stop.clone());
        clients.spawn(async move {
            let mut acknowledged = Vec::new();
            let mut step = 0u128;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = 1_000_000 * (client + 1) + step * 2;
                let batch = vec![posted(id, 1, 2 + step % 8, 3), posted(id + 1, 1, 2 + (step + 5) % 8, 4)];
                if let Ok(results) = ledger.submit(batch.clone(), true).await {
                    if results.iter().all(|r| r.is_ok()) {
                        acknowledged.extend(batch);
                    }
                }
                step += 1;
            }
            anyhow::Ok(acknowledged)
        });
    }
    let mut failed = 0;
    for _ in 0..4 {
        node.checkpoint().await?;
        faults::arm(faults::points::DELETE_SEGMENTS, Fault::Error(1));
        if node.checkpoint().await.is_err() {
            failed += 1;
        }
        node.checkpoint().await?;
        node.checkpoint().await?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged: BTreeMap<u128, TransferRequest> = BTreeMap::new();
    while let Some(done) = clients.join_next().await {
        acknowledged.extend(done??.into_iter().map(|request| (request.id().get(), request)));
    }
    anyhow::ensure!(failed == 4, "only {failed} deletions failed");
    anyhow::ensure!(acknowledged.len() > 100, "only {} transfers acknowledged", acknowledged.len());
    node.stop_without_checkpoint().await;
    let node = open(dir.path(), options).await?;
    wallet_testkit::crash::check_books(&node, &acknowledged).await?;
    node.shutdown().await;
    Ok(())
}
