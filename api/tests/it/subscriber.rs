//! `examples/ledger_subscriber.rs` as a consumer runs it: its binary as a
//! child process against the real `wallet` binary and a real nats-server,
//! while money moves. The node is killed with SIGKILL under load and
//! restarted; the subscriber, started mid-load, is killed with SIGKILL and
//! started again on the same state and durable consumer. Once the load has
//! stopped, a last run until idle rebuilds every balance the API shows.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use wallet_testkit::nats::NatsServer;

use crate::event_books::{wait_until_published, Books, Load, PASSWORD};
use crate::helpers::{login, Server};

/// Cargo builds the examples with the tests, into `target/<profile>/examples/`
/// beside the tests' `target/<profile>/deps/`.
fn subscriber_binary() -> anyhow::Result<PathBuf> {
    let test = std::env::current_exe()?;
    let profile = test.parent().and_then(Path::parent).context("no target directory above the test")?;
    let binary = profile.join("examples").join(format!("ledger_subscriber{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(binary.exists(), "{} is missing: cargo builds examples with the tests", binary.display());
    Ok(binary)
}

/// A subscriber process, killed with SIGKILL when dropped.
struct Subscriber(Child);

impl Subscriber {
    /// Runs it on the test's state file and durable consumer; `token` goes
    /// in `WALLET_TOKEN`, as an operator would keep it out of `ps`.
    fn start(dir: &Path, nats_url: &str, extra: &[&str], token: Option<&str>) -> anyhow::Result<Subscriber> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("subscriber.log"))?;
        let mut command = Command::new(subscriber_binary()?);
        command
            .args(["--nats-url", nats_url, "--durable", "test-subscriber", "--state"])
            .arg(dir.join("subscriber.json"))
            .args(extra)
            .env_remove("WALLET_TOKEN")
            .stdout(Stdio::piped())
            .stderr(log);
        if let Some(token) = token {
            command.env("WALLET_TOKEN", token);
        }
        Ok(Subscriber(command.spawn().context("starting the subscriber")?))
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps it.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }

    /// Waits for it to exit by itself; returns its status and stdout.
    async fn finish(&mut self, within: Duration) -> anyhow::Result<(std::process::ExitStatus, String)> {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.0.try_wait()? {
                break status;
            }
            anyhow::ensure!(Instant::now() < deadline, "the subscriber did not stop once idle");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let mut stdout = String::new();
        if let Some(mut pipe) = self.0.stdout.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stdout)?;
        }
        Ok((status, stdout))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.kill();
        }
    }
}

#[tokio::test]
async fn the_subscriber_rebuilds_every_balance_across_kill_9_of_the_node_and_of_itself() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let data = dir.path().join("wallet");
    let flags = ["--nats-url", url.as_str()];
    let mut server = Server::start_with(&data, Some(PASSWORD), &flags)?;
    let mut books = Books::open(&server.base).await?;
    let state = dir.path().join("subscriber.json");

    // The subscriber starts mid-load; once it has saved a batch, the node is killed.
    let load = Load::start(&books);
    load.reach(200).await?;
    let mut subscriber = Subscriber::start(dir.path(), &url, &[], None)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.exists() {
        anyhow::ensure!(Instant::now() < deadline, "the subscriber saved nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    load.reach(400).await?;
    server.signal("-KILL")?;
    server.wait()?;
    load.stop().await;
    server = Server::start_with(&data, Some(PASSWORD), &flags)?;
    books.base = server.base.clone();

    // The subscriber killed under load and started again on its state and consumer.
    let load = Load::start(&books);
    load.reach(200).await?;
    subscriber.kill()?;
    let mut subscriber = Subscriber::start(dir.path(), &url, &[], None)?;
    load.reach(400).await?;
    load.stop().await;
    wait_until_published(&url, &books).await?;
    subscriber.kill()?;

    // The last run: until idle, then the subscriber compares with the API itself.
    let admin = login(&books.client, &books.base, "admin@wallet.local", PASSWORD).await?;
    let api = ["--until-idle-ms", "2000", "--api-url", books.base.as_str()];
    let (status, stdout) =
        Subscriber::start(dir.path(), &url, &api, Some(&admin))?.finish(Duration::from_secs(120)).await?;
    let log = std::fs::read_to_string(dir.path().join("subscriber.log")).unwrap_or_default();
    anyhow::ensure!(status.success(), "the subscriber exited with {status}: {stdout}\n{log}");
    let summary: Value = serde_json::from_str(stdout.trim()).with_context(|| format!("summary: {stdout}"))?;
    eprintln!("subscriber: {summary}");
    anyhow::ensure!(summary["gaps"] == 0 && summary["mismatches"] == 0, "{summary}");

    let saved: Value = serde_json::from_slice(&std::fs::read(&state)?)?;
    let accounts = saved["accounts"].as_object().context("no accounts in the state")?;
    anyhow::ensure!(summary["accounts"] == accounts.len(), "{summary}");
    // Every account's events from 1 were applied once each, no more.
    let sequences: u64 = accounts.values().filter_map(|a| a["sequence"].as_u64()).sum();
    anyhow::ensure!(summary["events_applied"] == sequences, "{sequences} sequences: {summary}");
    for (account, (sequence, available)) in books.read().await? {
        let rebuilt = accounts.get(&account).with_context(|| format!("account {account} not rebuilt"))?;
        anyhow::ensure!(
            rebuilt["sequence"] == sequence && rebuilt["balance"]["available"] == available.as_str(),
            "account {account}: rebuilt {rebuilt}, the API's {sequence} {available}"
        );
    }
    Ok(())
}
