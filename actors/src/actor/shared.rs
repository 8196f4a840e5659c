//! What a generation of shards shares with the rest of the ledger
//! ([`Shared`]), why a generation fails ([`Failure`]), and the gate that
//! closes its way to the journal ([`JournalGate`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::ids::ShardId;
use crate::ports::{Clock, HistoryIndex, Journal, JournalError, OnDurable, Origin, ShardRouter};
use crate::record::Record;
use crate::registry::TransferRegistry;

/// What the shards share with the rest of the ledger.
pub struct Shared {
    /// How shards reach each other.
    pub router: Arc<dyn ShardRouter>,
    /// Where records go.
    pub journal: Arc<dyn Journal>,
    /// Transfer ids and outcomes.
    pub registry: Arc<TransferRegistry>,
    /// Risk decisions, numbered as their records become durable.
    pub decisions: crate::risk::DecisionLog,
    /// The ledger's clock.
    pub clock: Arc<dyn Clock>,
    /// Where history older than the last snapshot is read.
    pub history: std::sync::RwLock<Option<Arc<dyn HistoryIndex>>>,
    /// Set once this generation of shards failed (a journal write, a
    /// snapshot read, a shard crashed): from then on the in-memory state may
    /// be ahead of the durable one, so nothing more is accepted.
    pub poisoned: AtomicBool,
    /// Why it failed, set once, before `failed` is woken.
    pub failure: std::sync::OnceLock<Failure>,
    /// Woken when it fails (shared by every generation of the ledger).
    pub failed: Arc<tokio::sync::Notify>,
    /// Set while the shards are stopped on purpose: their ends are not failures.
    pub stopping: AtomicBool,
    /// Where durable history entries go for the ledger events, if anywhere.
    pub events: Option<Arc<dyn crate::ports::EventSink>>,
}

/// Why a generation of shards stopped serving. Every kind leaves the
/// durable state whole; all but a journal failure are mended by rebuilding
/// the shards from it ([`crate::Ledger::restart`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A journal write or sync failed: whether a record is durable is unknown.
    #[error("journal failed: {0}")]
    Journal(JournalError),
    /// A passivated account could not be read back from the snapshot.
    #[error("reading an account from the snapshot failed")]
    SnapshotRead,
    /// A shard actor panicked or stopped (a broken invariant).
    #[error("shard {} crashed", .0.0)]
    ShardCrashed(ShardId),
    /// A shard could not be sent a message.
    #[error("shard {} unreachable", .0.0)]
    ShardUnreachable(ShardId),
}

impl Shared {
    /// Shared state of a new generation of shards.
    pub fn new(
        router: Arc<dyn ShardRouter>,
        journal: Arc<dyn Journal>,
        registry: Arc<TransferRegistry>,
        decisions: crate::risk::DecisionLog,
        clock: Arc<dyn Clock>,
        failed: Arc<tokio::sync::Notify>,
    ) -> Shared {
        Shared {
            router,
            journal,
            registry,
            decisions,
            clock,
            history: std::sync::RwLock::new(None),
            poisoned: AtomicBool::new(false),
            failure: std::sync::OnceLock::new(),
            failed,
            stopping: AtomicBool::new(false),
            events: None,
        }
    }

    /// A durable-callback that poisons the ledger if the write failed.
    pub fn poison_on_failure(self: &Arc<Self>) -> OnDurable {
        let shared = self.clone();
        Box::new(move |result| {
            if let Err(error) = result {
                shared.poison(error);
            }
        })
    }

    /// Marks the ledger failed because a passivated account could not be
    /// read back: answers about it could be wrong, so none are given.
    pub fn poison_on_read(&self) {
        self.fail(Failure::SnapshotRead);
    }

    /// Marks the ledger failed because a journal write failed.
    pub fn poison(&self, error: JournalError) {
        self.fail(Failure::Journal(error));
    }

    /// Marks this generation failed (the first failure is the one kept) and
    /// wakes whoever supervises the ledger. Every caller still waiting for
    /// an answer hears `unavailable` now (a crashed shard's messages will
    /// never be answered; retrying with the same id is safe).
    pub fn fail(&self, failure: Failure) {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            let _ = self.failure.set(failure);
            tracing::error!(%failure, "the ledger refuses work until its shards are rebuilt from durable state");
            self.router.close_replies();
            self.failed.notify_one();
        }
    }
}

/// Closes a generation's way to the journal: once [`JournalGate::close`]
/// returns, nothing that generation still has in flight (a shard's last
/// flush, a coordinator's commit) can reach the journal, so a rebuild that
/// reads the journal after a barrier sees everything the old generation
/// will ever have written.
pub struct JournalGate {
    journal: Arc<dyn Journal>,
    open: std::sync::RwLock<bool>,
}

impl JournalGate {
    /// An open gate in front of `journal`.
    pub fn new(journal: Arc<dyn Journal>) -> JournalGate {
        JournalGate { journal, open: std::sync::RwLock::new(true) }
    }

    /// Refuses every later append; waits for appends under way to be queued.
    pub fn close(&self) {
        *self.open.write().unwrap_or_else(std::sync::PoisonError::into_inner) = false;
    }
}

impl Journal for JournalGate {
    fn append(&self, origin: Origin, record: Record, on_durable: OnDurable) {
        let open = self.open.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *open {
            self.journal.append(origin, record, on_durable);
        } else {
            drop(open);
            on_durable(Err(JournalError::Closed));
        }
    }

    fn when_durable(&self, on_durable: OnDurable) {
        let open = self.open.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *open {
            self.journal.when_durable(on_durable);
        } else {
            drop(open);
            on_durable(Err(JournalError::Closed));
        }
    }
}
