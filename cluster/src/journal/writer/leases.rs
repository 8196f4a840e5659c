//! The writer's lease bookkeeping: renewing every lease of the node in one
//! atomic batch (and taking new shard leases in such a batch), and working
//! out which were lost when the server refuses a batch or a write.

use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_util::StreamExt;
use wallet_actors::ids::ShardId;
use wallet_actors::ports::JournalError;

use super::{Writer, SHARDS_PER_NODE_MAX};
use crate::journal::lease::{self, Holder, Lease, LeaseError, LeaseState, Leased};
use crate::journal::StreamError;

/// Lease reads a writer has in flight at once after a refusal.
const READS_IN_FLIGHT: usize = 16;

impl Writer {
    /// Reads `of`'s holder, giving up after `ack_timeout`: the writer's
    /// renewals wait meanwhile, so a read must not outlast a node lease.
    async fn read_state(&self, of: Leased) -> Result<LeaseState, StreamError> {
        match tokio::time::timeout(self.stream.options.ack_timeout, lease::state(&self.stream, of)).await {
            Ok(read) => read,
            Err(_) => Err(StreamError::Nats(format!("reading the lease of {of:?} timed out"))),
        }
    }

    /// [`Writer::read_state`], as a holder (`None`: free or released).
    async fn read_holder(&self, of: Leased) -> Result<Option<(Holder, u64)>, StreamError> {
        Ok(self.read_state(of).await?.holder())
    }

    /// Stops writing for `shard` and releases its lease, so another node
    /// can take it at once. Called between writes: everything appended for
    /// it before is durable (or failed) by then.
    pub(super) async fn release(&mut self, shard: ShardId) {
        let Some(lease) = self.held().shards.remove(&shard) else { return };
        if self.failed.is_some() {
            // A write whose outcome is unknown may still land: only the
            // node lease, expiring before the shard's, fences it, so the
            // shard's lease must expire rather than be released.
            return;
        }
        let message = lease::release_message(&self.stream, lease);
        if let Err(error) = crate::journal::batch::publish(&self.stream, vec![message]).await {
            // Not released: the lease expires instead.
            tracing::warn!(%error, shard = shard.0, "releasing a shard's lease failed");
        }
    }

    pub(super) fn fence(&mut self) {
        tracing::error!(node = self.holder.node.0, "this node lost its lease: it stores nothing more");
        self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("wallet_leases_lost_total").increment(1);
        self.held().node = None;
        self.stop(JournalError::Fenced);
    }

    /// Reads the node's lease after a refusal: a newer message of this
    /// start is adopted; anything else means the node is fenced.
    pub(super) async fn check_node_lease(&mut self, mine: Lease) {
        match self.read_holder(mine.of).await {
            Ok(Some((holder, sequence))) if holder == self.holder && sequence > mine.sequence => {
                self.held().node = Some(Lease { sequence, ..mine });
            }
            Ok(_) => self.fence(),
            // Cannot tell whether the node still holds it: stop, as on an
            // unknown outcome.
            Err(error) => {
                tracing::error!(%error, "cannot read the node lease after a refused write; the journal stops");
                self.stop(JournalError::Io { kind: std::io::ErrorKind::Other });
            }
        }
    }

    /// Takes `new` (shards and the sequences their lease subjects must end
    /// with, read by the caller) in one atomic batch with a renewal of all
    /// held leases, and answers the leases of `shards`: all of them, or
    /// none (a takeover costs one round trip, not one per shard).
    pub(super) async fn take(
        &mut self,
        shards: Vec<ShardId>,
        new: Vec<(ShardId, u64)>,
    ) -> Result<Vec<Lease>, LeaseError> {
        let new: Vec<(ShardId, u64)> = {
            let held = self.held();
            new.into_iter().filter(|(shard, _)| !held.shards.contains_key(shard)).collect()
        };
        if self.held().shards.len() + new.len() > SHARDS_PER_NODE_MAX {
            return Err(LeaseError::TooMany);
        }
        if !new.is_empty() {
            self.renew(new).await?;
        }
        let held = self.held();
        shards
            .into_iter()
            .map(|shard| {
                held.shards.get(&shard).copied().ok_or(LeaseError::Changed { of: Leased::Shard(shard) })
            })
            .collect()
    }

    /// Renews the node lease and every shard lease (and takes `new`,
    /// shards and the sequences their lease subjects must end with) in one
    /// atomic batch. If the batch is refused, reads them to learn which were
    /// lost, drops those, and renews the rest once more (without `new`).
    pub(super) async fn renew(&mut self, new: Vec<(ShardId, u64)>) -> Result<(), LeaseError> {
        self.next_renewal = Instant::now() + self.stream.options.renew_every;
        let mut new = new;
        let mut refused = None;
        for _attempt in 0..2 {
            let mut leases: Vec<Lease> = {
                let held = self.held();
                if let Some(reason) = self.failed.filter(|reason| *reason != JournalError::Fenced) {
                    return Err(LeaseError::Stopped { reason });
                }
                let Some(node) = held.node.filter(|_| self.failed.is_none()) else {
                    return Err(LeaseError::Fenced);
                };
                std::iter::once(node).chain(held.shards.values().copied()).collect()
            };
            leases.extend(new.iter().map(|&(shard, expected)| Lease {
                of: Leased::Shard(shard),
                holder: self.holder,
                sequence: expected,
            }));
            let messages = leases.iter().map(|l| (l.of, l.holder, l.sequence)).collect();
            match lease::publish_leases(&self.stream, messages).await {
                Ok(sequences) => {
                    self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("wallet_lease_renewals_total").increment(1);
                    let mut held = self.held();
                    for (lease, sequence) in leases.into_iter().zip(sequences) {
                        let renewed = Lease { sequence, ..lease };
                        match lease.of {
                            Leased::Node(_) => held.node = Some(renewed),
                            Leased::Shard(shard) => drop(held.shards.insert(shard, renewed)),
                        }
                    }
                    return Ok(());
                }
                Err(LeaseError::Changed { of }) => {
                    let taking: Vec<ShardId> = new.drain(..).map(|(shard, _)| shard).collect();
                    self.find_lost(leases, &taking).await;
                    refused = Some(LeaseError::Changed { of });
                }
                // Unknown outcome: the leases stay; a refused write or the
                // next renewal tells.
                Err(error) => {
                    tracing::warn!(%error, "lease renewal failed");
                    return Err(error);
                }
            }
        }
        Err(refused.unwrap_or(LeaseError::Fenced))
    }

    /// After a refused renewal: drops the shards whose lease is not this
    /// start's any more (or cannot be read: not writing a shard is always
    /// safe), adopts newer messages of this start, and fences the node if
    /// its own lease is lost. `taking` was not held yet: it is only read.
    /// The leases are read a few at a time, each within `ack_timeout`.
    async fn find_lost(&mut self, leases: Vec<Lease>, taking: &[ShardId]) {
        let this = &*self;
        let reads = futures_util::stream::iter(leases.iter().copied())
            .map(|mine| async move { (mine, this.read_holder(mine.of).await) })
            .buffered(READS_IN_FLIGHT)
            .collect::<Vec<_>>();
        // One deadline for them all: renewals wait meanwhile.
        let reads = match tokio::time::timeout(self.stream.options.ack_timeout, reads).await {
            Ok(reads) => reads,
            Err(_) => {
                let unread = || Err(StreamError::Nats("lease reads timed out".into()));
                leases.into_iter().map(|mine| (mine, unread())).collect()
            }
        };
        for (mine, holder) in reads {
            let ours =
                matches!(&holder, Ok(Some((h, sequence))) if *h == self.holder && *sequence >= mine.sequence);
            match (mine.of, holder) {
                (Leased::Node(_), Ok(Some((_, sequence)))) if ours => {
                    self.held().node = Some(Lease { sequence, ..mine });
                }
                (Leased::Node(_), Ok(_)) => return self.fence(),
                (Leased::Node(_), Err(error)) => {
                    tracing::warn!(%error, "cannot read the node lease; trying again at the next renewal");
                }
                (Leased::Shard(shard), _) if taking.contains(&shard) => {}
                (Leased::Shard(shard), Ok(Some((_, sequence)))) if ours => {
                    self.held().shards.insert(shard, Lease { sequence, ..mine });
                }
                (Leased::Shard(shard), _) => {
                    tracing::warn!(
                        shard = shard.0,
                        "this node lost the shard's lease; it writes nothing more for it"
                    );
                    self.stats.leases_lost.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("wallet_leases_lost_total").increment(1);
                    let mut held = self.held();
                    held.shards.remove(&shard);
                    metrics::gauge!("wallet_shards_owned").set(held.shards.len() as f64);
                }
            }
        }
    }
}
