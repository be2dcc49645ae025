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

/// `berth hosts` says why each host's newest build did or did not deploy, without a build
/// id: deployed, no change, a rewind, a failed build (and the host it held back), an
/// untrusted signer, an unsigned commit, a branch that deploys elsewhere. The API carries the
/// same. (Failed before: `berth hosts` showed no build at all.)
#[test]
fn hosts_show_why_their_newest_build_did_or_did_not_deploy() {
    let b = build_host(&["alpha", "beta"], "require_fast_forward = true\n");
    let submit = |commit: &str, branch: &str| b.submit_wait(commit, branch);
    let verdicts = || {
        let table = hosts(&b, &[]);
        let column = |host: &str| {
            let line = table.lines().find(|l| l.starts_with(host)).unwrap_or_else(|| panic!("{table}"));
            let at = line.find('#').unwrap_or_else(|| panic!("no build beside {host}: {table}"));
            line[at..].split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        };
        (column("alpha"), column("beta"))
    };
    let c1 = b.fleet.commit("main", "one", Signing::Trusted);
    assert!(submit(&c1, "main").0);
    assert_eq!(verdicts(), ("#1 deployed 1".into(), "#1 deployed 1".into()));

    assert!(submit(&b.fleet.commit("main", "nothing changes", Signing::Trusted), "main").0);
    let (alpha, beta) = verdicts();
    assert!(alpha.starts_with("#2 unchanged") && beta.starts_with("#2 unchanged"), "{alpha} / {beta}");

    b.fleet.set_host("alpha", "two");
    assert!(submit(&b.fleet.commit("main", "alpha two", Signing::Trusted), "main").0);
    let (alpha, beta) = verdicts();
    assert!(alpha == "#3 deployed 2" && beta.starts_with("#3 unchanged"), "{alpha} / {beta}");

    // A commit beside main's history (alpha as in one), submitted as main: a rewind.
    b.fleet.branch_at("old", &c1);
    let rewind = b.fleet.commit("old", "rewind", Signing::Trusted);
    assert!(submit(&rewind, "main").0, "the build succeeds; it deploys nothing");
    let (alpha, beta) = verdicts();
    assert!(alpha.starts_with("#4 rewound") && beta.starts_with("#4 unchanged"), "{alpha} / {beta}");
    b.fleet.commit("main", "back on main", Signing::Trusted);

    b.fleet.set_broken("alpha", true);
    b.fleet.set_host("beta", "two");
    assert!(!submit(&b.fleet.commit("main", "alpha breaks", Signing::Trusted), "main").0);
    let (alpha, beta) = verdicts();
    assert!(alpha.starts_with("#5 failed") && beta.starts_with("#5 held-back"), "{alpha} / {beta}");
    b.fleet.set_broken("alpha", false);

    b.fleet.set_host("alpha", "three");
    assert!(submit(&b.fleet.commit("main", "by a stranger", Signing::OtherKey), "main").0);
    let (alpha, beta) = verdicts();
    assert!(alpha.starts_with("#6 untrusted-signer") && beta.starts_with("#6 untrusted-signer"), "{alpha} / {beta}");

    // A test branch from the last commit deployed to beta, one unsigned commit on it.
    b.fleet.branch_at("test-beta", &c1);
    b.fleet.commit("test-beta", "onto test-beta", Signing::Trusted);
    b.fleet.set_host("beta", "tried");
    let unsigned = b.fleet.commit("test-beta", "beta, unsigned", Signing::Unsigned);
    assert!(submit(&unsigned, "test-beta").0);
    let (alpha, beta) = verdicts();
    assert!(alpha.starts_with("#7 build-only") && beta.starts_with("#7 unsigned"), "{alpha} / {beta}");

    let api: Vec<serde_json::Value> = http().get(b.api("hosts")).bearer_auth(&b.admin).send().unwrap().json().unwrap();
    let beta = api.iter().find(|h| h["name"] == "beta").unwrap();
    assert_eq!(beta["last_build"]["id"], 7, "{beta}");
    assert_eq!(beta["last_build"]["verdict"], "unsigned", "{beta}");
    assert_eq!(beta["last_build"]["commit_sha"], unsigned.as_str(), "{beta}");
}

/// `berth hosts history` names the host's own profile generation each confirmed generation
/// became: berth's generation 3 is the host's `system-2-link` when generation 2 was rolled
/// back before the profile was touched. (Failed before: nothing said so.)
#[test]
fn history_names_the_profile_generation_each_generation_became() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let _agent = host.spawn(&b, &b.server.url);
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    b.fleet.set_switch_fails("alpha", true);
    b.fleet.set_host("alpha", "two");
    assert!(b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 2, &["rolled_back"]);
    b.fleet.set_switch_fails("alpha", false);
    b.fleet.set_host("alpha", "three");
    assert!(b.submit_wait(&b.fleet.commit("main", "three", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 3, &["confirmed"]);

    let link = std::fs::read_link(host.root.join("store/nix/var/nix/profiles/system")).unwrap();
    assert_eq!(link.to_str(), Some("system-2-link"), "the host's own numbering");
    let history = hosts(&b, &["history", "alpha"]);
    let profile = |n: i64| {
        let line = history.lines().find(|l| l.trim_start().starts_with(&format!("{n} "))).unwrap();
        let before_path = line.split("/nix/store/").next().unwrap();
        before_path.split_whitespace().last().unwrap().to_owned()
    };
    assert_eq!((profile(1), profile(2), profile(3)), ("1".into(), "-".into(), "2".into()), "{history}");
    assert!(history.lines().next().unwrap().contains("PROFILE"), "{history}");
}

/// `berth diff HOST [FROM] [TO]`: from what the host runs to its newest generation by
/// default, from the cache's index; the build log carries the same summary. Bad numbers,
/// another host's token and unknown generations are refused. (Failed before: no diff.)
#[test]
fn berth_diff_says_what_a_switch_changes() {
    let b = build_host(&["alpha", "beta"], "");
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    b.fleet.set_host("alpha", "two");
    let (ok, log, _) = b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main");
    assert!(ok, "{log}");
    assert!(log.contains("[alpha] closure: +0 -0 ~0 packages, 1 paths to download"), "{log}");

    let diff = |args: &[&str]| {
        let out =
            b.s.berth()
                .args(["diff", "--server", &b.server.url])
                .args(args)
                .env("BERTH_TOKEN", &b.admin)
                .output()
                .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // No agent reported yet: from the generation before the newest.
    let (ok, out, err) = diff(&["alpha"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("alpha: generation 1 (/nix/store/") && out.contains(") -> 2 (/nix/store/"), "{out}");
    assert!(out.contains("1 paths to download") && out.contains("reboot: no"), "{out}");
    let (ok, out, _) = diff(&["alpha", "2", "1"]);
    assert!(ok && out.contains("generation 2 (") && out.contains("-> 1 ("), "{out}");
    let (ok, out, _) = diff(&["beta"]);
    assert!(
        ok && out.starts_with("beta: generation nothing -> 1")
            && out.contains("+2 -0 ~0 packages")
            && out.contains("  + berth-fleet-common\n"),
        "{out}"
    );

    let (ok, _, err) = diff(&["alpha", "9"]);
    assert!(!ok && err.contains("no generation 9"), "{err}");
    let get = |path: &str, token: &str| http().get(b.api(path)).bearer_auth(token).send().unwrap();
    assert_eq!(get("hosts/alpha/diff?from=x", &b.admin).status(), 400);
    assert_eq!(get("hosts/alpha/diff?what=1", &b.admin).status(), 400);
    assert_eq!(get("hosts/alpha/diff", &b.server.token("host:beta")).status(), 403);
    assert_eq!(get("hosts/alpha/diff", &b.server.token("host:alpha")).status(), 200);
    assert_eq!(get("hosts/..%2Fetc/diff", &b.admin).status(), 400);
    assert_eq!(get("hosts/gamma/diff", &b.admin).status(), 404);

    // The agent logs the same summary before it switches.
    let host = Host::new(&b, "alpha", "");
    let out = host.agent(&b, &b.server.url, &deploy_public_key(&b)).arg("--once").output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let closure = log.find("closure: +0 -0 ~0 packages, 1 paths to download").unwrap_or_else(|| panic!("{log}"));
    assert!(closure < log.find("switch-to-configuration").unwrap(), "before the switch: {log}");
}

/// Each generation's diff is stored when it is made, against what the host confirmed
/// running then: after the host moves on, `berth diff HOST` (no FROM) still shows generation
/// 3's own diff from 1 (what alpha ran when 3 was made), where the on-demand diff would be
/// from 2; an explicit FROM is still computed on demand; the agent logs the stored summary.
/// (Failed before: no stored diff, `berth diff alpha` said 2 -> 3.)
#[test]
fn a_generation_keeps_the_diff_it_was_made_with() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let once = |b: &BuildHost| {
        let out = host.agent(b, &b.server.url, &deploy_public_key(b)).arg("--once").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (ok, log, _) = b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main");
    assert!(ok && log.contains("(from generation nothing, stored)"), "{log}");
    once(&b);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    for (n, content) in [(2, "two"), (3, "three")] {
        b.fleet.set_host("alpha", content);
        let (ok, log, _) = b.submit_wait(&b.fleet.commit("main", content, Signing::Trusted), "main");
        assert!(ok && log.contains("(from generation 1, stored)"), "generation {n}, alpha runs 1: {log}");
    }
    let agent_log = once(&b);
    wait_report(&b, "alpha", 3, &["confirmed"]);
    assert!(agent_log.contains("closure: +0 -0 ~0 packages"), "{agent_log}");

    let diff = |args: &[&str]| {
        let out =
            b.s.berth()
                .args(["diff", "--server", &b.server.url])
                .args(args)
                .env("BERTH_TOKEN", &b.admin)
                .output()
                .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let own = diff(&["alpha"]);
    assert!(
        own.starts_with("alpha: generation 1 (")
            && own.contains(") -> 3 (")
            && own.contains("[stored when it was made]"),
        "{own}"
    );
    let computed = diff(&["alpha", "2", "3"]);
    assert!(computed.starts_with("alpha: generation 2 (") && !computed.contains("stored"), "{computed}");
    let get = |path: &str| {
        let r = http().get(b.api(path)).bearer_auth(&b.admin).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.json::<serde_json::Value>().unwrap()
    };
    let first = get("hosts/alpha/diff?to=1");
    assert_eq!((first["stored"].as_bool(), first["from"].is_null()), (Some(true), true), "{first}");
    let second = get("hosts/alpha/diff?to=2");
    assert_eq!((second["stored"].as_bool(), second["from"]["number"].as_i64()), (Some(true), Some(1)), "{second}");
    assert_eq!(get("hosts/alpha/diff?from=1&to=2")["stored"], false);
}

/// `berth hosts pause` holds a host on its current generation: a newer one is made but its
/// agent is handed nothing, and `berth hosts` says `paused`; `resume` hands it the newest
/// at once. Only an admin may; an unknown host is 404. (Failed before: no pause.)
#[test]
fn a_paused_host_stays_on_its_generation_until_resumed() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let _agent = host.spawn(&b, &b.server.url);
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    let first = host.profile().unwrap();

    let paused = hosts(&b, &["pause", "alpha"]);
    assert!(paused.starts_with("alpha: paused"), "{paused}");
    b.fleet.set_host("alpha", "two");
    assert!(b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main").0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(host.profile().unwrap(), first, "held on generation 1");
    assert!(!reports(&b, "alpha").iter().any(|r| r["generation"] == 2), "generation 2 never reached the agent");
    let table = hosts(&b, &[]);
    let line = table.lines().find(|l| l.starts_with("alpha")).unwrap();
    assert!(line.contains("paused") && line.contains("      2       1"), "desired 2, current 1, paused: {table}");

    let resumed = hosts(&b, &["resume", "alpha"]);
    assert!(resumed.starts_with("alpha: resumed"), "{resumed}");
    wait_report(&b, "alpha", 2, &["confirmed"]);
    assert_ne!(host.profile().unwrap(), first);

    let post = |path: &str, token: &str| http().post(b.api(path)).bearer_auth(token).send().unwrap().status();
    assert_eq!(post("hosts/alpha/pause", &b.server.token("host:alpha")), 403, "a host cannot pause itself");
    assert_eq!(post("hosts/alpha/pause", &b.ci), 403);
    assert_eq!(post("hosts/nobody/pause", &b.admin), 404);
    assert_eq!(post("hosts/..%2Fx/resume", &b.admin), 400);
}

/// `HH:MM` of the current UTC time moved by `minutes`.
fn utc_in(minutes: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let minute = (now / 60 + minutes).rem_euclid(24 * 60);
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// `activation_windows` in the host's time zone: outside them a new generation waits (the
/// host shows `waiting`, `--once` says so and exits 0); inside, it is applied. (Failed
/// before: the key was refused as unknown.)
#[test]
fn a_generation_waits_for_the_hosts_activation_window() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let base = std::fs::read_to_string(&host.config).unwrap();
    let windows = |window: String| {
        std::fs::write(&host.config, format!("{base}time_zone = \"UTC\"\nactivation_windows = [\"{window}\"]\n"))
            .unwrap();
    };
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);

    windows(format!("Mon-Sun {}-{}", utc_in(120), utc_in(180)));
    let once = || host.agent(&b, &b.server.url, &deploy_public_key(&b)).arg("--once").output().unwrap();
    let out = once();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("generation 1 waits for an activation window") || log.contains("waits for an activation window"),
        "{log}"
    );
    assert!(host.profile().is_none() && reports(&b, "alpha").is_empty(), "nothing switched, nothing reported: {log}");
    let table = hosts(&b, &[]);
    assert!(table.lines().any(|l| l.starts_with("alpha") && l.contains("waiting")), "{table}");

    windows(format!("{}-{}", utc_in(-60), utc_in(60)));
    let out = once();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(host.profile().is_some());
    wait_report(&b, "alpha", 1, &["confirmed"]);

    // A window or zone the agent cannot read stops it at start-up, naming the key.
    for (key, value) in [("activation_windows", "[\"Moon 02:00-03:00\"]"), ("time_zone", "\"Mars/Olympus\"")] {
        std::fs::write(&host.config, format!("{base}{key} = {value}\n")).unwrap();
        let out = once();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(key), "{key}: {err}");
    }
}

/// `dry_activate = true`: before the switch the agent asks `switch-to-configuration
/// dry-activate` and its `activating` report names the units the switch would restart.
/// (Failed before: the key was refused as unknown.)
#[test]
fn dry_activation_reports_the_units_a_switch_would_restart() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let base = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(&host.config, format!("{base}dry_activate = true\n")).unwrap();
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    let out = host.agent(&b, &b.server.url, &deploy_public_key(&b)).arg("--once").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let activating = wait_report(&b, "alpha", 1, &["activating"]);
    let message = activating["message"].as_str().unwrap();
    assert!(message.ends_with("; would restart alpha-app.service"), "{message}");
    wait_report(&b, "alpha", 1, &["confirmed"]);
    let order: Vec<String> = host.activations().lines().map(String::from).collect();
    assert_eq!(order, ["alpha dry-activate", "alpha test", "alpha boot"], "dry-activate first, then the switch");
}
