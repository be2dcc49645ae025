//! PURE: the dashboard's defences against cross-site requests. A form that changes anything
//! carries its session's CSRF token in a hidden field, compared in constant time; and the
//! browser's own word on where the request comes from (`Sec-Fetch-Site`, `Origin`) must say
//! this site. SameSite=Strict cookies already keep other sites' requests unauthenticated;
//! these checks hold when that does not (an old browser, a sibling subdomain).

use subtle::ConstantTimeEq;

/// Why a state-changing request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    /// The form carried no CSRF token.
    #[error("the form carried no CSRF token: reload the page and try again")]
    Missing,
    /// The form's CSRF token is not this session's.
    #[error("the form's CSRF token is not this session's: reload the page and try again")]
    Wrong,
    /// The browser says the request comes from another site.
    #[error("cross-site request refused")]
    CrossSite,
}

/// Checks a form's CSRF token against the session's, in constant time.
pub fn check_token(expected: &str, presented: Option<&str>) -> Result<(), CsrfError> {
    let presented = presented.filter(|p| !p.is_empty()).ok_or(CsrfError::Missing)?;
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        return Err(CsrfError::Wrong);
    }
    Ok(())
}

/// Checks what the browser says of a request's origin: `Sec-Fetch-Site` must be
/// `same-origin` when sent, and `Origin`, when sent, must name `host` (the request's `Host`
/// header, which a reverse proxy must pass on unchanged). A client that sends neither (curl,
/// an old browser) is judged by the CSRF token alone.
pub fn check_origin(sec_fetch_site: Option<&str>, origin: Option<&str>, host: Option<&str>) -> Result<(), CsrfError> {
    if let Some(site) = sec_fetch_site {
        if !site.eq_ignore_ascii_case("same-origin") {
            return Err(CsrfError::CrossSite);
        }
    }
    if let Some(origin) = origin {
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .filter(|a| !a.is_empty() && !a.contains('/'));
        match (authority, host) {
            (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => {}
            _ => return Err(CsrfError::CrossSite),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(expected: &str, presented: Option<&str>, result: Result<(), CsrfError>) {
        assert_eq!(check_token(expected, presented), result, "{expected:?} vs {presented:?}");
    }

    #[test]
    fn csrf_tokens() {
        check("s3cret", Some("s3cret"), Ok(()));
        check("s3cret", None, Err(CsrfError::Missing));
        check("s3cret", Some(""), Err(CsrfError::Missing));
        check("s3cret", Some("s3cre"), Err(CsrfError::Wrong));
        check("s3cret", Some("s3cret2"), Err(CsrfError::Wrong));
        check("s3cret", Some("S3CRET"), Err(CsrfError::Wrong));
        check("", Some("x"), Err(CsrfError::Wrong));
    }

    #[track_caller]
    fn origin(site: Option<&str>, origin: Option<&str>, host: Option<&str>, ok: bool) {
        assert_eq!(check_origin(site, origin, host).is_ok(), ok, "{site:?} {origin:?} {host:?}");
    }

    #[test]
    fn origins() {
        let host = Some("berth.example:8080");
        origin(None, None, host, true);
        origin(Some("same-origin"), Some("http://berth.example:8080"), host, true);
        origin(Some("same-origin"), Some("https://BERTH.example:8080"), host, true);
        origin(Some("same-site"), Some("http://berth.example:8080"), host, false);
        origin(Some("cross-site"), None, host, false);
        origin(Some("none"), None, host, false);
        origin(None, Some("http://evil.example"), host, false);
        origin(None, Some("http://berth.example:8080.evil.example"), host, false);
        origin(None, Some("http://berth.example"), host, false);
        origin(None, Some("null"), host, false);
        origin(None, Some("http://berth.example:8080/x"), host, false);
        origin(None, Some("http://berth.example:8080"), None, false);
    }
}
