//! Named places where a test can make storage fail or the process stop,
//! to check what happens at exactly that step (a checkpoint's deletion,
//! the gap between a commit and its application, ...), and a log of what
//! the journal synced, to simulate a power loss.
//!
//! Built only with the `fault-injection` feature: without it, [`hit`] and
//! [`note_synced`] are empty inline functions and nothing here costs
//! anything. A test arms a point with [`arm`] (in process) or, for a child
//! process, through the `WALLET_FAULTS` environment variable: items
//! `name=error`, `name=error*3` (the next three hits fail), `name=abort`
//! (the first hit aborts the process, as kill -9 would stop it there) or
//! `name=abort@5` (the fifth hit does), separated by commas.
//!
//! With `WALLET_SYNC_LOG=<file>`, the journal appends `<segment> <length>`
//! to that file after every sync: the bytes of each segment that a power
//! loss could not take. A test truncates the segments to those lengths
//! after a kill (`testkit::power_loss`), dropping what only the page cache
//! held, and checks that no acknowledged transfer went with it.

/// What an armed point does when reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with an I/O error, this many more times.
    Error(u32),
    /// The process aborts when the point is reached for the n-th time
    /// from now (1: the next time).
    Abort(u32),
}

/// The points, by name; every call site names one of these.
pub mod points {
    /// After the old journal segments are unlinked, before their
    /// directory is synced (a checkpoint's last step).
    pub const DELETE_SEGMENTS: &str = "journal.delete_segments";
    /// The journal writer's `fdatasync` of a batch (an error here is a
    /// failed sync: whether the batch is durable is unknown).
    pub const JOURNAL_SYNC: &str = "journal.sync";
    /// A batch holding a `Commit` record is durable, and no callback has
    /// run: the gap between a commit and its `CommitApplied`.
    pub const COMMIT_DURABLE: &str = "journal.commit_durable";
    /// A checkpoint rotated the journal.
    pub const CHECKPOINT_ROTATED: &str = "checkpoint.rotated";
    /// A checkpoint captured the shards' changes.
    pub const CHECKPOINT_CAPTURED: &str = "checkpoint.captured";
    /// A checkpoint's marker is durable.
    pub const CHECKPOINT_MARKED: &str = "checkpoint.marked";
    /// A checkpoint wrote its transfer-index run.
    pub const CHECKPOINT_INDEXED: &str = "checkpoint.indexed";
    /// A checkpoint wrote its history run.
    pub const CHECKPOINT_HISTORY: &str = "checkpoint.history";
    /// A snapshot write put its accounts in sled, and not yet the users'
    /// debit windows: replay meets accounts newer than their users' windows.
    pub const SNAPSHOT_ACCOUNTS: &str = "snapshot.accounts";
    /// A snapshot write put the users' debit windows in sled, and not yet
    /// its meta: replay meets windows that counted what it replays.
    pub const SNAPSHOT_USER_WINDOWS: &str = "snapshot.user_windows";
    /// A checkpoint's snapshot and meta are durable (it is in force).
    pub const CHECKPOINT_SNAPSHOT: &str = "checkpoint.snapshot";
    /// A checkpoint deleted the segments it retired.
    pub const CHECKPOINT_DONE: &str = "checkpoint.done";
    /// Every abort point, for tests that visit them all.
    pub const ABORTS: [&str; 10] = [
        COMMIT_DURABLE,
        CHECKPOINT_ROTATED,
        CHECKPOINT_CAPTURED,
        CHECKPOINT_MARKED,
        CHECKPOINT_INDEXED,
        CHECKPOINT_HISTORY,
        SNAPSHOT_ACCOUNTS,
        SNAPSHOT_USER_WINDOWS,
        CHECKPOINT_SNAPSHOT,
        CHECKPOINT_DONE,
    ];
}

/// Reaches a named point: fails as armed there, or goes on.
pub(crate) fn at_point(point: &'static str) -> Result<(), crate::StorageError> {
    hit(point).map_err(|error| crate::StorageError::io(std::path::Path::new(point), error))
}

#[cfg(feature = "fault-injection")]
mod armed {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use super::Fault;

    fn table() -> &'static Mutex<HashMap<String, Fault>> {
        static TABLE: OnceLock<Mutex<HashMap<String, Fault>>> = OnceLock::new();
        TABLE.get_or_init(|| Mutex::new(from_env()))
    }

    fn from_env() -> HashMap<String, Fault> {
        let mut faults = HashMap::new();
        let Ok(spec) = std::env::var("WALLET_FAULTS") else { return faults };
        for item in spec.split(',').filter(|item| !item.is_empty()) {
            let Some((name, action)) = item.split_once('=') else { continue };
            let fault = match (action.split_once('*'), action.split_once('@')) {
                (Some(("error", times)), _) => times.parse().ok().map(Fault::Error),
                (_, Some(("abort", nth))) => nth.parse().ok().map(Fault::Abort),
                _ if action == "error" => Some(Fault::Error(1)),
                _ if action == "abort" => Some(Fault::Abort(1)),
                _ => None,
            };
            if let Some(fault) = fault {
                faults.insert(name.to_string(), fault);
            }
        }
        faults
    }

    pub fn arm(name: &str, fault: Fault) {
        table().lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_string(), fault);
    }

    pub fn hit(name: &str) -> std::io::Result<()> {
        let mut table = table().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match table.get_mut(name) {
            None | Some(Fault::Error(0)) | Some(Fault::Abort(0)) => Ok(()),
            Some(Fault::Abort(1)) => {
                eprintln!("fault injected: abort at {name}");
                std::process::abort()
            }
            Some(Fault::Abort(nth)) => {
                *nth -= 1;
                Ok(())
            }
            Some(Fault::Error(left)) => {
                *left -= 1;
                Err(std::io::Error::other(format!("fault injected at {name}")))
            }
        }
    }

    pub fn note_synced(segment: &std::path::Path, length: u64) {
        use std::io::Write;
        static LOG: OnceLock<Option<Mutex<std::fs::File>>> = OnceLock::new();
        let log = LOG.get_or_init(|| {
            let path = std::env::var_os("WALLET_SYNC_LOG")?;
            std::fs::OpenOptions::new().create(true).append(true).open(path).ok().map(Mutex::new)
        });
        if let Some(file) = log {
            let mut file = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let _ = writeln!(file, "{} {length}", segment.display());
        }
    }
}

/// Arms `name`: the next time storage reaches it, `fault` happens.
#[cfg(feature = "fault-injection")]
pub fn arm(name: &str, fault: Fault) {
    armed::arm(name, fault);
}

/// Storage reached the point `name`: fails or aborts if a test armed it.
#[cfg(feature = "fault-injection")]
pub fn hit(name: &str) -> std::io::Result<()> {
    armed::hit(name)
}

/// Storage reached the point `name` (no faults in this build).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_name: &str) -> std::io::Result<()> {
    Ok(())
}

/// The first `length` bytes of `segment` are synced (logged for tests that
/// simulate a power loss, when `WALLET_SYNC_LOG` names a file).
#[cfg(feature = "fault-injection")]
pub fn note_synced(segment: &std::path::Path, length: u64) {
    armed::note_synced(segment, length);
}

/// The first `length` bytes of `segment` are synced (nothing to log in
/// this build).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn note_synced(_segment: &std::path::Path, _length: u64) {}
