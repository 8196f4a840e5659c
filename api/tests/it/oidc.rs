//! Tokens of an external issuer, checked against its JWKS file.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;

use crate::helpers::{base64url, TestApp};

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
