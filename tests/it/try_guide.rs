//! docs/try.md is run as written: its `sh` blocks, in order, in one bash (`set -euo
//! pipefail`), in a scratch directory, with the real berth, Nix, git and ssh-keygen. Only
//! the port is changed (tests run in parallel) and Nix is kept offline.

use std::{
    os::unix::process::CommandExt,
    process::{Child, Command},
    time::{Duration, Instant},
};

use crate::harness::*;

/// The contents of the fenced blocks of `markdown` opened with ```` ```sh ````, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed sh block");
    blocks
}

/// Kills the script's whole process group (the server and agents it started) when dropped.
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.0.wait();
    }
}

#[test]
fn trying_berth_without_nixos_works_as_the_page_says() {
    for program in ["git", "ssh-keygen", "curl", "nix", "grep"] {
        require(program);
    }
    let s = Scratch::new();
    let page = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/try.md")).unwrap();
    let blocks = sh_blocks(&page);
    assert!(blocks.len() >= 8, "{} sh blocks", blocks.len());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let script = blocks.join("\n");
    assert!(script.contains("127.0.0.1:8080"), "the page's address");
    let script = script.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));

    let berth_dir = std::path::Path::new(berth_bin()).parent().unwrap().to_owned();
    let path = std::env::join_paths(
        std::iter::once(berth_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let (stdout, stderr) = (s.path("guide.out"), s.path("guide.err"));
    let mut bash = Command::new("bash");
    bash.args(["-euo", "pipefail", "-c", &script])
        .current_dir(s.path(""))
        .env("PATH", path)
        .env("NIX_CONFIG", NIX_OFFLINE)
        .env("XDG_CACHE_HOME", s.path("xdg-cache"))
        .env_remove("BERTH_SERVER")
        .env_remove("BERTH_TOKEN")
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .process_group(0);
    let mut group = Group(bash.spawn().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = group.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(600) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let logs = ["serve.log", "web-1/agent.log", "web-2/agent.log"]
        .map(|f| format!("--- {f}:\n{}", read(&s.path("berth-try").join(f))))
        .join("\n");
    let (out, err) = (read(&stdout), read(&stderr));
    let context = format!("stdout:\n{out}\nstderr:\n{err}\n{logs}");
    assert!(status.is_some_and(|s| s.success()), "the page's commands failed ({status:?}):\n{context}");
    drop(group);

    // What the page says the reader sees.
    assert!(out.lines().any(|l| l == "hello from web-1"), "web-1's greeting, from its own store:\n{context}");
    let hosts: Vec<&str> = out.lines().filter(|l| l.starts_with("web-2 ")).collect();
    assert!(hosts.iter().any(|l| l.contains("confirmed") && l.contains("#1 deployed 1")), "{context}");
    assert!(hosts.iter().any(|l| l.contains("rolled_back")), "{context}");
    assert!(out.contains("error: this system is broken"), "the activation log of web-2:\n{context}");
    assert!(out.lines().any(|l| l == "hello from web-2"), "after the rollback, web-2 says hello:\n{context}");
    assert!(out.lines().any(|l| l.starts_with("web-1 ") && l.contains("#2 unchanged")), "{context}");
    assert!(out.lines().any(|l| l.starts_with("web-1 ") && l.contains("#3 unsigned")), "{context}");
}
