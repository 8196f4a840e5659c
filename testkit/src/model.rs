//! A reference model of the ledger: one thread, plain maps, each rule
//! written out once more in the simplest way, with no shards, reservations
//! or journal. Property tests run the same commands through the engine and
//! through this model and compare every result and every balance.

use std::collections::BTreeMap;

use wallet_actors::risk::RuleAction;
use wallet_actors::{AccountFlags, AccountStatus, Rejection, TransferRequest, TransferStatus};

/// An account in the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelAccount {
    /// Asset code and scale.
    pub asset: (String, u8),
    /// Its owner; `1` is the system user (settlement accounts), whose
    /// debits no risk rule checks.
    pub user: u128,
    /// Limits.
    pub flags: AccountFlags,
    /// How far below zero debits may go (with `debits_must_not_exceed_credits`).
    pub overdraft_limit: u128,
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
    /// Each new debit (posted transfer or hold): when it was applied, and
    /// its amount.
    pub new_debits: Vec<(u64, u128)>,
}

#[derive(Clone, Debug)]
struct ModelTransfer {
    request: TransferRequest,
    pending: Option<Hold>,
    status: TransferStatus,
    /// A hold a review rule made of the transfer.
    review: bool,
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
    pub rules: Vec<ModelRule>,
    /// What the rules decided, in order: (transfer, debited account, rule, action).
    pub decisions: Vec<(u128, u128, u128, RuleAction)>,
    /// The engine's shard count: a velocity rule scoped to a user counts
    /// the debits of all the user's accounts on the user's home shard
    /// (0, as in `Model::default()`, places every account at home).
    pub shard_count: u16,
}

mod rules;

pub use rules::{to_rules, ModelRule, ModelRuleKind, ModelScope};

/// What the risk rules make of a new debit.
enum Risk {
    Pass,
    Veto(Rejection),
    /// Hold it for review by this rule.
    Review(ModelRule),
}

/// A model result: `Ok(replayed)` or a rejection.
pub type ModelResult = Result<bool, Rejection>;

/// Why one request did not apply: a rejection, or a review rule that holds
/// it (the operation is then tried again with it as a review hold).
enum Failure {
    Rejected(Rejection),
    Review(ModelRule),
}

impl Model {
    /// An empty model at time `now_ms`, of an engine with `shard_count` shards.
    pub fn new(now_ms: u64, shard_count: u16) -> Self {
        Model { now_ms, shard_count, ..Model::default() }
    }

    /// Whether account `id` of `user` is on the user's home shard.
    fn at_home(&self, id: u128, user: u128) -> bool {
        crate::account(id).shard(self.shard_count) == crate::user(user).home_shard(self.shard_count)
    }

    /// The new debits (time, amount) a velocity rule of `scope` counts for
    /// a debit of `debit`: the user's home accounts' for a rule scoped to
    /// the user of a home account (only those of the debited account's
    /// asset when `same_asset`), the account's own otherwise.
    fn counted_debits(&self, scope: ModelScope, debit: u128, same_asset: bool) -> Vec<(u64, u128)> {
        let Some(account) = self.accounts.get(&debit) else { return Vec::new() };
        let user = account.user;
        match scope {
            ModelScope::User(_) if self.at_home(debit, user) => self
                .accounts
                .iter()
                .filter(|(id, a)| a.user == user && self.at_home(**id, user))
                .filter(|(_, a)| !same_asset || a.asset == account.asset)
                .flat_map(|(_, a)| a.new_debits.iter().copied())
                .collect(),
            _ => account.new_debits.clone(),
        }
    }

    /// Opens an account (as the engine: idempotent for the same fields).
    pub fn open(
        &mut self,
        id: u128,
        asset: (&str, u8),
        flags: AccountFlags,
        overdraft_limit: u128,
        user: u128,
    ) -> Result<(), Rejection> {
        let asset = (asset.0.to_string(), asset.1);
        if let Some(existing) = self.accounts.get(&id) {
            let same = existing.asset == asset
                && existing.flags == flags
                && existing.overdraft_limit == overdraft_limit
                && existing.user == user;
            return if same { Ok(()) } else { Err(Rejection::AccountExists) };
        }
        self.accounts.insert(
            id,
            ModelAccount {
                asset,
                user,
                flags,
                overdraft_limit,
                status: AccountStatus::Active,
                debits_posted: 0,
                credits_posted: 0,
                debits_pending: 0,
                credits_pending: 0,
                sequence: 1,
                new_debits: Vec::new(),
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
    /// by transfer. A review rule turns its transfer into a review hold and
    /// the operation is tried again; a veto's decision is kept.
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
                .map(|(request, pre)| pre.unwrap_or_else(|| self.apply_one(request)))
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
        let mut reviewed: BTreeMap<usize, ModelRule> = BTreeMap::new();
        'again: loop {
            let mut trial = self.clone();
            let mut resolved = std::collections::BTreeSet::new();
            for (index, request) in requests.iter().enumerate() {
                match trial.apply_stateful(request, &mut resolved, reviewed.get(&index).copied()) {
                    Ok(_) => {}
                    Err(Failure::Review(rule)) => {
                        reviewed.insert(index, rule);
                        continue 'again;
                    }
                    Err(Failure::Rejected(reason)) => {
                        self.keep_veto(request, reason);
                        return linked_failure(requests.len(), index, reason);
                    }
                }
            }
            *self = trial;
            for (index, rule) in reviewed {
                self.keep_review(&requests[index], rule);
            }
            return vec![Ok(false); requests.len()];
        }
    }

    /// One request on its own (its account checks, then risk).
    fn apply_one(&mut self, request: &TransferRequest) -> ModelResult {
        let mut resolved = std::collections::BTreeSet::new();
        match self.apply_stateful(request, &mut resolved, None) {
            Ok(replayed) => Ok(replayed),
            Err(Failure::Rejected(reason)) => {
                self.keep_veto(request, reason);
                Err(reason)
            }
            Err(Failure::Review(rule)) => match self.apply_stateful(request, &mut resolved, Some(rule)) {
                Ok(replayed) => {
                    self.keep_review(request, rule);
                    Ok(replayed)
                }
                Err(Failure::Rejected(reason)) => Err(reason),
                Err(Failure::Review(_)) => Err(Rejection::LinkedTransferFailed),
            },
        }
    }

    fn keep_veto(&mut self, request: &TransferRequest, reason: Rejection) {
        if let (Some(hit), TransferRequest::Transfer { id, debit_account_id, .. }) =
            (reason.risk_hit(), request)
        {
            self.decisions.push((id.get(), debit_account_id.get(), hit.rule_id.get(), RuleAction::Reject));
        }
    }

    fn keep_review(&mut self, request: &TransferRequest, rule: ModelRule) {
        if let TransferRequest::Transfer { id, debit_account_id, .. } = request {
            self.decisions.push((id.get(), debit_account_id.get(), rule.id, RuleAction::Review));
        }
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

    /// Applies one request after its first pass; `review`: the rule that
    /// holds it for review (review rules are then not checked again).
    fn apply_stateful(
        &mut self,
        request: &TransferRequest,
        resolved: &mut std::collections::BTreeSet<u128>,
        review: Option<ModelRule>,
    ) -> Result<bool, Failure> {
        let id = request.id().get();
        match request {
            TransferRequest::Transfer { debit_account_id, credit_account_id, amount, pending, .. } => {
                let (debit, credit, value) = (debit_account_id.get(), credit_account_id.get(), amount.get());
                let held = pending.is_some() || review.is_some();
                let debit_failure = self.debit_failure(debit, value);
                let credit_failure = self.credit_failure(credit, value);
                let asset_failure = match (self.accounts.get(&debit), self.accounts.get(&credit)) {
                    (Some(a), Some(b)) if a.asset != b.asset => Some(Rejection::AssetMismatch),
                    _ => None,
                };
                if let Some(failure) =
                    [debit_failure, credit_failure, asset_failure].into_iter().flatten().min()
                {
                    return Err(Failure::Rejected(failure));
                }
                // Risk rules come last.
                match self.risk(debit, value, review.is_some()) {
                    Risk::Pass => {}
                    Risk::Veto(rejection) => return Err(Failure::Rejected(rejection)),
                    Risk::Review(rule) => return Err(Failure::Review(rule)),
                }
                let now_ms = self.now_ms;
                if let Some(a) = self.accounts.get_mut(&debit) {
                    a.new_debits.push((now_ms, value));
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
                let timeout = match review {
                    Some(rule) => rule.timeout_seconds,
                    None => pending.and_then(|p| p.timeout_seconds),
                };
                let hold = held.then(|| Hold {
                    debit,
                    credit,
                    amount: value,
                    expires_at_ms: timeout.map(|s| self.now_ms + u64::from(s) * 1000),
                });
                let status = if held { TransferStatus::Pending } else { TransferStatus::Posted };
                let transfer = ModelTransfer {
                    request: request.clone(),
                    pending: hold,
                    status,
                    review: review.is_some(),
                };
                self.transfers.insert(id, transfer);
                Ok(false)
            }
            TransferRequest::PostPending { pending_id, amount, .. } => {
                let posted = Some(amount.map(|a| a.get()));
                self.resolve_hold(request, pending_id.get(), resolved, posted)
            }
            TransferRequest::VoidPending { pending_id, .. } => {
                self.resolve_hold(request, pending_id.get(), resolved, None)
            }
        }
    }

    /// Posts (`posted`: `Some` of the amount, all of it when `None`) or
    /// voids (`posted`: `None`) a hold: refused when another request of the
    /// batch resolved it, when its time has come, or when either account's
    /// status forbids it (a frozen account may still release a hold).
    fn resolve_hold(
        &mut self,
        request: &TransferRequest,
        pending_id: u128,
        resolved: &mut std::collections::BTreeSet<u128>,
        posted: Option<Option<u128>>,
    ) -> Result<bool, Failure> {
        if resolved.contains(&pending_id) {
            return Err(Failure::Rejected(Rejection::PendingTransferBusy));
        }
        let hold = self.open_hold(pending_id).map_err(Failure::Rejected)?;
        let expired = hold.expires_at_ms.is_some_and(|at| at <= self.now_ms);
        let adds = posted.is_some();
        let debit_failure = match self.accounts.get(&hold.debit) {
            None => Some(Rejection::DebitAccountNotFound),
            Some(_) if expired => Some(Rejection::PendingTransferExpired),
            Some(a) => status_failure(a.status, true, adds),
        };
        let credit_failure = match self.accounts.get(&hold.credit) {
            None => Some(Rejection::CreditAccountNotFound),
            Some(a) => status_failure(a.status, false, adds),
        };
        if let Some(failure) = [debit_failure, credit_failure].into_iter().flatten().min() {
            return Err(Failure::Rejected(failure));
        }
        resolved.insert(pending_id);
        let (value, status) = match posted {
            Some(amount) => (amount.unwrap_or(hold.amount), TransferStatus::Posted),
            None => (0, TransferStatus::Voided),
        };
        self.release(hold, value);
        self.finish_resolution(request.id().get(), request, pending_id, status);
        Ok(false)
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
        self.transfers
            .insert(id, ModelTransfer { request: request.clone(), pending: None, status, review: false });
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
            && a.debits_posted + a.debits_pending + value > a.credits_posted + a.overdraft_limit
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

    /// The first rule a new debit of `value` from `debit` violates, in the
    /// engine's order: reject rules before review rules, then by kind
    /// (max_amount before velocity), then by id. Settlement accounts'
    /// debits are never checked; a review hold is not checked again by
    /// review rules.
    fn risk(&self, debit: u128, value: u128, under_review: bool) -> Risk {
        let Some(account) = self.accounts.get(&debit) else { return Risk::Pass };
        if account.user == 1 {
            return Risk::Pass;
        }
        let mut rules = self.rules.clone();
        rules.sort_by_key(|rule| (rule.action == RuleAction::Review, rule.kind_code(), rule.id));
        for rule in rules {
            if under_review && rule.action == RuleAction::Review {
                break;
            }
            let in_scope = match rule.scope {
                ModelScope::Global => true,
                ModelScope::User(user) => account.user == user,
                ModelScope::Account(id) => id == debit,
            };
            let violated = match rule.kind {
                ModelRuleKind::MaxUsd(limit) => account.asset.0 == "USD" && value > limit,
                ModelRuleKind::Velocity { window_seconds, count } => {
                    // Model time moves in whole seconds, where the engine's
                    // one-second buckets make the window exactly "at most
                    // window_seconds ago".
                    let window_ms = u64::from(window_seconds) * 1000;
                    let debits = self.counted_debits(rule.scope, debit, false);
                    let seen = debits.iter().filter(|(t, _)| self.now_ms - t <= window_ms).count();
                    seen as u64 + 1 > u64::from(count)
                }
                ModelRuleKind::VelocityUsd { window_seconds, amount } => {
                    let window_ms = u64::from(window_seconds) * 1000;
                    let debits = self.counted_debits(rule.scope, debit, true);
                    let sum: u128 =
                        debits.iter().filter(|(t, _)| self.now_ms - t <= window_ms).map(|(_, a)| a).sum();
                    account.asset.0 == "USD" && sum + value > amount
                }
            };
            if in_scope && violated {
                return match rule.action {
                    RuleAction::Reject => Risk::Veto(Rejection::from(rule.hit())),
                    RuleAction::Review => Risk::Review(rule),
                };
            }
        }
        Risk::Pass
    }

    /// The accounts of a pending transfer, if there is one by that id.
    pub fn hold_accounts(&self, pending_id: u128) -> Option<(u128, u128)> {
        self.transfers.get(&pending_id).and_then(|t| t.pending).map(|hold| (hold.debit, hold.credit))
    }

    /// Every open hold's id, oldest first (commands pick among them).
    pub fn live_holds(&self) -> Vec<u128> {
        self.transfers
            .iter()
            .filter(|(_, t)| t.status == TransferStatus::Pending)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every transfer id with its status, and whether a review rule made it.
    pub fn statuses(&self) -> Vec<(u128, TransferStatus, bool)> {
        self.transfers.iter().map(|(id, t)| (*id, t.status, t.review)).collect()
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
