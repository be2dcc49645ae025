//! PURE: whether a presented enrollment code may enroll a host, given the stored code it
//! names. The decision only; the conditional UPDATE that makes the code used is the
//! database's (`db/enroll.rs`), so two requests with one code cannot both win.

use super::code::{hash_matches, PresentedCode};

/// What is stored about a code.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredCode {
    /// SHA-256 of the code.
    pub hash: String,
    /// The host it was made for.
    pub host: String,
    /// When it stops working (Unix seconds).
    pub expires_at: i64,
    /// When it was used, if it was.
    pub used_at: Option<i64>,
}

/// Why a code is refused. Unknown and wrong-host are 401, used and expired 410.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such code (or a wrong secret for a known id): the two are not told apart.
    #[error("unknown enrollment code")]
    Unknown,
    /// A valid code made for another host.
    #[error("this enrollment code was made for another host")]
    OtherHost,
    /// Already used once.
    #[error("this enrollment code was already used: make a new one with `berth hosts add`")]
    Used,
    /// Past its expiry.
    #[error("this enrollment code has expired: make a new one with `berth hosts add`")]
    Expired,
}

/// Judges `presented` for `host` (`None`: whichever host the code was made for) at `now`
/// against the stored code it names (`None`: no code has that id). The hash is compared
/// first, so a guessed id alone learns nothing.
pub fn judge(
    presented: &PresentedCode,
    host: Option<&str>,
    stored: Option<&StoredCode>,
    now: i64,
) -> Result<(), Refusal> {
    let stored = stored.filter(|s| hash_matches(&presented.hash, &s.hash)).ok_or(Refusal::Unknown)?;
    if host.is_some_and(|h| h != stored.host) {
        return Err(Refusal::OtherHost);
    }
    if stored.used_at.is_some() {
        return Err(Refusal::Used);
    }
    if stored.expires_at <= now {
        return Err(Refusal::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judgements() {
        let presented = PresentedCode { id: "i".into(), hash: "h".repeat(64) };
        let fresh = StoredCode { hash: "h".repeat(64), host: "web-1".into(), expires_at: 100, used_at: None };
        let check = |stored: Option<StoredCode>, host: Option<&str>, now: i64, expected: Result<(), Refusal>| {
            assert_eq!(judge(&presented, host, stored.as_ref(), now), expected, "{stored:?} {host:?} {now}");
        };
        check(Some(fresh.clone()), Some("web-1"), 99, Ok(()));
        check(Some(fresh.clone()), None, 99, Ok(()));
        check(None, Some("web-1"), 99, Err(Refusal::Unknown));
        check(Some(StoredCode { hash: "g".repeat(64), ..fresh.clone() }), Some("web-1"), 99, Err(Refusal::Unknown));
        check(Some(fresh.clone()), Some("web-2"), 99, Err(Refusal::OtherHost));
        check(Some(StoredCode { used_at: Some(50), ..fresh.clone() }), Some("web-1"), 99, Err(Refusal::Used));
        check(Some(fresh.clone()), Some("web-1"), 100, Err(Refusal::Expired));
        // A wrong secret for another host's code says nothing about that host.
        check(Some(StoredCode { hash: "g".repeat(64), ..fresh }), Some("web-2"), 99, Err(Refusal::Unknown));
    }
}
