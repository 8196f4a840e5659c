//! Whether a start of another node can still write, and fencing it for
//! good, so that a node taking over need not wait out the shard leases of
//! a node that died.
//!
//! Every write and renewal of a start names the sequence of its own latest
//! node lease message as its node lease subject's last: once another
//! message ends that subject, the server refuses them. A message *written*
//! there settles it on every replica of the stream (writes are replicated
//! in order, and a new stream leader has every acknowledged one). An
//! *expiry* does not: each replica expires messages by its own clock and
//! timer, so a start whose message the leader expired may still write
//! through a new leader that has not. So a node that finds a start's node
//! lease expired writes an eviction (a release message with no time to
//! live) before it counts the start fenced, and one that has watched a
//! start renew nothing for a whole node lease, while the server has not
//! expired its message yet, may write the eviction too. A shard whose lease
//! subject is empty names no holder at all, so before a node takes one it
//! evicts every member whose node lease subject is empty ([`evict_expired`]):
//! members are recorded once, before a node's first lease ([`join`]).
//! docs/ARCHITECTURE.md, "Fenced for good", has the argument.

use async_nats::header::HeaderMap;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use bytes::Bytes;
use futures_util::StreamExt;
use wallet_actors::ids::NodeId;

use super::batch::{condition_refused, publish, Outgoing};
use super::lease::{self, Holder, LeaseError, LeaseState, Leased, RELEASED};
use super::{nats_error, JournalStream, StreamError};

/// Where a start stands, as its node lease subject shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fence {
    /// A message written after the start's last renewal ends the subject:
    /// it can write nothing more, on any replica.
    Fenced,
    /// Its own message at `sequence` ends the subject: it lives, or died so
    /// recently that its message has not expired. Only a watch of a whole
    /// node lease tells ([`evict`]).
    Leasing {
        /// Its node lease message's stream sequence.
        sequence: u64,
    },
    /// A later start of its node took the node lease (that start takes the
    /// shards back), or an eviction lost a race: not now.
    Waiting,
}

/// Where `start` stands, for a node about to take a shard whose lease
/// message of `start` is at `shard_sequence`. Every renewal writes the node
/// lease first and the shard leases after it in one batch, so a message on
/// the node lease subject after `shard_sequence` came after the start's
/// last renewal. A start whose message expired (on the leader) is evicted
/// first, so that the answer holds on every replica.
pub async fn fence(stream: &JournalStream, start: Holder, shard_sequence: u64) -> Result<Fence, LeaseError> {
    let last = match lease::state(stream, Leased::Node(start.node)).await? {
        LeaseState::Held { holder, sequence } if holder == start => return Ok(Fence::Leasing { sequence }),
        // A later start of the node: it takes its shards back.
        LeaseState::Held { sequence, .. } if sequence > shard_sequence => return Ok(Fence::Waiting),
        LeaseState::Released { sequence } if sequence > shard_sequence => return Ok(Fence::Fenced),
        // Expired on the leader (maybe not on every replica), or an older
        // message ends the subject again.
        state => state.last_sequence(),
    };
    match evict(stream, start, last).await {
        Ok(()) => Ok(Fence::Fenced),
        Err(LeaseError::Changed { .. }) => Ok(Fence::Waiting),
        Err(error) => Err(error),
    }
}

/// Writes an eviction on `start`'s node lease subject, on the condition
/// that the subject's last message is at `last` (0: empty): `start`'s own
/// message, seen unrenewed for a whole node lease, or whatever ended the
/// subject once its message expired. It has no time to live: a message of
/// `start` that outlives it on some replica can never end the subject
/// again. The next start of the node takes its lease after it.
pub async fn evict(stream: &JournalStream, start: Holder, last: u64) -> Result<(), LeaseError> {
    evict_node(stream, start.node, last).await
}

/// [`evict`] of whichever start of `node` wrote its last node lease message.
async fn evict_node(stream: &JournalStream, node: NodeId, last: u64) -> Result<(), LeaseError> {
    let of = Leased::Node(node);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Expected-Last-Subject-Sequence", last.to_string().as_str());
    let eviction = Outgoing { subject: of.subject(), headers, payload: Bytes::from_static(RELEASED) };
    match publish(stream, vec![eviction]).await {
        Ok(_) => {
            tracing::info!(node = node.0, "evicted the node lease of a start that stopped renewing");
            metrics::counter!("wallet_lease_evictions_total").increment(1);
            Ok(())
        }
        Err(error) if condition_refused(&error) => Err(LeaseError::Changed { of }),
        Err(error) => Err(LeaseError::Stream(nats_error(error))),
    }
}

/// Where members are recorded: one subject per node, never removed.
const MEMBERS: &str = "wallet.meta.node.";

/// Records `node` as a member of the cluster unless it is one already: a
/// message on its member subject, written once, before its first lease,
/// with no time to live. An expired lease leaves an empty subject that
/// names nobody; the members name every node that may have held one.
pub async fn join(stream: &JournalStream, node: NodeId) -> Result<(), LeaseError> {
    const ATTEMPTS: usize = 10;
    let subject = format!("{MEMBERS}{}", node.0);
    for _ in 0..ATTEMPTS {
        match stream.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(_) => return Ok(()),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(error) => return Err(LeaseError::Stream(nats_error(error))),
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
        let payload = Bytes::from(node.0.to_string());
        match publish(stream, vec![Outgoing { subject: subject.clone(), headers, payload }]).await {
            Ok(_) => return Ok(()),
            // Another start of the node wrote first: read it back.
            Err(error) if condition_refused(&error) => {}
            Err(error) => return Err(LeaseError::Stream(nats_error(error))),
        }
    }
    Err(LeaseError::Changed { of: Leased::Node(node) })
}

/// Evicts every member whose node lease subject is empty on the stream's
/// leader (its last message expired there, maybe not on every replica),
/// so that no start of theirs can write again on any replica. A node
/// calls it before it takes a shard whose lease subject is empty: its
/// last holder is not named, but it is one of the members, and its node
/// lease, shorter than the shard lease renewed with it, expired first.
/// `Changed`: a member's subject changed under it; read again.
pub async fn evict_expired(stream: &JournalStream) -> Result<(), LeaseError> {
    const READS_IN_FLIGHT: usize = 16;
    let mut subjects = stream.stream.info_with_subjects(format!("{MEMBERS}*")).await.map_err(nats_error)?;
    let mut members = Vec::new();
    while let Some(entry) = subjects.next().await {
        let (subject, _) = entry.map_err(nats_error)?;
        if let Some(node) = subject.strip_prefix(MEMBERS).and_then(|id| id.parse().ok()) {
            members.push(NodeId(node));
        }
    }
    let reads = futures_util::stream::iter(members.iter().copied())
        .map(|node| lease::state(stream, Leased::Node(node)))
        .buffered(READS_IN_FLIGHT)
        .collect::<Vec<_>>();
    let rounds = 1 + members.len() / READS_IN_FLIGHT;
    let states = tokio::time::timeout(stream.options.ack_timeout * rounds as u32, reads)
        .await
        .map_err(|_| StreamError::Nats("reading the members' node leases timed out".into()))?;
    for (node, state) in members.into_iter().zip(states) {
        if state? == LeaseState::Free {
            evict_node(stream, node, 0).await?;
        }
    }
    Ok(())
}
