//! Rebuilding the shards whenever they fail: a task beside the ledger that
//! waits for a failure and runs the rebuild storage knows how to do (read
//! the durable state back and restart the shards on it).

use std::future::Future;
use std::time::{Duration, Instant};

use super::Ledger;

/// A failure this soon after a rebuild counts as coming back.
const CALM: Duration = Duration::from_secs(10);

impl Ledger {
    /// Runs `rebuild` whenever the shards fail, until `stopped` changes. A
    /// failure that comes back soon after a rebuild (an account that cannot
    /// be read, a request that panics a shard each time), or after a rebuild
    /// that failed, waits a growing pause first, so it cannot keep the node
    /// rebuilding.
    pub fn supervise<F, Fut, E>(
        &self,
        rebuild: F,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send,
        E: std::fmt::Display,
    {
        let ledger = self.clone();
        tokio::spawn(async move {
            let mut pause_ms = 100u64;
            let mut last_attempt: Option<(Instant, bool)> = None;
            loop {
                let failure = tokio::select! {
                    _ = stopped.changed() => return,
                    failure = ledger.failed() => failure,
                };
                match last_attempt {
                    Some((at, succeeded)) if !succeeded || at.elapsed() < CALM => {
                        tracing::warn!(%failure, pause_ms, "the shards failed again; pausing before the rebuild");
                        tokio::select! {
                            _ = stopped.changed() => return,
                            _ = tokio::time::sleep(Duration::from_millis(pause_ms)) => {}
                        }
                        pause_ms = (pause_ms * 2).min(30_000);
                    }
                    _ => pause_ms = 100,
                }
                tracing::warn!(%failure, "rebuilding the shards from durable state");
                let rebuilt = rebuild().await;
                if let Err(error) = &rebuilt {
                    tracing::error!(%error, "rebuilding the shards failed; trying again");
                }
                last_attempt = Some((Instant::now(), rebuilt.is_ok()));
            }
        })
    }
}
