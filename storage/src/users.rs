//! The API's user store: users, their credentials, their sessions, which
//! accounts each user owns, and risk rules, in `<data-dir>/users.sled`
//! ([`FILE_NAME`]).
//!
//! Trees:
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

use std::path::Path;

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use uuid::Uuid;

use crate::sessions::SessionStore;

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
    /// A lock of the store was poisoned by a panic while held.
    #[error("user store: a lock was poisoned")]
    Poisoned,
}

impl From<TransactionError<UserStoreError>> for UserStoreError {
    fn from(error: TransactionError<UserStoreError>) -> Self {
        match error {
            TransactionError::Abort(error) => error,
            TransactionError::Storage(error) => UserStoreError::Sled(error),
        }
    }
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
    db: sled::Db,
    users: sled::Tree,
    emails: sled::Tree,
    sessions: SessionStore,
    /// Held from counting a user's accounts to adding one, so that
    /// concurrent openings cannot pass a cap together.
    opening: std::sync::Arc<std::sync::Mutex<()>>,
    owned_accounts: sled::Tree,
    meta: sled::Tree,
    risk_rules: sled::Tree,
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, UserStoreError> {
    serde_json::to_vec(value).map_err(|_| UserStoreError::Decode { what })
}

fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8], what: &'static str) -> Result<T, UserStoreError> {
    serde_json::from_slice(bytes).map_err(|_| UserStoreError::Decode { what })
}

impl UserStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<UserStore, UserStoreError> {
        let db = crate::snapshot::open_sled(&sled::Config::new().path(path))?;
        // Refresh tokens of versions before sessions: they are refused (their
        // holders log in again), so nothing should keep their hashes.
        db.drop_tree("refresh_tokens")?;
        Ok(UserStore {
            users: db.open_tree("users")?,
            emails: db.open_tree("emails")?,
            sessions: SessionStore::open(&db)?,
            opening: std::sync::Arc::default(),
            owned_accounts: db.open_tree("owned_accounts")?,
            meta: db.open_tree("meta")?,
            risk_rules: db.open_tree("risk_rules")?,
            db,
        })
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), UserStoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    /// Adds a user whose email is not taken.
    pub async fn create(&self, user: &StoredUser) -> Result<(), UserStoreError> {
        let value = encode(user, "user")?;
        let id = *user.id.as_bytes();
        (&self.users, &self.emails).transaction(|(users, emails)| {
            if emails.get(user.email.as_bytes())?.is_some() {
                return Err(ConflictableTransactionError::Abort(UserStoreError::EmailTaken));
            }
            emails.insert(user.email.as_bytes(), &id[..])?;
            users.insert(&id[..], value.clone())?;
            Ok(())
        })?;
        self.flush().await
    }

    /// Adds a user of an external issuer, unless one with its id exists
    /// (then returns that one). Its email is not indexed: it never logs in
    /// with a password.
    pub async fn create_external(&self, user: &StoredUser) -> Result<StoredUser, UserStoreError> {
        let value = encode(user, "user")?;
        match self.users.compare_and_swap(user.id.as_bytes(), None as Option<&[u8]>, Some(value))? {
            Ok(()) => {
                self.flush().await?;
                Ok(user.clone())
            }
            Err(existing) => match existing.current {
                Some(bytes) => decode(&bytes, "user"),
                None => Ok(user.clone()),
            },
        }
    }

    /// A user by id.
    pub fn get(&self, id: Uuid) -> Result<Option<StoredUser>, UserStoreError> {
        self.users.get(id.as_bytes())?.map(|bytes| decode(&bytes, "user")).transpose()
    }

    /// A user by normalised email.
    pub fn by_email(&self, email: &str) -> Result<Option<StoredUser>, UserStoreError> {
        let Some(id) = self.emails.get(email.as_bytes())? else { return Ok(None) };
        let id = Uuid::from_slice(&id).map_err(|_| UserStoreError::Decode { what: "email index" })?;
        self.get(id)
    }

    /// Users in id order, after `after`, at most `limit`.
    pub fn list(&self, after: Option<Uuid>, limit: usize) -> Result<Vec<StoredUser>, UserStoreError> {
        let start = after.map(|a| a.as_bytes().to_vec()).unwrap_or_default();
        let mut found = Vec::new();
        for entry in self.users.range(start..) {
            let (key, value) = entry?;
            if after.is_some_and(|a| key.as_ref() == a.as_bytes()) {
                continue;
            }
            found.push(decode(&value, "user")?);
            if found.len() >= limit.min(LIST_LIMIT_MAX) {
                break;
            }
        }
        Ok(found)
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
        loop {
            let Some(current) = self.users.get(id.as_bytes())? else { return Ok(None) };
            let mut user: StoredUser = decode(&current, "user")?;
            change(&mut user);
            let next = encode(&user, "user")?;
            if self.users.compare_and_swap(id.as_bytes(), Some(current), Some(next))?.is_ok() {
                self.flush().await?;
                return Ok(Some(user));
            }
        }
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
    pub fn owns(&self, user: Uuid, account: Uuid) -> Result<bool, UserStoreError> {
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(user.as_bytes());
        key.extend_from_slice(account.as_bytes());
        Ok(self.owned_accounts.contains_key(key)?)
    }

    /// Records that `user` owns `account` (before the ledger opens it, so a
    /// crash in between leaves an index entry with no account, which listing skips).
    pub async fn add_owned(&self, user: Uuid, account: Uuid) -> Result<(), UserStoreError> {
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(user.as_bytes());
        key.extend_from_slice(account.as_bytes());
        self.owned_accounts.insert(key, Vec::<u8>::new())?;
        self.flush().await
    }

    /// Records that `user` owns `account`, as [`UserStore::add_owned`] does,
    /// unless the user's index already names `accounts_max` accounts;
    /// returns whether it was recorded.
    pub async fn add_owned_capped(
        &self,
        user: Uuid,
        account: Uuid,
        accounts_max: usize,
    ) -> Result<bool, UserStoreError> {
        {
            let _opening = self.opening.lock().map_err(|_| UserStoreError::Poisoned)?;
            if self.owned_accounts.scan_prefix(user.as_bytes()).keys().take(accounts_max).count()
                >= accounts_max
            {
                return Ok(false);
            }
            let mut key = Vec::with_capacity(32);
            key.extend_from_slice(user.as_bytes());
            key.extend_from_slice(account.as_bytes());
            self.owned_accounts.insert(key, Vec::<u8>::new())?;
        }
        self.flush().await?;
        Ok(true)
    }

    /// Forgets an index entry whose account was not opened for `user`.
    pub async fn remove_owned(&self, user: Uuid, account: Uuid) -> Result<(), UserStoreError> {
        let mut key = Vec::with_capacity(32);
        key.extend_from_slice(user.as_bytes());
        key.extend_from_slice(account.as_bytes());
        self.owned_accounts.remove(key)?;
        self.flush().await
    }

    /// Accounts `user` owns, in id order, after `after`, at most `limit`.
    /// The scan starts at the cursor, not at the user's first account.
    pub fn owned(&self, user: Uuid, after: Option<Uuid>, limit: usize) -> Result<Vec<Uuid>, UserStoreError> {
        let mut start = user.as_bytes().to_vec();
        if let Some(after) = after {
            // user ++ after ++ 0 sorts right after user ++ after and before any later key.
            start.extend_from_slice(after.as_bytes());
            start.push(0);
        }
        let mut found = Vec::new();
        for entry in self.owned_accounts.range(start..) {
            let (key, _) = entry?;
            if !key.starts_with(user.as_bytes()) {
                break;
            }
            let account = key
                .get(16..)
                .and_then(|id| Uuid::from_slice(id).ok())
                .ok_or(UserStoreError::Decode { what: "account index" })?;
            found.push(account);
            if found.len() >= limit.min(LIST_LIMIT_MAX) {
                break;
            }
        }
        Ok(found)
    }

    /// Every stored risk rule, in id order. Their number is bounded by the
    /// API, which checks it when one is added.
    pub fn rules(&self) -> Result<Vec<StoredRule>, UserStoreError> {
        self.risk_rules.iter().values().map(|value| decode(&value?, "risk rule")).collect()
    }

    /// How many risk rules are stored.
    pub fn rule_count(&self) -> usize {
        self.risk_rules.len()
    }

    /// A risk rule by id.
    pub fn rule(&self, id: Uuid) -> Result<Option<StoredRule>, UserStoreError> {
        self.risk_rules.get(id.as_bytes())?.map(|bytes| decode(&bytes, "risk rule")).transpose()
    }

    /// Adds or replaces a risk rule.
    pub async fn put_rule(&self, rule: &StoredRule) -> Result<(), UserStoreError> {
        self.risk_rules.insert(rule.id.as_bytes(), encode(rule, "risk rule")?)?;
        self.flush().await
    }

    /// Removes a risk rule; false when there was none.
    pub async fn remove_rule(&self, id: Uuid) -> Result<bool, UserStoreError> {
        let removed = self.risk_rules.remove(id.as_bytes())?.is_some();
        self.flush().await?;
        Ok(removed)
    }

    /// A value kept in the `meta` tree.
    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, UserStoreError> {
        Ok(self.meta.get(key)?.map(|value| value.to_vec()))
    }

    /// Sets a value in the `meta` tree.
    pub async fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), UserStoreError> {
        self.meta.insert(key, value)?;
        self.flush().await
    }

    /// Removes a value from the `meta` tree.
    pub async fn remove_meta(&self, key: &str) -> Result<(), UserStoreError> {
        if self.meta.remove(key)?.is_some() {
            self.flush().await?;
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
            assert!(store.owns(ada.id, account)? && !store.owns(next_user, account)?);
        }
        let store = UserStore::open(&path)?;
        assert_eq!(store.by_email("ada@example.com")?, Some(ada.clone()));
        assert_eq!(store.list(None, 10)?, vec![ada]);
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
