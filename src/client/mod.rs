//! A small client for berth's JSON API, used by the admin and CI commands (`berth build`,
//! `berth hosts`). Errors are one line: the server's own message when it gave one.

pub mod id_token;

use futures::{Stream, TryStreamExt};
use reqwest::{Method, RequestBuilder, Response};
use serde::{de::DeserializeOwned, Serialize};

/// What went wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is unusable.
    #[error("invalid server URL {0:?}: expected http(s)://host[:port]")]
    Url(String),
    /// No connection, or it broke.
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server refused or failed.
    #[error("{status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's one-line reason.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// No CI ID token could be had from the forge.
    #[error("{0}")]
    IdToken(#[from] crate::oidc::ActionsError),
    /// The answer holds nothing of what was asked (no reports about that generation, say).
    #[error("{0}")]
    Nothing(String),
}

/// A berth server and how to authenticate to it.
pub struct Api {
    http: reqwest::Client,
    base: String,
    credential: Credential,
}

/// What a request carries.
enum Credential {
    /// A berth token, or none.
    Token(Option<String>),
    /// A CI job's ID token, fetched (and replaced before it expires) from the forge.
    IdToken(id_token::IdTokenSource),
}

impl Api {
    /// A client for `server` (`http(s)://…`).
    pub fn new(server: &str, token: Option<String>) -> Result<Self, ClientError> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(ClientError::Url(server.to_owned()));
        }
        let credential = Credential::Token(token);
        Ok(Self { http: reqwest::Client::new(), base: server.trim_end_matches('/').to_owned(), credential })
    }

    /// A client for `server` that authenticates with the CI job's ID tokens for `audience`
    /// (docs/ci.md): only build submission and following the submitted build accept them.
    pub fn with_id_token(server: &str, audience: &str) -> Result<Self, ClientError> {
        let mut api = Self::new(server, None)?;
        api.credential = Credential::IdToken(id_token::IdTokenSource::from_env(audience)?);
        Ok(api)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let request = match &self.credential {
            Credential::Token(Some(token)) => request.bearer_auth(token),
            Credential::Token(None) => request,
            Credential::IdToken(source) => request.bearer_auth(source.token().await?),
        };
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Transport { url: self.base.clone(), reason: root_cause(&e) })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let message = error_message(&response.text().await.unwrap_or_default());
        Err(ClientError::Server { status, message })
    }

    /// `GET path` → JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.send(self.request(Method::GET, path)).await?;
        response.json().await.map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST path` with a JSON body → JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let response = self.send(self.request(Method::POST, path).json(body)).await?;
        response.json().await.map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `PUT path` with a JSON body; no answer body expected.
    pub async fn put<B: Serialize>(&self, path: &str, body: &B) -> Result<(), ClientError> {
        self.send(self.request(Method::PUT, path).json(body)).await.map(drop)
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, path)).await.map(drop)
    }

    /// `DELETE path` → JSON.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.send(self.request(Method::DELETE, path)).await?;
        response.json().await.map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `GET path` as a byte stream (build logs).
    pub async fn stream(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes, ClientError>>, ClientError> {
        let response = self.send(self.request(Method::GET, path)).await?;
        let url = self.base.clone();
        Ok(response
            .bytes_stream()
            .map_err(move |e| ClientError::Transport { url: url.clone(), reason: root_cause(&e) }))
    }
}

/// The one-line reason of an error answer: its JSON `message` (every berth error has one), or
/// the start of the body from anything else (a proxy's error page).
pub fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// The innermost cause of an error (reqwest nests the useful part).
pub fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
