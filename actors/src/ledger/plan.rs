//! Planning: a transfer request becomes its two legs and what it does to
//! holds; a post or void finds its pending transfer among durable ones.

use std::sync::Arc;

use crate::account::{Leg, Side};
use crate::ids::TransferId;
use crate::registry::TransferRegistry;
use crate::rejection::Rejection;
use crate::shard::{HoldChange, Planned};
use crate::transfer::{Transfer, TransferKind, TransferRequest, TransferStatus};

/// Turns a request into its legs, looking up the pending transfer a post
/// or void names.
pub(super) fn plan(
    registry: &TransferRegistry,
    request: &Arc<TransferRequest>,
    now_ms: u64,
) -> Result<Planned, Rejection> {
    let transfer_base = |kind, debit, credit, amount, pending_id, expires_at_ms| Transfer {
        id: request.id(),
        kind,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        pending_id,
        expires_at_ms,
        timestamp_ms: now_ms,
        review: None,
        request: request.clone(),
    };
    match &**request {
        TransferRequest::Transfer { id, debit_account_id, credit_account_id, amount, pending, .. } => {
            let (kind, posted, held, hold) = match pending {
                None => (TransferKind::Posted, amount.get(), 0, HoldChange::None),
                Some(_) => (TransferKind::Pending, 0, amount.get(), HoldChange::Create),
            };
            let expires_at_ms =
                pending.and_then(|p| p.timeout_seconds).map(|s| now_ms.saturating_add(u64::from(s) * 1000));
            let leg = |account_id, side| Leg {
                account_id,
                transfer_id: *id,
                side,
                posted_add: posted,
                pending_add: held,
                pending_sub: 0,
                at_ms: now_ms,
            };
            Ok(Planned {
                transfer: Some(Arc::new(transfer_base(
                    kind,
                    *debit_account_id,
                    *credit_account_id,
                    *amount,
                    None,
                    expires_at_ms,
                ))),
                legs: [leg(*debit_account_id, Side::Debit), leg(*credit_account_id, Side::Credit)],
                hold,
                decision: None,
            })
        }
        TransferRequest::PostPending { id, pending_id, amount } => {
            let pending = pending(registry, *pending_id)?;
            let held = pending.amount;
            let posted = amount.unwrap_or(held);
            if posted > held {
                return Err(Rejection::ExceedsPendingAmount);
            }
            Ok(resolve_plan(
                transfer_base(
                    TransferKind::PostPending,
                    pending.debit_account_id,
                    pending.credit_account_id,
                    posted,
                    Some(*pending_id),
                    None,
                ),
                *id,
                &pending,
                TransferStatus::Posted,
            ))
        }
        TransferRequest::VoidPending { id, pending_id } => {
            let pending = pending(registry, *pending_id)?;
            Ok(resolve_plan(
                transfer_base(
                    TransferKind::VoidPending,
                    pending.debit_account_id,
                    pending.credit_account_id,
                    pending.amount,
                    Some(*pending_id),
                    None,
                ),
                *id,
                &pending,
                TransferStatus::Voided,
            ))
        }
    }
}

fn pending(registry: &TransferRegistry, pending_id: TransferId) -> Result<Arc<Transfer>, Rejection> {
    let record = registry.get(pending_id).ok_or(Rejection::PendingTransferNotFound)?;
    if record.transfer.kind != TransferKind::Pending {
        return Err(Rejection::PendingTransferNotPending);
    }
    match record.status {
        TransferStatus::Pending => Ok(record.transfer),
        TransferStatus::Posted => Err(Rejection::PendingTransferAlreadyPosted),
        TransferStatus::Voided => Err(Rejection::PendingTransferAlreadyVoided),
        TransferStatus::Expired => Err(Rejection::PendingTransferExpired),
    }
}

fn resolve_plan(transfer: Transfer, id: TransferId, pending: &Transfer, status: TransferStatus) -> Planned {
    let posted = if status == TransferStatus::Posted { transfer.amount.get() } else { 0 };
    let leg = |account_id, side| Leg {
        account_id,
        transfer_id: id,
        side,
        posted_add: posted,
        pending_add: 0,
        pending_sub: pending.amount.get(),
        at_ms: transfer.timestamp_ms,
    };
    Planned {
        legs: [leg(pending.debit_account_id, Side::Debit), leg(pending.credit_account_id, Side::Credit)],
        hold: HoldChange::Resolve(crate::record::Resolution { pending_id: pending.id, status }),
        transfer: Some(Arc::new(transfer)),
        decision: None,
    }
}
