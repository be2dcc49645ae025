//! Progress of a push: one updating line on stderr when it is a terminal, otherwise one
//! `info` event per uploaded path (CI logs do not render carriage returns).

use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::client::UploadStatus;
use super::upload::{Counters, Uploaded};
use crate::text::bytes;

/// Reports the progress of the uploads of one push.
pub struct Progress {
    tty: bool,
    total: usize,
    done: usize,
    start: Instant,
    counters: Arc<Counters>,
    drawn: bool,
}

impl Progress {
    /// Progress over `total` uploads whose bytes are counted in `counters`.
    pub fn new(total: usize, counters: Arc<Counters>) -> Self {
        let tty = std::io::stderr().is_terminal();
        Self { tty, total, done: 0, start: Instant::now(), counters, drawn: false }
    }

    /// Whether the updating line is shown (and so worth redrawing periodically).
    pub fn is_live(&self) -> bool {
        self.tty
    }

    /// Records a finished upload.
    pub fn uploaded(&mut self, up: &Uploaded) {
        self.done += 1;
        let status = match up.status {
            UploadStatus::New => "uploaded",
            UploadStatus::Present => "already present",
        };
        if self.tty {
            tracing::debug!(path = %up.claim.path, status, "push");
            self.redraw();
        } else {
            tracing::info!(
                "[{}/{}] {status} {} ({} NAR, {} compressed)",
                self.done,
                self.total,
                up.claim.path,
                bytes(up.claim.nar_size),
                bytes(up.compressed),
            );
        }
    }

    /// Redraws the live line (no-op unless stderr is a terminal).
    pub fn redraw(&mut self) {
        if !self.tty {
            return;
        }
        let nar = self.counters.nar.load(Ordering::Relaxed);
        let sent = self.counters.compressed.load(Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "[{}/{}] {} NAR, {} sent, {:.1} MB/s",
            self.done,
            self.total,
            bytes(nar),
            bytes(sent),
            nar as f64 / secs / 1e6
        );
        // `\r` + erase-line: rewrite in place without leaving a longer line's tail behind.
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
        self.drawn = true;
    }

    /// Erases the live line, before the summary or an error is printed.
    pub fn clear(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}
