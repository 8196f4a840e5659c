//! Applying: legs change balances (through the account's handler, the only
//! code that does), holds are created and resolved, prepared operations
//! of a commit between shards are applied or aborted.

use super::*;

impl ShardState {
    /// Reserves and applies an operation whose legs all live in this shard:
    /// the single-shard fast path. Returns the record to journal.
    pub fn execute_local(&mut self, op: &[Planned], now_ms: u64) -> Result<Applied, IndexedRejection> {
        let reservation = self.reserve(op, now_ms)?;
        self.release(&reservation);
        let mut applied = Applied::default();
        for planned in op {
            for leg in &planned.legs {
                applied.events.push(self.apply_leg(leg));
            }
            self.apply_holds(planned);
            if let Some(transfer) = &planned.transfer {
                applied.transfers.push(transfer.clone());
            }
            if let Some(resolution) = planned.resolution() {
                applied.resolutions.push(resolution);
            }
            applied.decisions.extend(planned.decision);
        }
        Ok(applied)
    }

    /// Keeps a reservation made for a coordinated commit until it is decided.
    pub fn hold_prepared(&mut self, key: (CommitId, u32), op: Arc<[Planned]>, reservation: Reservation) {
        self.prepared.insert(key, (op, reservation));
    }

    /// Applies this shard's legs of a committed operation. Returns the
    /// sequence numbers given, in leg order.
    pub fn commit_prepared(&mut self, key: (CommitId, u32)) -> Vec<u64> {
        let Some((op, reservation)) = self.prepared.remove(&key) else {
            return Vec::new();
        };
        self.release(&reservation);
        let mut sequences = Vec::with_capacity(reservation.legs.len());
        for planned in op.iter() {
            for leg in &planned.legs {
                if self.owns(leg.account_id) {
                    sequences.push(self.apply_leg(leg).sequence);
                }
            }
            self.apply_holds(planned);
        }
        sequences
    }

    /// Drops a prepared operation that will not commit.
    pub fn abort_prepared(&mut self, key: (CommitId, u32)) {
        if let Some((_, reservation)) = self.prepared.remove(&key) {
            self.release(&reservation);
        }
    }

    /// Applies one leg that was checked and reserved: a broken guarantee
    /// here is a bug, so it panics and the supervisor rebuilds the shards.
    pub(super) fn apply_leg(&mut self, leg: &Leg) -> SequencedEvent {
        match self.try_apply_leg(leg, None) {
            Ok(event) => event,
            Err(broken) => panic!("{broken}"),
        }
    }

    /// Applies one leg. With `sequence`, replay: an event the account already
    /// has is skipped, so replaying over a newer snapshot is harmless.
    pub(super) fn try_apply_leg(
        &mut self,
        leg: &Leg,
        sequence: Option<u64>,
    ) -> Result<SequencedEvent, InvariantBroken> {
        let event = AccountEvent::Leg(*leg);
        let slot = self
            .accounts
            .get_mut(&leg.account_id)
            .ok_or(InvariantBroken::UnknownAccount { account_id: leg.account_id })?;
        let sequence = sequence.unwrap_or(slot.account.sequence + 1);
        let new_debit = leg.is_new_debit() && slot.account.user_id != UserId::SYSTEM;
        let (user_id, asset) = (slot.account.user_id, slot.account.asset);
        let applies = sequence > slot.account.sequence;
        if applies {
            slot.account.try_apply(sequence, &event)?;
            if new_debit {
                slot.account.debit_window.record(leg.at_ms, leg.posted_add + leg.pending_add);
            }
        }
        // Even when the account has the leg already: a snapshot's accounts
        // and user windows are written one after the other, so replay may
        // meet an account newer than its user's window (the window's marks
        // keep it from counting a debit twice).
        if new_debit {
            self.count_user_debit(user_id, asset, leg, sequence);
        }
        if applies {
            self.dirty_accounts.insert(leg.account_id);
            self.record_history(leg.account_id, sequence, HistoryEvent::Leg(*leg), leg.at_ms);
        }
        Ok(SequencedEvent { account_id: leg.account_id, sequence, event })
    }

    pub(super) fn apply_holds(&mut self, planned: &Planned) {
        let debit_account_id = planned.legs[0].account_id;
        if !self.owns(debit_account_id) {
            return;
        }
        match (planned.hold, &planned.transfer) {
            (HoldChange::Create, Some(transfer)) => self.create_hold(transfer),
            (HoldChange::Resolve(resolution), _) => self.remove_hold(resolution.pending_id),
            _ => {}
        }
    }

    pub(super) fn create_hold(&mut self, transfer: &Transfer) {
        self.dirty_holds.insert(transfer.id);
        if let Some(at) = transfer.expires_at_ms {
            self.expiries.insert((at, transfer.id));
        }
        self.holds.insert(
            transfer.id,
            Hold {
                pending_id: transfer.id,
                debit_account_id: transfer.debit_account_id,
                credit_account_id: transfer.credit_account_id,
                amount: transfer.amount.get(),
                expires_at_ms: transfer.expires_at_ms,
                busy: false,
            },
        );
    }

    pub(super) fn remove_hold(&mut self, pending_id: TransferId) {
        self.dirty_holds.insert(pending_id);
        if let Some(hold) = self.holds.remove(&pending_id) {
            if let Some(at) = hold.expires_at_ms {
                self.expiries.remove(&(at, pending_id));
            }
        }
    }

    /// Loads an open hold from a snapshot (before any replay).
    pub fn load_hold(&mut self, hold: Hold) {
        if let Some(at) = hold.expires_at_ms {
            self.expiries.insert((at, hold.pending_id));
        }
        self.holds.insert(hold.pending_id, hold);
    }

    /// Holds whose timeout has passed and that nothing is resolving, oldest first.
    pub fn due_holds(&self, now_ms: u64, limit: usize) -> Vec<Hold> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .filter_map(|(_, id)| self.holds.get(id))
            .filter(|hold| !hold.busy)
            .take(limit)
            .cloned()
            .collect()
    }
}
