//! Ledger events: what subscribers see of each change to an account (NATS
//! JetStream, Server-Sent Events). An event is a durable history entry
//! rendered as JSON with the transfer it names; the same entry always
//! renders to the same event, so a re-publication after a crash is
//! byte-for-byte the first one. `docs/EVENTS.md` is the consumer's side.

use serde::{Deserialize, Serialize};

use crate::account::{Balances, Side};
use crate::shard::{HistoryEntry, HistoryEvent};
use crate::transfer::{Transfer, TransferKind};
use crate::AccountStatus;

/// What happened to the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// Opened (sequence 1).
    #[serde(rename = "account.opened")]
    AccountOpened,
    /// Frozen: no debits or credits until unfrozen.
    #[serde(rename = "account.frozen")]
    AccountFrozen,
    /// Active again after a freeze.
    #[serde(rename = "account.unfrozen")]
    AccountUnfrozen,
    /// Closed, for good.
    #[serde(rename = "account.closed")]
    AccountClosed,
    /// A posted transfer moved its posted totals.
    #[serde(rename = "transfer.posted")]
    TransferPosted,
    /// A pending transfer (a hold) moved its pending totals.
    #[serde(rename = "hold.created")]
    HoldCreated,
    /// A hold was posted, fully or partly (the rest released).
    #[serde(rename = "hold.posted")]
    HoldPosted,
    /// A hold was voided.
    #[serde(rename = "hold.voided")]
    HoldVoided,
    /// A hold reached its timeout.
    #[serde(rename = "hold.expired")]
    HoldExpired,
}

impl EventType {
    /// The wire name (`"transfer.posted"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EventType::AccountOpened => "account.opened",
            EventType::AccountFrozen => "account.frozen",
            EventType::AccountUnfrozen => "account.unfrozen",
            EventType::AccountClosed => "account.closed",
            EventType::TransferPosted => "transfer.posted",
            EventType::HoldCreated => "hold.created",
            EventType::HoldPosted => "hold.posted",
            EventType::HoldVoided => "hold.voided",
            EventType::HoldExpired => "hold.expired",
        }
    }
}

/// The account's balance right after the change; amounts as strings of
/// minor units (as in the HTTP API), `available` signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBalance {
    /// Posted credits minus posted and pending debits.
    pub available: String,
    /// Sum of posted debits.
    pub debits_posted: String,
    /// Sum of posted credits.
    pub credits_posted: String,
    /// Sum of pending debits.
    pub debits_pending: String,
    /// Sum of pending credits.
    pub credits_pending: String,
}

impl From<&Balances> for EventBalance {
    fn from(b: &Balances) -> Self {
        EventBalance {
            available: b.available().to_string(),
            debits_posted: b.debits_posted.to_string(),
            credits_posted: b.credits_posted.to_string(),
            debits_pending: b.debits_pending.to_string(),
            credits_pending: b.credits_pending.to_string(),
        }
    }
}

/// Which side of a transfer the account is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSide {
    /// Money left the account.
    Debit,
    /// Money reached the account.
    Credit,
}

/// One change to one account, as subscribers receive it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerEvent {
    /// `<account_id>:<sequence>`: unique, and the same every time the
    /// change is rendered (the `Nats-Msg-Id` and the SSE id's source).
    pub event_id: String,
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The account (UUID).
    pub account_id: String,
    /// The account's own gap-free sequence number (opening = 1), as in its history.
    pub sequence: u64,
    /// When the change happened (RFC 3339, UTC, milliseconds).
    pub occurred_at: String,
    /// The balance right after it.
    pub balance: EventBalance,
    /// For transfer and hold events: the transfer that made the change
    /// (the post or void for `hold.posted` and `hold.voided`, the hold for
    /// `hold.created` and `hold.expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// For transfer and hold events: the account's side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub side: Option<EventSide>,
    /// For transfer and hold events: the amount that moved, in minor
    /// units (held, posted, or released by a void or an expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    /// For `hold.posted`, `hold.voided` and `hold.expired`: the hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_id: Option<String>,
}

impl LedgerEvent {
    /// Renders a history entry. `transfer` is the transfer the entry's leg
    /// names (needed to tell a void from an expiry and to name the hold a
    /// post or void resolved); without it, a release of a hold by a
    /// transfer that is not itself the hold reads as a void.
    pub fn render(entry: &HistoryEntry, transfer: Option<&Transfer>) -> LedgerEvent {
        let account_id = uuid_text(entry.account_id.get());
        let mut event = LedgerEvent {
            event_id: format!("{account_id}:{}", entry.sequence),
            kind: EventType::AccountOpened,
            account_id,
            sequence: entry.sequence,
            occurred_at: rfc3339(entry.at_ms),
            balance: EventBalance::from(&entry.balances),
            transfer_id: None,
            side: None,
            amount: None,
            pending_id: None,
        };
        let leg = match &entry.event {
            HistoryEvent::Opened => return event,
            HistoryEvent::StatusChanged(status) => {
                event.kind = match status {
                    AccountStatus::Active => EventType::AccountUnfrozen,
                    AccountStatus::Frozen => EventType::AccountFrozen,
                    AccountStatus::Closed => EventType::AccountClosed,
                };
                return event;
            }
            HistoryEvent::Leg(leg) => leg,
        };
        let expired = transfer.is_some_and(|t| t.kind == TransferKind::Pending && t.id == leg.transfer_id);
        let (kind, amount) = if leg.pending_add > 0 {
            (EventType::HoldCreated, leg.pending_add)
        } else if leg.pending_sub > 0 && leg.posted_add > 0 {
            (EventType::HoldPosted, leg.posted_add)
        } else if leg.pending_sub > 0 && expired {
            (EventType::HoldExpired, leg.pending_sub)
        } else if leg.pending_sub > 0 {
            (EventType::HoldVoided, leg.pending_sub)
        } else {
            (EventType::TransferPosted, leg.posted_add)
        };
        event.kind = kind;
        event.transfer_id = Some(uuid_text(leg.transfer_id.get()));
        event.side = Some(match leg.side {
            Side::Debit => EventSide::Debit,
            Side::Credit => EventSide::Credit,
        });
        event.amount = Some(amount.to_string());
        event.pending_id = match kind {
            EventType::HoldExpired => Some(uuid_text(leg.transfer_id.get())),
            EventType::HoldPosted | EventType::HoldVoided => {
                transfer.and_then(|t| t.pending_id).map(|id| uuid_text(id.get()))
            }
            _ => None,
        };
        event
    }
}

/// A 128-bit id as hyphenated lower-case UUID text, as the HTTP API writes ids.
pub fn uuid_text(value: u128) -> String {
    let hex = format!("{value:032x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC text with milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let seconds = ms / 1000;
    let millis = ms % 1000;
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        of_day / 3600,
        (of_day % 3600) / 60,
        of_day % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
