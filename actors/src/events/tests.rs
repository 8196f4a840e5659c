use std::sync::Arc;

use super::*;
use crate::account::Leg;
use crate::transfer::TransferRequest;
use crate::{AccountId, Amount, TransferId};

const ACCOUNT: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;
const AT_MS: u64 = 1_795_660_692_345;

fn account() -> AccountId {
    AccountId::new(ACCOUNT).unwrap_or_else(|_| unreachable!())
}

fn tid(n: u128) -> TransferId {
    TransferId::new(n).unwrap_or_else(|_| unreachable!())
}

fn entry(sequence: u64, event: HistoryEvent) -> HistoryEntry {
    let balances =
        Balances { debits_posted: 30, credits_posted: 100, debits_pending: 20, credits_pending: 5 };
    HistoryEntry { account_id: account(), sequence, event, balances, at_ms: AT_MS }
}

fn leg(transfer: u128, side: Side, posted_add: u128, pending_add: u128, pending_sub: u128) -> HistoryEvent {
    HistoryEvent::Leg(Leg {
        account_id: account(),
        transfer_id: tid(transfer),
        side,
        posted_add,
        pending_add,
        pending_sub,
        at_ms: AT_MS,
    })
}

fn transfer(id: u128, kind: TransferKind, pending_id: Option<u128>) -> Transfer {
    let other = AccountId::new(2).unwrap_or_else(|_| unreachable!());
    Transfer {
        id: tid(id),
        kind,
        debit_account_id: account(),
        credit_account_id: other,
        amount: Amount::new(7).unwrap_or_else(|_| unreachable!()),
        pending_id: pending_id.map(tid),
        expires_at_ms: None,
        timestamp_ms: AT_MS,
        review: None,
        request: Arc::new(TransferRequest::VoidPending { id: tid(id), pending_id: tid(1) }),
    }
}

#[test]
fn an_opening_renders_with_its_id_time_and_balance() -> Result<(), serde_json::Error> {
    let event = LedgerEvent::render(&entry(1, HistoryEvent::Opened), None);
    let json = serde_json::to_value(&event)?;
    assert_eq!(
        json,
        serde_json::json!({
            "event_id": "01234567-89ab-cdef-0123-456789abcdef:1",
            "type": "account.opened",
            "account_id": "01234567-89ab-cdef-0123-456789abcdef",
            "sequence": 1,
            "occurred_at": "2026-11-26T02:38:12.345Z",
            "balance": {
                "available": "50",
                "debits_posted": "30",
                "credits_posted": "100",
                "debits_pending": "20",
                "credits_pending": "5"
            }
        })
    );
    assert_eq!(serde_json::from_value::<LedgerEvent>(json)?, event);
    Ok(())
}

/// A history event, the transfer it names, and the type, amount and pending id expected.
type Case = (HistoryEvent, Option<Transfer>, EventType, Option<&'static str>, Option<u128>);

#[test]
fn each_change_gets_its_type() {
    let cases: Vec<Case> = vec![
        (HistoryEvent::StatusChanged(AccountStatus::Frozen), None, EventType::AccountFrozen, None, None),
        (HistoryEvent::StatusChanged(AccountStatus::Active), None, EventType::AccountUnfrozen, None, None),
        (HistoryEvent::StatusChanged(AccountStatus::Closed), None, EventType::AccountClosed, None, None),
        (leg(9, Side::Debit, 7, 0, 0), None, EventType::TransferPosted, Some("7"), None),
        (leg(9, Side::Debit, 0, 7, 0), None, EventType::HoldCreated, Some("7"), None),
        // A partial post: 4 of 7 posted, 3 released.
        (
            leg(10, Side::Credit, 4, 0, 7),
            Some(transfer(10, TransferKind::PostPending, Some(9))),
            EventType::HoldPosted,
            Some("4"),
            Some(9),
        ),
        (
            leg(11, Side::Debit, 0, 0, 7),
            Some(transfer(11, TransferKind::VoidPending, Some(9))),
            EventType::HoldVoided,
            Some("7"),
            Some(9),
        ),
        // An expiry's legs name the hold itself.
        (
            leg(9, Side::Debit, 0, 0, 7),
            Some(transfer(9, TransferKind::Pending, None)),
            EventType::HoldExpired,
            Some("7"),
            Some(9),
        ),
    ];
    for (history, transfer, kind, amount, pending) in cases {
        let event = LedgerEvent::render(&entry(5, history.clone()), transfer.as_ref());
        assert_eq!(event.kind, kind, "{history:?}");
        assert_eq!(event.amount.as_deref(), amount, "{history:?}");
        assert_eq!(event.pending_id, pending.map(uuid_text), "{history:?}");
        assert_eq!(event.transfer_id.is_some(), amount.is_some(), "{history:?}");
        let json = serde_json::to_value(&event).unwrap_or_default();
        assert_eq!(json["type"], kind.name(), "{history:?}");
    }
}

#[test]
fn ids_and_times_are_written_as_the_api_writes_them() {
    assert_eq!(uuid_text(1), "00000000-0000-0000-0000-000000000001");
    assert_eq!(uuid_text(u128::MAX), "ffffffff-ffff-ffff-ffff-ffffffffffff");
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
}
