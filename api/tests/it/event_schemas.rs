//! The JSON Schemas shipped in `docs/events/` against real events: a node
//! publishing to a real nats-server is made to produce every event type
//! through the HTTP API, and each event in the stream must satisfy the
//! schema of its type and no other. Mutated copies of real events must be
//! refused, so a schema that accepts anything fails here.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wallet_testkit::nats::NatsServer;

use crate::event_books::{stream_json, wait_until_published, Books, PASSWORD};
use crate::helpers::{login, new_id, Server};

const TYPES: [&str; 9] = [
    "account.opened",
    "account.frozen",
    "account.unfrozen",
    "account.closed",
    "transfer.posted",
    "hold.created",
    "hold.posted",
    "hold.voided",
    "hold.expired",
];

/// Each type's schema, checked against the draft 2020-12 meta-schema and
/// compiled with `format` asserted (2020-12 makes it an annotation only).
fn validators() -> anyhow::Result<BTreeMap<&'static str, jsonschema::Validator>> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/events");
    let mut validators = BTreeMap::new();
    for name in TYPES {
        let path = folder.join(format!("{name}.schema.json"));
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let schema: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if let Err(error) = jsonschema::draft202012::meta::validate(&schema) {
            anyhow::bail!("{name}: not a draft 2020-12 schema: {error}");
        }
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|error| anyhow::anyhow!("{name}: {error}"))?;
        validators.insert(name, validator);
    }
    Ok(validators)
}

async fn post(books: &Books, token: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
    let reply =
        books.client.post(format!("{}{path}", books.base)).bearer_auth(token).json(body).send().await?;
    let status = reply.status();
    let body: Value = reply.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{path}: {status} {body}");
    Ok(body)
}

/// Makes every event type happen once at least.
async fn every_change(books: &Books, admin: &str) -> anyhow::Result<()> {
    let (user, accounts) = (books.user.as_str(), &books.accounts);
    let transfer = |from: &str, to: &str, amount: &str, pending: Option<u32>| {
        let mut body =
            json!({"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": amount});
        if let Some(timeout_seconds) = pending {
            body["pending"] = json!(true);
            body["timeout_seconds"] = json!(timeout_seconds);
        }
        body
    };
    post(books, user, "/v1/transfers", &transfer(&accounts[0], &accounts[1], "100", None)).await?;
    let withdrawal = json!({"id": new_id(), "account_id": accounts[1], "amount": "50"});
    post(books, user, "/v1/withdrawals", &withdrawal).await?;

    let posted = transfer(&accounts[0], &accounts[2], "300", Some(3600));
    post(books, user, "/v1/transfers", &posted).await?;
    let path = format!("/v1/transfers/{}/post", posted["id"].as_str().context("no id")?);
    post(books, admin, &path, &json!({"amount": "200"})).await?;
    let voided = transfer(&accounts[0], &accounts[3], "40", Some(3600));
    post(books, user, "/v1/transfers", &voided).await?;
    let path = format!("/v1/transfers/{}/void", voided["id"].as_str().context("no id")?);
    post(books, admin, &path, &json!({})).await?;
    let expiring = transfer(&accounts[1], &accounts[2], "25", Some(1));
    post(books, user, "/v1/transfers", &expiring).await?;

    let opened = post(books, user, "/v1/accounts", &json!({"asset": "USD"})).await?;
    let account = opened["id"].as_str().context("no account id")?;
    for action in ["freeze", "unfreeze", "close"] {
        post(books, admin, &format!("/v1/accounts/{account}/{action}"), &json!({})).await?;
    }

    let hold = expiring["id"].as_str().context("no id")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply =
            books.client.get(format!("{}/v1/transfers/{hold}", books.base)).bearer_auth(admin).send().await?;
        anyhow::ensure!(reply.status() == StatusCode::OK, "reading the hold: {}", reply.status());
        let body: Value = reply.json().await?;
        if body["status"] == "expired" {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the hold did not expire: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the stream until it holds every type (the closed account is not
/// one of the books' accounts, which `wait_until_published` waits for).
async fn all_types(url: &str) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = stream_json(url).await?;
        let missing: Vec<&str> =
            TYPES.into_iter().filter(|name| !events.iter().any(|e| e["type"] == *name)).collect();
        if missing.is_empty() {
            return Ok(events);
        }
        anyhow::ensure!(Instant::now() < deadline, "never published: {missing:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Copies of a real event that its schema must refuse, each named.
fn mutations(event: &Value) -> Vec<(String, Value)> {
    let mut refused = Vec::new();
    let mut change = |name: &str, edit: &dyn Fn(&mut Value)| {
        let mut copy = event.clone();
        edit(&mut copy);
        refused.push((name.to_string(), copy));
    };
    if let Some(fields) = event.as_object() {
        for field in fields.keys() {
            change(&format!("without {field}"), &|e| drop(e.as_object_mut().map(|o| o.remove(field))));
        }
    }
    change("an extra field", &|e| e["note"] = json!("hello"));
    change("an extra balance field", &|e| e["balance"]["overdraft"] = json!("0"));
    change("available as a number", &|e| e["balance"]["available"] = json!(100));
    change("a negative posted total", &|e| e["balance"]["debits_posted"] = json!("-1"));
    change("sequence 0", &|e| e["sequence"] = json!(0));
    change("sequence as a string", &|e| e["sequence"] = json!("1"));
    change("an event id without sequence", &|e| e["event_id"] = e["account_id"].clone());
    change("an account id not a UUID", &|e| e["account_id"] = json!("ada"));
    change("a time not RFC 3339", &|e| e["occurred_at"] = json!("2026-12-06 12:25"));
    change("an unknown type", &|e| e["type"] = json!("account.renamed"));
    if event.get("amount").is_some() {
        change("amount as a number", &|e| e["amount"] = json!(100));
        change("a negative amount", &|e| e["amount"] = json!("-5"));
        change("a side neither debit nor credit", &|e| e["side"] = json!("both"));
    } else {
        change("transfer fields on an account event", &|e| {
            e["transfer_id"] = e["account_id"].clone();
            e["side"] = json!("debit");
            e["amount"] = json!("1");
        });
    }
    if event.get("amount").is_some() && event.get("pending_id").is_none() {
        change("a pending id", &|e| e["pending_id"] = e["transfer_id"].clone());
    }
    refused
}

#[tokio::test]
async fn every_event_type_matches_its_shipped_schema_and_no_other() -> anyhow::Result<()> {
    let validators = validators()?;
    let dir = tempfile::tempdir()?;
    let nats = NatsServer::start(&dir.path().join("nats"))?;
    let url = nats.url();
    let server =
        Server::start_with(&dir.path().join("wallet"), Some(PASSWORD), &["--nats-url", url.as_str()])?;
    let books = Books::open(&server.base).await?;
    let admin = login(&books.client, &books.base, "admin@wallet.local", PASSWORD).await?;
    every_change(&books, &admin).await?;
    wait_until_published(&url, &books).await?;
    let events = all_types(&url).await?;

    let mut first: BTreeMap<String, &Value> = BTreeMap::new();
    for event in &events {
        let kind = event["type"].as_str().with_context(|| format!("no type: {event}"))?;
        for (name, validator) in &validators {
            let errors: Vec<String> = validator.iter_errors(event).map(|e| e.to_string()).collect();
            if *name == kind {
                anyhow::ensure!(errors.is_empty(), "{event}\nrefused by its schema: {errors:?}");
            } else {
                anyhow::ensure!(!errors.is_empty(), "{event}\naccepted by the schema of {name}");
            }
        }
        first.entry(kind.to_string()).or_insert(event);
    }
    let seen: Vec<&str> = first.keys().map(String::as_str).collect();
    let mut expected = TYPES.to_vec();
    expected.sort_unstable();
    anyhow::ensure!(seen == expected, "types seen: {seen:?}");

    for (kind, event) in first {
        let validator = validators.get(kind.as_str()).context("no validator")?;
        for (mutation, copy) in mutations(event) {
            anyhow::ensure!(!validator.is_valid(&copy), "{kind}'s schema accepts {mutation}: {copy}");
        }
    }
    Ok(())
}
