//! sled snapshots: account states, open holds and risk decisions, as of a
//! checkpoint; recovery loads them and replays the journal from the
//! checkpoint's segment on.
//!
//! Trees (every value is one checksummed, versioned frame, see [`crate::frame`]):
//! - `accounts`: account id (16 bytes, big endian) -> `Account`;
//! - `holds`: pending transfer id -> `Hold`;
//! - `user_windows`: user id -> `UserWindow`, the debits a velocity rule
//!   scoped to the user counts (kept by the user's home shard);
//! - `decisions`: decision id (8 bytes, big endian) -> risk `Decision`;
//!   `decisions_by_account`: account id ++ decision id -> nothing (an index).
//! - `meta`: `checkpoint` -> [`CheckpointMeta`] without its open commits
//!   and its unsettled accounts;
//! - `events_unsettled`: account id -> nothing: the meta's accounts whose
//!   events were not all published (rewritten by each checkpoint);
//! - `open_commits`: the meta's segment (8 bytes, big endian) ++ commit id
//!   (18 bytes, `CommitId::to_key`) -> `OpenCommit`: one value each, since all of them together
//!   could pass a frame's limit (a commit holds up to 8,189 transfers).
//!
//! Transfers of retired segments and account history are not here but in
//! sorted runs ([`crate::runs`]): sled's cost is per entry, and those grow
//! with every transfer.
//!
//! A checkpoint writes accounts, holds and decisions first and the meta
//! last, then flushes; only then are journal segments deleted. Replay skips
//! account events the snapshot already has (by sequence number), so a crash
//! anywhere in between leaves a state that recovery completes.

use std::path::Path;

use serde::{Deserialize, Serialize};
use wallet_actors::ports::ReadError;
use wallet_actors::recovery::OpenCommit;
use wallet_actors::risk::{Decision, UserWindow};
use wallet_actors::shard::{Captured, Hold};
use wallet_actors::Account;

use crate::faults::{at_point, points};
use crate::frame;
use crate::StorageError;

/// Version of snapshot values.
/// 3: the meta records the next decision id at its marker.
/// 5: commit ids name their epoch and decider; the meta keeps the epoch.
/// 6: ids are 16 fixed bytes.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 6;

/// What a checkpoint records besides the state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Recovery replays journal segments from this index on.
    pub replay_from_segment: u64,
    /// Commits that some shards had not applied in the segments before.
    pub open_commits: Vec<OpenCommit>,
    /// The epoch of the commit ids the ledger gave when this was taken
    /// (its journal record may be in a retired segment): a later start
    /// takes a larger one.
    pub commit_epoch: u64,
    /// The id the first decision after this checkpoint's marker gets: the
    /// snapshot holds those before, replay numbers those after from here.
    pub next_decision_id: u64,
    /// Accounts with changes before this checkpoint that the events
    /// publisher had not published when it was written: no replay hands
    /// those again, so the next start catches these accounts up from their
    /// history (`docs/ARCHITECTURE.md`, "Ledger events", invariant 4).
    pub events_unsettled: Vec<wallet_actors::AccountId>,
}

/// What a snapshot holds, loaded.
#[derive(Debug, Default)]
pub struct LoadedSnapshot {
    /// Every open hold.
    pub holds: Vec<Hold>,
    /// The last checkpoint, if there was one.
    pub meta: Option<CheckpointMeta>,
}

/// The sled snapshot store.
#[derive(Clone)]
pub struct SnapshotStore {
    db: sled::Db,
    accounts: sled::Tree,
    holds: sled::Tree,
    user_windows: sled::Tree,
    decisions: sled::Tree,
    decisions_by_account: sled::Tree,
    meta: sled::Tree,
    open_commits: sled::Tree,
    events_unsettled: sled::Tree,
}

/// The meta as stored: [`CheckpointMeta`] without its open commits, which
/// are stored one by one.
#[derive(Serialize, Deserialize)]
struct StoredMeta {
    replay_from_segment: u64,
    open_commits: u64,
    commit_epoch: u64,
    next_decision_id: u64,
}

fn open_commit_key(segment: u64, commit_id: wallet_actors::CommitId) -> [u8; 26] {
    let mut key = [0u8; 26];
    key[..8].copy_from_slice(&segment.to_be_bytes());
    key[8..].copy_from_slice(&commit_id.to_key());
    key
}

fn history_key(account_id: wallet_actors::AccountId, sequence: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&account_id.get().to_be_bytes());
    key[16..].copy_from_slice(&sequence.to_be_bytes());
    key
}

fn decision_key(account_id: wallet_actors::AccountId, id: u64) -> [u8; 24] {
    history_key(account_id, id)
}

fn sled_error(path: &Path) -> impl Fn(sled::Error) -> StorageError + '_ {
    move |error| match error {
        sled::Error::Io(source) => StorageError::io(path, source),
        sled::Error::Corruption { .. } => StorageError::Corrupt { path: path.to_path_buf(), offset: 0 },
        other => StorageError::io(path, std::io::Error::other(other.to_string())),
    }
}

/// Opens a sled database, waiting up to 10 s for its lock. The data
/// directory's `LOCK` keeps other processes out, so a sled lock still held
/// is this process's previous handle, whose threads are still closing.
pub fn open_sled(config: &sled::Config) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match config.open() {
            // sled reports its lock failure only as text.
            Err(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl SnapshotStore {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SnapshotStore, StorageError> {
        let error = sled_error(path);
        let db = open_sled(&sled::Config::new().path(path).cache_capacity(cache_bytes)).map_err(&error)?;
        Ok(SnapshotStore {
            accounts: db.open_tree("accounts").map_err(&error)?,
            holds: db.open_tree("holds").map_err(&error)?,
            user_windows: db.open_tree("user_windows").map_err(&error)?,
            decisions: db.open_tree("decisions").map_err(&error)?,
            decisions_by_account: db.open_tree("decisions_by_account").map_err(&error)?,
            meta: db.open_tree("meta").map_err(&error)?,
            events_unsettled: db.open_tree("events_unsettled").map_err(&error)?,
            open_commits: db.open_tree("open_commits").map_err(&error)?,
            db,
        })
    }

    fn path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from("snapshot")
    }

    /// Every tree, by name: what an image exports and imports
    /// ([`crate::image`]).
    pub(crate) fn trees(&self) -> [(&'static str, &sled::Tree); 8] {
        [
            ("accounts", &self.accounts),
            ("holds", &self.holds),
            ("user_windows", &self.user_windows),
            ("decisions", &self.decisions),
            ("decisions_by_account", &self.decisions_by_account),
            ("meta", &self.meta),
            ("open_commits", &self.open_commits),
            ("events_unsettled", &self.events_unsettled),
        ]
    }

    /// Makes everything written durable.
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        let path = self.path();
        self.db.flush().map_err(sled_error(&path))?;
        Ok(())
    }

    /// The meta without its open commits and the accounts it left
    /// unpublished: its position and counters.
    pub(crate) fn load_meta(&self) -> Result<Option<CheckpointMeta>, StorageError> {
        let path = self.path();
        let Some(value) = self.meta.get("checkpoint").map_err(sled_error(&path))? else {
            return Ok(None);
        };
        let stored: StoredMeta = frame::decode_one(&value, SNAPSHOT_FORMAT_VERSION)?;
        Ok(Some(CheckpointMeta {
            replay_from_segment: stored.replay_from_segment,
            commit_epoch: stored.commit_epoch,
            next_decision_id: stored.next_decision_id,
            ..CheckpointMeta::default()
        }))
    }

    /// Reads what recovery needs up front: open holds and the meta.
    /// Accounts are read one by one when first named
    /// ([`wallet_actors::ports::AccountSource`]). Any value that fails its
    /// checksum is an error: a snapshot is never loaded in part.
    pub fn load(&self) -> Result<LoadedSnapshot, StorageError> {
        let path = self.path();
        let error = sled_error(&path);
        let mut loaded = LoadedSnapshot::default();
        for item in self.holds.iter() {
            let (_, value) = item.map_err(&error)?;
            loaded.holds.push(frame::decode_one(&value, SNAPSHOT_FORMAT_VERSION)?);
        }
        if let Some(value) = self.meta.get("checkpoint").map_err(&error)? {
            let stored: StoredMeta = frame::decode_one(&value, SNAPSHOT_FORMAT_VERSION)?;
            let mut open_commits = Vec::new();
            for item in self.open_commits.scan_prefix(stored.replay_from_segment.to_be_bytes()) {
                let (_, value) = item.map_err(&error)?;
                open_commits.push(frame::decode_one(&value, SNAPSHOT_FORMAT_VERSION)?);
            }
            if open_commits.len() as u64 != stored.open_commits {
                return Err(StorageError::Corrupt { path: path.join("open_commits"), offset: 0 });
            }
            let mut events_unsettled = Vec::new();
            for item in self.events_unsettled.iter() {
                let (key, _) = item.map_err(&error)?;
                let id = <[u8; 16]>::try_from(key.as_ref())
                    .ok()
                    .and_then(|bytes| wallet_actors::AccountId::new(u128::from_be_bytes(bytes)).ok())
                    .ok_or_else(|| StorageError::Corrupt {
                        path: path.join("events_unsettled"),
                        offset: 0,
                    })?;
                events_unsettled.push(id);
            }
            loaded.meta = Some(CheckpointMeta {
                replay_from_segment: stored.replay_from_segment,
                open_commits,
                commit_epoch: stored.commit_epoch,
                next_decision_id: stored.next_decision_id,
                events_unsettled,
            });
        }
        Ok(loaded)
    }

    fn decision(&self, id: u64) -> Result<Option<Decision>, ReadError> {
        match self.decisions.get(id.to_be_bytes()).map_err(|_| ReadError)? {
            Some(value) => frame::decode_one(&value, SNAPSHOT_FORMAT_VERSION).map(Some).map_err(|error| {
                tracing::error!(%error, id, "decision does not decode");
                ReadError
            }),
            None => Ok(None),
        }
    }

    /// Writes one checkpoint and makes it durable. Written in small
    /// batches: sled's `apply_batch` blocks every reader of the tree while it
    /// runs, and history reads go to these trees while the ledger serves. Nothing
    /// here needs one atomic batch: replay skips what accounts already have,
    /// and the meta, written last, is what makes the checkpoint count.
    pub fn write(
        &self,
        captured: &[Captured],
        decisions: &[Decision],
        meta: &CheckpointMeta,
    ) -> Result<(), StorageError> {
        const CHUNK: usize = 2048;
        let path = self.path();
        let error = sled_error(&path);
        let accounts = captured.iter().flat_map(|shard| shard.accounts.iter());
        for chunk in chunked(accounts, CHUNK) {
            let mut batch = sled::Batch::default();
            for account in chunk {
                batch.insert(
                    &account.id.get().to_be_bytes(),
                    frame::encode(account, SNAPSHOT_FORMAT_VERSION)?,
                );
            }
            self.accounts.apply_batch(batch).map_err(&error)?;
        }
        at_point(points::SNAPSHOT_ACCOUNTS)?;
        let windows = captured.iter().flat_map(|shard| shard.user_windows.iter());
        for chunk in chunked(windows, CHUNK) {
            let mut batch = sled::Batch::default();
            for (user_id, window) in chunk {
                batch.insert(&user_id.get().to_be_bytes(), frame::encode(window, SNAPSHOT_FORMAT_VERSION)?);
            }
            self.user_windows.apply_batch(batch).map_err(&error)?;
        }
        at_point(points::SNAPSHOT_USER_WINDOWS)?;
        let mut holds = sled::Batch::default();
        for shard in captured {
            for hold in &shard.holds {
                holds.insert(
                    &hold.pending_id.get().to_be_bytes(),
                    frame::encode(hold, SNAPSHOT_FORMAT_VERSION)?,
                );
            }
            for pending_id in &shard.removed_holds {
                holds.remove(&pending_id.get().to_be_bytes());
            }
        }
        self.holds.apply_batch(holds).map_err(&error)?;
        for chunk in decisions.chunks(CHUNK) {
            let mut batch = sled::Batch::default();
            let mut by_account = sled::Batch::default();
            for decision in chunk {
                batch.insert(&decision.id.to_be_bytes(), frame::encode(decision, SNAPSHOT_FORMAT_VERSION)?);
                by_account.insert(&decision_key(decision.account_id, decision.id), &[]);
            }
            self.decisions.apply_batch(batch).map_err(&error)?;
            self.decisions_by_account.apply_batch(by_account).map_err(&error)?;
        }
        // Under this checkpoint's segment, so the meta in force keeps its own
        // until this one's meta is durable.
        let segment = meta.replay_from_segment;
        for open in &meta.open_commits {
            let key = open_commit_key(segment, open.commit.commit_id);
            self.open_commits.insert(key, frame::encode(open, SNAPSHOT_FORMAT_VERSION)?).map_err(&error)?;
        }
        // Replaced whole, before the meta: a crash in between leaves the
        // earlier meta in force with its journal, whose replay hands those
        // entries again, so a set that is too new only costs a catch-up.
        let mut unsettled = sled::Batch::default();
        for item in self.events_unsettled.iter() {
            let (key, _) = item.map_err(&error)?;
            unsettled.remove(key);
        }
        for account in &meta.events_unsettled {
            unsettled.insert(&account.get().to_be_bytes(), &[]);
        }
        self.events_unsettled.apply_batch(unsettled).map_err(&error)?;
        self.db.flush().map_err(&error)?;
        let stored = StoredMeta {
            replay_from_segment: segment,
            open_commits: meta.open_commits.len() as u64,
            commit_epoch: meta.commit_epoch,
            next_decision_id: meta.next_decision_id,
        };
        self.meta.insert("checkpoint", frame::encode(&stored, SNAPSHOT_FORMAT_VERSION)?).map_err(&error)?;
        self.db.flush().map_err(&error)?;
        // Open commits of earlier checkpoints are no longer read.
        let mut stale = sled::Batch::default();
        for item in self.open_commits.range(..segment.to_be_bytes()) {
            let (key, _) = item.map_err(&error)?;
            stale.remove(key);
        }
        self.open_commits.apply_batch(stale).map_err(&error)?;
        Ok(())
    }
}

fn chunked<'a, T: 'a>(items: impl Iterator<Item = &'a T>, size: usize) -> impl Iterator<Item = Vec<&'a T>> {
    let mut items = items.peekable();
    std::iter::from_fn(move || {
        items.peek()?;
        Some(items.by_ref().take(size).collect())
    })
}

/// The value under a 128-bit id in `tree`, decoded; a value that does not
/// decode is logged and refused.
fn read_one<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    id: u128,
    what: &str,
) -> Result<Option<T>, ReadError> {
    let Some(value) = tree.get(id.to_be_bytes()).map_err(|_| ReadError)? else { return Ok(None) };
    frame::decode_one(&value, SNAPSHOT_FORMAT_VERSION).map(Some).map_err(|error| {
        tracing::error!(%error, id = %format!("{id:032x}"), what, "a snapshot value does not decode");
        ReadError
    })
}

impl wallet_actors::ports::AccountSource for SnapshotStore {
    fn load(&self, account_id: wallet_actors::AccountId) -> Result<Option<Account>, ReadError> {
        read_one(&self.accounts, account_id.get(), "account")
    }

    fn load_user_window(&self, user_id: wallet_actors::UserId) -> Result<Option<UserWindow>, ReadError> {
        read_one(&self.user_windows, user_id.get(), "user window")
    }

    fn all(&self) -> Result<Vec<Account>, ReadError> {
        let mut all = Vec::new();
        for item in self.accounts.iter() {
            let (_, value) = item.map_err(|_| ReadError)?;
            all.push(frame::decode_one(&value, SNAPSHOT_FORMAT_VERSION).map_err(|_| ReadError)?);
        }
        Ok(all)
    }
}

impl wallet_actors::ports::DecisionIndex for SnapshotStore {
    fn decisions(
        &self,
        account_id: Option<wallet_actors::AccountId>,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Decision>, ReadError> {
        let mut found = Vec::new();
        let from = after_id.saturating_add(1);
        match account_id {
            None => {
                for item in self.decisions.range(from.to_be_bytes()..).take(limit) {
                    let (_, value) = item.map_err(|_| ReadError)?;
                    found.push(frame::decode_one(&value, SNAPSHOT_FORMAT_VERSION).map_err(|error| {
                        tracing::error!(%error, "decision does not decode");
                        ReadError
                    })?);
                }
            }
            Some(account_id) => {
                let range = decision_key(account_id, from)..=decision_key(account_id, u64::MAX);
                for item in self.decisions_by_account.range(range).take(limit) {
                    let (key, _) = item.map_err(|_| ReadError)?;
                    let id = key.get(16..24).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
                    if let Some(decision) = id.map(|id| self.decision(id)).transpose()?.flatten() {
                        found.push(decision);
                    }
                }
            }
        }
        Ok(found)
    }
}
