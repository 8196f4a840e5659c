//! A node's copy of the shared directory: every key's last message, in
//! memory, fed from the stream in order by an ordered consumer; and how
//! keys map to subjects.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use wallet_storage::tables::{Stored, Table};

use super::{DELETED_HEADER, SUBJECTS};

/// `wallet.dir.<table>.<key in hex>`: hex keeps any key a valid token, and
/// keeps key order.
pub(super) fn subject(table: Table, key: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut subject = format!("wallet.dir.{}.", table.name());
    for byte in key {
        let _ = write!(subject, "{byte:02x}");
    }
    subject
}

pub(super) fn parse_subject(subject: &str) -> Option<(Table, Vec<u8>)> {
    let rest = subject.strip_prefix("wallet.dir.")?;
    let (table, hex) = rest.split_once('.')?;
    let table = Table::named(table)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let key = (0..hex.len())
        .step_by(2)
        .map(|at| hex.get(at..at + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    Some((table, key))
}

/// A key's latest message as the copy holds it.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    pub(super) revision: u64,
    /// `None`: deleted.
    pub(super) value: Option<Vec<u8>>,
}

/// The copy.
pub(super) struct Copy {
    entries: RwLock<BTreeMap<(Table, Vec<u8>), Entry>>,
    /// Per table, in [`Table::ALL`] order: moves at each change applied.
    changes: Vec<watch::Sender<u64>>,
}

impl Copy {
    pub(super) fn new() -> Copy {
        Copy {
            entries: RwLock::default(),
            changes: Table::ALL.iter().map(|_| watch::Sender::new(0)).collect(),
        }
    }

    /// The entry for `key`, deleted ones included.
    pub(super) fn entry(&self, table: Table, key: &[u8]) -> Option<Entry> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries.get(&(table, key.to_vec())).cloned()
    }

    /// Live entries of `table` whose keys start with `prefix`, from `from` on.
    pub(super) fn scan(
        &self,
        table: Table,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Vec<(Vec<u8>, Stored)> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let start = (table, from.max(prefix).to_vec());
        entries
            .range(start..)
            .take_while(|((at, key), _)| *at == table && key.starts_with(prefix))
            .filter_map(|((_, key), entry)| {
                let bytes = entry.value.clone()?;
                Some((key.clone(), Stored { bytes, revision: entry.revision }))
            })
            .take(limit)
            .collect()
    }

    /// Live entries of `table`.
    pub(super) fn len(&self, table: Table) -> usize {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        entries
            .range((table, Vec::new())..)
            .take_while(|((at, _), _)| *at == table)
            .filter(|(_, entry)| entry.value.is_some())
            .count()
    }

    pub(super) fn changes(&self, table: Table) -> watch::Receiver<u64> {
        self.changes[table.index()].subscribe()
    }

    /// Applies one message of the stream.
    fn apply(&self, applied: &watch::Sender<u64>, message: &jetstream::Message) {
        let Ok(info) = message.info() else { return };
        let sequence = info.stream_sequence;
        if let Some((table, key)) = parse_subject(&message.subject) {
            let deleted =
                message.headers.as_ref().is_some_and(|headers| headers.get(DELETED_HEADER).is_some());
            let value = (!deleted).then(|| message.payload.to_vec());
            let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
            entries.insert((table, key), Entry { revision: sequence, value });
            drop(entries);
            self.changes[table.index()].send_modify(|count| *count = count.wrapping_add(1));
        } else {
            tracing::warn!(subject = %message.subject, "shared directory: a subject that names no key; skipped");
        }
        applied.send_if_modified(|at| {
            let moved = sequence > *at;
            *at = (*at).max(sequence);
            moved
        });
    }
}

/// Feeds `copy` from the stream in order, from the last message of every
/// subject on, then live; after the client reconnects, or the consumer
/// ends, again from the next sequence (the stream keeps only the last
/// message of each subject, so whatever lies after it is current).
pub(super) async fn feed(
    stream: stream::Stream,
    copy: Arc<Copy>,
    applied: watch::Sender<u64>,
    reconnected: Arc<Notify>,
) {
    loop {
        let after = *applied.borrow();
        let deliver_policy = match after {
            0 => DeliverPolicy::LastPerSubject,
            after => DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
        };
        let config = pull::OrderedConfig {
            filter_subject: SUBJECTS.to_string(),
            deliver_policy,
            ..Default::default()
        };
        let messages = match stream.create_consumer(config).await {
            Ok(consumer) => consumer.messages().await.map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                tracing::warn!(%error, "shared directory: cannot follow the stream; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                () = reconnected.notified() => break,
            };
            match next {
                Some(Ok(message)) => copy.apply(&applied, &message),
                Some(Err(error)) => tracing::warn!(%error, "shared directory: following the stream"),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_their_key_and_keep_its_order() {
        let keys: [&[u8]; 3] = [b"\x00\xff", b"ada@example.com", b"\x01"];
        for key in keys {
            let subject = subject(Table::OwnedAccounts, key);
            assert_eq!(parse_subject(&subject), Some((Table::OwnedAccounts, key.to_vec())));
        }
        assert!(subject(Table::Users, b"\x01") < subject(Table::Users, b"\x02"));
        assert_eq!(parse_subject("wallet.dir.nope.00"), None);
        assert_eq!(parse_subject("wallet.dir.users.0"), None);
    }
}
