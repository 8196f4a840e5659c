//! Accounts: object-level authorization and admin-only operations.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{new_id, TestApp};

#[tokio::test]
async fn another_users_account_is_not_found() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, ada) = app.user("ada").await?;
    let (_, eve) = app.user("eve").await?;
    let adas = app.account(&ada).await?;
    let eves = app.account(&eve).await?;
    assert_eq!(app.deposit(&adas, "100").await?.status, StatusCode::CREATED);

    let read = app.get(&format!("/v1/accounts/{adas}"), Some(&eve)).await?;
    assert_eq!(read.status, StatusCode::NOT_FOUND);
    assert_eq!(read.code(), "account_not_found");

    let theft = json!({"id": new_id(), "from_account_id": adas, "to_account_id": eves, "amount": "100"});
    let reply = app.post("/v1/transfers", Some(&eve), &theft).await?;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let withdrawal = json!({"id": new_id(), "account_id": adas, "amount": "100"});
    assert_eq!(app.post("/v1/withdrawals", Some(&eve), &withdrawal).await?.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.post(&format!("/v1/accounts/{adas}/close"), Some(&eve), &json!({})).await?.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.available(&ada, &adas).await?, "100");

    let listed = app.get("/v1/accounts", Some(&eve)).await?;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1));
    // The admin sees everyone's.
    assert_eq!(
        app.get(&format!("/v1/accounts/{adas}"), Some(&app.admin_token)).await?.status,
        StatusCode::OK
    );
    Ok(())
}

#[tokio::test]
async fn admin_operations_refuse_users() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, token) = app.user("mallory").await?;
    let account = app.account(&token).await?;

    let deposit = json!({"id": new_id(), "account_id": account, "amount": "100"});
    let reply = app.post("/v1/deposits", Some(&token), &deposit).await?;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.code(), "forbidden");
    for action in ["freeze", "unfreeze"] {
        let reply = app.post(&format!("/v1/accounts/{account}/{action}"), Some(&token), &json!({})).await?;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{action}");
    }
    let unlimited = json!({"asset": "USD", "scale": 2, "flags": {"debits_must_not_exceed_credits": false}});
    assert_eq!(app.post("/v1/accounts", Some(&token), &unlimited).await?.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/v1/users", Some(&token)).await?.status, StatusCode::FORBIDDEN);

    // The admin may, and a frozen account neither sends nor receives.
    let frozen =
        app.post(&format!("/v1/accounts/{account}/freeze"), Some(&app.admin_token), &json!({})).await?;
    assert_eq!(frozen.status, StatusCode::OK, "{}", frozen.body);
    assert_eq!(frozen.body["status"], "frozen");
    let reply = app.deposit(&account, "100").await?;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.code(), "credit_account_frozen");
    assert_eq!(app.get("/v1/users", Some(&app.admin_token)).await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn profile_reads_and_updates() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (id, token) = app.user("zoe").await?;
    let me = app.get("/v1/users/me", Some(&token)).await?;
    assert_eq!(me.body["id"], id.as_str());
    assert_eq!(me.body["role"], "user");
    let patched =
        app.send(reqwest::Method::PATCH, "/v1/users/me", Some(&token), Some(&json!({"name": "Zoë"}))).await?;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(patched.body["name"], "Zoë");
    let escalate = app
        .send(reqwest::Method::PATCH, "/v1/users/me", Some(&token), Some(&json!({"role": "admin"})))
        .await?;
    assert_eq!(escalate.status, StatusCode::BAD_REQUEST);
    assert_eq!(escalate.code(), "unknown_field");
    Ok(())
}

#[tokio::test]
async fn an_admin_cannot_hand_one_users_account_to_another() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, ada) = app.user("ada").await?;
    let (eve_id, eve) = app.user("eve").await?;
    let adas = app.account(&ada).await?;
    let body = json!({"id": adas, "user_id": eve_id, "asset": "USD", "scale": 2});
    let reply = app.post("/v1/accounts", Some(&app.admin_token), &body).await?;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.code(), "account_exists");
    let listed = app.get("/v1/accounts", Some(&eve)).await?;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(0), "{}", listed.body);
    Ok(())
}

#[tokio::test]
async fn an_iso_currency_takes_its_scale_from_iso_4217() -> anyhow::Result<()> {
    let app = TestApp::spawn_with(tempfile::tempdir()?, &["--assets", "BTC:8,XAU:3"]).await?;
    let (_, token) = app.user("ada").await?;
    for (asset, scale) in [("USD", 2), ("EUR", 2), ("JPY", 0), ("KWD", 3), ("CLF", 4)] {
        let reply = app.post("/v1/accounts", Some(&token), &json!({"asset": asset})).await?;
        assert_eq!(reply.status, StatusCode::CREATED, "{asset}: {}", reply.body);
        assert_eq!(reply.body["scale"], scale, "{asset}");
    }
    // The scale ISO gives may be repeated, and another asset names its own.
    let same = app.post("/v1/accounts", Some(&token), &json!({"asset": "USD", "scale": 2})).await?;
    assert_eq!(same.status, StatusCode::CREATED, "{}", same.body);
    for (body, scale) in [(json!({"asset": "BTC", "scale": 8}), 8), (json!({"asset": "XAU", "scale": 3}), 3)]
    {
        let reply = app.post("/v1/accounts", Some(&token), &body).await?;
        assert_eq!(reply.status, StatusCode::CREATED, "{body}: {}", reply.body);
        assert_eq!(reply.body["scale"], scale, "{body}");
    }

    let refused = [
        // A configured asset has its configured scale.
        (json!({"asset": "BTC", "scale": 2}), "scale_mismatch"),
        (json!({"asset": "USD", "scale": 3}), "scale_mismatch"),
        (json!({"asset": "JPY", "scale": 2}), "scale_mismatch"),
        (json!({"asset": "usd"}), "malformed_asset"),
        (json!({"asset": "BTC", "scale": 19}), "malformed_asset"),
    ];
    for (body, code) in refused {
        let reply = app.post("/v1/accounts", Some(&token), &body).await?;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.body);
        assert_eq!(reply.code(), code, "{body}");
        assert_eq!(reply.content_type, "application/problem+json");
    }
    let listed = app.get("/v1/accounts", Some(&token)).await?;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(8), "a refusal opens nothing");
    app.stop().await?;
    Ok(())
}
