//! Signed history, not a signed tip: on a deploying branch every commit since the last one
//! deployed (or since the repository's `trusted_since`, or since the root) must carry a
//! trusted signature, merges included, or the build deploys nothing and names the commit.
//! Real git with SSH-signed commits, a real `berth serve` build host, the real Nix.

use reqwest::StatusCode;
use serde_json::Value;

use crate::{builds::*, fleet::*, harness::*};

/// The build id at the start of `berth build status`'s report ("build 3 succeeded: …").
fn build_id(status: &str) -> i64 {
    let line = status.lines().find(|l| l.starts_with("build ")).unwrap_or_else(|| panic!("{status}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `(commit, verdict)` of each commit the build checked, oldest first.
fn checked(b: &BuildHost, status: &str) -> Vec<(String, String)> {
    let build = b.build(build_id(status));
    let commits = build["commits"].as_array().unwrap_or_else(|| panic!("{build}"));
    commits
        .iter()
        .map(|c| (c["commit"].as_str().unwrap().to_owned(), c["verdict"].as_str().unwrap().to_owned()))
        .collect()
}

/// Submits `commit` on `branch` and expects a successful build (CI learns that it builds).
#[track_caller]
fn built(b: &BuildHost, commit: &str, branch: &str) -> String {
    let (ok, log, status) = b.submit_wait(commit, branch);
    assert!(ok, "{log}\n{status}");
    status
}

#[test]
fn an_unsigned_commit_under_a_signed_tip_deploys_nothing_and_is_named() {
    let b = build_host(&["alpha"], "");
    let first = b.fleet.commit("main", "first", Signing::Trusted);
    built(&b, &first, "main");
    assert_eq!(b.generations("alpha").len(), 1);

    b.fleet.set_host("alpha", "the intruder's change");
    let intruder = b.fleet.commit("main", "harmless, really", Signing::Unsigned);
    b.fleet.set_host("alpha", "the intruder's change, and a typo fixed");
    let tip = b.fleet.commit("main", "fix a typo", Signing::Trusted);
    let status = built(&b, &tip, "main");
    assert_eq!(b.generations("alpha").len(), 1, "nothing deployed: {status}");
    assert!(status.contains(&format!("commit {intruder} is not signed")), "{status}");
    assert!(status.contains("not deployed"), "{status}");
    assert_eq!(
        checked(&b, &status),
        [(intruder.clone(), "unsigned".into()), (tip.clone(), "trusted".into())],
        "both commits since the last deployed one were checked"
    );
    assert!(status.contains(&format!("{tip} signed by alice@example.org")), "{status}");
    assert!(status.contains(&format!("{intruder} unsigned")), "{status}");
}

#[test]
fn a_commit_signed_by_an_untrusted_key_under_a_signed_tip_deploys_nothing() {
    let b = build_host(&["alpha"], "");
    built(&b, &b.fleet.commit("main", "first", Signing::Trusted), "main");
    b.fleet.set_host("alpha", "mallory was here");
    let forged = b.fleet.commit("main", "mallory's commit", Signing::OtherKey);
    let tip = b.fleet.commit("main", "alice signs on top", Signing::Trusted);
    let status = built(&b, &tip, "main");
    assert_eq!(b.generations("alpha").len(), 1, "nothing deployed: {status}");
    assert!(status.contains(&format!("commit {forged}'s signature is not trusted")), "{status}");
    assert!(status.contains("allowed_signers"), "says why: {status}");
    assert_eq!(checked(&b, &status)[0], (forged, "untrusted".into()));
}

#[test]
fn a_fully_signed_range_deploys_and_the_manifest_names_the_signer() {
    let b = build_host(&["alpha"], "");
    built(&b, &b.fleet.commit("main", "first", Signing::Trusted), "main");
    b.fleet.set_host("alpha", "one");
    let one = b.fleet.commit("main", "one", Signing::Trusted);
    b.fleet.set_host("alpha", "two");
    let two = b.fleet.commit("main", "two", Signing::Trusted);
    let status = built(&b, &two, "main");
    let generations = b.generations("alpha");
    assert_eq!(generations.len(), 2, "{status}");
    assert_eq!(generations[0]["signer"], "alice@example.org", "{}", generations[0]);
    assert_eq!(checked(&b, &status), [(one.clone(), "trusted".into()), (two.clone(), "trusted".into())]);
    assert!(status.contains(&format!("{one} signed by alice@example.org")), "{status}");

    // A current agent asks for manifest version 2, which names the commit and its signer…
    let token = b.server.token("host:alpha");
    let manifest = |version: Option<&str>| -> Value {
        let mut request = http().get(b.api("hosts/alpha/manifest?after=1&timeout=1")).bearer_auth(&token);
        if let Some(version) = version {
            request = request.header("x-berth-manifest-version", version);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let signed: Value = response.json().unwrap();
        serde_json::from_str(signed["manifest"].as_str().unwrap()).unwrap()
    };
    let current = manifest(Some("2"));
    assert_eq!((current["version"].as_u64(), current["commit"].as_str()), (Some(2), Some(two.as_str())));
    assert_eq!(current["signer"], "alice@example.org", "{current}");
    // …and an agent that does not ask gets the version 1 manifest it knows, unchanged.
    let old = manifest(None);
    assert_eq!(old["version"], 1, "{old}");
    assert!(old.get("signer").is_none(), "{old}");
}

#[test]
fn the_first_deploy_checks_the_whole_history_unless_trusted_since_names_a_start() {
    let mut b = build_host(&["alpha"], "");
    b.fleet.set_host("alpha", "from before we signed commits");
    let old = b.fleet.commit("main", "old unsigned history", Signing::Unsigned);
    b.fleet.set_host("alpha", "signed from now on");
    let tip = b.fleet.commit("main", "signed", Signing::Trusted);
    let status = built(&b, &tip, "main");
    assert!(b.generations("alpha").is_empty(), "{status}");
    assert!(status.contains(&format!("commit {old} is not signed")), "{status}");
    assert!(status.contains("the start of the history"), "{status}");

    b.reconfigure(|config| format!("{config}trusted_since = \"{old}\"\n"));
    b.fleet.set_host("alpha", "signed, again");
    let next = b.fleet.commit("main", "signed again", Signing::Trusted);
    let status = built(&b, &next, "main");
    assert_eq!(b.generations("alpha").len(), 1, "{status}");
    assert_eq!(checked(&b, &status), [(tip, "trusted".into()), (next, "trusted".into())], "from trusted_since on");
}

#[test]
fn tip_mode_keeps_checking_the_tip_alone() {
    let b = build_host(&["alpha"], "signed_commits = \"tip\"\n");
    built(&b, &b.fleet.commit("main", "first", Signing::Trusted), "main");
    b.fleet.set_host("alpha", "unsigned underneath");
    let unsigned = b.fleet.commit("main", "unsigned", Signing::Unsigned);
    let tip = b.fleet.commit("main", "signed tip", Signing::Trusted);
    let status = built(&b, &tip, "main");
    assert_eq!(b.generations("alpha").len(), 2, "the tip alone is checked: {status}");
    assert_eq!(checked(&b, &status), [(tip, "trusted".into())], "{unsigned} is not looked at");

    b.fleet.set_host("alpha", "unsigned tip");
    let status = built(&b, &b.fleet.commit("main", "unsigned tip", Signing::Unsigned), "main");
    assert_eq!(b.generations("alpha").len(), 2, "{status}");
    assert!(status.contains("is not signed"), "{status}");
}

#[test]
fn a_test_branch_is_checked_against_the_last_commit_deployed_to_its_host() {
    // In "tip" mode, an unsigned commit under a signed tip reaches alpha by test-alpha.
    let mut b = build_host(&["alpha", "beta"], "signed_commits = \"tip\"\n");
    let first = b.fleet.commit("main", "first", Signing::Trusted);
    built(&b, &first, "main");
    b.fleet.set_host("alpha", "unsigned");
    let unsigned = b.fleet.commit("test-alpha", "unsigned", Signing::Unsigned);
    b.fleet.set_host("alpha", "signed");
    let alpha_tip = b.fleet.commit("test-alpha", "signed", Signing::Trusted);
    built(&b, &alpha_tip, "test-alpha");
    assert_eq!(b.generations("alpha").len(), 2);

    b.reconfigure(|config| config.replace("signed_commits = \"tip\"", "signed_commits = \"all\""));
    // alpha's base is what it runs: only the new commit is checked.
    b.fleet.set_host("alpha", "signed again");
    let next = b.fleet.commit("test-alpha", "signed again", Signing::Trusted);
    let status = built(&b, &next, "test-alpha");
    assert_eq!(b.generations("alpha").len(), 3, "{status}");
    assert_eq!(checked(&b, &status), [(next.clone(), "trusted".into())]);
    // beta runs `first`: a branch from alpha's history brings the unsigned commit along.
    b.fleet.branch_at("test-beta", &next);
    b.fleet.set_host("beta", "signed");
    let beta_tip = b.fleet.commit("test-beta", "beta, signed", Signing::Trusted);
    let status = built(&b, &beta_tip, "test-beta");
    assert_eq!(b.generations("beta").len(), 1, "nothing deployed to beta: {status}");
    assert!(status.contains(&format!("commit {unsigned} is not signed")), "{status}");
    assert!(status.contains(&format!("the last commit deployed to beta {first}")), "{status}");
}

#[test]
fn merge_commits_and_what_they_bring_are_checked() {
    let b = build_host(&["alpha", "beta", "gamma"], "");
    let first = b.fleet.commit("main", "first", Signing::Trusted);
    built(&b, &first, "main");

    // A signed merge of a branch holding an unsigned commit.
    b.fleet.branch_at("side", &first);
    b.fleet.set_host("alpha", "from the side branch");
    let unsigned = b.fleet.commit("side", "unsigned on the side", Signing::Unsigned);
    b.fleet.commit("main", "signed on main", Signing::Trusted);
    let merge = b.fleet.merge("main", "side", "merge side", Signing::Trusted);
    let status = built(&b, &merge, "main");
    assert_eq!(b.generations("alpha").len(), 1, "{status}");
    assert!(status.contains(&format!("commit {unsigned} is not signed")), "{status}");

    // An unsigned merge commit of signed branches, under a signed tip.
    b.fleet.branch_at("test-beta", &first);
    b.fleet.branch_at("beta-side", &first);
    b.fleet.set_host("beta", "from beta-side");
    b.fleet.commit("beta-side", "signed on beta-side", Signing::Trusted);
    b.fleet.commit("test-beta", "signed on test-beta", Signing::Trusted);
    let unsigned_merge = b.fleet.merge("test-beta", "beta-side", "unsigned merge", Signing::Unsigned);
    let tip = b.fleet.commit("test-beta", "signed tip", Signing::Trusted);
    let status = built(&b, &tip, "test-beta");
    assert_eq!(b.generations("beta").len(), 1, "{status}");
    assert!(status.contains(&format!("commit {unsigned_merge} is not signed")), "{status}");

    // Everything signed, merge included: it deploys, and each commit is listed.
    b.fleet.branch_at("test-gamma", &first);
    b.fleet.branch_at("gamma-side", &first);
    b.fleet.set_host("gamma", "from gamma-side");
    let side = b.fleet.commit("gamma-side", "signed on gamma-side", Signing::Trusted);
    let own = b.fleet.commit("test-gamma", "signed on test-gamma", Signing::Trusted);
    let merge = b.fleet.merge("test-gamma", "gamma-side", "signed merge", Signing::Trusted);
    let status = built(&b, &merge, "test-gamma");
    assert_eq!(b.generations("gamma").len(), 2, "{status}");
    let mut commits: Vec<String> = checked(&b, &status).into_iter().map(|(c, v)| format!("{c} {v}")).collect();
    commits.sort();
    let mut expected: Vec<String> = [side, own, merge].iter().map(|c| format!("{c} trusted")).collect();
    expected.sort();
    assert_eq!(commits, expected);
}
