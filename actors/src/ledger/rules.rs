//! Risk rules (installed on every shard at once) and the decisions they made.

use super::*;

impl Ledger {
    /// Replaces the risk rules. Once this returns, every transfer is checked
    /// against them. Rules are configuration, kept by the caller (the API
    /// stores them with its users); the ledger keeps what they decided.
    pub async fn set_rules(&self, rules: Vec<Rule>) -> Result<(), LedgerError> {
        let _changing = self.cell.base.rules_change.lock().await;
        let rules = Arc::new(RuleSet::new(rules));
        if let Ok(mut slot) = self.cell.base.rules.write() {
            *slot = rules.clone();
        }
        for shard in self.inner().shards.clone() {
            let rules = rules.clone();
            self.ask(&shard, |port| ShardMsg::SetRules(rules, port)).await?;
        }
        Ok(())
    }

    /// The risk rules in force, in check order.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.cell.base.rules.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Risk decisions after `after_id`, of `account_id` when given, oldest
    /// first, at most `limit`. Sees every acknowledged decision.
    pub fn decisions(
        &self,
        account_id: Option<AccountId>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Decision>, LedgerError> {
        self.inner().shared.decisions.list(account_id, after_id, limit).map_err(|_| LedgerError::Unavailable)
    }

    /// Decisions held in memory, for a snapshot.
    pub fn recent_decisions(&self) -> Vec<Decision> {
        self.inner().shared.decisions.recent()
    }

    /// The id the next durable decision gets (a checkpoint reads it at its
    /// marker).
    pub fn next_decision_id(&self) -> u64 {
        self.inner().shared.decisions.next_id()
    }

    /// Storage has every decision up to `up_to_id`.
    pub fn forget_decisions_up_to(&self, up_to_id: u64) {
        self.inner().shared.decisions.forget_up_to(up_to_id);
    }
}
