//! A bounded bridge from the async body stream to the blocking verifier: the async side
//! sends `Bytes` chunks, the blocking side reads them through `std::io::Read`. At most
//! `DEPTH` chunks wait in between, so memory stays bounded however large the NAR.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

const DEPTH: usize = 16;

/// The async end.
pub type Sender = mpsc::Sender<Bytes>;

/// The blocking end.
pub struct Reader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

/// A connected pair.
pub fn pair() -> (Sender, Reader) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (tx, Reader { rx, current: Bytes::new() })
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}
