//! PURE: which hosts a finished build deploys to. The branch policy picks the candidates
//! (the deploy branch: every host; `test-<host>`: that host; any other branch: none), and
//! only hosts whose toplevel changed get a new generation. The signed-history gate
//! (`trust.rs`) can still block deployment while letting the build succeed (CI wants to
//! know that it builds).

use std::collections::HashMap;

use super::model::Verdict;
use super::trust::Refusal;

/// Which hosts a branch may deploy to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// The deploy branch: every host whose closure changed.
    AllChanged,
    /// A `test-<host>` branch: that host alone.
    Host(String),
    /// Any other branch: build and report only.
    None,
}

/// The branch policy of a repository.
pub fn targets(deploy_branch: &str, test_prefix: &str, branch: &str) -> Targets {
    if branch == deploy_branch {
        Targets::AllChanged
    } else if let Some(host) = branch.strip_prefix(test_prefix).filter(|h| !h.is_empty() && !test_prefix.is_empty()) {
        Targets::Host(host.to_owned())
    } else {
        Targets::None
    }
}

/// The generations to create: `(host, toplevel)` for each targeted host whose toplevel
/// differs from its current one, in `built` order.
pub fn new_generations(
    targets: &Targets,
    built: &[(String, String)],
    current: &HashMap<String, String>,
) -> Vec<(String, String)> {
    built.iter().filter(|(host, path)| targets.includes(host) && current.get(host) != Some(path)).cloned().collect()
}

impl Targets {
    /// Whether the branch may deploy to `host`.
    pub fn includes(&self, host: &str) -> bool {
        match self {
            Targets::AllChanged => true,
            Targets::Host(only) => host == only,
            Targets::None => false,
        }
    }
}

/// What a build whose every host built decided for each of them, in `built` order: a
/// generation for each host in [`new_generations`] unless the signed-history gate refused
/// (`refusal`, checked only when there was something to deploy), else why not.
pub fn verdicts(
    targets: &Targets,
    built: &[(String, String)],
    current: &HashMap<String, String>,
    refusal: Option<&Refusal>,
) -> Vec<(String, Verdict)> {
    built
        .iter()
        .map(|(host, path)| {
            let verdict = if !targets.includes(host) {
                Verdict::BuildOnly
            } else if current.get(host) == Some(path) {
                Verdict::Unchanged
            } else {
                refusal.map_or(Verdict::Deployed, refused)
            };
            (host.clone(), verdict)
        })
        .collect()
}

/// The verdict of a host the gate kept from deploying.
fn refused(refusal: &Refusal) -> Verdict {
    match refusal {
        Refusal::Unsigned { .. } => Verdict::Unsigned,
        Refusal::Untrusted { .. } => Verdict::UntrustedSigner,
        Refusal::TooManyCommits { .. } | Refusal::Unchecked => Verdict::Unchecked,
        Refusal::Rewind => Verdict::Rewound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(branch: &str, expected: Targets) {
        assert_eq!(targets("main", "test-", branch), expected, "{branch}");
    }

    #[test]
    fn branch_policy() {
        check("main", Targets::AllChanged);
        check("test-web-1", Targets::Host("web-1".into()));
        check("test-", Targets::None);
        check("feature/x", Targets::None);
        check("mainline", Targets::None);
    }

    #[test]
    fn only_changed_targeted_hosts_get_generations() {
        let built = vec![("a".to_string(), "/p/a2".to_string()), ("b".to_string(), "/p/b1".to_string())];
        let current = HashMap::from([("a".to_string(), "/p/a1".to_string()), ("b".to_string(), "/p/b1".to_string())]);
        assert_eq!(new_generations(&Targets::AllChanged, &built, &current), vec![built[0].clone()]);
        assert_eq!(new_generations(&Targets::Host("b".into()), &built, &current), vec![]);
        assert_eq!(new_generations(&Targets::Host("a".into()), &built, &HashMap::new()), vec![built[0].clone()]);
        assert_eq!(new_generations(&Targets::None, &built, &HashMap::new()), vec![]);
    }

    #[test]
    fn every_built_host_gets_a_verdict() {
        use Verdict::*;
        let built = vec![("a".to_string(), "/p/a2".to_string()), ("b".to_string(), "/p/b1".to_string())];
        let current = HashMap::from([("a".to_string(), "/p/a1".to_string()), ("b".to_string(), "/p/b1".to_string())]);
        let unsigned = Refusal::Unsigned { commit: "c".into(), base: None };
        let untrusted = Refusal::Untrusted { commit: "c".into(), reason: "r".into(), base: None };
        let many = Refusal::TooManyCommits { base: "b".into() };
        for (targets, refusal, expected) in [
            (Targets::AllChanged, None, [Deployed, Unchanged]),
            (Targets::AllChanged, Some(&unsigned), [Unsigned, Unchanged]),
            (Targets::AllChanged, Some(&untrusted), [UntrustedSigner, Unchanged]),
            (Targets::AllChanged, Some(&Refusal::Rewind), [Rewound, Unchanged]),
            (Targets::AllChanged, Some(&many), [Unchecked, Unchanged]),
            (Targets::AllChanged, Some(&Refusal::Unchecked), [Unchecked, Unchanged]),
            (Targets::Host("a".into()), None, [Deployed, BuildOnly]),
            (Targets::Host("b".into()), None, [BuildOnly, Unchanged]),
            (Targets::None, None, [BuildOnly, BuildOnly]),
        ] {
            let got: Vec<Verdict> = verdicts(&targets, &built, &current, refusal).into_iter().map(|(_, v)| v).collect();
            assert_eq!(got, expected, "{targets:?} {refusal:?}");
        }
        // A host with no generation yet is deployed to.
        assert_eq!(verdicts(&Targets::AllChanged, &built, &HashMap::new(), None)[1].1, Deployed);
    }
}
