//! Kill -9 during concurrent load, many times, and now and then a power
//! loss on top (what only the page cache held is dropped): after every
//! restart each acknowledged transfer is there exactly once, nothing is
//! half-applied, every history is whole, and the books balance. The kills
//! must land where it matters: inside a checkpoint, and between a commit
//! and its application; recovery counts both, and the test asserts each
//! happened.
//!
//! Kill delays come from a seed, printed at the start (set `CRASH_SEED` to
//! run the same delays again).

use std::collections::BTreeMap;
use std::time::Duration;

use wallet_actors::TransferRequest;
use wallet_storage::RecoveryReport;
use wallet_testkit::crash;

/// Kills at least, and at most while a kind of landing was not seen yet.
const KILLS_MIN: u64 = 32;
const KILLS_MAX: u64 = 96;

#[test]
fn acknowledged_transfers_survive_kill_9_and_power_loss() -> anyhow::Result<()> {
    let seed = crash::seed();
    println!("crash test seed: {seed} (CRASH_SEED={seed} runs the same kill delays)");
    let mut rng = seed | 1;
    let root = tempfile::tempdir()?;
    let dir = root.path().join("data");
    let sync_log = root.path().join("synced.log");
    // The test's own opens log their syncs too: a power loss after the next
    // run must not take what they made durable.
    std::env::set_var("WALLET_SYNC_LOG", &sync_log);
    let sync_log_value = sync_log.display().to_string();
    let child = env!("CARGO_BIN_EXE_wallet-crash-child");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut acknowledged: BTreeMap<u128, TransferRequest> = BTreeMap::new();
    let mut totals = RecoveryReport::default();
    let (mut loaded_runs, mut power_losses, mut in_checkpoint, mut in_commit) = (0, 0, 0, 0);
    let mut run = 0;
    while run < KILLS_MIN || (run < KILLS_MAX && (in_checkpoint == 0 || in_commit == 0)) {
        run += 1;
        let mut process = crash::spawn_child(child, &dir, run, &[("WALLET_SYNC_LOG", &sync_log_value)])?;
        process.wait_ready(Duration::from_secs(60))?;
        // Kills spread from just after setup to well into the load.
        let delay_ms = 5 + crash::next_random(&mut rng) % 400;
        let acks = process
            .kill_after(Duration::from_millis(delay_ms))
            .map_err(|e| e.context(format!("run {run}")))?;
        if !acks.is_empty() {
            loaded_runs += 1;
        }
        acknowledged.extend(acks.into_iter().map(|request| (request.id().get(), request)));
        // Every third kill is a power loss too.
        if run % 3 == 0 {
            let loss = crash::power_loss(&dir.join("journal"), &sync_log)?;
            power_losses += u64::from(loss.bytes_dropped > 0);
        }
        let report = runtime.block_on(verify(&dir, &acknowledged, run))?;
        in_checkpoint += u64::from(
            report.checkpoint_markers_after_snapshot + report.leftover_segments + report.leftover_runs > 0,
        );
        in_commit += u64::from(report.completed_commits > 0);
        totals.snapshot_accounts += report.snapshot_accounts;
        totals.completed_commits += report.completed_commits;
        println!("run {run}: killed after {delay_ms} ms, {report:?}");
    }
    println!(
        "{run} kills: {loaded_runs} under load, {in_checkpoint} inside a checkpoint, {in_commit} between a \
         commit and its application, {power_losses} power losses that dropped bytes, {} transfers acknowledged",
        acknowledged.len()
    );
    anyhow::ensure!(totals.snapshot_accounts > 0, "no restart recovered from a snapshot");
    anyhow::ensure!(loaded_runs >= run / 2, "only {loaded_runs} of {run} runs were killed under load");
    anyhow::ensure!(acknowledged.len() > 1_000, "only {} transfers acknowledged", acknowledged.len());
    anyhow::ensure!(in_checkpoint > 0, "no kill landed inside a checkpoint in {run} runs");
    anyhow::ensure!(in_commit > 0, "no kill landed between a commit and its application in {run} runs");
    anyhow::ensure!(power_losses > 0, "no power loss dropped anything");
    Ok(())
}

/// Checks the data after a kill: the books, and the history of a few
/// accounts (a different few each run); returns what recovery found.
async fn verify(
    dir: &std::path::Path,
    acknowledged: &BTreeMap<u128, TransferRequest>,
    run: u64,
) -> anyhow::Result<RecoveryReport> {
    let node = crash::open_for_checks(dir).await?;
    let report = node.recovery.clone();
    crash::check_books(&node, acknowledged).await.map_err(|e| e.context(format!("run {run}")))?;
    let accounts = node.ledger.accounts().await?;
    let few: Vec<_> = accounts.into_iter().skip((run as usize * 7) % 13).step_by(5).collect();
    crash::check_history(&node, &few).await.map_err(|e| e.context(format!("run {run}")))?;
    // Leave the files as the kill left them for the next run.
    node.stop_without_checkpoint().await;
    Ok(report)
}
