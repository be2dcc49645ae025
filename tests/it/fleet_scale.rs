//! A fleet on one server: what idle long-polls and the host list cost the database
//! (`berth_db_queries_total`, the real server's own count), and how fast a generation made on
//! one replica reaches a long-poll held by another (two real replicas on one real
//! PostgreSQL database), including after the listener's connection is cut.

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{harness::*, servers::Postgres};

/// A counter or gauge of the server's `/metrics`.
fn metric(server: &Server, name: &str) -> u64 {
    let text = http().get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')).unwrap_or_else(|| panic!("{name}"));
    value.trim().parse().unwrap()
}

/// Waits until `name` reads `value` (at most 30 s).
fn wait_for_metric(server: &Server, name: &str, value: u64) {
    let start = Instant::now();
    while metric(server, name) != value {
        assert!(start.elapsed() < Duration::from_secs(30), "{name} never reached {value}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Generation 1 of each of `hosts` (and a `confirmed` report of it from every other host),
/// written straight into the index at `database`, as builds would have.
fn seed(database: &str, hosts: &[String], store_path: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = berth::db::Db::open(database).await.unwrap();
        for (n, host) in hosts.iter().enumerate() {
            let g = berth::db::NewGeneration {
                host,
                repository: "fleet",
                store_path,
                commit_sha: "c0ffee",
                branch: "main",
                build_id: None,
                signer: None,
                rollout_id: None,
                held: false,
                diff_from: None,
                diff: None,
            };
            assert_eq!(db.add_generation(&g).await.unwrap(), 1);
            if n % 2 == 0 {
                let report = berth::db::ReportRow {
                    generation: 1,
                    phase: "confirmed".into(),
                    message: None,
                    log_tail: None,
                    duration_ms: None,
                    profile_generation: None,
                    created_at: 0,
                };
                db.add_report(host, &report, None).await.unwrap();
            }
        }
        db.close().await;
    });
}

fn hosts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("h{i:05}")).collect()
}

/// Long-polls `host`'s manifest on another thread; yields the status, the body and when the
/// answer came.
fn long_poll(
    server: &Server,
    token: &str,
    host: &str,
    after: i64,
    timeout: u64,
) -> thread::JoinHandle<(StatusCode, String, Instant)> {
    let url = format!("{}/api/v1/hosts/{host}/manifest?timeout={timeout}&after={after}", server.url);
    let token = token.to_owned();
    thread::spawn(move || {
        let r = http().get(url).bearer_auth(token).send().unwrap();
        let status = r.status();
        (status, r.text().unwrap(), Instant::now())
    })
}

/// The generation a long-poll's signed manifest names.
fn generation_of(body: &str) -> i64 {
    let signed: Value = serde_json::from_str(body).unwrap();
    let manifest: Value = serde_json::from_str(signed["manifest"].as_str().unwrap()).unwrap();
    manifest["generation"].as_i64().unwrap()
}

#[test]
fn idle_long_polls_cost_the_database_nothing() {
    const POLLS: usize = 40;
    let s = Scratch::new();
    let server = Server::start(&s.path("data"), &[]);
    let admin = server.token("admin");
    let waiting: Vec<_> = hosts(POLLS).iter().map(|h| long_poll(&server, &admin, h, 0, 8)).collect();
    wait_for_metric(&server, "berth_manifest_polls_waiting", POLLS as u64);
    let before = metric(&server, "berth_db_queries_total");
    thread::sleep(Duration::from_secs(3));
    let idle = metric(&server, "berth_db_queries_total") - before;
    // The build workers' own rounds may fall in the window; a long-poll looking at the
    // database every second would add 40 a second.
    assert!(idle <= 4, "{idle} queries in 3 s from {POLLS} idle long-polls");
    for w in waiting {
        assert_eq!(w.join().unwrap().0, StatusCode::NO_CONTENT, "ended by the timeout");
    }
}

#[test]
fn the_host_list_costs_the_same_few_queries_for_300_hosts() {
    let s = Scratch::new();
    let data = s.path("data");
    let names = hosts(300);
    seed(&format!("sqlite://{}", data.join("berth.sqlite").display()), &names, "/nix/store/x");
    let server = Server::start(&data, &[]);
    let admin = server.token("admin");
    let before = metric(&server, "berth_db_queries_total");
    let list: Vec<Value> =
        http().get(format!("{}/api/v1/hosts", server.url)).bearer_auth(&admin).send().unwrap().json().unwrap();
    let queries = metric(&server, "berth_db_queries_total") - before;
    assert_eq!(list.len(), 300);
    assert_eq!((list[0]["name"].as_str(), list[0]["latest"]["number"].as_i64()), (Some("h00000"), Some(1)));
    assert_eq!(list[0]["status"]["active_generation"], 1, "{}", list[0]);
    assert_eq!(list[0]["state"]["state"], "generation", "{}", list[0]);
    assert_eq!(list[0]["state"]["outcome"], "confirmed", "{}", list[0]);
    assert_eq!(list[1]["state"]["state"], "never_seen", "{}", list[1]);
    // The token, the hosts with their newest generations, those generations' reports, and
    // each host's last build.
    assert!(queries <= 4, "GET /api/v1/hosts with 300 hosts ran {queries} queries");

    let before = metric(&server, "berth_db_queries_total");
    let out = run_ok(Command::new(berth_bin()).args(["hosts", "--server", &server.url]).env("BERTH_TOKEN", &admin));
    let queries = metric(&server, "berth_db_queries_total") - before;
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("h0").count(), 300);
    assert!(queries <= 4, "berth hosts with 300 hosts ran {queries} queries");
}

/// Two replicas on one PostgreSQL database and one cache directory, host `alpha` at
/// generation 1 of a system in the cache.
struct Replicas {
    a: Server,
    b: Server,
    admin: String,
    database: String,
    _s: Scratch,
}

fn replicas() -> Replicas {
    let s = Scratch::new();
    let database = Postgres::shared().new_database();
    for name in ["signing-key", "deploy-key"] {
        run_ok(Command::new(berth_bin()).args(["keygen", "--name", &format!("fleet-scale-{name}-1")]).args([
            "--secret-key-file".as_ref(),
            s.path(name).as_os_str(),
            "--public-key-file".as_ref(),
            s.path(&format!("{name}.pub")).as_os_str(),
        ]));
    }
    let shared = format!(
        "database = \"{database}\"\nstorage = \"file://{}\"\nsigning_key_file = \"{}\"\ndeploy_key_file = \"{}\"\n",
        s.path("cache").display(),
        s.path("signing-key").display(),
        s.path("deploy-key").display(),
    );
    let start = |name: &str| {
        let config = s.path(&format!("{name}.toml"));
        std::fs::write(&config, &shared).unwrap();
        Server::start(&s.path(name), &["--config", config.to_str().unwrap()])
    };
    let a = start("a");
    let b = start("b");
    let token = |scope: &str| {
        stdout_of(
            Command::new(berth_bin()).args(["token", "create", "--scope", scope, "--config"]).arg(s.path("a.toml")),
        )
    };
    let top = s.build_closure("fleet-scale");
    run_ok(&mut s.berth_push(&a.url, &token("push"), &[&top]));
    seed(&database, &["alpha".to_owned()], &top);
    let admin = token("admin");
    Replicas { a, b, admin, database, _s: s }
}

impl Replicas {
    fn redeploy(&self) -> Value {
        let r = http()
            .post(format!("{}/api/v1/hosts/alpha/redeploy", self.b.url))
            .bearer_auth(&self.admin)
            .json(&json!({}))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().unwrap()
    }

    fn psql(&self, sql: &str) -> String {
        stdout_of(Command::new("psql").arg(&self.database).args(["-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql]))
    }
}

#[test]
fn a_generation_made_on_one_replica_reaches_a_long_poll_on_the_other_at_once() {
    let r = replicas();
    let mut waits = Vec::new();
    for after in 1..=8 {
        let waiting = long_poll(&r.a, &r.admin, "alpha", after, 30);
        wait_for_metric(&r.a, "berth_manifest_polls_waiting", 1);
        let made = Instant::now();
        assert_eq!(r.redeploy()["number"], after + 1);
        let (status, body, answered) = waiting.join().unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(generation_of(&body), after + 1);
        waits.push(answered - made);
    }
    let mean = waits.iter().sum::<Duration>() / waits.len() as u32;
    // Looking at the database every second would average half a second.
    assert!(mean < Duration::from_millis(250), "{waits:?}");
    assert!(waits.iter().all(|w| *w < Duration::from_secs(1)), "{waits:?}");
}

#[test]
fn after_the_listener_connection_is_cut_waiting_long_polls_look_at_the_database_again() {
    let r = replicas();
    let waiting = long_poll(&r.a, &r.admin, "alpha", 1, 60);
    wait_for_metric(&r.a, "berth_manifest_polls_waiting", 1);
    // A generation nobody is told of (as if made while the listener was disconnected)…
    r.psql(
        "INSERT INTO generations (host, number, store_path, commit_sha, branch, build_id, created_at, signer)
         SELECT host, 2, store_path, commit_sha, 'quiet', NULL, created_at, NULL FROM generations WHERE host = 'alpha'",
    );
    // …then every listener's connection is cut.
    let cut = r.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    );
    assert_eq!(cut.trim(), "4", "two listeners per replica: generations and published paths");
    let cut_at = Instant::now();
    let (status, body, answered) = waiting.join().unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(generation_of(&body), 2);
    assert!(answered - cut_at < Duration::from_secs(10), "within the reconnect backoff: {:?}", answered - cut_at);
    // The new listener hears the next generation made on B.
    let waiting = long_poll(&r.a, &r.admin, "alpha", 2, 30);
    wait_for_metric(&r.a, "berth_manifest_polls_waiting", 1);
    let made = Instant::now();
    assert_eq!(r.redeploy()["number"], 3);
    let (status, _, answered) = waiting.join().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(answered - made < Duration::from_secs(1), "{:?}", answered - made);
}

#[test]
fn each_hosts_evaluation_time_is_in_the_build_log_and_the_metrics() {
    let b = crate::builds::build_host(&["alpha", "beta"], "");
    let commit = b.fleet.commit("main", "two hosts", crate::fleet::Signing::Trusted);
    let (ok, log, status) = b.submit_wait(&commit, "main");
    assert!(ok, "{status}\n{log}");
    for host in ["alpha", "beta"] {
        let line =
            log.lines().find(|l| l.contains(&format!("[{host}] evaluated in "))).unwrap_or_else(|| panic!("{log}"));
        let seconds: Vec<f64> =
            line.split(" s").filter_map(|part| part.rsplit(' ').next()?.parse().ok()).collect::<Vec<_>>();
        assert!(matches!(seconds[..], [evaluation, all] if evaluation <= all && all > 0.0), "{line}");
    }
    assert_eq!(metric(&b.server, "berth_host_evaluation_seconds_count"), 2);
    assert_eq!(metric(&b.server, "berth_host_build_seconds_count"), 2);
    let text = http().get(format!("{}/metrics", b.server.url)).send().unwrap().text().unwrap();
    assert!(text.contains("berth_host_evaluation_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
}
