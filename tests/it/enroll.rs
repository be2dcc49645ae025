//! Enrollment end to end: `berth hosts add` on the admin's side, `berth agent enroll` on a
//! fake host (a real SSH host key from `ssh-keygen`), the real agent long-polling with the
//! token it got and switching to its generation; the code refused when replayed, for
//! another host or by garbage; `berth hosts keys --format age` as a real `age` recipient;
//! `berth hosts remove` and the token refused.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command};

use serde_json::{json, Value};

use crate::{agent::*, builds::*, fleet::*, harness::*};

/// `berth hosts …` as the admin.
fn hosts(b: &BuildHost, args: &[&str]) -> Command {
    let mut cmd = b.s.berth();
    cmd.arg("hosts").args(args).args(["--server", &b.server.url]).env("BERTH_TOKEN", &b.admin);
    cmd
}

/// A real ed25519 SSH host key pair in `dir`: (private key file, public key line).
fn ssh_host_key(dir: &Path) -> (std::path::PathBuf, String) {
    require("ssh-keygen");
    let private = dir.join("ssh_host_ed25519_key");
    run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "root@alpha", "-f"]).arg(&private));
    let public = std::fs::read_to_string(private.with_extension("pub")).unwrap();
    (private, public)
}

fn enroll(b: &BuildHost, host: &Host, code_file: &Path, extra: &[&str]) -> std::process::Output {
    b.s.berth()
        .args(["agent", "enroll", "--server", &b.server.url, "--code-file"])
        .arg(code_file)
        .arg("--state-dir")
        .arg(host.root.join("state"))
        .arg("--ssh-host-key")
        .arg(host.root.join("ssh_host_ed25519_key.pub"))
        .args(extra)
        .output()
        .unwrap()
}

fn code_of(added: &str) -> String {
    added.lines().find(|l| l.starts_with("berth_enroll_")).unwrap_or_else(|| panic!("no code in {added}")).to_owned()
}

fn post_enroll(b: &BuildHost, body: Value) -> (u16, Value) {
    let response = http().post(b.api("enroll")).json(&body).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

#[test]
fn a_host_enrolls_with_a_one_time_code_gets_its_generation_and_is_removed() {
    let b = build_host_with(NixClient::Debian, &["alpha", "beta"], "");
    let mut host = Host::new(&b, "alpha", "");
    let (private_key, public_key) = ssh_host_key(&host.root);
    let recorded = public_key.trim().trim_end_matches(" root@alpha");

    let added = stdout_of(&mut hosts(&b, &["add", "alpha", "--tags", "web,eu", "--expires", "30m"]));
    assert!(added.contains("enrollmentCodeFile") && added.contains(&deploy_public_key(&b)), "{added}");
    let code = code_of(&added);
    let code_file = host.root.join("enroll-code");
    std::fs::write(&code_file, format!("{code}\n")).unwrap();

    // Hostile first: garbage key material, a code for another host, a mangled code.
    let (status, body) =
        post_enroll(&b, json!({"code": code, "ssh_host_key": format!("{recorded}\nssh-ed25519 AAAA evil")}));
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (status, body) = post_enroll(&b, json!({"host": "beta", "code": code, "ssh_host_key": recorded}));
    assert_eq!(status, 401, "a code enrolls only its own host: {body}");
    let (status, _) = post_enroll(&b, json!({"code": format!("{code}x"), "ssh_host_key": recorded}));
    assert_eq!(status, 401);
    let (status, body) = post_enroll(&b, json!({"code": code, "ssh_host_key": "A".repeat(5000)}));
    assert_eq!((status, body["code"].as_str()), (413, Some("too_large")), "{body}");

    let out = enroll(&b, &host, &code_file, &["--host", "alpha"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token_file = host.root.join("state/token");
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_owned();

    // Replayed: refused with 410 and the reason, by the CLI and the API alike.
    let again = enroll(&b, &host, &code_file, &["--force"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && stderr.contains("410") && stderr.contains("already used"), "{stderr}");
    let (status, body) = post_enroll(&b, json!({"code": code, "ssh_host_key": recorded}));
    assert_eq!((status, body["code"].as_str()), (410, Some("gone")), "{body}");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap().trim(), token, "a refused enroll keeps the token");

    // The agent long-polls with the token it enrolled with and switches to generation 1.
    host.token_file = token_file.clone();
    let agent = host.spawn(&b, &b.server.url);
    assert!(b.submit_wait(&b.fleet.commit("main", "deploy", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    assert_eq!(host.profile().as_deref(), Some(toplevel(&b, "alpha", 1).as_str()));
    drop(agent);

    // Its key, as an age recipient that really encrypts to the host.
    let age_lines = stdout_of(&mut hosts(&b, &["keys", "--format", "age"]));
    assert_eq!(age_lines.trim_end(), format!("{recorded} alpha"));
    encrypt_to_the_recorded_key(&b, &host.root, &age_lines, &private_key);
    agenix_check_flags_a_missing_key(&b, &host.root, recorded);

    let manifest = |token: &str| {
        http().get(b.api("hosts/alpha/manifest?timeout=0")).bearer_auth(token).send().unwrap().status().as_u16()
    };
    assert_eq!(manifest(&token), 200);
    let removed = stdout_of(&mut hosts(&b, &["remove", "alpha"]));
    assert!(removed.contains("1 token(s) revoked") && removed.contains("history kept"), "{removed}");
    assert_eq!(manifest(&token), 401, "a removed host's token is refused");
    assert_eq!(b.generations("alpha").len(), 1, "history stays for audit");
    assert_eq!(stdout_of(&mut hosts(&b, &["keys", "--format", "json"])).trim(), "[]");
}

/// `age -R` with the recorded line, decrypted with the host's private SSH key.
fn encrypt_to_the_recorded_key(b: &BuildHost, dir: &Path, recipients: &str, private_key: &Path) {
    require("age");
    let recipients_file = dir.join("recipients.txt");
    std::fs::write(&recipients_file, recipients).unwrap();
    let (plain, sealed) = (dir.join("secret.txt"), dir.join("secret.age"));
    std::fs::write(&plain, "db password\n").unwrap();
    run_ok(Command::new("age").arg("-R").arg(&recipients_file).arg("-o").arg(&sealed).arg(&plain));
    let opened = stdout_of(Command::new("age").arg("-d").arg("-i").arg(private_key).arg(&sealed));
    assert_eq!(opened, "db password", "{}", b.server.url);
}

#[test]
fn an_expired_code_is_refused_and_the_code_stays_out_of_argv() {
    let b = build_host(&["alpha"], "");
    let host = Host::new(&b, "alpha", "");
    let (_, public_key) = ssh_host_key(&host.root);
    // The shortest expiry is a minute; an expired code is made by the database test. Here:
    // a new code supersedes the old one, which is then unknown.
    let first = code_of(&stdout_of(&mut hosts(&b, &["add", "alpha"])));
    let second = code_of(&stdout_of(&mut hosts(&b, &["add", "alpha"])));
    let (status, body) = post_enroll(&b, json!({"code": first, "ssh_host_key": public_key}));
    assert_eq!((status, body["message"].as_str()), (401, Some("unknown enrollment code")), "{body}");
    // BERTH_ENROLL_CODE: nothing secret in argv.
    let out =
        b.s.berth()
            .args(["agent", "enroll", "--server", &b.server.url, "--state-dir"])
            .arg(host.root.join("state"))
            .arg("--ssh-host-key")
            .arg(host.root.join("ssh_host_ed25519_key.pub"))
            .env("BERTH_ENROLL_CODE", &second)
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enrolled alpha"));
    // Already enrolled: the agent refuses to overwrite its token without --force. The code
    // is made on the server's data directory, as `berth token create` works.
    let third = host.root.join("third");
    let local = stdout_of(b.s.berth().args(["hosts", "add", "alpha", "--data-dir"]).arg(&b.server.data_dir));
    assert!(local.contains(&deploy_public_key(&b)), "{local}");
    std::fs::write(&third, code_of(&local)).unwrap();
    let out = enroll(&b, &host, &third, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("enrolled already"), "{out:?}");
    let first_token = std::fs::read_to_string(host.root.join("state/token")).unwrap();
    let out = enroll(&b, &host, &third, &["--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status = |token: &str| {
        let url = b.api("hosts/alpha/manifest?timeout=0");
        http().get(url).bearer_auth(token.trim()).send().unwrap().status().as_u16()
    };
    assert_eq!(status(&first_token), 401, "re-enrolling revokes the earlier token");
    assert_eq!(status(&std::fs::read_to_string(host.root.join("state/token")).unwrap()), 204);
    // A bad --expires and a bad name are refused by the CLI.
    assert!(!hosts(&b, &["add", "alpha", "--expires", "8d"]).output().unwrap().status.success());
    assert!(!hosts(&b, &["add", "a/b"]).output().unwrap().status.success());
}

/// The agenix check of docs/keys.md, run as documented: it flags `alpha` until its recorded
/// key is in `secrets.nix`.
fn agenix_check_flags_a_missing_key(b: &BuildHost, dir: &Path, recorded: &str) {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/keys.md")).unwrap();
    let after = &doc[doc.find("A check that each host's secrets").expect("the check is documented")..];
    let script = after.split("```sh\n").nth(1).unwrap().split("```").next().unwrap();
    let bin_dir = Path::new(berth_bin()).parent().unwrap();
    let check = |secrets: &str| {
        std::fs::write(dir.join("secrets.nix"), secrets).unwrap();
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
        stdout_of(
            Command::new("sh")
                .args(["-c", script])
                .current_dir(dir)
                .env("PATH", path)
                .env("BERTH_SERVER", &b.server.url)
                .env("BERTH_TOKEN", &b.admin),
        )
    };
    assert_eq!(check("{ }\n"), "secrets.nix does not list alpha's recorded key");
    let listed = format!("let alpha = \"{recorded}\"; in {{ \"db.age\".publicKeys = [ alpha ]; }}\n");
    assert_eq!(check(&listed), "");
}
