//! Installing an image in place of a node's snapshots: at a start whose own
//! snapshot is older, and while a standby waits.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use wallet_storage::image::{import_state, STATE_FILE};
use wallet_storage::{LocalSnapshots, StorageError};

use super::{io, nats, read_deadline, runs_of, Formats, ImageError, Images, Shipped, SHIPPED};
use crate::journal::read::is_checkpoint_marker;
use crate::journal::JournalStream;
use crate::node::cache;

/// What ends a standby's wait, which cuts its downloads short; none at a
/// start.
type Stop<'a> = Option<&'a tokio::sync::watch::Receiver<bool>>;

/// How often a standby looks for a newer image while it waits.
const PREFETCH_EVERY: Duration = Duration::from_secs(2);

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
    let candidates = match images.newer_than(local_position, stream).await {
        Ok(candidates) if !candidates.is_empty() => candidates,
        Ok(_) => return Ok((snapshots, None)),
        Err(error) => {
            tracing::warn!(%error, "snapshot images could not be listed; starting from the node's own snapshot");
            return Ok((snapshots, None));
        }
    };
    close(snapshots).await;
    let installed = images.install_first(candidates, local_position, stream, None).await;
    Ok((cache::open(dir, stream, shard_count, cache_bytes).await?, installed))
}

/// Closes `snapshots` (sled flushes and joins its threads) off the runtime.
async fn close(snapshots: LocalSnapshots) {
    let _ = tokio::task::spawn_blocking(move || drop(snapshots)).await;
}

/// While a standby waits (nothing has its snapshots open), installs each
/// image newer than its snapshots as it appears, so that its takeover
/// replays only what came after the newest. Returns once `stop` says so,
/// after an install under way (never cut in the middle: the start opens
/// the snapshots next). Failures are waited out.
pub(crate) async fn prefetch(
    images: &Images,
    stream: &JournalStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut local_position = None;
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(error) = images.fetch_newer(&mut local_position, stream, &stop).await {
            tracing::debug!(%error, "standing by: no newer snapshot image now");
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(PREFETCH_EVERY) => {}
        }
    }
}

impl Images {
    /// Images newer than `local_position` that a replay of `stream` can
    /// start from, newest first: at most one past the stream's last
    /// sequence (a stream that lost messages is not replayed from past its
    /// end).
    async fn newer_than(
        &self,
        local_position: u64,
        stream: &JournalStream,
    ) -> Result<Vec<(u64, String)>, ImageError> {
        let stream_last = stream.stream.get_info().await.map_err(nats)?.state.last_sequence;
        let mut names: Vec<(u64, String)> = self
            .bucket
            .list()
            .await
            .map_err(nats)?
            .try_filter_map(
                |o| async move { Ok(self.image_position(&o.name).map(|position| (position, o.name))) },
            )
            .try_collect()
            .await
            .map_err(nats)?;
        names.retain(|&(position, _)| position > local_position && position <= stream_last + 1);
        names.sort_unstable_by(|a, b| b.cmp(a));
        Ok(names)
    }

    /// Installs the newest image past `local_position` (read from the
    /// node's snapshots when not known yet), and moves it on.
    async fn fetch_newer(
        &self,
        local_position: &mut Option<u64>,
        stream: &JournalStream,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ImageError> {
        let known = match *local_position {
            Some(position) => position,
            None => {
                let snapshots =
                    cache::open(&self.dir, stream, self.taken.shard_count, self.cache_bytes).await?;
                let position = snapshots.position();
                close(snapshots).await;
                let position = position?;
                *local_position = Some(position);
                position
            }
        };
        let candidates = self.newer_than(known, stream).await?;
        if let Some(installed) = self.install_first(candidates, known, stream, Some(stop)).await {
            *local_position = Some(installed);
        }
        Ok(())
    }

    /// Installs the first of `candidates` (newest first) that can be read
    /// whole, in place of the node's snapshots, which nothing may have
    /// open. The position of the image installed, if any.
    async fn install_first(
        &self,
        candidates: Vec<(u64, String)>,
        local_position: u64,
        stream: &JournalStream,
        stop: Stop<'_>,
    ) -> Option<u64> {
        for (position, name) in candidates {
            let started = Instant::now();
            match self.install(&name, stream, stop).await {
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
                Err(ImageError::Cancelled) => return None,
                Err(error) => tracing::warn!(%error, %name, "a snapshot image could not be installed"),
            }
        }
        None
    }

    /// Checks the image `name` against this stream and build, downloads it
    /// into `snapshots.incoming/`, checks what it holds, then puts it in
    /// place of `snapshots/`.
    async fn install(&self, name: &str, stream: &JournalStream, stop: Stop<'_>) -> Result<(), ImageError> {
        let image = self.read_image(name).await?;
        let invalid = |why: &str| ImageError::Invalid { name: name.to_string(), why: why.to_string() };
        if image.taken != self.taken {
            return Err(invalid("taken from another stream or shard count"));
        }
        if image.formats != Formats::this_build() {
            return Err(invalid("of another format"));
        }
        // Messages lost and the stream written again since: its marker's
        // sequence holds another message now.
        if !is_checkpoint_marker(stream, &image.publisher, image.marker, image.position)
            .await
            .map_err(nats)?
        {
            return Err(invalid("its checkpoint marker is not where it was in the stream"));
        }
        let incoming = cache::incoming(&self.dir);
        let _ = tokio::fs::remove_dir_all(&incoming).await;
        // Runs the node has already (the same object, shipped or installed
        // before) are linked, not downloaded again.
        let local = super::read_shipped(&self.snapshots_dir().join(SHIPPED)).await;
        let fetch = async {
            for file in &image.files {
                let runs = file.relative.starts_with("index/") || file.relative.starts_with("history/");
                let plain =
                    Path::new(&file.relative).components().count() <= 2 && !file.relative.contains("..");
                if !(file.relative == STATE_FILE || runs && plain) {
                    return Err(invalid("names a file that is not part of an image"));
                }
                let path = incoming.join(&file.relative);
                if !local.contains(file) || !self.link_local(file, &path).await {
                    self.download(&file.object, file.bytes, &path).await?;
                }
            }
            Ok(())
        };
        // Only the downloads may be cut short (what they leave in
        // `snapshots.incoming/` is deleted at the next open), never the
        // import and the swap below.
        match stop {
            Some(stop) => {
                let mut stop = stop.clone();
                tokio::select! {
                    fetched = fetch => fetched?,
                    _ = stop.wait_for(|stopped| *stopped) => return Err(ImageError::Cancelled),
                }
            }
            None => fetch.await?,
        }
        let (dir, taken, cache_bytes, position) =
            (self.dir.clone(), self.taken.clone(), self.cache_bytes, image.position);
        let runs = runs_of(image.files);
        tokio::task::spawn_blocking(move || {
            let state = incoming.join(STATE_FILE);
            let imported = import_state(&state, &incoming.join("snapshot"), cache_bytes)?;
            if imported.position != position {
                return Err(ImageError::Invalid {
                    name: format!("at {position}"),
                    why: format!("its state is of the checkpoint at {}", imported.position),
                });
            }
            std::fs::remove_file(&state).map_err(|e| StorageError::io(&state, e))?;
            cache::record_taken(&incoming, &taken)?;
            let shipped = serde_json::to_vec(&runs).map_err(|_| StorageError::Encode)?;
            cache::write_synced(&incoming.join(SHIPPED), &shipped)?;
            cache::sync_dirs(&incoming)?;
            Ok(cache::replace(&dir, &incoming)?)
        })
        .await
        .map_err(|_| ImageError::Nats("the install stopped".to_string()))?
    }

    /// Links the node's own copy of `file` (which its `shipped.json` names
    /// with the same object) to `path`; whether it could.
    async fn link_local(&self, file: &Shipped, path: &Path) -> bool {
        let own = self.snapshots_dir().join(&file.relative);
        let same_size = tokio::fs::metadata(&own).await.is_ok_and(|m| m.len() == file.bytes);
        if let Some(parent) = path.parent() {
            if tokio::fs::create_dir_all(parent).await.is_err() {
                return false;
            }
        }
        same_size && tokio::fs::hard_link(&own, path).await.is_ok()
    }

    /// Downloads `object` into `path`, synced; it must be `bytes` long (the
    /// object store checks its digest).
    async fn download(&self, object: &str, bytes: u64, path: &Path) -> Result<(), ImageError> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io(parent))?;
        }
        let copy = async {
            let mut reader = self.bucket.get(object).await.map_err(nats)?;
            let mut out = tokio::fs::File::create(path).await.map_err(io(path))?;
            let copied = tokio::io::copy(&mut reader, &mut out).await.map_err(nats)?;
            out.sync_all().await.map_err(io(path))?;
            Ok::<_, ImageError>(copied)
        };
        let copied = tokio::time::timeout(read_deadline(bytes), copy)
            .await
            .map_err(|_| ImageError::TimedOut(object.to_string()))??;
        if copied != bytes {
            return Err(ImageError::Invalid {
                name: object.to_string(),
                why: format!("came back with {copied} bytes of {bytes}"),
            });
        }
        Ok(())
    }
}
