//! A throwaway PostgreSQL cluster for tests: `initdb` into a directory of
//! the test's, a free loopback port, its unix socket inside that directory,
//! trust authentication for the `postgres` user, and no fsync (a test's
//! database does not outlive the test). Stopped (`pg_ctl stop -m
//! immediate`) when dropped. The binaries are `PG_BIN`'s, or what
//! `scripts/install-postgres --find-only` finds.
//!
//! PostgreSQL refuses to run as root, so when the test runs as root (CI
//! does) the cluster belongs to the `postgres` OS user and its commands run
//! through `runuser`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

/// The OS user that owns the cluster when the test runs as root.
const OS_USER: &str = "postgres";

/// How long `pg_ctl` may take to start or stop the server, in seconds.
const PG_CTL_TIMEOUT_S: &str = "60";

/// The directory of PostgreSQL's server binaries: `PG_BIN` if set,
/// otherwise what `scripts/install-postgres --find-only` prints (a search
/// only: tests running side by side must not race to install a package).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-postgres");
    let output = Command::new(&script).arg("--find-only").stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(
        output.status.success(),
        "no PostgreSQL server binaries: run scripts/install-postgres (or set PG_BIN to their directory)"
    );
    let text = String::from_utf8(output.stdout)?;
    let last = text.lines().last().context("scripts/install-postgres printed nothing")?;
    Ok(PathBuf::from(last.trim()))
}

/// A running throwaway cluster.
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    as_root: bool,
    running: bool,
}

impl Postgres {
    /// Creates a cluster in `dir` (created if missing; it must be new) and
    /// starts it on a free loopback port, waiting until it accepts clients.
    pub fn start(dir: &Path) -> anyhow::Result<Postgres> {
        let bin = bin_dir()?;
        for tool in ["initdb", "pg_ctl", "postgres"] {
            anyhow::ensure!(
                bin.join(tool).is_file(),
                "no {tool} in {} (PG_BIN): run scripts/install-postgres",
                bin.display()
            );
        }
        std::fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let as_root = running_as_root()?;
        if as_root {
            hand_to_os_user(&dir)?;
        }
        let data = dir.join("data");
        let log = dir.join("server.log");
        let port = crate::free_port()?;
        let mut cluster = Postgres { bin, data, log, port, as_root, running: false };
        let initdb = cluster
            .command("initdb")
            .arg("-D")
            .arg(&cluster.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .context("running initdb")?;
        anyhow::ensure!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let settings = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 20\n",
            cluster.port,
            dir.display()
        );
        let conf = cluster.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str(&settings);
        std::fs::write(&conf, text)?;
        // `-w -t`: pg_ctl returns once the server accepts connections, or
        // fails after the timeout; the server is a daemon, not our child.
        let started = cluster
            .command("pg_ctl")
            .arg("-D")
            .arg(&cluster.data)
            .arg("-l")
            .arg(&cluster.log)
            .args(["-w", "-t", PG_CTL_TIMEOUT_S, "start"])
            .stdout(Stdio::null())
            .output()
            .context("running pg_ctl start")?;
        // Whatever the outcome, a server may be up: drop stops it.
        cluster.running = true;
        anyhow::ensure!(
            started.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&started.stderr),
            cluster.log_text()
        );
        Ok(cluster)
    }

    /// `postgresql://postgres@127.0.0.1:PORT/postgres` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// What the server logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the server at once (no checkpoint: the data is thrown away).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let stopped = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", PG_CTL_TIMEOUT_S, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !stopped.success() {
            // pg_ctl could not stop it: the postmaster's own pid (first
            // line of its pid file), so nothing outlives the test.
            if let Ok(text) = std::fs::read_to_string(self.data.join("postmaster.pid")) {
                if let Some(pid) = text.lines().next().filter(|p| p.trim().parse::<u32>().is_ok()) {
                    let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
                }
            }
            anyhow::bail!("pg_ctl stop failed");
        }
        Ok(())
    }

    /// A PostgreSQL tool, run as the cluster's owner.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", OS_USER, "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn running_as_root() -> anyhow::Result<bool> {
    let output = Command::new("id").arg("-u").output().context("running id -u")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

/// Gives `dir` to the `postgres` OS user, and lets that user reach it: a
/// test's temporary directory is private (0700) to root, so its ancestors
/// inside the system's temporary directory get search permission for
/// others (not read: their listings stay private).
fn hand_to_os_user(dir: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown").arg(format!("{OS_USER}:")).arg(dir).status()?;
    anyhow::ensure!(
        status.success(),
        "chown {OS_USER} {} failed (is there a {OS_USER} user?)",
        dir.display()
    );
    let temp = std::env::temp_dir().canonicalize()?;
    for ancestor in dir.ancestors().skip(1).take_while(|a| a.starts_with(&temp) && *a != temp) {
        let mut permissions = std::fs::metadata(ancestor)?.permissions();
        permissions.set_mode(permissions.mode() | 0o001);
        std::fs::set_permissions(ancestor, permissions)?;
    }
    let reachable = Command::new("runuser")
        .args(["-u", OS_USER, "--", "test", "-w"])
        .arg(dir)
        .status()
        .context("running runuser")?;
    anyhow::ensure!(
        reachable.success(),
        "the {OS_USER} user cannot write {}: give the cluster a directory it can reach",
        dir.display()
    );
    Ok(())
}
