//! HTTP hygiene, against the real binary: `nosniff` on every answer, a
//! header-read time-out and a connection cap so slow clients cannot hold
//! every socket, and secrets kept off the command line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::helpers::{failed_start, Server};

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build()?)
}

fn address(base: &str) -> &str {
    base.trim_start_matches("http://")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_says_nosniff() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(dir.path(), Some("admin-password-1"))?;
    let client = client()?;
    let base = server.base.as_str();
    let requests = [
        client.get(format!("{base}/healthz")),
        client.get(format!("{base}/metrics")),
        client.get(format!("{base}/v1/no-such-route")),
        client.delete(format!("{base}/healthz")),
        client.get(format!("{base}/v1/users/me")),
        client.post(format!("{base}/v1/users")).header("content-type", "application/json").body("{"),
    ];
    for request in requests {
        let response = request.send().await?;
        let status = response.status();
        let nosniff = response.headers().get("x-content-type-options").and_then(|v| v.to_str().ok());
        assert_eq!(nosniff, Some("nosniff"), "{status} {}", response.url());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_dribbles_its_headers_is_disconnected() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server =
        Server::start_with(dir.path(), Some("admin-password-1"), &["--header-read-timeout-ms", "500"])?;
    let mut stream = TcpStream::connect(address(&server.base))?;
    stream.set_read_timeout(Some(Duration::from_millis(50)))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: wallet\r\n")?;
    let started = Instant::now();
    // A header line every 100 ms: never idle, never done.
    let closed = loop {
        if started.elapsed() > Duration::from_secs(5) {
            break false;
        }
        if stream.write_all(b"X-Slow: 1\r\n").is_err() {
            break true;
        }
        let mut buffer = [0u8; 1024];
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break true,
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(closed, "the connection is still open after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    // Whole requests are served as before.
    assert_eq!(client()?.get(format!("{}/healthz", server.base)).send().await?.status(), StatusCode::OK);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_a_new_connection_waits_for_one_to_close() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flags = ["--connections-max", "2", "--header-read-timeout-ms", "30000"];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &flags)?;
    let idle: Vec<TcpStream> =
        (0..2).map(|_| TcpStream::connect(address(&server.base))).collect::<Result<_, _>>()?;
    let url = format!("{}/healthz", server.base);
    let quick = reqwest::Client::builder().no_proxy().timeout(Duration::from_millis(700)).build()?;
    assert!(quick.get(&url).send().await.is_err(), "a third connection is not served while two are open");
    drop(idle);
    let status = client()?.get(&url).send().await?.status();
    assert_eq!(status, StatusCode::OK, "served once one closed");
    Ok(())
}

#[tokio::test]
async fn secrets_are_kept_off_the_command_line() -> anyhow::Result<()> {
    let help = Command::new(env!("CARGO_BIN_EXE_wallet")).args(["serve", "--help"]).output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--jwt-secret", "--admin-password"] {
        let line = help.split("\n\n").find(|entry| entry.trim_start().starts_with(&format!("{flag} <")));
        assert!(line.is_some_and(|entry| entry.contains("`ps`")), "{flag}: {line:?}");
    }
    // The warning comes before anything else can fail: here, a short secret.
    let dir = tempfile::tempdir()?;
    let stderr = failed_start(dir.path(), Some("admin-password-1"), &["--jwt-secret", "too short"]).await?;
    assert!(stderr.contains("visible to every local user in `ps`"), "{stderr}");
    assert!(stderr.contains("WALLET_JWT_SECRET"), "{stderr}");
    Ok(())
}
