//! Tokens: login, refresh, and the tokens that must be refused.

use jsonwebtoken::{encode, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{base64url, TestApp, JWT_SECRET};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[tokio::test]
async fn bad_tokens_are_refused() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (id, token) = app.user("ada").await?;
    assert_eq!(app.get("/v1/users/me", Some(&token)).await?.status, StatusCode::OK);

    let missing = app.get("/v1/users/me", None).await?;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.code(), "missing_token");

    // Flip a character of the signature.
    let mut tampered = token.clone().into_bytes();
    if let Some(last) = tampered.last_mut() {
        *last = if *last == b'A' { b'B' } else { b'A' };
    }
    let tampered = String::from_utf8(tampered)?;
    let reply = app.get("/v1/users/me", Some(&tampered)).await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.code(), "invalid_token");

    // A payload changed to another user, with the old signature.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = json!({"sub": uuid::Uuid::new_v4().to_string(), "iss": "wallet", "aud": "wallet-api",
                               "exp": now() + 600, "iat": now()});
    let forged = format!("{}.{}.{}", parts[0], base64url(forged_claims.to_string().as_bytes()), parts[2]);
    assert_eq!(app.get("/v1/users/me", Some(&forged)).await?.status, StatusCode::UNAUTHORIZED);

    // alg: none.
    let claims = json!({"sub": id, "iss": "wallet", "aud": "wallet-api", "exp": now() + 600, "iat": now()});
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{header}.{}.", base64url(claims.to_string().as_bytes()));
    let reply = app.get("/v1/users/me", Some(&unsigned)).await?;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    // Right key, wrong audience; right key, expired; right key, no exp.
    let key = EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let wrong_audience = json!({"sub": id, "iss": "wallet", "aud": "other", "exp": now() + 600});
    let expired = json!({"sub": id, "iss": "wallet", "aud": "wallet-api", "exp": now() - 600});
    let no_exp = json!({"sub": id, "iss": "wallet", "aud": "wallet-api"});
    for (claims, code) in
        [(wrong_audience, "invalid_token"), (expired, "token_expired"), (no_exp, "invalid_token")]
    {
        let token = encode(&Header::default(), &claims, &key)?;
        let reply = app.get("/v1/users/me", Some(&token)).await?;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{claims}");
        assert_eq!(reply.code(), code, "{claims}");
    }
    Ok(())
}

#[tokio::test]
async fn logins_and_refresh_tokens() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let email = "kim@example.com";
    let body = json!({"email": email, "password": "long enough pw", "name": "Kim"});
    assert_eq!(app.post("/v1/users", None, &body).await?.status, StatusCode::CREATED);
    let again = app.post("/v1/users", None, &body).await?;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "email_taken");

    let wrong =
        app.post("/v1/auth/token", None, &json!({"email": email, "password": "wrong password"})).await?;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.code(), "invalid_credentials");
    let nobody = app
        .post("/v1/auth/token", None, &json!({"email": "no@example.com", "password": "whatever1"}))
        .await?;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);

    let login =
        app.post("/v1/auth/token", None, &json!({"email": email, "password": "long enough pw"})).await?;
    assert_eq!(login.status, StatusCode::OK);
    assert_eq!(login.body["token_type"], "Bearer");
    let refresh_token = login.body["refresh_token"].clone();
    let refreshed = app.post("/v1/auth/refresh", None, &json!({"refresh_token": refresh_token})).await?;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.body);
    let access = refreshed.body["access_token"].as_str().unwrap_or_default().to_string();
    assert_eq!(app.get("/v1/users/me", Some(&access)).await?.status, StatusCode::OK);
    let reused = app.post("/v1/auth/refresh", None, &json!({"refresh_token": refresh_token})).await?;
    assert_eq!(reused.status, StatusCode::UNAUTHORIZED, "a refresh token works once");
    Ok(())
}
