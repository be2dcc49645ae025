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

/// An answer's body read whole, or `None` as soon as it passes `max` bytes (the rest is never
/// read): for small answers (token endpoints, key sets) from servers berth does not control.
pub async fn read_bounded(response: &mut reqwest::Response, max: usize) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

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

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A server answering every request with `answer` (a full HTTP response head), counting them.
    async fn server(answer: String) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0; 4096];
                if stream.read(&mut buf).await.is_ok() {
                    stream.write_all(answer.as_bytes()).await.unwrap();
                }
            }
        });
        (url, hits)
    }

    fn request(url: &str) -> Request {
        Request {
            method: Method::POST,
            url: url::Url::parse(url).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"{}"),
            label: "test".into(),
        }
    }

    #[tokio::test]
    async fn redirects_to_other_hosts_are_not_followed() {
        let (elsewhere, stolen) = server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into()).await;
        let (here, _) =
            server(format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}/x\r\nContent-Length: 0\r\n\r\n"))
                .await;
        let err = send(&client(DEFAULT_TIMEOUT), &request(&here)).await.unwrap_err();
        assert!(matches!(err, SendError::Status { status: 307, .. }), "{err}");
        assert!(!err.is_transient());
        assert_eq!(stolen.load(Ordering::SeqCst), 0, "the body (and its signature) went to another host");
    }

    #[tokio::test]
    async fn a_hanging_receiver_times_out_and_counts_as_transient() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream); // never answered
            }
        });
        let started = std::time::Instant::now();
        let err = send(&client(Duration::from_millis(300)), &request(&url)).await.unwrap_err();
        assert!(matches!(err, SendError::Transport(_)) && err.is_transient(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn which_answers_are_worth_retrying() {
        let status = |status| SendError::Status { status, body: String::new() };
        assert!(status(503).is_transient() && status(429).is_transient() && status(408).is_transient());
        assert!(!status(401).is_transient() && !status(404).is_transient() && !status(422).is_transient());
    }
}
