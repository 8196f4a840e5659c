//! The crash test's child process, seen from the parent: started, watched,
//! killed, and what it acknowledged.

use std::path::Path;

use wallet_actors::TransferRequest;

/// The line printed for an acknowledged request: enough to find it again.
pub fn ack_line(request: &TransferRequest) -> anyhow::Result<String> {
    Ok(format!("ACK {}", serde_json::to_string(request)?))
}

/// A crash-test child process ([`spawn_child`]) and what it printed.
pub struct Child {
    process: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    acks: Vec<TransferRequest>,
    ready: bool,
    stderr: std::path::PathBuf,
}

/// Starts the crash-test child (`binary`, the test's
/// `CARGO_BIN_EXE_wallet-crash-child`) on `dir` for run `run`, with `env`
/// added (fault points, the sync log); its stderr goes to `dir/../child-<run>.err`.
pub fn spawn_child(binary: &str, dir: &Path, run: u64, env: &[(&str, &str)]) -> anyhow::Result<Child> {
    use std::io::BufRead;
    let stderr = dir.with_file_name(format!("child-{run}.err"));
    let mut command = std::process::Command::new(binary);
    command
        .arg(dir)
        .arg(run.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr)?);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut process = command.spawn()?;
    let stdout = process.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let (sender, lines) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    Ok(Child { process, lines, reader: Some(reader), acks: Vec::new(), ready: false, stderr })
}

impl Child {
    fn take_lines(&mut self, wait: Option<std::time::Duration>) {
        let mut handle = |line: String| {
            if line == "READY" {
                self.ready = true;
            } else if let Some(json) = line.strip_prefix("ACK ") {
                // A line cut by the kill is not an acknowledgement seen whole.
                if let Ok(request) = serde_json::from_str::<TransferRequest>(json) {
                    self.acks.push(request);
                }
            }
        };
        if let Some(wait) = wait {
            if let Ok(line) = self.lines.recv_timeout(wait) {
                handle(line);
            }
        }
        while let Ok(line) = self.lines.try_recv() {
            handle(line);
        }
    }

    /// Waits until the child printed READY (set up, serving); fails after
    /// `within`, or if it stopped first.
    pub fn wait_ready(&mut self, within: std::time::Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + within;
        while !self.ready {
            anyhow::ensure!(
                self.is_alive()?,
                "the child stopped before it was ready: {}",
                self.stderr_text()
            );
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the child was not ready within {within:?}"
            );
            self.take_lines(Some(std::time::Duration::from_millis(10)));
        }
        Ok(())
    }

    /// Whether the child is still running.
    pub fn is_alive(&mut self) -> anyhow::Result<bool> {
        Ok(self.process.try_wait()?.is_none())
    }

    /// Kills the child with SIGKILL and waits for it.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.process.kill()?;
        self.process.wait()?;
        Ok(())
    }

    /// Waits until the child stops by itself (a fault point aborted it).
    pub fn wait_exit(&mut self, within: std::time::Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.process.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                self.kill()?;
                anyhow::bail!("the child did not stop within {within:?}");
            }
            self.take_lines(Some(std::time::Duration::from_millis(10)));
        }
    }

    /// What the child wrote on stderr.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Lets the ready child run for `delay` (under its load), kills it
    /// (it must still be running: one that stopped by itself is a failure),
    /// and returns every transfer it acknowledged.
    pub fn kill_after(mut self, delay: std::time::Duration) -> anyhow::Result<Vec<TransferRequest>> {
        std::thread::sleep(delay);
        anyhow::ensure!(self.is_alive()?, "the child stopped by itself: {}", self.stderr_text());
        self.kill()?;
        Ok(self.acknowledged()?.1)
    }

    /// Once it stopped: every transfer it acknowledged.
    pub fn acknowledged(mut self) -> anyhow::Result<(bool, Vec<TransferRequest>)> {
        if let Some(reader) = self.reader.take() {
            reader.join().map_err(|_| anyhow::anyhow!("the child's reader panicked"))?;
        }
        self.take_lines(None);
        Ok((self.ready, std::mem::take(&mut self.acks)))
    }
}
