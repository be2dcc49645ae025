//! The command line: keys compatible with Nix both ways, configuration errors, tokens.

use std::process::Command;

use crate::harness::*;

fn berth() -> Command {
    Command::new(berth_bin())
}

/// Keys from `berth keygen` sign paths that `nix store verify` accepts; keys from
/// `nix-store --generate-binary-cache-key` serve as berth's signing key.
#[test]
fn keys_are_compatible_with_nix_both_ways() {
    let s = Scratch::new();
    let (sk, pk) = (s.path("berth.sec"), s.path("berth.pub"));
    let printed = stdout_of(
        berth()
            .args(["keygen", "--name", "test-cache-1", "--secret-key-file"])
            .arg(&sk)
            .arg("--public-key-file")
            .arg(&pk),
    );
    let public = std::fs::read_to_string(&pk).unwrap();
    assert_eq!(printed, public);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sk).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the secret key is private");

    // Nix signs with berth's key and verifies with berth's public key. (An input-addressed
    // path: content-addressed ones need no signature at all.)
    let path = s.build_closure("keygen");
    let store = s.path("store");
    run_ok(s.nix("nix").args(["copy", "--no-check-sigs", "--to"]).arg(&store).arg(&path));
    run_ok(s.nix("nix").args(["store", "sign", "--store"]).arg(&store).arg("--key-file").arg(&sk).arg(&path));
    run_ok(s.nix("nix").args(["store", "verify", "--store"]).arg(&store).args([
        "--trusted-public-keys",
        &public,
        &path,
    ]));
    let out = s
        .nix("nix")
        .args(["store", "verify", "--store"])
        .arg(&store)
        .args(["--trusted-public-keys", "x-1:pA18roE3vLB11kd1pWBsS6jNaTxNsLEYBa3vFd+7R84=", &path])
        .output()
        .unwrap();
    assert!(!out.status.success(), "another key must not verify");

    // berth serves with a key Nix generated, and publishes that public key.
    let (nsk, npk) = (s.path("nix.sec"), s.path("nix.pub"));
    run_ok(s.nix("nix-store").args(["--generate-binary-cache-key", "nix-made-1"]).arg(&nsk).arg(&npk));
    let server = Server::start(&s.path("data"), &["--signing-key-file", nsk.to_str().unwrap()]);
    assert_eq!(server.public_key, std::fs::read_to_string(&npk).unwrap().trim());
}

#[test]
fn check_config_names_the_problem() {
    let s = Scratch::new();
    let good = s.path("good.toml");
    std::fs::write(&good, "listen = \"127.0.0.1:9000\"\n[cache]\npriority = 10\n").unwrap();
    run_ok(berth().arg("check-config").arg(&good));
    for (text, expected) in [
        ("lisen = \"x\"\n", "unknown field `lisen`"),
        ("listen = \"not an address\"\n", "invalid `listen`"),
        ("[cache]\npriority = \"high\"\n", "invalid type"),
        ("storage = \"ftp://x\"\n", "invalid `storage`"),
    ] {
        let bad = s.path("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = berth().arg("check-config").arg(&bad).output().unwrap();
        assert!(!out.status.success(), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{text}: {err}");
    }
    let out = berth()
        .args(["serve", "--signing-key-file", "/nonexistent/key", "--data-dir"])
        .arg(s.path("d"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "an explicitly configured key that is missing fails start-up");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/key"));
}

#[test]
fn tokens_are_listed_revoked_and_never_stored_in_clear() {
    let s = Scratch::new();
    let data = s.path("data");
    let token = stdout_of(
        berth().args(["token", "create", "--scope", "push", "--description", "laptop", "--data-dir"]).arg(&data),
    );
    assert!(token.starts_with("berth_") && !token.contains(char::is_whitespace), "the token alone: {token:?}");
    let db = std::fs::read(data.join("berth.sqlite")).unwrap();
    assert!(!String::from_utf8_lossy(&db).contains(&token), "only the hash is stored");
    let list = stdout_of(berth().args(["token", "list", "--data-dir"]).arg(&data));
    assert!(list.contains("laptop") && list.contains("push") && !list.contains(&token), "{list}");
    let id = list.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_owned();

    let server = Server::start(&data, &[]);
    let missing = format!("{}/api/v1/paths/missing", server.url);
    let ask =
        || http().post(&missing).bearer_auth(&token).json(&serde_json::json!({"paths": []})).send().unwrap().status();
    assert_eq!(ask(), 200);
    run_ok(berth().args(["token", "revoke", &id, "--data-dir"]).arg(&data));
    assert_eq!(ask(), 401);
    let bad = berth().args(["token", "create", "--scope", "root", "--data-dir"]).arg(&data).output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown scope"));
}
