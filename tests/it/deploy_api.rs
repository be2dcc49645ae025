//! The server side of deployments: signed manifests long-polled with host tokens, reports,
//! host status and admin rollback.

use std::time::{Duration, Instant};

use berth::{deploy::manifest::SignedManifest, nixfmt::PublicKey};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{builds::*, fleet::Signing, harness::*};

fn deploy_key(b: &BuildHost) -> PublicKey {
    let text = std::fs::read_to_string(b.server.data_dir.join("deploy-key")).unwrap();
    berth::nixfmt::SecretKey::parse(&text).unwrap().public()
}

fn poll(b: &BuildHost, host: &str, token: &str, after: Option<i64>, timeout: u64) -> reqwest::blocking::Response {
    let after = after.map(|a| format!("&after={a}")).unwrap_or_default();
    http().get(b.api(&format!("hosts/{host}/manifest?timeout={timeout}{after}"))).bearer_auth(token).send().unwrap()
}

#[test]
fn a_host_token_long_polls_its_own_signed_manifest_and_nothing_else() {
    let b = build_host(&["alpha", "beta"], "");
    let alpha = b.server.token("host:alpha");
    assert_eq!(poll(&b, "alpha", &alpha, None, 1).status(), StatusCode::NO_CONTENT, "nothing deployed yet");
    assert_eq!(poll(&b, "beta", &alpha, None, 1).status(), StatusCode::FORBIDDEN, "another host's manifest");
    let r = http()
        .post(b.api("hosts/beta/reports"))
        .bearer_auth(&alpha)
        .json(&json!({"generation": 1, "phase": "confirmed"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "another host's reports");
    assert_eq!(http().get(b.api("hosts")).bearer_auth(&alpha).send().unwrap().status(), StatusCode::FORBIDDEN);

    // A long-poll waiting when the build lands returns long before its timeout.
    let commit = b.fleet.commit("main", "deploy", Signing::Trusted);
    let waiting = {
        let (url, token) = (b.api("hosts/alpha/manifest?timeout=60"), alpha.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = http().get(url).bearer_auth(token).send().unwrap();
            (r.status(), r.text().unwrap(), started.elapsed())
        })
    };
    assert!(b.submit_wait(&commit, "main").0);
    let (status, body, waited) = waiting.join().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(waited < Duration::from_secs(55), "woken by the new generation, not by the timeout");
    let signed: SignedManifest = serde_json::from_str(&body).unwrap();
    let manifest = signed.open(&deploy_key(&b), "alpha", None).unwrap();
    assert_eq!(manifest.generation, 1);
    assert_eq!(manifest.commit, commit);
    assert!(signed.open(&deploy_key(&b), "beta", None).is_err(), "a manifest names its host");
    assert_eq!(poll(&b, "alpha", &alpha, Some(1), 1).status(), StatusCode::NO_CONTENT, "nothing newer than 1");
}

#[test]
fn reports_set_the_host_status_and_rollback_makes_a_new_generation() {
    let b = build_host(&["alpha"], "");
    let first = b.fleet.commit("main", "one", Signing::Trusted);
    assert!(b.submit_wait(&first, "main").0);
    b.fleet.set_host("alpha", "two");
    let second = b.fleet.commit("main", "two", Signing::Trusted);
    assert!(b.submit_wait(&second, "main").0);
    let alpha = b.server.token("host:alpha");
    let report = |generation: i64, phase: &str, message: &str| {
        let body = json!({"generation": generation, "phase": phase, "message": message, "active_generation": null});
        http().post(b.api("hosts/alpha/reports")).bearer_auth(&alpha).json(&body).send().unwrap().status()
    };
    assert_eq!(report(1, "confirmed", ""), StatusCode::NO_CONTENT);
    assert_eq!(report(2, "confirmed", ""), StatusCode::NO_CONTENT);
    assert_eq!(report(2, "sleeping", ""), StatusCode::BAD_REQUEST);
    assert_eq!(report(9, "confirmed", ""), StatusCode::NOT_FOUND);
    let hosts: Vec<Value> = http().get(b.api("hosts")).bearer_auth(&b.admin).send().unwrap().json().unwrap();
    assert_eq!(hosts[0]["status"]["active_generation"], 2);
    assert_eq!(hosts[0]["latest"]["number"], 2);

    let out = std::process::Command::new(berth_bin())
        .args(["rollback", "alpha", "--server", &b.server.url])
        .env("BERTH_TOKEN", &b.admin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generations = b.generations("alpha");
    assert_eq!(generations.len(), 3, "a rollback is a new generation");
    assert_eq!(generations[0]["store_path"], generations[2]["store_path"], "with generation 1's system");
    assert_eq!(generations[0]["branch"], "rollback-to-1");
    let r = poll(&b, "alpha", &alpha, Some(2), 1);
    let signed: SignedManifest = r.json().unwrap();
    assert_eq!(signed.open(&deploy_key(&b), "alpha", Some(2)).unwrap().generation, 3);
    let refused = http().post(b.api("hosts/alpha/rollback")).bearer_auth(&b.ci).json(&json!({})).send().unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN, "only an admin rolls back");
    let table = std::process::Command::new(berth_bin())
        .args(["hosts", "--server", &b.server.url])
        .env("BERTH_TOKEN", &b.admin)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    // The state is that of the desired generation 3 (the rollback), which the host has not started.
    assert!(table.contains("alpha") && table.contains("waiting"), "{table}");
}
