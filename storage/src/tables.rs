//! The user store's tables behind one seam ([`Tables`]), so one store
//! ([`crate::users::UserStore`]) runs on the embedded node's sled file
//! ([`SledTables`]) and, in cluster mode, on a directory every node shares
//! (`wallet-cluster`'s `directory`).
//!
//! A table maps byte keys to byte values in key order. Reads are local and
//! never wait; a write is a list of puts and deletes applied together or not
//! at all, each on a condition ([`Expect`]): that is all the store needs for
//! an email taken once, a change that keeps a concurrent one, and a cap
//! counted once across nodes. A write answers only once it is durable.
//!
//! A shared implementation's local reads may lag writes made elsewhere by a
//! few milliseconds; [`Tables::catch_up`] waits until they show every write
//! acknowledged before the call, and a write whose condition failed on a
//! stale read is retried after it.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use crate::users::UserStoreError;

/// A future a [`Tables`] method returns.
pub type TablesFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, UserStoreError>> + Send + 'a>>;

/// The store's tables (see [`crate::users`] for what each holds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// User id -> user.
    Users,
    /// Normalised email -> user id.
    Emails,
    /// User id ++ session id -> session.
    Sessions,
    /// User id ++ account id -> nothing.
    OwnedAccounts,
    /// Name -> setting kept across restarts.
    Meta,
    /// Rule id -> risk rule.
    RiskRules,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 6] =
        [Table::Users, Table::Emails, Table::Sessions, Table::OwnedAccounts, Table::Meta, Table::RiskRules];

    /// Its name: the sled tree's, and a token of a shared directory's subjects.
    pub fn name(self) -> &'static str {
        match self {
            Table::Users => "users",
            Table::Emails => "emails",
            Table::Sessions => "sessions",
            Table::OwnedAccounts => "owned_accounts",
            Table::Meta => "meta",
            Table::RiskRules => "risk_rules",
        }
    }

    /// The table named `name`.
    pub fn named(name: &str) -> Option<Table> {
        Table::ALL.into_iter().find(|table| table.name() == name)
    }

    /// Its place in [`Table::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A value as read, with what a later write needs to know it is unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The value.
    pub bytes: Vec<u8>,
    /// Its revision in a shared directory (0 in sled, which compares bytes).
    pub revision: u64,
}

/// The condition one change of a write holds on.
#[derive(Clone, Debug)]
pub enum Expect {
    /// None.
    Any,
    /// The key holds no value.
    Absent,
    /// The key still holds this value, as read.
    Still(Stored),
}

/// One change of a write.
#[derive(Clone, Debug)]
pub struct Change {
    /// The table.
    pub table: Table,
    /// The key.
    pub key: Vec<u8>,
    /// The new value, or `None` to delete.
    pub value: Option<Vec<u8>>,
    /// Its condition.
    pub expect: Expect,
}

impl Change {
    /// Puts `value` at `key`, whatever is there.
    pub fn put(table: Table, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Change {
        Change { table, key: key.into(), value: Some(value.into()), expect: Expect::Any }
    }

    /// Deletes `key`, whatever is there.
    pub fn delete(table: Table, key: impl Into<Vec<u8>>) -> Change {
        Change { table, key: key.into(), value: None, expect: Expect::Any }
    }

    /// The same change, on condition `expect`.
    #[must_use]
    pub fn expecting(self, expect: Expect) -> Change {
        Change { expect, ..self }
    }
}

/// How a write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Every change is durable.
    Done,
    /// A condition did not hold: nothing changed.
    Conflict,
}

/// The store's tables.
pub trait Tables: Send + Sync {
    /// The value at `key`, from local state.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Stored>, UserStoreError>;

    /// Entries whose keys start with `prefix`, from `from` on (`from` sorts
    /// at or after `prefix`), in key order, at most `limit`.
    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Stored)>, UserStoreError>;

    /// How many entries `table` holds.
    fn len(&self, table: Table) -> usize;

    /// Applies `changes` together if every condition holds, durably.
    fn write(&self, changes: Vec<Change>) -> TablesFuture<'_, Written>;

    /// Whether other processes write these tables (then local reads may lag
    /// their writes, and [`Tables::current`] and [`Tables::catch_up`] wait).
    fn shared(&self) -> bool;

    /// Returns once local reads show every write acknowledged before the call.
    fn catch_up(&self) -> TablesFuture<'_, ()>;

    /// Returns once local reads are known to lag other nodes' writes by no
    /// more than the implementation's bound (a shared directory whose feed
    /// stalled catches up, or fails, rather than answer from an old copy).
    fn current(&self) -> TablesFuture<'_, ()>;

    /// A counter that moves when `table` changes by another node's write
    /// (`None` where no other node writes).
    fn changes(&self, table: Table) -> Option<tokio::sync::watch::Receiver<u64>>;

    /// Makes every write so far durable (writes already are when they
    /// answer; a store that buffers anything flushes it here).
    fn flush(&self) -> TablesFuture<'_, ()>;
}

/// Reads `key` from local state no older than [`Tables::current`] allows;
/// when it is not there, catches up and reads again: a user made, a login,
/// or an account opened on another node a moment ago is found.
pub async fn get_fresh(
    tables: &dyn Tables,
    table: Table,
    key: &[u8],
) -> Result<Option<Stored>, UserStoreError> {
    if !tables.shared() {
        return tables.get(table, key);
    }
    tables.current().await?;
    if let Some(found) = tables.get(table, key)? {
        return Ok(Some(found));
    }
    tables.catch_up().await?;
    tables.get(table, key)
}

/// The tables as sled trees of one database (`<data-dir>/users.sled`).
pub struct SledTables {
    db: sled::Db,
    /// In [`Table::ALL`] order.
    trees: Vec<sled::Tree>,
}

impl SledTables {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SledTables, UserStoreError> {
        let db = crate::snapshot::open_sled(&sled::Config::new().path(path))?;
        // Refresh tokens of versions before sessions: they are refused (their
        // holders log in again), so nothing should keep their hashes.
        db.drop_tree("refresh_tokens")?;
        let trees =
            Table::ALL.into_iter().map(|table| db.open_tree(table.name())).collect::<Result<_, _>>()?;
        Ok(SledTables { db, trees })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table.index()]
    }
}

fn holds(current: Option<&[u8]>, expect: &Expect) -> bool {
    match expect {
        Expect::Any => true,
        Expect::Absent => current.is_none(),
        Expect::Still(stored) => current == Some(stored.bytes.as_slice()),
    }
}

fn apply(views: &[TransactionalTree], changes: &[Change]) -> Result<(), ConflictableTransactionError<()>> {
    for change in changes {
        let view = &views[change.table.index()];
        let current = view.get(&change.key)?;
        if !holds(current.as_deref(), &change.expect) {
            return Err(ConflictableTransactionError::Abort(()));
        }
        match &change.value {
            Some(value) => view.insert(change.key.as_slice(), value.as_slice())?,
            None => view.remove(change.key.as_slice())?,
        };
    }
    Ok(())
}

impl Tables for SledTables {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Stored>, UserStoreError> {
        Ok(self.tree(table).get(key)?.map(|value| Stored { bytes: value.to_vec(), revision: 0 }))
    }

    fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Stored)>, UserStoreError> {
        let mut found = Vec::new();
        for entry in self.tree(table).range(from.max(prefix)..) {
            let (key, value) = entry?;
            if !key.starts_with(prefix) || found.len() >= limit {
                break;
            }
            found.push((key.to_vec(), Stored { bytes: value.to_vec(), revision: 0 }));
        }
        Ok(found)
    }

    fn len(&self, table: Table) -> usize {
        self.tree(table).len()
    }

    fn write(&self, changes: Vec<Change>) -> TablesFuture<'_, Written> {
        Box::pin(async move {
            let outcome = self.trees[..].transaction(|views| apply(views, &changes));
            match outcome {
                Ok(()) => {}
                Err(TransactionError::Abort(())) => return Ok(Written::Conflict),
                Err(TransactionError::Storage(error)) => return Err(error.into()),
            }
            self.db.flush_async().await?;
            Ok(Written::Done)
        })
    }

    fn shared(&self) -> bool {
        false
    }

    fn catch_up(&self) -> TablesFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn current(&self) -> TablesFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn changes(&self, _table: Table) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }

    fn flush(&self) -> TablesFuture<'_, ()> {
        Box::pin(async move {
            self.db.flush_async().await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_write_applies_whole_or_not_at_all() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let tables = SledTables::open(&dir.path().join("users.sled"))?;
        let first = vec![
            Change::put(Table::Emails, *b"a", *b"1").expecting(Expect::Absent),
            Change::put(Table::Users, *b"1", *b"ada").expecting(Expect::Absent),
        ];
        assert_eq!(tables.write(first).await?, Written::Done);
        let again = vec![
            Change::put(Table::Users, *b"2", *b"bob").expecting(Expect::Absent),
            Change::put(Table::Emails, *b"a", *b"2").expecting(Expect::Absent),
        ];
        assert_eq!(tables.write(again).await?, Written::Conflict);
        assert_eq!(tables.get(Table::Users, b"2")?, None, "nothing of a refused write is stored");
        let read = tables.get(Table::Users, b"1")?.ok_or_else(|| anyhow::anyhow!("not stored"))?;
        let change = |value: &[u8]| {
            vec![Change::put(Table::Users, *b"1", value.to_vec()).expecting(Expect::Still(read.clone()))]
        };
        assert_eq!(tables.write(change(b"ada2")).await?, Written::Done);
        assert_eq!(tables.write(change(b"ada3")).await?, Written::Conflict, "changed since read");
        tables
            .write(vec![
                Change::put(Table::OwnedAccounts, *b"1x", []),
                Change::put(Table::OwnedAccounts, *b"2y", []),
            ])
            .await?;
        let scanned = tables.scan(Table::OwnedAccounts, b"1", b"", 10)?;
        assert_eq!(scanned.len(), 1, "a scan stays within its prefix");
        Ok(())
    }
}
