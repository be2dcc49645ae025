//! `/metrics` after real traffic — a build, an agent's deploy and report, narinfo hits and
//! misses, an upload and a rejected one — checked by Prometheus's own `promtool check
//! metrics`; the alert rules checked by `promtool test rules`; and every metric the Grafana
//! dashboard and the rules use found in a real scrape.

use std::{
    collections::BTreeSet,
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{agent::*, builds::*, fleet::*, harness::*};

/// The repository's root (docs are read from there).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `promtool check metrics` on `text`: its exit status and what it printed.
fn promtool_check(text: &str) -> (bool, String) {
    require("promtool");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The value of the sample written exactly `series` (name and labels).
#[track_caller]
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// The metric families a scrape declares (`# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| Some(l.strip_prefix("# TYPE ")?.split(' ').next()?.to_owned())).collect()
}

/// Every `berth_…` name in `doc`, with a histogram's `_bucket`/`_sum`/`_count` taken off.
fn names_in(doc: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in doc.match_indices("berth_") {
        let name: String = doc[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        names.insert(base.to_owned());
    }
    names
}

#[test]
fn a_scrape_after_real_traffic_passes_promtool_and_covers_the_docs() {
    require("promtool");
    let b = build_host(&["alpha"], "");
    let alpha = Host::new(&b, "alpha", "");
    let _agent = alpha.spawn(&b, &b.server.url);
    std::thread::sleep(Duration::from_secs(1));
    let commit = b.fleet.commit("main", "deploy alpha", Signing::Trusted);
    assert!(b.submit_wait(&commit, "main").0, "the build succeeds");
    wait_report(&b, "alpha", 1, &["confirmed"]);
    // A build that fails, then a generation 2 that rolls back.
    b.fleet.set_broken("alpha", true);
    assert!(!b.submit_wait(&b.fleet.commit("main", "break alpha", Signing::Trusted), "main").0);
    b.fleet.set_broken("alpha", false);
    b.fleet.set_switch_fails("alpha", true);
    b.fleet.set_host("alpha", "second");
    assert!(b.submit_wait(&b.fleet.commit("main", "switch fails", Signing::Trusted), "main").0);
    assert_eq!(wait_report(&b, "alpha", 2, &["rolled_back", "confirmed"])["phase"], "rolled_back");
    // The agent sends its newest report again (as after a lost answer): counted once.
    let token = std::fs::read_to_string(&alpha.token_file).unwrap();
    let reports = || -> Vec<Value> {
        http().get(b.api("hosts/alpha/reports")).bearer_auth(token.trim()).send().unwrap().json().unwrap()
    };
    let before = reports();
    let newest = &before[0];
    assert_eq!((newest["generation"].as_i64(), newest["phase"].as_str()), (Some(2), Some("rolled_back")), "{newest}");
    let again = json!({"generation": 2, "phase": "rolled_back", "message": newest["message"],
        "duration_ms": newest["duration_ms"], "log_tail": newest["log_tail"],
        "profile_generation": newest["profile_generation"]});
    let r = http().post(b.api("hosts/alpha/reports")).bearer_auth(token.trim()).json(&again).send().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(reports().len(), before.len(), "a re-sent report is not recorded twice");

    // narinfo: the system's (twice: the second from memory), and one that is not there.
    let system = toplevel(&b, "alpha", 1);
    let hash = &system["/nix/store/".len()..][..32];
    for _ in 0..2 {
        let r = http().get(format!("{}/{hash}.narinfo", b.server.url)).send().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let absent = format!("{}/{}.narinfo", b.server.url, "0".repeat(32));
    assert_eq!(http().get(absent).send().unwrap().status(), StatusCode::NOT_FOUND);
    // An upload, and one that is not a NAR.
    let push = b.server.token("push");
    let path = b.s.build_closure("metrics");
    run_ok(&mut b.s.berth_push(&b.server.url, &push, &[&path]));
    let junk = http()
        .put(format!("{}/nar/{}.nar.zst", b.server.url, "1".repeat(52)))
        .bearer_auth(&push)
        .body(vec![7u8; 4096])
        .send()
        .unwrap();
    assert_eq!(junk.status(), StatusCode::BAD_REQUEST);
    // berth's push API with a claim that is not JSON.
    let claim = http()
        .post(format!("{}/api/v1/paths", b.server.url))
        .bearer_auth(&push)
        .body(vec![0, 0, 0, 2, b'{', b'x'])
        .send()
        .unwrap();
    assert_eq!(claim.status(), StatusCode::BAD_REQUEST);
    // A collection (a real one: the grace period keeps the fresh upload).
    let report = b.server.collect();
    assert!(report["paths_kept"].as_u64().unwrap() > 0, "{report}");

    let scrape = || http().get(format!("{}/metrics", b.server.url)).send().unwrap().text().unwrap();
    let text = scrape();
    let (ok, said) = promtool_check(&text);
    assert!(ok && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");

    assert_eq!(value(&text, "berth_http_responses_total{class=\"narinfo\",code=\"404\"}"), 1.0);
    assert!(value(&text, "berth_http_responses_total{class=\"narinfo\",code=\"200\"}") >= 2.0);
    assert!(value(&text, "berth_http_responses_total{class=\"upload\",code=\"400\"}") >= 1.0);
    assert!(value(&text, "berth_http_request_bytes_total{class=\"upload\"}") >= 4096.0);
    assert!(value(&text, "berth_http_response_bytes_total{class=\"nar\"}") > 0.0, "the agent substituted");
    assert!(value(&text, "berth_http_request_duration_seconds_count{class=\"manifest\"}") >= 1.0);
    assert_eq!(value(&text, "berth_uploads_rejected_total{reason=\"invalid_nar\"}"), 1.0);
    assert_eq!(value(&text, "berth_uploads_rejected_total{reason=\"malformed\"}"), 1.0);
    assert_eq!(value(&text, "berth_uploads_rejected_total{reason=\"internal\"}"), 0.0);
    assert_eq!(value(&text, "berth_build_duration_seconds_count{outcome=\"succeeded\"}"), 2.0);
    assert_eq!(value(&text, "berth_build_duration_seconds_count{outcome=\"failed\"}"), 1.0);
    assert_eq!(value(&text, "berth_deploy_outcomes_total{outcome=\"confirmed\"}"), 1.0);
    assert_eq!(value(&text, "berth_deploy_outcomes_total{outcome=\"rolled_back\"}"), 1.0);
    assert_eq!(value(&text, "berth_deploy_outcomes_total{outcome=\"failed\"}"), 0.0);
    assert!(value(&text, "berth_memory_cache_lookups_total{cache=\"narinfo\",result=\"hit\"}") >= 1.0);
    assert!(value(&text, "berth_memory_cache_lookups_total{cache=\"published\",result=\"hit\"}") >= 1.0);
    assert_eq!(value(&text, "berth_host_current_generation{host=\"alpha\"}"), 1.0, "back on generation 1");
    assert_eq!(value(&text, "berth_host_desired_generation{host=\"alpha\"}"), 2.0);
    assert!(value(&text, "berth_host_last_seen_seconds{host=\"alpha\"}") < 60.0);
    assert_eq!(value(&text, "berth_host_state{host=\"alpha\",state=\"rolled_back\"}"), 1.0);
    assert_eq!(text.lines().filter(|l| l.starts_with("berth_host_state{host=\"alpha\"")).count(), 1, "one state");
    assert_eq!(value(&text, "berth_builds{state=\"queued\"}"), 0.0);
    assert_eq!(value(&text, "berth_index_up"), 1.0);
    assert_eq!(value(&text, "berth_gc_runs_total"), 1.0);
    assert_eq!(value(&text, "berth_gc_duration_seconds_count"), 1.0);
    // A scrape reads the queue and the host list: four queries, counted apart.
    let (queries, scrapes) = (value(&text, "berth_db_queries_total"), value(&text, "berth_db_scrape_queries_total"));
    let again = scrape();
    assert_eq!(value(&again, "berth_db_scrape_queries_total") - scrapes, 4.0);
    let others = value(&again, "berth_db_queries_total") - queries;
    assert!(others < 4.0, "{others} queries besides the scrape's (a build worker's round may fall in between)");

    // The index fails under the scrape (its build queue is gone): the counters are still
    // served, valid, and `berth_index_up` says 0; once the index is back, 1.
    let index = b.server.data_dir.join("berth.sqlite");
    rename_table(&index, "builds", "builds_gone");
    let r = http().get(format!("{}/metrics", b.server.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the counters matter most when the index is down");
    let down = r.text().unwrap();
    assert_eq!(value(&down, "berth_index_up"), 0.0);
    assert_eq!(value(&down, "berth_deploy_outcomes_total{outcome=\"confirmed\"}"), 1.0);
    assert!(!down.contains("berth_builds{"), "no figures read from a failed index");
    let (ok, said) = promtool_check(&down);
    assert!(ok && said.trim().is_empty(), "promtool check metrics with the index down:\n{said}\n{down}");
    rename_table(&index, "builds_gone", "builds");
    assert_eq!(value(&scrape(), "berth_index_up"), 1.0);

    // Every metric the dashboard and the rules use exists.
    let declared = families(&text);
    for doc in ["docs/grafana/berth.json", "docs/prometheus/berth-rules.yml"] {
        let used = names_in(&std::fs::read_to_string(root().join(doc)).unwrap());
        assert!(!used.is_empty(), "{doc} uses no berth metric");
        let unknown: Vec<_> = used.difference(&declared).collect();
        assert!(unknown.is_empty(), "{doc} uses metrics /metrics does not have: {unknown:?}");
    }
}

/// Renames a table of the server's SQLite index under it (the server keeps running).
fn rename_table(index: &Path, from: &str, to: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use sqlx::{sqlite::SqliteConnectOptions, ConnectOptions};
        let mut conn = SqliteConnectOptions::new().filename(index).connect().await.unwrap();
        sqlx::query(&format!("ALTER TABLE {from} RENAME TO {to}")).execute(&mut conn).await.unwrap();
    });
}

#[test]
fn the_alert_rules_pass_their_promtool_tests() {
    require("promtool");
    let dir = root().join("docs/prometheus");
    let check = run_ok(Command::new("promtool").args(["check", "rules"]).arg(dir.join("berth-rules.yml")));
    assert!(check.status.success());
    // Run from the rules' directory: the test file names them relative to itself.
    let out =
        Command::new("promtool").args(["test", "rules", "berth-rules.test.yml"]).current_dir(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_grafana_dashboard_is_json_with_panels() {
    let text = std::fs::read_to_string(root().join("docs/grafana/berth.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("no targets: {}", p["title"]));
        assert!(targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| e.contains("berth_"))), "{}", p["title"]);
    }
}
