//! Routing operations to shards: one shard executes at once, two shards
//! chain (debit, then credit), more are coordinated (prepare, one commit
//! record, decide). See `docs/ARCHITECTURE.md`, "The write paths".

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::Inner;
use crate::actor::{ask, wait_for, Answer, ChainOp, OpOutcome, PrepareOutcome, ShardMsg};
use crate::asset::Asset;
use crate::ids::AccountId;
use crate::ids::{CommitId, ShardId};
use crate::rejection::Rejection;
use crate::shard::{HoldChange, IndexedRejection, Planned};
use crate::LedgerError;

/// Runs operations: single-shard ones on their shard, the rest through a
/// coordinated commit. One outcome per operation, in order.
///
/// It waits for every answer without a time-out of its own: an answer
/// comes once the outcome is durable or decided, or `unavailable` when the
/// generation fails or stops (which closes the router's table of answers
/// awaited). The caller bounds its own wait instead, while this runs to
/// the end in the submission's task (see `submit`).
pub(super) async fn run_ops(
    inner: &Arc<Inner>,
    ops: Vec<Arc<[Planned]>>,
) -> Result<Vec<OpOutcome>, LedgerError> {
    let shard_count = inner.config.shard_count;
    let mut local: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    let mut spanning: Vec<usize> = Vec::new();
    let mut chained: BTreeMap<u16, Vec<ChainOp>> = BTreeMap::new();
    let mut chain_waiting = Vec::new();
    for (index, op) in ops.iter().enumerate() {
        let mut shards = op.iter().flat_map(|p| p.legs.iter()).map(|l| l.account_id.shard(shard_count).0);
        let first = shards.next();
        match first {
            Some(first) if shards.all(|s| s == first) => local.entry(first).or_default().push(index),
            _ if op.len() == 1 => {
                // One transfer between two shards: debit shard, then credit shard.
                let debit_shard = op[0].legs[0].account_id.shard(shard_count);
                let credit_shard = op[0].legs[1].account_id.shard(shard_count);
                let (reply, receiver) = inner.shared.router.register()?;
                // The credit shard appends the commit record: it decides.
                let commit_id = inner.commit_ids.next(credit_shard);
                chained.entry(debit_shard.0).or_default().push(ChainOp {
                    commit_id,
                    op: op.clone(),
                    credit_shard,
                    reply,
                });
                chain_waiting.push((index, receiver));
            }
            _ => spanning.push(index),
        }
    }
    let mut outcomes: Vec<Option<OpOutcome>> = vec![None; ops.len()];
    let mut chained = chained.into_iter();
    while let Some((shard, chain_ops)) = chained.next() {
        let replies: Vec<_> = chain_ops.iter().map(|chain| chain.reply).collect();
        if let Err(error) = inner.shared.router.send(ShardId(shard), ShardMsg::Debit(chain_ops)) {
            // This message and those not sent yet will never be answered.
            let unsent = chained.flat_map(|(_, ops)| ops.into_iter().map(|chain| chain.reply));
            for to in replies.into_iter().chain(unsent) {
                inner.shared.router.cancel(to);
            }
            return Err(error);
        }
    }

    let coordinated = if spanning.is_empty() {
        None
    } else {
        let inner = inner.clone();
        let spanning_ops: Vec<Arc<[Planned]>> = spanning.iter().map(|&i| ops[i].clone()).collect();
        // Spawned so it runs to the end even if the caller goes away.
        Some(tokio::spawn(coordinate(inner, spanning_ops)))
    };

    let mut waiting = Vec::with_capacity(local.len());
    for (shard, indexes) in &local {
        let batch: Vec<Arc<[Planned]>> = indexes.iter().map(|&i| ops[i].clone()).collect();
        let (to, rx) = inner.shared.router.register()?;
        if let Err(error) = inner.shared.router.send(ShardId(*shard), ShardMsg::Execute(batch, to)) {
            inner.shared.router.cancel(to);
            return Err(error);
        }
        waiting.push((indexes, rx));
    }
    for (indexes, rx) in waiting {
        let executed = |answer| match answer {
            Answer::Executed(outcomes) => Some(outcomes),
            _ => None,
        };
        let shard_outcomes = wait_for(rx, executed).await??;
        for (index, outcome) in indexes.iter().zip(shard_outcomes) {
            outcomes[*index] = Some(outcome);
        }
    }
    for (index, receiver) in chain_waiting {
        let chained = |answer| match answer {
            Answer::Chained(outcome) => Some(outcome),
            _ => None,
        };
        let outcome = wait_for(receiver, chained).await??;
        outcomes[index] = Some(outcome);
    }
    if let Some(handle) = coordinated {
        let results = handle.await.map_err(|_| LedgerError::Unavailable)??;
        for (index, outcome) in spanning.iter().zip(results) {
            outcomes[*index] = Some(outcome);
        }
    }
    Ok(outcomes.into_iter().map(|o| o.unwrap_or(Err((0, Rejection::LinkedTransferFailed)))).collect())
}

/// What the shards answered to `Prepare`, combined: for each operation its
/// first failure by (transfer index, check order), an asset mismatch
/// between shards included. `None` when a shard did not answer.
async fn first_failures(
    ops: &[Arc<[Planned]>],
    waiting: Vec<(Vec<u32>, oneshot::Receiver<Answer>)>,
) -> Option<Vec<Option<IndexedRejection>>> {
    let mut failures: Vec<Option<IndexedRejection>> = vec![None; ops.len()];
    let mut assets: Vec<BTreeMap<AccountId, Asset>> = vec![BTreeMap::new(); ops.len()];
    for (indexes, rx) in waiting {
        let prepared = |answer| match answer {
            Answer::Prepared(outcomes) => Some(outcomes),
            _ => None,
        };
        let Ok(prepared): Result<Vec<PrepareOutcome>, _> = wait_for(rx, prepared).await else { return None };
        for (index, outcome) in indexes.into_iter().zip(prepared) {
            let slot = index as usize;
            let (found, outcome) = outcome;
            assets[slot].extend(found);
            match outcome {
                Ok(()) => {}
                Err(failure) => {
                    failures[slot] = Some(match failures[slot] {
                        Some(existing) if existing <= failure => existing,
                        _ => failure,
                    });
                }
            }
        }
    }
    for (slot, op) in ops.iter().enumerate() {
        for (position, planned) in op.iter().enumerate() {
            if matches!(planned.hold, HoldChange::Resolve(_)) {
                continue;
            }
            let [debit, credit] = &planned.legs;
            let (Some(a), Some(b)) =
                (assets[slot].get(&debit.account_id), assets[slot].get(&credit.account_id))
            else {
                continue;
            };
            if a != b {
                let failure = (position as u32, Rejection::AssetMismatch);
                if failures[slot].is_none_or(|existing| failure < existing) {
                    failures[slot] = Some(failure);
                }
            }
        }
    }
    Some(failures)
}

/// Has the decider apply its legs and append the one record that decides
/// the commit for `committed`, and waits until it is durable.
async fn decide_at(
    inner: &Inner,
    commit_id: CommitId,
    committed: Vec<Arc<[Planned]>>,
    decided: (Vec<u32>, Vec<u32>),
) -> Result<(), LedgerError> {
    let (mine, aborted) = decided;
    let message = |reply| ShardMsg::Commit { commit_id, committed, mine, aborted, reply };
    let committed = |answer| match answer {
        Answer::Committed(result) => Some(result),
        _ => None,
    };
    // No time-out of its own (see `run_ops`). Unavailable: the generation is
    // failing, and its rebuild completes the commit from the journal if the
    // record was durable.
    ask(inner.shared.router.as_ref(), commit_id.decider, None, message, committed).await
}

/// Operations of one coordinated commit by shard: (index in the commit, operation).
type ByShard = BTreeMap<u16, Vec<(u32, Arc<[Planned]>)>>;

/// The coordinator of operations spanning shards: prepare everywhere, decide,
/// make the decision durable in one commit record, then tell the shards.
async fn coordinate(inner: Arc<Inner>, ops: Vec<Arc<[Planned]>>) -> Result<Vec<OpOutcome>, LedgerError> {
    let shard_count = inner.config.shard_count;
    let mut by_shard: ByShard = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let mut shards: Vec<u16> =
            op.iter().flat_map(|p| p.legs.iter()).map(|l| l.account_id.shard(shard_count).0).collect();
        shards.sort_unstable();
        shards.dedup();
        for shard in shards {
            by_shard.entry(shard).or_default().push((index as u32, op.clone()));
        }
    }
    // The lowest shard touched is where the deciding record belongs.
    let decider = ShardId(by_shard.keys().next().copied().unwrap_or_default());
    let commit_id = inner.commit_ids.next(decider);

    let mut waiting = Vec::with_capacity(by_shard.len());
    for (shard, shard_ops) in &by_shard {
        let indexes: Vec<u32> = shard_ops.iter().map(|(i, _)| *i).collect();
        let Ok((to, rx)) = inner.shared.router.register() else {
            abort_all(&inner, commit_id, &by_shard);
            return Err(LedgerError::Unavailable);
        };
        let message = ShardMsg::Prepare { commit_id, ops: shard_ops.clone(), reply: to };
        if inner.shared.router.send(ShardId(*shard), message).is_err() {
            inner.shared.router.cancel(to);
            abort_all(&inner, commit_id, &by_shard);
            return Err(LedgerError::Unavailable);
        }
        waiting.push((indexes, rx));
    }

    let Some(failures) = first_failures(&ops, waiting).await else {
        abort_all(&inner, commit_id, &by_shard);
        return Err(LedgerError::Unavailable);
    };

    let decided_by_shard = |shard: &u16| -> (Vec<u32>, Vec<u32>) {
        let shard_ops = by_shard.get(shard).map(Vec::as_slice).unwrap_or_default();
        shard_ops.iter().map(|(i, _)| *i).partition(|&i| failures[i as usize].is_none())
    };
    let committed: Vec<Arc<[Planned]>> =
        (0..ops.len()).filter(|&i| failures[i].is_none()).map(|i| ops[i].clone()).collect();
    let decider_done = !committed.is_empty();
    if decider_done {
        if let Err(error) =
            decide_at(&inner, commit_id, committed, decided_by_shard(&commit_id.decider.0)).await
        {
            // Whether the deciding record is durable is unknown, and the
            // other shards hold their reservations: only a rebuild from
            // the journal settles both (a no-op if already failing).
            inner.shared.poison(crate::ports::JournalError::Closed);
            return Err(error);
        }
    }

    for shard in by_shard.keys() {
        if decider_done && *shard == commit_id.decider.0 {
            continue;
        }
        let (committed, aborted) = decided_by_shard(shard);
        // A shard that is gone cannot apply; recovery will, from the commit record.
        let _ = inner.shared.router.send(ShardId(*shard), ShardMsg::Decide { commit_id, committed, aborted });
    }
    Ok(failures.into_iter().map(|f| f.map_or(Ok(()), Err)).collect())
}

fn abort_all(inner: &Inner, commit_id: CommitId, by_shard: &ByShard) {
    for (shard, shard_ops) in by_shard {
        let aborted = shard_ops.iter().map(|(i, _)| *i).collect();
        let message = ShardMsg::Decide { commit_id, committed: Vec::new(), aborted };
        let _ = inner.shared.router.send(ShardId(*shard), message);
    }
}
