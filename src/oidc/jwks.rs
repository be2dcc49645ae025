//! Each issuer's key set, fetched by OIDC discovery (`<issuer>/.well-known/openid-configuration`
//! → `jwks_uri`) and cached. Refresh (docs/ci.md): a set older than [`Limits::refresh`] is
//! refetched on use; a `kid` not in the set triggers a refetch, at most once per
//! [`Limits::min_refetch`] per issuer; each fetch has a timeout and a size bound. When a
//! refetch fails, the cached set keeps serving the keys it has.

use std::{collections::HashMap, time::Duration};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use serde::Deserialize;
use tokio::{sync::Mutex, time::Instant};

/// Fetch limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Whole-request timeout of each of the two fetches.
    pub timeout: Duration,
    /// The largest discovery document or key set read.
    pub max_bytes: usize,
    /// Age after which a cached set is refetched.
    pub refresh: Duration,
    /// Least time between two fetches for one issuer (unknown `kid`s cannot make berth hammer it).
    pub min_refetch: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_bytes: 64 * 1024,
            refresh: Duration::from_secs(3600),
            min_refetch: Duration::from_secs(30),
        }
    }
}

/// Why no key is available (each a 401: the token cannot be verified).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The issuer's key set does not hold the token's key.
    #[error("the issuer publishes no key {0:?}")]
    UnknownKey(String),
    /// The fetch failed and nothing is cached.
    #[error("the issuer's keys could not be fetched: {0}")]
    Fetch(String),
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

struct Entry {
    set: Option<(JwkSet, Instant)>,
    last_attempt: Option<Instant>,
}

/// The cache, shared by all requests (one fetch at a time per server: a fetch is bounded by
/// twice the timeout).
pub struct JwksCache {
    client: reqwest::Client,
    limits: Limits,
    entries: Mutex<HashMap<String, Entry>>,
}

impl JwksCache {
    /// A cache with these limits.
    pub fn new(limits: Limits) -> Self {
        let client = reqwest::Client::builder()
            .timeout(limits.timeout)
            .connect_timeout(limits.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { client, limits, entries: Mutex::new(HashMap::new()) }
    }

    /// The key `kid` of `issuer`.
    pub async fn key(&self, issuer: &str, kid: &str) -> Result<Jwk, JwksError> {
        let mut entries = self.entries.lock().await;
        let entry = entries.entry(issuer.to_owned()).or_insert(Entry { set: None, last_attempt: None });
        let now = Instant::now();
        let cached = entry.set.as_ref().and_then(|(set, at)| Some((set.find(kid)?.clone(), *at)));
        let fresh = cached.as_ref().is_some_and(|(_, at)| now.duration_since(*at) < self.limits.refresh);
        if fresh {
            return cached.map(|(k, _)| k).ok_or_else(|| JwksError::UnknownKey(kid.into()));
        }
        let may_fetch = entry.last_attempt.map_or(true, |t| now.duration_since(t) >= self.limits.min_refetch);
        if may_fetch {
            entry.last_attempt = Some(now);
            match self.fetch(issuer).await {
                Ok(set) => {
                    let key = set.find(kid).cloned();
                    entry.set = Some((set, Instant::now()));
                    return key.ok_or_else(|| JwksError::UnknownKey(kid.into()));
                }
                Err(e) => {
                    tracing::warn!(issuer, error = %e, "fetching the OIDC issuer's keys failed; using the cached set");
                    return cached.map(|(k, _)| k).ok_or(e);
                }
            }
        }
        cached.map(|(k, _)| k).ok_or_else(|| JwksError::UnknownKey(kid.into()))
    }

    async fn fetch(&self, issuer: &str) -> Result<JwkSet, JwksError> {
        let discovery_url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let discovery: Discovery = self.get_json(&discovery_url).await?;
        if discovery.issuer != issuer {
            return Err(JwksError::Fetch("the discovery document names another issuer".into()));
        }
        if !allowed_url(&discovery.jwks_uri) {
            return Err(JwksError::Fetch("jwks_uri must be https (or http on loopback)".into()));
        }
        self.get_json(&discovery.jwks_uri).await
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, JwksError> {
        let fail = |e: &dyn std::fmt::Display| JwksError::Fetch(format!("{url}: {e}"));
        let mut response = self.client.get(url).send().await.map_err(|e| fail(&e))?;
        if !response.status().is_success() {
            return Err(fail(&response.status()));
        }
        let max = self.limits.max_bytes;
        let body = crate::outbound::read_bounded(&mut response, max)
            .await
            .map_err(|e| fail(&e))?
            .ok_or_else(|| fail(&format!("larger than {max} bytes")))?;
        serde_json::from_slice(&body).map_err(|e| fail(&e))
    }
}

/// PURE: issuers and key-set URLs are https, or http on a loopback address (tests, a local
/// Forgejo).
pub fn allowed_url(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else { return false };
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests;
