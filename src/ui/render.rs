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
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&amp;&quot;&#x27;"), "{page}");
        assert!(page.contains(r#"<meta name="viewport""#), "readable on a phone: {page}");
    }
}
