//! Sessions: what a login starts and refresh tokens carry on, kept in the
//! user store's `sessions` tree ([`wallet_storage::sessions`]).
//!
//! A session is a family of refresh tokens. Each refresh spends the token
//! and hands out the next one of the family; only the newest is live. A
//! spent token presented again means two parties hold the family (the
//! token was stolen, and the thief or the victim refreshed first), so the
//! whole family is revoked: neither keeps the session (OAuth 2.0 Security
//! Best Current Practice, "refresh token rotation"). Two concurrent
//! refreshes with one token count as a reuse for the same reason.
//!
//! A session ends, whatever its refreshes, `lifetime` after its login
//! (its absolute lifetime), and earlier when its live token goes unused
//! for the refresh-token lifetime.
//!
//! A refresh token is `wrt_<user><family>_<secret>` (hex): the store keeps
//! the session under user ++ family, so ending every session of a user is
//! one prefix scan, and keeps only the SHA-256 of the live secret. A user
//! has at most [`SESSIONS_PER_USER_MAX`] sessions; a login beyond drops
//! the oldest, and drops the user's expired ones first.

use sha2::{Digest, Sha256};
use uuid::Uuid;
use wallet_storage::sessions::{SessionRecord, SessionStore};
use wallet_storage::users::UserStoreError;

use crate::random::{hex, random_token};

/// Most sessions one user holds at once.
pub const SESSIONS_PER_USER_MAX: usize = 64;

/// The prefix of refresh tokens.
const TOKEN_PREFIX: &str = "wrt_";

/// How long sessions and their tokens live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionPolicy {
    /// A refresh token unused for this long expires.
    pub refresh_ttl_ms: u64,
    /// A session ends this long after its login, however often it refreshes.
    pub lifetime_ms: u64,
}

/// What presenting a refresh token came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The live token: spent, and this is the next one.
    Rotated {
        /// Whose session.
        user_id: Uuid,
        /// The family's next refresh token.
        refresh_token: String,
    },
    /// A spent token of a live family: the family is revoked now.
    Reused {
        /// Whose session it was.
        user_id: Uuid,
    },
    /// The session reached its absolute lifetime; it is gone now.
    SessionExpired,
    /// Not a token of any session (malformed, revoked, unused too long).
    Unknown,
}

fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn token(user: Uuid, family: Uuid, secret: &str) -> String {
    format!("{TOKEN_PREFIX}{}{}_{secret}", user.simple(), family.simple())
}

/// The user, family and secret a refresh token names, if it is one of ours.
fn parse(token: &str) -> Option<(Uuid, Uuid, &str)> {
    let (ids, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
    if ids.len() != 64 || secret.is_empty() {
        return None;
    }
    let user = Uuid::try_parse(ids.get(..32)?).ok()?;
    let family = Uuid::try_parse(ids.get(32..)?).ok()?;
    Some((user, family, secret))
}

/// The user a refresh token names, if it is shaped like one of ours (it
/// may still be spent, revoked or made up).
pub fn token_user(token: &str) -> Option<Uuid> {
    parse(token).map(|(user, _, _)| user)
}

/// Starts a session of `user`, whose session epoch is `session_epoch`, at
/// `now_ms`; returns its first refresh token.
pub async fn start(
    sessions: &SessionStore,
    user: Uuid,
    session_epoch: u64,
    now_ms: u64,
    policy: SessionPolicy,
) -> Result<String, UserStoreError> {
    let family = Uuid::new_v4();
    let secret = random_token(32);
    let expires_at_ms = now_ms.saturating_add(policy.lifetime_ms);
    let record = SessionRecord {
        started_at_ms: now_ms,
        expires_at_ms,
        refresh_expires_at_ms: now_ms.saturating_add(policy.refresh_ttl_ms).min(expires_at_ms),
        secret_hash: secret_hash(&secret),
        session_epoch,
    };
    sessions.add(user, family, &record, now_ms, SESSIONS_PER_USER_MAX).await?;
    Ok(token(user, family, &secret))
}

/// Spends `refresh_token` at `now_ms` (see the module docs); a session
/// started in a session epoch other than `session_epoch`, the user's now,
/// is stale and ends (`Unknown`).
pub async fn refresh(
    sessions: &SessionStore,
    refresh_token: &str,
    session_epoch: u64,
    now_ms: u64,
    policy: SessionPolicy,
) -> Result<Refreshed, UserStoreError> {
    let Some((user, family, secret)) = parse(refresh_token) else { return Ok(Refreshed::Unknown) };
    let Some(mut session) = sessions.get(user, family).await? else { return Ok(Refreshed::Unknown) };
    if session.record.secret_hash != secret_hash(secret) {
        // In cluster mode the token may have been rotated on another node a
        // moment ago: judge it against every refresh acknowledged so far.
        sessions.catch_up().await?;
        let Some(now) = sessions.get(user, family).await? else { return Ok(Refreshed::Unknown) };
        session = now;
    }
    let record = &session.record;
    if record.secret_hash != secret_hash(secret) {
        tracing::warn!(user = %user, session = %family, "a spent refresh token was used again; the session is revoked");
        // Whatever the family's live token is now: it is no one's.
        sessions.remove(&session).await?;
        return Ok(Refreshed::Reused { user_id: user });
    }
    if now_ms >= record.expires_at_ms {
        sessions.end(&session).await?;
        return Ok(Refreshed::SessionExpired);
    }
    if now_ms >= record.refresh_expires_at_ms || record.session_epoch != session_epoch {
        sessions.end(&session).await?;
        return Ok(Refreshed::Unknown);
    }
    let next_secret = random_token(32);
    let next = SessionRecord {
        refresh_expires_at_ms: now_ms.saturating_add(policy.refresh_ttl_ms).min(record.expires_at_ms),
        secret_hash: secret_hash(&next_secret),
        ..record.clone()
    };
    if sessions.replace(&session, &next).await? {
        return Ok(Refreshed::Rotated { user_id: user, refresh_token: token(user, family, &next_secret) });
    }
    // Another refresh spent this token first: the token was used twice.
    tracing::warn!(user = %user, session = %family, "one refresh token was used twice at once; the session is revoked");
    sessions.remove(&session).await?;
    Ok(Refreshed::Reused { user_id: user })
}

#[cfg(test)]
mod tests {
    use wallet_storage::users::FILE_NAME;

    use super::*;

    const POLICY: SessionPolicy = SessionPolicy { refresh_ttl_ms: 100, lifetime_ms: 250 };

    fn store() -> anyhow::Result<(tempfile::TempDir, SessionStore)> {
        let dir = tempfile::tempdir()?;
        let users = wallet_storage::users::UserStore::open(&dir.path().join(FILE_NAME))?;
        Ok((dir, users.sessions().clone()))
    }

    fn rotated(outcome: Refreshed) -> anyhow::Result<String> {
        match outcome {
            Refreshed::Rotated { refresh_token, .. } => Ok(refresh_token),
            other => anyhow::bail!("not rotated: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reused_token_revokes_its_family_and_only_its_family() -> anyhow::Result<()> {
        let (_dir, store) = store()?;
        let user = Uuid::new_v4();
        let first = start(&store, user, 0, 0, POLICY).await?;
        let other = start(&store, user, 0, 0, POLICY).await?;
        let second = rotated(refresh(&store, &first, 0, 10, POLICY).await?)?;
        assert_eq!(refresh(&store, &first, 0, 20, POLICY).await?, Refreshed::Reused { user_id: user });
        assert_eq!(refresh(&store, &second, 0, 30, POLICY).await?, Refreshed::Unknown, "the family is gone");
        rotated(refresh(&store, &other, 0, 40, POLICY).await?)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_session_ends_at_its_absolute_lifetime_and_when_left_idle() -> anyhow::Result<()> {
        let (_dir, store) = store()?;
        let user = Uuid::new_v4();
        let mut token = start(&store, user, 0, 0, POLICY).await?;
        for now in [90, 180, 240] {
            token = rotated(refresh(&store, &token, 0, now, POLICY).await?)?;
        }
        assert_eq!(refresh(&store, &token, 0, 250, POLICY).await?, Refreshed::SessionExpired);
        let idle = start(&store, user, 0, 1000, POLICY).await?;
        assert_eq!(refresh(&store, &idle, 0, 1100, POLICY).await?, Refreshed::Unknown);
        Ok(())
    }

    #[tokio::test]
    async fn a_session_started_in_an_ended_epoch_is_stale() -> anyhow::Result<()> {
        let (_dir, store) = store()?;
        let user = Uuid::new_v4();
        // A login whose password was checked in epoch 0 writes its session
        // after a password change moved the user to epoch 1.
        let late = start(&store, user, 0, 0, POLICY).await?;
        assert_eq!(refresh(&store, &late, 1, 10, POLICY).await?, Refreshed::Unknown);
        assert_eq!(store.count(user)?, 0, "and it is gone");
        let current = start(&store, user, 1, 20, POLICY).await?;
        rotated(refresh(&store, &current, 1, 30, POLICY).await?)?;
        Ok(())
    }

    #[tokio::test]
    async fn malformed_tokens_are_unknown_and_sessions_per_user_are_bounded() -> anyhow::Result<()> {
        let (_dir, store) = store()?;
        let user = Uuid::new_v4();
        for text in ["", "wrt_", "wrt_abc_def", "xyz", &format!("wrt_{}{}_", user.simple(), user.simple())] {
            assert_eq!(refresh(&store, text, 0, 0, POLICY).await?, Refreshed::Unknown, "{text}");
        }
        let oldest = start(&store, user, 0, 0, POLICY).await?;
        for now in 1..(SESSIONS_PER_USER_MAX as u64 + 5) {
            start(&store, user, 0, now, POLICY).await?;
        }
        assert_eq!(store.count(user)?, SESSIONS_PER_USER_MAX);
        assert_eq!(
            refresh(&store, &oldest, 0, 80, POLICY).await?,
            Refreshed::Unknown,
            "the oldest went first"
        );
        assert_eq!(store.end_all(user).await?, SESSIONS_PER_USER_MAX);
        assert_eq!(store.count(user)?, 0);
        Ok(())
    }
}
