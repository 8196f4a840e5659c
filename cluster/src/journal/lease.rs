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
//! shard. A holder is a node and an incarnation (a random number per start),
//! so a restarted node never mistakes its former self's lease for its own.
//! Leases are read from the stream's leader, never a replica that may lag.

use async_nats::header::HeaderMap;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use wallet_actors::ids::{NodeId, ShardId};

use super::batch::{condition_refused, publish, Outgoing};
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

/// Who holds a lease: a node, in one of its starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    /// The node.
    pub node: NodeId,
    /// A random number drawn at the start that took the lease.
    pub incarnation: u64,
}

impl Holder {
    fn payload(self) -> Bytes {
        Bytes::from(format!("{}/{}", self.node.0, self.incarnation))
    }

    fn parse(payload: &[u8]) -> Option<Holder> {
        let (node, incarnation) = std::str::from_utf8(payload).ok()?.split_once('/')?;
        Some(Holder { node: NodeId(node.parse().ok()?), incarnation: incarnation.parse().ok()? })
    }
}

/// A lease held: `sequence` is the stream sequence of the holder's latest
/// message on the lease subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// What it is for.
    pub of: Leased,
    /// Its holder.
    pub holder: Holder,
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
    /// A lease changed since it was read (another node took it, or took it
    /// first, or it expired): read it again.
    #[error("the lease of {of:?} changed")]
    Changed {
        /// What the lease is for (the first of a batch of renewals).
        of: Leased,
    },
    /// This start of the node lost its own lease: it takes and renews
    /// nothing more.
    #[error("this node lost its lease")]
    Fenced,
    /// The node's journal stopped (a write's outcome is unknown): it takes
    /// and renews nothing more, and the node must restart.
    #[error("the node's journal stopped ({reason}); the node must restart")]
    Stopped {
        /// Why it stopped.
        reason: wallet_actors::ports::JournalError,
    },
    /// The node holds as many shards as one renewal batch takes
    /// ([`super::writer::SHARDS_PER_NODE_MAX`]).
    #[error("this node holds as many shards as it can renew at once")]
    TooMany,
    /// NATS could not be reached, or the outcome is unknown: the lease may
    /// have been taken or renewed.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// The payload of a release: the lease is free, and whoever takes it next
/// names this message's sequence as the condition.
pub(crate) const RELEASED: &[u8] = b"released";

/// Where a lease stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Nobody holds it: the subject is empty (it expired, or never was).
    Free,
    /// Its holder released it with the message at `sequence`.
    Released {
        /// The release message's stream sequence.
        sequence: u64,
    },
    /// `holder` holds it; its latest lease message is at `sequence`.
    Held {
        /// The holder.
        holder: Holder,
        /// Its latest lease message's stream sequence.
        sequence: u64,
    },
}

impl LeaseState {
    /// Its holder and their latest lease message (`None`: free or released).
    pub fn holder(self) -> Option<(Holder, u64)> {
        match self {
            LeaseState::Held { holder, sequence } => Some((holder, sequence)),
            LeaseState::Free | LeaseState::Released { .. } => None,
        }
    }

    /// The condition a take names: the sequence the subject ends with.
    pub fn last_sequence(self) -> u64 {
        match self {
            LeaseState::Free => 0,
            LeaseState::Released { sequence } | LeaseState::Held { sequence, .. } => sequence,
        }
    }
}

/// Where `of` stands now, read from the stream's leader.
pub async fn state(stream: &JournalStream, of: Leased) -> Result<LeaseState, StreamError> {
    match stream.stream.get_last_raw_message_by_subject(&of.subject()).await {
        Ok(message) if message.payload.as_ref() == RELEASED => {
            Ok(LeaseState::Released { sequence: message.sequence })
        }
        Ok(message) => {
            let holder = Holder::parse(&message.payload).ok_or_else(|| StreamError::Decode {
                subject: of.subject(),
                sequence: message.sequence,
                reason: "a lease message that names no holder".into(),
            })?;
            Ok(LeaseState::Held { holder, sequence: message.sequence })
        }
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(LeaseState::Free),
        Err(error) => Err(nats_error(error)),
    }
}

/// Who holds `of` now, and the sequence of their lease message (`None`:
/// nobody; it is free or released).
pub async fn holder(stream: &JournalStream, of: Leased) -> Result<Option<(Holder, u64)>, StreamError> {
    Ok(state(stream, of).await?.holder())
}

/// A release of `lease`: a new message on its subject, on the condition
/// that the subject still ends with the holder's (never a deletion, which
/// could make an older message of another holder the last again).
pub(crate) fn release_message(stream: &JournalStream, lease: Lease) -> Outgoing {
    let Outgoing { subject, headers, .. } = lease_message(stream, lease.of, lease.holder, lease.sequence);
    Outgoing { subject, headers, payload: Bytes::from_static(RELEASED) }
}

/// A lease message for `of` by `holder`, on the condition that the
/// subject's last message has sequence `expected` (0: the subject is empty).
pub(crate) fn lease_message(stream: &JournalStream, of: Leased, holder: Holder, expected: u64) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
    let ttl = match of {
        Leased::Node(_) => stream.options.node_lease_ttl,
        Leased::Shard(_) => stream.options.shard_lease_ttl,
    };
    // Whole seconds: what the server takes as a plain number.
    headers.insert("Nats-TTL", ttl.as_secs().max(1).to_string().as_str());
    Outgoing { subject: of.subject(), headers, payload: holder.payload() }
}

/// The sequence `holder` must name to take `of`: the last one on its
/// subject (0 if empty) if nobody holds it or the same node does (a later
/// start of a node supersedes an earlier one, whose writes its own node
/// lease then fences).
pub(crate) async fn expected_for_take(
    stream: &JournalStream,
    of: Leased,
    holder: Holder,
) -> Result<u64, LeaseError> {
    expected_given(of, holder, state(stream, of).await?)
}

/// The sequence `holder` must name to take `of` as it stands in `state`.
pub(crate) fn expected_given(of: Leased, holder: Holder, state: LeaseState) -> Result<u64, LeaseError> {
    match state {
        LeaseState::Held { holder: current, .. } if current.node != holder.node => {
            Err(LeaseError::Held { of, by: current.node })
        }
        state => Ok(state.last_sequence()),
    }
}

/// Takes `of` for `holder` alone. A node's writer takes shard leases
/// together with a renewal of its node lease ([`super::NodeJournal::take`]);
/// this is for the node lease itself, and for tests.
pub async fn take(stream: &JournalStream, of: Leased, holder: Holder) -> Result<Lease, LeaseError> {
    let expected = expected_for_take(stream, of, holder).await?;
    let sequences = publish_leases(stream, vec![(of, holder, expected)]).await?;
    Ok(Lease { of, holder, sequence: sequences[0] })
}

/// Publishes lease messages `(of, holder, expected)` in one atomic batch
/// (one message goes plain): all at the same instant, or none (`Changed`:
/// one condition failed). Returns their new sequences, in order.
pub(crate) async fn publish_leases(
    stream: &JournalStream,
    leases: Vec<(Leased, Holder, u64)>,
) -> Result<Vec<u64>, LeaseError> {
    let Some(&(first, _, _)) = leases.first() else { return Ok(Vec::new()) };
    let count = leases.len() as u64;
    let messages =
        leases.into_iter().map(|(of, holder, expected)| lease_message(stream, of, holder, expected));
    match publish(stream, messages.collect()).await {
        // A committed batch takes consecutive sequences, ending at the ack's.
        Ok(ack) => (0..count)
            .rev()
            .map(|before_last| {
                ack.sequence.checked_sub(before_last).filter(|sequence| *sequence > 0).ok_or_else(|| {
                    LeaseError::Stream(StreamError::Nats(format!(
                        "a batch of {count} lease messages acknowledged at sequence {}",
                        ack.sequence
                    )))
                })
            })
            .collect(),
        Err(error) if condition_refused(&error) => Err(LeaseError::Changed { of: first }),
        Err(error) => Err(LeaseError::Stream(nats_error(error))),
    }
}
