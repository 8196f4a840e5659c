//! Load on a node's journal on JetStream (`wallet_cluster::journal`), the
//! storage cluster mode writes through: how many records per second one
//! node's writer makes durable, in how many messages, at what latency and
//! CPU (this process and nats-server apart).
//!
//! ```sh
//! cargo run --release -p wallet-testkit --example journal_bench -- --shards 16 --concurrency 256 --duration-s 10
//! ```
//!
//! Starts the project's pinned nats-server (`nats.conf`: `sync_interval:
//! always`) on a free port with a temporary store, takes `--shards` shard
//! leases for one node, then keeps `--concurrency` records in flight, each
//! about `--record-bytes` long, to random shards, each waiting until its
//! record is acknowledged (as a shard's answer waits for durability). Ends
//! with one JSON line.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use wallet_actors::ids::{stable_hash, NodeId, ShardId};
use wallet_actors::ports::Origin;
use wallet_actors::record::Record;
use wallet_cluster::journal::{JournalOptions, JournalStream, NodeJournal};
use wallet_testkit::nats::NatsServer;

#[derive(Parser, Debug)]
struct Args {
    /// Shards this node holds (one subject each).
    #[arg(long, default_value_t = 16)]
    shards: u16,
    /// Records in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// About how long each record is, in bytes (a transfer between two
    /// shards journals about 250 bytes).
    #[arg(long, default_value_t = 250)]
    record_bytes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Most KiB of records gathered into one message (the writer's
    /// `message_bytes_max`).
    #[arg(long, default_value_t = 512)]
    message_kib: usize,
    /// Tokio worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

/// User and system CPU seconds of process `pid` ("self" for this one).
fn cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces), 1-based 14 and 15.
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A record of about `bytes` bytes: numbered markers in one batch record.
fn record(n: u64, bytes: usize) -> Record {
    Record::Batch(
        (0..(bytes / 10).max(1) as u64).map(|i| Record::Epoch(stable_hash(u128::from(n + i)))).collect(),
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let server = NatsServer::start(&dir.path().join("nats"))?;
    let server_pid = server.pid().map(|p| p.to_string()).unwrap_or_default();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.workers).enable_all().build()?;
    runtime.block_on(async {
        let options = JournalOptions {
            message_bytes_max: args.message_kib * 1024,
            ..JournalOptions::new(server.url())
        };
        let stream = JournalStream::connect(options).await?;
        let journal = NodeJournal::start(stream.clone(), NodeId(1)).await?;
        for shard in (0..args.shards).map(ShardId) {
            journal.take(shard).await?;
        }
        let (cpu_self, cpu_server) = (cpu_s("self"), cpu_s(&server_pid));
        let started = Instant::now();
        let deadline = started + Duration::from_secs(args.duration_s);
        let mut clients = Vec::new();
        for client in 0..args.concurrency {
            let journal = journal.clone();
            let (shards, bytes) = (args.shards, args.record_bytes);
            clients.push(tokio::spawn(async move {
                let mut latencies = Histogram::<u64>::new(3)?;
                let mut n = client as u64 * 1_000_000_000;
                while Instant::now() < deadline {
                    n += 1;
                    let shard = ShardId((stable_hash(u128::from(n)) % u64::from(shards)) as u16);
                    let (sender, outcome) = tokio::sync::oneshot::channel();
                    let at = Instant::now();
                    journal.append(
                        Origin::Shard(shard),
                        &record(n, bytes),
                        Box::new(move |result| {
                            let _ = sender.send(result);
                        }),
                    );
                    outcome.await??;
                    latencies.record(at.elapsed().as_micros() as u64)?;
                }
                anyhow::Ok(latencies)
            }));
        }
        let mut latencies = Histogram::<u64>::new(3)?;
        for client in clients {
            latencies.add(client.await??)?;
        }
        let elapsed_s = started.elapsed().as_secs_f64();
        let (cpu_self, cpu_server) = (cpu_s("self") - cpu_self, cpu_s(&server_pid) - cpu_server);
        let stats = journal.stats();
        let records = stats.records.load(Ordering::Relaxed) as f64;
        let messages = stats.messages.load(Ordering::Relaxed) as f64;
        let line = serde_json::json!({
            "shards": args.shards,
            "concurrency": args.concurrency,
            "record_bytes": args.record_bytes,
            "message_kib": args.message_kib,
            "records_per_sec": (records / elapsed_s).round(),
            "messages_per_sec": (messages / elapsed_s).round(),
            "records_per_message": (records / messages.max(1.0)).round(),
            "p50_us": latencies.value_at_quantile(0.5),
            "p99_us": latencies.value_at_quantile(0.99),
            "cpu_us_per_record_client": (cpu_self * 1e6 / records.max(1.0) * 10.0).round() / 10.0,
            "cpu_us_per_record_server": (cpu_server * 1e6 / records.max(1.0) * 10.0).round() / 10.0,
        });
        println!("{line}");
        anyhow::Ok(())
    })
}
