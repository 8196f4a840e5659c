//! Kill -9 during concurrent load, many times: after every restart each
//! acknowledged transfer is there exactly once, nothing is half-applied, and
//! the books balance.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use wallet_actors::transfer::TransferKind;
use wallet_actors::{TransferRequest, TransferStatus};
use wallet_testkit::crash;

const KILLS: u64 = 32;

fn kill_after_ms(run: u64) -> u64 {
    // Spread the kills: early ones hit recovery and setup, later ones full load.
    let mut x = run.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5bd1_e995;
    x ^= x >> 29;
    20 + x % 400
}

#[test]
fn acknowledged_transfers_survive_kill_9() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let child = env!("CARGO_BIN_EXE_wallet-crash-child");
    let mut acknowledged: BTreeMap<u128, TransferRequest> = BTreeMap::new();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut loaded_runs = 0;
    let mut recovered_from_snapshot = 0;
    for run in 1..=KILLS {
        let mut process = Command::new(child)
            .arg(dir.path())
            .arg(run.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = process.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let reader = std::thread::spawn(move || -> anyhow::Result<(bool, Vec<TransferRequest>)> {
            let mut ready = false;
            let mut acks = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let line = line?;
                if line == "READY" {
                    ready = true;
                } else if let Some(json) = line.strip_prefix("ACK ") {
                    // A line cut by the kill is not an acknowledgement we saw whole.
                    if let Ok(request) = serde_json::from_str::<TransferRequest>(json) {
                        acks.push(request);
                    }
                }
            }
            Ok((ready, acks))
        });
        std::thread::sleep(Duration::from_millis(kill_after_ms(run)));
        process.kill()?; // SIGKILL
        process.wait()?;
        let (ready, acks) = reader.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        if ready && !acks.is_empty() {
            loaded_runs += 1;
        }
        for request in acks {
            acknowledged.insert(request.id().get(), request);
        }
        if runtime.block_on(verify(dir.path(), &acknowledged))? > 0 {
            recovered_from_snapshot += 1;
        }
    }
    anyhow::ensure!(recovered_from_snapshot > 0, "no restart recovered from a snapshot");
    anyhow::ensure!(loaded_runs >= KILLS / 2, "only {loaded_runs} runs were killed under load");
    anyhow::ensure!(acknowledged.len() > 1_000, "only {} transfers acknowledged", acknowledged.len());
    Ok(())
}

/// Checks the data after a kill; returns how many accounts came from the snapshot.
async fn verify(
    dir: &std::path::Path,
    acknowledged: &BTreeMap<u128, TransferRequest>,
) -> anyhow::Result<usize> {
    let node = crash::open(dir).await?;
    check_books(&node, acknowledged).await?;
    let from_snapshot = node.snapshot_accounts;
    // Leave the files as the kill left them for the next run.
    node.stop_without_checkpoint().await;
    Ok(from_snapshot)
}

/// Every acknowledged transfer is stored as acknowledged, every balance is
/// what the stored transfers add up to (so nothing is half-applied or
/// applied twice), no limit is passed, and the books balance.
pub async fn check_books(
    node: &wallet_storage::EmbeddedLedger,
    acknowledged: &BTreeMap<u128, TransferRequest>,
) -> anyhow::Result<()> {
    let transfers = node.all_transfers()?;
    let by_id: BTreeMap<u128, _> = transfers.iter().map(|r| (r.transfer.id.get(), r)).collect();
    for (id, request) in acknowledged {
        let record = by_id.get(id).ok_or_else(|| anyhow::anyhow!("acknowledged transfer {id} is missing"))?;
        anyhow::ensure!(
            *record.transfer.request == *request,
            "transfer {id} differs from what was acknowledged"
        );
    }
    // Recompute every balance from the stored transfers: a half-applied
    // transfer, or one applied twice, would show as a difference.
    let mut expected: BTreeMap<u128, [u128; 4]> = BTreeMap::new();
    for record in &transfers {
        let t = &record.transfer;
        let (debit, credit) = (t.debit_account_id.get(), t.credit_account_id.get());
        let value = t.amount.get();
        match (t.kind, record.status) {
            (TransferKind::Posted, _) | (TransferKind::PostPending, _) => {
                expected.entry(debit).or_default()[0] += value;
                expected.entry(credit).or_default()[1] += value;
            }
            (TransferKind::Pending, TransferStatus::Pending) => {
                expected.entry(debit).or_default()[2] += value;
                expected.entry(credit).or_default()[3] += value;
            }
            _ => {}
        }
    }
    let (mut posted, mut pending) = (0i128, 0i128);
    for account in node.ledger.accounts().await? {
        account.assert_limits();
        let b = account.balances;
        posted += b.credits_posted as i128 - b.debits_posted as i128;
        pending += b.credits_pending as i128 - b.debits_pending as i128;
        let want = expected.get(&account.id.get()).copied().unwrap_or_default();
        let seen = [b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending];
        anyhow::ensure!(
            seen == want,
            "account {}: balances {seen:?}, transfers say {want:?}",
            account.id.get()
        );
    }
    anyhow::ensure!(posted == 0 && pending == 0, "books do not balance: {posted} / {pending}");
    Ok(())
}
