//! Real nats-servers routed into one NATS cluster on loopback, JetStream on
//! each, for the tests that kill one server under load while wallet's
//! streams keep three replicas. Each member is a [`NatsServer`] of its own
//! (port, store, log), killed and started again as one; a cluster of one is
//! a plain server, so a harness can take either.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::free_port;
use crate::nats::NatsServer;

/// How long a new cluster may take to elect its JetStream meta leader.
const FORMING_WAIT: Duration = Duration::from_secs(30);

/// Servers of one NATS cluster.
pub struct NatsCluster {
    /// The members, `wallet-nats-1` first.
    pub servers: Vec<NatsServer>,
    /// Each member's monitoring port (its `/healthz`).
    monitor_ports: Vec<u16>,
}

impl NatsCluster {
    /// Starts `size` servers with stores under `dir` and waits until
    /// JetStream answers on every one (its meta leader elected).
    pub fn start(dir: &Path, size: usize) -> anyhow::Result<NatsCluster> {
        if size == 1 {
            let server = NatsServer::start(&dir.join("nats"))?;
            return Ok(NatsCluster { servers: vec![server], monitor_ports: Vec::new() });
        }
        let route_ports = (0..size).map(|_| free_port()).collect::<anyhow::Result<Vec<u16>>>()?;
        let monitor_ports = (0..size).map(|_| free_port()).collect::<anyhow::Result<Vec<u16>>>()?;
        let routes: Vec<String> = route_ports.iter().map(|port| format!("nats://127.0.0.1:{port}")).collect();
        let mut servers = Vec::new();
        for (index, (route, monitor)) in routes.iter().zip(&monitor_ports).enumerate() {
            let name = format!("wallet-nats-{}", index + 1);
            let args = ["--name", &name, "--cluster_name", "wallet-test", "--cluster", route]
                .into_iter()
                .map(str::to_string)
                .chain(["--routes".to_string(), routes.join(",")])
                .chain(["-m".to_string(), monitor.to_string()])
                .collect();
            servers.push(NatsServer::start_with(&dir.join(format!("nats-{}", index + 1)), args)?);
        }
        let cluster = NatsCluster { servers, monitor_ports };
        cluster.wait_until_healthy(FORMING_WAIT)?;
        Ok(cluster)
    }

    /// Every member's URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.servers.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// Waits until every running member says it is healthy, JetStream
    /// included (`/healthz`), at most `within`.
    pub fn wait_until_healthy(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        for (index, port) in self.monitor_ports.iter().enumerate() {
            if self.servers[index].pid().is_none() {
                continue;
            }
            while !healthy(*port) {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "nats-server {} not healthy within {within:?}: {}",
                    index + 1,
                    self.servers[index].log_text()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

/// Whether the server monitored on `port` answers `/healthz` with 200.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut status = String::new();
    BufReader::new(stream).read_line(&mut status).is_ok() && status.split(' ').nth(1) == Some("200")
}
