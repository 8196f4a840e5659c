//! The model test's engine in a child process, so the test can kill it with
//! SIGKILL at any step (`engine_matches_the_model_across_kill_9`): the child
//! reads one [`ChildCommand`] per stdin line and answers one [`ChildAnswer`]
//! per stdout line, on the same settings as the in-process engine
//! ([`options`]) and a manual clock the commands move.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use wallet_actors::ports::ManualClock;
use wallet_actors::risk::Rule;
use wallet_actors::{AccountStatus, LedgerConfig, LedgerError, Rejection, TransferRequest};
use wallet_storage::{EmbeddedLedger, EmbeddedOptions, JournalOptions};

use crate::model::ModelResult;

/// The model test's shard count: wallets 1 and 7 (of user 3) and 2 and 5
/// (of user 4) are on their owner's home shard, so velocity rules scoped
/// to those users count across two accounts.
pub const MODEL_SHARDS: u16 = 4;

/// The model test's engine settings, on `clock`.
pub fn options(clock: Arc<ManualClock>) -> EmbeddedOptions {
    EmbeddedOptions {
        // Expiry runs only when the test says, so the model can follow it.
        // Passivation after every snapshot: checkpoints drop every clean account.
        ledger: LedgerConfig {
            shard_count: MODEL_SHARDS,
            expiry_interval_ms: 3_600_000,
            passivate_after_snapshots: Some(0),
            ..LedgerConfig::default()
        },
        // Tiny segments so checkpoints retire some of them.
        journal: JournalOptions { segment_bytes_max: 2048, ..JournalOptions::default() },
        clock,
        ..EmbeddedOptions::default()
    }
}

/// What the test asks the child to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChildCommand {
    /// `Ledger::submit`.
    Submit {
        /// The requests.
        requests: Vec<TransferRequest>,
        /// All or nothing.
        linked: bool,
    },
    /// `Ledger::set_account_status`.
    Status {
        /// The account.
        account: u128,
        /// The status wanted.
        status: AccountStatus,
    },
    /// Move the clock on by `ms`, then `Ledger::expire_due`.
    Advance {
        /// How far.
        ms: u64,
    },
    /// `Ledger::set_rules`.
    Rules(Vec<Rule>),
    /// `EmbeddedLedger::checkpoint`.
    Checkpoint,
}

/// The child's answer to one [`ChildCommand`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum ChildAnswer {
    /// To `Submit`: per request, `Ok(replayed)` or the rejection.
    Submitted(Vec<ModelResult>),
    /// To `Status`.
    Status(Result<(), Rejection>),
    /// To `Advance`: how many holds expired.
    Expired(usize),
    /// To `Rules` and `Checkpoint`.
    Done,
    /// Anything that is not a rejection (the test fails on it).
    Failed(String),
}

/// The child's main loop: opens the ledger in `dir` with its clock at
/// `now_ms`, prints `READY`, then answers commands until stdin closes.
pub fn serve(dir: &Path, now_ms: u64) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let clock = Arc::new(ManualClock::new(now_ms));
    let node = runtime.block_on(crate::open(dir, options(clock.clone())))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "READY")?;
    stdout.flush()?;
    for line in std::io::stdin().lock().lines() {
        let command: ChildCommand = serde_json::from_str(&line?)?;
        let answer = runtime.block_on(apply(&node, &clock, command));
        writeln!(stdout, "{}", serde_json::to_string(&answer)?)?;
        stdout.flush()?;
    }
    runtime.block_on(node.shutdown());
    Ok(())
}

async fn apply(node: &EmbeddedLedger, clock: &ManualClock, command: ChildCommand) -> ChildAnswer {
    let failed = |e: LedgerError| ChildAnswer::Failed(e.to_string());
    match command {
        ChildCommand::Submit { requests, linked } => match node.ledger.submit(requests, linked).await {
            Ok(results) => ChildAnswer::Submitted(
                results.into_iter().map(|r| r.map(|outcome| outcome.replayed)).collect(),
            ),
            Err(e) => failed(e),
        },
        ChildCommand::Status { account, status } => {
            match node.ledger.set_account_status(crate::account(account), status).await {
                Ok(_) => ChildAnswer::Status(Ok(())),
                Err(LedgerError::Rejected(rejection)) => ChildAnswer::Status(Err(rejection)),
                Err(e) => failed(e),
            }
        }
        ChildCommand::Advance { ms } => {
            clock.advance_ms(ms);
            node.ledger.expire_due().await.map_or_else(failed, ChildAnswer::Expired)
        }
        ChildCommand::Rules(rules) => {
            node.ledger.set_rules(rules).await.map_or_else(failed, |()| ChildAnswer::Done)
        }
        ChildCommand::Checkpoint => match node.checkpoint().await {
            Ok(_) => ChildAnswer::Done,
            Err(e) => ChildAnswer::Failed(e.to_string()),
        },
    }
}

/// The test's side: a running child.
pub struct ModelChild {
    process: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    stderr: std::path::PathBuf,
}

impl ModelChild {
    /// Starts `binary` (the test's `CARGO_BIN_EXE_wallet-model-child`) on
    /// `dir` at `now_ms` and waits for READY; its stderr goes to `dir/../model-child.err`.
    pub fn spawn(binary: &str, dir: &Path, now_ms: u64) -> anyhow::Result<ModelChild> {
        let stderr = dir.with_file_name("model-child.err");
        let mut process = std::process::Command::new(binary)
            .arg(dir)
            .arg(now_ms.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        let stdin = process.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin"))?;
        let stdout = process.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut child = ModelChild { process, stdin, stdout: std::io::BufReader::new(stdout), stderr };
        let ready = child.line()?;
        anyhow::ensure!(ready == "READY", "the child said {ready:?}: {}", child.stderr_text());
        Ok(child)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        anyhow::ensure!(self.stdout.read_line(&mut line)? > 0, "the child stopped: {}", self.stderr_text());
        Ok(line.trim_end().to_owned())
    }

    /// Sends a command without waiting for its answer.
    pub fn send(&mut self, command: &ChildCommand) -> anyhow::Result<()> {
        writeln!(self.stdin, "{}", serde_json::to_string(command)?)?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Sends a command and waits for its answer (a `Failed` one is an error).
    pub fn call(&mut self, command: &ChildCommand) -> anyhow::Result<ChildAnswer> {
        self.send(command)?;
        match serde_json::from_str(&self.line()?)? {
            ChildAnswer::Failed(e) => anyhow::bail!("{command:?} failed in the child: {e}"),
            answer => Ok(answer),
        }
    }

    /// SIGKILL, then waits for the process to be gone.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.process.kill()?;
        self.process.wait()?;
        Ok(())
    }

    /// What the child wrote on stderr.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}
