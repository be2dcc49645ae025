//! Activation windows kept by the server (issue 16): per host or per group of hosts (tags,
//! patterns), read in their own time zone. A host outside its window is handed nothing
//! newer — real agents, a real build — and `berth hosts` says why; once its window is open
//! it gets the generation.

use serde_json::Value;

use crate::{agent::*, builds::*, fleet::*, harness::*};

const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// A day that is neither yesterday, today nor tomorrow anywhere on Earth: three days on.
fn a_closed_day() -> &'static str {
    let days_since_epoch =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86400;
    // 1970-01-01 was a Thursday (index 3).
    DAYS[((days_since_epoch + 3 + 3) % 7) as usize]
}

fn hosts(b: &BuildHost) -> Vec<Value> {
    http().get(b.api("hosts")).bearer_auth(&b.admin).send().unwrap().json().unwrap()
}

#[test]
fn a_host_outside_its_group_window_waits_and_gets_its_generation_once_the_window_opens() {
    let day = a_closed_day();
    // alpha is in the db group by the configuration's tags; gamma by its enrollment's.
    let windows = format!(
        "[repositories.hosts.alpha]\ntags = [\"db\"]\n[[repositories.windows]]\nhosts = [\"tag:db\"]\nactivation_windows = [\"{day} 00:00-24:00\"]\ntime_zone = \"Europe/Berlin\"\n"
    );
    let mut b = build_host_with(NixClient::Debian, &["alpha", "beta", "gamma"], &windows);
    // gamma has the tag from its enrollment alone, not from the configuration.
    let data_dir = b.server.data_dir.clone();
    run_ok(b.s.berth().args(["hosts", "add", "gamma", "--tags", "db", "--data-dir"]).arg(&data_dir));
    let hosts_of = ["alpha", "beta", "gamma"].map(|h| Host::new(&b, h, ""));
    let agents = hosts_of.each_ref().map(|h| h.spawn(&b, &b.server.url));
    assert!(b.submit_wait(&b.fleet.commit("main", "deploy", Signing::Trusted), "main").0);
    wait_report(&b, "beta", 1, &["confirmed"]);
    // alpha polls all along (seen once its first long-poll ends), but is handed nothing.
    let row_of = |name: &str| hosts(&b).into_iter().find(|h| h["name"] == name).unwrap();
    wait_for("alpha and gamma seen", || {
        row_of("alpha")["status"]["last_seen"].is_i64() && row_of("gamma")["status"]["last_seen"].is_i64()
    });
    for held in ["alpha", "gamma"] {
        assert!(reports(&b, held).is_empty(), "{held} is outside its window: {:#?}", reports(&b, held));
        assert_eq!(row_of(held)["state"]["state"], "outside_window", "{:#}", row_of(held));
    }
    assert_eq!(row_of("gamma")["tags"], serde_json::json!(["db"]), "enrolled tags are listed");
    let row = row_of("alpha");
    assert_eq!(row["state"]["state"], "outside_window", "{row:#}");
    assert_eq!(row["state"]["windows"][0], format!("{day} 00:00-24:00"), "{row:#}");
    let table = stdout_of(b.s.berth().args(["hosts", "--server", &b.server.url]).env("BERTH_TOKEN", &b.admin));
    let line = table.lines().find(|l| l.starts_with("alpha")).unwrap();
    assert!(line.contains("outside_window") && line.contains(&format!("{day} 00:00-24:00")), "{table}");

    // The window opens (every day now): the next poll hands alpha its generation.
    drop(agents);
    b.reconfigure(|config| config.replace(&format!("\"{day} 00:00-24:00\""), "\"00:00-24:00\""));
    let _agents = hosts_of.each_ref().map(|h| h.spawn(&b, &b.server.url));
    wait_report(&b, "alpha", 1, &["confirmed"]);
    wait_report(&b, "gamma", 1, &["confirmed"]);
}

/// A window that cannot be read is refused at start-up, with the key and the reason.
#[test]
fn an_invalid_window_is_refused_at_start_up() {
    let s = Scratch::new();
    let repo = "[[repositories]]\nname = \"fleet\"\nurl = \"git+file:///srv/fleet\"\nrequire_signed_commits = false\n";
    for (table, expected) in [
        (
            "[repositories.hosts.a]\nactivation_windows = [\"Moon 02:00-03:00\"]\n",
            "repositories.hosts.activation_windows",
        ),
        ("[repositories.hosts.a]\nactivation_windows = []\n", "no windows"),
        ("[repositories.hosts.a]\ntime_zone = \"Europe/Berlin\"\n", "time_zone without activation_windows"),
        (
            "[repositories.hosts.a]\nactivation_windows = [\"02:00-03:00\"]\ntime_zone = \"Mars/Olympus\"\n",
            "not a time zone",
        ),
        ("[[repositories.windows]]\nhosts = []\nactivation_windows = [\"02:00-03:00\"]\n", "selects no host"),
        ("[[repositories.windows]]\nhosts = [\"*\"]\nactivation_windows = [\"25:00-26:00\"]\n", "windows entry 1"),
    ] {
        let config = s.path("bad.toml");
        std::fs::write(&config, format!("{repo}{table}")).unwrap();
        let out = s.berth().args(["check-config"]).arg(&config).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table} was accepted");
        assert!(stderr.contains(expected), "{table}: {stderr}");
    }
}
