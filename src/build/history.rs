//! The signed-history check around `trust::decide`: where the check starts (the last
//! deployed commit from the database, `trusted_since` from the configuration), the commits
//! and their signatures (git, in the mirror), and what was found, recorded on the build for
//! `berth build status`.

use std::path::Path;

use super::{
    log::BuildLog,
    policy::Targets,
    trust::{self, Base, CheckedCommit, CommitTrust, Deployed, Refusal, Requirement},
};
use crate::{
    app::AppState,
    config::Repository,
    db::{BuildCommitRow, BuildRow, DbError},
    nix::{self, git::Signature, NixError},
};

/// Why the check itself could not run (as opposed to a [`Refusal`]).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// git failed.
    #[error("checking commit signatures: {0}")]
    Git(#[from] NixError),
    /// The database failed.
    #[error("recording the checked commits: {0}")]
    Db(#[from] DbError),
}

/// The signatures git trusts for `repo`.
pub fn policy(repo: &Repository) -> nix::git::SignaturePolicy {
    nix::git::SignaturePolicy {
        allowed_signers_file: repo.allowed_signers_file.clone(),
        gpg_home: repo.gpg_home.clone(),
        gpg_min_trust_level: Some(repo.gpg_min_trust_level.clone()),
    }
}

/// git's verdict as the pure gate takes it.
pub fn trust_of(signature: Signature) -> CommitTrust {
    match signature {
        Signature::Trusted { signer, key } => CommitTrust::Trusted { signer, key },
        Signature::Unsigned => CommitTrust::Unsigned,
        Signature::Untrusted { reason } => CommitTrust::Untrusted(reason),
    }
}

/// One build's check, at the moment it would deploy.
pub struct Check<'a> {
    /// The server.
    pub state: &'a AppState,
    /// The build.
    pub build: &'a BuildRow,
    /// Its repository.
    pub repo: &'a Repository,
    /// The repository's mirror, holding the commit.
    pub mirror: &'a Path,
    /// The build's log.
    pub log: &'a BuildLog,
}

impl Check<'_> {
    /// Checks what a deploy to `targets` would bring, records it on the build, and decides:
    /// `Ok(Err(refusal))` deploys nothing. `tip` is the commit's own verdict, checked at the
    /// start of the build; `fast_forward` is `Some(false)` for a refused rewind.
    pub async fn gate(
        &self,
        targets: &Targets,
        tip: &CommitTrust,
        fast_forward: Option<bool>,
    ) -> Result<Result<(), Refusal>, CheckError> {
        let requirement = Requirement::of(self.repo.require_signed_commits, self.repo.signed_commits);
        let (base, commits) = match requirement {
            Requirement::Nothing => (Base::default(), Vec::new()),
            Requirement::Tip => {
                let tip = CheckedCommit { commit: self.build.commit_sha.clone(), trust: tip.clone() };
                (Base::default(), vec![tip])
            }
            Requirement::History => {
                let _mirror = self.state.builds.lock_mirror(&self.repo.name).await;
                let base = self.base(targets).await?;
                let commits = self.range(&base).await?;
                (base, commits)
            }
        };
        match requirement {
            Requirement::Nothing => {}
            Requirement::Tip => self.record(None, &commits).await?,
            Requirement::History => self.record(Some(&base.to_string()), &commits).await?,
        }
        Ok(trust::decide(requirement, &base, &commits, fast_forward))
    }

    /// The last commit deployed (from the deploy branch, or to a test branch's host) and
    /// `trusted_since`, each only when the mirror has it: a base the mirror lost is dropped,
    /// which checks more commits, never fewer.
    async fn base(&self, targets: &Targets) -> Result<Base, CheckError> {
        let (db, repo) = (&self.state.db, self.repo);
        let deployed = match targets {
            Targets::AllChanged => db
                .last_deployed_commit(&repo.name, &repo.deploy_branch)
                .await?
                .map(|commit| Deployed::FromBranch(repo.deploy_branch.clone(), commit)),
            Targets::Host(host) => {
                db.latest_generation(host).await?.map(|g| Deployed::ToHost(host.clone(), g.commit_sha))
            }
            Targets::None => None,
        };
        let mut base = Base { deployed: None, trusted_since: None };
        if let Some(deployed) = deployed {
            if self.present(deployed.commit(), "the last deployed commit").await? {
                base.deployed = Some(deployed);
            }
        }
        if let Some(since) = &repo.trusted_since {
            if self.present(since, "trusted_since").await? {
                base.trusted_since = Some(since.clone());
            }
        }
        Ok(base)
    }

    async fn present(&self, commit: &str, what: &str) -> Result<bool, CheckError> {
        match nix::git::contains(self.mirror, commit).await {
            Ok(true) => Ok(true),
            Ok(false) | Err(NixError::Invalid { .. }) => {
                self.log.line(format!("{what} {commit} is not in the repository: the check starts before it"));
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The commits since `base`, oldest first, at most one more than accepted.
    async fn range(&self, base: &Base) -> Result<Vec<CheckedCommit>, CheckError> {
        let (tip, exclude) = (&self.build.commit_sha, base.commits());
        let found =
            nix::git::range_signatures(self.mirror, tip, &exclude, trust::MAX_COMMITS + 1, &policy(self.repo)).await?;
        self.log.line(format!("checking the signatures of {} commit(s) since {base}", found.len()));
        let commits: Vec<CheckedCommit> =
            found.into_iter().map(|c| CheckedCommit { commit: c.commit, trust: trust_of(c.signature) }).collect();
        for c in &commits {
            self.log.line(format!("commit {}: {}", c.commit, c.trust));
        }
        Ok(commits)
    }

    async fn record(&self, base: Option<&str>, commits: &[CheckedCommit]) -> Result<(), CheckError> {
        let rows: Vec<BuildCommitRow> = commits.iter().map(row).collect();
        Ok(self.state.db.set_build_commits(self.build.id, base, &rows).await?)
    }
}

fn row(c: &CheckedCommit) -> BuildCommitRow {
    let (signer, signing_key, reason) = match &c.trust {
        CommitTrust::Trusted { signer, key } => (Some(signer.clone()), Some(key.clone()), None),
        CommitTrust::Unsigned => (None, None, None),
        CommitTrust::Untrusted(why) => (None, None, Some(why.clone())),
    };
    BuildCommitRow { commit: c.commit.clone(), verdict: c.trust.verdict().as_str().into(), signer, signing_key, reason }
}
