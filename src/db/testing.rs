//! Test support: every query runs on both dialects. [`for_each_backend!`] turns one test
//! case into a `sqlite` and a `postgres` test; [`Backend::database`] makes a fresh database
//! that several pools ("replicas") can open.

use super::Db;

/// Which database a test case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// A SQLite file in a temporary directory (in memory when one pool is enough).
    Sqlite,
    /// A fresh database in the test process's PostgreSQL cluster.
    Postgres,
}

/// A fresh, empty database; open it as often as there are replicas.
pub(crate) struct TestDatabase {
    /// Its URL.
    pub url: String,
    /// Holds the SQLite file's directory.
    _dir: Option<tempfile::TempDir>,
}

impl TestDatabase {
    /// Opens (and migrates) one more pool on it.
    pub async fn open(&self) -> Db {
        Db::open(&self.url).await.unwrap()
    }
}

impl Backend {
    /// A fresh database (for SQLite a file, so that separate pools share it as replicas'
    /// would).
    pub async fn database(self) -> TestDatabase {
        match self {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
                TestDatabase { url, _dir: Some(dir) }
            }
            Backend::Postgres => {
                // Starting the cluster (once) and `CREATE DATABASE` block: off the runtime.
                let url = tokio::task::spawn_blocking(|| crate::test_servers::Postgres::shared().new_database())
                    .await
                    .unwrap();
                TestDatabase { url, _dir: None }
            }
        }
    }

    /// A fresh database opened once (SQLite: in memory).
    pub async fn db(self) -> Db {
        match self {
            Backend::Sqlite => super::test_db().await,
            Backend::Postgres => self.database().await.open().await,
        }
    }
}

/// Turns each `async fn name(db: Db) { … }` (or `(backend: Backend)`, for cases that open
/// several pools) into a module `name` with two tests, `sqlite` and `postgres`.
macro_rules! for_each_backend {
    ($( $(#[doc = $doc:literal])* async fn $name:ident($arg:ident : $ty:ident) $body:block )*) => {
        $(
            $(#[doc = $doc])*
            mod $name {
                #[allow(unused_imports)]
                use super::*;
                #[allow(unused_imports)]
                use $crate::db::testing::Backend;

                async fn case($arg: $ty) $body

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    case($crate::db::testing::for_each_backend!(@arg $ty, Backend::Sqlite)).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    case($crate::db::testing::for_each_backend!(@arg $ty, Backend::Postgres)).await
                }
            }
        )*
    };
    (@arg Db, $backend:expr) => { $backend.db().await };
    (@arg Backend, $backend:expr) => { $backend };
}
pub(crate) use for_each_backend;
