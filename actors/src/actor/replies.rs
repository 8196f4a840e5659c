//! Answers by correlation id. A message between shards names where its
//! answer goes ([`ReplyTo`], plain data) instead of carrying a channel, so
//! it could cross a network; the asking side keeps the channel here, under
//! that id, until the answer comes or the generation of shards ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::oneshot;

use super::{OpOutcome, PrepareOutcome};
use crate::account::{Account, Reserved};
use crate::hash::HashMap;
use crate::ids::NodeId;
use crate::shard::HistoryEntry;
use crate::LedgerError;

/// Where an answer goes: the asking node, and a correlation id it
/// registered there. A router delivers an answer to its node (in process
/// in the embedded node, whose every id names [`NodeId::EMBEDDED`]), and
/// that node's [`Replies`] to its waiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ReplyTo {
    /// The node waiting.
    pub node: NodeId,
    /// Its waiter, among the node's.
    pub correlation: u64,
}

/// An answer to a transfer message.
#[derive(Debug)]
pub enum Answer {
    /// To `Execute`: one outcome per operation, once durable.
    Executed(Result<Vec<OpOutcome>, LedgerError>),
    /// To a transfer between two shards (`Debit`, then `Credit` or
    /// `Refused`): its outcome, once durable.
    Chained(Result<OpOutcome, LedgerError>),
    /// To `Prepare`: one outcome per operation, with the shard's assets.
    Prepared(Vec<PrepareOutcome>),
    /// To `Commit`: the deciding record is durable.
    Committed(Result<(), LedgerError>),
    /// To `OpenAccount` and `SetStatus`: the account, once durable.
    Account(Result<Account, LedgerError>),
    /// To `GetAccount`: the account and its reservations, once durable as shown.
    Read(Result<Option<(Account, Reserved)>, LedgerError>),
    /// To `History`: the entries in memory, once durable as shown.
    History(Result<Vec<HistoryEntry>, LedgerError>),
}

const STRIPES: usize = 16;

#[derive(Default)]
struct Stripe {
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
    closed: bool,
}

/// The answers a node waits for. Closed when its generation of shards
/// fails or stops: a message that will never be handled drops no channel
/// any more, so closing is what tells every waiter `unavailable`.
pub struct Replies {
    node: NodeId,
    stripes: Vec<Mutex<Stripe>>,
    next: AtomicU64,
}

impl Default for Replies {
    /// The embedded node's.
    fn default() -> Self {
        Replies::new(NodeId::EMBEDDED)
    }
}

impl Replies {
    /// The answers `node` waits for.
    pub fn new(node: NodeId) -> Self {
        Replies { node, stripes: (0..STRIPES).map(|_| Mutex::default()).collect(), next: AtomicU64::new(1) }
    }

    fn stripe(&self, id: u64) -> std::sync::MutexGuard<'_, Stripe> {
        // Plain data behind the lock: usable after a panic elsewhere.
        self.stripes[id as usize % STRIPES].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers an answer to wait for; `unavailable` once closed.
    pub fn register(&self) -> Result<(ReplyTo, oneshot::Receiver<Answer>), LedgerError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = oneshot::channel();
        let mut stripe = self.stripe(id);
        if stripe.closed {
            return Err(LedgerError::Unavailable);
        }
        stripe.waiting.insert(id, sender);
        Ok((ReplyTo { node: self.node, correlation: id }, receiver))
    }

    /// Delivers an answer. One nobody waits for (answered already, or
    /// closed) is dropped: the caller timed out or the generation ended.
    pub fn answer(&self, to: ReplyTo, answer: Answer) {
        if to.node != self.node {
            // Another node's correlation ids may equal ours: delivering it
            // here would hand a waiter someone else's answer.
            tracing::error!(?to, node = ?self.node, "an answer for another node reached this one; dropped");
            return;
        }
        let sender = self.stripe(to.correlation).waiting.remove(&to.correlation);
        if let Some(sender) = sender {
            let _ = sender.send(answer);
        }
    }

    /// Answers still awaited.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        (0..STRIPES).map(|index| self.stripe(index as u64).waiting.len()).sum()
    }

    /// Stops waiting for one answer (its message could not be sent).
    pub fn cancel(&self, to: ReplyTo) {
        if to.node != self.node {
            return;
        }
        self.stripe(to.correlation).waiting.remove(&to.correlation);
    }

    /// Drops every waiting channel, so every waiter hears `unavailable`,
    /// and refuses later registrations.
    pub fn close(&self) {
        for index in 0..STRIPES {
            let waiting = {
                let mut stripe = self.stripe(index as u64);
                stripe.closed = true;
                std::mem::take(&mut stripe.waiting)
            };
            drop(waiting);
        }
    }
}

/// An answer a shard owes once a record is durable, held by the record's
/// callback. If the callback is dropped without being called (a journal
/// whose completion thread died), the caller hears `unavailable`, as when
/// the channel itself travelled in the callback.
pub struct Owed<T: 'static> {
    router: std::sync::Arc<dyn crate::ports::ShardRouter>,
    to: ReplyTo,
    kind: fn(Result<T, LedgerError>) -> Answer,
    paid: bool,
}

impl<T: 'static> Owed<T> {
    /// An answer owed to `to`, of the kind `kind` makes.
    pub fn new(
        router: std::sync::Arc<dyn crate::ports::ShardRouter>,
        to: ReplyTo,
        kind: fn(Result<T, LedgerError>) -> Answer,
    ) -> Self {
        Owed { router, to, kind, paid: false }
    }

    /// Sends it.
    pub fn pay(mut self, result: Result<T, LedgerError>) {
        self.paid = true;
        self.router.reply(self.to, (self.kind)(result));
    }
}

impl<T: 'static> Drop for Owed<T> {
    fn drop(&mut self) {
        if !self.paid {
            self.router.reply(self.to, (self.kind)(Err(LedgerError::Unavailable)));
        }
    }
}

/// Sends `message` to `shard` through `router` and waits (up to `timeout`,
/// if any) for the answer `pick` accepts. Its entry in the table of answers
/// awaited goes when the answer comes, and otherwise with the wait: when
/// the message cannot be sent, on the time-out, and when the caller drops
/// this future mid-wait (a client that went away), rather than staying
/// until the shard answers.
pub async fn ask<T>(
    router: &dyn crate::ports::ShardRouter,
    shard: crate::ids::ShardId,
    timeout: Option<std::time::Duration>,
    message: impl FnOnce(ReplyTo) -> super::ShardMsg,
    pick: impl FnOnce(Answer) -> Option<Result<T, LedgerError>>,
) -> Result<T, LedgerError> {
    let (to, answer) = router.register()?;
    let _entry = CancelOnDrop { router, to };
    router.send(shard, message(to))?;
    let answered = wait_for(answer, pick);
    match timeout {
        None => answered.await?,
        Some(timeout) => {
            tokio::time::timeout(timeout, answered).await.map_err(|_| LedgerError::Timeout)??
        }
    }
}

/// Cancels an awaited answer when dropped (a no-op once it was answered:
/// correlation ids are never reused).
struct CancelOnDrop<'a> {
    router: &'a dyn crate::ports::ShardRouter,
    to: ReplyTo,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.router.cancel(self.to);
    }
}

/// Waits for an answer of the kind `pick` accepts; `unavailable` when the
/// replies closed, or (a bug) the answer is of another kind.
pub async fn wait_for<T>(
    receiver: oneshot::Receiver<Answer>,
    pick: impl FnOnce(Answer) -> Option<T>,
) -> Result<T, LedgerError> {
    receiver.await.ok().and_then(pick).ok_or(LedgerError::Unavailable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_answer_reaches_its_waiter_and_closing_frees_the_rest() -> Result<(), LedgerError> {
        let replies = Replies::default();
        let (first, first_rx) = replies.register()?;
        let (second, second_rx) = replies.register()?;
        replies.answer(first, Answer::Chained(Ok(Ok(()))));
        let chained = |answer| match answer {
            Answer::Chained(outcome) => Some(outcome),
            _ => None,
        };
        assert_eq!(wait_for(first_rx, chained).await?, Ok(Ok(())));
        replies.answer(first, Answer::Chained(Ok(Ok(())))); // twice: dropped
                                                            // Another node's waiter with the same correlation is not this one.
        let elsewhere = ReplyTo { node: NodeId(7), correlation: second.correlation };
        replies.answer(elsewhere, Answer::Chained(Ok(Ok(()))));
        replies.close();
        assert_eq!(wait_for(second_rx, chained).await, Err(LedgerError::Unavailable));
        assert!(replies.register().is_err());
        Ok(())
    }

    /// A router whose shards never answer; sending fails once `down`.
    #[derive(Default)]
    struct Silent {
        replies: Replies,
        down: std::sync::atomic::AtomicBool,
    }

    impl crate::ports::ShardRouter for Silent {
        fn send(&self, _: crate::ids::ShardId, _: super::super::ShardMsg) -> Result<(), LedgerError> {
            if self.down.load(Ordering::Relaxed) {
                Err(LedgerError::Unavailable)
            } else {
                Ok(())
            }
        }
        fn register(&self) -> Result<(ReplyTo, oneshot::Receiver<Answer>), LedgerError> {
            self.replies.register()
        }
        fn reply(&self, to: ReplyTo, answer: Answer) {
            self.replies.answer(to, answer);
        }
        fn cancel(&self, to: ReplyTo) {
            self.replies.cancel(to);
        }
        fn close_replies(&self) {
            self.replies.close();
        }
    }

    async fn ask_silent(router: &Silent, timeout_ms: u64) -> Result<(), LedgerError> {
        let message = |to: ReplyTo| {
            super::super::ShardMsg::Settle(vec![crate::ids::CommitId {
                epoch: 1,
                counter: to.correlation,
                decider: crate::ids::ShardId(0),
            }])
        };
        let pick = |_| Some(Ok(()));
        let timeout = Some(std::time::Duration::from_millis(timeout_ms));
        ask(router, crate::ids::ShardId(0), timeout, message, pick).await
    }

    #[tokio::test]
    async fn an_ask_that_ends_without_its_answer_leaves_no_entry() {
        let router = Silent::default();
        // Its own time-out.
        assert_eq!(ask_silent(&router, 5).await, Err(LedgerError::Timeout));
        assert_eq!(router.replies.waiting(), 0, "after a time-out");
        // The caller drops it mid-wait (its client went away).
        let dropped =
            tokio::time::timeout(std::time::Duration::from_millis(5), ask_silent(&router, 60_000)).await;
        assert!(dropped.is_err());
        assert_eq!(router.replies.waiting(), 0, "after the caller dropped the wait");
        // The message cannot be sent.
        router.down.store(true, Ordering::Relaxed);
        assert_eq!(ask_silent(&router, 60_000).await, Err(LedgerError::Unavailable));
        assert_eq!(router.replies.waiting(), 0, "after a failed send");
    }
}
