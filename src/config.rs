//! Configuration: one TOML file (`RawConfig`, unknown keys rejected) validated into `Config`
//! at start-up, so a wrong value fails `berth serve` and `berth check-config`, never the
//! first request. Secrets are file paths (for systemd `LoadCredential`), never values.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    build::trust::SignedCommits,
    deploy::rollout::{Offline, Policy, Selector, Supersede, WaveSpec},
    nixfmt::PublicKey,
};

mod forge;
mod keys;
mod notify;
mod push;
mod windows;

pub use forge::{owner_and_name, ForgeConfig, ForgeKind, RawForge};
pub use keys::{KeysPolicy, RawKeys};
pub use notify::{NotifyConfig, NotifyFormat, RawNotify};
pub use push::{Delivery, PushTarget, DEFAULT_CONFIRM_TIMEOUT};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key or a wrong type.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation (with line and column).
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("invalid `{key}`: {reason}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The TOML file as written. Every key is optional; see `docs/configuration.md`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080` or `[::]:443`.
    pub listen: Option<String>,
    /// Directory for the default storage, database and generated keys.
    pub data_dir: Option<PathBuf>,
    /// Where NARs and narinfos live: `file:///abs/dir` (default `<data_dir>/cache`).
    pub storage: Option<String>,
    /// Metadata database: `sqlite:///abs/file` (default `<data_dir>/berth.sqlite`) or `postgres://…`.
    pub database: Option<String>,
    /// The cache signing key (Nix secret-key format). Default `<data_dir>/signing-key`,
    /// generated on first start; an explicitly configured file must exist.
    pub signing_key_file: Option<PathBuf>,
    /// Name for a generated signing key (default `<hostname>-1`).
    pub signing_key_name: Option<String>,
    /// The deploy key that signs host manifests (Nix secret-key format, e.g. from
    /// `berth keygen`). Default `<data_dir>/deploy-key`, generated on first start as
    /// `<hostname>-deploy-1`; an explicitly configured file must exist.
    pub deploy_key_file: Option<PathBuf>,
    /// Older public keys still trusted during a key rotation (printed with the nix.conf lines).
    #[serde(default)]
    pub previous_public_keys: Vec<String>,
    /// Whether `/metrics` answers without a token. Default: public when cache reads are
    /// (`[cache] require_read_token = false`); otherwise a `metrics` (or admin) token.
    pub metrics_public: Option<bool>,
    /// Connection limits.
    #[serde(default)]
    pub server: RawServer,
    /// The binary-cache protocol settings.
    #[serde(default)]
    pub cache: RawCache,
    /// How builds run.
    #[serde(default)]
    pub builder: RawBuilder,
    /// The fleet configuration repositories berth builds.
    #[serde(default)]
    pub repositories: Vec<RawRepository>,
    /// What garbage collection keeps, and when it runs by itself.
    #[serde(default)]
    pub retention: RawRetention,
    /// How deployments are shown.
    #[serde(default)]
    pub deploy: RawDeploy,
    /// The URL people reach this server at, for links in commit statuses and notifications
    /// (`https://berth.example.org`). Default `http://` and the address berth listens on.
    pub public_url: Option<String>,
    /// Outbound webhooks on events (`docs/forge.md`).
    #[serde(default)]
    pub notify: Vec<RawNotify>,
    /// Deploy key ages and the `key_expiring` warning.
    #[serde(default)]
    pub keys: RawKeys,
}

/// `[server]`: connection limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Seconds a request's head may take to arrive, and an idle keep-alive connection may
    /// stay open. Default 30.
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds a connection may move no byte in either direction while a request waits on
    /// it. Default 300; at least 65 (a host's long-poll waits up to 60 s).
    pub idle_timeout_secs: Option<u64>,
    /// Connections open at once; more are answered 503 and closed. Default 4096.
    pub max_connections: Option<usize>,
}

/// Connection limits, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// See [`RawServer::header_read_timeout_secs`].
    pub header_read_timeout: std::time::Duration,
    /// See [`RawServer::idle_timeout_secs`].
    pub idle_timeout: std::time::Duration,
    /// See [`RawServer::max_connections`].
    pub max_connections: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        RawServer::default().validate().expect("the defaults are valid")
    }
}

impl RawServer {
    fn validate(&self) -> Result<ServerConfig, ConfigError> {
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
        let header = self.header_read_timeout_secs.unwrap_or(30);
        if header == 0 {
            return Err(invalid("server.header_read_timeout_secs", "must be at least 1".into()));
        }
        let idle = self.idle_timeout_secs.unwrap_or(300);
        if idle < 65 {
            return Err(invalid("server.idle_timeout_secs", format!("{idle} is under 65 (long-polls wait 60 s)")));
        }
        let max_connections = self.max_connections.unwrap_or(4096);
        if max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1".into()));
        }
        Ok(ServerConfig {
            header_read_timeout: std::time::Duration::from_secs(header),
            idle_timeout: std::time::Duration::from_secs(idle),
            max_connections,
        })
    }
}

/// `[retention]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Generations kept per host. Default 5.
    pub keep_last: Option<usize>,
    /// Per-host overrides of `keep_last`.
    #[serde(default)]
    pub keep_last_per_host: std::collections::HashMap<String, usize>,
    /// Also keep every generation younger than this many days.
    pub keep_newer_than_days: Option<u64>,
    /// Seconds a fresh upload is kept although nothing references it yet. Default 3600.
    pub grace_period_secs: Option<u64>,
    /// Run a collection every this many seconds. Default: never (run `berth gc`).
    pub schedule_secs: Option<u64>,
}

/// `[builder]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBuilder {
    /// Hosts of one build evaluated and built at the same time. Default: the memory
    /// available at start-up (`MemAvailable`, or the service's cgroup `memory.max` when
    /// lower) divided by 1 GiB (a NixOS evaluation takes ~0.8 GB), at least 1, at most the
    /// number of cores (`build::capacity`).
    pub parallel_hosts: Option<usize>,
    /// Seconds one host's build may take before it is killed. Default 7200.
    pub timeout_secs: Option<u64>,
    /// Builds run at the same time by this server. Default 1; 0 for a replica that only
    /// serves while others build.
    pub concurrent_builds: Option<usize>,
    /// Seconds without a heartbeat after which a running build counts as interrupted (its
    /// worker died) and is run again or failed. Default 60.
    pub stale_after_secs: Option<u64>,
    /// The Nix store the builder evaluates and builds into and publishes from: unset for the
    /// machine's own store (`/nix/store`, the daemon's or the local one); otherwise the
    /// absolute directory of a local chroot store (Nix's `--store DIR`: paths are still named
    /// `/nix/store/…` but live under `DIR/nix/store`), e.g. for a build host without root.
    pub store: Option<PathBuf>,
}

/// `[[repositories]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRepository {
    /// What CI and webhooks call it.
    pub name: String,
    /// Any git URL (`git+https://…`, `git+ssh://…`, `git+file:///…`).
    pub url: String,
    /// The branch that deploys to every host whose closure changed. Default "main".
    pub deploy_branch: Option<String>,
    /// Branches named `<prefix><host>` deploy to that host alone. Default "test-".
    pub test_branch_prefix: Option<String>,
    /// Deploy only commits signed by an allow-listed key. Default true.
    pub require_signed_commits: Option<bool>,
    /// Which commits need that signature: `"all"` (every commit since the last deployed
    /// one, default) or `"tip"` (the pushed commit alone).
    pub signed_commits: Option<String>,
    /// A commit whose history is trusted without signatures (the start of signing): with
    /// nothing deployed yet, only the commits after it need a trusted signature.
    pub trusted_since: Option<String>,
    /// git's SSH allowed-signers file.
    pub allowed_signers_file: Option<PathBuf>,
    /// A GnuPG home whose keyring holds the allowed GPG keys.
    pub gpg_home: Option<PathBuf>,
    /// The least GPG trust level accepted (git's `gpg.minTrustLevel`). Default "fully".
    pub gpg_min_trust_level: Option<String>,
    /// Refuse to deploy a deploy-branch commit that does not descend from the last deployed
    /// one (a force-push rewind). Default false.
    pub require_fast_forward: Option<bool>,
    /// File holding the forge webhook secret (HMAC-SHA256 key).
    pub webhook_secret_file: Option<PathBuf>,
    /// Where this repository's commit statuses go (`docs/forge.md`).
    pub forge: Option<RawForge>,
    /// `[repositories.hosts.<name>]`: per-host settings (tags, for rollout waves).
    #[serde(default)]
    pub hosts: BTreeMap<String, RawHost>,
    /// `[repositories.rollout]`: staged rollouts of the deploy branch (none: every host at once).
    pub rollout: Option<RawRollout>,
    /// Activation windows for groups of hosts.
    #[serde(default)]
    pub windows: Vec<RawWindowGroup>,
    /// `[repositories.oidc]`: CI ID tokens that may submit builds of this repository (docs/ci.md).
    pub oidc: Option<RawOidc>,
}

/// `[repositories.oidc]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// `iss`: `https://token.actions.githubusercontent.com`, or the Forgejo instance's URL.
    pub issuer: String,
    /// `aud` the token must carry (the `audience` CI asks for).
    pub audience: String,
    /// The `repository` claim (`owner/name`).
    pub repository: String,
    /// Allowed `ref`s: exact, or a prefix ending in `*`. Default: any.
    #[serde(default)]
    pub refs: Vec<String>,
    /// Allowed `workflow` names (same patterns). Default: any.
    #[serde(default)]
    pub workflows: Vec<String>,
    /// Allowed `job_workflow_ref`s (GitHub). Default: not checked.
    #[serde(default)]
    pub job_workflow_refs: Vec<String>,
}

/// `[repositories.hosts.<name>]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    /// Group names a rollout wave can select with `tag:NAME`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// `pull` (an agent, the default) or `push` (over SSH, docs/push.md).
    pub delivery: Option<String>,
    /// push: `user@host[:port]`.
    pub ssh_address: Option<String>,
    /// push: the host's public key, `type base64`.
    pub ssh_host_key: Option<String>,
    /// push: the file holding berth's private key for this host.
    pub ssh_key_file: Option<PathBuf>,
    /// push: seconds the host waits for the confirmation (10–3600, default 120).
    pub confirm_timeout_secs: Option<u64>,
    /// When the server hands this host a newer generation: `[DAYS ]HH:MM-HH:MM` entries in
    /// `time_zone`. Wins over `[[repositories.windows]]`.
    pub activation_windows: Option<Vec<String>>,
    /// The IANA time zone of `activation_windows`. Default UTC.
    pub time_zone: Option<String>,
}

/// `[[repositories.windows]]`: activation windows for a group of hosts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWindowGroup {
    /// `tag:NAME`, name patterns (`web-*`) or names, as in rollout waves.
    pub hosts: Vec<String>,
    /// `[DAYS ]HH:MM-HH:MM` entries.
    pub activation_windows: Vec<String>,
    /// The IANA time zone they are read in. Default UTC.
    pub time_zone: Option<String>,
}

/// `[repositories.rollout]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// The waves, in order: `{ hosts = ["tag:canary", "web*"] }`, `{ percent = 25 }`,
    /// `{ rest = true }`. Hosts no wave takes form a last wave.
    pub waves: Vec<RawWave>,
    /// Seconds to wait after a wave confirmed before releasing the next. Default 0.
    pub soak_secs: Option<u64>,
    /// Seconds without a poll or report after which a host of a wave counts as offline.
    /// Default 600.
    pub offline_after_secs: Option<u64>,
    /// What an offline host does to its wave: `"block"` (default: the wave waits) or `"skip"`.
    pub offline: Option<String>,
    /// What a newer commit does to an unfinished rollout: `"replace"` (default) or `"queue"`.
    pub supersede: Option<String>,
}

/// One wave: exactly one of its keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWave {
    /// Host names, `*` patterns, or `tag:NAME`.
    pub hosts: Option<Vec<String>>,
    /// A percentage of the rollout's hosts (1–100, rounded up).
    pub percent: Option<i64>,
    /// `true`: every host not taken by an earlier wave (the last wave only).
    pub rest: Option<bool>,
}

/// How builds run.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Hosts of one build built at once.
    pub parallel_hosts: usize,
    /// Per-host build timeout.
    pub timeout: std::time::Duration,
    /// Builds at once.
    pub concurrent_builds: usize,
    /// Heartbeat staleness.
    pub stale_after: std::time::Duration,
    /// The builder's Nix store: None for the machine's own, else a chroot store directory.
    pub store: Option<PathBuf>,
}

/// A validated repository.
#[derive(Debug, Clone)]
pub struct Repository {
    /// Name.
    pub name: String,
    /// git URL.
    pub url: String,
    /// Deploy branch.
    pub deploy_branch: String,
    /// Test-branch prefix.
    pub test_branch_prefix: String,
    /// Whether deploying needs a trusted signature.
    pub require_signed_commits: bool,
    /// On which commits.
    pub signed_commits: SignedCommits,
    /// The trusted start of the history, if any.
    pub trusted_since: Option<String>,
    /// SSH allowed signers.
    pub allowed_signers_file: Option<PathBuf>,
    /// GnuPG home.
    pub gpg_home: Option<PathBuf>,
    /// GPG minimum trust.
    pub gpg_min_trust_level: String,
    /// Refuse rewinds of the deploy branch.
    pub require_fast_forward: bool,
    /// The webhook secret, read at start-up (never logged).
    pub webhook_secret: Option<Secret>,
    /// The forge its commit statuses go to.
    pub forge: Option<ForgeConfig>,
    /// Each configured host's tags.
    pub tags: BTreeMap<String, Vec<String>>,
    /// The hosts berth pushes to (`delivery = "push"`), by name.
    pub push: BTreeMap<String, PushTarget>,
    /// When hosts may be handed a newer generation.
    pub windows: crate::deploy::windows::WindowPolicy,
    /// Staged rollouts of the deploy branch, if configured.
    pub rollout: Option<Policy>,
    /// Which CI ID tokens may submit its builds, if any.
    pub oidc: Option<crate::oidc::OidcPolicy>,
}

/// Secret bytes whose `Debug` prints nothing.
#[derive(Clone)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// `[cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    /// `Priority:` in nix-cache-info (lower is preferred; cache.nixos.org is 40). Default 30.
    pub priority: Option<u32>,
    /// `WantMassQuery:` in nix-cache-info. Default true.
    pub want_mass_query: Option<bool>,
    /// Require a `read` (or stronger) token for every cache read. Default false.
    pub require_read_token: Option<bool>,
    /// zstd level for NARs the server compresses itself (builds). Default 3.
    pub compression_level: Option<i32>,
    /// How NARs are served: `"stream"` (default: through berth), `"presigned"` (a redirect
    /// to a presigned URL of the S3 bucket), or a base URL (`https://cdn.example.org/cache`:
    /// a redirect to `<base>/nar/<file>`, e.g. a CDN in front of the bucket).
    pub nar_redirect: Option<String>,
    /// How long a presigned NAR URL stays valid, in seconds. Default 600.
    pub presigned_url_ttl_secs: Option<u64>,
    /// MiB one upload's decompressor may use (xz memlimit; zstd windows up to the largest
    /// power of two that leaves 1 MiB of it). Default 32, at least 16.
    pub max_decoder_memory_mib: Option<u32>,
    /// MiB all uploads' decompressors may use together; further uploads wait. Default 64,
    /// at least `max_decoder_memory_mib`.
    pub decoder_memory_budget_mib: Option<u32>,
}

/// Settings of the binary-cache protocol.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// nix-cache-info `Priority`.
    pub priority: u32,
    /// nix-cache-info `WantMassQuery`.
    pub want_mass_query: bool,
    /// Whether reads need a token.
    pub require_read_token: bool,
    /// zstd level.
    pub compression_level: i32,
    /// Where NAR downloads are redirected; `None`: berth streams the bytes.
    pub nar_redirect: Option<NarRedirect>,
    /// MiB one upload's decompressor may use.
    pub max_decoder_memory_mib: u32,
    /// MiB all uploads' decompressors may use together.
    pub decoder_memory_budget_mib: u32,
}

/// Where NAR downloads are redirected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarRedirect {
    /// A redirect to a presigned URL of the bucket, valid this long.
    Presigned(std::time::Duration),
    /// A redirect to `<base>/nar/<file>` (a CDN or a public bucket).
    BaseUrl(String),
}

/// Where the signing key comes from.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// The file.
    pub path: PathBuf,
    /// Generate it (with this name) when missing; only for the default location.
    pub generate_as: Option<String>,
}

impl KeySource {
    /// An explicitly configured file (never generated), or the default one (generated as
    /// `name` when missing).
    fn new(configured: Option<PathBuf>, default: PathBuf, name: String) -> Self {
        match configured {
            Some(path) => Self { path: absolute(path), generate_as: None },
            None => Self { path: default, generate_as: Some(name) },
        }
    }
}

/// `[deploy]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    /// Seconds after a host's last manifest request or report before `berth hosts` shows it
    /// `offline`. Default 120 (an agent asks at least every 30 s while the server is up).
    pub offline_after_secs: Option<u64>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Storage URL.
    pub storage: String,
    /// Database URL.
    pub database: String,
    /// Signing key.
    pub signing_key: KeySource,
    /// Deploy (manifest) key.
    pub deploy_key: KeySource,
    /// Extra trusted keys.
    pub previous_public_keys: Vec<PublicKey>,
    /// Whether `/metrics` needs no token.
    pub metrics_public: bool,
    /// Connection limits.
    pub server: ServerConfig,
    /// Cache protocol settings.
    pub cache: CacheConfig,
    /// Builder settings.
    pub builder: BuilderConfig,
    /// Repositories, by name.
    pub repositories: Vec<Repository>,
    /// The retention policy.
    pub retention: crate::gc::Policy,
    /// How often collections run by themselves.
    pub gc_schedule: Option<std::time::Duration>,
    /// Seconds without a poll or report after which a host is shown `offline`.
    pub offline_after_secs: i64,
    /// The server's URL for links, without a trailing slash (`None`: `http://` and the
    /// address it listens on).
    pub public_url: Option<String>,
    /// Outbound webhooks.
    pub notify: Vec<NotifyConfig>,
    /// Deploy key ages and the `key_expiring` warning.
    pub keys: KeysPolicy,
}

impl Config {
    /// The repository called `name`.
    pub fn repository(&self, name: &str) -> Option<&Repository> {
        self.repositories.iter().find(|r| r.name == name)
    }
}

/// Command-line values that override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--storage`.
    pub storage: Option<String>,
    /// `--database`.
    pub database: Option<String>,
    /// `--signing-key-file`.
    pub signing_key_file: Option<PathBuf>,
    /// `--deploy-key-file`.
    pub deploy_key_file: Option<PathBuf>,
}

impl RawConfig {
    /// Reads and parses a TOML file (unknown keys are errors).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// Applies command-line overrides and validates everything.
    pub fn validate(mut self, o: Overrides) -> Result<Config, ConfigError> {
        self.listen = o.listen.or(self.listen);
        self.data_dir = o.data_dir.or(self.data_dir);
        self.storage = o.storage.or(self.storage);
        self.database = o.database.or(self.database);
        self.signing_key_file = o.signing_key_file.or(self.signing_key_file);
        self.deploy_key_file = o.deploy_key_file.or(self.deploy_key_file);
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };

        let listen = self.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen.parse().map_err(|e| invalid("listen", format!("{listen:?}: {e}")))?;
        let data_dir = absolute(self.data_dir.unwrap_or_else(default_data_dir));
        let storage = self.storage.unwrap_or_else(|| format!("file://{}", data_dir.join("cache").display()));
        crate::store::StoreUrl::parse(&storage)
            .map_err(|e| invalid("storage", format!("{e}; accepted: {}", crate::store::ACCEPTED_FORMS)))?;
        let database = self.database.unwrap_or_else(|| format!("sqlite://{}", data_dir.join("berth.sqlite").display()));
        if !(database.starts_with("sqlite:")
            || database.starts_with("postgres:")
            || database.starts_with("postgresql:"))
        {
            return Err(invalid("database", "expected sqlite:///file or postgres://…".into()));
        }
        let signing_key = KeySource::new(
            self.signing_key_file,
            data_dir.join("signing-key"),
            self.signing_key_name.unwrap_or_else(|| format!("{}-1", hostname())),
        );
        let deploy_key =
            KeySource::new(self.deploy_key_file, data_dir.join("deploy-key"), format!("{}-deploy-1", hostname()));
        let previous_public_keys = self
            .previous_public_keys
            .iter()
            .map(|k| PublicKey::parse(k).map_err(|e| invalid("previous_public_keys", e.to_string())))
            .collect::<Result<_, _>>()?;
        let level = self.cache.compression_level.unwrap_or(3);
        if !(1..=19).contains(&level) {
            return Err(invalid("cache.compression_level", format!("{level} is outside 1..=19")));
        }
        let max_decoder_memory_mib = decoder_limit(&self.cache)?;
        let cache = CacheConfig {
            priority: self.cache.priority.unwrap_or(30),
            want_mass_query: self.cache.want_mass_query.unwrap_or(true),
            require_read_token: self.cache.require_read_token.unwrap_or(false),
            compression_level: level,
            nar_redirect: nar_redirect(&self.cache, &storage)?,
            max_decoder_memory_mib,
            decoder_memory_budget_mib: decoder_budget(&self.cache, max_decoder_memory_mib)?,
        };
        let metrics_public = self.metrics_public.unwrap_or(!cache.require_read_token);
        let server = self.server.validate()?;
        let builder = BuilderConfig {
            parallel_hosts: positive(
                "builder.parallel_hosts",
                self.builder.parallel_hosts.unwrap_or_else(machine_parallel_hosts),
            )?,
            timeout: std::time::Duration::from_secs(self.builder.timeout_secs.unwrap_or(7200).max(1)),
            // 0: a replica that only serves (others build).
            concurrent_builds: self.builder.concurrent_builds.unwrap_or(1),
            stale_after: std::time::Duration::from_secs(self.builder.stale_after_secs.unwrap_or(60).max(3)),
            store: match self.builder.store {
                Some(dir) if !dir.is_absolute() || dir.to_str().is_none() => {
                    return Err(invalid("builder.store", format!("{} is not an absolute UTF-8 path", dir.display())))
                }
                other => other,
            },
        };
        let mut repositories: Vec<Repository> = Vec::new();
        for raw in self.repositories {
            let repo = validate_repository(raw)?;
            if repositories.iter().any(|r| r.name == repo.name) {
                return Err(invalid("repositories.name", format!("{:?} is declared twice", repo.name)));
            }
            repositories.push(repo);
        }
        if self.retention.keep_last == Some(0) || self.retention.keep_last_per_host.values().any(|n| *n == 0) {
            return Err(invalid(
                "retention.keep_last",
                "must be at least 1: a host always keeps its newest generation".into(),
            ));
        }
        if let Some(bad) = self.retention.keep_last_per_host.keys().find(|h| !crate::auth::valid_host_name(h)) {
            return Err(invalid("retention.keep_last_per_host", format!("{bad:?} is not a host name")));
        }
        let retention = crate::gc::Policy {
            keep_last: self.retention.keep_last.unwrap_or(5),
            keep_last_per_host: self.retention.keep_last_per_host,
            keep_newer_than: self.retention.keep_newer_than_days.map(|d| d as i64 * 86_400),
            grace_period: self.retention.grace_period_secs.unwrap_or(3600) as i64,
        };
        let gc_schedule = self.retention.schedule_secs.map(|s| std::time::Duration::from_secs(s.max(60)));
        let public_url = self.public_url.as_deref().map(public_url).transpose()?;
        let notify = self.notify.into_iter().map(RawNotify::validate).collect::<Result<_, _>>()?;
        Ok(Config {
            listen,
            data_dir,
            storage,
            database,
            signing_key,
            deploy_key,
            previous_public_keys,
            metrics_public,
            server,
            cache,
            builder,
            repositories,
            retention,
            gc_schedule,
            offline_after_secs: match self.deploy.offline_after_secs.unwrap_or(120) {
                0 => return Err(invalid("deploy.offline_after_secs", "must be at least 1".into())),
                secs => secs.min(i64::MAX as u64) as i64,
            },
            public_url,
            notify,
            keys: self.keys.validate()?,
        })
    }
}

/// The configured public URL, checked: http(s), no query, fragment or credentials.
fn public_url(text: &str) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { key: "public_url", reason };
    let url = url::Url::parse(text).map_err(|e| invalid(format!("{text:?}: {e}")))?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return Err(invalid(format!("{text:?}: an http(s) URL with a host")));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(format!("{text:?}: no query, fragment or credentials")));
    }
    Ok(text.trim_end_matches('/').to_owned())
}

fn nar_redirect(cache: &RawCache, storage: &str) -> Result<Option<NarRedirect>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid { key: "cache.nar_redirect", reason };
    let ttl = std::time::Duration::from_secs(cache.presigned_url_ttl_secs.unwrap_or(600).clamp(1, 7 * 86_400));
    match cache.nar_redirect.as_deref() {
        None | Some("stream") => Ok(None),
        Some("presigned") if storage.starts_with("s3://") => Ok(Some(NarRedirect::Presigned(ttl))),
        Some("presigned") => Err(invalid("\"presigned\" needs an s3:// storage".into())),
        Some(base) if base.starts_with("https://") || base.starts_with("http://") => {
            if base.contains(['?', '#']) || base.chars().any(char::is_whitespace) {
                return Err(invalid(format!("{base:?}: a base URL has no query, fragment or spaces")));
            }
            Ok(Some(NarRedirect::BaseUrl(base.trim_end_matches('/').to_owned())))
        }
        Some(other) => Err(invalid(format!("{other:?}: use \"stream\", \"presigned\" or an https:// base URL"))),
    }
}

/// Below 16 MiB, zstd level 19 (an 8 MiB window) and xz's default preset (an 8 MiB
/// dictionary) would be refused: what Nix and `berth push` send must always fit.
fn decoder_limit(cache: &RawCache) -> Result<u32, ConfigError> {
    match cache.max_decoder_memory_mib.unwrap_or(32) {
        mib @ 16..=4096 => Ok(mib),
        other => Err(ConfigError::Invalid {
            key: "cache.max_decoder_memory_mib",
            reason: format!("{other} is outside 16..=4096 (xz -6 and zstd -19 need 16)"),
        }),
    }
}

/// Two decoders at the default limit, with the server's own ~20 MiB, stay under 100 MiB
/// whatever they are sent; uploads are charged what they declare, so honest ones (an xz
/// -6 upload: 9 MiB, zstd -3: 3 MiB) still run many at once.
const DEFAULT_DECODER_BUDGET_MIB: u32 = 64;

fn decoder_budget(raw: &RawCache, per_decoder: u32) -> Result<u32, ConfigError> {
    let budget = raw.decoder_memory_budget_mib.unwrap_or(DEFAULT_DECODER_BUDGET_MIB.max(per_decoder));
    if budget < per_decoder {
        return Err(ConfigError::Invalid {
            key: "cache.decoder_memory_budget_mib",
            reason: format!("{budget} is below max_decoder_memory_mib ({per_decoder})"),
        });
    }
    Ok(budget)
}

/// [`crate::build::capacity::default_parallel_hosts`] of this machine: its available
/// memory (within this process's cgroup v2 limit) and its cores.
fn machine_parallel_hosts() -> usize {
    use crate::build::capacity;
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| capacity::mem_available(&m));
    let limit = std::fs::read_to_string("/proc/self/cgroup").ok().and_then(|c| {
        let dir = std::path::Path::new("/sys/fs/cgroup").join(capacity::cgroup_path(&c)?);
        capacity::cgroup_limit(&std::fs::read_to_string(dir.join("memory.max")).ok()?)
    });
    let memory = match (available, limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, l) => a.or(l),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    capacity::default_parallel_hosts(memory, cores)
}

fn positive(key: &'static str, n: usize) -> Result<usize, ConfigError> {
    if n == 0 {
        return Err(ConfigError::Invalid { key, reason: "must be at least 1".into() });
    }
    Ok(n)
}

/// Repository names appear in URLs, file names and API bodies.
pub fn valid_repository_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn validate_repository(raw: RawRepository) -> Result<Repository, ConfigError> {
    let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
    if !valid_repository_name(&raw.name) {
        return Err(invalid("repositories.name", format!("{:?}: use letters, digits, '-', '_', '.'", raw.name)));
    }
    let require_signed_commits = raw.require_signed_commits.unwrap_or(true);
    if require_signed_commits && raw.allowed_signers_file.is_none() && raw.gpg_home.is_none() {
        return Err(invalid(
            "repositories.require_signed_commits",
            format!("repository {:?} requires signed commits but names no allowed_signers_file or gpg_home", raw.name),
        ));
    }
    let signed_commits = match raw.signed_commits.as_deref() {
        None => SignedCommits::default(),
        Some(mode) => SignedCommits::parse(mode)
            .ok_or_else(|| invalid("repositories.signed_commits", format!("{mode:?}: expected \"all\" or \"tip\"")))?,
    };
    if let Some(commit) = raw.trusted_since.as_deref().filter(|c| !crate::build::model::valid_commit(c)) {
        return Err(invalid(
            "repositories.trusted_since",
            format!("{commit:?}: a full 40-character lowercase hex hash"),
        ));
    }
    for file in raw.allowed_signers_file.iter().chain(raw.gpg_home.iter()) {
        if !file.exists() {
            return Err(invalid("repositories.allowed_signers_file", format!("{} does not exist", file.display())));
        }
    }
    let webhook_secret = match &raw.webhook_secret_file {
        None => None,
        Some(path) => {
            let text = std::fs::read(path)
                .map_err(|e| invalid("repositories.webhook_secret_file", format!("{}: {e}", path.display())))?;
            let trimmed = text.trim_ascii().to_vec();
            if trimmed.is_empty() {
                return Err(invalid("repositories.webhook_secret_file", format!("{} is empty", path.display())));
            }
            Some(Secret(trimmed))
        }
    };
    let forge = raw.forge.map(|f| f.validate(&raw.url)).transpose()?;
    let tags = host_tags(&raw.hosts)?;
    let mut push = BTreeMap::new();
    for (name, host) in &raw.hosts {
        if let Some(target) = push::push_target(name, host)? {
            push.insert(name.clone(), target);
        }
    }
    let windows = windows::window_policy(&raw.hosts, raw.windows)?;
    let rollout = raw.rollout.map(|r| rollout_policy(r, &tags)).transpose()?;
    let oidc = raw.oidc.map(oidc_policy).transpose()?;
    Ok(Repository {
        tags,
        push,
        windows,
        rollout,
        oidc,
        name: raw.name,
        url: raw.url,
        deploy_branch: raw.deploy_branch.unwrap_or_else(|| "main".into()),
        test_branch_prefix: raw.test_branch_prefix.unwrap_or_else(|| "test-".into()),
        require_signed_commits,
        signed_commits,
        trusted_since: raw.trusted_since,
        allowed_signers_file: raw.allowed_signers_file,
        gpg_home: raw.gpg_home,
        gpg_min_trust_level: raw.gpg_min_trust_level.unwrap_or_else(|| "fully".into()),
        require_fast_forward: raw.require_fast_forward.unwrap_or(false),
        webhook_secret,
        forge,
    })
}

fn oidc_policy(raw: RawOidc) -> Result<crate::oidc::OidcPolicy, ConfigError> {
    let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
    if !crate::oidc::jwks::allowed_url(&raw.issuer) {
        return Err(invalid(
            "repositories.oidc.issuer",
            format!("{:?}: use an https URL (http only on loopback)", raw.issuer),
        ));
    }
    if raw.audience.is_empty() || raw.repository.is_empty() {
        return Err(invalid("repositories.oidc", "audience and repository must not be empty".into()));
    }
    Ok(crate::oidc::OidcPolicy {
        issuer: raw.issuer,
        audience: raw.audience,
        repository: raw.repository,
        refs: raw.refs,
        workflows: raw.workflows,
        job_workflow_refs: raw.job_workflow_refs,
    })
}

fn host_tags(hosts: &BTreeMap<String, RawHost>) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
    for (name, host) in hosts {
        if !crate::auth::valid_host_name(name) {
            return Err(invalid("repositories.hosts", format!("{name:?} is not a host name")));
        }
        if let Some(bad) = host.tags.iter().find(|t| t.is_empty() || t.contains(char::is_whitespace)) {
            return Err(invalid("repositories.hosts.tags", format!("host {name}: {bad:?} is not a tag")));
        }
    }
    Ok(hosts.iter().map(|(name, h)| (name.clone(), h.tags.clone())).collect())
}

fn rollout_policy(raw: RawRollout, tags: &BTreeMap<String, Vec<String>>) -> Result<Policy, ConfigError> {
    let invalid = |key, reason: String| ConfigError::Invalid { key, reason };
    if raw.waves.is_empty() {
        return Err(invalid("repositories.rollout.waves", "name at least one wave".into()));
    }
    let last = raw.waves.len() - 1;
    let mut waves = Vec::new();
    for (i, w) in raw.waves.into_iter().enumerate() {
        let n = i + 1;
        let spec = match (w.hosts, w.percent, w.rest) {
            (Some(hosts), None, None) => {
                if hosts.is_empty() {
                    return Err(invalid("repositories.rollout.waves", format!("wave {n} is empty: `hosts = []`")));
                }
                let selectors: Vec<Selector> = hosts.iter().map(|h| Selector::parse(h)).collect();
                for s in &selectors {
                    match s {
                        Selector::Tag(tag) if !tags.values().any(|t| t.contains(tag)) => {
                            return Err(invalid(
                                "repositories.rollout.waves",
                                format!(
                                    "wave {n}: no host has tag {tag:?} (tags come from [repositories.hosts.<name>])"
                                ),
                            ))
                        }
                        Selector::Pattern(p) if p.is_empty() || !crate::auth::valid_host_name(&p.replace('*', "x")) => {
                            return Err(invalid(
                                "repositories.rollout.waves",
                                format!("wave {n}: {p:?} is not a host name or pattern"),
                            ))
                        }
                        _ => {}
                    }
                }
                WaveSpec::Hosts(selectors)
            }
            (None, Some(p), None) => match u8::try_from(p) {
                Ok(p) if (1..=100).contains(&p) => WaveSpec::Percent(p),
                _ => {
                    return Err(invalid(
                        "repositories.rollout.waves",
                        format!("wave {n}: percent {p} is outside 1..=100"),
                    ))
                }
            },
            (None, None, Some(true)) if i == last => WaveSpec::Rest,
            (None, None, Some(true)) => {
                return Err(invalid(
                    "repositories.rollout.waves",
                    format!("wave {n}: `rest = true` must be the last wave"),
                ))
            }
            _ => {
                return Err(invalid(
                    "repositories.rollout.waves",
                    format!("wave {n}: give exactly one of `hosts = [...]`, `percent = N` or `rest = true`"),
                ))
            }
        };
        waves.push(spec);
    }
    let offline = match raw.offline.as_deref() {
        None | Some("block") => Offline::Block,
        Some("skip") => Offline::Skip,
        Some(other) => {
            return Err(invalid("repositories.rollout.offline", format!("{other:?}: expected \"skip\" or \"block\"")))
        }
    };
    let supersede = match raw.supersede.as_deref() {
        None | Some("replace") => Supersede::Replace,
        Some("queue") => Supersede::Queue,
        Some(other) => {
            return Err(invalid(
                "repositories.rollout.supersede",
                format!("{other:?}: expected \"queue\" or \"replace\""),
            ))
        }
    };
    let secs = |v: Option<u64>, default: u64| v.unwrap_or(default).min(i64::MAX as u64) as i64;
    let offline_after_secs = secs(raw.offline_after_secs, 600);
    if offline_after_secs == 0 {
        return Err(invalid("repositories.rollout.offline_after_secs", "must be at least 1".into()));
    }
    Ok(Policy { waves, soak_secs: secs(raw.soak_secs, 0), offline_after_secs, offline, supersede })
}

/// Loads `file` (or nothing: the embedded default) and applies the overrides.
pub fn load(file: Option<&Path>, overrides: Overrides) -> Result<Config, ConfigError> {
    let raw = match file {
        Some(path) => RawConfig::load(path)?,
        None => RawConfig::default(),
    };
    raw.validate(overrides)
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// `$XDG_DATA_HOME/berth`, else `~/.local/share/berth`, else `./berth-data`.
fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("berth");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/berth"),
        None => PathBuf::from("berth-data"),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(':') && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "berth".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: "t".into(), message: e.to_string() })?;
        raw.validate(Overrides::default())
    }

    #[test]
    fn a_pushed_host_is_checked_and_kept() {
        let repo = "[[repositories]]\nname = \"a\"\nurl = \"x\"\nrequire_signed_commits = false\n[repositories.hosts.box]\ndelivery = \"push\"\n";
        let keys = "ssh_address = \"root@box.example.org:2222\"\nssh_host_key = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\"\nssh_key_file = \"/run/push-key\"\n";
        let config = parse(&format!("{repo}{keys}")).unwrap();
        let target = &config.repositories[0].push["box"];
        assert_eq!((target.destination.as_str(), target.port), ("root@box.example.org", 2222));
        let bad = parse(&format!("{repo}ssh_address = \"-oProxyCommand=x\"\n")).unwrap_err().to_string();
        assert!(bad.contains("ssh_address"), "{bad}");
        let pulled = parse(&repo.replace("delivery = \"push\"", "delivery = \"pull\"")).unwrap();
        assert!(pulled.repositories[0].push.is_empty());
    }

    #[test]
    fn defaults_live_under_the_data_dir() {
        let c = parse("data_dir = \"/srv/berth\"").unwrap();
        assert_eq!(c.storage, "file:///srv/berth/cache");
        assert_eq!(c.database, "sqlite:///srv/berth/berth.sqlite");
        assert_eq!(c.signing_key.path, PathBuf::from("/srv/berth/signing-key"));
        assert!(c.signing_key.generate_as.is_some());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn connection_limits_have_safe_defaults_and_bounds() {
        let c = parse("").unwrap();
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.server.header_read_timeout, std::time::Duration::from_secs(30));
        assert_eq!(c.server.max_connections, 4096);
        let c = parse("[server]\nidle_timeout_secs = 65\nmax_connections = 10").unwrap();
        assert_eq!((c.server.idle_timeout.as_secs(), c.server.max_connections), (65, 10));
        for (text, key) in [
            ("[server]\nidle_timeout_secs = 64", "server.idle_timeout_secs"),
            ("[server]\nheader_read_timeout_secs = 0", "server.header_read_timeout_secs"),
            ("[server]\nmax_connections = 0", "server.max_connections"),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let err = parse("listn = \"x\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `listn`"), "{err}");
        assert!(parse("[cache]\nprioriti = 1").is_err());
        assert!(parse("listen = \"nowhere\"").unwrap_err().to_string().contains("listen"));
        assert!(parse("storage = \"ftp://x\"").is_err());
        assert!(parse("[cache]\ncompression_level = 99").is_err());
        assert!(parse("previous_public_keys = [\"nope\"]").is_err());
    }

    #[test]
    fn metrics_follow_the_cache_unless_configured() {
        assert!(parse("").unwrap().metrics_public);
        assert!(!parse("[cache]\nrequire_read_token = true").unwrap().metrics_public);
        assert!(parse("metrics_public = true\n[cache]\nrequire_read_token = true").unwrap().metrics_public);
        assert!(!parse("metrics_public = false").unwrap().metrics_public);
    }

    #[test]
    fn decoder_memory_is_bounded_and_consistent() {
        let c = parse("").unwrap().cache;
        assert_eq!((c.max_decoder_memory_mib, c.decoder_memory_budget_mib), (32, 64));
        let c = parse("[cache]\nmax_decoder_memory_mib = 256").unwrap().cache;
        assert_eq!((c.max_decoder_memory_mib, c.decoder_memory_budget_mib), (256, 256));
        assert!(parse("[cache]\nmax_decoder_memory_mib = 8")
            .unwrap_err()
            .to_string()
            .contains("max_decoder_memory_mib"));
        let err = parse("[cache]\nmax_decoder_memory_mib = 64\ndecoder_memory_budget_mib = 32").unwrap_err();
        assert!(err.to_string().contains("decoder_memory_budget_mib"), "{err}");
    }

    #[test]
    fn nar_redirects_are_checked_against_the_storage() {
        assert_eq!(parse("").unwrap().cache.nar_redirect, None);
        let err = parse("[cache]\nnar_redirect = \"presigned\"").unwrap_err().to_string();
        assert!(err.contains("needs an s3:// storage"), "{err}");
        let s3 = "storage = \"s3://bucket/cache?region=eu-west-1\"\n[cache]\n";
        let c = parse(&format!("{s3}nar_redirect = \"presigned\"\npresigned_url_ttl_secs = 60")).unwrap();
        assert_eq!(c.cache.nar_redirect, Some(NarRedirect::Presigned(std::time::Duration::from_secs(60))));
        let c = parse("[cache]\nnar_redirect = \"https://cdn.example.org/cache/\"").unwrap();
        assert_eq!(c.cache.nar_redirect, Some(NarRedirect::BaseUrl("https://cdn.example.org/cache".into())));
        assert!(parse("[cache]\nnar_redirect = \"https://cdn.example.org/?x=1\"").is_err());
        assert!(parse("[cache]\nnar_redirect = \"sometimes\"").is_err());
    }

    #[test]
    fn an_explicit_key_file_is_never_generated() {
        let c = parse("signing_key_file = \"/run/credentials/berth/key\"").unwrap();
        assert!(c.signing_key.generate_as.is_none());
    }

    #[test]
    fn repositories_are_checked() {
        let c = parse(
            "[[repositories]]\nname = \"fleet\"\nurl = \"git+file:///srv/fleet\"\nrequire_signed_commits = false",
        )
        .unwrap();
        let repo = c.repository("fleet").unwrap();
        assert_eq!((repo.deploy_branch.as_str(), repo.test_branch_prefix.as_str()), ("main", "test-"));
        let unsigned = parse("[[repositories]]\nname = \"fleet\"\nurl = \"x\"").unwrap_err().to_string();
        assert!(unsigned.contains("requires signed commits"), "{unsigned}");
        assert!(parse("[[repositories]]\nname = \"../x\"\nurl = \"x\"\nrequire_signed_commits = false").is_err());
        let twice = "[[repositories]]\nname = \"a\"\nurl = \"x\"\nrequire_signed_commits = false\n";
        assert!(parse(&format!("{twice}{twice}")).unwrap_err().to_string().contains("twice"));
        assert!(parse("[builder]\nparallel_hosts = 0").is_err());
        assert_eq!(repo.signed_commits, SignedCommits::All);
        let unsigned = "[[repositories]]\nname = \"a\"\nurl = \"x\"\nrequire_signed_commits = false\n";
        let c = parse(&format!("{unsigned}signed_commits = \"tip\"\ntrusted_since = \"{}\"", "ab".repeat(20))).unwrap();
        let repo = c.repository("a").unwrap();
        assert_eq!(
            (repo.signed_commits, repo.trusted_since.as_deref()),
            (SignedCommits::Tip, Some("ab".repeat(20).as_str()))
        );
        let err = parse(&format!("{unsigned}signed_commits = \"some\"")).unwrap_err().to_string();
        assert!(err.contains("signed_commits"), "{err}");
        let err = parse(&format!("{unsigned}trusted_since = \"HEAD\"")).unwrap_err().to_string();
        assert!(err.contains("trusted_since"), "{err}");
    }

    #[test]
    fn rollout_policies_are_checked() {
        let repo = "[[repositories]]\nname = \"a\"\nurl = \"x\"\nrequire_signed_commits = false\n[repositories.hosts.alpha]\ntags = [\"canary\"]\n";
        let with = |rollout: &str| parse(&format!("{repo}[repositories.rollout]\n{rollout}"));
        let c = with("waves = [{ hosts = [\"tag:canary\"] }, { percent = 25 }, { rest = true }]\nsoak_secs = 5\noffline = \"skip\"\nsupersede = \"queue\"").unwrap();
        let policy = c.repository("a").unwrap().rollout.clone().unwrap();
        assert_eq!(
            policy.waves,
            [WaveSpec::Hosts(vec![Selector::Tag("canary".into())]), WaveSpec::Percent(25), WaveSpec::Rest]
        );
        assert_eq!(
            (policy.soak_secs, policy.offline_after_secs, policy.offline, policy.supersede),
            (5, 600, Offline::Skip, Supersede::Queue)
        );
        assert!(parse(repo).unwrap().repository("a").unwrap().rollout.is_none());
        for (rollout, says) in [
            ("waves = []", "at least one wave"),
            ("waves = [{ hosts = [] }]", "wave 1 is empty"),
            ("waves = [{ percent = 0 }]", "percent 0 is outside 1..=100"),
            ("waves = [{ percent = 101 }]", "percent 101"),
            ("waves = [{ hosts = [\"tag:nope\"] }]", "no host has tag \"nope\""),
            ("waves = [{ rest = true }, { percent = 5 }]", "must be the last wave"),
            ("waves = [{ percent = 5, rest = true }]", "exactly one of"),
            ("waves = [{ hosts = [\"../x\"] }]", "not a host name"),
            ("waves = [{ rest = true }]\noffline = \"maybe\"", "offline"),
            ("waves = [{ rest = true }]\nsupersede = \"never\"", "supersede"),
        ] {
            let err = with(rollout).unwrap_err().to_string();
            assert!(err.contains(says), "{rollout}: {err}");
        }
        let unknown = with("waves = [{ rest = true }]\nspeed = 3").unwrap_err().to_string();
        assert!(unknown.contains("unknown field"), "{unknown}");
        let unknown = parse(&format!("{repo}role = \"web\"")).unwrap_err().to_string();
        assert!(unknown.contains("unknown field"), "{unknown}");
    }

    #[test]
    fn overrides_win() {
        let raw: RawConfig = toml::from_str("listen = \"127.0.0.1:1\"").unwrap();
        let o = Overrides { listen: Some("127.0.0.1:2".into()), ..Default::default() };
        assert_eq!(raw.validate(o).unwrap().listen.port(), 2);
    }
}
