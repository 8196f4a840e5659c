//! The API's user store: users, their credentials, their sessions, which
//! accounts each user owns, and risk rules, over [`crate::tables`]: in
//! `<data-dir>/users.sled` ([`FILE_NAME`]) for the embedded node, in the
//! directory every node shares in cluster mode.
//!
//! Tables (sled trees in `users.sled`):
//! - `users`: user UUID (16 bytes) -> [`StoredUser`] as JSON;
//! - `emails`: normalised email -> user UUID, so an email is taken once;
//! - `sessions`: user UUID ++ session UUID -> [`crate::sessions::SessionRecord`]
//!   as JSON (the refresh token itself is never stored; [`crate::sessions`]);
//! - `owned_accounts`: user UUID ++ account UUID -> empty, to list a user's accounts;
//! - `meta`: settings kept across restarts (the generated token secret, the
//!   id of the administrator made at start);
//! - `risk_rules`: rule UUID (16 bytes) -> [`StoredRule`] as JSON. The ledger
//!   checks risk rules but does not keep them: they are configuration, kept here.
//!
//! What is stored are types of this module, not the API's wire types: the
//! API converts (a user to its view, a rule to and from its body), so a
//! change to the JSON the API speaks cannot change what is on disk.
//!
//! Every write is flushed before it returns, so before the request that
//! made it is answered.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::sessions::SessionStore;
use crate::tables::{self, Change, Expect, SledTables, Stored, Table, Tables, Written};

/// The store's directory in the data directory.
pub const FILE_NAME: &str = "users.sled";

/// Most items one listing returns.
pub const LIST_LIMIT_MAX: usize = 1000;

/// Why the user store failed.
#[derive(Debug, thiserror::Error)]
pub enum UserStoreError {
    /// sled failed (I/O or corruption).
    #[error("user store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode.
    #[error("user store: a stored {what} does not decode")]
    Decode {
        /// Which kind of value.
        what: &'static str,
    },
    /// The email belongs to another user.
    #[error("email already registered")]
    EmailTaken,
    /// A shared directory cannot be reached, or did not answer in time
    /// (a write's outcome is then unknown: it may be stored).
    #[error("user store: {0}")]
    Unavailable(String),
}

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and moves their own accounts.
    User,
    /// Everything, including deposits, freezes and other users' accounts.
    Admin,
}

/// A user as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUser {
    /// Random (v4) id.
    pub id: Uuid,
    /// Normalised email, unique.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// When the user signed up (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Disabled by an administrator: no token of theirs works, and they
    /// cannot log in.
    #[serde(default)]
    pub disabled: bool,
    /// Moves on each time every session of the user ends (logout, password
    /// change, disabling): access tokens carry the epoch they were issued
    /// in, and one of an earlier epoch is refused.
    #[serde(default)]
    pub session_epoch: u64,
}

/// A risk rule as stored: as the API (or the configuration) took it, not
/// yet parsed, so that a stored rule is parsed and checked at each start
/// exactly like a new one (by the API, which owns what a rule means).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    /// Random (v4) id, the ledger's rule id.
    pub id: Uuid,
    /// When the rule was created (ms since the Unix epoch); a replacement keeps it.
    pub created_at_ms: u64,
    /// The rule.
    pub rule: StoredRuleBody,
}

/// A risk rule as written: `kind` and `parameters` are read together when
/// the rule is parsed, so `parameters` stays raw JSON here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRuleBody {
    /// A name for people.
    pub name: String,
    /// What the rule checks (`max_amount`, ...).
    pub kind: String,
    /// Which debits it looks at.
    pub scope: StoredRuleScope,
    /// What a violation does.
    pub action: StoredRuleAction,
    /// The kind's parameters.
    pub parameters: serde_json::Value,
    /// Review rules only: void the hold by itself after this many seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

/// Which debits a stored rule looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoredRuleScope {
    /// Every user's account.
    Global {},
    /// The accounts of one user.
    User {
        /// The user's UUID, as written.
        user_id: String,
    },
    /// One account.
    Account {
        /// The account's UUID, as written.
        account_id: String,
    },
}

/// What a stored rule's violation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredRuleAction {
    /// The transfer is refused.
    Reject,
    /// The transfer becomes a hold for review.
    Review,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct UserStore {
    tables: Arc<dyn Tables>,
    sessions: SessionStore,
    /// Held from counting a user's accounts to adding one: sled compares
    /// an unchanged record by its bytes, so the record's condition alone
    /// cannot tell two openings in one process apart.
    opening: Arc<tokio::sync::Mutex<()>>,
}

/// Conflicts a write that must happen retries through before it gives up
/// (each retry catches up first, so only a key changing that often needs more).
const ATTEMPTS_MAX: usize = 16;

fn too_busy(what: &str) -> UserStoreError {
    UserStoreError::Unavailable(format!("{what}: the key kept changing under {ATTEMPTS_MAX} attempts"))
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, UserStoreError> {
    serde_json::to_vec(value).map_err(|_| UserStoreError::Decode { what })
}

fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8], what: &'static str) -> Result<T, UserStoreError> {
    serde_json::from_slice(bytes).map_err(|_| UserStoreError::Decode { what })
}

fn owned_key(user: Uuid, account: Uuid) -> Vec<u8> {
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(user.as_bytes());
    key.extend_from_slice(account.as_bytes());
    key
}

impl UserStore {
    /// Opens (creating if needed) the embedded node's store at `path`.
    pub fn open(path: &Path) -> Result<UserStore, UserStoreError> {
        Ok(UserStore::over(Arc::new(SledTables::open(path)?)))
    }

    /// The store over `tables` (a shared directory in cluster mode).
    pub fn over(tables: Arc<dyn Tables>) -> UserStore {
        UserStore { sessions: SessionStore::over(tables.clone()), tables, opening: Arc::default() }
    }

    /// A counter that moves when another node changes the risk rules.
    pub fn rule_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.tables.changes(Table::RiskRules)
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), UserStoreError> {
        self.tables.flush().await
    }

    /// Returns once reads show every write acknowledged anywhere before the
    /// call (in cluster mode another node's writes reach this node's reads a
    /// few milliseconds later).
    pub async fn catch_up(&self) -> Result<(), UserStoreError> {
        self.tables.catch_up().await
    }

    /// [`tables::get_fresh`] on this store's tables.
    async fn get_fresh(&self, table: Table, key: &[u8]) -> Result<Option<Stored>, UserStoreError> {
        tables::get_fresh(self.tables.as_ref(), table, key).await
    }

    /// Runs `attempt` until it ends (`Some`), catching up after each
    /// conflict (`None`: a condition failed on what this node read), at most
    /// [`ATTEMPTS_MAX`] times; `what` names the write for the error.
    async fn until_written<T, Attempt>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Attempt,
    ) -> Result<T, UserStoreError>
    where
        Attempt: Future<Output = Result<Option<T>, UserStoreError>>,
    {
        for _ in 0..ATTEMPTS_MAX {
            if let Some(done) = attempt().await? {
                return Ok(done);
            }
            self.tables.catch_up().await?;
        }
        Err(too_busy(what))
    }

    /// Adds a user whose email is not taken.
    pub async fn create(&self, user: &StoredUser) -> Result<(), UserStoreError> {
        let id = user.id.as_bytes().to_vec();
        let changes = vec![
            Change::put(Table::Emails, user.email.as_bytes(), id.clone()).expecting(Expect::Absent),
            Change::put(Table::Users, id, encode(user, "user")?).expecting(Expect::Absent),
        ];
        match self.tables.write(changes).await? {
            Written::Done => Ok(()),
            Written::Conflict => Err(UserStoreError::EmailTaken),
        }
    }

    /// Adds a user of an external issuer, unless one with its id exists
    /// (then returns that one). Its email is not indexed: it never logs in
    /// with a password.
    pub async fn create_external(&self, user: &StoredUser) -> Result<StoredUser, UserStoreError> {
        let value = &encode(user, "user")?;
        self.until_written("adding an external user", || async move {
            let change = Change::put(Table::Users, user.id.as_bytes(), value.clone());
            if self.tables.write(vec![change.expecting(Expect::Absent)]).await? == Written::Done {
                return Ok(Some(user.clone()));
            }
            // There, unless this node's copy had not seen it deleted: then again.
            let stored = self.get_fresh(Table::Users, user.id.as_bytes()).await?;
            stored.map(|stored| decode(&stored.bytes, "user")).transpose()
        })
        .await
    }

    /// A user by id (made on another node a moment ago too).
    pub async fn get(&self, id: Uuid) -> Result<Option<StoredUser>, UserStoreError> {
        let stored = self.get_fresh(Table::Users, id.as_bytes()).await?;
        stored.map(|stored| decode(&stored.bytes, "user")).transpose()
    }

    /// A user by normalised email (made on another node a moment ago too).
    pub async fn by_email(&self, email: &str) -> Result<Option<StoredUser>, UserStoreError> {
        let Some(id) = self.get_fresh(Table::Emails, email.as_bytes()).await? else { return Ok(None) };
        let id = Uuid::from_slice(&id.bytes).map_err(|_| UserStoreError::Decode { what: "email index" })?;
        self.get(id).await
    }

    /// Users in id order, after `after`, at most `limit`.
    pub fn list(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<StoredUser>, UserStoreError> {
        let limit = limit.min(LIST_LIMIT_MAX);
        // id ++ 0 sorts right after id and before any later id.
        let from = after.map(|a| [a.as_bytes().as_slice(), &[0]].concat()).unwrap_or_default();
        let found = self.tables.scan(Table::Users, b"", &from, limit)?;
        found.iter().map(|(_, stored)| decode(&stored.bytes, "user")).collect()
    }

    /// The sessions ([`crate::sessions`]).
    pub fn sessions(&self) -> &SessionStore {
        &self.sessions
    }

    /// Changes a stored user with `change`, against concurrent changes (a
    /// name edited while an administrator disables the user keeps both).
    /// Returns the user as stored now, or `None` if there is no such user.
    pub async fn modify(
        &self,
        id: Uuid,
        change: impl Fn(&mut StoredUser),
    ) -> Result<Option<StoredUser>, UserStoreError> {
        let change = &change;
        self.until_written("changing a user", || async move {
            let Some(current) = self.get_fresh(Table::Users, id.as_bytes()).await? else {
                return Ok(Some(None));
            };
            let mut user: StoredUser = decode(&current.bytes, "user")?;
            change(&mut user);
            let next = Change::put(Table::Users, id.as_bytes(), encode(&user, "user")?);
            let written = self.tables.write(vec![next.expecting(Expect::Still(current))]).await?;
            Ok((written == Written::Done).then_some(Some(user)))
        })
        .await
    }

    /// Ends every session of `user`: their refresh tokens stop working, and
    /// their access tokens too (the session epoch moves on). Returns how
    /// many sessions there were.
    ///
    /// Sessions end before the epoch moves: a refresh reads the epoch
    /// before it spends its token, so one that got in before the end
    /// issues an access token of the old epoch, revoked a moment later.
    pub async fn end_sessions(&self, user: Uuid) -> Result<usize, UserStoreError> {
        let ended = self.sessions.end_all(user).await?;
        self.modify(user, |user| user.session_epoch = user.session_epoch.wrapping_add(1)).await?;
        Ok(ended)
    }

    /// Whether `user`'s index names `account` (an index entry may name an
    /// account whose opening never happened, or, after an admin's opening of
    /// unknown outcome, another's account: confirm with the ledger).
    pub async fn owns(&self, user: Uuid, account: Uuid) -> Result<bool, UserStoreError> {
        Ok(self.get_fresh(Table::OwnedAccounts, &owned_key(user, account)).await?.is_some())
    }

    /// Records that `user` owns `account` (before the ledger opens it, so a
    /// crash in between leaves an index entry with no account, which listing skips).
    pub async fn add_owned(&self, user: Uuid, account: Uuid) -> Result<(), UserStoreError> {
        self.tables.write(vec![Change::put(Table::OwnedAccounts, owned_key(user, account), [])]).await?;
        Ok(())
    }

    /// Records that `user` owns `account`, as [`UserStore::add_owned`] does,
    /// unless the user's index already names `accounts_max` accounts;
    /// returns whether it was recorded.
    ///
    /// The user's record is written again, unchanged, on the condition that
    /// it still is as read, in the same write: two openings racing (on any
    /// nodes) cannot both count below the cap, since the second one's
    /// condition fails and it counts again.
    pub async fn add_owned_capped(
        &self,
        user: Uuid,
        account: Uuid,
        accounts_max: usize,
    ) -> Result<bool, UserStoreError> {
        let _opening = self.opening.lock().await;
        self.until_written("opening an account under a cap", || async move {
            let guard = self.get_fresh(Table::Users, user.as_bytes()).await?;
            let counted = self.tables.scan(Table::OwnedAccounts, user.as_bytes(), b"", accounts_max)?.len();
            if counted >= accounts_max {
                return Ok(Some(false));
            }
            let mut changes = vec![Change::put(Table::OwnedAccounts, owned_key(user, account), [])];
            if let Some(guard) = guard {
                let same = Change::put(Table::Users, user.as_bytes(), guard.bytes.clone());
                changes.push(same.expecting(Expect::Still(guard)));
            }
            Ok((self.tables.write(changes).await? == Written::Done).then_some(true))
        })
        .await
    }

    /// Forgets an index entry whose account was not opened for `user`.
    pub async fn remove_owned(&self, user: Uuid, account: Uuid) -> Result<(), UserStoreError> {
        self.tables.write(vec![Change::delete(Table::OwnedAccounts, owned_key(user, account))]).await?;
        Ok(())
    }

    /// Accounts `user` owns, in id order, after `after`, at most `limit`.
    /// The scan starts at the cursor, not at the user's first account.
    pub fn owned(&self, user: Uuid, after: Option<Uuid>, limit: usize) -> Result<Vec<Uuid>, UserStoreError> {
        let mut from = user.as_bytes().to_vec();
        if let Some(after) = after {
            // user ++ after ++ 0 sorts right after user ++ after and before any later key.
            from.extend_from_slice(after.as_bytes());
            from.push(0);
        }
        let found =
            self.tables.scan(Table::OwnedAccounts, user.as_bytes(), &from, limit.min(LIST_LIMIT_MAX))?;
        found
            .iter()
            .map(|(key, _)| {
                key.get(16..)
                    .and_then(|id| Uuid::from_slice(id).ok())
                    .ok_or(UserStoreError::Decode { what: "account index" })
            })
            .collect()
    }

    /// Every stored risk rule, in id order. Their number is bounded by the
    /// API, which checks it when one is added.
    pub fn rules(&self) -> Result<Vec<StoredRule>, UserStoreError> {
        let found = self.tables.scan(Table::RiskRules, b"", b"", usize::MAX)?;
        found.iter().map(|(_, stored)| decode(&stored.bytes, "risk rule")).collect()
    }

    /// How many risk rules are stored.
    pub fn rule_count(&self) -> usize {
        self.tables.len(Table::RiskRules)
    }

    /// A risk rule by id.
    pub fn rule(&self, id: Uuid) -> Result<Option<StoredRule>, UserStoreError> {
        let stored = self.tables.get(Table::RiskRules, id.as_bytes())?;
        stored.map(|stored| decode(&stored.bytes, "risk rule")).transpose()
    }

    /// Adds or replaces a risk rule.
    pub async fn put_rule(&self, rule: &StoredRule) -> Result<(), UserStoreError> {
        let change = Change::put(Table::RiskRules, rule.id.as_bytes(), encode(rule, "risk rule")?);
        self.tables.write(vec![change]).await?;
        Ok(())
    }

    /// Replaces risk rule `id` by `change` of it, as it is now (a rule
    /// removed meanwhile, on any node, is not made again); `None` when there
    /// is no such rule.
    pub async fn replace_rule(
        &self,
        id: Uuid,
        change: impl Fn(&StoredRule) -> StoredRule,
    ) -> Result<Option<StoredRule>, UserStoreError> {
        let change = &change;
        self.until_written("replacing a risk rule", || async move {
            let Some(stored) = self.get_fresh(Table::RiskRules, id.as_bytes()).await? else {
                return Ok(Some(None));
            };
            let next = change(&decode(&stored.bytes, "risk rule")?);
            let write = Change::put(Table::RiskRules, id.as_bytes(), encode(&next, "risk rule")?);
            let written = self.tables.write(vec![write.expecting(Expect::Still(stored))]).await?;
            Ok((written == Written::Done).then_some(Some(next)))
        })
        .await
    }

    /// Removes a risk rule; false when there was none.
    pub async fn remove_rule(&self, id: Uuid) -> Result<bool, UserStoreError> {
        // A conflict: replaced meanwhile (here or on another node), it still exists.
        self.until_written("removing a risk rule", || async move {
            let Some(stored) = self.get_fresh(Table::RiskRules, id.as_bytes()).await? else {
                return Ok(Some(false));
            };
            let change = Change::delete(Table::RiskRules, id.as_bytes()).expecting(Expect::Still(stored));
            Ok((self.tables.write(vec![change]).await? == Written::Done).then_some(true))
        })
        .await
    }

    /// A value kept in the `meta` table.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, UserStoreError> {
        Ok(self.tables.get(Table::Meta, key.as_bytes())?.map(|stored| stored.bytes))
    }

    /// Sets a value in the `meta` table.
    pub async fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), UserStoreError> {
        self.tables.write(vec![Change::put(Table::Meta, key.as_bytes(), value)]).await?;
        Ok(())
    }

    /// Sets a value in the `meta` table unless one is there (set by any
    /// node); returns the value kept.
    pub async fn set_meta_once(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, UserStoreError> {
        self.until_written("setting a value once", || async move {
            let change = Change::put(Table::Meta, key.as_bytes(), value).expecting(Expect::Absent);
            if self.tables.write(vec![change]).await? == Written::Done {
                return Ok(Some(value.to_vec()));
            }
            // There, unless this node's copy had not seen it deleted: then again.
            Ok(self.get_fresh(Table::Meta, key.as_bytes()).await?.map(|kept| kept.bytes))
        })
        .await
    }

    /// Removes a value from the `meta` table.
    pub async fn remove_meta(&self, key: &str) -> Result<(), UserStoreError> {
        if self.tables.get(Table::Meta, key.as_bytes())?.is_some() {
            self.tables.write(vec![Change::delete(Table::Meta, key.as_bytes())]).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(email: &str) -> StoredUser {
        StoredUser {
            id: Uuid::new_v4(),
            email: email.to_string(),
            name: "Ada".to_string(),
            password_hash: "x".to_string(),
            role: Role::User,
            created_at_ms: 1,
            disabled: false,
            session_epoch: 0,
        }
    }

    #[tokio::test]
    async fn an_email_is_taken_once_and_users_survive_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("users.sled");
        let ada = user("ada@example.com");
        {
            let store = UserStore::open(&path)?;
            store.create(&ada).await?;
            let again = store.create(&user("ada@example.com")).await;
            assert!(matches!(again, Err(UserStoreError::EmailTaken)));
            let account = Uuid::new_v4();
            store.add_owned(ada.id, account).await?;
            assert_eq!(store.owned(ada.id, None, 10)?, vec![account]);
            assert_eq!(store.owned(ada.id, Some(account), 10)?, Vec::<Uuid>::new());
            // A page starts after its cursor and never runs into the next user's entries.
            let next_user = Uuid::from_u128(ada.id.as_u128().wrapping_add(1));
            store.add_owned(next_user, Uuid::from_u128(0)).await?;
            let (low, high) = (Uuid::from_u128(1), Uuid::from_u128(u128::MAX));
            store.add_owned(ada.id, low).await?;
            store.add_owned(ada.id, high).await?;
            let mut all = vec![low, account, high];
            all.sort();
            assert_eq!(store.owned(ada.id, None, 10)?, all);
            assert_eq!(store.owned(ada.id, Some(all[0]), 1)?, vec![all[1]]);
            assert_eq!(store.owned(ada.id, Some(high), 10)?, Vec::<Uuid>::new());
            assert!(store.owns(ada.id, account).await? && !store.owns(next_user, account).await?);
        }
        let store = UserStore::open(&path)?;
        assert_eq!(store.by_email("ada@example.com").await?, Some(ada.clone()));
        assert_eq!(store.list(None, 10)?, vec![ada]);
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openings_racing_in_one_process_stay_within_the_cap() -> anyhow::Result<()> {
        const CAP: usize = 5;
        let dir = tempfile::tempdir()?;
        let store = UserStore::open(&dir.path().join("users.sled"))?;
        for round in 0..8 {
            let ada = user(&format!("ada{round}@example.com"));
            store.create(&ada).await?;
            let openings: Vec<_> = (0..32)
                .map(|_| {
                    let store = store.clone();
                    tokio::spawn(async move { store.add_owned_capped(ada.id, Uuid::new_v4(), CAP).await })
                })
                .collect();
            let mut recorded = 0;
            for opening in openings {
                recorded += usize::from(opening.await??);
            }
            assert_eq!(recorded, CAP, "round {round}");
            assert_eq!(store.owned(ada.id, None, 100)?.len(), CAP);
        }
        Ok(())
    }

    #[test]
    fn stored_values_read_and_write_as_earlier_versions_did() -> anyhow::Result<()> {
        // A rule as versions whose stored rule was the API's own `RuleBody` wrote it.
        let rules = [
            r#"{"id":"0b6f7c5e-6a4b-4f2e-9d3c-1a2b3c4d5e6f","created_at_ms":5,"rule":{"name":"cap","kind":"max_amount","scope":{"type":"user","user_id":"7"},"action":"review","parameters":{"amount":"1000","asset":"USD"},"timeout_seconds":60}}"#,
            r#"{"id":"0b6f7c5e-6a4b-4f2e-9d3c-1a2b3c4d5e70","created_at_ms":6,"rule":{"name":"ten","kind":"velocity_count","scope":{"type":"global"},"action":"reject","parameters":{"count":10},"timeout_seconds":null}}"#,
        ];
        for text in rules {
            let rule: StoredRule = serde_json::from_str(text)?;
            assert_eq!(serde_json::to_string(&rule)?, text);
        }
        let user = r#"{"id":"0b6f7c5e-6a4b-4f2e-9d3c-1a2b3c4d5e6f","email":"ada@example.com","name":"Ada","password_hash":"x","role":"admin","created_at_ms":1,"disabled":true,"session_epoch":3}"#;
        let decoded: StoredUser = serde_json::from_str(user)?;
        assert_eq!(serde_json::to_string(&decoded)?, user);
        // Users stored before disabling and session epochs existed.
        let older = r#"{"id":"0b6f7c5e-6a4b-4f2e-9d3c-1a2b3c4d5e6f","email":"ada@example.com","name":"Ada","password_hash":"x","role":"user","created_at_ms":1}"#;
        let decoded: StoredUser = serde_json::from_str(older)?;
        assert!(!decoded.disabled && decoded.session_epoch == 0 && decoded.role == Role::User);
        Ok(())
    }
}
