//! The child of the crash tests: opens a ledger, then applies requests from
//! many concurrent clients until it is killed (or stops at a fault point the
//! environment arms, `WALLET_FAULTS`), printing one line per acknowledged
//! transfer (`ACK <json>`) the moment its result arrives.
//!
//! `wallet-crash-child <data-dir> <run-number>`; with `WALLET_CRASH_NATS_URL`
//! set it runs node 1's ledger on the JetStream journal there instead (the
//! data directory then holds the node's snapshots).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use wallet_testkit::crash::{self, Plan, Step};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: wallet-crash-child <data-dir> <run-number>")?;
    let run: u64 = args.next().context("run number")?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        // Kept open until the process is killed.
        let (ledger, _open): (wallet_actors::Ledger, Box<dyn std::any::Any + Send>) =
            match std::env::var(crash::NATS_URL_VAR) {
                Ok(url) => {
                    let node = crash::open_node(std::path::Path::new(&dir), &url, 100).await?;
                    (node.ledger.clone(), Box::new(node))
                }
                Err(_) => {
                    let node = crash::open(std::path::Path::new(&dir)).await?;
                    (node.ledger.clone(), Box::new(node))
                }
            };
        crash::setup(&ledger).await?;
        println!("READY");
        let stdout = Arc::new(std::sync::Mutex::new(std::io::stdout()));
        let mut clients = tokio::task::JoinSet::new();
        for client in 0..crash::CLIENTS {
            let ledger = ledger.clone();
            let stdout = stdout.clone();
            clients.spawn(async move {
                let mut plan = Plan::new(run, client);
                loop {
                    let (requests, linked) = match plan.next_step() {
                        Step::Submit(requests, linked) => (requests, linked),
                        Step::Status(id, status) => {
                            let _ = ledger.set_account_status(wallet_testkit::account(id), status).await;
                            continue;
                        }
                    };
                    let Ok(results) = ledger.submit(requests.clone(), linked).await else { continue };
                    for (request, result) in requests.iter().zip(results) {
                        if let Ok(outcome) = result {
                            plan.remember(&outcome);
                            let line = crash::ack_line(request)?;
                            let mut out = stdout.lock().map_err(|_| anyhow::anyhow!("stdout lock"))?;
                            writeln!(out, "{line}")?;
                            out.flush()?;
                        }
                    }
                }
                #[allow(unreachable_code)]
                anyhow::Ok(())
            });
        }
        while let Some(done) = clients.join_next().await {
            done??;
        }
        anyhow::Ok(())
    })
}
