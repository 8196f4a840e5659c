//! The outbox: what a shard holds back until its mailbox is empty, then
//! sends at once (one journal append for its records, one message per other
//! shard). The key idea of the write path: one flush carries many transfers
//! under load, and the order it sends things in is what keeps every record
//! behind the records it depends on (`docs/ARCHITECTURE.md`, "Dependencies
//! between records").

use std::sync::atomic::Ordering;

use super::{
    AfterDurable, Answer, CreditOp, Failure, OpOutcome, PrepareOutcome, ReplyTo, RunningShard, ShardMsg,
    Shared,
};
use crate::ids::{CommitId, ShardId};
use crate::ports::{OnDurable, Origin};
use crate::record::Record;
use crate::shard::IndexedRejection;

/// Work a shard holds back until it has handled the messages already in
/// its mailbox: its records go to the journal as one frame, its messages to
/// each other shard as one message. Under load one flush carries many
/// transfers; when idle it costs one message to itself.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) records: Vec<(Record, OnDurable)>,
    pub(super) credits: std::collections::BTreeMap<ShardId, Vec<CreditOp>>,
    pub(super) refused: std::collections::BTreeMap<ShardId, (Vec<CreditOp>, Vec<IndexedRejection>)>,
    pub(super) releases: std::collections::BTreeMap<ShardId, Vec<CommitId>>,
    /// Answers to callers whose transfer this shard refused: sent after
    /// the releases, so that the debit shard frees the reservation before
    /// anything the caller does next can reach it.
    pub(super) after_releases: Vec<(ReplyTo, OpOutcome)>,
    /// Answers to `Prepare`: a reservation may rely on changes whose
    /// records are still here, and the commit record its decider appends
    /// next must not reach the journal before them. Sent once they are
    /// appended (the journal keeps append order), so no record is ever
    /// durable before a record it depends on.
    pub(super) prepared: Vec<(ReplyTo, Vec<PrepareOutcome>)>,
    /// Answers to reads: sent once every record this shard appended so far
    /// is durable, so a read never shows what a crash could take back.
    pub(super) after_durable: Vec<AfterDurable>,
    pub(super) flush_scheduled: bool,
}

impl Outbox {
    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.credits.is_empty()
            && self.refused.is_empty()
            && self.releases.is_empty()
            && self.after_releases.is_empty()
            && self.prepared.is_empty()
            && self.after_durable.is_empty()
    }
}

impl RunningShard {
    /// Queues a record; it reaches the journal at the next flush, in order
    /// with every other record of this shard.
    pub(super) fn journal(&mut self, record: Record, on_durable: OnDurable) {
        self.outbox.records.push((record, on_durable));
    }

    pub(super) fn schedule_flush(&mut self) {
        if self.outbox.flush_scheduled || self.outbox.is_empty() {
            return;
        }
        match &self.myself {
            Some(myself) if myself.cast(ShardMsg::Flush).is_ok() => self.outbox.flush_scheduled = true,
            // Stopping: nothing will handle a Flush, so send now.
            _ => self.flush(),
        }
    }

    pub(super) fn flush(&mut self) {
        self.outbox.flush_scheduled = false;
        let records = std::mem::take(&mut self.outbox.records);
        let reads = std::mem::take(&mut self.outbox.after_durable);
        if !records.is_empty() {
            let (records, callbacks): (Vec<Record>, Vec<OnDurable>) = records.into_iter().unzip();
            let record = match <[Record; 1]>::try_from(records) {
                Ok([one]) => one,
                Err(records) => Record::Batch(records),
            };
            let unsynced = self.unsynced.clone();
            unsynced.fetch_add(1, Ordering::SeqCst);
            // The history these records made reaches the events' feed only
            // once they are durable: no event reports what a crash could undo.
            let events = self.state.history_for(self.shared.events.as_ref());
            let shard_id = self.state.shard_id();
            self.shared.journal.append(
                Origin::Shard(shard_id),
                record,
                Box::new(move |result| {
                    for on_durable in callbacks {
                        on_durable(result);
                    }
                    if let (Ok(()), Some((sink, entries))) = (result, events) {
                        if !entries.is_empty() {
                            sink.durable(shard_id, entries);
                        }
                    }
                    unsynced.fetch_sub(1, Ordering::SeqCst);
                    for read in reads {
                        read(result);
                    }
                }),
            );
        } else if !reads.is_empty() {
            self.shared.journal.when_durable(Box::new(move |result| {
                for read in reads {
                    read(result);
                }
            }));
        }
        // Every record a reservation may rely on is appended: the decider
        // may now append the commit that follows from it.
        for (to, outcomes) in std::mem::take(&mut self.outbox.prepared) {
            self.shared.router.reply(to, Answer::Prepared(outcomes));
        }
        let send = |shard: ShardId, message: ShardMsg, shared: &Shared| {
            if let Err(error) = shared.router.send(shard, message) {
                // Nothing can reach that shard, so the ledger stops.
                tracing::error!(%error, shard = shard.0, "shard unreachable");
                shared.fail(Failure::ShardUnreachable(shard));
            }
        };
        for (shard, (ops, failures)) in std::mem::take(&mut self.outbox.refused) {
            send(shard, ShardMsg::Refused(ops, failures), &self.shared);
        }
        for (shard, credits) in std::mem::take(&mut self.outbox.credits) {
            send(shard, ShardMsg::Credit(credits), &self.shared);
        }
        for (shard, commit_ids) in std::mem::take(&mut self.outbox.releases) {
            send(shard, ShardMsg::Release(commit_ids), &self.shared);
        }
        for (to, outcome) in std::mem::take(&mut self.outbox.after_releases) {
            self.shared.router.reply(to, Answer::Chained(Ok(outcome)));
        }
    }
}
