//! A failed journal write stops the ledger for good (only a restart, which
//! reads the files, may serve again); the ledger says so.

use std::sync::Arc;

use wallet_actors::account::AccountFlags;
use wallet_actors::ports::{Journal, JournalError, ManualClock, OnDurable, Ports};
use wallet_actors::record::Record;
use wallet_actors::recovery::Recovery;
use wallet_actors::Failure;
use wallet_actors::{Amount, Asset, Ledger, LedgerConfig, LedgerError, NewAccount, UserId};

/// A journal whose disk is gone (a unit stand-in for a failed `fdatasync`).
struct FailingJournal;

impl Journal for FailingJournal {
    fn append(&self, _record: Record, on_durable: OnDurable) {
        on_durable(Err(JournalError::Io { kind: std::io::ErrorKind::Other }));
    }
}

/// A ledger of two empty shards whose journal always fails.
async fn started() -> anyhow::Result<Ledger> {
    let (recovered, completions) = Recovery::new(2).finish().map_err(|_| anyhow::anyhow!("recovery"))?;
    let config = LedgerConfig { shard_count: 2, ..LedgerConfig::default() };
    let ports = Ports::new(Arc::new(FailingJournal), Arc::new(ManualClock::new(1)));
    Ok(Ledger::start(recovered, completions, ports, config).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journal_write_poisons_the_ledger_until_a_restart() -> anyhow::Result<()> {
    let ledger = started().await?;
    assert!(ledger.is_serving());
    assert!(!ledger.needs_restart());
    let new = NewAccount {
        id: wallet_actors::AccountId::new(7).map_err(|_| anyhow::anyhow!("id"))?,
        user_id: UserId::new(1).map_err(|_| anyhow::anyhow!("user"))?,
        asset: Asset::new("USD", 2)?,
        flags: AccountFlags::WALLET,
        overdraft_limit: Amount::ZERO,
    };
    assert_eq!(ledger.open_account(new.clone()).await, Err(LedgerError::Unavailable));
    assert!(matches!(ledger.failure(), Some(Failure::Journal(JournalError::Io { .. }))));
    assert!(ledger.needs_restart());
    assert!(!ledger.is_serving());
    // Every write is refused from then on.
    assert_eq!(ledger.open_account(new).await, Err(LedgerError::Unavailable));
    ledger.shutdown().await;
    Ok(())
}

/// Once stopped, the ledger is not rebuilt: a rebuild would start shards
/// on storage that its owner may be closing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_ledger_is_not_rebuilt() -> anyhow::Result<()> {
    let ledger = started().await?;
    ledger.shutdown().await;
    let (recovered, completions) = Recovery::new(2).finish().map_err(|_| anyhow::anyhow!("recovery"))?;
    assert_eq!(ledger.restart(recovered, completions).await, Err(LedgerError::Unavailable));
    assert_eq!(ledger.rebuilds(), 0);
    Ok(())
}
