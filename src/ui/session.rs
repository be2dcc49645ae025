//! Dashboard sessions: a login with a `read` or `admin` token makes a server-side session
//! whose random id is the only thing the browser keeps (an HttpOnly, SameSite=Strict cookie
//! on `/ui`). The session holds the token's at-rest hash (never the token), so every request
//! checks again that the token is not revoked, and a per-session CSRF token for forms.
//!
//! Sessions live in this process's memory, keyed by the SHA-256 of their id: a restart logs
//! everyone out, and behind several replicas a load balancer must keep a browser on one
//! replica (docs/dashboard.md). Bounded: at most [`MAX_SESSIONS`], each for [`LIFETIME_SECS`].

use std::{collections::HashMap, sync::Mutex};

use axum::http::{header, HeaderMap};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use crate::auth::{hash_token, Scope};

/// The cookie's name.
pub const COOKIE: &str = "berth_session";
/// How long a session lasts after login, whatever happens (8 hours: a working day).
pub const LIFETIME_SECS: i64 = 8 * 3600;
/// Sessions kept at once; the oldest goes first when a login would pass it.
pub const MAX_SESSIONS: usize = 4096;

/// What a dashboard user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// See every page.
    Read,
    /// See every page and act (rollback, redeploy, pin, gc).
    Admin,
}

impl Role {
    /// The role of a token scope: only `read` and `admin` tokens open the dashboard (a
    /// `host:` or `push` token may read the cache, never the fleet).
    pub fn of(scope: &Scope) -> Option<Role> {
        match scope {
            Scope::Read => Some(Role::Read),
            Scope::Admin => Some(Role::Admin),
            Scope::Push | Scope::Ci | Scope::Host(_) | Scope::Metrics => None,
        }
    }
}

/// One logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The at-rest hash of the token it logged in with (checked against the index again
    /// on every request, so revoking the token ends the session).
    pub token_hash: String,
    /// The role the token had at login.
    pub role: Role,
    /// The token every form of this session carries in a hidden field.
    pub csrf: String,
    /// When it ends (Unix seconds).
    pub expires_at: i64,
}

/// The sessions of this process.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id_hash: Mutex<HashMap<String, Session>>,
}

/// A random 256-bit secret, URL-safe.
fn random_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

impl Sessions {
    /// Opens a session for a token (by its hash) with `role`; the id for the cookie.
    pub fn open(&self, token_hash: String, role: Role, now: i64) -> Result<String, getrandom::Error> {
        let id = random_secret()?;
        let session = Session { token_hash, role, csrf: random_secret()?, expires_at: now + LIFETIME_SECS };
        let mut map = self.by_id_hash.lock().expect("sessions lock");
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                map.remove(&oldest);
            }
        }
        map.insert(hash_token(&id), session);
        Ok(id)
    }

    /// The live session of cookie value `id`, if any.
    pub fn get(&self, id: &str, now: i64) -> Option<Session> {
        let key = hash_token(id);
        let mut map = self.by_id_hash.lock().expect("sessions lock");
        match map.get(&key) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                map.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session of cookie value `id`.
    pub fn close(&self, id: &str) {
        self.by_id_hash.lock().expect("sessions lock").remove(&hash_token(id));
    }
}

/// The session id a request's `Cookie` headers carry, if one is well-formed (a browser may
/// send several `Cookie` headers, each with several `name=value` pairs).
pub fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| {
            (20..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
}

/// The `Set-Cookie` value that keeps session `id` (`secure`: the dashboard is reached over
/// HTTPS, so the browser must never send it in clear).
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui; Max-Age={LIFETIME_SECS}{secure}")
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(cookies: &[&str], expected: Option<&str>) {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, c.parse().unwrap());
        }
        assert_eq!(session_id(&h).as_deref(), expected, "{cookies:?}");
    }

    #[test]
    fn session_cookie_parsing() {
        let id = "a".repeat(43);
        check(&[], None);
        check(&[&format!("berth_session={id}")], Some(&id));
        check(&[&format!("theme=dark; berth_session={id}; x=y")], Some(&id));
        check(&["theme=dark", &format!("berth_session={id}")], Some(&id));
        check(&[&format!("berth_sessionx={id}")], None);
        check(&[&format!("xberth_session={id}")], None);
        check(&["berth_session=short"], None);
        check(&[&format!("berth_session={id}<script>")], None);
        check(&[&format!("berth_session={}", "a".repeat(129))], None);
        check(&["berth_session="], None);
    }

    #[test]
    fn cookies_are_http_only_strict_and_scoped_to_the_dashboard() {
        assert_eq!(set_cookie("abc", false), "berth_session=abc; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=28800");
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert_eq!(clear_cookie(), "berth_session=; HttpOnly; SameSite=Strict; Path=/ui; Max-Age=0");
    }

    #[test]
    fn roles_only_for_read_and_admin_tokens() {
        for (scope, role) in [
            ("read", Some(Role::Read)),
            ("admin", Some(Role::Admin)),
            ("push", None),
            ("ci", None),
            ("metrics", None),
            ("host:web", None),
        ] {
            assert_eq!(Role::of(&Scope::parse(scope).unwrap()), role, "{scope}");
        }
    }

    #[test]
    fn sessions_expire_close_and_stay_bounded() {
        let sessions = Sessions::default();
        let id = sessions.open("hash".into(), Role::Read, 1000).unwrap();
        let s = sessions.get(&id, 1000).unwrap();
        assert_eq!((s.role, s.token_hash.as_str()), (Role::Read, "hash"));
        assert_ne!(s.csrf, id);
        assert!(sessions.get(&id, 1000 + LIFETIME_SECS).is_none(), "expired");
        assert!(sessions.get(&id, 1000).is_none(), "an expired session is forgotten");
        let id = sessions.open("hash".into(), Role::Admin, 1000).unwrap();
        sessions.close(&id);
        assert!(sessions.get(&id, 1000).is_none());
        let first = sessions.open("h".into(), Role::Read, 1).unwrap();
        for i in 0..MAX_SESSIONS {
            sessions.open("h".into(), Role::Read, 2 + i as i64).unwrap();
        }
        assert!(sessions.get(&first, 3).is_none(), "the oldest made room");
        assert_eq!(sessions.by_id_hash.lock().unwrap().len(), MAX_SESSIONS);
    }
}
