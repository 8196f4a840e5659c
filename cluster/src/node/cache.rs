//! The node's snapshots on its own disk: the embedded node's sled snapshot
//! and runs, kept in `<dir>/snapshots/` for one journal stream. They name
//! the stream they were taken from (`stream.json`: its creation time and
//! the shard count); a stream made anew (deleted and created again, or
//! another server) makes them meaningless, so they are dropped and the
//! start replays the whole stream.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wallet_storage::{LocalSnapshots, StorageError};

use crate::journal::JournalStream;

/// What the snapshots were taken from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Taken {
    /// The journal stream's creation time, in nanoseconds since the Unix epoch.
    pub(crate) stream_created_ns: String,
    pub(crate) shard_count: u16,
}

impl Taken {
    /// What snapshots taken now from `stream` are taken from.
    pub(crate) fn of(stream: &JournalStream, shard_count: u16) -> Taken {
        Taken {
            stream_created_ns: stream.stream.cached_info().created.unix_timestamp_nanos().to_string(),
            shard_count,
        }
    }
}

const FILE: &str = "stream.json";

/// The snapshots' directory under the node's.
pub(crate) const SNAPSHOTS: &str = "snapshots";
/// An image being installed ([`super::images`]).
const INCOMING: &str = "snapshots.incoming";
/// The snapshots an installed image replaces, until deleted.
const REPLACED: &str = "snapshots.replaced";

/// Opens the snapshots under `dir` for `stream`, dropping any taken from
/// another stream first.
pub(crate) async fn open(
    dir: &Path,
    stream: &JournalStream,
    shard_count: u16,
    cache_bytes: u64,
) -> Result<LocalSnapshots, StorageError> {
    let expected = Taken::of(stream, shard_count);
    let snapshots = dir.join(SNAPSHOTS);
    let checked = snapshots.clone();
    let node_dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        finish_replacing(&node_dir)?;
        keep_only_for(&checked, &expected)
    })
    .await
    .map_err(|_| StorageError::Ledger(wallet_actors::LedgerError::Unavailable))??;
    LocalSnapshots::open(&snapshots, cache_bytes).await
}

fn keep_only_for(snapshots: &Path, expected: &Taken) -> Result<(), StorageError> {
    let path = snapshots.join(FILE);
    let found: Option<Taken> = fs::read(&path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if found.as_ref() == Some(expected) {
        return Ok(());
    }
    if snapshots.exists() {
        tracing::warn!(
            dir = %snapshots.display(),
            ?found,
            ?expected,
            "the snapshots here were taken from another journal stream; dropped, the stream is replayed whole"
        );
        fs::remove_dir_all(snapshots).map_err(|e| StorageError::io(snapshots, e))?;
    }
    fs::create_dir_all(snapshots).map_err(|e| StorageError::io(snapshots, e))?;
    record_taken(snapshots, expected)
}

/// Records in `snapshots` what they were taken from.
pub(crate) fn record_taken(snapshots: &Path, taken: &Taken) -> Result<(), StorageError> {
    write_synced(&snapshots.join(FILE), &serde_json::to_vec(taken).map_err(|_| StorageError::Encode)?)
}

/// Puts the snapshots in `incoming` (complete and synced) in place of the
/// node's: the old ones are moved aside, the new ones moved in, then the
/// old ones deleted. A crash in between is finished at the next open.
pub(crate) fn replace(dir: &Path, incoming: &Path) -> Result<(), StorageError> {
    let (snapshots, replaced) = (dir.join(SNAPSHOTS), dir.join(REPLACED));
    if replaced.exists() {
        fs::remove_dir_all(&replaced).map_err(|e| StorageError::io(&replaced, e))?;
    }
    if snapshots.exists() {
        fs::rename(&snapshots, &replaced).map_err(|e| StorageError::io(&snapshots, e))?;
    }
    fs::rename(incoming, &snapshots).map_err(|e| StorageError::io(incoming, e))?;
    sync_dir(dir)?;
    fs::remove_dir_all(&replaced).map_err(|e| StorageError::io(&replaced, e))
}

/// Finishes what a crash interrupted: an image half downloaded is dropped;
/// snapshots moved aside stay deleted if the new ones are in place, and
/// come back otherwise.
fn finish_replacing(dir: &Path) -> Result<(), StorageError> {
    let (snapshots, incoming, replaced) = (dir.join(SNAPSHOTS), dir.join(INCOMING), dir.join(REPLACED));
    if incoming.exists() {
        fs::remove_dir_all(&incoming).map_err(|e| StorageError::io(&incoming, e))?;
    }
    if replaced.exists() {
        if snapshots.exists() {
            fs::remove_dir_all(&replaced).map_err(|e| StorageError::io(&replaced, e))?;
        } else {
            fs::rename(&replaced, &snapshots).map_err(|e| StorageError::io(&replaced, e))?;
            sync_dir(dir)?;
        }
    }
    Ok(())
}

/// Where an image is downloaded before it replaces the node's snapshots.
pub(crate) fn incoming(dir: &Path) -> std::path::PathBuf {
    dir.join(INCOMING)
}

/// Syncs `snapshots` and the directories in it, so the files made there
/// stay named after a crash.
pub(crate) fn sync_dirs(snapshots: &Path) -> Result<(), StorageError> {
    for entry in fs::read_dir(snapshots).map_err(|e| StorageError::io(snapshots, e))? {
        let path = entry.map_err(|e| StorageError::io(snapshots, e))?.path();
        if path.is_dir() {
            sync_dir(&path)?;
        }
    }
    sync_dir(snapshots)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(dir, e))
}

/// Writes `bytes` to `path` through a temporary file, renamed once synced.
pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    fs::write(&temporary, bytes).map_err(|e| StorageError::io(&temporary, e))?;
    fs::File::open(&temporary).and_then(|f| f.sync_all()).map_err(|e| StorageError::io(&temporary, e))?;
    fs::rename(&temporary, path).map_err(|e| StorageError::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}
