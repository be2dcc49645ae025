//! Newer pieces of the binary-cache protocol, each with the Nix client that uses it:
//! content-addressed paths (`CA:`), narinfo fields older clients do not know, realisations of
//! content-addressed derivations, build logs (`nix log --store`), and `Priority`.

use std::process::Output;

use crate::harness::*;

/// Metrics line value, e.g. `berth_nar_bytes_served_total`.
fn metric(server: &Server, name: &str) -> u64 {
    let text = http().get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

fn narinfo(server: &Server, path: &str) -> String {
    let hash = &path["/nix/store/".len()..][..32];
    let response = http().get(format!("{}/{hash}.narinfo", server.url)).send().unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.text().unwrap()
}

/// A server whose retention keeps nothing unrooted (no grace period).
fn server_without_grace(s: &Scratch) -> Server {
    let config = s.path("no-grace.toml");
    std::fs::write(&config, "[retention]\ngrace_period_secs = 0\n").unwrap();
    Server::start_for(s, &["--config", config.to_str().unwrap()])
}

fn field<'a>(narinfo: &'a str, name: &str) -> Option<&'a str> {
    narinfo.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
}

#[track_caller]
fn ok(out: &Output) {
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

for_each_client!(a_content_addressed_path_keeps_its_ca_through_nix_copy_and_berth_push);

/// A path added to the store (`nix-store --add`: content-addressed, `fixed:r:sha256`) keeps
/// its `CA:` through `nix copy --to` and through `berth push`, and arrives content-addressed.
fn a_content_addressed_path_keeps_its_ca_through_nix_copy_and_berth_push(client: NixClient) {
    let s = Scratch::with(client);
    let dir = s.path("ca-source");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/file"), format!("content {:?}\n", s.dir.path())).unwrap();
    let path = stdout_of(s.nix("nix-store").arg("--add").arg(&dir));
    let copied = Server::start_for(&s, &[]);
    let netrc = s.netrc(&copied.token("push"));
    ok(&s
        .nix("nix")
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &copied.url, &path])
        .output()
        .unwrap());
    let pushed = Server::start(&s.path("data-push"), &[]);
    ok(&s.berth_push(&pushed.url, &pushed.token("push"), &[&path]).output().unwrap());
    for server in [&copied, &pushed] {
        let text = narinfo(server, &path);
        let ca = field(&text, "CA").unwrap_or_else(|| panic!("no CA in {text}"));
        assert!(ca.starts_with("fixed:r:sha256:"), "{ca}");
        let (out, store) = s.substitute(&server.url, &path, &server.public_key, &format!("from-{}", server.url.len()));
        ok(&out);
        let info = stdout_of(s.nix("nix").args(["path-info", "--json", "--store"]).arg(&store).arg(&path));
        assert!(info.contains(ca), "the substituted path is content-addressed: {info}");
    }
}

for_each_client!(a_narinfo_field_older_clients_do_not_know_is_kept_and_substitutes);

/// A narinfo with a field Nix 2.8 does not know (`Provenance:`, as Determinate Nix writes it)
/// is accepted, served back unchanged beside berth's signature (the field is not part of the
/// fingerprint), and substitutes with the client at hand.
fn a_narinfo_field_older_clients_do_not_know_is_kept_and_substitutes(client: NixClient) {
    let s = Scratch::with(client);
    let server = Server::start_for(&s, &[]);
    let top = s.build_closure("provenance");
    let token = server.token("push");
    // Nix writes the NARs and narinfos of the closure into a directory cache; berth gets
    // them by the plain PUTs `nix copy --to http://` would send, one narinfo edited.
    let dir = s.path("file-cache");
    ok(&s
        .nix("nix")
        .args(["copy", "--to", &format!("file://{}?compression=none", dir.display()), &top])
        .output()
        .unwrap());
    let provenance = r#"Provenance: {"type":"copied","from":"https://cache.example/€"}"#;
    for path in s.closure(&top).iter().rev().collect::<Vec<_>>().into_iter().rev() {
        let hash = &path["/nix/store/".len()..][..32];
        let text = std::fs::read_to_string(dir.join(format!("{hash}.narinfo"))).unwrap();
        let url = field(&text, "URL").unwrap();
        let nar = std::fs::read(dir.join(url)).unwrap();
        let put = |url: String, body: Vec<u8>| http().put(url).bearer_auth(&token).body(body).send().unwrap();
        assert_eq!(put(format!("{}/{url}", server.url), nar).status(), 200);
        let text = if *path == top { format!("{text}{provenance}\n") } else { text };
        let response = put(format!("{}/{hash}.narinfo", server.url), text.into_bytes());
        assert_eq!(response.status(), 200, "{}", response.text().unwrap());
    }
    let served = narinfo(&server, &top);
    assert!(served.lines().any(|l| l == provenance), "kept unchanged: {served}");
    assert!(served.contains("Sig: "), "{served}");
    let (out, store) = s.substitute(&server.url, &top, &server.public_key, "client");
    ok(&out);
    assert_eq!(s.nar_hash(&top, Some(&store)), s.nar_hash(&top, None));
}

/// A content-addressed derivation (experimental `ca-derivations`) of the current Nix: `nix
/// copy` uploads its realisation beside the path, berth signs it with the cache key, and a
/// fresh store that trusts only berth's key builds the derivation without building anything
/// (`--max-jobs 0`): the realisation and the path are substituted. Realisations of paths that
/// are not in the cache, or that lie about their id, are refused.
#[test]
fn a_content_addressed_derivation_substitutes_through_its_signed_realisation() {
    let s = Scratch::with(NixClient::Current);
    let server = server_without_grace(&s);
    let expr = s.path("ca.nix");
    std::fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "berth-ca"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin"; salt = "{}"; args = [ "-c" "echo building; mkdir -p $out; echo hi > $out/f" ];
  __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }}"#,
            s.dir.path().display()
        ),
    )
    .unwrap();
    let ca = |cmd: &mut std::process::Command| {
        let config = format!("{}\nextra-experimental-features = ca-derivations", s.nix_config());
        cmd.env("NIX_CONFIG", config);
    };
    let mut build = s.nix("nix");
    ca(&mut build);
    let out = stdout_of(build.args(["build", "--no-link", "--print-out-paths", "-f"]).arg(&expr));
    let netrc = s.netrc(&server.token("push"));
    let mut copy = s.nix("nix");
    ca(&mut copy);
    ok(&copy
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &server.url, "-f"])
        .arg(&expr)
        .output()
        .unwrap());

    let realisations: Vec<_> = std::fs::read_dir(server.data_dir.join("cache/realisations"))
        .expect("nix copy uploaded a realisation")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(realisations.len(), 1, "{realisations:?}");
    let served = http().get(format!("{}/realisations/{}", server.url, realisations[0])).send().unwrap();
    assert_eq!(served.status(), 200);
    let served = served.text().unwrap();
    let key_name = server.public_key.split(':').next().unwrap();
    assert!(served.contains(&format!("\"{key_name}:")), "signed by berth: {served}");
    assert!(served.contains(&out["/nix/store/".len()..]), "{served}");

    // A fresh store trusting only berth's key, not allowed to build.
    let fresh = s.path("fresh");
    let mut substitute = s.nix("nix");
    substitute.env(
        "NIX_CONFIG",
        format!(
            "{NIX_OFFLINE}\nextra-experimental-features = ca-derivations\nstore = {}\nsandbox-paths = /bin /usr /lib /lib64\nsubstituters = {}\ntrusted-public-keys = {}",
            fresh.display(),
            server.url,
            server.public_key
        ),
    );
    substitute.env("XDG_CACHE_HOME", s.path("xdg-fresh"));
    let got =
        stdout_of(substitute.args(["build", "--no-link", "--print-out-paths", "--max-jobs", "0", "-f"]).arg(&expr));
    assert_eq!(got, out);

    // Hostile uploads.
    let token = server.token("push");
    let id = realisations[0].trim_end_matches(".doi");
    let put = |name: &str, body: String| {
        let r =
            http().put(format!("{}/realisations/{name}", server.url)).bearer_auth(&token).body(body).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let absent = served.replace(&out["/nix/store/".len()..][..32], "00000000000000000000000000000000");
    let cases = [
        (realisations[0].clone(), absent, 400, "not in this cache"),
        (realisations[0].replace("!out", "!dev"), served.clone(), 400, "uploaded as"),
        (format!("{id}.json"), served.clone(), 404, "realisations are"),
        ("sha256:..!out.doi".to_owned(), served.clone(), 400, "invalid derivation output id"),
        (realisations[0].clone(), "{".to_owned(), 400, "malformed realisation"),
        (realisations[0].clone(), format!("{served}{}", " ".repeat(300_000)), 413, "over"),
    ];
    for (name, body, status, message) in cases {
        let (got, text) = put(&name, body);
        assert_eq!(got, status, "{name}: {text}");
        assert!(text.contains(message) && text.contains("\"code\""), "{name}: {text}");
    }
    let anonymous = http().put(format!("{}/realisations/{}", server.url, realisations[0])).body(served).send().unwrap();
    assert_eq!(anonymous.status(), 401);

    // Retention deletes the realisation with its output path.
    server.collect();
    let gone = http().get(format!("{}/realisations/{}", server.url, realisations[0])).send().unwrap();
    assert_eq!(gone.status(), 404);
    assert!(!server.data_dir.join("cache/realisations").join(&realisations[0]).exists());
}

for_each_client!(nix_log_reads_a_build_log_from_the_cache);

/// `nix store copy-log --to` uploads a derivation's build log, and `nix log --store URL`
/// on another machine (a fresh store) reads it back; retention deletes it with the path. Logs for derivations that built
/// nothing in the cache, compressed logs and traversal names are refused.
fn nix_log_reads_a_build_log_from_the_cache(client: NixClient) {
    let s = Scratch::with(client);
    let server = server_without_grace(&s);
    let expr = s.path("logged.nix");
    let marker = format!("berth-log-marker-{}", s.dir.path().display());
    std::fs::write(
        &expr,
        format!(
            r#"derivation {{ name = "berth-logged"; system = builtins.currentSystem; builder = "/bin/sh";
  PATH = "/usr/bin:/bin"; args = [ "-c" "echo '{marker} ünïcode'; echo to-stderr >&2; mkdir $out" ]; }}"#
        ),
    )
    .unwrap();
    let out = stdout_of(s.nix("nix-build").arg("--no-out-link").arg(&expr));
    let drv = stdout_of(s.nix("nix-store").args(["-q", "--deriver", &out]));
    let netrc = s.netrc(&server.token("push"));
    let token = server.token("push");
    let upload_log = || {
        s.nix("nix")
            .args(["store", "copy-log", "--option", "netrc-file"])
            .arg(&netrc)
            .args(["--to", &server.url, &drv])
            .output()
            .unwrap()
    };
    let early = upload_log();
    assert!(!early.status.success(), "a log of a derivation whose output is not in the cache is refused");
    ok(&s
        .nix("nix")
        .args(["copy", "--option", "netrc-file"])
        .arg(&netrc)
        .args(["--to", &server.url, &out])
        .output()
        .unwrap());
    ok(&upload_log());

    let read = || {
        let mut read = s.nix("nix");
        read.env("XDG_CACHE_HOME", s.path("xdg-reader"));
        if let Some(store) = s.own_store() {
            // Another machine's store: nothing of the build is in it.
            let other = s.path("reader").display().to_string();
            read.env("NIX_CONFIG", s.nix_config().replace(&store.display().to_string(), &other));
        }
        read
    };
    // By derivation, and by output path (through its narinfo's `Deriver`). Nix 2.8 reads a
    // derivation named on the command line from the store it is given, which a cache lacks:
    // there the output path is the way.
    let by: &[&str] = if client == NixClient::Debian { &[&out] } else { &[&drv, &out] };
    for installable in by {
        let log = stdout_of(read().args(["log", "--store", &server.url, installable]));
        assert!(log.contains(&format!("{marker} ünïcode")) && log.contains("to-stderr"), "{installable}: {log}");
    }

    let put = |name: &str, encoding: Option<&str>| {
        let mut r = http().put(format!("{}/log/{name}", server.url)).bearer_auth(&token).body("log");
        if let Some(e) = encoding {
            r = r.header("content-encoding", e);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let base = &drv["/nix/store/".len()..];
    for (name, encoding, status, message) in [
        (base, Some("br"), 400, "Content-Encoding"),
        ("..%2F..%2Fetc%2Fpasswd.drv", None, 400, "invalid derivation"),
        (&base.replace(".drv", ""), None, 400, "invalid derivation"),
        ("00000000000000000000000000000000-none.drv", None, 400, "not in this cache"),
    ] {
        let (got, text) = put(name, encoding);
        assert_eq!(got, status, "{name}: {text}");
        assert!(text.contains(message), "{name}: {text}");
    }
    let missing = http().get(format!("{}/log/00000000000000000000000000000000-none.drv", server.url)).send().unwrap();
    assert_eq!(missing.status(), 404);

    // Retention deletes the log with the last path its derivation built.
    server.collect();
    assert_eq!(http().get(format!("{}/log/{base}", server.url)).send().unwrap().status(), 404);
    assert!(!server.data_dir.join("cache/log").join(base).exists());
}

for_each_client!(the_cache_with_the_lower_priority_serves_the_nar);

/// Two caches hold the same path; the client lists the less preferred one first. Nix asks
/// the one whose `nix-cache-info` says the lower `Priority` for the NAR: berth's
/// `[cache] priority` is what orders substituters.
fn the_cache_with_the_lower_priority_serves_the_nar(client: NixClient) {
    let s = Scratch::with(client);
    let top = s.build_closure("priority");
    let start = |name: &str, priority: u32| {
        let config = s.path(&format!("{name}.toml"));
        // Distinct key names: Nix keeps one trusted key per name.
        std::fs::write(&config, format!("signing_key_name = \"{name}-1\"\n[cache]\npriority = {priority}\n")).unwrap();
        let server = Server::start(&s.path(name), &["--config", config.to_str().unwrap()]);
        ok(&s.berth_push(&server.url, &server.token("push"), &[&top]).output().unwrap());
        server
    };
    let preferred = start("preferred", 10);
    let other = start("other", 50);
    assert!(http()
        .get(format!("{}/nix-cache-info", preferred.url))
        .send()
        .unwrap()
        .text()
        .unwrap()
        .contains("Priority: 10"));
    // Each cache signs with its own key; the client trusts both and lists `other` first.
    let out = s
        .nix("nix-store")
        .env("XDG_CACHE_HOME", s.path("xdg-client"))
        .arg("--store")
        .arg(s.path("client"))
        .args([
            "--option",
            "substituters",
            &format!("{} {}", other.url, preferred.url),
            "--option",
            "trusted-public-keys",
            &format!("{} {}", other.public_key, preferred.public_key),
            "--realise",
            &top,
        ])
        .output()
        .unwrap();
    ok(&out);
    let served = |server: &Server| metric(server, "berth_nar_bytes_served_total");
    assert!(served(&preferred) > 0, "the preferred cache served the closure");
    assert_eq!(served(&other), 0, "the cache listed first but with the higher Priority served nothing");
}
