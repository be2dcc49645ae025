//! NARs that break the grammar and narinfos that lie, sent as `nix copy` would send them
//! (`PUT /nar/…`, `PUT /<hash>.narinfo`) and through the push API: each is a 4xx with a
//! one-line JSON reason, nothing of it becomes visible (no narinfo served, no NAR, no staging
//! object left), and the server's peak RSS stays under the bound.

use super::*;

/// A NAR token: length, bytes, padding to 8.
fn token(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(&[0; 8][..(8 - s.len() % 8) % 8]);
}

fn tokens(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        token(&mut out, p);
    }
    out
}

/// A directory NAR with entries `(name, node tokens)`, in the order given.
fn directory(entries: &[(&[u8], Vec<&[u8]>)]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
    for (name, node) in entries {
        parts.extend([&b"entry"[..], b"(", b"name", name, b"node", b"("]);
        parts.extend(node.iter().copied());
        parts.extend([&b")"[..], b")"]);
    }
    parts.push(b")");
    tokens(&parts)
}

fn file(contents: &'static [u8]) -> Vec<&'static [u8]> {
    vec![b"type", b"regular", b"contents", contents]
}

/// Hostile NARs, each with what it tries.
fn hostile_nars() -> Vec<(&'static str, Vec<u8>)> {
    let good_file = tokens(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents", b"hello", b")"]);
    let mut huge = tokens(&[b"nix-archive-1", b"(", b"type", b"regular", b"contents"]);
    huge.extend_from_slice(&(1u64 << 63).to_le_bytes());
    huge.extend_from_slice(b"only a few bytes");
    let mut garbage = good_file.clone();
    garbage.extend_from_slice(b"trailing garbage");
    let mut long_name = tokens(&[b"nix-archive-1", b"(", b"type", b"directory", b"entry", b"(", b"name"]);
    long_name.extend_from_slice(&(1u64 << 40).to_le_bytes());
    vec![
        ("traversal entry ..", directory(&[(b"..", file(b"x"))])),
        ("entry .", directory(&[(b".", file(b"x"))])),
        ("entry with a slash", directory(&[(b"a/b", file(b"x"))])),
        ("entry with NUL", directory(&[(b"a\0b", file(b"x"))])),
        ("empty entry name", directory(&[(b"", file(b"x"))])),
        ("duplicate entries", directory(&[(b"a", file(b"x")), (b"a", file(b"y"))])),
        ("unsorted entries", directory(&[(b"b", file(b"x")), (b"a", file(b"y"))])),
        ("a declared size of 2^63", huge),
        ("a name declared 1 TiB long", long_name),
        ("truncated", good_file[..good_file.len() - 12].to_vec()),
        ("trailing garbage", garbage),
        ("not a NAR", b"GIF89a not an archive at all".to_vec()),
        ("unknown node type", tokens(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"])),
        ("empty", Vec::new()),
    ]
}

/// Nothing of a refused upload is visible: no NAR, no staging object, no narinfo.
#[track_caller]
fn nothing_kept(f: &Fixture, what: &str) {
    let cache = f.server.data_dir.join("cache");
    let nars = std::fs::read_dir(cache.join("nar")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(nars, 0, "{what}: a NAR was kept");
    let staged = std::fs::read_dir(cache.join("tmp")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(staged, 0, "{what}: staging holds something");
    let narinfos = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "narinfo"))
        .count();
    assert_eq!(narinfos, 0, "{what}: a narinfo was written");
}

/// Each hostile NAR, uploaded under its own (correct) file name as `nix copy` would and as
/// the push API's body, is refused with 400 and leaves nothing.
#[test]
fn hostile_nars_are_refused_and_leave_nothing() {
    let f = fixture(&[]);
    for (what, nar) in hostile_nars() {
        let name = nar_file_name(&nar, "");
        let r = f.client.put(f.url(&format!("nar/{name}"))).bearer_auth(&f.push).body(nar.clone()).send().unwrap();
        assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", what);
        let claim = serde_json::json!({
            "path": "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hostile",
            "narHash": format!("sha256:{}", nixbase32(&Sha256::digest(&nar))),
            "narSize": nar.len(),
        });
        let claim = serde_json::to_vec(&claim).unwrap();
        let mut body = (claim.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&claim);
        body.extend_from_slice(&zstd::encode_all(&nar[..], 3).unwrap());
        let r = f.client.post(f.url("api/v1/paths")).bearer_auth(&f.push).body(body).send().unwrap();
        assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", &format!("push: {what}"));
        nothing_kept(&f, what);
    }
    assert!(f.server.peak_rss_kib() < RSS_BOUND_KIB, "peak RSS {} KiB", f.server.peak_rss_kib());
}

/// A narinfo for a NAR that was really uploaded, lying in each field in turn (or carrying a
/// megabyte line, or bytes that are not UTF-8), is refused with 400 and never served.
#[test]
fn narinfos_that_lie_in_any_field_are_never_published() {
    let f = fixture(&[]);
    let (name, nar) = upload_plain_nar(&f, 1000);
    let hash = "0c6kzph7l0dcbqmjknjmggwd3ggi7mrl";
    let honest = format!(
        "StorePath: /nix/store/{hash}-lies\nURL: nar/{name}\nCompression: none\nFileHash: sha256:{h}\nFileSize: {n}\nNarHash: sha256:{h}\nNarSize: {n}\nReferences: \n",
        h = nixbase32(&Sha256::digest(&nar)),
        n = nar.len()
    );
    let other = nixbase32(&[7; 32]);
    let lies: Vec<(&str, Vec<u8>)> = vec![
        (
            "NarHash",
            honest
                .replace(
                    &format!("NarHash: sha256:{}", nixbase32(&Sha256::digest(&nar))),
                    &format!("NarHash: sha256:{other}"),
                )
                .into_bytes(),
        ),
        ("NarSize", honest.replace(&format!("NarSize: {}", nar.len()), "NarSize: 999").into_bytes()),
        (
            "FileHash",
            honest
                .replace(
                    &format!("FileHash: sha256:{}", nixbase32(&Sha256::digest(&nar))),
                    &format!("FileHash: sha256:{other}"),
                )
                .into_bytes(),
        ),
        ("FileSize", honest.replace(&format!("FileSize: {}", nar.len()), "FileSize: 1").into_bytes()),
        ("URL outside the cache", honest.replace("URL: nar/", "URL: ../../etc/").into_bytes()),
        ("URL of a NAR never uploaded", honest.replace(&name, &format!("{other}.nar")).into_bytes()),
        ("Compression", honest.replace("Compression: none", "Compression: xz").into_bytes()),
        (
            "a reference to an absent path",
            honest.replace("References: ", "References: 1c6kzph7l0dcbqmjknjmggwd3ggi7mrl-absent").into_bytes(),
        ),
        ("a traversal reference", honest.replace("References: ", "References: ../../etc/passwd").into_bytes()),
        ("StorePath outside the store", honest.replace(&format!("/nix/store/{hash}-lies"), "/etc/passwd").into_bytes()),
        ("a bad Deriver", format!("{honest}Deriver: ../evil.drv\n").into_bytes()),
        ("a malformed Sig", format!("{honest}Sig: no-colon-here\n").into_bytes()),
        (
            "md5 NarHash",
            honest
                .replace(
                    &format!("NarHash: sha256:{}", nixbase32(&Sha256::digest(&nar))),
                    "NarHash: md5:0123456789abcdef0123456789abcdef",
                )
                .into_bytes(),
        ),
        ("a 1 MB line", format!("{honest}Provenance: {}\n", "x".repeat(1 << 20)).into_bytes()),
        ("not UTF-8", [honest.as_bytes(), b"Extra: \xff\xfe\n"].concat()),
        (
            "no NarHash",
            honest
                .lines()
                .filter(|l| !l.starts_with("NarHash"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    for (what, text) in lies {
        let r = f.client.put(f.url(&format!("{hash}.narinfo"))).bearer_auth(&f.push).body(text).send().unwrap();
        let status = r.status();
        assert!(status.is_client_error(), "{what}: {status}");
        assert_json_refusal(r, status, if status == 413 { "too_large" } else { "bad_request" }, what);
        let served = f.client.get(f.url(&format!("{hash}.narinfo"))).send().unwrap().status();
        assert_eq!(served, StatusCode::NOT_FOUND, "{what}: never served");
    }
    // The honest one publishes: the refusals were for the lies.
    let r = f.client.put(f.url(&format!("{hash}.narinfo"))).bearer_auth(&f.push).body(honest).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().unwrap());
    assert!(f.server.peak_rss_kib() < RSS_BOUND_KIB);
}
