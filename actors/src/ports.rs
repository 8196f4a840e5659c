//! The engine's seams: every way the ledger reaches what lies outside it,
//! in one place. The engine is pure and in-memory; storage, time, other
//! shards and subscribers plug in here, and a ledger gets them as one
//! [`Ports`] bundle when it starts.
//!
//! | Port | What it is | Embedded node | Tests |
//! |---|---|---|---|
//! | [`Journal`] | where records become durable, in order | `wallet_storage::FileJournal` | in-memory journals |
//! | [`Clock`] | now, in milliseconds | [`SystemClock`] | [`ManualClock`] |
//! | [`TransferIndex`] | transfers older than the last snapshot (exactly once, ever) | sorted runs on disk | none |
//! | [`HistoryIndex`] | account history older than the last snapshot | sorted runs on disk | none |
//! | [`DecisionIndex`] | risk decisions older than the last snapshot | the sled snapshot | none |
//! | [`AccountSource`] | passivated accounts, read back when named | the sled snapshot | none |
//! | [`EventSink`] | durable history, for ledger events | the NATS outbox and live SSE watchers | recording sinks |
//! | [`ShardRouter`] | how shards reach each other | `LocalRouter` (actor references) | |
//!
//! Reads from storage fail with one error, [`ReadError`]; the journal's
//! writes with [`JournalError`].

use std::sync::Arc;

use crate::account::Account;
use crate::actor::{Answer, ReplyTo, ShardMsg};
use crate::ids::{AccountId, ShardId, TransferId, UserId};
use crate::record::Record;
use crate::registry::TransferRecord;
use crate::risk::{Decision, UserWindow};
use crate::shard::HistoryEntry;
use crate::LedgerError;

/// What a ledger is plugged into, handed to [`crate::Ledger::start`] once.
/// Storage builds it; [`crate::Ledger::detach_storage`] lets go of its
/// stored parts at shutdown, so storage can close.
#[derive(Clone)]
pub struct Ports {
    /// Where records become durable.
    pub journal: Arc<dyn Journal>,
    /// Now.
    pub clock: Arc<dyn Clock>,
    /// What storage keeps older than the last snapshot (recovery reads
    /// through the same parts).
    pub stored: Stored,
    /// Where durable history goes for ledger events, if anywhere.
    pub events: Option<Arc<dyn EventSink>>,
}

impl Ports {
    /// A journal and a clock; nothing older than memory, no events (tests).
    pub fn new(journal: Arc<dyn Journal>, clock: Arc<dyn Clock>) -> Ports {
        Ports { journal, clock, stored: Stored::default(), events: None }
    }
}

/// The indexes of what storage keeps older than the last snapshot. Each is
/// optional: `None` means memory holds everything there is (unit tests).
#[derive(Clone, Default)]
pub struct Stored {
    /// Transfers, so an id stays used for ever.
    pub transfers: Option<Arc<dyn TransferIndex>>,
    /// Account history.
    pub history: Option<Arc<dyn HistoryIndex>>,
    /// Risk decisions.
    pub decisions: Option<Arc<dyn DecisionIndex>>,
    /// Passivated accounts, read back when a message names them.
    pub accounts: Option<Arc<dyn AccountSource>>,
}

/// Why a journal could not make a record durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// A write or sync failed; whether the record is durable is unknown, so
    /// the ledger stops taking writes until it is restarted and recovers.
    #[error("journal write failed: {kind}")]
    Io {
        /// The I/O error's kind.
        kind: std::io::ErrorKind,
    },
    /// The journal was shut down.
    #[error("journal is closed")]
    Closed,
    /// This node no longer holds the lease the write needs (cluster mode:
    /// its own, or the shard's): another node, or a later start of this
    /// one, may own the shard now, so the record was refused, not written.
    #[error("journal write refused: this node no longer holds the lease it needs")]
    Fenced,
    /// This node does not hold the lease of the record's shard (cluster
    /// mode: a renewal found it lost, or it was never taken), while its
    /// journal goes on for its other shards: the record was refused, not
    /// written, and the shard serves again once its lease is taken back.
    #[error("journal write refused: this node does not hold the shard's lease")]
    NotHeld,
}

/// Whose record it is. A shard's records go under that shard's lease in
/// cluster mode (a node that lost the shard cannot write them) and come back
/// to whoever owns the shard next; the node's own records (an epoch, a risk
/// veto, a checkpoint marker) need no shard lease. The file journal of the
/// embedded node keeps one order for both and stores no origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Origin {
    /// A shard's state changes.
    Shard(ShardId),
    /// The node's own records.
    Node,
}

/// Called once a record is durable, or once it is known it may not be.
pub type OnDurable = Box<dyn FnOnce(Result<(), JournalError>) + Send + 'static>;

/// An append-only durable log of [`Record`]s.
///
/// Guarantees asked of an implementation: records become durable in the
/// order appended (a durable record implies every earlier one is durable);
/// `on_durable` is called exactly once per record, after it is durable, and in
/// append order; appends never block the caller.
pub trait Journal: Send + Sync + 'static {
    /// Queues `record` of `origin`; calls `on_durable` once it is durable.
    fn append(&self, origin: Origin, record: Record, on_durable: OnDurable);

    /// Calls `on_durable` once every record appended before this call is
    /// durable (or once it is known one may not be), in order with the
    /// callbacks of those records. Reads wait on it so that they never show
    /// a change that a crash could still take back. The default appends an
    /// empty record; an implementation may write nothing at all.
    fn when_durable(&self, on_durable: OnDurable) {
        self.append(Origin::Node, Record::Batch(Vec::new()), on_durable);
    }
}

/// Appends `record` and waits until it is durable (records recovery
/// produced, checkpoint markers, barriers: not the hot path, which never
/// waits inside a shard).
pub async fn append_durable(
    journal: &dyn Journal,
    origin: Origin,
    record: Record,
) -> Result<(), JournalError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    journal.append(
        origin,
        record,
        Box::new(move |result| {
            let _ = tx.send(result);
        }),
    );
    rx.await.unwrap_or(Err(JournalError::Closed))
}

/// The ledger's clock, in milliseconds since the Unix epoch. A trait so tests
/// can drive pending-transfer expiry.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(std::sync::atomic::AtomicU64::new(now_ms))
    }

    /// Moves it forward.
    pub fn advance_ms(&self, by_ms: u64) {
        self.0.fetch_add(by_ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Sets it.
    pub fn set_ms(&self, now_ms: u64) {
        self.0.store(now_ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Storage could not be read (an index, the snapshot): what the read would
/// have said is unknown, so whatever depended on it must not go ahead (an
/// id not known to be free is not claimed; a shard that cannot load an
/// account stops).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("storage could not be read")]
pub struct ReadError;

/// Where transfers older than the last snapshot are found: storage keeps
/// them, so that memory holds only recent ones and "at most once, ever"
/// still holds.
pub trait TransferIndex: Send + Sync + 'static {
    /// The transfer with this id, if storage has it.
    fn get(&self, id: TransferId) -> Result<Option<TransferRecord>, ReadError>;
}

/// Where account history older than the last snapshot lives.
pub trait HistoryIndex: Send + Sync + 'static {
    /// Entries of `account_id` after `after_sequence`, oldest first, at most `limit`.
    fn history(
        &self,
        account_id: AccountId,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, ReadError>;
}

/// Where decisions older than the last snapshot are read.
pub trait DecisionIndex: Send + Sync + 'static {
    /// Decisions with an id above `after_id`, of `account_id` when given,
    /// oldest first, at most `limit`.
    fn decisions(
        &self,
        account_id: Option<AccountId>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Decision>, ReadError>;
}

/// Where passivated accounts are read back from: the snapshot store. Reads
/// are synchronous and short (a key look-up); a failed read poisons the
/// ledger, as a failed journal write does.
pub trait AccountSource: Send + Sync + 'static {
    /// The account as of the last snapshot, if it is there.
    fn load(&self, account_id: AccountId) -> Result<Option<Account>, ReadError>;
    /// A user's debit window as of the last snapshot, if it has one.
    fn load_user_window(&self, user_id: UserId) -> Result<Option<UserWindow>, ReadError>;
    /// Every account in the snapshot (audits and tests: reads them all).
    fn all(&self) -> Result<Vec<Account>, ReadError>;
}

/// Where shards hand the history entries whose records are durable: the
/// ledger events' feed (an outbox publisher). Called on the journal's
/// completion thread, in each shard's record order, and at the start of
/// every generation of shards with the entries recovery replayed (already
/// durable; possibly published before a crash, so a feed deduplicates by
/// account sequence). It must not block.
pub trait EventSink: Send + Sync {
    /// `entries` of `shard`, durable, in the order they were made.
    fn durable(&self, shard: ShardId, entries: Vec<HistoryEntry>);

    /// How many entries it was handed, and how many of those it is done
    /// with (published, or found published before). A checkpoint, which
    /// takes entries out of what recovery replays, waits a bounded time for
    /// the second to reach what the first was when it captured.
    fn progress(&self) -> (u64, u64);

    /// Whether entries made now need handing: when false, shards skip
    /// copying what they make, so a node with no subscriber pays nothing
    /// on its write path. Entries made while it said false are never
    /// handed later; a sink that starts wanting reads them from the
    /// durable history (a live watcher replays it before going live).
    fn wants_entries(&self) -> bool {
        true
    }

    /// Accounts whose handed entries are not all published yet (queued,
    /// being sent, or dropped and to be read back). A checkpoint records
    /// them with the snapshot it writes: it takes their entries out of what
    /// a restart replays, so the next start must catch them up instead.
    fn unsettled(&self) -> Vec<AccountId> {
        Vec::new()
    }

    /// At start: `accounts`, recorded by the last checkpoint as unsettled,
    /// may have durable entries no replay hands again; the feed reads them
    /// back from the history (from what it finds already published).
    fn resume(&self, accounts: Vec<AccountId>) {
        let _ = accounts;
    }
}

/// How shards reach each other. In the embedded node every shard is a
/// local actor; cluster mode routes some of them over NATS.
pub trait ShardRouter: Send + Sync + 'static {
    /// Delivers `message` to `shard`, in order with earlier messages to it.
    fn send(&self, shard: ShardId, message: ShardMsg) -> Result<(), LedgerError>;
    /// Registers an answer to wait for: messages name it by the
    /// [`ReplyTo`] returned, never by a channel. `unavailable` once closed.
    fn register(&self) -> Result<(ReplyTo, tokio::sync::oneshot::Receiver<Answer>), LedgerError>;
    /// Delivers an answer to whoever registered `to` (dropped if nobody waits).
    fn reply(&self, to: ReplyTo, answer: Answer);
    /// Stops waiting for one answer (its message could not be sent).
    fn cancel(&self, to: ReplyTo);
    /// Ends every wait with `unavailable`: the shards failed or stop, and
    /// messages they will never handle name answers that will never come.
    fn close_replies(&self);
}
