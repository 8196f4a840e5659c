//! A failed journal write stops the ledger for good (only a restart, which
//! reads the files, may serve again); the ledger says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wallet_actors::account::AccountFlags;
use wallet_actors::ports::{Journal, JournalError, ManualClock, OnDurable, Origin, Ports};
use wallet_actors::record::Record;
use wallet_actors::recovery::Recovery;
use wallet_actors::Failure;
use wallet_actors::{Amount, Asset, Ledger, LedgerConfig, LedgerError, NewAccount, UserId};

/// A journal whose disk goes away once the ledger started (a unit
/// stand-in for a failed `fdatasync`); the start's own records succeed.
#[derive(Default)]
struct FailingJournal {
    broken: AtomicBool,
}

impl Journal for FailingJournal {
    fn append(&self, _origin: Origin, _record: Record, on_durable: OnDurable) {
        if self.broken.load(Ordering::SeqCst) {
            on_durable(Err(JournalError::Io { kind: std::io::ErrorKind::Other }));
        } else {
            on_durable(Ok(()));
        }
    }
}

/// A ledger of two empty shards whose journal fails from now on.
async fn started() -> anyhow::Result<Ledger> {
    let (recovered, completions) = Recovery::new(2).finish().map_err(|_| anyhow::anyhow!("recovery"))?;
    let config = LedgerConfig { shard_count: 2, ..LedgerConfig::default() };
    let journal = Arc::new(FailingJournal::default());
    let ports = Ports::new(journal.clone(), Arc::new(ManualClock::new(1)));
    let ledger = Ledger::start(recovered, completions, ports, config).await?;
    journal.broken.store(true, Ordering::SeqCst);
    Ok(ledger)
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

/// A start journals its commit epoch before it serves; a journal that
/// cannot take it stops the start rather than serve ids a later start
/// might give again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_whose_epoch_cannot_be_journaled_does_not_serve() -> anyhow::Result<()> {
    let (recovered, completions) = Recovery::new(2).finish().map_err(|_| anyhow::anyhow!("recovery"))?;
    let config = LedgerConfig { shard_count: 2, ..LedgerConfig::default() };
    let journal = FailingJournal { broken: AtomicBool::new(true) };
    let ports = Ports::new(Arc::new(journal), Arc::new(ManualClock::new(1)));
    let started = Ledger::start(recovered, completions, ports, config).await;
    assert!(matches!(started, Err(LedgerError::Unavailable)), "{:?}", started.err());
    Ok(())
}
