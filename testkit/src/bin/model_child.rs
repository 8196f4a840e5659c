//! The model test's engine in a process of its own, so the test can kill it
//! with SIGKILL at any step (see `wallet_testkit::model_child`).
//!
//! `wallet-model-child <data-dir> <clock-ms>`

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().context("usage: wallet-model-child <data-dir> <clock-ms>")?;
    let now_ms: u64 = args.next().context("clock in ms")?.parse()?;
    wallet_testkit::model_child::serve(std::path::Path::new(&dir), now_ms)
}
