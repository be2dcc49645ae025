//! `berth rollback` and `berth redeploy` with a real agent: a rollback goes back from what the
//! host runs now to the newest earlier generation it confirmed — behind a rollback, past a
//! generation it rolled back, to a generation kept because its system is pinned — and a
//! generation the host gave up is sent again by `berth redeploy`.

use crate::{agent::*, builds::*, fleet::*, harness::*};

/// Deploys `markers` one generation each, every one confirmed by the running agent.
fn deploy_confirmed(b: &BuildHost, markers: &[&str]) {
    for marker in markers {
        b.fleet.set_host("alpha", marker);
        assert!(b.submit_wait(&b.fleet.commit("main", marker, Signing::Trusted), "main").0);
        let number = b.generations("alpha")[0]["number"].as_i64().unwrap();
        wait_report(b, "alpha", number, &["confirmed"]);
    }
}

/// `berth ARGS… --server URL` with the admin token; its stdout.
fn admin(b: &BuildHost, args: &[&str]) -> String {
    let out = run_ok(b.s.berth().args(args).args(["--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    String::from_utf8(out.stdout).unwrap()
}

fn newest(b: &BuildHost) -> (i64, String) {
    let g = &b.generations("alpha")[0];
    (g["number"].as_i64().unwrap(), g["branch"].as_str().unwrap().to_owned())
}

/// `rollback --to 2`, then `rollback`: the second goes behind 2 (to 1), not forward to 3.
/// (Failed before: it made `rollback-to-3`, undoing the first rollback.)
#[test]
fn a_rollback_of_a_rollback_goes_further_back() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let _agent = host.spawn(&b, &b.server.url);
    deploy_confirmed(&b, &["one", "two", "three"]);
    admin(&b, &["rollback", "alpha", "--to", "2"]);
    wait_report(&b, "alpha", 4, &["confirmed"]);
    assert_eq!(host.profile(), Some(toplevel(&b, "alpha", 2)));

    admin(&b, &["rollback", "alpha"]);
    assert_eq!(newest(&b), (5, "rollback-to-1".to_owned()));
    wait_report(&b, "alpha", 5, &["confirmed"]);
    assert_eq!(host.profile(), Some(toplevel(&b, "alpha", 1)), "back on generation 1's system");
    // Nothing the host confirmed lies behind generation 1.
    let out = b.s.berth().args(["rollback", "alpha", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin).output();
    let out = out.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no confirmed generation before generation 1"), "{out:?}");
}

/// Generation 2 fails its health check and is rolled back by the host; 3 is confirmed.
/// `berth rollback` goes to 1, never to the broken 2. (Failed before: it chose 2.)
/// Once the cause is fixed, `berth redeploy alpha 2` sends 2 again and the host confirms it.
/// (Failed before: there was no `redeploy`.)
#[test]
fn a_rollback_passes_a_generation_the_host_rolled_back_and_redeploy_retries_it() {
    let b = build_host(&["alpha"], "");
    let marker = b.s.path("unhealthy");
    let host = Host::new(&b, "alpha", &format!("[\"test\", \"!\", \"-e\", \"{}\"]", marker.display()));
    let _agent = host.spawn(&b, &b.server.url);
    deploy_confirmed(&b, &["one"]);
    std::fs::write(&marker, "").unwrap();
    b.fleet.set_host("alpha", "two");
    assert!(b.submit_wait(&b.fleet.commit("main", "two", Signing::Trusted), "main").0);
    assert_eq!(wait_report(&b, "alpha", 2, &["rolled_back", "confirmed"])["phase"], "rolled_back");
    std::fs::remove_file(&marker).unwrap();
    deploy_confirmed(&b, &["three"]);

    admin(&b, &["rollback", "alpha"]);
    assert_eq!(newest(&b), (4, "rollback-to-1".to_owned()));
    wait_report(&b, "alpha", 4, &["confirmed"]);
    assert_eq!(host.profile(), Some(toplevel(&b, "alpha", 1)));

    let printed = admin(&b, &["redeploy", "alpha", "2"]);
    assert!(printed.contains("generation 5 (redeploy-2)"), "{printed}");
    wait_report(&b, "alpha", 5, &["confirmed"]);
    assert_eq!(host.profile(), Some(toplevel(&b, "alpha", 2)), "generation 2's system, confirmed this time");
    // Without a number, the newest generation is sent again.
    let printed = admin(&b, &["redeploy", "alpha"]);
    assert!(printed.contains("generation 6 (redeploy-5)"), "{printed}");
    wait_report(&b, "alpha", 6, &["confirmed"]);
}

/// A generation whose system is pinned survives `gc --keep 1`, so `rollback --to` it works
/// and the host substitutes and confirms it. (Failed before: the collection dropped the
/// generation, and the rollback said "the host has no generation 1".)
#[test]
fn a_rollback_to_a_pinned_generation_after_pruning() {
    let b = build_host(&["alpha"], "[retention]\ngrace_period_secs = 0\n");
    let host = Host::new(&b, "alpha", "");
    let _agent = host.spawn(&b, &b.server.url);
    deploy_confirmed(&b, &["one", "two", "three", "four"]);
    let first = toplevel(&b, "alpha", 1);
    admin(&b, &["pin", "known-good", &first]);
    let gc = admin(&b, &["gc", "--keep", "1"]);
    assert!(gc.contains("drop alpha generation 2"), "{gc}");
    assert!(!gc.contains("drop alpha generation 1"), "the pinned generation stays: {gc}");

    admin(&b, &["rollback", "alpha", "--to", "1"]);
    assert_eq!(newest(&b), (5, "rollback-to-1".to_owned()));
    wait_report(&b, "alpha", 5, &["confirmed"]);
    assert_eq!(host.profile(), Some(first));
}
