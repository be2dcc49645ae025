//! Retention with the real Nix: an admin prunes old generations and berth frees what nothing
//! kept still needs, without ever breaking a kept closure, a host's running system, a push in
//! flight, or the cache's consistency when the collector is killed halfway.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{builds::*, fleet::Signing, harness::*};

/// The test policy: no grace period, so whatever nothing keeps goes at once.
const NO_GRACE: &str = "[retention]\ngrace_period_secs = 0\n";

/// The hash part of a store path.
fn hash_of(store_path: &str) -> String {
    store_path["/nix/store/".len()..][..32].to_owned()
}

/// `POST /api/v1/gc` as the admin; the report.
#[track_caller]
fn gc(url: &str, admin: &str, keep: Option<usize>, dry_run: bool) -> Value {
    let r = http().post(format!("{url}/api/v1/gc")).bearer_auth(admin).json(&json!({"keep": keep, "dry_run": dry_run}));
    let r = r.send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().unwrap());
    r.json().unwrap()
}

/// `berth ARGS…` with `BERTH_TOKEN`, which must succeed; its stdout.
#[track_caller]
fn berth(token: &str, args: &[&str]) -> String {
    String::from_utf8(run_ok(Command::new(berth_bin()).args(args).env("BERTH_TOKEN", token)).stdout).unwrap()
}

/// What berth answers for `store_path`'s narinfo.
fn narinfo_status(url: &str, store_path: &str) -> StatusCode {
    http().get(format!("{url}/{}.narinfo", hash_of(store_path))).send().unwrap().status()
}

/// A narinfo file's field.
fn field(narinfo: &str, name: &str) -> Option<String> {
    narinfo.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_owned())
}

/// The NAR file that the cache directory's narinfo of `store_path` points at.
fn nar_of(cache: &Path, store_path: &str) -> PathBuf {
    let text = std::fs::read_to_string(cache.join(format!("{}.narinfo", hash_of(store_path)))).unwrap();
    cache.join(field(&text, "URL: ").unwrap())
}

/// Hash parts of the narinfo files in the cache directory.
fn narinfo_files(cache: &Path) -> BTreeSet<String> {
    let names = std::fs::read_dir(cache).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap());
    names.filter_map(|n| n.strip_suffix(".narinfo").map(str::to_owned)).collect()
}

/// Every object in the cache directory: `<hash>.narinfo` and `nar/<file>`.
fn objects(cache: &Path) -> BTreeSet<String> {
    let mut all: BTreeSet<String> = narinfo_files(cache).into_iter().map(|h| format!("{h}.narinfo")).collect();
    all.extend(nar_files(cache).into_iter().map(|n| format!("nar/{n}")));
    all
}

/// Names of the NAR files in the cache directory.
fn nar_files(cache: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(cache.join("nar")) {
        Ok(dir) => dir.map(|e| e.unwrap().file_name().into_string().unwrap()).collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The cache directory is a consistent binary cache: every narinfo has its NAR, of the size it
/// says, and a narinfo for every path it references.
#[track_caller]
fn assert_consistent(cache: &Path) {
    let narinfos = narinfo_files(cache);
    for hash in &narinfos {
        let text = std::fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
        let nar = cache.join(field(&text, "URL: ").unwrap());
        let size = std::fs::metadata(&nar).unwrap_or_else(|_| panic!("{hash}.narinfo has no NAR {}", nar.display()));
        assert_eq!(Some(size.len().to_string()), field(&text, "FileSize: "), "{}", nar.display());
        for reference in field(&text, "References: ").unwrap_or_default().split_whitespace() {
            assert!(narinfos.contains(&reference[..32]), "{hash}.narinfo references {reference}, which is gone");
        }
    }
}

/// The same check while a collector may be deleting: a narinfo seen whose NAR is then missing
/// is a violation only if the narinfo is still there (the collector deletes it first).
fn probe_consistent(cache: &Path) -> Result<(), String> {
    for hash in narinfo_files(cache) {
        let file = cache.join(format!("{hash}.narinfo"));
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        if !cache.join(field(&text, "URL: ").unwrap()).exists() && file.exists() {
            return Err(format!("{hash}.narinfo is there, its NAR is not"));
        }
    }
    Ok(())
}

/// Two-column rows of a query on the server's SQLite index (read while it runs or after).
fn index_rows(data: &Path, sql: &str) -> Vec<(String, String)> {
    let file = data.join("berth.sqlite");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(&file);
        let mut conn = sqlx::ConnectOptions::connect(&options).await.unwrap();
        sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap()
    })
}

/// Every path in the index has its narinfo and NAR objects.
#[track_caller]
fn assert_index_consistent(data: &Path) {
    let cache = data.join("cache");
    for (hash, nar_file) in index_rows(data, "SELECT hash, nar_file FROM paths") {
        assert!(cache.join(format!("{hash}.narinfo")).exists(), "{hash} is indexed without its narinfo object");
        assert!(cache.join("nar").join(&nar_file).exists(), "{hash} is indexed without its NAR {nar_file}");
    }
}

/// Substitutes `store_path` from berth into a fresh store with the real Nix client.
#[track_caller]
fn assert_substitutes(s: &Scratch, server: &Server, store_path: &str, store_name: &str) {
    let (out, store) = s.substitute(&server.url, store_path, &server.public_key, store_name);
    assert!(out.status.success(), "{store_path}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.nar_hash(store_path, Some(&store)), s.nar_hash(store_path, None), "{store_path}");
}

/// A host's generations, oldest first.
fn generations(b: &BuildHost, host: &str) -> Vec<Generation> {
    let mut all: Vec<Generation> = b
        .generations(host)
        .iter()
        .map(|g| Generation {
            number: g["number"].as_i64().unwrap(),
            toplevel: g["store_path"].as_str().unwrap().to_owned(),
            build: g["build_id"].as_i64(),
        })
        .collect();
    all.sort_by_key(|g| g.number);
    all
}

/// One generation, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Generation {
    number: i64,
    toplevel: String,
    /// The build that made it (none for a rollback).
    build: Option<i64>,
}

/// Commits the fleet's work tree on main and builds it, which must succeed.
#[track_caller]
fn deploy(b: &BuildHost, message: &str) {
    let commit = b.fleet.commit("main", message, Signing::Trusted);
    let (ok, log, status) = b.submit_wait(&commit, "main");
    assert!(ok, "{log}\n{status}");
}

/// The GC root the build host keeps for the toplevel of `host`'s generation `g`.
fn gc_root(b: &BuildHost, host: &str, g: &Generation) -> PathBuf {
    b.server.data_dir.join("gcroots").join(host).join(format!("build-{}", g.build.unwrap()))
}

/// `count` small store paths that reference nothing, added to the local store.
fn add_paths(s: &Scratch, name: &str, count: usize) -> Vec<String> {
    let dir = s.path(name);
    let dirs: Vec<PathBuf> = (0..count).map(|i| dir.join(format!("{name}-{i}"))).collect();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("data"), format!("{} {name} {i}\n", s.dir.path().display())).unwrap();
    }
    stdout_of(s.nix("nix-store").arg("--add").args(&dirs)).lines().map(str::to_owned).collect()
}

#[test]
fn pruning_to_the_last_two_generations_keeps_them_whole_and_frees_the_rest() {
    let b = build_host(&["alpha", "beta"], NO_GRACE);
    let cache = b.server.data_dir.join("cache");
    // Three deploys: alpha changes every time, beta once (the second build rebuilds beta's
    // unchanged system: a GC root on the build host, no new generation).
    deploy(&b, "first");
    b.fleet.set_host("alpha", "two");
    deploy(&b, "second");
    b.fleet.set_host("alpha", "three");
    b.fleet.set_host("beta", "two");
    deploy(&b, "third");
    let (alpha, beta) = (generations(&b, "alpha"), generations(&b, "beta"));
    assert_eq!(alpha.iter().map(|g| g.number).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(beta.iter().map(|g| g.number).collect::<Vec<_>>(), [1, 2]);
    let dropped = &alpha[0].toplevel;
    let common = b.s.closure(dropped).into_iter().find(|p| p.ends_with("-berth-fleet-common")).unwrap();
    assert!(b.s.closure(&alpha[2].toplevel).contains(&common), "the dropped and the kept generations share it");
    let dropped_nar = nar_of(&cache, dropped);
    let dropped_size = std::fs::metadata(&dropped_nar).unwrap().len();
    let before = objects(&cache);

    // A dry run prints the plan and changes nothing.
    let printed = berth(&b.admin, &["gc", "--server", &b.server.url, "--keep", "2", "--dry-run"]);
    assert!(printed.contains("drop alpha generation 1") && printed.contains("dry run, nothing deleted"), "{printed}");
    let dry = gc(&b.server.url, &b.admin, Some(2), true);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(objects(&cache), before, "a dry run deletes nothing");
    assert_eq!(generations(&b, "alpha").len(), 3);
    assert!(gc_root(&b, "alpha", &alpha[0]).exists());

    // The collection does what the dry run said: alpha's generation 1 goes, with the one path
    // only it needed; everything else stays.
    let report = gc(&b.server.url, &b.admin, Some(2), false);
    for key in ["dropped_generations", "paths_deleted", "nar_files_deleted", "bytes_freed", "paths_kept", "summary"] {
        assert_eq!(report[key], dry[key], "{key}: the dry run said what the collection did");
    }
    assert_eq!(report["dropped_generations"], json!([["alpha", 1]]));
    assert_eq!((report["paths_deleted"].as_u64(), report["nar_files_deleted"].as_u64()), (Some(1), Some(1)));
    assert_eq!(report["bytes_freed"], dropped_size);
    assert_eq!(generations(&b, "alpha"), alpha[1..]);
    assert_eq!(generations(&b, "beta"), beta, "beta has only two");
    assert_eq!(narinfo_status(&b.server.url, dropped), StatusCode::NOT_FOUND);
    assert!(!dropped_nar.exists(), "{} is deleted", dropped_nar.display());
    assert_eq!(narinfo_status(&b.server.url, &common), StatusCode::OK, "shared with kept generations");

    // Nothing else remains: the cache holds exactly the closures of the kept generations, and
    // each of them substitutes whole into a fresh store.
    let kept: Vec<&String> = alpha[1..].iter().chain(&beta).map(|g| &g.toplevel).collect();
    let wanted: BTreeSet<String> = kept.iter().flat_map(|p| b.s.closure(p)).map(|p| hash_of(&p)).collect();
    assert_eq!(narinfo_files(&cache), wanted);
    assert_eq!(nar_files(&cache).len(), wanted.len());
    assert_consistent(&cache);
    assert_index_consistent(&b.server.data_dir);
    let orphans = "SELECT referrer, reference FROM refs WHERE referrer NOT IN (SELECT hash FROM paths)";
    assert_eq!(index_rows(&b.server.data_dir, orphans), [], "the dropped system's references are forgotten");
    for (i, toplevel) in kept.iter().enumerate() {
        assert_substitutes(&b.s, &b.server, toplevel, &format!("client-{i}"));
    }

    // The build host released the GC root of the dropped generation, and only that one.
    assert_eq!(report["gc_roots_released"], 1);
    assert!(!gc_root(&b, "alpha", &alpha[0]).exists(), "the dropped generation's root is released");
    for (host, g) in [("alpha", &alpha[1]), ("alpha", &alpha[2]), ("beta", &beta[0]), ("beta", &beta[1])] {
        let root = gc_root(&b, host, g);
        assert_eq!(std::fs::read_link(&root).unwrap(), Path::new(&g.toplevel), "{}", root.display());
    }

    // A second collection finds nothing more to do.
    let again = gc(&b.server.url, &b.admin, Some(2), false);
    let counts = ["paths_deleted", "nar_files_deleted", "gc_roots_released"].map(|k| again[k].as_u64().unwrap());
    assert_eq!(counts, [0, 0, 0], "{again}");

    // Later the admin keeps only the newest. Every GC root left on the build host points at a
    // kept system (beta's unchanged rebuild goes with the generation it rebuilt), so its own
    // Nix store can free the dropped ones.
    let report = gc(&b.server.url, &b.admin, Some(1), false);
    assert_eq!(report["dropped_generations"], json!([["alpha", 2], ["beta", 1]]));
    assert_eq!(report["gc_roots_released"], 3, "alpha's build 2, beta's builds 1 and 2");
    let kept = [&alpha[2].toplevel, &beta[1].toplevel];
    for host in ["alpha", "beta"] {
        for root in std::fs::read_dir(b.server.data_dir.join("gcroots").join(host)).unwrap() {
            let root = root.unwrap().path();
            let target = std::fs::read_link(&root).unwrap();
            assert!(kept.iter().any(|k| target == Path::new(k)), "{} still roots {}", root.display(), target.display());
        }
    }
    run_ok(b.s.nix("nix-store").args(["--delete", &alpha[0].toplevel, &alpha[1].toplevel, &beta[0].toplevel]));
    assert_consistent(&cache);
}

#[test]
fn the_generation_a_host_runs_survives_whatever_keep_says() {
    let b = build_host(&["alpha"], NO_GRACE);
    deploy(&b, "one");
    b.fleet.set_host("alpha", "two");
    deploy(&b, "two");
    b.fleet.set_host("alpha", "three");
    deploy(&b, "three");
    let alpha = generations(&b, "alpha");
    // The host confirmed generation 1 and never moved on (its agent is stuck, say).
    let host = b.server.token("host:alpha");
    let confirm = |generation: i64| {
        let body = json!({"generation": generation, "phase": "confirmed"});
        let r = http().post(b.api("hosts/alpha/reports")).bearer_auth(&host).json(&body).send().unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    };
    confirm(1);

    let report = gc(&b.server.url, &b.admin, Some(1), false);
    assert_eq!(report["dropped_generations"], json!([["alpha", 2]]), "the newest and the active one stay");
    assert_eq!(generations(&b, "alpha"), [alpha[0].clone(), alpha[2].clone()]);
    assert_eq!(narinfo_status(&b.server.url, &alpha[1].toplevel), StatusCode::NOT_FOUND);
    assert_substitutes(&b.s, &b.server, &alpha[0].toplevel, "active");
    assert_substitutes(&b.s, &b.server, &alpha[2].toplevel, "newest");
    assert!(!gc_root(&b, "alpha", &alpha[1]).exists());
    assert!(gc_root(&b, "alpha", &alpha[0]).exists() && gc_root(&b, "alpha", &alpha[2]).exists());

    // The host moves to generation 3: generation 1, which it confirmed before, is where a
    // rollback goes, and stays. The admin rolls it back to generation 1's system: a new
    // generation 4 without a build of its own. Once the host confirms 4, it stands where 1
    // stood, with nothing confirmed behind it: generations 1 and 3 can go, not 1's system.
    confirm(3);
    let r = http().post(b.api("hosts/alpha/rollback")).bearer_auth(&b.admin).json(&json!({"to": 1})).send().unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let report = gc(&b.server.url, &b.admin, Some(1), false);
    assert_eq!(report["dropped_generations"], json!([]), "3 runs, 1 is its rollback target, 4 is the newest");
    confirm(4);
    let report = gc(&b.server.url, &b.admin, Some(1), false);
    assert_eq!(report["dropped_generations"], json!([["alpha", 1], ["alpha", 3]]));
    let now: Vec<(i64, String)> = generations(&b, "alpha").into_iter().map(|g| (g.number, g.toplevel)).collect();
    assert_eq!(now, [(4, alpha[0].toplevel.clone())]);
    assert!(gc_root(&b, "alpha", &alpha[0]).exists(), "the root of the build that made the rolled-back system stays");
    assert_substitutes(&b.s, &b.server, &alpha[0].toplevel, "rolled-back");
    assert_consistent(&b.server.data_dir.join("cache"));
}

#[test]
fn a_push_during_collections_completes_or_is_refused_whole() {
    let s = Scratch::new();
    // A short grace period: a NAR uploaded and not yet indexed, or a path pushed and not yet
    // pinned, is safe for it; anything older that nothing keeps goes.
    let config = s.path("berth.toml");
    std::fs::write(&config, "[retention]\ngrace_period_secs = 3\n").unwrap();
    let server = Server::start(&s.path("data"), &["--config", config.to_str().unwrap()]);
    let (push, admin) = (server.token("push"), server.token("admin"));
    let (url, cache) = (server.url.clone(), server.data_dir.join("cache"));
    let push_cmd = |paths: &[&str]| {
        let mut cmd = Command::new(berth_bin());
        cmd.args(["push", "--server", &url]).args(paths).env("BERTH_TOKEN", &push);
        cmd
    };

    // Two libraries; two big paths, each referencing one of them (built now, pushed later);
    // and forty small paths that nothing will keep.
    let expr = s.path("gc-push.nix");
    std::fs::write(
        &expr,
        format!(
            r#"let
  mk = name: script: derivation {{ inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    PATH = "/usr/bin:/bin"; args = [ "-c" script ]; salt = "{}"; }};
  big = name: lib: mk name "mkdir $out; head -c 128000000 /dev/urandom > $out/blob; echo ${{lib}} > $out/uses";
in rec {{
  keptlib = mk "berth-gc-kept-lib" "mkdir $out; echo kept > $out/lib";
  dep = mk "berth-gc-dep" "mkdir $out; echo dep > $out/lib";
  big1 = big "berth-gc-big" keptlib;
  big2 = big "berth-gc-late" dep;
}}"#,
            s.dir.path().display()
        ),
    )
    .unwrap();
    let build = |attr: &str| stdout_of(s.nix("nix-build").args(["--no-out-link", "-A", attr]).arg(&expr));
    let (keptlib, dep) = (build("keptlib"), build("dep"));
    let garbage = add_paths(&s, "garbage", 40);
    let mut first: Vec<&str> = garbage.iter().map(String::as_str).collect();
    first.extend([keptlib.as_str(), dep.as_str()]);
    run_ok(&mut push_cmd(&first));
    let pushed = Instant::now();
    berth(&admin, &["pin", "--server", &url, "kept-lib", &keptlib]);
    berth(&admin, &["pin", "--server", &url, "dep", &dep]);
    let (big, late) = (build("big1"), build("big2"));
    thread::sleep(Duration::from_secs(4).saturating_sub(pushed.elapsed()));

    // A big push while collections run back to back, the first of which deletes the garbage.
    let mut pushing = push_cmd(&[&big]).stderr(Stdio::piped()).spawn().unwrap();
    let mut runs = Vec::new();
    while pushing.try_wait().unwrap().is_none() {
        runs.push(gc(&url, &admin, None, false));
        probe_consistent(&cache).unwrap();
    }
    let out = pushing.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    berth(&admin, &["pin", "--server", &url, "big", &big]);
    assert!(runs.len() >= 3, "only {} collection(s) ran during the push", runs.len());
    assert_eq!(runs[0]["paths_deleted"], 40, "{}", runs[0]["summary"]);
    assert!(garbage.iter().all(|p| narinfo_status(&url, p) == StatusCode::NOT_FOUND));

    // A push whose dependency a collection deletes while its NAR streams in: the client asked
    // before (`dep` was there), the server refuses the path when it finds `dep` gone, and
    // nothing of it is published.
    berth(&admin, &["unpin", "--server", &url, "dep"]);
    let pushing = push_cmd(&[&late]).stderr(Stdio::piped()).spawn().unwrap();
    let staging = cache.join("tmp");
    let streaming = Instant::now();
    while std::fs::read_dir(&staging).map(|mut d| d.next().is_none()).unwrap_or(true) {
        assert!(streaming.elapsed() < Duration::from_secs(30), "the upload never started");
        thread::sleep(Duration::from_millis(5));
    }
    let report = gc(&url, &admin, None, false);
    assert_eq!(report["paths_deleted"], 1, "{}", report["summary"]);
    assert_eq!(narinfo_status(&url, &dep), StatusCode::NOT_FOUND);
    let out = pushing.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the push cannot succeed without its dependency: {stderr}");
    assert!(stderr.contains("references not in the cache") && stderr.contains(&hash_of(&dep)), "{stderr}");
    assert_eq!(narinfo_status(&url, &late), StatusCode::NOT_FOUND);
    assert_consistent(&cache);
    assert_index_consistent(&server.data_dir);

    // Pushing again sends the dependency first and completes.
    run_ok(&mut push_cmd(&[&late]));
    berth(&admin, &["pin", "--server", &url, "late", &late]);
    gc(&url, &admin, None, false);
    assert_consistent(&cache);
    assert_index_consistent(&server.data_dir);
    assert_substitutes(&s, &server, &big, "client-big");
    assert_substitutes(&s, &server, &late, "client-late");
}

#[test]
fn a_collector_killed_midway_leaves_a_consistent_cache_and_a_rerun_finishes_the_job() {
    let s = Scratch::new();
    let config = s.path("berth.toml");
    std::fs::write(&config, NO_GRACE).unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let data = s.path("data");
    let mut server = Server::start(&data, &args);
    let (push, admin) = (server.token("push"), server.token("admin"));
    let cache = data.join("cache");
    // Many small paths that nothing keeps.
    let paths = add_paths(&s, "unkept", 300);
    let mut cmd = Command::new(berth_bin());
    run_ok(cmd.args(["push", "--server", &server.url]).args(&paths).env("BERTH_TOKEN", &push));
    let nars = nar_files(&cache).len();
    assert_eq!((narinfo_files(&cache).len(), nars), (300, 300));

    // Kill the server as soon as the collector has started deleting NARs.
    let collecting = {
        let (url, admin) = (server.url.clone(), admin.clone());
        thread::spawn(move || http().post(format!("{url}/api/v1/gc")).bearer_auth(admin).json(&json!({})).send())
    };
    let started = Instant::now();
    while nar_files(&cache).len() == nars {
        assert!(started.elapsed() < Duration::from_secs(60), "the collector deleted no NAR");
    }
    server.kill();
    assert!(collecting.join().unwrap().is_err(), "the collection was interrupted");

    // Narinfos go first: by the time NARs go, every narinfo is gone. No path is served.
    let left = nar_files(&cache).len();
    assert!(left > 0, "the collector finished before the kill: make the collection bigger");
    assert_eq!(narinfo_files(&cache).len(), 0);
    assert_consistent(&cache);
    assert_index_consistent(&data);
    // The deletions still owed are recorded.
    let pending = index_rows(&data, "SELECT kind, name FROM gc_pending");
    let owed: BTreeSet<String> = pending.iter().filter(|(kind, _)| kind == "nar").map(|(_, n)| n.clone()).collect();
    assert!(nar_files(&cache).is_subset(&owed), "every NAR left is owed: {pending:?}");

    // After a restart nothing is served, and the next collection first finishes the job.
    let server = Server::start(&data, &args);
    assert!(paths.iter().all(|p| narinfo_status(&server.url, p) == StatusCode::NOT_FOUND));
    let report = gc(&server.url, &admin, None, false);
    assert_eq!(report["paths_deleted"], 0, "{}", report["summary"]);
    assert_eq!(report["resumed_deletions"], pending.len(), "{report}");
    assert_eq!(nar_files(&cache).len(), 0, "the NARs the killed run owed are deleted");
    assert!(index_rows(&data, "SELECT kind, name FROM gc_pending").is_empty());
    assert_consistent(&cache);
    assert_index_consistent(&data);
}
