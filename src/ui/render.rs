//! The dashboard's templates (`templates/*.html`, embedded in the binary) and the one way a
//! page is rendered. Every template name ends in `.html`, so minijinja escapes every value
//! it prints: host names, commit messages, reasons and log lines cannot become markup.
//!
//! The environment is a process-wide constant built from constant strings on first use
//! (it holds no state; a lib test builds and renders every template).

use std::sync::LazyLock;

use axum::{
    http::header,
    response::{IntoResponse, Response},
};
use minijinja::Environment;

/// Every template, by name.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("error.html", include_str!("templates/error.html")),
    ("fleet.html", include_str!("templates/fleet.html")),
    ("host.html", include_str!("templates/host.html")),
    ("builds.html", include_str!("templates/builds.html")),
    ("rollouts.html", include_str!("templates/rollouts.html")),
    ("build.html", include_str!("templates/build.html")),
    ("cache.html", include_str!("templates/cache.html")),
    ("retention.html", include_str!("templates/retention.html")),
    ("confirm.html", include_str!("templates/confirm.html")),
    ("done.html", include_str!("templates/done.html")),
];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        env.add_template(name, source).expect("embedded templates parse (tested in ui::render)");
    }
    env
});

/// Renders template `name` with `ctx` to its HTML text.
pub fn html(name: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
    ENV.get_template(name)?.render(ctx)
}

/// Renders template `name` with `ctx` as a 200 `text/html` response.
pub fn page(name: &str, ctx: minijinja::Value) -> Result<Response, minijinja::Error> {
    let body = html(name, ctx)?;
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response())
}

#[cfg(test)]
mod tests {
    use minijinja::context;

    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in TEMPLATES {
            assert!(ENV.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn values_are_escaped() {
        let page = html("error.html", context! { status => 400, message => "<script>alert(1)</script>&\"'" }).unwrap();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;&amp;&quot;&#x27;"), "{page}");
        assert!(page.contains(r#"<meta name="viewport""#), "readable on a phone: {page}");
    }

    /// Each page with the values its handler passes, so a template that fails at run time
    /// fails here.
    #[test]
    fn every_page_renders() {
        let evil = "<b>x</b>";
        let host = context! { name => "web-1", desired => 3, current => 2, state => "rolled_back", tone => "bad",
        reason => evil, last_seen => "2026-01-01 00:00:00", offline => false, paused => true, commit => "0123456789ab",
        signer => evil, last_build => "#12 deployed 3", last_build_id => 12, store_path => "/nix/store/x-y" };
        let entry = context! { at => "t", phase => "failed", message => evil, took => "1.0 s", tail => evil };
        let generation = context! { number => 3, created => "t", branch => "rollback-to-1", commit => "0123", signer => evil,
        build_id => 4, outcome => "failed", tone => "bad", reason => evil, profile => 5,
        store_path => "/nix/store/aaaa-gtk+3", log => vec![entry] };
        let build = context! { id => 4, repository => "fleet", branch => "main", commit => "0123", commit_full => "0123",
        state => "running", tone => "busy", reason => evil, created => "t", took => "4 s" };
        let base = |nav: &str| context! { nav, viewer => "admin", csrf => "tok" };
        let pages = [
            ("login.html", context! { next => "/ui/", error => evil }),
            ("fleet.html", context! { hosts => vec![host.clone()], ..base("fleet") }),
            ("host.html", context! { name => "web-1", host, generations => vec![generation], ..base("fleet") }),
            (
                "builds.html",
                context! { builds => vec![build.clone()], states => vec!["queued"], state => "queued", ..base("builds") },
            ),
            (
                "build.html",
                context! { build => build.clone(), live => true, hosts => vec![context! { host => "web-1", state => "failed", error => evil }],
                commits => vec![context! { commit => "0123456789abcdef", verdict => "trusted", signer => evil }], ..base("builds") },
            ),
            ("build.html", context! { build, live => false, log => evil, ..base("builds") }),
            (
                "cache.html",
                context! { paths => 3, recent => vec![context! { store_path => evil, size => "1 B" }], keys => vec!["k:1"], ..base("cache") },
            ),
            (
                "retention.html",
                context! { summary => evil, dropped => vec![("web-1", 1)], pins => vec![context! { name => evil }], ..base("retention") },
            ),
            (
                "confirm.html",
                context! { question => evil, action => "/ui/gc", hidden => vec![context! { name => "keep", value => 2 }], plan => evil, ..base("retention") },
            ),
            ("done.html", context! { message => evil, back => "/ui/", details => evil, ..base("retention") }),
        ];
        for (name, ctx) in pages {
            let page = html(name, ctx).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(!page.contains(evil), "{name} printed markup: {page}");
        }
        let host_page = html("host.html", context! { name => "w", generations => vec![context! { number => 1, store_path => "/nix/store/a-gtk+3" }], viewer => "admin" }).unwrap();
        assert!(host_page.contains("a-gtk%2B3"), "query values are URL-encoded (a + is no space): {host_page}");
    }
}
