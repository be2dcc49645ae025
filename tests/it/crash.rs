//! Fault injection: the real server is killed (`BERTH_CRASH_AT`, an abort compiled only into
//! debug builds: nothing cleaned up, as `kill -9`) at each step of ingest and publication
//! while Nix uploads a closure. After a restart and collections, with the real Nix client:
//! every narinfo the server serves has its NAR; the storage directory alone is a valid
//! `file://` cache (every narinfo in it copies, with its closure, trusting berth's key); no
//! NAR or staging object is left that nothing claims; and the closure uploads again with
//! both `nix copy --to` and `berth push`.

use std::path::Path;

use crate::harness::*;

/// The steps of `berth::crash::Step`, by the names `BERTH_CRASH_AT` takes.
macro_rules! crash_at_each_step {
    ($($test:ident => $step:literal),+ $(,)?) => {$(
        #[test]
        fn $test() {
            survives_a_crash_at($step)
        }
    )+};
}

crash_at_each_step! {
    a_crash_with_the_nar_staged => "nar-staged",
    a_crash_with_the_nar_committed_but_not_recorded => "nar-committed",
    a_crash_with_the_nar_recorded => "nar-recorded",
    a_crash_with_the_narinfo_written_but_not_indexed => "narinfo-written",
    a_crash_with_the_narinfo_indexed => "narinfo-indexed",
}

fn config(s: &Scratch, name: &str, grace: u64) -> String {
    let file = s.path(name);
    std::fs::write(&file, format!("[retention]\ngrace_period_secs = {grace}\n")).unwrap();
    file.to_str().unwrap().to_owned()
}

/// Store paths of the narinfo files in the storage directory.
fn stored_paths(cache: &Path) -> Vec<String> {
    let mut paths: Vec<String> = std::fs::read_dir(cache)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(".narinfo").then(|| std::fs::read_to_string(cache.join(name)).unwrap())
        })
        .map(|text| text.lines().find_map(|l| l.strip_prefix("StorePath: ")).unwrap().to_owned())
        .collect();
    paths.sort();
    paths
}

/// The storage directory alone is a valid cache, and so is the server: every path either
/// lists copies whole (with its closure) to a fresh store trusting only berth's key.
fn check_valid(s: &Scratch, server: &Server, round: &str) -> usize {
    let cache = server.data_dir.join("cache");
    let paths = stored_paths(&cache);
    for (i, path) in paths.iter().enumerate() {
        let from_dir = format!("file://{}", cache.display());
        for (url, via) in [(from_dir.as_str(), "dir"), (server.url.as_str(), "http")] {
            let (out, store) = s.substitute(url, path, &server.public_key, &format!("{round}-{via}-{i}"));
            assert!(out.status.success(), "{round}: {path} via {via}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(s.nar_hash(path, Some(&store)), s.nar_hash(path, None), "{round}: {path} via {via}");
        }
    }
    paths.len()
}

fn nix_copy(s: &Scratch, server: &Server) -> std::process::Output {
    let netrc = s.netrc(&server.token("push"));
    s.nix("nix")
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &server.url])
        .arg(top(s))
        .output()
        .unwrap()
}

fn top(s: &Scratch) -> String {
    std::fs::read_to_string(s.path("top")).unwrap()
}

fn survives_a_crash_at(step: &str) {
    let s = Scratch::new();
    let top_path = s.build_closure(&format!("crash-{step}"));
    std::fs::write(s.path("top"), &top_path).unwrap();
    let data = s.path("data");
    let mut crashing = Server::start_with_env(&data, &[], &[("BERTH_CRASH_AT", step)]);
    let out = nix_copy(&s, &crashing);
    assert!(!out.status.success(), "the upload stops with the server");
    let status = crashing.child.wait().unwrap();
    assert!(!status.success(), "the server crashed at {step}: {status}");

    // Restarted, a collection that keeps nothing unrooted: what it leaves is a valid cache,
    // over HTTP and as a directory, and no NAR or staging object outlives it.
    let server = Server::start(&data, &["--config", &config(&s, "none.toml", 0)]);
    let report = server.collect();
    eprintln!("{step}: after the crash, {}", report["reconciled"]);
    assert_eq!(check_valid(&s, &server, "collected"), 0, "nothing roots the paths");
    let nars = std::fs::read_dir(data.join("cache/nar")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(nars, 0, "{step}: a NAR object survived that no narinfo uses");
    assert_eq!(std::fs::read_dir(data.join("cache/tmp")).unwrap().count(), 0, "{step}: staging emptied");

    // The closure uploads again with `nix copy --to`, and, once collected, with `berth push`.
    let out = nix_copy(&s, &server);
    assert!(out.status.success(), "{step}: nix copy --to again: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(check_valid(&s, &server, "copied"), 3);
    server.collect();
    let out = s.berth_push(&server.url, &server.token("push"), &[&top_path]).output().unwrap();
    assert!(out.status.success(), "{step}: berth push again: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(check_valid(&s, &server, "pushed"), 3);
}
