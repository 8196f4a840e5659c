//! What the crash tests check after a restart (the books, every history) and
//! the power loss they simulate before it.

use std::path::Path;

use wallet_actors::registry::TransferRecord;
use wallet_actors::{Ledger, TransferRequest};
use wallet_cluster::node::NodeLedger;
use wallet_storage::EmbeddedLedger;

/// What the checks read: a running ledger, and every transfer it stores.
pub trait Books {
    /// The ledger.
    fn ledger(&self) -> &Ledger;
    /// Every transfer, wherever it is kept, with its current status.
    fn all_transfers(&self) -> anyhow::Result<Vec<TransferRecord>>;
}

impl Books for EmbeddedLedger {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn all_transfers(&self) -> anyhow::Result<Vec<TransferRecord>> {
        Ok(EmbeddedLedger::all_transfers(self)?)
    }
}

impl Books for NodeLedger {
    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn all_transfers(&self) -> anyhow::Result<Vec<TransferRecord>> {
        Ok(NodeLedger::all_transfers(self)?)
    }
}

/// What [`power_loss`] dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct PowerLoss {
    /// Segments cut short.
    pub segments_cut: u64,
    /// Bytes dropped.
    pub bytes_dropped: u64,
}

/// Does to the journal in `journal_dir` what a power loss right now would
/// do: every segment keeps only the bytes its last sync covered, as the
/// journal logged them in `sync_log` (`WALLET_SYNC_LOG`); what only the page
/// cache held is gone. A segment the log does not name was never synced
/// and keeps nothing.
pub fn power_loss(journal_dir: &Path, sync_log: &Path) -> anyhow::Result<PowerLoss> {
    let mut synced: std::collections::BTreeMap<std::path::PathBuf, u64> = Default::default();
    for line in std::fs::read_to_string(sync_log).unwrap_or_default().lines() {
        let Some((path, length)) = line.rsplit_once(' ') else { continue };
        if let Ok(length) = length.parse() {
            synced.insert(std::path::PathBuf::from(path), length);
        }
    }
    let mut loss = PowerLoss::default();
    for entry in std::fs::read_dir(journal_dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "wal") {
            continue;
        }
        let keep = synced.get(&path).copied().unwrap_or(0);
        let length = std::fs::metadata(&path)?.len();
        if length > keep {
            std::fs::OpenOptions::new().write(true).open(&path)?.set_len(keep)?;
            loss.segments_cut += 1;
            loss.bytes_dropped += length - keep;
        }
    }
    Ok(loss)
}

/// Every acknowledged transfer is stored as acknowledged, every balance is
/// what the stored transfers add up to (so nothing is half-applied or
/// applied twice), no limit is passed, and the books balance.
pub async fn check_books(
    node: &impl Books,
    acknowledged: &std::collections::BTreeMap<u128, TransferRequest>,
) -> anyhow::Result<()> {
    use std::collections::BTreeMap;
    use wallet_actors::transfer::TransferKind;
    use wallet_actors::TransferStatus;
    // On a live node holds expire in the background: take the transfers
    // between two reads of the accounts that agree, so that no change fell
    // between the transfers and the balances compared with them.
    let sorted = |mut accounts: Vec<wallet_actors::Account>| {
        accounts.sort_by_key(|a| a.id);
        accounts
    };
    let mut attempts = 0;
    let (transfers, accounts) = loop {
        let before = sorted(node.ledger().accounts().await?);
        let transfers = node.all_transfers()?;
        let after = sorted(node.ledger().accounts().await?);
        if before == after {
            break (transfers, after);
        }
        attempts += 1;
        anyhow::ensure!(attempts < 100, "the accounts never held still for a check");
    };
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
    for account in accounts {
        account.check_limits()?;
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

/// The history of the accounts named: every event once, gap-free from the
/// opening, the balances after each adding up, the last one the account's.
pub async fn check_history(node: &impl Books, accounts: &[wallet_actors::Account]) -> anyhow::Result<()> {
    for account in accounts {
        let mut running = wallet_actors::Balances::default();
        let mut after = 0;
        while after < account.sequence {
            let page = node.ledger().history(account.id, after, 1000).await?;
            anyhow::ensure!(
                !page.is_empty(),
                "account {}: history ends at {after} of {}",
                account.id,
                account.sequence
            );
            for entry in page {
                anyhow::ensure!(
                    entry.sequence == after + 1,
                    "account {}: {} after {after}",
                    account.id,
                    entry.sequence
                );
                if let wallet_actors::shard::HistoryEvent::Leg(leg) = &entry.event {
                    let (posted, pending) = match leg.side {
                        wallet_actors::account::Side::Debit => {
                            (&mut running.debits_posted, &mut running.debits_pending)
                        }
                        wallet_actors::account::Side::Credit => {
                            (&mut running.credits_posted, &mut running.credits_pending)
                        }
                    };
                    *posted += leg.posted_add;
                    *pending = *pending + leg.pending_add - leg.pending_sub;
                }
                anyhow::ensure!(entry.balances == running, "account {} entry {}", account.id, entry.sequence);
                after = entry.sequence;
            }
        }
        anyhow::ensure!(running == account.balances, "account {}: history does not add up", account.id);
    }
    Ok(())
}
