//! `/metrics` stays bounded whatever clients send: labels come from fixed
//! sets, every route (the fallback and `/metrics` too) is rate-limited, and
//! idle series are forgotten. Against the real binary.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};

use crate::helpers::{node_mode, Server};

const METHODS: [&str; 10] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER"];

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

async fn scrape(base: &str) -> anyhow::Result<String> {
    let response = client()?.get(format!("{base}/metrics")).send().await?;
    anyhow::ensure!(response.status() == StatusCode::OK, "/metrics: {}", response.status());
    Ok(response.text().await?)
}

/// The values of `label` on the lines of `metric`.
fn label_values(text: &str, metric: &str, label: &str) -> BTreeSet<String> {
    let needle = format!("{label}=\"");
    text.lines()
        .filter(|line| line.starts_with(metric))
        .filter_map(|line| line.split_once(&needle).and_then(|(_, rest)| rest.split_once('"')))
        .map(|(value, _)| value.to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_paths_add_no_series() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &[])?;
    let client = client()?;
    for n in 0..200 {
        let method = Method::from_bytes(format!("M{n}").as_bytes())?;
        let path = if n % 2 == 0 { format!("/made-up/{n}") } else { "/v1/accounts".to_string() };
        let status = client.request(method, format!("{}{path}", server.base)).send().await?.status();
        assert!(status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED, "{status}");
    }
    let text = scrape(&server.base).await?;
    let methods = label_values(&text, "http_requests_total", "method");
    assert!(methods.iter().all(|m| METHODS.contains(&m.as_str())), "{methods:?}");
    assert!(methods.contains("OTHER"));
    let routes = label_values(&text, "http_requests_total", "route");
    assert!(
        routes.iter().all(|r| r == "unmatched" || r.starts_with("/v1/") || r == "/metrics"),
        "{routes:?}"
    );
    assert!(text.len() < 64 * 1024, "/metrics is {} bytes", text.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_rate_limited_the_fallback_and_metrics_included() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flags = ["--rate-limit-burst", "3", "--rate-limit-per-second", "0.001"];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &flags)?;
    let client = client()?;
    let mut statuses = Vec::new();
    for path in ["/nope", "/nope", "/nope", "/nope", "/metrics", "/healthz", "/v1/openapi.json"] {
        statuses.push(client.get(format!("{}{path}", server.base)).send().await?.status().as_u16());
    }
    assert_eq!(statuses, [404, 404, 404, 429, 429, 429, 429]);
    let response =
        client.request(Method::from_bytes(b"BREW")?, format!("{}/nope", server.base)).send().await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_series_are_forgotten() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let flags = ["--metrics-idle-timeout-seconds", "1"];
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &flags)?;
    let client = client()?;
    assert_eq!(client.get(format!("{}/nope", server.base)).send().await?.status(), StatusCode::NOT_FOUND);
    let text = scrape(&server.base).await?;
    assert!(label_values(&text, "http_requests_total", "route").contains("unmatched"), "{text}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = scrape(&server.base).await?;
    assert!(!label_values(&text, "http_requests_total", "route").contains("unmatched"), "{text}");
    // What the process itself counts stays, at zero if nothing happened.
    assert!(text.contains("wallet_shard_rebuilds_total 0"), "{text}");
    assert!(text.contains("wallet_journal_records_total"), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reports_its_leases_and_its_shared_directory() -> anyhow::Result<()> {
    if !node_mode() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let server = Server::start_with(dir.path(), Some("admin-password-1"), &[])?;
    // Leases are renewed every 500 ms.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let text = scrape(&server.base).await?;
    for metric in [
        "wallet_shards_owned 4",
        "wallet_lease_renewals_total",
        "wallet_directory_round_trip_seconds_count",
        "wallet_directory_writes_total{outcome=\"done\"}",
    ] {
        anyhow::ensure!(text.lines().any(|line| line.starts_with(metric)), "no {metric} in:\n{text}");
    }
    Ok(())
}
