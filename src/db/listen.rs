//! Generations made by other replicas, as PostgreSQL tells of them: `add_generation` sends
//! `NOTIFY berth_generations, 'made <number> <host>'` in its own transaction (PostgreSQL
//! delivers it at commit, never for a rolled-back generation), and each replica's
//! [`GenerationListener`] hears it on a connection of its own. SQLite has one process owning
//! it: nothing to listen to there.
//!
//! A notification is lost when the listener's connection is; the listener says so
//! ([`Heard::Lost`]) and its caller looks at the database again (`deploy::watch`). A silently
//! dead connection (a half-open TCP connection) is found by pings: a notification the
//! listener sends itself and must hear back.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{on_pool, Db, DbError};

/// The channel generation writers notify.
pub const CHANNEL: &str = "berth_generations";

/// Longest wait for the listener's connection (and its `LISTEN`) to be made.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What arrives on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Generation `number` of `host` was committed.
    Made {
        /// The host.
        host: String,
        /// Its new generation.
        number: i64,
    },
    /// A rollout released a wave: `host`'s newest released generation may have changed
    /// (its long-polls look again whatever generation they know).
    Released {
        /// The host.
        host: String,
    },
    /// A listener's ping (only the listener that sent it cares).
    Ping(String),
}

impl Notice {
    /// The notification's payload: `made <number> <host>`, `released <host>` or `ping <token>` (a host name has
    /// no spaces, and PostgreSQL's 8,000-byte payload bound is far off).
    pub fn payload(&self) -> String {
        match self {
            Notice::Made { host, number } => format!("made {number} {host}"),
            Notice::Released { host } => format!("released {host}"),
            Notice::Ping(token) => format!("ping {token}"),
        }
    }

    /// A payload read back; `None` for anything else (a newer replica's notice, say).
    pub fn parse(payload: &str) -> Option<Notice> {
        let mut words = payload.splitn(3, ' ');
        match (words.next()?, words.next()?, words.next()) {
            ("made", number, Some(host)) if crate::auth::valid_host_name(host) => {
                Some(Notice::Made { host: host.to_owned(), number: number.parse().ok().filter(|n| *n > 0)? })
            }
            ("released", host, None) if crate::auth::valid_host_name(host) => {
                Some(Notice::Released { host: host.to_owned() })
            }
            ("ping", token, None) if !token.is_empty() => Some(Notice::Ping(token.to_owned())),
            _ => None,
        }
    }
}

/// What [`GenerationListener::next`] heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A notice.
    Notice(Notice),
    /// The connection dropped: notifications sent meanwhile are gone. Drop the listener,
    /// make a new one, and look at the database again.
    Lost,
}

/// A connection `LISTEN`ing on [`CHANNEL`].
pub struct GenerationListener {
    listener: PgListener,
}

impl Db {
    /// A listener on [`CHANNEL`] (PostgreSQL), or `None` (SQLite: no other process writes).
    /// It holds one of the pool's connections.
    pub async fn listen_generations(&self) -> Result<Option<GenerationListener>, DbError> {
        let Db::Postgres(pool) = self else { return Ok(None) };
        super::count_query();
        let connect = async {
            let mut listener = PgListener::connect_with(pool).await?;
            // Reconnecting is ours to do (with backoff, then a look at the database).
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(listener) => Ok(Some(GenerationListener { listener: listener? })),
            Err(_) => Err(DbError::Sql(sqlx::Error::PoolTimedOut)),
        }
    }

    /// Sends `notice` on [`CHANNEL`] (a ping; generations are notified by `add_generation`
    /// in their own transaction). Nothing on SQLite.
    pub async fn notify(&self, notice: &Notice) -> Result<(), DbError> {
        if !self.is_shared() {
            return Ok(());
        }
        on_pool!(self, pool => {
            sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(notice.payload()).execute(pool).await?;
            Ok(())
        })
    }
}

impl GenerationListener {
    /// The next notice, or [`Heard::Lost`] when the connection dropped. Payloads it does not
    /// know are skipped.
    pub async fn next(&mut self) -> Result<Heard, DbError> {
        loop {
            match self.listener.try_recv().await? {
                None => return Ok(Heard::Lost),
                Some(n) => {
                    if let Some(notice) = Notice::parse(n.payload()) {
                        return Ok(Heard::Notice(notice));
                    }
                    tracing::debug!(payload = n.payload(), "unknown notification on {CHANNEL}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(payload: &str, expected: Option<Notice>) {
        assert_eq!(Notice::parse(payload), expected, "{payload:?}");
        if let Some(notice) = expected {
            assert_eq!(notice.payload(), payload);
        }
    }

    #[test]
    fn payloads() {
        let made = |host: &str, number| Some(Notice::Made { host: host.into(), number });
        check("made 7 web-1", made("web-1", 7));
        check("made 12345678901 db_eu-2", made("db_eu-2", 12_345_678_901));
        check("ping 0f3a", Some(Notice::Ping("0f3a".into())));
        check("released web-1", Some(Notice::Released { host: "web-1".into() }));
        for bad in [
            "",
            "made",
            "made 7",
            "made x web",
            "made 0 web",
            "made -1 web",
            "made 7 a b",
            "made 7 a.b",
            "ping",
            "ping a b",
            "released",
            "released a b",
            "released a/b",
        ] {
            check(bad, None);
        }
        check("rotated 3 web", None);
    }
}
