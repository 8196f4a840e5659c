//! Reads of transfers and history, and what a checkpoint takes from the
//! shards (captures, then the history storage has written).

use super::*;

impl Ledger {
    /// A transfer by id, with its current status.
    pub fn transfer(&self, id: crate::ids::TransferId) -> Option<TransferRecord> {
        self.inner().shared.registry.get(id)
    }

    /// What every shard changed since the last capture, for a snapshot.
    /// Everything journaled before this call is included.
    ///
    /// Fails if the shards failed meanwhile: a shard halted for a rebuild
    /// may have captured changes whose records its closed journal gate then
    /// refused, and a snapshot must never hold what the journal does not.
    pub async fn capture(&self) -> Result<Vec<crate::shard::Captured>, LedgerError> {
        let inner = self.inner();
        let mut all = Vec::with_capacity(inner.shards.len());
        for shard in &inner.shards {
            all.push(self.ask(shard, ShardMsg::Capture).await?);
        }
        // A refusal by the gate comes after `halt` set this flag.
        inner.check_serving()?;
        Ok(all)
    }

    /// Tells every shard that storage wrote the last capture's history.
    pub fn forget_flushed_history(&self) {
        let idle = self.cell.base.config.passivate_after_snapshots;
        for shard in &self.inner().shards {
            let _ = shard.cast(ShardMsg::ForgetFlushedHistory(idle));
        }
    }

    /// An account's history after `after_sequence`, oldest first, at most
    /// `limit` entries (1 to 1,000), each with the balances right after it.
    /// Sees every acknowledged write.
    pub async fn history(
        &self,
        account_id: AccountId,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<crate::shard::HistoryEntry>, LedgerError> {
        let limit = limit.clamp(1, 1000);
        // Memory first, then storage: an entry that moves between them in
        // between is then seen twice (and deduplicated), never missed.
        let message = |to| ShardMsg::History { account_id, after_sequence, limit, reply: to };
        let history = |answer| match answer {
            Answer::History(entries) => Some(entries),
            _ => None,
        };
        let mut entries = self.ask_owner(account_id, message, history).await?;
        let index = self.inner().shared.history.read().map_err(|_| LedgerError::Unavailable)?.clone();
        if let Some(index) = index {
            let older =
                index.history(account_id, after_sequence, limit).map_err(|_| LedgerError::Unavailable)?;
            entries.extend(older);
            entries.sort_by_key(|e| e.sequence);
            entries.dedup_by_key(|e| e.sequence);
            entries.truncate(limit);
        }
        Ok(entries)
    }

    /// The balances of an account right after its event `sequence`.
    pub async fn balances_at(
        &self,
        account_id: AccountId,
        sequence: u64,
    ) -> Result<Option<crate::account::Balances>, LedgerError> {
        let entries = self.history(account_id, sequence.saturating_sub(1), 1).await?;
        Ok(entries.into_iter().find(|e| e.sequence == sequence).map(|e| e.balances))
    }

    /// The epoch of the commit ids this generation gives (recorded by
    /// snapshots, so a later start takes a larger one).
    pub fn commit_epoch(&self) -> u64 {
        self.inner().commit_ids.epoch()
    }

    /// The transfer registry (storage sets its index and evicts from it).
    pub fn registry(&self) -> Arc<crate::registry::TransferRegistry> {
        self.inner().shared.registry.clone()
    }

    /// Every transfer still in memory (tests and audits: it copies them all).
    pub fn transfers(&self) -> Vec<TransferRecord> {
        self.inner().shared.registry.snapshot()
    }
}
