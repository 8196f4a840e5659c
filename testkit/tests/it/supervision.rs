//! A shard that crashes is rebuilt from durable state while the node keeps
//! running: under concurrent load (cross-shard transfers, linked batches,
//! holds), shards are panicked one after another; after each, the ledger
//! serves again without a restart, every acknowledged transfer is there
//! once, and the books balance, live and after reopening the files.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wallet_actors::{ShardId, TransferRequest};
use wallet_testkit::crash::{self, Plan};

use wallet_testkit::crash::check_books;

type Acknowledged = Arc<Mutex<BTreeMap<u128, TransferRequest>>>;
type Unknown = Arc<Mutex<Vec<(Vec<TransferRequest>, bool)>>>;

fn note_results(
    acknowledged: &Acknowledged,
    plan: Option<&mut Plan>,
    requests: &[TransferRequest],
    results: Vec<wallet_actors::TransferResult>,
) {
    let mut plan = plan;
    let mut acknowledged = acknowledged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (request, result) in requests.iter().zip(results) {
        if let Ok(outcome) = result {
            if let Some(plan) = plan.as_deref_mut() {
                plan.remember(&outcome);
            }
            acknowledged.insert(request.id().get(), request.clone());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_shards_are_rebuilt_from_durable_state_while_the_node_runs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = crash::open(dir.path()).await?;
    crash::setup(&node.ledger).await?;
    let acknowledged: Acknowledged = Default::default();
    let unknown: Unknown = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..16 {
        let (ledger, acknowledged, unknown, stop) =
            (node.ledger.clone(), acknowledged.clone(), unknown.clone(), stop.clone());
        clients.spawn(async move {
            let mut plan = Plan::new(1, client);
            while !stop.load(Ordering::Relaxed) {
                let (requests, linked) = plan.next_batch();
                match ledger.submit(requests.clone(), linked).await {
                    Ok(results) => note_results(&acknowledged, Some(&mut plan), &requests, results),
                    Err(_) => {
                        // Outcome unknown (the shard died under it): retried below.
                        unknown
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push((requests, linked));
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        });
    }

    for (crashes, shard) in [0u16, 3, 1, 2, 0].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let before = acknowledged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
        node.ledger.crash_shard(ShardId(shard));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while node.ledger.rebuilds() <= crashes as u64 || !node.ledger.is_serving() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "shard {shard} was not rebuilt");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // It serves again: transfers are acknowledged after the rebuild.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while acknowledged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len() <= before + 50 {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no transfers after rebuilding {shard}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = clients.join_next().await {
        done?;
    }
    anyhow::ensure!(node.ledger.rebuilds() == 5, "rebuilt {} times", node.ledger.rebuilds());

    // Requests whose outcome was unknown are retried with the same ids:
    // each applies at most once (a replay if it had been applied).
    let unknown = std::mem::take(&mut *unknown.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    for (requests, linked) in unknown {
        let results = node.ledger.submit(requests.clone(), linked).await?;
        note_results(&acknowledged, None, &requests, results);
    }
    let acknowledged = acknowledged.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    anyhow::ensure!(acknowledged.len() > 1_000, "only {} transfers acknowledged", acknowledged.len());
    check_books(&node, &acknowledged).await?;

    rules_survive_a_rebuild(&node).await?;

    // What the rebuilt shards hold is what the files hold.
    let live = node.ledger.accounts().await?;
    node.stop_without_checkpoint().await;
    // Reopened with holds kept from expiring, so the books stay still while read.
    let node = crash::open_for_checks(dir.path()).await?;
    let reopened = node.ledger.accounts().await?;
    same_but_expiries(&live, &reopened)?;
    check_books(&node, &acknowledged).await?;
    node.shutdown().await;
    Ok(())
}

/// The accounts a reopened node holds against those its live self showed:
/// equal, except where the live node's expiry task expired a hold between
/// the read and the stop (that, and only that, may differ).
fn same_but_expiries(
    live: &[wallet_actors::Account],
    reopened: &[wallet_actors::Account],
) -> anyhow::Result<()> {
    anyhow::ensure!(
        reopened.len() == live.len(),
        "{} accounts reopened, {} live",
        reopened.len(),
        live.len()
    );
    for (live, reopened) in live.iter().zip(reopened) {
        let (l, r) = (live.balances, reopened.balances);
        let expired_since = live.id == reopened.id
            && l.debits_posted == r.debits_posted
            && l.credits_posted == r.credits_posted
            && r.debits_pending <= l.debits_pending
            && r.credits_pending <= l.credits_pending
            && reopened.sequence > live.sequence
            && reopened.debit_window == live.debit_window;
        anyhow::ensure!(
            live == reopened || expired_since,
            "reopened differs from live: {live:#?} against {reopened:#?}"
        );
    }
    Ok(())
}

/// Rules in force before the crashes are in force after the rebuilds, also
/// one set while a shard is being rebuilt (the sixth rebuild).
async fn rules_survive_a_rebuild(node: &wallet_storage::EmbeddedLedger) -> anyhow::Result<()> {
    let limit = wallet_actors::risk::Rule {
        id: wallet_actors::risk::RuleId::new(1).map_err(|_| anyhow::anyhow!("rule id"))?,
        name: "at most 500".into(),
        kind: wallet_actors::risk::RuleKind::MaxAmount {
            asset: "USD".into(),
            amount: wallet_testkit::amount(500),
        },
        scope: wallet_actors::risk::RuleScope::Global,
        action: wallet_actors::risk::RuleAction::Reject,
        timeout_seconds: None,
    };
    node.ledger.crash_shard(ShardId(1));
    let mut rules_set = false;
    for _ in 0..600 {
        if node.ledger.set_rules(vec![limit.clone()]).await.is_ok() {
            rules_set = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(rules_set, "the rules could not be set");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while node.ledger.rebuilds() < 6 || !node.ledger.is_serving() {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "shard 1 was not rebuilt");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // From the richest wallet, so that only the rule can refuse it.
    let accounts = node.ledger.accounts().await?;
    let richest = accounts
        .iter()
        .filter(|a| !wallet_actors::is_reserved_account_id(a.id))
        .max_by_key(|a| a.balances.posted())
        .ok_or_else(|| anyhow::anyhow!("no accounts"))?;
    anyhow::ensure!(richest.balances.posted() > 501, "{richest:?}");
    let other = accounts
        .iter()
        .find(|a| a.id != richest.id && !wallet_actors::is_reserved_account_id(a.id))
        .ok_or_else(|| anyhow::anyhow!("one account"))?;
    let over = TransferRequest::Transfer {
        id: wallet_testkit::tid(9_000_000),
        debit_account_id: richest.id,
        credit_account_id: other.id,
        amount: wallet_testkit::amount(501),
        pending: None,
        reference: None,
        metadata: None,
    };
    let refused = node.ledger.submit_one(over).await?;
    anyhow::ensure!(
        matches!(refused, Err(wallet_actors::Rejection::RiskMaxAmountExceeded(_))),
        "{refused:?}"
    );
    Ok(())
}
