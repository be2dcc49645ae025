//! A CI job's ID token, fetched from the forge (`oidc::actions`) when the client needs one
//! and again shortly before it expires, so `berth build submit --wait` can follow a build
//! that outlasts one token. The request token is read from the environment, never logged.

use std::time::Duration;

use tokio::sync::Mutex;

use super::{root_cause, ClientError};
use crate::oidc::actions::{self, ActionsError, REQUEST_TOKEN_VAR, REQUEST_URL_VAR};

/// Each request to the forge's token endpoint: its whole time.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a job's ID tokens come from, and the one it holds.
pub struct IdTokenSource {
    http: reqwest::Client,
    url: url::Url,
    request_token: String,
    current: Mutex<Option<String>>,
}

impl IdTokenSource {
    /// A source for `audience` from the job's environment (`ACTIONS_ID_TOKEN_REQUEST_URL`,
    /// `ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
    pub fn from_env(audience: &str) -> Result<Self, ClientError> {
        let var = |name: &'static str| {
            std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or(ClientError::IdToken(ActionsError::NotInJob(name)))
        };
        let url = actions::request_url(&var(REQUEST_URL_VAR)?, audience)?;
        let request_token = var(REQUEST_TOKEN_VAR)?;
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ClientError::Transport { url: url.origin().ascii_serialization(), reason: root_cause(&e) })?;
        Ok(Self { http, url, request_token, current: Mutex::new(None) })
    }

    /// A token valid for at least a minute more.
    pub async fn token(&self) -> Result<String, ClientError> {
        let mut current = self.current.lock().await;
        let now = jiff::Timestamp::now().as_second();
        if let Some(token) = current.as_ref().filter(|t| !actions::needs_refresh(t, now)) {
            return Ok(token.clone());
        }
        let token = self.fetch().await?;
        *current = Some(token.clone());
        Ok(token)
    }

    async fn fetch(&self) -> Result<String, ClientError> {
        // The URL's query may carry the forge's own parameters; only its origin is shown.
        let origin = self.url.origin().ascii_serialization();
        let transport = |e: &reqwest::Error| ClientError::Transport { url: origin.clone(), reason: root_cause(e) };
        let mut response =
            self.http.get(self.url.clone()).bearer_auth(&self.request_token).send().await.map_err(|e| transport(&e))?;
        if !response.status().is_success() {
            return Err(ClientError::Server {
                status: response.status().as_u16(),
                message: format!("the forge's ID token endpoint ({origin}) refused the request"),
            });
        }
        let body = crate::outbound::read_bounded(&mut response, actions::MAX_ANSWER_BYTES)
            .await
            .map_err(|e| transport(&e))?
            .ok_or(ActionsError::BadAnswer)?;
        Ok(actions::token_of(&body)?)
    }
}
