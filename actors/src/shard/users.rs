//! Users' debit windows on their home shard: counted with the legs that
//! debit their accounts, reserved with those legs, checked by velocity
//! rules scoped to a user, captured and passivated like accounts.

use super::*;
use crate::risk::{UserDebits, UserInFlight};

/// A user's window while resident.
#[derive(Clone, Debug, Default)]
pub(super) struct UserSlot {
    window: UserWindow,
    in_flight: UserInFlight,
    /// The shard's epoch when a message last named one of the user's accounts.
    touched: u64,
}

impl ShardState {
    /// Whether this shard keeps `user_id`'s window: it is the user's home
    /// shard, and the user is not the owner of the settlement accounts
    /// (rules never check those).
    pub(super) fn is_home(&self, user_id: UserId) -> bool {
        user_id != UserId::SYSTEM && user_id.home_shard(self.shard_count) == self.shard_id
    }

    /// Makes a user's window resident (loading it if stored) and marks it
    /// touched; nothing for a user whose home shard is another.
    pub(super) fn activate_user(&mut self, user_id: UserId) -> Result<(), ReplayError> {
        if !self.is_home(user_id) {
            return Ok(());
        }
        if let Some(slot) = self.users.get_mut(&user_id) {
            slot.touched = self.epoch;
            return Ok(());
        }
        let window = match &self.source {
            Some(Source(source)) => source.load_user_window(user_id)?.unwrap_or_default(),
            None => UserWindow::default(),
        };
        self.users
            .insert(user_id, UserSlot { window, in_flight: UserInFlight::default(), touched: self.epoch });
        Ok(())
    }

    /// Counts a new debit leg of one of the user's accounts, applied at
    /// `sequence` of that account (replay skips one already counted).
    pub(super) fn count_user_debit(&mut self, user_id: UserId, asset: Asset, leg: &Leg, sequence: u64) {
        if !self.is_home(user_id) {
            return;
        }
        let slot = self.users.entry(user_id).or_default();
        let amount = leg.posted_add.saturating_add(leg.pending_add);
        if slot.window.record(leg.account_id, asset, sequence, leg.at_ms, amount) {
            self.dirty_users.insert(user_id);
        }
    }

    /// Counts (`reserve`) or takes back a reserved new debit leg in its
    /// user's in-flight debits.
    pub(super) fn reserve_user_debit(&mut self, user_id: UserId, asset: Asset, leg: &Leg, reserve: bool) {
        if !leg.is_new_debit() || !self.is_home(user_id) {
            return;
        }
        let amount = leg.posted_add.saturating_add(leg.pending_add);
        let slot = self.users.entry(user_id).or_default();
        if reserve {
            slot.in_flight.add(asset, amount);
        } else {
            slot.in_flight.remove(asset, amount);
        }
    }

    /// The user's debits, for the rules: `None` away from the home shard.
    pub(super) fn user_debits(&self, user_id: UserId) -> Option<UserDebits<'_>> {
        if !self.is_home(user_id) {
            return None;
        }
        self.users.get(&user_id).map(|slot| UserDebits { window: &slot.window, in_flight: &slot.in_flight })
    }

    /// Passivates windows as [`ShardState::passivate_idle`] does accounts.
    pub(super) fn passivate_idle_users(&mut self, idle_epochs: u64) {
        let epoch = self.epoch;
        let (dirty, flushing) = (&self.dirty_users, &self.flushing_users);
        self.users.retain(|id, slot| {
            !slot.in_flight.is_empty()
                || slot.touched + idle_epochs >= epoch
                || dirty.contains(id)
                || flushing.contains(id)
        });
    }

    /// Windows changed since the last capture (and those captured but not
    /// confirmed written), as they stand now.
    pub(super) fn capture_users(&mut self) -> Vec<(UserId, UserWindow)> {
        self.flushing_users.extend(self.dirty_users.drain());
        self.flushing_users
            .iter()
            .filter_map(|id| self.users.get(id).map(|slot| (*id, slot.window.clone())))
            .collect()
    }
}
