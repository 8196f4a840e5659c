//! Business limits on accounts: a cap on the accounts one user may open
//! (per-account limits and velocity rules mean little if anyone can open
//! accounts without end), and an allow-list of assets (each new asset
//! opens a settlement account that stays for ever).

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::TestApp;

#[tokio::test]
async fn a_user_opens_at_most_the_configured_number_of_accounts() -> anyhow::Result<()> {
    let app = TestApp::spawn_with(tempfile::tempdir()?, &["--accounts-per-user-max", "3"]).await?;
    let (user_id, token) = app.user("opal").await?;
    for _ in 0..3 {
        app.account(&token).await?;
    }
    let fourth = app.post("/v1/accounts", Some(&token), &json!({"asset": "EUR"})).await?;
    assert_eq!(
        (fourth.status, fourth.code()),
        (StatusCode::CONFLICT, "too_many_accounts"),
        "{}",
        fourth.body
    );
    let listed = app.get("/v1/accounts", Some(&token)).await?;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(3), "the refusal opened nothing");
    // Not even the settlement account of the asset nobody holds yet.
    let euro = wallet_actors::settlement_account_id(&wallet_actors::Asset::new("EUR", 2)?);
    let settlement = wallet_actors::events::uuid_text(euro.get());
    let read = app.get(&format!("/v1/accounts/{settlement}"), Some(&app.admin_token)).await?;
    assert_eq!(
        read.status,
        StatusCode::NOT_FOUND,
        "the refusal opened the EUR settlement account: {}",
        read.body
    );
    // Another user has a cap of their own, and an administrator may open more.
    let (_, other) = app.user("pearl").await?;
    app.account(&other).await?;
    let by_admin = app
        .post("/v1/accounts", Some(&app.admin_token), &json!({"asset": "USD", "user_id": user_id}))
        .await?;
    assert_eq!(by_admin.status, StatusCode::CREATED, "{}", by_admin.body);
    Ok(())
}

#[tokio::test]
async fn only_iso_4217_and_configured_assets_may_be_opened() -> anyhow::Result<()> {
    let app = TestApp::spawn_with(tempfile::tempdir()?, &["--assets", "BTC:8"]).await?;
    let (_, token) = app.user("quinn").await?;
    for body in [json!({"asset": "DOGE", "scale": 8}), json!({"asset": "XTS", "scale": 2})] {
        let reply = app.post("/v1/accounts", Some(&token), &body).await?;
        assert_eq!((reply.status, reply.code()), (StatusCode::BAD_REQUEST, "asset_not_allowed"), "{body}");
        let by_admin = app.post("/v1/accounts", Some(&app.admin_token), &body).await?;
        assert_eq!(by_admin.code(), "asset_not_allowed", "admins too: the operator chooses the assets");
    }
    let bitcoin = app.post("/v1/accounts", Some(&token), &json!({"asset": "BTC"})).await?;
    assert_eq!(
        (bitcoin.status, &bitcoin.body["scale"]),
        (StatusCode::CREATED, &json!(8)),
        "{}",
        bitcoin.body
    );
    let listed = app.get("/v1/accounts", Some(&token)).await?;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1));
    Ok(())
}
