//! Holds that reach their timeout: found by each shard, expired like a
//! void, by a background task.

use super::*;

impl Ledger {
    pub(super) fn spawn_expiry(&self) {
        let weak = Arc::downgrade(&self.cell);
        let interval = Duration::from_millis(self.cell.base.config.expiry_interval_ms.max(1));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(cell) = weak.upgrade() else { return };
                if cell.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let ledger = Ledger { cell };
                if ledger.check_poisoned().is_err() {
                    continue; // waiting for a rebuild
                }
                if let Err(error) = ledger.expire_due().await {
                    tracing::warn!(%error, "expiring holds failed");
                }
            }
        });
    }

    /// Expires holds whose timeout passed; returns how many it expired.
    pub async fn expire_due(&self) -> Result<usize, LedgerError> {
        let inner = self.inner();
        inner.check_serving()?;
        let now_ms = inner.shared.clock.now_ms();
        let mut ops: Vec<Arc<[Planned]>> = Vec::new();
        for shard in inner.shards.clone() {
            let due =
                self.ask(&shard, |port| ShardMsg::DueHolds { now_ms, limit: 1024, reply: port }).await?;
            for hold in due {
                let leg = |account_id, side| Leg {
                    account_id,
                    transfer_id: hold.pending_id,
                    side,
                    posted_add: 0,
                    pending_add: 0,
                    pending_sub: hold.amount,
                    at_ms: now_ms,
                };
                ops.push(Arc::from(vec![Planned {
                    transfer: None,
                    legs: [
                        leg(hold.debit_account_id, Side::Debit),
                        leg(hold.credit_account_id, Side::Credit),
                    ],
                    hold: HoldChange::Resolve(crate::record::Resolution {
                        pending_id: hold.pending_id,
                        status: TransferStatus::Expired,
                    }),
                    decision: None,
                }]));
            }
        }
        if ops.is_empty() {
            return Ok(0);
        }
        // A hold another expiry (or a post or void) got to first fails here: fine.
        let outcomes = route::run_ops(&inner, ops).await?;
        Ok(outcomes.iter().filter(|outcome| outcome.is_ok()).count())
    }
}
