//! Snapshots any node can read (`docs/ARCHITECTURE.md`, "Snapshots any node
//! can read"): after each checkpoint a node publishes an *image* of its
//! snapshot to the JetStream object store [`BUCKET`], and a start whose own
//! snapshot is older (a standby that never served, a new machine) installs
//! the newest image before it replays, so it replays the stream's tail only.
//!
//! Objects in the bucket:
//! - `file/<random>`: a file of an image: the exported sled snapshot, a
//!   run, a runs manifest. Runs are immutable, so a later image names the
//!   objects of the runs an earlier one shipped (`shipped.json` beside the
//!   snapshots remembers which) instead of sending them again;
//! - `image/<stream>/<position>`: what an image holds (its files, the
//!   stream and shard count it was taken from, the position its replay
//!   starts at, where its checkpoint marker is in the stream), written
//!   last: an image is whole once this is there.
//!
//! Any image is a snapshot of the stream before its position (its
//! checkpoint refused a range another node wrote in), whoever published it,
//! so installing one needs no lease; a start takes the newest it can read
//! whole whose marker is still in the stream ([`install`]) and falls back to
//! its own snapshot otherwise. The stream is never cut, so a missing or
//! damaged image costs replay time, nothing else.

mod install;
mod publish;
mod uploader;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::object_store::{self, ObjectStore};
use serde::{Deserialize, Serialize};
use wallet_storage::StorageError;

use super::cache::{self, Taken};
use crate::journal::JournalStream;

pub(crate) use install::{open_snapshots, prefetch};
pub(crate) use uploader::Uploader;

/// The object store bucket holding the images.
pub const BUCKET: &str = "WALLET_SNAPSHOTS";

const IMAGES: &str = "image/";
const FILE_PREFIX: &str = "file/";

/// Images kept: the newest and the one before, which a start may be
/// reading while the newest is published.
const IMAGES_KEPT: usize = 2;

/// A file no image names is deleted once this old: a node may be
/// publishing an image that names it.
const UNNAMED_FILE_AGE: Duration = Duration::from_secs(600);

/// Beside the snapshots: which objects hold which of its run files.
const SHIPPED: &str = "shipped.json";

/// In the node's directory: images staged for publication.
const STAGING: &str = "image-staging";

/// An image's description, `image/<stream>/<position>`.
#[derive(Debug, Serialize, Deserialize)]
struct Image {
    /// Where the replay after it starts.
    position: u64,
    /// The stream sequence of its checkpoint's marker, and the journal
    /// subject of the node that wrote it.
    marker: u64,
    publisher: String,
    taken: Taken,
    formats: Formats,
    files: Vec<Shipped>,
}

/// The layouts of an image's parts: a build reads only its own.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Formats {
    image: u8,
    snapshot: u8,
    runs: u8,
}

impl Formats {
    fn this_build() -> Formats {
        Formats {
            image: wallet_storage::image::IMAGE_FORMAT_VERSION,
            snapshot: wallet_storage::snapshot::SNAPSHOT_FORMAT_VERSION,
            runs: wallet_storage::runs::RUN_FORMAT_VERSION,
        }
    }
}

/// Time to read an object: a base, and a lower bound on the rate (the
/// object store's read ends on a last chunk that a purge meanwhile never
/// sends, so a read has a deadline).
const READ_BASE: Duration = Duration::from_secs(10);
const READ_BYTES_PER_SEC_MIN: u64 = 4 << 20;

fn read_deadline(bytes: u64) -> Duration {
    READ_BASE + Duration::from_secs(bytes / READ_BYTES_PER_SEC_MIN)
}

/// A file of an image and the object holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Shipped {
    relative: String,
    object: String,
    bytes: u64,
}

/// Why an image could not be published or installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImageError {
    #[error("object store: {0}")]
    Nats(String),
    #[error("reading {0} took too long")]
    TimedOut(String),
    #[error("the standby's wait ended during the download")]
    Cancelled,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("image {name}: {why}")]
    Invalid { name: String, why: String },
}

fn nats(error: impl std::fmt::Display) -> ImageError {
    ImageError::Nats(error.to_string())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |error| ImageError::Storage(StorageError::io(path, error))
}

/// A node's images: where it publishes them and installs them from.
#[derive(Clone)]
pub(crate) struct Images {
    bucket: ObjectStore,
    taken: Taken,
    /// The node's directory (its snapshots are in `snapshots/`).
    dir: PathBuf,
    cache_bytes: u64,
}

impl Images {
    /// Opens (creating) the bucket, with as many replicas as the journal.
    pub(crate) async fn open(
        stream: &JournalStream,
        shard_count: u16,
        dir: &Path,
        cache_bytes: u64,
    ) -> Result<Images, ImageError> {
        let config = object_store::Config {
            bucket: BUCKET.to_string(),
            description: Some("wallet: snapshots any node can install".to_string()),
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: stream.stream.cached_info().config.num_replicas,
            ..Default::default()
        };
        let bucket = match stream.js.create_object_store(config).await {
            Ok(bucket) => bucket,
            // Made with other settings (more replicas): taken as it is.
            Err(created) => stream.js.get_object_store(BUCKET).await.map_err(|opened| {
                ImageError::Nats(format!("creating the bucket: {created}; opening it: {opened}"))
            })?,
        };
        // Images a crash left staged: their checkpoints have newer ones.
        let staging = dir.join(STAGING);
        if tokio::fs::try_exists(&staging).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&staging).await.map_err(io(&staging))?;
        }
        Ok(Images { bucket, taken: Taken::of(stream, shard_count), dir: dir.to_path_buf(), cache_bytes })
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.dir.join(cache::SNAPSHOTS)
    }

    /// The prefix of this stream's images: images of a stream made anew
    /// never mix with these.
    fn image_prefix(&self) -> String {
        format!("{IMAGES}{}/", self.taken.stream_created_ns)
    }

    fn image_name(&self, position: u64) -> String {
        format!("{}{position:020}", self.image_prefix())
    }

    /// The position of this stream's image `name`.
    fn image_position(&self, name: &str) -> Option<u64> {
        name.strip_prefix(&self.image_prefix())?.parse().ok()
    }

    async fn read_image(&self, name: &str) -> Result<Image, ImageError> {
        let bytes = self.read_object(name).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Invalid { name: name.to_string(), why: e.to_string() })
    }

    async fn read_object(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let read = async {
            let mut object = self.bucket.get(name).await.map_err(nats)?;
            let mut bytes = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes).await.map_err(nats)?;
            Ok(bytes)
        };
        tokio::time::timeout(read_deadline(0), read)
            .await
            .map_err(|_| ImageError::TimedOut(name.to_string()))?
    }
}

fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    u128::from_le_bytes(bytes)
}

/// The runs among an image's files (what `shipped.json` keeps).
fn runs_of(files: Vec<Shipped>) -> Vec<Shipped> {
    files.into_iter().filter(|f| f.relative.contains("/run-")).collect()
}

/// What `shipped.json` says, or nothing (a missing or unreadable one only
/// means the runs are sent again).
async fn read_shipped(path: &Path) -> Vec<Shipped> {
    let bytes = tokio::fs::read(path).await.unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or_default()
}

async fn write_shipped(path: &Path, shipped: &[Shipped]) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec(shipped).map_err(|_| StorageError::Encode)?;
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || cache::write_synced(&path, &bytes))
        .await
        .map_err(|_| ImageError::Nats("writing shipped.json stopped".to_string()))??;
    Ok(())
}
