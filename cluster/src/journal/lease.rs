//! Leases on the journal stream: a message on a lease subject naming its
//! holder, with a time to live. The holder renews it by publishing again on
//! the condition that the subject's last message is still its own; when it
//! stops (it died, or paused past the time to live) the message expires,
//! the subject is empty, and another node takes the lease on the condition
//! that it still is.
//!
//! Two kinds: a node's lease (`wallet.lease.node.<node>`), which every
//! journal message of the node names as its condition (the fence), and a
//! shard's lease (`wallet.lease.shard.<shard>`), which says who owns the
//! shard. A node renews both kinds in one atomic batch, and a node lease
//! lives shorter than a shard lease, so by the time a shard lease has
//! expired (the only way another node can take the shard, besides a
//! release) the node lease renewed with it has expired too, and the old
//! owner's journal writes are refused.

use async_nats::header::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use bytes::Bytes;
use wallet_actors::ids::{NodeId, ShardId};

use super::batch::{publish_atomic, Outgoing};
use super::{nats_error, JournalStream, StreamError};

/// What a lease is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leased {
    /// A node: its journal writes are fenced by it.
    Node(NodeId),
    /// A shard: its owner.
    Shard(ShardId),
}

impl Leased {
    /// The lease's subject.
    pub fn subject(self) -> String {
        match self {
            Leased::Node(node) => format!("wallet.lease.node.{}", node.0),
            Leased::Shard(shard) => format!("wallet.lease.shard.{}", shard.0),
        }
    }
}

/// A lease held: `sequence` is the stream sequence of the holder's latest
/// message on the lease subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// What it is for.
    pub of: Leased,
    /// Its holder.
    pub node: NodeId,
    /// The stream sequence of the holder's latest lease message.
    pub sequence: u64,
}

/// Why a lease could not be taken or renewed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another node holds it.
    #[error("{of:?} is held by node {}", by.0)]
    Held {
        /// What the lease is for.
        of: Leased,
        /// Its holder.
        by: NodeId,
    },
    /// The lease changed since it was read (another node took it, or took
    /// it first, or it expired): read it again.
    #[error("the lease of {of:?} changed")]
    Changed {
        /// What the lease is for.
        of: Leased,
    },
    /// NATS could not be reached, or the outcome is unknown.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// Who holds `of` now, and the sequence of their lease message (`None`:
/// nobody; the subject is empty).
pub async fn holder(stream: &JournalStream, of: Leased) -> Result<Option<(NodeId, u64)>, StreamError> {
    match stream.stream.direct_get_last_for_subject(of.subject()).await {
        Ok(message) => {
            let node = std::str::from_utf8(&message.payload)
                .ok()
                .and_then(|text| text.parse::<u32>().ok())
                .ok_or_else(|| StreamError::Decode {
                subject: of.subject(),
                sequence: message.sequence,
                reason: "a lease message that names no node".into(),
            })?;
            Ok(Some((NodeId(node), message.sequence)))
        }
        Err(error) if error.kind() == DirectGetErrorKind::NotFound => Ok(None),
        Err(error) => Err(nats_error(error)),
    }
}

fn lease_message(stream: &JournalStream, of: Leased, node: NodeId, expected: u64) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
    let ttl = match of {
        Leased::Node(_) => stream.options.node_lease_ttl,
        Leased::Shard(_) => stream.options.shard_lease_ttl,
    };
    // Whole seconds: what the server takes as a plain number.
    headers.insert("Nats-TTL", ttl.as_secs().max(1).to_string().as_str());
    Outgoing { subject: of.subject(), headers, payload: Bytes::from(node.0.to_string()) }
}

/// Takes `of` for `node` if nobody holds it (or `node` already does: a
/// restart of the same node before its lease expired).
pub async fn take(stream: &JournalStream, of: Leased, node: NodeId) -> Result<Lease, LeaseError> {
    let expected = match holder(stream, of).await? {
        None => 0,
        Some((holder, sequence)) if holder == node => sequence,
        Some((by, _)) => return Err(LeaseError::Held { of, by }),
    };
    let id = super::batch::batch_id(node.0, expected);
    match publish_atomic(stream, &id, vec![lease_message(stream, of, node, expected)]).await {
        Ok(ack) => Ok(Lease { of, node, sequence: ack.sequence }),
        Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Err(LeaseError::Changed { of }),
        Err(error) => Err(LeaseError::Stream(nats_error(error))),
    }
}

/// Renews `leases` (all of one node) in one atomic batch: all are renewed
/// at the same instant, or none (`Changed` if one of them was lost; read
/// them to learn which). Returns them with their new sequences.
pub async fn renew(stream: &JournalStream, leases: &[Lease], batch: u64) -> Result<Vec<Lease>, LeaseError> {
    let Some(first) = leases.first() else { return Ok(Vec::new()) };
    let messages = leases.iter().map(|l| lease_message(stream, l.of, l.node, l.sequence)).collect();
    let id = super::batch::batch_id(first.node.0, batch);
    match publish_atomic(stream, &id, messages).await {
        // A committed batch takes consecutive sequences, ending at the ack's.
        Ok(ack) => Ok(leases
            .iter()
            .zip((0..leases.len() as u64).rev())
            .map(|(lease, before_last)| Lease { sequence: ack.sequence - before_last, ..*lease })
            .collect()),
        Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
            Err(LeaseError::Changed { of: first.of })
        }
        Err(error) => Err(LeaseError::Stream(nats_error(error))),
    }
}
