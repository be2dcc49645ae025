//! The agent's durable state: one JSON file, `<state_dir>/state.json`, replaced atomically
//! (written to a temporary file, fsynced, renamed, the directory fsynced), so a crash or power
//! cut leaves either the old or the new record, never a torn one.
//!
//! The `pending` record is written before the agent touches the running system and cleared
//! when the deploy is settled; finding one at start-up means the agent died mid-deploy.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::config::Activation;

/// The file's name in the state directory.
pub const STATE_FILE: &str = "state.json";
/// The GC root that keeps the system being deployed alive until the profile holds it.
pub const GC_ROOT: &str = "system";

/// Everything the agent remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The highest generation settled (confirmed, rolled back or failed): what the agent
    /// asks the server to be newer than, and what a manifest must exceed.
    pub applied: Option<u64>,
    /// The last generation confirmed on this host.
    pub active: Option<Active>,
    /// How the last settled generation ended.
    pub last: Option<Settled>,
    /// A deploy that started touching the system and has not ended.
    pub pending: Option<Pending>,
    /// Failed attempts to realise a generation (reset when one succeeds).
    pub download_failures: Option<DownloadFailures>,
    /// A confirmed system whose boot files differ from the booted system's.
    pub needs_reboot: Option<String>,
    /// The system the agent last rebooted for (so it never reboots twice for one).
    pub rebooted_for: Option<String>,
    /// Deploy keys announced to this agent and retired on it (beside the configured key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_keys: Option<crate::deploy::keyset::TrustFile>,
}

/// A confirmed generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Active {
    /// Its number.
    pub generation: u64,
    /// Its toplevel.
    pub store_path: String,
}

/// A deploy in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    /// The generation.
    pub generation: u64,
    /// Its toplevel.
    pub store_path: String,
    /// What the profile pointed at before: where a rollback returns the boot default.
    pub previous: Option<String>,
    /// What ran before (`/run/current-system`), when known: where a rollback returns the
    /// running system (usually the same as `previous`).
    pub running: Option<String>,
    /// The mode it is activated in.
    pub activation: Activation,
    /// How many times activation was started (1 on the first run).
    pub attempts: u32,
    /// When the first attempt started (Unix seconds).
    pub started_at: i64,
}

/// How a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// Running and (except in `test` mode) the boot default.
    Confirmed,
    /// It failed and the previous generation is back.
    RolledBack,
    /// It failed and could not be returned from, or never started (not realised).
    Failed,
}

/// A settled generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settled {
    /// The generation.
    pub generation: u64,
    /// Its toplevel.
    pub store_path: String,
    /// How it ended.
    pub ending: Ending,
    /// Why, when it did not succeed.
    pub reason: Option<String>,
    /// When (Unix seconds).
    pub at: i64,
}

/// Realise failures of one generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadFailures {
    /// The generation.
    pub generation: u64,
    /// How many times it failed.
    pub count: u32,
}

impl State {
    /// Records `settled` as the outcome of its generation and ends any pending deploy.
    pub fn settle(&mut self, settled: Settled) {
        self.applied = Some(self.applied.map_or(settled.generation, |a| a.max(settled.generation)));
        if settled.ending == Ending::Confirmed {
            let (generation, store_path) = (settled.generation, settled.store_path.clone());
            self.active = Some(Active { generation, store_path });
        }
        self.pending = None;
        self.download_failures = None;
        self.last = Some(settled);
    }

    /// Counts one failed realise of `generation`; returns the count.
    pub fn download_failed(&mut self, generation: u64) -> u32 {
        let count = match &self.download_failures {
            Some(f) if f.generation == generation => f.count + 1,
            _ => 1,
        };
        self.download_failures = Some(DownloadFailures { generation, count });
        count
    }

    /// The generation number of `store_path` if it is the last confirmed one.
    pub fn active_generation_of(&self, store_path: Option<&str>) -> Option<u64> {
        self.active.as_ref().filter(|a| Some(a.store_path.as_str()) == store_path).map(|a| a.generation)
    }
}

/// Reads the state; a missing file is a fresh agent. A file that cannot be parsed is an
/// error: guessing would risk re-applying or skipping a generation.
pub fn load(dir: &Path) -> std::io::Result<State> {
    match std::fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            let message = format!("{}: {e}", dir.join(STATE_FILE).display());
            std::io::Error::new(std::io::ErrorKind::InvalidData, message)
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e),
    }
}

/// Replaces the state file atomically and durably.
pub fn save(dir: &Path, state: &State) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(state).expect("the state always serialises");
    replace_file(dir, STATE_FILE, &json)
}

/// Replaces `dir/name` with `bytes` and a newline atomically and durably: written to a
/// temporary file, fsynced, renamed over the old one, the directory fsynced.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp: PathBuf = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(generation: u64, ending: Ending) -> Settled {
        Settled { generation, store_path: format!("/nix/store/{generation}"), ending, reason: None, at: 0 }
    }

    #[test]
    fn settling_moves_applied_forward_and_active_only_on_success() {
        let mut state = State::default();
        state.settle(settled(3, Ending::Confirmed));
        state.settle(settled(4, Ending::RolledBack));
        assert_eq!(state.applied, Some(4));
        assert_eq!(state.active, Some(Active { generation: 3, store_path: "/nix/store/3".into() }));
        assert_eq!(state.active_generation_of(Some("/nix/store/3")), Some(3));
        assert_eq!(state.active_generation_of(Some("/nix/store/4")), None);
        // A late settle of an older generation never moves `applied` back.
        state.settle(settled(2, Ending::Failed));
        assert_eq!(state.applied, Some(4));
    }

    #[test]
    fn download_failures_count_per_generation() {
        let mut state = State::default();
        assert_eq!([state.download_failed(5), state.download_failed(5), state.download_failed(6)], [1, 2, 1]);
        state.settle(settled(6, Ending::Failed));
        assert_eq!(state.download_failures, None);
    }

    #[test]
    fn saves_and_loads_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), State::default());
        let mut state = State::default();
        state.settle(settled(1, Ending::Confirmed));
        state.pending = Some(Pending {
            generation: 2,
            store_path: "/nix/store/2".into(),
            previous: Some("/nix/store/1".into()),
            running: None,
            activation: Activation::Switch,
            attempts: 1,
            started_at: 1_767_225_600,
        });
        save(dir.path(), &state).unwrap();
        assert_eq!(load(dir.path()).unwrap(), state);
        assert!(!dir.path().join("state.json.tmp").exists());
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains("\"activation\": \"switch\""), "{text}");

        std::fs::write(dir.path().join(STATE_FILE), "{\"applied\": 1, \"surprise\": true}").unwrap();
        assert_eq!(load(dir.path()).unwrap_err().kind(), std::io::ErrorKind::InvalidData);
    }
}
