//! # wallet-storage: where the ledger's state is made durable
//!
//! - [`frame`]: `[len][crc32][version][postcard]` frames, one layout for all files.
//! - [`journal`]: the group-commit file journal (a dedicated thread, one
//!   `fdatasync` per batch) and its reader, which cuts torn tails and reports
//!   any other damage.
//! - [`snapshot`]: sled snapshots of accounts, holds and older transfers.
//! - [`segment`]: the header of a journal segment: where its acknowledged part ends.
//! - [`scan`]: what a checkpoint reads from the journal segments it retires.
//! - [`embedded`]: the single-node ledger: recover from the data directory,
//!   then serve.
//! - [`log`]: the journal as checkpoints and restarts see it (positions to
//!   replay from), for the file journal here and a node's stream elsewhere.
//! - [`snapshots`]: the snapshot and runs a node keeps on its disk, read back
//!   at a start, and the checkpoints that keep them current.
//! - `checkpoint`: the checkpoint protocol, and rebuilding the shards from
//!   durable state after a failure.
//! - [`runs`]: immutable sorted runs: the transfer index and account history.
//! - [`faults`]: named points where tests make storage fail or stop.
//! - [`users`]: the API's user store: users, emails, owned accounts, risk
//!   rules as written, settings kept across restarts.
//! - [`tables`]: the tables it is written against (`users.sled` here, a
//!   shared directory in cluster mode).
//! - [`sessions`]: refresh-token sessions as the user store keeps them.

use std::path::{Path, PathBuf};

mod checkpoint;
pub mod embedded;
pub mod faults;
pub mod frame;
pub mod image;
pub mod journal;
pub mod log;
pub mod runs;
pub mod scan;
pub mod segment;
pub mod sessions;
pub mod snapshot;
pub mod snapshots;
pub mod tables;
pub mod users;

pub use checkpoint::CheckpointReport;
pub use embedded::{DataDirLock, EmbeddedLedger, EmbeddedOptions, RecoveryReport};
pub use journal::{FileJournal, JournalOptions, JournalStats};
pub use log::{CheckpointLog, JournalReader};
pub use snapshots::{CheckpointEvery, Checkpoints, LocalSnapshots, Replayed, Serving};

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A file operation failed.
    #[error("{op} {path}: {source}", op = "I/O on", path = path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A frame's checksum or length is wrong somewhere other than a torn tail.
    #[error("corrupt data in {path} at byte {offset}", path = path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
    },
    /// The journal does not continue from where the snapshot says it does:
    /// the segment that should come next is missing.
    #[error(
        "the journal in {dir} does not continue the snapshot: segment {expected} is missing (next found: {found:?})",
        dir = dir.display()
    )]
    JournalGap {
        /// The journal's directory.
        dir: PathBuf,
        /// The segment that should be there.
        expected: u64,
        /// The segment found instead, if any.
        found: Option<u64>,
    },
    /// A frame with a valid checksum holds a format version this build does not read.
    #[error("format version {found} is not supported (this build reads {expected})")]
    UnsupportedVersion {
        /// Version found.
        found: u8,
        /// Version expected.
        expected: u8,
    },
    /// A frame with a valid checksum does not decode.
    #[error("a record at byte {offset} does not decode")]
    Decode {
        /// Where.
        offset: u64,
    },
    /// A record does not encode.
    #[error("a record does not encode")]
    Encode,
    /// A record is larger than a frame may be; it was not written.
    #[error("a record of {bytes} bytes is larger than a frame may be ({max})")]
    TooLarge {
        /// Its encoded size.
        bytes: u64,
        /// The largest frame payload.
        max: u64,
    },
    /// The data directory was made with other settings.
    #[error("the data directory was created with {found} shards, not {expected}")]
    ShardCountMismatch {
        /// Shards the data was made with.
        found: u16,
        /// Shards asked for.
        expected: u16,
    },
    /// Another process holds the data directory.
    #[error("the data directory {path} is in use by another process", path = path.display())]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The ledger did not start.
    #[error("ledger failed: {0}")]
    Ledger(#[from] wallet_actors::LedgerError),
    /// A journal record could not be replayed: applying it would break a
    /// guarantee (the journal is wrong), or an account it names could not
    /// be read back from the snapshot. Opening stops here; nothing is
    /// served from a state that is not the durable one.
    #[error("replaying the journal record at byte {offset} of {path}: {source}", path = path.display())]
    Replay {
        /// The segment file.
        path: PathBuf,
        /// Where the record's frame starts.
        offset: u64,
        /// What went wrong.
        source: Box<wallet_actors::shard::ReplayError>,
    },
    /// A journal kept elsewhere (a node's stream on JetStream) could not
    /// be read back, or a record in it does not replay.
    #[error("journal: {0}")]
    Journal(Box<dyn std::error::Error + Send + Sync>),
    /// A commit a crash interrupted could not be completed.
    #[error("recovery: {0}")]
    Completion(Box<wallet_actors::recovery::CompletionError>),
}

impl From<Box<wallet_actors::recovery::CompletionError>> for StorageError {
    fn from(error: Box<wallet_actors::recovery::CompletionError>) -> Self {
        StorageError::Completion(error)
    }
}

impl StorageError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        StorageError::Io { path: path.to_path_buf(), source }
    }
}
