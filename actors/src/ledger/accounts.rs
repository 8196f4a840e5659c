//! Opening accounts, changing their status, and reading them. Every read
//! waits until what it shows is durable.

use super::*;

impl Ledger {
    /// Opens an account (idempotent for the same fields).
    pub async fn open_account(&self, new: NewAccount) -> Result<Account, LedgerError> {
        self.check_poisoned()?;
        if is_reserved_account_id(new.id)
            && (new.id != settlement_account_id(&new.asset) || new.user_id != UserId::SYSTEM)
        {
            return Err(LedgerError::Rejected(Rejection::ReservedAccountId));
        }
        let account = new.opened_at(self.inner().shared.clock.now_ms());
        self.ask_owner(account.id, |to| ShardMsg::OpenAccount(account, to), answered_account).await
    }

    /// Opens the settlement account of `asset` if it is not open yet.
    pub async fn ensure_settlement_account(&self, asset: Asset) -> Result<Account, LedgerError> {
        self.open_account(NewAccount {
            id: settlement_account_id(&asset),
            user_id: UserId::SYSTEM,
            asset,
            flags: AccountFlags::UNLIMITED,
            overdraft_limit: Amount::ZERO,
        })
        .await
    }

    /// Freezes, unfreezes or closes an account.
    pub async fn set_account_status(
        &self,
        account_id: AccountId,
        status: AccountStatus,
    ) -> Result<Account, LedgerError> {
        self.check_poisoned()?;
        self.ask_owner(account_id, |to| ShardMsg::SetStatus(account_id, status, to), answered_account).await
    }

    /// Reads an account. Sees every acknowledged write.
    pub async fn account(&self, account_id: AccountId) -> Result<Option<AccountView>, LedgerError> {
        let read = |answer| match answer {
            Answer::Read(found) => Some(found),
            _ => None,
        };
        let found = self.ask_owner(account_id, |to| ShardMsg::GetAccount(account_id, to), read).await?;
        Ok(found.map(|(account, reserved)| AccountView { account, reserved }))
    }

    /// How many accounts are in memory (the others are passivated).
    pub async fn resident_accounts(&self) -> Result<usize, LedgerError> {
        let mut total = 0;
        for shard in self.inner().shards.clone() {
            total += self.ask(&shard, ShardMsg::Resident).await?;
        }
        Ok(total)
    }

    /// Every account, resident or passivated (small ledgers and tests).
    pub async fn accounts(&self) -> Result<Vec<Account>, LedgerError> {
        let mut all: BTreeMap<AccountId, Account> = BTreeMap::new();
        let source = self.inner().account_source.read().ok().and_then(|s| s.clone());
        if let Some(source) = source {
            let stored = source.all().map_err(|_| LedgerError::Unavailable)?;
            all.extend(stored.into_iter().map(|account| (account.id, account)));
        }
        // Resident accounts are at least as new as their snapshot.
        for shard in self.inner().shards.clone() {
            let resident = self.ask(&shard, ShardMsg::Dump).await??;
            all.extend(resident.into_iter().map(|account| (account.id, account)));
        }
        Ok(all.into_values().collect())
    }
}

/// The answer to `OpenAccount` and `SetStatus`.
fn answered_account(answer: Answer) -> Option<Result<Account, LedgerError>> {
    match answer {
        Answer::Account(account) => Some(account),
        _ => None,
    }
}
