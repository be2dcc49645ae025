//! The request metrics middleware: each request's class (`metrics::classify`, never the raw
//! path), its status and latency, and the body bytes read and sent. Thin on purpose: the
//! figures and their rendering live in `metrics`.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http_body::{Frame, SizeHint};

use crate::{
    app::AppState,
    metrics::{classify, Class, Direction},
};

/// Counts `request` and its response. Latency is until the response's head; bytes are
/// counted as the bodies stream, so a NAR cut short counts what was sent.
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let class = classify(request.method().as_str(), request.uri().path());
    let reading = state.clone();
    let request = request.map(|body| counted(body, reading, class, Direction::In));
    let response = next.run(request).await;
    state.metrics.response(class, response.status().as_u16(), started.elapsed());
    response.map(|body| counted(body, state, class, Direction::Out))
}

/// `body`, counting its data frames. Its size hint and end are the inner body's, so a
/// response keeps its `Content-Length` (a `map_frame` combinator would drop it: every
/// response would go out chunked, which Nix's own proxies and clients handle worse).
fn counted(body: Body, state: AppState, class: Class, direction: Direction) -> Body {
    Body::new(Counted { inner: body, state, class, direction })
}

struct Counted {
    inner: Body,
    state: AppState,
    class: Class,
    direction: Direction,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.state.metrics.body_bytes(self.class, self.direction, data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
