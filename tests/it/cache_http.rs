//! The binary-cache protocol as clients see it: status codes, headers, ranges, and the
//! refusals that keep the cache consistent (corrupt NARs, lying narinfos, missing NARs or
//! references). Talks to the real binary over HTTP.

use std::process::Command;

use berth::nixfmt::{nixbase32, sha256_nix_string};
use reqwest::{blocking::Client, StatusCode};
use sha2::{Digest, Sha256};

use crate::harness::*;

struct Fixture {
    s: Scratch,
    server: Server,
    push: String,
    client: Client,
}

fn fixture(args: &[&str]) -> Fixture {
    let s = Scratch::new();
    let server = Server::start(&s.path("data"), args);
    let push = server.token("push");
    Fixture { s, server, push, client: http() }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.server.url)
    }

    fn put(&self, path: &str, body: Vec<u8>) -> (StatusCode, String) {
        let r = self.client.put(self.url(path)).bearer_auth(&self.push).body(body).send().unwrap();
        (r.status(), r.text().unwrap())
    }

    /// A single-file store path with no references, and its NAR.
    fn simple_path(&self, salt: &str) -> (String, Vec<u8>) {
        let file = self.s.path(salt);
        std::fs::write(&file, format!("content {salt}\n")).unwrap();
        let path = stdout_of(self.s.nix("nix-store").arg("--add").arg(&file));
        let nar = run_ok(Command::new("nix-store").args(["--dump", &path])).stdout;
        (path, nar)
    }
}

fn narinfo(path: &str, nar_file: &str, nar: &[u8], references: &str) -> String {
    let hash: [u8; 32] = Sha256::digest(nar).into();
    format!(
        "StorePath: {path}\nURL: nar/{nar_file}\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: {references}\n",
        sha256_nix_string(&hash),
        nar.len()
    )
}

fn nar_name(nar: &[u8]) -> String {
    format!("{}.nar", nixbase32(&Sha256::digest(nar)))
}

fn hash_of(path: &str) -> &str {
    &path["/nix/store/".len()..][..32]
}

#[test]
fn cache_info_and_lookups() {
    let f = fixture(&[]);
    let info = f.client.get(f.url("nix-cache-info")).send().unwrap();
    // Sized responses say their size: the request metrics' body wrapper keeps Content-Length
    // (without it every answer went chunked, and a proxy that reads by length hung).
    assert_eq!(info.headers()["content-length"], "51", "{:?}", info.headers());
    let info = info.text().unwrap();
    assert_eq!(info, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n");
    let on_disk = std::fs::read_to_string(f.server.data_dir.join("cache/nix-cache-info")).unwrap();
    assert_eq!(on_disk, info, "the storage directory is itself a binary cache");

    let miss = f.client.get(f.url("0c6kzph7l0dcbqmjknjmggwd3ggi7mrl.narinfo")).send().unwrap();
    assert_eq!(miss.status(), StatusCode::NOT_FOUND);
    assert!(miss.headers().contains_key("x-request-id"));
    let head = f.client.head(f.url("0c6kzph7l0dcbqmjknjmggwd3ggi7mrl.narinfo")).send().unwrap();
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    for bad in
        ["short.narinfo", "0c6kzph7l0dcbqmjknjmggwd3ggi7mre.narinfo", "nar/..%2f..%2fetc%2fpasswd", "nar/x.nar.gz"]
    {
        let r = f.client.get(f.url(bad)).send().unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert!(r.text().unwrap().contains("\"message\""), "{bad}: a one-line reason");
    }
    let r = f.client.get(f.url("nar/0000000000000000000000000000000000000000000000000000.nar.xz")).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a missing NAR is 404, never 5xx");
    assert_eq!(f.client.get(f.url("healthz")).send().unwrap().status(), StatusCode::OK);
}

#[test]
fn nars_serve_with_ranges_and_immutable_caching() {
    let f = fixture(&[]);
    let (path, nar) = f.simple_path("ranges");
    let name = nar_name(&nar);
    assert_eq!(f.put(&format!("nar/{name}"), nar.clone()).0, StatusCode::OK);
    let (status, body) = f.put(&format!("{}.narinfo", hash_of(&path)), narinfo(&path, &name, &nar, "").into_bytes());
    assert_eq!(status, StatusCode::OK, "{body}");

    let full = f.client.get(f.url(&format!("nar/{name}"))).send().unwrap();
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert!(full.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    assert_eq!(full.bytes().unwrap(), nar);
    let part = f.client.get(f.url(&format!("nar/{name}"))).header("range", "bytes=8-15").send().unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.headers()["content-range"], format!("bytes 8-15/{}", nar.len()));
    assert_eq!(part.bytes().unwrap(), nar[8..16]);
    let tail = f.client.get(f.url(&format!("nar/{name}"))).header("range", "bytes=-4").send().unwrap();
    assert_eq!(tail.bytes().unwrap(), nar[nar.len() - 4..]);
    let beyond =
        f.client.get(f.url(&format!("nar/{name}"))).header("range", format!("bytes={}-", nar.len())).send().unwrap();
    assert_eq!(beyond.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let head = f.client.head(f.url(&format!("nar/{name}"))).send().unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], nar.len().to_string());

    let text = f.client.get(f.url(&format!("{}.narinfo", hash_of(&path)))).send().unwrap();
    assert_eq!(text.headers()["content-type"], "text/x-nix-narinfo");
    assert!(text.text().unwrap().contains("Sig: "));
    let metrics = f.client.get(f.url("metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("berth_narinfo_hits_total 1"), "{metrics}");
}

#[test]
fn corrupt_or_truncated_nars_are_refused_and_leave_nothing() {
    let f = fixture(&[]);
    let (path, nar) = f.simple_path("corrupt");
    let mut flipped = nar.clone();
    flipped[20] ^= 0x55;
    let cut = nar[..nar.len() - 16].to_vec();
    for bad in [flipped, cut] {
        let (status, body) = f.put(&format!("nar/{}", nar_name(&bad)), bad);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("not a valid NAR"), "{body}");
    }
    // A NAR uploaded under a name that is not its hash is refused as well.
    let (status, _) = f.put("nar/0000000000000000000000000000000000000000000000000000.nar", nar.clone());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(std::fs::read_dir(f.server.data_dir.join("cache/nar")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(f.server.data_dir.join("cache/tmp")).unwrap().count(), 0);
    let (status, body) =
        f.put(&format!("{}.narinfo", hash_of(&path)), narinfo(&path, &nar_name(&nar), &nar, "").into_bytes());
    assert_eq!(status, StatusCode::BAD_REQUEST, "a narinfo whose NAR never arrived: {body}");
    assert!(body.contains("has not been uploaded"), "{body}");
}

#[test]
fn a_narinfo_that_lies_about_its_nar_is_never_published() {
    let f = fixture(&[]);
    let (path, nar) = f.simple_path("lies");
    let (other_path, other_nar) = f.simple_path("lies-other");
    let name = nar_name(&nar);
    assert_eq!(f.put(&format!("nar/{name}"), nar.clone()).0, StatusCode::OK);
    // Claims the NarHash of another NAR while pointing at this one.
    let lie = narinfo(&path, &name, &other_nar, "");
    let (status, body) = f.put(&format!("{}.narinfo", hash_of(&path)), lie.into_bytes());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("mismatch"), "{body}");
    // References a path the cache does not have.
    let dangling = narinfo(&path, &name, &nar, &other_path["/nix/store/".len()..]);
    let (status, body) = f.put(&format!("{}.narinfo", hash_of(&path)), dangling.into_bytes());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("references not in the cache"), "{body}");
    // Uploaded under another path's name.
    let (status, _) = f.put(&format!("{}.narinfo", hash_of(&other_path)), narinfo(&path, &name, &nar, "").into_bytes());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let r = f.client.get(f.url(&format!("{}.narinfo", hash_of(&path)))).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!f.server.data_dir.join(format!("cache/{}.narinfo", hash_of(&path))).exists());
}

#[test]
fn a_private_cache_needs_a_read_token() {
    let s = Scratch::new();
    let config = s.path("berth.toml");
    std::fs::write(&config, "[cache]\nrequire_read_token = true\n").unwrap();
    let server = Server::start(&s.path("data"), &["--config", config.to_str().unwrap()]);
    let client = http();
    let url = format!("{}/nix-cache-info", server.url);
    let anonymous = client.get(&url).send().unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    assert_eq!(client.get(&url).bearer_auth("berth_wrong").send().unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(client.get(&url).bearer_auth(server.token("read")).send().unwrap().status(), StatusCode::OK);
    assert_eq!(
        client.get(&url).basic_auth("nix", Some(server.token("host:web-1"))).send().unwrap().status(),
        StatusCode::OK
    );
    let ci = server.token("ci");
    assert_eq!(client.get(&url).bearer_auth(&ci).send().unwrap().status(), StatusCode::FORBIDDEN);
    let missing = format!("{}/api/v1/paths/missing", server.url);
    let r = client.post(&missing).bearer_auth(&ci).json(&serde_json::json!({"paths": []})).send().unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a ci token cannot push");
}

/// Nix sends `Expect: 100-continue` with every PUT; berth must answer it before the body
/// arrives, or each upload stalls for a second. (A functional check: the interim response
/// comes at all, while the client is still holding the body back.)
#[test]
fn expect_100_continue_is_answered_before_the_body() {
    use std::io::{Read, Write};
    let f = fixture(&[]);
    let (_, nar) = f.simple_path("expect");
    let address = f.server.url.trim_start_matches("http://");
    let mut tcp = std::net::TcpStream::connect(address).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let head = format!(
        "PUT /nar/{} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        nar_name(&nar),
        f.push,
        nar.len()
    );
    tcp.write_all(head.as_bytes()).unwrap();
    let mut interim = [0u8; 25];
    tcp.read_exact(&mut interim).unwrap();
    assert!(
        String::from_utf8_lossy(&interim).starts_with("HTTP/1.1 100 Continue"),
        "{:?}",
        String::from_utf8_lossy(&interim)
    );
    tcp.write_all(&nar).unwrap();
    let mut rest = [0u8; 15];
    tcp.read_exact(&mut rest).unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("200 OK"), "{:?}", String::from_utf8_lossy(&rest));
}

/// A static file server (Python's `http.server`) standing in for a CDN in front of the
/// cache directory; killed on drop.
struct StaticServer(std::process::Child);

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn nar_downloads_redirect_to_a_cdn_base_url_and_nix_follows() {
    require("python3");
    let s = Scratch::new();
    let data = s.path("data");
    std::fs::create_dir_all(data.join("cache")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _cdn = StaticServer(
        Command::new("python3")
            .args(["-m", "http.server", &port.to_string(), "--bind", "127.0.0.1", "--directory"])
            .arg(data.join("cache"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let cdn = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let config = s.path("berth.toml");
    std::fs::write(&config, format!("[cache]\nnar_redirect = \"{cdn}/\"\n")).unwrap();
    let server = Server::start(&data, &["--config", config.to_str().unwrap()]);
    let top = s.build_closure("cdn");
    run_ok(
        Command::new(berth_bin())
            .args(["push", "--server", &server.url, &top])
            .env("BERTH_TOKEN", server.token("push")),
    );

    let narinfo = http().get(format!("{}/{}.narinfo", server.url, hash_of(&top))).send().unwrap().text().unwrap();
    let nar_url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().to_owned();
    let no_follow = Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_follow.get(format!("{}/{nar_url}", server.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(r.headers()["location"], format!("{cdn}/{nar_url}"));
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    // Nix follows the redirects to the static server and gets every path of the closure.
    let (out, store) = s.substitute(&server.url, &top, &server.public_key, "via-cdn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(s.nar_hash(&top, Some(&store)), s.nar_hash(&top, None));
    let redirects = http().get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    assert!(!redirects.contains("berth_nar_redirects_total 0\n"), "counted: {redirects}");
}

/// `berth_db_queries_total` from `/metrics`.
fn db_queries(f: &Fixture) -> u64 {
    let metrics = f.client.get(f.url("metrics")).send().unwrap().text().unwrap();
    let line = metrics.lines().find(|l| l.starts_with("berth_db_queries_total ")).expect("the query counter");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn narinfo_misses_never_reach_the_database() {
    let f = fixture(&[]);
    let (path, nar) = f.simple_path("misses");
    let miss = |hash: &str| f.client.get(f.url(&format!("{hash}.narinfo"))).send().unwrap().status();
    let before = db_queries(&f);
    let hashes: Vec<String> =
        (0..200).map(|i| nixbase32(&Sha256::digest(format!("miss {i}")))[..32].to_owned()).collect();
    for hash in &hashes {
        assert_eq!(miss(hash), StatusCode::NOT_FOUND);
    }
    assert_eq!(miss(hash_of(&path)), StatusCode::NOT_FOUND, "not published yet");
    assert_eq!(db_queries(&f) - before, 0, "201 misses, answered without the database");

    // Published after start-up: found at once, and then so is its listing's owner.
    let name = nar_name(&nar);
    assert_eq!(f.put(&format!("nar/{name}"), nar.clone()).0, StatusCode::OK);
    let (status, body) = f.put(&format!("{}.narinfo", hash_of(&path)), narinfo(&path, &name, &nar, "").into_bytes());
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(miss(hash_of(&path)), StatusCode::OK);
}
