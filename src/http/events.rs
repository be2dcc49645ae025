//! `GET /api/v1/events`: the fleet's events as a server-sent event stream (a `read` or
//! `admin` token; a host's or a push token may not watch the fleet). Each event is
//! `id: N`, `event: <kind>`, `data: <the JSON payload of docs/forge.md>`; a comment every
//! 15 s keeps proxies from closing a quiet stream. A client that reads too slowly misses
//! the oldest events (the bus keeps [`crate::events::CAPACITY`]) and is sent
//! `event: lagged` with how many; nothing is buffered for it without bound. Streams end
//! when the server stops.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event as SseEvent, KeepAlive, Sse},
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::{auth, error::ApiError};
use crate::{app::AppState, auth::Scope};

/// The stream.
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let scope = auth::require(&state, &headers, Scope::Read).await?;
    if !matches!(scope, Scope::Read | Scope::Admin) {
        return Err(ApiError::Forbidden(format!("a {scope} token cannot watch the fleet's events: use read or admin")));
    }
    let receiver = state.events.subscribe();
    let closing = state.events.closing();
    let events = futures::stream::unfold((receiver, closing), |(mut receiver, closing)| async move {
        let next = tokio::select! {
            _ = closing.cancelled() => return None,
            next = receiver.recv() => next,
        };
        let event = match next {
            Ok(envelope) => SseEvent::default()
                .id(envelope.id.to_string())
                .event(envelope.event.kind().as_str())
                .json_data(&*envelope)
                .unwrap_or_else(|e| SseEvent::default().comment(format!("unserializable event: {e}"))),
            Err(RecvError::Lagged(missed)) => {
                tracing::info!(missed, "an event stream client fell behind");
                SseEvent::default().event("lagged").data(format!("{{\"missed\":{missed}}}"))
            }
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), (receiver, closing)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}
