//! Health checks with their own `retries`, `interval_secs` and `timeout_secs`, run by the
//! real agent after a real switch: a check that fails twice and then passes confirms the
//! deploy with `retries = 2` and fails it with `retries = 0`; a check that hangs is killed at
//! its `timeout_secs`, long before the overall `health_timeout_secs`.

use std::time::{Duration, Instant};

use crate::{agent::*, builds::*, fleet::*};

/// A check that fails until it has been run `passes_on` times (counting in `counter`).
fn flaky(counter: &std::path::Path, passes_on: u32, options: &str) -> String {
    let script = format!(
        "n=$(cat {0} 2>/dev/null || echo 0); n=$((n + 1)); echo $n > {0}; echo attempt $n >&2; [ $n -ge {passes_on} ]",
        counter.display()
    );
    format!("{{ command = [\"sh\", \"-c\", \"{script}\"], {options} }}")
}

fn attempts(counter: &std::path::Path) -> u32 {
    std::fs::read_to_string(counter).unwrap().trim().parse().unwrap()
}

#[test]
fn health_checks_retry_and_time_out_per_check() {
    let b = build_host(&["alpha", "beta", "gamma"], "");
    let (alpha_count, beta_count) = (b.s.path("alpha-attempts"), b.s.path("beta-attempts"));
    let alpha = Host::new(&b, "alpha", &flaky(&alpha_count, 3, "retries = 2, interval_secs = 1"));
    let beta = Host::new(&b, "beta", &flaky(&beta_count, 3, "retries = 0"));
    let hang_log = b.s.path("hang.log");
    let hang = format!(
        "{{ command = [\"sh\", \"-c\", \"echo started >> {0}; sleep 60; echo finished >> {0}\"], timeout_secs = 2 }}",
        hang_log.display()
    );
    let gamma = Host::new(&b, "gamma", &hang);
    // gamma's overall deadline is far away: only the check's own timeout can stop it soon.
    let config =
        std::fs::read_to_string(&gamma.config).unwrap().replace("health_timeout_secs = 6", "health_timeout_secs = 120");
    std::fs::write(&gamma.config, config).unwrap();
    let _agents = [alpha.spawn(&b, &b.server.url), beta.spawn(&b, &b.server.url), gamma.spawn(&b, &b.server.url)];
    std::thread::sleep(Duration::from_secs(1));
    assert!(b.submit_wait(&b.fleet.commit("main", "deploy", Signing::Trusted), "main").0);

    let settled = ["confirmed", "failed", "rolled_back"];
    assert_eq!(wait_report(&b, "alpha", 1, &settled)["phase"], "confirmed", "passed on the third attempt");
    assert_eq!(attempts(&alpha_count), 3);

    let report = wait_report(&b, "beta", 1, &settled);
    assert_eq!(report["phase"], "failed", "{report}");
    assert!(report["message"].as_str().unwrap().contains("health check"), "{report}");
    assert_eq!(attempts(&beta_count), 1, "no retries");

    let activating = Instant::now();
    wait_report(&b, "gamma", 1, &["activating"]);
    let report = wait_report(&b, "gamma", 1, &settled);
    assert_eq!(report["phase"], "failed", "{report}");
    assert!(report["message"].as_str().unwrap().contains("timed out after 2s"), "{report}");
    assert!(activating.elapsed() < Duration::from_secs(30), "killed at timeout_secs: {:?}", activating.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(std::fs::read_to_string(&hang_log).unwrap(), "started\n", "the hanging check was killed");
}
