//! PURE: the job's side of CI ID tokens. GitHub Actions and Forgejo Actions give a job that
//! may ask for one (`permissions: id-token: write`; Forgejo: `enable-openid-connect: true`)
//! two variables: `ACTIONS_ID_TOKEN_REQUEST_URL` and the bearer token for it,
//! `ACTIONS_ID_TOKEN_REQUEST_TOKEN`. A GET of the URL with `audience=<aud>` added to its
//! query answers `{"value": "<JWT>"}`. This module builds that URL, reads the answer and
//! tells when a token needs replacing; the fetch itself is `client::id_token`.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::Deserialize;

use super::verify::{looks_like_jwt, MAX_TOKEN_BYTES};

/// The variable holding the token request URL.
pub const REQUEST_URL_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The variable holding the bearer token for it.
pub const REQUEST_TOKEN_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";
/// The most of the token endpoint's answer read (a token is at most [`MAX_TOKEN_BYTES`]).
pub const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// A token is replaced when it expires within this many seconds.
pub const REFRESH_BEFORE_SECONDS: i64 = 60;

/// Why no ID token could be had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActionsError {
    /// The job was not given the variables.
    #[error(
        "{0} is not set: the job may not ask for an ID token (GitHub: `permissions: id-token: write`; \
         Forgejo: `enable-openid-connect: true`)"
    )]
    NotInJob(&'static str),
    /// The URL is not an http(s) URL.
    #[error("{REQUEST_URL_VAR} is not an http(s) URL")]
    BadUrl,
    /// The audience is empty or has control characters.
    #[error("the ID token audience must be non-empty printable text")]
    BadAudience,
    /// The endpoint answered something else than `{"value": JWT}`.
    #[error("the ID token endpoint's answer is not {{\"value\": <JWT>}} of at most {MAX_TOKEN_BYTES} bytes")]
    BadAnswer,
}

/// PURE: the token request URL for `audience`: `audience` added to the query the forge gave
/// (GitHub's already has `api-version`), percent-encoded.
pub fn request_url(base: &str, audience: &str) -> Result<url::Url, ActionsError> {
    if audience.is_empty() || audience.chars().any(char::is_control) {
        return Err(ActionsError::BadAudience);
    }
    let mut url = url::Url::parse(base).map_err(|_| ActionsError::BadUrl)?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(ActionsError::BadUrl);
    }
    let kept: Vec<(String, String)> = url.query_pairs().into_owned().filter(|(k, _)| k != "audience").collect();
    url.query_pairs_mut().clear().extend_pairs(kept).append_pair("audience", audience);
    Ok(url)
}

#[derive(Deserialize)]
struct Answer {
    value: String,
}

/// PURE: the token in the endpoint's answer.
pub fn token_of(answer: &[u8]) -> Result<String, ActionsError> {
    if answer.len() > MAX_ANSWER_BYTES {
        return Err(ActionsError::BadAnswer);
    }
    let Answer { value } = serde_json::from_slice(answer).map_err(|_| ActionsError::BadAnswer)?;
    if value.len() > MAX_TOKEN_BYTES || !looks_like_jwt(&value) {
        return Err(ActionsError::BadAnswer);
    }
    Ok(value)
}

#[derive(Deserialize)]
struct Expiry {
    exp: Option<i64>,
}

/// PURE: whether `token` must be replaced at `now` (it expires within
/// [`REFRESH_BEFORE_SECONDS`], or its expiry cannot be read). The job does not verify its own
/// token: berth does.
pub fn needs_refresh(token: &str, now: i64) -> bool {
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|bytes| serde_json::from_slice::<Expiry>(&bytes).ok())
        .and_then(|e| e.exp);
    exp.map_or(true, |exp| exp - now < REFRESH_BEFORE_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!("eyJhbGciOiJFUzI1NiJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn request_urls() {
        for (base, audience, want) in [
            (
                "https://gh.example/idtoken?api-version=2.0",
                "https://berth.test",
                Some("https://gh.example/idtoken?api-version=2.0&audience=https%3A%2F%2Fberth.test"),
            ),
            (
                "http://127.0.0.1:3000/api/actions/_apis/pipelines/workflows/1/idtoken",
                "berth",
                Some("http://127.0.0.1:3000/api/actions/_apis/pipelines/workflows/1/idtoken?audience=berth"),
            ),
            // An audience already in the URL is replaced, not doubled.
            ("https://gh.example/t?audience=evil&x=1", "berth", Some("https://gh.example/t?x=1&audience=berth")),
            ("https://gh.example/t", "a&audience=evil", Some("https://gh.example/t?audience=a%26audience%3Devil")),
            ("https://gh.example/t", "bérth ✓", Some("https://gh.example/t?audience=b%C3%A9rth+%E2%9C%93")),
            ("https://gh.example/t", "", None),
            ("https://gh.example/t", "a\nb", None),
            ("file:///etc/passwd", "berth", None),
            ("ftp://gh.example/t", "berth", None),
            ("not a url", "berth", None),
            ("", "berth", None),
        ] {
            assert_eq!(request_url(base, audience).ok().map(String::from).as_deref(), want, "{base} {audience:?}");
        }
    }

    #[test]
    fn answers() {
        let token = jwt(r#"{"exp":1}"#);
        assert_eq!(token_of(format!(r#"{{"value":"{token}"}}"#).as_bytes()), Ok(token.clone()));
        assert_eq!(token_of(format!(r#"{{"count":2,"value":"{token}"}}"#).as_bytes()), Ok(token));
        for bad in [
            "".to_owned(),
            "{}".to_owned(),
            r#"{"value":null}"#.to_owned(),
            r#"{"value":"0123abcd"}"#.to_owned(),
            r#"{"value":"eyJ.only-two"}"#.to_owned(),
            format!(r#"{{"value":"eyJ{}.e30.c2ln"}}"#, "A".repeat(MAX_TOKEN_BYTES)),
            format!(r#"{{"value":"{}","pad":"{}"}}"#, jwt("{}"), "x".repeat(MAX_ANSWER_BYTES)),
            "<html>rate limited</html>".to_owned(),
        ] {
            assert_eq!(token_of(bad.as_bytes()), Err(ActionsError::BadAnswer), "{}", &bad[..bad.len().min(60)]);
        }
        assert_eq!(token_of(&[0xff, 0xfe, b'{']), Err(ActionsError::BadAnswer));
    }

    #[test]
    fn refresh() {
        let now = 1_000_000;
        for (payload, want) in [
            (format!(r#"{{"exp":{}}}"#, now + 300), false),
            (format!(r#"{{"exp":{}}}"#, now + REFRESH_BEFORE_SECONDS), false),
            (format!(r#"{{"exp":{}}}"#, now + REFRESH_BEFORE_SECONDS - 1), true),
            (format!(r#"{{"exp":{}}}"#, now - 5), true),
            (r#"{"iat":1}"#.to_owned(), true),
            (r#"{"exp":"soon"}"#.to_owned(), true),
            ("not json".to_owned(), true),
        ] {
            assert_eq!(needs_refresh(&jwt(&payload), now), want, "{payload}");
        }
        assert!(needs_refresh("garbage", now));
    }
}
