//! PURE: the server's deploy keys through a rotation, and when a key is about to expire.
//!
//! A key is `next` (made by `berth keys rotate deploy`: announced, and co-signing every
//! manifest), `current` (the key whose signature is the envelope's `signature`, the one an
//! agent that predates rotation verifies), `retiring` (every enrolled host acknowledged the next
//! key, so it signs no more and is announced as retired, until no host lists it any longer) and
//! `retired`. States only move forward, so the announcement's epoch — the sum of every key's
//! state rank — grows with every change, the same on every replica, with nothing to store.

use std::fmt;
use std::str::FromStr;

/// A deploy key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyState {
    /// Announced and co-signing, waiting for every host's acknowledgement.
    Next,
    /// Signs every manifest.
    Current,
    /// Signs nothing; announced as retired until no host trusts it.
    Retiring,
    /// Gone.
    Retired,
}

impl KeyState {
    /// The database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Current => "current",
            KeyState::Retiring => "retiring",
            KeyState::Retired => "retired",
        }
    }

    fn rank(self) -> u64 {
        match self {
            KeyState::Next => 1,
            KeyState::Current => 2,
            KeyState::Retiring => 3,
            KeyState::Retired => 4,
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name the database should never hold.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown deploy key state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for KeyState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "next" => KeyState::Next,
            "current" => KeyState::Current,
            "retiring" => KeyState::Retiring,
            "retired" => KeyState::Retired,
            other => return Err(UnknownState(other.to_owned())),
        })
    }
}

/// One deploy key as recorded (its public half; the secret is not needed to decide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// Public key, Nix format.
    pub public: String,
    /// Its state.
    pub state: KeyState,
    /// When it was made (Unix seconds).
    pub created_at: i64,
    /// When it last changed state (Unix seconds).
    pub changed_at: i64,
}

/// Why `berth keys rotate deploy` is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotateError {
    /// A rotation is still in progress.
    #[error("deploy key {0} is still waiting for hosts' acknowledgement; finish that rotation first")]
    InProgress(String),
    /// There is no current key to announce the next one with.
    #[error("there is no current deploy key")]
    NoCurrent,
}

/// Whether a new next key may be made now.
pub fn may_rotate(keys: &[KeyRecord]) -> Result<(), RotateError> {
    if let Some(next) = keys.iter().find(|k| k.state == KeyState::Next) {
        return Err(RotateError::InProgress(next.public.clone()));
    }
    if !keys.iter().any(|k| k.state == KeyState::Current) {
        return Err(RotateError::NoCurrent);
    }
    Ok(())
}

/// The announcement's epoch for this key set.
pub fn epoch(keys: &[KeyRecord]) -> u64 {
    keys.iter().map(|k| k.state.rank()).sum()
}

/// Who signs a manifest and what is announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The envelope's `signature` (what an agent before rotation verifies).
    pub primary: &'a KeyRecord,
    /// Further signatures (the next key).
    pub cosigners: Vec<&'a KeyRecord>,
    /// Announced as trusted: the current and the next key.
    pub announced: Vec<&'a KeyRecord>,
    /// Announced as retired: retiring keys.
    pub retired: Vec<&'a KeyRecord>,
}

/// The envelope for this key set, if it has a current key.
pub fn envelope(keys: &[KeyRecord]) -> Option<Envelope<'_>> {
    let primary = keys.iter().find(|k| k.state == KeyState::Current)?;
    let cosigners: Vec<_> = keys.iter().filter(|k| k.state == KeyState::Next).collect();
    let mut announced = vec![primary];
    announced.extend(cosigners.iter().copied());
    let retired = keys.iter().filter(|k| k.state == KeyState::Retiring).collect();
    Some(Envelope { primary, cosigners, announced, retired })
}

/// Whether an agent that listed `trusted` (its [`crate::deploy::keyset::KEYS_HEADER`]) must be
/// told the announcement now, without waiting for its next generation: it does not list
/// every key in service, or still lists a retiring one — and it trusts a key that signs the
/// announcement, so it can apply it (else answering would only make it ask again at once).
pub fn needs_announcement(envelope: &Envelope<'_>, trusted: &[String]) -> bool {
    let lists = |k: &&KeyRecord| trusted.contains(&k.public);
    let can_verify = lists(&envelope.primary) || envelope.cosigners.iter().any(lists);
    let behind = !envelope.announced.iter().all(lists) || envelope.retired.iter().any(lists);
    can_verify && behind
}

/// A name for the key that follows `current` (`berth-deploy-1` → `berth-deploy-2`; a name
/// without a number gets `-2`), not among `taken`.
pub fn next_key_name(current: &str, taken: &[&str]) -> String {
    let (stem, n) = match current.rsplit_once('-') {
        Some((stem, n)) if !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit()) => {
            (stem, n.parse::<u64>().unwrap_or(1))
        }
        _ => (current, 1),
    };
    (n + 1..)
        .map(|i| format!("{stem}-{i}"))
        .find(|name| !taken.contains(&name.as_str()))
        .expect("an unbounded range has a free name")
}

/// What one enrolled host last acknowledged (the keys it trusts), if it ever did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAck {
    /// The host.
    pub host: String,
    /// The keys its agent listed, Nix format; `None`: it never said (an agent before
    /// rotation, or one that has not polled since).
    pub keys: Option<Vec<String>>,
}

impl HostAck {
    fn lists(&self, public: &str) -> bool {
        self.keys.as_ref().is_some_and(|ks| ks.iter().any(|k| k == public))
    }
}

/// One state change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key (public, Nix format).
    pub public: String,
    /// Its state now.
    pub from: KeyState,
    /// Its new state.
    pub to: KeyState,
}

fn change(k: &KeyRecord, to: KeyState) -> Change {
    Change { public: k.public.clone(), from: k.state, to }
}

/// The changes the hosts' acknowledgements allow: every host lists the next key → the current
/// key starts retiring and the next becomes current; no host lists a retiring key → retired.
/// A host that never acknowledges holds the old key in service (see [`waiting_for`]).
pub fn step(keys: &[KeyRecord], hosts: &[HostAck]) -> Vec<Change> {
    let mut changes = Vec::new();
    for k in keys.iter().filter(|k| k.state == KeyState::Retiring) {
        if !hosts.iter().any(|h| h.lists(&k.public)) {
            changes.push(change(k, KeyState::Retired));
        }
    }
    let next = keys.iter().find(|k| k.state == KeyState::Next);
    let current = keys.iter().find(|k| k.state == KeyState::Current);
    if let (Some(next), Some(current)) = (next, current) {
        if hosts.iter().all(|h| h.lists(&next.public)) {
            changes.push(change(current, KeyState::Retiring));
            changes.push(change(next, KeyState::Current));
        }
    }
    changes
}

/// The hosts that have not acknowledged the next key (empty without a rotation).
pub fn waiting_for<'a>(keys: &[KeyRecord], hosts: &'a [HostAck]) -> Vec<&'a str> {
    match keys.iter().find(|k| k.state == KeyState::Next) {
        Some(next) => hosts.iter().filter(|h| !h.lists(&next.public)).map(|h| h.host.as_str()).collect(),
        None => Vec::new(),
    }
}

/// When a key expires: `max_age` seconds after its creation; for a current key with a next
/// key waiting, the transition's deadline `transition` seconds after the rotation began
/// (the next key's creation), if that is sooner.
pub fn expires_at(
    key: &KeyRecord,
    max_age: Option<i64>,
    next_created: Option<i64>,
    transition: Option<i64>,
) -> Option<i64> {
    let by_age = max_age.map(|a| key.created_at.saturating_add(a));
    let by_transition = match (key.state, next_created, transition) {
        (KeyState::Current, Some(started), Some(t)) => Some(started.saturating_add(t)),
        _ => None,
    };
    match (by_age, by_transition) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether to raise `key_expiring` now for a key that expires at `expires_at`: inside the
/// warning `lead` and not yet warned for this expiry (`warned_for`: the expiry last warned
/// about, so a key warns once per expiry, not every tick, and again if its expiry moves).
pub fn warn_due(expires_at: Option<i64>, lead: i64, now: i64, warned_for: Option<i64>) -> Option<i64> {
    let at = expires_at?;
    (now >= at.saturating_sub(lead) && warned_for != Some(at)).then_some(at)
}

#[cfg(test)]
#[path = "rotation_tests.rs"]
mod tests;
