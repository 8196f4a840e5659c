//! The test application: build, serve on port 0, talk JSON, shut down;
//! and the real `wallet` binary as a child process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;
use wallet_api::{Application, Settings, StartupError};

pub const ADMIN_EMAIL: &str = "admin@test.example";
pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef-test";
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// A running application.
pub struct TestApp {
    pub base: String,
    /// The ledger behind the server (tests that crash a shard).
    pub ledger: wallet_actors::Ledger,
    pub client: reqwest::Client,
    pub admin_token: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), StartupError>>>,
    /// The nats-server holding a node's journal (`WALLET_TEST_NODE`), its
    /// store in the data directory so that a restart finds it.
    nats: Option<wallet_testkit::nats::NatsServer>,
    pub dir: tempfile::TempDir,
}

/// Whether the suite runs against a node whose journal is on NATS
/// JetStream (`WALLET_TEST_NODE=1`) rather than the embedded node: the same
/// tests hold on both.
pub fn node_mode() -> bool {
    std::env::var("WALLET_TEST_NODE").is_ok_and(|value| value == "1")
}

/// The user store of the stopped server whose data directory is `dir`:
/// `users.sled` there, or in node mode the shared directory on the NATS
/// store the server used (started again here; keep it while reading).
pub async fn stored_users(
    dir: &std::path::Path,
) -> anyhow::Result<(wallet_storage::users::UserStore, Option<wallet_testkit::nats::NatsServer>)> {
    if !node_mode() {
        let path = dir.join(wallet_storage::users::FILE_NAME);
        return Ok((wallet_storage::users::UserStore::open(&path)?, None));
    }
    let nats = wallet_testkit::nats::NatsServer::start(&dir.join("nats"))?;
    let options = wallet_cluster::directory::DirectoryOptions::new(nats.url());
    let directory = wallet_cluster::directory::SharedDirectory::open(options).await?;
    Ok((wallet_storage::users::UserStore::over(directory), Some(nats)))
}

/// A response: status and JSON body (Null when the body is not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }
}

fn settings(dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<Settings> {
    let data_dir = dir.to_string_lossy().to_string();
    let body_limit = BODY_LIMIT_BYTES.to_string();
    let mut args = vec![
        "--data-dir",
        data_dir.as_str(),
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "4",
        "--admin-email",
        ADMIN_EMAIL,
        "--admin-password",
        ADMIN_PASSWORD,
        "--jwt-secret",
        JWT_SECRET,
        "--body-limit-bytes",
        body_limit.as_str(),
    ];
    args.extend_from_slice(extra);
    Settings::from_args(args).context("parsing test settings")
}

impl TestApp {
    pub async fn spawn() -> anyhow::Result<TestApp> {
        let dir = tempfile::tempdir().context("making a temp dir")?;
        TestApp::spawn_in(dir).await
    }

    /// Starts on `dir`, which may hold data of an earlier run.
    pub async fn spawn_in(dir: tempfile::TempDir) -> anyhow::Result<TestApp> {
        TestApp::spawn_with(dir, &[]).await
    }

    /// Starts on `dir` with extra flags.
    pub async fn spawn_with(dir: tempfile::TempDir, extra: &[&str]) -> anyhow::Result<TestApp> {
        // The server's warnings and errors, shown with a failed test's output
        // (`RUST_LOG` for more).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        let mut flags = extra.to_vec();
        let (mode, nats) = if node_mode() {
            // A test that runs its own server for events keeps the journal there too.
            let nats = match flags.contains(&"--nats-url") {
                true => None,
                false => Some(wallet_testkit::nats::NatsServer::start(&dir.path().join("nats"))?),
            };
            let node = wallet_actors::ids::NodeId(1);
            (wallet_api::Mode::Node { node, journal_replicas: 1, standby: false }, nats)
        } else {
            (wallet_api::Mode::Embedded, None)
        };
        let url = nats.as_ref().map(wallet_testkit::nats::NatsServer::url);
        if let Some(url) = &url {
            flags.extend(["--nats-url", url.as_str()]);
        }
        let app =
            Application::build_as(settings(dir.path(), &flags)?, mode).await.context("building the app")?;
        let base = format!("http://127.0.0.1:{}", app.port());
        let ledger = app.ledger();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder().no_proxy().build().context("building the client")?;
        let mut test = TestApp {
            base,
            ledger,
            client,
            admin_token: String::new(),
            shutdown: Some(tx),
            server: Some(server),
            nats,
            dir,
        };
        test.admin_token = test.token(ADMIN_EMAIL, ADMIN_PASSWORD).await?;
        Ok(test)
    }

    /// The nats-server holding the node's journal, in node mode.
    pub fn nats_mut(&mut self) -> Option<&mut wallet_testkit::nats::NatsServer> {
        self.nats.as_mut()
    }

    /// Fires the shutdown and waits for a clean stop; returns the data dir.
    pub async fn stop(mut self) -> anyhow::Result<tempfile::TempDir> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.context("joining the server")?.context("the server stopped with an error")?;
        }
        // The next start on this directory starts its own on the same store.
        drop(self.nats.take());
        let dir = tempfile::tempdir()?;
        Ok(std::mem::replace(&mut self.dir, dir))
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let mut request = self.client.request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| format!("sending {path}"))?;
        Reply::read(response).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::POST, path, token, Some(body)).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<Reply> {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    pub async fn token(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let reply = self.post("/v1/auth/token", None, &json!({"email": email, "password": password})).await?;
        anyhow::ensure!(reply.status == StatusCode::OK, "token: {} {}", reply.status, reply.body);
        reply.body["access_token"].as_str().map(str::to_string).context("no access_token")
    }

    /// Signs up a new user; returns (user id, access token).
    pub async fn user(&self, name: &str) -> anyhow::Result<(String, String)> {
        let email = format!("{name}-{}@example.com", Uuid::new_v4().simple());
        let password = "correct horse battery";
        let reply = self
            .post("/v1/users", None, &json!({"email": email, "password": password, "name": name}))
            .await?;
        anyhow::ensure!(reply.status == StatusCode::CREATED, "sign-up: {} {}", reply.status, reply.body);
        let id = reply.body["id"].as_str().context("no id")?.to_string();
        Ok((id, self.token(&email, password).await?))
    }

    /// Opens a USD account for the token's user; returns its id.
    pub async fn account(&self, token: &str) -> anyhow::Result<String> {
        let reply = self.post("/v1/accounts", Some(token), &json!({"asset": "USD", "scale": 2})).await?;
        anyhow::ensure!(reply.status == StatusCode::CREATED, "open: {} {}", reply.status, reply.body);
        reply.body["id"].as_str().map(str::to_string).context("no id")
    }

    /// Deposits as the admin.
    pub async fn deposit(&self, account: &str, amount: &str) -> anyhow::Result<Reply> {
        let body = json!({"id": Uuid::new_v4().to_string(), "account_id": account, "amount": amount});
        self.post("/v1/deposits", Some(&self.admin_token), &body).await
    }

    pub async fn available(&self, token: &str, account: &str) -> anyhow::Result<String> {
        let reply = self.get(&format!("/v1/accounts/{account}"), Some(token)).await?;
        anyhow::ensure!(reply.status == StatusCode::OK, "read: {} {}", reply.status, reply.body);
        reply.body["balance"]["available"].as_str().map(str::to_string).context("no balance")
    }
}

impl Reply {
    pub async fn read(response: reqwest::Response) -> anyhow::Result<Reply> {
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = response.bytes().await.context("reading the body")?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, content_type, body })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn new_id() -> String {
    Uuid::new_v4().to_string()
}

/// Base64url without padding, as JWTs use.
pub fn base64url(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Some(value) = check() {
            return Some(value);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Logs in over HTTP and returns the access token (for servers started as
/// a child process, which have no [`TestApp`]).
pub async fn login(
    client: &reqwest::Client,
    base: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<String> {
    let reply = client
        .post(format!("{base}/v1/auth/token"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await?;
    anyhow::ensure!(reply.status() == reqwest::StatusCode::OK, "login: {}", reply.status());
    let body: serde_json::Value = reply.json().await?;
    body["access_token"].as_str().map(str::to_string).ok_or_else(|| anyhow::anyhow!("no token"))
}

/// A running `wallet serve` child process: the real binary.
pub struct Server {
    child: Child,
    pub base: String,
    /// The password printed at first start, if any.
    pub password: Option<String>,
    /// The whole line that showed it.
    pub password_line: Option<String>,
    /// The nats-server holding the node's journal, in node mode.
    _nats: Option<wallet_testkit::nats::NatsServer>,
}

/// The subcommand and its flags for the mode the suite runs in, and the
/// nats-server a node's journal needs (its store in `dir`, so a restart
/// finds it), unless `extra` names one.
fn mode_args(
    dir: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<(Vec<String>, Option<wallet_testkit::nats::NatsServer>)> {
    // A test that names a node id runs `wallet node`, in either mode.
    if extra.contains(&"--node-id") {
        return Ok((vec!["node".into()], None));
    }
    if !node_mode() {
        return Ok((vec!["serve".into()], None));
    }
    let mut args: Vec<String> = ["node", "--node-id", "1"].map(String::from).to_vec();
    if extra.contains(&"--nats-url") {
        return Ok((args, None));
    }
    let nats = wallet_testkit::nats::NatsServer::start(&dir.join("nats"))?;
    args.extend(["--nats-url".to_string(), nats.url()]);
    Ok((args, Some(nats)))
}

impl Server {
    /// Starts the binary on `dir` and waits until it logs its address.
    pub fn start(dir: &std::path::Path, admin_password: Option<&str>) -> anyhow::Result<Server> {
        Server::start_with(dir, admin_password, &[])
    }

    /// Starts the binary on `dir` with extra `serve` flags.
    pub fn start_with(
        dir: &std::path::Path,
        admin_password: Option<&str>,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        Server::start_until(dir, admin_password, extra, "serving")
    }

    /// Starts the binary on `dir` with extra flags and waits until it logs
    /// `message` with its address ("serving", or "standing by" for a standby).
    pub fn start_until(
        dir: &std::path::Path,
        admin_password: Option<&str>,
        extra: &[&str],
        message: &str,
    ) -> anyhow::Result<Server> {
        let (mode, nats) = mode_args(dir, extra)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_wallet"));
        command
            .args(mode)
            .args(["--listen", "127.0.0.1:0", "--shards", "4", "--log-format", "json"])
            .arg("--data-dir")
            .arg(dir)
            .args(extra)
            .env_remove("WALLET_ADMIN_EMAIL")
            .env("WALLET_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        match admin_password {
            Some(password) => command.env("WALLET_ADMIN_PASSWORD", password),
            None => command.env_remove("WALLET_ADMIN_PASSWORD"),
        };
        // A node keeps its users on NATS, its snapshots in `node/`.
        let had_users = dir.join(wallet_storage::users::FILE_NAME).exists() || dir.join("node").exists();
        let mut child = command.spawn().context("starting wallet")?;
        let (lines_tx, lines) = mpsc::channel::<(Stream, String)>();
        let stderr = child.stderr.take().context("no stderr")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            let lines = BufReader::new(stderr).lines().map_while(Result::ok);
            lines.for_each(|l| drop(tx.send((Stream::Stderr, l))))
        });
        std::thread::spawn(move || {
            let lines = BufReader::new(stdout).lines().map_while(Result::ok);
            lines.for_each(|l| drop(lines_tx.send((Stream::Stdout, l))))
        });
        let mut address = None;
        let mut password = None;
        let mut password_line = None;
        // On a new data directory without a configured password the binary
        // prints one (on stderr, never stdout, which may be kept) before it
        // serves; the two pipes are read by two threads, so the lines may
        // arrive in either order: wait for both.
        let expect_password = admin_password.is_none() && !had_users;
        let found = wait_for(Duration::from_secs(60), || {
            while let Ok((stream, line)) = lines.try_recv() {
                if stream == Stream::Stderr && line.starts_with(GENERATED_PASSWORD_LINE) {
                    password = line.rsplit_once(": ").map(|(_, p)| p.trim().to_string());
                    password_line = Some(line.clone());
                }
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                    if event["message"] == message {
                        address = event["address"].as_str().map(str::to_string);
                    }
                }
            }
            if expect_password && password.is_none() && !child_exited(&mut child) {
                return None;
            }
            match &address {
                Some(address) => Some(Some(address.clone())),
                // Exited before serving: no address will come.
                None if child_exited(&mut child) => Some(None),
                None => None,
            }
        });
        let Some(Some(address)) = found else {
            let _ = child.kill();
            anyhow::bail!("the server did not log its address");
        };
        // `WALLET_TEST_SERVER_LOGS=1`: what it logs from now on, on the test's stderr.
        if std::env::var("WALLET_TEST_SERVER_LOGS").is_ok_and(|value| value == "1") {
            let name = address.clone();
            std::thread::spawn(move || lines.iter().for_each(|(_, line)| eprintln!("[{name}] {line}")));
        }
        Ok(Server { child, base: format!("http://{address}"), password, password_line, _nats: nats })
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill {signal} failed");
        Ok(())
    }

    pub fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        match wait_for(Duration::from_secs(30), || self.child.try_wait().ok().flatten()) {
            Some(exit) => {
                // The next start on this directory starts its own on the same store.
                drop(self._nats.take());
                Ok(exit)
            }
            None => {
                let _ = self.child.kill();
                anyhow::bail!("the server did not stop")
            }
        }
    }
}

/// What the binary prints, on stderr, before a generated admin password.
pub const GENERATED_PASSWORD_LINE: &str = "generated admin password";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Runs `wallet serve` on `dir` expecting it to fail at start; returns its stderr.
pub async fn failed_start(
    dir: &std::path::Path,
    admin_password: Option<&str>,
    extra: &[&str],
) -> anyhow::Result<String> {
    let (mode, _nats) = mode_args(dir, extra)?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallet"));
    command
        .args(mode)
        .args(["--listen", "127.0.0.1:0", "--shards", "4"])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env_remove("WALLET_ADMIN_EMAIL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match admin_password {
        Some(password) => command.env("WALLET_ADMIN_PASSWORD", password),
        None => command.env_remove("WALLET_ADMIN_PASSWORD"),
    };
    let mut child = command.spawn().context("starting wallet")?;
    let end = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > end {
            let _ = child.kill();
            anyhow::bail!("wallet did not stop");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    anyhow::ensure!(!status.success(), "wallet started: {stderr}");
    Ok(stderr)
}

/// Whether the child has exited (then no password line will come).
fn child_exited(child: &mut Child) -> bool {
    !matches!(child.try_wait(), Ok(None))
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Opens a EUR account as `admin` and deposits `amount` into it; returns
/// the account's id and the deposit's.
pub async fn account_with_deposit(
    client: &reqwest::Client,
    base: &str,
    admin: &str,
    amount: &str,
) -> anyhow::Result<(String, String)> {
    let reply = client
        .post(format!("{base}/v1/accounts"))
        .bearer_auth(admin)
        .json(&json!({"asset": "EUR"}))
        .send()
        .await?;
    anyhow::ensure!(reply.status() == StatusCode::CREATED, "opening an account: {}", reply.status());
    let account =
        reply.json::<serde_json::Value>().await?["id"].as_str().context("no account id")?.to_string();
    let deposit_id = uuid::Uuid::new_v4().to_string();
    let deposit = json!({"id": deposit_id, "account_id": account, "amount": amount});
    let reply = client.post(format!("{base}/v1/deposits")).bearer_auth(admin).json(&deposit).send().await?;
    anyhow::ensure!(reply.status() == StatusCode::CREATED, "depositing: {}", reply.status());
    Ok((account, deposit_id))
}
