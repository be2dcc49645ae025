//! The processes the deploy agent runs on its host: realising a system from the substituters,
//! reading and setting the system profile, `switch-to-configuration`, `systemctl`, health-check
//! commands and reboot.
//!
//! Paths. Everything the agent names is a *logical* path, as Nix prints it and as it would be on
//! a NixOS host: `/nix/store/…-nixos-system-…`, the profile `/nix/var/nix/profiles/system`,
//! `/run/booted-system`. With the system store they are also the real paths. With a chroot
//! store (`--store DIR`, a directory, as tests and non-root runs use), Nix keeps the store under
//! `DIR/nix/store` while still naming its paths `/nix/store/…`; [`SystemRoot`] then re-roots
//! every logical path under `DIR`: the profile becomes `DIR/nix/var/nix/profiles/system`, a
//! toplevel's script `DIR/nix/store/…/bin/switch-to-configuration`, the booted system
//! `DIR/run/booted-system`. `nix-env -p` takes a *real* path (it would happily set the host's
//! own profile while writing to a chroot store), so the profile is re-rooted here, never by Nix.
//! A store given as a URI (`daemon`, `local`, `auto`) shares the host's root: paths are used
//! as they are.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use super::args::path_arg;
use super::{argv, output, process, run_env, Env, NixError};
use crate::nixfmt::{StorePath, STORE_DIR};

/// How long a `nix-env --set` or `systemctl` call may take.
const SHORT: Duration = Duration::from_secs(120);

/// What `switch-to-configuration` is asked to do.
///
/// There is no `Switch`: the agent never makes the new system both running and default in one
/// step, because the health checks must run between the two halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchAction {
    /// Make it the running system; the bootloader keeps its default.
    Test,
    /// Make it the bootloader's default; the running system is unchanged.
    Boot,
    /// Say what `test` would do (units stopped, restarted, started), doing nothing.
    DryActivate,
}

impl SwitchAction {
    /// The argument `switch-to-configuration` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Boot => "boot",
            Self::DryActivate => "dry-activate",
        }
    }
}

/// The kernel, initrd and kernel modules a toplevel boots (its `kernel`, `initrd` and
/// `kernel-modules` symlinks); a field is `None` where the toplevel has no such link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootFiles {
    /// `<toplevel>/kernel`'s target.
    pub kernel: Option<PathBuf>,
    /// `<toplevel>/initrd`'s target.
    pub initrd: Option<PathBuf>,
    /// `<toplevel>/kernel-modules`'s target.
    pub kernel_modules: Option<PathBuf>,
}

/// The system the agent manages: the Nix store to use and where logical paths really are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemRoot {
    store: Option<String>,
    chroot: Option<PathBuf>,
}

impl SystemRoot {
    /// `store` is handed to every Nix command as `--store`; an absolute path is a chroot store
    /// directory under which logical paths are re-rooted. `None`: the system store.
    pub fn new(store: Option<&str>) -> Self {
        let chroot = store.filter(|s| s.starts_with('/')).map(PathBuf::from);
        Self { store: store.map(str::to_owned), chroot }
    }

    /// Where the logical path `logical` (absolute) really is.
    pub fn physical(&self, logical: &Path) -> PathBuf {
        match &self.chroot {
            Some(root) => root.join(logical.strip_prefix("/").unwrap_or(logical)),
            None => logical.to_path_buf(),
        }
    }

    /// `nix-store --realise PATH` from the substituters, keeping it alive with the GC root
    /// `gc_root` (a symlink in an existing directory, replaced if present), with every stderr
    /// line sent to `log`.
    ///
    /// Never builds: `path` must be an output path, which `--realise` substitutes or fails on.
    /// `narinfo-cache-negative-ttl 0`: Nix remembers for an hour that a cache did *not* have a
    /// path; the host may have asked before the build host published it, and that memory would
    /// fail this deploy.
    pub async fn realise(
        &self,
        path: &str,
        gc_root: &Path,
        timeout: Duration,
        log: &UnboundedSender<String>,
    ) -> Result<(), NixError> {
        self.realise_in(path, gc_root, timeout, log, &[]).await
    }

    pub(crate) async fn realise_in(
        &self,
        path: &str,
        gc_root: &Path,
        timeout: Duration,
        log: &UnboundedSender<String>,
        env: Env<'_>,
    ) -> Result<(), NixError> {
        check_output_path(path)?;
        let mut argv = self.with_store("nix-store");
        argv.extend(["--realise".into(), path.into(), "--add-root".into(), path_arg(gc_root)?]);
        argv.extend(["--option", "narinfo-cache-negative-ttl", "0"].map(String::from));
        process::run_streaming(&argv, env, timeout, log).await.map(drop)
    }

    /// The store path the profile `profile` (logical) points at, following its generation
    /// links; `None` when there is no profile yet.
    pub fn profile_target(&self, profile: &Path) -> std::io::Result<Option<String>> {
        let mut link = self.physical(profile);
        for _ in 0..16 {
            let target = match std::fs::read_link(&link) {
                Ok(target) => target,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            if target.starts_with(STORE_DIR) {
                return store_path_of(&target).map(Some);
            }
            link = match target.is_absolute() {
                true => self.physical(&target),
                false => link.parent().unwrap_or(Path::new("/")).join(target),
            };
        }
        Err(invalid_data(format!("{}: too many levels of symbolic links", profile.display())))
    }

    /// The number of the profile generation `profile` (logical) points at now: Nix's
    /// `system` → `system-5-link` is 5. `None` when there is no profile, or its link is not
    /// one of Nix's generation links.
    pub fn profile_generation(&self, profile: &Path) -> std::io::Result<Option<u64>> {
        let target = match std::fs::read_link(self.physical(profile)) {
            Ok(target) => target,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let name = profile.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        Ok(target.file_name().and_then(|t| t.to_str()).and_then(|t| generation_of_link(name, t)))
    }

    /// `nix-env -p PROFILE --set PATH`: a new generation of the profile pointing at `path`.
    pub async fn set_profile(&self, profile: &Path, path: &str) -> Result<(), NixError> {
        check_output_path(path)?;
        let mut argv = self.with_store("nix-env");
        argv.extend(["-p".into(), path_arg(&self.physical(profile))?, "--set".into(), path.into()]);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        process::run_streaming(&argv, &[], SHORT, &tx).await.map(drop)
    }

    /// Runs `<toplevel>/bin/switch-to-configuration <action>`, sending its output to `log`
    /// (stderr as it comes, where NixOS's script prints its progress; stdout at the end).
    pub async fn switch_to_configuration(
        &self,
        toplevel: &str,
        action: SwitchAction,
        timeout: Duration,
        log: &UnboundedSender<String>,
    ) -> Result<(), NixError> {
        check_output_path(toplevel)?;
        let script = self.physical(&Path::new(toplevel).join("bin/switch-to-configuration"));
        let argv = vec![path_arg(&script)?, action.as_str().to_owned()];
        let stdout = process::run_streaming(&argv, &[], timeout, log).await?;
        for line in String::from_utf8_lossy(&stdout).lines().filter(|l| !l.trim().is_empty()) {
            let _ = log.send(line.to_owned());
        }
        Ok(())
    }

    /// What `systemctl is-system-running` prints (`running`, `degraded`, `starting`, …).
    ///
    /// Its exit status is an answer (non-zero unless `running`), not a failure.
    pub async fn system_state(&self) -> Result<String, NixError> {
        let argv = argv(["systemctl", "is-system-running"]);
        let out = limited(&argv, output(&argv, &[])).await?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if state.is_empty() {
            return Err(super::failed(&argv, &out));
        }
        Ok(state)
    }

    /// Runs a configured health-check command (an argv, never a shell string) with a time
    /// limit, its stderr sent to `log`.
    pub async fn run_check(
        &self,
        command: &[String],
        timeout: Duration,
        log: &UnboundedSender<String>,
    ) -> Result<(), NixError> {
        process::run_streaming(command, &[], timeout, log).await.map(drop)
    }

    /// Runs the reboot command (`systemctl reboot` on a host).
    pub async fn reboot(&self, command: &[String]) -> Result<(), NixError> {
        limited(command, run_env(command, &[])).await.map(drop)
    }

    /// The system the host booted (`/run/booted-system`), if known.
    pub fn booted_system(&self) -> Option<PathBuf> {
        std::fs::read_link(self.physical(Path::new("/run/booted-system"))).ok()
    }

    /// The system running now (`/run/current-system`), if known and a store path.
    pub fn current_system(&self) -> Option<String> {
        let target = std::fs::read_link(self.physical(Path::new("/run/current-system"))).ok()?;
        target.to_str().filter(|t| check_output_path(t).is_ok()).map(str::to_owned)
    }

    /// The boot files of the toplevel `toplevel` (logical).
    pub fn boot_files(&self, toplevel: &Path) -> BootFiles {
        let link = |name: &str| std::fs::read_link(self.physical(&toplevel.join(name))).ok();
        BootFiles { kernel: link("kernel"), initrd: link("initrd"), kernel_modules: link("kernel-modules") }
    }

    /// Becomes `nix-daemon --stdio` on this store (what `nix copy --to ssh-ng://` talks
    /// to), replacing the process; returns only when that could not be done. `untrusted`
    /// (Nix 2.15 and later): the client is not trusted, so it can neither skip the signature
    /// check nor change the daemon's settings.
    pub fn exec_daemon(&self, untrusted: bool) -> NixError {
        use std::os::unix::process::CommandExt;
        let mut argv = vec!["nix-daemon".to_owned(), "--stdio".to_owned()];
        if untrusted {
            argv.extend(
                ["--extra-experimental-features", "daemon-trust-override", "--force-untrusted"].map(String::from),
            );
        }
        if let Some(store) = &self.store {
            argv.extend(["--option".to_owned(), "store".to_owned(), store.clone()]);
        }
        let source = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
        NixError::Spawn { argv, source }
    }

    /// `program [--store S]`.
    fn with_store(&self, program: &str) -> Vec<String> {
        let mut argv = vec![program.to_owned()];
        if let Some(store) = &self.store {
            argv.extend(["--store".to_owned(), store.clone()]);
        }
        argv
    }
}

/// `run` stopped after [`SHORT`] (the child is killed when its future is dropped).
async fn limited<T>(
    argv: &[String],
    run: impl std::future::Future<Output = Result<T, NixError>>,
) -> Result<T, NixError> {
    let timeout = || NixError::Timeout { argv: argv.to_vec(), after: SHORT, stderr_tail: String::new() };
    tokio::time::timeout(SHORT, run).await.map_err(|_| timeout())?
}

/// Refuses anything but a store path itself (`/nix/store/<hash>-<name>`), and derivations:
/// realising a `.drv` would build it.
fn check_output_path(path: &str) -> Result<(), NixError> {
    let invalid = |reason| NixError::Invalid { what: "store path", value: path.to_owned(), reason };
    let ok =
        path.strip_prefix(STORE_DIR).and_then(|rest| rest.strip_prefix('/')).is_some_and(|name| !name.contains('/'));
    if !ok || path.parse::<StorePath>().is_err() {
        return Err(invalid("expected /nix/store/<hash>-<name>"));
    }
    if path.ends_with(".drv") {
        return Err(invalid("a derivation would be built; expected an output path"));
    }
    Ok(())
}

/// The store path `/nix/store/<hash>-<name>` that `target` is or lies in.
/// `5` from `system-5-link`, the name Nix gives generation 5 of the profile `system`.
fn generation_of_link(profile: &str, link: &str) -> Option<u64> {
    let number = link.strip_prefix(profile)?.strip_prefix('-')?.strip_suffix("-link")?;
    match number.bytes().all(|b| b.is_ascii_digit()) && !number.starts_with('0') {
        true => number.parse().ok(),
        false => None,
    }
}

fn store_path_of(target: &Path) -> std::io::Result<String> {
    let name = target.strip_prefix(STORE_DIR).ok().and_then(|rest| rest.iter().next());
    let path = name.map(|n| Path::new(STORE_DIR).join(n)).and_then(|p| p.to_str().map(str::to_owned));
    match path {
        Some(path) if check_output_path(&path).is_ok() => Ok(path),
        _ => Err(invalid_data(format!("{} is not a store path", target.display()))),
    }
}

fn invalid_data(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Starts berth itself with `args`, detached: its own process group, stdio closed, not
/// waited for (the push gate's deadline watcher, which outlives the SSH session).
pub fn spawn_self_detached(args: &[String]) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    let exe = std::env::current_exe()?;
    let child = std::process::Command::new(exe)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Reaped by init once this process exits; dropping the handle does not wait.
    drop(child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::io::{BufRead, BufReader, Write};
    use std::process::Command;

    use tokio::sync::mpsc::unbounded_channel;

    use super::*;

    /// A fake toplevel named `name` in a chroot store at `root`: its `switch-to-configuration`
    /// appends its arguments to `<dir>/activations` and fails while `<dir>/fail` exists.
    fn toplevel(dir: &Path, root: &Path, name: &str) -> String {
        let src = dir.join(name);
        std::fs::create_dir_all(src.join("bin")).unwrap();
        let record = dir.join("activations");
        let fail = dir.join("fail");
        let script = format!(
            "#!/bin/sh\necho \"{name} $*\" >> '{}'\nif [ -e '{}' ]; then echo 'unit failed' >&2; exit 4; fi\necho done\n",
            record.display(),
            fail.display()
        );
        std::fs::write(src.join("bin/switch-to-configuration"), script).unwrap();
        std::fs::set_permissions(
            src.join("bin/switch-to-configuration"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            format!("/nix/store/00000000000000000000000000000000-linux-{name}"),
            src.join("kernel"),
        )
        .unwrap();
        nix(Command::new("nix-store").arg("--store").arg(root).arg("--add").arg(&src), &[])
    }

    fn nix(cmd: &mut Command, env: &[(&str, &OsStr)]) -> String {
        let out = cmd.envs(env.iter().copied()).output().expect("nix is required by this test");
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn lines(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv().ok()).collect()
    }

    #[test]
    fn logical_paths_are_rerooted_in_a_chroot_store_only() {
        let chroot = SystemRoot::new(Some("/srv/test-root"));
        let profile = Path::new("/nix/var/nix/profiles/system");
        assert_eq!(chroot.physical(profile), Path::new("/srv/test-root/nix/var/nix/profiles/system"));
        assert_eq!(chroot.with_store("nix-env"), ["nix-env", "--store", "/srv/test-root"]);
        for system in [SystemRoot::new(None), SystemRoot::new(Some("daemon"))] {
            assert_eq!(system.physical(profile), profile);
        }
        assert_eq!(SystemRoot::new(None).with_store("nix-store"), ["nix-store"]);
    }

    #[test]
    fn profile_generation_numbers_come_from_nix_link_names() {
        for (profile, link, number) in [
            ("system", "system-5-link", Some(5)),
            ("system", "system-123-link", Some(123)),
            ("system", "system-0-link", None),
            ("system", "system-05-link", None),
            ("system", "system--5-link", None),
            ("system", "system-5", None),
            ("system", "other-5-link", None),
            ("system", "system-x-link", None),
            ("system", "system-99999999999999999999999-link", None),
            ("system", "system-٥-link", None),
            ("my-system", "my-system-2-link", Some(2)),
        ] {
            assert_eq!(generation_of_link(profile, link), number, "{link}");
        }
    }

    #[test]
    fn only_output_paths_reach_a_command_line() {
        let good = "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-nixos-system-web";
        assert!(check_output_path(good).is_ok());
        for bad in [
            "",
            "--option",
            "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-x.drv",
            "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-x/bin",
            "/nix/store/../etc",
            "/tmp/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-x",
        ] {
            assert!(matches!(check_output_path(bad), Err(NixError::Invalid { .. })), "{bad}");
        }
        let inside = Path::new("/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-web/bin/x");
        assert_eq!(store_path_of(inside).unwrap(), "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-web");
        assert!(store_path_of(Path::new("/nix/store")).is_err());
    }

    #[tokio::test]
    async fn sets_and_reads_a_profile_in_a_chroot_store() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let (a, b) = (toplevel(dir.path(), &root, "system-a"), toplevel(dir.path(), &root, "system-b"));
        let system = SystemRoot::new(Some(root.to_str().unwrap()));
        let profile = Path::new("/nix/var/nix/profiles/system");
        assert_eq!(system.profile_target(profile).unwrap(), None);

        system.set_profile(profile, &a).await.unwrap();
        assert_eq!(system.profile_target(profile).unwrap().as_deref(), Some(a.as_str()));
        assert_eq!(system.profile_generation(profile).unwrap(), Some(1));
        system.set_profile(profile, &b).await.unwrap();
        assert_eq!(system.profile_target(profile).unwrap().as_deref(), Some(b.as_str()));
        assert_eq!(system.profile_generation(profile).unwrap(), Some(2));
        // The link lives under the chroot, as `system -> system-2-link -> /nix/store/…`.
        let physical = root.join("nix/var/nix/profiles/system");
        assert_eq!(std::fs::read_link(&physical).unwrap(), Path::new("system-2-link"));

        assert_eq!(system.boot_files(Path::new(&a)).kernel.unwrap().to_str().unwrap().rsplit('-').next(), Some("a"));
        assert_eq!((system.booted_system(), system.current_system()), (None, None));
        std::fs::create_dir_all(root.join("run")).unwrap();
        std::os::unix::fs::symlink(&a, root.join("run/booted-system")).unwrap();
        std::os::unix::fs::symlink(&b, root.join("run/current-system")).unwrap();
        assert_eq!((system.booted_system(), system.current_system()), (Some(PathBuf::from(&a)), Some(b)));
    }

    #[tokio::test]
    async fn runs_switch_to_configuration_from_the_chroot() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let a = toplevel(dir.path(), &root, "system-a");
        let system = SystemRoot::new(Some(root.to_str().unwrap()));
        let (tx, mut rx) = unbounded_channel();
        let limit = Duration::from_secs(30);
        system.switch_to_configuration(&a, SwitchAction::Test, limit, &tx).await.unwrap();
        system.switch_to_configuration(&a, SwitchAction::Boot, limit, &tx).await.unwrap();
        assert_eq!(lines(&mut rx), ["done", "done"]);

        std::fs::write(dir.path().join("fail"), "").unwrap();
        let err = system.switch_to_configuration(&a, SwitchAction::Test, limit, &tx).await.unwrap_err();
        assert!(
            matches!(&err, NixError::Failed { status, stderr_tail, .. } if status.code() == Some(4) && stderr_tail == "unit failed"),
            "{err}"
        );
        let record = std::fs::read_to_string(dir.path().join("activations")).unwrap();
        assert_eq!(record, "system-a test\nsystem-a boot\nsystem-a test\n");
    }

    #[tokio::test]
    async fn checks_are_argv_lists() {
        let system = SystemRoot::new(None);
        let (tx, mut rx) = unbounded_channel();
        let limit = Duration::from_secs(10);
        system.run_check(&argv(["true"]), limit, &tx).await.unwrap();
        let err = system.run_check(&argv(["sh", "-c", "echo 'db down' >&2; exit 2"]), limit, &tx).await.unwrap_err();
        assert!(matches!(&err, NixError::Failed { stderr_tail, .. } if stderr_tail == "db down"), "{err}");
        assert_eq!(lines(&mut rx), ["db down"]);
        let slow = system.run_check(&argv(["sleep", "5"]), Duration::from_millis(200), &tx).await.unwrap_err();
        assert!(matches!(slow, NixError::Timeout { .. }), "{slow}");
    }

    /// Serves the files of `dir` over HTTP/1.1 (GET and HEAD, one request per connection), as
    /// an HTTP binary cache; returns its URL. Nix caches "not found" answers only for HTTP
    /// caches, not for `file://` ones, so the realise test needs one.
    fn serve_dir(dir: PathBuf) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let dir = dir.clone();
                std::thread::spawn(move || answer(stream, &dir));
            }
        });
        url
    }

    fn answer(mut stream: std::net::TcpStream, dir: &Path) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut request = String::new();
        reader.read_line(&mut request)?;
        let mut header = String::new();
        while reader.read_line(&mut header)? > 2 {
            header.clear();
        }
        let mut parts = request.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        match std::fs::read(dir.join(path.trim_start_matches('/'))) {
            Ok(body) => {
                write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())?;
                if method != "HEAD" {
                    stream.write_all(&body)?;
                }
                Ok(())
            }
            Err(_) => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        }
    }

    #[tokio::test]
    async fn realises_from_a_cache_that_said_not_found_before() {
        let dir = tempfile::tempdir().unwrap();
        let (src, cache) = (dir.path().join("src"), dir.path().join("cache"));
        let path = toplevel(dir.path(), &src, "system-a");
        std::fs::create_dir(&cache).unwrap();
        std::fs::write(cache.join("nix-cache-info"), "StoreDir: /nix/store\nPriority: 30\n").unwrap();
        let nix_config = format!("substituters = {}\nrequire-sigs = false\n", serve_dir(cache.clone()));
        let xdg = dir.path().join("xdg-cache");
        let env = [("NIX_CONFIG", OsStr::new(&nix_config)), ("XDG_CACHE_HOME", xdg.as_os_str())];

        let dst = dir.path().join("dst");
        let system = SystemRoot::new(Some(dst.to_str().unwrap()));
        let gc_root = dir.path().join("gc-root");
        let (tx, mut rx) = unbounded_channel();
        let limit = Duration::from_secs(60);
        let missing = system.realise_in(&path, &gc_root, limit, &tx, &env).await.unwrap_err();
        assert!(matches!(missing, NixError::Failed { .. }), "{missing}");

        // Published after the host asked: Nix alone now answers from its negative cache...
        let to = format!("file://{}", cache.display());
        nix(
            Command::new("nix")
                .args(["--extra-experimental-features", "nix-command", "copy", "--to", &to])
                .arg("--from")
                .arg(&src)
                .arg(&path),
            &[],
        );
        let plain =
            Command::new("nix-store").arg("--store").arg(&dst).args(["--realise", &path]).envs(env).output().unwrap();
        assert!(!plain.status.success(), "the negative cache was not in effect");

        // ...but the agent's realise does not rely on it.
        lines(&mut rx);
        system.realise_in(&path, &gc_root, limit, &tx, &env).await.unwrap();
        assert!(dst.join(path.trim_start_matches('/')).join("bin/switch-to-configuration").is_file());
        assert_eq!(std::fs::read_link(&gc_root).unwrap(), Path::new(&path));
        assert!(lines(&mut rx).iter().any(|l| l.contains("copying path")));
    }
}
