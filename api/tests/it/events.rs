//! Ledger events on NATS JetStream, end to end: the real binary publishing
//! to a real nats-server, killed with SIGKILL under load and started again,
//! and the nats-server killed for longer than the stream's duplicate window
//! while transfers go on. Every account's events are in the stream once
//! each, in sequence order without a gap, and end at the API's balance.
//!
//! Each test takes NATS away while the ledger keeps serving: that holds
//! where the journal is not on NATS, the embedded node. A node whose
//! journal is on NATS (`WALLET_TEST_NODE=1`) stops writing while NATS is
//! away (`limits::after_a_journal_failure_healthz_asks_for_a_restart`), so
//! these tests return at once there.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use wallet_testkit::nats::NatsServer;

use crate::event_books::{wait_until_published, Books, Load, PASSWORD};
use crate::helpers::{node_mode, Server};

#[tokio::test]
async fn every_change_is_published_once_in_order_across_kill_9_and_a_nats_outage() -> anyhow::Result<()> {
    if node_mode() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let data = dir.path().join("wallet");
    // A one-second duplicate window, so the outage below outlasts it.
    let flags = ["--nats-url", url.as_str(), "--events-duplicate-window-ms", "1000"];
    let mut server = Server::start_with(&data, Some(PASSWORD), &flags)?;
    let mut books = Books::open(&server.base).await?;

    // Kill -9 the node under load, twice (it comes back on another port).
    for _ in 0..2 {
        let load = Load::start(&books);
        load.reach(300).await?;
        server.signal("-KILL")?;
        server.wait()?;
        load.stop().await;
        // Past the duplicate window: `Nats-Msg-Id` no longer hides a second
        // publication of what the restart replays.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        server = Server::start_with(&data, Some(PASSWORD), &flags)?;
        books.base = server.base.clone();
    }

    // NATS away for three duplicate windows while money moves.
    let load = Load::start(&books);
    load.reach(100).await?;
    nats.kill()?;
    let outage = Instant::now();
    load.reach(400).await?;
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed())).await;
    nats.restart()?;
    load.reach(600).await?;
    load.stop().await;

    wait_until_published(&url, &books).await
}

/// With room for only 50 waiting events, the queue drops most of what the
/// load makes while NATS is away; the publisher reads them back from the
/// durable history, and the stream still holds every event, in order.
#[tokio::test]
async fn events_the_queue_had_no_room_for_are_read_back_from_history() -> anyhow::Result<()> {
    if node_mode() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let flags = ["--nats-url", url.as_str(), "--events-queue-max", "50"];
    let server = Server::start_with(&dir.path().join("wallet"), Some(PASSWORD), &flags)?;
    let books = Books::open(&server.base).await?;
    nats.kill()?;
    let load = Load::start(&books);
    load.reach(500).await?;
    nats.restart()?;
    load.reach(800).await?;
    load.stop().await;
    wait_until_published(&url, &books).await?;
    let metrics = books.client.get(format!("{}/metrics", books.base)).send().await?.text().await?;
    anyhow::ensure!(
        metrics.contains("wallet_events_dropped_total"),
        "nothing was dropped: the test tests nothing"
    );
    Ok(())
}

/// While NATS is down the node stays ready (it serves; the outbox grows)
/// and `/metrics` says how many durable events wait; once NATS is back the
/// backlog drains.
#[tokio::test]
async fn while_nats_is_down_the_node_stays_ready_and_reports_its_backlog() -> anyhow::Result<()> {
    if node_mode() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let server =
        Server::start_with(&dir.path().join("wallet"), Some(PASSWORD), &["--nats-url", url.as_str()])?;
    let books = Books::open(&server.base).await?;
    nats.kill()?;
    let load = Load::start(&books);
    load.reach(200).await?;
    load.stop().await;
    let ready = books.client.get(format!("{}/readyz", books.base)).send().await?.status();
    anyhow::ensure!(ready == StatusCode::OK, "/readyz answered {ready} while NATS was down");
    let lag = |metrics: &str| -> Option<f64> {
        metrics.lines().find(|l| l.starts_with("wallet_events_outbox_lag "))?.split(' ').nth(1)?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = books.client.get(format!("{}/metrics", books.base)).send().await?.text().await?;
        if lag(&metrics).is_some_and(|waiting| waiting >= 200.0) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no backlog reported: {:?}", lag(&metrics));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nats.restart()?;
    wait_until_published(&url, &books).await
}

/// A node stopped (SIGTERM) while NATS is down: its last checkpoint waits
/// for the publisher, gives up, and takes the unpublished changes out of
/// what a restart replays. The snapshot records which accounts were behind,
/// so the restarted node publishes their events once NATS is back, with no
/// account changing again (docs/ARCHITECTURE.md, "Ledger events", invariant 4).
#[tokio::test]
async fn events_a_checkpoint_could_not_wait_for_are_published_after_a_restart() -> anyhow::Result<()> {
    if node_mode() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let mut nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let data = dir.path().join("wallet");
    let flags = ["--nats-url", url.as_str()];
    let mut server = Server::start_with(&data, Some(PASSWORD), &flags)?;
    let mut books = Books::open(&server.base).await?;
    nats.kill()?;
    let load = Load::start(&books);
    load.reach(200).await?;
    load.stop().await;
    let metrics = books.client.get(format!("{}/metrics", books.base)).send().await?.text().await?;
    server.signal("-TERM")?;
    let status = server.wait()?;
    anyhow::ensure!(status.success(), "the node stopped with {status}");
    anyhow::ensure!(metrics.contains("wallet_events_outbox_lag"), "no backlog metric before the stop");

    // Started again with NATS still down, then NATS comes back: nothing
    // changes any account, yet every event is published.
    server = Server::start_with(&data, Some(PASSWORD), &flags)?;
    books.base = server.base.clone();
    nats.restart()?;
    wait_until_published(&url, &books).await
}
