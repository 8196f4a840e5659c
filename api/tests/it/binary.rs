//! The real `wallet` binary: starts, prints the generated admin password
//! once, serves, and exits 0 on SIGTERM after making the journal durable.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{account_with_deposit, failed_start, login as token, Server};

/// SIGTERM stops the binary cleanly (exit 0), and what it acknowledged is
/// there when it starts again on the same directory.
#[tokio::test]
async fn serve_then_sigterm_exits_zero_and_keeps_what_it_acknowledged() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path(), None)?;
    let password = server.password.clone().context("no generated admin password was printed")?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let base = server.base.clone();
    assert_eq!(client.get(format!("{base}/healthz")).send().await?.status(), StatusCode::OK);
    let admin = token(&client, &base, "admin@wallet.local", &password).await?;
    let (account, deposit_id) = account_with_deposit(&client, &base, &admin, "1234").await?;
    server.signal("-TERM")?;
    let exit = server.wait()?;
    assert!(exit.success(), "{exit:?}");

    // The same directory, started again: no new password, the same books.
    let server = Server::start(dir.path(), None)?;
    assert!(server.password.is_none(), "a second start printed a new admin password");
    let base = server.base.clone();
    let admin = token(&client, &base, "admin@wallet.local", &password).await?;
    let read = client.get(format!("{base}/v1/accounts/{account}")).bearer_auth(&admin).send().await?;
    let body: serde_json::Value = read.json().await?;
    assert_eq!(body["balance"]["available"], "1234", "{body}");
    let read = client.get(format!("{base}/v1/transfers/{deposit_id}")).bearer_auth(&admin).send().await?;
    assert_eq!(read.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn every_acknowledged_transfer_survives_kill_9() -> anyhow::Result<()> {
    const DEPOSIT: u64 = 1_000_000;
    let dir = tempfile::tempdir()?;
    let mut server = Server::start(dir.path(), Some("admin-password-1"))?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let base = server.base.clone();
    let admin = token(&client, &base, "admin@wallet.local", "admin-password-1").await?;
    let sign_up = json!({"email": "ada@example.com", "password": "correct horse battery", "name": "Ada"});
    client.post(format!("{base}/v1/users")).json(&sign_up).send().await?;
    let user = token(&client, &base, "ada@example.com", "correct horse battery").await?;
    let mut accounts = Vec::new();
    for _ in 0..4 {
        let reply = client
            .post(format!("{base}/v1/accounts"))
            .bearer_auth(&user)
            .json(&json!({"asset": "USD", "scale": 2}))
            .send()
            .await?;
        let body: serde_json::Value = reply.json().await?;
        accounts.push(body["id"].as_str().context("no account id")?.to_string());
    }
    for account in &accounts {
        let deposit = json!({"id": uuid::Uuid::new_v4().to_string(), "account_id": account, "amount": DEPOSIT.to_string()});
        let reply =
            client.post(format!("{base}/v1/deposits")).bearer_auth(&admin).json(&deposit).send().await?;
        assert_eq!(reply.status(), StatusCode::CREATED);
    }

    // Eight clients transfer until the server dies under them.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut clients = Vec::new();
    for worker in 0..8usize {
        let (client, base, user, accounts, acknowledged) =
            (client.clone(), base.clone(), user.clone(), accounts.clone(), acknowledged.clone());
        clients.push(tokio::spawn(async move {
            for round in 0..10_000usize {
                let from = &accounts[(worker + round) % accounts.len()];
                let to = &accounts[(worker + round + 1) % accounts.len()];
                let id = uuid::Uuid::new_v4().to_string();
                let amount = (1 + round % 7).to_string();
                let body = json!({"id": id, "from_account_id": from, "to_account_id": to, "amount": amount});
                match client.post(format!("{base}/v1/transfers")).bearer_auth(&user).json(&body).send().await
                {
                    Ok(reply) if reply.status().is_success() => {
                        if let Ok(mut list) = acknowledged.lock() {
                            list.push((id, amount));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    let started = Instant::now();
    while acknowledged.lock().map(|l| l.len()).unwrap_or(0) < 200
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.signal("-KILL")?;
    server.wait()?;
    for client in clients {
        let _ = client.await;
    }
    let acknowledged = acknowledged.lock().map(|l| l.clone()).unwrap_or_default();
    assert!(acknowledged.len() >= 200, "only {} transfers before the kill", acknowledged.len());

    let server = Server::start(dir.path(), Some("admin-password-1"))?;
    let base = server.base.clone();
    for (id, amount) in &acknowledged {
        let reply = client.get(format!("{base}/v1/transfers/{id}")).bearer_auth(&user).send().await?;
        assert_eq!(reply.status(), StatusCode::OK, "acknowledged transfer {id} is lost");
        let body: serde_json::Value = reply.json().await?;
        assert_eq!(body["amount"], amount.as_str());
    }
    let mut total: i128 = 0;
    for account in &accounts {
        let reply = client.get(format!("{base}/v1/accounts/{account}")).bearer_auth(&user).send().await?;
        let body: serde_json::Value = reply.json().await?;
        let available: i128 = body["balance"]["available"].as_str().context("no balance")?.parse()?;
        assert!(available >= 0);
        total += available;
    }
    assert_eq!(total, i128::from(DEPOSIT) * accounts.len() as i128, "the books do not balance");
    Ok(())
}

/// A second `wallet node` on a data directory a running node uses stops at
/// the directory's lock before it takes the node's lease: the running node
/// keeps serving (a later start that got as far as the leases would fence it).
#[tokio::test]
async fn a_second_node_start_on_the_same_directory_leaves_the_first_serving() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = wallet_testkit::nats::NatsServer::start(&dir.path().join("nats"))?;
    let (url, data) = (nats.url(), dir.path().join("wallet"));
    let flags = ["--node-id", "1", "--nats-url", url.as_str()];
    let server = Server::start_with(&data, Some("admin-password-1"), &flags)?;
    let stderr = failed_start(&data, Some("admin-password-1"), &flags).await?;
    assert!(stderr.contains("in use by another process"), "{stderr}");
    let client = reqwest::Client::builder().no_proxy().build()?;
    let base = server.base.clone();
    let admin = token(&client, &base, "admin@wallet.local", "admin-password-1").await?;
    account_with_deposit(&client, &base, &admin, "5").await.context("the running node was fenced")?;
    drop(server);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_node_takes_over_when_the_active_one_dies_and_honours_its_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = wallet_testkit::nats::NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let (data_1, data_2) = (dir.path().join("node-1"), dir.path().join("node-2"));
    let active =
        Server::start_with(&data_1, Some("admin-password-1"), &["--node-id", "1", "--nats-url", &url])?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let admin = token(&client, &active.base, "admin@wallet.local", "admin-password-1").await?;
    let (account, deposit_id) = account_with_deposit(&client, &active.base, &admin, "5").await?;

    // While it waits it says it is alive but not ready, and refuses the
    // API at once (a load balancer's probe keeps it out meanwhile).
    let standby = Server::start_until(
        &data_2,
        Some("admin-password-1"),
        &["--node-id", "2", "--nats-url", &url, "--standby"],
        "standing by",
    )?;
    let status = |path: &str| {
        let (client, url, admin) = (client.clone(), format!("{}{path}", standby.base), admin.clone());
        async move { anyhow::Ok(client.get(url).bearer_auth(admin).send().await?) }
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    anyhow::ensure!(status("/healthz").await?.status() == StatusCode::OK, "a standby is not alive");
    anyhow::ensure!(
        status("/readyz").await?.status() == StatusCode::SERVICE_UNAVAILABLE,
        "the standby did not wait"
    );
    let refused = status(&format!("/v1/accounts/{account}")).await?;
    anyhow::ensure!(refused.headers().contains_key("retry-after"), "no Retry-After");
    let refused: serde_json::Value = refused.json().await?;
    anyhow::ensure!(refused["code"] == "standing_by", "{refused}");
    anyhow::ensure!(status("/metrics").await?.status() == StatusCode::OK);
    account_with_deposit(&client, &active.base, &admin, "7")
        .await
        .context("the active node was disturbed")?;

    active.signal("-KILL")?;
    let killed = Instant::now();
    // Leases of 2 s (node) and 3 s (shards), then a replay of the stream.
    // A request may meet the standing-by server's socket closing: not ready yet.
    while !status("/readyz").await.is_ok_and(|reply| reply.status() == StatusCode::OK) {
        anyhow::ensure!(killed.elapsed() < Duration::from_secs(20), "the standby never took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took_over = killed.elapsed();
    eprintln!("the standby served {took_over:?} after the active node was killed");

    // The token node 1 issued works on node 2, and node 1's books are there.
    let read =
        client.get(format!("{}/v1/accounts/{account}", standby.base)).bearer_auth(&admin).send().await?;
    anyhow::ensure!(read.status() == StatusCode::OK, "{}", read.status());
    let body: serde_json::Value = read.json().await?;
    anyhow::ensure!(body["balance"]["available"] == "5", "{body}");
    let read =
        client.get(format!("{}/v1/transfers/{deposit_id}", standby.base)).bearer_auth(&admin).send().await?;
    anyhow::ensure!(read.status() == StatusCode::OK, "{}", read.status());
    account_with_deposit(&client, &standby.base, &admin, "9").await.context("the standby does not serve")?;
    drop((standby, nats));
    Ok(())
}

/// A node paused (SIGSTOP) past its leases, while a standby took over,
/// finds itself fenced at its first renewal once resumed and says it needs
/// a restart (it stores nothing more; its shards are the standby's), even
/// though no write of its failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_past_its_leases_asks_for_a_restart_once_resumed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nats = wallet_testkit::nats::NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let paused = Server::start_with(
        &dir.path().join("node-1"),
        Some("admin-password-1"),
        &["--node-id", "1", "--nats-url", &url],
    )?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let health = |base: &str, path: &str| {
        let (client, url) = (client.clone(), format!("{base}{path}"));
        async move { anyhow::Ok(client.get(url).send().await?.status()) }
    };
    anyhow::ensure!(health(&paused.base, "/healthz").await? == StatusCode::OK);
    paused.signal("-STOP")?;
    // Serves once the paused node's leases expired.
    let standby = Server::start_with(
        &dir.path().join("node-2"),
        Some("admin-password-1"),
        &["--node-id", "2", "--nats-url", &url, "--standby"],
    )?;
    paused.signal("-CONT")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&paused.base, "/healthz").await? != StatusCode::SERVICE_UNAVAILABLE {
        anyhow::ensure!(Instant::now() < deadline, "the resumed node still says it is healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(health(&paused.base, "/readyz").await? == StatusCode::SERVICE_UNAVAILABLE);
    anyhow::ensure!(health(&standby.base, "/readyz").await? == StatusCode::OK);
    drop((paused, standby, nats));
    Ok(())
}
