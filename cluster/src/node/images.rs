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
//! - `image/<position>`: what an image holds (its files, the stream and
//!   shard count it was taken from, the position its replay starts at),
//!   written last: an image is whole once this is there.
//!
//! Any image is a snapshot of the stream before its position (its
//! checkpoint refused a range another node wrote in), whoever published it,
//! so installing one needs no lease; a start takes the newest it can read
//! whole and falls back to its own snapshot otherwise. The stream is never
//! cut, so a missing or damaged image costs replay time, nothing else.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::object_store::{self, ObjectStore};
use futures_util::TryStreamExt;
use serde::{Deserialize, Serialize};
use wallet_storage::image::{import_state, ImageFile, IMAGE_FORMAT_VERSION, STATE_FILE};
use wallet_storage::{LocalSnapshots, StorageError};

use super::cache::{self, Taken};
use crate::journal::JournalStream;

/// The object store bucket holding the images.
pub const BUCKET: &str = "WALLET_SNAPSHOTS";

const IMAGE_PREFIX: &str = "image/";
const FILE_PREFIX: &str = "file/";

/// Images kept: the newest and the one before, which a start may be
/// reading while the newest is published.
const IMAGES_KEPT: usize = 2;

/// A file no image names is deleted once this old: a node may be
/// publishing an image that names it.
const UNNAMED_FILE_AGE: Duration = Duration::from_secs(600);

/// Beside the snapshots: which objects hold which of its run files.
const SHIPPED: &str = "shipped.json";

/// An image's description, `image/<position>`.
#[derive(Debug, Serialize, Deserialize)]
struct Image {
    position: u64,
    taken: Taken,
    format: u8,
    files: Vec<Shipped>,
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
        // Made with other settings (more replicas): take it as it is.
        let bucket = match stream.js.create_object_store(config).await {
            Ok(bucket) => bucket,
            Err(_) => stream.js.get_object_store(BUCKET).await.map_err(nats)?,
        };
        Ok(Images { bucket, taken: Taken::of(stream, shard_count), dir: dir.to_path_buf(), cache_bytes })
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.dir.join(cache::SNAPSHOTS)
    }

    /// Publishes the image of `snapshots`, whose checkpoint at `position`
    /// just came in force; call only while no checkpoint runs. A failure
    /// leaves the images as they were.
    pub(crate) async fn publish(&self, snapshots: &LocalSnapshots, position: u64) -> Result<(), ImageError> {
        let started = Instant::now();
        let scratch = self.dir.join("image-export");
        let state = scratch.clone();
        let exporting = snapshots.clone();
        let (_entries, files) = tokio::task::spawn_blocking(move || {
            let entries = exporting.export_state(&state)?;
            let bytes = std::fs::metadata(&state).map_err(|e| StorageError::io(&state, e))?.len();
            let mut files = exporting.run_files()?;
            files.push(ImageFile { relative: STATE_FILE.to_string(), path: state, bytes });
            Ok::<_, StorageError>((entries, files))
        })
        .await
        .map_err(|_| ImageError::Nats("the export stopped".to_string()))??;
        let before = read_shipped(&self.snapshots_dir().join(SHIPPED)).await;
        let mut shipped = Vec::with_capacity(files.len());
        let mut sent_bytes = 0u64;
        for file in files.iter() {
            match self.already_shipped(&before, file).await {
                Some(object) => shipped.push(object),
                None => {
                    shipped.push(self.send(file).await?);
                    sent_bytes += file.bytes;
                }
            }
        }
        let image =
            Image { position, taken: self.taken.clone(), format: IMAGE_FORMAT_VERSION, files: shipped };
        let description = serde_json::to_vec(&image).map_err(|e| nats(e.to_string()))?;
        self.bucket.put(image_name(position).as_str(), &mut description.as_slice()).await.map_err(nats)?;
        let _ = tokio::fs::remove_file(&scratch).await;
        let runs: Vec<Shipped> = image.files.into_iter().filter(|f| f.relative.contains("/run-")).collect();
        write_shipped(&self.snapshots_dir().join(SHIPPED), &runs).await?;
        metrics::counter!("wallet_snapshot_images_published_total").increment(1);
        metrics::counter!("wallet_snapshot_image_bytes_sent_total").increment(sent_bytes);
        metrics::histogram!("wallet_snapshot_image_publish_seconds").record(started.elapsed().as_secs_f64());
        tracing::info!(
            position,
            sent_bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot image published"
        );
        if let Err(error) = self.collect_garbage().await {
            tracing::warn!(%error, "old snapshot images could not be deleted; the next publication tries again");
        }
        Ok(())
    }

    /// The object already holding `file`, if an earlier image shipped it
    /// and the bucket still has it whole.
    async fn already_shipped(&self, before: &[Shipped], file: &ImageFile) -> Option<Shipped> {
        let known = before.iter().find(|s| s.relative == file.relative && s.bytes == file.bytes)?;
        let info = self.bucket.info(known.object.as_str()).await.ok()?;
        (!info.deleted && info.size as u64 == file.bytes).then(|| known.clone())
    }

    async fn send(&self, file: &ImageFile) -> Result<Shipped, ImageError> {
        let object = format!("{FILE_PREFIX}{:032x}", random_u128());
        let mut reader = tokio::fs::File::open(&file.path).await.map_err(io(&file.path))?;
        let info = self.bucket.put(object.as_str(), &mut reader).await.map_err(nats)?;
        if info.size as u64 != file.bytes {
            return Err(ImageError::Invalid {
                name: object,
                why: format!("sent {} bytes of {}", info.size, file.bytes),
            });
        }
        Ok(Shipped { relative: file.relative.clone(), object, bytes: file.bytes })
    }

    /// Deletes images but the newest [`IMAGES_KEPT`], and files no kept
    /// image names once they are [`UNNAMED_FILE_AGE`] old.
    async fn collect_garbage(&self) -> Result<(), ImageError> {
        let objects: Vec<object_store::ObjectInfo> =
            self.bucket.list().await.map_err(nats)?.try_collect().await.map_err(nats)?;
        let mut images: Vec<(u64, &str)> =
            objects.iter().filter_map(|o| Some((image_position(&o.name)?, o.name.as_str()))).collect();
        images.sort_unstable_by(|a, b| b.cmp(a));
        let mut named = std::collections::HashSet::new();
        for &(_, name) in images.iter().take(IMAGES_KEPT) {
            for file in self.read_image(name).await?.files {
                named.insert(file.object);
            }
        }
        for &(_, name) in images.iter().skip(IMAGES_KEPT) {
            self.bucket.delete(name).await.map_err(nats)?;
        }
        let now = std::time::SystemTime::now();
        for object in objects.iter().filter(|o| o.name.starts_with(FILE_PREFIX) && !named.contains(&o.name)) {
            let modified = object.modified.map(std::time::SystemTime::from);
            let old =
                modified.and_then(|at| now.duration_since(at).ok()).is_some_and(|age| age > UNNAMED_FILE_AGE);
            if old {
                self.bucket.delete(object.name.as_str()).await.map_err(nats)?;
            }
        }
        Ok(())
    }

    async fn read_image(&self, name: &str) -> Result<Image, ImageError> {
        let bytes = self.read_object(name).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Invalid { name: name.to_string(), why: e.to_string() })
    }

    async fn read_object(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut object = self.bucket.get(name).await.map_err(nats)?;
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes).await.map_err(nats)?;
        Ok(bytes)
    }

    /// Installs the first of `candidates` (newest first) that can be read
    /// whole, in place of the node's snapshots, which nothing may have
    /// open. The position of the image installed, if any.
    async fn install_first(&self, candidates: Vec<(u64, String)>, local_position: u64) -> Option<u64> {
        for (position, name) in candidates {
            let started = Instant::now();
            match self.install(&name).await {
                Ok(()) => {
                    metrics::counter!("wallet_snapshot_images_installed_total").increment(1);
                    tracing::info!(
                        position,
                        local_position,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "installed a snapshot image"
                    );
                    return Some(position);
                }
                Err(error) => tracing::warn!(%error, %name, "a snapshot image could not be installed"),
            }
        }
        None
    }

    /// The images a replay of this stream can start from that are newer
    /// than the node's own snapshot (at `local_position`), newest first: at
    /// most one past the stream's last sequence (a stream that lost
    /// messages is not replayed from past its end).
    async fn candidates(
        &self,
        local_position: u64,
        stream_last: u64,
    ) -> Result<Vec<(u64, String)>, ImageError> {
        let mut names: Vec<(u64, String)> = self
            .bucket
            .list()
            .await
            .map_err(nats)?
            .try_filter_map(|o| async move { Ok(image_position(&o.name).map(|position| (position, o.name))) })
            .try_collect()
            .await
            .map_err(nats)?;
        names.retain(|&(position, _)| position > local_position && position <= stream_last + 1);
        names.sort_unstable_by(|a, b| b.cmp(a));
        Ok(names)
    }

    /// Downloads the image into `snapshots.incoming/`, then puts it in
    /// place of `snapshots/`.
    async fn install(&self, name: &str) -> Result<(), ImageError> {
        let image = self.read_image(name).await?;
        let invalid = |why: &str| ImageError::Invalid { name: name.to_string(), why: why.to_string() };
        if image.taken != self.taken {
            return Err(invalid("taken from another stream or shard count"));
        }
        if image.format != IMAGE_FORMAT_VERSION {
            return Err(invalid("of another format"));
        }
        let incoming = cache::incoming(&self.dir);
        let _ = tokio::fs::remove_dir_all(&incoming).await;
        let mut state = None;
        for file in &image.files {
            let relative = Path::new(&file.relative);
            if relative.components().count() > 2 || relative.is_absolute() || file.relative.contains("..") {
                return Err(invalid("names a file outside the snapshots"));
            }
            let path = incoming.join(relative);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
            }
            let mut object = self.bucket.get(file.object.as_str()).await.map_err(nats)?;
            let mut out = tokio::fs::File::create(&path).await.map_err(io(&path))?;
            let copied = tokio::io::copy(&mut object, &mut out).await.map_err(nats)?;
            out.sync_all().await.map_err(io(&path))?;
            if copied != file.bytes {
                return Err(invalid("a file came back with another size"));
            }
            if file.relative == STATE_FILE {
                state = Some(path);
            }
        }
        let state = state.ok_or_else(|| invalid("holds no state"))?;
        let (dir, taken, cache_bytes) = (self.dir.clone(), self.taken.clone(), self.cache_bytes);
        let runs: Vec<Shipped> = image.files.into_iter().filter(|f| f.relative.contains("/run-")).collect();
        tokio::task::spawn_blocking(move || {
            import_state(&state, &incoming.join("snapshot"), cache_bytes)?;
            std::fs::remove_file(&state).map_err(|e| StorageError::io(&state, e))?;
            cache::record_taken(&incoming, &taken)?;
            let shipped = serde_json::to_vec(&runs).map_err(|_| StorageError::Encode)?;
            cache::write_synced(&incoming.join(SHIPPED), &shipped)?;
            cache::replace(&dir, &incoming)
        })
        .await
        .map_err(|_| ImageError::Nats("the install stopped".to_string()))??;
        Ok(())
    }
}

/// The node's snapshots, or the newest image in their place when it is
/// newer than they are (the snapshots are closed for the install and
/// opened again). Images that cannot be listed or read only cost replay:
/// the node's own snapshots are used then. Also the image's position.
pub(crate) async fn open_snapshots(
    images: Option<&Images>,
    dir: &Path,
    stream: &JournalStream,
    shard_count: u16,
    cache_bytes: u64,
) -> Result<(LocalSnapshots, Option<u64>), StorageError> {
    let snapshots = cache::open(dir, stream, shard_count, cache_bytes).await?;
    let Some(images) = images else {
        return Ok((snapshots, None));
    };
    let local_position = snapshots.position()?;
    let newer = match stream.stream.get_info().await {
        Ok(info) => images.candidates(local_position, info.state.last_sequence).await,
        Err(error) => Err(nats(error)),
    };
    let candidates = match newer {
        Ok(candidates) if !candidates.is_empty() => candidates,
        Ok(_) => return Ok((snapshots, None)),
        Err(error) => {
            tracing::warn!(%error, "snapshot images could not be listed; starting from the node's own snapshot");
            return Ok((snapshots, None));
        }
    };
    drop(snapshots);
    let installed = images.install_first(candidates, local_position).await;
    Ok((cache::open(dir, stream, shard_count, cache_bytes).await?, installed))
}

fn image_name(position: u64) -> String {
    format!("{IMAGE_PREFIX}{position:020}")
}

fn image_position(name: &str) -> Option<u64> {
    name.strip_prefix(IMAGE_PREFIX)?.parse().ok()
}

fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut bytes);
    u128::from_le_bytes(bytes)
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
