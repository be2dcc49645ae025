//! berth's push API: refusals that keep nothing.

use super::*;

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
