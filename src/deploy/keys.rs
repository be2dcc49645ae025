//! The server's deploy keys at work: which key signs a manifest, which co-sign it, what is
//! announced, and the rotation moving on as hosts acknowledge (the decisions are
//! `rotation`'s; the records `db::deploy_keys`).
//!
//! The key ring is read from the database and kept in memory: at start, after every change
//! made here, on every tick (a few seconds) with PostgreSQL, where another replica may change
//! it, and before each manifest is signed there, so a replica never signs with a key another
//! one retired. An agent's long-poll compares what it trusts with the ring in memory and, when
//! it is behind, is answered the announcement at once (`{"keys": …}`, no manifest).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::keyset::{Announcement, SignedAnnouncement};
use super::manifest::{Manifest, SignedManifest};
use super::rotation::{self, Change, KeyRecord, KeyState, RotateError};
use crate::app::AppState;
use crate::config::KeysPolicy;
use crate::db::{Db, DbError, DeployKeyRow};
use crate::events::Event;
use crate::nixfmt::{key_name, KeyError, SecretKey};

/// How often the rotation is looked at: acknowledgements recorded by the long-polls move it
/// on within this time (and a change made on another replica is seen within it).
const TICK: Duration = Duration::from_secs(3);

/// How often the keys' expiry is looked at (when `[keys]` gives them one).
const EXPIRY_CHECK: Duration = Duration::from_secs(60);

/// Why the deploy keys cannot be used or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// No key is current (a database edited by hand).
    #[error("no deploy key is current")]
    NoCurrent,
    /// A key in service whose secret berth does not have.
    #[error("deploy key {0} is in service but its secret is neither in the database nor deploy_key_file")]
    NoSecret(String),
    /// A stored secret does not parse.
    #[error("deploy key {public}: stored secret: {source}")]
    BadSecret {
        /// The key.
        public: String,
        /// Why.
        source: KeyError,
    },
    /// `berth keys rotate deploy` refused.
    #[error(transparent)]
    Rotate(#[from] RotateError),
    /// Another rotation began at the same moment.
    #[error("another rotation was started at the same time; see berth keys status")]
    Raced,
    /// The next key could not be made.
    #[error("cannot make a deploy key: {0}")]
    Generate(KeyError),
}

/// The deploy keys as they are now, with their secrets.
#[derive(Debug)]
pub struct KeyRing {
    records: Vec<KeyRecord>,
    primary: SecretKey,
    cosigners: Vec<SecretKey>,
    announcement: SignedAnnouncement,
    epoch: u64,
}

impl KeyRing {
    fn resolve(rows: Vec<DeployKeyRow>, file_key: &SecretKey) -> Result<Self, KeysError> {
        let secret_of = |row: &DeployKeyRow| -> Result<SecretKey, KeysError> {
            match &row.secret {
                Some(text) => SecretKey::parse(text)
                    .map_err(|source| KeysError::BadSecret { public: row.record.public.clone(), source }),
                None if file_key.public().to_nix_string() == row.record.public => Ok(file_key.clone()),
                None => Err(KeysError::NoSecret(row.record.public.clone())),
            }
        };
        let records: Vec<KeyRecord> = rows.iter().map(|r| r.record.clone()).collect();
        let envelope = rotation::envelope(&records).ok_or(KeysError::NoCurrent)?;
        let find = |k: &KeyRecord| rows.iter().find(|r| r.record.public == k.public).expect("from these rows");
        let primary = secret_of(find(envelope.primary))?;
        let cosigners = envelope.cosigners.iter().map(|k| secret_of(find(k))).collect::<Result<Vec<_>, _>>()?;
        let epoch = rotation::epoch(&records);
        let announced = Announcement {
            epoch,
            keys: envelope.announced.iter().map(|k| k.public.clone()).collect(),
            retired: envelope.retired.iter().map(|k| k.public.clone()).collect(),
        };
        let signers: Vec<&SecretKey> = std::iter::once(&primary).chain(&cosigners).collect();
        let announcement = announced.sign(&signers);
        Ok(Self { records, primary, cosigners, announcement, epoch })
    }

    /// Signs `manifest`: with the current key alone for an agent that sent no key list (it
    /// predates rotation and gets what it always got), else co-signed by the next key and with
    /// the announcement.
    pub fn sign(&self, manifest: &Manifest, rotation_aware: bool) -> SignedManifest {
        if !rotation_aware {
            return manifest.sign(&self.primary);
        }
        let cosigners: Vec<&SecretKey> = self.cosigners.iter().collect();
        manifest.sign_rotating(&self.primary, &cosigners, self.announcement.clone())
    }

    /// The announcement of this key set.
    pub fn announcement(&self) -> &SignedAnnouncement {
        &self.announcement
    }

    /// Whether an agent that trusts `trusted` must be told the announcement now.
    pub fn needs_announcement(&self, trusted: &[String]) -> bool {
        rotation::envelope(&self.records).is_some_and(|e| rotation::needs_announcement(&e, trusted))
    }

    /// The current key's public half (what a new host is configured to trust).
    pub fn current_public(&self) -> String {
        self.primary.public().to_nix_string()
    }

    /// Whether a rotation is under way (a next key, or a key still retiring).
    fn rotating(&self) -> bool {
        self.records.iter().any(|k| matches!(k.state, KeyState::Next | KeyState::Retiring))
    }
}

/// The deploy keys of this server process.
pub struct DeployKeys {
    file_key: SecretKey,
    ring: RwLock<Arc<KeyRing>>,
    /// Wakes the rotation driver (an acknowledgement changed).
    poke: tokio::sync::Notify,
    /// What each host's agent listed last, as this process saw it: a changed list is
    /// recorded when the poll begins, not when it ends, so a rotation moves on at once.
    seen: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl DeployKeys {
    /// Records the key of `deploy_key_file` and reads the ring. `file_existed`: the file was
    /// there (not made just now); a key made because the file was missing never takes over
    /// from keys already recorded (a deleted file is not a rotation).
    pub async fn open(db: &Db, file_key: SecretKey, file_existed: bool) -> Result<Self, KeysError> {
        let public = file_key.public().to_nix_string();
        if file_existed || db.deploy_keys().await?.is_empty() {
            if db.seed_deploy_key(&public).await? {
                tracing::info!(key = %public, "deploy key recorded as current");
            }
        } else {
            tracing::warn!(key = %public, "deploy_key_file was missing and a new key was made; the recorded deploy keys stay in service");
        }
        let ring = KeyRing::resolve(db.deploy_keys().await?, &file_key)?;
        Ok(Self { file_key, ring: RwLock::new(Arc::new(ring)), poke: Default::default(), seen: Default::default() })
    }

    /// Host `host`'s agent lists `keys` (normalised): whether that is news to this process
    /// (then the caller records it, and the driver looks at the rotation at once).
    pub fn acknowledged(&self, host: &str, keys: &str) -> bool {
        let mut seen = self.seen.lock().expect("acknowledgements lock");
        if seen.get(host).is_some_and(|k| k == keys) {
            return false;
        }
        seen.insert(host.to_owned(), keys.to_owned());
        if self.ring().rotating() {
            self.poke.notify_one();
        }
        true
    }

    /// The ring in memory.
    pub fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.ring.read().expect("key ring lock"))
    }

    /// The ring read again from the database; whether it changed (its epoch) with it.
    pub async fn refresh(&self, db: &Db) -> Result<(Arc<KeyRing>, bool), KeysError> {
        let ring = self.read(db).await?;
        let mut held = self.ring.write().expect("key ring lock");
        let changed = held.epoch != ring.epoch;
        *held = Arc::clone(&ring);
        Ok((ring, changed))
    }

    /// The ring as the database has it now, leaving the one in memory alone: only the
    /// driver's tick (and a rotation made here) replaces that, so the tick sees every change
    /// and wakes the long-polls for it.
    async fn read(&self, db: &Db) -> Result<Arc<KeyRing>, KeysError> {
        Ok(Arc::new(KeyRing::resolve(db.deploy_keys().await?, &self.file_key)?))
    }

    /// The ring to sign with: read again when replicas share the database.
    pub async fn for_signing(&self, db: &Db) -> Result<Arc<KeyRing>, KeysError> {
        if db.is_shared() {
            self.read(db).await
        } else {
            Ok(self.ring())
        }
    }

    /// `berth keys rotate deploy`: makes the next key (its secret stored in the database, so
    /// every replica signs with it at once). Refused while a rotation waits for hosts. The
    /// caller wakes the long-polls, so every agent is told now.
    pub async fn rotate(&self, db: &Db) -> Result<KeyRecord, KeysError> {
        let ring = self.read(db).await?;
        rotation::may_rotate(&ring.records)?;
        let taken: Vec<&str> = ring.records.iter().map(|k| key_name(&k.public)).collect();
        let name = rotation::next_key_name(ring.primary.name(), &taken);
        let next = SecretKey::generate(&name).map_err(KeysError::Generate)?;
        let public = next.public().to_nix_string();
        if !db.add_next_deploy_key(&public, &next.to_nix_string()).await? {
            return Err(KeysError::Raced);
        }
        tracing::info!(key = %public, "deploy key rotation started: the next key co-signs every manifest");
        let (ring, _) = self.refresh(db).await?;
        Ok(ring.records.iter().find(|k| k.public == public).cloned().expect("just added"))
    }

    /// One look at the rotation: the changes the hosts' acknowledgements allow, applied.
    async fn tick(&self, db: &Db, pushed: &[&str]) -> Result<(Vec<Change>, bool), KeysError> {
        let (ring, mut changed) =
            if db.is_shared() || self.ring().rotating() { self.refresh(db).await? } else { (self.ring(), false) };
        if !ring.rotating() {
            return Ok((Vec::new(), changed));
        }
        let acks: Vec<_> = waited_for(db, pushed).await?.into_iter().map(|(ack, _)| ack).collect();
        let changes = rotation::step(&ring.records, &acks);
        if !changes.is_empty() && db.change_deploy_keys(&changes).await? > 0 {
            changed |= self.refresh(db).await?.1;
        }
        Ok((changes, changed))
    }

    /// The `key_expiring` warnings due now under `policy`, each recorded first, so a key
    /// warns once per expiry (and again if its expiry moves), on one replica only.
    async fn expiring(&self, db: &Db, policy: &KeysPolicy) -> Result<Vec<Event>, KeysError> {
        let rows = db.deploy_keys().await?;
        let next_created = rows.iter().find(|r| r.record.state == KeyState::Next).map(|r| r.record.created_at);
        let now = crate::db::now();
        let mut due = Vec::new();
        for row in rows.iter().filter(|r| matches!(r.record.state, KeyState::Current | KeyState::Next)) {
            let at = rotation::expires_at(&row.record, policy.deploy_max_age, next_created, policy.transition);
            if let Some(at) = rotation::warn_due(at, policy.warn_lead, now, row.warned_for) {
                if db.warn_deploy_key(&row.record.public, at).await? {
                    let (key, state) = (row.record.public.clone(), row.record.state.as_str().to_owned());
                    tracing::warn!(key = %key, state = %state, expires_at = at, "deploy key expires soon");
                    due.push(Event::KeyExpiring { key, state, expires_at: at });
                }
            }
        }
        Ok(due)
    }

    /// What `berth keys status` shows.
    pub async fn status(&self, db: &Db, pushed: &[&str]) -> Result<KeysStatus, KeysError> {
        let ring = self.read(db).await?;
        let acks = waited_for(db, pushed).await?;
        let plain: Vec<_> = acks.iter().map(|(a, _)| a.clone()).collect();
        let waiting_for = rotation::waiting_for(&ring.records, &plain).into_iter().map(str::to_owned).collect();
        Ok(KeysStatus {
            epoch: ring.epoch,
            keys: ring.records.iter().map(KeyView::of).collect(),
            waiting_for,
            hosts: acks.into_iter().map(|(a, at)| HostKeysView { host: a.host, trusts: a.keys, since: at }).collect(),
            cache: None,
        })
    }
}

/// Moves rotations on as hosts acknowledge, and wakes the long-polls when the keys change
/// (here or on another replica), so every agent behind them is told at once.
///
/// With `[keys]` ages set, it also raises `key_expiring` for a key in service: at start, every
/// minute, and when the keys change.
pub async fn run(state: AppState, stop: CancellationToken) {
    let keys = &state.deploy_keys;
    let policy = state.config.keys;
    // The cache key's age counts from its first use, recorded whether or not it may expire.
    let cache_key = state.signing_key.public().to_nix_string();
    if let Err(e) = state.db.use_cache_key(&cache_key).await {
        tracing::warn!(error = %e, "cannot record the cache key's first use");
    }
    let mut looked: Option<tokio::time::Instant> = None;
    loop {
        let mut changed = false;
        match keys.tick(&state.db, &pushed_hosts(&state)).await {
            Ok((changes, keys_changed)) => {
                for c in &changes {
                    tracing::info!(key = %c.public, from = %c.from, to = %c.to, "deploy key changed state");
                }
                if keys_changed {
                    state.deploys.wake_all();
                }
                changed = keys_changed || !changes.is_empty();
            }
            Err(e) => tracing::warn!(error = %e, "deploy key rotation: cannot look at the acknowledgements"),
        }
        if policy.expires() && (changed || looked.map_or(true, |t| t.elapsed() >= EXPIRY_CHECK)) {
            looked = Some(tokio::time::Instant::now());
            match keys.expiring(&state.db, &policy).await {
                Ok(due) => due.into_iter().for_each(|e| state.events.publish(e)),
                Err(e) => tracing::warn!(error = %e, "deploy keys: cannot look at their expiry"),
            }
            match cache_key_expiring(&state.db, &policy, &cache_key).await {
                Ok(due) => due.into_iter().for_each(|e| state.events.publish(e)),
                Err(e) => tracing::warn!(error = %e, "cache key: cannot look at its expiry"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
            () = keys.poke.notified() => {}
        }
    }
}

/// The hosts a rotation waits for: every host with a live token except those berth pushes
/// to (`delivery = "push"`), which verify no manifests (a token left from before they were
/// pushed would hold the rotation for ever).
async fn waited_for(db: &Db, pushed: &[&str]) -> Result<Vec<(rotation::HostAck, Option<i64>)>, DbError> {
    let mut acks = db.deploy_key_acks().await?;
    acks.retain(|(ack, _)| !pushed.contains(&ack.host.as_str()));
    Ok(acks)
}

/// The hosts of the configuration berth pushes to.
pub fn pushed_hosts(state: &AppState) -> Vec<&str> {
    state.config.repositories.iter().flat_map(|r| r.push.keys().map(String::as_str)).collect()
}

/// `key_expiring` for the cache key when it is due (`[keys] cache_max_age_days` from its
/// first use), recorded first, so it is raised once per expiry on one replica.
async fn cache_key_expiring(db: &Db, policy: &KeysPolicy, public: &str) -> Result<Option<Event>, DbError> {
    let Some(max_age) = policy.cache_max_age else { return Ok(None) };
    // Not recorded: the start could not write it (logged); nothing to count from.
    let Some(row) = db.cache_key(public).await? else { return Ok(None) };
    let expires = Some(row.first_used.saturating_add(max_age));
    let Some(at) = rotation::warn_due(expires, policy.warn_lead, crate::db::now(), row.warned_for) else {
        return Ok(None);
    };
    if !db.warn_cache_key(public, at).await? {
        return Ok(None);
    }
    tracing::warn!(key = %public, expires_at = at, "cache key expires soon: rotate it (docs/keys.md)");
    Ok(Some(Event::KeyExpiring { key: public.to_owned(), state: "cache".into(), expires_at: at }))
}

/// The cache key in [`KeysStatus`]: since when berth signs with it, and its expiry (`None`
/// until its first use is recorded).
pub async fn cache_key_view(db: &Db, policy: &KeysPolicy, public: &str) -> Result<Option<CacheKeyView>, DbError> {
    let Some(row) = db.cache_key(public).await? else { return Ok(None) };
    let expires_at = policy.cache_max_age.map(|age| row.first_used.saturating_add(age));
    Ok(Some(CacheKeyView { public_key: row.public_key, first_used: row.first_used, expires_at }))
}

/// The cache signing key, as `GET /api/v1/keys/deploy` shows it beside the deploy keys.
#[derive(Debug, Clone, Serialize)]
pub struct CacheKeyView {
    /// Public key, Nix format.
    pub public_key: String,
    /// When berth first signed with it (Unix seconds).
    pub first_used: i64,
    /// When it expires under `[keys] cache_max_age_days` (none: never).
    pub expires_at: Option<i64>,
}

/// One key in [`KeysStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    /// Public key, Nix format.
    pub public_key: String,
    /// `next`, `current`, `retiring` or `retired`.
    pub state: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of its last state change.
    pub changed_at: i64,
}

impl KeyView {
    /// The view of one record.
    pub fn of(k: &KeyRecord) -> Self {
        Self {
            public_key: k.public.clone(),
            state: k.state.as_str(),
            created_at: k.created_at,
            changed_at: k.changed_at,
        }
    }
}

/// One host in [`KeysStatus`].
#[derive(Debug, Clone, Serialize)]
pub struct HostKeysView {
    /// The host.
    pub host: String,
    /// The keys its agent last listed; `null`: it never did (an agent before rotation, or
    /// one that has not polled since).
    pub trusts: Option<Vec<String>>,
    /// When it started listing them (Unix seconds).
    pub since: Option<i64>,
}

/// `GET /api/v1/keys/deploy`.
#[derive(Debug, Clone, Serialize)]
pub struct KeysStatus {
    /// The announcement's epoch.
    pub epoch: u64,
    /// Every key, oldest first.
    pub keys: Vec<KeyView>,
    /// The hosts a rotation waits for (their agents have not listed the next key).
    pub waiting_for: Vec<String>,
    /// Every host with a live token and what its agent trusts.
    pub hosts: Vec<HostKeysView>,
    /// The cache signing key (filled by the API).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheKeyView>,
}
