//! The dashboard in a real headless Chromium (`browser.rs`) against a real berth with a real
//! fleet (the test flake, real builds, a real agent): a page without a token is refused, a
//! read token sees every page but cannot act, the live log of a running build advances, a
//! rollback confirmed in the UI reaches the agent, forged forms are refused, and what hosts
//! report is shown as text, never as markup. A screenshot of each page is kept in
//! `target/ui-screenshots/` for review.

use std::time::Duration;

use reqwest::{blocking::Client, redirect::Policy, StatusCode};
use serde_json::{json, Value};

use crate::{agent::*, browser::Browser, builds::*, fleet::*, harness::*};

/// A client that shows redirects instead of following them.
fn no_redirects() -> Client {
    Client::builder().redirect(Policy::none()).timeout(Duration::from_secs(60)).build().unwrap()
}

/// Logs the browser in with `token` and checks it landed on `expect` (a path).
fn log_in(browser: &Browser, url: &str, token: &str, expect: &str) {
    browser.goto(&format!("{url}/ui/login?next={}", expect.replace('/', "%2F")));
    browser.type_into("#token", token);
    browser.click("#login");
    browser.wait_until(10, "logged in", |b| b.url() == format!("{url}{expect}"));
}

/// The session cookie and the CSRF token of the page the browser shows (its logout form's).
fn session_of(browser: &Browser) -> (String, String) {
    let cookie = browser.cookie("berth_session");
    let csrf = browser.eval("return document.querySelector('input[name=csrf]').value;");
    (cookie["value"].as_str().unwrap().to_owned(), csrf.as_str().unwrap().to_owned())
}

/// A form POST to the dashboard with the session `cookie`, extra headers, and `fields`.
fn post_form(
    url: &str,
    path: &str,
    cookie: &str,
    headers: &[(&str, &str)],
    fields: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = no_redirects().post(format!("{url}{path}")).header("cookie", format!("berth_session={cookie}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.form(fields).send().unwrap();
    (r.status(), r.text().unwrap())
}

/// Every page, a read token, a live log, a rollback from the UI that the agent applies,
/// forged forms, hostile report text; screenshots of each page on the way.
#[test]
fn the_dashboard_in_a_real_browser() {
    let b = build_host(&["alpha", "beta"], "");
    let url = b.server.url.clone();
    let host = Host::new(&b, "alpha", "");
    let _agent = host.spawn(&b, &url);
    b.fleet.set_host("alpha", "one");
    assert!(b.submit_wait(&b.fleet.commit("main", "one", Signing::Trusted), "main").0);
    wait_report(&b, "alpha", 1, &["confirmed"]);

    // beta's "agent" reports text that would be markup if it were not escaped.
    let beta = b.server.token("host:beta");
    let hostile = json!({"generation": 1, "phase": "failed", "message": "<script>window.pwned=1</script><b>x</b>",
                         "log_tail": "</pre><img src=x onerror=\"window.pwned=2\">"});
    let r = http().post(b.api("hosts/beta/reports")).bearer_auth(&beta).json(&hostile).send().unwrap();
    assert_eq!(r.status(), 204);

    // Without a token: the page is refused, the browser lands on the login form.
    let browser = Browser::start(1280, 900);
    browser.goto(&format!("{url}/"));
    assert_eq!(browser.url(), format!("{url}/ui/login?next=%2Fui%2F"));
    assert!(browser.source().contains("Log in"), "{}", browser.source());
    browser.screenshot("login");
    browser.goto(&format!("{url}/ui/hosts/alpha"));
    assert!(browser.url().starts_with(&format!("{url}/ui/login")), "{}", browser.url());
    // A wrong token stays on the form, with 401.
    log_in_refused(&browser, &url, &b.ci);

    // A read token: the fleet, with what each host runs and should run.
    let read = b.server.token("read");
    log_in(&browser, &url, &read, "/ui/");
    let cookie = browser.cookie("berth_session");
    assert_eq!(cookie["httpOnly"], true, "{cookie}");
    assert_eq!(cookie["sameSite"], "Strict", "{cookie}");
    assert_eq!(cookie["path"], "/ui", "{cookie}");
    let alpha = browser.text("tr[data-host=alpha]");
    assert!(alpha.contains("confirmed"), "{alpha}");
    let beta_line = browser.text("tr[data-host=beta]");
    assert!(beta_line.contains("never_seen") || beta_line.contains("failed"), "{beta_line}");
    browser.screenshot("fleet");

    // The hostile report is text on beta's page; no script of it ran.
    browser.goto(&format!("{url}/ui/hosts/beta"));
    let page = browser.text("main");
    assert!(page.contains("<script>window.pwned=1</script><b>x</b>"), "{page}");
    assert!(page.contains("</pre><img src=x"), "{page}");
    assert_eq!(
        browser.eval("return [window.pwned === undefined, document.querySelectorAll('main img, main b').length];"),
        json!([true, 0])
    );
    browser.screenshot("host-escaped");

    // A read token cannot act: no buttons, the confirmation page is 403, and so is the form.
    browser.goto(&format!("{url}/ui/hosts/alpha"));
    assert!(!browser.source().contains("id=\"rollback\""), "no rollback button for a read token");
    let (read_cookie, read_csrf) = session_of(&browser);
    browser.goto(&format!("{url}/ui/hosts/alpha/rollback?to=1"));
    assert!(browser.text("#error").contains("a read token cannot do this"), "{}", browser.source());
    let (status, _) =
        post_form(&url, "/ui/hosts/alpha/rollback", &read_cookie, &[], &[("csrf", &read_csrf), ("to", "1")]);
    assert_eq!(status, 403);

    // A running build's log advances in the page.
    b.fleet.set_slow("alpha", 8);
    b.fleet.set_host("alpha", "two");
    let commit = b.fleet.commit("main", "two", Signing::Trusted);
    let body = json!({"repository": "fleet", "commit": commit, "branch": "main"});
    let build: Value = http().post(b.api("builds")).bearer_auth(&b.ci).json(&body).send().unwrap().json().unwrap();
    let id = build["id"].as_i64().unwrap();
    browser.wait_until(60, "the build runs", |_| b.build(id)["state"] == "running");
    browser.goto(&format!("{url}/ui/builds/{id}"));
    let log = |br: &Browser| br.eval("return document.getElementById('log').textContent;").as_str().unwrap().to_owned();
    browser.wait_until(30, "a first tick", |br| log(br).contains("tick 2"));
    let first = log(&browser);
    browser.screenshot("build-live");
    browser.wait_until(30, "more ticks", |br| log(br).contains("tick 6"));
    let later = log(&browser);
    let head: String = first.chars().take(40).collect();
    assert!(later.len() > first.len() && later.starts_with(&head), "the log grew in place:\n{first}\n---\n{later}");
    assert_eq!(b.wait(id)["state"], "succeeded");
    browser.wait_until(30, "the stream ends", |br| {
        br.eval("return document.getElementById('log').dataset.ended || '';") == "1"
    });
    b.fleet.set_slow("alpha", 0);
    wait_report(&b, "alpha", 2, &["confirmed"]);
    browser.goto(&format!("{url}/ui/builds/{id}"));
    assert_eq!(browser.text("#build-state"), "succeeded");
    assert!(browser.text("#log").contains("tick 8"), "the finished log is on the page");
    assert!(browser.text("tr[data-host=alpha]").contains("deployed"), "{}", browser.text("#build-hosts"));
    browser.screenshot("build-finished");
    browser.goto(&format!("{url}/ui/builds?state=succeeded"));
    assert!(browser.text("#builds").contains(&commit[..12]));
    browser.screenshot("builds");
    // Rollouts: none without a policy (tests/it/rollout.rs has a halted one).
    browser.goto(&format!("{url}/ui/rollouts"));
    assert!(browser.text("#rollouts").contains("No rollout yet"), "{}", browser.source());
    browser.screenshot("rollouts");
    browser.goto(&format!("{url}/ui/builds?state=failed"));
    assert!(browser.text("#builds").contains("No build matches"));

    // The cache and retention pages read the real index and the dry-run plan.
    browser.goto(&format!("{url}/ui/cache"));
    let paths: i64 = browser.text("#paths").parse().unwrap();
    assert!(paths >= 3, "{paths}");
    assert!(browser.text("#recent").contains("nixos-system-alpha"));
    browser.screenshot("cache");
    browser.goto(&format!("{url}/ui/retention"));
    assert!(browser.text("main").contains("would do now"), "{}", browser.source());
    browser.screenshot("retention");

    // An admin: log out, log in again, roll alpha back to 1 through the confirmation page.
    browser.goto(&format!("{url}/ui/"));
    browser.click("header form.logout button");
    browser.wait_until(10, "logged out", |br| br.url().starts_with(&format!("{url}/ui/login")));
    browser.goto(&format!("{url}/ui/"));
    assert!(browser.url().starts_with(&format!("{url}/ui/login")), "the session ended");
    let (status, _) =
        post_form(&url, "/ui/hosts/alpha/rollback", &read_cookie, &[], &[("csrf", &read_csrf), ("to", "1")]);
    assert_eq!(status, 401, "a closed session acts no more");
    log_in(&browser, &url, &b.admin, "/ui/hosts/alpha");
    // Each generation's stored closure diff (failed before: none on the page).
    let second = browser.text("#generation-2 .diff");
    assert!(second.starts_with("from generation 1: +") && second.contains(" paths to download"), "{second}");
    let first = browser.text("#generation-1 .diff");
    assert!(first.starts_with("from nothing: +") && first.contains("reboot: no"), "{first}");
    assert!(browser.text("#generation-1 details.packages").contains("Packages ("), "{}", browser.source());
    browser.screenshot("host");
    browser.click("#rollback");
    browser.wait_until(10, "the confirmation page", |br| br.url().ends_with("/ui/hosts/alpha/rollback"));
    assert!(browser.text("#question").contains("Roll alpha back"));
    browser.screenshot("confirm-rollback");

    // Forged forms with the admin's own session cookie: no CSRF token, a wrong one, another site.
    let (admin_cookie, admin_csrf) = session_of(&browser);
    for (headers, csrf, why) in [
        (vec![], "", "no CSRF token"),
        (vec![], "forged", "a wrong CSRF token"),
        (vec![("origin", "http://evil.example")], admin_csrf.as_str(), "another origin"),
        (vec![("sec-fetch-site", "cross-site")], admin_csrf.as_str(), "a cross-site fetch"),
    ] {
        let (status, page) = post_form(&url, "/ui/hosts/alpha/rollback", &admin_cookie, &headers, &[("csrf", csrf)]);
        assert_eq!(status, 403, "{why}: {page}");
    }
    assert_eq!(b.generations("alpha").len(), 2, "no forged form made a generation");

    browser.click("#confirm");
    browser.wait_until(10, "done", |br| {
        br.url().ends_with("/ui/hosts/alpha/rollback") && br.source().contains("id=\"done\"")
    });
    assert!(browser.text("#done").contains("Made generation 3 (rollback-to-1)"), "{}", browser.source());
    browser.screenshot("rollback-done");
    wait_report(&b, "alpha", 3, &["confirmed"]);
    assert_eq!(host.profile(), Some(toplevel(&b, "alpha", 1)), "the agent runs generation 1's system again");
    browser.goto(&format!("{url}/ui/hosts/alpha"));
    browser.wait_until(10, "the history shows it", |br| br.text("#generation-3").contains("confirmed"));
    assert!(browser.text("#generation-3").contains("rollback-to-1"));
    assert!(!browser.text("#generation-3").contains("Changes"), "a rollback stores no diff");

    // Pin generation 2's system from its history entry, then see the pin on the retention page.
    browser.click("#generation-2 a.pin");
    browser.wait_until(10, "the pin's confirmation", |br| br.url().contains("/ui/pins?"));
    assert_eq!(browser.eval("return document.querySelector('input[name=name]').value;"), "alpha-2");
    browser.screenshot("confirm-pin");
    browser.click("#confirm");
    browser.wait_until(10, "pinned", |br| br.source().contains("id=\"done\""));
    let second = toplevel(&b, "alpha", 2);
    assert_eq!(browser.text("#done"), format!("Pinned {second} as alpha-2."));
    browser.goto(&format!("{url}/ui/retention"));
    assert!(browser.text("tr[data-pin=alpha-2]").contains(&second));
    let pins: Value = http().get(b.api("pins")).bearer_auth(&b.admin).send().unwrap().json().unwrap();
    assert_eq!(pins[0]["name"], "alpha-2", "the API sees the dashboard's pin: {pins}");

    // The plan of a collection keeping one generation per host, then the collection.
    browser.goto(&format!("{url}/ui/gc?keep=1"));
    assert!(browser.text("#plan").starts_with("drop "), "{}", browser.text("main"));
    assert_eq!(browser.eval("return document.querySelector('input[name=keep]').value;"), "1");
    browser.screenshot("confirm-gc");
    browser.click("#confirm");
    browser.wait_until(30, "collected", |br| br.source().contains("id=\"done\""));
    assert!(browser.text("#done").starts_with("Collected:"), "{}", browser.text("main"));

    // On a phone.
    let phone = Browser::start(390, 844);
    log_in(&phone, &url, &read, "/ui/");
    let overflow = phone.eval("return document.documentElement.scrollWidth <= window.innerWidth + 1;");
    assert_eq!(overflow, true, "the page fits a phone's width (tables scroll inside their box)");
    let cards = phone.eval("return getComputedStyle(document.querySelector('#fleet thead')).display;");
    assert_eq!(cards, "none", "on a phone each host is a card, not a table row");
    phone.screenshot("fleet-phone");
    phone.goto(&format!("{url}/ui/hosts/alpha"));
    phone.screenshot("host-phone");
}

/// A `ci` token is no dashboard token: the form comes back with its error.
fn log_in_refused(browser: &Browser, url: &str, token: &str) {
    browser.goto(&format!("{url}/ui/login"));
    browser.type_into("#token", token);
    browser.click("#login");
    browser.wait_until(10, "the refusal", |br| br.source().contains("id=\"error\""));
    assert!(browser.text("#error").contains("not a live read or admin token"));
    assert!(browser.cookie_missing("berth_session"));
}

/// The refusals that need no browser: what `/` and the cache's own top-level files answer,
/// requests without a session, bad names, and the cookie a login sets.
#[test]
fn the_dashboard_refuses_without_a_session_and_leaves_the_cache_alone() {
    let s = Scratch::new();
    let server = Server::start(&s.path("data"), &[]);
    let url = &server.url;
    let client = no_redirects();
    let r = client.get(format!("{url}/")).send().unwrap();
    assert_eq!((r.status(), r.headers()["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/ui/"));
    let r = client.get(format!("{url}/nix-cache-info")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("StoreDir: /nix/store"));
    let miss = format!("{url}/{}.narinfo", "0".repeat(32));
    assert_eq!(client.get(miss).send().unwrap().status(), 404);

    let r = client.get(format!("{url}/ui/cache")).send().unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/ui/login?next=%2Fui%2Fcache");
    for path in ["/ui/gc", "/ui/pins", "/ui/hosts/alpha/rollback", "/ui/logout"] {
        let r = client.post(format!("{url}{path}")).form(&[("csrf", "x")]).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{path}");
    }
    // A forged bearer header is no way in either, and the API's tokens are not cookies.
    let r = client.get(format!("{url}/ui/")).bearer_auth("berth_forged").send().unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);

    // A login sets an HttpOnly, SameSite=Strict cookie on /ui holding a session id, not the token.
    let admin = server.token("admin");
    let r = client
        .post(format!("{url}/ui/login"))
        .form(&[("token", admin.as_str()), ("next", "/ui/cache")])
        .send()
        .unwrap();
    assert_eq!((r.status(), r.headers()["location"].to_str().unwrap()), (StatusCode::SEE_OTHER, "/ui/cache"));
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("; HttpOnly; SameSite=Strict; Path=/ui"), "{set_cookie}");
    assert!(!set_cookie.contains(&admin), "the cookie is not the token");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = |path: &str| client.get(format!("{url}{path}")).header("cookie", &cookie).send().unwrap();
    let r = page("/ui/cache");
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page("/ui/hosts/not%20a%20host").status(), 400);
    assert_eq!(page("/ui/hosts/nobody").status(), 404);
    assert_eq!(page("/ui/builds/x").status(), 400);
    assert_eq!(page("/ui/builds?state=bogus").status(), 400);
    let r = page("/ui/no/such/page");
    assert_eq!(r.status(), 404);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert_eq!(
        client.get(format!("{url}/api/v1/nothing")).send().unwrap().headers()["content-type"],
        "application/json"
    );
    // A login from another site is refused, and its `next` never leaves the dashboard.
    let r = client
        .post(format!("{url}/ui/login"))
        .header("origin", "http://evil.example")
        .form(&[("token", admin.as_str())])
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client
        .post(format!("{url}/ui/login"))
        .form(&[("token", admin.as_str()), ("next", "//evil.example/")])
        .send()
        .unwrap();
    assert_eq!(r.headers()["location"], "/ui/");

    // An operator's reverse proxy that adds a read token's bearer header: every page reads,
    // and even an admin token's header cannot act without a dashboard session.
    let read = server.token("read");
    let r = client.get(format!("{url}/ui/cache")).bearer_auth(&read).send().unwrap();
    assert_eq!(r.status(), 200);
    let r = client.post(format!("{url}/ui/gc")).bearer_auth(&admin).form(&[("csrf", "")]).send().unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("log in to the dashboard with an admin token to act"));

    // Revoking the token ends its session at once.
    let id =
        stdout_of(std::process::Command::new(berth_bin()).args(["token", "list", "--data-dir"]).arg(&server.data_dir));
    let id = id.lines().find(|l| l.contains("admin")).and_then(|l| l.split_whitespace().next()).unwrap().to_owned();
    run_ok(std::process::Command::new(berth_bin()).args(["token", "revoke", &id, "--data-dir"]).arg(&server.data_dir));
    assert_eq!(page("/ui/cache").status(), StatusCode::SEE_OTHER, "a revoked token's session is over");
}
