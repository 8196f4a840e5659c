//! Criterion benches of the hot paths: checking and applying a transfer
//! inside a shard, encoding and decoding journal frames, and a durable
//! journal append round trip.
//!
//! `cargo bench -p wallet-testkit --bench ledger`; CI runs it with `-- --test`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wallet_actors::account::{Leg, Side};
use wallet_actors::ports::{Journal, Origin};
use wallet_actors::record::{Applied, Record, SequencedEvent, RECORD_FORMAT_VERSION};
use wallet_actors::shard::{HoldChange, Planned, ShardState};
use wallet_actors::transfer::{Transfer, TransferKind};
use wallet_actors::{AccountEvent, ShardId};
use wallet_storage::frame;
use wallet_storage::{FileJournal, JournalOptions};
use wallet_testkit::{account, amount, posted, tid, usd, wallet};

fn planned(id: u128, debit: u128, credit: u128, value: u128) -> Planned {
    let request = posted(id, debit, credit, value);
    let leg = |account_id, side| Leg {
        account_id: account(account_id),
        transfer_id: tid(id),
        side,
        posted_add: value,
        pending_add: 0,
        pending_sub: 0,
        at_ms: 0,
    };
    Planned {
        transfer: Some(Arc::new(Transfer {
            id: tid(id),
            kind: TransferKind::Posted,
            debit_account_id: account(debit),
            credit_account_id: account(credit),
            amount: amount(value),
            pending_id: None,
            expires_at_ms: None,
            timestamp_ms: 1_700_000_000_000,
            review: None,
            request: Arc::new(request),
        })),
        legs: [leg(debit, Side::Debit), leg(credit, Side::Credit)],
        hold: HoldChange::None,
        decision: None,
    }
}

/// A bench measures what it claims only if its setup did what it says:
/// every step here is checked, and a failure stops the bench (also under
/// `cargo bench -- --test`, which CI runs).
fn shard_with_accounts(count: u128) -> ShardState {
    let mut shard = ShardState::new(ShardId(0), 1);
    for id in 1..=count {
        if let Err(rejection) = shard.open_account(wallet(id, usd()).opened_at(0)) {
            panic!("opening account {id}: {rejection}");
        }
    }
    // Fund them through one unlimited account so transfers pass.
    let mut funding = wallet(count + 1, usd());
    funding.flags = wallet_actors::AccountFlags::UNLIMITED;
    if let Err(rejection) = shard.open_account(funding.opened_at(0)) {
        panic!("opening the funding account: {rejection}");
    }
    for id in 1..=count {
        if let Err(rejection) = shard.execute_local(&[planned(1_000_000 + id, count + 1, id, 1 << 40)], 0) {
            panic!("funding account {id}: {rejection:?}");
        }
    }
    shard
}

fn apply_transfer(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard");
    group.throughput(Throughput::Elements(1));
    let mut shard = shard_with_accounts(10_000);
    let mut next = 10_000_000u128;
    group.bench_function("execute_local one transfer, 10k accounts", |b| {
        b.iter(|| {
            next += 1;
            let debit = 1 + next % 10_000;
            let credit = 1 + (next * 7) % 10_000;
            let credit = if credit == debit { 1 + (credit % 10_000) } else { credit };
            let op = [planned(next, debit, credit, 1)];
            let applied = shard.execute_local(&op, 0);
            assert!(applied.is_ok(), "transfer {next} refused: {applied:?}");
            applied
        })
    });
    group.finish();
}

fn sample_record() -> Record {
    let p = planned(42, 1, 2, 1050);
    Record::Applied(Applied {
        transfers: vec![p.transfer.clone().unwrap_or_else(|| unreachable!())],
        resolutions: Vec::new(),
        events: p
            .legs
            .iter()
            .map(|leg| SequencedEvent {
                account_id: leg.account_id,
                sequence: 7,
                event: AccountEvent::Leg(*leg),
            })
            .collect(),
        decisions: Vec::new(),
        at_ms: 0,
    })
}

fn encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Elements(1));
    let record = sample_record();
    group.bench_function("encode a one-transfer record", |b| {
        b.iter(|| frame::encode(&record, RECORD_FORMAT_VERSION))
    });
    let bytes = match frame::encode(&record, RECORD_FORMAT_VERSION) {
        Ok(bytes) => bytes,
        Err(error) => panic!("encoding the sample record: {error}"),
    };
    match frame::decode_at::<Record>(&bytes, 0, RECORD_FORMAT_VERSION) {
        Ok(frame::Decoded::Frame(decoded, end)) => assert!(decoded == record && end == bytes.len()),
        other => panic!("the sample record does not decode: {other:?}"),
    }
    group.bench_function("decode a one-transfer record", |b| {
        b.iter(|| frame::decode_at::<Record>(&bytes, 0, RECORD_FORMAT_VERSION))
    });
    group.finish();
}

fn journal_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal");
    group.sample_size(10);
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("no temporary directory for the journal bench: {error}"),
    };
    let journal = match FileJournal::start(dir.path(), JournalOptions::default()) {
        Ok(journal) => journal,
        Err(error) => panic!("the journal bench's journal did not start: {error}"),
    };
    // 256 appends in flight, waited for together: what group commit buys.
    group.throughput(Throughput::Elements(256));
    group.bench_function("256 concurrent durable appends", |b| {
        b.iter_batched(
            || (0..256).map(|_| sample_record()).collect::<Vec<_>>(),
            |records| {
                let (tx, rx) = std::sync::mpsc::channel();
                for record in records {
                    let tx = tx.clone();
                    journal.append(
                        Origin::Node,
                        record,
                        Box::new(move |result| {
                            let _ = tx.send(result);
                        }),
                    );
                }
                drop(tx);
                let durable = rx.iter().filter(|result| result.is_ok()).count();
                assert_eq!(durable, 256, "appends that did not become durable");
                durable
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
    journal.close();
}

mod group {
    #![allow(missing_docs)]
    use super::*;
    criterion_group!(benches, apply_transfer, encoding, journal_append);
}
use group::benches;
criterion_main!(benches);
