//! A caller that stops waiting leaves no id behind: the request still runs
//! to the end, so a retry with the same id gets the real outcome (applied
//! once, or refused and free to use again), never `in_flight` for good.
//!
//! The journal here holds its callbacks until the test lets them run (a
//! unit stand-in for a slow disk).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wallet_actors::account::AccountFlags;
use wallet_actors::ports::{Journal, ManualClock, OnDurable, Origin, Ports};
use wallet_actors::record::Record;
use wallet_actors::recovery::Recovery;
use wallet_actors::risk::{Rule, RuleAction, RuleKind, RuleScope};
use wallet_actors::{
    AccountId, Amount, Asset, Ledger, LedgerConfig, LedgerError, NewAccount, Rejection, TransferId,
    TransferRequest, UserId,
};

/// Durable at once while open; once held, callbacks wait for `release`.
#[derive(Default)]
struct SlowJournal {
    held: AtomicBool,
    waiting: Mutex<Vec<OnDurable>>,
}

impl Journal for SlowJournal {
    fn append(&self, _origin: Origin, _record: Record, on_durable: OnDurable) {
        if self.held.load(Ordering::SeqCst) {
            self.lock().push(on_durable);
        } else {
            on_durable(Ok(()));
        }
    }
}

impl SlowJournal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<OnDurable>> {
        self.waiting.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Makes everything held durable, and stops holding.
    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        let waiting = std::mem::take(&mut *self.lock());
        for on_durable in waiting {
            on_durable(Ok(()));
        }
    }
}

fn id(n: u128) -> anyhow::Result<AccountId> {
    AccountId::new(n).map_err(|_| anyhow::anyhow!("account id"))
}

fn transfer(n: u128, debit: u128, credit: u128, value: u128) -> anyhow::Result<TransferRequest> {
    Ok(TransferRequest::Transfer {
        id: TransferId::new(n).map_err(|_| anyhow::anyhow!("transfer id"))?,
        debit_account_id: id(debit)?,
        credit_account_id: id(credit)?,
        amount: Amount::new(value)?,
        pending: None,
        reference: None,
        metadata: None,
    })
}

/// A ledger of 4 shards with accounts 1 (no limits) and 2..=5 (wallets),
/// whose requests give up after 200 ms.
async fn ledger(journal: Arc<SlowJournal>) -> anyhow::Result<Ledger> {
    ledger_timing_out_after(journal, 200).await
}

async fn ledger_timing_out_after(
    journal: Arc<SlowJournal>,
    request_timeout_ms: u64,
) -> anyhow::Result<Ledger> {
    let (recovered, completions) = Recovery::new(4).finish()?;
    let config = LedgerConfig { shard_count: 4, request_timeout_ms, ..LedgerConfig::default() };
    let ports = Ports::new(journal, Arc::new(ManualClock::new(1)));
    let ledger = Ledger::start(recovered, completions, ports, config).await?;
    for n in 1..=5 {
        let flags = if n == 1 { AccountFlags::UNLIMITED } else { AccountFlags::WALLET };
        let user_id = UserId::new(2).map_err(|_| anyhow::anyhow!("user"))?;
        let new = NewAccount {
            id: id(n)?,
            user_id,
            asset: Asset::new("USD", 2)?,
            flags,
            overdraft_limit: Amount::ZERO,
        };
        ledger.open_account(new).await?;
    }
    Ok(ledger)
}

/// Retries `request` until its outcome is known (not `in_flight`).
async fn settled(
    ledger: &Ledger,
    request: &TransferRequest,
) -> anyhow::Result<wallet_actors::TransferResult> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let result = ledger.submit_one(request.clone()).await?;
        if result != Err(Rejection::InFlight) {
            return Ok(result);
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "still in flight after 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_whose_caller_timed_out_is_replayed_once_it_is_durable() -> anyhow::Result<()> {
    let journal = Arc::new(SlowJournal::default());
    let ledger = ledger(journal.clone()).await?;
    // Across two shards and within one, so both paths are covered.
    for (n, debit, credit) in [(10, 1, 2), (11, 1, 3), (12, 1, 4), (13, 1, 5)] {
        let request = transfer(n, debit, credit, 100)?;
        journal.hold();
        assert_eq!(ledger.submit_one(request.clone()).await, Err(LedgerError::Timeout));
        // Not known yet: the id is taken, not free and not applied.
        assert_eq!(ledger.submit_one(request.clone()).await?, Err(Rejection::InFlight));
        journal.release();
        match settled(&ledger, &request).await? {
            Ok(outcome) => assert!(outcome.replayed, "transfer {n} applied a second time"),
            Err(rejection) => anyhow::bail!("transfer {n}: {rejection}"),
        }
    }
    for n in 2..=5 {
        let view = ledger.account(id(n)?).await?.ok_or_else(|| anyhow::anyhow!("account {n}"))?;
        assert_eq!(view.account.balances.credits_posted, 100, "account {n}");
    }
    ledger.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_veto_whose_caller_went_away_frees_its_id() -> anyhow::Result<()> {
    let journal = Arc::new(SlowJournal::default());
    let ledger = ledger(journal.clone()).await?;
    ledger.submit_one(transfer(1, 1, 2, 1_000)?).await??;
    let rule = Rule {
        id: wallet_actors::ids::RuleId::new(1).map_err(|_| anyhow::anyhow!("rule id"))?,
        name: "at most 50".into(),
        kind: RuleKind::MaxAmount { asset: "USD".into(), amount: Amount::new(50)? },
        scope: RuleScope::Global,
        action: RuleAction::Reject,
        timeout_seconds: None,
    };
    ledger.set_rules(vec![rule]).await?;
    let request = transfer(20, 2, 3, 60)?;
    journal.hold();
    // The caller gives up before the veto's decision is durable.
    let gave_up = tokio::time::timeout(Duration::from_millis(50), ledger.submit_one(request.clone())).await;
    assert!(gave_up.is_err(), "the veto was answered before its decision was durable");
    journal.release();
    // Refused, so nothing was applied and the id is free: the retry is
    // refused again for its own reason, not `in_flight`.
    let retried = settled(&ledger, &request).await?;
    assert!(matches!(retried, Err(Rejection::RiskMaxAmountExceeded(_))), "{retried:?}");
    ledger.set_rules(Vec::new()).await?;
    let applied = ledger.submit_one(request).await?;
    assert!(matches!(&applied, Ok(outcome) if !outcome.replayed), "{applied:?}");
    ledger.shutdown().await;
    Ok(())
}

/// A shard's crash fails the whole generation, so a caller waiting on a
/// healthy shard hears `unavailable` at once, not its time-out: its
/// outcome is unknown (the record may still become durable), and a retry
/// with the same id is safe. (Crashing a shard on purpose needs
/// `fault-injection`, which the workspace's test build enables.)
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_of_a_healthy_shard_hears_unavailable_when_another_shard_crashes() -> anyhow::Result<()> {
    let journal = Arc::new(SlowJournal::default());
    // A time-out far longer than the wait below: hearing within the wait
    // cannot be the time-out, even on a machine busy with other tests.
    let ledger = Arc::new(ledger_timing_out_after(journal.clone(), 30_000).await?);
    let involved = [id(1)?.shard(4), id(2)?.shard(4)];
    let elsewhere = (0..4)
        .map(wallet_actors::ShardId)
        .find(|shard| !involved.contains(shard))
        .ok_or_else(|| anyhow::anyhow!("a shard the transfer does not touch"))?;
    journal.hold();
    let waiting = {
        let ledger = ledger.clone();
        let request = transfer(30, 1, 2, 100)?;
        tokio::spawn(async move { ledger.submit_one(request).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!waiting.is_finished(), "answered before its record was durable");
    ledger.crash_shard(elsewhere);
    let heard = tokio::time::timeout(Duration::from_secs(5), waiting).await;
    assert!(matches!(heard, Ok(Ok(Err(LedgerError::Unavailable)))), "{heard:?}");
    journal.release();
    Ok(())
}
