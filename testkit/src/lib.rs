//! # wallet-testkit: what the test suites share
//!
//! - [`crash`]: the crash test's ledger settings and transfer plans.
//! - [`model`]: a plain, sequential reference model of the ledger's rules,
//!   written apart from the engine, that property tests compare against.
//! - [`model_child`]: the model test's engine in a child process it can kill.
//! - [`nats`]: a real nats-server (the pinned one, `nats.conf`) on a free port.
//! - [`nats_cluster`]: real nats-servers routed into one NATS cluster.
//! - [`postgres`]: a throwaway PostgreSQL cluster on a free port.
//! - helpers here: ids, assets and requests in one line each, and opening a
//!   ledger in a temporary directory.

pub mod crash;
pub mod model;
pub mod model_child;
pub mod nats;
pub mod nats_cluster;
pub mod postgres;

use std::path::Path;
use std::sync::Arc;

use wallet_actors::ports::Clock;
use wallet_actors::{
    AccountFlags, AccountId, Amount, Asset, LedgerConfig, NewAccount, PendingOptions, TransferId,
    TransferRequest, UserId,
};
use wallet_storage::{EmbeddedLedger, EmbeddedOptions, JournalOptions};

/// A loopback port nobody listens on now (a server about to start takes it).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// USD with 2 decimals.
pub fn usd() -> Asset {
    Asset::new("USD", 2).unwrap_or_else(|_| unreachable!())
}

/// EUR with 2 decimals.
pub fn eur() -> Asset {
    Asset::new("EUR", 2).unwrap_or_else(|_| unreachable!())
}

/// Account id `n` (n > 0).
pub fn account(n: u128) -> AccountId {
    AccountId::new(n).unwrap_or_else(|_| panic!("account id {n} must be non-zero"))
}

/// Transfer id `n` (n > 0).
pub fn tid(n: u128) -> TransferId {
    TransferId::new(n).unwrap_or_else(|_| panic!("transfer id {n} must be non-zero"))
}

/// User id `n` (n > 1; 1 is the system user).
pub fn user(n: u128) -> UserId {
    UserId::new(n).unwrap_or_else(|_| panic!("user id {n} must be non-zero"))
}

/// Amount `n` minor units.
pub fn amount(n: u128) -> Amount {
    Amount::new(n).unwrap_or_else(|_| panic!("amount {n} out of range"))
}

/// A wallet account of user 2 in `asset`.
pub fn wallet(id: u128, asset: Asset) -> NewAccount {
    NewAccount {
        id: account(id),
        user_id: user(2),
        asset,
        flags: AccountFlags::WALLET,
        overdraft_limit: Amount::ZERO,
    }
}

/// An account without limits (like a settlement account).
pub fn unlimited(id: u128, asset: Asset) -> NewAccount {
    NewAccount {
        id: account(id),
        user_id: user(2),
        asset,
        flags: AccountFlags::UNLIMITED,
        overdraft_limit: Amount::ZERO,
    }
}

/// A posted transfer.
pub fn posted(id: u128, debit: u128, credit: u128, value: u128) -> TransferRequest {
    TransferRequest::Transfer {
        id: tid(id),
        debit_account_id: account(debit),
        credit_account_id: account(credit),
        amount: amount(value),
        pending: None,
        reference: None,
        metadata: None,
    }
}

/// A pending transfer with an optional timeout.
pub fn pending(
    id: u128,
    debit: u128,
    credit: u128,
    value: u128,
    timeout_seconds: Option<u32>,
) -> TransferRequest {
    TransferRequest::Transfer {
        id: tid(id),
        debit_account_id: account(debit),
        credit_account_id: account(credit),
        amount: amount(value),
        pending: Some(PendingOptions { timeout_seconds }),
        reference: None,
        metadata: None,
    }
}

/// Post all of a pending transfer, or `value` of it.
pub fn post(id: u128, pending_id: u128, value: Option<u128>) -> TransferRequest {
    TransferRequest::PostPending { id: tid(id), pending_id: tid(pending_id), amount: value.map(amount) }
}

/// Void a pending transfer.
pub fn void(id: u128, pending_id: u128) -> TransferRequest {
    TransferRequest::VoidPending { id: tid(id), pending_id: tid(pending_id) }
}

/// Options for a test ledger: few shards so cross-shard and same-shard
/// transfers both happen with few accounts.
pub fn test_options(shard_count: u16, clock: Arc<dyn Clock>) -> EmbeddedOptions {
    EmbeddedOptions {
        // Every clean account leaves memory at each snapshot: tests read
        // and move passivated accounts all the time.
        ledger: LedgerConfig {
            shard_count,
            expiry_interval_ms: 20,
            passivate_after_snapshots: Some(0),
            ..LedgerConfig::default()
        },
        journal: JournalOptions::default(),
        clock,
        ..EmbeddedOptions::default()
    }
}

/// Opens the ledger stored in `dir`.
pub async fn open(dir: &Path, options: EmbeddedOptions) -> anyhow::Result<EmbeddedLedger> {
    Ok(EmbeddedLedger::open(dir, options).await?)
}

/// Polls `check` every 2 ms until it holds, failing (naming `what`) once
/// `within` has passed: no test waits for a condition without a deadline.
pub async fn eventually<F, Fut>(what: &str, within: std::time::Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !check().await? {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    Ok(())
}
