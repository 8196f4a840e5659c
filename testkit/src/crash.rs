//! What the crash test's child and parent share: the ledger's settings, the
//! accounts, and a plan of transfers per client.

use std::path::Path;
use std::sync::Arc;

use wallet_actors::record::SystemClock;
use wallet_actors::{
    settlement_account_id, AccountFlags, Amount, Ledger, LedgerConfig, NewAccount, TransferOutcome,
    TransferRequest,
};
use wallet_storage::{EmbeddedLedger, EmbeddedOptions, JournalOptions};

use crate::{account, amount, pending, post, posted, tid, usd, user, void};

/// Shards of the crash-test ledger: few, so both paths are common.
pub const SHARDS: u16 = 8;
/// Wallet accounts.
pub const ACCOUNTS: u128 = 40;
/// Concurrent clients in the child.
pub const CLIENTS: u64 = 48;
/// What each account is funded with.
pub const FUNDING: u128 = 10_000;
/// Accounts kept near zero: `ACCOUNTS + 1 ..= ACCOUNTS + TIGHT`. Money moves
/// between them in amounts close to their balances, so a transfer often
/// passes only thanks to a credit just received, whose record may not be
/// durable yet: linked batches across shards that spend such credits are
/// what a shard answering `Prepare` before its outbox was appended got
/// wrong.
pub const TIGHT: u128 = 8;
/// What each tight account is funded with.
pub const TIGHT_FUNDING: u128 = 60;

/// Opens the crash-test ledger in `dir`.
pub async fn open(dir: &Path) -> anyhow::Result<EmbeddedLedger> {
    // Small segments and frequent checkpoints, so kills land during
    // checkpoints and recovery starts from snapshots.
    let options = EmbeddedOptions {
        // Every clean account leaves memory at each snapshot, so restarts
        // and reads exercise activation from the snapshot.
        ledger: LedgerConfig {
            shard_count: SHARDS,
            passivate_after_snapshots: Some(0),
            ..LedgerConfig::default()
        },
        journal: JournalOptions { segment_bytes_max: 256 << 10, ..JournalOptions::default() },
        clock: Arc::new(SystemClock),
        checkpoint_bytes: 128 << 10,
        checkpoint_check_ms: 20,
        snapshot_cache_bytes: 16 << 20,
    };
    Ok(EmbeddedLedger::open(dir, options).await?)
}

/// Opens and funds the accounts; idempotent, so every run starts with it.
pub async fn setup(ledger: &Ledger) -> anyhow::Result<()> {
    ledger.ensure_settlement_account(usd()).await?;
    let settlement = settlement_account_id(&usd());
    for id in 1..=ACCOUNTS + TIGHT {
        let new = NewAccount {
            id: account(id),
            user_id: user(2),
            asset: usd(),
            flags: AccountFlags::WALLET,
            overdraft_limit: Amount::ZERO,
        };
        ledger.open_account(new).await?;
        let fund = TransferRequest::Transfer {
            id: tid(id),
            debit_account_id: settlement,
            credit_account_id: account(id),
            amount: amount(if id > ACCOUNTS { TIGHT_FUNDING } else { FUNDING }),
            pending: None,
            reference: None,
            metadata: None,
        };
        if let Err(rejection) = ledger.submit_one(fund).await? {
            anyhow::bail!("funding {id}: {rejection}");
        }
    }
    Ok(())
}

/// One client's stream of transfers: ids unique across runs and clients.
pub struct Plan {
    state: u64,
    next_id: u128,
    open_holds: Vec<u128>,
}

impl Plan {
    /// The plan of `client` in run `run`.
    pub fn new(run: u64, client: u64) -> Self {
        Plan {
            state: (run << 20 | client).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            next_id: (u128::from(run) << 64) | (u128::from(client) << 40) | 1_000_000,
            open_holds: Vec::new(),
        }
    }

    fn random(&mut self, below: u64) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % below
    }

    fn id(&mut self) -> u128 {
        self.next_id += 1;
        self.next_id
    }

    fn pair(&mut self) -> (u128, u128) {
        let debit = 1 + u128::from(self.random(ACCOUNTS as u64));
        let mut credit = 1 + u128::from(self.random(ACCOUNTS as u64 - 1));
        if credit >= debit {
            credit += 1;
        }
        (debit, credit)
    }

    /// A tight account other than those in `not`.
    fn tight_other_than(&mut self, not: &[u128]) -> u128 {
        loop {
            let id = ACCOUNTS + 1 + u128::from(self.random(TIGHT as u64));
            if !not.contains(&id) {
                return id;
            }
        }
    }

    /// Money passed on among the tight accounts: a single transfer, or a
    /// linked batch that spends what its first transfer brings in.
    fn tight_batch(&mut self) -> (Vec<TransferRequest>, bool) {
        let a = self.tight_other_than(&[]);
        let b = self.tight_other_than(&[a]);
        let value = 10 + u128::from(self.random(50));
        if self.random(3) == 0 {
            return (vec![posted(self.id(), a, b, value)], false);
        }
        let c = self.tight_other_than(&[a, b]);
        (vec![posted(self.id(), a, b, value), posted(self.id(), b, c, value)], true)
    }

    /// The next request: single transfers, holds, posts, voids, linked
    /// chains, and money passed on among accounts kept near zero.
    pub fn next_batch(&mut self) -> (Vec<TransferRequest>, bool) {
        if self.random(10) < 4 {
            return self.tight_batch();
        }
        let choice = self.random(10);
        if choice < 1 && !self.open_holds.is_empty() {
            let hold = self.open_holds.swap_remove(0);
            let id = self.id();
            let request = if self.random(2) == 0 { post(id, hold, None) } else { void(id, hold) };
            return (vec![request], false);
        }
        if choice < 3 {
            let (debit, credit) = self.pair();
            let id = self.id();
            return (vec![pending(id, debit, credit, 1 + u128::from(self.random(50)), None)], false);
        }
        if choice < 5 {
            let (a, b) = self.pair();
            let (_, c) = self.pair();
            let c = if c == b { a } else { c };
            let (first, second) = (self.id(), self.id());
            let value = 1 + u128::from(self.random(80));
            return (vec![posted(first, a, b, value), posted(second, b, c, value)], true);
        }
        let (debit, credit) = self.pair();
        let id = self.id();
        (vec![posted(id, debit, credit, 1 + u128::from(self.random(120)))], false)
    }

    /// Notes an applied transfer (holds can be posted or voided later).
    pub fn remember(&mut self, outcome: &TransferOutcome) {
        let transfer = &outcome.record.transfer;
        if transfer.kind == wallet_actors::transfer::TransferKind::Pending && !outcome.replayed {
            self.open_holds.push(transfer.id.get());
        }
    }
}

/// The line printed for an acknowledged request: enough to find it again.
pub fn ack_line(request: &TransferRequest) -> anyhow::Result<String> {
    Ok(format!("ACK {}", serde_json::to_string(request)?))
}
