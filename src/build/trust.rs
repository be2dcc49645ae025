//! PURE: the signed-history gate. Given what git found about the commits a deploy would bring
//! (each with its signature verdict), the repository's requirement and where the check
//! started, decide whether the build may deploy, or name the commit that stops it.
//!
//! The threat: anyone who can push to a deploying branch. With `signed_commits = "tip"` only
//! the pushed commit is checked, so an unsigned (or an intruder's) commit followed by one
//! signed commit deploys the intruder's change as soon as a trusted signer commits on top
//! without reading the whole range. With `"all"` (the default) every commit reachable from
//! the tip and from none of the trusted points — the last commit deployed from the branch
//! (or to the host, for a test branch) and the repository's `trusted_since` — must carry a
//! trusted signature, merges and what they bring included, like Guix's authenticated
//! channels. Nothing deployed and no `trusted_since`: the whole history.

use std::fmt;

/// The most commits one build checks; beyond it the build deploys nothing (name a newer
/// `trusted_since`, or deploy a commit in between first). Each signed commit costs git a
/// signature verification: this bounds a build's time, not its safety.
pub const MAX_COMMITS: usize = 1000;

/// Which commits of a deploying branch need a trusted signature (`signed_commits`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SignedCommits {
    /// Every commit since the last deployed one (or `trusted_since`, or the root).
    #[default]
    All,
    /// The pushed commit alone (berth before signed history).
    Tip,
}

impl SignedCommits {
    /// The configuration's spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "all" => Some(Self::All),
            "tip" => Some(Self::Tip),
            _ => None,
        }
    }
}

/// What a repository requires before a build deploys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// `require_signed_commits = false`: no signature is looked at.
    Nothing,
    /// A trusted signature on the tip.
    Tip,
    /// A trusted signature on every commit since the base.
    History,
}

impl Requirement {
    /// From `require_signed_commits` and `signed_commits`.
    pub fn of(require_signed: bool, mode: SignedCommits) -> Self {
        match (require_signed, mode) {
            (false, _) => Self::Nothing,
            (true, SignedCommits::Tip) => Self::Tip,
            (true, SignedCommits::All) => Self::History,
        }
    }
}

/// What the signature check found about one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitTrust {
    /// Signed by an allow-listed key.
    Trusted {
        /// The principal (SSH allowed signers) or GPG user id.
        signer: String,
        /// The key: an SSH `SHA256:` fingerprint or a GPG key id.
        key: String,
    },
    /// Not signed.
    Unsigned,
    /// Signed, but not by an allowed key, or the signature is bad: why.
    Untrusted(String),
}

/// [`CommitTrust`] without its details, as stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Signed by an allow-listed key.
    Trusted,
    /// Not signed.
    Unsigned,
    /// Signed, not acceptably.
    Untrusted,
}

impl Verdict {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Unsigned => "unsigned",
            Self::Untrusted => "untrusted",
        }
    }
}

impl CommitTrust {
    /// The verdict alone.
    pub fn verdict(&self) -> Verdict {
        match self {
            Self::Trusted { .. } => Verdict::Trusted,
            Self::Unsigned => Verdict::Unsigned,
            Self::Untrusted(_) => Verdict::Untrusted,
        }
    }

    /// The signer, when trusted.
    pub fn signer(&self) -> Option<&str> {
        match self {
            Self::Trusted { signer, .. } => Some(signer),
            _ => None,
        }
    }
}

impl fmt::Display for CommitTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Trusted { signer, .. } => write!(f, "signed by {signer}"),
            Self::Unsigned => f.write_str("unsigned"),
            Self::Untrusted(why) => write!(f, "untrusted: {why}"),
        }
    }
}

/// One commit and what its check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCommit {
    /// Full hash.
    pub commit: String,
    /// The verdict.
    pub trust: CommitTrust,
}

/// Where a deploy already went from: the last commit deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployed {
    /// The last commit the deploy branch (named) deployed to any host.
    FromBranch(String, String),
    /// The commit a test branch's host (named) runs now.
    ToHost(String, String),
}

impl Deployed {
    /// The commit.
    pub fn commit(&self) -> &str {
        match self {
            Self::FromBranch(_, commit) | Self::ToHost(_, commit) => commit,
        }
    }
}

/// Where the history check starts: commits reachable from either point are not checked
/// (they were checked when deployed, or the operator vouched for them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Base {
    /// The last commit deployed.
    pub deployed: Option<Deployed>,
    /// The repository's `trusted_since`.
    pub trusted_since: Option<String>,
}

impl Base {
    /// The commits whose history is excluded from the check.
    pub fn commits(&self) -> Vec<&str> {
        self.deployed.iter().map(Deployed::commit).chain(self.trusted_since.as_deref()).collect()
    }
}

impl fmt::Display for Base {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.deployed {
            Some(Deployed::FromBranch(branch, commit)) => write!(f, "the last commit deployed from {branch} {commit}")?,
            Some(Deployed::ToHost(host, commit)) => write!(f, "the last commit deployed to {host} {commit}")?,
            None if self.trusted_since.is_none() => return f.write_str("the start of the history"),
            None => {}
        }
        match (&self.deployed, &self.trusted_since) {
            (Some(_), Some(since)) => write!(f, " or trusted_since {since}"),
            (None, Some(since)) => write!(f, "trusted_since {since}"),
            (_, None) => Ok(()),
        }
    }
}

/// Why a build deploys nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A commit that needed a signature has none.
    #[error("commit {commit} is not signed{}", since(.base))]
    Unsigned {
        /// The commit.
        commit: String,
        /// Where the check started (none: the tip alone was checked).
        base: Option<String>,
    },
    /// A commit's signature is not acceptable.
    #[error("commit {commit}'s signature is not trusted ({reason}){}", since(.base))]
    Untrusted {
        /// The commit.
        commit: String,
        /// Why.
        reason: String,
        /// Where the check started (none: the tip alone was checked).
        base: Option<String>,
    },
    /// Too long a range to check.
    #[error(
        "more than {} commits since {base} would deploy: set trusted_since to a newer commit, or deploy a commit in between first",
        MAX_COMMITS
    )]
    TooManyCommits {
        /// Where the check started.
        base: String,
    },
    /// The tip's own check is missing (a caller's mistake: refused rather than trusted).
    #[error("the commit's signature was not checked")]
    Unchecked,
    /// A rewind of the deploy branch, with `require_fast_forward`.
    #[error("the commit does not descend from the last deployed commit (a rewind)")]
    Rewind,
}

fn since(base: &Option<String>) -> String {
    base.as_ref().map(|b| format!("; every commit since {b} must carry a trusted signature")).unwrap_or_default()
}

/// Whether a build may deploy. `commits` are what git found, oldest first: for
/// [`Requirement::Tip`] the tip alone, for [`Requirement::History`] every commit since
/// `base` (at most [`MAX_COMMITS`] + 1; empty when the tip is reachable from the base).
/// `fast_forward` is `Some(false)` for a refused rewind. The oldest failing commit is named.
pub fn decide(
    requirement: Requirement,
    base: &Base,
    commits: &[CheckedCommit],
    fast_forward: Option<bool>,
) -> Result<(), Refusal> {
    match requirement {
        Requirement::Nothing => {}
        Requirement::Tip => judge(commits.last().ok_or(Refusal::Unchecked)?, None)?,
        Requirement::History => {
            if commits.len() > MAX_COMMITS {
                return Err(Refusal::TooManyCommits { base: base.to_string() });
            }
            let base = base.to_string();
            commits.iter().try_for_each(|c| judge(c, Some(&base)))?;
        }
    }
    if fast_forward == Some(false) {
        return Err(Refusal::Rewind);
    }
    Ok(())
}

fn judge(c: &CheckedCommit, base: Option<&str>) -> Result<(), Refusal> {
    let (commit, base) = (c.commit.clone(), base.map(str::to_owned));
    match &c.trust {
        CommitTrust::Trusted { .. } => Ok(()),
        CommitTrust::Unsigned => Err(Refusal::Unsigned { commit, base }),
        CommitTrust::Untrusted(reason) => Err(Refusal::Untrusted { commit, reason: reason.clone(), base }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> CommitTrust {
        CommitTrust::Trusted { signer: "alice".into(), key: "SHA256:k".into() }
    }

    /// Commits `c1`, `c2`… with the given verdicts, oldest first.
    fn commits(trust: &[CommitTrust]) -> Vec<CheckedCommit> {
        trust
            .iter()
            .enumerate()
            .map(|(i, t)| CheckedCommit { commit: format!("c{}", i + 1), trust: t.clone() })
            .collect()
    }

    fn deployed() -> Base {
        Base { deployed: Some(Deployed::FromBranch("main".into(), "d0".into())), trusted_since: None }
    }

    #[track_caller]
    fn check(requirement: Requirement, base: &Base, trust: &[CommitTrust], expected: Result<(), &str>) {
        let got = decide(requirement, base, &commits(trust), None).map_err(|e| e.to_string());
        assert_eq!(got.as_ref().map_err(String::as_str).copied(), expected);
    }

    #[test]
    fn every_commit_of_the_history_needs_a_trusted_signature() {
        use CommitTrust::*;
        let bad = || Untrusted("unknown key".into());
        let history = Requirement::History;
        check(history, &deployed(), &[alice(), alice()], Ok(()));
        check(history, &deployed(), &[], Ok(()));
        let since_d0 = "; every commit since the last commit deployed from main d0 must carry a trusted signature";
        check(history, &deployed(), &[Unsigned, alice()], Err(&format!("commit c1 is not signed{since_d0}")));
        check(
            history,
            &deployed(),
            &[alice(), bad(), Unsigned, alice()],
            Err(&format!("commit c2's signature is not trusted (unknown key){since_d0}")),
        );
        check(
            history,
            &Base::default(),
            &[alice(), Unsigned],
            Err("commit c2 is not signed; every commit since the start of the history must carry a trusted signature"),
        );
        // The tip alone: what lies under it is not looked at.
        check(Requirement::Tip, &deployed(), &[Unsigned, alice()], Ok(()));
        check(Requirement::Tip, &deployed(), &[alice(), Unsigned], Err("commit c2 is not signed"));
        check(Requirement::Tip, &deployed(), &[], Err("the commit's signature was not checked"));
        check(Requirement::Nothing, &deployed(), &[Unsigned, bad()], Ok(()));
    }

    #[test]
    fn too_long_a_history_is_refused() {
        let long = vec![alice(); MAX_COMMITS + 1];
        let err = decide(Requirement::History, &Base::default(), &commits(&long), None).unwrap_err();
        assert_eq!(err, Refusal::TooManyCommits { base: "the start of the history".into() });
        assert!(err.to_string().contains("more than 1000 commits"), "{err}");
        assert!(decide(Requirement::History, &Base::default(), &commits(&long[1..]), None).is_ok());
    }

    #[test]
    fn rewinds_are_refused_after_signatures() {
        let unsigned = commits(&[CommitTrust::Unsigned]);
        assert_eq!(decide(Requirement::Nothing, &deployed(), &unsigned, Some(false)), Err(Refusal::Rewind));
        assert!(matches!(decide(Requirement::Tip, &deployed(), &unsigned, Some(false)), Err(Refusal::Unsigned { .. })));
        assert!(decide(Requirement::Nothing, &deployed(), &unsigned, Some(true)).is_ok());
    }

    #[test]
    fn bases_say_where_the_check_started() {
        let host = Some(Deployed::ToHost("beta".into(), "b1".into()));
        let cases = [
            (Base::default(), "the start of the history", vec![]),
            (deployed(), "the last commit deployed from main d0", vec!["d0"]),
            (Base { deployed: None, trusted_since: Some("t0".into()) }, "trusted_since t0", vec!["t0"]),
            (
                Base { deployed: host, trusted_since: Some("t0".into()) },
                "the last commit deployed to beta b1 or trusted_since t0",
                vec!["b1", "t0"],
            ),
        ];
        for (base, text, excluded) in cases {
            assert_eq!((base.to_string().as_str(), base.commits()), (text, excluded));
        }
    }

    #[test]
    fn modes_and_verdicts() {
        assert_eq!(SignedCommits::parse("all"), Some(SignedCommits::All));
        assert_eq!(SignedCommits::parse("tip"), Some(SignedCommits::Tip));
        assert_eq!(SignedCommits::parse("some"), None);
        assert_eq!(Requirement::of(true, SignedCommits::default()), Requirement::History);
        assert_eq!(Requirement::of(false, SignedCommits::All), Requirement::Nothing);
        assert_eq!(alice().to_string(), "signed by alice");
        assert_eq!(CommitTrust::Untrusted("bad signature".into()).to_string(), "untrusted: bad signature");
        assert_eq!((alice().verdict().as_str(), alice().signer()), ("trusted", Some("alice")));
        assert_eq!(CommitTrust::Unsigned.verdict().as_str(), "unsigned");
    }
}
