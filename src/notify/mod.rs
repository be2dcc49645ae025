//! Notifications: each `[[notify]]` entry gets the events of the kinds it names, written in
//! its format (`format.rs`, PURE), through its own bounded outbound queue (retries with
//! backoff; failures logged). One dispatcher subscribes to the event bus for all of them.

pub mod format;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    app::AppState,
    config::NotifyConfig,
    outbound::{
        self,
        queue::{Progress, Queue, Recorder},
    },
};

/// Starts one queue per `[[notify]]` entry and the dispatcher; nothing without one.
pub fn spawn(state: &AppState, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut sinks = Vec::new();
    for (n, to) in state.config.notify.iter().enumerate() {
        let name = format!("notify #{} ({})", n + 1, to.url.host_str().unwrap_or("?"));
        let (queue, worker) = Queue::spawn(name, outbound::client(to.timeout), logger(), stop.clone());
        sinks.push((to.clone(), queue));
        tasks.push(worker);
    }
    if !sinks.is_empty() {
        let events = state.events.subscribe();
        tasks.push(tokio::spawn(dispatch(sinks, events, stop.clone())));
    }
    tasks
}

/// Notifications are recorded in the log only (the queue already logs each failure).
fn logger() -> Recorder<()> {
    Arc::new(|(), progress: Progress<'_>| {
        if let Progress::Delivered { attempts } = progress {
            tracing::debug!(attempts, "notification delivered");
        }
        Box::pin(async {})
    })
}

async fn dispatch(
    sinks: Vec<(NotifyConfig, Queue<()>)>,
    mut events: tokio::sync::broadcast::Receiver<Arc<crate::events::Envelope>>,
    stop: CancellationToken,
) {
    // Matrix transaction ids must not repeat for one access token across server runs.
    let run = uuid::Uuid::new_v4().simple().to_string();
    while let Some(envelope) = crate::events::next(&mut events, &stop, "notifications").await {
        for (to, queue) in sinks.iter().filter(|(to, _)| to.wants(envelope.event.kind())) {
            match format::request(to, &envelope, &run) {
                Ok(request) => {
                    queue.push(request, ());
                }
                Err(e) => tracing::error!(error = %e, "cannot write a notification"),
            }
        }
    }
}
