//! Who waits for which host's next generation, and waking exactly them when it is made.
//!
//! A manifest long-poll [`Watch::subscribe`]s to its host and sleeps; nothing looks at the
//! database until the host's generation changes. Generations made in this process wake
//! their host's waiters directly ([`add_generation`], the one way a generation is made).
//! With PostgreSQL, [`follow`] hears those made by other replicas (`db::GenerationListener`:
//! `NOTIFY` in the generation's own transaction). When its connection drops, every waiting
//! host is looked at once, a few queries for all of them ([`recheck`]), and the listener is
//! made again with backoff; while it cannot be, that look is taken again at each attempt.
//!
//! The staleness bound, with PostgreSQL: a generation another replica makes reaches a waiting
//! long-poll here as soon as PostgreSQL delivers the notification (milliseconds); when the
//! connection is lost, within the reconnect backoff ([`MAX_BACKOFF`]) plus one re-check; a
//! silently dead connection is found by a ping within [`PING_EVERY`] + [`PING_TIMEOUT`].
//! SQLite has one process owning it: no listener, no polling.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::sync::{futures::Notified, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    app::AppState,
    db::{Db, DbError, Heard, NewGeneration, Notice},
};

/// The longest wait between two attempts at making the listener again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the listener pings itself when it heard nothing else.
pub const PING_EVERY: Duration = Duration::from_secs(30);
/// How long a ping may take to come back before the connection counts as lost.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The hosts with waiting long-polls, each with its own wake-up.
#[derive(Debug, Default)]
pub struct Watch {
    hosts: Mutex<HashMap<String, Arc<Entry>>>,
    /// Subscriptions alive (`berth_manifest_polls_waiting`).
    polls: AtomicU64,
}

#[derive(Debug, Default)]
struct Entry {
    notify: Notify,
    /// The newest generation number the waiters know of (from the database or a notice):
    /// a notice of it or of an older one wakes nobody.
    newest: AtomicI64,
}

/// One waiter's hold on its host's entry; the entry goes when its last waiter does.
#[derive(Debug)]
pub struct Subscription<'a> {
    watch: &'a Watch,
    host: String,
    entry: Arc<Entry>,
}

impl Watch {
    /// Waits on `host` from now on.
    pub fn subscribe(&self, host: &str) -> Subscription<'_> {
        let mut hosts = self.hosts.lock().expect("watch lock");
        let entry = Arc::clone(hosts.entry(host.to_owned()).or_default());
        self.polls.fetch_add(1, Ordering::Relaxed);
        Subscription { watch: self, host: host.to_owned(), entry }
    }

    /// Generation `number` of `host` exists: wakes the host's waiters unless they knew.
    pub fn made(&self, host: &str, number: i64) {
        let entry = self.hosts.lock().expect("watch lock").get(host).cloned();
        if let Some(entry) = entry {
            if entry.newest.fetch_max(number, Ordering::AcqRel) < number {
                entry.notify.notify_waiters();
            }
        }
    }

    /// Wakes `host`'s waiters to look again whatever they know (its pause was lifted).
    pub fn wake(&self, host: &str) {
        let entry = self.hosts.lock().expect("watch lock").get(host).cloned();
        if let Some(entry) = entry {
            entry.notify.notify_waiters();
        }
    }

    /// Wakes every waiter to look again (the deploy keys changed: an agent behind them is
    /// told at once, `deploy::keys`).
    pub fn wake_all(&self) {
        let entries: Vec<_> = self.hosts.lock().expect("watch lock").values().cloned().collect();
        for entry in entries {
            entry.notify.notify_waiters();
        }
    }

    /// How many long-polls wait.
    pub fn polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    /// The hosts someone waits on.
    pub fn waiting(&self) -> Vec<String> {
        self.hosts.lock().expect("watch lock").keys().cloned().collect()
    }
}

impl Subscription<'_> {
    /// A wake-up for the next [`Watch::made`] of this host. Enable it (`Notified::enable`)
    /// before looking at the database, so that a generation made in between is not missed.
    pub fn notified(&self) -> Notified<'_> {
        self.entry.notify.notified()
    }

    /// The database says the host's newest generation is `number` (0: none).
    pub fn knows(&self, number: i64) {
        self.entry.newest.fetch_max(number, Ordering::AcqRel);
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        self.watch.polls.fetch_sub(1, Ordering::Relaxed);
        let mut hosts = self.watch.hosts.lock().expect("watch lock");
        // Under the lock no one clones the entry: the map's and ours are the last two.
        if Arc::strong_count(&self.entry) == 2 {
            hosts.remove(&self.host);
        }
    }
}

/// Records a new generation, wakes its host's long-polls and tells the event stream: every
/// maker of generations (the build worker, rollback, redeploy) goes through here.
pub async fn add_generation(state: &AppState, g: &NewGeneration<'_>) -> Result<i64, DbError> {
    let number = state.db.add_generation(g).await?;
    state.deploys.made(g.host, number);
    let generation = crate::events::GenerationRef::of_new(g, number);
    state.events.publish(crate::events::Event::GenerationCreated { generation });
    Ok(number)
}

/// Looks at the database once for every waiting host (after notices may have been lost).
pub async fn recheck(db: &Db, watch: &Watch) -> Result<(), DbError> {
    for (host, number) in db.newest_generations(&watch.waiting()).await? {
        watch.made(&host, number);
    }
    Ok(())
}

/// The wait before attempt `failures + 1` at making the listener: 250 ms, doubling, at most
/// [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << failures.min(16))).min(MAX_BACKOFF)
}

/// Hears generations made by other replicas until `stop` (PostgreSQL; returns at once on
/// SQLite). Never gives up: errors are logged, and waiters re-checked.
pub async fn follow(state: AppState, stop: CancellationToken) {
    let mut failures = 0;
    loop {
        let heard = tokio::select! {
            _ = stop.cancelled() => return,
            heard = listen(&state, &mut failures) => heard,
        };
        match heard {
            Ok(Listening::Never) => return,
            Ok(Listening::Lost) => tracing::warn!("lost the generation listener's connection; reconnecting"),
            Err(e) => tracing::warn!(error = %e, "generation listener failed; reconnecting"),
        }
        // Whatever was made while nobody listened: one look for every waiting host.
        if let Err(e) = recheck(&state.db, &state.deploys).await {
            tracing::warn!(error = %e, "re-checking waiting hosts");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff(failures)) => {}
        }
        failures = failures.saturating_add(1);
    }
}

/// How one listener's life ended.
enum Listening {
    /// SQLite: nothing to listen to.
    Never,
    /// Its connection dropped, or a ping did not come back.
    Lost,
}

/// Makes a listener, re-checks every waiting host (what was made before it listened), then
/// hands each notice to the watch until the connection is lost.
async fn listen(state: &AppState, failures: &mut u32) -> Result<Listening, DbError> {
    let Some(mut listener) = state.db.listen_generations().await? else { return Ok(Listening::Never) };
    recheck(&state.db, &state.deploys).await?;
    *failures = 0;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut ping_due = tokio::time::Instant::now() + PING_EVERY;
    let mut pong_due = None;
    loop {
        let deadline = pong_due.unwrap_or(ping_due);
        let heard = tokio::select! {
            heard = listener.next() => heard?,
            _ = tokio::time::sleep_until(deadline) => {
                if pong_due.is_some() {
                    return Ok(Listening::Lost);
                }
                state.db.notify(&Notice::Ping(token.clone())).await?;
                pong_due = Some(tokio::time::Instant::now() + PING_TIMEOUT);
                continue;
            }
        };
        match heard {
            Heard::Lost => return Ok(Listening::Lost),
            Heard::Notice(Notice::Made { host, number }) => state.deploys.made(&host, number),
            Heard::Notice(Notice::Released { host }) => state.deploys.wake(&host),
            Heard::Notice(Notice::Ping(t)) if t == token => pong_due = None,
            Heard::Notice(Notice::Ping(_)) => {}
        }
        // Anything heard shows the connection alive.
        ping_due = tokio::time::Instant::now() + PING_EVERY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound() {
        let ms = |n| backoff(n).as_millis();
        assert_eq!([ms(0), ms(1), ms(2), ms(3), ms(4), ms(5), ms(6)], [250, 500, 1000, 2000, 4000, 8000, 10_000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    /// Whether a wake-up enabled before `made` fired.
    fn woken(n: &mut std::pin::Pin<Box<Notified<'_>>>) -> bool {
        futures::FutureExt::now_or_never(n.as_mut()).is_some()
    }

    #[tokio::test]
    async fn a_generation_wakes_only_its_own_hosts_waiters_and_only_once() {
        let watch = Watch::default();
        let (web, db, also_web) = (watch.subscribe("web"), watch.subscribe("db"), watch.subscribe("web"));
        web.knows(3);
        {
            let mut n = [web.notified(), db.notified(), also_web.notified()].map(Box::pin);
            n.iter_mut().for_each(|n| {
                n.as_mut().enable();
            });
            watch.made("web", 3);
            assert!(!n.iter_mut().any(woken), "generation 3 was known");
            watch.made("web", 4);
            let [web_n, db_n, also_n] = &mut n;
            assert!(woken(web_n) && woken(also_n), "both of web's waiters");
            assert!(!woken(db_n), "another host's");
        }
        assert_eq!((watch.waiting().len(), watch.polls()), (2, 3));
        drop((web, also_web));
        assert_eq!(watch.waiting(), ["db"], "the last waiter of a host takes its entry along");
        drop(db);
        assert!(watch.waiting().is_empty());
    }
}
