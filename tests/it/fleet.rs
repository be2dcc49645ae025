//! The test fleet: a git work tree holding a flake whose `nixosConfigurations.<host>` are plain
//! derivations (no nixpkgs), with commits signed by a test SSH key. Every host's
//! `config.system.build.toplevel` holds `bin/switch-to-configuration` and references one
//! shared derivation, `berth-fleet-common`; its content comes from `hosts/<host>.txt`, so
//! changing that file changes that host's store path and no other.
//!
//! The work tree is the state of the next commit: `set_host` and `set_broken` edit files,
//! `commit` puts them on a branch. Nix only sees committed files (a flake from git ignores
//! untracked ones), so nothing changes for berth until `commit`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use crate::harness::{require, run_ok, stdout_of, Scratch};

/// The variable that `bin/switch-to-configuration` appends `<host> <args…>` lines to.
pub const ACTIVATION_LOG_ENV: &str = "BERTH_TEST_ACTIVATION_LOG";
/// The flag file that a "network-cutting" generation's activation creates (see `NetCut`).
pub const NETWORK_FLAG_ENV: &str = "BERTH_TEST_NETWORK_FLAG";

/// The flake. `builtins.currentSystem` is refused in pure evaluation, so the system comes from
/// `system.txt`; `salt.txt` makes every fleet's store paths its own, so tests never share
/// (or skip) each other's builds.
const FLAKE: &str = r#"{
  description = "berth test fleet: one host per hosts/<name>.txt, plain derivations";

  outputs = { self }:
    let
      system = builtins.readFile ./system.txt;
      salt = builtins.readFile ./salt.txt;
      files = builtins.readDir ./hosts;
      hostNames = map (f: builtins.substring 0 (builtins.stringLength f - 4) f)
        (builtins.filter (f: builtins.match ".*\\.txt" f != null) (builtins.attrNames files));
      mk = name: env: script: derivation ({
        inherit name system salt;
        builder = "/bin/sh";
        PATH = "/usr/bin:/bin";
        args = [ "-c" script ];
      } // env);
      common = mk "berth-fleet-common" { } ''
        mkdir -p $out/bin
        printf '#!/bin/sh\necho common\n' > $out/bin/common
        chmod +x $out/bin/common
      '';
      toplevel = host: mk "nixos-system-${host}" {
        inherit host common;
        marker = builtins.readFile (./hosts + "/${host}.txt");
        broken = if files ? "${host}.broken" then "1" else "";
        pause = if files ? "${host}.sleep" then builtins.readFile (./hosts + "/${host}.sleep") else "0";
        switchfail = if files ? "${host}.switchfail" then "1" else "";
        cutnet = if files ? "${host}.cutnet" then "1" else "";
        switchpause = if files ? "${host}.switchpause" then builtins.readFile (./hosts + "/${host}.switchpause") else "0";
      } ''
        i=0
        while [ "$i" -lt "$pause" ]; do
          i=$((i + 1))
          echo "building $host: tick $i"
          sleep 1
        done
        if [ -n "$broken" ]; then
          echo "error: host $host is broken on purpose" >&2
          exit 1
        fi
        mkdir -p $out/bin
        printf '%s' "$marker" > $out/marker
        ln -s $common $out/sw
        cat > $out/bin/switch-to-configuration <<EOS
        #!/bin/sh
        # Records the activation for tests; a real system would switch here.
        if [ -n "\$BERTH_TEST_ACTIVATION_LOG" ]; then
          echo "$host \$*" >> "\$BERTH_TEST_ACTIVATION_LOG"
        fi
        # A generation made with set_cuts_network cuts the test network; any other restores it.
        if [ -n "\$BERTH_TEST_NETWORK_FLAG" ]; then
          if [ -n "$cutnet" ]; then touch "\$BERTH_TEST_NETWORK_FLAG"; else rm -f "\$BERTH_TEST_NETWORK_FLAG"; fi
        fi
        if [ "\$1" = dry-activate ]; then
          echo "would restart the following units: $host-app.service"
          exit 0
        fi
        if [ "\$1" = test ]; then sleep $switchpause; fi
        if [ -n "$switchfail" ]; then
          echo "error: activation of $host fails on purpose" >&2
          exit 1
        fi
        exit 0
        EOS
        chmod +x $out/bin/switch-to-configuration
      '';
    in {
      nixosConfigurations = builtins.listToAttrs (map (host: {
        name = host;
        value.config = {
          networking.hostName = host;
          system.build.toplevel = toplevel host;
        };
      }) hostNames);
    };
}
"#;

/// An SSH signing key made with `ssh-keygen -t ed25519`.
pub struct SshSigner {
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    /// The principal (an e-mail address) it is allowed as.
    pub principal: String,
}

impl SshSigner {
    fn generate(dir: &Path, name: &str, principal: &str) -> Self {
        let private_key = dir.join(name);
        run_ok(
            Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", principal, "-f"]).arg(&private_key),
        );
        Self { public_key: private_key.with_extension("pub"), private_key, principal: principal.to_owned() }
    }

    /// This key's line in git's allowed-signers format.
    pub fn allowed_signers_line(&self) -> String {
        let key = fs::read_to_string(&self.public_key).unwrap();
        format!("{} namespaces=\"git\" {}", self.principal, key.trim())
    }
}

/// How `Fleet::commit` signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// With the key listed in `allowed_signers()`.
    Trusted,
    /// Not at all.
    Unsigned,
    /// With a valid SSH signature by a key that is not allowed.
    OtherKey,
}

/// The fleet's repository and keys.
pub struct Fleet {
    /// A non-bare git work tree.
    pub repo: PathBuf,
    /// `alice@example.org`, the key in `allowed_signers()`.
    pub signer: SshSigner,
    /// `mallory@example.org`: signs, but is allowed nowhere.
    pub other: SshSigner,
    allowed_signers: PathBuf,
}

impl Fleet {
    /// A repository with `hosts`, and one commit on `main` signed by `signer`.
    pub fn new(s: &Scratch, hosts: &[&str]) -> Fleet {
        require("git");
        require("ssh-keygen");
        let (repo, keys) = (free_dir(s, "fleet"), free_dir(s, "fleet-keys"));
        fs::create_dir_all(repo.join("hosts")).unwrap();
        fs::create_dir_all(&keys).unwrap();
        let signer = SshSigner::generate(&keys, "alice", "alice@example.org");
        let other = SshSigner::generate(&keys, "mallory", "mallory@example.org");
        let allowed_signers = keys.join("allowed_signers");
        fs::write(&allowed_signers, format!("{}\n", signer.allowed_signers_line())).unwrap();

        let system = stdout_of(s.nix("nix").args(["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"]));
        fs::write(repo.join("flake.nix"), FLAKE).unwrap();
        fs::write(repo.join("system.txt"), system).unwrap();
        fs::write(repo.join("salt.txt"), repo.to_str().unwrap()).unwrap();
        let fleet = Fleet { repo, signer, other, allowed_signers };
        run_ok(fleet.git().args(["init", "-q", "-b", "main"]));
        run_ok(fleet.git().args(["config", "user.name", "Alice"]));
        run_ok(fleet.git().args(["config", "user.email", "alice@example.org"]));
        for host in hosts {
            fleet.set_host(host, "initial");
        }
        fleet.commit("main", "Initial fleet", Signing::Trusted);
        fleet
    }

    /// The flake URL for berth's `[[repositories]] url` (add `?rev=<sha>` to pin a commit;
    /// without `ref` or `rev`, Nix reads the work tree, uncommitted edits included).
    pub fn url(&self) -> String {
        format!("git+file://{}", self.repo.display())
    }

    /// An allowed-signers file listing `signer` as `alice@example.org` (not `other`).
    pub fn allowed_signers(&self) -> PathBuf {
        self.allowed_signers.clone()
    }

    /// Sets the content that `host`'s toplevel is made from (adding the host if it is new).
    pub fn set_host(&self, host: &str, marker: &str) {
        fs::write(self.host_file(host, "txt"), marker).unwrap();
    }

    /// Makes `host`'s build fail (`error: host <host> is broken on purpose` on stderr), or not.
    pub fn set_broken(&self, host: &str, broken: bool) {
        let flag = self.host_file(host, "broken");
        if broken {
            fs::write(flag, "").unwrap();
        } else if flag.exists() {
            fs::remove_file(flag).unwrap();
        }
    }

    /// Makes `host`'s `switch-to-configuration` fail (exit 1), or not.
    pub fn set_switch_fails(&self, host: &str, fails: bool) {
        self.flag(host, "switchfail", fails.then_some(""));
    }

    /// Makes `host`'s activation cut the test network (create `$BERTH_TEST_NETWORK_FLAG`),
    /// or not (a generation without it removes the flag when activated).
    pub fn set_cuts_network(&self, host: &str, cuts: bool) {
        self.flag(host, "cutnet", cuts.then_some(""));
    }

    /// Makes `host`'s `switch-to-configuration test` take `seconds` (0: no pause).
    pub fn set_switch_pause(&self, host: &str, seconds: u32) {
        self.flag(host, "switchpause", (seconds > 0).then(|| seconds.to_string()).as_deref());
    }

    fn flag(&self, host: &str, ext: &str, content: Option<&str>) {
        let file = self.host_file(host, ext);
        match content {
            Some(text) => fs::write(file, text).unwrap(),
            None if file.exists() => fs::remove_file(file).unwrap(),
            None => {}
        }
    }

    /// Makes `host`'s build take `seconds` longer, printing `building <host>: tick N` each
    /// second (for tests that interrupt a build or follow its log).
    pub fn set_slow(&self, host: &str, seconds: u32) {
        fs::write(self.host_file(host, "sleep"), seconds.to_string()).unwrap();
    }

    /// Commits the whole work tree on `branch` and returns the commit's full hash. Switches to
    /// `branch` first like `git switch` (carrying the edits; a new branch starts at the current
    /// commit). Empty commits are allowed, so every call makes a new commit.
    pub fn commit(&self, branch: &str, message: &str, signing: Signing) -> String {
        let current = stdout_of(self.git().args(["symbolic-ref", "--short", "HEAD"]));
        if current != branch {
            let exists = self
                .git()
                .args(["rev-parse", "--verify", "--quiet", &format!("refs/heads/{branch}")])
                .output()
                .unwrap();
            let switch = if exists.status.success() { vec!["switch", "-q"] } else { vec!["switch", "-q", "-c"] };
            run_ok(self.git().args(switch).arg(branch));
        }
        run_ok(self.git().args(["add", "-A"]));
        let mut git = self.git();
        self.sign_with(&mut git, signing);
        git.arg("commit");
        git.arg(if signing == Signing::Unsigned { "--no-gpg-sign" } else { "-S" });
        run_ok(git.args(["-q", "--allow-empty", "-m", message]));
        stdout_of(self.git().args(["rev-parse", "HEAD"]))
    }

    /// Creates `branch` at `commit` (it must not exist yet); the work tree stays where it is.
    pub fn branch_at(&self, branch: &str, commit: &str) {
        run_ok(self.git().args(["branch", branch, commit]));
    }

    /// Merges `from` into `into` with a merge commit (never a fast-forward), signed as asked,
    /// and returns its hash. The branches must touch different files.
    pub fn merge(&self, into: &str, from: &str, message: &str, signing: Signing) -> String {
        run_ok(self.git().args(["switch", "-q", into]));
        let mut git = self.git();
        self.sign_with(&mut git, signing);
        git.arg("merge");
        git.arg(if signing == Signing::Unsigned { "--no-gpg-sign" } else { "-S" });
        run_ok(git.args(["-q", "--no-ff", "--no-edit", "-m", message, from]));
        stdout_of(self.git().args(["rev-parse", "HEAD"]))
    }

    /// The `git -c …` options that pick the signing key `signing` asks for.
    fn sign_with(&self, git: &mut Command, signing: Signing) {
        match signing {
            Signing::Trusted | Signing::OtherKey => {
                let key = if signing == Signing::Trusted { &self.signer } else { &self.other };
                git.args(["-c", "gpg.format=ssh", "-c"]).arg(format!("user.signingkey={}", key.private_key.display()));
            }
            Signing::Unsigned => {}
        }
    }

    /// The store path of `host`'s toplevel at `commit`, by evaluation only (nothing is built).
    pub fn toplevel(&self, s: &Scratch, commit: &str, host: &str) -> String {
        let attr = format!("{}?rev={commit}#nixosConfigurations.{host}.config.system.build.toplevel", self.url());
        stdout_of(s.nix("nix").args(["eval", "--raw", &attr]))
    }

    fn host_file(&self, host: &str, ext: &str) -> PathBuf {
        assert!(
            !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "test host names are [A-Za-z0-9-]+, not {host:?}"
        );
        self.repo.join("hosts").join(format!("{host}.{ext}"))
    }

    /// git, cut off from the machine's configuration and any ssh-agent.
    fn git(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.repo)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env_remove("SSH_AUTH_SOCK");
        cmd
    }
}

/// `name`, or `name-1`, `name-2`… when a fleet already lives in this scratch directory.
fn free_dir(s: &Scratch, name: &str) -> PathBuf {
    (0..).map(|i| if i == 0 { s.path(name) } else { s.path(&format!("{name}-{i}")) }).find(|p| !p.exists()).unwrap()
}

/// `nix build` of `host` at `commit`: the output path, or the failed build's stderr.
fn build(s: &Scratch, fleet: &Fleet, commit: &str, host: &str) -> Result<String, String> {
    let attr = format!("{}?rev={commit}#nixosConfigurations.{host}.config.system.build.toplevel", fleet.url());
    let out = s.nix("nix").args(["build", "--no-link", "--json", &attr]).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(json[0]["outputs"]["out"].as_str().unwrap().to_owned())
}

#[test]
fn fleet_evaluates_and_builds() {
    let s = Scratch::new();
    let fleet = Fleet::new(&s, &["web", "db", "cache"]);
    let names = stdout_of(
        s.nix("nix")
            .args(["eval", "--json"])
            .arg(format!("{}?ref=main#nixosConfigurations", fleet.url()))
            .args(["--apply", "builtins.attrNames"]),
    );
    assert_eq!(names, r#"["cache","db","web"]"#);

    let first = stdout_of(fleet.git().args(["rev-parse", "main"]));
    let (web, db) = (build(&s, &fleet, &first, "web").unwrap(), build(&s, &fleet, &first, "db").unwrap());
    assert_ne!(web, db);
    assert_eq!(web, fleet.toplevel(&s, &first, "web"));
    let common: Vec<String> = s.closure(&web).into_iter().filter(|p| p.ends_with("-berth-fleet-common")).collect();
    assert_eq!(common.len(), 1, "{web} references one common path");
    assert!(s.closure(&db).contains(&common[0]), "{db} shares {}", common[0]);

    // The activation script the agent will run.
    let log = s.path("activation.log");
    run_ok(Command::new(format!("{web}/bin/switch-to-configuration")).arg("switch").env(ACTIVATION_LOG_ENV, &log));
    assert_eq!(fs::read_to_string(&log).unwrap(), "web switch\n");

    // Changing one host changes that host's path only.
    fleet.set_host("web", "port 443 open");
    let second = fleet.commit("main", "web: open port 443", Signing::Trusted);
    assert_ne!(build(&s, &fleet, &second, "web").unwrap(), web);
    assert_eq!(fleet.toplevel(&s, &second, "db"), db);

    // A broken host fails with its message; the fix makes it build again.
    fleet.set_broken("db", true);
    let broken = fleet.commit("main", "db: break", Signing::Trusted);
    let err = build(&s, &fleet, &broken, "db").unwrap_err();
    assert!(err.contains("error: host db is broken on purpose"), "{err}");
    fleet.set_broken("db", false);
    let fixed = fleet.commit("main", "db: fix", Signing::Trusted);
    assert_eq!(build(&s, &fleet, &fixed, "db").unwrap(), db);
}

#[test]
fn fleet_commits_are_signed_as_asked() {
    let s = Scratch::new();
    let fleet = Fleet::new(&s, &["web"]);
    let main = stdout_of(fleet.git().args(["rev-parse", "main"]));
    let test_web = fleet.commit("test-web", "web: try", Signing::OtherKey);
    let unsigned = fleet.commit("main", "unsigned", Signing::Unsigned);
    assert_eq!(stdout_of(fleet.git().args(["rev-parse", "test-web~1", "main~1"])), format!("{main}\n{main}"));

    let allowed = format!("gpg.ssh.allowedSignersFile={}", fleet.allowed_signers().display());
    for (commit, status, signer) in [(main, "G", "alice@example.org"), (test_web, "U", ""), (unsigned, "N", "")] {
        let verify = fleet.git().args(["-c", &allowed, "verify-commit", &commit]).output().unwrap();
        assert_eq!(verify.status.success(), status == "G", "{status}: {verify:?}");
        let shown = stdout_of(fleet.git().args(["-c", &allowed, "log", "-1", "--format=%G? %GS", &commit]));
        assert_eq!(shown, format!("{status} {signer}").trim());
    }
}
