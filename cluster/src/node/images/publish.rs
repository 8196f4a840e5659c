//! Publishing a checkpoint's image, and deleting images no start needs.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Instant, SystemTime};

use async_nats::jetstream::object_store::ObjectInfo;
use futures_util::TryStreamExt;
use wallet_storage::image::{ImageFile, STATE_FILE};
use wallet_storage::{LocalSnapshots, StorageError};

use super::{
    io, nats, random_u128, runs_of, Formats, Image, ImageError, Images, Shipped, FILE_PREFIX, IMAGES,
    IMAGES_KEPT, SHIPPED, UNNAMED_FILE_AGE,
};
use crate::journal::read::find_checkpoint_marker;
use crate::journal::JournalStream;

impl Images {
    /// Publishes the image of `snapshots`, whose checkpoint at `position`
    /// just came in force, its marker written on `subject` (this node's
    /// journal); call only while no checkpoint runs. A failure leaves the
    /// images as they were.
    pub(crate) async fn publish(
        &self,
        snapshots: &LocalSnapshots,
        position: u64,
        stream: &JournalStream,
        subject: &str,
    ) -> Result<(), ImageError> {
        let started = Instant::now();
        let marker =
            find_checkpoint_marker(stream, subject, position).await.map_err(nats)?.ok_or_else(|| {
                ImageError::Invalid {
                    name: self.image_name(position),
                    why: "its checkpoint marker is not in the stream".to_string(),
                }
            })?;
        let scratch = self.dir.join("image-export");
        let files = export(snapshots, &scratch).await;
        let published = match files {
            Ok(files) => self.send_all(files, position, marker, subject).await,
            Err(error) => Err(error),
        };
        let _ = tokio::fs::remove_file(&scratch).await;
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
        files: Vec<ImageFile>,
        position: u64,
        marker: u64,
        subject: &str,
    ) -> Result<u64, ImageError> {
        let before = super::read_shipped(&self.snapshots_dir().join(SHIPPED)).await;
        let mut shipped = Vec::with_capacity(files.len());
        let mut sent_bytes = 0u64;
        for file in &files {
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

/// Exports `snapshots`' state into `scratch` and lists the files of the
/// image: the runs in force, their manifests, the state.
async fn export(snapshots: &LocalSnapshots, scratch: &Path) -> Result<Vec<ImageFile>, ImageError> {
    let (exporting, state) = (snapshots.clone(), scratch.to_path_buf());
    let files = tokio::task::spawn_blocking(move || {
        exporting.export_state(&state)?;
        let bytes = std::fs::metadata(&state).map_err(|e| StorageError::io(&state, e))?.len();
        let mut files = exporting.run_files()?;
        files.push(ImageFile { relative: STATE_FILE.to_string(), path: state, bytes });
        Ok::<_, StorageError>(files)
    })
    .await
    .map_err(|_| ImageError::Nats("the export stopped".to_string()))??;
    Ok(files)
}
