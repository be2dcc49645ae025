//! The two requests `berth push` makes to a berth server, and the translation of everything
//! that can go wrong on the wire into one-line [`PushError`]s.

use std::time::Duration;

use reqwest::{header, Body, Response, StatusCode};

use super::frame::CONTENT_TYPE;
use super::PushError;
use crate::client::root_cause;

/// What the server did with an uploaded path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadStatus {
    /// The path was added to the cache.
    New,
    /// The path was already in the cache (another push won the race).
    Present,
}

#[derive(serde::Serialize)]
struct MissingRequest<'a> {
    paths: &'a [String],
}

#[derive(serde::Deserialize)]
struct MissingResponse {
    missing: Vec<String>,
}

#[derive(serde::Deserialize)]
struct UploadResponse {
    status: UploadStatus,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: String,
    message: String,
}

/// A berth server's push API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `server` (`http(s)://host[:port][/prefix]`).
    pub fn new(server: &str, token: Option<String>) -> Result<Self, PushError> {
        let url_err = |reason: &str| PushError::ServerUrl { url: server.to_owned(), reason: reason.to_owned() };
        let parsed = reqwest::Url::parse(server).map_err(|e| url_err(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(url_err("expected an http:// or https:// URL"));
        }
        let http = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| url_err(&chain(&e)))?;
        Ok(Self { http, base: server.trim_end_matches('/').to_owned(), token })
    }

    /// The subset of `paths` the server does not hold yet (in no particular order).
    pub async fn missing(&self, paths: &[String]) -> Result<Vec<String>, PushError> {
        let context = "checking which paths the server is missing";
        let request = self.post("/api/v1/paths/missing").json(&MissingRequest { paths });
        let response = self.send(request, context).await?;
        let body: MissingResponse = response.json().await.map_err(|e| protocol(context, &e))?;
        Ok(body.missing)
    }

    /// Uploads one framed path (see `frame`); `path` only names it in errors.
    pub async fn upload(&self, path: &str, body: Body) -> Result<UploadStatus, PushError> {
        let context = format!("uploading {path}");
        let request = self.post("/api/v1/paths").header(header::CONTENT_TYPE, CONTENT_TYPE).body(body);
        let response = self.send(request, &context).await?;
        let body: UploadResponse = response.json().await.map_err(|e| protocol(&context, &e))?;
        Ok(body.status)
    }

    fn post(&self, endpoint: &str) -> reqwest::RequestBuilder {
        let request = self.http.post(format!("{}{endpoint}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends `request` and turns transport failures and error statuses into [`PushError`]s.
    async fn send(&self, request: reqwest::RequestBuilder, context: &str) -> Result<Response, PushError> {
        let response = request.send().await.map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                PushError::Unreachable { url: self.base.clone(), reason: root_cause(&e) }
            } else {
                PushError::Transport { context: context.to_owned(), reason: chain(&e) }
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let (code, message) = error_body(response).await;
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                PushError::Unauthorized { status: status.as_u16(), message, token_given: self.token.is_some() }
            }
            _ => PushError::Server { context: context.to_owned(), status: status.as_u16(), code, message },
        })
    }
}

/// The `code` and `message` of an error response, or the best description available when the
/// body is not berth's JSON (a proxy's HTML page, an empty body).
async fn error_body(response: Response) -> (String, String) {
    let reason = response.status().canonical_reason().unwrap_or("error").to_owned();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => (body.code, body.message),
        Err(_) if text.trim().is_empty() => (String::new(), reason),
        Err(_) => (String::new(), text.trim().chars().take(200).collect::<String>().replace('\n', " ")),
    }
}

fn protocol(context: &str, e: &reqwest::Error) -> PushError {
    PushError::Protocol { context: context.to_owned(), reason: chain(e) }
}

/// An error and its sources on one line (`a: b: c`), skipping a source whose text is already
/// part of its parent's: reqwest's own message says only "error sending request".
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_urls_that_are_not_http() {
        assert!(matches!(Client::new("ftp://cache", None), Err(PushError::ServerUrl { .. })));
        assert!(matches!(Client::new("cache.example.org", None), Err(PushError::ServerUrl { .. })));
        let client = Client::new("https://cache.example.org/berth/", None).unwrap();
        assert_eq!(client.base, "https://cache.example.org/berth");
    }

    #[derive(Debug)]
    struct Wrapper(&'static str, Option<std::io::Error>);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_ref().map(|e| e as _)
        }
    }

    #[test]
    fn chain_joins_distinct_sources() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outer = Wrapper("error sending request", Some(refused()));
        assert_eq!(chain(&outer), "error sending request: connection refused");
        let repeats = Wrapper("tcp connect: connection refused", Some(refused()));
        assert_eq!(chain(&repeats), "tcp connect: connection refused");
        assert_eq!(root_cause(&outer), "connection refused");
    }
}
