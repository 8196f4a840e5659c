//! Who a rate limit counts, against the real binary: the client behind a
//! trusted proxy (`X-Forwarded-For` only from listed proxies), an IPv6
//! client by its /64, a user by id (not by the bytes of a header), and
//! failed logins by email with a growing delay.

use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::Server;

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

/// A login from `forwarded_for` (sent as `X-Forwarded-For`); status, code, Retry-After.
async fn login_from(
    base: &str,
    forwarded_for: Option<&str>,
    email: &str,
    password: &str,
) -> anyhow::Result<(StatusCode, String, Option<u64>)> {
    let mut request =
        client()?.post(format!("{base}/v1/auth/token")).json(&json!({"email": email, "password": password}));
    if let Some(address) = forwarded_for {
        request = request.header("x-forwarded-for", address);
    }
    let response = request.send().await?;
    let status = response.status();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Ok((status, body["code"].as_str().unwrap_or_default().to_string(), retry_after))
}

async fn sign_up(base: &str, email: &str, password: &str) -> anyhow::Result<()> {
    let body = json!({"email": email, "password": password, "name": "Someone"});
    let status = client()?.post(format!("{base}/v1/users")).json(&body).send().await?.status();
    anyhow::ensure!(status == StatusCode::CREATED, "sign-up: {status}");
    Ok(())
}

async fn access_token(base: &str, email: &str, password: &str) -> anyhow::Result<String> {
    let body = json!({"email": email, "password": password});
    let reply: Value =
        client()?.post(format!("{base}/v1/auth/token")).json(&body).send().await?.json().await?;
    reply["access_token"].as_str().map(str::to_string).context("no access token")
}

const WRONG: &str = "wrong password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_login_bucket() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flags = [
        "--trusted-proxies",
        "127.0.0.1,10.0.0.0/8",
        "--login-rate-limit-burst",
        "2",
        "--login-rate-limit-per-minute",
        "0.01",
    ];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &flags)?;
    let base = server.base.as_str();
    let nobody = "nobody@example.com";
    // A client reached through two trusted proxies, with a made-up address
    // of its own in front: the right-most untrusted address is the client.
    for forwarded in ["203.0.113.5", "6.6.6.6, 203.0.113.5, 10.1.2.3"] {
        assert_eq!(login_from(base, Some(forwarded), nobody, WRONG).await?.0, StatusCode::UNAUTHORIZED);
    }
    let (status, code, retry_after) = login_from(base, Some("203.0.113.5"), nobody, WRONG).await?;
    assert_eq!((status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(retry_after.is_some_and(|s| s >= 1));
    // Another client behind the same proxy is not blocked by the first.
    assert_eq!(login_from(base, Some("198.51.100.7"), nobody, WRONG).await?.0, StatusCode::UNAUTHORIZED);

    // IPv6 clients are counted by /64: another address of the same /64
    // shares the bucket, another /64 does not.
    for address in ["2001:db8:1:2::1", "2001:db8:1:2::ffff"] {
        assert_eq!(login_from(base, Some(address), nobody, WRONG).await?.0, StatusCode::UNAUTHORIZED);
    }
    let same_net = login_from(base, Some("2001:db8:1:2:aaaa::1"), nobody, WRONG).await?.0;
    assert_eq!(same_net, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login_from(base, Some("2001:db8:1:3::1"), nobody, WRONG).await?.0, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flags = ["--login-rate-limit-burst", "2", "--login-rate-limit-per-minute", "0.01"];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &flags)?;
    let base = server.base.as_str();
    for forwarded in ["203.0.113.5", "203.0.113.6"] {
        let status = login_from(base, Some(forwarded), "nobody@example.com", WRONG).await?.0;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let status = login_from(base, Some("203.0.113.7"), "nobody@example.com", WRONG).await?.0;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "a made-up header buys no new bucket");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_counts_the_user_not_the_token_bytes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flags = ["--user-rate-limit-burst", "3", "--user-rate-limit-per-second", "0.001"];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &flags)?;
    let base = server.base.as_str();
    sign_up(base, "ada@example.com", "correct horse battery").await?;
    sign_up(base, "bob@example.com", "correct horse battery").await?;
    let first = access_token(base, "ada@example.com", "correct horse battery").await?;
    let second = access_token(base, "ada@example.com", "correct horse battery").await?;
    let me = |authorization: String| {
        let url = format!("{base}/v1/users/me");
        async move {
            let response = client()?.get(url).header("authorization", authorization).send().await?;
            anyhow::Ok(response.status().as_u16())
        }
    };
    let mut statuses = Vec::new();
    for authorization in [
        format!("Bearer {first}"),
        format!("Bearer {second}"),
        format!("Bearer  {first}"),
        format!("Bearer {second}"),
        format!("bearer {first} "),
    ] {
        statuses.push(me(authorization).await?);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "two tokens and extra spaces are one user");
    let bob = access_token(base, "bob@example.com", "correct horse battery").await?;
    assert_eq!(me(format!("Bearer {bob}")).await?, 200, "another user has a bucket of their own");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_slow_down_one_email_with_a_growing_delay() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flags = ["--login-failures-before-delay", "2", "--login-rate-limit-burst", "1000"];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &flags)?;
    let base = server.base.as_str();
    let (victim, password) = ("victim@example.com", "correct horse battery");
    sign_up(base, victim, password).await?;
    sign_up(base, "bystander@example.com", password).await?;

    // Two failures are free; the third locks the email for 1 s.
    for _ in 0..3 {
        assert_eq!(login_from(base, None, victim, WRONG).await?.0, StatusCode::UNAUTHORIZED);
    }
    let (status, code, retry_after) = login_from(base, None, victim, password).await?;
    assert_eq!((status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "login_throttled"));
    assert_eq!(retry_after, Some(1), "even the right password waits: the delay is what slows guessing");
    // Only that email: everyone else logs in as usual.
    assert_eq!(login_from(base, None, "bystander@example.com", password).await?.0, StatusCode::OK);
    assert_eq!(login_from(base, None, "other@example.com", WRONG).await?.0, StatusCode::UNAUTHORIZED);

    // The next failure doubles the delay.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login_from(base, None, victim, WRONG).await?.0, StatusCode::UNAUTHORIZED);
    let (status, _, retry_after) = login_from(base, None, victim, password).await?;
    assert_eq!((status, retry_after), (StatusCode::TOO_MANY_REQUESTS, Some(2)));

    // A success once it is over starts the count again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(login_from(base, None, victim, password).await?.0, StatusCode::OK);
    assert_eq!(login_from(base, None, victim, WRONG).await?.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login_from(base, None, victim, password).await?.0, StatusCode::OK);
    Ok(())
}
