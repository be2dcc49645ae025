//! Scale-out, end to end: two `berth serve` replicas (the real binary) sharing one S3 bucket
//! (a real SeaweedFS server, SigV4) and one PostgreSQL database (a throwaway real cluster),
//! both started by the test process itself. What must happen once happens once; what one
//! replica publishes the other serves; a replica killed mid-upload leaves the bucket
//! consistent and the other replica serving.

use std::{
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{
    fleet::{Fleet, Signing},
    harness::*,
    receiver::Receiver,
    servers::{Postgres, Seaweed},
};

/// Two replicas on one bucket and one database, with a fleet repository both can build.
struct Cluster {
    s: Scratch,
    fleet: Fleet,
    a: Server,
    b: Server,
    storage: String,
    admin: String,
}

/// The `storage` URL of a fresh bucket (under a prefix, as a shared bucket would be used).
fn bucket_url(s: &Scratch) -> String {
    let s3 = Seaweed::shared();
    let credentials = s3.credentials_file(s.dir.path());
    format!(
        "s3://{}/cache?endpoint={}&region=us-east-1&credentials_file={}",
        s3.new_bucket(),
        s3.endpoint(),
        credentials.display()
    )
}

/// Generates a key pair with `berth keygen`; returns the secret key file.
fn keygen(s: &Scratch, name: &str) -> PathBuf {
    let (secret, public) = (s.path(&format!("{name}.secret")), s.path(&format!("{name}.public")));
    run_ok(
        Command::new(berth_bin())
            .args(["keygen", "--name", name, "--secret-key-file"])
            .arg(&secret)
            .arg("--public-key-file")
            .arg(&public),
    );
    secret
}

impl Cluster {
    /// `config_b` is appended to replica B's configuration only.
    fn start(config_b: &str) -> Cluster {
        Cluster::start_with(Scratch::new(), "", config_b)
    }

    /// `both` is in both replicas' configuration, `config_b` in B's only.
    fn start_with(s: Scratch, both: &str, config_b: &str) -> Cluster {
        let fleet = Fleet::new(&s, &["alpha"]);
        let storage = bucket_url(&s);
        let database = Postgres::shared().new_database();
        let shared = format!(
            "storage = \"{storage}\"\ndatabase = \"{database}\"\nsigning_key_file = \"{}\"\ndeploy_key_file = \"{}\"\n",
            keygen(&s, "replicated-cache-1").display(),
            keygen(&s, "replicated-deploy-1").display(),
        );
        let repository = format!(
            "[builder]\nstale_after_secs = 3\n\n[[repositories]]\nname = \"fleet\"\nurl = \"{}\"\nallowed_signers_file = \"{}\"\n",
            fleet.url(),
            fleet.allowed_signers().display()
        );
        let start = |name: &str, extra: &str| {
            let config = s.path(&format!("{name}.toml"));
            std::fs::write(&config, format!("{shared}{extra}\n{repository}")).unwrap();
            Server::start(&s.path(name), &["--config", config.to_str().unwrap()])
        };
        let a = start("a", both);
        let b = start("b", &format!("{both}{config_b}"));
        assert_eq!(a.public_key, b.public_key, "replicas sign with one key");
        let admin = token(&s, "a", "admin");
        Cluster { s, fleet, a, b, storage, admin }
    }

    fn token(&self, scope: &str) -> String {
        token(&self.s, "a", scope)
    }
}

/// `berth token create` against the shared database (through a replica's configuration).
fn token(s: &Scratch, replica: &str, scope: &str) -> String {
    stdout_of(
        Command::new(berth_bin())
            .args(["token", "create", "--scope", scope, "--config"])
            .arg(s.path(&format!("{replica}.toml")))
            .arg("--data-dir")
            .arg(s.path(replica)),
    )
}

fn push(server: &Server, token: &str, path: &str) {
    run_ok(Command::new(berth_bin()).args(["push", "--server", &server.url, path]).env("BERTH_TOKEN", token));
}

fn api(server: &Server, path: &str) -> String {
    format!("{}/api/v1/{path}", server.url)
}

#[test]
fn a_closure_pushed_through_one_replica_is_substituted_by_nix_from_the_other() {
    let c = Cluster::start("");
    let top = c.s.build_closure("replicas");
    push(&c.a, &c.token("push"), &top);
    let (out, store) = c.s.substitute(&c.b.url, &top, &c.b.public_key, "from-b");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for path in c.s.closure(&top) {
        assert_eq!(c.s.nar_hash(&path, Some(&store)), c.s.nar_hash(&path, None));
    }
    // What Nix itself uploads through B (`PUT /nar/<name>`: multipart straight to the final
    // key) is served by A, too (no replica-local state on the read path).
    let other = c.s.build_closure("replicas-other");
    let netrc = c.s.netrc(&c.token("push"));
    run_ok(c.s.nix("nix").args(["copy", "--option", "netrc-file"]).arg(&netrc).args([
        "--to",
        &format!("{}?compression=zstd", c.b.url),
        &other,
    ]));
    let (out, _) = c.s.substitute(&c.a.url, &other, &c.a.public_key, "from-a");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_build_runs_on_one_replica_and_a_long_poll_on_the_other_sees_its_generation() {
    let c = Cluster::start("");
    let host = c.token("host:alpha");
    // An agent long-polls B; the build is submitted to A; both replicas' workers race for it.
    let waiting = {
        let (url, host) = (api(&c.b, "hosts/alpha/manifest?timeout=120"), host.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let r = http().get(url).bearer_auth(host).send().unwrap();
            (r.status(), r.text().unwrap(), started.elapsed())
        })
    };
    let ci = c.token("ci");
    let mut ids = Vec::new();
    for n in 0..3 {
        c.fleet.set_host("alpha", &format!("v{n}"));
        let commit = c.fleet.commit("main", &format!("change {n}"), Signing::Trusted);
        let body = json!({"repository": "fleet", "commit": commit, "branch": "main"});
        let target = if n % 2 == 0 { &c.a } else { &c.b };
        let r: Value = http().post(api(target, "builds")).bearer_auth(&ci).json(&body).send().unwrap().json().unwrap();
        ids.push(r["id"].as_i64().unwrap());
    }
    let (status, body, waited) = waiting.join().unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(waited < Duration::from_secs(110), "woken by a generation made on the other replica");

    for id in &ids {
        let build = wait_for_build(&c.b, &ci, *id);
        assert_eq!(build["state"], "succeeded", "{build}");
        assert_eq!(build["attempts"], 1, "claimed once: {build}");
        // Exactly one replica built it: only its builder holds the build's GC root.
        let roots =
            ["a", "b"].iter().filter(|r| c.s.path(r).join(format!("gcroots/alpha/build-{id}")).exists()).count();
        assert_eq!(roots, 1, "build {id} ran on exactly one replica");
    }
    let generations: Vec<Value> =
        http().get(api(&c.a, "hosts/alpha/generations")).bearer_auth(&c.admin).send().unwrap().json().unwrap();
    let mut numbers: Vec<i64> = generations.iter().map(|g| g["number"].as_i64().unwrap()).collect();
    numbers.sort();
    assert_eq!(numbers, [1, 2, 3], "one generation per build, numbers never collide");
}

fn wait_for_build(server: &Server, token: &str, id: i64) -> Value {
    for _ in 0..900 {
        let build: Value =
            http().get(api(server, &format!("builds/{id}"))).bearer_auth(token).send().unwrap().json().unwrap();
        if ["succeeded", "failed", "cancelled"].contains(&build["state"].as_str().unwrap_or("")) {
            return build;
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("build {id} did not end");
}

#[test]
fn a_collection_started_on_both_replicas_runs_once() {
    let c = Cluster::start("");
    let top = c.s.build_closure("replicas-gc");
    push(&c.a, &c.token("push"), &top);
    let gc = |server: &Server| {
        let (url, admin) = (api(server, "gc"), c.admin.clone());
        thread::spawn(move || {
            let r = http().post(url).bearer_auth(admin).json(&json!({})).send().unwrap();
            (r.status(), r.text().unwrap())
        })
    };
    // Started on both at once: each either runs or is told one is running; never both at
    // the same time (the second waits for nothing and changes nothing).
    for _ in 0..5 {
        let (ra, rb) = (gc(&c.a), gc(&c.b));
        let results = [ra.join().unwrap(), rb.join().unwrap()];
        for (status, body) in &results {
            assert!([StatusCode::OK, StatusCode::CONFLICT].contains(status), "{status}: {body}");
        }
        assert!(results.iter().any(|(s, _)| *s == StatusCode::OK), "{results:?}");
    }
    // While a collection holds the database's lock (here: held from a third session, as a
    // third replica would), neither replica starts one.
    let database = std::fs::read_to_string(c.s.path("a.toml")).unwrap();
    let url = database.lines().find_map(|l| l.strip_prefix("database = \"")).unwrap().trim_end_matches('"').to_owned();
    let mut holder = Command::new("psql")
        .arg(&url)
        .args(["-qAt", "-c", &format!("SELECT pg_advisory_lock({}); SELECT pg_sleep(6);", berth::db::COLLECTION_KEY)])
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(2));
    for server in [&c.a, &c.b] {
        let (status, body) = gc(server).join().unwrap();
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(body.contains("already running"), "{body}");
    }
    holder.wait().unwrap();
    assert_eq!(gc(&c.b).join().unwrap().0, StatusCode::OK, "the lock is free again");
    // Nothing a kept root reaches was lost.
    let (out, _) = c.s.substitute(&c.b.url, &top, &c.b.public_key, "after-gc");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn killing_a_replica_mid_upload_leaves_the_bucket_consistent_and_the_other_serving() {
    let mut c = Cluster::start("");
    let push_token = c.token("push");
    let small = c.s.build_closure("replicas-crash");
    push(&c.a, &push_token, &small);

    // Nix's upload of the big path's NAR, as `nix copy` sends it (`PUT /nar/<file hash>.nar`,
    // the name known up front: a multipart upload straight to its final key), held after
    // 40 MB (several 5 MiB parts are in the bucket) until A is killed.
    let big = big_path(&c.s, 120_000_000);
    let nar = c.s.path("big.nar");
    run_ok(c.s.nix("nix-store").args(["--dump", &big]).stdout(std::fs::File::create(&nar).unwrap()));
    let file_hash = stdout_of(c.s.nix("nix-hash").args(["--type", "sha256", "--flat", "--base32"]).arg(&nar));
    let (sent, held) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    let body = HeldBody { file: std::fs::File::open(&nar).unwrap(), left: 40_000_000, sent: sent.0, held: held.1 };
    let upload = {
        let (url, token) = (format!("{}/nar/{file_hash}.nar", c.a.url), push_token.clone());
        thread::spawn(move || http().put(url).bearer_auth(token).body(reqwest::blocking::Body::new(body)).send())
    };
    sent.1.recv_timeout(Duration::from_secs(60)).expect("40 MB sent");
    thread::sleep(Duration::from_millis(500));
    c.a.kill();
    drop(held.0);
    assert!(upload.join().unwrap().is_err(), "the upload died with its replica");
    let nar_key = berth::store::ObjectKey::Nar(berth::nixfmt::NarFileName::parse(&format!("{file_hash}.nar")).unwrap());
    let size = in_bucket(&c.storage, |store| async move { store.head(&nar_key).await.unwrap() });
    assert_eq!(size, None, "an interrupted upload is never completed in the bucket");

    let hash = store_hash(&big);
    let r = http().get(format!("{}/{hash}.narinfo", c.b.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "a path whose upload died is not visible");
    let (out, _) = c.s.substitute(&c.b.url, &small, &c.b.public_key, "after-crash");
    assert!(out.status.success(), "B still serves: {}", String::from_utf8_lossy(&out.stderr));
    assert_bucket_consistent(&c.storage, &c.s.closure(&small));

    // The same path pushed again through B completes, and is served.
    push(&c.b, &push_token, &big);
    let (out, _) = c.s.substitute(&c.b.url, &big, &c.b.public_key, "big");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_bucket_consistent(&c.storage, &[big]);
}

/// An upload body that sends `left` bytes of `file`, says so on `sent`, then blocks until
/// `held` is dropped, and fails.
struct HeldBody {
    file: std::fs::File,
    left: u64,
    sent: std::sync::mpsc::Sender<()>,
    held: std::sync::mpsc::Receiver<()>,
}

impl std::io::Read for HeldBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            let _ = self.sent.send(());
            let _ = self.held.recv();
            return Err(std::io::Error::other("held body released"));
        }
        let len = buf.len().min(self.left as usize);
        let n = self.file.read(&mut buf[..len])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Runs `f` on the bucket itself, read through berth's storage layer (not through a server).
fn in_bucket<T, F: std::future::Future<Output = T>>(storage: &str, f: impl FnOnce(berth::store::Store) -> F) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(f(berth::store::Store::open(storage).unwrap()))
}

/// A store path holding `size` random bytes.
fn big_path(s: &Scratch, size: u64) -> String {
    let dir = s.path("big");
    std::fs::create_dir(&dir).unwrap();
    run_ok(
        Command::new("head")
            .args(["-c", &size.to_string(), "/dev/urandom"])
            .stdout(std::fs::File::create(dir.join("blob")).unwrap()),
    );
    stdout_of(s.nix("nix-store").arg("--add").arg(&dir))
}

fn store_hash(path: &str) -> String {
    Path::new(path).file_name().unwrap().to_str().unwrap()[..32].to_owned()
}

/// Every narinfo of `paths` in the bucket names a NAR that exists there, with the size the
/// narinfo states.
fn assert_bucket_consistent(storage: &str, paths: &[String]) {
    in_bucket(storage, |store| async move {
        for path in paths {
            let hash = berth::nixfmt::StorePathHash::parse(&store_hash(path)).unwrap();
            let Some(text) = store.get_bytes(&berth::store::ObjectKey::NarInfo(hash)).await.unwrap() else { continue };
            let info = berth::nixfmt::PathInfo::parse(&text).unwrap();
            let nar = berth::store::ObjectKey::Nar(info.nar_file().unwrap());
            let size = store.head(&nar).await.unwrap();
            assert!(size.is_some(), "{path}: narinfo visible without its NAR");
            if let Some(declared) = info.file_size() {
                assert_eq!(size, Some(declared), "{path}: NAR incomplete");
            }
        }
    });
}

#[test]
fn nars_are_redirected_to_presigned_bucket_urls_and_nix_follows() {
    let c = Cluster::start("[cache]\nnar_redirect = \"presigned\"\n");
    let top = c.s.build_closure("replicas-redirect");
    push(&c.a, &c.token("push"), &top);
    // B answers NAR requests with a redirect to a presigned URL; Nix follows it.
    let (out, store) = c.s.substitute(&c.b.url, &top, &c.b.public_key, "redirected");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(c.s.nar_hash(&top, Some(&store)), c.s.nar_hash(&top, None));

    let narinfo = http().get(format!("{}/{}.narinfo", c.b.url, store_hash(&top))).send().unwrap().text().unwrap();
    let nar_url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().to_owned();
    let no_follow = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_follow.get(format!("{}/{nar_url}", c.b.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    // The bucket itself refuses the same object without the signature.
    let unsigned = location.split('?').next().unwrap();
    assert_eq!(http().get(unsigned).send().unwrap().status(), StatusCode::FORBIDDEN);
    // A missing NAR is a 404 from berth, not a redirect to nothing.
    let missing = format!("{}/nar/{}.nar.zst", c.b.url, "0".repeat(52));
    assert_eq!(no_follow.get(missing).send().unwrap().status(), StatusCode::NOT_FOUND);
    // A streams the same NAR itself.
    let r = no_follow.get(format!("{}/{nar_url}", c.a.url)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// `berth_db_queries_total` of a replica.
fn db_queries(server: &Server) -> u64 {
    let metrics = http().get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    let line = metrics.lines().find(|l| l.starts_with("berth_db_queries_total ")).expect("the query counter");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Each replica answers misses from its own set of published paths, and a path published
/// through one replica is found by the other within the set's staleness bound (it hears of
/// it by NOTIFY).
#[test]
fn a_path_published_on_one_replica_is_no_miss_on_the_other() {
    let c = Cluster::start("");
    let top = c.s.build_closure("replicas-set");
    let hash = store_hash(&top);
    let status = |server: &Server| http().get(format!("{}/{hash}.narinfo", server.url)).send().unwrap().status();
    let bound = berth::published::STALENESS + berth::published::PING_EVERY;
    let found_within_bound = |server: &Server| {
        let published = Instant::now();
        while status(server) != StatusCode::OK {
            assert!(published.elapsed() < bound, "not found {bound:?} after its publication elsewhere");
            thread::sleep(Duration::from_millis(20));
        }
    };
    // B's set is loaded (start-up) and trusted: 100 misses cost no queries beyond its pings.
    thread::sleep(Duration::from_secs(1));
    let before = db_queries(&c.b);
    for _ in 0..100 {
        assert_eq!(status(&c.b), StatusCode::NOT_FOUND);
    }
    let queries = db_queries(&c.b) - before;
    assert!(queries < 20, "100 misses on B ran {queries} queries");

    push(&c.a, &c.token("push"), &top);
    found_within_bound(&c.b);
}

#[test]
fn a_host_going_offline_and_back_is_announced_once_by_two_replicas() {
    let s = Scratch::new();
    let hook = Receiver::start(|_| (200, String::new()));
    let secret = s.path("hook-secret");
    std::fs::write(&secret, "a shared secret").unwrap();
    let both = format!(
        "[[notify]]\nurl = \"{}/hook\"\nsecret_file = \"{}\"\nevents = [\"host_offline\", \"host_back\"]\n\
         [deploy]\noffline_after_secs = 2\n",
        hook.url,
        secret.display()
    );
    let c = Cluster::start_with(s, &both, "");
    let added = http().post(api(&c.a, "hosts")).bearer_auth(&c.admin).json(&json!({"name": "alpha"})).send().unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let host = c.token("host:alpha");
    let poll = |server: &Server| {
        let r = http().get(api(server, "hosts/alpha/manifest?timeout=1")).bearer_auth(&host).send().unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    };
    let kinds = || -> Vec<String> {
        hook.requests()
            .iter()
            .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    // Seen on A; then silent past the threshold: offline, announced by one replica only.
    poll(&c.a);
    wait_for("alpha offline", || kinds().contains(&"host_offline".to_owned()));
    // Both replicas look every second: had both announced, the second would be here by now.
    thread::sleep(Duration::from_secs(4));
    assert_eq!(kinds(), ["host_offline"]);
    // Back through B, and kept online by its polls: announced once too.
    let deadline = Instant::now() + Duration::from_secs(6);
    poll(&c.b);
    wait_for("alpha back", || kinds().len() >= 2);
    while Instant::now() < deadline {
        poll(&c.b);
    }
    assert_eq!(kinds(), ["host_offline", "host_back"]);
}

/// A deploy-key rotation started on one replica: a long-poll waiting on the other is told of
/// the next key within seconds (no file to distribute: the secret is in the database), the
/// acknowledgement it records there moves the rotation on, and either replica then announces
/// the retirement signed by the new key alone.
#[test]
fn a_deploy_key_rotation_started_on_one_replica_reaches_the_other() {
    let c = Cluster::start("");
    let old = std::fs::read_to_string(c.s.path("replicated-deploy-1.public")).unwrap().trim().to_owned();
    // alpha is enrolled (known, with a live token): the rotation waits for it.
    run_ok(
        Command::new(berth_bin())
            .args(["hosts", "add", "alpha", "--config"])
            .arg(c.s.path("a.toml"))
            .arg("--data-dir")
            .arg(c.s.path("a")),
    );
    let host = c.token("host:alpha");
    let poll = |server: &Server, keys: &str, timeout: u32| {
        http()
            .get(api(server, &format!("hosts/alpha/manifest?timeout={timeout}")))
            .bearer_auth(&host)
            .header("x-berth-deploy-keys", keys)
            .send()
            .unwrap()
    };
    let waiting = {
        let (url, host, old) = (api(&c.b, "hosts/alpha/manifest?timeout=30"), host.clone(), old.clone());
        thread::spawn(move || {
            let started = Instant::now();
            let r = http().get(url).bearer_auth(host).header("x-berth-deploy-keys", old).send().unwrap();
            (r.status(), r.text().unwrap(), started.elapsed())
        })
    };
    thread::sleep(Duration::from_millis(500));
    let r = http().post(api(&c.a, "keys/deploy/rotate")).bearer_auth(&c.admin).send().unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let new = r.json::<Value>().unwrap()["public_key"].as_str().unwrap().to_owned();

    let (status, body, waited) = waiting.join().unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(waited < Duration::from_secs(15), "told within seconds, not at the hold's end: {waited:?}");
    let keys: Value = serde_json::from_str(&body).unwrap();
    assert!(keys.get("manifest").is_none(), "the announcement alone: {keys}");
    let announced: Value = serde_json::from_str(keys["keys"]["announcement"].as_str().unwrap()).unwrap();
    assert_eq!(announced["keys"], json!([old, new]), "{announced}");
    assert_eq!(keys["keys"]["signatures"].as_array().unwrap().len(), 2, "signed by both keys");

    // alpha acknowledges on B; the rotation moves on, seen from A. (The poll itself may
    // already be answered the retirement: the acknowledgement is recorded when it begins.)
    let acked = poll(&c.b, &format!("{old},{new}"), 1).status();
    assert!([StatusCode::NO_CONTENT, StatusCode::OK].contains(&acked), "{acked}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = http().get(api(&c.a, "keys/deploy")).bearer_auth(&c.admin).send().unwrap().json().unwrap();
        let state_of = |k: &str| {
            status["keys"].as_array().unwrap().iter().find(|x| x["public_key"] == k).unwrap()["state"].clone()
        };
        if state_of(&old) == "retiring" && state_of(&new) == "current" {
            break;
        }
        assert!(Instant::now() < deadline, "the rotation never moved on: {status:#}");
        thread::sleep(Duration::from_millis(200));
    }
    let retired: Value = poll(&c.a, &format!("{old},{new}"), 5).json().unwrap();
    let announced: Value = serde_json::from_str(retired["keys"]["announcement"].as_str().unwrap()).unwrap();
    assert_eq!((announced["keys"].clone(), announced["retired"].clone()), (json!([new]), json!([old])));
    assert_eq!(retired["keys"]["signatures"].as_array().unwrap().len(), 1, "signed by the new key alone");
}
