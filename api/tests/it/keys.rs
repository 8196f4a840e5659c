//! Token signing keys, against the real binary: a generated secret is a
//! 0600 file in a 0700 data directory, and tokens name their key (`kid`),
//! so a key rotates without logging anyone out.

use std::os::unix::fs::PermissionsExt;

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{node_mode, Server};

const OLD_SECRET: &str = "an old secret of at least thirty-two bytes";
const NEW_SECRET: &str = "a new secret of at least thirty-two bytes!";

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

async fn admin_token(base: &str) -> anyhow::Result<String> {
    let body = json!({"email": "admin@wallet.local", "password": "admin-password-1"});
    let reply: Value =
        client()?.post(format!("{base}/v1/auth/token")).json(&body).send().await?.json().await?;
    reply["access_token"].as_str().map(str::to_string).context("no access token")
}

async fn me(base: &str, token: &str) -> anyhow::Result<StatusCode> {
    Ok(client()?.get(format!("{base}/v1/users/me")).bearer_auth(token).send().await?.status())
}

fn kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

fn stop(mut server: Server) -> anyhow::Result<()> {
    server.signal("-TERM")?;
    anyhow::ensure!(server.wait()?.success(), "the server did not stop cleanly");
    Ok(())
}

fn mode(path: &std::path::Path) -> anyhow::Result<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_secret_is_a_file_only_its_owner_reads() -> anyhow::Result<()> {
    let parent = tempfile::tempdir()?;
    let data = parent.path().join("data");
    std::fs::create_dir(&data)?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755))?;
    let server = Server::start(&data, Some("admin-password-1"))?;
    let token = admin_token(&server.base).await?;
    stop(server)?;
    let secret_file = data.join("jwt_secret");
    if node_mode() {
        // The nodes of a cluster share one, in their shared directory.
        assert!(!secret_file.exists(), "a node made a secret of its own");
    } else {
        assert_eq!(mode(&secret_file)?, 0o600);
    }
    assert_eq!(mode(&data)?, 0o700, "the data directory holds password hashes too");
    // The same secret at the next start: tokens stay valid.
    let server = Server::start(&data, Some("admin-password-1"))?;
    assert_eq!(me(&server.base, &token).await?, StatusCode::OK);
    stop(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotates_without_logging_anyone_out() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &["--jwt-secret", OLD_SECRET])?;
    let before = admin_token(&server.base).await?;
    stop(server)?;

    let rotating = ["--jwt-secret", NEW_SECRET, "--jwt-previous-secret", OLD_SECRET];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &rotating)?;
    assert_eq!(me(&server.base, &before).await?, StatusCode::OK, "the old key still checks its tokens");
    let after = admin_token(&server.base).await?;
    assert!(kid(&before).is_some() && kid(&after).is_some() && kid(&before) != kid(&after));
    stop(server)?;

    let server = Server::start_with(dir.path(), Some("admin-password-1"), &["--jwt-secret", NEW_SECRET])?;
    assert_eq!(me(&server.base, &after).await?, StatusCode::OK);
    assert_eq!(me(&server.base, &before).await?, StatusCode::UNAUTHORIZED, "the old key is retired");
    stop(server)
}
