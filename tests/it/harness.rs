//! Test helpers: a berth server (the real binary, or the library in-process), Nix commands
//! isolated from the machine's configuration, and store closures built from plain
//! `derivation`s (nixpkgs is not available here).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

/// Nix settings for every test process: offline, flakes on, no remembered misses.
pub const NIX_OFFLINE: &str =
    "substituters =\nexperimental-features = nix-command flakes\nnarinfo-cache-negative-ttl = 0\nwarn-dirty = false";

/// The Nix clients the suite drives: what NixOS hosts and build hosts run differs from
/// Debian's 2.8 in its command output (`nix path-info --json` is a map since 2.19), so the
/// stories that touch Nix run with both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NixClient {
    /// Debian bookworm's `nix-bin` (2.8), on PATH, on the machine's own store.
    Debian,
    /// Debian trixie's `nix-bin` (2.26), unpacked by `scripts/deps.sh` under
    /// `target/tools/nix-current`, on a chroot store of each test's own (it never opens the
    /// machine's store database, which 2.8 owns).
    Current,
}

impl NixClient {
    /// Both, oldest first.
    pub const ALL: [NixClient; 2] = [NixClient::Debian, NixClient::Current];

    /// The directory of the current client's programs; fails loudly when it is missing.
    fn current_bin() -> PathBuf {
        let dir = std::env::var_os("BERTH_CURRENT_NIX")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools/nix-current/bin"));
        assert!(
            dir.join("nix").is_file(),
            "the current Nix client is required by this test and is not at {}: run scripts/test.sh, which installs it",
            dir.display()
        );
        dir
    }

    /// The program `name` (`nix`, `nix-store`, `nix-build`…) of this client.
    pub fn program(self, name: &str) -> PathBuf {
        match self {
            NixClient::Debian => {
                require(name);
                PathBuf::from(name)
            }
            NixClient::Current => Self::current_bin().join(name),
        }
    }

    /// PATH with this client's programs first, for the processes that run `nix` themselves
    /// (the server's builder, `berth push`, the agent).
    pub fn path_env(self) -> std::ffi::OsString {
        let system = std::env::var_os("PATH").unwrap_or_default();
        match self {
            NixClient::Debian => system,
            NixClient::Current => {
                std::env::join_paths(std::iter::once(Self::current_bin()).chain(std::env::split_paths(&system)))
                    .unwrap()
            }
        }
    }

    /// `nix --version`'s last word, e.g. `2.26.3`.
    pub fn version(self) -> String {
        let out = stdout_of(Command::new(self.program("nix")).arg("--version"));
        out.rsplit(' ').next().unwrap_or_default().to_owned()
    }
}

/// The berth binary under test.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// Fails loudly when a program a test needs is missing.
#[track_caller]
pub fn require(program: &str) {
    let found = Command::new("sh").args(["-c", &format!("command -v {program}")]).output().map(|o| o.status.success());
    assert!(found.unwrap_or(false), "`{program}` is required by this test: run scripts/test.sh, which installs it");
}

/// Runs a command and returns its output, panicking with its stderr when it fails.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// stdout of a successful command, trimmed.
#[track_caller]
pub fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(run_ok(cmd).stdout).unwrap().trim().to_owned()
}

/// A scratch directory with a private Nix cache directory, so Nix's remembered narinfo
/// answers (an hour for misses) never leak between tests.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    /// The Nix client of this test's commands.
    pub client: NixClient,
}

impl Scratch {
    /// A scratch directory for Debian's Nix 2.8 on the machine's store.
    pub fn new() -> Self {
        Self::with(NixClient::Debian)
    }

    /// A scratch directory whose Nix commands are `client`'s. Prints the client's version,
    /// so every test's output says which Nix it ran.
    pub fn with(client: NixClient) -> Self {
        eprintln!("nix client: {client:?} {}", client.version());
        Self { dir: tempfile::tempdir().unwrap(), client }
    }

    /// The store this test's client builds into, as `--store` takes it: None for the
    /// machine's store (Nix 2.8), the scratch directory's chroot store for the current Nix.
    pub fn own_store(&self) -> Option<PathBuf> {
        (self.client == NixClient::Current).then(|| self.path("store"))
    }

    /// The Nix settings of this test's processes: [`NIX_OFFLINE`], and for the current Nix
    /// its chroot store, in which Nix always builds in a sandbox (given what the plain
    /// `/bin/sh` derivations of the tests need).
    pub fn nix_config(&self) -> String {
        match self.own_store() {
            None => NIX_OFFLINE.to_owned(),
            Some(store) => {
                format!("{NIX_OFFLINE}\nstore = {}\nsandbox-paths = /bin /usr /lib /lib64", store.display())
            }
        }
    }

    /// `berth ARGS…` with this test's client on PATH and its Nix settings.
    pub fn berth(&self) -> Command {
        let mut cmd = Command::new(berth_bin());
        cmd.env("PATH", self.client.path_env())
            .env("NIX_CONFIG", self.nix_config())
            .env("XDG_CACHE_HOME", self.path("xdg-cache"));
        cmd
    }

    /// `berth push` from this test's client's store: `--store` names the chroot store of
    /// the current Nix (a NixOS machine's would be the system store, as for 2.8 here).
    pub fn berth_push(&self, server: &str, token: &str, paths: &[&str]) -> Command {
        let mut cmd = self.berth();
        cmd.args(["push", "--server", server]).env("BERTH_TOKEN", token);
        if let Some(store) = self.own_store() {
            cmd.arg("--store").arg(store);
        }
        cmd.args(paths);
        cmd
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `nix`/`nix-store`/`nix-build` command: offline, flakes on, private cache dir.
    pub fn nix(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.client.program(program));
        cmd.env("XDG_CACHE_HOME", self.path("xdg-cache")).env("NIX_CONFIG", self.nix_config()).env_remove("NIX_REMOTE");
        cmd
    }

    /// Builds a closure of several paths from plain derivations: a directory with an
    /// executable and a symlink, a path that references it, and a top path that references
    /// both. `salt` makes the paths unique to the test. Returns the top path.
    pub fn build_closure(&self, salt: &str) -> String {
        let expr = format!(
            r#"let
  mk = name: script: derivation {{ inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" script ]; salt = "{salt}"; }};
  lib = mk "berth-test-lib" "mkdir -p $out/bin $out/share; printf '#!/bin/sh\necho hello\n' > $out/bin/hello; chmod +x $out/bin/hello; ln -s ../bin/hello $out/share/link; echo {salt} > $out/share/salt";
  mid = mk "berth-test-mid" "mkdir -p $out; echo ${{lib}}/bin/hello > $out/uses-lib; head -c 100000 /dev/urandom > $out/blob";
in mk "berth-test-top" "mkdir -p $out; echo ${{mid}} ${{lib}} > $out/refs; echo $out > $out/self""#
        );
        let file = self.path(&format!("closure-{salt}.nix"));
        std::fs::write(&file, expr).unwrap();
        stdout_of(self.nix("nix-build").arg("--no-out-link").arg(&file))
    }

    /// Every path of the closure of `path`.
    pub fn closure(&self, path: &str) -> Vec<String> {
        stdout_of(self.nix("nix-store").args(["-qR", path])).lines().map(str::to_owned).collect()
    }

    /// The NarHash of `path` as recorded in `store` (None: the system store).
    pub fn nar_hash(&self, path: &str, store: Option<&Path>) -> String {
        let mut cmd = self.nix("nix-store");
        if let Some(store) = store {
            cmd.arg("--store").arg(store);
        }
        stdout_of(cmd.args(["-q", "--hash", path]))
    }

    /// A netrc file granting `token` for 127.0.0.1.
    pub fn netrc(&self, token: &str) -> PathBuf {
        let file = self.path("netrc");
        std::fs::write(&file, format!("machine 127.0.0.1\nlogin berth\npassword {token}\n")).unwrap();
        file
    }

    /// `nix copy --from url --to <fresh chroot store>` trusting only `trusted_key`.
    pub fn substitute(&self, url: &str, path: &str, trusted_key: &str, store_name: &str) -> (Output, PathBuf) {
        let store = self.path(store_name);
        // A fresh Nix cache directory: Nix remembers the narinfos it uploaded itself (without
        // berth's signature) and would check those instead of what the server serves.
        let out = self
            .nix("nix")
            .env("XDG_CACHE_HOME", self.path(&format!("xdg-{store_name}")))
            .args(["copy", "--from", url, "--to"])
            .arg(&store)
            .args(["--option", "trusted-public-keys", trusted_key, path])
            .output()
            .unwrap();
        (out, store)
    }
}

/// A running `berth serve` (the real binary), stopped on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub public_key: String,
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts `berth serve` on a free loopback port with `args` added, running Debian's Nix.
    pub fn start(data_dir: &Path, args: &[&str]) -> Self {
        Self::start_env(data_dir, args, NixClient::Debian.path_env(), NIX_OFFLINE)
    }

    /// [`Server::start`] in `s.path("data")`, running `s`'s Nix client with its settings.
    pub fn start_for(s: &Scratch, args: &[&str]) -> Self {
        Self::start_env(&s.path("data"), args, s.client.path_env(), &s.nix_config())
    }

    /// [`Server::start`] with extra environment variables (e.g. `BERTH_CRASH_AT`).
    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_cmd(Command::new(berth_bin()), data_dir, args, NixClient::Debian.path_env(), NIX_OFFLINE, env)
    }

    /// [`Server::start`] run by `wrapper` (e.g. `prlimit --nofile=1024: --`).
    pub fn start_under(wrapper: &[&str], data_dir: &Path, args: &[&str]) -> Self {
        let mut cmd = Command::new(wrapper[0]);
        cmd.args(&wrapper[1..]).arg(berth_bin());
        Self::start_cmd(cmd, data_dir, args, NixClient::Debian.path_env(), NIX_OFFLINE, &[])
    }

    fn start_env(data_dir: &Path, args: &[&str], path: std::ffi::OsString, nix_config: &str) -> Self {
        Self::start_cmd(Command::new(berth_bin()), data_dir, args, path, nix_config, &[])
    }

    /// [`Server::start_for`] logging at debug level into `log` (to check what logs hold).
    pub fn start_for_logged(s: &Scratch, args: &[&str], log: &Path) -> Self {
        let file = std::fs::File::create(log).unwrap();
        let mut cmd = Command::new(berth_bin());
        cmd.stderr(file);
        let env = [("BERTH_LOG", "debug")];
        Self::start_cmd(cmd, &s.path("data"), args, s.client.path_env(), &s.nix_config(), &env)
    }

    fn start_cmd(
        mut cmd: Command,
        data_dir: &Path,
        args: &[&str],
        path: std::ffi::OsString,
        nix_config: &str,
        env: &[(&str, &str)],
    ) -> Self {
        if !env.iter().any(|(k, _)| *k == "BERTH_LOG") {
            cmd.env("BERTH_LOG", "warn").stderr(Stdio::inherit());
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            // The server runs nix (builds, closure queries): offline, with its own cache dir.
            .env("PATH", path)
            .env("NIX_CONFIG", nix_config)
            .env("XDG_CACHE_HOME", data_dir.join("xdg-cache"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn berth serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut url, mut public_key) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(k) = line.strip_prefix("public key: ") {
                public_key = Some(k.to_owned());
            }
            if let Some(u) = line.strip_prefix("berth listening on ") {
                url = Some(u.to_owned());
                break;
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let url = url.expect("berth serve exited before listening");
        Self { child, url, public_key: public_key.expect("public key line"), data_dir: data_dir.to_owned() }
    }

    /// `berth token create --scope SCOPE` against this server's data directory.
    pub fn token(&self, scope: &str) -> String {
        stdout_of(
            Command::new(berth_bin()).args(["token", "create", "--scope", scope, "--data-dir"]).arg(&self.data_dir),
        )
    }

    /// `POST /api/v1/gc` with default options, as an admin; the report.
    pub fn collect(&self) -> serde_json::Value {
        let r = http()
            .post(format!("{}/api/v1/gc", self.url))
            .bearer_auth(self.token("admin"))
            .json(&serde_json::json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json().unwrap()
    }

    /// The server's resident set size in KiB (VmHWM: the peak).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Sends SIGKILL (a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A blocking HTTP client for tests.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// A TCP proxy in front of a server that refuses every connection while a flag file exists,
/// and breaks open ones when it appears: the "network" an activation can cut (see the test
/// fleet's `set_cuts_network`).
pub struct NetCut {
    pub url: String,
    /// Connections accepted and relayed (not those refused while the flag exists).
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl NetCut {
    pub fn start(target_url: &str, flag: PathBuf) -> Self {
        let target = target_url.trim_start_matches("http://").to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let flag = std::sync::Arc::new(flag);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if flag.exists() {
                    continue; // dropped: the connection is closed at once
                }
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (f1, f2) = (flag.clone(), flag.clone());
                std::thread::spawn(move || pipe(client, server, &f1));
                std::thread::spawn(move || pipe(s2, c2, &f2));
            }
        });
        Self { url, accepted }
    }
}

/// Copies `from` to `to` until either closes or the flag appears (then both are shut).
fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream, flag: &Path) {
    use std::io::{Read, Write};
    from.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if flag.exists() {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Runs each story `fn(NixClient)` once per Nix client, as the tests
/// `<story>::nix_2_8` and `<story>::nix_current`.
macro_rules! for_each_client {
    ($($story:ident),+ $(,)?) => {$(
        mod $story {
            #[test]
            fn nix_2_8() {
                super::$story($crate::harness::NixClient::Debian)
            }
            #[test]
            fn nix_current() {
                super::$story($crate::harness::NixClient::Current)
            }
        }
    )+};
}
pub(crate) use for_each_client;

/// An HTTP/1.1 proxy in front of a server that, once armed, cuts the first NAR download
/// (`GET /nar/…`) after `cut_after` bytes of its body: a connection lost mid-transfer. It
/// records every request line with whether it asked for a `Range`, so a test can see how the
/// client resumed. Requests on a connection are handled one at a time (Nix does not
/// pipeline); responses must carry a `Content-Length`, as berth's do.
pub struct CuttingProxy {
    pub url: String,
    /// Every request, in order: (request line, its `Range` header if any).
    pub requests: std::sync::Arc<RequestLog>,
}

impl CuttingProxy {
    pub fn start(target_url: &str, cut_after: usize) -> Self {
        let target = target_url.trim_start_matches("http://").to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let armed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let log = requests.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (target, log, armed) = (target.clone(), log.clone(), armed.clone());
                std::thread::spawn(move || {
                    let _ = proxy_connection(client, &target, &log, &armed, cut_after);
                });
            }
        });
        Self { url, requests }
    }

    /// The recorded requests whose line contains `needle`.
    pub fn requests_for(&self, needle: &str) -> Vec<(String, Option<String>)> {
        self.requests.lock().unwrap().iter().filter(|(line, _)| line.contains(needle)).cloned().collect()
    }
}

type RequestLog = std::sync::Mutex<Vec<(String, Option<String>)>>;

/// Relays requests of one client connection until either side closes.
fn proxy_connection(
    client: std::net::TcpStream,
    target: &str,
    log: &RequestLog,
    armed: &std::sync::atomic::AtomicBool,
    cut_after: usize,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut upstream = BufReader::new(std::net::TcpStream::connect(target)?);
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = client;
    loop {
        let head = read_head(&mut from_client)?;
        let Some(line) = head.lines().next().map(str::to_owned) else { return Ok(()) };
        let range = header(&head, "range");
        log.lock().unwrap().push((line.clone(), range));
        upstream.get_mut().write_all(head.as_bytes())?;
        let response = read_head(&mut upstream)?;
        to_client.write_all(response.as_bytes())?;
        let length: usize = if line.starts_with("HEAD ") {
            0
        } else {
            header(&response, "content-length").map_or(0, |l| l.parse().unwrap())
        };
        let cut = line.starts_with("GET /nar/")
            && length > cut_after
            && armed.swap(false, std::sync::atomic::Ordering::SeqCst);
        let mut body = (&mut upstream).take(if cut { cut_after } else { length } as u64);
        std::io::copy(&mut body, &mut to_client)?;
        if cut {
            to_client.flush()?;
            let _ = to_client.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
    }
}

/// Reads an HTTP head (up to the blank line); empty at end of stream.
fn read_head(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            head.push_str(&line);
            return Ok(head);
        }
        head.push_str(&line);
    }
}

/// The value of header `name` (lower case) in an HTTP head.
fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (key, value) = l.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
    })
}

/// A TCP proxy in front of a server that cuts, once, the first connection on which the
/// client starts a NAR upload (`PUT /nar/…`), `cut_after` bytes into it: an upload lost
/// midway. Everything else is relayed untouched.
pub struct UploadCutter {
    pub url: String,
    /// Set once the cut happened.
    pub cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl UploadCutter {
    pub fn start(target_url: &str, cut_after: usize) -> Self {
        let target = target_url.trim_start_matches("http://").to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let done = done.clone();
                std::thread::spawn(move || cut_upload(client, server, &done, cut_after));
                std::thread::spawn(move || {
                    let (mut from, mut to) = (s2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Self { url, cut }
    }
}

/// Relays client → server; once per proxy, `cut_after` bytes after a `PUT /nar/` starts,
/// shuts both directions.
fn cut_upload(
    mut from: std::net::TcpStream,
    mut to: std::net::TcpStream,
    done: &std::sync::atomic::AtomicBool,
    cut_after: usize,
) {
    use std::io::{Read, Write};
    const MARK: &[u8] = b"PUT /nar/";
    let mut seen: Vec<u8> = Vec::new(); // what came since the last possible start of MARK
    let mut budget: Option<usize> = None;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = &buf[..n];
        if budget.is_none() && !done.load(std::sync::atomic::Ordering::SeqCst) {
            let start = seen.len();
            seen.extend_from_slice(chunk);
            if let Some(at) = seen.windows(MARK.len()).position(|w| w == MARK) {
                if !done.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    // Bytes of this chunk from the mark on count against the budget.
                    budget = Some(cut_after + (at.max(start) - start).min(chunk.len()));
                }
            } else {
                let keep = seen.len().saturating_sub(MARK.len());
                seen.drain(..keep);
            }
        }
        if let Some(left) = budget.as_mut() {
            chunk = &chunk[..chunk.len().min(*left)];
            *left -= chunk.len();
        }
        if to.write_all(chunk).is_err() || budget == Some(0) {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Waits (at most two minutes) until `done` says yes.
#[track_caller]
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}
