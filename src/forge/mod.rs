//! Commit statuses on the forge. One dispatcher subscribes to the event bus, turns each
//! build and generation event into a status (`status.rs`, PURE) for the repository's forge
//! and queues the request (`request.rs`, PURE) on that forge's outbound queue, whose worker
//! posts in order with retries. How each delivery went is recorded on the build
//! (`db::ForgeStatusRow`). Nothing here can fail or delay a build or a deploy.

pub mod request;
pub mod status;

use std::{collections::HashMap, sync::Arc};

use tokio_util::sync::CancellationToken;

use self::status::{CommitStatus, State};
use crate::{
    app::AppState,
    db::{Db, DbError, ForgeStatusRow},
    deploy::status::{outcome, Outcome, Phase, Seen},
    events::Event,
    outbound::{
        self,
        queue::{Progress, Queue, Recorder},
    },
};

/// What a queued status is, for its record.
#[derive(Debug, Clone)]
struct Posted {
    build: i64,
    status: CommitStatus,
}

/// Statuses remembered to skip posting the same one twice (then forgotten, all at once).
const REMEMBERED: usize = 10_000;

/// Starts one queue per repository with a forge, and the dispatcher; none without a forge.
/// Statuses link to `<links>/ui/builds/<id>` (the dashboard).
pub fn spawn(state: &AppState, stop: &CancellationToken, links: String) -> Vec<tokio::task::JoinHandle<()>> {
    let client = outbound::client(outbound::DEFAULT_TIMEOUT);
    let mut queues = HashMap::new();
    let mut tasks = Vec::new();
    for repo in state.config.repositories.iter().filter(|r| r.forge.is_some()) {
        let name = format!("forge of {}", repo.name);
        let (queue, worker) = Queue::spawn(name, client.clone(), recorder(state.db.clone()), stop.clone());
        queues.insert(repo.name.clone(), queue);
        tasks.push(worker);
    }
    if !queues.is_empty() {
        let events = state.events.subscribe();
        let dispatcher = Dispatcher { state: state.clone(), queues, last: HashMap::new(), links };
        tasks.push(tokio::spawn(dispatcher.run(events, stop.clone())));
    }
    tasks
}

fn recorder(db: Db) -> Recorder<Posted> {
    Arc::new(move |posted: Posted, progress: Progress<'_>| {
        let (delivery, attempts, error) = match progress {
            Progress::Delivered { attempts } => ("delivered", attempts, None),
            Progress::Retrying { attempts, error } => ("retrying", attempts, Some(error.to_string())),
            Progress::Failed { attempts, error } => ("failed", attempts, Some(error.to_string())),
        };
        let row = ForgeStatusRow {
            context: posted.status.context,
            state: posted.status.state.as_str().into(),
            description: posted.status.description,
            delivery: delivery.into(),
            attempts: attempts.into(),
            error,
            updated_at: 0,
        };
        let db = db.clone();
        Box::pin(async move {
            if let Err(e) = db.record_forge_status(posted.build, &row).await {
                tracing::error!(error = %e, build = posted.build, "recording a forge status");
            }
        })
    })
}

struct Dispatcher {
    state: AppState,
    queues: HashMap<String, Queue<Posted>>,
    /// The last status queued per (build, context).
    last: HashMap<(i64, String), (State, String)>,
    /// The base URL of links.
    links: String,
}

impl Dispatcher {
    async fn run(
        mut self,
        mut events: tokio::sync::broadcast::Receiver<Arc<crate::events::Envelope>>,
        stop: CancellationToken,
    ) {
        while let Some(envelope) = crate::events::next(&mut events, &stop, "forge statuses").await {
            if let Err(e) = self.dispatch(&envelope.event).await {
                tracing::error!(error = %e, kind = envelope.event.kind().as_str(), "deciding a forge status");
            }
        }
    }

    async fn dispatch(&mut self, event: &Event) -> Result<(), DbError> {
        let (build_id, status, generation) = match event {
            Event::BuildStarted { build } | Event::BuildSucceeded { build, .. } | Event::BuildFailed { build, .. } => {
                (build.id, status::of_build(event), None)
            }
            Event::GenerationCreated { generation: g }
            | Event::GenerationActivating { generation: g, .. }
            | Event::GenerationConfirmed { generation: g }
            | Event::GenerationRolledBack { generation: g, .. }
            | Event::GenerationFailed { generation: g, .. } => {
                // Rollbacks and redeploys come from no build: nothing on the forge follows them.
                let Some(id) = g.build_id else { return Ok(()) };
                (id, None, Some(g))
            }
            Event::RolloutHalted { rollout, .. } | Event::RolloutCompleted { rollout } => {
                let Some(id) = rollout.build_id else { return Ok(()) };
                (id, status::of_rollout(event), None)
            }
            Event::HostOffline { .. }
            | Event::HostBack { .. }
            | Event::CollectionFinished { .. }
            | Event::KeyExpiring { .. } => return Ok(()),
        };
        let Some(build) = self.state.db.build(build_id).await? else { return Ok(()) };
        let Some(forge) = self.state.config.repository(&build.repository).and_then(|r| r.forge.as_ref()) else {
            return Ok(());
        };
        let status = match status {
            Some(status) => Some(status),
            None if forge.aggregate => Some(status::aggregate(&deploy_outcomes(&self.state.db, build_id).await?)),
            None => {
                let diff = match generation {
                    Some(g) => crate::deploy::closures::stored(&self.state.db, &g.host, g.number).await?,
                    None => None,
                };
                status::of_generation(event, diff.as_ref().map(|(_, d)| d))
            }
        };
        let Some(status) = status else { return Ok(()) };
        let key = (build_id, status.context.clone());
        if self.last.get(&key) == Some(&(status.state, status.description.clone())) {
            return Ok(());
        }
        let target = format!("{}/ui/builds/{build_id}", self.links);
        let request = match request::status_request(forge, &build.commit_sha, &status, &target) {
            Ok(request) => request,
            Err(e) => {
                tracing::error!(error = %e, build = build_id, "cannot post a forge status");
                return Ok(());
            }
        };
        if self.last.len() >= REMEMBERED {
            self.last.clear();
        }
        self.last.insert(key, (status.state, status.description.clone()));
        if let Some(queue) = self.queues.get(&build.repository) {
            queue.push(request, Posted { build: build_id, status });
        }
        Ok(())
    }
}

/// Each host that `build` made a generation for, with that generation's outcome so far.
async fn deploy_outcomes(db: &Db, build: i64) -> Result<Vec<(String, Outcome)>, DbError> {
    let mut outcomes = Vec::new();
    for row in db.build_hosts(build).await? {
        let Some(number) = row.generation else { continue };
        let newest = db.latest_generation(&row.host).await?.map_or(number, |g| g.number);
        let phases = db.report_phases(&row.host).await?;
        let seen: Vec<Seen<'_>> = phases
            .iter()
            .filter_map(|(generation, phase, message)| {
                Some(Seen { generation: *generation, phase: Phase::parse(phase)?, message: message.as_deref() })
            })
            .collect();
        outcomes.push((row.host, outcome(number, newest, &seen)));
    }
    Ok(outcomes)
}
