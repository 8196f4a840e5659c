//! The PostgreSQL projection example (`examples/pg_projection.rs`) end to
//! end: a throwaway PostgreSQL, a real nats-server and the real node under
//! load; the projection process is killed with SIGKILL while it writes and
//! started again, and at the end each account's row and entries in
//! PostgreSQL are the API's account, sequence for sequence.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::Context;
use wallet_testkit::nats::NatsServer;
use wallet_testkit::postgres::Postgres;

use crate::event_books::{wait_until_published, Books, Load, PASSWORD};
use crate::helpers::Server;

/// The example's binary: `cargo test` (and so nextest) builds a package's
/// examples with its tests, into `examples/` beside the test's `deps/`.
fn projection_binary() -> anyhow::Result<PathBuf> {
    let test = std::env::current_exe()?;
    let profile = test.parent().and_then(Path::parent).context("the test binary has no profile directory")?;
    let binary = profile.join("examples").join("pg_projection");
    anyhow::ensure!(
        binary.is_file(),
        "no {}: build it with cargo build --release -p wallet-api --example pg_projection",
        binary.display()
    );
    Ok(binary)
}

/// A projection process, its output appended to `log`.
fn start_projection(nats: &str, pg: &str, log: &Path, extra: &[&str]) -> anyhow::Result<Child> {
    let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let child = Command::new(projection_binary()?)
        .args(["--nats-url", nats, "--pg-url", pg])
        .args(extra)
        .env_remove("WALLET_NATS_URL")
        .env_remove("DATABASE_URL")
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting pg_projection")?;
    Ok(child)
}

/// Waits for `child` to exit, killing it if it does not within `within`.
async fn wait_exit(child: &mut Child, within: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("pg_projection did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Rows in `entries`, or 0 before the projection made the table.
async fn entry_count(database: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let exists = database.query_one("SELECT to_regclass('entries') IS NOT NULL", &[]).await?;
    if !exists.try_get::<_, bool>(0)? {
        return Ok(0);
    }
    Ok(database.query_one("SELECT count(*) FROM entries", &[]).await?.try_get(0)?)
}

#[tokio::test]
async fn the_projection_matches_the_api_after_a_kill_9_mid_stream() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let postgres = Postgres::start(&dir.path().join("pg"))?;
    let pg_url = postgres.url();
    let nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    // Eight clients on a fast machine outrun the per-user limit, and the
    // reads that check the books must not meet its 429s.
    let limits = ["--user-rate-limit-per-second", "1000000", "--user-rate-limit-burst", "1000000"];
    let flags = [&["--nats-url", url.as_str()][..], &limits[..]].concat();
    let server = Server::start_with(&dir.path().join("wallet"), Some(PASSWORD), &flags)?;
    let books = Books::open(&server.base).await?;
    let database = connect(&pg_url).await?;
    let log = dir.path().join("projection.log");
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let load = Load::start(&books);
    load.reach(200).await?;

    // Killed once it has written, while the load still makes events.
    let mut projection = start_projection(&url, &pg_url, &log, &[])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let written_before_kill = loop {
        let written = entry_count(&database).await?;
        if written >= 100 {
            break written;
        }
        if let Some(status) = projection.try_wait()? {
            anyhow::bail!("pg_projection exited with {status}: {}", log_text());
        }
        anyhow::ensure!(Instant::now() < deadline, "pg_projection wrote {written} rows: {}", log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    projection.kill()?;
    projection.wait()?;
    load.reach(load.acknowledged() + 300).await?;
    load.stop().await;
    wait_until_published(&url, &books).await?;

    // Started again, it resumes from its durable consumer and runs to the end.
    let mut projection = start_projection(&url, &pg_url, &log, &["--until-idle-ms", "1500"])?;
    let status = wait_exit(&mut projection, Duration::from_secs(120)).await?;
    anyhow::ensure!(status.success(), "pg_projection exited with {status}: {}", log_text());
    let written = entry_count(&database).await?;
    anyhow::ensure!(
        written > written_before_kill,
        "nothing written after the restart ({written} rows): the test tests no restart"
    );

    for account in &books.accounts {
        let reply = books
            .client
            .get(format!("{}/v1/accounts/{account}", books.base))
            .bearer_auth(&books.user)
            .send()
            .await?;
        let api: serde_json::Value = reply.json().await?;
        let sequence = api["sequence"].as_u64().context("no sequence")?;
        let row = database
            .query_one(
                "SELECT last_sequence, available::text, debits_posted::text, credits_posted::text,
                        debits_pending::text, credits_pending::text
                 FROM accounts WHERE account_id = $1::text::uuid",
                &[account],
            )
            .await
            .with_context(|| format!("account {account} in PostgreSQL"))?;
        let projected = u64::try_from(row.try_get::<_, i64>(0)?)?;
        anyhow::ensure!(projected == sequence, "account {account}: sequence {projected}, API {sequence}");
        for (column, name) in
            ["available", "debits_posted", "credits_posted", "debits_pending", "credits_pending"]
                .iter()
                .enumerate()
        {
            let value: String = row.try_get(column + 1)?;
            let expected = api["balance"][name].as_str().with_context(|| format!("no balance.{name}"))?;
            anyhow::ensure!(value == expected, "account {account}: {name} {value}, API {expected}");
        }
        // The primary key makes the numbers distinct: as many as the
        // sequence, from 1 to it, is each of 1..=sequence once.
        let entries = database
            .query_one(
                "SELECT count(*), coalesce(min(sequence), 0), coalesce(max(sequence), 0)
                 FROM entries WHERE account_id = $1::text::uuid",
                &[account],
            )
            .await?;
        let (count, first, last): (i64, i64, i64) =
            (entries.try_get(0)?, entries.try_get(1)?, entries.try_get(2)?);
        anyhow::ensure!(
            u64::try_from(count)? == sequence && first == 1 && u64::try_from(last)? == sequence,
            "account {account}: {count} entries from {first} to {last}, API sequence {sequence}"
        );
    }
    drop(postgres);
    Ok(())
}
