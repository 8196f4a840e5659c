//! `GET /v1/accounts/{id}/events`: an account's ledger events as
//! Server-Sent Events, the same JSON as on NATS (`docs/EVENTS.md`), each
//! with its account sequence as the SSE id. A client resumes after the last
//! id it saw (`Last-Event-ID`, which browsers send by themselves on a
//! reconnect, or `?after=`): the stream replays the durable history after
//! it, then goes on live, so a reconnect (also to a restarted node) sees no
//! gap and no repeat. Only durable changes are sent.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use tokio::sync::watch;
use utoipa::IntoParams;
use wallet_actors::HistoryEntry;
use wallet_actors::{AccountId, Ledger, Rejection};
use wallet_cluster::events::Subscription;

use crate::auth::Caller;
use crate::domain::account_id;
use crate::error::ApiError;
use crate::extract::{ApiQuery, IdPath};
use crate::openapi::{Authenticated, BadRequest, NotFound};
use crate::state::AppState;

/// History entries one read of the replay takes.
const REPLAY_READ_MAX: usize = 1000;

/// `GET /v1/accounts/{id}/events` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Start after this account sequence number (default 0: from the
    /// opening). The `Last-Event-ID` header, when sent, wins.
    #[param(pattern = "^[0-9]+$")]
    pub after: Option<String>,
}

/// `GET /v1/accounts/{id}/events`: the account's events as Server-Sent
/// Events, oldest first, then live as they become durable. Each event's
/// `id` is its account sequence and its `data` the event JSON; comments
/// (`:`) are heartbeats. A client that falls far behind is disconnected and
/// resumes with `Last-Event-ID`. Owner or admin; 404 for other accounts.
#[utoipa::path(
    get,
    path = "/v1/accounts/{id}/events",
    tag = "accounts",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, format = "uuid", description = "UUID"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this account sequence"),
        EventsQuery,
    ),
    responses(
        (status = 200, description = "A stream of events (text/event-stream)", content_type = "text/event-stream", body = String),
        BadRequest,
        NotFound,
        Authenticated,
    ),
)]
pub async fn account_events(
    State(state): State<AppState>,
    caller: Caller,
    IdPath(id): IdPath,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = account_id("id", &id)?;
    let after = resume_after(&headers, query.after.as_deref())?;
    state.visible_account(&caller, id, Rejection::AccountNotFound).await?;
    // Registered before the history is read: whatever becomes durable
    // after the read is then in the subscription, so nothing falls between.
    let subscription = state.live_events.subscribe(id).map_err(|_| ApiError::Overloaded)?;
    let feed = Feed {
        ledger: state.ledger.clone(),
        account: id,
        last: after,
        replay: VecDeque::new(),
        replayed: false,
        subscription,
        stopping: state.stopping.subscribe(),
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok(event), feed))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(state.events_heartbeat)))
}

/// The sequence to resume after: `Last-Event-ID`, else `?after=`, else 0.
fn resume_after(headers: &HeaderMap, after: Option<&str>) -> Result<u64, ApiError> {
    let header = headers.get("last-event-id").map(|value| value.to_str().unwrap_or("-"));
    match header.or(after) {
        None => Ok(0),
        Some(text) => text.trim().parse::<u64>().map_err(|_| ApiError::InvalidField {
            code: "invalid_last_event_id",
            detail: "Last-Event-ID and after must be an event id (an account sequence number)".into(),
        }),
    }
}

/// One client's stream: the history after `last`, then the live entries.
struct Feed {
    ledger: Ledger,
    account: AccountId,
    /// The last sequence sent (or the one the client resumes after).
    last: u64,
    replay: VecDeque<HistoryEntry>,
    /// The history read reached its end; live entries follow.
    replayed: bool,
    subscription: Subscription,
    stopping: watch::Receiver<bool>,
}

impl Feed {
    /// The next event, or `None` to end the stream: the node is stopping,
    /// the client was cut off for falling behind, or the history could not
    /// be read. The client resumes from its last id in each case.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if *self.stopping.borrow() {
                return None;
            }
            if let Some(entry) = self.replay.pop_front() {
                if entry.sequence <= self.last {
                    continue;
                }
                // History has no gaps; if it ever had one, ending beats spinning.
                if entry.sequence != self.last + 1 {
                    tracing::error!(account = %self.account, after = self.last, got = entry.sequence, "gap in history");
                    return None;
                }
                return self.send(&entry);
            }
            if !self.replayed {
                let entries = self.ledger.history(self.account, self.last, REPLAY_READ_MAX).await.ok()?;
                self.replayed = entries.len() < REPLAY_READ_MAX;
                self.replay.extend(entries);
                continue;
            }
            let entry = tokio::select! {
                entry = self.subscription.next() => entry?,
                _ = self.stopping.changed() => return None,
            };
            if entry.sequence <= self.last {
                continue;
            }
            if entry.sequence > self.last + 1 {
                // Entries made durable between the history read and the
                // subscription's first: durable, so the history has them.
                self.replayed = false;
                continue;
            }
            return self.send(&entry);
        }
    }

    fn send(&mut self, entry: &HistoryEntry) -> Option<Event> {
        // Unreadable: the stream ends, and the client resumes from its last id.
        let event = match wallet_cluster::events::render(&self.ledger, entry) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "ending an event stream");
                return None;
            }
        };
        self.last = entry.sequence;
        Event::default().id(entry.sequence.to_string()).json_data(&event).ok()
    }
}
