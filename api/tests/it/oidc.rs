//! Tokens of an external issuer, checked against its JWKS: a file, or a URL
//! served by a small HTTP server inside the test to the real `wallet` binary.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode as ServedStatus;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::helpers::{base64url, failed_start, Server, TestApp};

const ISSUER: &str = "https://idp.example.com/";
const AUDIENCE: &str = "wallet";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[tokio::test]
async fn an_external_issuers_tokens_are_accepted_and_checked() -> anyhow::Result<()> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("generating a key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("reading the key"))?;
    let public = pair.public_key().as_ref().to_vec();
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": base64url(&public), "kid": "k1",
                                "use": "sig", "alg": "EdDSA"}]});
    let dir = tempfile::tempdir()?;
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string())?;
    let jwks_path = jwks_file.to_string_lossy().to_string();
    let data = tempfile::tempdir()?;
    let flags =
        ["--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE, "--oidc-jwks-file", jwks_path.as_str()];
    let app = TestApp::spawn_with(data, &flags).await?;

    let key = EncodingKey::from_ed_der(pkcs8.as_ref());
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".to_string());
    let claims = |iss: &str, aud: &str| {
        json!({"sub": "auth0|42", "iss": iss, "aud": aud, "exp": now() + 600, "email": "sam@example.com",
               "name": "Sam"})
    };
    let token = encode(&header, &claims(ISSUER, AUDIENCE), &key)?;
    let me = app.get("/v1/users/me", Some(&token)).await?;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["role"], "user");
    assert_eq!(me.body["name"], "Sam");
    let again = app.get("/v1/users/me", Some(&token)).await?;
    assert_eq!(again.body["id"], me.body["id"], "the same subject is the same user");
    let account = app.account(&token).await?;
    assert_eq!(app.available(&token, &account).await?, "0");

    for (label, bad) in [
        ("other issuer", encode(&header, &claims("https://evil.example.com/", AUDIENCE), &key)?),
        ("other audience", encode(&header, &claims(ISSUER, "other"), &key)?),
    ] {
        let reply = app.get("/v1/users/me", Some(&bad)).await?;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{label}");
    }
    let mut unknown_key = header.clone();
    unknown_key.kid = Some("k2".to_string());
    let token = encode(&unknown_key, &claims(ISSUER, AUDIENCE), &key)?;
    assert_eq!(app.get("/v1/users/me", Some(&token)).await?.status, StatusCode::UNAUTHORIZED);

    // Algorithm confusion: HS256 "signed" with the issuer's public key.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(ISSUER, AUDIENCE),
        &EncodingKey::from_secret(&public),
    )?;
    assert_eq!(app.get("/v1/users/me", Some(&confused)).await?.status, StatusCode::UNAUTHORIZED);

    // A key from another pair, same kid.
    let other = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("generating a key"))?;
    let forged = encode(&header, &claims(ISSUER, AUDIENCE), &EncodingKey::from_ed_der(other.as_ref()))?;
    let reply = app.get("/v1/users/me", Some(&forged)).await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    Ok(())
}

/// An Ed25519 key of the issuer, with its key id.
struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl SigningKey {
    fn generate(kid: &str) -> anyhow::Result<SigningKey> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| anyhow::anyhow!("generating a key"))?;
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| anyhow::anyhow!("reading the key"))?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(SigningKey { kid: kid.to_string(), pkcs8: pkcs8.as_ref().to_vec(), public })
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": base64url(&self.public), "kid": self.kid,
               "use": "sig", "alg": "EdDSA"})
    }

    /// A valid token signed with this key, its header naming `kid`.
    fn token_named(&self, kid: &str) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.to_string());
        let claims = json!({"sub": "oidc|7", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600});
        Ok(encode(&header, &claims, &EncodingKey::from_ed_der(&self.pkcs8))?)
    }

    fn token(&self) -> anyhow::Result<String> {
        self.token_named(&self.kid)
    }
}

fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()})
}

/// What the JWKS server serves, and how often it was asked.
#[derive(Default)]
struct Served {
    jwks: Mutex<Value>,
    hits: AtomicUsize,
    failing: AtomicBool,
}

/// An HTTP server on loopback serving a JWKS at `/jwks.json`; stops on drop.
struct JwksServer {
    url: String,
    served: Arc<Served>,
    _shutdown: oneshot::Sender<()>,
}

async fn serve_jwks(State(served): State<Arc<Served>>) -> Response {
    served.hits.fetch_add(1, Ordering::SeqCst);
    if served.failing.load(Ordering::SeqCst) {
        return ServedStatus::INTERNAL_SERVER_ERROR.into_response();
    }
    let jwks = served.jwks.lock().map(|j| j.clone()).unwrap_or(Value::Null);
    Json(jwks).into_response()
}

impl JwksServer {
    async fn start(jwks: Value) -> anyhow::Result<JwksServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/jwks.json", listener.local_addr()?);
        let served = Arc::new(Served { jwks: Mutex::new(jwks), ..Served::default() });
        let router = Router::new().route("/jwks.json", get(serve_jwks)).with_state(served.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        tokio::spawn(serve.into_future());
        Ok(JwksServer { url, served, _shutdown: tx })
    }

    fn hits(&self) -> usize {
        self.served.hits.load(Ordering::SeqCst)
    }

    fn serve(&self, jwks: Value) {
        if let Ok(mut served) = self.served.jwks.lock() {
            *served = jwks;
        }
    }

    /// Waits until the JWKS has been asked for at least `hits` times.
    async fn wait_for_hits(&self, hits: usize, deadline: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + deadline;
        while self.hits() < hits {
            anyhow::ensure!(Instant::now() < end, "{} fetches of the JWKS, not {hits}", self.hits());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// The `wallet` binary reading the issuer's keys from `jwks_url`.
async fn start_wallet(dir: &std::path::Path, jwks_url: &str, extra: &[&str]) -> anyhow::Result<Server> {
    let flags: Vec<String> =
        ["--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE, "--oidc-jwks-url", jwks_url]
            .into_iter()
            .chain(extra.iter().copied())
            .map(str::to_string)
            .collect();
    let dir = dir.to_path_buf();
    // The helper blocks while it waits: off the runtime, which serves the JWKS.
    tokio::task::spawn_blocking(move || {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Server::start_with(&dir, Some("admin-password-1"), &flags)
    })
    .await
    .context("joining the start")?
}

async fn me(base: &str, token: &str) -> anyhow::Result<StatusCode> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let reply = client.get(format!("{base}/v1/users/me")).bearer_auth(token).send().await?;
    Ok(reply.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_fetched_from_a_jwks_url_and_again_for_a_new_key_id() -> anyhow::Result<()> {
    let first = SigningKey::generate("k1")?;
    let jwks_server = JwksServer::start(jwks(&[&first])).await?;
    let dir = tempfile::tempdir()?;
    let server = start_wallet(dir.path(), &jwks_server.url, &[]).await?;
    assert_eq!(jwks_server.hits(), 1, "fetched once at start");
    assert_eq!(me(&server.base, &first.token()?).await?, StatusCode::OK);
    assert_eq!(jwks_server.hits(), 1, "a known key id needs no fetch");

    // The issuer rotates: the new key replaces the old one.
    let second = SigningKey::generate("k2")?;
    jwks_server.serve(jwks(&[&second]));
    assert_eq!(me(&server.base, &second.token()?).await?, StatusCode::OK, "the new key id is fetched");
    assert_eq!(jwks_server.hits(), 2);
    assert_eq!(me(&server.base, &first.token()?).await?, StatusCode::UNAUTHORIZED, "the old key is gone");

    // Algorithm confusion still fails: HS256 "signed" with the public key.
    let claims = json!({"sub": "oidc|7", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600});
    let confused =
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&second.public))?;
    assert_eq!(me(&server.base, &confused).await?, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_ids_fetch_the_jwks_at_most_once_per_ten_seconds() -> anyhow::Result<()> {
    let key = SigningKey::generate("k1")?;
    let jwks_server = JwksServer::start(jwks(&[&key])).await?;
    let dir = tempfile::tempdir()?;
    let server = start_wallet(dir.path(), &jwks_server.url, &[]).await?;
    assert_eq!(jwks_server.hits(), 1);

    let started = Instant::now();
    for n in 0..40 {
        let bogus = key.token_named(&format!("bogus-{n}"))?;
        assert_eq!(me(&server.base, &bogus).await?, StatusCode::UNAUTHORIZED);
    }
    let mut flood = tokio::task::JoinSet::new();
    for n in 0..20 {
        let (base, bogus) = (server.base.clone(), key.token_named(&format!("flood-{n}"))?);
        flood.spawn(async move { me(&base, &bogus).await });
    }
    while let Some(reply) = flood.join_next().await {
        assert_eq!(reply??, StatusCode::UNAUTHORIZED);
    }
    let hits = jwks_server.hits();
    if started.elapsed() < Duration::from_secs(10) {
        assert_eq!(hits, 2, "the first unknown key id fetches; the others within 10 s do not");
    } else {
        assert!(hits <= 3, "{hits} fetches");
    }
    assert_eq!(me(&server.base, &key.token()?).await?, StatusCode::OK, "the known key still works");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_url_is_fetched_again_in_the_background_and_a_failed_fetch_keeps_the_keys(
) -> anyhow::Result<()> {
    let key = SigningKey::generate("k1")?;
    let jwks_server = JwksServer::start(jwks(&[&key])).await?;
    let dir = tempfile::tempdir()?;
    let server = start_wallet(dir.path(), &jwks_server.url, &["--oidc-jwks-refresh-seconds", "1"]).await?;
    jwks_server.wait_for_hits(3, Duration::from_secs(10)).await?;

    jwks_server.served.failing.store(true, Ordering::SeqCst);
    let hits = jwks_server.hits();
    jwks_server.wait_for_hits(hits + 2, Duration::from_secs(10)).await?;
    assert_eq!(me(&server.base, &key.token()?).await?, StatusCode::OK, "the keys held before still work");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_fails_clearly_when_the_jwks_url_cannot_be_fetched() -> anyhow::Result<()> {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/jwks.json", closed.local_addr()?);
    drop(closed);
    let oidc = ["--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE, "--oidc-jwks-url"];
    let dir = tempfile::tempdir()?;
    let stderr =
        failed_start(dir.path(), Some("admin-password-1"), &[&oidc[..], &[url.as_str()]].concat()).await?;
    assert!(stderr.contains(&format!("invalid setting oidc_jwks_url: fetching the JWKS {url}")), "{stderr}");

    let jwks_server = JwksServer::start(json!({"keys": []})).await?;
    jwks_server.served.failing.store(true, Ordering::SeqCst);
    let stderr = failed_start(
        dir.path(),
        Some("admin-password-1"),
        &[&oidc[..], &[jwks_server.url.as_str()]].concat(),
    )
    .await?;
    assert!(stderr.contains("HTTP status 500"), "{stderr}");

    jwks_server.served.failing.store(false, Ordering::SeqCst);
    let stderr = failed_start(
        dir.path(),
        Some("admin-password-1"),
        &[&oidc[..], &[jwks_server.url.as_str()]].concat(),
    )
    .await?;
    assert!(stderr.contains("holds no usable public key"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn exactly_one_of_a_jwks_file_and_a_jwks_url_is_needed() -> anyhow::Result<()> {
    let issuer = ["--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE];
    let both =
        [&issuer[..], &["--oidc-jwks-file", "jwks.json", "--oidc-jwks-url", "http://127.0.0.1:1/"]].concat();
    let neither = issuer.to_vec();
    for (flags, words) in [(both, "not both"), (neither, "--oidc-jwks-url or --oidc-jwks-file")] {
        let error = TestApp::spawn_with(tempfile::tempdir()?, &flags).await.err().context("it started")?;
        assert!(format!("{error:#}").contains(words), "{error:#}");
    }
    let error =
        TestApp::spawn_with(tempfile::tempdir()?, &[&issuer[..], &["--oidc-jwks-url", "ftp://x/"]].concat())
            .await
            .err()
            .context("it started")?;
    assert!(format!("{error:#}").contains("must be https"), "{error:#}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_must_be_https_off_this_host_and_redirects_are_not_followed() -> anyhow::Result<()> {
    let oidc = ["--oidc-issuer", ISSUER, "--oidc-audience", AUDIENCE, "--oidc-jwks-url"];
    // In the clear from another host, anyone on the path could hand us keys.
    let cleartext = [&oidc[..], &["http://idp.example.com/jwks.json"]].concat();
    let error = TestApp::spawn_with(tempfile::tempdir()?, &cleartext).await.err().context("it started")?;
    assert!(format!("{error:#}").contains("must be https"), "{error:#}");

    // A redirect could lead anywhere: the start fails rather than follow it.
    let key = SigningKey::generate("k1")?;
    let jwks_server = JwksServer::start(jwks(&[&key])).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let redirecting = format!("http://{}/jwks.json", listener.local_addr()?);
    let target = jwks_server.url.clone();
    let router = Router::new().route("/jwks.json", get(move || async move { Redirect::temporary(&target) }));
    tokio::spawn(axum::serve(listener, router).into_future());
    let dir = tempfile::tempdir()?;
    let stderr =
        failed_start(dir.path(), Some("admin-password-1"), &[&oidc[..], &[redirecting.as_str()]].concat())
            .await?;
    assert!(stderr.contains("redirects are not followed"), "{stderr}");
    assert_eq!(jwks_server.hits(), 0, "the redirect was not followed");
    Ok(())
}
