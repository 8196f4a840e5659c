//! The model test with real crashes: the engine runs in a child process
//! (`wallet-model-child`) that is killed with SIGKILL, sometimes between
//! steps and sometimes with a command in flight, a random few microseconds
//! after it was sent. After each kill the test opens the data directory
//! in-process, settles the command in flight the way a client would (sends
//! it again with the same ids; a status change already in force is not
//! sent again), compares every account, transfer, decision and history
//! with the model, and starts a new child.

use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use wallet_actors::ports::Clock;
use wallet_actors::risk::RuleAction;
use wallet_testkit::model::{to_rules, ModelResult};
use wallet_testkit::model_child::{ChildCommand, ModelChild};

use super::model::{command, runner, Command, Prepared, Reached, Run};

const CHILD: &str = env!("CARGO_BIN_EXE_wallet-model-child");

/// What the kills hit, over all cases.
#[derive(Default)]
struct Kills {
    between_steps: AtomicU64,
    in_flight: AtomicU64,
    /// Of those in flight: the work was durable before the kill (the resend was a replay).
    found_applied: AtomicU64,
}

impl Run {
    /// Closes the in-process engine (no checkpoint, so the child replays
    /// the journal) and starts a child on the same directory and clock.
    async fn move_to_child(&mut self) -> anyhow::Result<()> {
        if let Some(node) = self.node.take() {
            node.stop_without_checkpoint().await;
        }
        let mut child = ModelChild::spawn(CHILD, &self.path(), self.clock.now_ms())?;
        child.call(&ChildCommand::Rules(to_rules(&self.model.rules)))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL to the child, then the engine in-process on what it left.
    async fn kill_child(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.take() {
            child.kill()?;
        }
        self.reopen().await
    }

    /// Sends `command` to the child, kills the child `after_us` later, and
    /// settles the command on the restarted engine.
    async fn kill_in_flight(&mut self, command: Command, after_us: u32, kills: &Kills) -> anyhow::Result<()> {
        let prepared = self.prepare(&command);
        let sent = match (&prepared, &command) {
            (Some(Prepared::Submit(requests, linked)), _) => {
                ChildCommand::Submit { requests: requests.clone(), linked: *linked }
            }
            (Some(Prepared::Status(n, target)), _) => ChildCommand::Status { account: *n, status: *target },
            (None, Command::Advance { seconds }) => ChildCommand::Advance { ms: seconds * 1000 },
            // Nothing else changes the books.
            _ => return Ok(()),
        };
        let child = self.child.as_mut().ok_or_else(|| anyhow::anyhow!("no child"))?;
        child.send(&sent)?;
        std::thread::sleep(std::time::Duration::from_micros(u64::from(after_us)));
        self.kill_child().await?;
        kills.in_flight.fetch_add(1, Ordering::Relaxed);
        match (prepared, command) {
            (Some(Prepared::Submit(requests, linked)), _) => {
                let engine = self.submit_again(&requests, linked).await?;
                let decided = self.model.decisions.len();
                let expected = self.model.submit(&requests, linked);
                self.count_durable_vetoes(decided)?;
                // A replay answers as the first time did, so the results
                // agree but for "replayed" (which the engine says for work
                // that became durable before the kill).
                let outcome = |results: &[ModelResult]| -> Vec<Result<(), wallet_actors::Rejection>> {
                    results.iter().map(|r| r.map(|_| ())).collect()
                };
                anyhow::ensure!(
                    outcome(&engine) == outcome(&expected),
                    "{requests:?} after a kill: engine {engine:?}, model {expected:?}"
                );
                if engine != expected {
                    kills.found_applied.fetch_add(1, Ordering::Relaxed);
                }
                self.remember(requests, linked);
            }
            (Some(Prepared::Status(n, target)), _) => {
                let node = self.node.as_ref().ok_or_else(|| anyhow::anyhow!("no node"))?;
                let current =
                    node.ledger.account(wallet_testkit::account(n)).await?.map(|v| v.account.status);
                let expected = self.model.set_status(n, target);
                if current != Some(target) {
                    let engine = self.engine_status(n, target).await?;
                    anyhow::ensure!(
                        engine == expected,
                        "status of {n} after a kill: {engine:?}, model {expected:?}"
                    );
                }
            }
            (None, Command::Advance { seconds }) => {
                // The child may have expired some holds before it died; the
                // states must agree, not the counts.
                self.clock.advance_ms(seconds * 1000);
                self.model.now_ms += seconds * 1000;
                let node = self.node.as_ref().ok_or_else(|| anyhow::anyhow!("no node"))?;
                node.ledger.expire_due().await?;
                self.model.expire_due();
            }
            _ => {}
        }
        self.check(true).await?;
        self.move_to_child().await
    }

    async fn submit_again(
        &mut self,
        requests: &[wallet_actors::TransferRequest],
        linked: bool,
    ) -> anyhow::Result<Vec<ModelResult>> {
        let node = self.node.as_ref().ok_or_else(|| anyhow::anyhow!("no node"))?;
        let results = node.ledger.submit(requests.to_vec(), linked).await?;
        Ok(results.into_iter().map(|r| r.map(|outcome| outcome.replayed)).collect())
    }

    /// A veto is logged for every attempt it stops, and the attempt the
    /// kill cut short may have had its vetoes logged durably too: those are
    /// what the model logged for the attempt sent again (from
    /// `decisions[decided..]`), each at most once more.
    fn count_durable_vetoes(&mut self, decided: usize) -> anyhow::Result<()> {
        let node = self.node.as_ref().ok_or_else(|| anyhow::anyhow!("no node"))?;
        let engine: Vec<_> = node
            .ledger
            .decisions(None, 0, 100_000)?
            .iter()
            .map(|d| (d.transfer_id.get(), d.account_id.get(), d.rule_id.get(), d.outcome))
            .collect();
        let vetoes: Vec<_> =
            self.model.decisions[decided..].iter().copied().filter(|d| d.3 == RuleAction::Reject).collect();
        let mut seen = std::collections::BTreeSet::new();
        for veto in vetoes {
            if !seen.insert(veto) {
                continue;
            }
            let count = |log: &[(u128, u128, u128, RuleAction)]| log.iter().filter(|d| **d == veto).count();
            let (in_engine, in_model) = (count(&engine), count(&self.model.decisions));
            let extra = in_engine.saturating_sub(in_model);
            let logged_by_the_resend = self.model.decisions[decided..].iter().filter(|d| **d == veto).count();
            anyhow::ensure!(extra <= logged_by_the_resend, "{extra} vetoes {veto:?} more than the attempts");
            self.model.decisions.extend(std::iter::repeat_n(veto, extra));
        }
        Ok(())
    }

    /// A kill between steps: nothing in flight, nothing lost.
    async fn kill_between_steps(&mut self, kills: &Kills) -> anyhow::Result<()> {
        self.kill_child().await?;
        kills.between_steps.fetch_add(1, Ordering::Relaxed);
        self.check(true).await?;
        self.move_to_child().await
    }
}

async fn run(steps: Vec<(Command, Option<u32>)>, reached: &Reached, kills: &Kills) -> anyhow::Result<()> {
    let mut run = Run::start().await?;
    run.move_to_child().await?;
    for (step, (command, kill)) in steps.into_iter().enumerate() {
        let context = format!("step {step}: {command:?}, kill {kill:?}");
        let done = match (command, kill) {
            (Command::Restart | Command::CloseWithoutCheckpoint, _) => run.kill_between_steps(kills).await,
            (command, Some(after_us)) => run.kill_in_flight(command, after_us, kills).await,
            (command, None) => run.step(command, reached).await,
        };
        if let Err(e) = done {
            let stderr = run.child.as_ref().map(ModelChild::stderr_text).unwrap_or_default();
            run.finish().await;
            return Err(e.context(context).context(stderr));
        }
    }
    run.kill_between_steps(kills).await?;
    run.finish().await;
    Ok(())
}

#[test]
fn engine_matches_the_model_across_kill_9() -> anyhow::Result<()> {
    let cases = std::env::var("MODEL_KILL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let (reached, kills) = (Reached::default(), Kills::default());
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // One step in eight has its command in flight when the child is killed.
    let step = (command(), proptest::option::weighted(0.125, 0..8_000u32));
    runner(cases)
        .run(&proptest::collection::vec(step, 20..80), |steps| {
            runtime.block_on(run(steps, &reached, &kills)).map_err(|e| TestCaseError::fail(format!("{e:#}")))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    let (between, in_flight, applied) =
        (get(&kills.between_steps), get(&kills.in_flight), get(&kills.found_applied));
    println!(
        "{cases} cases: {between} kills between steps, {in_flight} with a command in flight \
         ({applied} of them durable before the kill), {} applied transfers",
        Reached::get(&reached.applied)
    );
    // The minimums are for the CI size; smaller runs only report.
    if cases >= 48 {
        anyhow::ensure!(in_flight >= 120, "only {in_flight} kills with a command in flight");
        anyhow::ensure!(applied >= 3, "only {applied} kills after the work in flight was durable");
    }
    Ok(())
}
