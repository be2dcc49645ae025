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

/// The `berth …` command lines in the fenced code blocks of README.md and docs/*.md.
fn documented_commands() -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path()).collect();
    docs.sort();
    files.extend(docs.into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")));
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut fenced = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                fenced = !fenced;
                continue;
            }
            let line = line.trim().trim_start_matches("$ ");
            let line = line.split("  #").next().unwrap().trim();
            // Synopses (`[--flag]`, `PATH…`) are forms, not commands; the lines below them are.
            if fenced && line.starts_with("berth ") && !line.contains('[') && !line.contains('…') {
                found.push((file.file_name().unwrap().to_string_lossy().into_owned(), line.to_owned()));
            }
        }
    }
    found
}

/// Splits a documented command line as a shell would (quotes; `$VARIABLES` become values),
/// up to its first redirection, pipe or `&`.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let (mut word, mut quote, mut started) = (String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => (quote, started) = (Some(c), true),
            (Some(q), c) if c == q => quote = None,
            (None, ' ') => {
                if started {
                    words.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (_, c) => (word, started) = (word + &c.to_string(), true),
        }
    }
    if started {
        words.push(word);
    }
    // The command ends where the shell's redirections, pipes and `&` begin.
    let end = words.iter().position(|w| ["&", "&&", "|", ";", "2>&1"].contains(&w.as_str()) || w.starts_with('>'));
    words.truncate(end.unwrap_or(words.len()));
    words
        .into_iter()
        .map(|w| if w.starts_with('$') { "0123456789abcdef0123456789abcdef01234567".to_owned() } else { w })
        .collect()
}

/// Every command line the docs show parses: run against a server that is not there, each
/// fails (if at all) for want of the server, never with clap's usage error (exit 2).
/// Long-running commands (`serve`, `agent`) are checked with `--help` appended after their
/// arguments, which clap answers only when everything before it parses.
#[test]
fn every_command_in_the_docs_parses() {
    // Lines that begin with "berth " but are output (`berth listening on …`) name no command.
    let help = stdout_of(Command::new(berth_bin()).arg("--help"));
    let subcommands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let commands: Vec<_> = documented_commands()
        .into_iter()
        .filter(|(_, line)| {
            let second = line.split_whitespace().nth(1).unwrap_or_default();
            second.starts_with('-') || subcommands.contains(&second)
        })
        .collect();
    assert!(commands.len() > 20, "found {} commands", commands.len());
    let dir = tempfile::tempdir().unwrap();
    for (file, line) in commands {
        let mut args = words(&line);
        args.remove(0);
        if matches!(args.first().map(String::as_str), Some("serve" | "agent")) {
            args.push("--help".into());
        }
        let out = Command::new("timeout")
            .arg("20")
            .arg(berth_bin())
            .args(&args)
            .current_dir(dir.path())
            .env("BERTH_SERVER", "http://127.0.0.1:9")
            .env("BERTH_TOKEN", "not-a-token")
            .env("HOME", dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() != Some(2) && !stderr.contains("Usage:"),
            "{file}: `{line}` does not parse:\n{stderr}"
        );
    }
}

/// A refused command says so in one line, its reason once, and no backtrace even when
/// `RUST_BACKTRACE` is set.
#[test]
fn a_refusal_is_one_line() {
    let s = Scratch::new();
    let server = Server::start(&s.path("data"), &[]);
    let out = Command::new(berth_bin())
        .args(["hosts", "--server", &server.url])
        .env("BERTH_TOKEN", server.token("ci"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("berth: 403: "), "{stderr}");
    assert_eq!(stderr.matches("needs scope admin").count(), 1, "{stderr}");
}
