//! The feed between the shards and the publisher: a bounded queue of
//! durable history entries, in each shard's order (so in each account's).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use wallet_actors::ports::EventSink;
use wallet_actors::HistoryEntry;
use wallet_actors::{AccountId, ShardId};

/// Durable history entries waiting for the publisher.
pub struct EventQueue {
    entries: Mutex<VecDeque<HistoryEntry>>,
    ready: tokio::sync::Notify,
    capacity: usize,
    handed: AtomicU64,
    done: AtomicU64,
    dropped: AtomicU64,
    /// Accounts some of whose entries were dropped (or that the last
    /// checkpoint recorded as unsettled): the publisher reads them back from
    /// history. Each with the number of the last time it was marked, so
    /// that catching an account up does not clear a mark made meanwhile.
    lagging: Mutex<BTreeMap<AccountId, u64>>,
    marks: AtomicU64,
    /// Accounts of the entries the publisher took and has not finished.
    taken: Mutex<HashSet<AccountId>>,
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
            lagging: Mutex::new(BTreeMap::new()),
            marks: AtomicU64::new(0),
            taken: Mutex::new(HashSet::new()),
        }
    }

    /// Waits until entries are queued, then takes up to `limit` of them;
    /// or, with none queued, until an account lags (then nothing is taken,
    /// and the publisher catches up the lagging accounts).
    pub(crate) async fn take(&self, limit: usize) -> Vec<HistoryEntry> {
        loop {
            let notified = self.ready.notified();
            if let Ok(mut entries) = self.entries.lock() {
                if !entries.is_empty() {
                    let n = limit.min(entries.len());
                    let taken: Vec<HistoryEntry> = entries.drain(..n).collect();
                    drop(entries);
                    if let Ok(mut accounts) = self.taken.lock() {
                        accounts.extend(taken.iter().map(|e| e.account_id));
                    }
                    return taken;
                }
            }
            if self.lagging.lock().is_ok_and(|lagging| !lagging.is_empty()) {
                return Vec::new();
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

    /// Accounts whose entries the publisher still has to read back, each
    /// with its mark (for [`EventQueue::caught_up`]). They stay lagging, and
    /// so unsettled, until caught up.
    pub(crate) fn lagging(&self) -> Vec<(AccountId, u64)> {
        self.lagging.lock().map(|l| l.iter().map(|(a, m)| (*a, *m)).collect()).unwrap_or_default()
    }

    fn lag_all(&self, accounts: impl Iterator<Item = AccountId>) {
        if let Ok(mut lagging) = self.lagging.lock() {
            for account in accounts {
                lagging.insert(account, self.marks.fetch_add(1, Ordering::Relaxed) + 1);
            }
        }
        self.ready.notify_one();
    }

    /// The publisher caught `account` up as of `mark`: no longer lagging,
    /// unless it was marked again since.
    pub(crate) fn caught_up(&self, account: AccountId, mark: u64) {
        if let Ok(mut lagging) = self.lagging.lock() {
            if lagging.get(&account) == Some(&mark) {
                lagging.remove(&account);
            }
        }
    }

    /// The publisher is done with `n` more entries: all it took.
    pub(crate) fn done(&self, n: usize) {
        if let Ok(mut accounts) = self.taken.lock() {
            accounts.clear();
        }
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
            self.lag_all(entries.iter().map(|e| e.account_id));
            return;
        }
        queue.extend(entries);
        drop(queue);
        self.ready.notify_one();
    }

    fn progress(&self) -> (u64, u64) {
        (self.handed.load(Ordering::SeqCst), self.done.load(Ordering::SeqCst) + self.dropped())
    }

    fn unsettled(&self) -> Vec<AccountId> {
        let mut accounts: HashSet<AccountId> = HashSet::new();
        if let Ok(entries) = self.entries.lock() {
            accounts.extend(entries.iter().map(|e| e.account_id));
        }
        if let Ok(taken) = self.taken.lock() {
            accounts.extend(taken.iter().copied());
        }
        if let Ok(lagging) = self.lagging.lock() {
            accounts.extend(lagging.keys().copied());
        }
        accounts.into_iter().collect()
    }

    fn resume(&self, accounts: Vec<AccountId>) {
        self.lag_all(accounts.into_iter());
    }
}
