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
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Taken {
    /// The journal stream's creation time, in nanoseconds since the Unix epoch.
    stream_created_ns: String,
    shard_count: u16,
}

const FILE: &str = "stream.json";

/// Opens the snapshots under `dir` for `stream`, dropping any taken from
/// another stream first.
pub(crate) async fn open(
    dir: &Path,
    stream: &JournalStream,
    shard_count: u16,
    cache_bytes: u64,
) -> Result<LocalSnapshots, StorageError> {
    let expected = Taken {
        stream_created_ns: stream.stream.cached_info().created.unix_timestamp_nanos().to_string(),
        shard_count,
    };
    let snapshots = dir.join("snapshots");
    let checked = snapshots.clone();
    tokio::task::spawn_blocking(move || keep_only_for(&checked, &expected))
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
    write_synced(&path, &serde_json::to_vec(expected).map_err(|_| StorageError::Encode)?)
}

/// Writes `bytes` to `path` through a temporary file, renamed once synced.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let temporary = PathBuf::from(format!("{}.tmp", path.display()));
    fs::write(&temporary, bytes).map_err(|e| StorageError::io(&temporary, e))?;
    fs::File::open(&temporary).and_then(|f| f.sync_all()).map_err(|e| StorageError::io(&temporary, e))?;
    fs::rename(&temporary, path).map_err(|e| StorageError::io(path, e))?;
    let parent = path.parent().unwrap_or(Path::new("."));
    fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(parent, e))
}
