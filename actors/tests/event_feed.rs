//! What shards hand the ledger events' feed. A feed that wants nothing now
//! (no outbox, no live watcher) costs the write path nothing: its shards
//! skip copying the history they make. Entries made while it wanted nothing
//! are never handed later (a watcher reads those from the durable history
//! it replays before it goes live).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wallet_actors::account::AccountFlags;

use wallet_actors::ports::{EventSink, Journal, ManualClock, OnDurable, Origin, Ports};
use wallet_actors::record::Record;
use wallet_actors::recovery::Recovery;
use wallet_actors::shard::HistoryEntry;
use wallet_actors::{
    AccountId, Amount, Asset, Ledger, LedgerConfig, NewAccount, ShardId, TransferId, TransferRequest, UserId,
};

/// Durable at once.
struct InstantJournal;

impl Journal for InstantJournal {
    fn append(&self, _origin: Origin, _record: Record, on_durable: OnDurable) {
        on_durable(Ok(()));
    }
}

/// Records what it is handed; wants entries only while `wanted` is set.
#[derive(Default)]
struct RecordingSink {
    wanted: AtomicBool,
    handed: Mutex<Vec<HistoryEntry>>,
}

impl RecordingSink {
    fn handed(&self) -> Vec<HistoryEntry> {
        self.handed.lock().map(|handed| handed.clone()).unwrap_or_default()
    }
}

impl EventSink for RecordingSink {
    fn durable(&self, _shard: ShardId, entries: Vec<HistoryEntry>) {
        if let Ok(mut handed) = self.handed.lock() {
            handed.extend(entries);
        }
    }

    fn progress(&self) -> (u64, u64) {
        (0, 0)
    }

    fn wants_entries(&self) -> bool {
        self.wanted.load(Ordering::SeqCst)
    }
}

fn id(n: u128) -> anyhow::Result<AccountId> {
    AccountId::new(n).map_err(|_| anyhow::anyhow!("account id"))
}

fn transfer(n: u128, debit: u128, credit: u128) -> anyhow::Result<TransferRequest> {
    Ok(TransferRequest::Transfer {
        id: TransferId::new(n).map_err(|_| anyhow::anyhow!("transfer id"))?,
        debit_account_id: id(debit)?,
        credit_account_id: id(credit)?,
        amount: Amount::new(1)?,
        pending: None,
        reference: None,
        metadata: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_that_wants_nothing_is_handed_nothing() -> anyhow::Result<()> {
    let sink = Arc::new(RecordingSink::default());
    let (recovered, completions) = Recovery::new(4).finish()?;
    let config = LedgerConfig { shard_count: 4, ..LedgerConfig::default() };
    let ports = Ports {
        events: Some(sink.clone()),
        ..Ports::new(Arc::new(InstantJournal), Arc::new(ManualClock::new(1)))
    };
    let ledger = Ledger::start(recovered, completions, ports, config).await?;
    let user_id = UserId::new(2).map_err(|_| anyhow::anyhow!("user"))?;
    for n in 1..=2 {
        let flags = if n == 1 { AccountFlags::UNLIMITED } else { AccountFlags::WALLET };
        let asset = Asset::new("USD", 2)?;
        let new = NewAccount { id: id(n)?, user_id, asset, flags, overdraft_limit: Amount::ZERO };
        ledger.open_account(new).await?;
    }
    for n in 10..20 {
        ledger.submit_one(transfer(n, 1, 2)?).await?.map_err(|r| anyhow::anyhow!("{r}"))?;
    }
    // A transfer between shards is answered before its debit shard has
    // settled it; a read of each account waits until that is durable.
    for n in 1..=2 {
        ledger.account(id(n)?).await?;
    }
    assert!(sink.handed().is_empty(), "handed {} entries it did not want", sink.handed().len());

    sink.wanted.store(true, Ordering::SeqCst);
    ledger.submit_one(transfer(20, 1, 2)?).await?.map_err(|r| anyhow::anyhow!("{r}"))?;
    // Handed once durable, on the journal's thread: wait for both legs.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sink.handed().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut handed: Vec<(u128, u64)> =
        sink.handed().iter().map(|e| (e.account_id.get(), e.sequence)).collect();
    handed.sort_unstable();
    // Openings are sequence 1; ten transfers are 2..=11; the wanted one is 12.
    assert_eq!(handed, vec![(1, 12), (2, 12)], "only what was made while wanted");
    ledger.shutdown().await;
    Ok(())
}
