//! The Nix side of the repository, as far as it can be checked without nixpkgs: every `.nix`
//! file parses; the flake's outputs that need no nixpkgs (modules, overlay) evaluate; what the
//! NixOS modules render (nixos-module/render.nix, builtins only) is accepted by the real
//! `berth check-config` and `berth agent`; docs/nixos.md names every module option. The
//! modules' evaluation against nixpkgs and the VM tests run on a NixOS machine
//! (`nix flake check`, see docs/nixos.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use crate::harness::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Nix string literal for `text` (whatever characters a checkout's path holds).
fn nix_string(text: &str) -> String {
    let escaped = text.replace('\\', "\\\\").replace('"', "\\\"").replace('$', "\\$");
    format!("\"{escaped}\"")
}

/// A Nix path expression for `path`.
fn nix_path(path: &Path) -> String {
    format!("(/. + {})", nix_string(path.to_str().expect("UTF-8 path")))
}

/// Evaluates `expr` strictly with a bare `nix-instantiate` (no nixpkgs, no NIX_PATH) and
/// returns it as JSON. Read-write mode: path values become store paths, as when NixOS
/// renders them.
#[track_caller]
fn eval(s: &Scratch, expr: &str) -> Value {
    let out = run_ok(s.nix("nix-instantiate").env_remove("NIX_PATH").args([
        "--eval",
        "--strict",
        "--json",
        "--read-write-mode",
        "-E",
        expr,
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Writes JSON as a TOML file.
fn write_toml(path: &Path, value: &Value) {
    std::fs::write(path, toml::to_string(value).unwrap()).unwrap();
}

/// Every `.nix` file of the repository (outside `target/` and hidden directories).
fn nix_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                nix_files(&path, found);
            }
        } else if name.ends_with(".nix") {
            found.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    let s = Scratch::new();
    let mut files = Vec::new();
    nix_files(&root(), &mut files);
    for expected in [
        "flake.nix",
        "nixos-module/server.nix",
        "nixos-module/agent.nix",
        "nixos-module/push.nix",
        "nixos-module/tests/fleet.nix",
    ] {
        assert!(files.contains(&root().join(expected)), "{expected} is missing");
    }
    for file in &files {
        let out = s.nix("nix-instantiate").arg("--parse").arg(file).output().unwrap();
        assert!(out.status.success(), "{} does not parse:\n{}", file.display(), String::from_utf8_lossy(&out.stderr));
    }
}

/// The flake's outputs are evaluated with `nixpkgs` bound to an error: the modules and the
/// overlay must not need it (so they also work from a checkout without the flake).
#[test]
fn flake_outputs_without_nixpkgs_evaluate() {
    let s = Scratch::new();
    let root = nix_path(&root());
    let expr = format!(
        r#"let
  flake = import ({root} + "/flake.nix");
  outputs = flake.outputs {{
    self = outputs // {{ outPath = {root}; }};
    nixpkgs = throw "nixpkgs is not available here";
  }};
  # A module given by path, as the flake's modules import the files.
  file = module: let path = builtins.head module.imports; in {{
    name = baseNameOf (toString path);
    args = let value = import path; in
      if builtins.isFunction value then builtins.attrNames (builtins.functionArgs value)
      else map (p: baseNameOf (toString p)) value.imports;
  }};
in {{
  inputs = builtins.attrNames flake.inputs;
  outputArgs = builtins.attrNames (builtins.functionArgs flake.outputs);
  outputs = builtins.attrNames outputs;
  modules = builtins.mapAttrs (_: file) outputs.nixosModules;
  overlay = builtins.functionArgs outputs.overlays.default;
  overlayAdds = builtins.attrNames (outputs.overlays.default (throw "final") {{ }});
}}"#
    );
    let got = eval(&s, &expr);
    assert_eq!(got["inputs"], json!(["nixpkgs"]));
    assert_eq!(got["outputArgs"], json!(["nixpkgs", "self"]));
    assert_eq!(got["outputs"], json!(["checks", "devShells", "formatter", "nixosModules", "overlays", "packages"]));
    let module = |name: &str, args: Value| json!({ "name": name, "args": args });
    assert_eq!(
        got["modules"],
        json!({
            "server": module("server.nix", json!(["config", "lib", "pkgs"])),
            "agent": module("agent.nix", json!(["config", "lib", "pkgs"])),
            "push": module("push.nix", json!(["config", "lib", "pkgs"])),
            "default": module("default.nix", json!(["server.nix", "agent.nix", "push.nix"])),
        })
    );
    assert_eq!(got["overlay"], json!({}), "an overlay is `final: prev: …`");
    assert_eq!(got["overlayAdds"], json!(["berth"]));
}

/// The server's settings as the module renders them: the runtime file passes
/// `berth check-config` only where the secrets exist, and the build-time check copy passes it
/// with stand-ins for what exists only at run time, keeping store paths checked for real.
#[test]
fn server_settings_pass_check_config() {
    let s = Scratch::new();
    let dummies = s.path("dummies");
    std::fs::create_dir_all(dummies.join("gnupg")).unwrap();
    std::fs::write(dummies.join("webhook-secret"), "build-time-check\n").unwrap();
    std::fs::write(dummies.join("allowed_signers"), "").unwrap();
    let signers = s.path("allowed_signers");
    std::fs::write(&signers, "alice@example.org ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKxb\n").unwrap();

    let expr = format!(
        r#"let
  render = import ({root} + "/nixos-module/render.nix");
  settings = {{
    listen = "[::]:8080";
    data_dir = {data};
    signing_key_file = render.credential "berth.service" "signing-key";
    deploy_key_file = render.credential "berth.service" "deploy-key";
    previous_public_keys = [ "berth-test-cache-0:bJN1l3lZ70jSLPBfPxrEyoTh2GzTLf8z15Ko/ww+AQ0=" ];
    cache = {{ priority = 30; require_read_token = false; compression_level = 3; }};
    builder = {{ parallel_hosts = 2; timeout_secs = 3600; concurrent_builds = 1; stale_after_secs = 60; }};
    retention = {{ keep_last = 10; keep_newer_than_days = 30; grace_period_secs = 3600; schedule_secs = 86400; }};
    repositories = [
      {{ name = "fleet"; url = "git+https://git.example.org/ops/fleet"; allowed_signers_file = "/etc/berth/allowed_signers"; }}
      {{ name = "in-store"; url = "git+file:///srv/a"; allowed_signers_file = builtins.toFile "allowed_signers" "alice@example.org ssh-ed25519 AAAA\n"; }}
      {{ name = "path-value"; url = "git+file:///srv/b"; allowed_signers_file = {signers}; }}
      {{ name = "gpg"; url = "git+file:///srv/c"; gpg_home = "/var/lib/berth/gnupg"; gpg_min_trust_level = "marginal"; }}
      {{ name = "lab"; url = "git+file:///srv/lab"; require_signed_commits = false; deploy_branch = "prod"; }}
      {{ name = "forged"; url = "git+https://codeberg.org/acme/fleet"; require_signed_commits = false;
         forge = {{ kind = "forgejo"; api_url = "https://codeberg.org/api/v1"; token_file = render.credential "berth.service" "forge-token"; aggregate = true; }}; }}
    ];
    notify = [
      {{ url = "https://hooks.example.org/b"; secret_file = render.credential "berth.service" "notify-secret"; events = [ "build_failed" ]; }}
      {{ url = "https://matrix.example.org"; format = "matrix"; room_id = "!ops:example.org"; access_token_file = "/run/credentials/berth.service/matrix"; }}
    ];
  }};
  rendered = render.serverSettings {{ inherit settings; webhookSecretRepositories = [ "fleet" "lab" ]; }};
in {{
  inherit rendered;
  check = render.checkSettings {{ settings = rendered; dummies = {dummies}; }};
  ports = map render.listenPort [ "127.0.0.1:8080" "[::]:443" ];
}}"#,
        root = nix_path(&root()),
        data = nix_string(s.path("data").to_str().unwrap()),
        signers = nix_path(&signers),
        dummies = nix_string(dummies.to_str().unwrap()),
    );
    let got = eval(&s, &expr);
    assert_eq!(got["ports"], json!([8080, 443]));

    let repo = |settings: &Value, i: usize, key: &str| settings["repositories"][i][key].as_str().map(str::to_owned);
    let rendered = &got["rendered"];
    assert_eq!(repo(rendered, 0, "webhook_secret_file").unwrap(), "/run/credentials/berth.service/webhook-fleet");
    assert_eq!(repo(rendered, 4, "webhook_secret_file").unwrap(), "/run/credentials/berth.service/webhook-lab");
    assert_eq!(repo(rendered, 1, "webhook_secret_file"), None, "no secret, no webhook");

    let check = &got["check"];
    let dummy = |file: &str| dummies.join(file).to_str().unwrap().to_owned();
    assert_eq!(repo(check, 0, "webhook_secret_file").unwrap(), dummy("webhook-secret"));
    assert_eq!(repo(check, 0, "allowed_signers_file").unwrap(), dummy("allowed_signers"));
    assert_eq!(repo(check, 3, "gpg_home").unwrap(), dummy("gnupg"));
    assert_eq!(check["repositories"][5]["forge"]["token_file"].as_str().unwrap(), dummy("webhook-secret"));
    assert_eq!(check["notify"][0]["secret_file"].as_str().unwrap(), dummy("webhook-secret"));
    assert_eq!(check["notify"][1]["access_token_file"].as_str().unwrap(), dummy("webhook-secret"));
    assert_eq!(rendered["notify"][0]["secret_file"], "/run/credentials/berth.service/notify-secret");
    for kept in [1, 2] {
        let file = repo(check, kept, "allowed_signers_file").unwrap();
        assert!(file.starts_with("/nix/store/") && Path::new(&file).is_file(), "kept and checked: {file}");
        assert_eq!(Some(file), repo(rendered, kept, "allowed_signers_file"));
    }

    let check_file = s.path("check.toml");
    write_toml(&check_file, check);
    let out = stdout_of(Command::new(berth_bin()).arg("check-config").arg(&check_file));
    assert!(out.ends_with(": ok"), "{out}");

    // The runtime file names files that exist only on the server: checking it here fails,
    // which is why the module checks the copy.
    let runtime_file = s.path("runtime.toml");
    write_toml(&runtime_file, rendered);
    let out = Command::new(berth_bin()).arg("check-config").arg(&runtime_file).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("repositories."), "{stderr}");

    // An unknown key in the settings fails the check, as it fails `nixos-rebuild`.
    let mut wrong = check.clone();
    wrong["cache"]["prioriti"] = json!(1);
    write_toml(&check_file, &wrong);
    let out = Command::new(berth_bin()).arg("check-config").arg(&check_file).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("prioriti"));
}

/// The agent's settings as the module renders them are accepted by `berth agent`: it gets
/// past validation and fails only to reach a server that is not there.
#[test]
fn agent_settings_are_accepted_by_the_agent() {
    let s = Scratch::new();
    let expr = format!(
        r#"let
  render = import ({root} + "/nixos-module/render.nix");
  options = {{
    server = "https://berth.example.org";
    host = "web-1";
    tokenFile = render.credential "berth-agent.service" "token";
    deployPublicKey = "berth-test-deploy-1:qC0i8JQLQA6DqBM6oap0lqK69ZuWhR+uLs0ldegcJsY=";
    activation = "switch";
    healthChecks = [
      [ "curl" "-fsS" "http://127.0.0.1:8080/health" ]
      {{ command = [ "systemctl" "is-active" "sshd.service" ]; retries = 2; intervalSecs = 3; timeoutSecs = 5; }}
      {{ command = [ "true" ]; retries = null; intervalSecs = null; timeoutSecs = null; }}
    ];
    checkSystemRunning = true;
    healthTimeout = 60;
    activationTimeout = 600;
    reboot = "when-needed";
    rebootWindow = "02:00-04:00";
    rebootCommand = [ "systemctl" "reboot" ];
    activationWindows = [ "Mon-Fri 02:00-05:00" "Sat,Sun 00:00-24:00" ];
    timeZone = "Europe/Berlin";
    dryActivate = true;
  }};
in {{
  full = render.agentSettings options;
  minimal = render.agentSettings (options // {{ reboot = "never"; rebootWindow = null; activation = "boot"; activationWindows = [ ]; timeZone = null; dryActivate = false; }});
}}"#,
        root = nix_path(&root()),
    );
    let got = eval(&s, &expr);
    assert_eq!(got["full"]["token_file"], "/run/credentials/berth-agent.service/token");
    assert_eq!(got["full"]["reboot_window"], "02:00-04:00");
    assert!(got["minimal"].get("reboot_window").is_none(), "null options are left out");
    assert_eq!(got["full"]["activation_windows"][0], "Mon-Fri 02:00-05:00");
    assert_eq!(got["full"]["time_zone"], "Europe/Berlin");
    assert_eq!(got["full"]["dry_activate"], true);
    assert!(got["minimal"].get("activation_windows").is_none() && got["minimal"].get("time_zone").is_none());
    let checks = &got["full"]["health_checks"];
    assert_eq!(checks[1]["interval_secs"], 3, "{checks}");
    assert_eq!(checks[2], json!({"command": ["true"]}), "null check options are left out");

    let token = s.path("token");
    std::fs::write(&token, "berth_host_token\n").unwrap();
    let run = |settings: &Value, name: &str| {
        let file = s.path(name);
        write_toml(&file, settings);
        // The token file and server come from flags (they win over the file): a closed port.
        let out = Command::new(berth_bin())
            .args(["agent", "--config"])
            .arg(&file)
            .arg("--token-file")
            .arg(&token)
            .args(["--server", "http://127.0.0.1:9", "--state-dir"])
            .arg(s.path(&format!("{name}-state")))
            .arg("--store")
            .arg(s.path(&format!("{name}-store")))
            .arg("--once")
            .env("BERTH_LOG", "warn")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        assert!(!out.status.success(), "no server answers on port 9");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for name in ["full", "minimal"] {
        let stderr = run(&got[name], name);
        assert!(stderr.contains("cannot reach http://127.0.0.1:9"), "{name}: {stderr}");
    }
    let mut wrong = got["full"].clone();
    wrong["colour"] = json!("blue");
    let stderr = run(&wrong, "wrong");
    assert!(stderr.contains("unknown field `colour`"), "{stderr}");
}

/// docs/nixos.md names every option the modules declare (the descriptions themselves are
/// checked by the `module-eval` flake check).
#[test]
fn the_module_reference_names_every_option() {
    let doc = std::fs::read_to_string(root().join("docs/nixos.md")).unwrap();
    for (file, prefix, least) in [
        ("server.nix", "services.berth.server", 8),
        ("agent.nix", "services.berth.agent", 8),
        ("push.nix", "services.berth.push", 5),
    ] {
        let text = std::fs::read_to_string(root().join("nixos-module").join(file)).unwrap();
        let options = declared_options(&text);
        assert!(options.len() >= least, "{file}: found only {options:?}");
        if file == "agent.nix" {
            assert!(options.iter().any(|o| o == "cache.publicKeys"), "nested options are found: {options:?}");
        }
        for option in options {
            let name = format!("`{prefix}.{option}`");
            assert!(doc.contains(&name), "docs/nixos.md does not document {name}");
        }
    }
}

/// The options of `options.services.berth.<module> = { … }` (and of its nested attribute
/// sets, such as the agent's `cache`), by their dotted names; options inside `settings`
/// (a submodule type) are documented with it.
fn declared_options(text: &str) -> Vec<String> {
    let mut options = Vec::new();
    let mut inside = false;
    let mut groups: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let line = line.trim();
        if line.starts_with("options.services.berth.") && line.ends_with("= {") {
            inside = true;
            continue;
        }
        if !inside || line.is_empty() {
            continue;
        }
        if indent == 2 && line == "};" {
            break;
        }
        groups.retain(|(depth, _)| *depth < indent);
        let Some((name, rest)) = line.split_once(" = ") else { continue };
        if !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        if indent != 4 + 2 * groups.len() {
            continue;
        }
        let dotted = groups.iter().map(|(_, g)| format!("{g}.")).collect::<String>() + name;
        if rest.starts_with("lib.mkOption") || rest.starts_with("lib.mkEnableOption") {
            options.push(dotted);
        } else if rest == "{" {
            groups.push((indent, name.to_owned()));
        }
    }
    options
}
