//! PURE: a commit status as the forge's API wants it: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`
//! with `{"state", "target_url", "description", "context"}` — the same endpoint and body on
//! GitHub (`repos/create-commit-status`) and on Forgejo and Gitea (`repoCreateStatus`) — and
//! the token in the header each forge documents: `Authorization: Bearer …` on GitHub,
//! `Authorization: token …` on Forgejo and Gitea.

use bytes::Bytes;
use reqwest::{
    header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE},
    Method,
};

use super::status::CommitStatus;
use crate::{
    build::model::valid_commit,
    config::{ForgeConfig, ForgeKind},
    outbound::Request,
};

/// Why a status cannot be posted.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The commit is not a full hash (it becomes a path segment).
    #[error("not a full commit hash")]
    Commit,
    /// The API URL cannot take path segments.
    #[error("the forge's api_url cannot be extended")]
    ApiUrl,
}

/// The request that posts `status` on `commit`, linking to `target_url`.
pub fn status_request(
    forge: &ForgeConfig,
    commit: &str,
    status: &CommitStatus,
    target_url: &str,
) -> Result<Request, RequestError> {
    if !valid_commit(commit) {
        return Err(RequestError::Commit);
    }
    let mut url = forge.api_url.clone();
    url.path_segments_mut().map_err(|()| RequestError::ApiUrl)?.pop_if_empty().extend([
        "repos",
        &forge.owner,
        &forge.name,
        "statuses",
        commit,
    ]);
    let body = serde_json::json!({
        "state": status.state.as_str(),
        "target_url": target_url,
        "description": status.description,
        "context": status.context,
    });
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let scheme = match forge.kind {
        ForgeKind::Github => {
            headers.insert(ACCEPT, HeaderValue::from_static("application/vnd.github+json"));
            headers.insert("x-github-api-version", HeaderValue::from_static("2022-11-28"));
            "Bearer"
        }
        ForgeKind::Forgejo | ForgeKind::Gitea => {
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            "token"
        }
    };
    let mut token = Vec::with_capacity(forge.token.0.len() + 7);
    token.extend_from_slice(scheme.as_bytes());
    token.push(b' ');
    token.extend_from_slice(&forge.token.0);
    // Printable ASCII is checked when the token file is read.
    let mut value = HeaderValue::from_bytes(&token).map_err(|_| RequestError::ApiUrl)?;
    value.set_sensitive(true);
    headers.insert(AUTHORIZATION, value);
    let label = format!("{} on {}/{}@{}", status.context, forge.owner, forge.name, &commit[..12]);
    Ok(Request { method: Method::POST, url, headers, body: Bytes::from(body.to_string()), label })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Secret, forge::status::State};

    fn forge(kind: ForgeKind, api: &str) -> ForgeConfig {
        ForgeConfig {
            kind,
            api_url: url::Url::parse(api).unwrap(),
            owner: "acme".into(),
            name: "fleet".into(),
            token: Secret(b"s3cret".to_vec()),
            aggregate: false,
        }
    }

    #[track_caller]
    fn check(kind: ForgeKind, api: &str, url: &str, auth: &str) {
        let status =
            CommitStatus { context: "berth/deploy/beta".into(), state: State::Failure, description: "d".into() };
        let r = status_request(&forge(kind, api), &"ab".repeat(20), &status, "http://b/ui/builds/3").unwrap();
        assert_eq!((r.method.as_str(), r.url.as_str()), ("POST", url));
        assert_eq!(r.headers[AUTHORIZATION], auth);
        assert!(r.headers[AUTHORIZATION].is_sensitive());
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let expected = r#"{"context":"berth/deploy/beta","description":"d","state":"failure","target_url":"http://b/ui/builds/3"}"#;
        assert_eq!(body.to_string(), expected);
        assert!(!format!("{r:?}").contains("s3cret"), "Debug shows no token");
    }

    #[test]
    fn each_forge_gets_its_own_auth_on_the_same_endpoint() {
        let sha = "ab".repeat(20);
        check(
            ForgeKind::Github,
            "https://api.github.com",
            &format!("https://api.github.com/repos/acme/fleet/statuses/{sha}"),
            "Bearer s3cret",
        );
        check(
            ForgeKind::Forgejo,
            "https://codeberg.org/api/v1",
            &format!("https://codeberg.org/api/v1/repos/acme/fleet/statuses/{sha}"),
            "token s3cret",
        );
        check(
            ForgeKind::Gitea,
            "http://127.0.0.1:3000/api/v1/",
            &format!("http://127.0.0.1:3000/api/v1/repos/acme/fleet/statuses/{sha}"),
            "token s3cret",
        );
        let status = CommitStatus { context: "c".into(), state: State::Pending, description: String::new() };
        let github = forge(ForgeKind::Github, "https://api.github.com");
        assert!(matches!(status_request(&github, "HEAD", &status, "x"), Err(RequestError::Commit)));
    }
}
