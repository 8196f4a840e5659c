//! The project's own nats-server: installed by `scripts/install-nats`, run
//! with `nats.conf`, JetStream on, and started again after a kill on the
//! same port and store (what the event and cluster tests rely on).

use wallet_testkit::nats::NatsServer;

#[test]
fn the_pinned_server_starts_with_jetstream_and_again_after_a_kill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = NatsServer::start(&dir.path().join("nats"))?;
    let info = server.info()?;
    let version = info
        .split("\"version\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .ok_or_else(|| anyhow::anyhow!("no version in {info}"))?;
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    anyhow::ensure!(parts.as_slice() >= [2, 12].as_slice(), "nats-server {version} is older than 2.12");
    let url = server.url();
    server.kill()?;
    anyhow::ensure!(server.info().is_err(), "a killed server still answers");
    server.restart()?;
    anyhow::ensure!(server.url() == url && server.info().is_ok(), "the server did not come back on {url}");
    Ok(())
}
