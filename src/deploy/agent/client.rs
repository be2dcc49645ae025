//! The agent's side of the server API: the long-polled manifest, reports and `/healthz`.
//! Every request has a time limit, so a server that vanishes mid-answer never stalls the agent.

use std::time::Duration;

use serde::Deserialize;

use super::config::Token;
use super::report::Report;
use crate::deploy::keyset::KEYS_HEADER;
use crate::deploy::manifest::{self, SignedManifest};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a report or a health probe may take.
const SHORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Slack over the long-poll hold before the agent gives up on an answer.
const HOLD_SLACK: Duration = Duration::from_secs(15);

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection, or it broke, or it timed out.
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error.
    #[error("server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The server's one-line reason.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// A refusal that asking again will not change (a 4xx other than 408 and 429): a report
    /// refused so is dropped rather than retried forever.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Status { status, .. } if (400..500).contains(status) && *status != 408 && *status != 429)
    }
}

/// The server as one host sees it.
pub struct Server {
    http: reqwest::Client,
    base: String,
    host: String,
    token: Token,
}

/// The manifest answer; unknown fields are tolerated here (the signed text is what counts).
/// Without `manifest` it is the key announcement alone (the agent was behind the keys and has
/// nothing new to run).
#[derive(Deserialize)]
struct ManifestBody {
    manifest: Option<String>,
    signature: Option<String>,
    #[serde(default)]
    cosignatures: Vec<String>,
    #[serde(default)]
    keys: Option<crate::deploy::keyset::SignedAnnouncement>,
}

/// What a long-poll brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    /// Nothing newer within the hold.
    Nothing,
    /// A newer generation's manifest.
    Manifest(SignedManifest),
    /// The deploy keys' announcement alone.
    Keys(crate::deploy::keyset::SignedAnnouncement),
}

impl Server {
    /// A client for `base` (validated `http(s)://…` without a trailing `/`) as `host`.
    pub fn new(base: &str, host: &str, token: Token) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("berth-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Protocol(format!("cannot set up the HTTP client: {}", root_cause(&e))))?;
        Ok(Self { http, base: base.to_owned(), host: host.to_owned(), token })
    }

    /// The host's newest manifest if its generation is above `after`, waiting up to `hold` for
    /// one to appear; `None` when none did. `trusted` is the [`KEYS_HEADER`] value: the deploy
    /// keys this agent trusts (its acknowledgement, and its request for the key announcement).
    pub async fn manifest(&self, after: Option<u64>, hold: Duration, trusted: &str) -> Result<Polled, ClientError> {
        let mut url = format!("{}/api/v1/hosts/{}/manifest?timeout={}", self.base, self.host, hold.as_secs());
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        let request = self
            .http
            .get(&url)
            .bearer_auth(self.token.expose())
            .header(manifest::VERSION_HEADER, manifest::VERSION.to_string())
            .header(KEYS_HEADER, trusted)
            .timeout(hold + HOLD_SLACK);
        let response = self.send(request).await?;
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(Polled::Nothing);
        }
        let body: ManifestBody = response.json().await.map_err(|e| ClientError::Protocol(root_cause(&e)))?;
        match (body.manifest, body.signature, body.keys) {
            (Some(manifest), Some(signature), keys) => {
                Ok(Polled::Manifest(SignedManifest { manifest, signature, cosignatures: body.cosignatures, keys }))
            }
            (None, None, Some(keys)) => Ok(Polled::Keys(keys)),
            _ => Err(ClientError::Protocol(
                "the manifest answer has neither a signed manifest nor a key announcement".into(),
            )),
        }
    }

    /// What switching to generation `to` changes, from what the server knows the host runs.
    pub async fn diff(&self, to: u64) -> Result<crate::deploy::diff::DiffView, ClientError> {
        let url = format!("{}/api/v1/hosts/{}/diff?to={to}", self.base, self.host);
        let request = self.http.get(url).bearer_auth(self.token.expose()).timeout(SHORT_TIMEOUT);
        let response = self.send(request).await?;
        response.json().await.map_err(|e| ClientError::Protocol(root_cause(&e)))
    }

    /// Sends one report.
    pub async fn report(&self, report: &Report) -> Result<(), ClientError> {
        let url = format!("{}/api/v1/hosts/{}/reports", self.base, self.host);
        let request = self.http.post(url).bearer_auth(self.token.expose()).json(report).timeout(SHORT_TIMEOUT);
        self.send(request).await.map(drop)
    }

    /// `GET /healthz`, within `limit` (at most the usual short timeout).
    ///
    /// Always on a new connection: a network change often spares established connections
    /// (connection tracking keeps them) while new ones fail, and new ones are what the agent
    /// will need to learn of its next generation.
    pub async fn healthz(&self, limit: Duration) -> Result<(), ClientError> {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| ClientError::Transport { url: self.base.clone(), reason: root_cause(&e) })?;
        let request = fresh.get(format!("{}/healthz", self.base)).timeout(limit.min(SHORT_TIMEOUT));
        self.send(request).await.map(drop)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let transport = |e: reqwest::Error| ClientError::Transport { url: self.base.clone(), reason: root_cause(&e) };
        let response = request.send().await.map_err(transport)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let message = crate::client::error_message(&response.text().await.unwrap_or_default());
        Err(ClientError::Status { status, message })
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    match cause.to_string() {
        root if root == e.to_string() => root,
        root => format!("{e}: {root}"),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    use super::*;
    use crate::deploy::agent::report::Phase;

    /// A server that answers each connection with the next canned response and sends the
    /// request it got (head and body) to the receiver.
    async fn canned(responses: Vec<String>) -> (String, UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = unbounded_channel();
        tokio::spawn(async move {
            for response in responses {
                let (stream, _) = listener.accept().await.unwrap();
                let mut stream = BufReader::new(stream);
                let (mut request, mut line, mut length) = (String::new(), String::new(), 0);
                while stream.read_line(&mut line).await.unwrap() > 2 {
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                    request.push_str(&line);
                    line.clear();
                }
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.unwrap();
                request.push_str(&String::from_utf8(body).unwrap());
                tx.send(request).unwrap();
                stream.get_mut().write_all(response.as_bytes()).await.unwrap();
                stream.get_mut().shutdown().await.unwrap();
            }
        });
        (url, rx)
    }

    fn server(url: &str) -> Server {
        Server::new(url, "web", Token("s3cret".into())).unwrap()
    }

    fn response(status: &str, body: &str) -> String {
        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
    }

    fn manifest() -> String {
        response("200 OK", r#"{"manifest":"{}","signature":"deploy-1:AA==","served_at":1}"#)
    }

    fn empty() -> String {
        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".into()
    }

    #[tokio::test]
    async fn long_polls_the_manifest() {
        let (url, mut requests) = canned(vec![
            manifest(),
            empty(),
            response("403 Forbidden", r#"{"code":"forbidden","message":"not for this host"}"#),
        ])
        .await;
        let server = server(&url);
        let hold = Duration::from_secs(30);
        let Polled::Manifest(signed) = server.manifest(Some(4), hold, "deploy-1:AA==").await.unwrap() else {
            panic!("a manifest")
        };
        assert_eq!((signed.manifest.as_str(), signed.signature.as_str()), ("{}", "deploy-1:AA=="));
        let request = requests.recv().await.unwrap();
        assert!(request.starts_with("GET /api/v1/hosts/web/manifest?timeout=30&after=4 HTTP/1.1\r\n"), "{request}");
        assert!(request.to_ascii_lowercase().contains("authorization: bearer s3cret\r\n"), "{request}");
        assert!(request.to_ascii_lowercase().contains("x-berth-deploy-keys: deploy-1:aa==\r\n"), "{request}");

        assert_eq!(server.manifest(None, Duration::ZERO, "").await.unwrap(), Polled::Nothing);
        let request = requests.recv().await.unwrap();
        assert!(request.starts_with("GET /api/v1/hosts/web/manifest?timeout=0 HTTP/1.1\r\n"), "{request}");

        let err = server.manifest(None, hold, "").await.unwrap_err();
        assert!(err.is_permanent(), "{err}");
        assert_eq!(err.to_string(), "server answered 403: not for this host");
    }

    #[tokio::test]
    async fn an_announcement_may_come_alone_and_a_half_manifest_is_refused() {
        let keys = r#"{"keys":{"announcement":"{}","signatures":["deploy-2:AA=="]}}"#;
        let (url, _requests) = canned(vec![
            response("200 OK", keys),
            response("200 OK", r#"{"manifest":"{}"}"#),
            response("200 OK", r#"{}"#),
        ])
        .await;
        let server = server(&url);
        let hold = Duration::from_secs(1);
        let Polled::Keys(announced) = server.manifest(None, hold, "deploy-1:AA==").await.unwrap() else {
            panic!("the announcement")
        };
        assert_eq!(announced.signatures, ["deploy-2:AA=="]);
        for _ in 0..2 {
            let err = server.manifest(None, hold, "deploy-1:AA==").await.unwrap_err();
            assert!(err.to_string().contains("neither a signed manifest nor a key announcement"), "{err}");
        }
    }

    #[tokio::test]
    async fn posts_reports_and_probes_health() {
        let (url, mut requests) = canned(vec![empty(), response("200 OK", "ok")]).await;
        let server = server(&url);
        server.report(&Report::new(3, Phase::Healthy, "ok", None)).await.unwrap();
        let request = requests.recv().await.unwrap();
        assert!(request.starts_with("POST /api/v1/hosts/web/reports HTTP/1.1\r\n"), "{request}");
        assert!(request.ends_with(
            r#""phase":"healthy","message":"ok","log_tail":null,"duration_ms":null,"active_generation":null}"#
        ));

        server.healthz(Duration::from_secs(1)).await.unwrap();
        let request = requests.recv().await.unwrap();
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
        assert!(!request.to_ascii_lowercase().contains("authorization"), "{request}");

        let gone = server.healthz(Duration::from_secs(1)).await.unwrap_err();
        assert!(matches!(gone, ClientError::Transport { .. }) && !gone.is_permanent(), "{gone}");
    }
}
