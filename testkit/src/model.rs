//! A reference model of the ledger: one thread, plain maps, each rule
//! written out once more in the simplest way, with no shards, reservations
//! or journal. Property tests run the same commands through the engine and
//! through this model and compare every result and every balance.

use std::collections::BTreeMap;

use wallet_actors::{AccountFlags, AccountStatus, Rejection, TransferRequest, TransferStatus};

/// An account in the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelAccount {
    /// Asset code and scale.
    pub asset: (String, u8),
    /// Limits.
    pub flags: AccountFlags,
    /// Status.
    pub status: AccountStatus,
    /// Posted debits.
    pub debits_posted: u128,
    /// Posted credits.
    pub credits_posted: u128,
    /// Pending debits.
    pub debits_pending: u128,
    /// Pending credits.
    pub credits_pending: u128,
    /// Events applied.
    pub sequence: u64,
    /// When each new debit (posted transfer or hold) was applied.
    pub debit_times_ms: Vec<u64>,
}

#[derive(Clone, Debug)]
struct ModelTransfer {
    request: TransferRequest,
    pending: Option<Hold>,
    status: TransferStatus,
}

#[derive(Clone, Copy, Debug)]
struct Hold {
    debit: u128,
    credit: u128,
    amount: u128,
    expires_at_ms: Option<u64>,
}

/// The model's state.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Accounts by id.
    pub accounts: BTreeMap<u128, ModelAccount>,
    transfers: BTreeMap<u128, ModelTransfer>,
    /// Model time.
    pub now_ms: u64,
    /// The risk rules in force.
    pub rules: ModelRules,
}

/// The two risk rules the model knows, both global, both `reject`: rule 1
/// caps one USD transfer, rule 2 caps debits per account within a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelRules {
    /// `max_amount` of USD, rule id 1.
    pub max_usd: Option<u128>,
    /// `velocity_count` (window_seconds, count), rule id 2.
    pub velocity: Option<(u32, u32)>,
}

impl ModelRules {
    /// The same rules for the engine.
    pub fn to_rules(self) -> Vec<wallet_actors::risk::Rule> {
        use wallet_actors::risk::{Rule, RuleAction, RuleId, RuleKind, RuleScope};
        let rule = |id: u128, kind| Rule {
            id: RuleId::new(id).unwrap_or_else(|_| unreachable!()),
            name: format!("model rule {id}"),
            kind,
            scope: RuleScope::Global,
            action: RuleAction::Reject,
            timeout_seconds: None,
        };
        let mut rules = Vec::new();
        if let Some(limit) = self.max_usd {
            let amount = wallet_actors::Amount::new(limit).unwrap_or_default();
            rules.push(rule(1, RuleKind::MaxAmount { asset: "USD".into(), amount }));
        }
        if let Some((window_seconds, count)) = self.velocity {
            rules.push(rule(2, RuleKind::VelocityCount { window_seconds, count }));
        }
        rules
    }
}

/// A model result: `Ok(replayed)` or a rejection.
pub type ModelResult = Result<bool, Rejection>;

impl Model {
    /// An empty model at time `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Model { now_ms, ..Model::default() }
    }

    /// Opens an account (as the engine: idempotent for the same fields).
    pub fn open(&mut self, id: u128, asset: (&str, u8), flags: AccountFlags) -> Result<(), Rejection> {
        let asset = (asset.0.to_string(), asset.1);
        if let Some(existing) = self.accounts.get(&id) {
            return if existing.asset == asset && existing.flags == flags {
                Ok(())
            } else {
                Err(Rejection::AccountExists)
            };
        }
        self.accounts.insert(
            id,
            ModelAccount {
                asset,
                flags,
                status: AccountStatus::Active,
                debits_posted: 0,
                credits_posted: 0,
                debits_pending: 0,
                credits_pending: 0,
                sequence: 1,
                debit_times_ms: Vec::new(),
            },
        );
        Ok(())
    }

    /// Freezes, unfreezes or closes an account.
    pub fn set_status(&mut self, id: u128, target: AccountStatus) -> Result<(), Rejection> {
        let account = self.accounts.get_mut(&id).ok_or(Rejection::AccountNotFound)?;
        if account.status == target {
            return Ok(());
        }
        if account.status == AccountStatus::Closed {
            return Err(Rejection::AccountClosed);
        }
        if target == AccountStatus::Closed {
            if account.debits_pending != 0 || account.credits_pending != 0 {
                return Err(Rejection::AccountHasPending);
            }
            if account.debits_posted != account.credits_posted {
                return Err(Rejection::AccountBalanceNotZero);
            }
        }
        account.status = target;
        account.sequence += 1;
        Ok(())
    }

    /// Applies requests one at a time, or all-or-nothing when `linked`.
    ///
    /// As in the engine, checks come in two passes: first those that need no
    /// account (fields, ids, the pending transfer named), for the whole
    /// batch against the state before it; then the account checks, transfer
    /// by transfer.
    pub fn submit(&mut self, requests: &[TransferRequest], linked: bool) -> Vec<ModelResult> {
        let mut first_pass: Vec<Option<ModelResult>> = Vec::with_capacity(requests.len());
        let mut seen = std::collections::BTreeSet::new();
        for request in requests {
            first_pass.push(self.first_pass(request, &mut seen));
        }
        if !linked {
            return requests
                .iter()
                .zip(first_pass)
                .map(|(request, pre)| {
                    pre.unwrap_or_else(|| self.apply_stateful(request, &mut Default::default()))
                })
                .collect();
        }
        if first_pass.iter().all(|r| *r == Some(Ok(true))) {
            return first_pass.into_iter().flatten().collect();
        }
        if let Some(first) = first_pass.iter().position(Option::is_some) {
            let reason = match first_pass[first] {
                Some(Err(rejection)) => rejection,
                _ => Rejection::LinkedTransferFailed,
            };
            return linked_failure(requests.len(), first, reason);
        }
        let mut trial = self.clone();
        let mut resolved = std::collections::BTreeSet::new();
        for (index, request) in requests.iter().enumerate() {
            if let Err(reason) = trial.apply_stateful(request, &mut resolved) {
                return linked_failure(requests.len(), index, reason);
            }
        }
        *self = trial;
        vec![Ok(false); requests.len()]
    }

    fn first_pass(
        &self,
        request: &TransferRequest,
        seen: &mut std::collections::BTreeSet<u128>,
    ) -> Option<ModelResult> {
        if let Err(rejection) = request.check_stateless() {
            return Some(Err(rejection));
        }
        let id = request.id().get();
        if let Some(existing) = self.transfers.get(&id) {
            return Some(if existing.request == *request {
                Ok(true)
            } else {
                Err(Rejection::ExistsWithDifferentFields)
            });
        }
        if !seen.insert(id) {
            return Some(Err(Rejection::InFlight));
        }
        match request {
            TransferRequest::Transfer { .. } => None,
            TransferRequest::PostPending { pending_id, amount, .. } => match self.open_hold(pending_id.get())
            {
                Err(rejection) => Some(Err(rejection)),
                Ok(hold) if amount.is_some_and(|a| a.get() > hold.amount) => {
                    Some(Err(Rejection::ExceedsPendingAmount))
                }
                Ok(_) => None,
            },
            TransferRequest::VoidPending { pending_id, .. } => {
                self.open_hold(pending_id.get()).err().map(Err)
            }
        }
    }

    fn apply_stateful(
        &mut self,
        request: &TransferRequest,
        resolved: &mut std::collections::BTreeSet<u128>,
    ) -> ModelResult {
        let id = request.id().get();
        match request {
            TransferRequest::Transfer { debit_account_id, credit_account_id, amount, pending, .. } => {
                let (debit, credit, value) = (debit_account_id.get(), credit_account_id.get(), amount.get());
                let held = pending.is_some();
                let debit_failure = self.debit_failure(debit, value);
                let credit_failure = self.credit_failure(credit, value);
                let asset_failure = match (self.accounts.get(&debit), self.accounts.get(&credit)) {
                    (Some(a), Some(b)) if a.asset != b.asset => Some(Rejection::AssetMismatch),
                    _ => None,
                };
                if let Some(failure) =
                    [debit_failure, credit_failure, asset_failure].into_iter().flatten().min()
                {
                    return Err(failure);
                }
                // Risk rules come last, in kind order: max_amount, then velocity.
                if let Some(failure) = self.risk_failure(debit, value) {
                    return Err(failure);
                }
                let now_ms = self.now_ms;
                if let Some(a) = self.accounts.get_mut(&debit) {
                    a.debit_times_ms.push(now_ms);
                    if held {
                        a.debits_pending += value
                    } else {
                        a.debits_posted += value
                    }
                    a.sequence += 1;
                }
                if let Some(a) = self.accounts.get_mut(&credit) {
                    if held {
                        a.credits_pending += value
                    } else {
                        a.credits_posted += value
                    }
                    a.sequence += 1;
                }
                let hold = pending.map(|p| Hold {
                    debit,
                    credit,
                    amount: value,
                    expires_at_ms: p.timeout_seconds.map(|s| self.now_ms + u64::from(s) * 1000),
                });
                let status = if held { TransferStatus::Pending } else { TransferStatus::Posted };
                self.transfers.insert(id, ModelTransfer { request: request.clone(), pending: hold, status });
                Ok(false)
            }
            TransferRequest::PostPending { pending_id, amount, .. } => {
                if resolved.contains(&pending_id.get()) {
                    return Err(Rejection::PendingTransferBusy);
                }
                let hold = self.open_hold(pending_id.get())?;
                let value = amount.map_or(hold.amount, |a| a.get());
                let expired = hold.expires_at_ms.is_some_and(|at| at <= self.now_ms);
                let debit_failure = match self.accounts.get(&hold.debit) {
                    None => Some(Rejection::DebitAccountNotFound),
                    Some(_) if expired => Some(Rejection::PendingTransferExpired),
                    Some(a) => status_failure(a.status, true, true),
                };
                let credit_failure = match self.accounts.get(&hold.credit) {
                    None => Some(Rejection::CreditAccountNotFound),
                    Some(a) => status_failure(a.status, false, true),
                };
                if let Some(failure) = [debit_failure, credit_failure].into_iter().flatten().min() {
                    return Err(failure);
                }
                resolved.insert(pending_id.get());
                self.release(hold, value);
                self.finish_resolution(id, request, pending_id.get(), TransferStatus::Posted);
                Ok(false)
            }
            TransferRequest::VoidPending { pending_id, .. } => {
                if resolved.contains(&pending_id.get()) {
                    return Err(Rejection::PendingTransferBusy);
                }
                let hold = self.open_hold(pending_id.get())?;
                let debit_failure = match self.accounts.get(&hold.debit) {
                    None => Some(Rejection::DebitAccountNotFound),
                    Some(a) => status_failure(a.status, true, false),
                };
                let credit_failure = match self.accounts.get(&hold.credit) {
                    None => Some(Rejection::CreditAccountNotFound),
                    Some(a) => status_failure(a.status, false, false),
                };
                if let Some(failure) = [debit_failure, credit_failure].into_iter().flatten().min() {
                    return Err(failure);
                }
                resolved.insert(pending_id.get());
                self.release(hold, 0);
                self.finish_resolution(id, request, pending_id.get(), TransferStatus::Voided);
                Ok(false)
            }
        }
    }

    /// Expires every hold whose time has come; returns how many.
    pub fn expire_due(&mut self) -> usize {
        let now = self.now_ms;
        let due: Vec<u128> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.status == TransferStatus::Pending)
            .filter(|(_, t)| t.pending.and_then(|h| h.expires_at_ms).is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            let Some(transfer) = self.transfers.get_mut(id) else { continue };
            let Some(hold) = transfer.pending else { continue };
            transfer.status = TransferStatus::Expired;
            self.release(hold, 0);
        }
        due.len()
    }

    fn release(&mut self, hold: Hold, posted: u128) {
        if let Some(debit) = self.accounts.get_mut(&hold.debit) {
            debit.debits_pending -= hold.amount;
            debit.debits_posted += posted;
            debit.sequence += 1;
        }
        if let Some(credit) = self.accounts.get_mut(&hold.credit) {
            credit.credits_pending -= hold.amount;
            credit.credits_posted += posted;
            credit.sequence += 1;
        }
    }

    fn finish_resolution(
        &mut self,
        id: u128,
        request: &TransferRequest,
        pending_id: u128,
        status: TransferStatus,
    ) {
        if let Some(pending) = self.transfers.get_mut(&pending_id) {
            pending.status = status;
        }
        let status =
            if status == TransferStatus::Posted { TransferStatus::Posted } else { TransferStatus::Voided };
        self.transfers.insert(id, ModelTransfer { request: request.clone(), pending: None, status });
    }

    fn open_hold(&self, pending_id: u128) -> Result<Hold, Rejection> {
        let pending = self.transfers.get(&pending_id).ok_or(Rejection::PendingTransferNotFound)?;
        let hold = pending.pending.ok_or(Rejection::PendingTransferNotPending)?;
        match pending.status {
            TransferStatus::Pending => Ok(hold),
            TransferStatus::Posted => Err(Rejection::PendingTransferAlreadyPosted),
            TransferStatus::Voided => Err(Rejection::PendingTransferAlreadyVoided),
            TransferStatus::Expired => Err(Rejection::PendingTransferExpired),
        }
    }

    fn debit_failure(&self, id: u128, value: u128) -> Option<Rejection> {
        let Some(a) = self.accounts.get(&id) else { return Some(Rejection::DebitAccountNotFound) };
        if let Some(failure) = status_failure(a.status, true, true) {
            return Some(failure);
        }
        if a.flags.debits_must_not_exceed_credits
            && a.debits_posted + a.debits_pending + value > a.credits_posted
        {
            return Some(Rejection::InsufficientFunds);
        }
        None
    }

    fn credit_failure(&self, id: u128, value: u128) -> Option<Rejection> {
        let Some(a) = self.accounts.get(&id) else { return Some(Rejection::CreditAccountNotFound) };
        if let Some(failure) = status_failure(a.status, false, true) {
            return Some(failure);
        }
        if a.flags.credits_must_not_exceed_debits
            && a.credits_posted + a.credits_pending + value > a.debits_posted
        {
            return Some(Rejection::ExceedsDebits);
        }
        None
    }

    fn risk_failure(&self, debit: u128, value: u128) -> Option<Rejection> {
        use wallet_actors::risk::{RiskHit, RuleAction, RuleId, RuleKindCode};
        let account = self.accounts.get(&debit)?;
        let hit = |id: u128, kind| RiskHit {
            rule_id: RuleId::new(id).unwrap_or_else(|_| unreachable!()),
            kind,
            action: RuleAction::Reject,
            timeout_seconds: None,
        };
        if self.rules.max_usd.is_some_and(|limit| account.asset.0 == "USD" && value > limit) {
            return Some(Rejection::RiskMaxAmountExceeded(hit(1, RuleKindCode::MaxAmount)));
        }
        if let Some((window_seconds, count)) = self.rules.velocity {
            // Model time moves in whole seconds, where the engine's one-second
            // buckets make the window exactly "at most window_seconds ago".
            let window_ms = u64::from(window_seconds) * 1000;
            let seen = account.debit_times_ms.iter().filter(|&&t| self.now_ms - t <= window_ms).count();
            if seen as u64 + 1 > u64::from(count) {
                return Some(Rejection::RiskVelocityExceeded(hit(2, RuleKindCode::VelocityCount)));
            }
        }
        None
    }

    /// Every transfer id with its status.
    pub fn statuses(&self) -> Vec<(u128, TransferStatus)> {
        self.transfers.iter().map(|(id, t)| (*id, t.status)).collect()
    }

    /// Sum of credits minus debits (posted and pending) over all accounts: always zero.
    pub fn net(&self) -> (i128, i128) {
        let posted = self.accounts.values().map(|a| a.credits_posted as i128 - a.debits_posted as i128).sum();
        let pending =
            self.accounts.values().map(|a| a.credits_pending as i128 - a.debits_pending as i128).sum();
        (posted, pending)
    }
}

fn linked_failure(len: usize, failed: usize, reason: Rejection) -> Vec<ModelResult> {
    (0..len).map(|i| Err(if i == failed { reason } else { Rejection::LinkedTransferFailed })).collect()
}

/// The status checks of one side. `adds` is false for a void or expiry,
/// which a frozen account still allows.
fn status_failure(status: AccountStatus, debit: bool, adds: bool) -> Option<Rejection> {
    match (status, debit) {
        (AccountStatus::Closed, true) => Some(Rejection::DebitAccountClosed),
        (AccountStatus::Closed, false) => Some(Rejection::CreditAccountClosed),
        (AccountStatus::Frozen, true) if adds => Some(Rejection::DebitAccountFrozen),
        (AccountStatus::Frozen, false) if adds => Some(Rejection::CreditAccountFrozen),
        _ => None,
    }
}
