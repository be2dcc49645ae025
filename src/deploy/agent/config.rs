//! The agent's options: command-line flags over an optional TOML file (unknown keys rejected),
//! validated once at start-up into [`AgentOptions`]. The host token is read from its file here,
//! so a missing token fails `berth agent` at once, and never travels in argv.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::window::RebootWindow;
use crate::config::ConfigError;
use crate::deploy::windows::{ActivationWindow, ActivationWindowError};
use crate::nixfmt::PublicKey;

/// The system profile NixOS boots from.
pub const DEFAULT_PROFILE: &str = "/nix/var/nix/profiles/system";
/// Where the agent keeps its state.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/berth-agent";

/// What the command line gave; `None`/`false` where a flag was absent. Flags win over the file.
#[derive(Debug, Clone, Default)]
pub struct AgentCli {
    /// `--config FILE`: a TOML file with the keys below (and more).
    pub config: Option<PathBuf>,
    /// `--server URL`.
    pub server: Option<String>,
    /// `--host NAME`.
    pub host: Option<String>,
    /// `--token-file PATH`.
    pub token_file: Option<PathBuf>,
    /// `--deploy-public-key NAME:BASE64`.
    pub deploy_public_key: Option<String>,
    /// `--profile PATH`.
    pub profile: Option<PathBuf>,
    /// `--store STORE`.
    pub store: Option<String>,
    /// `--state-dir DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--once`.
    pub once: bool,
}

/// The agent's TOML file as written. Every key is optional here; `server`, `host`,
/// `token_file` and `deploy_public_key` must come from the file or the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgentConfig {
    /// The berth server, `http(s)://host[:port]`.
    pub server: Option<String>,
    /// This host's name, as in the fleet flake's `nixosConfigurations`.
    pub host: Option<String>,
    /// File holding this host's API token (scope `host:<name>`).
    pub token_file: Option<PathBuf>,
    /// The deploy public key, `name:base64`, that manifests must be signed with.
    pub deploy_public_key: Option<String>,
    /// The system profile (logical path). Default `/nix/var/nix/profiles/system`.
    pub profile: Option<PathBuf>,
    /// A Nix store URI or chroot directory for every Nix command. Default: the system store.
    pub store: Option<String>,
    /// Where the agent's state lives. Default `/var/lib/berth-agent`.
    pub state_dir: Option<PathBuf>,
    /// `switch` (default), `boot` or `test`.
    pub activation: Option<Activation>,
    /// Commands that must exit 0 after the new system is running: argv lists, or tables
    /// with the argv as `command` and `retries`, `interval_secs`, `timeout_secs`.
    #[serde(default)]
    pub health_checks: Vec<RawHealthCheck>,
    /// Fail a switch that leaves `systemctl is-system-running` degraded. Default true.
    pub check_system_running: Option<bool>,
    /// Seconds the checks may take after the switch; the server must be reachable again
    /// within them. Default 60.
    pub health_timeout_secs: Option<u64>,
    /// Seconds one `switch-to-configuration` run may take. Default 600.
    pub activation_timeout_secs: Option<u64>,
    /// `never` (default) or `when-needed`.
    pub reboot: Option<RebootMode>,
    /// `HH:MM-HH:MM` (UTC) when `reboot = "when-needed"` may reboot. Default: any time.
    pub reboot_window: Option<String>,
    /// The reboot command. Default `["systemctl", "reboot"]`.
    pub reboot_command: Option<Vec<String>>,
    /// When new generations may be switched to: `[DAYS ]HH:MM-HH:MM` entries in `time_zone`
    /// (e.g. `["Mon-Fri 02:00-05:00"]`). Default: any time.
    pub activation_windows: Option<Vec<String>>,
    /// Run `switch-to-configuration dry-activate` before each switch and report the units it
    /// would stop, restart, reload and start. Default false.
    pub dry_activate: Option<bool>,
    /// The IANA time zone the activation windows are read in (`Europe/Berlin`). Default: the
    /// host's own (`/etc/localtime`, else `TZ`), UTC when it has none.
    pub time_zone: Option<String>,
}

/// How a new generation is activated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `switch-to-configuration test`, health checks, then the profile and `boot`.
    #[default]
    Switch,
    /// The profile and `switch-to-configuration boot` only: active at the next boot.
    Boot,
    /// `switch-to-configuration test` and the checks; the profile and bootloader are never
    /// touched, so a reboot returns to the profile's generation.
    Test,
}

impl Activation {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Switch => "switch",
            Self::Boot => "boot",
            Self::Test => "test",
        }
    }
}

/// The `reboot` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootMode {
    /// Only report `needs_reboot`.
    #[default]
    Never,
    /// Reboot (within the window) when the boot files changed.
    WhenNeeded,
}

/// When the agent reboots the host by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootPolicy {
    /// Never; `needs_reboot` is reported.
    Never,
    /// When the new generation needs it, inside `window` (any time when `None`).
    WhenNeeded {
        /// The daily window.
        window: Option<RebootWindow>,
    },
}

/// One `health_checks` entry as written: an argv list, or a table with options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RawHealthCheck {
    /// `["program", "arg", …]`: one attempt, bounded by `health_timeout_secs` only.
    Argv(Vec<String>),
    /// `{ command = [...], retries = 2, interval_secs = 5, timeout_secs = 10 }`.
    Table(RawHealthCheckTable),
}

/// A `health_checks` entry with its options.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheckTable {
    /// The argv.
    pub command: Vec<String>,
    /// Attempts after the first one that failed. Default 0.
    pub retries: Option<u32>,
    /// Seconds between attempts. Default 1.
    pub interval_secs: Option<u64>,
    /// Seconds one attempt may take before it is killed. Default: what is left of
    /// `health_timeout_secs`.
    pub timeout_secs: Option<u64>,
}

/// One health check command and how it is tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The argv; it passes when it exits 0.
    pub command: Vec<String>,
    /// Attempts after a failed one (so `retries + 1` at most).
    pub retries: u32,
    /// The pause between attempts.
    pub interval: Duration,
    /// How long one attempt may run before it is killed (never beyond the overall deadline).
    pub timeout: Option<Duration>,
}

impl HealthCheck {
    /// A check tried once.
    pub fn once(command: Vec<String>) -> Self {
        HealthCheck { command, retries: 0, interval: Duration::from_secs(1), timeout: None }
    }
}

/// The health checks after a `test` activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthOptions {
    /// Commands that must exit 0, in order.
    pub commands: Vec<HealthCheck>,
    /// Whether `systemctl is-system-running` must not be degraded.
    pub check_system_running: bool,
    /// How long the checks may take, and the server may stay unreachable, after the switch.
    pub timeout: Duration,
}

/// The host token; its `Debug` prints nothing.
#[derive(Clone)]
pub struct Token(pub(super) String);

impl Token {
    /// The secret, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(…)")
    }
}

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Server base URL without a trailing `/`.
    pub server: String,
    /// This host's name.
    pub host: String,
    /// The host token.
    pub token: Token,
    /// The key manifests must be signed with.
    pub deploy_key: PublicKey,
    /// The system profile, a logical path (re-rooted under a chroot `store`).
    pub profile: PathBuf,
    /// `--store` for every Nix command.
    pub store: Option<String>,
    /// The agent's state directory (absolute).
    pub state_dir: PathBuf,
    /// The activation mode.
    pub activation: Activation,
    /// The health checks.
    pub health: HealthOptions,
    /// Limit for one `switch-to-configuration` run.
    pub activation_timeout: Duration,
    /// The reboot policy.
    pub reboot: RebootPolicy,
    /// The reboot command (argv).
    pub reboot_command: Vec<String>,
    /// When new generations may be switched to (empty: any time).
    pub activation_windows: Vec<ActivationWindow>,
    /// Report what `dry-activate` says before each switch.
    pub dry_activate: bool,
    /// The time zone the windows are read in.
    pub time_zone: jiff::tz::TimeZone,
    /// Apply what is pending or new, then exit.
    pub once: bool,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, reason: reason.into() }
}

impl AgentOptions {
    /// Reads the file named by `--config` (if any), lays the flags over it and validates.
    pub fn load(cli: AgentCli) -> Result<Self, ConfigError> {
        let raw = match &cli.config {
            Some(path) => read_file(path)?,
            None => RawAgentConfig::default(),
        };
        Self::from_parts(cli, raw)
    }

    /// Validates `raw` with the flags of `cli` taking precedence.
    pub fn from_parts(cli: AgentCli, raw: RawAgentConfig) -> Result<Self, ConfigError> {
        let required = |key: &'static str, flag: &str| invalid(key, format!("required (flag --{flag} or key `{key}`)"));
        let server = cli.server.or(raw.server).ok_or_else(|| required("server", "server"))?;
        let host = cli.host.or(raw.host).ok_or_else(|| required("host", "host"))?;
        let token_file = cli.token_file.or(raw.token_file).ok_or_else(|| required("token_file", "token-file"))?;
        let key = cli.deploy_public_key.or(raw.deploy_public_key);
        let key = key.ok_or_else(|| required("deploy_public_key", "deploy-public-key"))?;

        if !crate::auth::valid_host_name(&host) {
            return Err(invalid("host", format!("{host:?}: use 1 to 63 letters, digits, '-' or '_'")));
        }
        let deploy_key = PublicKey::parse(key.trim()).map_err(|e| invalid("deploy_public_key", e.to_string()))?;
        let profile = cli.profile.or(raw.profile).unwrap_or_else(|| DEFAULT_PROFILE.into());
        if !profile.is_absolute() {
            return Err(invalid("profile", "must be an absolute path"));
        }
        let store = cli.store.or(raw.store);
        if store.as_deref().is_some_and(|s| s.trim().is_empty() || s.starts_with('-')) {
            return Err(invalid("store", "expected a Nix store URI or an absolute directory"));
        }
        let state_dir = cli.state_dir.or(raw.state_dir).unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        let state_dir = std::path::absolute(&state_dir).map_err(|e| invalid("state_dir", e.to_string()))?;
        Ok(Self {
            server: server_url(&server)?,
            token: read_token(&token_file)?,
            host,
            deploy_key,
            profile,
            store,
            state_dir,
            activation: raw.activation.unwrap_or_default(),
            health: health(raw.health_checks, raw.check_system_running, raw.health_timeout_secs)?,
            activation_timeout: seconds("activation_timeout_secs", raw.activation_timeout_secs, 600)?,
            reboot: reboot(raw.reboot.unwrap_or_default(), raw.reboot_window.as_deref())?,
            reboot_command: command(
                "reboot_command",
                raw.reboot_command.unwrap_or_else(|| vec!["systemctl".into(), "reboot".into()]),
            )?,
            activation_windows: activation_windows(raw.activation_windows.unwrap_or_default())?,
            dry_activate: raw.dry_activate.unwrap_or(false),
            time_zone: time_zone(raw.time_zone.as_deref())?,
            once: cli.once,
        })
    }
}

fn read_file(path: &Path) -> Result<RawAgentConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
}

fn server_url(server: &str) -> Result<String, ConfigError> {
    let server = server.trim().trim_end_matches('/');
    let scheme = server.strip_prefix("https://").or_else(|| server.strip_prefix("http://"));
    match scheme {
        Some(rest) if !rest.is_empty() && !rest.chars().any(|c| c.is_whitespace() || c == '?' || c == '#') => {
            Ok(server.to_owned())
        }
        _ => Err(invalid("server", format!("{server:?}: expected http(s)://host[:port]"))),
    }
}

fn read_token(path: &Path) -> Result<Token, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let token = text.trim();
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("token_file", format!("{} must hold one token on one line", path.display())));
    }
    Ok(Token(token.to_owned()))
}

fn health(
    commands: Vec<RawHealthCheck>,
    system_running: Option<bool>,
    timeout: Option<u64>,
) -> Result<HealthOptions, ConfigError> {
    let commands = commands.into_iter().map(health_check).collect::<Result<_, _>>()?;
    let timeout = seconds("health_timeout_secs", timeout, 60)?;
    Ok(HealthOptions { commands, check_system_running: system_running.unwrap_or(true), timeout })
}

fn health_check(raw: RawHealthCheck) -> Result<HealthCheck, ConfigError> {
    match raw {
        RawHealthCheck::Argv(argv) => Ok(HealthCheck::once(command("health_checks", argv)?)),
        RawHealthCheck::Table(t) => Ok(HealthCheck {
            command: command("health_checks", t.command)?,
            retries: t.retries.unwrap_or(0),
            interval: Duration::from_secs(t.interval_secs.unwrap_or(1)),
            timeout: t.timeout_secs.map(|secs| seconds("health_checks.timeout_secs", Some(secs), 1)).transpose()?,
        }),
    }
}

fn command(key: &'static str, argv: Vec<String>) -> Result<Vec<String>, ConfigError> {
    match argv.first() {
        Some(program) if !program.is_empty() => Ok(argv),
        _ => Err(invalid(key, "a command is a non-empty list: [\"program\", \"arg\", …]")),
    }
}

fn seconds(key: &'static str, value: Option<u64>, default: u64) -> Result<Duration, ConfigError> {
    match value.unwrap_or(default) {
        0 => Err(invalid(key, "must be at least 1")),
        secs => Ok(Duration::from_secs(secs)),
    }
}

fn activation_windows(windows: Vec<String>) -> Result<Vec<ActivationWindow>, ConfigError> {
    windows
        .iter()
        .map(|w| w.parse().map_err(|e: ActivationWindowError| invalid("activation_windows", e.to_string())))
        .collect()
}

fn time_zone(name: Option<&str>) -> Result<jiff::tz::TimeZone, ConfigError> {
    match name {
        Some(name) => jiff::tz::TimeZone::get(name)
            .map_err(|e| invalid("time_zone", format!("{name:?}: not a time zone this host knows ({e})"))),
        None => Ok(jiff::tz::TimeZone::system()),
    }
}

fn reboot(mode: RebootMode, window: Option<&str>) -> Result<RebootPolicy, ConfigError> {
    let window =
        window.map(|w| w.parse::<RebootWindow>().map_err(|e| invalid("reboot_window", e.to_string()))).transpose()?;
    match (mode, window) {
        (RebootMode::Never, Some(_)) => Err(invalid("reboot_window", "only meaningful with reboot = \"when-needed\"")),
        (RebootMode::Never, None) => Ok(RebootPolicy::Never),
        (RebootMode::WhenNeeded, window) => Ok(RebootPolicy::WhenNeeded { window }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "deploy-1:pA18roE3vLB11kd1pWBsS6jNaTxNsLEYBa3vFd+7R84=";

    fn cli(dir: &Path) -> AgentCli {
        let token_file = dir.join("token");
        std::fs::write(&token_file, "berth_host_secret\n").unwrap();
        AgentCli {
            server: Some("http://cache.example:8080/".into()),
            host: Some("web".into()),
            token_file: Some(token_file),
            deploy_public_key: Some(KEY.into()),
            ..Default::default()
        }
    }

    #[track_caller]
    fn check(toml: &str, expected_error: Option<&str>) -> Option<AgentOptions> {
        let dir = tempfile::tempdir().unwrap();
        let raw = toml::from_str(toml).map_err(|e| e.to_string());
        let result = raw.and_then(|raw| AgentOptions::from_parts(cli(dir.path()), raw).map_err(|e| e.to_string()));
        match (result, expected_error) {
            (Ok(options), None) => Some(options),
            (Err(e), Some(expected)) => {
                assert!(e.contains(expected), "{e:?} does not contain {expected:?}");
                None
            }
            (result, expected) => panic!("{toml}: got {result:?}, expected error {expected:?}"),
        }
    }

    #[test]
    fn defaults() {
        let options = check("", None).unwrap();
        assert_eq!(options.server, "http://cache.example:8080");
        assert_eq!(options.token.expose(), "berth_host_secret");
        assert!(!format!("{options:?}").contains("berth_host_secret"));
        assert_eq!(options.profile, Path::new(DEFAULT_PROFILE));
        assert_eq!(options.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!((options.activation, options.store), (Activation::Switch, None));
        let health = HealthOptions { commands: vec![], check_system_running: true, timeout: Duration::from_secs(60) };
        assert_eq!(options.health, health);
        assert_eq!(options.reboot, RebootPolicy::Never);
        assert_eq!(options.reboot_command, ["systemctl", "reboot"]);
    }

    #[test]
    fn file_keys() {
        let toml = r#"
            activation = "test"
            health_checks = [["curl", "-f", "http://localhost/"], ["true"]]
            check_system_running = false
            health_timeout_secs = 5
            reboot = "when-needed"
            reboot_window = "22:30-02:00"
            store = "/tmp/chroot"
        "#;
        let options = check(toml, None).unwrap();
        assert_eq!(options.activation, Activation::Test);
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let once = |a: &[&str]| HealthCheck::once(argv(a));
        assert_eq!(options.health.commands, [once(&["curl", "-f", "http://localhost/"]), once(&["true"])]);
        assert!(!options.health.check_system_running);
        assert_eq!(options.health.timeout, Duration::from_secs(5));
        let window = "22:30-02:00".parse().unwrap();
        assert_eq!(options.reboot, RebootPolicy::WhenNeeded { window: Some(window) });
        assert_eq!(options.store.as_deref(), Some("/tmp/chroot"));
    }

    #[test]
    fn health_check_options() {
        let toml = r#"
            health_checks = [
                ["true"],
                { command = ["curl", "-f", "http://localhost/"], retries = 3, interval_secs = 5, timeout_secs = 10 },
                { command = ["false"] },
            ]
        "#;
        let options = check(toml, None).unwrap();
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let curl = HealthCheck {
            command: argv(&["curl", "-f", "http://localhost/"]),
            retries: 3,
            interval: Duration::from_secs(5),
            timeout: Some(Duration::from_secs(10)),
        };
        assert_eq!(
            options.health.commands,
            [HealthCheck::once(argv(&["true"])), curl, HealthCheck::once(argv(&["false"]))]
        );
        check("health_checks = [{ command = [\"true\"], timeout_secs = 0 }]", Some("timeout_secs"));
        check("health_checks = [{ command = [] }]", Some("health_checks"));
        check("health_checks = [{ command = [\"true\"], tries = 2 }]", Some("health_checks"));
    }

    #[test]
    fn refusals() {
        check("colour = \"blue\"", Some("unknown field `colour`"));
        check("activation = \"switch-now\"", Some("unknown variant"));
        check("health_checks = [[]]", Some("health_checks"));
        check("health_timeout_secs = 0", Some("health_timeout_secs"));
        check("reboot_window = \"02:00-04:00\"", Some("when-needed"));
        check("reboot = \"when-needed\"\nreboot_window = \"2-4\"", Some("reboot_window"));
        check("store = \"--option\"", Some("store"));
        check("profile = \"relative\"", Some("profile"));
    }

    #[test]
    fn flags_win_and_required_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let raw = RawAgentConfig { host: Some("db".into()), ..Default::default() };
        assert_eq!(AgentOptions::from_parts(cli(dir.path()), raw).unwrap().host, "web");

        let missing = |cli: AgentCli| AgentOptions::from_parts(cli, RawAgentConfig::default()).unwrap_err().to_string();
        assert!(missing(AgentCli { server: None, ..cli(dir.path()) }).contains("--server"));
        assert!(missing(AgentCli { token_file: None, ..cli(dir.path()) }).contains("--token-file"));
        assert!(missing(AgentCli { host: Some("a.b".into()), ..cli(dir.path()) }).contains("host"));
        assert!(missing(AgentCli { server: Some("ftp://x".into()), ..cli(dir.path()) }).contains("server"));
        assert!(missing(AgentCli { deploy_public_key: Some("nope".into()), ..cli(dir.path()) })
            .contains("deploy_public_key"));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(missing(AgentCli { token_file: Some(empty), ..cli(dir.path()) }).contains("one token"));
    }
}
