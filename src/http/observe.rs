//! The request metrics middleware: each request's class (`metrics::classify`, never the raw
//! path), its status and latency, and the body bytes read and sent. Thin on purpose: the
//! figures and their rendering live in `metrics`.

use std::time::Instant;

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http_body_util::BodyExt;

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

/// `body`, counting its data frames; its size hint (Content-Length) is kept.
fn counted(body: Body, state: AppState, class: Class, direction: Direction) -> Body {
    Body::new(body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            state.metrics.body_bytes(class, direction, data.len() as u64);
        }
        frame
    }))
}
