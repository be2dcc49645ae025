//! Small wrong answers a client sees: names Nix writes, ranges, auth schemes, a full disk,
//! `/metrics`, refusals before authentication, NAR listings.

use super::*;

/// Nix names NARs `.nar.bz2` and `.nar.br` with `compression=bzip2|br`: a missing one is a
/// miss (404), and an upload of one is refused with the reason, not "malformed name".
#[test]
fn bzip2_and_brotli_nars_are_misses_and_their_uploads_say_why() {
    let f = fixture(&[]);
    let stem = nixbase32(&[7; 32]);
    for ext in ["bz2", "br"] {
        let url = f.url(&format!("nar/{stem}.nar.{ext}"));
        assert_json_refusal(f.client.get(&url).send().unwrap(), StatusCode::NOT_FOUND, "not_found", ext);
        assert_eq!(f.client.head(&url).send().unwrap().status(), StatusCode::NOT_FOUND, "HEAD {ext}");
        let r = f.client.put(&url).bearer_auth(&f.push).body(vec![0u8; 64]).send().unwrap();
        let message = assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", ext);
        assert!(message.contains("xz") && message.contains("zstd"), "{ext}: says what is accepted: {message}");
    }
    let bad = f.client.get(f.url(&format!("nar/{stem}.nar.gz"))).send().unwrap();
    assert_json_refusal(bad, StatusCode::BAD_REQUEST, "bad_request", "a name no Nix writes");

    // What Nix itself shows its user.
    let file = f.s.path("bz2-payload");
    std::fs::write(&file, "a path uploaded with compression=bzip2\n").unwrap();
    let path = stdout_of(f.s.nix("nix-store").arg("--add").arg(&file));
    let netrc = f.s.netrc(&f.push);
    let url = format!("{}?compression=bzip2", f.server.url);
    let out =
        f.s.nix("nix")
            .args(["copy", "--option", "netrc-file"])
            .arg(&netrc)
            .args(["--to", &url, &path])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bzip2 upload is refused");
    assert!(stderr.contains("upload with compression=xz, zstd or none"), "Nix shows the reason: {stderr}");
}

/// `bytes=-0` asks for the last zero bytes: unsatisfiable (RFC 9110), not the whole file.
#[test]
fn an_empty_suffix_range_is_416() {
    let f = fixture(&[]);
    let (name, nar) = upload_plain_nar(&f, 1000);
    let url = f.url(&format!("nar/{name}"));
    let r = f.client.get(&url).header("range", "bytes=-0").send().unwrap();
    assert_eq!(
        r.headers().get("content-range").map(|v| v.to_str().unwrap().to_owned()),
        Some(format!("bytes */{}", nar.len()))
    );
    assert_json_refusal(r, StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", "bytes=-0");
    let tail = f.client.get(&url).header("range", "bytes=-1").send().unwrap();
    assert_eq!(tail.status(), StatusCode::PARTIAL_CONTENT);
}

/// The scheme of `Authorization` is case-insensitive (RFC 9110 §11.1).
#[test]
fn auth_schemes_are_case_insensitive() {
    let f = fixture(&[]);
    let basic = |scheme: &str| {
        use base64::Engine as _;
        format!("{scheme} {}", base64::engine::general_purpose::STANDARD.encode(format!("nix:{}", f.push)))
    };
    for value in [format!("bearer {}", f.push), format!("BEARER {}", f.push), basic("basic"), basic("BASIC")] {
        let r = f
            .client
            .post(f.url("api/v1/paths/missing"))
            .header("authorization", &value)
            .json(&serde_json::json!({"paths": []}))
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{}: {}", &value[..6], r.text().unwrap());
    }
}

/// A tmpfs of its own directory, mounted for the life of a test (unmounted before the
/// directory is removed).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut mount = std::process::Command::new("mount");
        mount.args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(dir.path());
        run_ok(&mut mount);
        Self { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A failure to unmount leaves a tmpfs behind, which the next run can live with.
        match std::process::Command::new("umount").arg(self.dir.path()).status() {
            Ok(status) if status.success() => {}
            other => eprintln!("could not unmount {}: {other:?}", self.dir.path().display()),
        }
    }
}

/// A full disk is the operator's to fix and the client's to retry later: 507
/// `storage_full`, not "internal error"; and the partial upload is gone.
#[test]
fn a_full_disk_answers_507_storage_full() {
    // Declared first, dropped last: after the server has stopped.
    let disk = Tmpfs::mount("1m");
    let s = Scratch::new();
    let storage = format!("file://{}/cache", disk.path().display());
    // The index stays in the data directory, off the small disk.
    let server = Server::start(&s.path("data"), &["--storage", &storage]);
    let f = Fixture { push: server.token("push"), s, server, client: http() };
    let mut nar = Vec::new();
    write_zero_nar(&mut nar, 3 << 20);
    let r =
        f.client.put(f.url(&format!("nar/{}", nar_file_name(&nar, "")))).bearer_auth(&f.push).body(nar).send().unwrap();
    let message =
        assert_json_refusal(r, StatusCode::INSUFFICIENT_STORAGE, "storage_full", "a NAR larger than the disk");
    assert!(message.contains("full"), "{message}");
    let used: u64 = walk_sizes(disk.path());
    assert!(used < 64 * 1024, "the partial upload was removed ({used} bytes left)");
}

/// The index's disk filling up is a full disk too: uploads go on until SQLite cannot grow,
/// and that one is 507 `storage_full`, not "internal error".
#[test]
fn a_full_index_disk_answers_507_storage_full() {
    let disk = Tmpfs::mount("2m");
    let s = Scratch::new();
    let storage = format!("file://{}", s.path("cache").display());
    let server = Server::start(&disk.path().join("data"), &["--storage", &storage]);
    let f = Fixture { push: server.token("push"), s, server, client: http() };
    // Leave the index a few KiB.
    let filler = disk.path().join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    drop(file);
    let free = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(free.saturating_sub(16 << 10)).unwrap();
    for i in 0..5000u64 {
        let mut nar = Vec::new();
        write_zero_nar(&mut nar, i);
        let r = f.client.put(f.url(&format!("nar/{}", nar_file_name(&nar, "")))).bearer_auth(&f.push).body(nar);
        let r = r.send().unwrap();
        if r.status() != StatusCode::OK {
            assert_json_refusal(
                r,
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_full",
                &format!("upload {i} on a full index disk"),
            );
            return;
        }
    }
    panic!("5000 uploads fit in 16 KiB of index");
}

fn walk_sizes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk_sizes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

/// `/metrics` follows the cache: public on a public cache, behind a token (scope `metrics`,
/// or admin) on a private one, unless `metrics_public` says otherwise.
#[test]
fn metrics_are_private_when_reads_are_unless_configured_public() {
    let s = Scratch::new();
    let config = s.path("berth.toml");
    std::fs::write(&config, "[cache]\nrequire_read_token = true\n").unwrap();
    let server = Server::start(&s.path("data"), &["--config", config.to_str().unwrap()]);
    let client = http();
    let url = format!("{}/metrics", server.url);
    assert_json_refusal(client.get(&url).send().unwrap(), StatusCode::UNAUTHORIZED, "unauthorized", "anonymous");
    let read = client.get(&url).bearer_auth(server.token("read")).send().unwrap();
    assert_json_refusal(read, StatusCode::FORBIDDEN, "forbidden", "a read token");
    let metrics = client.get(&url).bearer_auth(server.token("metrics")).send().unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(metrics.text().unwrap().contains("berth_narinfo_hits_total"));
    assert_eq!(client.get(&url).bearer_auth(server.token("admin")).send().unwrap().status(), StatusCode::OK);
    drop(server);

    let s = Scratch::new();
    std::fs::write(&config, "metrics_public = true\n[cache]\nrequire_read_token = true\n").unwrap();
    let server = Server::start(&s.path("data"), &["--config", config.to_str().unwrap()]);
    assert_eq!(
        client.get(format!("{}/metrics", server.url)).send().unwrap().status(),
        StatusCode::OK,
        "configured public"
    );
}

/// `curl -X METHOD --data-binary @file` with `Expect: 100-continue`: (status, body).
fn curl_expecting_continue(method: &str, url: &str, file: &std::path::Path) -> (u16, String) {
    require("curl");
    let out = run_ok(
        std::process::Command::new("curl")
            .args(["-sS", "-X", method, "-H", "Content-Type: application/json", "-H", "Expect: 100-continue"])
            .args(["--expect100-timeout", "30", "-w", "\n%{http_code}", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(url),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_owned())
}

/// Without a token, a body is never looked at: malformed JSON, a wrong content type or an
/// oversized body to any authenticated JSON endpoint is 401, as berth's JSON. With a token,
/// each is refused as berth's JSON too (400, 415, 413), and so are unknown routes and
/// methods.
#[test]
fn refusals_come_after_auth_and_are_always_json() {
    let f = fixture(&[]);
    let admin = f.server.token("admin");
    let endpoints = [
        "api/v1/builds",
        "api/v1/gc",
        "api/v1/cache/resign",
        "api/v1/paths/missing",
        "api/v1/hosts/alpha/reports",
        "api/v1/hosts/alpha/rollback",
        "api/v1/pins/p",
    ];
    let big = vec![b'x'; 3 << 20];
    let big_file = f.s.path("big.json");
    std::fs::write(&big_file, &big).unwrap();
    for endpoint in endpoints {
        let method = if endpoint.starts_with("api/v1/pins") { reqwest::Method::PUT } else { reqwest::Method::POST };
        let send = |token: Option<&str>, kind: &str, body: Vec<u8>| {
            let mut r = f.client.request(method.clone(), f.url(endpoint)).header("content-type", kind).body(body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            r.send().unwrap()
        };
        for (kind, body) in [("application/json", b"{nope".to_vec()), ("text/plain", b"{}".to_vec())] {
            let what = format!("{endpoint} {kind} {} bytes, no token", body.len());
            assert_json_refusal(send(None, kind, body), StatusCode::UNAUTHORIZED, "unauthorized", &what);
        }
        // A body that is never read: a client that says `Expect: 100-continue` (as curl and
        // Nix do for large bodies) is told 401 before it sends it.
        let (status, text) = curl_expecting_continue(method.as_str(), &f.url(endpoint), &big_file);
        assert_eq!(status, 401, "{endpoint} 3 MiB, no token: {text}");
        assert!(text.contains("\"code\":\"unauthorized\""), "{endpoint}: {text}");
        let what = format!("{endpoint} malformed JSON");
        assert_json_refusal(
            send(Some(&admin), "application/json", b"{nope".to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_request",
            &what,
        );
        let what = format!("{endpoint} text/plain");
        assert_json_refusal(
            send(Some(&admin), "text/plain", b"{}".to_vec()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            &what,
        );
        // Just over the limit, so what the server leaves unread is small and the client sees
        // the answer rather than a reset connection.
        let what = format!("{endpoint} 2 MiB + 1 KiB");
        assert_json_refusal(
            send(Some(&admin), "application/json", vec![b'x'; (2 << 20) + 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &what,
        );
    }
    assert_json_refusal(
        f.client.get(f.url("api/v1/nothing")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        "unknown route",
    );
    let r = f.client.delete(f.url("api/v1/builds")).bearer_auth(&admin).send().unwrap();
    assert_json_refusal(r, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "DELETE /api/v1/builds");
    let r = f.client.get(f.url("api/v1/builds/notanumber")).bearer_auth(&admin).send().unwrap();
    assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", "a path parameter that does not parse");
    let r = f.client.get(f.url("api/v1/hosts/alpha/manifest?after=x")).send().unwrap();
    assert_json_refusal(r, StatusCode::UNAUTHORIZED, "unauthorized", "a bad query without a token");
}

for_each_client!(nar_listings_are_served_only_for_paths_in_the_cache);

/// `PUT /<hash>.ls` cannot make berth serve JSON for a path it does not have, or JSON that
/// is not a NAR listing; the listings Nix writes with `write-nar-listing=true` (before the
/// NAR and the narinfo) are served once the path is published.
fn nar_listings_are_served_only_for_paths_in_the_cache(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let push = server.token("push");
    let http = http();
    let listing = serde_json::json!({"version": 1, "root": {"type": "regular", "size": 3, "narOffset": 96}});
    let stranger = format!("{}/{}.ls", server.url, nixbase32(&[3; 20]));
    let r = http.put(&stranger).bearer_auth(&push).json(&listing).send().unwrap();
    assert!(r.status().is_success(), "a listing may arrive before its path: {}", r.status());
    assert_json_refusal(
        http.get(&stranger).send().unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
        "a path not in the cache",
    );
    for junk in [serde_json::json!({"a": 1}), serde_json::json!([]), serde_json::json!({"version": 1, "root": 7})] {
        let r = http.put(&stranger).bearer_auth(&push).json(&junk).send().unwrap();
        assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", &format!("{junk}"));
    }

    let top = s.build_closure("listings");
    let netrc = s.netrc(&push);
    let url = format!("{}?write-nar-listing=true", server.url);
    run_ok(s.nix("nix").args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &url, &top]));
    let hash = &top["/nix/store/".len()..][..32];
    let r = http.get(format!("{}/{hash}.ls", server.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "Nix's listing of a published path");
    let served: serde_json::Value = r.json().unwrap();
    assert_eq!((served["version"].as_u64(), served["root"]["type"].as_str()), (Some(1), Some("directory")), "{served}");
    assert_eq!(http.get(&stranger).send().unwrap().status(), StatusCode::NOT_FOUND, "still nothing for a stranger");
}
