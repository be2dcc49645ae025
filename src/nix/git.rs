//! berth's bare git mirror of each repository, commit signatures and ancestry, with the real
//! `git`.
//!
//! Every commit berth fetches is pinned under `refs/berth/<sha>` in the mirror. The pin keeps a
//! commit that was fetched by hash (and is on no branch) from `git gc`, and it gives Nix a ref
//! to fetch: see [`super::flake::flake_ref`].

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::args::{check_commit, git_url};
use super::{argv, failed, output, path_arg, run_env, tail, NixError, STDERR_TAIL_LINES};

/// What berth concluded about a commit's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// A good signature by an allowed key, and git's verification succeeded.
    Trusted {
        /// Who signed: the principal from the allowed-signers file (SSH) or the GPG user id.
        signer: String,
        /// The key: an SSH `SHA256:` fingerprint or a GPG key id.
        key: String,
    },
    /// The commit carries no signature.
    Unsigned,
    /// Signed, but not acceptably.
    Untrusted {
        /// One line saying why.
        reason: String,
    },
}

/// Which signatures count as trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// git's SSH allowed-signers file (`gpg.ssh.allowedSignersFile`). Unset: no SSH key is
    /// trusted, whatever the git configuration of the user running berth says.
    pub allowed_signers_file: Option<PathBuf>,
    /// The GnuPG home holding the trusted public keys (`GNUPGHOME`). Unset: GnuPG's default.
    pub gpg_home: Option<PathBuf>,
    /// The lowest GnuPG trust level accepted (`gpg.minTrustLevel`: `marginal`, `fully`,
    /// `ultimate`, ...). Unset: git's default.
    pub gpg_min_trust_level: Option<String>,
}

/// Makes `commit` available in the bare mirror at `mirror`, fetching from `url` if needed.
///
/// `url` may be flake-style (`git+https://…`, `git+ssh://…`, `git+file:///…`) or a plain git
/// URL (`https://…`, `ssh://…`, `file:///…`, `/abs/path`). The mirror is created if missing.
/// A commit already in the mirror is not fetched again (commits are immutable). Otherwise all
/// branches are fetched and, if the commit is on none of them, the commit itself by hash.
/// The commit is then pinned as `refs/berth/<sha>`.
///
/// Two fetches into the same mirror at once may fail on git's ref locks: callers serialize
/// fetches per repository.
pub async fn fetch(mirror: &Path, url: &str, commit: &str) -> Result<(), NixError> {
    check_commit(commit)?;
    let remote = git_url(url)?;
    if !mirror.join("HEAD").is_file() {
        let mut init = argv(["git", "init", "--bare", "--quiet", "--"]);
        init.push(path_arg(mirror)?);
        run_env(&init, &[]).await?;
    }
    if !has_commit(mirror, commit).await? {
        // `--prune` drops branches deleted upstream, which also clears the way for a new branch
        // whose name clashes with an old one (`a` vs `a/b`). Pins under `refs/berth/` stay.
        let heads = ["fetch", "--quiet", "--prune", "--no-tags", "--", &remote, "+refs/heads/*:refs/heads/*"];
        run_env(&git(mirror, &heads)?, &no_prompt()).await?;
    }
    let pin = format!("refs/berth/{commit}");
    if !has_commit(mirror, commit).await? {
        // Servers speaking protocol v2 (git ≥ 2.18, GitHub, Forgejo) hand out any reachable
        // commit by hash; older ones refuse with "not our ref".
        let by_hash = format!("+{commit}:{pin}");
        let fetch = git(mirror, &["fetch", "--quiet", "--no-tags", "--", &remote, &by_hash])?;
        let out = output(&fetch, &no_prompt()).await?;
        if !out.status.success() {
            return Err(no_such_commit(commit, url, tail(&out.stderr, STDERR_TAIL_LINES)));
        }
    }
    // `^{commit}`: the hash must name a commit, not a tree or a blob.
    if !has_commit(mirror, commit).await? {
        return Err(no_such_commit(commit, url, "not a commit".into()));
    }
    run_env(&git(mirror, &["update-ref", &pin, commit])?, &[]).await?;
    Ok(())
}

/// Checks the signature of `commit` (already in `mirror`) against `policy`.
///
/// Runs `git verify-commit` and judges by its exit code, never by its text (git prints "Good
/// signature" even for a key that is not allowed); then reads `%G?`, the signer and the key
/// with `git log`. [`Signature::Trusted`] needs all three: exit 0, `%G?` = `G`, a signer.
pub async fn verify_commit(mirror: &Path, commit: &str, policy: &SignaturePolicy) -> Result<Signature, NixError> {
    check_commit(commit)?;
    let verifier = Verifier::new(mirror, policy)?;
    let verified = verifier.verified(&[commit]).await?;
    // `--no-show-signature`: a `log.showSignature` in the service user's git configuration
    // would mix GnuPG's report into stdout.
    let log = verifier.run(&["log", "-1", "--no-show-signature", "--format=%G?%n%GS%n%GK", commit]).await?;
    let text = String::from_utf8_lossy(&log.stdout);
    let mut lines = text.lines();
    let (code, signer, key) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    Ok(judge(verified, code, signer.trim(), key.trim()))
}

/// One commit of a range and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSignature {
    /// Full hash.
    pub commit: String,
    /// What berth concluded about its signature.
    pub signature: Signature,
}

/// The commits reachable from `tip` and from none of `exclude` (all in `mirror`), merge
/// commits and every parent's history included, oldest first (topological order), each with
/// its signature judged as [`verify_commit`] does. At most `limit` commits, the newest: ask
/// for one more than you accept to learn that a range is too long.
///
/// One `git log` reads every verdict (`%G?`, `%GS`, `%GK`); one `git verify-commit` of all
/// commits with a good signature confirms them by its exit code, and only when it fails is
/// each one verified alone, to find which.
pub async fn range_signatures(
    mirror: &Path,
    tip: &str,
    exclude: &[&str],
    limit: usize,
    policy: &SignaturePolicy,
) -> Result<Vec<CommitSignature>, NixError> {
    check_commit(tip)?;
    exclude.iter().try_for_each(|c| check_commit(c))?;
    let verifier = Verifier::new(mirror, policy)?;
    let max = format!("--max-count={limit}");
    let mut args = vec!["log", "--no-show-signature", "--topo-order", &max, RANGE_FORMAT, tip, "--not"];
    args.extend_from_slice(exclude);
    args.push("--");
    let argv = verifier.argv(&args)?;
    let out = run_env(&argv, &verifier.env()).await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut records =
        parse_range(&text).ok_or_else(|| NixError::Output { argv, reason: "a malformed record".into() })?;
    records.reverse();
    let good: Vec<&str> = records.iter().filter(|r| r.code == "G").map(|r| r.commit).collect();
    let all_verified = good.is_empty() || verifier.verified(&good).await?;
    let mut commits = Vec::with_capacity(records.len());
    for r in records {
        let verified = r.code == "G" && (all_verified || verifier.verified(&[r.commit]).await?);
        commits
            .push(CommitSignature { commit: r.commit.to_owned(), signature: judge(verified, r.code, r.signer, r.key) });
    }
    Ok(commits)
}

/// `git log`'s record per commit: hash, `%G?`, key, signer, separated by US, ended by RS
/// (a GPG user id may hold spaces).
const RANGE_FORMAT: &str = "--format=tformat:%H%x1f%G?%x1f%GK%x1f%GS%x1e";

/// One commit as [`RANGE_FORMAT`] prints it.
#[derive(Debug, PartialEq, Eq)]
struct RangeRecord<'a> {
    commit: &'a str,
    code: &'a str,
    key: &'a str,
    signer: &'a str,
}

/// The records of `git log --format=RANGE_FORMAT`, newest first; `None` when one is not.
fn parse_range(text: &str) -> Option<Vec<RangeRecord<'_>>> {
    text.split('\x1e')
        .map(|r| r.trim_start_matches('\n'))
        .filter(|r| !r.trim().is_empty())
        .map(|r| {
            let mut fields = r.split('\x1f');
            let commit = fields.next().filter(|c| check_commit(c).is_ok())?;
            let (code, key, signer) = (fields.next()?, fields.next()?.trim(), fields.next()?.trim());
            fields.next().is_none().then_some(RangeRecord { commit, code, key, signer })
        })
        .collect()
}

/// git with a repository's signature policy: its allowed signers, GnuPG home and trust level.
struct Verifier<'a> {
    mirror: &'a Path,
    options: Vec<String>,
    gpg_home: Option<&'a OsStr>,
}

impl<'a> Verifier<'a> {
    fn new(mirror: &'a Path, policy: &'a SignaturePolicy) -> Result<Self, NixError> {
        let mut options = vec!["-c".to_owned()];
        // /dev/null rather than nothing: an empty allow-list, not the service user's git config.
        let signers = policy.allowed_signers_file.as_deref().unwrap_or(Path::new("/dev/null"));
        options.push(format!("gpg.ssh.allowedSignersFile={}", path_arg(signers)?));
        if let Some(level) = &policy.gpg_min_trust_level {
            options.extend(["-c".to_owned(), format!("gpg.minTrustLevel={level}")]);
        }
        Ok(Self { mirror, options, gpg_home: policy.gpg_home.as_deref().map(Path::as_os_str) })
    }

    fn argv(&self, args: &[&str]) -> Result<Vec<String>, NixError> {
        let mut argv = git(self.mirror, &[])?;
        argv.extend(self.options.iter().cloned());
        argv.extend(args.iter().map(|s| s.to_string()));
        Ok(argv)
    }

    fn env(&self) -> Vec<(&'static str, &'a OsStr)> {
        self.gpg_home.map(|home| ("GNUPGHOME", home)).into_iter().collect()
    }

    async fn run(&self, args: &[&str]) -> Result<std::process::Output, NixError> {
        run_env(&self.argv(args)?, &self.env()).await
    }

    /// Whether `git verify-commit` accepts every one of `commits` (its exit code).
    async fn verified(&self, commits: &[&str]) -> Result<bool, NixError> {
        let mut args = vec!["verify-commit"];
        args.extend_from_slice(commits);
        Ok(output(&self.argv(&args)?, &self.env()).await?.status.success())
    }
}

/// The verdict from `git verify-commit`'s success and `git log`'s `%G?`, `%GS` and `%GK`.
fn judge(verified: bool, code: &str, signer: &str, key: &str) -> Signature {
    let untrusted = |reason: &str| Signature::Untrusted { reason: reason.to_owned() };
    match code {
        "G" if verified && !signer.is_empty() => Signature::Trusted { signer: signer.to_owned(), key: key.to_owned() },
        "G" if signer.is_empty() => untrusted("good signature, but git names no signer"),
        "G" => untrusted("good signature, but git verify-commit refused it (below gpg.minTrustLevel?)"),
        "N" => Signature::Unsigned,
        // SSH: a valid signature by a key missing from allowed_signers; GPG: unknown validity.
        "U" => untrusted("signed by a key not in allowed_signers (or not trusted enough by GnuPG)"),
        "B" => untrusted("bad signature"),
        "X" => untrusted("good signature, but the signature has expired"),
        "Y" => untrusted("good signature, but the key has expired"),
        "R" => untrusted("signed by a revoked key"),
        "E" => untrusted("the signature cannot be checked (missing key?)"),
        _ => untrusted("git reported an unknown signature status"),
    }
}

/// Whether `ancestor` is an ancestor of `descendant` (or the same commit), both in `mirror`.
pub async fn is_ancestor(mirror: &Path, ancestor: &str, descendant: &str) -> Result<bool, NixError> {
    check_commit(ancestor)?;
    check_commit(descendant)?;
    let argv = git(mirror, &["merge-base", "--is-ancestor", ancestor, descendant])?;
    let out = output(&argv, &[]).await?;
    // 0: yes; 1: no; anything else (128: unknown commit): an error.
    match out.status.code() {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(failed(&argv, &out)),
    }
}

/// `git -C <mirror>` followed by `args`.
fn git(mirror: &Path, args: &[&str]) -> Result<Vec<String>, NixError> {
    let mut argv = argv(["git", "-C"]);
    argv.push(path_arg(mirror)?);
    argv.extend(args.iter().map(|a| a.to_string()));
    Ok(argv)
}

/// Whether `commit` names a commit present in `mirror`.
pub async fn contains(mirror: &Path, commit: &str) -> Result<bool, NixError> {
    check_commit(commit)?;
    has_commit(mirror, commit).await
}

/// Whether `commit` names a commit present in `mirror`.
async fn has_commit(mirror: &Path, commit: &str) -> Result<bool, NixError> {
    let spec = format!("{commit}^{{commit}}");
    Ok(output(&git(mirror, &["cat-file", "-e", &spec])?, &[]).await?.status.success())
}

fn no_such_commit(commit: &str, url: &str, detail: String) -> NixError {
    NixError::NoSuchCommit { commit: commit.to_owned(), url: url.to_owned(), detail }
}

/// A fetch never waits for a password: under systemd there is nobody to type it.
fn no_prompt() -> [(&'static str, &'static OsStr); 1] {
    [("GIT_TERMINAL_PROMPT", OsStr::new("0"))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::testutil::{Fleet, Scratch};

    #[test]
    fn signature_status_to_verdict() {
        let trusted = Signature::Trusted { signer: "alice".into(), key: "K".into() };
        assert_eq!(judge(true, "G", "alice", "K"), trusted);
        assert_eq!(judge(true, "N", "", ""), Signature::Unsigned);
        for (verified, code, signer) in [(false, "G", "alice"), (true, "G", ""), (true, "U", ""), (false, "B", "x")] {
            assert!(matches!(judge(verified, code, signer, "K"), Signature::Untrusted { .. }), "{code}");
        }
    }

    #[tokio::test]
    async fn fetch_mirrors_branches_and_lone_commits() {
        let scratch = Scratch::new();
        let fleet = Fleet::new(&scratch);
        let (mirror, first) = (scratch.path("mirrors/fleet"), fleet.head());
        fetch(&mirror, &fleet.url(), &first).await.unwrap();
        assert!(has_commit(&mirror, &first).await.unwrap());
        assert_eq!(std::fs::read_to_string(mirror.join(format!("refs/berth/{first}"))).unwrap().trim(), first);

        // A commit on no branch at all is fetched by its hash; a plain path works as a URL.
        let lone = fleet.git(&["commit-tree", "-p", &first, "-m", "lone", &format!("{first}^{{tree}}")]);
        fetch(&mirror, fleet.dir.to_str().unwrap(), &lone).await.unwrap();
        assert!(has_commit(&mirror, &lone).await.unwrap());

        let missing = "0123456789abcdef0123456789abcdef01234567";
        let err = fetch(&mirror, &fleet.url(), missing).await.unwrap_err();
        assert!(matches!(&err, NixError::NoSuchCommit { commit, .. } if commit == missing), "{err}");
        let tree = fleet.git(&["rev-parse", "HEAD^{tree}"]);
        let err = fetch(&mirror, &fleet.url(), &tree).await.unwrap_err();
        assert!(matches!(&err, NixError::NoSuchCommit { .. }), "{err}");
        let err = fetch(&mirror, &fleet.url(), "HEAD").await.unwrap_err();
        assert!(matches!(&err, NixError::Invalid { .. }), "{err}");
    }

    #[tokio::test]
    async fn signatures_are_trusted_only_from_allowed_keys() {
        let scratch = Scratch::new();
        let fleet = Fleet::new(&scratch);
        let (alice, mallory) = (scratch.ssh_key("alice"), scratch.ssh_key("mallory"));
        let policy = SignaturePolicy {
            allowed_signers_file: Some(scratch.allowed_signers("alice@example.org", &alice)),
            gpg_min_trust_level: Some("fully".into()),
            ..SignaturePolicy::default()
        };
        let signed = fleet.commit("signed", Some(&alice));
        let unsigned = fleet.commit("unsigned", None);
        let forged = fleet.commit("forged", Some(&mallory));
        let mirror = scratch.path("mirror");
        fetch(&mirror, &fleet.url(), &forged).await.unwrap();

        let verdict = verify_commit(&mirror, &signed, &policy).await.unwrap();
        let Signature::Trusted { signer, key } = &verdict else { panic!("{verdict:?}") };
        assert_eq!((signer.as_str(), key.starts_with("SHA256:")), ("alice@example.org", true));
        assert_eq!(verify_commit(&mirror, &unsigned, &policy).await.unwrap(), Signature::Unsigned);
        let verdict = verify_commit(&mirror, &forged, &policy).await.unwrap();
        assert!(
            matches!(&verdict, Signature::Untrusted { reason } if reason.contains("allowed_signers")),
            "{verdict:?}"
        );
        // No allow-list: nobody is trusted.
        let verdict = verify_commit(&mirror, &signed, &SignaturePolicy::default()).await.unwrap();
        assert!(matches!(verdict, Signature::Untrusted { .. }), "{verdict:?}");
        // An SSH key is trusted "fully", not "ultimately": `%G?` still says `G`, but
        // verify-commit fails, and its exit code is what counts.
        let ultimate = SignaturePolicy { gpg_min_trust_level: Some("ultimate".into()), ..policy.clone() };
        let verdict = verify_commit(&mirror, &signed, &ultimate).await.unwrap();
        assert!(matches!(&verdict, Signature::Untrusted { reason } if reason.contains("verify-commit")), "{verdict:?}");
        let missing = "0123456789abcdef0123456789abcdef01234567";
        assert!(verify_commit(&mirror, missing, &policy).await.is_err());
    }

    #[test]
    fn range_records() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let text = format!("{a}\x1fG\x1fSHA256:k\x1fBob <bob@example.org>\x1e\n{b}\x1fN\x1f\x1f\x1e\n");
        let records = parse_range(&text).unwrap();
        assert_eq!(
            records,
            [
                RangeRecord { commit: &a, code: "G", key: "SHA256:k", signer: "Bob <bob@example.org>" },
                RangeRecord { commit: &b, code: "N", key: "", signer: "" },
            ]
        );
        assert_eq!(parse_range("").unwrap(), []);
        assert!(parse_range("HEAD\x1fG\x1f\x1f\x1e").is_none(), "not a hash");
        assert!(parse_range(&format!("{a}\x1fG\x1e")).is_none(), "fields missing");
        assert!(parse_range(&format!("{a}\x1fG\x1f\x1f\x1fx\x1fy\x1e")).is_none(), "too many fields");
    }

    #[tokio::test]
    async fn a_range_holds_every_commit_since_the_base_merges_included() {
        let scratch = Scratch::new();
        let fleet = Fleet::new(&scratch);
        let (alice, mallory) = (scratch.ssh_key("alice"), scratch.ssh_key("mallory"));
        let policy = SignaturePolicy {
            allowed_signers_file: Some(scratch.allowed_signers("alice@example.org", &alice)),
            ..SignaturePolicy::default()
        };
        let base = fleet.head();
        let signed = fleet.commit("signed", Some(&alice));
        fleet.git(&["checkout", "--quiet", "-b", "side", &base]);
        let forged = fleet.commit("forged", Some(&mallory));
        fleet.git(&["checkout", "--quiet", "main"]);
        fleet.git(&["merge", "--quiet", "--no-ff", "--no-gpg-sign", "-m", "merge", "side"]);
        let merge = fleet.head();
        let tip = fleet.commit("tip", Some(&alice));
        let mirror = scratch.path("mirror");
        fetch(&mirror, &fleet.url(), &tip).await.unwrap();

        let range = range_signatures(&mirror, &tip, &[&base], 10, &policy).await.unwrap();
        let commits: Vec<&str> = range.iter().map(|c| c.commit.as_str()).collect();
        assert_eq!(commits.len(), 4, "{commits:?}");
        assert_eq!((commits[3], commits[2]), (tip.as_str(), merge.as_str()), "oldest first, topologically");
        let mut parents = [commits[0], commits[1]];
        parents.sort();
        let mut expected = [signed.as_str(), forged.as_str()];
        expected.sort();
        assert_eq!(parents, expected, "both parents' histories");
        let of = |commit: &str| range.iter().find(|c| c.commit == commit).unwrap().signature.clone();
        assert!(matches!(of(&tip), Signature::Trusted { signer, .. } if signer == "alice@example.org"));
        assert!(matches!(of(&signed), Signature::Trusted { .. }));
        assert_eq!(of(&merge), Signature::Unsigned);
        assert!(matches!(of(&forged), Signature::Untrusted { reason } if reason.contains("allowed_signers")));

        // The whole history, the base's root commit included; a limit keeps the newest.
        assert_eq!(range_signatures(&mirror, &tip, &[], 10, &policy).await.unwrap().len(), 5);
        let newest = range_signatures(&mirror, &tip, &[], 2, &policy).await.unwrap();
        assert_eq!(newest.iter().map(|c| c.commit.as_str()).collect::<Vec<_>>(), [merge.as_str(), tip.as_str()]);
        // Excluding a descendant of the tip, or several bases, leaves nothing / less.
        assert!(range_signatures(&mirror, &signed, &[&tip], 10, &policy).await.unwrap().is_empty());
        assert_eq!(range_signatures(&mirror, &tip, &[&signed, &forged], 10, &policy).await.unwrap().len(), 2);
        // All good signatures verified at once, and one by one when that fails.
        let good = range_signatures(&mirror, &signed, &[&base], 10, &policy).await.unwrap();
        assert!(matches!(&good[..], [CommitSignature { signature: Signature::Trusted { .. }, .. }]));
        let strict = SignaturePolicy { gpg_min_trust_level: Some("ultimate".into()), ..policy.clone() };
        let refused = range_signatures(&mirror, &signed, &[&base], 10, &strict).await.unwrap();
        assert!(matches!(&refused[0].signature, Signature::Untrusted { reason } if reason.contains("verify-commit")));
        assert!(range_signatures(&mirror, "HEAD", &[], 10, &policy).await.is_err());
        assert!(contains(&mirror, &forged).await.unwrap());
        assert!(!contains(&mirror, &"0".repeat(40)).await.unwrap());
    }

    #[tokio::test]
    async fn gpg_signatures_need_a_trusted_key() {
        let mut scratch = Scratch::new();
        let fleet = Fleet::new(&scratch);
        let (home, public_only, fpr) = scratch.gpg_key("Bob <bob@example.org>");
        let signed = fleet.commit_gpg("signed", &home, &fpr);
        let mirror = scratch.path("mirror");
        fetch(&mirror, &fleet.url(), &signed).await.unwrap();

        let policy = |home: &Path| SignaturePolicy {
            gpg_home: Some(home.to_owned()),
            gpg_min_trust_level: Some("fully".into()),
            ..SignaturePolicy::default()
        };
        let verdict = verify_commit(&mirror, &signed, &policy(&home)).await.unwrap();
        let Signature::Trusted { signer, key } = &verdict else { panic!("{verdict:?}") };
        assert_eq!(signer, "Bob <bob@example.org>");
        assert!(fpr.ends_with(key.as_str()), "{key} vs {fpr}");
        // The key is known there but not trusted: a good signature, of unknown validity.
        let verdict = verify_commit(&mirror, &signed, &policy(&public_only)).await.unwrap();
        assert!(matches!(verdict, Signature::Untrusted { .. }), "{verdict:?}");
        // A range judges GPG signatures alike: the unsigned root, then Bob's commit.
        let range = range_signatures(&mirror, &signed, &[], 10, &policy(&home)).await.unwrap();
        let verdicts: Vec<&Signature> = range.iter().map(|c| &c.signature).collect();
        assert!(matches!(verdicts[..], [Signature::Unsigned, Signature::Trusted { .. }]), "{verdicts:?}");
        let range = range_signatures(&mirror, &signed, &[], 10, &policy(&public_only)).await.unwrap();
        assert!(matches!(range[1].signature, Signature::Untrusted { .. }), "{range:?}");
    }

    #[tokio::test]
    async fn ancestry() {
        let scratch = Scratch::new();
        let fleet = Fleet::new(&scratch);
        let first = fleet.head();
        let second = fleet.commit("second", None);
        fleet.git(&["checkout", "--quiet", "-b", "side", &first]);
        let side = fleet.commit("side", None);
        let mirror = scratch.path("mirror");
        fetch(&mirror, &fleet.url(), &side).await.unwrap();
        fetch(&mirror, &fleet.url(), &second).await.unwrap();

        assert!(is_ancestor(&mirror, &first, &second).await.unwrap());
        assert!(is_ancestor(&mirror, &second, &second).await.unwrap());
        assert!(!is_ancestor(&mirror, &second, &first).await.unwrap());
        assert!(!is_ancestor(&mirror, &side, &second).await.unwrap());
        let missing = "0123456789abcdef0123456789abcdef01234567";
        let err = is_ancestor(&mirror, missing, &second).await.unwrap_err();
        assert!(matches!(err, NixError::Failed { .. }), "{err}");
    }
}
