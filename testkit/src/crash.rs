//! What the crash test's child and parent share: the ledger's settings, the
//! accounts, the risk rules, and a plan of requests per client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use wallet_actors::ids::NodeId;
use wallet_actors::ports::SystemClock;
use wallet_actors::risk::{Rule, RuleAction, RuleId, RuleKind, RuleScope};
use wallet_actors::{
    settlement_account_id, AccountFlags, AccountStatus, Amount, Ledger, LedgerConfig, NewAccount,
    TransferOutcome, TransferRequest,
};
use wallet_cluster::journal::JournalOptions as ClusterJournalOptions;
use wallet_cluster::node::{NodeLedger, NodeOptions};
use wallet_storage::{CheckpointEvery, EmbeddedLedger, EmbeddedOptions, JournalOptions};

use crate::{account, amount, pending, post, posted, tid, usd, user, void};

mod checks;
mod child;

pub use checks::{check_books, check_history, power_loss, Books, PowerLoss};
pub use child::{ack_line, spawn_child, Child};

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

/// Opens the crash-test ledger in `dir`, as the child runs it.
pub async fn open(dir: &Path) -> anyhow::Result<EmbeddedLedger> {
    Ok(EmbeddedLedger::open(dir, options(100)).await?)
}

/// Opens it for checking: holds do not expire meanwhile, so the books read
/// in several steps stay still.
pub async fn open_for_checks(dir: &Path) -> anyhow::Result<EmbeddedLedger> {
    Ok(EmbeddedLedger::open(dir, options(3_600_000)).await?)
}

/// The seed of a crash test's kill delays: `CRASH_SEED` if set (to run the
/// same delays again), otherwise the time.
pub fn seed() -> u64 {
    std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    })
}

/// The next number of a xorshift sequence from `state` (never 0).
pub fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The environment variable that makes the crash-test child run a node's
/// ledger on the JetStream journal at this URL instead of the embedded one.
pub const NATS_URL_VAR: &str = "WALLET_CRASH_NATS_URL";

/// The crash-test node (node 1, every shard) on the JetStream journal at
/// `nats_url`, its snapshots in `dir`, with holds expiring every
/// `expiry_interval_ms`.
pub async fn open_node(dir: &Path, nats_url: &str, expiry_interval_ms: u64) -> anyhow::Result<NodeLedger> {
    open_node_as(NodeId(1), dir, nats_url, expiry_interval_ms).await
}

/// As [`open_node`], as `node`.
pub async fn open_node_as(
    node: NodeId,
    dir: &Path,
    nats_url: &str,
    expiry_interval_ms: u64,
) -> anyhow::Result<NodeLedger> {
    Ok(NodeLedger::open(node_options(node, dir, nats_url, expiry_interval_ms)).await?)
}

/// The options [`open_node_as`] opens `node` with.
pub fn node_options(node: NodeId, dir: &Path, nats_url: &str, expiry_interval_ms: u64) -> NodeOptions {
    let defaults = NodeOptions::new(node, nats_url, dir);
    // Checkpoints as often as the embedded crash node's, so kills land
    // during them and starts replay from snapshots.
    let embedded = options(expiry_interval_ms);
    NodeOptions {
        // Short leases, as a test of a dead node's takeover wants.
        journal: ClusterJournalOptions {
            node_lease_ttl: Duration::from_secs(1),
            shard_lease_ttl: Duration::from_secs(2),
            renew_every: Duration::from_millis(200),
            ack_timeout: Duration::from_millis(700),
            ..defaults.journal.clone()
        },
        ledger: embedded.ledger,
        take_wait: Duration::from_secs(10),
        checkpoint: CheckpointEvery {
            bytes: embedded.checkpoint_bytes,
            check_ms: embedded.checkpoint_check_ms,
        },
        snapshot_cache_bytes: embedded.snapshot_cache_bytes,
        ..defaults
    }
}

fn options(expiry_interval_ms: u64) -> EmbeddedOptions {
    // Small segments and frequent checkpoints, so kills land during
    // checkpoints and recovery starts from snapshots.
    EmbeddedOptions {
        // Every clean account leaves memory at each snapshot, so restarts
        // and reads exercise activation from the snapshot.
        ledger: LedgerConfig {
            shard_count: SHARDS,
            passivate_after_snapshots: Some(0),
            expiry_interval_ms,
            ..LedgerConfig::default()
        },
        journal: JournalOptions { segment_bytes_max: 256 << 10, ..JournalOptions::default() },
        clock: Arc::new(SystemClock),
        checkpoint_bytes: 64 << 10,
        checkpoint_check_ms: 5,
        snapshot_cache_bytes: 16 << 20,
        events: None,
    }
}

/// The risk rules of the crash test (rules are configuration: every run
/// sets them again): transfers above 115 are held for review, with their
/// decisions kept; a velocity window counts every debit, refusing none.
pub fn rules() -> anyhow::Result<Vec<Rule>> {
    Ok(vec![
        Rule {
            id: RuleId::new(1)?,
            name: "review above 115".into(),
            kind: RuleKind::MaxAmount { asset: "USD".into(), amount: Amount::new(115)? },
            scope: RuleScope::Global,
            action: RuleAction::Review,
            timeout_seconds: Some(2),
        },
        Rule {
            id: RuleId::new(2)?,
            name: "velocity".into(),
            kind: RuleKind::VelocityCount { window_seconds: 60, count: u32::MAX },
            scope: RuleScope::Global,
            action: RuleAction::Reject,
            timeout_seconds: None,
        },
    ])
}

/// Opens and funds the accounts; idempotent, so every run starts with it.
pub async fn setup(ledger: &Ledger) -> anyhow::Result<()> {
    ledger.set_rules(rules()?).await?;
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

/// One step of a client.
#[derive(Clone, Debug)]
pub enum Step {
    /// Transfer requests, linked or not.
    Submit(Vec<TransferRequest>, bool),
    /// Freeze or unfreeze an account.
    Status(u128, AccountStatus),
}

/// One client's stream of requests: ids unique across runs and clients
/// (resent requests aside, which reuse an id on purpose).
pub struct Plan {
    state: u64,
    next_id: u128,
    open_holds: Vec<u128>,
    /// Requests sent lately, some sent again (same id, same body).
    sent: Vec<(Vec<TransferRequest>, bool)>,
}

impl Plan {
    /// The plan of `client` in run `run`.
    pub fn new(run: u64, client: u64) -> Self {
        Plan {
            state: (run << 20 | client).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            next_id: (u128::from(run) << 64) | (u128::from(client) << 40) | 1_000_000,
            open_holds: Vec::new(),
            sent: Vec::new(),
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

    /// The next step: transfers of every kind (below), a request sent again
    /// with its id, or an account frozen or unfrozen (a few accounts only,
    /// so most transfers still move money).
    pub fn next_step(&mut self) -> Step {
        match self.random(100) {
            0..=4 if !self.sent.is_empty() => {
                let index = self.random(self.sent.len() as u64) as usize;
                let (requests, linked) = self.sent[index].clone();
                return Step::Submit(requests, linked);
            }
            5 => {
                let id = 1 + u128::from(self.random(3));
                let status = if self.random(2) == 0 { AccountStatus::Frozen } else { AccountStatus::Active };
                return Step::Status(id, status);
            }
            _ => {}
        }
        let (requests, linked) = self.next_batch();
        if self.sent.len() == 64 {
            let forgotten = self.random(64) as usize;
            self.sent.swap_remove(forgotten);
        }
        self.sent.push((requests.clone(), linked));
        Step::Submit(requests, linked)
    }

    /// The next request: single transfers, holds (some expiring in a
    /// second), posts, voids, linked chains, transfers large enough to be
    /// held for review, and money passed on among accounts kept near zero.
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
            let timeout = if self.random(2) == 0 { Some(1) } else { None };
            return (vec![pending(id, debit, credit, 1 + u128::from(self.random(50)), timeout)], false);
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
        // Up to 130: above 115 the review rule holds it.
        (vec![posted(id, debit, credit, 1 + u128::from(self.random(130)))], false)
    }

    /// Notes an applied transfer (holds can be posted or voided later).
    pub fn remember(&mut self, outcome: &TransferOutcome) {
        let transfer = &outcome.record.transfer;
        if transfer.kind == wallet_actors::transfer::TransferKind::Pending && !outcome.replayed {
            self.open_holds.push(transfer.id.get());
        }
    }
}
