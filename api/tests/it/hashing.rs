//! Password hashing as a denial of service: a bounded number of hashes at
//! once (503 `hashing_busy` with `Retry-After` beyond), and no hash at all
//! for a login password longer than any password can be.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_beyond_the_hashing_bound_get_503_with_retry_after() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // One hash at a time, an expensive one, and login limits out of the way.
    let flags = [
        "--password-hashes-max",
        "1",
        "--password-memory-kib",
        "65536",
        "--password-iterations",
        "3",
        "--login-rate-limit-burst",
        "1000",
    ];
    let app = TestApp::spawn_with(dir, &flags).await?;
    let mut logins = tokio::task::JoinSet::new();
    for n in 0..12 {
        let request = app
            .client
            .post(format!("{}/v1/auth/token", app.base))
            .json(&json!({"email": format!("nobody{n}@example.com"), "password": "whatever1"}));
        logins.spawn(async move {
            let response = request.send().await?;
            let retry_after =
                response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok());
            let status = response.status();
            let body: serde_json::Value = response.json().await?;
            anyhow::Ok((status, body["code"].as_str().unwrap_or_default().to_string(), retry_after))
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = logins.join_next().await {
        answers.push(answer??);
    }
    let busy: Vec<_> =
        answers.iter().filter(|(status, ..)| *status == StatusCode::SERVICE_UNAVAILABLE).collect();
    assert!(!busy.is_empty(), "one hash at a time and one waiting: {answers:?}");
    for (_, code, retry_after) in &busy {
        assert_eq!((code.as_str(), *retry_after), ("hashing_busy", Some(1u64)));
    }
    let checked = answers.iter().filter(|(status, ..)| *status == StatusCode::UNAUTHORIZED).count();
    assert_eq!(checked + busy.len(), answers.len(), "{answers:?}");
    assert!(checked >= 2, "the running and the waiting check go through: {answers:?}");
    Ok(())
}

#[tokio::test]
async fn a_login_password_longer_than_any_password_is_refused_before_hashing() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let body = |password: String| json!({"email": "nobody@example.com", "password": password});
    let started = Instant::now();
    let long = app.post("/v1/auth/token", None, &body("x".repeat(257))).await?;
    assert_eq!((long.status, long.code()), (StatusCode::BAD_REQUEST, "invalid_password"));
    let huge = app.post("/v1/auth/token", None, &body("x".repeat(60_000))).await?;
    assert_eq!((huge.status, huge.code()), (StatusCode::BAD_REQUEST, "invalid_password"));
    assert!(started.elapsed() < Duration::from_secs(5));
    let longest = app.post("/v1/auth/token", None, &body("x".repeat(256))).await?;
    assert_eq!((longest.status, longest.code()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
    Ok(())
}
