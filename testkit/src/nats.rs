//! A real `nats-server` for tests: the pinned binary (`scripts/install-nats`),
//! the repository's `nats.conf`, a free loopback port and a store directory
//! of its own, stopped (SIGKILL) when dropped. It can be killed and started
//! again on the same port and store, as an outage would.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// The repository's root (where `nats.conf` and `scripts/` are).
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The path of a nats-server new enough: `NATS_SERVER` if set, otherwise
/// what `scripts/install-nats` prints (it installs the pinned one once).
pub fn server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let output = Command::new(repository().join("scripts/install-nats")).stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(output.status.success(), "scripts/install-nats failed");
    let text = String::from_utf8(output.stdout)?;
    let last = text.lines().last().ok_or_else(|| anyhow::anyhow!("scripts/install-nats printed nothing"))?;
    Ok(PathBuf::from(last.trim()))
}

/// A running nats-server.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: PathBuf,
    log: PathBuf,
    /// Flags after the usual ones (a cluster member's name and routes).
    args: Vec<String>,
    process: Option<Child>,
}

impl NatsServer {
    /// Starts a server whose JetStream store is `store` (created if
    /// missing) on a free port, and waits until it accepts clients.
    pub fn start(store: &Path) -> anyhow::Result<NatsServer> {
        NatsServer::start_with(store, Vec::new())
    }

    /// [`NatsServer::start`] with `args` after the usual flags.
    pub fn start_with(store: &Path, args: Vec<String>) -> anyhow::Result<NatsServer> {
        std::fs::create_dir_all(store)?;
        let port = free_port()?;
        let log = store.with_extension("log");
        let binary = server_binary()?;
        let mut server = NatsServer { binary, port, store: store.to_path_buf(), log, args, process: None };
        server.restart()?;
        Ok(server)
    }

    /// Starts it again after [`NatsServer::kill`], on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.process.is_none(), "the server is running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let process = Command::new(&self.binary)
            .arg("-c")
            .arg(repository().join("nats.conf"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(&self.store)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.process = Some(process);
        self.wait_ready(Duration::from_secs(10))
    }

    /// Waits until the server answers a client with its INFO line, JetStream on.
    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(info) = self.info() {
                anyhow::ensure!(info.contains("\"jetstream\":true"), "JetStream is off: {info}");
                return Ok(());
            }
            if let Some(process) = self.process.as_mut() {
                if let Some(status) = process.try_wait()? {
                    self.process = None;
                    anyhow::bail!("nats-server exited with {status}: {}", self.log_text());
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "nats-server not ready within {within:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The INFO line a client gets on connecting.
    pub fn info(&self) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut line = String::new();
        BufReader::new(stream.try_clone()?).read_line(&mut line)?;
        stream.write_all(b"QUIT\r\n").ok();
        anyhow::ensure!(line.starts_with("INFO "), "not a NATS greeting: {line:?}");
        Ok(line)
    }

    /// The server's process id while it runs (benchmarks read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to the running server: a stall.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow::anyhow!("the server does not run"))?;
        let status = Command::new("kill").args([signal, &pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid} failed");
        Ok(())
    }

    /// SIGKILL (nothing flushed that `sync_interval: always` did not already sync).
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill()?;
            process.wait()?;
        }
        Ok(())
    }

    /// What the server logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
