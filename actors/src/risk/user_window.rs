//! A user's debits across their accounts, for velocity rules scoped to a
//! user: kept by the user's home shard, which owns every account the API
//! opened for that user (`docs/ARCHITECTURE.md`, "Risk rules"), so every
//! debit it counts passes the same serialized step as the check.

use serde::{Deserialize, Serialize};

use super::window::DebitWindow;
use crate::asset::Asset;
use crate::ids::AccountId;

/// The debits of one user's accounts on the user's home shard, per asset.
/// Durable: snapshots carry it and replay rebuilds what came after.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserWindow {
    assets: Vec<(Asset, DebitWindow)>,
    /// Per account (sorted by id: a user the API serves may have thousands
    /// of accounts), the sequence number of the last debit counted. A
    /// snapshot's accounts and user windows are not written atomically
    /// together, so replay over a window newer than its journal position
    /// must count nothing twice; an account's own events are skipped by
    /// the same comparison.
    counted: Vec<(AccountId, u64)>,
}

impl UserWindow {
    /// Counts the debit at `sequence` of `account_id`, unless this window
    /// has counted it (or a later one of that account) already. Returns
    /// whether it counted.
    pub fn record(
        &mut self,
        account_id: AccountId,
        asset: Asset,
        sequence: u64,
        at_ms: u64,
        amount: u128,
    ) -> bool {
        match self.counted.binary_search_by_key(&account_id, |(id, _)| *id) {
            Ok(position) if self.counted[position].1 >= sequence => return false,
            Ok(position) => self.counted[position].1 = sequence,
            Err(position) => self.counted.insert(position, (account_id, sequence)),
        }
        let window = match self.assets.iter().position(|(a, _)| *a == asset) {
            Some(position) => &mut self.assets[position].1,
            None => {
                self.assets.push((asset, DebitWindow::default()));
                let last = self.assets.len() - 1;
                &mut self.assets[last].1
            }
        };
        window.record(at_ms, amount);
        true
    }

    /// Debits of every asset within the last `window_seconds`.
    pub fn count(&self, window_seconds: u32, now_ms: u64) -> u32 {
        self.assets
            .iter()
            .fold(0u32, |count, (_, window)| count.saturating_add(window.totals(window_seconds, now_ms).0))
    }

    /// Sum debited in `asset` within the last `window_seconds` (only that
    /// asset: one code at two scales would count different minor units).
    pub fn sum(&self, asset: Asset, window_seconds: u32, now_ms: u64) -> u128 {
        self.assets
            .iter()
            .find(|(a, _)| *a == asset)
            .map_or(0, |(_, window)| window.totals(window_seconds, now_ms).1)
    }
}

/// A user's new debits reserved and not applied yet (in flight between
/// shards, or earlier in the same linked batch), per asset: counted as if
/// applied, as an account's are. Volatile: after a crash nothing is reserved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserInFlight(Vec<(Asset, u32, u128)>);

impl UserInFlight {
    /// Counts a reserved debit.
    pub fn add(&mut self, asset: Asset, amount: u128) {
        match self.0.iter_mut().find(|(a, _, _)| *a == asset) {
            Some((_, count, sum)) => {
                *count = count.saturating_add(1);
                *sum = sum.saturating_add(amount);
            }
            None => self.0.push((asset, 1, amount)),
        }
    }

    /// Takes back what [`UserInFlight::add`] counted. Every removal pairs
    /// with an addition (the account's `Reserved` panics when one does not),
    /// so a mismatch here is a bug; release builds saturate.
    pub fn remove(&mut self, asset: Asset, amount: u128) {
        let position = self.0.iter().position(|(a, _, _)| *a == asset);
        debug_assert!(position.is_some(), "no in-flight debit of {asset:?} to remove");
        if let Some(position) = position {
            let (_, count, sum) = &mut self.0[position];
            debug_assert!(*count >= 1 && *sum >= amount, "in-flight debits below zero");
            *count = count.saturating_sub(1);
            *sum = sum.saturating_sub(amount);
            if *count == 0 {
                self.0.swap_remove(position);
            }
        }
    }

    /// Whether nothing is reserved.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reserved debits of every asset.
    pub fn count(&self) -> u32 {
        self.0.iter().fold(0u32, |total, (_, count, _)| total.saturating_add(*count))
    }

    /// Reserved sum in `asset`.
    pub fn sum(&self, asset: Asset) -> u128 {
        self.0.iter().find(|(a, _, _)| *a == asset).map_or(0, |(_, _, sum)| *sum)
    }
}

/// A user's debits as a rule sees them: counted and in flight.
#[derive(Clone, Copy, Debug)]
pub struct UserDebits<'a> {
    /// Counted debits.
    pub window: &'a UserWindow,
    /// Reserved, not yet applied.
    pub in_flight: &'a UserInFlight,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> AccountId {
        AccountId::new(n).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_debit_counts_once_per_account_sequence() -> Result<(), crate::rejection::InvalidInput> {
        let (usd, eur) = (Asset::new("USD", 2)?, Asset::new("EUR", 2)?);
        let now = 1_800_000_000_000;
        let mut window = UserWindow::default();
        assert!(window.record(id(1), usd, 2, now, 100));
        assert!(window.record(id(2), usd, 2, now, 50));
        assert!(window.record(id(3), eur, 5, now, 7));
        // Replay over a newer window: already counted, so skipped.
        assert!(!window.record(id(1), usd, 2, now, 100));
        assert!(!window.record(id(3), eur, 4, now, 7));
        assert_eq!(window.count(60, now), 3);
        assert_eq!(window.sum(usd, 60, now), 150);
        assert_eq!(window.sum(eur, 60, now), 7);
        assert_eq!(window.sum(Asset::new("USD", 3)?, 60, now), 0);
        Ok(())
    }

    #[test]
    fn in_flight_debits_come_and_go() -> Result<(), crate::rejection::InvalidInput> {
        let usd = Asset::new("USD", 2)?;
        let mut in_flight = UserInFlight::default();
        in_flight.add(usd, 10);
        in_flight.add(usd, 5);
        assert_eq!((in_flight.count(), in_flight.sum(usd)), (2, 15));
        in_flight.remove(usd, 10);
        in_flight.remove(usd, 5);
        assert!(in_flight.is_empty());
        Ok(())
    }
}
