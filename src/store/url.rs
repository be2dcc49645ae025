//! Storage URLs, parsed without I/O: `file:///dir`, `memory://` and
//! `s3://bucket[/prefix][?key=value&…]`. Secrets never travel in a URL (it ends up in config
//! files, argv and logs): credentials come from a file or the environment.

use std::path::PathBuf;

/// The accepted forms, for error messages.
pub const ACCEPTED_FORMS: &str = "file:///absolute/dir, memory://, or \
    s3://bucket[/prefix][?endpoint=URL&region=R&path_style=true|false&credentials_file=/abs/path\
    &profile=P&copy_if_not_exists=multipart|header:NAME:VALUE&conditional_put=etag|none]";

/// Why a storage URL was refused. The URL itself is never echoed: it could hold a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Not one of the supported schemes.
    #[error("unsupported scheme (expected file://, memory:// or s3://)")]
    Scheme,
    /// `file://` with a relative directory.
    #[error("a file:// URL needs an absolute directory (file:///var/lib/berth/cache)")]
    RelativeDir,
    /// The URL does not parse at all.
    #[error("malformed URL: {0}")]
    Syntax(String),
    /// `user:password@` in the URL.
    #[error("credentials must not be in the URL: use credentials_file=… or the AWS_* environment")]
    UserInfo,
    /// A bad bucket name.
    #[error("invalid bucket name {0:?}: 3-63 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")]
    Bucket(String),
    /// A bad key prefix.
    #[error(
        "invalid prefix {0:?}: '/'-separated segments of letters, digits, '-', '_' and '.', none empty, '.' or '..'"
    )]
    Prefix(String),
    /// A query key berth does not know.
    #[error("unknown query key {0:?}")]
    UnknownKey(String),
    /// A query key given twice.
    #[error("query key {0:?} given twice")]
    DuplicateKey(String),
    /// A secret-looking query key.
    #[error("{0:?} must not be in the URL: put secrets in credentials_file=… (AWS shared-credentials format) or the AWS_* environment")]
    SecretInUrl(String),
    /// A query value that does not parse.
    #[error("invalid {key}: {reason}")]
    Value {
        /// The query key.
        key: &'static str,
        /// Why its value is refused.
        reason: &'static str,
    },
}

/// A parsed storage URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `memory://`: in-process, for tests.
    Memory,
    /// `file:///dir`: a local directory owned by this machine.
    Dir(PathBuf),
    /// `s3://…`: an S3-compatible bucket, possibly shared by replicas.
    S3(S3Url),
}

/// An `s3://` URL's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// Where in the bucket the cache lives (`None`: at its root).
    pub prefix: Option<String>,
    /// `endpoint=`: `scheme://host[:port]`; `None` means AWS (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// `region=`; `None` means `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// `path_style=`: `http://host/bucket/key` rather than `http://bucket.host/key`.
    pub path_style: bool,
    /// `credentials_file=`: an AWS shared-credentials file.
    pub credentials_file: Option<PathBuf>,
    /// `profile=`: the section of the credentials file.
    pub profile: Option<String>,
    /// `copy_if_not_exists=`: how the server refuses to overwrite on copy.
    pub copy_if_not_exists: Option<CopyIfNotExists>,
    /// `conditional_put=`: whether the server honours `If-None-Match: *`.
    pub conditional_put: ConditionalPut,
}

impl S3Url {
    /// A bucket (and prefix) with every query key at its default.
    fn plain(bucket: String, prefix: Option<String>) -> Self {
        S3Url {
            bucket,
            prefix,
            endpoint: None,
            region: None,
            path_style: false,
            credentials_file: None,
            profile: None,
            copy_if_not_exists: None,
            conditional_put: ConditionalPut::None,
        }
    }

    /// Plain HTTP is allowed only when the endpoint asks for it.
    pub fn allow_http(&self) -> bool {
        self.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))
    }
}

/// How a copy refuses to overwrite an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyIfNotExists {
    /// `multipart`: AWS S3's conditional multipart completion.
    Multipart,
    /// `header:NAME:VALUE`: a vendor header, e.g. R2's `cf-copy-destination-if-none-match: *`.
    Header {
        /// Header name.
        name: String,
        /// Header value.
        value: String,
    },
}

/// Whether create-only puts are sent with `If-None-Match: *`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConditionalPut {
    /// `etag`: the server honours `If-None-Match: *` (AWS, MinIO, R2).
    ETag,
    /// `none` (default): create-only writes fall back to plain puts (Garage).
    #[default]
    None,
}

impl StoreUrl {
    /// Parses a storage URL.
    pub fn parse(s: &str) -> Result<Self, UrlError> {
        if s == "memory://" {
            return Ok(Self::Memory);
        }
        if let Some(dir) = s.strip_prefix("file://") {
            return dir.starts_with('/').then(|| Self::Dir(PathBuf::from(dir))).ok_or(UrlError::RelativeDir);
        }
        if s.starts_with("s3://") {
            return parse_s3(s).map(Self::S3);
        }
        Err(UrlError::Scheme)
    }
}

fn parse_s3(s: &str) -> Result<S3Url, UrlError> {
    // Split by hand: a URL parser would normalise `a/../b` to `b` instead of refusing it.
    let rest = s.strip_prefix("s3://").ok_or(UrlError::Scheme)?;
    if rest.contains('#') {
        return Err(UrlError::Syntax("an s3:// URL takes no #fragment".into()));
    }
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path) = location.split_once('/').unwrap_or((location, ""));
    if host.contains('@') {
        return Err(UrlError::UserInfo);
    }
    if host.contains(':') {
        return Err(UrlError::Syntax("an s3:// URL takes no port: use endpoint=".into()));
    }
    let bucket = bucket(host)?;
    let prefix = prefix(path)?;
    let mut parsed = S3Url::plain(bucket, prefix);
    let mut seen: Vec<String> = Vec::new();
    let mut path_style = None;
    for (key, value) in ::url::form_urlencoded::parse(query.as_bytes()) {
        if seen.iter().any(|k| *k == key) {
            return Err(UrlError::DuplicateKey(key.into_owned()));
        }
        seen.push(key.to_string());
        match &*key {
            "endpoint" => parsed.endpoint = Some(endpoint(&value)?),
            "region" => parsed.region = Some(word(&value, "region", "letters, digits and '-'")?),
            "path_style" => path_style = Some(boolean(&value)?),
            "credentials_file" => parsed.credentials_file = Some(absolute(&value)?),
            "profile" => parsed.profile = Some(word(&value, "profile", "letters, digits, '-', '_' and '.'")?),
            "copy_if_not_exists" => parsed.copy_if_not_exists = Some(copy_if_not_exists(&value)?),
            "conditional_put" => parsed.conditional_put = conditional_put(&value)?,
            other if looks_secret(other) => return Err(UrlError::SecretInUrl(other.to_owned())),
            other => return Err(UrlError::UnknownKey(other.to_owned())),
        }
    }
    // Self-hosted servers rarely have wildcard DNS for virtual-hosted buckets; AWS prefers it.
    parsed.path_style = path_style.unwrap_or(parsed.endpoint.is_some());
    Ok(parsed)
}

fn looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["secret", "access_key", "accesskey", "token", "password", "credential"].iter().any(|s| key.contains(s))
}

fn bucket(name: &str) -> Result<String, UrlError> {
    let bytes = name.as_bytes();
    let valid = (3..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..");
    valid.then(|| name.to_owned()).ok_or_else(|| UrlError::Bucket(name.to_owned()))
}

fn prefix(path: &str) -> Result<Option<String>, UrlError> {
    // One trailing '/' is tolerated: `s3://bucket/cache/` means the same as `s3://bucket/cache`.
    if path.is_empty() {
        return Ok(None);
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let segment_ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    if trimmed.split('/').all(segment_ok) {
        Ok(Some(trimmed.to_owned()))
    } else {
        Err(UrlError::Prefix(trimmed.to_owned()))
    }
}

fn endpoint(value: &str) -> Result<String, UrlError> {
    let bad = |reason| UrlError::Value { key: "endpoint", reason };
    let url = ::url::Url::parse(value).map_err(|_| bad("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be http:// or https://"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::UserInfo);
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must be scheme://host[:port], without a path or query"));
    }
    Ok(url.origin().ascii_serialization())
}

fn word(value: &str, key: &'static str, reason: &'static str) -> Result<String, UrlError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ok = ok && (key != "region" || !value.contains(['_', '.']));
    ok.then(|| value.to_owned()).ok_or(UrlError::Value { key, reason })
}

fn boolean(value: &str) -> Result<bool, UrlError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(UrlError::Value { key: "path_style", reason: "expected true or false" }),
    }
}

fn absolute(value: &str) -> Result<PathBuf, UrlError> {
    let ok = value.starts_with('/') && !value.split('/').any(|s| s == "..");
    ok.then(|| PathBuf::from(value))
        .ok_or(UrlError::Value { key: "credentials_file", reason: "must be an absolute path without '..'" })
}

fn copy_if_not_exists(value: &str) -> Result<CopyIfNotExists, UrlError> {
    let bad = UrlError::Value { key: "copy_if_not_exists", reason: "expected multipart or header:NAME:VALUE" };
    if value == "multipart" {
        return Ok(CopyIfNotExists::Multipart);
    }
    let (name, value) = value.strip_prefix("header:").and_then(|rest| rest.split_once(':')).ok_or(bad.clone())?;
    let (name, value) = (name.trim(), value.trim());
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let value_ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if name_ok && value_ok {
        Ok(CopyIfNotExists::Header { name: name.to_owned(), value: value.to_owned() })
    } else {
        Err(bad)
    }
}

fn conditional_put(value: &str) -> Result<ConditionalPut, UrlError> {
    match value {
        "etag" => Ok(ConditionalPut::ETag),
        "none" => Ok(ConditionalPut::None),
        _ => Err(UrlError::Value { key: "conditional_put", reason: "expected etag or none" }),
    }
}

#[cfg(test)]
mod tests;
