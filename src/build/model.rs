//! PURE: the states a build and each of its hosts go through, and the checks on what a build
//! request may name (commit, branch, hosts).

use std::fmt;

/// Where a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildState {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker is on it.
    Running,
    /// Every host built and every closure is complete in the cache.
    Succeeded,
    /// At least one host failed, or the build could not start; `reason` says why.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

/// Where one host of a build is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostState {
    /// Not started.
    Queued,
    /// `nix build` running.
    Building,
    /// Closure being ingested into the cache.
    Publishing,
    /// Built and published.
    Succeeded,
    /// Failed; `error` says why.
    Failed,
}

/// What a build decided for one of its hosts, once it ended: the generation it made, or why
/// it made none. `berth hosts` shows each host's latest, so "why did main not deploy?" needs
/// no build id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// A new generation (`generation` says which).
    Deployed,
    /// The system is the one the host already has: nothing to deploy.
    Unchanged,
    /// The branch deploys nothing, or not to this host (built for CI only).
    BuildOnly,
    /// A commit that needed a trusted signature has none.
    Unsigned,
    /// A commit's signature is not by a trusted signer.
    UntrustedSigner,
    /// The deploy branch was rewound (`require_fast_forward`).
    Rewound,
    /// The history could not be checked (too many commits since the last deploy).
    Unchecked,
    /// This host's system failed to build or to publish.
    Failed,
    /// It built, but another host of the build failed, so the build deployed nothing.
    HeldBack,
}

macro_rules! text_enum {
    ($t:ty { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),* }
            }

            /// Parses the stored spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)* _ => None }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum!(BuildState { Queued => "queued", Running => "running", Succeeded => "succeeded", Failed => "failed", Cancelled => "cancelled" });
text_enum!(Verdict {
    Deployed => "deployed", Unchanged => "unchanged", BuildOnly => "build-only", Unsigned => "unsigned",
    UntrustedSigner => "untrusted-signer", Rewound => "rewound", Unchecked => "unchecked", Failed => "failed",
    HeldBack => "held-back",
});
text_enum!(HostState { Queued => "queued", Building => "building", Publishing => "publishing", Succeeded => "succeeded", Failed => "failed" });

impl BuildState {
    /// Whether the build has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A full 40-character lowercase hex commit hash.
pub fn valid_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A branch name safe to store, log and hand to git as an argument (a subset of git's own
/// rules: no leading `-`, no `..`, no control characters or spaces, no `@{`).
pub fn valid_branch(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with(['-', '/', '.'])
        && !s.ends_with(['/', '.'])
        && !s.contains("..")
        && !s.contains("@{")
        && !s.contains("//")
        && !s.ends_with(".lock")
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b'+'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for s in ["queued", "running", "succeeded", "failed", "cancelled"] {
            assert_eq!(BuildState::parse(s).unwrap().as_str(), s);
        }
        assert!(BuildState::Cancelled.is_final() && !BuildState::Running.is_final());
        assert_eq!(HostState::parse("publishing"), Some(HostState::Publishing));
        use Verdict::*;
        for v in [Deployed, Unchanged, BuildOnly, Unsigned, UntrustedSigner, Rewound, Unchecked, Failed, HeldBack] {
            assert_eq!(Verdict::parse(v.as_str()), Some(v));
            assert_eq!(serde_json::to_value(v).unwrap(), v.as_str(), "the API spells it as stored");
        }
    }

    #[track_caller]
    fn check_branch(s: &str, ok: bool) {
        assert_eq!(valid_branch(s), ok, "{s:?}");
    }

    #[test]
    fn branch_names() {
        check_branch("main", true);
        check_branch("test-web-1", true);
        check_branch("feature/x.y", true);
        check_branch("-x", false);
        check_branch("a..b", false);
        check_branch("a b", false);
        check_branch("refs@{1}", false);
        check_branch("x.lock", false);
        check_branch("", false);
    }

    #[test]
    fn commits() {
        assert!(valid_commit(&"a".repeat(40)));
        assert!(!valid_commit(&"A".repeat(40)));
        assert!(!valid_commit("abc"));
    }
}
