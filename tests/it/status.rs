//! `berth hosts` and `berth hosts history` tell the truth with real agents: the state shown
//! is that of the host's newest generation (never beside an older generation's error), a
//! host whose agent stopped is `offline` after `[deploy] offline_after_secs`, and the
//! history names each generation's outcome.

use std::time::Duration;

use crate::{agent::*, builds::*, fleet::*, harness::*};

/// `berth hosts --server URL ARGS…` (global flags after `history NAME` are issue 12's
/// section 4, not parsed yet).
fn hosts(b: &BuildHost, args: &[&str]) -> String {
    let out = run_ok(b.s.berth().args(["hosts", "--server", &b.server.url]).args(args).env("BERTH_TOKEN", &b.admin));
    String::from_utf8(out.stdout).unwrap()
}

/// Generation 2 rolls back (an error); generation 3's agent is killed mid-activation.
/// `berth hosts` shows `activating` without 2's error, then `offline` once the agent has
/// been quiet for 3 s. (Failed before: `activating` beside 2's error, and never `offline`.)
#[test]
fn a_host_killed_mid_activation_shows_its_own_state_then_offline() {
    let b = build_host(&["alpha"], "[deploy]\noffline_after_secs = 3\n");
    let host = Host::new(&b, "alpha", "");
    let agent = host.spawn(&b, &b.server.url);
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    b.fleet.set_switch_fails("alpha", true);
    b.fleet.set_host("alpha", "two");
    assert!(b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main").0);
    let error = wait_report(&b, "alpha", 2, &["rolled_back"])["message"].as_str().unwrap().to_owned();
    b.fleet.set_switch_fails("alpha", false);
    b.fleet.set_switch_pause("alpha", 30);
    b.fleet.set_host("alpha", "three");
    assert!(b.submit_wait(&b.fleet.commit("main", "three", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 3, &["activating"]);
    drop(agent); // SIGKILL inside `switch-to-configuration test`

    let table = hosts(&b, &[]);
    let line = table.lines().find(|l| l.starts_with("alpha")).unwrap();
    assert!(line.contains("activating"), "{table}");
    assert!(!line.contains(&error[..20.min(error.len())]), "no error of generation 2 beside 3's state: {table}");

    std::thread::sleep(Duration::from_secs(5));
    let table = hosts(&b, &[]);
    let line = table.lines().find(|l| l.starts_with("alpha")).unwrap();
    assert!(line.contains("offline"), "{table}");

    let history = hosts(&b, &["history", "alpha"]);
    let outcome = |n: i64| {
        history.lines().find(|l| l.trim_start().starts_with(&format!("{n} "))).unwrap_or_else(|| panic!("{history}"))
    };
    assert!(outcome(1).contains("confirmed"), "{history}");
    assert!(outcome(2).contains("rolled_back"), "{history}");
    assert!(history.contains(&format!("rolled_back: {error}")), "the reason: {history}");
    assert!(outcome(3).contains("activating"), "{history}");

    // The activation log of generation 2, and by default of the newest reported on (3).
    let log = hosts(&b, &["log", "alpha", "2"]);
    assert!(log.contains("generation 2  activating") && log.contains("generation 2  rolled_back"), "{log}");
    assert!(log.contains("    error: activation of alpha fails on purpose"), "the log tail: {log}");
    let log = hosts(&b, &["log", "alpha"]);
    assert!(log.contains("generation 3  activating") && !log.contains("generation 2"), "{log}");
}

/// `berth build list` with its filters, against real builds: one that deploys, one that
/// fails to build, one of a test branch. (Failed before: there was no `build list`.)
#[test]
fn build_list_filters_by_repository_branch_and_state() {
    let b = build_host(&["alpha"], "");
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    b.fleet.set_broken("alpha", true);
    assert!(!b.submit_wait(&b.fleet.commit("main", "broken", Signing::Trusted), "main").0);
    b.fleet.set_broken("alpha", false);
    assert!(b.submit_wait(&b.fleet.commit("test-alpha", "try", Signing::Trusted), "test-alpha").0);
    let list = |args: &[&str]| {
        let out =
            run_ok(b.s.berth().args(["build", "list", "--server", &b.server.url]).args(args).env("BERTH_TOKEN", &b.ci));
        let text = String::from_utf8(out.stdout).unwrap();
        let ids: Vec<i64> =
            text.lines().skip(1).map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
        (ids, text)
    };
    assert_eq!(list(&[]).0, [3, 2, 1]);
    assert_eq!(list(&["--branch", "main"]).0, [2, 1]);
    let (ids, text) = list(&["--state", "failed"]);
    assert_eq!(ids, [2], "{text}");
    assert!(text.contains("failed") && text.contains("main"), "{text}");
    assert_eq!(list(&["--repo", "fleet", "--branch", "test-alpha", "--state", "succeeded"]).0, [3]);
    assert_eq!(list(&["--repo", "elsewhere"]).0, Vec::<i64>::new());
    let mut refused = b.s.berth();
    refused.args(["build", "list", "--state", "done", "--server", &b.server.url]).env("BERTH_TOKEN", &b.ci);
    let out = refused.output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown state"), "{out:?}");
}
