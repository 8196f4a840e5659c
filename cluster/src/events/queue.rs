//! The feed between the shards and the publisher: a bounded queue of
//! durable history entries, in each shard's order (so in each account's).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use wallet_actors::events::EventSink;
use wallet_actors::shard::HistoryEntry;
use wallet_actors::{AccountId, ShardId};

/// Durable history entries waiting for the publisher.
pub struct EventQueue {
    entries: Mutex<VecDeque<HistoryEntry>>,
    ready: tokio::sync::Notify,
    capacity: usize,
    handed: AtomicU64,
    done: AtomicU64,
    dropped: AtomicU64,
    /// Accounts some of whose entries were dropped: the publisher reads
    /// them back from history.
    lagging: Mutex<std::collections::BTreeSet<AccountId>>,
}

impl EventQueue {
    /// A queue that holds at most `capacity` entries; past that it drops
    /// what it is handed and counts it (`wallet_events_dropped_total`).
    pub fn new(capacity: usize) -> EventQueue {
        EventQueue {
            entries: Mutex::new(VecDeque::new()),
            ready: tokio::sync::Notify::new(),
            capacity,
            handed: AtomicU64::new(0),
            done: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            lagging: Mutex::new(std::collections::BTreeSet::new()),
        }
    }

    /// Waits until entries are queued, then takes up to `limit` of them.
    pub(crate) async fn take(&self, limit: usize) -> Vec<HistoryEntry> {
        loop {
            let notified = self.ready.notified();
            if let Ok(mut entries) = self.entries.lock() {
                if !entries.is_empty() {
                    let n = limit.min(entries.len());
                    return entries.drain(..n).collect();
                }
            }
            notified.await;
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Accounts whose dropped entries the publisher still has to read back.
    pub(crate) fn take_lagging(&self) -> Vec<AccountId> {
        self.lagging.lock().map(|mut l| std::mem::take(&mut *l).into_iter().collect()).unwrap_or_default()
    }

    /// The publisher could not catch `account` up yet.
    pub(crate) fn lag(&self, account: AccountId) {
        if let Ok(mut lagging) = self.lagging.lock() {
            lagging.insert(account);
        }
    }

    /// The publisher is done with `n` more entries.
    pub(crate) fn done(&self, n: usize) {
        self.done.fetch_add(n as u64, Ordering::SeqCst);
    }
}

impl EventSink for EventQueue {
    fn durable(&self, _shard: ShardId, entries: Vec<HistoryEntry>) {
        let n = entries.len() as u64;
        self.handed.fetch_add(n, Ordering::SeqCst);
        let Ok(mut queue) = self.entries.lock() else { return };
        if queue.len() + entries.len() > self.capacity {
            drop(queue);
            // Dropped from memory, not lost: they are durable history, and
            // the publisher reads them back (before the account's next
            // event, or when the queue has drained).
            self.dropped.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("wallet_events_dropped_total").increment(n);
            if let Ok(mut lagging) = self.lagging.lock() {
                lagging.extend(entries.iter().map(|e| e.account_id));
            }
            self.ready.notify_one();
            return;
        }
        queue.extend(entries);
        drop(queue);
        self.ready.notify_one();
    }

    fn progress(&self) -> (u64, u64) {
        (self.handed.load(Ordering::SeqCst), self.done.load(Ordering::SeqCst) + self.dropped())
    }
}
