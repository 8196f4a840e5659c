//! HTTP load generator: transfers through the real API over loopback.
//!
//! ```sh
//! cargo run --release -p wallet-api --example http_loadgen -- --accounts 1000 --concurrency 64 --duration-s 10 --batch 1
//! ```
//!
//! Starts `wallet serve`'s application in process on a temporary data
//! directory and port 0 (rate limits raised), signs in as the admin, opens
//! and funds `--accounts` accounts, then runs `--concurrency` connections
//! for `--duration-s` seconds, each posting `POST /v1/transfers` (`--batch
//! 1`) or `POST /v1/transfers/batch` with `--batch` transfers, and prints
//! one JSON line. Every transfer counted was durable before its response.
//!
//! With `--serve-for-s S --wrk-setup FILE` it only sets up: it writes the
//! base URL, the token and the accounts as Lua to FILE, prints
//! `{"ready":true,"base":...}`, and serves for S seconds, so that an
//! external client (`scripts/http_bench` runs wrk) sends the load.
//!
//! With `--target URL` it starts nothing and drives a running server
//! instead (`scripts/cluster_bench` points it at a `wallet node`), signed
//! in as `--admin-email` with `$WALLET_ADMIN_PASSWORD`; give that server
//! rate limits high enough for one client.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use uuid::Uuid;
use wallet_api::{Application, Settings};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Accounts to move money between.
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Connections sending at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Transfers per request (1: `POST /v1/transfers`; more: the batch endpoint).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Shards of the ledger.
    #[arg(long, default_value_t = 64)]
    shards: u16,
    /// Only set up, then serve this many seconds for an external client.
    #[arg(long)]
    serve_for_s: Option<u64>,
    /// Where `--serve-for-s` writes the setup for wrk's Lua script.
    #[arg(long)]
    wrk_setup: Option<std::path::PathBuf>,
    /// Drive this running server (its base URL) rather than one in process.
    #[arg(long)]
    target: Option<String>,
    /// The administrator to sign in as with `--target`.
    #[arg(long, default_value = "admin@wallet.local")]
    admin_email: String,
}

/// The task of a server started here.
type Serving = tokio::task::JoinHandle<Result<(), wallet_api::StartupError>>;

/// The server load goes to: started here, or running elsewhere.
struct Target {
    base: String,
    email: String,
    password: String,
    /// Stops the server started here, and its task.
    local: Option<(tokio::sync::oneshot::Sender<()>, Serving)>,
}

impl Target {
    async fn stop(self) -> anyhow::Result<()> {
        if let Some((stop, server)) = self.local {
            let _ = stop.send(());
            server.await??;
        }
        Ok(())
    }
}

const ADMIN_EMAIL: &str = "admin@loadgen.example";
const ADMIN_PASSWORD: &str = "loadgen-admin-password";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(args))
}

async fn post(
    client: &reqwest::Client,
    url: String,
    token: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let response = client.post(url).bearer_auth(token).json(body).send().await?;
    let status = response.status().as_u16();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

/// Only what the generator counts of a batch reply; serde skips the rest
/// without building it, so the client spends its CPU on sending.
#[derive(serde::Deserialize)]
struct BatchCount {
    results: Vec<ItemStatus>,
}

#[derive(serde::Deserialize)]
struct ItemStatus {
    status: u16,
}

/// Sends a pre-serialized JSON body; answers the status and the body's bytes.
async fn post_raw(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: String,
) -> anyhow::Result<(u16, impl AsRef<[u8]>)> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?))
}

/// One client: requests of `--batch` transfers between random accounts,
/// one at a time, until `deadline`; their latencies, transfers applied, and
/// requests failed.
async fn client_loop(
    client: reqwest::Client,
    base: String,
    token: Arc<String>,
    accounts: Arc<Vec<String>>,
    args: Args,
    worker: usize,
    deadline: Instant,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut state = (worker as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let single_url = format!("{base}/v1/transfers");
    let batch_url = format!("{base}/v1/transfers/batch");
    while Instant::now() < deadline {
        // Bodies are written as text: building `serde_json::Value`s
        // cost the client as much CPU as the server spent parsing.
        let mut transfers = String::with_capacity(args.batch * 160);
        for n in 0..args.batch {
            let from = next(accounts.len());
            let to = (from + 1 + next(accounts.len() - 1)) % accounts.len();
            if n > 0 {
                transfers.push(',');
            }
            transfers.push_str(&format!(
                r#"{{"id":"{}","from_account_id":"{}","to_account_id":"{}","amount":"1"}}"#,
                Uuid::new_v4(),
                accounts[from],
                accounts[to]
            ));
        }
        let sent = Instant::now();
        let result = if args.batch == 1 {
            post_raw(&client, &single_url, &token, transfers).await
        } else {
            let body = format!(r#"{{"transfers":[{transfers}],"atomic":false}}"#);
            post_raw(&client, &batch_url, &token, body).await
        };
        histogram.record(sent.elapsed().as_micros().max(1) as u64)?;
        match result {
            Ok((201, _)) if args.batch == 1 => ok += 1,
            Ok((status, body)) if args.batch > 1 && status < 300 => {
                let counted: BatchCount = serde_json::from_slice(body.as_ref())?;
                ok += counted.results.iter().filter(|item| item.status == 201).count() as u64;
            }
            _ => failed += 1,
        }
    }
    anyhow::Ok((histogram, ok, failed))
}

async fn start_local(args: &Args, dir: &std::path::Path) -> anyhow::Result<Target> {
    let data_dir = dir.to_string_lossy().to_string();
    let shards = args.shards.to_string();
    let settings = Settings::from_args([
        "--data-dir",
        data_dir.as_str(),
        "--listen",
        "127.0.0.1:0",
        "--shards",
        shards.as_str(),
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
        "--jwt-secret",
        "http-loadgen-secret-0123456789abcdef",
        "--rate-limit-per-second",
        "10000000",
        "--rate-limit-burst",
        "10000000",
        "--user-rate-limit-per-second",
        "10000000",
        "--user-rate-limit-burst",
        "10000000",
        // One user (the admin) sends all the load: give it the whole in-flight budget.
        "--user-in-flight-max",
        "65536",
    ])
    .context("settings")?;
    let app = Application::build(settings).await.context("starting the application")?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Ok(Target {
        base,
        email: ADMIN_EMAIL.to_string(),
        password: ADMIN_PASSWORD.to_string(),
        local: Some((stop, server)),
    })
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let target = match &args.target {
        Some(base) => Target {
            base: base.trim_end_matches('/').to_string(),
            email: args.admin_email.clone(),
            password: std::env::var("WALLET_ADMIN_PASSWORD")
                .context("--target needs $WALLET_ADMIN_PASSWORD")?,
            local: None,
        },
        None => start_local(&args, dir.path()).await?,
    };
    let base = target.base.clone();
    let client = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(args.concurrency).build()?;

    let login = json!({"email": target.email, "password": target.password});
    let token: Value = client.post(format!("{base}/v1/auth/token")).json(&login).send().await?.json().await?;
    let token = Arc::new(token["access_token"].as_str().context("no token")?.to_string());

    let mut accounts = Vec::with_capacity(args.accounts);
    for _ in 0..args.accounts {
        let (status, body) =
            post(&client, format!("{base}/v1/accounts"), &token, &json!({"asset": "USD", "scale": 2}))
                .await?;
        anyhow::ensure!(status == 201, "opening an account: {status} {body}");
        let id = body["id"].as_str().context("account id")?.to_string();
        let deposit = json!({"id": Uuid::new_v4(), "account_id": id, "amount": "100000000000"});
        let (status, body) = post(&client, format!("{base}/v1/deposits"), &token, &deposit).await?;
        anyhow::ensure!(status == 201, "deposit: {status} {body}");
        accounts.push(id);
    }
    let accounts = Arc::new(accounts);

    if let Some(serve_s) = args.serve_for_s {
        let path = args.wrk_setup.clone().context("--serve-for-s needs --wrk-setup")?;
        let quoted: Vec<String> = accounts.iter().map(|a| format!("\"{a}\"")).collect();
        let lua =
            format!("token = \"{}\"\nbatch = {}\naccounts = {{{}}}\n", token, args.batch, quoted.join(","));
        std::fs::write(&path, lua)?;
        println!("{}", json!({"ready": true, "base": base}));
        tokio::time::sleep(Duration::from_secs(serve_s)).await;
        return target.stop().await;
    }

    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let (client, base, token, accounts, args) =
            (client.clone(), base.clone(), token.clone(), accounts.clone(), args.clone());
        tasks.spawn(client_loop(client, base, token, accounts, args, worker, deadline));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut ok, mut failed) = (0u64, 0u64);
    while let Some(done) = tasks.join_next().await {
        let (h, o, f) = done??;
        histogram.add(h)?;
        ok += o;
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    target.stop().await?;
    println!(
        "{}",
        json!({
            "accounts": args.accounts, "concurrency": args.concurrency, "batch": args.batch,
            "duration_s": elapsed, "requests_per_sec": (histogram.len() as f64 / elapsed).round(),
            "transfers_per_sec": (ok as f64 / elapsed).round(), "requests_failed": failed,
            "p50_us": histogram.value_at_quantile(0.5), "p99_us": histogram.value_at_quantile(0.99),
            "p999_us": histogram.value_at_quantile(0.999),
        })
    );
    Ok(())
}
