//! Input checks and limits: malformed amounts and ids, unknown fields,
//! oversized bodies, health endpoints.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{new_id, TestApp, BODY_LIMIT_BYTES};

#[tokio::test]
async fn malformed_amounts_and_ids_are_400() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("ada").await?;
    let from = app.account(&token).await?;
    let to = app.account(&token).await?;
    assert_eq!(app.deposit(&from, "100").await?.status, StatusCode::CREATED);

    let too_large = "9".repeat(39);
    let above_max = ((1u128 << 96) + 1).to_string();
    let cases = [
        ("-1", "malformed_amount"),
        ("0", "zero_amount"),
        ("1.5", "malformed_amount"),
        ("1e3", "malformed_amount"),
        ("", "malformed_amount"),
        (" 5", "malformed_amount"),
        (too_large.as_str(), "amount_too_large"),
        (above_max.as_str(), "amount_too_large"),
    ];
    for (amount, code) in cases {
        let body = json!({"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": amount});
        let reply = app.post("/v1/transfers", Some(&token), &body).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{amount:?}: {}", reply.body);
        assert_eq!(reply.code(), code, "{amount:?}");
        assert_eq!(reply.content_type, "application/problem+json");
    }
    let number = json!({"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": 5});
    assert_eq!(app.post("/v1/transfers", Some(&token), &number).await?.status, StatusCode::BAD_REQUEST);

    let bad_id = json!({"id": "not-a-uuid", "from_account_id": from, "to_account_id": to, "amount": "1"});
    let reply = app.post("/v1/transfers", Some(&token), &bad_id).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "invalid_id");
    assert_eq!(app.get("/v1/accounts/xyz", Some(&token)).await?.code(), "invalid_id");
    assert_eq!(app.available(&token, &from).await?, "100");
    Ok(())
}

#[tokio::test]
async fn unknown_fields_are_400() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("ada").await?;
    let from = app.account(&token).await?;
    let to = app.account(&token).await?;
    let body = json!({"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": "1",
                      "balance": "1000000"});
    let reply = app.post("/v1/transfers", Some(&token), &body).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "unknown_field");

    let account = json!({"asset": "USD", "scale": 2, "status": "active"});
    let reply = app.post("/v1/accounts", Some(&token), &account).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "unknown_field");

    let sign_up = json!({"email": "x@example.com", "password": "long enough", "name": "X", "role": "admin"});
    assert_eq!(app.post("/v1/users", None, &sign_up).await?.code(), "unknown_field");
    Ok(())
}

#[tokio::test]
async fn oversized_bodies_are_413() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("ada").await?;
    let body = json!({"id": new_id(), "from_account_id": new_id(), "to_account_id": new_id(), "amount": "1",
                      "reference": "x".repeat(BODY_LIMIT_BYTES + 1)});
    let reply = app.post("/v1/transfers", Some(&token), &body).await?;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.code(), "body_too_large");
    Ok(())
}

#[tokio::test]
async fn health_and_readiness() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    assert_eq!(app.get("/healthz", None).await?.status, StatusCode::OK);
    assert_eq!(app.get("/readyz", None).await?.status, StatusCode::OK);
    let openapi = app.get("/v1/openapi.json", None).await?;
    assert_eq!(openapi.status, StatusCode::OK);
    assert!(openapi.body["paths"]["/v1/transfers"]["post"].is_object(), "{}", openapi.body);
    assert!(openapi.body["components"]["schemas"]["TransferBody"].is_object());
    let missing = app.get("/nope", None).await?;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.content_type, "application/problem+json");
    app.stop().await?;
    Ok(())
}

/// A failed journal sync: the write is refused (503, its outcome unknown),
/// and the node says it must restart (`/healthz` 503, so a liveness probe
/// restarts it) and is not ready; a restart recovers from what is on disk.
#[tokio::test]
async fn after_a_journal_failure_healthz_asks_for_a_restart() -> anyhow::Result<()> {
    use wallet_storage::faults::{self, Fault};
    let dir = tempfile::tempdir()?;
    let app = TestApp::spawn_in(dir).await?;
    let (_, token) = app.user("jo").await?;
    let account = app.account(&token).await?;
    let mut app = app;
    assert_eq!(app.deposit(&account, "500").await?.status, StatusCode::CREATED);
    // A failed write: the file journal's sync, or a node's journal server gone.
    match app.nats_mut() {
        Some(nats) => nats.kill()?,
        None => faults::arm(faults::points::JOURNAL_SYNC, Fault::Error(1)),
    }
    let failed = app.deposit(&account, "700").await?;
    assert_eq!(
        (failed.status, failed.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{}",
        failed.body
    );
    assert_eq!(app.get("/healthz", None).await?.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.get("/readyz", None).await?.status, StatusCode::SERVICE_UNAVAILABLE);
    // Nothing more is taken, however long it waits: the fault is spent, the node is not mended.
    assert_eq!(app.deposit(&account, "1").await?.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.get("/healthz", None).await?.status, StatusCode::SERVICE_UNAVAILABLE);
    let dir = app.stop().await?;
    let app = TestApp::spawn_in(dir).await?;
    assert_eq!(app.get("/healthz", None).await?.status, StatusCode::OK);
    let available = app.available(&token, &account).await?;
    assert!(available == "500" || available == "1200", "available {available}");
    Ok(())
}

/// A node that cannot reach the directory it shares with the others (NATS
/// away) answers an authenticated request 503 `unavailable`, to be retried,
/// as it answers a transfer: not 500, which says the request itself broke
/// something.
#[tokio::test]
async fn a_node_whose_directory_is_out_of_reach_answers_unavailable() -> anyhow::Result<()> {
    let mut app = TestApp::spawn().await?;
    let (_, token) = app.user("kim").await?;
    let Some(nats) = app.nats_mut() else { return Ok(()) };
    nats.kill()?;
    // Past the time a node answers from its copy without confirming it.
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    let reply = app.get("/v1/users/me", Some(&token)).await?;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{}",
        reply.body
    );
    Ok(())
}

#[tokio::test]
async fn logins_are_rate_limited() -> anyhow::Result<()> {
    // The helper logs the admin in once, leaving two.
    let app = TestApp::spawn_with(tempfile::tempdir()?, &["--login-rate-limit-burst", "3"]).await?;
    let body = json!({"email": "nobody@example.com", "password": "wrong password"});
    for _ in 0..2 {
        assert_eq!(app.post("/v1/auth/token", None, &body).await?.status, StatusCode::UNAUTHORIZED);
    }
    let response = app.client.post(format!("{}/v1/auth/token", app.base)).json(&body).send().await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert!(retry_after.is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)));
    let reply = crate::helpers::Reply::read(response).await?;
    assert_eq!(reply.code(), "rate_limited");
    // Other routes still answer.
    assert_eq!(app.get("/v1/users/me", Some(&app.admin_token)).await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn requests_per_token_are_rate_limited() -> anyhow::Result<()> {
    let flags = ["--user-rate-limit-burst", "5", "--user-rate-limit-per-second", "0.01"];
    let app = TestApp::spawn_with(tempfile::tempdir()?, &flags).await?;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(app.get("/v1/users/me", Some(&app.admin_token)).await?.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    Ok(())
}

#[tokio::test]
async fn a_stalled_client_does_not_hold_the_shutdown() -> anyhow::Result<()> {
    use std::io::Write;
    let app = TestApp::spawn_with(tempfile::tempdir()?, &["--shutdown-grace-ms", "300"]).await?;
    let address = app.base.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&address)?;
    // A request whose body never ends: in flight until the grace period is over.
    let head = format!(
        "POST /v1/transfers HTTP/1.1\r\nHost: wallet\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
        app.admin_token
    );
    stalled.write_all(head.as_bytes())?;
    // Give the server time to start on it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(10), app.stop()).await??;
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    drop(stalled);
    Ok(())
}

#[tokio::test]
async fn past_the_in_flight_bound_requests_are_refused_as_overloaded_and_move_nothing() -> anyhow::Result<()>
{
    // One transfer may be in flight: a batch of two can never be admitted.
    let app = TestApp::spawn_with(tempfile::tempdir()?, &["--in-flight-max", "1"]).await?;
    let (_, token) = app.user("olga").await?;
    let from = app.account(&token).await?;
    let to = app.account(&token).await?;
    assert_eq!(app.deposit(&from, "1000").await?.status, StatusCode::CREATED);
    let item = |amount: &str| json!({"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": amount});
    for atomic in [false, true] {
        let batch = json!({"transfers": [item("1"), item("2")], "atomic": atomic});
        let reply = app.post("/v1/transfers/batch", Some(&token), &batch).await?;
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "{}", reply.body);
        assert_eq!(reply.code(), "overloaded");
        assert_eq!(reply.content_type, "application/problem+json");
    }
    assert_eq!(app.available(&token, &from).await?, "1000");
    assert_eq!(app.available(&token, &to).await?, "0");
    // One at a time is admitted.
    assert_eq!(app.post("/v1/transfers", Some(&token), &item("3")).await?.status, StatusCode::CREATED);
    assert_eq!(app.available(&token, &to).await?, "3");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_request_past_its_time_limit_gets_504_with_its_code() -> anyhow::Result<()> {
    // The real binary with a 1 ms limit: a login hashes a password (argon2id,
    // tens of milliseconds on a worker thread), so it always runs over.
    let dir = tempfile::tempdir()?;
    let mut server = crate::helpers::Server::start_with(
        dir.path(),
        Some("admin password long enough"),
        &["--request-timeout-ms", "1"],
    )?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let response = client
        .post(format!("{}/v1/auth/token", server.base))
        .json(&json!({"email": "someone@example.com", "password": "whatever it is"}))
        .send()
        .await?;
    let reply = crate::helpers::Reply::read(response).await?;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.body);
    assert_eq!(reply.code(), "timeout");
    assert_eq!(reply.content_type, "application/problem+json");
    server.signal("-TERM")?;
    assert!(server.wait()?.success());
    Ok(())
}

#[tokio::test]
async fn a_path_id_that_is_not_utf8_is_a_problem_document_too() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let admin = Some(app.admin_token.as_str());
    for path in ["/v1/accounts/%FF", "/v1/accounts/%C3%28/transfers", "/v1/risk/rules/%FF"] {
        let reply = app.get(path, admin).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.content_type, "application/problem+json", "{path}");
        assert_eq!(reply.code(), "invalid_id", "{path}");
    }
    let reply = app.post("/v1/transfers/%FF/post", admin, &json!({})).await?;
    assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "invalid_id"));
    app.stop().await?;
    Ok(())
}
