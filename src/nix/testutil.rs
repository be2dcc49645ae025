//! Test fixtures for `nix/`: a scratch directory, an offline Nix environment, SSH signing keys
//! and a git repository holding a small fleet flake, all with the real programs.
//!
//! A missing `git`, `nix` or `ssh-keygen` fails the test with a message; nothing is skipped.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Offline Nix with flakes: no substituter to wait for.
const NIX_CONFIG: &str = "substituters =\nexperimental-features = nix-command flakes\nwarn-dirty = false";

/// A temporary directory that also holds a private Nix cache (`XDG_CACHE_HOME`).
pub struct Scratch {
    dir: tempfile::TempDir,
    cache: PathBuf,
    gpg_homes: Vec<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // gpg starts an agent per home; it would outlive the test.
        for home in &self.gpg_homes {
            let _ = Command::new("gpgconf").args(["--kill", "gpg-agent"]).env("GNUPGHOME", home).status();
        }
    }
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("xdg-cache");
        Self { dir, cache, gpg_homes: Vec::new() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A string unique to this scratch directory.
    pub fn salt(&self) -> String {
        self.dir.path().file_name().unwrap().to_str().unwrap().replace('.', "")
    }

    /// The environment for Nix: offline, flakes on, its git clones in this scratch directory.
    pub fn nix_env(&self) -> [(&'static str, &OsStr); 2] {
        [("NIX_CONFIG", OsStr::new(NIX_CONFIG)), ("XDG_CACHE_HOME", self.cache.as_os_str())]
    }

    /// A new ed25519 key pair without passphrase; returns the public key file.
    pub fn ssh_key(&self, name: &str) -> PathBuf {
        let key = self.path(name);
        let args = [OsStr::new("-q"), "-t".as_ref(), "ed25519".as_ref(), "-N".as_ref(), "".as_ref()];
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(args).arg("-C").arg(name).arg("-f").arg(&key);
        run(&mut cmd, "ssh-keygen (apt-get install openssh-client)");
        key.with_extension("pub")
    }

    /// A GnuPG home holding a new, ultimately trusted ed25519 signing key for `uid`, and a
    /// second home that holds only its public key (known, but not trusted); returns both homes
    /// and the key's fingerprint. Their agents are stopped when the scratch directory goes.
    pub fn gpg_key(&mut self, uid: &str) -> (PathBuf, PathBuf, String) {
        let (home, public) = (self.path("gnupg"), self.path("gnupg-public"));
        for dir in [&home, &public] {
            std::fs::create_dir(dir).unwrap();
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
            self.gpg_homes.push(dir.clone());
        }
        let gpg = |home: &Path, args: &[&str]| {
            let mut cmd = Command::new("gpg");
            cmd.args(["--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]).args(args);
            run(cmd.env("GNUPGHOME", home), "gpg (apt-get install gnupg)")
        };
        gpg(&home, &["--quick-gen-key", uid, "ed25519", "sign", "never"]);
        let listing = gpg(&home, &["--with-colons", "--list-secret-keys"]);
        let fpr = listing.lines().find_map(|l| l.strip_prefix("fpr:")).unwrap().trim_matches(':').to_owned();
        let exported = public.join("key.asc");
        gpg(&home, &["--armor", "--output", exported.to_str().unwrap(), "--export", &fpr]);
        gpg(&public, &["--import", exported.to_str().unwrap()]);
        (home, public, fpr)
    }

    /// An allowed-signers file trusting `public_key` for `principal` to sign git commits.
    pub fn allowed_signers(&self, principal: &str, public_key: &Path) -> PathBuf {
        let key = std::fs::read_to_string(public_key).unwrap();
        let file = self.path("allowed_signers");
        std::fs::write(&file, format!("{principal} namespaces=\"git\" {}", key.trim())).unwrap();
        file
    }
}

/// A working repository with a fleet flake on `main`.
pub struct Fleet {
    pub dir: PathBuf,
}

impl Fleet {
    /// hostA and hostB build a `bin/switch-to-configuration`; `broken` fails with a message;
    /// `slow` sleeps for a minute. `salt` (the scratch directory's unique name) makes every
    /// derivation new to the store, so that tests really build.
    pub fn new(scratch: &Scratch) -> Self {
        let dir = scratch.path("upstream");
        std::fs::create_dir(&dir).unwrap();
        let flake = FLAKE.replace("@SALT@", &scratch.salt());
        std::fs::write(dir.join("flake.nix"), flake).unwrap();
        let fleet = Self { dir };
        fleet.git(&["init", "--quiet", "--initial-branch=main"]);
        fleet.git(&["add", "flake.nix"]);
        fleet.git(&["commit", "--quiet", "--message=fleet"]);
        fleet
    }

    /// `git+file://` URL of the repository, as berth's configuration would give it.
    pub fn url(&self) -> String {
        format!("git+file://{}", self.dir.display())
    }

    /// Writes `file` and commits it, signed with `key` (an SSH public key file) when given.
    pub fn commit(&self, file: &str, key: Option<&Path>) -> String {
        std::fs::write(self.dir.join(file), file).unwrap();
        self.git(&["add", file]);
        match key {
            Some(key) => {
                let key = format!("user.signingkey={}", key.display());
                self.git(&["-c", "gpg.format=ssh", "-c", &key, "commit", "--quiet", "-S", "-m", file])
            }
            None => self.git(&["commit", "--quiet", "-m", file]),
        };
        self.head()
    }

    /// Writes `file` and commits it, signed with the GnuPG key `fpr` from `home`.
    pub fn commit_gpg(&self, file: &str, home: &Path, fpr: &str) -> String {
        std::fs::write(self.dir.join(file), file).unwrap();
        self.git(&["add", file]);
        let mut cmd =
            self.git_command(&["-c", &format!("user.signingkey={fpr}"), "commit", "--quiet", "-S", "-m", file]);
        run(cmd.env("GNUPGHOME", home), "git");
        self.head()
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// Runs git in the repository, isolated from the machine's git configuration; returns
    /// stdout, trimmed.
    pub fn git(&self, args: &[&str]) -> String {
        run(&mut self.git_command(args), "git")
    }

    fn git_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("-C").arg(&self.dir);
        cmd.args(["-c", "user.name=Alice", "-c", "user.email=alice@example.org", "-c", "commit.gpgsign=false"]);
        cmd.args(args).env("GIT_CONFIG_GLOBAL", "/dev/null").env("GIT_CONFIG_NOSYSTEM", "1");
        cmd
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what} is required by this test: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const FLAKE: &str = r#"{
  outputs = { self }: let
    mk = name: script: derivation {
      inherit name;
      system = "x86_64-linux";
      builder = "/bin/sh";
      PATH = "/usr/bin:/bin";
      salt = "@SALT@";
      args = [ "-c" script ];
    };
    system = name: mk name ''
      echo "building ${name}"
      mkdir -p $out/bin
      printf '#!/bin/sh\necho switched\n' > $out/bin/switch-to-configuration
      chmod +x $out/bin/switch-to-configuration
    '';
  in {
    nixosConfigurations = {
      hostA.config.system.build.toplevel = system "hostA";
      hostB.config.system.build.toplevel = system "hostB";
      broken.config.system.build.toplevel = mk "broken" "echo 'disk on fire' >&2; exit 1";
      # `exec`: the builder is `sleep` itself, so Nix's kill reaches it.
      slow.config.system.build.toplevel = mk "slow" "echo waiting; exec sleep 60";
    };
  };
}
"#;

/// How many processes carry `name=value` in their environment (Nix passes a derivation's
/// attributes to its builder as environment variables).
pub fn processes_with_env(name: &str, value: &str) -> usize {
    let needle = format!("{name}={value}");
    let procs = std::fs::read_dir("/proc").unwrap().filter_map(Result::ok);
    let environs = procs.filter_map(|p| std::fs::read(p.path().join("environ")).ok());
    environs.filter(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes())).count()
}
