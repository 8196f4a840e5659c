//! The history a shard makes: one entry per change to an account, kept
//! in memory until a checkpoint writes it, handed to the events' feed once
//! durable, and captured for the snapshot.

use super::*;

impl ShardState {
    pub(super) fn record_history(
        &mut self,
        account_id: AccountId,
        sequence: u64,
        event: HistoryEvent,
        at_ms: u64,
    ) {
        let Some(slot) = self.accounts.get(&account_id) else { return };
        let entry = HistoryEntry { account_id, sequence, event, balances: slot.account.balances, at_ms };
        self.history_recent.push(entry);
    }

    /// The history entries made since the last call (or since recovery,
    /// which made the replayed ones), for the ledger events' feed. The
    /// caller hands them on once the records that made them are durable.
    pub fn take_new_history(&mut self) -> Vec<HistoryEntry> {
        let new = self.history_recent[self.events_mark.min(self.history_recent.len())..].to_vec();
        self.events_mark = self.history_recent.len();
        new
    }

    /// Marks the history made since the last take as seen without copying
    /// it: the feed wants nothing now.
    pub fn skip_new_history(&mut self) {
        self.events_mark = self.history_recent.len();
    }

    /// The history made since the last call, with the feed to hand it to
    /// once durable, when there is a feed and it wants entries; otherwise
    /// it is marked seen without a copy (`None`).
    pub fn history_for(
        &mut self,
        feed: Option<&Arc<dyn crate::ports::EventSink>>,
    ) -> Option<(Arc<dyn crate::ports::EventSink>, Vec<HistoryEntry>)> {
        match feed {
            Some(sink) if sink.wants_entries() => Some((sink.clone(), self.take_new_history())),
            Some(_) => {
                self.skip_new_history();
                None
            }
            None => None,
        }
    }

    /// History entries of an account after `after_sequence` still held in
    /// memory (not yet confirmed in storage), oldest first, at most `limit`.
    pub fn recent_history(
        &self,
        account_id: AccountId,
        after_sequence: u64,
        limit: usize,
    ) -> Vec<HistoryEntry> {
        let mut entries: Vec<HistoryEntry> = self
            .history_flushing
            .iter()
            .chain(&self.history_recent)
            .filter(|e| e.account_id == account_id && e.sequence > after_sequence)
            .cloned()
            .collect();
        entries.sort_by_key(|e| e.sequence);
        entries.dedup_by_key(|e| e.sequence);
        entries.truncate(limit);
        entries
    }

    /// Storage has written what the last capture returned: forget it.
    pub fn forget_flushed_history(&mut self) {
        self.history_flushing = Arc::default();
        self.flushing_accounts.clear();
        self.flushing_holds.clear();
        self.flushing_users.clear();
    }

    /// Takes what changed since the last capture, for a snapshot.
    pub fn capture(&mut self) -> Captured {
        let mut captured = Captured::default();
        // The next capture is likely as large: growing a vector of history
        // entry by entry copied it over and over (seen in profiles).
        let expected = self.history_recent.len();
        let recent = std::mem::replace(&mut self.history_recent, Vec::with_capacity(expected));
        self.events_mark = 0;
        if self.history_flushing.is_empty() {
            self.history_flushing = Arc::new(recent);
        } else {
            // A capture whose write never got confirmed is written again.
            Arc::make_mut(&mut self.history_flushing).extend(recent);
        }
        captured.history = self.history_flushing.clone();
        // Accounts and holds of a capture whose write was never confirmed
        // are taken again, as they stand now.
        self.flushing_accounts.extend(self.dirty_accounts.drain());
        self.flushing_holds.extend(self.dirty_holds.drain());
        for account_id in &self.flushing_accounts {
            if let Some(slot) = self.accounts.get(account_id) {
                captured.accounts.push(slot.account.clone());
            }
        }
        for &pending_id in &self.flushing_holds {
            match self.holds.get(&pending_id) {
                Some(hold) => captured.holds.push(hold.clone()),
                None => captured.removed_holds.push(pending_id),
            }
        }
        captured.user_windows = self.capture_users();
        captured
    }
}
