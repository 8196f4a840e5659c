//! Publishing a checkpoint's image, and deleting images no start needs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use async_nats::jetstream::object_store::ObjectInfo;
use futures_util::TryStreamExt;
use wallet_storage::image::{ImageFile, STATE_FILE};
use wallet_storage::{LocalSnapshots, StorageError};

use super::{
    io, nats, random_u128, runs_of, Formats, Image, ImageError, Images, Shipped, FILE_PREFIX, IMAGES,
    IMAGES_KEPT, SHIPPED, STAGING, UNNAMED_FILE_AGE,
};
use crate::journal::read::find_checkpoint_marker;
use crate::journal::JournalStream;

impl Images {
    /// Stages the image of `snapshots`, whose checkpoint at `position` just
    /// came in force, for [`Images::publish`]: the state exported and the
    /// runs in force linked into a directory of its own, so that later
    /// checkpoints may write and merge meanwhile. Call only while no
    /// checkpoint runs. Local work only: no NATS request.
    pub(crate) async fn stage(
        &self,
        snapshots: &LocalSnapshots,
        position: u64,
    ) -> Result<Staged, ImageError> {
        let dir = self.dir.join(STAGING).join(position.to_string());
        let (exporting, staging) = (snapshots.clone(), dir.clone());
        let staged = tokio::task::spawn_blocking(move || stage_files(&exporting, &staging))
            .await
            .map_err(|_| ImageError::Nats("staging the image stopped".to_string()));
        match staged {
            Ok(Ok(files)) => Ok(Staged { position, dir, files }),
            Ok(Err(error)) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                Err(error.into())
            }
            Err(error) => Err(error),
        }
    }

    /// Publishes `staged`, its checkpoint's marker written on `subject`
    /// (this node's journal), then deletes what no start needs. A failure
    /// leaves the images as they were. The staged files are deleted either
    /// way.
    pub(crate) async fn publish(
        &self,
        staged: Staged,
        stream: &JournalStream,
        subject: &str,
    ) -> Result<(), ImageError> {
        let started = Instant::now();
        let position = staged.position;
        let published = match find_checkpoint_marker(stream, subject, position).await {
            Ok(Some(marker)) => self.send_all(&staged.files, position, marker, subject).await,
            Ok(None) => Err(ImageError::Invalid {
                name: self.image_name(position),
                why: "its checkpoint marker is not in the stream".to_string(),
            }),
            Err(error) => Err(nats(error)),
        };
        staged.discard().await;
        let sent_bytes = published?;
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

    /// Sends what earlier images did not ship, then the image naming all of
    /// it; the bytes sent.
    async fn send_all(
        &self,
        files: &[ImageFile],
        position: u64,
        marker: u64,
        subject: &str,
    ) -> Result<u64, ImageError> {
        let before = super::read_shipped(&self.snapshots_dir().join(SHIPPED)).await;
        let mut shipped = Vec::with_capacity(files.len());
        let mut sent_bytes = 0u64;
        for file in files {
            match self.already_shipped(&before, file).await {
                Some(object) => shipped.push(object),
                None => {
                    shipped.push(self.send(file).await?);
                    sent_bytes += file.bytes;
                }
            }
        }
        let image = Image {
            position,
            marker,
            publisher: subject.to_string(),
            taken: self.taken.clone(),
            formats: Formats::this_build(),
            files: shipped,
        };
        let description = serde_json::to_vec(&image).map_err(|e| nats(e.to_string()))?;
        self.bucket
            .put(self.image_name(position).as_str(), &mut description.as_slice())
            .await
            .map_err(nats)?;
        // The image is published; a shipped.json not written only means the
        // next image sends these runs again.
        if let Err(error) =
            super::write_shipped(&self.snapshots_dir().join(SHIPPED), &runs_of(image.files)).await
        {
            tracing::warn!(%error, "shipped.json could not be written; the next image sends its runs again");
        }
        Ok(sent_bytes)
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

    /// Deletes this stream's images but the newest [`IMAGES_KEPT`], every
    /// image of another stream (made anew: its images are of a history no
    /// longer there), and files no kept image names once they are
    /// [`UNNAMED_FILE_AGE`] old (a node may be publishing an image naming
    /// them).
    async fn collect_garbage(&self) -> Result<(), ImageError> {
        let objects: Vec<ObjectInfo> =
            self.bucket.list().await.map_err(nats)?.try_collect().await.map_err(nats)?;
        let mut ours: Vec<(u64, &str)> =
            objects.iter().filter_map(|o| Some((self.image_position(&o.name)?, o.name.as_str()))).collect();
        ours.sort_unstable_by(|a, b| b.cmp(a));
        let mut named = HashSet::new();
        for &(_, name) in ours.iter().take(IMAGES_KEPT) {
            for file in self.read_image(name).await?.files {
                named.insert(file.object);
            }
        }
        let others = objects
            .iter()
            .filter(|o| o.name.starts_with(IMAGES) && self.image_position(&o.name).is_none())
            .map(|o| o.name.as_str());
        for name in ours.iter().skip(IMAGES_KEPT).map(|&(_, name)| name).chain(others) {
            self.bucket.delete(name).await.map_err(nats)?;
        }
        let now = SystemTime::now();
        for object in objects.iter().filter(|o| o.name.starts_with(FILE_PREFIX) && !named.contains(&o.name)) {
            let modified = object.modified.map(SystemTime::from);
            let age = modified.and_then(|at| now.duration_since(at).ok());
            if age.is_some_and(|age| age > UNNAMED_FILE_AGE) {
                self.bucket.delete(object.name.as_str()).await.map_err(nats)?;
            }
        }
        Ok(())
    }
}

/// An image staged for publication: its files, in a directory of its own.
#[derive(Debug)]
pub(crate) struct Staged {
    pub(crate) position: u64,
    dir: PathBuf,
    files: Vec<ImageFile>,
}

impl Staged {
    /// Deletes its files (links: the runs stay where they are).
    pub(crate) async fn discard(self) {
        if let Err(error) = tokio::fs::remove_dir_all(&self.dir).await {
            tracing::warn!(%error, dir = %self.dir.display(), "a staged snapshot image could not be deleted");
        }
    }
}

/// Exports `snapshots`' state into `dir` and links the runs in force and
/// their manifests there (hard links: a merge may delete a run, its link
/// keeps it; a manifest is replaced by a rename, never written in place).
fn stage_files(snapshots: &LocalSnapshots, dir: &Path) -> Result<Vec<ImageFile>, StorageError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
    }
    let mut files = Vec::new();
    for run in snapshots.run_files()? {
        let path = dir.join(&run.relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StorageError::io(parent, e))?;
        }
        std::fs::hard_link(&run.path, &path).map_err(|e| StorageError::io(&path, e))?;
        files.push(ImageFile { path, ..run });
    }
    let state = dir.join(STATE_FILE);
    std::fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
    snapshots.export_state(&state)?;
    let bytes = std::fs::metadata(&state).map_err(|e| StorageError::io(&state, e))?.len();
    files.push(ImageFile { relative: STATE_FILE.to_string(), path: state, bytes });
    Ok(files)
}
