//! The dashboard's pages (GET, any `read` or `admin` viewer): the fleet, a host's history,
//! builds, one build with its log, the cache and retention. Each calls the library function
//! the API or the CLI uses and renders `view`'s models.

use axum::{
    body::Body,
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::header,
    response::Response,
};
use futures::StreamExt;
use minijinja::context;

use super::{auth::Viewer, error::UiError, render, view, UiState};
use crate::{
    auth::valid_host_name,
    build::model::BuildState,
    db::{now, BuildFilter},
    deploy::fleet,
    gc,
    text::clip_tail,
};

/// Bytes of a finished build's log shown on its page (its end).
const LOG_TAIL_BYTES: usize = 256 * 1024;
/// Bytes the live log stream sends at most; past them it ends (the page says to reload).
pub const LIVE_LOG_BYTES: usize = 16 * 1024 * 1024;
/// Builds listed at most.
const BUILDS_LISTED: i64 = 100;
/// Recent uploads listed on the cache page.
const RECENT_PATHS: i64 = 25;

/// A host name from a path, checked before it reaches a query.
pub fn host_name(name: &str) -> Result<(), UiError> {
    if valid_host_name(name) {
        Ok(())
    } else {
        Err(UiError::BadRequest("invalid host name".into()))
    }
}

/// `GET /ui/`: every host, as `berth hosts` shows them.
pub async fn fleet(State(state): State<UiState>, viewer: Viewer) -> Result<Response, UiError> {
    let hosts = fleet::hosts(&state.app.db, &state.app.config).await?;
    let hosts: Vec<_> = hosts.iter().map(view::host_line).collect();
    Ok(render::page("fleet.html", context! { nav => "fleet", viewer => viewer.role, csrf => viewer.csrf(), hosts })?)
}

/// `GET /ui/hosts/{name}`: its generations with their outcomes and activation logs.
pub async fn host(State(state): State<UiState>, viewer: Viewer, Path(name): Path<String>) -> Result<Response, UiError> {
    host_name(&name)?;
    let db = &state.app.db;
    let generations = fleet::history(db, &name).await?.ok_or_else(|| UiError::NotFound(format!("no host {name}")))?;
    let reports = db.reports(&name, 100).await?;
    let line = fleet::hosts(db, &state.app.config).await?.iter().find(|h| h.name == name).map(view::host_line);
    let diffs = crate::deploy::closures::stored_all(db, &name).await?;
    let generations = view::history(&generations, &reports, &diffs);
    Ok(render::page(
        "host.html",
        context! { nav => "fleet", viewer => viewer.role, csrf => viewer.csrf(), name, host => line, generations },
    )?)
}

/// Rollouts listed at most, newest first.
const ROLLOUTS_LISTED: i64 = 20;

/// `GET /ui/rollouts`: the newest staged rollouts, their waves and hosts, who halted one and
/// why (resume and abort for an admin).
pub async fn rollouts(State(state): State<UiState>, viewer: Viewer) -> Result<Response, UiError> {
    let listed = crate::deploy::rollouts::list(&state.app, ROLLOUTS_LISTED).await?;
    let rollouts: Vec<_> = listed.iter().map(view::rollout_line).collect();
    Ok(render::page(
        "rollouts.html",
        context! { nav => "rollouts", viewer => viewer.role, csrf => viewer.csrf(), rollouts },
    )?)
}

/// `GET /ui/builds?repo=R&branch=B&state=S`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildsQuery {
    #[serde(default)]
    repo: Option<String>,
    #[serde(default)]
    branch: Option<String>,
    #[serde(default)]
    state: Option<String>,
}

/// `GET /ui/builds`: the newest builds, filtered as `berth build list` filters them.
pub async fn builds(
    State(state): State<UiState>,
    viewer: Viewer,
    query: Result<Query<BuildsQuery>, QueryRejection>,
) -> Result<Response, UiError> {
    let Query(q) = query.map_err(|e| UiError::BadRequest(e.body_text()))?;
    let empty_none = |s: Option<String>| s.filter(|s| !s.is_empty());
    let (repo, branch, wanted) = (empty_none(q.repo), empty_none(q.branch), empty_none(q.state));
    let build_state = match wanted.as_deref() {
        Some(s) => Some(BuildState::parse(s).ok_or_else(|| UiError::BadRequest(format!("unknown build state {s:?}")))?),
        None => None,
    };
    let filter = BuildFilter {
        repository: repo.as_deref(),
        branch: branch.as_deref(),
        state: build_state.map(BuildState::as_str),
    };
    let now = now();
    let builds: Vec<_> =
        state.app.db.find_builds(&filter, BUILDS_LISTED).await?.iter().map(|b| view::build_line(b, now)).collect();
    let states = ["queued", "running", "succeeded", "failed", "cancelled"];
    Ok(render::page(
        "builds.html",
        context! { nav => "builds", viewer => viewer.role, csrf => viewer.csrf(), builds, repo, branch, state => wanted, states },
    )?)
}

/// `GET /ui/builds/{id}`: the build, each host's result, the commits it checked and its log
/// (the end of it once finished; streamed by `live.js` while it runs).
pub async fn build(
    State(state): State<UiState>,
    viewer: Viewer,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, UiError> {
    let Path(id) = id.map_err(|_| UiError::BadRequest("build ids are numbers".into()))?;
    let db = &state.app.db;
    let row = db.build(id).await?.ok_or_else(|| UiError::NotFound(format!("no build {id}")))?;
    let (hosts, commits) = (db.build_hosts(id).await?, db.build_commits(id).await?);
    let live = matches!(BuildState::parse(&row.state), Some(BuildState::Running | BuildState::Queued));
    let log = if live { None } else { log_tail(&state, id).await? };
    let build = view::build_line(&row, now());
    Ok(render::page(
        "build.html",
        context! { nav => "builds", viewer => viewer.role, csrf => viewer.csrf(), build, hosts, commits, live, log },
    )?)
}

/// The end of a finished build's log, if it has one.
async fn log_tail(state: &UiState, id: i64) -> Result<Option<String>, UiError> {
    let Some(stream) = crate::build::log::of_build(&state.app, id).await? else {
        return Ok(None);
    };
    let mut stream = std::pin::pin!(stream);
    let mut text = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| UiError::Internal(format!("build log {id}: {e}")))?;
        text.extend_from_slice(&chunk);
        // Keep the end: at most twice the budget in memory, whatever the log's size.
        if text.len() > 2 * LOG_TAIL_BYTES {
            text.drain(..text.len() - LOG_TAIL_BYTES);
        }
    }
    let text = String::from_utf8_lossy(&text);
    Ok(Some(clip_tail(&text, LOG_TAIL_BYTES).to_owned()))
}

/// `GET /ui/builds/{id}/log`: the log as plain text, followed while the build runs (what
/// `live.js` reads), at most [`LIVE_LOG_BYTES`].
pub async fn build_log(
    State(state): State<UiState>,
    _viewer: Viewer,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, UiError> {
    let Path(id) = id.map_err(|_| UiError::BadRequest("build ids are numbers".into()))?;
    state.app.db.build(id).await?.ok_or_else(|| UiError::NotFound(format!("no build {id}")))?;
    let stream = crate::build::log::of_build(&state.app, id).await?;
    let stream = stream.ok_or_else(|| UiError::NotFound(format!("build {id} has no log yet")))?;
    let mut response = Response::new(Body::from_stream(bounded(stream, LIVE_LOG_BYTES)));
    let kind = header::HeaderValue::from_static("text/plain; charset=utf-8");
    response.headers_mut().insert(header::CONTENT_TYPE, kind);
    Ok(response)
}

/// `stream` until `max` bytes are sent: the chunk that reaches `max` is the last one (so
/// at most `max` plus one chunk, which the log follower keeps small).
fn bounded<S, E>(stream: S, max: usize) -> impl futures::Stream<Item = Result<bytes::Bytes, E>>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>>,
{
    let mut sent = 0usize;
    stream.take_while(move |chunk| {
        let more = sent < max;
        sent += chunk.as_ref().map_or(0, |c| c.len());
        futures::future::ready(more)
    })
}

/// `GET /ui/cache`: what the cache holds, its newest paths, and the narinfo hit rate since
/// this process started (the `/metrics` counters).
pub async fn cache(State(state): State<UiState>, viewer: Viewer) -> Result<Response, UiError> {
    let app = &state.app;
    let stats = app.db.cache_stats().await?;
    let recent: Vec<_> = app
        .db
        .recent_paths(RECENT_PATHS)
        .await?
        .into_iter()
        .map(|p| {
            let size = crate::text::bytes(p.file_size.max(0) as u64);
            context! { store_path => p.store_path, size, nar_size => crate::text::bytes(p.nar_size.max(0) as u64), at => crate::cmd::timestamp(p.created_at) }
        })
        .collect();
    let (hits, misses) = (load(&app.metrics.narinfo_hits), load(&app.metrics.narinfo_misses));
    let keys: Vec<String> = app.public_keys.iter().map(|k| k.to_nix_string()).collect();
    Ok(render::page(
        "cache.html",
        context! {
            nav => "cache", viewer => viewer.role, csrf => viewer.csrf(),
            paths => stats.paths, nar_bytes => crate::text::bytes(stats.nar_bytes.max(0) as u64),
            file_bytes => crate::text::bytes(stats.file_bytes.max(0) as u64), recent,
            hits, misses, hit_rate => view::hit_rate(hits, misses),
            served => crate::text::bytes(load(&app.metrics.nar_bytes_served)), keys,
        },
    )?)
}

fn load(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// `GET /ui/retention`: what `berth gc --dry-run` would delete now (`gc::plan` on one read
/// of the index: `gc::preview`), and the pins.
pub async fn retention(State(state): State<UiState>, viewer: Viewer) -> Result<Response, UiError> {
    let app = &state.app;
    let plan = gc::preview(app, &app.config.retention).await?;
    let pins: Vec<_> = app
        .db
        .pins()
        .await?
        .into_iter()
        .map(|p| context! { name => p.name, store_path => p.store_path, since => crate::cmd::timestamp(p.created_at) })
        .collect();
    Ok(render::page(
        "retention.html",
        context! {
            nav => "retention", viewer => viewer.role, csrf => viewer.csrf(), pins,
            keep => app.config.retention.keep_last,
            freed => crate::text::bytes(plan.bytes_freed), summary => gc::plan::render(&plan),
            paths_deleted => plan.delete_paths.len(), nar_files_deleted => plan.delete_nar_files.len(),
            paths_kept => plan.kept_paths, dropped => plan.drop_generations,
        },
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_live_log_stream_ends_at_its_budget() {
        let chunks =
            || futures::stream::iter((0..100).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 10]))));
        for (max, sent) in [(0, 0), (1, 10), (25, 30), (30, 30), (5000, 1000)] {
            let got: Vec<_> = bounded(chunks(), max).collect().await;
            assert_eq!(got.iter().map(|c| c.as_ref().unwrap().len()).sum::<usize>(), sent, "budget {max}");
        }
    }
}
