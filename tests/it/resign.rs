//! `berth cache resign`: a cache key rotation with the real Nix client. A closure is
//! published under key 1, the server restarts with key 2 as its signing key (key 1 listed in
//! `previous_public_keys`), and `berth cache resign` re-signs what was published, keeping or
//! dropping key 1's signatures; a client trusting only key 2 substitutes it all afterwards
//! and not before. SQLite on a directory, and PostgreSQL on S3 (SeaweedFS).

use std::{path::PathBuf, process::Command};

use serde_json::{json, Value};

use crate::{
    harness::*,
    servers::{Postgres, Seaweed},
};

/// Where a test's cache keeps its index and objects.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    SqliteDirectory,
    PostgresS3,
}

struct Rotation {
    s: Scratch,
    top: String,
    old_public: String,
    new_public: String,
    config: PathBuf,
}

fn keygen(s: &Scratch, name: &str) -> (PathBuf, String) {
    let (secret, public) = (s.path(&format!("{name}.secret")), s.path(&format!("{name}.public")));
    run_ok(
        Command::new(berth_bin())
            .args(["keygen", "--name", name, "--secret-key-file"])
            .arg(&secret)
            .arg("--public-key-file")
            .arg(&public),
    );
    (secret, std::fs::read_to_string(public).unwrap().trim().to_owned())
}

/// `berth token create` against the test's database (through its configuration).
fn token(s: &Scratch, config: &std::path::Path, scope: &str) -> String {
    stdout_of(
        Command::new(berth_bin())
            .args(["token", "create", "--scope", scope, "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(s.path("data")),
    )
}

fn storage_and_database(s: &Scratch, backend: Backend) -> String {
    match backend {
        Backend::SqliteDirectory => String::new(),
        Backend::PostgresS3 => {
            let s3 = Seaweed::shared();
            let credentials = s3.credentials_file(s.dir.path());
            format!(
                "storage = \"s3://{}/cache?endpoint={}&region=us-east-1&credentials_file={}\"\ndatabase = \"{}\"\n",
                s3.new_bucket(),
                s3.endpoint(),
                credentials.display(),
                Postgres::shared().new_database()
            )
        }
    }
}

impl Rotation {
    /// Publishes a closure under key 1; the returned server signs with key 2.
    fn start(backend: Backend, salt: &str) -> (Rotation, Server) {
        let s = Scratch::new();
        let top = s.build_closure(salt);
        let place = storage_and_database(&s, backend);
        let (old_secret, old_public) = keygen(&s, "resign-cache-1");
        let (new_secret, new_public) = keygen(&s, "resign-cache-2");
        let config = s.path("old.toml");
        std::fs::write(&config, format!("{place}signing_key_file = \"{}\"\n", old_secret.display())).unwrap();
        let old = Server::start(&s.path("data"), &["--config", config.to_str().unwrap()]);
        assert_eq!(old.public_key, old_public);
        run_ok(&mut s.berth_push(&old.url, &token(&s, &config, "push"), &[&top]));
        drop(old);
        let config = s.path("new.toml");
        std::fs::write(
            &config,
            format!(
                "{place}signing_key_file = \"{}\"\nprevious_public_keys = [\"{old_public}\"]\n",
                new_secret.display()
            ),
        )
        .unwrap();
        let rotation = Rotation { s, top, old_public, new_public, config };
        let server = rotation.serve(&[]);
        assert_eq!(server.public_key, rotation.new_public);
        (rotation, server)
    }

    fn serve(&self, env: &[(&str, &str)]) -> Server {
        Server::start_with_env(&self.s.path("data"), &["--config", self.config.to_str().unwrap()], env)
    }

    /// Whether a fresh store trusting only `key` substitutes the whole closure.
    fn substitutes(&self, server: &Server, key: &str, store: &str) -> bool {
        let (out, _) = self.s.substitute(&server.url, &self.top, key, store);
        out.status.success()
    }

    fn resign(&self, server: &Server, flags: &[&str]) -> std::process::Output {
        self.s
            .berth()
            .args(["cache", "resign", "--server", &server.url])
            .args(flags)
            .env("BERTH_TOKEN", token(&self.s, &self.config, "admin"))
            .output()
            .unwrap()
    }

    /// The key names of every signature the server serves for the closure, per path.
    fn served_signatures(&self, server: &Server) -> Vec<Vec<String>> {
        self.s
            .closure(&self.top)
            .iter()
            .map(|path| {
                let hash = &path["/nix/store/".len()..][..32];
                let text = http().get(format!("{}/{hash}.narinfo", server.url)).send().unwrap().text().unwrap();
                signature_names(&text)
            })
            .collect()
    }
}

fn signature_names(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("Sig: ")).map(|s| s.split(':').next().unwrap().to_owned()).collect()
}

fn status(server: &Server) -> Value {
    http()
        .get(format!("{}/api/v1/cache/resign", server.url))
        .bearer_auth(server.token("admin"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

fn rotates_dropping_the_old_signatures(backend: Backend) {
    let (r, server) = Rotation::start(backend, &format!("resign-drop-{backend:?}"));
    assert!(!r.substitutes(&server, &r.new_public, "before"), "{backend:?}: nothing is signed by key 2 yet");
    assert!(r.substitutes(&server, &r.old_public, "old-before"));
    let out = r.resign(&server, &["--drop-old"]);
    assert!(out.status.success(), "{backend:?}: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("done: 3 narinfo(s) re-signed"), "{out:?}");
    assert!(r.substitutes(&server, &r.new_public, "after"), "{backend:?}: a client trusting only key 2");
    assert!(!r.substitutes(&server, &r.old_public, "old-after"), "{backend:?}: key 1's signatures are gone");
    assert!(r.served_signatures(&server).iter().all(|sigs| sigs == &["resign-cache-2"]));
    // Across a restart (no cached narinfo) and, for a directory, read without berth.
    drop(server);
    let server = r.serve(&[]);
    assert!(r.served_signatures(&server).iter().all(|sigs| sigs == &["resign-cache-2"]));
    if backend == Backend::SqliteDirectory {
        let cache = r.s.path("data/cache");
        for entry in std::fs::read_dir(&cache).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".narinfo") {
                let text = std::fs::read_to_string(cache.join(&name)).unwrap();
                assert_eq!(signature_names(&text), ["resign-cache-2"], "{name}");
            }
        }
        let (out, _) = r.s.substitute(&format!("file://{}", cache.display()), &r.top, &r.new_public, "dir");
        assert!(out.status.success(), "the directory alone: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn rotating_the_cache_key_with_drop_old_on_sqlite_and_a_directory() {
    rotates_dropping_the_old_signatures(Backend::SqliteDirectory);
}

#[test]
fn rotating_the_cache_key_with_drop_old_on_postgres_and_s3() {
    rotates_dropping_the_old_signatures(Backend::PostgresS3);
}

#[test]
fn keep_old_leaves_clients_of_either_key_working() {
    let (r, server) = Rotation::start(Backend::SqliteDirectory, "resign-keep");
    let out = r.resign(&server, &["--keep-old"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(r.substitutes(&server, &r.new_public, "new"));
    assert!(r.substitutes(&server, &r.old_public, "old"));
    for sigs in r.served_signatures(&server) {
        assert_eq!(sigs, ["resign-cache-1", "resign-cache-2"]);
    }
    // A second run changes nothing, and says so.
    let out = r.resign(&server, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("done: 0 narinfo(s) re-signed"), "{out:?}");
}

#[test]
fn a_run_killed_mid_way_resumes_where_it_stopped() {
    let (r, server) = Rotation::start(Backend::SqliteDirectory, "resign-crash");
    drop(server);
    let mut crashing = r.serve(&[("BERTH_CRASH_AT", "resign-batch-recorded")]);
    let out = r.resign(&crashing, &["--drop-old"]);
    assert!(!out.status.success(), "the run dies with its server");
    assert!(!crashing.child.wait().unwrap().success(), "aborted at the crash point");
    let server = r.serve(&[]);
    let before = status(&server);
    assert_eq!((before["state"].as_str(), before["working"].as_bool()), (Some("running"), Some(false)), "{before}");
    assert_eq!(before["resigned"], 3, "the first batch was recorded: {before}");
    // Resumed after its cursor: the count goes on from the batch recorded (a fresh run
    // would count from 0, finding nothing left to change).
    let out = r.resign(&server, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let after = status(&server);
    assert_eq!((after["state"].as_str(), after["resigned"].as_i64()), (Some("done"), Some(3)), "{after}");
    assert_eq!(after["old_signatures"], "drop");
    assert!(r.substitutes(&server, &r.new_public, "after"));
    let out = r.resign(&server, &["--keep-old"]);
    assert!(out.status.success(), "a finished run starts afresh with either choice");
}

#[test]
fn hostile_requests_are_refused_with_a_status_and_a_reason() {
    let (r, server) = Rotation::start(Backend::SqliteDirectory, "resign-hostile");
    let url = format!("{}/api/v1/cache/resign", server.url);
    let post = |token: &str, body: Value| http().post(&url).bearer_auth(token).json(&body).send().unwrap();
    let check = |response: reqwest::blocking::Response, status: u16, code: &str| {
        assert_eq!(response.status(), status);
        let body: Value = response.json().unwrap();
        assert_eq!(body["code"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.contains('\n')), "{body}");
    };
    check(post(&server.token("push"), json!({})), 403, "forbidden");
    check(http().get(&url).bearer_auth(server.token("push")).send().unwrap(), 403, "forbidden");
    check(post("not-a-token", json!({})), 401, "unauthorized");
    let admin = server.token("admin");
    check(http().get(&url).bearer_auth(&admin).send().unwrap(), 404, "not_found");
    check(post(&admin, json!({ "old_signatures": "both" })), 400, "bad_request");
    check(post(&admin, json!({ "old_signatures": "dröp" })), 400, "bad_request");
    check(post(&admin, json!({ "old_signatures": "keep", "cursor": "../../etc" })), 400, "bad_request");
    let big = "k".repeat(3 << 20);
    check(post(&admin, json!({ "old_signatures": big })), 413, "too_large");
    let out = r.resign(&server, &["--keep-old", "--drop-old"]);
    assert!(!out.status.success(), "conflicting flags are refused");
    assert!(!r.substitutes(&server, &r.new_public, "refused"), "nothing was re-signed");
}
