//! Risk rules on a real data directory: each kind at its limit, window
//! edges, scopes, review holds, decisions, concurrency and restarts.

use std::sync::Arc;

use wallet_actors::ports::{Clock, ManualClock};
use wallet_actors::risk::{Rule, RuleAction, RuleId, RuleKind, RuleKindCode, RuleScope};
use wallet_actors::{Ledger, NewAccount, Rejection, TransferStatus};
use wallet_testkit::*;

const START_MS: u64 = 1_700_000_000_000;

fn rule(id: u128, kind: RuleKind, scope: RuleScope, action: RuleAction) -> Rule {
    Rule {
        id: RuleId::new(id).unwrap_or_else(|_| unreachable!()),
        name: format!("rule {id}"),
        kind,
        scope,
        action,
        timeout_seconds: None,
    }
}

fn rule_id(n: u128) -> RuleId {
    RuleId::new(n).unwrap_or_else(|_| unreachable!())
}

/// A ledger with a funded source (account 1, 1,000,000) and wallets 2..=9.
async fn funded(
    dir: &std::path::Path,
    clock: Arc<ManualClock>,
) -> anyhow::Result<(wallet_storage::EmbeddedLedger, Ledger)> {
    let node = open(dir, test_options(4, clock)).await?;
    let ledger = node.ledger.clone();
    let mut settlement = unlimited(100, usd());
    settlement.user_id = wallet_actors::UserId::SYSTEM;
    ledger.open_account(settlement).await?;
    for id in 1..=9 {
        ledger.open_account(wallet(id, usd())).await?;
    }
    ledger.submit_one(posted(1_000_000, 100, 1, 1_000_000)).await??;
    Ok((node, ledger))
}

fn code(result: &wallet_actors::TransferResult) -> &'static str {
    match result {
        Ok(outcome) if outcome.record.transfer.review.is_some() => "review",
        Ok(_) => "ok",
        Err(rejection) => rejection.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_just_inside_and_just_outside() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let (node, ledger) = funded(dir.path(), clock.clone()).await?;
    let global = RuleScope::Global;
    ledger
        .set_rules(vec![
            rule(
                1,
                RuleKind::MaxAmount { asset: "USD".into(), amount: amount(500) },
                global,
                RuleAction::Reject,
            ),
            rule(2, RuleKind::BlockedAccount { account_ids: vec![account(9)] }, global, RuleAction::Reject),
            // Another asset's limit does not apply to USD accounts.
            rule(
                3,
                RuleKind::MaxAmount { asset: "EUR".into(), amount: amount(1) },
                global,
                RuleAction::Reject,
            ),
        ])
        .await?;
    let results = ledger
        .submit(
            vec![posted(1, 1, 2, 500), posted(2, 1, 2, 501), posted(3, 1, 9, 1), posted(4, 100, 9, 5_000)],
            false,
        )
        .await?;
    let codes: Vec<_> = results.iter().map(code).collect();
    // The settlement account (deposits) is never checked.
    assert_eq!(codes, ["ok", "risk_max_amount_exceeded", "risk_blocked_account", "ok"]);
    assert_eq!(results[1].as_ref().err().and_then(|r| r.risk_hit()).map(|h| h.rule_id), Some(rule_id(1)));
    // A blocked account cannot send either.
    assert_eq!(code(&ledger.submit_one(posted(5, 9, 2, 1)).await?), "risk_blocked_account");

    // New accounts: account 8 opened at START_MS; a limit for its first hour.
    let new_limit = RuleKind::NewAccountLimit { seconds: 3_600, asset: "USD".into(), amount: amount(100) };
    ledger.set_rules(vec![rule(4, new_limit, global, RuleAction::Reject)]).await?;
    ledger.submit_one(posted(6, 100, 8, 1_000)).await??;
    assert_eq!(code(&ledger.submit_one(posted(7, 8, 2, 100)).await?), "ok");
    assert_eq!(code(&ledger.submit_one(posted(8, 8, 2, 101)).await?), "risk_new_account_limit");
    clock.advance_ms(3_599_999);
    assert_eq!(code(&ledger.submit_one(posted(9, 8, 2, 101)).await?), "risk_new_account_limit");
    clock.advance_ms(1);
    assert_eq!(code(&ledger.submit_one(posted(10, 8, 2, 101)).await?), "ok");

    // Velocity: at most 3 debits and 300 within 60 s.
    ledger
        .set_rules(vec![
            rule(5, RuleKind::VelocityCount { window_seconds: 60, count: 3 }, global, RuleAction::Reject),
            rule(
                6,
                RuleKind::VelocityAmount { asset: "USD".into(), window_seconds: 60, amount: amount(300) },
                global,
                RuleAction::Reject,
            ),
        ])
        .await?;
    let window_start = clock.now_ms();
    assert_eq!(window_start % 1_000, 0, "the edges below assume a whole second");
    // A transfer that fails anyway fails for its own reason.
    assert_eq!(code(&ledger.submit_one(posted(20, 3, 2, 1)).await?), "insufficient_funds");
    ledger.submit_one(posted(21, 100, 3, 10_000)).await??;
    assert_eq!(code(&ledger.submit_one(posted(22, 3, 2, 100)).await?), "ok");
    assert_eq!(code(&ledger.submit_one(posted(23, 3, 2, 199)).await?), "ok");
    assert_eq!(code(&ledger.submit_one(posted(24, 3, 2, 2)).await?), "risk_velocity_exceeded"); // 301
    assert_eq!(code(&ledger.submit_one(posted(25, 3, 2, 1)).await?), "ok"); // 300, third debit
    assert_eq!(code(&ledger.submit_one(posted(26, 3, 2, 1)).await?), "risk_velocity_exceeded"); // fourth
                                                                                                // Refused debits do not count; a window later, all is forgotten.
    clock.set_ms(window_start + 60_999);
    assert_eq!(code(&ledger.submit_one(posted(27, 3, 2, 1)).await?), "risk_velocity_exceeded");
    clock.set_ms(window_start + 61_000);
    assert_eq!(code(&ledger.submit_one(posted(28, 3, 2, 300)).await?), "ok");
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_match_through_the_debited_account_and_its_owner() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let (node, ledger) = funded(dir.path(), clock).await?;
    let mut other = wallet(20, usd());
    other.user_id = user(3);
    ledger.open_account(other).await?;
    let funding = vec![posted(1, 1, 2, 1_000), posted(2, 1, 3, 1_000), posted(3, 1, 20, 1_000)];
    ledger.submit(funding, false).await?;
    let cap = |scope| {
        rule(1, RuleKind::MaxAmount { asset: "USD".into(), amount: amount(10) }, scope, RuleAction::Reject)
    };
    let refused = "risk_max_amount_exceeded";
    for (round, (scope, expected)) in [
        (RuleScope::Global, [refused, refused, refused]),
        (RuleScope::User(user(2)), [refused, refused, "ok"]),
        (RuleScope::Account(account(2)), [refused, "ok", "ok"]),
    ]
    .into_iter()
    .enumerate()
    {
        ledger.set_rules(vec![cap(scope)]).await?;
        let base = 100 * (round as u128 + 1);
        let requests = vec![posted(base, 2, 3, 11), posted(base + 1, 3, 2, 11), posted(base + 2, 20, 2, 11)];
        let results = ledger.submit(requests, false).await?;
        let codes: Vec<_> = results.iter().map(code).collect();
        assert_eq!(codes, expected, "{scope:?}");
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_rules_make_holds_and_every_decision_is_kept() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let (node, ledger) = funded(dir.path(), clock.clone()).await?;
    let big = RuleKind::MaxAmount { asset: "USD".into(), amount: amount(1_000) };
    let huge = RuleKind::MaxAmount { asset: "USD".into(), amount: amount(100_000) };
    let mut review = rule(1, big, RuleScope::Global, RuleAction::Review);
    review.timeout_seconds = Some(60);
    ledger.set_rules(vec![review, rule(2, huge, RuleScope::Global, RuleAction::Reject)]).await?;

    // Above 1,000: held for review; above 100,000: refused (reject first).
    let held = ledger.submit_one(posted(1, 1, 2, 5_000)).await??;
    assert_eq!(held.record.status, TransferStatus::Pending);
    assert_eq!(held.record.transfer.review, Some(rule_id(1)));
    assert_eq!(code(&ledger.submit_one(posted(2, 1, 3, 200_000)).await?), "risk_max_amount_exceeded");
    let view = ledger.account(account(1)).await?.map(|v| v.account.balances);
    assert_eq!(view.map(|b| (b.debits_posted, b.debits_pending)), Some((0, 5_000)));
    // A replay gets the hold back; posting it moves the money.
    assert!(ledger.submit_one(posted(1, 1, 2, 5_000)).await??.replayed);
    ledger.submit_one(post(3, 1, None)).await??;
    let balances = ledger.account(account(2)).await?.map(|v| v.account.balances.posted());
    assert_eq!(balances, Some(5_000));
    // Another review hold expires after the rule's timeout.
    ledger.submit_one(posted(4, 1, 2, 2_000)).await??;
    clock.advance_ms(61_000);
    let expired = || async { Ok(ledger.transfer(tid(4)).map(|r| r.status) != Some(TransferStatus::Pending)) };
    eventually("the review hold's expiry", std::time::Duration::from_secs(10), expired).await?;
    assert_eq!(ledger.transfer(tid(4)).map(|r| r.status), Some(TransferStatus::Expired));

    let decisions = ledger.decisions(None, 0, 100)?;
    let summary: Vec<_> =
        decisions.iter().map(|d| (d.id, d.transfer_id.get(), d.kind, d.outcome, d.rule_id)).collect();
    assert_eq!(
        summary,
        [
            (1, 1, RuleKindCode::MaxAmount, RuleAction::Review, rule_id(1)),
            (2, 2, RuleKindCode::MaxAmount, RuleAction::Reject, rule_id(2)),
            (3, 4, RuleKindCode::MaxAmount, RuleAction::Review, rule_id(1)),
        ]
    );
    assert_eq!(ledger.decisions(Some(account(1)), 1, 1)?.first().map(|d| d.id), Some(2));
    assert!(ledger.decisions(Some(account(2)), 0, 10)?.is_empty());

    // Decisions survive a checkpoint and a restart without one.
    node.checkpoint().await?;
    assert_eq!(code(&ledger.submit_one(posted(5, 1, 2, 300_000)).await?), "risk_max_amount_exceeded");
    node.stop_without_checkpoint().await;
    let node = open(dir.path(), test_options(4, clock)).await?;
    let after: Vec<_> =
        node.ledger.decisions(None, 0, 100)?.iter().map(|d| (d.id, d.transfer_id.get())).collect();
    assert_eq!(after, [(1, 1), (2, 2), (3, 4), (4, 5)]);
    node.shutdown().await;
    Ok(())
}

/// Every review hold has its decision (they are in one record), and every
/// decision keeps its id across checkpoints and restarts: live, ids follow
/// the journal as records become durable; replay numbers the same records
/// in the same order from the count the checkpoint kept at its marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_holds_and_their_decisions_are_durable_together_and_keep_their_ids() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let (node, ledger) = funded(dir.path(), clock.clone()).await?;
    let big = RuleKind::MaxAmount { asset: "USD".into(), amount: amount(1_000) };
    let huge = RuleKind::MaxAmount { asset: "USD".into(), amount: amount(100_000) };
    let review = rule(1, big, RuleScope::Global, RuleAction::Review);
    ledger.set_rules(vec![review, rule(2, huge, RuleScope::Global, RuleAction::Reject)]).await?;

    // Review holds and vetoes from account 1 to every wallet (both paths:
    // 4 shards), concurrently, with a checkpoint in the middle.
    let mut next_id = 1u128;
    for round in 0..2 {
        let mut tasks = tokio::task::JoinSet::new();
        for credit in 2..=9u128 {
            for value in [5_000u128, 200_000] {
                let (ledger, id) = (ledger.clone(), next_id);
                next_id += 1;
                tasks.spawn(async move { ledger.submit_one(posted(id, 1, credit, value)).await });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done??.ok();
        }
        if round == 0 {
            node.checkpoint().await?;
        }
    }
    let before = ledger.decisions(None, 0, 1_000)?;
    assert_eq!(before.len(), 32);
    assert_eq!(
        before.iter().map(|d| d.id).collect::<Vec<_>>(),
        (1..=32).collect::<Vec<u64>>(),
        "ids are gap-free"
    );
    let holds: Vec<_> = node.all_transfers()?.into_iter().filter(|r| r.transfer.review.is_some()).collect();
    assert_eq!(holds.len(), 16);
    for hold in &holds {
        let found: Vec<_> = before.iter().filter(|d| d.transfer_id == hold.transfer.id).collect();
        assert!(
            matches!(found.as_slice(), [d] if d.outcome == RuleAction::Review && d.rule_id == rule_id(1)),
            "hold {:?}: decisions {found:?}",
            hold.transfer.id
        );
    }

    // A crash (no final checkpoint): the same decisions, with the same ids,
    // and numbering goes on from there.
    node.stop_without_checkpoint().await;
    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    assert_eq!(node.ledger.decisions(None, 0, 1_000)?, before);
    // Rules are configuration, kept by the API; a restart installs them again.
    node.ledger.set_rules(ledger.rules().rules().to_vec()).await?;
    let vetoed = node.ledger.submit_one(posted(1_000, 1, 2, 300_000)).await?;
    assert_eq!(code(&vetoed), "risk_max_amount_exceeded");
    let after = node.ledger.decisions(None, 0, 1_000)?;
    assert_eq!(after.last().map(|d| (d.id, d.transfer_id.get())), Some((33, 1_000)));
    // Another crash, then a clean stop and start: still the same.
    node.stop_without_checkpoint().await;
    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    assert_eq!(node.ledger.decisions(None, 0, 1_000)?, after);
    node.shutdown().await;
    let node = open(dir.path(), test_options(4, clock)).await?;
    assert_eq!(node.ledger.decisions(None, 0, 1_000)?, after);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_debits_meet_the_window_exactly_and_a_crash_forgets_none() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let (node, ledger) = funded(dir.path(), clock.clone()).await?;
    let ten = rule(
        1,
        RuleKind::VelocityCount { window_seconds: 60, count: 10 },
        RuleScope::Global,
        RuleAction::Reject,
    );
    ledger.set_rules(vec![ten.clone()]).await?;
    // 64 at once from account 1 to accounts in every shard, some in its own.
    let tasks: Vec<_> = (0..64u128)
        .map(|i| {
            let ledger = ledger.clone();
            tokio::spawn(async move { ledger.submit_one(posted(i + 1, 1, 2 + i % 8, 1)).await })
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    for task in tasks {
        *codes.entry(code(&task.await??)).or_insert(0) += 1;
    }
    assert_eq!(codes, [("ok", 10), ("risk_velocity_exceeded", 54)].into_iter().collect());
    // A linked batch counts its own earlier transfers.
    ledger.submit_one(posted(99, 100, 2, 100)).await??;
    ledger
        .set_rules(vec![rule(
            2,
            RuleKind::VelocityCount { window_seconds: 60, count: 2 },
            RuleScope::Global,
            RuleAction::Reject,
        )])
        .await?;
    let linked =
        ledger.submit(vec![posted(100, 2, 3, 1), posted(101, 2, 4, 1), posted(102, 2, 5, 1)], true).await?;
    assert_eq!(linked[2], Err(Rejection::RiskVelocityExceeded(rule_hit(2))));

    // kill -9 as far as storage can tell: the window is rebuilt from the journal.
    node.stop_without_checkpoint().await;
    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    node.ledger.set_rules(vec![ten.clone()]).await?;
    assert_eq!(code(&node.ledger.submit_one(posted(200, 1, 2, 1)).await?), "risk_velocity_exceeded");
    // And from a snapshot.
    node.shutdown().await;
    let node = open(dir.path(), test_options(4, clock.clone())).await?;
    node.ledger.set_rules(vec![ten]).await?;
    assert_eq!(code(&node.ledger.submit_one(posted(201, 1, 2, 1)).await?), "risk_velocity_exceeded");
    clock.advance_ms(61_000);
    assert_eq!(code(&node.ledger.submit_one(posted(202, 1, 2, 1)).await?), "ok");
    node.shutdown().await;
    Ok(())
}

/// A rule scoped to a user counts the debits of all of the user's accounts
/// on the user's home shard (where the API places them): exactly under
/// concurrency, with debits in flight to other shards, and across a
/// checkpoint and a crash. An account elsewhere counts on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_scoped_window_counts_across_the_users_home_accounts() -> anyhow::Result<()> {
    const SHARDS: u16 = 4;
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::new(START_MS));
    let (node, ledger) = funded(dir.path(), clock.clone()).await?;
    let owner = user(77);
    let [home_a, home_b] = home_ids(owner, SHARDS);
    let away = (1_000u128..)
        .find(|&id| account(id).shard(SHARDS) != owner.home_shard(SHARDS))
        .ok_or_else(|| anyhow::anyhow!("no id away from home"))?;
    open_funded(&ledger, owner, &[home_a, home_b, away]).await?;
    let ten = ten_a_minute_for(owner);
    ledger.set_rules(vec![ten.clone()]).await?;
    // 64 at once, from both home accounts to wallets in every shard.
    let tasks: Vec<_> = (0..64u128)
        .map(|i| {
            let ledger = ledger.clone();
            let from = if i % 2 == 0 { home_a } else { home_b };
            tokio::spawn(async move { ledger.submit_one(posted(100 + i, from, 2 + i % 8, 1)).await })
        })
        .collect();
    let mut codes = std::collections::BTreeMap::new();
    for task in tasks {
        *codes.entry(code(&task.await??)).or_insert(0) += 1;
    }
    assert_eq!(codes, [("ok", 10), ("risk_velocity_exceeded", 54)].into_iter().collect());
    assert_eq!(code(&ledger.submit_one(posted(200, away, 2, 1)).await?), "ok");

    // From a snapshot (the checkpoint writes the window) ...
    node.checkpoint().await?;
    assert_eq!(code(&ledger.submit_one(posted(201, home_a, 2, 1)).await?), "risk_velocity_exceeded");
    // ... and after a crash, from the snapshot and the journal after it.
    node.stop_without_checkpoint().await;
    let node = open(dir.path(), test_options(SHARDS, clock.clone())).await?;
    node.ledger.set_rules(vec![ten]).await?;
    assert_eq!(code(&node.ledger.submit_one(posted(202, home_b, 2, 1)).await?), "risk_velocity_exceeded");

    // A sum scoped to the user adds both accounts' debits.
    clock.advance_ms(61_000);
    let five = RuleKind::VelocityAmount { asset: "USD".into(), window_seconds: 60, amount: amount(5) };
    node.ledger.set_rules(vec![rule(2, five, RuleScope::User(owner), RuleAction::Reject)]).await?;
    assert_eq!(code(&node.ledger.submit_one(posted(300, home_a, 2, 3)).await?), "ok");
    assert_eq!(code(&node.ledger.submit_one(posted(301, home_b, 2, 3)).await?), "risk_velocity_exceeded");
    assert_eq!(code(&node.ledger.submit_one(posted(302, home_b, 2, 2)).await?), "ok");
    node.shutdown().await;
    Ok(())
}

/// A snapshot's accounts and its users' windows are written one after the
/// other: a checkpoint that stops between them, or after both and before
/// its meta, leaves replay accounts newer than their user's window, or a
/// window that counted what replay hands it again. Either way the window
/// counts each debit once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_stopped_between_accounts_and_user_windows_counts_each_debit_once() -> anyhow::Result<()>
{
    use wallet_storage::faults::{self, points, Fault};
    const SHARDS: u16 = 4;
    for point in [points::SNAPSHOT_ACCOUNTS, points::SNAPSHOT_USER_WINDOWS] {
        let dir = tempfile::tempdir()?;
        let clock = Arc::new(ManualClock::new(START_MS));
        let (node, ledger) = funded(dir.path(), clock.clone()).await?;
        let owner = user(77);
        let [home_a, home_b] = home_ids(owner, SHARDS);
        open_funded(&ledger, owner, &[home_a, home_b]).await?;
        let ten = ten_a_minute_for(owner);
        ledger.set_rules(vec![ten.clone()]).await?;
        for n in 0..3 {
            assert_eq!(code(&ledger.submit_one(posted(100 + n, home_a, 2, 1)).await?), "ok");
        }
        node.checkpoint().await?; // the window, at 3, is in sled
        for n in 0..3 {
            assert_eq!(code(&ledger.submit_one(posted(200 + n, home_b, 3, 1)).await?), "ok");
        }
        faults::arm(point, Fault::Error(1));
        anyhow::ensure!(node.checkpoint().await.is_err(), "{point}: the checkpoint did not stop");
        node.stop_without_checkpoint().await;

        let node = open(dir.path(), test_options(SHARDS, clock.clone())).await?;
        node.ledger.set_rules(vec![ten]).await?;
        for n in 0..4 {
            let from = if n % 2 == 0 { home_a } else { home_b };
            let result = node.ledger.submit_one(posted(300 + n, from, 4, 1)).await?;
            assert_eq!(code(&result), "ok", "{point}: debit {} of 10", 7 + n);
        }
        let eleventh = node.ledger.submit_one(posted(400, home_b, 4, 1)).await?;
        assert_eq!(code(&eleventh), "risk_velocity_exceeded", "{point}: the eleventh debit");
        node.shutdown().await;
    }
    Ok(())
}

/// Two account ids on `owner`'s home shard among `shards`, as the API
/// would place them.
fn home_ids(owner: wallet_actors::UserId, shards: u16) -> [u128; 2] {
    let mut draws = 1_000u128..;
    let mut at_home = || wallet_actors::account_id_at_home(owner, shards, || draws.next().unwrap_or(1)).get();
    [at_home(), at_home()]
}

/// Opens wallets `ids` for `owner` and funds each with 100 from account 1.
async fn open_funded(ledger: &Ledger, owner: wallet_actors::UserId, ids: &[u128]) -> anyhow::Result<()> {
    for (n, &id) in ids.iter().enumerate() {
        ledger.open_account(NewAccount { user_id: owner, ..wallet(id, usd()) }).await?;
        ledger.submit_one(posted(10 + n as u128, 1, id, 100)).await??;
    }
    Ok(())
}

/// At most ten debits a minute across `owner`'s accounts.
fn ten_a_minute_for(owner: wallet_actors::UserId) -> Rule {
    rule(
        1,
        RuleKind::VelocityCount { window_seconds: 60, count: 10 },
        RuleScope::User(owner),
        RuleAction::Reject,
    )
}

fn rule_hit(id: u128) -> wallet_actors::risk::RiskHit {
    wallet_actors::risk::RiskHit {
        rule_id: rule_id(id),
        kind: RuleKindCode::VelocityCount,
        action: RuleAction::Reject,
        timeout_seconds: None,
    }
}
