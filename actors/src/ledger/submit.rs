//! Submitting transfer requests: stateless checks, claiming ids and
//! planning on the caller's task; then routing, review holds, veto
//! decisions and results in a task that runs to the end, so no claim is
//! left behind by a caller that stopped waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::plan::plan;
use super::route::run_ops;
use super::{Inner, Ledger, TransferOutcome, TransferResult};
use crate::actor::OpOutcome;
use crate::ids::TransferId;
use crate::ports::Origin;
use crate::record::Record;
use crate::registry::{Claim, TransferRecord, TransferRegistry};
use crate::rejection::Rejection;
use crate::risk::{Decision, RiskHit};
use crate::shard::{HoldChange, Planned};
use crate::transfer::{TransferKind, TransferRequest, TransferStatus, BATCH_SIZE_MAX};
use crate::LedgerError;

impl Ledger {
    /// Applies one transfer request.
    pub async fn submit_one(&self, request: TransferRequest) -> Result<TransferResult, LedgerError> {
        let mut results = self.submit(vec![request], false).await?;
        Ok(results.pop().unwrap_or(Err(Rejection::BatchSizeOutOfRange)))
    }

    /// Applies transfer requests: each on its own, or all-or-nothing when
    /// `linked`. Returns one result per request, in order. Every applied
    /// transfer is durable before this returns.
    ///
    /// `Timeout` means the outcome is not known yet, not that nothing
    /// happened: the operations run to the end in a task of their own, which
    /// records what was applied and frees the ids of what was refused, so a
    /// retry with the same ids gets the real outcome (`in_flight` while it
    /// is still being decided). The same holds if the caller goes away.
    pub async fn submit(
        &self,
        requests: Vec<TransferRequest>,
        linked: bool,
    ) -> Result<Vec<TransferResult>, LedgerError> {
        let inner = self.inner();
        let permit = self.admit(&inner, requests.len())?;
        let now_ms = inner.shared.clock.now_ms();
        let mut claims = Claims::new(requests.len());
        for (index, request) in requests.into_iter().enumerate() {
            claims.claim_and_plan(&inner.shared.registry, index, request, now_ms)?;
        }
        if linked {
            if let Some(settled) = claims.settle_linked(&inner.shared.registry) {
                return Ok(settled);
            }
        }
        let (ops, results) = claims.into_ops(linked);
        let timeout = inner.timeout;
        let submission = Submission { inner, ops, results, now_ms, _permit: permit };
        // On the caller's task while it waits (a task per request cost about
        // a fifth of the hot path); on a task of its own once it stops.
        match tokio::time::timeout(timeout, RunToEnd::new(submission.run())).await {
            Ok(result) => result,
            Err(_) => Err(LedgerError::Timeout),
        }
    }
}

impl Ledger {
    /// Admission: a serving generation, a batch of allowed size, a snapshot
    /// not too far behind, and room in flight for every transfer.
    fn admit(&self, inner: &Inner, count: usize) -> Result<tokio::sync::OwnedSemaphorePermit, LedgerError> {
        inner.check_serving()?;
        if count == 0 || count > BATCH_SIZE_MAX {
            return Err(LedgerError::Rejected(Rejection::BatchSizeOutOfRange));
        }
        if inner.shared.registry.recorded() >= inner.config.unsnapshotted_transfers_max {
            metrics::counter!("wallet_overloaded_total", "reason" => "snapshot_behind").increment(1);
            return Err(LedgerError::Overloaded);
        }
        self.cell
            .base
            .admission
            .clone()
            .try_acquire_many_owned(count as u32)
            .map_err(|_| LedgerError::Overloaded)
    }
}

/// Each operation with the indexes of its requests.
type Ops = Vec<(Vec<usize>, Arc<[Planned]>)>;

/// A request's transfers after their ids are claimed and they are planned:
/// results known already (rejections, replays) and the plans of the rest.
struct Claims {
    results: Vec<Option<TransferResult>>,
    planned: Vec<(usize, Planned)>,
    claimed: Vec<TransferId>,
}

impl Claims {
    fn new(count: usize) -> Claims {
        Claims {
            results: vec![None; count],
            planned: Vec::with_capacity(count),
            claimed: Vec::with_capacity(count),
        }
    }

    /// Stateless checks, the id's claim, the plan. An id whose use cannot
    /// be known (storage unreadable) fails the whole request, and frees
    /// what it had claimed.
    fn claim_and_plan(
        &mut self,
        registry: &TransferRegistry,
        index: usize,
        request: TransferRequest,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        if let Err(rejection) = request.check_stateless() {
            self.results[index] = Some(Err(rejection));
            return Ok(());
        }
        let request = Arc::new(request);
        let known = match registry.claim(&request) {
            Claim::New => None,
            Claim::Replay(record) => Some(Ok(TransferOutcome { record, replayed: true })),
            Claim::Conflict => Some(Err(Rejection::ExistsWithDifferentFields)),
            Claim::InFlight => Some(Err(Rejection::InFlight)),
            Claim::Unavailable => {
                self.release(registry);
                return Err(LedgerError::Unavailable);
            }
        };
        if let Some(result) = known {
            self.results[index] = Some(result);
            return Ok(());
        }
        match plan(registry, &request, now_ms) {
            Ok(planned) => {
                self.claimed.push(request.id());
                self.planned.push((index, planned));
            }
            Err(rejection) => {
                registry.release(request.id());
                self.results[index] = Some(Err(rejection));
            }
        }
        Ok(())
    }

    /// A linked batch that is settled already: retried whole, it gets its
    /// first outcomes back; with any failure (a replay mixed with new
    /// transfers counts as one) it fails whole at the first.
    fn settle_linked(&mut self, registry: &TransferRegistry) -> Option<Vec<TransferResult>> {
        if self.results.iter().all(|r| matches!(r, Some(Ok(_)))) {
            return Some(std::mem::take(&mut self.results).into_iter().flatten().collect());
        }
        let first = self.results.iter().position(|r| r.is_some())?;
        let reason = match &self.results[first] {
            Some(Err(rejection)) => *rejection,
            _ => Rejection::LinkedTransferFailed,
        };
        self.release(registry);
        Some(linked_failure(self.results.len(), first as u32, reason))
    }

    fn release(&mut self, registry: &TransferRegistry) {
        for id in self.claimed.drain(..) {
            registry.release(id);
        }
    }

    /// The planned transfers as operations (one, linked; or one each), with
    /// the results known so far.
    fn into_ops(self, linked: bool) -> (Ops, Vec<Option<TransferResult>>) {
        let ops = if linked {
            let (indexes, items): (Vec<usize>, Vec<Planned>) = self.planned.into_iter().unzip();
            vec![(indexes, items.into())]
        } else {
            self.planned.into_iter().map(|(index, p)| (vec![index], Arc::from(vec![p]))).collect()
        };
        (ops, self.results)
    }
}

/// A future polled where it is awaited, which, if dropped before it is
/// done (its caller timed out or went away), hands the rest of itself to a
/// task of its own: it still runs to the end.
struct RunToEnd<F: Future + Send + 'static> {
    future: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> RunToEnd<F> {
    fn new(future: F) -> Self {
        RunToEnd { future: Some(Box::pin(future)) }
    }
}

impl<F: Future + Send + 'static> Future for RunToEnd<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(future) = self.future.as_mut() else { return Poll::Pending };
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<F: Future + Send + 'static> Drop for RunToEnd<F> {
    fn drop(&mut self) {
        if let (Some(future), Ok(runtime)) = (self.future.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(async move {
                future.await;
            });
        }
    }
}

/// The operations of one request, from routing to results, in a task that
/// runs to the end whether or not its caller still waits.
struct Submission {
    inner: Arc<Inner>,
    ops: Ops,
    /// Results known before routing (rejections, replays), by request index.
    results: Vec<Option<TransferResult>>,
    now_ms: u64,
    /// Held until the operations end, so admission counts them even after
    /// their caller left.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Submission {
    /// Routes the operations, turns review hits into review holds, records
    /// vetoes, and settles every claim. On an error (the generation failed)
    /// the claims stay: the outcome is unknown until the shards are rebuilt
    /// from durable state, with a registry of their own.
    async fn run(mut self) -> Result<Vec<TransferResult>, LedgerError> {
        let all = self.ops.iter().map(|(_, op)| op.clone()).collect();
        let mut outcomes = run_ops(&self.inner, all).await?;
        self.hold_for_review(&mut outcomes).await?;
        self.record_vetoes(&outcomes).await?;
        Ok(self.results(outcomes))
    }

    /// A review rule answers "hold it": that transfer becomes a review hold
    /// (its decision in the same record) and its operation runs again. Each
    /// round turns one more transfer of an operation into a hold, so this ends.
    async fn hold_for_review(&mut self, outcomes: &mut [OpOutcome]) -> Result<(), LedgerError> {
        loop {
            let mut again = Vec::new();
            for (position, outcome) in outcomes.iter().enumerate() {
                if let Err((failed, Rejection::RiskReview(hit))) = outcome {
                    let (_, op) = &mut self.ops[position];
                    let mut items = op.to_vec();
                    let failed = *failed as usize;
                    let Some(item) = items.get(failed).and_then(|p| review_hold(p, *hit, self.now_ms)) else {
                        continue;
                    };
                    items[failed] = item;
                    *op = items.into();
                    again.push(position);
                }
            }
            if again.is_empty() {
                return Ok(());
            }
            let rerun = again.iter().map(|&position| self.ops[position].1.clone()).collect();
            for (position, outcome) in again.into_iter().zip(run_ops(&self.inner, rerun).await?) {
                outcomes[position] = outcome;
            }
        }
    }

    /// Journals the decisions of rules that vetoed a transfer, and waits
    /// until they are durable (their ids are given then, in journal order).
    async fn record_vetoes(&self, outcomes: &[OpOutcome]) -> Result<(), LedgerError> {
        let vetoes: Vec<Decision> = self
            .ops
            .iter()
            .zip(outcomes)
            .filter_map(|((_, op), outcome)| {
                let (failed, rejection) = outcome.as_ref().err()?;
                Some(decision(op.get(*failed as usize)?, rejection.risk_hit()?, self.now_ms))
            })
            .collect();
        if vetoes.is_empty() {
            return Ok(());
        }
        let shared = self.inner.shared.clone();
        let (tx, rx) = oneshot::channel();
        // The node's record, not a shard's: a veto changes no account, and
        // the request may have come to a node owning none of its shards.
        shared.clone().journal.append(
            Origin::Node,
            Record::Decisions(vetoes.clone()),
            Box::new(move |result| {
                match result {
                    Ok(()) => shared.decisions.durable(&vetoes),
                    Err(error) => shared.poison(error),
                }
                let _ = tx.send(result);
            }),
        );
        match rx.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(LedgerError::Unavailable),
        }
    }

    /// One result per request; the ids of refused operations are freed.
    fn results(mut self, outcomes: Vec<OpOutcome>) -> Vec<TransferResult> {
        let registry = &self.inner.shared.registry;
        for ((indexes, op), outcome) in self.ops.iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    for (index, planned) in indexes.iter().zip(op.iter()) {
                        if let Some(transfer) = &planned.transfer {
                            // The outcome as applied (the registry holds the
                            // same; reading it back was a cache miss per transfer).
                            let record = TransferRecord {
                                transfer: transfer.clone(),
                                status: transfer.initial_status(),
                            };
                            self.results[*index] = Some(Ok(TransferOutcome { record, replayed: false }));
                        }
                    }
                }
                Err((failed, rejection)) => {
                    for (position, (index, planned)) in indexes.iter().zip(op.iter()).enumerate() {
                        if let Some(transfer) = &planned.transfer {
                            registry.release(transfer.id);
                        }
                        let reason = if position as u32 == failed {
                            refine(registry, rejection, planned)
                        } else {
                            Rejection::LinkedTransferFailed
                        };
                        self.results[*index] = Some(Err(reason));
                    }
                }
            }
        }
        std::mem::take(&mut self.results)
            .into_iter()
            .map(|r| r.unwrap_or(Err(Rejection::LinkedTransferFailed)))
            .collect()
    }
}

/// A shard that finds no hold reports "not found"; the registry knows why.
fn refine(registry: &TransferRegistry, rejection: Rejection, planned: &Planned) -> Rejection {
    match (rejection, planned.hold) {
        (Rejection::PendingTransferNotFound, HoldChange::Resolve(resolution)) => {
            match registry.get(resolution.pending_id).map(|r| r.status) {
                Some(TransferStatus::Posted) => Rejection::PendingTransferAlreadyPosted,
                Some(TransferStatus::Voided) => Rejection::PendingTransferAlreadyVoided,
                Some(TransferStatus::Expired) => Rejection::PendingTransferExpired,
                _ => rejection,
            }
        }
        _ => rejection,
    }
}

/// A transfer turned into a hold for review by `hit`'s rule: its money is
/// held, not moved, and the hold voids itself only if the rule says so.
fn review_hold(planned: &Planned, hit: RiskHit, now_ms: u64) -> Option<Planned> {
    let transfer = planned.transfer.as_ref()?;
    if transfer.review.is_some() || !matches!(planned.hold, HoldChange::None | HoldChange::Create) {
        return None;
    }
    let mut held = (**transfer).clone();
    held.kind = TransferKind::Pending;
    held.review = Some(hit.rule_id);
    held.expires_at_ms = hit.timeout_seconds.map(|s| now_ms.saturating_add(u64::from(s) * 1000));
    let mut legs = planned.legs;
    for leg in &mut legs {
        // Both at most 2^96 (an amount): no overflow.
        leg.pending_add = leg.pending_add.saturating_add(leg.posted_add);
        leg.posted_add = 0;
    }
    Some(Planned {
        transfer: Some(Arc::new(held)),
        legs,
        hold: HoldChange::Create,
        // In the same record as the hold, so both are durable together.
        decision: Some(decision(planned, hit, now_ms)),
    })
}

/// The decision to keep for a transfer a rule vetoed or held.
fn decision(planned: &Planned, hit: RiskHit, now_ms: u64) -> Decision {
    Decision {
        id: 0,
        at_ms: now_ms,
        transfer_id: planned.legs[0].transfer_id,
        account_id: planned.legs[0].account_id,
        rule_id: hit.rule_id,
        kind: hit.kind,
        outcome: hit.action,
    }
}

fn linked_failure(len: usize, failed: u32, reason: Rejection) -> Vec<TransferResult> {
    (0..len).map(|i| Err(if i as u32 == failed { reason } else { Rejection::LinkedTransferFailed })).collect()
}
