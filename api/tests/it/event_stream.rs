//! `GET /v1/accounts/{id}/events` (Server-Sent Events), over real HTTP: the
//! stream replays the durable history and goes on live; a client that
//! resumes with `Last-Event-ID` after a kill -9 of the node sees every event
//! once, in sequence; heartbeats on an idle stream; 404 for another user's
//! account; the node's own events work without NATS.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use wallet_actors::events::LedgerEvent;

use crate::event_books::{Books, Load, PASSWORD};
use crate::helpers::{Server, TestApp};

/// One SSE frame.
#[derive(Debug)]
enum Frame {
    Event { id: u64, event: Box<LedgerEvent> },
    Heartbeat,
}

/// A client's end of an event stream.
struct EventStream {
    response: reqwest::Response,
    buffer: String,
}

impl EventStream {
    async fn open(
        client: &reqwest::Client,
        base: &str,
        token: &str,
        account: &str,
        last_event_id: Option<u64>,
    ) -> anyhow::Result<EventStream> {
        let mut request = client.get(format!("{base}/v1/accounts/{account}/events")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await?;
        anyhow::ensure!(response.status() == StatusCode::OK, "events: {}", response.status());
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        anyhow::ensure!(content_type.starts_with("text/event-stream"), "content type {content_type}");
        Ok(EventStream { response, buffer: String::new() })
    }

    /// The next frame; `None` when the stream ended (or broke).
    async fn next(&mut self) -> anyhow::Result<Option<Frame>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                return parse(&block).map(Some);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Err(_) => anyhow::bail!("no frame in 30 s"),
                Ok(Ok(Some(bytes))) => self.buffer.push_str(std::str::from_utf8(&bytes)?),
                Ok(Ok(None) | Err(_)) => return Ok(None),
            }
        }
    }

    /// Events up to and including `last`, checking they follow `after`
    /// one by one.
    async fn read_through(&mut self, after: u64, last: u64) -> anyhow::Result<Vec<LedgerEvent>> {
        let mut events = Vec::new();
        let mut expected = after + 1;
        while expected <= last {
            match self.next().await? {
                Some(Frame::Event { id, event }) => {
                    anyhow::ensure!(
                        id == expected,
                        "event {id} where {expected} was due (a gap or a repeat)"
                    );
                    anyhow::ensure!(event.sequence == id, "id {id} on event {}", event.sequence);
                    expected += 1;
                    events.push(*event);
                }
                Some(Frame::Heartbeat) => {}
                None => anyhow::bail!("the stream ended at {} of {last}", expected - 1),
            }
        }
        Ok(events)
    }
}

fn parse(block: &str) -> anyhow::Result<Frame> {
    let (mut id, mut data) = (None, String::new());
    for line in block.lines() {
        if let Some(value) = line.strip_prefix("id:") {
            id = Some(value.trim().parse::<u64>()?);
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    match id {
        Some(id) => {
            Ok(Frame::Event { id, event: Box::new(serde_json::from_str(&data).context("event data")?) })
        }
        None if block.lines().all(|l| l.is_empty() || l.starts_with(':')) => Ok(Frame::Heartbeat),
        None => anyhow::bail!("a frame with no id: {block:?}"),
    }
}

async fn sequence_of(books: &Books, account: &str) -> anyhow::Result<(u64, String)> {
    let api = books.read().await?;
    api.get(account).cloned().context("account not read")
}

#[tokio::test]
async fn a_stream_resumed_after_kill_9_sees_every_event_once_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("wallet");
    let mut server = Server::start(&data, Some(PASSWORD))?;
    let mut books = Books::open(&server.base).await?;
    let watched = books.accounts[0].clone();

    // From the opening, while money moves: history first, then live.
    let load = Load::start(&books);
    let mut stream = EventStream::open(&books.client, &books.base, &books.user, &watched, None).await?;
    let first = stream.read_through(0, 2).await?;
    anyhow::ensure!(first[0].kind.name() == "account.opened", "first event {:?}", first[0].kind);
    load.reach(200).await?;
    let (now, _) = sequence_of(&books, &watched).await?;
    stream.read_through(2, now).await?;
    let mut last = now;

    // Killed under load, mid-stream.
    server.signal("-KILL")?;
    server.wait()?;
    load.stop().await;
    // What the stream had room to carry before the kill (acknowledged or not,
    // each was durable before it was sent) ...
    while let Some(frame) = stream.next().await? {
        if let Frame::Event { id, .. } = frame {
            anyhow::ensure!(id == last + 1, "event {id} after {last}");
            last = id;
        }
    }

    // ... then the rest after the restart, from `Last-Event-ID`, while money moves again.
    server = Server::start(&data, Some(PASSWORD))?;
    books.base = server.base.clone();
    let load = Load::start(&books);
    let mut stream = EventStream::open(&books.client, &books.base, &books.user, &watched, Some(last)).await?;
    load.reach(200).await?;
    load.stop().await;
    let (end, available) = sequence_of(&books, &watched).await?;
    let rest = stream.read_through(last, end).await?;
    let final_event = rest.last().context("no events after the restart")?;
    anyhow::ensure!(
        final_event.balance.available == available,
        "stream ends at {final_event:?}, API {available}"
    );
    anyhow::ensure!(final_event.account_id == watched, "another account's event: {final_event:?}");
    Ok(())
}

#[tokio::test]
async fn only_the_owner_or_an_admin_may_watch_and_idle_streams_get_heartbeats() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let app = TestApp::spawn_with(dir, &["--events-heartbeat-ms", "100"]).await?;
    let (_, owner) = app.user("owner").await?;
    let (_, stranger) = app.user("stranger").await?;
    let account = app.account(&owner).await?;

    let path = format!("/v1/accounts/{account}/events");
    let reply = app.get(&path, Some(&stranger)).await?;
    anyhow::ensure!(reply.status == StatusCode::NOT_FOUND, "stranger: {} {}", reply.status, reply.body);
    anyhow::ensure!(reply.code() == "account_not_found", "code {}", reply.code());
    let reply = app.get(&format!("{path}?after=soon"), Some(&owner)).await?;
    anyhow::ensure!(reply.status == StatusCode::BAD_REQUEST, "after=soon: {}", reply.status);
    let reply = app.get(&path, None).await?;
    anyhow::ensure!(reply.status == StatusCode::UNAUTHORIZED, "no token: {}", reply.status);

    // The admin, from after the opening: nothing to replay, so a heartbeat,
    // then the deposit as it happens.
    let mut stream = EventStream::open(&app.client, &app.base, &app.admin_token, &account, Some(1)).await?;
    let frame = stream.next().await?;
    anyhow::ensure!(matches!(frame, Some(Frame::Heartbeat)), "first frame {frame:?}");
    let reply = app.deposit(&account, "250").await?;
    anyhow::ensure!(reply.status == StatusCode::CREATED, "deposit: {}", reply.status);
    let events = stream.read_through(1, 2).await?;
    anyhow::ensure!(events[0].kind.name() == "transfer.posted", "event {:?}", events[0]);
    anyhow::ensure!(events[0].amount.as_deref() == Some("250"), "amount {:?}", events[0].amount);
    // The owner, with `?after=`.
    let response = app.client.get(format!("{}{path}?after=1", app.base)).bearer_auth(&owner).send().await?;
    let mut owned = EventStream { response, buffer: String::new() };
    owned.read_through(1, 2).await?;
    drop((stream, owned));
    app.stop().await?;
    Ok(())
}
