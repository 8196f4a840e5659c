//! Velocity windows: the debits of an account (or of a user, across the
//! accounts on the user's home shard) in recent time, in bounded memory.

use serde::{Deserialize, Serialize};

/// One bucket of a [`DebitWindow`]: debits whose time falls in
/// `[EPOCH + index * width, EPOCH + (index + 1) * width)` of its level.
/// 16 bytes: the level and index share 32 bits (30 bits of seconds since
/// 2020 last until 2054), and a window's sum saturates at 2^64 - 1 minor
/// units, erring towards refusing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct Bucket {
    /// The level (0, 1, 2) in the top two bits, the index below.
    key: u32,
    count: u32,
    amount: u64,
}

const LEVEL_SHIFT: u32 = 30;
const INDEX_MASK: u32 = (1 << LEVEL_SHIFT) - 1;

impl Bucket {
    fn level(&self) -> usize {
        (self.key >> LEVEL_SHIFT) as usize
    }

    fn index(&self) -> u64 {
        u64::from(self.key & INDEX_MASK)
    }
}

/// Bucket widths and how many buckets each level keeps: seconds for about
/// two minutes, minutes for about two hours, hours for a little over seven
/// days. A window uses the finest level that covers it plus one bucket.
const LEVELS: [(u64, usize); 3] = [(1_000, 128), (60_000, 128), (3_600_000, 170)];

/// The debits of an account in recent time, bounded whatever the traffic:
/// at most 426 buckets of 16 bytes per account (about 7 KiB) for one that
/// debits every second for a week; three buckets (48 bytes) for one that
/// debits now and then; nothing for one that never debits.
///
/// Exactness: a window of `W` seconds counts every debit of the last `W`
/// seconds, plus those of the bucket that straddles its start. So a debit
/// counts for at least `W` seconds and at most `W` plus one bucket width
/// (1 s for windows up to 127 s, 1 min up to 127 min, 1 h beyond). Erring
/// that way means a limit is never exceeded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DebitWindow(Vec<Bucket>);

impl DebitWindow {
    /// Counts a debit of `amount` at `at_ms`.
    pub fn record(&mut self, at_ms: u64, amount: u128) {
        let amount = u64::try_from(amount).unwrap_or(u64::MAX);
        if self.0.is_empty() {
            self.0.reserve_exact(LEVELS.len());
        }
        for (level, (width_ms, keep)) in LEVELS.iter().enumerate() {
            let index = (at_ms.saturating_sub(EPOCH_MS) / width_ms).min(u64::from(INDEX_MASK)) as u32;
            let key = (level as u32) << LEVEL_SHIFT | index;
            let end = self.0.partition_point(|b| b.level() <= level);
            match end.checked_sub(1).map(|last| &mut self.0[last]) {
                // A time earlier than the last bucket (a clock step back)
                // counts in the last bucket: later, so longer, never less.
                Some(last) if last.level() == level && last.key >= key => {
                    last.count = last.count.saturating_add(1);
                    last.amount = last.amount.saturating_add(amount);
                }
                _ => self.0.insert(end, Bucket { key, count: 1, amount }),
            }
            let start = self.0.partition_point(|b| b.level() < level);
            let newest = u64::from(index);
            let stale = self.0[start..]
                .iter()
                .take_while(|b| b.level() == level && b.index() + *keep as u64 <= newest)
                .count();
            if stale > 0 {
                self.0.drain(start..start + stale);
            }
        }
    }

    /// Count and sum of debits within the last `window_seconds` at `now_ms`
    /// (see the type's note on bucket edges).
    pub fn totals(&self, window_seconds: u32, now_ms: u64) -> (u32, u128) {
        if self.0.is_empty() {
            return (0, 0);
        }
        let window_ms = u64::from(window_seconds) * 1000;
        let level = LEVELS
            .iter()
            .position(|(width_ms, keep)| window_ms + width_ms <= width_ms * (*keep as u64))
            .unwrap_or(LEVELS.len() - 1);
        let width_ms = LEVELS[level].0;
        let start_ms = now_ms.saturating_sub(EPOCH_MS).saturating_sub(window_ms);
        let end = self.0.partition_point(|b| b.level() <= level);
        self.0[..end]
            .iter()
            .rev()
            .take_while(|b| b.level() == level && (b.index() + 1) * width_ms > start_ms)
            .fold((0u32, 0u128), |(count, sum), b| {
                (count.saturating_add(b.count), sum.saturating_add(u128::from(b.amount)))
            })
    }

    /// Whether it holds no debit.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Bucket indexes count from 2020-01-01 so that 30 bits of seconds last
/// until 2054.
const EPOCH_MS: u64 = 1_577_836_800_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_what_falls_inside_it() {
        let t0 = EPOCH_MS; // bucket edges are whole seconds, minutes, hours from it
        let mut window = DebitWindow::default();
        window.record(t0 + 10_000, 5);
        window.record(t0 + 10_500, 7);
        window.record(t0 + 70_000, 1);
        assert_eq!(window.totals(60, t0 + 70_000), (3, 13)); // bucket [10 s, 11 s) straddles 10 s
        assert_eq!(window.totals(60, t0 + 71_000), (1, 1));
        assert_eq!(window.totals(1, t0 + 70_999), (1, 1));
        assert_eq!(std::mem::size_of::<Bucket>(), 16);
    }

    #[test]
    fn long_windows_use_coarse_buckets_and_stay_bounded() {
        let mut window = DebitWindow::default();
        for second in 0..100_000u64 {
            window.record(EPOCH_MS + second * 1000, 1);
        }
        let levels: Vec<usize> = (0..3).map(|l| window.0.iter().filter(|b| b.level() == l).count()).collect();
        assert_eq!(levels, vec![128, 128, 28]);
        let now = EPOCH_MS + 99_999_000;
        // Exact would be 86,400; the straddling hour adds at most 3,600.
        assert_eq!(window.totals(86_400, now), (89_200, 89_200));
    }
}
