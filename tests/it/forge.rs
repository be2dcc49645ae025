//! Issue 15's outbound side with a real berth, real builds and real agents: commit statuses
//! on a stand-in forge that checks every request against the forge's published API
//! description (`openapi.rs`), notifications to local receivers that check the signature,
//! and the event stream.

use std::{
    io::BufRead,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use serde_json::Value;

use crate::{
    agent::*,
    builds::*,
    fleet::*,
    harness::*,
    openapi::{Forge, Kind},
    receiver::Receiver,
};

pub fn forge_table(kind: &str, forge: &Forge, token_file: &std::path::Path, aggregate: bool) -> String {
    format!(
        "[repositories.forge]\nkind = \"{kind}\"\napi_url = \"{}\"\ntoken_file = \"{}\"\nrepository = \"acme/fleet\"\naggregate = {aggregate}\n",
        forge.api_url,
        token_file.display()
    )
}

/// The last status of `context` on `sha`.
pub fn last(forge: &Forge, sha: &str, context: &str) -> Option<(String, String)> {
    forge
        .accepted()
        .into_iter()
        .filter(|a| a.sha == sha && a.context == context)
        .map(|a| (a.state, a.description))
        .next_back()
}

fn build_id(b: &BuildHost, host: &str) -> i64 {
    b.generations(host)[0]["build_id"].as_i64().unwrap()
}

/// GitHub: `berth/build` goes pending → success while the forge is down for the first two
/// requests (retried; the build does not wait), `berth/deploy/alpha` follows the real agent
/// to success, then to failure with the reason when generation 2 is rolled back, each with
/// the generation's stored closure diff in short (failed before: no diff); a broken
/// build is a failure; a forge that stays down is recorded on the build; the token never
/// reaches the log.
#[test]
fn github_statuses_follow_builds_and_each_hosts_deploy() {
    let token = "ghp_berthTestToken4f9c2d";
    let forge = Forge::start(Kind::Github, token, "acme", "fleet", 2);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("github-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut b = build_host(&["alpha"], &forge_table("github", &forge, &token_file, false));
    let log = b.s.path("server.log");
    b.server.kill();
    b.server = Server::start_for_logged(&b.s, &["--config", b.s.path("berth.toml").to_str().unwrap()], &log);
    let marker = b.s.path("unhealthy");
    let host = Host::new(&b, "alpha", &format!("[\"test\", \"!\", \"-e\", \"{}\"]", marker.display()));
    let _agent = host.spawn(&b, &b.server.url);

    b.fleet.set_host("alpha", "one");
    let one = b.fleet.commit("main", "one", Signing::Trusted);
    assert!(b.submit_wait(&one, "main").0, "a forge that is down fails no build");
    wait_report(&b, "alpha", 1, &["confirmed"]);
    wait_for("alpha's deploy status to succeed", || {
        last(&forge, &one, "berth/deploy/alpha").is_some_and(|(s, _)| s == "success")
    });
    let id = build_id(&b, "alpha");
    let build: Vec<(String, String)> = forge.of("berth/build");
    assert_eq!(build[0], ("pending".into(), "building main".into()), "{build:?}");
    assert_eq!(build[1].0, "success", "{build:?}");
    assert!(build[1].1.contains("new generations: alpha#1"), "{build:?}");
    let deploy = forge.of("berth/deploy/alpha");
    // Each carries the generation's stored diff in short (a first system: all added).
    let (state, text) = &deploy[0];
    assert!(state == "pending" && text.starts_with("generation 1 waiting for alpha (+"), "{deploy:?}");
    assert!(text.ends_with(" to download)") && !text.contains(" -0 ~0 packages, 0 B"), "{deploy:?}");
    assert!(deploy.iter().any(|(s, d)| s == "pending" && d.starts_with("activating generation 1")), "{deploy:?}");
    let (state, text) = deploy.last().unwrap();
    assert!(state == "success" && text.starts_with("generation 1 confirmed (+"), "{deploy:?}");
    let target = format!("{}/ui/builds/{id}", b.server.url);
    assert!(forge.accepted().iter().all(|a| a.target_url == target && a.sha == one), "{:?}", forge.accepted());

    // A generation the host rolls back: failure, with the host's reason.
    std::fs::write(&marker, "").unwrap();
    b.fleet.set_host("alpha", "two");
    let two = b.fleet.commit("main", "two", Signing::Trusted);
    assert!(b.submit_wait(&two, "main").0);
    wait_report(&b, "alpha", 2, &["rolled_back"]);
    wait_for("alpha's deploy status to fail", || {
        last(&forge, &two, "berth/deploy/alpha").is_some_and(|(s, _)| s == "failure")
    });
    let (_, why) = last(&forge, &two, "berth/deploy/alpha").unwrap();
    let changes = "generation 2 rolled back (+0 -0 ~0 packages, ";
    assert!(why.starts_with(changes) && why.contains(" to download): ") && why.chars().count() <= 140, "{why}");

    // A broken build: failure; then a forge that stays down: the build is not held, and
    // berth gives up after its retries and says so on the build.
    b.fleet.set_broken("alpha", true);
    let three = b.fleet.commit("main", "three", Signing::Trusted);
    assert!(!b.submit_wait(&three, "main").0);
    wait_for("the failed build's status", || last(&forge, &three, "berth/build").is_some_and(|(s, _)| s == "failure"));
    assert!(last(&forge, &three, "berth/build").unwrap().1.contains("1 of 1 hosts failed: alpha"));
    forge.down_for.store(usize::MAX / 2, std::sync::atomic::Ordering::SeqCst);
    let four = b.fleet.commit("main", "four", Signing::Trusted);
    let started = Instant::now();
    let (ok, _, status) = b.submit_wait(&four, "main");
    assert!(!ok && started.elapsed() < Duration::from_secs(60), "{status}");
    let four_id = b.build(id + 3)["id"].as_i64().unwrap();
    wait_for("the forge status to be given up", || {
        b.build(four_id)["forge_statuses"].as_array().unwrap().iter().any(|f| f["delivery"] == "failed")
    });
    // `build status` of a failed build exits 1, and still prints it.
    let shown =
        b.s.berth()
            .args(["build", "status", &four_id.to_string(), "--server", &b.server.url])
            .env("BERTH_TOKEN", &b.ci)
            .output()
            .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("forge berth/build failure") && shown.contains("attempt(s): HTTP 503"), "{shown}");

    forge.assert_no_violations();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("will retry"), "retries are logged");
    assert!(!logged.contains(token), "the forge token is in the server log");
}

/// Verifies `X-Berth-Signature` as a receiver should: in constant time (`verify_slice`).
fn signed(secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(hex_digits) = header.and_then(|h| h.strip_prefix("sha256=")) else { return false };
    let Ok(digest) = hex::decode(hex_digits) else { return false };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    mac.verify_slice(&digest).is_ok()
}

/// Forgejo with `aggregate`: one `berth/deploy` for both hosts ("1/2 hosts confirmed, beta
/// …"); the signed JSON notifications and Slack-style ones arrive, a hanging receiver is
/// timed out and retried; the event stream shows the same events to a read token only.
#[test]
fn forgejo_aggregate_status_notifications_and_the_event_stream() {
    let token = "forgejoTestToken7e1a";
    let forge = Forge::start(Kind::Forgejo, token, "acme", "fleet", 0);
    let secret = b"notify-s3cret";
    let json = Receiver::start(|_| (204, String::new()));
    let slack = Receiver::start(|_| (200, "ok".into()));
    let matrix = Receiver::start(|_| (200, "{\"event_id\":\"$e\"}".into()));
    let hanging = Receiver::start(|_| {
        std::thread::sleep(Duration::from_secs(8));
        (200, String::new())
    });
    let dir = tempfile::tempdir().unwrap();
    let (token_file, secret_file) = (dir.path().join("token"), dir.path().join("secret"));
    std::fs::write(&token_file, token).unwrap();
    std::fs::write(&secret_file, secret).unwrap();
    let matrix_token = dir.path().join("matrix-token");
    std::fs::write(&matrix_token, "syt_matrixTestToken").unwrap();
    let notify = format!(
        "[[notify]]\nurl = \"{}/hook\"\nsecret_file = \"{}\"\nevents = [\"build_succeeded\", \"generation_confirmed\", \"generation_rolled_back\", \"generation_failed\"]\n\
         [[notify]]\nurl = \"{}/slack\"\nformat = \"slack\"\nevents = [\"build_succeeded\"]\n\
         [[notify]]\nurl = \"{}/ntfy\"\nformat = \"ntfy\"\nevents = [\"build_started\"]\ntimeout_secs = 1\n\
         [[notify]]\nurl = \"{}\"\nformat = \"matrix\"\nroom_id = \"!ops:example.org\"\naccess_token_file = \"{}\"\nevents = [\"host_offline\"]\n\
         [deploy]\noffline_after_secs = 3\n",
        json.url,
        secret_file.display(),
        slack.url,
        hanging.url,
        matrix.url,
        matrix_token.display()
    );
    let b = build_host(&["alpha", "beta"], &format!("{}{notify}", forge_table("forgejo", &forge, &token_file, true)));

    // The stream: refused without a token and to a host's token; a read token watches.
    let stream = b.api("events");
    assert_eq!(http().get(&stream).send().unwrap().status(), 401);
    let host_token = b.server.token("host:alpha");
    assert_eq!(http().get(&stream).bearer_auth(&host_token).send().unwrap().status(), 403);
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let response = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .unwrap()
        .get(&stream)
        .bearer_auth(b.server.token("read"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let seen = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            seen.lock().unwrap().push(line);
        }
    });

    let broken = b.s.path("beta-unhealthy");
    std::fs::write(&broken, "").unwrap();
    let alpha = Host::new(&b, "alpha", "");
    let beta = Host::new(&b, "beta", &format!("[\"test\", \"!\", \"-e\", \"{}\"]", broken.display()));
    let agents = (alpha.spawn(&b, &b.server.url), beta.spawn(&b, &b.server.url));
    b.fleet.set_host("alpha", "one");
    b.fleet.set_host("beta", "one");
    let one = b.fleet.commit("main", "one", Signing::Trusted);
    assert!(b.submit_wait(&one, "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);
    wait_report(&b, "beta", 1, &["rolled_back", "failed"]);
    wait_for("the aggregated deploy status to fail", || {
        last(&forge, &one, "berth/deploy").is_some_and(|(s, _)| s == "failure")
    });
    let (_, text) = last(&forge, &one, "berth/deploy").unwrap();
    assert!(text.starts_with("1/2 hosts confirmed, beta "), "{text}");
    assert!(forge.of("berth/deploy/alpha").is_empty(), "aggregated: no per-host status");
    assert_eq!(last(&forge, &one, "berth/build").unwrap().0, "success");
    forge.assert_no_violations();

    // Signed JSON: every body verifies; the kinds asked for, no others.
    wait_for("three signed notifications", || json.requests().len() >= 3);
    let mut kinds = Vec::new();
    for r in json.requests() {
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/hook"));
        assert!(signed(secret, &r.body, r.header("x-berth-signature")), "bad signature on {r:?}");
        assert!(!signed(b"other", &r.body, r.header("x-berth-signature")));
        let payload: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.header("x-berth-event"), payload["kind"].as_str());
        kinds.push(payload["kind"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert!(
        kinds.contains(&"build_succeeded".to_owned()) && kinds.contains(&"generation_confirmed".to_owned()),
        "{kinds:?}"
    );
    assert!(kinds.iter().any(|k| k == "generation_rolled_back" || k == "generation_failed"), "{kinds:?}");
    assert!(kinds.iter().all(|k| k != "build_started" && k != "generation_created"), "{kinds:?}");
    wait_for("the Slack-style notification", || !slack.requests().is_empty());
    let text: Value = serde_json::from_slice(&slack.requests()[0].body).unwrap();
    assert!(text["text"].as_str().unwrap().contains("succeeded"), "{text}");
    // The hanging receiver: each attempt timed out after a second, then tried again.
    wait_for("a retry to the hanging receiver", || hanging.requests().len() >= 2);
    assert_eq!(hanging.requests()[0].header("title"), Some(&*format!("build {} started", build_id(&b, "alpha"))));

    wait_for("the stream to show the build's end", || {
        lines.lock().unwrap().iter().any(|l| l == "event: build_succeeded")
    });
    let shared = lines.clone();
    let lines = lines.lock().unwrap().clone();
    let data =
        lines.iter().filter_map(|l| l.strip_prefix("data: ")).find(|d| d.contains("\"generation_confirmed\"")).unwrap();
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(
        (event["generation"]["host"].as_str(), event["generation"]["commit"].as_str()),
        (Some("alpha"), Some(one.as_str()))
    );

    // Hosts going offline (their agents stop) and coming back (alpha asks again). The
    // agents' 30 s long-polls outlast the 3 s threshold, so an offline may come earlier:
    // it is the same rule either way.
    drop(agents);
    let has = |lines: &Arc<Mutex<Vec<String>>>, from: usize, kind: &str, host: &str| {
        let lines = lines.lock().unwrap();
        lines[from.min(lines.len())..]
            .windows(2)
            .any(|w| w[0] == format!("event: {kind}") && w[1].contains(&format!("\"host\":\"{host}\"")))
    };
    wait_for("alpha offline on the stream", || has(&shared, 0, "host_offline", "alpha"));
    let mark = shared.lock().unwrap().len();
    let r = http().get(b.api("hosts/alpha/manifest?after=1&timeout=1")).bearer_auth(&host_token).send().unwrap();
    assert_eq!(r.status(), 204);
    wait_for("alpha back on the stream", || has(&shared, mark, "host_back", "alpha"));
    // Matrix: the client-server API's send endpoint, with the access token as a bearer.
    wait_for("the Matrix message", || !matrix.requests().is_empty());
    let m = &matrix.requests()[0];
    assert_eq!(m.method, "PUT");
    assert!(m.path.starts_with("/_matrix/client/v3/rooms/!ops:example.org/send/m.room.message/"), "{}", m.path);
    assert_eq!(m.header("authorization"), Some("Bearer syt_matrixTestToken"));
    let body: Value = serde_json::from_slice(&m.body).unwrap();
    assert_eq!(body["msgtype"], "m.text");
    assert!(body["body"].as_str().unwrap().contains("is offline"), "{body}");

    // A build from a forge webhook (not CI) gets its status too.
    let feature = b.fleet.commit("feature", "via webhook", Signing::Trusted);
    let body = serde_json::to_vec(&serde_json::json!({
        "ref": "refs/heads/feature", "before": "0".repeat(40), "after": feature,
        "repository": { "full_name": "acme/fleet", "clone_url": b.fleet.url().trim_start_matches("git+"), "html_url": "", "ssh_url": "" }
    }))
    .unwrap();
    let r = http()
        .post(b.api("webhooks/forgejo"))
        .header("X-Forgejo-Event", "push")
        .header("X-Forgejo-Signature", sign(&body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    wait_for("the webhook build's status", || {
        last(&forge, &feature, "berth/build").is_some_and(|(s, _)| s == "success")
    });
    assert!(last(&forge, &feature, "berth/build").unwrap().1.contains("branch feature deploys nothing"));
    assert_eq!(forge.accepted().iter().filter(|a| a.sha == feature).map(|a| a.state.as_str()).next(), Some("pending"));
    forge.assert_no_violations();

    // SIGTERM with the stream still open: the server stops anyway.
    let mut server = b.server;
    run_ok(Command::new("kill").args(["-TERM", &server.child.id().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "berth serve did not stop with an event stream open");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill();
}
