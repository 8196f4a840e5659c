//! Live events for watchers on this node (the HTTP API's Server-Sent
//! Events): each durable history entry goes to the watchers of its account,
//! through a bounded channel per watcher. A watcher that falls behind by a
//! whole channel is cut off rather than buffered for: it resumes from the
//! durable history by sequence (SSE's `Last-Event-ID`), so nothing is lost
//! by cutting, and a slow reader cannot grow this node's memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use wallet_actors::ports::EventSink;
use wallet_actors::HistoryEntry;
use wallet_actors::{AccountId, ShardId};

/// Limits of the live feed.
#[derive(Clone, Copy, Debug)]
pub struct LiveOptions {
    /// Entries a watcher may have waiting; one more cuts it off.
    pub buffer_per_watcher: usize,
    /// Watchers on the node at once; past it a new one is refused.
    pub watchers_max: usize,
}

impl Default for LiveOptions {
    fn default() -> Self {
        LiveOptions { buffer_per_watcher: 1024, watchers_max: 10_000 }
    }
}

/// The watchers of each account.
pub struct LiveEvents {
    options: LiveOptions,
    watchers: Mutex<HashMap<AccountId, Vec<Watcher>>>,
    /// Watchers registered: the journal's thread skips the lock when none is.
    watching: AtomicUsize,
    next_id: AtomicU64,
}

struct Watcher {
    id: u64,
    sender: mpsc::Sender<HistoryEntry>,
}

/// Too many watchers on this node.
#[derive(Debug, thiserror::Error)]
#[error("{0} live event streams are open on this node")]
pub struct TooManyWatchers(pub usize);

/// One watcher's entries, oldest first. Dropping it unregisters it. When
/// [`Subscription::next`] gives `None` the watcher was cut off (it fell
/// behind); what it missed is in the durable history.
pub struct Subscription {
    live: Arc<LiveEvents>,
    account: AccountId,
    id: u64,
    receiver: mpsc::Receiver<HistoryEntry>,
}

impl LiveEvents {
    /// A feed with no watchers.
    pub fn new(options: LiveOptions) -> LiveEvents {
        LiveEvents {
            options,
            watchers: Mutex::new(HashMap::new()),
            watching: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    /// Registers a watcher of `account`: it gets every entry of the account
    /// made durable from now on.
    pub fn subscribe(self: &Arc<Self>, account: AccountId) -> Result<Subscription, TooManyWatchers> {
        let (sender, receiver) = mpsc::channel(self.options.buffer_per_watcher.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut watchers = self.watchers.lock().map_err(|_| TooManyWatchers(0))?;
        let watching = self.watching.load(Ordering::Relaxed);
        if watching >= self.options.watchers_max {
            return Err(TooManyWatchers(watching));
        }
        watchers.entry(account).or_default().push(Watcher { id, sender });
        self.watching.store(watching + 1, Ordering::Relaxed);
        metrics::gauge!("wallet_events_live_watchers").set((watching + 1) as f64);
        Ok(Subscription { live: self.clone(), account, id, receiver })
    }

    /// Watchers registered now.
    pub fn watching(&self) -> usize {
        self.watching.load(Ordering::Relaxed)
    }

    /// Hands `entries` to their accounts' watchers; cuts off a watcher
    /// whose channel is full (or whose reader is gone).
    pub fn offer(&self, entries: &[HistoryEntry]) {
        if self.watching.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Ok(mut watchers) = self.watchers.lock() else { return };
        let mut removed = 0;
        for entry in entries {
            let Some(list) = watchers.get_mut(&entry.account_id) else { continue };
            let before = list.len();
            list.retain(|w| w.sender.try_send(entry.clone()).is_ok());
            let cut = before - list.len();
            if cut > 0 {
                removed += cut;
                metrics::counter!("wallet_events_live_cut_off_total").increment(cut as u64);
            }
            if list.is_empty() {
                watchers.remove(&entry.account_id);
            }
        }
        if removed > 0 {
            self.forget(removed);
        }
    }

    fn unsubscribe(&self, account: AccountId, id: u64) {
        let Ok(mut watchers) = self.watchers.lock() else { return };
        let Some(list) = watchers.get_mut(&account) else { return };
        let before = list.len();
        list.retain(|w| w.id != id);
        let removed = before - list.len();
        if list.is_empty() {
            watchers.remove(&account);
        }
        if removed > 0 {
            self.forget(removed);
        }
    }

    /// Called with the lock held, so the count never runs ahead of the map.
    fn forget(&self, removed: usize) {
        let left = self.watching.load(Ordering::Relaxed).saturating_sub(removed);
        self.watching.store(left, Ordering::Relaxed);
        metrics::gauge!("wallet_events_live_watchers").set(left as f64);
    }
}

impl Subscription {
    /// The next entry of the account, or `None` once cut off.
    pub async fn next(&mut self) -> Option<HistoryEntry> {
        self.receiver.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.live.unsubscribe(self.account, self.id);
    }
}

/// The engine's one event sink, feeding both this node's live watchers and,
/// when NATS is configured, the outbox to JetStream.
pub struct EventFeeds {
    live: Arc<LiveEvents>,
    outbox: Option<Arc<dyn EventSink>>,
    /// Without an outbox: the accounts the last checkpoint left unsettled,
    /// kept for the next (a run without NATS does not forget them).
    carried: Mutex<Vec<AccountId>>,
}

impl EventFeeds {
    /// Feeds `live`, and `outbox` if there is one.
    pub fn new(live: Arc<LiveEvents>, outbox: Option<Arc<dyn EventSink>>) -> EventFeeds {
        EventFeeds { live, outbox, carried: Mutex::new(Vec::new()) }
    }
}

impl EventSink for EventFeeds {
    fn durable(&self, shard: ShardId, entries: Vec<HistoryEntry>) {
        self.live.offer(&entries);
        if let Some(outbox) = &self.outbox {
            outbox.durable(shard, entries);
        }
    }

    /// The outbox's: live watchers that miss an entry read it from history,
    /// so a checkpoint never waits for them.
    fn progress(&self) -> (u64, u64) {
        self.outbox.as_ref().map_or((0, 0), |outbox| outbox.progress())
    }

    /// An outbox wants every entry; live watchers only while any is open
    /// (one opening now reads what it missed from the history).
    fn wants_entries(&self) -> bool {
        self.outbox.is_some() || self.live.watching() > 0
    }

    fn unsettled(&self) -> Vec<AccountId> {
        match &self.outbox {
            Some(outbox) => outbox.unsettled(),
            None => self.carried.lock().map(|carried| carried.clone()).unwrap_or_default(),
        }
    }

    fn resume(&self, accounts: Vec<AccountId>) {
        match &self.outbox {
            Some(outbox) => outbox.resume(accounts),
            None => {
                if let Ok(mut carried) = self.carried.lock() {
                    *carried = accounts;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_actors::account::Balances;
    use wallet_actors::HistoryEvent;

    fn id(n: u128) -> AccountId {
        match AccountId::new(n) {
            Ok(id) => id,
            Err(e) => panic!("{e}"),
        }
    }

    fn entry(account: u128, sequence: u64) -> HistoryEntry {
        HistoryEntry {
            account_id: id(account),
            sequence,
            event: HistoryEvent::Opened,
            balances: Balances::default(),
            at_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_watcher_gets_its_accounts_entries_in_order() {
        let live = Arc::new(LiveEvents::new(LiveOptions::default()));
        let Ok(mut watcher) = live.subscribe(id(1)) else { panic!("refused") };
        live.offer(&[entry(1, 1), entry(2, 1), entry(1, 2)]);
        assert_eq!(watcher.next().await.map(|e| e.sequence), Some(1));
        assert_eq!(watcher.next().await.map(|e| (e.account_id, e.sequence)), Some((id(1), 2)));
    }

    #[tokio::test]
    async fn a_watcher_that_falls_a_buffer_behind_is_cut_off() {
        let options = LiveOptions { buffer_per_watcher: 2, watchers_max: 10 };
        let live = Arc::new(LiveEvents::new(options));
        let Ok(mut slow) = live.subscribe(id(1)) else { panic!("refused") };
        live.offer(&[entry(1, 1), entry(1, 2), entry(1, 3)]);
        assert_eq!(live.watching(), 0, "still registered");
        // What it had room for, then the end: it resumes from history.
        assert_eq!(slow.next().await.map(|e| e.sequence), Some(1));
        assert_eq!(slow.next().await.map(|e| e.sequence), Some(2));
        assert_eq!(slow.next().await, None);
    }

    #[test]
    fn watchers_are_bounded_and_unregister_when_dropped() {
        let options = LiveOptions { buffer_per_watcher: 2, watchers_max: 2 };
        let live = Arc::new(LiveEvents::new(options));
        let first = live.subscribe(id(1));
        let second = live.subscribe(id(1));
        assert!(live.subscribe(id(2)).is_err());
        drop(first);
        assert_eq!(live.watching(), 1);
        assert!(live.subscribe(id(2)).is_ok(), "a dropped watcher's place is free");
        drop(second);
        assert_eq!(live.watching(), 0);
    }
}
