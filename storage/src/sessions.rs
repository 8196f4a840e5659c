//! Sessions as stored: the user store's `sessions` tree ([`crate::users`]).
//!
//! Key: user UUID ++ session UUID (32 bytes), so ending every session of a
//! user is one prefix scan. Value: [`SessionRecord`] as JSON. No refresh
//! token is stored, only the SHA-256 of a session's live secret: what a
//! token looks like, and how rotation and reuse detection work, is the
//! API's (`wallet-api`'s `sessions`), which changes a session only if it is
//! still as it read it ([`SessionStore::replace`], [`SessionStore::end`]).
//!
//! Every write is durable before it returns.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::tables::{get_fresh, Change, Expect, Stored, Table, Tables, Written};
use crate::users::UserStoreError;

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

/// A session as read: changed only if it is still what was read, compared
/// by its stored bytes (a record written before `session_epoch` existed
/// would encode differently once decoded), or its revision in a shared
/// directory.
#[derive(Clone, Debug)]
pub struct Session {
    key: [u8; 32],
    stored: Stored,
    /// What it holds.
    pub record: SessionRecord,
}

/// The sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionStore {
    tables: Arc<dyn Tables>,
}

fn encode(record: &SessionRecord) -> Result<Vec<u8>, UserStoreError> {
    serde_json::to_vec(record).map_err(|_| UserStoreError::Decode { what: "session" })
}

fn decode(bytes: &[u8]) -> Result<SessionRecord, UserStoreError> {
    serde_json::from_slice(bytes).map_err(|_| UserStoreError::Decode { what: "session" })
}

fn key(user: Uuid, session: Uuid) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(user.as_bytes());
    key[16..].copy_from_slice(session.as_bytes());
    key
}

impl SessionStore {
    /// The sessions in `tables`' sessions table.
    pub(crate) fn over(tables: Arc<dyn Tables>) -> SessionStore {
        SessionStore { tables }
    }

    /// Session `session` of `user`, if there is one: as this node sees it,
    /// or, when it sees none, after catching up (a login on another node a
    /// moment ago).
    pub async fn get(&self, user: Uuid, session: Uuid) -> Result<Option<Session>, UserStoreError> {
        let key = key(user, session);
        let Some(stored) = get_fresh(self.tables.as_ref(), Table::Sessions, &key).await? else {
            return Ok(None);
        };
        Ok(Some(Session { key, record: decode(&stored.bytes)?, stored }))
    }

    /// Returns once reads show every write acknowledged anywhere before the
    /// call (a refresh on another node a moment ago).
    pub async fn catch_up(&self) -> Result<(), UserStoreError> {
        self.tables.catch_up().await
    }

    /// Adds session `session` of `user`, after dropping the user's sessions
    /// expired at `now_ms`, then their oldest until the user holds at most
    /// `sessions_max` with this one.
    pub async fn add(
        &self,
        user: Uuid,
        session: Uuid,
        record: &SessionRecord,
        now_ms: u64,
        sessions_max: usize,
    ) -> Result<(), UserStoreError> {
        let mut changes = self.prune(user, now_ms, sessions_max)?;
        changes.push(Change::put(Table::Sessions, key(user, session), encode(record)?));
        self.tables.write(changes).await?;
        Ok(())
    }

    /// Replaces `session` with `next` if it is still as read; false when
    /// another write changed or removed it first.
    pub async fn replace(&self, session: &Session, next: &SessionRecord) -> Result<bool, UserStoreError> {
        let change = Change::put(Table::Sessions, session.key, encode(next)?);
        let written =
            self.tables.write(vec![change.expecting(Expect::Still(session.stored.clone()))]).await?;
        Ok(written == Written::Done)
    }

    /// Ends `session` if it is still as read: a concurrent change is its
    /// writer's to judge.
    pub async fn end(&self, session: &Session) -> Result<(), UserStoreError> {
        let change =
            Change::delete(Table::Sessions, session.key).expecting(Expect::Still(session.stored.clone()));
        self.tables.write(vec![change]).await?;
        Ok(())
    }

    /// Removes `session`, whatever it holds now.
    pub async fn remove(&self, session: &Session) -> Result<(), UserStoreError> {
        self.tables.write(vec![Change::delete(Table::Sessions, session.key)]).await?;
        Ok(())
    }

    /// Ends every session of `user`; returns how many there were.
    pub async fn end_all(&self, user: Uuid) -> Result<usize, UserStoreError> {
        // Every session started anywhere before this call.
        self.tables.catch_up().await?;
        let sessions = self.tables.scan(Table::Sessions, user.as_bytes(), b"", usize::MAX)?;
        let ended = sessions.len();
        if ended > 0 {
            let changes = sessions.into_iter().map(|(key, _)| Change::delete(Table::Sessions, key)).collect();
            self.tables.write(changes).await?;
        }
        Ok(ended)
    }

    /// How many sessions `user` holds, expired ones included.
    pub fn count(&self, user: Uuid) -> Result<usize, UserStoreError> {
        Ok(self.tables.scan(Table::Sessions, user.as_bytes(), b"", usize::MAX)?.len())
    }

    /// Deletions of `user`'s sessions expired at `now_ms`, then of their
    /// oldest until one more fits within `sessions_max`.
    fn prune(&self, user: Uuid, now_ms: u64, sessions_max: usize) -> Result<Vec<Change>, UserStoreError> {
        let mut changes = Vec::new();
        let mut live = Vec::new();
        for (key, stored) in self.tables.scan(Table::Sessions, user.as_bytes(), b"", usize::MAX)? {
            let record = decode(&stored.bytes)?;
            if now_ms >= record.expires_at_ms.min(record.refresh_expires_at_ms) {
                changes.push(Change::delete(Table::Sessions, key));
            } else {
                live.push((record.started_at_ms, key));
            }
        }
        live.sort();
        let excess = (live.len() + 1).saturating_sub(sessions_max);
        changes.extend(live.into_iter().take(excess).map(|(_, key)| Change::delete(Table::Sessions, key)));
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::UserStore;

    fn record(started_at_ms: u64, secret_hash: &str) -> SessionRecord {
        SessionRecord {
            started_at_ms,
            expires_at_ms: started_at_ms + 100,
            refresh_expires_at_ms: started_at_ms + 50,
            secret_hash: secret_hash.to_string(),
            session_epoch: 0,
        }
    }

    #[tokio::test]
    async fn a_session_changes_only_while_it_is_as_read() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = UserStore::open(&dir.path().join("users.sled"))?;
        let sessions = store.sessions();
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        sessions.add(user, session, &record(0, "a"), 0, 4).await?;
        let read = sessions.get(user, session).await?.ok_or_else(|| anyhow::anyhow!("not stored"))?;
        assert_eq!(read.record, record(0, "a"));
        assert!(sessions.replace(&read, &record(0, "b")).await?);
        assert!(!sessions.replace(&read, &record(0, "c")).await?, "changed since it was read");
        sessions.end(&read).await?;
        let now = sessions.get(user, session).await?.map(|s| s.record);
        assert_eq!(now, Some(record(0, "b")), "ending what changed since is the changer's to judge");
        Ok(())
    }

    #[tokio::test]
    async fn a_record_of_before_epochs_reads_and_is_replaced_as_read() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = UserStore::open(&dir.path().join("users.sled"))?;
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let old = br#"{"started_at_ms":1,"expires_at_ms":9,"refresh_expires_at_ms":5,"secret_hash":"ab"}"#;
        store
            .sessions()
            .tables
            .write(vec![Change::put(Table::Sessions, key(user, session), &old[..])])
            .await?;
        let read = store.sessions().get(user, session).await?.ok_or_else(|| anyhow::anyhow!("not read"))?;
        assert_eq!(read.record.session_epoch, 0);
        assert!(store.sessions().replace(&read, &read.record).await?);
        Ok(())
    }

    #[tokio::test]
    async fn adding_drops_expired_sessions_then_the_oldest() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = UserStore::open(&dir.path().join("users.sled"))?;
        let sessions = store.sessions();
        let user = Uuid::new_v4();
        let expired = Uuid::new_v4();
        sessions.add(user, expired, &record(0, "x"), 0, 3).await?;
        let mut kept = Vec::new();
        for started in [60, 70, 80] {
            let session = Uuid::new_v4();
            sessions.add(user, session, &record(started, "x"), started, 3).await?;
            kept.push(session);
        }
        assert_eq!(sessions.count(user)?, 3);
        assert!(sessions.get(user, expired).await?.is_none(), "expired at 60");
        assert!(sessions.get(user, kept[0]).await?.is_some());
        let last = Uuid::new_v4();
        sessions.add(user, last, &record(90, "x"), 90, 3).await?;
        assert!(sessions.get(user, kept[0]).await?.is_none(), "the oldest went");
        assert_eq!(sessions.end_all(user).await?, 3);
        assert_eq!(sessions.count(user)?, 0);
        Ok(())
    }
}
