//! `berth push`: copy store paths and their closure into a berth cache.
//!
//! 1. `nix path-info --recursive` gives the closure, dependencies first ([`crate::nix`]);
//! 2. one `POST /api/v1/paths/missing` asks which of those the server lacks;
//! 3. the missing ones are uploaded (`POST /api/v1/paths`, see [`frame`]), up to `jobs` at
//!    once, each only after every missing path it references is in, because the server
//!    refuses a path whose references it does not hold (`schedule`);
//! 4. each NAR is produced and zstd-compressed on a blocking thread while it streams, so
//!    memory is bounded by a few chunks, never by the size of a NAR (`upload`).

mod client;
pub mod frame;
mod progress;
mod schedule;
mod upload;

use std::collections::HashSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::text::bytes;
use client::Client;
pub use client::UploadStatus;
use frame::FrameError;
use progress::Progress;
use schedule::Schedule;
use upload::Counters;

use crate::nix::{self, NixError};
use crate::nixfmt::{PathClaim, StorePath, STORE_DIR};

/// What to push, and where.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Base URL of the berth server (`https://cache.example.org`).
    pub server: String,
    /// Bearer token with push permission, if the server requires one.
    pub token: Option<String>,
    /// Store paths (or symlinks to them, like `./result`) whose closures to push.
    pub paths: Vec<String>,
    /// How many uploads run at once (at least 1; default 4).
    pub jobs: usize,
    /// zstd compression level (default 3).
    pub compression_level: i32,
    /// The Nix store to read from (`--store`): unset for the system store, or the directory of
    /// a local chroot store.
    pub store: Option<String>,
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Paths in the closure of the requested paths.
    pub considered: usize,
    /// Paths the server already held (before the push, or uploaded concurrently by another).
    pub already_present: usize,
    /// Paths this push added to the cache.
    pub uploaded: usize,
    /// Uncompressed NAR bytes of the uploaded paths.
    pub nar_bytes: u64,
    /// Compressed bytes sent for the uploaded paths.
    pub compressed_bytes: u64,
    /// Wall-clock time of the whole push.
    pub elapsed: Duration,
}

impl fmt::Display for PushReport {
    /// The one-line summary: `pushed 3 paths (12.3 MiB NAR, 4.1 MiB compressed) in 1.2 s; 5
    /// already in the cache`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize| if n == 1 { "path" } else { "paths" };
        write!(
            f,
            "pushed {} {} ({} NAR, {} compressed) in {:.1} s; {} already in the cache",
            self.uploaded,
            plural(self.uploaded),
            bytes(self.nar_bytes),
            bytes(self.compressed_bytes),
            self.elapsed.as_secs_f64(),
            self.already_present
        )
    }
}

/// Why a push failed. Each message is one line meant for the person who ran the command.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Running `nix` failed.
    #[error(transparent)]
    Nix(#[from] NixError),
    /// An argument is neither a store path nor a symlink to one.
    #[error("{arg} is not in the Nix store (expected a path under {STORE_DIR}/ or a symlink to one)")]
    NotInStore {
        /// The argument as given.
        arg: String,
    },
    /// `--store` names a store whose files berth cannot read directly.
    #[error("--store {0:?} is not supported by berth push: give the directory of a local store")]
    UnsupportedStore(String),
    /// The server URL is unusable.
    #[error("invalid server URL {url:?}: {reason}")]
    ServerUrl {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server could not be reached at all.
    #[error("cannot reach the berth server at {url}: {reason}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The connection error.
        reason: String,
    },
    /// The server refused the credentials (401/403).
    #[error("the server refused the push ({status}): {message}{}", if *token_given { "" } else { " (no token given: use --token)" })]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// The server's reason.
        message: String,
        /// Whether a token was sent at all.
        token_given: bool,
    },
    /// The server answered an error status.
    #[error("{context}: the server answered {status}{}: {message}", if code.is_empty() { String::new() } else { format!(" {code}") })]
    Server {
        /// What was being done.
        context: String,
        /// The HTTP status.
        status: u16,
        /// berth's stable error code (empty if the body was not berth's JSON).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server answered success with a body berth does not understand.
    #[error("{context}: unexpected answer from the server: {reason}")]
    Protocol {
        /// What was being done.
        context: String,
        /// What was wrong.
        reason: String,
    },
    /// A request failed after connecting (connection reset, body aborted).
    #[error("{context}: {reason}")]
    Transport {
        /// What was being done.
        context: String,
        /// The transport error.
        reason: String,
    },
    /// A path's files could not be read or compressed.
    #[error("cannot read {path} from the store: {reason}")]
    Dump {
        /// The store path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A claim could not be framed.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Pushes the closures of `opts.paths` to `opts.server`; prints progress and a final summary
/// line on stderr and returns the same figures.
pub async fn run(opts: PushOptions) -> Result<PushReport, PushError> {
    let start = Instant::now();
    let root = upload::on_disk_root(opts.store.as_deref())?;
    let client = Client::new(&opts.server, opts.token.clone())?;
    let paths = opts.paths.iter().map(|arg| store_path_of(arg)).collect::<Result<Vec<_>, _>>()?;
    let mut report = PushReport::default();
    if !paths.is_empty() {
        let closure = nix::path_info_closure(&paths, opts.store.as_deref()).await?;
        let all: Vec<String> = closure.iter().map(|c| c.path.clone()).collect();
        let missing: HashSet<String> = client.missing(&all).await?.into_iter().collect();
        let to_upload: Vec<PathClaim> = closure.into_iter().filter(|c| missing.contains(&c.path)).collect();
        report.considered = all.len();
        report.already_present = all.len() - to_upload.len();
        let settings = Settings { root: &root, jobs: opts.jobs.max(1), level: opts.compression_level };
        upload_all(&client, to_upload, &settings, &mut report).await?;
    }
    report.elapsed = start.elapsed();
    eprintln!("{report}");
    Ok(report)
}

/// What every upload of one push shares.
struct Settings<'a> {
    root: &'a Path,
    jobs: usize,
    level: i32,
}

/// Uploads `claims` (dependencies first, `jobs` at a time), adding to `report`.
async fn upload_all(
    client: &Client,
    claims: Vec<PathClaim>,
    settings: &Settings<'_>,
    report: &mut PushReport,
) -> Result<(), PushError> {
    let counters = Arc::new(Counters::default());
    let mut progress = Progress::new(claims.len(), counters.clone());
    let mut schedule = Schedule::new(claims);
    let mut running = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let result = loop {
        while running.len() < settings.jobs {
            let Some(claim) = schedule.next_ready() else {
                break;
            };
            running.push(upload::upload(client, claim, settings.root, settings.level, counters.clone()));
        }
        if running.is_empty() {
            debug_assert!(schedule.is_done(), "acyclic by nix::topo_sort");
            break Ok(());
        }
        tokio::select! {
            Some(done) = running.next() => match done {
                Ok(up) => {
                    schedule.finished(&up.claim.path);
                    progress.uploaded(&up);
                    match up.status {
                        UploadStatus::New => {
                            report.uploaded += 1;
                            report.nar_bytes += up.claim.nar_size;
                            report.compressed_bytes += up.compressed;
                        }
                        UploadStatus::Present => report.already_present += 1,
                    }
                }
                // Dropping `running` cancels the other uploads; their NAR threads stop at
                // their next chunk.
                Err(e) => break Err(e),
            },
            _ = tick.tick(), if progress.is_live() => progress.redraw(),
        }
    };
    progress.clear();
    result
}

/// The store path an argument names: a store path (a file inside one names the path itself)
/// or a symlink (chain) to one, like `./result`.
fn store_path_of(arg: &str) -> Result<String, PushError> {
    let not_in_store = || PushError::NotInStore { arg: arg.to_owned() };
    // Links are followed one at a time, and only until they reach the store: a store path
    // may itself be a symlink to another, and with a chroot store the target does not exist
    // on this machine at all.
    let mut target = PathBuf::from(arg);
    for _ in 0..MAX_LINKS {
        if target.starts_with(STORE_DIR) {
            break;
        }
        let link = std::fs::read_link(&target).map_err(|_| not_in_store())?;
        target = target.parent().unwrap_or(Path::new("")).join(link);
    }
    let rest = target.strip_prefix(STORE_DIR).map_err(|_| not_in_store())?;
    let Some(Component::Normal(name)) = rest.components().next() else {
        return Err(not_in_store());
    };
    let path = format!("{STORE_DIR}/{}", name.to_str().ok_or_else(not_in_store)?);
    StorePath::from_absolute_path(path.as_bytes()).map_err(|_| not_in_store())?;
    Ok(path)
}

/// Symlinks followed from an argument before giving up (as the kernel's `ELOOP` limit).
const MAX_LINKS: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;

    const LEAF: &str = "/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt";

    #[test]
    fn arguments_name_store_paths() {
        assert_eq!(store_path_of(LEAF).unwrap(), LEAF);
        assert_eq!(store_path_of(&format!("{LEAF}/bin/x")).unwrap(), LEAF);
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("result");
        std::os::unix::fs::symlink(LEAF, &link).unwrap();
        std::os::unix::fs::symlink("result", dir.path().join("relative")).unwrap();
        assert_eq!(store_path_of(link.to_str().unwrap()).unwrap(), LEAF);
        assert_eq!(store_path_of(dir.path().join("relative").to_str().unwrap()).unwrap(), LEAF);
        for bad in [
            "/nix/store",
            "/nix/store/",
            "/nix/store/not-a-hash",
            "/nix/storefoo",
            "/nix/store/../etc",
            "/etc/hosts",
            "relative",
        ] {
            assert!(matches!(store_path_of(bad), Err(PushError::NotInStore { .. })), "{bad}");
        }
    }

    #[test]
    fn summary_line() {
        let report = PushReport {
            considered: 8,
            already_present: 5,
            uploaded: 3,
            nar_bytes: 12_897_484,
            compressed_bytes: 4_299_161,
            elapsed: Duration::from_millis(1234),
        };
        assert_eq!(
            report.to_string(),
            "pushed 3 paths (12.3 MiB NAR, 4.1 MiB compressed) in 1.2 s; 5 already in the cache"
        );
    }
}
