//! Sessions: refresh-token families with reuse detection, the absolute
//! lifetime, logout, password changes, disabled users, and token
//! responses no cache keeps.

use std::time::Duration;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{Reply, TestApp};

const PASSWORD: &str = "correct horse battery";

/// Signs up a user; returns their id, email and first token response.
async fn user_with_session(app: &TestApp) -> anyhow::Result<(String, String, Value)> {
    let email = format!("s-{}@example.com", Uuid::new_v4().simple());
    let body = json!({"email": email, "password": PASSWORD, "name": "Sam"});
    let signed_up = app.post("/v1/users", None, &body).await?;
    anyhow::ensure!(signed_up.status == StatusCode::CREATED, "sign-up: {}", signed_up.body);
    let id = signed_up.body["id"].as_str().context("no id")?.to_string();
    let login = login(app, &email, PASSWORD).await?;
    anyhow::ensure!(login.status == StatusCode::OK, "login: {}", login.body);
    Ok((id, email, login.body))
}

async fn login(app: &TestApp, email: &str, password: &str) -> anyhow::Result<Reply> {
    app.post("/v1/auth/token", None, &json!({"email": email, "password": password})).await
}

async fn refresh(app: &TestApp, refresh_token: &Value) -> anyhow::Result<Reply> {
    app.post("/v1/auth/refresh", None, &json!({"refresh_token": refresh_token})).await
}

async fn me(app: &TestApp, tokens: &Value) -> anyhow::Result<Reply> {
    app.get("/v1/users/me", tokens["access_token"].as_str()).await
}

#[tokio::test]
async fn a_reused_refresh_token_revokes_the_whole_session() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, _, first) = user_with_session(&app).await?;
    // The thief refreshes first with the stolen token...
    let thief = refresh(&app, &first["refresh_token"]).await?;
    assert_eq!(thief.status, StatusCode::OK);
    // ...then the victim uses the same (now spent) token.
    let victim = refresh(&app, &first["refresh_token"]).await?;
    assert_eq!((victim.status, victim.code()), (StatusCode::UNAUTHORIZED, "refresh_token_reused"));
    // The thief's newer token is revoked with the family.
    let after = refresh(&app, &thief.body["refresh_token"]).await?;
    assert_eq!((after.status, after.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"));
    Ok(())
}

#[tokio::test]
async fn a_session_ends_at_its_absolute_lifetime_however_often_it_refreshes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let app = TestApp::spawn_with(dir, &["--session-lifetime-seconds", "2"]).await?;
    let (_, _, mut tokens) = user_with_session(&app).await?;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        let refreshed = refresh(&app, &tokens["refresh_token"]).await?;
        assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
        tokens = refreshed.body;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(started.elapsed())).await;
    let late = refresh(&app, &tokens["refresh_token"]).await?;
    assert_eq!((late.status, late.code()), (StatusCode::UNAUTHORIZED, "session_expired"));
    Ok(())
}

#[tokio::test]
async fn token_responses_are_not_stored_by_caches() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, email, tokens) = user_with_session(&app).await?;
    let requests = [
        ("/v1/auth/token", json!({"email": email, "password": PASSWORD})),
        ("/v1/auth/refresh", json!({"refresh_token": tokens["refresh_token"]})),
    ];
    for (path, body) in requests {
        let response = app.client.post(format!("{}{path}", app.base)).json(&body).send().await?;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let cache_control = response.headers().get("cache-control").and_then(|v| v.to_str().ok());
        assert_eq!(cache_control, Some("no-store"), "{path}");
    }
    Ok(())
}

#[tokio::test]
async fn logout_ends_every_session_of_the_caller() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, email, phone) = user_with_session(&app).await?;
    let laptop = login(&app, &email, PASSWORD).await?.body;
    let (_, _, bystander) = user_with_session(&app).await?;
    let logout = app.post("/v1/auth/logout", phone["access_token"].as_str(), &json!({})).await?;
    assert_eq!(logout.status, StatusCode::NO_CONTENT, "{}", logout.body);
    for tokens in [&phone, &laptop] {
        let refreshed = refresh(&app, &tokens["refresh_token"]).await?;
        assert_eq!((refreshed.status, refreshed.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"));
        let read = me(&app, tokens).await?;
        assert_eq!((read.status, read.code()), (StatusCode::UNAUTHORIZED, "token_revoked"));
    }
    assert_eq!(me(&app, &bystander).await?.status, StatusCode::OK, "other users keep their sessions");
    assert_eq!(refresh(&app, &bystander["refresh_token"]).await?.status, StatusCode::OK);
    // Logging in again works.
    let again = login(&app, &email, PASSWORD).await?;
    assert_eq!(me(&app, &again.body).await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_password_change_needs_the_current_password_and_ends_every_session() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_, email, tokens) = user_with_session(&app).await?;
    let access = tokens["access_token"].as_str();
    let change = |current: &str, new: &str| json!({"current_password": current, "new_password": new});

    let wrong =
        app.post("/v1/users/me/password", access, &change("not my password", "a new passphrase")).await?;
    assert_eq!((wrong.status, wrong.code()), (StatusCode::FORBIDDEN, "wrong_password"));
    let short = app.post("/v1/users/me/password", access, &change(PASSWORD, "short")).await?;
    assert_eq!((short.status, short.code()), (StatusCode::BAD_REQUEST, "invalid_password"));
    assert_eq!(me(&app, &tokens).await?.status, StatusCode::OK, "refusals change nothing");

    let changed = app.post("/v1/users/me/password", access, &change(PASSWORD, "a new passphrase")).await?;
    assert_eq!(changed.status, StatusCode::NO_CONTENT, "{}", changed.body);
    assert_eq!(me(&app, &tokens).await?.code(), "token_revoked");
    assert_eq!(refresh(&app, &tokens["refresh_token"]).await?.status, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&app, &email, PASSWORD).await?.status, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&app, &email, "a new passphrase").await?.status, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn a_disabled_users_tokens_stop_working_at_once() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (id, email, tokens) = user_with_session(&app).await?;
    let (other_id, _, other) = user_with_session(&app).await?;
    let admin = Some(app.admin_token.as_str());

    let by_a_user = app
        .post(&format!("/v1/users/{other_id}/disable"), tokens["access_token"].as_str(), &json!({}))
        .await?;
    assert_eq!(by_a_user.status, StatusCode::FORBIDDEN, "admins only");
    assert_eq!(me(&app, &other).await?.status, StatusCode::OK);

    let disabled = app.post(&format!("/v1/users/{id}/disable"), admin, &json!({})).await?;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    assert_eq!(disabled.body["disabled"], true);
    let read = me(&app, &tokens).await?;
    assert_eq!((read.status, read.code()), (StatusCode::UNAUTHORIZED, "user_disabled"));
    assert_eq!(refresh(&app, &tokens["refresh_token"]).await?.status, StatusCode::UNAUTHORIZED);
    let denied = login(&app, &email, PASSWORD).await?;
    assert_eq!((denied.status, denied.code()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
    assert_eq!(me(&app, &other).await?.status, StatusCode::OK, "only that user");

    let unknown = app.post(&format!("/v1/users/{}/disable", Uuid::new_v4()), admin, &json!({})).await?;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "user_not_found"));
    let me_admin = app.get("/v1/users/me", admin).await?;
    let admin_id = me_admin.body["id"].as_str().context("no admin id")?;
    let own = app.post(&format!("/v1/users/{admin_id}/disable"), admin, &json!({})).await?;
    assert_eq!((own.status, own.code()), (StatusCode::CONFLICT, "cannot_disable_self"));

    let enabled = app.post(&format!("/v1/users/{id}/enable"), admin, &json!({})).await?;
    assert_eq!((enabled.status, &enabled.body["disabled"]), (StatusCode::OK, &json!(false)));
    let again = login(&app, &email, PASSWORD).await?;
    assert_eq!(me(&app, &again.body).await?.status, StatusCode::OK);
    Ok(())
}
