//! Crashes and races: a kill -9 in the middle of an upload, and two clients pushing the same
//! closure at once, leave a consistent cache (no narinfo without its NAR, nothing half
//! written visible) that keeps working.

use std::{path::Path, process::Command, thread, time::Duration};

use crate::harness::*;

/// Every narinfo in the cache directory points at a NAR that exists with its FileSize.
fn assert_consistent(cache: &Path) {
    for entry in std::fs::read_dir(cache).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let text = std::fs::read_to_string(&path).unwrap();
            let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap().to_owned();
            let nar = cache.join(field("URL: "));
            let size = std::fs::metadata(&nar).unwrap_or_else(|_| panic!("{} has no NAR", path.display())).len();
            assert_eq!(size.to_string(), field("FileSize: "), "{}", nar.display());
        }
    }
}

#[test]
fn kill_during_an_upload_leaves_the_cache_consistent() {
    let s = Scratch::new();
    let data = s.path("data");
    let mut server = Server::start(&data, &[]);
    let token = server.token("push");
    let small = s.build_closure("crash");
    run_ok(Command::new(berth_bin()).args(["push", "--server", &server.url, &small]).env("BERTH_TOKEN", &token));

    let dir = s.path("big");
    std::fs::create_dir(&dir).unwrap();
    run_ok(
        Command::new("head")
            .args(["-c", "300000000", "/dev/urandom"])
            .stdout(std::fs::File::create(dir.join("blob")).unwrap()),
    );
    let big = stdout_of(s.nix("nix-store").arg("--add").arg(&dir));
    let mut push = Command::new(berth_bin())
        .args(["push", "--server", &server.url, &big])
        .env("BERTH_TOKEN", &token)
        .spawn()
        .unwrap();
    // Kill the server once the upload is under way (its staging object exists).
    let staging = data.join("cache/tmp");
    for _ in 0..200 {
        if std::fs::read_dir(&staging).unwrap().next().is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(25));
    }
    server.kill();
    assert!(!push.wait().unwrap().success(), "the interrupted push reports failure");
    assert_consistent(&data.join("cache"));

    let server = Server::start(&data, &[]);
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0, "start-up sweeps unfinished uploads");
    let hash = &big["/nix/store/".len()..][..32];
    assert_eq!(http().get(format!("{}/{hash}.narinfo", server.url)).send().unwrap().status(), 404);
    let (out, _) = s.substitute(&server.url, &small, &server.public_key, "before");
    assert!(out.status.success(), "what was published before the crash still serves");

    run_ok(Command::new(berth_bin()).args(["push", "--server", &server.url, &big]).env("BERTH_TOKEN", &token));
    assert_consistent(&data.join("cache"));
    let (out, _) = s.substitute(&server.url, &big, &server.public_key, "after");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run_ok(s.nix("nix-store").args(["--delete", &big]));
}

#[test]
fn two_clients_pushing_the_same_closure_at_once() {
    let s = Scratch::new();
    let server = Server::start(&s.path("data"), &[]);
    let token = server.token("push");
    let top = s.build_closure("race");
    let netrc = s.netrc(&token);
    let berth_push =
        Command::new(berth_bin()).args(["push", "--server", &server.url, &top]).env("BERTH_TOKEN", &token).spawn();
    let nix_copy =
        s.nix("nix").args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &server.url, &top]).spawn();
    let (a, b) = (berth_push.unwrap().wait_with_output().unwrap(), nix_copy.unwrap().wait_with_output().unwrap());
    // One of them may find a reference not yet published by the other and fail cleanly;
    // a rerun then completes. Neither may corrupt anything.
    if !(a.status.success() && b.status.success()) {
        run_ok(Command::new(berth_bin()).args(["push", "--server", &server.url, &top]).env("BERTH_TOKEN", &token));
    }
    assert_consistent(&server.data_dir.join("cache"));
    let (out, _) = s.substitute(&server.url, &top, &server.public_key, "client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
