//! The stories that matter most: the real Nix client uploads to berth and substitutes from
//! it, trusting only berth's key. Each runs with Debian's Nix 2.8 and with a current Nix.

use std::process::Command;

use crate::harness::*;

for_each_client!(
    nix_copy_upload_then_substitute,
    nix_copy_other_compressions_and_twice,
    substitution_needs_berths_key,
    upload_without_push_token_is_refused,
    berth_push_then_substitute,
);

/// A closure uploaded with `nix copy --to http://…` (xz, Nix's default) is substituted into
/// a fresh chroot store with identical NAR hashes, trusting only berth's key.
fn nix_copy_upload_then_substitute(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let top = s.build_closure("nix-copy");
    let netrc = s.netrc(&server.token("push"));
    run_ok(s.nix("nix").args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &server.url, &top]));

    let (out, store) = s.substitute(&server.url, &top, &server.public_key, "client");
    assert!(out.status.success(), "substitution failed: {}", String::from_utf8_lossy(&out.stderr));
    for path in s.closure(&top) {
        assert_eq!(s.nar_hash(&path, Some(&store)), s.nar_hash(&path, None), "{path}");
    }
}

/// zstd and uncompressed uploads work too, and a second upload of the same paths is harmless.
fn nix_copy_other_compressions_and_twice(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let top = s.build_closure("compressions");
    let netrc = s.netrc(&server.token("push"));
    for compression in ["zstd", "none", "zstd"] {
        let url = format!("{}?compression={compression}", server.url);
        run_ok(s.nix("nix").args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &url, &top]));
    }
    let (out, _) = s.substitute(&server.url, &top, &server.public_key, "client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Substitution fails when the client trusts another key: berth's signature is what counts.
fn substitution_needs_berths_key(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let top = s.build_closure("wrong-key");
    let netrc = s.netrc(&server.token("push"));
    run_ok(s.nix("nix").args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &server.url, &top]));
    let other = "other-1:pA18roE3vLB11kd1pWBsS6jNaTxNsLEYBa3vFd+7R84=";
    let (out, _) = s.substitute(&server.url, &top, other, "client");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 2.8: "lacks a valid signature"; 2.26: "lacks a signature by a trusted key".
    assert!(
        stderr.contains("lacks a valid signature") || stderr.contains("lacks a signature by a trusted key"),
        "{stderr}"
    );
}

/// Without a token (or with a read token) `nix copy --to` is refused and nothing is stored.
fn upload_without_push_token_is_refused(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let top = s.build_closure("no-token");
    let out = s.nix("nix").args(["copy", "--to", &server.url, &top]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    let netrc = s.netrc(&server.token("read"));
    let out = s
        .nix("nix")
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &server.url, &top])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    let nars = std::fs::read_dir(server.data_dir.join("cache/nar")).unwrap().count();
    assert_eq!(nars, 0, "nothing stored");
    let hash = &top["/nix/store/".len()..][..32];
    let status = http().get(format!("{}/{hash}.narinfo", server.url)).send().unwrap().status();
    assert_eq!(status, 404);
}

/// `berth push` sends a closure that the real client then substitutes.
fn berth_push_then_substitute(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let top = s.build_closure("berth-push");
    let token = server.token("push");
    let push = || s.berth_push(&server.url, &token, &[&top]);
    run_ok(&mut push());
    let again = run_ok(&mut push());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already"), "a second push uploads nothing");
    let (out, store) = s.substitute(&server.url, &top, &server.public_key, "client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for path in s.closure(&top) {
        assert_eq!(s.nar_hash(&path, Some(&store)), s.nar_hash(&path, None), "{path}");
    }
}

/// The server's peak RSS while it ingests and serves, whatever the NAR's size
/// (docs/scaling.md): uploads in 512 KiB parts, downloads through a few reused 128 KiB
/// buffers, two malloc arenas.
const SERVE_RSS_BOUND_KIB: u64 = 48 * 1024;

/// A 1 GiB path pushes and is served, to Nix and then to 16 clients at once, while the
/// server's peak RSS stays under 48 MiB.
#[test]
fn a_large_path_streams_in_bounded_memory() {
    let s = Scratch::new();
    let server = Server::start(&s.path("data"), &[]);
    let dir = s.path("big");
    std::fs::create_dir(&dir).unwrap();
    run_ok(
        Command::new("head")
            .args(["-c", "1073741824", "/dev/urandom"])
            .stdout(std::fs::File::create(dir.join("blob")).unwrap()),
    );
    let path = stdout_of(s.nix("nix-store").args(["--add"]).arg(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    run_ok(
        Command::new(berth_bin())
            .args(["push", "--server", &server.url, &path])
            .env("BERTH_TOKEN", server.token("push")),
    );
    let peak = server.peak_rss_kib();
    eprintln!("server peak RSS after a 1 GiB push: {} MiB", peak / 1024);
    assert!(peak < SERVE_RSS_BOUND_KIB, "server peak RSS {peak} KiB is over {SERVE_RSS_BOUND_KIB} KiB");
    let (out, _) = s.substitute(&server.url, &path, &server.public_key, "client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // 16 downloads at once, 64 MiB each from its own part of the NAR.
    let hash = &path["/nix/store/".len()..][..32];
    let narinfo = http().get(format!("{}/{hash}.narinfo", server.url)).send().unwrap().text().unwrap();
    let nar = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().to_owned();
    let downloads: Vec<_> = (0..16u64)
        .map(|i| {
            let url = format!("{}/{nar}", server.url);
            std::thread::spawn(move || {
                let range = format!("bytes={}-{}", i << 26, ((i + 1) << 26) - 1);
                let mut r = http().get(url).header("range", range).send().unwrap();
                assert_eq!(r.status(), 206);
                std::io::copy(&mut r, &mut std::io::sink()).unwrap()
            })
        })
        .collect();
    for download in downloads {
        assert_eq!(download.join().unwrap(), 1 << 26);
    }
    let peak = server.peak_rss_kib();
    eprintln!("server peak RSS after 16 concurrent downloads: {} MiB", peak / 1024);
    assert!(peak < SERVE_RSS_BOUND_KIB, "server peak RSS {peak} KiB is over {SERVE_RSS_BOUND_KIB} KiB");
    run_ok(s.nix("nix-store").args(["--delete", &path]));
}

/// Both clients are there and are the versions the suite means: 2.8, and one that prints
/// path-info as a map (2.19 and later). Their versions are in the test output.
#[test]
fn both_nix_clients_are_installed() {
    let versions = NixClient::ALL.map(NixClient::version);
    eprintln!("nix clients: {versions:?}");
    assert!(versions[0].starts_with("2.8."), "Debian's Nix: {}", versions[0]);
    let minor: u32 = versions[1].split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(0);
    assert!(versions[1].starts_with("2.") && minor >= 19, "current Nix: {}", versions[1]);
}

for_each_client!(a_nar_download_cut_midway_resumes_with_a_range_request);

/// A substitution whose NAR download is cut midway finishes: the client asks again for the
/// rest with `Range` (berth answers 206), and the NAR hashes match.
fn a_nar_download_cut_midway_resumes_with_a_range_request(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let top = s.build_closure("resume");
    run_ok(&mut s.berth_push(&server.url, &server.token("push"), &[&top]));
    let proxy = CuttingProxy::start(&server.url, 30_000);
    let (out, store) = s.substitute(&proxy.url, &top, &server.public_key, "client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for path in s.closure(&top) {
        assert_eq!(s.nar_hash(&path, Some(&store)), s.nar_hash(&path, None), "{path}");
    }
    let nars = proxy.requests_for("GET /nar/");
    eprintln!("NAR requests: {nars:#?}");
    let cut = &nars
        .iter()
        .find(|(line, _)| nars.iter().filter(|(l, _)| l == line).count() > 1)
        .expect("a NAR asked for twice")
        .0;
    let again: Vec<_> = nars.iter().filter(|(line, _)| line == cut).collect();
    assert_eq!(again[0].1, None, "the first request is for the whole NAR");
    assert_eq!(again.last().unwrap().1.as_deref(), Some("bytes=30000-"), "the retry resumes where the cut was");
}

for_each_client!(an_upload_cut_midway_leaves_nothing_and_can_be_sent_again);

/// `nix copy --to` whose NAR upload is cut midway: whether the client gives up or retries,
/// berth keeps no partial object (staging is emptied, no narinfo lacks its NAR), and the next
/// upload completes and substitutes.
fn an_upload_cut_midway_leaves_nothing_and_can_be_sent_again(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let top = s.build_closure("cut-upload");
    let netrc = s.netrc(&server.token("push"));
    let cutter = UploadCutter::start(&server.url, 20_000);
    let copy = |url: &str| {
        s.nix("nix")
            .args(["copy", "--option", "netrc-file"])
            .arg(&netrc)
            .args(["--to", &format!("{url}?compression=none"), &top])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Nix 2.8 may never notice the cut connection and wait forever: it gets 20 seconds.
    let mut cut = copy(&cutter.url);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while cut.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    cut.kill().ok();
    let cut = cut.wait_with_output().unwrap();
    eprintln!("the cut upload: {} {}", cut.status, String::from_utf8_lossy(&cut.stderr));
    assert!(cutter.cut.load(std::sync::atomic::Ordering::SeqCst), "an upload was cut");
    let tmp = server.data_dir.join("cache/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(&tmp).unwrap().count() > 0 {
        assert!(std::time::Instant::now() < deadline, "staging still holds the cut upload");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Every narinfo served so far has its whole NAR: substitution of what is there works.
    for path in s.closure(&top) {
        let hash = &path["/nix/store/".len()..][..32];
        if http().get(format!("{}/{hash}.narinfo", server.url)).send().unwrap().status() == 200 {
            let (out, _) = s.substitute(&server.url, &path, &server.public_key, &format!("partial-{hash}"));
            assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let again = copy(&server.url).wait_with_output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let (out, store) = s.substitute(&server.url, &top, &server.public_key, "client");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.nar_hash(&top, Some(&store)), s.nar_hash(&top, None));
}
