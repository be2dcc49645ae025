//! Hostile input against the real `berth serve`: decompression bombs, multi-byte text,
//! odd names and headers, refusals before authentication. Each story says what an attacker
//! (or bad luck) sends and what berth must answer; memory is read from the server's
//! `/proc/<pid>/status`.

use std::io::Write;

use berth::nixfmt::nixbase32;
use reqwest::{blocking::Client, StatusCode};
use sha2::{Digest, Sha256};

use crate::harness::{for_each_client, *};

/// The peak RSS the issue allows the server under hostile input.
const RSS_BOUND_KIB: u64 = 100 * 1024;

struct Fixture {
    _s: Scratch,
    server: Server,
    push: String,
    client: Client,
}

fn fixture(args: &[&str]) -> Fixture {
    let s = Scratch::new();
    let server = Server::start(&s.path("data"), args);
    let push = server.token("push");
    Fixture { _s: s, server, push, client: http() }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.server.url)
    }
}

/// Writes the NAR of a single regular file of `size` zero bytes into `w`, a MiB at a time:
/// the most compressible content there is, so a few hundred KiB expand without end.
fn write_zero_nar(w: &mut impl Write, size: u64) {
    fn token(w: &mut impl Write, s: &[u8]) {
        w.write_all(&(s.len() as u64).to_le_bytes()).unwrap();
        w.write_all(s).unwrap();
        w.write_all(&[0; 8][..(8 - s.len() % 8) % 8]).unwrap();
    }
    for t in ["nix-archive-1", "(", "type", "regular", "contents"] {
        token(w, t.as_bytes());
    }
    w.write_all(&size.to_le_bytes()).unwrap();
    let mib = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(mib.len() as u64) as usize;
        w.write_all(&mib[..n]).unwrap();
        left -= n as u64;
    }
    w.write_all(&[0; 8][..((8 - size % 8) % 8) as usize]).unwrap();
    token(w, b")");
}

/// CRC-32 (IEEE), as the xz block header carries it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// An `.nar.xz` of `size` zero bytes whose block header declares a 4 GiB dictionary: a
/// decoder without a memory limit allocates it and fills it as the zeros expand.
fn xz_bomb(size: u64) -> Vec<u8> {
    xz_declaring(size, 40) // 4 GiB - 1, the largest dictionary LZMA2 can declare
}

/// An `.nar.xz` of `size` zero bytes whose block header declares the LZMA2 dictionary of
/// properties byte `dict` (`(2 | dict & 1) << (dict / 2 + 11)` bytes; 40: 4 GiB - 1).
fn xz_declaring(size: u64, dict: u8) -> Vec<u8> {
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 0);
    write_zero_nar(&mut enc, size);
    let mut xz = enc.finish().unwrap();
    // Stream header (12 bytes), then the block header: size byte, flags (no sizes, one
    // filter), LZMA2's id 0x21, its 1-byte properties (the dictionary size), padding, CRC32.
    let header_len = (usize::from(xz[12]) + 1) * 4;
    assert_eq!((xz[13], xz[14], xz[15]), (0x00, 0x21, 0x01), "the block header of a one-filter LZMA2 stream");
    xz[16] = dict;
    let crc = crc32(&xz[12..12 + header_len - 4]);
    xz[12 + header_len - 4..12 + header_len].copy_from_slice(&crc.to_le_bytes());
    xz
}

/// A `.nar.zst` of `size` zero bytes whose frame header declares a 2^27 (128 MiB) window,
/// the most a default zstd decoder accepts.
fn zstd_bomb(size: u64) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    write_zero_nar(&mut enc, size);
    let mut zst = enc.finish().unwrap();
    // Magic (4 bytes), the frame header descriptor, then the window descriptor unless the
    // frame is a single segment.
    assert_eq!(zst[4] & 0x20, 0, "a streamed frame carries a window descriptor");
    zst[5] = (27 - 10) << 3;
    zst
}

fn nar_file_name(file: &[u8], ext: &str) -> String {
    format!("{}.nar{ext}", nixbase32(&Sha256::digest(file)))
}

/// The body of berth's push API: a claim for a one-file path, then the compressed NAR.
fn push_body(zst: &[u8]) -> Vec<u8> {
    let claim = serde_json::json!({
        "path": "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-bomb",
        "narHash": format!("sha256:{}", nixbase32(&[0; 32])),
        "narSize": 1,
        "references": [],
    });
    let claim = serde_json::to_vec(&claim).unwrap();
    let mut body = (claim.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&claim);
    body.extend_from_slice(zst);
    body
}

#[track_caller]
fn assert_too_large(status: StatusCode, body: &str, what: &str) {
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{what}: {body}");
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(json["code"], "too_large", "{what}: {body}");
    let message = json["message"].as_str().unwrap();
    assert!(message.contains("max_decoder_memory_mib") && message.contains("MiB"), "{what}: names the limit: {body}");
}

/// Eight uploads at once, each a bomb that expands 128 MiB of zeros through a decoder that
/// asks for a 4 GiB dictionary (xz) or a 128 MiB window (zstd): each is refused with 413
/// naming the limit, nothing is kept, and the server's peak RSS stays under 100 MiB.
#[test]
fn decompression_bombs_are_refused_within_bounded_memory() {
    let f = fixture(&[]);
    let xz = xz_bomb(128 << 20);
    let zst = zstd_bomb(128 << 20);
    eprintln!("bombs: xz {} bytes, zstd {} bytes", xz.len(), zst.len());
    let (xz_name, zst_name) = (nar_file_name(&xz, ".xz"), nar_file_name(&zst, ".zst"));
    let results: Vec<(String, StatusCode, String)> = std::thread::scope(|scope| {
        let mut uploads = Vec::new();
        for i in 0..8 {
            let (f, xz, zst, xz_name, zst_name) = (&f, &xz, &zst, &xz_name, &zst_name);
            uploads.push(scope.spawn(move || {
                let (what, request) = match i % 4 {
                    0 | 1 => ("PUT .nar.xz", f.client.put(f.url(&format!("nar/{xz_name}"))).body(xz.clone())),
                    2 => ("PUT .nar.zst", f.client.put(f.url(&format!("nar/{zst_name}"))).body(zst.clone())),
                    _ => ("POST /api/v1/paths", f.client.post(f.url("api/v1/paths")).body(push_body(zst))),
                };
                let r = request.bearer_auth(&f.push).send().unwrap();
                (what.to_owned(), r.status(), r.text().unwrap())
            }));
        }
        uploads.into_iter().map(|u| u.join().unwrap()).collect()
    });
    let peak = f.server.peak_rss_kib();
    eprintln!("server peak RSS after 8 concurrent bombs: {} MiB", peak / 1024);
    for (what, status, body) in &results {
        assert_too_large(*status, body, what);
    }
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB is over the {RSS_BOUND_KIB} KiB bound");
    let kept: Vec<_> = std::fs::read_dir(f.server.data_dir.join("cache/nar"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(kept.is_empty(), "nothing of a refused upload is kept: {kept:?}");

    // What Nix itself sends (xz preset 6: an 8 MiB dictionary; zstd level 19) still goes in.
    let mut nar = Vec::new();
    write_zero_nar(&mut nar, 3 << 20);
    let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
    enc.write_all(&nar).unwrap();
    let xz = enc.finish().unwrap();
    let zst = zstd::encode_all(&nar[..], 19).unwrap();
    for (file, ext) in [(xz, ".xz"), (zst, ".zst")] {
        let r = f.client.put(f.url(&format!("nar/{}", nar_file_name(&file, ext)))).bearer_auth(&f.push).body(file);
        let r = r.send().unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{ext}: {}", r.text().unwrap());
    }
}

/// A host reports what `switch-to-configuration` and its health checks printed, which is
/// often not ASCII: every text field of a report, long enough to be clipped at a byte that
/// falls inside a character, is stored (clipped at a character boundary), never a panic.
#[test]
fn host_reports_with_multi_byte_text_are_clipped_not_panicked_on() {
    use crate::{builds::build_host, fleet::Signing};
    let b = build_host(&["alpha"], "");
    let commit = b.fleet.commit("main", "one", Signing::Trusted);
    assert!(b.submit_wait(&commit, "main").0, "generation 1 is built");
    let alpha = b.server.token("host:alpha");
    let client = http();
    // 3-byte "€" and 4-byte "😀", each over its field's limit by an amount that is not a
    // multiple of the character's size.
    let texts = ["€".repeat(400), "😀".repeat(301), format!("a{}", "€".repeat(30_000)), "ü😀€".repeat(8_000)];
    for (field, text) in
        [("message", &texts[0]), ("message", &texts[1]), ("log_tail", &texts[2]), ("log_tail", &texts[3])]
    {
        let body = serde_json::json!({"generation": 1, "phase": "failed", field: text});
        let r = client.post(b.api("hosts/alpha/reports")).bearer_auth(&alpha).json(&body).send().unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{field} of {} bytes: {}", text.len(), r.text().unwrap());
        let reports: Vec<serde_json::Value> =
            client.get(b.api("hosts/alpha/reports")).bearer_auth(&alpha).send().unwrap().json().unwrap();
        let stored = reports[0][field].as_str().unwrap_or_else(|| panic!("{field} stored: {:?}", reports[0]));
        assert!(!stored.is_empty() && stored.len() < text.len(), "{field} is clipped");
        match field {
            "message" => assert!(text.starts_with(stored), "a message keeps its beginning"),
            _ => assert!(text.ends_with(stored), "a log tail keeps its end"),
        }
    }
    // The other text a report carries: its phase (one of a few words) and the host name.
    let body = serde_json::json!({"generation": 1, "phase": "fäiled€", "message": "ü"});
    let r = client.post(b.api("hosts/alpha/reports")).bearer_auth(&alpha).json(&body).send().unwrap();
    assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", "a multi-byte phase");
    let body = serde_json::json!({"generation": 1, "phase": "failed"});
    let r = client.post(b.api("hosts/%C3%A5lpha%E2%82%AC/reports")).bearer_auth(&alpha).json(&body).send().unwrap();
    assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", "a multi-byte host name");
    let nul = serde_json::json!({"generation": 1, "phase": "failed", "message": "a\u{0}€", "log_tail": "€\u{0}b"});
    let r = client.post(b.api("hosts/alpha/reports")).bearer_auth(&alpha).json(&nul).send().unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "NUL is dropped, not stored");
    let reports: Vec<serde_json::Value> =
        client.get(b.api("hosts/alpha/reports")).bearer_auth(&alpha).send().unwrap().json().unwrap();
    assert_eq!((reports[0]["message"].as_str(), reports[0]["log_tail"].as_str()), (Some("a€"), Some("€b")));
}

/// Bombs that stay under the per-decoder limit are valid uploads, but each really fills its
/// dictionary: eight at once (xz, a 24 MiB dictionary, 256 MiB of zeros each) share the
/// decoder budget instead of multiplying memory, and the server's peak RSS stays under
/// 100 MiB.
#[test]
fn bombs_under_the_limit_share_the_decoder_budget() {
    let f = fixture(&[]);
    let xz = xz_declaring(256 << 20, 25);
    let name = nar_file_name(&xz, ".xz");
    let statuses: Vec<StatusCode> = std::thread::scope(|scope| {
        let uploads: Vec<_> = (0..8)
            .map(|_| {
                let (f, xz, name) = (&f, &xz, &name);
                scope.spawn(move || {
                    let r = f.client.put(f.url(&format!("nar/{name}"))).bearer_auth(&f.push).body(xz.clone());
                    r.send().unwrap().status()
                })
            })
            .collect();
        uploads.into_iter().map(|u| u.join().unwrap()).collect()
    });
    let peak = f.server.peak_rss_kib();
    eprintln!("server peak RSS after 8 concurrent 24 MiB-dictionary uploads: {} MiB", peak / 1024);
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB is over the {RSS_BOUND_KIB} KiB bound");
}

/// A plain NAR of `size` zeros, uploaded under its own name; returns (name, bytes).
fn upload_plain_nar(f: &Fixture, size: u64) -> (String, Vec<u8>) {
    let mut nar = Vec::new();
    write_zero_nar(&mut nar, size);
    let name = nar_file_name(&nar, "");
    let r = f.client.put(f.url(&format!("nar/{name}"))).bearer_auth(&f.push).body(nar.clone()).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().unwrap());
    (name, nar)
}

#[track_caller]
fn assert_json_refusal(r: reqwest::blocking::Response, status: StatusCode, code: &str, what: &str) -> String {
    assert_eq!(r.status(), status, "{what}");
    let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = r.text().unwrap();
    assert!(kind.starts_with("application/json"), "{what}: a JSON body, not {kind:?}: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: {e}: {body}"));
    assert_eq!(json["code"], code, "{what}: {body}");
    let message = json["message"].as_str().unwrap_or_else(|| panic!("{what}: a message: {body}"));
    assert!(!message.is_empty() && !message.contains('\n'), "{what}: a one-line message: {body}");
    message.to_owned()
}

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
    let file = f._s.path("bz2-payload");
    std::fs::write(&file, "a path uploaded with compression=bzip2\n").unwrap();
    let path = stdout_of(f._s.nix("nix-store").arg("--add").arg(&file));
    let netrc = f._s.netrc(&f.push);
    let url = format!("{}?compression=bzip2", f.server.url);
    let out =
        f._s.nix("nix")
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

/// A tmpfs mounted for the life of a test.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: std::path::PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        run_ok(
            std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&dir),
        );
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A full disk is the operator's to fix and the client's to retry later: 507
/// `storage_full`, not "internal error"; and the partial upload is gone.
#[test]
fn a_full_disk_answers_507_storage_full() {
    let s = Scratch::new();
    let disk = Tmpfs::mount(s.path("disk"), "1m");
    let storage = format!("file://{}/cache", disk.0.display());
    // The index stays in the data directory, off the small disk.
    let server = Server::start(&s.path("data"), &["--storage", &storage]);
    let f = Fixture { push: server.token("push"), _s: s, server, client: http() };
    let mut nar = Vec::new();
    write_zero_nar(&mut nar, 3 << 20);
    let r =
        f.client.put(f.url(&format!("nar/{}", nar_file_name(&nar, "")))).bearer_auth(&f.push).body(nar).send().unwrap();
    let message =
        assert_json_refusal(r, StatusCode::INSUFFICIENT_STORAGE, "storage_full", "a NAR larger than the disk");
    assert!(message.contains("full"), "{message}");
    let used: u64 = walk_sizes(&disk.0);
    assert!(used < 64 * 1024, "the partial upload was removed ({used} bytes left)");
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
        "api/v1/paths/missing",
        "api/v1/hosts/alpha/reports",
        "api/v1/hosts/alpha/rollback",
        "api/v1/pins/p",
    ];
    let big = vec![b'x'; 3 << 20];
    let big_file = f._s.path("big.json");
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

/// The push API's body for `claim` (JSON) and the NAR bytes that follow it.
fn framed(claim: &serde_json::Value, nar: &[u8]) -> Vec<u8> {
    let claim = serde_json::to_vec(claim).unwrap();
    let mut body = (claim.len() as u32).to_be_bytes().to_vec();
    body.extend_from_slice(&claim);
    body.extend_from_slice(nar);
    body
}

/// Every object under `dir` (recursively), as paths relative to it.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            found.extend(
                files_under(&entry.path()).into_iter().map(|f| format!("{}/{f}", entry.file_name().to_string_lossy())),
            );
        } else {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found
}

/// A push whose claim lies about its NAR, or is malformed in a field berth can check up
/// front, is refused with 400 naming the field, and nothing of it is kept: malformed claims
/// before a byte of the NAR is read (the NAR here is not even zstd), lies once the NAR has
/// been hashed, before it is committed.
#[test]
fn push_api_refusals_keep_nothing() {
    let f = fixture(&[]);
    let mut nar = Vec::new();
    write_zero_nar(&mut nar, 4096);
    let zst = zstd::encode_all(&nar[..], 3).unwrap();
    let honest = serde_json::json!({
        "path": "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-claimed",
        "narHash": format!("sha256:{}", nixbase32(&Sha256::digest(&nar))),
        "narSize": nar.len(),
        "references": [],
    });
    let with = |key: &str, value: serde_json::Value| {
        let mut claim = honest.clone();
        claim[key] = value;
        claim
    };
    let garbage = b"this is not a zstd stream".to_vec();
    let cases = [
        ("narHash", with("narHash", format!("sha256:{}", nixbase32(&[1; 32])).into()), zst.clone()),
        ("narSize", with("narSize", (nar.len() + 8).into()), zst.clone()),
        ("ca", with("ca", "bogus".into()), garbage.clone()),
        ("signatures", with("signatures", serde_json::json!(["bogus"])), garbage.clone()),
        ("narHash", with("narHash", "md5:0123456789abcdef0123456789abcdef".into()), garbage.clone()),
        ("deriver", with("deriver", "/tmp/evil.drv".into()), garbage.clone()),
    ];
    for (field, claim, body) in cases {
        let r = f.client.post(f.url("api/v1/paths")).bearer_auth(&f.push).body(framed(&claim, &body)).send().unwrap();
        let message = assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", &format!("{claim}"));
        assert!(
            message.to_lowercase().contains(&field.to_lowercase()),
            "{claim}: the refusal names {field}: {message}"
        );
        let mut kept = files_under(&f.server.data_dir.join("cache"));
        kept.sort();
        assert_eq!(kept, ["nix-cache-info"], "{claim}: nothing of a refused push is kept");
    }
    let r = f.client.post(f.url("api/v1/paths")).bearer_auth(&f.push).body(framed(&honest, &zst)).send().unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "the honest claim still goes in: {}", r.text().unwrap());
}

for_each_client!(nix_is_told_the_decoder_limit);

/// A user who raises Nix's xz level to 9 (a 64 MiB dictionary) is told, by Nix, which limit
/// the upload broke; the same path then uploads at Nix's default level.
fn nix_is_told_the_decoder_limit(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let file = s.path("random.bin");
    let mut random = vec![0u8; 2 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in random.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    std::fs::write(&file, random).unwrap();
    let path = stdout_of(s.nix("nix-store").arg("--add").arg(&file));
    let netrc = s.netrc(&server.token("push"));
    let copy = |query: &str| {
        let url = format!("{}?{query}", server.url);
        s.nix("nix").args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &url, &path]).output().unwrap()
    };
    let out = copy("compression=xz&compression-level=9");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "xz -9 needs a 64 MiB dictionary");
    assert!(stderr.contains("max_decoder_memory_mib") && stderr.contains("too_large"), "Nix shows why: {stderr}");
    let out = copy("compression=xz");
    assert!(out.status.success(), "xz at Nix's default level: {}", String::from_utf8_lossy(&out.stderr));
}
