//! Failed password checks per email, with a growing delay: the first
//! `failures_before_delay` failures in a row cost nothing; each further
//! one locks password checks for that email for 1 s, then 2 s, 4 s, ... up
//! to `delay_max`, during which every attempt, even with the right
//! password, gets 429 `login_throttled` without being checked (otherwise
//! the delay would not slow guessing). A success ends it; a count left
//! alone for `reset_after` starts over. (Keycloak's brute-force detection
//! works the same way, with a wait that grows per failure up to a maximum.)
//!
//! Keyed by email, not by client: an attacker who guesses one account's
//! password slows that account, and nobody else; spread over many
//! addresses, the guesses still meet one count. Emails nobody has are
//! counted too, so the answers say nothing about which exist.
//!
//! Attempts in flight count as failures to come, so a burst of concurrent
//! guesses cannot all slip in before the first failure is counted.
//!
//! The map is bounded ([`ENTRIES_MAX`]): when full, counts that expired go
//! first, then counts that delay nothing yet; a count that delays is never
//! dropped for a new one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::ApiError;

/// Most emails whose failures are counted at once.
pub const ENTRIES_MAX: usize = 100_000;

/// The first delay; each further failure doubles it.
const DELAY_BASE: Duration = Duration::from_secs(1);

/// How failures are counted and delayed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures in a row that cost nothing.
    pub failures_before_delay: u32,
    /// The longest delay.
    pub delay_max: Duration,
    /// A count with no failure for this long starts over.
    pub reset_after: Duration,
}

#[derive(Debug)]
struct Entry {
    failures: u32,
    in_flight: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// The counts. Cheap to share behind an [`Arc`].
#[derive(Debug)]
pub struct LoginThrottle {
    policy: ThrottlePolicy,
    entries: Mutex<HashMap<String, Entry>>,
}

/// One password check under way for an email: say how it went with
/// [`Attempt::failed`] or [`Attempt::succeeded`]; dropped without either
/// (an error before the check ended), it counts as neither.
#[must_use = "an attempt must be settled as failed or succeeded"]
pub struct Attempt {
    throttle: Arc<LoginThrottle>,
    email: Option<String>,
}

impl LoginThrottle {
    /// An empty set of counts.
    pub fn new(policy: ThrottlePolicy) -> Arc<LoginThrottle> {
        Arc::new(LoginThrottle { policy, entries: Mutex::new(HashMap::new()) })
    }

    /// Starts a password check for `email` (normalised), or refuses it with
    /// `login_throttled` and the seconds to wait.
    pub fn begin(self: &Arc<Self>, email: &str) -> Result<Attempt, ApiError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().map_err(|_| ApiError::Internal)?;
        if let Some(entry) = entries.get_mut(email) {
            if let Some(until) = entry.locked_until.filter(|until| *until > now) {
                return Err(throttled(until - now));
            }
            if entry.in_flight == 0 && now.duration_since(entry.last_failure) >= self.policy.reset_after {
                entry.failures = 0;
            }
            let free = entry.failures.saturating_add(entry.in_flight) < self.policy.failures_before_delay;
            if entry.in_flight > 0 && !free {
                return Err(throttled(Duration::from_secs(1)));
            }
            entry.in_flight += 1;
            return Ok(Attempt { throttle: self.clone(), email: Some(email.to_string()) });
        }
        if entries.len() >= ENTRIES_MAX && !self.make_room(&mut entries, now) {
            tracing::warn!(entries = entries.len(), "login throttle full; an email goes uncounted");
            return Ok(Attempt { throttle: self.clone(), email: None });
        }
        let entry = Entry { failures: 0, in_flight: 1, last_failure: now, locked_until: None };
        entries.insert(email.to_string(), entry);
        Ok(Attempt { throttle: self.clone(), email: Some(email.to_string()) })
    }

    /// Drops expired counts, then counts that delay nothing yet; whether
    /// there is room now.
    fn make_room(&self, entries: &mut HashMap<String, Entry>, now: Instant) -> bool {
        let policy = self.policy;
        let expired = |entry: &Entry| {
            entry.in_flight == 0
                && entry.locked_until.is_none_or(|until| until <= now)
                && now.duration_since(entry.last_failure) >= policy.reset_after
        };
        entries.retain(|_, entry| !expired(entry));
        if entries.len() >= ENTRIES_MAX {
            entries.retain(|_, entry| entry.in_flight > 0 || entry.failures >= policy.failures_before_delay);
        }
        entries.len() < ENTRIES_MAX
    }

    fn settle(&self, email: &str, failed: bool) {
        let Ok(mut entries) = self.entries.lock() else { return };
        let Some(entry) = entries.get_mut(email) else { return };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if failed {
            let now = Instant::now();
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            if let Some(beyond) = entry.failures.checked_sub(self.policy.failures_before_delay + 1) {
                let delay = DELAY_BASE.saturating_mul(1u32 << beyond.min(20)).min(self.policy.delay_max);
                entry.locked_until = Some(now + delay);
            }
        } else if entry.failures == 0 && entry.in_flight == 0 {
            entries.remove(email);
        }
    }

    /// How many emails are counted (for tests).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|entries| entries.len()).unwrap_or(0)
    }

    /// Whether no email is counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn succeed(&self, email: &str) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(email);
        }
    }
}

fn throttled(wait: Duration) -> ApiError {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    ApiError::LoginThrottled { retry_after_seconds: seconds.max(1) }
}

impl Attempt {
    /// The password did not match: counts a failure, and may start a delay.
    pub fn failed(mut self) {
        if let Some(email) = self.email.take() {
            self.throttle.settle(&email, true);
        }
    }

    /// The password matched: the count starts over.
    pub fn succeeded(mut self) {
        if let Some(email) = self.email.take() {
            self.throttle.succeed(&email);
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(email) = self.email.take() {
            self.throttle.settle(&email, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(failures_before_delay: u32) -> ThrottlePolicy {
        ThrottlePolicy {
            failures_before_delay,
            delay_max: Duration::from_secs(4),
            reset_after: Duration::from_secs(3600),
        }
    }

    fn retry_after(result: Result<Attempt, ApiError>) -> Option<u64> {
        match result {
            Err(ApiError::LoginThrottled { retry_after_seconds }) => Some(retry_after_seconds),
            _ => None,
        }
    }

    fn lock_for(throttle: &LoginThrottle, email: &str) -> Option<Duration> {
        let entries = throttle.entries.lock().ok()?;
        let until = entries.get(email)?.locked_until?;
        Some(until.saturating_duration_since(Instant::now()))
    }

    #[test]
    fn delays_double_up_to_the_maximum_and_a_success_resets() -> Result<(), ApiError> {
        let throttle = LoginThrottle::new(policy(2));
        let mut locks = Vec::new();
        for _ in 0..6 {
            throttle
                .begin("a@example.com")
                .or_else(|_| {
                    // Past a lock: pretend it is over, as time would make it.
                    if let Ok(mut entries) = throttle.entries.lock() {
                        if let Some(entry) = entries.get_mut("a@example.com") {
                            entry.locked_until = None;
                        }
                    }
                    throttle.begin("a@example.com")
                })?
                .failed();
            locks.push(lock_for(&throttle, "a@example.com").map(|d| (d.as_millis() as u64).div_ceil(1000)));
        }
        assert_eq!(locks, [None, None, Some(1), Some(2), Some(4), Some(4)]);
        assert_eq!(retry_after(throttle.begin("a@example.com")), Some(4));
        assert!(throttle.begin("b@example.com").is_ok(), "other emails are not slowed");
        if let Ok(mut entries) = throttle.entries.lock() {
            if let Some(entry) = entries.get_mut("a@example.com") {
                entry.locked_until = None;
            }
        }
        throttle.begin("a@example.com")?.succeeded();
        assert_eq!(lock_for(&throttle, "a@example.com"), None);
        throttle.begin("a@example.com")?.failed();
        assert_eq!(lock_for(&throttle, "a@example.com"), None, "the count started over");
        Ok(())
    }

    #[test]
    fn concurrent_attempts_count_as_failures_to_come() -> Result<(), ApiError> {
        let throttle = LoginThrottle::new(policy(2));
        let first = throttle.begin("a@example.com")?;
        let second = throttle.begin("a@example.com")?;
        assert_eq!(retry_after(throttle.begin("a@example.com")), Some(1), "two free attempts are under way");
        drop(first);
        second.succeeded();
        assert!(throttle.is_empty(), "nothing is left of a success");
        Ok(())
    }

    #[test]
    fn a_full_map_drops_what_delays_nothing_but_keeps_what_does() -> Result<(), ApiError> {
        let throttle = LoginThrottle::new(policy(2));
        for _ in 0..3 {
            throttle.begin("victim@example.com")?.failed();
            if let Ok(mut entries) = throttle.entries.lock() {
                if let Some(entry) = entries.get_mut("victim@example.com") {
                    entry.locked_until = None;
                }
            }
        }
        if let Ok(mut entries) = throttle.entries.lock() {
            for n in 0..ENTRIES_MAX {
                let entry =
                    Entry { failures: 1, in_flight: 0, last_failure: Instant::now(), locked_until: None };
                entries.insert(format!("junk{n}@example.com"), entry);
            }
        }
        throttle.begin("new@example.com")?.failed();
        assert!(throttle.len() < ENTRIES_MAX);
        let kept =
            throttle.entries.lock().map(|e| e.get("victim@example.com").map(|e| e.failures)).ok().flatten();
        assert_eq!(kept, Some(3));
        Ok(())
    }
}
