//! Deposits, transfers, replays, conflicts, holds, batches, and the books
//! surviving a restart.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{new_id, TestApp};

#[tokio::test]
async fn happy_path_sign_up_open_deposit_transfer_read() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("ada").await?;
    let first = app.account(&token).await?;
    let second = app.account(&token).await?;

    let deposit = app.deposit(&first, "1000").await?;
    assert_eq!(deposit.status, StatusCode::CREATED, "{}", deposit.body);
    assert_eq!(deposit.body["status"], "posted");

    let transfer_id = new_id();
    let body = json!({
        "id": transfer_id, "from_account_id": first, "to_account_id": second, "amount": "250",
        "reference": "rent", "metadata": {"invoice": 7}
    });
    let reply = app.post("/v1/transfers", Some(&token), &body).await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["amount"], "250");
    assert_eq!(reply.body["metadata"]["invoice"], 7);

    assert_eq!(app.available(&token, &first).await?, "750");
    assert_eq!(app.available(&token, &second).await?, "250");

    let read = app.get(&format!("/v1/transfers/{transfer_id}"), Some(&token)).await?;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["reference"], "rent");

    let listed = app.get("/v1/accounts", Some(&token)).await?;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(2));

    let withdrawal = json!({"id": new_id(), "account_id": second, "amount": "50"});
    let reply = app.post("/v1/withdrawals", Some(&token), &withdrawal).await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(app.available(&token, &second).await?, "200");

    let too_much =
        json!({"id": new_id(), "from_account_id": first, "to_account_id": second, "amount": "751"});
    let reply = app.post("/v1/transfers", Some(&token), &too_much).await?;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.code(), "insufficient_funds");
    assert_eq!(app.available(&token, &first).await?, "750", "a rejection changes nothing");

    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await?.text().await?;
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(metrics.contains("wallet_transfers_total"), "{metrics}");
    assert!(metrics.contains("wallet_journal_fsync_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("wallet_journal_batch_records_bucket"), "{metrics}");
    assert!(metrics.contains("wallet_shard_actors"), "{metrics}");
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn replays_return_the_first_outcome_and_conflicts_are_409() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("bob").await?;
    let from = app.account(&token).await?;
    let to = app.account(&token).await?;

    let deposit = json!({"id": new_id(), "account_id": from, "amount": "500"});
    let first = app.post("/v1/deposits", Some(&app.admin_token), &deposit).await?;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app.post("/v1/deposits", Some(&app.admin_token), &deposit).await?;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(app.available(&token, &from).await?, "500", "a replay moves nothing");

    let id = new_id();
    let body = json!({"id": id, "from_account_id": from, "to_account_id": to, "amount": "100"});
    assert_eq!(app.post("/v1/transfers", Some(&token), &body).await?.status, StatusCode::CREATED);
    assert_eq!(app.post("/v1/transfers", Some(&token), &body).await?.status, StatusCode::OK);
    assert_eq!(app.available(&token, &from).await?, "400");

    let changed = json!({"id": id, "from_account_id": from, "to_account_id": to, "amount": "101"});
    let conflict = app.post("/v1/transfers", Some(&token), &changed).await?;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(conflict.code(), "exists_with_different_fields");
    assert_eq!(conflict.content_type, "application/problem+json");
    assert_eq!(app.available(&token, &from).await?, "400");
    Ok(())
}

#[tokio::test]
async fn holds_post_and_void_and_batches_are_atomic() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("cy").await?;
    let from = app.account(&token).await?;
    let to = app.account(&token).await?;
    assert_eq!(app.deposit(&from, "1000").await?.status, StatusCode::CREATED);

    let hold = new_id();
    let body = json!({"id": hold, "from_account_id": from, "to_account_id": to, "amount": "300",
                      "pending": true, "timeout_seconds": 3600});
    let reply = app.post("/v1/transfers", Some(&token), &body).await?;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["status"], "pending");
    assert_eq!(app.available(&token, &from).await?, "700");

    let posted =
        app.post(&format!("/v1/transfers/{hold}/post"), Some(&token), &json!({"amount": "200"})).await?;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    assert_eq!(app.available(&token, &from).await?, "800");
    assert_eq!(app.available(&token, &to).await?, "200");
    let void = app.post(&format!("/v1/transfers/{hold}/void"), Some(&token), &json!({})).await?;
    assert_eq!(void.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(void.code(), "pending_transfer_already_posted");

    let batch = json!({"atomic": true, "transfers": [
        {"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": "100"},
        {"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": "100000"}
    ]});
    let reply = app.post("/v1/transfers/batch", Some(&token), &batch).await?;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["results"][0]["error"]["code"], "linked_transfer_failed");
    assert_eq!(reply.body["results"][1]["error"]["code"], "insufficient_funds");
    assert_eq!(app.available(&token, &from).await?, "800", "an atomic batch that fails moves nothing");

    let batch = json!({"atomic": false, "transfers": [
        {"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": "100"},
        {"id": new_id(), "from_account_id": from, "to_account_id": to, "amount": "100000"}
    ]});
    let reply = app.post("/v1/transfers/batch", Some(&token), &batch).await?;
    assert_eq!(reply.body["results"][0]["status"], 201, "{}", reply.body);
    assert_eq!(reply.body["results"][1]["status"], 422);
    assert_eq!(app.available(&token, &from).await?, "700");
    Ok(())
}

#[tokio::test]
async fn the_books_and_tokens_survive_a_graceful_restart() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("dee").await?;
    let account = app.account(&token).await?;
    assert_eq!(app.deposit(&account, "4200").await?.status, StatusCode::CREATED);
    let dir = app.stop().await?;

    let app = TestApp::spawn_in(dir).await?;
    assert_eq!(app.available(&token, &account).await?, "4200");
    let listed = app.get("/v1/accounts", Some(&token)).await?;
    assert_eq!(listed.body["items"][0]["id"], account.as_str());
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn history_pages_with_the_running_balance() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("hedy").await?;
    let (_, other) = app.user("mallory").await?;
    let first = app.account(&token).await?;
    let second = app.account(&token).await?;
    app.deposit(&first, "1000").await?;
    for amount in ["100", "200", "300"] {
        let body =
            json!({"id": new_id(), "from_account_id": first, "to_account_id": second, "amount": amount});
        let reply = app.post("/v1/transfers", Some(&token), &body).await?;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    // Page by two: deposit, 100, then 200, 300.
    let page = app.get(&format!("/v1/accounts/{first}/transfers?limit=2"), Some(&token)).await?;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let items = page.body["items"].as_array().cloned().unwrap_or_default();
    let available: Vec<_> = items.iter().map(|i| i["balance"]["available"].clone()).collect();
    // The opening (the account's first event) is not a transfer, and takes no place in a page.
    assert_eq!(available, vec![json!("1000"), json!("900")], "{}", page.body);
    let mut all = available;
    let mut cursor = page.body["next_cursor"].as_str().map(str::to_string);
    while let Some(next) = cursor {
        let page =
            app.get(&format!("/v1/accounts/{first}/transfers?limit=2&cursor={next}"), Some(&token)).await?;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        all.extend(
            page.body["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|i| i["balance"]["available"].clone()),
        );
        cursor = page.body["next_cursor"].as_str().map(str::to_string);
    }
    assert_eq!(all, vec![json!("1000"), json!("900"), json!("700"), json!("400")]);
    // Someone else's account is not found.
    let reply = app.get(&format!("/v1/accounts/{first}/transfers"), Some(&other)).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = app.get(&format!("/v1/accounts/{first}/transfers?cursor=x"), Some(&token)).await?;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_history_page_holds_limit_transfers_whatever_events_lie_between() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("hedy").await?;
    let first = app.account(&token).await?;
    let second = app.account(&token).await?;
    app.deposit(&first, "1000").await?;
    // Status changes are events of the account's history too, but not transfers.
    for action in ["freeze", "unfreeze", "freeze", "unfreeze"] {
        let reply =
            app.post(&format!("/v1/accounts/{first}/{action}"), Some(&app.admin_token), &json!({})).await?;
        assert_eq!(reply.status, StatusCode::OK, "{action}: {}", reply.body);
    }
    for amount in ["100", "200", "300"] {
        let body =
            json!({"id": new_id(), "from_account_id": first, "to_account_id": second, "amount": amount});
        assert_eq!(app.post("/v1/transfers", Some(&token), &body).await?.status, StatusCode::CREATED);
    }
    let expected = ["1000", "900", "700", "400"];
    for limit in [1, 2, 3, 4, 5] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let path = match &cursor {
                Some(after) => format!("/v1/accounts/{first}/transfers?limit={limit}&cursor={after}"),
                None => format!("/v1/accounts/{first}/transfers?limit={limit}"),
            };
            let page = app.get(&path, Some(&token)).await?;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            let items = page.body["items"].as_array().cloned().unwrap_or_default();
            let left = expected.len() - seen.len();
            assert_eq!(items.len(), limit.min(left), "limit {limit}, after {cursor:?}: {}", page.body);
            seen.extend(items.iter().map(|i| i["balance"]["available"].as_str().unwrap_or("").to_string()));
            cursor = page.body["next_cursor"].as_str().map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(seen, expected, "limit {limit}");
    }
    app.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_other_party_cannot_take_the_id_of_a_post_first() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, ada) = app.user("ada").await?;
    let (_, bob) = app.user("bob").await?;
    let adas = app.account(&ada).await?;
    let bobs = app.account(&bob).await?;
    let bobs_other = app.account(&bob).await?;
    assert_eq!(app.deposit(&adas, "1000").await?.status, StatusCode::CREATED);
    assert_eq!(app.deposit(&bobs, "10").await?.status, StatusCode::CREATED);
    let hold = new_id();
    let body = json!({"id": hold, "from_account_id": adas, "to_account_id": bobs, "amount": "300",
                      "pending": true});
    assert_eq!(app.post("/v1/transfers", Some(&ada), &body).await?.status, StatusCode::CREATED);

    // Bob, the credit side of the hold, knows how the server derives the id
    // of a post or void sent without one (the code is open), and tries to
    // spend it first on something of his own, by every route that takes an id.
    let pending = wallet_api::domain::transfer_id("id", &hold).map_err(anyhow::Error::msg)?;
    let mut derived = Vec::new();
    for what in ["post", "void"] {
        let id = wallet_api::domain::derived_transfer_id(pending, what).map_err(anyhow::Error::msg)?;
        derived.push(uuid::Uuid::from_u128(id.get()).to_string());
    }
    let his_hold = new_id();
    let body = json!({"id": his_hold, "from_account_id": bobs, "to_account_id": bobs_other, "amount": "5",
                      "pending": true});
    assert_eq!(app.post("/v1/transfers", Some(&bob), &body).await?.status, StatusCode::CREATED);
    for id in &derived {
        let transfer = json!({"id": id, "from_account_id": bobs, "to_account_id": bobs_other, "amount": "1"});
        let attempts = [
            ("/v1/transfers", transfer.clone()),
            ("/v1/withdrawals", json!({"id": id, "account_id": bobs, "amount": "1"})),
            (&format!("/v1/transfers/{his_hold}/post")[..], json!({"id": id})),
            (&format!("/v1/transfers/{his_hold}/void")[..], json!({"id": id})),
        ];
        for (path, body) in attempts {
            let reply = app.post(path, Some(&bob), &body).await?;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {}", reply.body);
            assert_eq!(reply.code(), "reserved_transfer_id", "{path}");
        }
        let batch = app.post("/v1/transfers/batch", Some(&bob), &json!({"transfers": [transfer]})).await?;
        assert_eq!(batch.body["results"][0]["error"]["code"], "reserved_transfer_id", "{}", batch.body);
        let deposit = json!({"id": id, "account_id": bobs, "amount": "1"});
        let reply = app.post("/v1/deposits", Some(&app.admin_token), &deposit).await?;
        assert_eq!(reply.code(), "reserved_transfer_id", "not even the admin");
    }
    // The name-based ids of before, unreserved, are ordinary ids now: taking them harms no one.
    let uuid = uuid::Uuid::parse_str(&hold)?;
    for what in ["post", "void"] {
        let old = uuid::Uuid::new_v5(&uuid, what.as_bytes()).to_string();
        let body = json!({"id": old, "from_account_id": bobs, "to_account_id": bobs_other, "amount": "1"});
        assert_eq!(app.post("/v1/transfers", Some(&bob), &body).await?.status, StatusCode::CREATED);
    }
    assert_eq!(app.available(&bob, &bobs).await?, "3", "10, less the 5 held and the two 1s");

    // Ada's post, without an id, still applies, and a retry is a replay.
    let posted = app.post(&format!("/v1/transfers/{hold}/post"), Some(&ada), &json!({})).await?;
    assert_eq!(posted.status, StatusCode::CREATED, "{}", posted.body);
    assert_eq!(posted.body["kind"], "post_pending");
    let again = app.post(&format!("/v1/transfers/{hold}/post"), Some(&ada), &json!({})).await?;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    assert_eq!(again.body["id"], posted.body["id"]);
    assert_eq!(posted.body["id"], derived[0].as_str());
    assert_eq!(app.available(&ada, &adas).await?, "700");
    let read = app.get(&format!("/v1/transfers/{}", derived[0]), Some(&bob)).await?;
    assert_eq!(read.status, StatusCode::OK, "a derived id may be read: {}", read.body);
    app.stop().await?;
    Ok(())
}
