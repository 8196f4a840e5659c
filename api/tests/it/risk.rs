//! Risk rules through the real `wallet` binary: the admin routes and their
//! input checks, vetoes and review holds over HTTP, a velocity limit that
//! stays exact under concurrency and across kill -9, and default rules
//! from the configuration file.

use std::path::Path;

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{new_id, Reply, Server};

const ADMIN_EMAIL: &str = "admin@wallet.local";
const ADMIN_PASSWORD: &str = "admin-password-1";

/// A `wallet serve` process and an admin token for it.
struct Node {
    server: Server,
    client: reqwest::Client,
    admin: String,
}

impl Node {
    /// Starts the binary on `dir` (cheap password hashing, room for the
    /// tests' logins) with `extra` flags.
    async fn start(dir: &Path, extra: &[&str]) -> anyhow::Result<Node> {
        let mut args = vec![
            "--password-memory-kib",
            "1024",
            "--password-iterations",
            "1",
            "--login-rate-limit-burst",
            "100",
        ];
        args.extend_from_slice(extra);
        let server = Server::start_with(dir, Some(ADMIN_PASSWORD), &args)?;
        let client = reqwest::Client::builder().no_proxy().build()?;
        let mut node = Node { server, client, admin: String::new() };
        node.admin = node.token(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
        Ok(node)
    }

    /// Sends `body` as JSON, with `token` unless it is empty.
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.client.request(method, format!("{}{path}", self.server.base));
        if !token.is_empty() {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Reply::read(request.send().await.with_context(|| format!("sending {path}"))?).await
    }

    async fn post(&self, path: &str, token: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(Method::POST, path, token, Some(body)).await
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<Reply> {
        self.send(Method::GET, path, token, None).await
    }

    async fn put(&self, path: &str, token: &str, body: &Value) -> anyhow::Result<Reply> {
        self.send(Method::PUT, path, token, Some(body)).await
    }

    async fn delete(&self, path: &str, token: &str) -> anyhow::Result<Reply> {
        self.send(Method::DELETE, path, token, None).await
    }

    async fn token(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let body = json!({"email": email, "password": password});
        let reply = self.send(Method::POST, "/v1/auth/token", "", Some(&body)).await?;
        anyhow::ensure!(reply.status == StatusCode::OK, "token: {} {}", reply.status, reply.body);
        reply.body["access_token"].as_str().map(str::to_string).context("no access_token")
    }

    /// Signs up a user; returns (user id, access token).
    async fn user(&self, name: &str) -> anyhow::Result<(String, String)> {
        let email = format!("{name}-{}@example.com", uuid::Uuid::new_v4().simple());
        let password = "correct horse battery";
        let body = json!({"email": email, "password": password, "name": name});
        let reply = self.send(Method::POST, "/v1/users", "", Some(&body)).await?;
        anyhow::ensure!(reply.status == StatusCode::CREATED, "sign-up: {} {}", reply.status, reply.body);
        let id = reply.body["id"].as_str().context("no id")?.to_string();
        Ok((id, self.token(&email, password).await?))
    }

    /// Opens a USD account for the token's user, with `deposit` in it.
    async fn account(&self, token: &str, deposit: &str) -> anyhow::Result<String> {
        let reply = self.post("/v1/accounts", token, &json!({"asset": "USD", "scale": 2})).await?;
        anyhow::ensure!(reply.status == StatusCode::CREATED, "open: {} {}", reply.status, reply.body);
        let id = reply.body["id"].as_str().context("no id")?.to_string();
        if deposit != "0" {
            let body = json!({"id": new_id(), "account_id": id, "amount": deposit});
            let reply = self.post("/v1/deposits", &self.admin, &body).await?;
            anyhow::ensure!(reply.status == StatusCode::CREATED, "deposit: {} {}", reply.status, reply.body);
        }
        Ok(id)
    }

    async fn transfer(&self, token: &str, from: &str, to: &str, amount: &str) -> anyhow::Result<Reply> {
        let body = json!({"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": amount});
        self.post("/v1/transfers", token, &body).await
    }

    async fn available(&self, account: &str) -> anyhow::Result<String> {
        let reply = self.get(&format!("/v1/accounts/{account}"), &self.admin).await?;
        reply.body["balance"]["available"].as_str().map(str::to_string).context("no balance")
    }

    /// Creates a rule as the admin; returns its id.
    async fn rule(&self, body: &Value) -> anyhow::Result<String> {
        let reply = self.post("/v1/risk/rules", &self.admin, body).await?;
        anyhow::ensure!(reply.status == StatusCode::CREATED, "rule: {} {}", reply.status, reply.body);
        reply.body["id"].as_str().map(str::to_string).context("no rule id")
    }

    /// The value of `wallet_risk_decisions_total` for `kind` and `outcome`.
    async fn decisions_counted(&self, kind: &str, outcome: &str) -> anyhow::Result<u64> {
        let text = self.client.get(format!("{}/metrics", self.server.base)).send().await?.text().await?;
        let (kind, outcome) = (format!("kind=\"{kind}\""), format!("outcome=\"{outcome}\""));
        let line = text.lines().find(|line| {
            line.starts_with("wallet_risk_decisions_total{")
                && line.contains(&kind)
                && line.contains(&outcome)
        });
        match line.and_then(|line| line.rsplit(' ').next()) {
            Some(value) => Ok(value.parse()?),
            None => Ok(0),
        }
    }
}

fn max_amount(amount: &str, action: &str) -> Value {
    json!({
        "name": "cap",
        "kind": "max_amount",
        "scope": {"type": "global"},
        "action": action,
        "parameters": {"asset": "USD", "amount": amount},
    })
}

#[tokio::test]
async fn rules_round_trip_and_are_for_admins_only() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::start(dir.path(), &[]).await?;
    let (_, user) = node.user("ada").await?;
    let account = node.account(&user, "0").await?;
    let body = json!({
        "name": "ten a minute",
        "kind": "velocity_count",
        "scope": {"type": "account", "account_id": account},
        "action": "reject",
        "parameters": {"window_seconds": 60, "count": 10},
    });

    let created = node.post("/v1/risk/rules", &node.admin, &body).await?;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let id = created.body["id"].as_str().context("no id")?.to_string();
    uuid::Uuid::try_parse(&id)?;
    for field in ["name", "kind", "scope", "action", "parameters"] {
        assert_eq!(created.body[field], body[field], "{field}");
    }
    assert_eq!(created.body["timeout_seconds"], Value::Null);
    assert!(created.body["created_at"].as_str().is_some_and(|t| t.ends_with('Z')));

    let read = node.get(&format!("/v1/risk/rules/{id}"), &node.admin).await?;
    assert_eq!((read.status, &read.body), (StatusCode::OK, &created.body));
    let list = node.get("/v1/risk/rules", &node.admin).await?;
    assert_eq!((list.status, &list.body["items"]), (StatusCode::OK, &json!([created.body])));

    let replacement = json!({
        "name": "hold big ones",
        "kind": "velocity_amount",
        "scope": {"type": "global"},
        "action": "review",
        "parameters": {"asset": "USD", "window_seconds": 3600, "amount": "100000"},
        "timeout_seconds": 86400,
    });
    let replaced = node.put(&format!("/v1/risk/rules/{id}"), &node.admin, &replacement).await?;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(
        (&replaced.body["id"], &replaced.body["created_at"]),
        (&created.body["id"], &created.body["created_at"])
    );
    for field in ["name", "kind", "scope", "action", "parameters", "timeout_seconds"] {
        assert_eq!(replaced.body[field], replacement[field], "{field}");
    }
    let read = node.get(&format!("/v1/risk/rules/{id}"), &node.admin).await?;
    assert_eq!(read.body, replaced.body);

    // Every risk route answers 403 to a user, and changes nothing.
    let one = format!("/v1/risk/rules/{id}");
    let forbidden = [
        (Method::POST, "/v1/risk/rules", Some(&body)),
        (Method::GET, "/v1/risk/rules", None),
        (Method::GET, one.as_str(), None),
        (Method::PUT, one.as_str(), Some(&body)),
        (Method::DELETE, one.as_str(), None),
        (Method::GET, "/v1/risk/decisions", None),
    ];
    for (method, path, request) in forbidden {
        let reply = node.send(method.clone(), path, &user, request).await?;
        assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"), "{method} {path}");
    }
    let read = node.get(&format!("/v1/risk/rules/{id}"), &node.admin).await?;
    assert_eq!(read.body, replaced.body);

    let deleted = node.delete(&one, &node.admin).await?;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    for reply in [
        node.get(&one, &node.admin).await?,
        node.delete(&one, &node.admin).await?,
        node.put(&one, &node.admin, &body).await?,
    ] {
        assert_eq!((reply.status, reply.code()), (StatusCode::NOT_FOUND, "rule_not_found"));
    }
    let malformed = node.get("/v1/risk/rules/not-a-uuid", &node.admin).await?;
    assert_eq!((malformed.status, malformed.code()), (StatusCode::BAD_REQUEST, "invalid_id"));
    let list = node.get("/v1/risk/rules", &node.admin).await?;
    assert_eq!(list.body["items"], json!([]));

    let document = node.get("/v1/openapi.json", "").await?;
    for path in ["/v1/risk/rules", "/v1/risk/rules/{id}", "/v1/risk/decisions"] {
        assert!(document.body["paths"][path].is_object(), "{path} is not in the OpenAPI document");
    }
    for schema in ["RuleBody", "RuleView", "RuleParameters", "RuleScopeBody", "DecisionView"] {
        assert!(
            document.body["components"]["schemas"][schema].is_object(),
            "{schema} is not in the OpenAPI document"
        );
    }
    Ok(())
}

#[tokio::test]
async fn malformed_rules_are_400_with_a_code_and_store_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::start(dir.path(), &[]).await?;
    let velocity = |parameters: Value| {
        json!({
            "name": "v",
            "kind": "velocity_count",
            "scope": {"type": "global"},
            "action": "reject",
            "parameters": parameters,
        })
    };
    let mut unknown_kind = max_amount("1000", "reject");
    unknown_kind["kind"] = json!("max_amont");
    let mut unknown_field = max_amount("1000", "reject");
    unknown_field["priority"] = json!(1);
    let mut unknown_scope_field = max_amount("1000", "reject");
    unknown_scope_field["scope"] = json!({"type": "global", "user_id": new_id()});
    let mut unknown_parameter = max_amount("1000", "reject");
    unknown_parameter["parameters"]["currency"] = json!("USD");
    let mut malformed_account = max_amount("1000", "reject");
    malformed_account["scope"] = json!({"type": "account", "account_id": "12"});
    let mut timeout_on_reject = max_amount("1000", "reject");
    timeout_on_reject["timeout_seconds"] = json!(60);
    let cases = [
        (unknown_kind, "unknown_rule_kind"),
        (velocity(json!({"window_seconds": 0, "count": 10})), "window_out_of_range"),
        (velocity(json!({"window_seconds": 604_801, "count": 10})), "window_out_of_range"),
        (velocity(json!({"window_seconds": 60})), "invalid_parameters"),
        (velocity(json!({"window_seconds": "60", "count": 10})), "invalid_parameters"),
        (max_amount("-1", "reject"), "malformed_amount"),
        (max_amount("1.5", "reject"), "malformed_amount"),
        (max_amount(&"9".repeat(39), "reject"), "amount_too_large"),
        (unknown_field, "unknown_field"),
        (unknown_scope_field, "unknown_field"),
        (unknown_parameter, "unknown_field"),
        (malformed_account, "invalid_id"),
        (timeout_on_reject, "timeout_out_of_range"),
    ];
    let existing = node.rule(&max_amount("1000", "reject")).await?;
    for (body, code) in cases {
        let created = node.post("/v1/risk/rules", &node.admin, &body).await?;
        assert_eq!((created.status, created.code()), (StatusCode::BAD_REQUEST, code), "POST {body}");
        let replaced = node.put(&format!("/v1/risk/rules/{existing}"), &node.admin, &body).await?;
        assert_eq!((replaced.status, replaced.code()), (StatusCode::BAD_REQUEST, code), "PUT {body}");
    }
    let list = node.get("/v1/risk/rules", &node.admin).await?;
    assert_eq!(list.body["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(list.body["items"][0]["parameters"]["amount"], "1000", "a refused PUT changed the rule");
    Ok(())
}

#[tokio::test]
async fn a_max_amount_rule_vetoes_above_its_limit_and_follows_changes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::start(dir.path(), &[]).await?;
    let (_, user) = node.user("ada").await?;
    let from = node.account(&user, "100000").await?;
    let to = node.account(&user, "0").await?;
    let rule = node.rule(&max_amount("1000", "reject")).await?;

    assert_eq!(node.transfer(&user, &from, &to, "1000").await?.status, StatusCode::CREATED);
    let vetoed = node.transfer(&user, &from, &to, "1001").await?;
    assert_eq!(
        (vetoed.status, vetoed.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "risk_max_amount_exceeded")
    );
    assert_eq!(vetoed.body["rule_id"], rule.as_str());
    assert_eq!(node.available(&from).await?, "99000", "a veto moved money");

    let changed =
        node.put(&format!("/v1/risk/rules/{rule}"), &node.admin, &max_amount("2000", "reject")).await?;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(node.transfer(&user, &from, &to, "1500").await?.status, StatusCode::CREATED);
    let vetoed = node.transfer(&user, &from, &to, "2001").await?;
    assert_eq!(
        (vetoed.status, vetoed.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "risk_max_amount_exceeded")
    );
    // A withdrawal is a debit of the user's account too.
    let withdrawal = json!({"id": new_id(), "account_id": from, "amount": "2001"});
    let vetoed = node.post("/v1/withdrawals", &user, &withdrawal).await?;
    assert_eq!(vetoed.code(), "risk_max_amount_exceeded");
    assert_eq!(node.decisions_counted("max_amount", "reject").await?, 3);

    let decisions = node.get(&format!("/v1/risk/decisions?account_id={from}"), &node.admin).await?;
    let items = decisions.body["items"].as_array().context("no items")?;
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|d| d["rule_id"] == rule.as_str() && d["outcome"] == "reject"));

    assert_eq!(
        node.delete(&format!("/v1/risk/rules/{rule}"), &node.admin).await?.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(node.transfer(&user, &from, &to, "5000").await?.status, StatusCode::CREATED);
    assert_eq!(node.available(&from).await?, "92500");
    Ok(())
}

#[tokio::test]
async fn a_velocity_limit_is_exact_under_concurrency_and_survives_kill_9() -> anyhow::Result<()> {
    const TRANSFERS: usize = 64;
    let dir = tempfile::tempdir()?;
    let mut node = Node::start(dir.path(), &[]).await?;
    let (_, user) = node.user("ada").await?;
    let from = node.account(&user, "1000").await?;
    let to = node.account(&user, "1000").await?;
    node.rule(&json!({
        "name": "ten a minute",
        "kind": "velocity_count",
        "scope": {"type": "account", "account_id": from},
        "action": "reject",
        "parameters": {"window_seconds": 60, "count": 10},
    }))
    .await?;

    let mut tasks = Vec::new();
    for _ in 0..TRANSFERS {
        let (client, base, user, from, to) =
            (node.client.clone(), node.server.base.clone(), user.clone(), from.clone(), to.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": "1"});
            let response =
                client.post(format!("{base}/v1/transfers")).bearer_auth(&user).json(&body).send().await?;
            Reply::read(response).await
        }));
    }
    let (mut applied, mut vetoed) = (0, 0);
    for task in tasks {
        let reply = task.await??;
        match (reply.status, reply.code()) {
            (StatusCode::CREATED, _) => applied += 1,
            (StatusCode::UNPROCESSABLE_ENTITY, "risk_velocity_exceeded") => vetoed += 1,
            (status, _) => anyhow::bail!("unexpected answer {status}: {}", reply.body),
        }
    }
    assert_eq!((applied, vetoed), (10, TRANSFERS - 10));
    assert_eq!(node.available(&from).await?, "990");
    // The rule is scoped to one account: the other still moves money.
    assert_eq!(node.transfer(&user, &to, &from, "1").await?.status, StatusCode::CREATED);

    node.server.signal("-KILL")?;
    node.server.wait()?;
    let node = Node::start(dir.path(), &[]).await?;
    let rules = node.get("/v1/risk/rules", &node.admin).await?;
    assert_eq!(rules.body["items"].as_array().map(Vec::len), Some(1), "the rule was not reloaded");
    let vetoed = node.transfer(&user, &from, &to, "1").await?;
    assert_eq!(
        (vetoed.status, vetoed.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "risk_velocity_exceeded"),
        "the window was forgotten: {}",
        vetoed.body
    );
    assert_eq!(node.available(&from).await?, "991");
    Ok(())
}

/// A velocity rule scoped to a user counts the debits of all the accounts
/// the API opened for the user (placed on the user's home shard), at once
/// and across kill -9.
#[tokio::test]
async fn a_user_scoped_velocity_rule_counts_across_the_users_accounts() -> anyhow::Result<()> {
    const TRANSFERS: usize = 12;
    let dir = tempfile::tempdir()?;
    let mut node = Node::start(dir.path(), &[]).await?;
    let (ada_id, ada) = node.user("ada").await?;
    let (_, bob) = node.user("bob").await?;
    let accounts = [node.account(&ada, "1000").await?, node.account(&ada, "1000").await?];
    let bobs = node.account(&bob, "0").await?;
    node.rule(&json!({
        "name": "four a minute per user",
        "kind": "velocity_count",
        "scope": {"type": "user", "user_id": ada_id},
        "action": "reject",
        "parameters": {"window_seconds": 60, "count": 4},
    }))
    .await?;

    let mut tasks = Vec::new();
    for n in 0..TRANSFERS {
        let (client, base, ada) = (node.client.clone(), node.server.base.clone(), ada.clone());
        let body =
            json!({"id": new_id(), "from_account_id": accounts[n % 2], "to_account_id": bobs, "amount": "1"});
        tasks.push(tokio::spawn(async move {
            let response =
                client.post(format!("{base}/v1/transfers")).bearer_auth(&ada).json(&body).send().await?;
            Reply::read(response).await
        }));
    }
    let mut applied = 0;
    for task in tasks {
        let reply = task.await??;
        match (reply.status, reply.code()) {
            (StatusCode::CREATED, _) => applied += 1,
            (StatusCode::UNPROCESSABLE_ENTITY, "risk_velocity_exceeded") => {}
            (status, _) => anyhow::bail!("unexpected answer {status}: {}", reply.body),
        }
    }
    assert_eq!(applied, 4, "the user's two accounts together debit at most four times a minute");
    assert_eq!(node.available(&bobs).await?, "4");

    node.server.signal("-KILL")?;
    node.server.wait()?;
    let node = Node::start(dir.path(), &[]).await?;
    for from in &accounts {
        let vetoed = node.transfer(&ada, from, &bobs, "1").await?;
        assert_eq!(
            (vetoed.status, vetoed.code()),
            (StatusCode::UNPROCESSABLE_ENTITY, "risk_velocity_exceeded"),
            "the user's window was forgotten: {}",
            vetoed.body
        );
    }
    Ok(())
}

#[tokio::test]
async fn review_holds_wait_for_an_admin_and_decisions_are_listed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = Node::start(dir.path(), &[]).await?;
    let (ada_id, ada) = node.user("ada").await?;
    let (_, bob) = node.user("bob").await?;
    let checking = node.account(&ada, "10000").await?;
    let savings = node.account(&ada, "10000").await?;
    let bobs = node.account(&bob, "0").await?;
    let mut body = max_amount("100", "review");
    body["scope"] = json!({"type": "user", "user_id": ada_id});
    let rule = node.rule(&body).await?;

    let small = node.transfer(&ada, &checking, &bobs, "100").await?;
    assert_eq!(
        (small.status, &small.body["status"], &small.body["review"]),
        (StatusCode::CREATED, &json!("posted"), &json!(false))
    );
    let held = node.transfer(&ada, &checking, &bobs, "500").await?;
    assert_eq!(held.status, StatusCode::CREATED, "{}", held.body);
    assert_eq!((&held.body["status"], &held.body["review"]), (&json!("pending"), &json!(true)));
    assert_eq!(held.body["rule_id"], rule.as_str());
    let held_id = held.body["id"].as_str().context("no id")?.to_string();
    assert_eq!(node.available(&checking).await?, "9400");
    assert_eq!(node.available(&bobs).await?, "100");

    // The owner, and the other party, may not decide a review hold.
    for (token, action) in [(&ada, "post"), (&ada, "void"), (&bob, "post"), (&bob, "void")] {
        let reply = node.post(&format!("/v1/transfers/{held_id}/{action}"), token, &json!({})).await?;
        assert_eq!((reply.status, reply.code()), (StatusCode::FORBIDDEN, "forbidden"), "{action}");
    }
    let posted = node.post(&format!("/v1/transfers/{held_id}/post"), &node.admin, &json!({})).await?;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    let read = node.get(&format!("/v1/transfers/{held_id}"), &ada).await?;
    assert_eq!(read.body["status"], "posted");
    assert_eq!(node.available(&bobs).await?, "600");

    // Two more holds on checking, one on savings; the admin voids one.
    let mut held_ids = vec![held_id];
    for (from, amount) in [(&checking, "600"), (&checking, "700"), (&savings, "800")] {
        let reply = node.transfer(&ada, from, &bobs, amount).await?;
        assert_eq!(reply.body["review"], true, "{}", reply.body);
        held_ids.push(reply.body["id"].as_str().context("no id")?.to_string());
    }
    let voided = node.post(&format!("/v1/transfers/{}/void", held_ids[3]), &node.admin, &json!({})).await?;
    assert_eq!(voided.status, StatusCode::CREATED, "{}", voided.body);
    assert_eq!(node.available(&savings).await?, "10000");
    assert_eq!(node.decisions_counted("max_amount", "review").await?, 4);

    let first = node.get(&format!("/v1/risk/decisions?account_id={checking}&limit=2"), &node.admin).await?;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let items = first.body["items"].as_array().context("no items")?;
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["transfer_id"], held_ids[0].as_str());
    assert_eq!(items[1]["transfer_id"], held_ids[1].as_str());
    for item in items {
        assert_eq!((&item["account_id"], &item["rule_id"]), (&json!(checking), &json!(rule)));
        assert_eq!((&item["kind"], &item["outcome"]), (&json!("max_amount"), &json!("review")));
        assert!(item["at"].as_str().is_some_and(|at| at.ends_with('Z')));
    }
    let cursor = first.body["next_cursor"].as_str().context("no next_cursor on a full page")?;
    let second = node
        .get(&format!("/v1/risk/decisions?account_id={checking}&limit=2&cursor={cursor}"), &node.admin)
        .await?;
    let items = second.body["items"].as_array().context("no items")?;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["transfer_id"], held_ids[2].as_str());
    assert!(second.body.get("next_cursor").is_none(), "a short page is the last");

    let all = node.get("/v1/risk/decisions", &node.admin).await?;
    let items = all.body["items"].as_array().context("no items")?;
    let ids: Vec<u64> = items.iter().filter_map(|d| d["id"].as_u64()).collect();
    assert_eq!(ids.len(), 4, "{items:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "decisions are not in id order: {ids:?}");
    assert_eq!(items[3]["account_id"], savings.as_str());
    let bad = node.get("/v1/risk/decisions?cursor=x", &node.admin).await?;
    assert_eq!((bad.status, bad.code()), (StatusCode::BAD_REQUEST, "invalid_cursor"));
    Ok(())
}

#[tokio::test]
async fn configured_rules_are_in_force_at_start_and_api_edits_persist() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("wallet.toml");
    std::fs::write(
        &config,
        r#"
[[risk_rules]]
name = "cap"
kind = "max_amount"
scope = { type = "global" }
action = "reject"
parameters = { asset = "USD", amount = "1000" }
"#,
    )?;
    let config = config.to_string_lossy().to_string();
    let data = dir.path().join("data");
    let mut node = Node::start(&data, &["--config", &config]).await?;
    let rules = node.get("/v1/risk/rules", &node.admin).await?;
    let items = rules.body["items"].as_array().context("no items")?;
    assert_eq!(items.len(), 1, "{}", rules.body);
    assert_eq!((&items[0]["name"], &items[0]["parameters"]["amount"]), (&json!("cap"), &json!("1000")));
    let rule = items[0]["id"].as_str().context("no id")?.to_string();

    let (_, user) = node.user("ada").await?;
    let from = node.account(&user, "100000").await?;
    let to = node.account(&user, "0").await?;
    let vetoed = node.transfer(&user, &from, &to, "1001").await?;
    assert_eq!(
        (vetoed.status, vetoed.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "risk_max_amount_exceeded")
    );
    assert_eq!(vetoed.body["rule_id"], rule.as_str());

    let edited =
        node.put(&format!("/v1/risk/rules/{rule}"), &node.admin, &max_amount("5000", "reject")).await?;
    assert_eq!(edited.status, StatusCode::OK, "{}", edited.body);
    node.server.signal("-TERM")?;
    node.server.wait()?;

    // The configured rule exists by name: the edit stands, nothing is added.
    let node = Node::start(&data, &["--config", &config]).await?;
    let rules = node.get("/v1/risk/rules", &node.admin).await?;
    let items = rules.body["items"].as_array().context("no items")?;
    assert_eq!(items.len(), 1, "{}", rules.body);
    assert_eq!((&items[0]["id"], &items[0]["parameters"]["amount"]), (&json!(rule), &json!("5000")));
    assert_eq!(node.transfer(&user, &from, &to, "5000").await?.status, StatusCode::CREATED);
    let vetoed = node.transfer(&user, &from, &to, "5001").await?;
    assert_eq!(vetoed.code(), "risk_max_amount_exceeded");
    Ok(())
}
