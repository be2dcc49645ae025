//! Configuration: one TOML file (`RawConfig`, unknown keys rejected) validated into `Config`
//! at start-up, so a wrong value fails `berth serve` and `berth check-config`, never the
//! first request. Secrets are file paths (for systemd `LoadCredential`), never values.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::nixfmt::PublicKey;

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
    /// Older public keys still trusted during a key rotation (printed with the nix.conf lines).
    #[serde(default)]
    pub previous_public_keys: Vec<String>,
    /// The binary-cache protocol settings.
    #[serde(default)]
    pub cache: RawCache,
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
}

/// Where the signing key comes from.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// The file.
    pub path: PathBuf,
    /// Generate it (with this name) when missing; only for the default location.
    pub generate_as: Option<String>,
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
    /// Extra trusted keys.
    pub previous_public_keys: Vec<PublicKey>,
    /// Cache protocol settings.
    pub cache: CacheConfig,
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
}

impl RawConfig {
    /// Reads and parses a TOML file (unknown keys are errors).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Applies command-line overrides and validates everything.
    pub fn validate(mut self, o: Overrides) -> Result<Config, ConfigError> {
        self.listen = o.listen.or(self.listen);
        self.data_dir = o.data_dir.or(self.data_dir);
        self.storage = o.storage.or(self.storage);
        self.database = o.database.or(self.database);
        self.signing_key_file = o.signing_key_file.or(self.signing_key_file);
        let invalid = |key, reason: String| ConfigError::Invalid { key, reason };

        let listen = self.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen
            .parse()
            .map_err(|e| invalid("listen", format!("{listen:?}: {e}")))?;
        let data_dir = absolute(self.data_dir.unwrap_or_else(default_data_dir));
        let storage = self
            .storage
            .unwrap_or_else(|| format!("file://{}", data_dir.join("cache").display()));
        if !(storage.starts_with("file:///") || storage == "memory://") {
            return Err(invalid(
                "storage",
                format!("{storage:?}: expected file:///absolute/dir"),
            ));
        }
        let database = self
            .database
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("berth.sqlite").display()));
        if !(database.starts_with("sqlite:")
            || database.starts_with("postgres:")
            || database.starts_with("postgresql:"))
        {
            return Err(invalid(
                "database",
                "expected sqlite:///file or postgres://…".into(),
            ));
        }
        let signing_key = match self.signing_key_file {
            Some(path) => KeySource {
                path: absolute(path),
                generate_as: None,
            },
            None => KeySource {
                path: data_dir.join("signing-key"),
                generate_as: Some(
                    self.signing_key_name
                        .unwrap_or_else(|| format!("{}-1", hostname())),
                ),
            },
        };
        let previous_public_keys = self
            .previous_public_keys
            .iter()
            .map(|k| {
                PublicKey::parse(k).map_err(|e| invalid("previous_public_keys", e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let level = self.cache.compression_level.unwrap_or(3);
        if !(1..=19).contains(&level) {
            return Err(invalid(
                "cache.compression_level",
                format!("{level} is outside 1..=19"),
            ));
        }
        let cache = CacheConfig {
            priority: self.cache.priority.unwrap_or(30),
            want_mass_query: self.cache.want_mass_query.unwrap_or(true),
            require_read_token: self.cache.require_read_token.unwrap_or(false),
            compression_level: level,
        };
        Ok(Config {
            listen,
            data_dir,
            storage,
            database,
            signing_key,
            previous_public_keys,
            cache,
        })
    }
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "t".into(),
            message: e.to_string(),
        })?;
        raw.validate(Overrides::default())
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
    fn unknown_keys_and_bad_values_are_errors() {
        let err = parse("listn = \"x\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `listn`"), "{err}");
        assert!(parse("[cache]\nprioriti = 1").is_err());
        assert!(parse("listen = \"nowhere\"")
            .unwrap_err()
            .to_string()
            .contains("listen"));
        assert!(parse("storage = \"ftp://x\"").is_err());
        assert!(parse("[cache]\ncompression_level = 99").is_err());
        assert!(parse("previous_public_keys = [\"nope\"]").is_err());
    }

    #[test]
    fn an_explicit_key_file_is_never_generated() {
        let c = parse("signing_key_file = \"/run/credentials/berth/key\"").unwrap();
        assert!(c.signing_key.generate_as.is_none());
    }

    #[test]
    fn overrides_win() {
        let raw: RawConfig = toml::from_str("listen = \"127.0.0.1:1\"").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        };
        assert_eq!(raw.validate(o).unwrap().listen.port(), 2);
    }
}
