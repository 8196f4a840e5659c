//! Sessions: what a login starts and refresh tokens carry on, in the user
//! store's `sessions` tree.
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

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{hex, random_token};
use crate::users::UserStoreError;

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

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// When the login was (ms since the Unix epoch).
    pub started_at_ms: u64,
    /// When the session ends, however often it refreshes.
    pub expires_at_ms: u64,
    /// When the live refresh token expires if unused.
    pub refresh_expires_at_ms: u64,
    /// SHA-256 of the live refresh token's secret, hex.
    pub secret_hash: String,
    /// The user's session epoch at the login: a session started by a login
    /// that raced with the end of every session (its password checked just
    /// before a change, its session written just after) is stale once the
    /// epoch has moved on.
    #[serde(default)]
    pub session_epoch: u64,
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

/// The sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    db: sled::Db,
    tree: sled::Tree,
}

fn secret_hash(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn encode(record: &SessionRecord) -> Result<Vec<u8>, UserStoreError> {
    serde_json::to_vec(record).map_err(|_| UserStoreError::Decode { what: "session" })
}

fn decode(bytes: &[u8]) -> Result<SessionRecord, UserStoreError> {
    serde_json::from_slice(bytes).map_err(|_| UserStoreError::Decode { what: "session" })
}

fn key(user: Uuid, family: Uuid) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(user.as_bytes());
    key[16..].copy_from_slice(family.as_bytes());
    key
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

impl SessionStore {
    /// The sessions in `db`'s `sessions` tree.
    pub fn open(db: &sled::Db) -> Result<SessionStore, UserStoreError> {
        Ok(SessionStore { tree: db.open_tree("sessions")?, db: db.clone() })
    }

    async fn flush(&self) -> Result<(), UserStoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Starts a session of `user`, whose session epoch is `session_epoch`,
    /// at `now_ms`; returns its first refresh token.
    pub async fn start(
        &self,
        user: Uuid,
        session_epoch: u64,
        now_ms: u64,
        policy: SessionPolicy,
    ) -> Result<String, UserStoreError> {
        self.prune(user, now_ms)?;
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
        self.tree.insert(key(user, family), encode(&record)?)?;
        self.flush().await?;
        Ok(token(user, family, &secret))
    }

    /// Spends `refresh_token` at `now_ms` (see the module docs); a session
    /// started in a session epoch other than `session_epoch`, the user's
    /// now, is stale and ends (`Unknown`).
    pub async fn refresh(
        &self,
        refresh_token: &str,
        session_epoch: u64,
        now_ms: u64,
        policy: SessionPolicy,
    ) -> Result<Refreshed, UserStoreError> {
        let Some((user, family, secret)) = parse(refresh_token) else { return Ok(Refreshed::Unknown) };
        let key = key(user, family);
        let Some(current) = self.tree.get(key)? else { return Ok(Refreshed::Unknown) };
        let record = decode(&current)?;
        if record.secret_hash != secret_hash(secret) {
            tracing::warn!(user = %user, session = %family, "a spent refresh token was used again; the session is revoked");
            // Whatever the family's live token is now: it is no one's.
            self.tree.remove(key)?;
            self.flush().await?;
            return Ok(Refreshed::Reused { user_id: user });
        }
        if now_ms >= record.expires_at_ms {
            self.end(key, &current).await?;
            return Ok(Refreshed::SessionExpired);
        }
        if now_ms >= record.refresh_expires_at_ms || record.session_epoch != session_epoch {
            self.end(key, &current).await?;
            return Ok(Refreshed::Unknown);
        }
        let next_secret = random_token(32);
        let next = SessionRecord {
            refresh_expires_at_ms: now_ms.saturating_add(policy.refresh_ttl_ms).min(record.expires_at_ms),
            secret_hash: secret_hash(&next_secret),
            ..record
        };
        match self.tree.compare_and_swap(key, Some(&current), Some(encode(&next)?))? {
            Ok(()) => {
                self.flush().await?;
                Ok(Refreshed::Rotated { user_id: user, refresh_token: token(user, family, &next_secret) })
            }
            // Another refresh spent this token first: the token was used twice.
            Err(_) => {
                tracing::warn!(user = %user, session = %family, "one refresh token was used twice at once; the session is revoked");
                self.tree.remove(key)?;
                self.flush().await?;
                Ok(Refreshed::Reused { user_id: user })
            }
        }
    }

    /// Ends the session under `key` if it is still as read (`current`): a
    /// concurrent rotation is that refresh's to judge.
    async fn end(&self, key: [u8; 32], current: &sled::IVec) -> Result<(), UserStoreError> {
        let _ = self.tree.compare_and_swap(key, Some(current), None as Option<&[u8]>)?;
        self.flush().await
    }

    /// Ends every session of `user`; returns how many there were.
    pub async fn end_all(&self, user: Uuid) -> Result<usize, UserStoreError> {
        let mut ended = 0;
        for entry in self.tree.scan_prefix(user.as_bytes()) {
            let (key, _) = entry?;
            if self.tree.remove(key)?.is_some() {
                ended += 1;
            }
        }
        self.flush().await?;
        Ok(ended)
    }

    /// How many sessions `user` holds, expired ones included.
    pub fn count(&self, user: Uuid) -> usize {
        self.tree.scan_prefix(user.as_bytes()).count()
    }

    /// Drops `user`'s expired sessions, then their oldest until a new one fits.
    fn prune(&self, user: Uuid, now_ms: u64) -> Result<(), UserStoreError> {
        let mut live = Vec::new();
        for entry in self.tree.scan_prefix(user.as_bytes()) {
            let (key, value) = entry?;
            let record = decode(&value)?;
            if now_ms >= record.expires_at_ms.min(record.refresh_expires_at_ms) {
                self.tree.remove(key)?;
            } else {
                live.push((record.started_at_ms, key));
            }
        }
        live.sort();
        let excess = (live.len() + 1).saturating_sub(SESSIONS_PER_USER_MAX);
        for (_, key) in live.into_iter().take(excess) {
            self.tree.remove(key)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: SessionPolicy = SessionPolicy { refresh_ttl_ms: 100, lifetime_ms: 250 };

    fn store() -> anyhow::Result<(tempfile::TempDir, SessionStore)> {
        let dir = tempfile::tempdir()?;
        let db = sled::Config::new().path(dir.path().join("s.sled")).open()?;
        Ok((dir, SessionStore::open(&db)?))
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
        let first = store.start(user, 0, 0, POLICY).await?;
        let other = store.start(user, 0, 0, POLICY).await?;
        let second = rotated(store.refresh(&first, 0, 10, POLICY).await?)?;
        assert_eq!(store.refresh(&first, 0, 20, POLICY).await?, Refreshed::Reused { user_id: user });
        assert_eq!(store.refresh(&second, 0, 30, POLICY).await?, Refreshed::Unknown, "the family is gone");
        rotated(store.refresh(&other, 0, 40, POLICY).await?)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_session_ends_at_its_absolute_lifetime_and_when_left_idle() -> anyhow::Result<()> {
        let (_dir, store) = store()?;
        let user = Uuid::new_v4();
        let mut token = store.start(user, 0, 0, POLICY).await?;
        for now in [90, 180, 240] {
            token = rotated(store.refresh(&token, 0, now, POLICY).await?)?;
        }
        assert_eq!(store.refresh(&token, 0, 250, POLICY).await?, Refreshed::SessionExpired);
        let idle = store.start(user, 0, 1000, POLICY).await?;
        assert_eq!(store.refresh(&idle, 0, 1100, POLICY).await?, Refreshed::Unknown);
        Ok(())
    }

    #[tokio::test]
    async fn a_session_started_in_an_ended_epoch_is_stale() -> anyhow::Result<()> {
        let (_dir, store) = store()?;
        let user = Uuid::new_v4();
        // A login whose password was checked in epoch 0 writes its session
        // after a password change moved the user to epoch 1.
        let late = store.start(user, 0, 0, POLICY).await?;
        assert_eq!(store.refresh(&late, 1, 10, POLICY).await?, Refreshed::Unknown);
        assert_eq!(store.count(user), 0, "and it is gone");
        let current = store.start(user, 1, 20, POLICY).await?;
        rotated(store.refresh(&current, 1, 30, POLICY).await?)?;
        Ok(())
    }

    #[tokio::test]
    async fn malformed_tokens_are_unknown_and_sessions_per_user_are_bounded() -> anyhow::Result<()> {
        let (_dir, store) = store()?;
        let user = Uuid::new_v4();
        for text in ["", "wrt_", "wrt_abc_def", "xyz", &format!("wrt_{}{}_", user.simple(), user.simple())] {
            assert_eq!(store.refresh(text, 0, 0, POLICY).await?, Refreshed::Unknown, "{text}");
        }
        let oldest = store.start(user, 0, 0, POLICY).await?;
        for now in 1..(SESSIONS_PER_USER_MAX as u64 + 5) {
            store.start(user, 0, now, POLICY).await?;
        }
        assert_eq!(store.count(user), SESSIONS_PER_USER_MAX);
        assert_eq!(store.refresh(&oldest, 0, 80, POLICY).await?, Refreshed::Unknown, "the oldest went first");
        assert_eq!(store.end_all(user).await?, SESSIONS_PER_USER_MAX);
        assert_eq!(store.count(user), 0);
        Ok(())
    }
}
