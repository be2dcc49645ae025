//! A bounded queue of outbound requests to one destination and the worker that sends them,
//! one at a time and in order, retrying transient failures on the `backoff` schedule. A
//! full queue refuses the newest request (logged): memory stays bounded however long the
//! destination is down, and the build or report that produced it never waits.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{backoff, send, Request, SendError};

/// Requests waiting per destination.
pub const CAPACITY: usize = 256;

/// Where a request stands after an attempt.
#[derive(Debug)]
pub enum Progress<'a> {
    /// Sent and accepted.
    Delivered {
        /// Attempts it took.
        attempts: u32,
    },
    /// Attempt `attempts` failed; another follows.
    Retrying {
        /// Attempts so far.
        attempts: u32,
        /// Why the last one failed.
        error: &'a SendError,
    },
    /// Given up.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// Why the last one failed.
        error: &'a SendError,
    },
}

/// What is told of each request's progress, with the tag it was queued with.
pub type Recorder<T> = Arc<dyn Fn(T, Progress<'_>) -> BoxFuture<'static, ()> + Send + Sync>;

/// The sending side of one destination's queue.
pub struct Queue<T> {
    sender: mpsc::Sender<(Request, T)>,
    name: String,
}

impl<T: Clone + Send + 'static> Queue<T> {
    /// Starts the worker of a queue called `name` (for logs), sending with `client` until
    /// `stop`.
    pub fn spawn(
        name: String,
        client: reqwest::Client,
        recorder: Recorder<T>,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(CAPACITY);
        let worker = tokio::spawn(work(name.clone(), receiver, client, recorder, stop));
        (Self { sender, name }, worker)
    }

    /// Queues `request`; `false` (logged) when the queue is full or stopped.
    pub fn push(&self, request: Request, tag: T) -> bool {
        let label = request.label.clone();
        match self.sender.try_send((request, tag)) {
            Ok(()) => true,
            Err(e) => {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "its queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the server is stopping",
                };
                tracing::error!(destination = %self.name, request = %label, "dropped an outbound request: {why}");
                false
            }
        }
    }
}

async fn work<T: Clone + Send>(
    name: String,
    mut receiver: mpsc::Receiver<(Request, T)>,
    client: reqwest::Client,
    recorder: Recorder<T>,
    stop: CancellationToken,
) {
    loop {
        let (request, tag) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            next = receiver.recv() => match next { Some(next) => next, None => break },
        };
        deliver(&name, &client, &recorder, request, tag, &stop).await;
    }
    receiver.close();
    let left = std::iter::from_fn(|| receiver.try_recv().ok()).count();
    if left > 0 {
        tracing::warn!(destination = %name, left, "stopping with outbound requests not sent");
    }
}

async fn deliver<T: Clone>(
    name: &str,
    client: &reqwest::Client,
    recorder: &Recorder<T>,
    request: Request,
    tag: T,
    stop: &CancellationToken,
) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let sent = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            sent = send(client, &request) => sent,
        };
        let error = match sent {
            Ok(()) => {
                tracing::debug!(destination = %name, request = %request.label, attempts, "delivered");
                return recorder(tag, Progress::Delivered { attempts }).await;
            }
            Err(error) => error,
        };
        let wait = backoff::delay(attempts).filter(|_| error.is_transient());
        let Some(wait) = wait else {
            tracing::error!(destination = %name, request = %request.label, attempts, error = %error, "gave up sending");
            return recorder(tag, Progress::Failed { attempts, error: &error }).await;
        };
        tracing::warn!(destination = %name, request = %request.label, attempts, error = %error, retry_in = ?wait, "sending failed; will retry");
        recorder(tag.clone(), Progress::Retrying { attempts, error: &error }).await;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use reqwest::{header::HeaderMap, Method};

    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_instead_of_growing() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream); // a receiver that never answers
            }
        });
        let stop = CancellationToken::new();
        let recorder: Recorder<()> = Arc::new(|(), _| Box::pin(async {}));
        let (queue, worker) =
            Queue::spawn("test".into(), crate::outbound::client(Duration::from_secs(60)), recorder, stop.clone());
        let request =
            Request { method: Method::POST, url, headers: HeaderMap::new(), body: Bytes::new(), label: "r".into() };
        let accepted = (0..CAPACITY + 10).filter(|_| queue.push(request.clone(), ())).count();
        // The worker holds at most one; the queue the rest up to its capacity.
        assert!((CAPACITY..=CAPACITY + 1).contains(&accepted), "{accepted}");
        stop.cancel();
        worker.await.unwrap();
        assert!(!queue.push(request, ()), "a stopped queue takes nothing");
    }
}
