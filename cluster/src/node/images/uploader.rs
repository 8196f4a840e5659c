//! Publishing images off the checkpoint: a checkpoint stages its image
//! ([`Images::stage`], local work) and hands it here; one task publishes
//! one image at a time. An image staged while another is being published
//! waits; a newer one staged meanwhile replaces it (the newer covers more).
//! So neither the next checkpoint nor a rebuild of failed shards waits for
//! an upload.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::publish::Staged;
use super::Images;
use crate::journal::JournalStream;

/// Hands staged images to the publishing task. Cheap to clone; when the
/// last clone is dropped the task stops after the image under way.
#[derive(Clone)]
pub(crate) struct Uploader(Arc<Handle>);

struct Handle {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Option<Staged>>,
    stopping: std::sync::atomic::AtomicBool,
    wake: Notify,
}

impl Shared {
    fn take(&self) -> Option<Staged> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }

    fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

impl Uploader {
    /// Starts the task publishing to `images`, checkpoint markers read from
    /// `stream` on `subject` (this node's journal).
    pub(crate) fn start(images: Images, stream: JournalStream, subject: String) -> Uploader {
        let shared = Arc::new(Shared::default());
        let running = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                // Read before the take: an image handed over just before
                // the stop is published too.
                let stopping = running.stopping.load(std::sync::atomic::Ordering::SeqCst);
                if let Some(staged) = running.take() {
                    let position = staged.position;
                    if let Err(error) = images.publish(staged, &stream, &subject).await {
                        metrics::counter!("wallet_snapshot_image_failures_total").increment(1);
                        tracing::warn!(%error, position, "the snapshot image could not be published");
                    }
                    continue;
                }
                if stopping {
                    return;
                }
                running.wake.notified().await;
            }
        });
        Uploader(Arc::new(Handle { shared, task: Mutex::new(Some(task)) }))
    }

    /// Hands `staged` over, in place of one still waiting.
    pub(crate) async fn hand(&self, staged: Staged) {
        let replaced = self.0.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).replace(staged);
        self.0.shared.wake.notify_one();
        if let Some(older) = replaced {
            metrics::counter!("wallet_snapshot_images_skipped_total").increment(1);
            older.discard().await;
        }
    }

    /// Publishes what is handed over already, waiting at most `wait`, then
    /// stops the task (at shutdown: the last checkpoint's image is the one
    /// the next start wants).
    pub(crate) async fn finish(&self, wait: Duration) {
        self.0.shared.stop();
        let task = self.0.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(wait, &mut task).await.is_err() {
                // Not left running past the node's stop (its directory's
                // lock goes with it): the publication is dropped.
                task.abort();
                let _ = task.await;
                tracing::warn!(
                    "the last snapshot image was not published in time and is dropped; other nodes start from an older one"
                );
            }
        }
        if let Some(left) = self.0.shared.take() {
            left.discard().await;
        }
    }
}
