//! Deep trees: what Nix accepts (a store path hundreds of directories deep) goes in by both
//! uploaders and comes back out; a NAR nested past berth's documented bound
//! (`nixfmt::MAX_NAR_DEPTH`, 4,096 directories) is refused with a one-line 400, and nothing
//! of it is kept.

use super::*;

/// How deep the store path of the upload stories is: well past the 64 levels of the
/// `nix-archive` crate, which refused such paths although Nix has no such limit.
const DEEP: usize = 200;

/// The deepest nesting berth documents, and one past it.
const BOUND: usize = 4096;

/// How deep a path Nix 2.26's own HTTP uploader survives: past some 70 levels `nix copy
/// --to http://…` (and `file://`) dies of a stack overflow in Nix itself, before berth sees
/// a byte. Still past the 64 levels berth refused.
const DEEP_FOR_NIX_2_26_UPLOADER: usize = 70;

/// Builds a store path whose deepest file sits inside `levels` nested directories, with an
/// executable and a symlink at the bottom too; `salt` makes it unique to the test.
fn build_deep(s: &Scratch, salt: &str, levels: usize) -> String {
    let expr = format!(
        r#"derivation {{ name = "berth-deep"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin"; salt = "{salt}"; args = [ "-c" ''
    d=$out; i=1
    while [ $i -lt {levels} ]; do d=$d/d; i=$((i+1)); done
    mkdir -p $d
    echo deep > $d/file
    printf '#!/bin/sh\necho hi\n' > $d/run; chmod +x $d/run
    ln -s file $d/link
  '' ]; }}"#
    );
    let file = s.path(&format!("deep-{salt}.nix"));
    std::fs::write(&file, expr).unwrap();
    stdout_of(s.nix("nix-build").arg("--no-out-link").arg(&file))
}

for_each_client!(a_deep_store_path_uploads_and_substitutes);

/// A store path 200 directories deep (Nix builds, dumps and registers it without complaint)
/// is uploaded by `nix copy --to` and by `berth push`, and both are substituted back into a
/// fresh store with the NAR hash they were built with. (Nix 2.26 uploads a shallower one:
/// see [`DEEP_FOR_NIX_2_26_UPLOADER`]; it substitutes the 200-level one.)
fn a_deep_store_path_uploads_and_substitutes(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let copy_levels = if client == NixClient::Current { DEEP_FOR_NIX_2_26_UPLOADER } else { DEEP };
    let (by_copy, by_push) = (build_deep(&s, "nix-copy", copy_levels), build_deep(&s, "berth-push", DEEP));
    let netrc = s.netrc(&server.token("push"));
    let mut copy = s.nix("nix");
    let out = copy.args(["copy", "--option", "netrc-file"]).arg(&netrc).args(["--to", &server.url, &by_copy]).output();
    let out = out.unwrap();
    assert!(out.status.success(), "nix copy --to of a deep path: {}", String::from_utf8_lossy(&out.stderr));
    let out = s.berth_push(&server.url, &server.token("push"), &[&by_push]).output().unwrap();
    assert!(out.status.success(), "berth push of a deep path: {}", String::from_utf8_lossy(&out.stderr));
    for (path, store) in [(&by_copy, "from-copy"), (&by_push, "from-push")] {
        let (out, store) = s.substitute(&server.url, path, &server.public_key, store);
        assert!(out.status.success(), "substituting {path}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(s.nar_hash(path, Some(&store)), s.nar_hash(path, None), "{path}");
    }
}

/// Writes one NAR string token (length, bytes, zero padding).
fn token(w: &mut Vec<u8>, s: &[u8]) {
    w.extend_from_slice(&(s.len() as u64).to_le_bytes());
    w.extend_from_slice(s);
    w.extend_from_slice(&[0; 8][..(8 - s.len() % 8) % 8]);
}

/// A NAR of `levels` directories inside one another (the root counts), the innermost
/// holding one small file: the file sits inside `levels` directories.
fn nested_nar(levels: usize) -> Vec<u8> {
    let mut nar = Vec::new();
    token(&mut nar, b"nix-archive-1");
    for level in 0..levels {
        if level > 0 {
            for t in ["entry", "(", "name", "d", "node"] {
                token(&mut nar, t.as_bytes());
            }
        }
        for t in ["(", "type", "directory"] {
            token(&mut nar, t.as_bytes());
        }
    }
    for t in ["entry", "(", "name", "file", "node", "(", "type", "regular", "contents", "deep", ")", ")"] {
        token(&mut nar, t.as_bytes());
    }
    for level in 0..levels {
        token(&mut nar, b")");
        if level + 1 < levels {
            token(&mut nar, b")");
        }
    }
    nar
}

/// A NAR as deep as the bound is stored; one level deeper, and a 10,000-level bomb, are
/// refused with 400 and a one-line reason naming the bound, by `PUT /nar/` and by the push
/// API alike, the server stays up, and nothing of them is kept.
#[test]
fn a_nar_nested_past_the_bound_is_refused_and_nothing_kept() {
    let f = fixture(&[]);
    let at_bound = nested_nar(BOUND);
    let r = f.client.put(f.url(&format!("nar/{}", nar_file_name(&at_bound, "")))).bearer_auth(&f.push);
    let r = r.body(at_bound.clone()).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{BOUND} levels are within the bound: {}", r.text().unwrap());
    let kept_before = std::fs::read_dir(f.server.data_dir.join("cache/nar")).unwrap().count();

    for levels in [BOUND + 1, 10_000] {
        let nar = nested_nar(levels);
        let r = f.client.put(f.url(&format!("nar/{}", nar_file_name(&nar, "")))).bearer_auth(&f.push).body(nar.clone());
        let message = assert_json_refusal(r.send().unwrap(), StatusCode::BAD_REQUEST, "bad_request", "PUT /nar/");
        assert!(message.contains("4096"), "{levels} levels: the refusal names the bound: {message}");

        let claim = serde_json::json!({
            "path": "/nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-deep",
            "narHash": format!("sha256:{}", nixbase32(&Sha256::digest(&nar))),
            "narSize": nar.len(),
            "references": [],
        });
        let claim = serde_json::to_vec(&claim).unwrap();
        let mut body = (claim.len() as u32).to_be_bytes().to_vec();
        body.extend_from_slice(&claim);
        body.extend_from_slice(&zstd::encode_all(&nar[..], 3).unwrap());
        let r = f.client.post(f.url("api/v1/paths")).bearer_auth(&f.push).body(body).send().unwrap();
        let message = assert_json_refusal(r, StatusCode::BAD_REQUEST, "bad_request", "POST /api/v1/paths");
        assert!(message.contains("4096"), "{levels} levels: the refusal names the bound: {message}");
    }
    let kept = std::fs::read_dir(f.server.data_dir.join("cache/nar")).unwrap().count();
    assert_eq!(kept, kept_before, "nothing of a refused NAR is kept");
    let tmp: Vec<_> = std::fs::read_dir(f.server.data_dir.join("cache/tmp"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "nothing is left in staging: {tmp:?}");
    let r = f.client.get(f.url("nix-cache-info")).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the server is still up");
    let peak = f.server.peak_rss_kib();
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB is over the {RSS_BOUND_KIB} KiB bound");
}
