//! Each user's share of the ledger's in-flight budget: at most
//! `per_user_max` transfers of one user in flight at once. The ledger
//! admits at most `--in-flight-max` transfers from everyone together; without
//! a share, one user's batches could take all of it and everyone else would
//! get `overloaded`. A request past its user's share is refused the same way
//! (429 `overloaded`, `Retry-After`), before anything is attempted.
//!
//! The map holds only users with transfers in flight, so it is bounded by
//! the in-flight budget itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use crate::error::ApiError;

/// The transfers in flight per user.
#[derive(Debug)]
pub struct UserAdmission {
    per_user_max: usize,
    in_flight: Mutex<HashMap<Uuid, usize>>,
}

/// Transfers of one user admitted; released when dropped.
#[must_use = "the transfers are admitted while this is held"]
pub struct Admitted {
    admission: Arc<UserAdmission>,
    user: Uuid,
    transfers: usize,
}

impl UserAdmission {
    /// A share of `per_user_max` transfers per user (at least one).
    pub fn new(per_user_max: usize) -> Arc<UserAdmission> {
        Arc::new(UserAdmission { per_user_max: per_user_max.max(1), in_flight: Mutex::default() })
    }

    /// Admits `transfers` of `user`, or refuses them as `overloaded`.
    pub fn admit(self: &Arc<Self>, user: Uuid, transfers: usize) -> Result<Admitted, ApiError> {
        let mut in_flight = self.in_flight.lock().map_err(|_| ApiError::Internal)?;
        let held = in_flight.get(&user).copied().unwrap_or(0);
        if held.saturating_add(transfers) > self.per_user_max {
            return Err(ApiError::Overloaded);
        }
        in_flight.insert(user, held + transfers);
        Ok(Admitted { admission: self.clone(), user, transfers })
    }

    /// How many users have transfers in flight.
    pub fn users_in_flight(&self) -> usize {
        self.in_flight.lock().map(|in_flight| in_flight.len()).unwrap_or(0)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let Ok(mut in_flight) = self.admission.in_flight.lock() else { return };
        if let Some(held) = in_flight.get_mut(&self.user) {
            *held = held.saturating_sub(self.transfers);
            if *held == 0 {
                in_flight.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_user_cannot_take_more_than_a_share_and_others_are_unaffected() -> Result<(), ApiError> {
        let admission = UserAdmission::new(4);
        let (greedy, other) = (Uuid::new_v4(), Uuid::new_v4());
        let first = admission.admit(greedy, 3)?;
        assert!(matches!(admission.admit(greedy, 2), Err(ApiError::Overloaded)));
        let _second = admission.admit(greedy, 1)?;
        let _others = admission.admit(other, 4)?;
        drop(first);
        let _third = admission.admit(greedy, 3)?;
        assert!(matches!(admission.admit(Uuid::new_v4(), 5), Err(ApiError::Overloaded)), "never admitted");
        Ok(())
    }

    #[test]
    fn the_map_forgets_users_with_nothing_in_flight() -> Result<(), ApiError> {
        let admission = UserAdmission::new(4);
        drop(admission.admit(Uuid::new_v4(), 2)?);
        assert_eq!(admission.users_in_flight(), 0);
        Ok(())
    }
}
