//! Outbound HTTP: what berth sends to other services on its own initiative (commit statuses
//! to a forge, notifications). One client with timeouts and no redirects to other hosts; a
//! retry schedule (`backoff.rs`, PURE); and a bounded queue per destination (`queue.rs`)
//! whose worker sends one request at a time, in order, so a forge sees `pending` before
//! `success`. Nothing here ever blocks or fails the build or deploy that caused it.

pub mod backoff;
pub mod queue;

use std::time::Duration;

use bytes::Bytes;
use reqwest::{header::HeaderMap, Method};

/// Seconds one attempt may take (connect, send, response), unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One request to send.
#[derive(Clone)]
pub struct Request {
    /// `POST` or `PUT`.
    pub method: Method,
    /// Where.
    pub url: url::Url,
    /// Headers (secrets among them: this type's `Debug` shows none).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// What it is, for logs and records (`berth/build on fleet@abc…`).
    pub label: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the headers: they carry tokens.
        write!(f, "{} {} ({})", self.method, self.url, self.label)
    }
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No answer: connection refused or reset, DNS, or the timeout.
    #[error("no answer: {0}")]
    Transport(String),
    /// An answer that is not a 2xx.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The beginning of the answer's body.
        body: String,
    },
}

impl SendError {
    /// Whether trying again may help: no answer, 408, 429 or a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            SendError::Transport(_) => true,
            SendError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
        }
    }
}

/// The client every outbound request uses: `timeout` per attempt, redirects followed only
/// to the same scheme, host and port (a receiver cannot bounce a signed body or a token to
/// another server), at most three.
pub fn client(timeout: Duration) -> reqwest::Client {
    let same_origin = reqwest::redirect::Policy::custom(|attempt| {
        let Some(first) = attempt.previous().first() else { return attempt.stop() };
        let next = attempt.url();
        let same = first.scheme() == next.scheme()
            && first.host_str() == next.host_str()
            && first.port_or_known_default() == next.port_or_known_default();
        if same && attempt.previous().len() <= 3 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(same_origin)
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a client with rustls and these settings builds")
}

/// Sends `request` once.
pub async fn send(client: &reqwest::Client, request: &Request) -> Result<(), SendError> {
    let response = client
        .request(request.method.clone(), request.url.clone())
        .headers(request.headers.clone())
        .body(request.body.clone())
        .send()
        .await
        // Without the URL: reqwest's error text would repeat it, and the logs have the label.
        .map_err(|e| SendError::Transport(e.without_url().to_string()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(SendError::Status { status: status.as_u16(), body: crate::text::clip_head(body.trim(), 200).to_owned() })
}
