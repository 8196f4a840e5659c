//! The ledger events publisher: shards hand it durable history entries
//! ([`EventQueue`], the engine's `EventSink`), and a task publishes them to
//! JetStream in atomic batches ([`EventPublisher`]), after finding out what
//! an earlier run or an unacknowledged batch already stored. The same
//! entries go to this node's live watchers ([`LiveEvents`], the HTTP API's
//! Server-Sent Events); [`EventFeeds`] hands them to both.

mod live;
mod publisher;
mod queue;

pub use live::{EventFeeds, LiveEvents, LiveOptions, Subscription, TooManyWatchers};
pub use publisher::{EventPublisher, PublisherOptions};
pub use queue::EventQueue;

use wallet_actors::events::{uuid_text, LedgerEvent};
use wallet_actors::{AccountId, Ledger};
use wallet_actors::{HistoryEntry, HistoryEvent};

/// The stream every event goes to.
pub const STREAM: &str = "WALLET_EVENTS";

/// The subjects of the stream: one per account.
pub const SUBJECTS: &str = "wallet.events.>";

/// The subject of an account's events: `wallet.events.<account uuid>`.
pub fn subject(account_id: AccountId) -> String {
    format!("wallet.events.{}", uuid_text(account_id.get()))
}

/// The event of a durable history entry. A leg that releases a hold needs
/// the transfer it names (a void and an expiry differ only there, and a post
/// or void names its hold); no other event does, and the lookup is skipped:
/// a transfer a checkpoint moved out of memory costs a storage read, and
/// a publisher catching up after an outage renders mostly such transfers.
///
/// Without that transfer the event would come out different (a void for
/// an expiry, no `pending_id`), and the same change must always give the
/// same event: so it is an error, and the caller tries again later. The
/// ledger records a transfer before it hands on the entries it made, so
/// only a failed storage read gets here.
pub fn render(ledger: &Ledger, entry: &HistoryEntry) -> Result<LedgerEvent, TransferUnreadable> {
    let transfer = match &entry.event {
        HistoryEvent::Leg(leg) if leg.pending_sub > 0 => {
            Some(ledger.transfer(leg.transfer_id).ok_or(TransferUnreadable(leg.transfer_id))?)
        }
        _ => None,
    };
    Ok(LedgerEvent::render(entry, transfer.as_ref().map(|record| record.transfer.as_ref())))
}

/// The transfer a history entry names could not be read.
#[derive(Debug, thiserror::Error)]
#[error("transfer {0} of a durable history entry could not be read")]
pub struct TransferUnreadable(pub wallet_actors::TransferId);
