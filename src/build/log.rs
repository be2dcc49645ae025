//! Build logs: appended to a local file while the build runs (so it can be followed), moved
//! into the object store when it ends (so every replica, and the bucket, keep it).

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use futures::Stream;
use tokio::{
    fs,
    io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt},
    sync::mpsc,
};

use crate::store::{ObjectKey, Store, StoreError};

/// The log of one running build. Lines sent through [`BuildLog::sender`] are appended in
/// order by one writer task.
pub struct BuildLog {
    path: PathBuf,
    tx: mpsc::UnboundedSender<String>,
    writer: tokio::task::JoinHandle<io::Result<()>>,
}

/// Where the running log of build `id` lives.
pub fn running_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.log"))
}

impl BuildLog {
    /// Starts (or, on a retry, continues) the log of build `id` under `dir`.
    pub async fn open(dir: &Path, id: i64) -> io::Result<Self> {
        fs::create_dir_all(dir).await?;
        let path = running_path(dir, id);
        let mut file = fs::OpenOptions::new().create(true).append(true).open(&path).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(mut line) = rx.recv().await {
                // One write with its newline: a follower reading meanwhile never sees a line
                // without its end.
                line.push('\n');
                file.write_all(line.as_bytes()).await?;
            }
            file.sync_all().await
        });
        Ok(Self { path, tx, writer })
    }

    /// Appends one line.
    pub fn line(&self, line: impl Into<String>) {
        let _ = self.tx.send(line.into());
    }

    /// A sender whose lines are appended with `prefix` (e.g. `[web-1] `).
    pub fn sender(&self, prefix: String) -> mpsc::UnboundedSender<String> {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let out = self.tx.clone();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                let _ = out.send(format!("{prefix}{line}"));
            }
        });
        tx
    }

    /// Flushes the log, stores it as `builds/<id>.log` and removes the local file.
    pub async fn finish(self, store: &Store, id: i64) -> Result<(), StoreError> {
        drop(self.tx);
        // Senders handed out by `sender` may still hold lines: give them a moment to drain.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = self.writer.await;
        let bytes = fs::read(&self.path).await?;
        // A log is written once; a retried finish finds it there and keeps it.
        store.put_new(&ObjectKey::BuildLog(id), Bytes::from(bytes)).await?;
        fs::remove_file(&self.path).await?;
        Ok(())
    }
}

/// The log of build `id` as the API and the dashboard serve it: [`read`] from `[server]
/// data_dir`'s `logs/`, followed while the index says the build is running.
pub async fn of_build(
    state: &crate::app::AppState,
    id: i64,
) -> Result<Option<impl Stream<Item = io::Result<Bytes>>>, StoreError> {
    let db = state.db.clone();
    let running = move || {
        let db = db.clone();
        async move { matches!(db.build(id).await, Ok(Some(b)) if b.state == super::model::BuildState::Running.as_str()) }
    };
    read(state.store.clone(), &state.config.data_dir.join("logs"), id, running).await
}

/// The log of build `id` as a stream: the stored log of a finished build, or the running
/// log followed until `running()` says the build ended. `None` when there is no log.
pub async fn read<F, Fut>(
    store: Store,
    dir: &Path,
    id: i64,
    running: F,
) -> Result<Option<impl Stream<Item = io::Result<Bytes>>>, StoreError>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let local = running_path(dir, id);
    let stored = if fs::try_exists(&local).await.unwrap_or(false) {
        None
    } else {
        match store.get_bytes(&ObjectKey::BuildLog(id)).await? {
            Some(bytes) => Some(bytes),
            // A worker claims a build a moment before it opens the log: follow it anyway.
            None if running().await => None,
            None => return Ok(None),
        }
    };
    let state = Follow {
        local,
        offset: 0,
        stored,
        done: false,
        seen: false,
        store,
        id,
        quiet_since: tokio::time::Instant::now(),
    };
    Ok(Some(futures::stream::unfold((state, running), |(mut s, running)| async move {
        let next = s.next(&running).await?;
        Some((next, (s, running)))
    })))
}

struct Follow {
    local: PathBuf,
    offset: u64,
    stored: Option<Bytes>,
    done: bool,
    /// The running log file has been opened at least once.
    seen: bool,
    store: Store,
    id: i64,
    /// Since when nothing was sent: a follower is told the build is alive every
    /// [`QUIET_NOTE`], so neither the connection's inactivity timeout nor a CI system's
    /// silence limit ends a long silent step.
    quiet_since: tokio::time::Instant,
}

/// How long a followed log may be silent before a note says the build still runs.
const QUIET_NOTE: Duration = if cfg!(test) { Duration::from_millis(300) } else { Duration::from_secs(60) };

impl Follow {
    async fn next<F, Fut>(&mut self, running: &F) -> Option<io::Result<Bytes>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        if let Some(bytes) = self.stored.take() {
            self.done = true;
            return Some(Ok(bytes));
        }
        while !self.done {
            match self.read_more().await {
                Ok(Some(bytes)) => {
                    self.quiet_since = tokio::time::Instant::now();
                    return Some(Ok(bytes));
                }
                Ok(None) if !running().await => self.done = true,
                Ok(None) if self.quiet_since.elapsed() >= QUIET_NOTE => {
                    self.quiet_since = tokio::time::Instant::now();
                    let note = format!("[berth] still building: no output for {} s\n", QUIET_NOTE.as_secs());
                    return Some(Ok(Bytes::from(note)));
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(200)).await,
                // The build ended and `finish` moved the log to the store (it stores before
                // it removes): send what was written after our last read.
                Err(e) if e.kind() == io::ErrorKind::NotFound && !self.seen && running().await => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.done = true;
                    return self.rest_from_store().await;
                }
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }

    async fn rest_from_store(&self) -> Option<io::Result<Bytes>> {
        match self.store.get_bytes(&ObjectKey::BuildLog(self.id)).await {
            Ok(Some(bytes)) if (bytes.len() as u64) > self.offset => Some(Ok(bytes.slice(self.offset as usize..))),
            Ok(_) => None,
            Err(e) => Some(Err(io::Error::other(e.to_string()))),
        }
    }

    async fn read_more(&mut self) -> io::Result<Option<Bytes>> {
        let mut file = fs::File::open(&self.local).await?;
        self.seen = true;
        file.seek(io::SeekFrom::Start(self.offset)).await?;
        let mut buf = Vec::new();
        (&mut file).take(1 << 20).read_to_end(&mut buf).await?;
        if buf.is_empty() {
            return Ok(None);
        }
        self.offset += buf.len() as u64;
        Ok(Some(Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[tokio::test]
    async fn a_silent_build_is_said_to_be_alive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("memory://").unwrap();
        let log = BuildLog::open(dir.path(), 9).await.unwrap();
        log.line("start");
        let mut follow = Box::pin(read(store, dir.path(), 9, || async { true }).await.unwrap().unwrap());
        assert_eq!(follow.try_next().await.unwrap().unwrap(), Bytes::from("start\n"));
        let started = std::time::Instant::now();
        let note = follow.try_next().await.unwrap().unwrap();
        assert!(note.starts_with(b"[berth] still building"), "{note:?}");
        assert!(started.elapsed() >= QUIET_NOTE - Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_log_is_followed_then_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open("memory://").unwrap();
        let log = BuildLog::open(dir.path(), 7).await.unwrap();
        log.line("start");
        let host = log.sender("[a] ".into());
        host.send("building".into()).unwrap();
        drop(host);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let follow = read(store.clone(), dir.path(), 7, || async { false }).await.unwrap().unwrap();
        let text: Vec<Bytes> = follow.try_collect().await.unwrap();
        assert_eq!(text.concat(), b"start\n[a] building\n");
        log.finish(&store, 7).await.unwrap();
        assert!(!running_path(dir.path(), 7).exists());
        let stored = read(store.clone(), dir.path(), 7, || async { false }).await.unwrap().unwrap();
        let text: Vec<Bytes> = stored.try_collect().await.unwrap();
        assert_eq!(text.concat(), b"start\n[a] building\n");
        assert!(read(store, dir.path(), 8, || async { false }).await.unwrap().is_none());
    }
}
