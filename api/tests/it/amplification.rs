//! Amplification: a request must not cost the server much more than it
//! costs the client. Ownership is checked against the caller's own account
//! index, so made-up sources cost no shard read; and one user cannot take
//! the whole in-flight budget. Against the real binary.

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::Server;

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

async fn post(
    base: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<(StatusCode, Value)> {
    let mut request = client()?.post(format!("{base}{path}")).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    Ok((response.status(), response.json().await.unwrap_or(Value::Null)))
}

/// A new user's access token and a funded account of theirs.
async fn funded_user(base: &str, admin: &str, name: &str) -> anyhow::Result<(String, String)> {
    let email = format!("{name}-{}@example.com", Uuid::new_v4().simple());
    let password = "correct horse battery";
    let (status, _) =
        post(base, "/v1/users", None, &json!({"email": email, "password": password, "name": name})).await?;
    anyhow::ensure!(status == StatusCode::CREATED, "sign-up: {status}");
    let (_, tokens) =
        post(base, "/v1/auth/token", None, &json!({"email": email, "password": password})).await?;
    let token = tokens["access_token"].as_str().context("no token")?.to_string();
    let (_, account) = post(base, "/v1/accounts", Some(&token), &json!({"asset": "USD"})).await?;
    let account = account["id"].as_str().context("no account")?.to_string();
    let deposit = json!({"id": Uuid::new_v4().to_string(), "account_id": account, "amount": "100000"});
    let (status, _) = post(base, "/v1/deposits", Some(admin), &deposit).await?;
    anyhow::ensure!(status == StatusCode::CREATED, "deposit: {status}");
    Ok((token, account))
}

async fn admin_token(base: &str) -> anyhow::Result<String> {
    let body = json!({"email": "admin@wallet.local", "password": "admin-password-1"});
    let (_, tokens) = post(base, "/v1/auth/token", None, &body).await?;
    tokens["access_token"].as_str().map(str::to_string).context("no admin token")
}

/// The value of the series of `metric` whose labels contain `labels`.
async fn metric(base: &str, metric: &str, labels: &str) -> anyhow::Result<f64> {
    let text = client()?.get(format!("{base}/metrics")).send().await?.text().await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(metric) && line.contains(labels))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_sources_in_a_batch_cost_no_shard_reads() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Some("admin-password-1"))?;
    let base = server.base.as_str();
    let admin = admin_token(base).await?;
    let (token, mine) = funded_user(base, &admin, "mallory").await?;
    let (_, theirs) = funded_user(base, &admin, "victim").await?;
    let item = |from: &str| json!({"id": Uuid::new_v4().to_string(), "from_account_id": from, "to_account_id": mine, "amount": "1"});
    let mut transfers: Vec<Value> = (0..200).map(|_| item(&Uuid::new_v4().to_string())).collect();
    transfers.push(item(&theirs));
    let (status, reply) =
        post(base, "/v1/transfers/batch", Some(&token), &json!({"transfers": transfers, "atomic": false}))
            .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let results = reply["results"].as_array().context("no results")?;
    assert!(results.iter().all(|r| r["error"]["code"] == "debit_account_not_found"), "{reply}");
    assert_eq!(metric(base, "wallet_ownership_checks_total", "answered_by=\"index\"").await?, 201.0);
    assert_eq!(
        metric(base, "wallet_ownership_checks_total", "answered_by=\"ledger\"").await?,
        0.0,
        "no shard was asked"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_gets_a_share_of_the_in_flight_budget_not_all_of_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flags = ["--in-flight-max", "10", "--user-in-flight-max", "4"];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &flags)?;
    let base = server.base.as_str();
    let admin = admin_token(base).await?;
    let (token, from) = funded_user(base, &admin, "greedy").await?;
    let (_, to) = funded_user(base, &admin, "payee").await?;
    let batch = |size: usize| {
        let item = || json!({"id": Uuid::new_v4().to_string(), "from_account_id": from, "to_account_id": to, "amount": "1"});
        json!({"transfers": (0..size).map(|_| item()).collect::<Vec<_>>(), "atomic": false})
    };
    // Five would fit the ledger's ten, but not one user's four.
    let (status, reply) = post(base, "/v1/transfers/batch", Some(&token), &batch(5)).await?;
    assert_eq!(
        (status, reply["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("overloaded")),
        "{reply}"
    );
    let (status, reply) = post(base, "/v1/transfers/batch", Some(&token), &batch(4)).await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let applied = reply["results"].as_array().map(|r| r.iter().filter(|r| r["status"] == 201).count());
    assert_eq!(applied, Some(4));
    Ok(())
}
