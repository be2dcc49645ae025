//! The S3 backend: an `AmazonS3` client built from an `s3://` URL and the credentials it
//! points at, the key prefix applied with `PrefixStore`, and presigned GETs. Which
//! credentials apply is decided by a pure function; reading files and the environment is
//! kept to `open`.

use std::{
    path::{Path as FsPath, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use object_store::{
    aws::{AmazonS3, AmazonS3Builder, AwsCredential, S3ConditionalPut, S3CopyIfNotExists},
    path::Path,
    prefix::PrefixStore,
    signer::Signer,
    ObjectStore, StaticCredentialProvider,
};

use super::{
    credentials::{self, CredentialsError, ParseError},
    url::{ConditionalPut, CopyIfNotExists, S3Url},
    StoreError,
};

/// Staging objects younger than this may be another replica's upload in progress.
pub(super) const STAGING_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// What berth needs to know about an open S3 backend besides the `ObjectStore`. Holds no
/// secret itself (the client does), and its `Debug` shows only the bucket and prefix.
pub(super) struct S3 {
    /// The unprefixed client, for signing URLs.
    client: AmazonS3,
    pub(super) bucket: String,
    prefix: Option<String>,
    /// `copy_if_not_exists=` was given: commits of staged uploads refuse to overwrite.
    pub(super) copy_if_not_exists: bool,
    /// `conditional_put=etag`: create-only puts send `If-None-Match: *`.
    pub(super) conditional_put: bool,
    /// The largest staged object a server-side copy moves into place (AWS CopyObject takes
    /// at most 5 GiB); larger ones are streamed through berth instead.
    pub(super) copy_limit: u64,
}

/// AWS CopyObject's limit for one request.
pub(super) const COPY_LIMIT: u64 = 5 << 30;

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3").field("bucket", &self.bucket).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// Where credentials come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum CredentialSource {
    /// A shared-credentials file; `required`: a missing profile is an error rather than a
    /// reason to try instance credentials.
    File { path: PathBuf, profile: String, required: bool },
    /// `AWS_ACCESS_KEY_ID`/…, web identity, container or instance credentials (object_store).
    Environment,
}

/// Decides where credentials come from: `credentials_file=`, else `AWS_ACCESS_KEY_ID`, else
/// `AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials` when it exists, else the rest of
/// the environment (roles).
pub(super) fn credential_source(
    url: &S3Url,
    env: impl Fn(&str) -> Option<String>,
    exists: impl Fn(&FsPath) -> bool,
) -> CredentialSource {
    let explicit_profile = url.profile.clone().or_else(|| env("AWS_PROFILE"));
    let profile = explicit_profile.clone().unwrap_or_else(|| "default".to_owned());
    if let Some(path) = &url.credentials_file {
        return CredentialSource::File { path: path.clone(), profile, required: true };
    }
    if env("AWS_ACCESS_KEY_ID").is_some() {
        return CredentialSource::Environment;
    }
    let shared = env("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".aws/credentials")));
    match shared {
        Some(path) if exists(&path) => CredentialSource::File { path, profile, required: explicit_profile.is_some() },
        _ => CredentialSource::Environment,
    }
}

fn credentials(source: &CredentialSource) -> Result<Option<AwsCredential>, CredentialsError> {
    let CredentialSource::File { path, profile, required } = source else { return Ok(None) };
    match credentials::load(path, profile) {
        Ok(c) => {
            Ok(Some(AwsCredential { key_id: c.access_key_id, secret_key: c.secret_access_key, token: c.session_token }))
        }
        // A default ~/.aws/credentials without [default]: an instance role may still apply.
        Err(CredentialsError::Parse { source: ParseError::NoProfile(_), .. }) if !required => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the bucket; returns the prefixed store and the backend's settings.
pub(super) fn open(url: &S3Url) -> Result<(Arc<dyn ObjectStore>, S3), StoreError> {
    let source = credential_source(url, |k| std::env::var(k).ok(), FsPath::exists);
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(&url.bucket)
        .with_virtual_hosted_style_request(!url.path_style)
        .with_conditional_put(match url.conditional_put {
            ConditionalPut::ETag => S3ConditionalPut::ETagMatch,
            ConditionalPut::None => S3ConditionalPut::Disabled,
        });
    if let Some(endpoint) = &url.endpoint {
        builder = builder.with_endpoint(endpoint).with_allow_http(url.allow_http());
    }
    if let Some(region) = &url.region {
        builder = builder.with_region(region);
    }
    if let Some(copy) = &url.copy_if_not_exists {
        builder = builder.with_copy_if_not_exists(match copy {
            CopyIfNotExists::Multipart => S3CopyIfNotExists::Multipart,
            CopyIfNotExists::Header { name, value } => S3CopyIfNotExists::Header(name.clone(), value.clone()),
        });
    }
    if let Some(credential) = credentials(&source)? {
        // A provider, not with_access_key_id: it also discards a stray AWS_SESSION_TOKEN.
        builder = builder.with_credentials(Arc::new(StaticCredentialProvider::new(credential)));
    }
    let client = builder.build()?;
    let store: Arc<dyn ObjectStore> = match &url.prefix {
        Some(prefix) => Arc::new(PrefixStore::new(client.clone(), prefix.as_str())),
        None => Arc::new(client.clone()),
    };
    let s3 = S3 {
        client,
        bucket: url.bucket.clone(),
        prefix: url.prefix.clone(),
        copy_if_not_exists: url.copy_if_not_exists.is_some(),
        conditional_put: url.conditional_put == ConditionalPut::ETag,
        copy_limit: COPY_LIMIT,
    };
    Ok((store, s3))
}

impl S3 {
    /// A presigned GET for `key` (relative to the prefix).
    pub(super) async fn presigned_get(&self, key: &str, expires: Duration) -> Result<String, StoreError> {
        let full = match &self.prefix {
            Some(prefix) => Path::from(format!("{prefix}/{key}")),
            None => Path::from(key),
        };
        let url = self.client.signed_url(reqwest::Method::GET, &full, expires).await?;
        Ok(url.to_string())
    }
}

/// Whether a staging object last modified at `modified` is old enough to be a crash's
/// leftover rather than another replica's upload in progress.
pub(super) fn is_stale(modified: SystemTime, now: SystemTime) -> bool {
    now.duration_since(modified).is_ok_and(|age| age > STAGING_MAX_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::url::StoreUrl;

    fn url(s: &str) -> S3Url {
        match StoreUrl::parse(s).unwrap() {
            StoreUrl::S3(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[track_caller]
    fn check(s3: &str, env: &[(&str, &str)], existing: &[&str], expected: CredentialSource) {
        let lookup = |k: &str| env.iter().find(|(name, _)| *name == k).map(|(_, v)| v.to_string());
        let exists = |p: &FsPath| existing.iter().any(|e| FsPath::new(e) == p);
        assert_eq!(credential_source(&url(s3), lookup, exists), expected);
    }

    fn file(path: &str, profile: &str, required: bool) -> CredentialSource {
        CredentialSource::File { path: path.into(), profile: profile.into(), required }
    }

    #[test]
    fn where_credentials_come_from() {
        let home = [("HOME", "/home/b")];
        let aws = "/home/b/.aws/credentials";
        check(
            "s3://bkt?credentials_file=/run/s3",
            &[("AWS_ACCESS_KEY_ID", "x")],
            &[],
            file("/run/s3", "default", true),
        );
        check("s3://bkt?credentials_file=/run/s3&profile=ci", &[], &[], file("/run/s3", "ci", true));
        check("s3://bkt?credentials_file=/run/s3", &[("AWS_PROFILE", "p")], &[], file("/run/s3", "p", true));
        check("s3://bkt", &[("AWS_ACCESS_KEY_ID", "x"), ("HOME", "/home/b")], &[aws], CredentialSource::Environment);
        check("s3://bkt", &home, &[aws], file(aws, "default", false));
        check("s3://bkt?profile=ci", &home, &[aws], file(aws, "ci", true));
        check("s3://bkt", &home, &[], CredentialSource::Environment);
        let shared = [("AWS_SHARED_CREDENTIALS_FILE", "/etc/s3"), ("HOME", "/home/b")];
        check("s3://bkt", &shared, &["/etc/s3", aws], file("/etc/s3", "default", false));
    }

    #[test]
    fn staging_age() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10 * 86400);
        assert!(!is_stale(now - Duration::from_secs(3600), now), "an hour-old upload may be in progress");
        assert!(is_stale(now - Duration::from_secs(25 * 3600), now));
        assert!(!is_stale(now + Duration::from_secs(60), now), "clock skew: a future time is fresh");
    }
}
