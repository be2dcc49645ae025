//! Schema migrations, run at start-up, in order, once each. Append only: a migration that
//! has shipped is never edited.

use super::{on_pool, Db, DbError};

/// Each entry is one schema version; its SQL is valid for SQLite and PostgreSQL alike, except
/// `{serial}`, an auto-numbered primary key, spelled per dialect.
const MIGRATIONS: &[&str] = &[
    // 1: the cache index and tokens.
    "CREATE TABLE paths (
        hash TEXT PRIMARY KEY,
        store_path TEXT NOT NULL,
        nar_file TEXT NOT NULL,
        nar_hash TEXT NOT NULL,
        nar_size BIGINT NOT NULL,
        file_size BIGINT NOT NULL,
        deriver TEXT,
        narinfo TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX paths_nar_file ON paths (nar_file);
    CREATE TABLE refs (
        referrer TEXT NOT NULL,
        reference TEXT NOT NULL,
        PRIMARY KEY (referrer, reference)
    );
    CREATE INDEX refs_reference ON refs (reference);
    CREATE TABLE nar_files (
        name TEXT PRIMARY KEY,
        file_hash TEXT NOT NULL,
        file_size BIGINT NOT NULL,
        nar_hash TEXT NOT NULL,
        nar_size BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    );",
    // 2: builds, their per-host results, hosts and their generations.
    "CREATE TABLE builds (
        id {serial},
        repository TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        branch TEXT NOT NULL,
        hosts TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        signature TEXT,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        claimed_by TEXT,
        heartbeat_at BIGINT,
        attempts BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX builds_state ON builds (state, id);
    CREATE INDEX builds_commit ON builds (repository, commit_sha);
    CREATE TABLE build_hosts (
        build_id BIGINT NOT NULL,
        host TEXT NOT NULL,
        state TEXT NOT NULL,
        store_path TEXT,
        error TEXT,
        generation BIGINT,
        started_at BIGINT,
        finished_at BIGINT,
        PRIMARY KEY (build_id, host)
    );
    CREATE TABLE hosts (
        name TEXT PRIMARY KEY,
        repository TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE generations (
        host TEXT NOT NULL,
        number BIGINT NOT NULL,
        store_path TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        branch TEXT NOT NULL,
        build_id BIGINT,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (host, number)
    );",
    // 3: what each host reports: its active generation, last phase, last error, last contact.
    "ALTER TABLE hosts ADD COLUMN active_generation BIGINT;
    ALTER TABLE hosts ADD COLUMN phase TEXT;
    ALTER TABLE hosts ADD COLUMN last_error TEXT;
    ALTER TABLE hosts ADD COLUMN last_seen BIGINT;
    CREATE TABLE reports (
        id {serial},
        host TEXT NOT NULL,
        generation BIGINT NOT NULL,
        phase TEXT NOT NULL,
        message TEXT,
        log_tail TEXT,
        duration_ms BIGINT,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX reports_host ON reports (host, id);",
    // 4: retention: named pins, and object deletions a collection still owes.
    "CREATE TABLE pins (
        name TEXT PRIMARY KEY,
        store_path TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE TABLE gc_pending (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    );",
    // 5: when a pending deletion may run (Unix seconds; 0: at once). With replicas a NAR
    // outlives every replica's cached narinfo for it (see `gc::run`).
    "ALTER TABLE gc_pending ADD COLUMN due_at BIGINT NOT NULL DEFAULT 0;",
    // 6: objects that belong to published paths and go with the last of them: realisations
    // (`realisations/<id>.doi`, of their output path) and derivation build logs
    // (`log/<drv>`, of the paths that derivation built); and derivers, to find the latter.
    "CREATE TABLE path_objects (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (kind, name, hash)
    );
    CREATE INDEX path_objects_hash ON path_objects (hash);
    CREATE INDEX paths_deriver ON paths (deriver);",
    // 7: signed history: each commit a build checked (oldest first) and its verdict, where
    // the check started, and who signed the commit of each generation.
    "CREATE TABLE build_commits (
        build_id BIGINT NOT NULL,
        position BIGINT NOT NULL,
        commit_sha TEXT NOT NULL,
        verdict TEXT NOT NULL,
        signer TEXT,
        signing_key TEXT,
        reason TEXT,
        PRIMARY KEY (build_id, position)
    );
    ALTER TABLE builds ADD COLUMN history_base TEXT;
    ALTER TABLE generations ADD COLUMN signer TEXT;",
    // 8: the host's own profile generation a confirmed generation became, and what each
    // build decided for each of its hosts.
    "ALTER TABLE reports ADD COLUMN profile_generation BIGINT;
    ALTER TABLE build_hosts ADD COLUMN verdict TEXT;
    CREATE INDEX build_hosts_host ON build_hosts (host, build_id);",
    // 9: a host held on its current generation (`berth hosts pause`) since when.
    "ALTER TABLE hosts ADD COLUMN paused_at BIGINT;",
    // 10: what was posted to the forge for each build (db/forge.rs).
    "CREATE TABLE forge_statuses (
        build_id BIGINT NOT NULL,
        context TEXT NOT NULL,
        state TEXT NOT NULL,
        description TEXT NOT NULL,
        delivery TEXT NOT NULL,
        attempts BIGINT NOT NULL,
        error TEXT,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (build_id, context)
    );",
    // 11: staged rollouts: each rollout of a deploy-branch commit, its hosts' waves, and per
    // generation the rollout that made it and, while its wave is not released, holds it.
    "CREATE TABLE rollouts (
        id {serial},
        repository TEXT NOT NULL,
        branch TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        build_id BIGINT,
        state TEXT NOT NULL,
        wave BIGINT NOT NULL,
        waves BIGINT NOT NULL,
        released_at BIGINT,
        settled_at BIGINT,
        halted_host TEXT,
        reason TEXT,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    CREATE INDEX rollouts_open ON rollouts (repository, branch, state);
    CREATE TABLE rollout_hosts (
        rollout_id BIGINT NOT NULL,
        host TEXT NOT NULL,
        wave BIGINT NOT NULL,
        waived BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (rollout_id, host)
    );
    ALTER TABLE generations ADD COLUMN rollout_id BIGINT;
    ALTER TABLE generations ADD COLUMN held_by BIGINT;
    CREATE INDEX generations_rollout ON generations (rollout_id, host);",
    // 12: enrollment (db/enroll.rs): one-time codes, stored hashed, each for one host; the
    // host's tags and the SSH host key it sent when it enrolled.
    "CREATE TABLE enroll_codes (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        host TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        used_at BIGINT
    );
    CREATE INDEX enroll_codes_host ON enroll_codes (host);
    ALTER TABLE hosts ADD COLUMN tags TEXT;
    ALTER TABLE hosts ADD COLUMN ssh_host_key TEXT;
    ALTER TABLE hosts ADD COLUMN enrolled_at BIGINT;",
    // 13: `berth cache resign` (db/resign.rs): the one re-signing run, its key, what it does
    // with old signatures, and how far it got (the last hash re-signed), so a killed server
    // resumes where it stopped.
    "CREATE TABLE resign_run (
        id BIGINT PRIMARY KEY,
        key_name TEXT NOT NULL,
        old_signatures TEXT NOT NULL,
        state TEXT NOT NULL,
        cursor_hash TEXT NOT NULL,
        resigned BIGINT NOT NULL,
        started_at BIGINT NOT NULL,
        finished_at BIGINT
    );",
    // 14: the closure diff stored with each generation (issue 16): against the generation
    // the host ran when it was made (`diff_from`; NULL with a diff: a first system), as JSON
    // (`deploy::diff::ClosureDiff`). NULL `diff`: not stored (made before, or by a redeploy).
    "ALTER TABLE generations ADD COLUMN diff_from BIGINT;
    ALTER TABLE generations ADD COLUMN diff TEXT;",
    // 15: deploy-key rotation (db/deploy_keys.rs, deploy/keys.rs): the server's deploy keys
    // and their states (`deploy::rotation`), at most one `next` and one `current`; the secret
    // of a key made by `berth keys rotate deploy` (NULL: the key of `deploy_key_file`, whose
    // secret stays in that file); the expiry `key_expiring` last warned of; and the keys each
    // host's agent last said it trusts.
    "CREATE TABLE deploy_keys (
        public_key TEXT PRIMARY KEY,
        secret_key TEXT,
        state TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        changed_at BIGINT NOT NULL,
        warned_for BIGINT
    );
    CREATE UNIQUE INDEX deploy_keys_one_next ON deploy_keys (state) WHERE state = 'next';
    CREATE UNIQUE INDEX deploy_keys_one_current ON deploy_keys (state) WHERE state = 'current';
    ALTER TABLE hosts ADD COLUMN deploy_keys_ack TEXT;
    ALTER TABLE hosts ADD COLUMN deploy_keys_ack_at BIGINT;",
    // 16: the cache signing keys berth has signed with, since when (their age, for
    // `[keys] cache_max_age_days`), and the expiry `key_expiring` last warned of.
    "CREATE TABLE cache_keys (
        public_key TEXT PRIMARY KEY,
        first_used BIGINT NOT NULL,
        warned_for BIGINT
    );",
];

fn serial(db: &Db) -> &'static str {
    match db {
        Db::Sqlite(_) => "INTEGER PRIMARY KEY AUTOINCREMENT",
        Db::Postgres(_) => "BIGSERIAL PRIMARY KEY",
    }
}

/// Brings the schema up to date. Replicas starting together take turns: each migration runs
/// in a write transaction that first takes the migration lock (PostgreSQL: an advisory lock
/// held by the transaction; SQLite: `BEGIN IMMEDIATE`) and re-reads the version under it, so
/// a migration another replica applied meanwhile is skipped, not applied twice.
pub async fn run(db: &Db) -> Result<(), DbError> {
    on_pool!(db, pool => {
        let create = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)";
        let mut tx = pool.begin_with(super::write_begin(pool)).await?;
        if let Some(lock) = super::lock_migrations(pool) {
            sqlx::query(lock).bind(MIGRATION_LOCK_KEY).execute(&mut *tx).await?;
        }
        sqlx::raw_sql(create).execute(&mut *tx).await?;
        tx.commit().await?;
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i64 + 1;
            let mut tx = pool.begin_with(super::write_begin(pool)).await?;
            if let Some(lock) = super::lock_migrations(pool) {
                sqlx::query(lock).bind(MIGRATION_LOCK_KEY).execute(&mut *tx).await?;
            }
            let current: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM schema_version").fetch_one(&mut *tx).await?;
            if current.unwrap_or(0) >= version {
                continue; // dropping `tx` rolls it back and releases the lock
            }
            let sql = sql.replace("{serial}", serial(db));
            sqlx::raw_sql(&sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_version (version) VALUES ($1)").bind(version).execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(())
    })
}

/// `pg_advisory_xact_lock` key of schema migrations ("berth" + 3; see `locks.rs`).
const MIGRATION_LOCK_KEY: i64 = 0x6265_7274_6803;

#[cfg(test)]
mod tests {
    use crate::db::testing::for_each_backend;

    for_each_backend! {
        /// Four replicas starting at once on an empty database: all start, each migration
        /// is applied once.
        async fn replicas_starting_together_migrate_once(backend: Backend) {
            let database = backend.database().await;
            // Each open has its own pool; their migrations interleave at every await.
            let opens = futures::future::join_all((0..4).map(|_| crate::db::Db::open(&database.url))).await;
            for open in opens {
                let db = open.unwrap_or_else(|e| panic!("a replica failed to start: {e}"));
                crate::db::on_pool!(&db, pool => {
                    let versions: Vec<i64> =
                        sqlx::query_scalar("SELECT version FROM schema_version ORDER BY version").fetch_all(pool).await.unwrap();
                    assert_eq!(versions, (1..=crate::db::migrations::MIGRATIONS.len() as i64).collect::<Vec<_>>());
                });
            }
        }
    }
}
