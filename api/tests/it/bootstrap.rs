//! The administrator made at start: the real binary, restarted with changed
//! settings. Sign-up is open and emails are not verified, so a user who
//! signed up with the address an operator configures later must not become
//! the administrator.

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{failed_start, stored_users, Server};

const ADMIN_PASSWORD: &str = "admin-password-1";

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
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn login(base: &str, email: &str, password: &str) -> anyhow::Result<(StatusCode, Value)> {
    post(base, "/v1/auth/token", None, &json!({"email": email, "password": password})).await
}

fn stop(mut server: Server) -> anyhow::Result<()> {
    server.signal("-TERM")?;
    anyhow::ensure!(server.wait()?.success(), "the server did not stop cleanly");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_signed_up_with_the_admin_email_is_not_promoted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Some(ADMIN_PASSWORD))?;
    let sign_up = json!({"email": "boss@example.com", "password": "her own password", "name": "Boss"});
    assert_eq!(post(&server.base, "/v1/users", None, &sign_up).await?.0, StatusCode::CREATED);
    stop(server)?;

    // The operator now names her address as the administrator's.
    let stderr = failed_start(dir.path(), None, &["--admin-email", "boss@example.com"]).await?;
    assert!(stderr.contains("boss@example.com") && stderr.contains("not an administrator"), "{stderr}");
    let stderr =
        failed_start(dir.path(), Some(ADMIN_PASSWORD), &["--admin-email", "Boss@Example.com"]).await?;
    assert!(stderr.contains("not an administrator"), "a configured password changes nothing: {stderr}");

    // Nothing changed: she is a user with her own password, the admin is the admin.
    let server = Server::start(dir.path(), Some(ADMIN_PASSWORD))?;
    let (status, tokens) = login(&server.base, "boss@example.com", "her own password").await?;
    assert_eq!(status, StatusCode::OK);
    let token = tokens["access_token"].as_str().context("no token")?;
    let me: Value =
        client()?.get(format!("{}/v1/users/me", server.base)).bearer_auth(token).send().await?.json().await?;
    assert_eq!(me["role"], "user");
    let (_, admin) = login(&server.base, "admin@wallet.local", ADMIN_PASSWORD).await?;
    let admin_token = admin["access_token"].as_str().context("no admin token")?;
    let admin: Value = client()?
        .get(format!("{}/v1/users/me", server.base))
        .bearer_auth(admin_token)
        .send()
        .await?
        .json()
        .await?;
    stop(server)?;

    // The administrator's id was recorded when it was made.
    let (users, _nats) = stored_users(dir.path()).await?;
    let recorded = users.meta(wallet_api::bootstrap::ADMIN_ID_KEY)?.context("no admin id recorded")?;
    assert_eq!(uuid::Uuid::from_slice(&recorded)?.to_string(), admin["id"].as_str().unwrap_or_default());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_reset_from_the_configuration_revokes_the_admins_sessions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Some(ADMIN_PASSWORD))?;
    let (status, tokens) = login(&server.base, "admin@wallet.local", ADMIN_PASSWORD).await?;
    assert_eq!(status, StatusCode::OK);
    let refresh_token = tokens["refresh_token"].clone();
    stop(server)?;

    // Same password: nothing is revoked.
    let server = Server::start(dir.path(), Some(ADMIN_PASSWORD))?;
    let (status, tokens) =
        post(&server.base, "/v1/auth/refresh", None, &json!({"refresh_token": refresh_token})).await?;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let refresh_token = tokens["refresh_token"].clone();
    stop(server)?;

    // A new one (the operator lost the old): every earlier session ends.
    let server = Server::start(dir.path(), Some("a new admin password"))?;
    let (status, body) =
        post(&server.base, "/v1/auth/refresh", None, &json!({"refresh_token": refresh_token})).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(login(&server.base, "admin@wallet.local", ADMIN_PASSWORD).await?.0, StatusCode::UNAUTHORIZED);
    assert_eq!(login(&server.base, "admin@wallet.local", "a new admin password").await?.0, StatusCode::OK);
    stop(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_password_is_shown_once_on_stderr_with_a_note_to_change_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), None)?;
    let password = server.password.clone().context("no generated password on stderr")?;
    assert!(
        server.password_line.as_deref().is_some_and(|l| l.contains("change it")),
        "{:?}",
        server.password_line
    );
    assert_eq!(login(&server.base, "admin@wallet.local", &password).await?.0, StatusCode::OK);
    stop(server)?;
    let server = Server::start(dir.path(), None)?;
    assert_eq!(server.password, None, "shown once");
    stop(server)
}
