//! Checking and reserving: whether an operation's legs in this shard may
//! go ahead (every check in `Rejection` order, risk rules last), and
//! holding what they need until they are applied or released. A rejection
//! leaves nothing reserved.

use super::*;

impl ShardState {
    /// Checks an operation's legs that live in this shard, in order, and
    /// reserves them. All or nothing: on a rejection nothing stays reserved.
    pub fn reserve(&mut self, op: &[Planned], now_ms: u64) -> Result<Reservation, IndexedRejection> {
        let mut reservation = Reservation::default();
        // Credits posted by earlier transfers of the same linked operation may
        // be spent by later ones; credits of other operations may not.
        let mut same_op: Vec<SameOp> = Vec::new();
        for (index, planned) in op.iter().enumerate() {
            if let Err(rejection) = self.reserve_one(planned, now_ms, &mut reservation, &mut same_op) {
                self.release(&reservation);
                return Err((index as u32, rejection));
            }
        }
        Ok(reservation)
    }

    fn reserve_one(
        &mut self,
        planned: &Planned,
        now_ms: u64,
        reservation: &mut Reservation,
        same_op: &mut Vec<SameOp>,
    ) -> Result<(), Rejection> {
        let [debit, credit] = &planned.legs;
        let owns_debit = self.owns(debit.account_id);
        let owns_credit = self.owns(credit.account_id);
        // Each side's checks run in their own order; the transfer fails with
        // the smallest failure by check order, so the outcome is the same
        // whether both accounts live in this shard or in two.
        let debit_failure =
            if owns_debit { self.check_debit_side(planned, now_ms, same_op).err() } else { None };
        let credit_failure = if owns_credit { self.check_leg(credit, same_op).err() } else { None };
        let asset_failure = match (owns_debit && owns_credit, planned.hold) {
            (true, HoldChange::None | HoldChange::Create) => {
                let debit_asset = self.accounts.get(&debit.account_id).map(|s| s.account.asset);
                let credit_asset = self.accounts.get(&credit.account_id).map(|s| s.account.asset);
                match (debit_asset, credit_asset) {
                    (Some(a), Some(b)) if a != b => Some(Rejection::AssetMismatch),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(failure) = [debit_failure, credit_failure, asset_failure].into_iter().flatten().min() {
            return Err(failure);
        }
        if let (true, HoldChange::Resolve(resolution)) = (owns_debit, planned.hold) {
            if let Some(hold) = self.holds.get_mut(&resolution.pending_id) {
                hold.busy = true;
            }
            reservation.busy_holds.push(resolution.pending_id);
        }
        for (leg, owned) in [(debit, owns_debit), (credit, owns_credit)] {
            if !owned {
                continue;
            }
            let Some(slot) = self.accounts.get_mut(&leg.account_id) else { continue };
            slot.reserved.add(leg);
            let (user_id, asset) = (slot.account.user_id, slot.account.asset);
            reservation.legs.push(*leg);
            reservation.assets.push((leg.account_id, asset));
            self.reserve_user_debit(user_id, asset, leg, true);
            if leg.posted_add > 0 {
                let entry = match same_op.iter_mut().position(|e| e.account_id == leg.account_id) {
                    Some(position) => &mut same_op[position],
                    None => {
                        same_op.push(SameOp {
                            account_id: leg.account_id,
                            credits_posted: 0,
                            debits_posted: 0,
                        });
                        let last = same_op.len() - 1;
                        &mut same_op[last]
                    }
                };
                match leg.side {
                    Side::Debit => entry.debits_posted = entry.debits_posted.saturating_add(leg.posted_add),
                    Side::Credit => {
                        entry.credits_posted = entry.credits_posted.saturating_add(leg.posted_add)
                    }
                }
            }
        }
        Ok(())
    }

    /// The debit side's checks: the account exists, the hold (for a post,
    /// void or expiry) is open and matches, then status and balance.
    fn check_debit_side(&self, planned: &Planned, now_ms: u64, same_op: &[SameOp]) -> Result<(), Rejection> {
        let debit = &planned.legs[0];
        if !self.accounts.contains_key(&debit.account_id) {
            return Err(Rejection::DebitAccountNotFound);
        }
        if let HoldChange::Resolve(resolution) = planned.hold {
            let hold = self.holds.get(&resolution.pending_id).ok_or(Rejection::PendingTransferNotFound)?;
            if hold.busy {
                return Err(Rejection::PendingTransferBusy);
            }
            let expired = hold.expires_at_ms.is_some_and(|at| at <= now_ms);
            match resolution.status {
                // Refused whether or not the expiry task got to it yet, so
                // the answer does not depend on when that task ran.
                TransferStatus::Posted | TransferStatus::Voided if expired => {
                    return Err(Rejection::PendingTransferExpired)
                }
                TransferStatus::Expired if !expired => return Err(Rejection::PendingTransferNotPending),
                _ => {}
            }
            if debit.pending_sub != hold.amount || debit.posted_add > hold.amount {
                return Err(Rejection::ExceedsPendingAmount);
            }
        }
        self.check_leg(debit, same_op)?;
        self.check_risk(planned, now_ms)
    }

    /// The risk rules, last: a transfer that fails anyway fails for that
    /// reason, and a review hold is only made of one that would succeed.
    fn check_risk(&self, planned: &Planned, now_ms: u64) -> Result<(), Rejection> {
        let (Some(transfer), false) = (&planned.transfer, self.rules.is_empty()) else { return Ok(()) };
        let debit = &planned.legs[0];
        if !debit.is_new_debit() {
            return Ok(());
        }
        let Some(slot) = self.accounts.get(&debit.account_id) else { return Ok(()) };
        let hit = self.rules.check(&Debit {
            account: &slot.account,
            credit_account_id: planned.legs[1].account_id,
            amount: debit.posted_add + debit.pending_add,
            now_ms,
            in_flight: slot.reserved.new_debits,
            under_review: transfer.review.is_some(),
            user: self.user_debits(slot.account.user_id),
        });
        hit.map_or(Ok(()), |hit| Err(Rejection::from(hit)))
    }

    fn check_leg(&self, leg: &Leg, same_op: &[SameOp]) -> Result<(), Rejection> {
        let slot = self.accounts.get(&leg.account_id).ok_or(match leg.side {
            Side::Debit => Rejection::DebitAccountNotFound,
            Side::Credit => Rejection::CreditAccountNotFound,
        })?;
        let earlier = same_op.iter().find(|e| e.account_id == leg.account_id).copied().unwrap_or(SameOp {
            account_id: leg.account_id,
            credits_posted: 0,
            debits_posted: 0,
        });
        slot.account.check(leg, &slot.reserved, &earlier.as_posted())
    }

    /// Gives back what a reservation held.
    pub fn release(&mut self, reservation: &Reservation) {
        for leg in &reservation.legs {
            if let Some(slot) = self.accounts.get_mut(&leg.account_id) {
                slot.reserved.remove(leg);
                let (user_id, asset) = (slot.account.user_id, slot.account.asset);
                self.reserve_user_debit(user_id, asset, leg, false);
            }
        }
        for pending_id in &reservation.busy_holds {
            if let Some(hold) = self.holds.get_mut(pending_id) {
                hold.busy = false;
            }
        }
    }

    /// Checks this shard's legs of an operation whose other legs another
    /// shard reserved, including the asset match against `other_assets`.
    /// On success the legs are reserved.
    fn reserve_remote(
        &mut self,
        op: &[Planned],
        other_assets: &[(AccountId, Asset)],
        now_ms: u64,
    ) -> Result<Reservation, IndexedRejection> {
        let asset_failure = op.iter().enumerate().find_map(|(index, planned)| {
            if matches!(planned.hold, HoldChange::Resolve(_)) {
                return None;
            }
            let [debit, credit] = &planned.legs;
            let asset_of = |id: AccountId| {
                other_assets
                    .iter()
                    .find(|(other, _)| *other == id)
                    .map(|(_, asset)| *asset)
                    .or_else(|| self.accounts.get(&id).map(|slot| slot.account.asset))
            };
            let (a, b) = (asset_of(debit.account_id)?, asset_of(credit.account_id)?);
            (a != b).then_some((index as u32, Rejection::AssetMismatch))
        });
        let reservation = match self.reserve(op, now_ms) {
            Err(failure) => return Err(asset_failure.map_or(failure, |asset| asset.min(failure))),
            Ok(reservation) => reservation,
        };
        if let Some(failure) = asset_failure {
            self.release(&reservation);
            return Err(failure);
        }
        Ok(reservation)
    }

    /// The credit side of a transfer between two shards, whose debit side
    /// is reserved already: checks this shard's legs and the assets, then
    /// applies them at once. Returns the sequence numbers given, in leg order.
    pub fn accept_credit(
        &mut self,
        op: &[Planned],
        debit_assets: &[(AccountId, Asset)],
        now_ms: u64,
    ) -> Result<Vec<u64>, IndexedRejection> {
        let reservation = self.reserve_remote(op, debit_assets, now_ms)?;
        self.release(&reservation);
        let mut sequences = Vec::with_capacity(reservation.legs.len());
        for planned in op {
            for leg in &planned.legs {
                if self.owns(leg.account_id) {
                    sequences.push(self.apply_leg(leg).sequence);
                }
            }
            self.apply_holds(planned);
        }
        Ok(sequences)
    }

    /// The failure this shard's legs would add to `failure`, found by the
    /// other shard: the smaller one by check order wins, so the outcome does
    /// not depend on where the accounts live. Changes nothing.
    pub fn first_failure(
        &mut self,
        op: &[Planned],
        debit_assets: &[(AccountId, Asset)],
        failure: IndexedRejection,
        now_ms: u64,
    ) -> IndexedRejection {
        match self.reserve_remote(op, debit_assets, now_ms) {
            Ok(reservation) => {
                self.release(&reservation);
                failure
            }
            Err(mine) => mine.min(failure),
        }
    }

    /// Assets of this shard's accounts that `op` names.
    pub fn assets_of(&self, op: &[Planned]) -> Vec<(AccountId, Asset)> {
        op.iter()
            .flat_map(|planned| planned.legs.iter())
            .filter_map(|leg| {
                self.accounts.get(&leg.account_id).map(|slot| (leg.account_id, slot.account.asset))
            })
            .collect()
    }
}
