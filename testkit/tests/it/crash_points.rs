//! A crash at each named point of the write path and of a checkpoint (the
//! process aborts there, as kill -9 would stop it): the restart recovers
//! every acknowledged transfer exactly once, each leg with the account's
//! next sequence number, and a second restart changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use wallet_actors::TransferRequest;
use wallet_storage::faults::points;
use wallet_testkit::crash;

/// Which hit of a point aborts: late enough that the load is under way
/// (a checkpoint runs every 64 KiB of journal; commits come with every
/// batch that spans shards).
fn nth_hit(point: &str) -> u32 {
    if point == points::COMMIT_DURABLE {
        200
    } else {
        3
    }
}

#[test]
fn a_crash_at_each_named_point_recovers_every_acknowledged_transfer_once() -> anyhow::Result<()> {
    let child = env!("CARGO_BIN_EXE_wallet-crash-child");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    for point in points::ABORTS {
        let root = tempfile::tempdir()?;
        let dir = root.path().join("data");
        let armed = format!("{point}=abort@{}", nth_hit(point));
        let mut process = crash::spawn_child(child, &dir, 1, &[("WALLET_FAULTS", &armed)])?;
        let status = process.wait_exit(Duration::from_secs(120))?;
        let stderr = process.stderr_text();
        anyhow::ensure!(
            !status.success() && stderr.contains(&format!("fault injected: abort at {point}")),
            "{point}: the child did not stop there ({status}): {stderr}"
        );
        let (_, acks) = process.acknowledged()?;
        anyhow::ensure!(!acks.is_empty(), "{point}: nothing was acknowledged before the crash");
        let acknowledged: BTreeMap<u128, TransferRequest> =
            acks.into_iter().map(|request| (request.id().get(), request)).collect();
        runtime
            .block_on(async {
                let node = crash::open_for_checks(&dir).await?;
                let report = node.recovery.clone();
                crash::check_books(&node, &acknowledged).await?;
                let accounts = node.ledger.accounts().await?;
                crash::check_history(&node, &accounts).await?;
                node.stop_without_checkpoint().await;
                // Each point leaves the trace recovery looks for.
                let traced = match point {
                    points::COMMIT_DURABLE => report.completed_commits > 0,
                    points::CHECKPOINT_MARKED | points::CHECKPOINT_INDEXED | points::CHECKPOINT_HISTORY => {
                        report.checkpoint_markers_after_snapshot > 0
                    }
                    points::CHECKPOINT_SNAPSHOT => report.leftover_segments > 0,
                    _ => true,
                };
                anyhow::ensure!(traced, "{point}: recovery found no trace of the crash: {report:?}");

                // A second restart changes nothing: completions were made durable.
                let node = crash::open_for_checks(&dir).await?;
                anyhow::ensure!(node.recovery.completed_commits == 0, "{point}: commits completed twice");
                anyhow::ensure!(
                    node.ledger.accounts().await? == accounts,
                    "{point}: a second restart changed the books"
                );
                node.shutdown().await;
                anyhow::Ok(())
            })
            .map_err(|error| error.context(point))?;
    }
    Ok(())
}
