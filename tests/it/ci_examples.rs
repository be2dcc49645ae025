//! The CI workflows in `docs/ci/` are run, not just read: the shell script of each job is
//! taken from the YAML and run with bash, curl, jq and the berth CLI against a real build
//! host, as the runner would run it (the runner's `env:` given by the test).

use std::process::Command;

use crate::{
    builds::build_host,
    fleet::Signing,
    harness::*,
    oidc::{Issuer, AUDIENCE, REQUEST_TOKEN},
};

/// The `run: |` script of job `job` in a workflow file, dedented.
fn job_script(workflow: &str, job: &str) -> String {
    let start = workflow.find(&format!("\n  {job}:\n")).unwrap_or_else(|| panic!("no job {job}"));
    let rest = &workflow[start..];
    let run = rest.find("run: |\n").expect("a run block") + "run: |\n".len();
    let mut lines = rest[run..].lines();
    let first = lines.clone().next().unwrap();
    let indent = first.len() - first.trim_start().len();
    let mut script = String::new();
    for line in lines.by_ref() {
        if !line.trim().is_empty() && line.len() - line.trim_start().len() < indent {
            break;
        }
        script.push_str(line.get(indent..).unwrap_or(""));
        script.push('\n');
    }
    script
}

/// The workflow file `file` of docs/ci/.
fn workflow(file: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ci").join(file)).unwrap()
}

/// Runs each job of each example against `b` with the runner's `env`, and checks that it
/// succeeded and reported every host.
fn run_every_job(b: &crate::builds::BuildHost, commit: &str, env: &[(&str, &str)]) {
    require("jq");
    require("curl");
    let berth_dir = std::path::Path::new(berth_bin()).parent().unwrap().to_owned();
    let path = std::env::join_paths(
        std::iter::once(berth_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    for file in ["forgejo-actions.yml", "github-actions.yml"] {
        let workflow = workflow(file);
        for job in ["berth-curl", "berth-cli"] {
            // Waits between polls are the example's; a test need not wait ten seconds.
            let script = job_script(&workflow, job).replace("sleep 10", "sleep 0.5");
            let out = Command::new("bash")
                .args(["-c", &script])
                .env("PATH", &path)
                .env("BERTH_SERVER", &b.server.url)
                .env("BERTH_REPOSITORY", "fleet")
                .env("COMMIT", commit)
                .env("BRANCH", "main")
                .envs(env.iter().copied())
                .output()
                .unwrap();
            let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "{file} {job}:\n{stdout}\n{stderr}");
            let all = format!("{stdout}{stderr}");
            assert!(!all.contains("null"), "{file} {job} prints null:\n{all}");
            for host in ["alpha", "beta"] {
                assert!(
                    all.lines().any(|l| l.starts_with(host) || l.contains(&format!(" {host} "))),
                    "{file} {job}: no line for {host}:\n{all}"
                );
            }
        }
    }
}

#[test]
fn the_ci_examples_submit_wait_and_report_every_host() {
    let b = build_host(&["alpha", "beta"], "");
    let commit = b.fleet.commit("main", "from ci", Signing::Trusted);
    run_every_job(&b, &commit, &[("BERTH_TOKEN", &b.ci), ("BERTH_ID_TOKEN_AUDIENCE", "")]);
}

/// With `BERTH_OIDC_AUDIENCE` set and no `BERTH_TOKEN` secret (the forge then passes an empty
/// value), each job gets its ID token from the forge's token endpoint — a local issuer here —
/// and submits and follows the build with it alone.
#[test]
fn the_ci_examples_authenticate_with_the_jobs_id_token() {
    for (file, permission) in
        [("github-actions.yml", "      id-token: write"), ("forgejo-actions.yml", "    enable-openid-connect: true")]
    {
        assert_eq!(
            workflow(file).matches(&format!("\n{permission}")).count(),
            2,
            "{file}: each job may ask for a token"
        );
    }
    let issuer = Issuer::start();
    let b = build_host(&["alpha", "beta"], &issuer.policy());
    let commit = b.fleet.commit("main", "from ci", Signing::Trusted);
    issuer.set_job("refs/heads/main", &commit);
    let request_url = issuer.request_url();
    run_every_job(
        &b,
        &commit,
        &[
            ("BERTH_TOKEN", ""),
            ("BERTH_ID_TOKEN_AUDIENCE", AUDIENCE),
            ("ACTIONS_ID_TOKEN_REQUEST_URL", &request_url),
            ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", REQUEST_TOKEN),
        ],
    );
    assert!(issuer.minted() >= 4, "every job asked the forge for its token ({} minted)", issuer.minted());
}
