//! PURE: which hosts a finished build deploys to. The branch policy picks the candidates
//! (the deploy branch: every host; `test-<host>`: that host; any other branch: none), only
//! hosts whose toplevel changed get a new generation, and the signed-commit gate can block
//! deployment while still letting the build succeed (CI wants to know that it builds).

use std::collections::HashMap;

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

/// What the signed-commit gate found about a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitTrust {
    /// Signed by an allow-listed key (the signer's principal).
    Trusted(String),
    /// Not signed.
    Unsigned,
    /// Signed, but not by an allowed key, or the signature is bad.
    Untrusted(String),
}

/// Whether a built commit may be deployed; `Err` says why not.
pub fn gate(require_signed: bool, trust: &CommitTrust, fast_forward: Option<bool>) -> Result<(), String> {
    if require_signed {
        match trust {
            CommitTrust::Trusted(_) => {}
            CommitTrust::Unsigned => return Err("the commit is not signed; it was built but not deployed".into()),
            CommitTrust::Untrusted(why) => {
                return Err(format!("the commit's signature is not trusted ({why}); it was built but not deployed"))
            }
        }
    }
    if fast_forward == Some(false) {
        return Err(
            "the commit does not descend from the last deployed commit (a rewind); it was built but not deployed"
                .into(),
        );
    }
    Ok(())
}

/// The generations to create: `(host, toplevel)` for each targeted host whose toplevel
/// differs from its current one, in `built` order.
pub fn new_generations(
    targets: &Targets,
    built: &[(String, String)],
    current: &HashMap<String, String>,
) -> Vec<(String, String)> {
    built
        .iter()
        .filter(|(host, _)| match targets {
            Targets::AllChanged => true,
            Targets::Host(only) => host == only,
            Targets::None => false,
        })
        .filter(|(host, path)| current.get(host) != Some(path))
        .cloned()
        .collect()
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
    fn the_gate() {
        assert!(gate(true, &CommitTrust::Trusted("alice".into()), None).is_ok());
        assert!(gate(true, &CommitTrust::Unsigned, None).unwrap_err().contains("not signed"));
        assert!(gate(true, &CommitTrust::Untrusted("unknown key".into()), None).unwrap_err().contains("unknown key"));
        assert!(gate(false, &CommitTrust::Unsigned, None).is_ok());
        assert!(gate(false, &CommitTrust::Unsigned, Some(false)).unwrap_err().contains("rewind"));
    }
}
