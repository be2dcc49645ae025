//! `AppState` (built eagerly, cheap to clone) and `serve`: open storage and the index, load
//! or generate the signing key, sweep crash leftovers, then run the HTTP server until the
//! shutdown future resolves.

use std::{future::Future, sync::Arc};

use bytes::Bytes;

use tokio::net::TcpListener;

use crate::{
    build::Queue,
    config::{CacheConfig, Config, KeySource},
    db::{Db, DbError, PublishGate},
    metrics::Metrics,
    nixfmt::{KeyError, PublicKey, SecretKey},
    store::{ObjectKey, Store, StoreError},
};

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Storage could not be opened.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The signing key file could not be read or written.
    #[error("signing key {path}: {source}")]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The signing key file does not hold a valid key.
    #[error("signing key {path}: {source}")]
    Key {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: KeyError,
    },
    /// The server failed.
    #[error("server: {0}")]
    Serve(std::io::Error),
    /// The deploy keys cannot be used.
    #[error("deploy keys: {0}")]
    DeployKeys(#[from] crate::deploy::keys::KeysError),
}

/// Everything a request handler needs: one shared [`AppInner`]. Cloning is one atomic
/// increment — axum clones the state for every request, and a struct of a dozen `Arc`s cost
/// a dozen contended increments and decrements each time (9% of a narinfo lookup's CPU).
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What [`AppState`] shares (plain values: the one `Arc` is around all of them).
pub struct AppInner {
    /// NARs and narinfos.
    pub store: Store,
    /// The index.
    pub db: Db,
    /// The cache signing key.
    pub signing_key: SecretKey,
    /// The deploy keys that sign host manifests (through a rotation, `deploy::keys`).
    pub deploy_keys: crate::deploy::keys::DeployKeys,
    /// The hosts whose manifest long-polls wait, woken when their generation is made.
    pub deploys: crate::deploy::watch::Watch,
    /// Wakes the rollout driver (`deploy::rollouts`).
    pub rollouts: crate::deploy::rollouts::Poke,
    /// Publications hold it for reading, retention for writing (see `gc::run`); with
    /// PostgreSQL it holds across replicas.
    pub publish_gate: PublishGate,
    /// Held while a collection runs: one at a time in this process (`Db::try_lock_collection`
    /// makes it one across replicas).
    pub gc_running: tokio::sync::Mutex<()>,
    /// Held while a re-signing run works (`resign`): one at a time in this process
    /// (`Db::try_lock_resign` makes it one across replicas).
    pub resign_running: Arc<tokio::sync::Mutex<()>>,
    /// Every public key clients should trust (current first, then previous ones).
    pub public_keys: Vec<PublicKey>,
    /// Protocol settings.
    pub cache: CacheConfig,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// Published narinfos in memory.
    pub narinfos: crate::narinfo_cache::NarinfoCache,
    /// The hashes of every published path, so that misses skip the index.
    pub published: crate::published::PublishedSet,
    /// The whole validated configuration (repositories, builder settings, data directory).
    pub config: Config,
    /// Wakes build workers and cancels running builds.
    pub builds: Queue,
    /// What decompressing uploads may cost in memory.
    pub decoders: crate::ingest::DecoderBudget,
    /// The fleet's events, for the stream, the forge statuses and the notifications.
    pub events: crate::events::Bus,
    /// The OIDC issuers' key sets (CI ID tokens, `oidc::jwks`).
    pub oidc_keys: crate::oidc::JwksCache,
}

impl AppState {
    /// Opens storage and the index and loads the key.
    pub async fn open(config: &Config) -> Result<(Self, KeyOrigin), StartError> {
        let (key, origin) = load_or_generate_key(&config.signing_key)?;
        let (deploy_key, deploy_origin) = load_or_generate_key(&config.deploy_key)?;
        let store = Store::open(&config.storage)?;
        let swept = store.sweep_staging().await?;
        if swept > 0 {
            tracing::info!(swept, "removed unfinished uploads left by an earlier run");
        }
        let db = Db::open(&config.database).await?;
        let deploy_keys =
            crate::deploy::keys::DeployKeys::open(&db, deploy_key, deploy_origin == KeyOrigin::Loaded).await?;
        // The bucket itself stays a valid binary cache, readable without berth.
        store.put(&ObjectKey::CacheInfo, Bytes::from(cache_info_text(&config.cache))).await?;
        let mut public_keys = vec![key.public()];
        public_keys.extend(config.previous_public_keys.iter().cloned());
        let state = Self(Arc::new(AppInner {
            store,
            publish_gate: PublishGate::new(&db),
            published: crate::published::PublishedSet::new(db.is_shared()),
            db,
            signing_key: key,
            deploy_keys,
            deploys: Default::default(),
            rollouts: Default::default(),
            gc_running: Default::default(),
            resign_running: Default::default(),
            public_keys,
            cache: config.cache.clone(),
            metrics: Default::default(),
            narinfos: Default::default(),
            config: config.clone(),
            builds: Queue::default(),
            decoders: crate::ingest::DecoderBudget::new(
                config.cache.max_decoder_memory_mib,
                config.cache.decoder_memory_budget_mib,
            ),
            events: Default::default(),
            oidc_keys: crate::oidc::JwksCache::new(Default::default()),
        }));
        Ok((state, origin))
    }

    /// Where ingest publishes.
    pub fn cache(&self) -> crate::ingest::Cache<'_> {
        crate::ingest::Cache {
            store: &self.store,
            db: &self.db,
            key: &self.signing_key,
            gate: &self.publish_gate,
            decoders: &self.decoders,
            published: &self.published,
        }
    }

    /// The `nix.conf` lines a client needs to use this cache at `url`.
    pub fn nix_conf_lines(&self, url: &str) -> String {
        let keys: Vec<String> = self.public_keys.iter().map(PublicKey::to_nix_string).collect();
        format!("extra-substituters = {url}\nextra-trusted-public-keys = {}\n", keys.join(" "))
    }
}

/// The `nix-cache-info` text for these settings.
pub fn cache_info_text(cache: &CacheConfig) -> String {
    format!(
        "StoreDir: {}\nWantMassQuery: {}\nPriority: {}\n",
        crate::nixfmt::STORE_DIR,
        u8::from(cache.want_mass_query),
        cache.priority
    )
}

/// Whether the signing key was found or made on this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Loaded from its file.
    Loaded,
    /// Generated now and written to its file.
    Generated,
}

/// Loads the signing key, generating it (mode 0600) when it is the default one and missing.
pub fn load_or_generate_key(source: &KeySource) -> Result<(SecretKey, KeyOrigin), StartError> {
    let path = &source.path;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = SecretKey::parse(&text).map_err(|e| StartError::Key { path: path.clone(), source: e })?;
            Ok((key, KeyOrigin::Loaded))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && source.generate_as.is_some() => {
            let name = source.generate_as.as_deref().expect("checked");
            let key = SecretKey::generate(name).map_err(|e| StartError::Key { path: path.clone(), source: e })?;
            write_secret(path, &key.to_nix_string())
                .map_err(|e| StartError::KeyFile { path: path.clone(), source: e })?;
            Ok((key, KeyOrigin::Generated))
        }
        Err(e) => Err(StartError::KeyFile { path: path.clone(), source: e }),
    }
}

/// Writes a secret to a new file readable by its owner only.
pub fn write_secret(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Serves `state` on `listener`, with the build workers, until `shutdown` resolves; then
/// stops the workers and closes the index.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let db = state.db.clone();
    if let Db::Sqlite(_) = db {
        // SQLite belongs to this one process: whatever it left running was interrupted.
        let (requeued, failed) = db.recover_builds(crate::db::now() + 1, 3).await?;
        if requeued + failed > 0 {
            tracing::info!(requeued, failed, "settled builds interrupted by the last stop");
        }
    }
    let stop = tokio_util::sync::CancellationToken::new();
    if !db.is_shared() {
        // One process: load before serving, so the first misses already skip the index.
        let n = crate::published::load(&db, &state.published).await?;
        tracing::info!(paths = n, "loaded the published-path set");
    }
    let mut workers = crate::build::worker::spawn(state.clone(), stop.clone());
    // PostgreSQL: generations other replicas make wake this one's long-polls.
    workers.push(tokio::spawn(crate::deploy::watch::follow(state.clone(), stop.clone())));
    if db.is_shared() {
        let (following, stop) = (state.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            crate::published::follow(following.db.clone(), &following.published, stop).await
        }));
    }
    // Staged rollouts move on by themselves (only when some repository has a policy: without
    // one, nothing is held and nothing is polled).
    if state.config.repositories.iter().any(|r| r.rollout.is_some()) {
        workers.push(tokio::spawn(crate::deploy::rollouts::run(state.clone(), stop.clone())));
    }
    if let Some(every) = state.config.gc_schedule {
        workers.push(tokio::spawn(scheduled_gc(state.clone(), every, stop.clone())));
    }
    let links = match (&state.config.public_url, listener.local_addr()) {
        (Some(url), _) => url.clone(),
        (None, Ok(addr)) => format!("http://{addr}"),
        (None, Err(e)) => return Err(StartError::Serve(e)),
    };
    workers.extend(crate::forge::spawn(&state, &stop, links));
    workers.extend(crate::notify::spawn(&state, &stop));
    // Deploy-key rotations move on as hosts acknowledge the next key (and `key_expiring` is
    // raised: after the notifications subscribed, so none is lost).
    workers.push(tokio::spawn(crate::deploy::keys::run(state.clone(), stop.clone())));
    workers.push(tokio::spawn(crate::events::offline::watch(state.clone(), stop.clone())));
    // Hosts without an agent (`delivery = "push"`) are deployed to over SSH.
    workers.push(tokio::spawn(crate::deploy::push::driver::run(state.clone(), stop.clone())));
    let stop_on_shutdown = stop.clone();
    let events = state.clone();
    let shutdown = async move {
        shutdown.await;
        stop_on_shutdown.cancel();
        // Event streams never end by themselves: end them, or connections never close.
        events.events.close();
    };
    let served = crate::http::serve(state, listener, shutdown).await.map_err(StartError::Serve);
    stop.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    db.close().await;
    served
}

/// Runs a collection every `every` until `stop`.
async fn scheduled_gc(state: AppState, every: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match crate::gc::collect(&state, &state.config.retention, false).await {
            Ok(_) => {}
            // Another replica's schedule (or an admin) got there first: its run is this one.
            Err(crate::gc::GcError::Busy) => tracing::info!("scheduled garbage collection skipped: one is running"),
            Err(e) => tracing::error!(error = %e, "scheduled garbage collection failed"),
        }
    }
}
