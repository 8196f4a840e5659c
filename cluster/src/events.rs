//! The ledger events publisher: shards hand it durable history entries
//! ([`EventQueue`], the engine's `EventSink`), and a task publishes them to
//! JetStream in atomic batches ([`EventPublisher`]), after finding out what
//! an earlier run or an unacknowledged batch already stored.

mod publisher;
mod queue;

pub use publisher::{EventPublisher, PublisherOptions};
pub use queue::EventQueue;

use wallet_actors::events::uuid_text;
use wallet_actors::AccountId;

/// The stream every event goes to.
pub const STREAM: &str = "WALLET_EVENTS";

/// The subjects of the stream: one per account.
pub const SUBJECTS: &str = "wallet.events.>";

/// The subject of an account's events: `wallet.events.<account uuid>`.
pub fn subject(account_id: AccountId) -> String {
    format!("wallet.events.{}", uuid_text(account_id.get()))
}
