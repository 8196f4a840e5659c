//! Unit tests of the shard actor's ordering rules, with a journal that
//! holds records and their callbacks until the test releases them.

use std::sync::{Arc, Mutex};

use ractor::RpcReplyPort;
use tokio::sync::oneshot;

use super::outbox::Outbox;
use super::*;
use crate::account::{Account, AccountFlags, AccountStatus, Leg, Side};
use crate::amount::Amount;
use crate::asset::Asset;
use crate::ids::{AccountId, CommitId, ShardId, TransferId, UserId};
use crate::ports::{Journal, ManualClock, OnDurable, Origin};
use crate::registry::TransferRegistry;
use crate::shard::{HoldChange, Planned};
use crate::transfer::{Transfer, TransferKind, TransferRequest};

/// Keeps what was appended, in order, and calls nothing back until told.
#[derive(Default)]
struct HeldJournal {
    records: Mutex<Vec<Record>>,
    callbacks: Mutex<Vec<OnDurable>>,
}

impl Journal for HeldJournal {
    fn append(&self, _origin: Origin, record: Record, on_durable: OnDurable) {
        lock(&self.records).push(record);
        lock(&self.callbacks).push(on_durable);
    }
}

impl HeldJournal {
    /// Makes everything appended so far durable, in order.
    fn sync(&self) {
        let callbacks = std::mem::take(&mut *lock(&self.callbacks));
        for on_durable in callbacks {
            on_durable(Ok(()));
        }
    }

    fn appended(&self) -> usize {
        lock(&self.records).len()
    }

    /// Drops every callback not yet called, as a journal whose completion
    /// thread died would.
    fn drop_pending(&self) {
        drop(std::mem::take(&mut *lock(&self.callbacks)));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn id(n: u128) -> AccountId {
    AccountId::new(n).unwrap_or_else(|_| unreachable!())
}

fn usd() -> Asset {
    Asset::new("USD", 2).unwrap_or_else(|_| unreachable!())
}

fn account(n: u128, flags: AccountFlags) -> Account {
    Account {
        id: id(n),
        user_id: UserId::new(2).unwrap_or_else(|_| unreachable!()),
        asset: usd(),
        flags,
        overdraft_limit: Amount::ZERO,
        status: AccountStatus::Active,
        balances: Default::default(),
        created_at_ms: 0,
        sequence: 1,
        debit_window: Default::default(),
    }
}

/// A posted transfer of `value` from `debit` to `credit`, as one operation.
fn posted(transfer: u128, debit: u128, credit: u128, value: u128) -> Arc<[Planned]> {
    let transfer_id = TransferId::new(transfer).unwrap_or_else(|_| unreachable!());
    let amount = Amount::new(value).unwrap_or_else(|_| unreachable!());
    let request = TransferRequest::Transfer {
        id: transfer_id,
        debit_account_id: id(debit),
        credit_account_id: id(credit),
        amount,
        pending: None,
        reference: None,
        metadata: None,
    };
    let leg = |account_id, side| Leg {
        account_id,
        transfer_id,
        side,
        posted_add: value,
        pending_add: 0,
        pending_sub: 0,
        at_ms: 0,
    };
    Arc::from(vec![Planned {
        transfer: Some(Arc::new(Transfer {
            id: transfer_id,
            kind: TransferKind::Posted,
            debit_account_id: id(debit),
            credit_account_id: id(credit),
            amount,
            pending_id: None,
            expires_at_ms: None,
            timestamp_ms: 0,
            review: None,
            request: Arc::new(request),
        })),
        legs: [leg(id(debit), Side::Debit), leg(id(credit), Side::Credit)],
        hold: HoldChange::None,
        decision: None,
    }])
}

/// One shard owning every account: 1 (funding, no limits), and wallets 2 and 3.
fn running(journal: Arc<HeldJournal>) -> RunningShard {
    let mut state = ShardState::new(ShardId(0), 1);
    for opened in [
        account(1, AccountFlags::UNLIMITED),
        account(2, AccountFlags::WALLET),
        account(3, AccountFlags::WALLET),
    ] {
        if let Err(rejection) = state.open_account(opened) {
            panic!("open: {rejection}");
        }
    }
    let shared = Arc::new(Shared::new(
        Arc::new(LocalRouter::default()),
        journal,
        Arc::new(TransferRegistry::default()),
        crate::risk::DecisionLog::default(),
        Arc::new(ManualClock::new(1)),
        Arc::new(tokio::sync::Notify::new()),
    ));
    RunningShard { state, shared, myself: None, outbox: Outbox::default(), unsynced: Default::default() }
}

fn port<T>() -> (RpcReplyPort<T>, oneshot::Receiver<T>) {
    let (tx, rx) = oneshot::channel();
    (tx.into(), rx)
}

/// An answer registered with the shard's router, as a caller would.
fn register(shard: &RunningShard) -> (ReplyTo, oneshot::Receiver<Answer>) {
    match shard.shared.router.register() {
        Ok(expected) => expected,
        Err(error) => panic!("the router refuses to register answers: {error}"),
    }
}

#[test]
fn a_prepare_is_answered_only_after_the_records_it_relies_on_are_appended() {
    let journal = Arc::new(HeldJournal::default());
    let mut shard = running(journal.clone());
    // Account 2 receives 100; its record waits in the outbox.
    let (executed, mut executed_rx) = register(&shard);
    shard.handle(ShardMsg::Execute(vec![posted(10, 1, 2, 100)], executed));
    // A coordinated commit reserves a debit of those 100 from account 2.
    let (prepared, mut prepared_rx) = register(&shard);
    shard.handle(ShardMsg::Prepare {
        commit_id: CommitId { epoch: 1, counter: 7, decider: ShardId(0) },
        ops: vec![(0, posted(11, 2, 3, 100))],
        reply: prepared,
    });
    assert_eq!(journal.appended(), 0, "nothing flushed yet");
    assert!(
        prepared_rx.try_recv().is_err(),
        "the coordinator heard 'prepared' before the credit it relies on was appended: its commit could be durable before that credit"
    );
    shard.flush();
    assert_eq!(journal.appended(), 1, "the credit's record is appended");
    match prepared_rx.try_recv() {
        Ok(Answer::Prepared(outcomes)) => {
            assert!(matches!(outcomes.as_slice(), [(_, Ok(()))]), "{outcomes:?}")
        }
        other => panic!("no answer to the prepare after the flush: {other:?}"),
    }
    assert!(executed_rx.try_recv().is_err(), "the transfer is not acknowledged before it is durable");
    journal.sync();
    assert!(matches!(executed_rx.try_recv(), Ok(Answer::Executed(Ok(_)))));
}

#[test]
fn a_read_shows_a_change_only_once_it_is_durable() {
    let journal = Arc::new(HeldJournal::default());
    let mut shard = running(journal.clone());
    // Nothing on its way to the journal: a read is answered at once.
    let (read, mut read_rx) = register(&shard);
    shard.handle(ShardMsg::GetAccount(id(2), read));
    shard.flush();
    assert!(
        matches!(read_rx.try_recv(), Ok(Answer::Read(Ok(Some(_))))),
        "an idle shard answers reads at once"
    );

    let (executed, _executed_rx) = register(&shard);
    shard.handle(ShardMsg::Execute(vec![posted(10, 1, 2, 100)], executed));
    shard.flush();
    // The credit is appended, not durable: a read must wait for it.
    let (read, mut read_rx) = register(&shard);
    shard.handle(ShardMsg::GetAccount(id(2), read));
    let (history, mut history_rx) = register(&shard);
    shard.handle(ShardMsg::History { account_id: id(2), after_sequence: 0, limit: 10, reply: history });
    shard.flush();
    assert!(read_rx.try_recv().is_err(), "a read showed a balance a crash could still take back");
    assert!(history_rx.try_recv().is_err(), "a history read showed an entry a crash could still take back");
    journal.sync(); // the credit
    journal.sync(); // the read's wait, queued after it
    match read_rx.try_recv() {
        Ok(Answer::Read(Ok(Some((account, _))))) => assert_eq!(account.balances.credits_posted, 100),
        other => panic!("{other:?}"),
    }
    match history_rx.try_recv() {
        Ok(Answer::History(Ok(entries))) => {
            assert_eq!(entries.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 2])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_generation_answers_no_reads() {
    let journal = Arc::new(HeldJournal::default());
    let mut shard = running(journal);
    // Poisoned as a halt leaves it (the table of answers still open): the
    // shard itself refuses the read.
    shard.shared.poisoned.store(true, Ordering::SeqCst);
    let (read, mut read_rx) = register(&shard);
    shard.handle(ShardMsg::GetAccount(id(2), read));
    assert!(matches!(read_rx.try_recv(), Ok(Answer::Read(Err(LedgerError::Unavailable)))));
    let (dump, mut dump_rx) = port();
    shard.handle(ShardMsg::Dump(dump));
    assert!(matches!(dump_rx.try_recv(), Ok(Err(LedgerError::Unavailable))));
}

#[test]
fn a_failure_ends_every_wait_and_a_dropped_callback_answers_unavailable() {
    let journal = Arc::new(HeldJournal::default());
    let mut shard = running(journal.clone());
    // A transfer whose record is appended, not durable; then the journal
    // drops its callback without calling it.
    let (executed, mut executed_rx) = register(&shard);
    shard.handle(ShardMsg::Execute(vec![posted(10, 1, 2, 100)], executed));
    shard.flush();
    journal.drop_pending();
    assert!(matches!(executed_rx.try_recv(), Ok(Answer::Executed(Err(LedgerError::Unavailable)))));
    // A question waiting when the generation fails hears unavailable, and
    // no later one is taken.
    let (_read, mut read_rx) = register(&shard);
    shard.shared.fail(Failure::ShardCrashed(ShardId(0)));
    assert!(matches!(read_rx.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    assert!(shard.shared.router.register().is_err());
}
