//! The dashboard's actions (admin): rollback, redeploy, pin, gc, and resuming or aborting a
//! rollout. Each is a confirmation
//! page (GET: what will happen, and a form) and the form's POST, which checks the session's
//! CSRF token and the request's origin (`Viewer::may_act`) and then calls the function the
//! API handler calls: `deploy::resend::{rollback, redeploy}`, `gc::pins::pin`, `gc::collect`, `deploy::rollouts::{resume, abort}`.

use axum::{
    extract::{
        rejection::{PathRejection, QueryRejection},
        Path, Query, State,
    },
    http::HeaderMap,
    response::Response,
    Form,
};
use minijinja::{context, Value};

use super::{auth::Viewer, error::UiError, pages::host_name, render, UiState};
use crate::{
    deploy::{resend, rollouts},
    gc::{self, pins},
};

/// The fields an action's query or form may carry (each action reads its own).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionFields {
    #[serde(default)]
    csrf: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    generation: Option<String>,
    #[serde(default)]
    keep: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    store_path: Option<String>,
}

/// An optional number field: empty is none; anything else must be a number from 1.
fn number(field: &Option<String>, what: &str) -> Result<Option<i64>, UiError> {
    match field.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(UiError::BadRequest(format!("{what} must be a number from 1"))),
        },
    }
}

fn query(q: Result<Query<ActionFields>, QueryRejection>) -> Result<ActionFields, UiError> {
    q.map(|Query(q)| q).map_err(|e| UiError::BadRequest(e.body_text()))
}

/// The confirmation page: `question`, the plan if any, and a form posting `hidden` and
/// `editable` fields (with the CSRF token) to `action`.
fn confirm(viewer: &Viewer, nav: &str, question: String, action: String, fields: Value) -> Result<Response, UiError> {
    viewer.require_admin()?;
    Ok(render::page(
        "confirm.html",
        context! { nav, viewer => viewer.role, csrf => viewer.csrf(), question, action, ..fields },
    )?)
}

fn done(
    viewer: &Viewer,
    nav: &str,
    message: String,
    back: String,
    details: Option<String>,
) -> Result<Response, UiError> {
    Ok(render::page(
        "done.html",
        context! { nav, viewer => viewer.role, csrf => viewer.csrf(), message, back, details },
    )?)
}

/// `GET /ui/hosts/{name}/rollback?to=N`.
pub async fn confirm_rollback(
    viewer: Viewer,
    Path(name): Path<String>,
    q: Result<Query<ActionFields>, QueryRejection>,
) -> Result<Response, UiError> {
    host_name(&name)?;
    let to = number(&query(q)?.to, "to")?;
    let question = match to {
        Some(n) => format!("Roll {name} back to generation {n}'s system?"),
        None => format!("Roll {name} back to the newest generation it confirmed before what it runs?"),
    };
    let hidden = vec![context! { name => "to", value => to }];
    confirm(
        &viewer,
        "fleet",
        question,
        format!("/ui/hosts/{name}/rollback"),
        context! { hidden, back => format!("/ui/hosts/{name}") },
    )
}

/// `POST /ui/hosts/{name}/rollback`: a new generation with the older system.
pub async fn rollback(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<ActionFields>,
) -> Result<Response, UiError> {
    host_name(&name)?;
    viewer.may_act(&headers, f.csrf.as_deref())?;
    let made = resend::rollback(&state.app, &name, number(&f.to, "to")?).await?;
    let message = format!("Made generation {} ({}) of {name}; its agent picks it up next.", made.number, made.branch);
    done(&viewer, "fleet", message, format!("/ui/hosts/{name}"), None)
}

/// `GET /ui/hosts/{name}/redeploy?generation=N`.
pub async fn confirm_redeploy(
    viewer: Viewer,
    Path(name): Path<String>,
    q: Result<Query<ActionFields>, QueryRejection>,
) -> Result<Response, UiError> {
    host_name(&name)?;
    let generation = number(&query(q)?.generation, "generation")?;
    let question = match generation {
        Some(n) => format!("Send generation {n} of {name} again?"),
        None => format!("Send the newest generation of {name} again?"),
    };
    let hidden = vec![context! { name => "generation", value => generation }];
    confirm(
        &viewer,
        "fleet",
        question,
        format!("/ui/hosts/{name}/redeploy"),
        context! { hidden, back => format!("/ui/hosts/{name}") },
    )
}

/// `POST /ui/hosts/{name}/redeploy`.
pub async fn redeploy(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<ActionFields>,
) -> Result<Response, UiError> {
    host_name(&name)?;
    viewer.may_act(&headers, f.csrf.as_deref())?;
    let made = resend::redeploy(&state.app, &name, number(&f.generation, "generation")?).await?;
    let message = format!("Made generation {} ({}) of {name}; its agent picks it up next.", made.number, made.branch);
    done(&viewer, "fleet", message, format!("/ui/hosts/{name}"), None)
}

/// `GET /ui/pins?name=N&store_path=P`: the pin's name can still be edited.
pub async fn confirm_pin(viewer: Viewer, q: Result<Query<ActionFields>, QueryRejection>) -> Result<Response, UiError> {
    let q = query(q)?;
    let path = q.store_path.unwrap_or_default();
    let question = format!("Keep the closure of {path} through every collection, under this name?");
    let hidden = vec![context! { name => "store_path", value => path }];
    let editable = vec![context! { name => "name", label => "Pin name", value => q.name.unwrap_or_default() }];
    confirm(&viewer, "retention", question, "/ui/pins".into(), context! { hidden, editable, back => "/ui/retention" })
}

/// `POST /ui/pins`.
pub async fn pin(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<ActionFields>,
) -> Result<Response, UiError> {
    viewer.may_act(&headers, f.csrf.as_deref())?;
    let (name, path) = (f.name.unwrap_or_default(), f.store_path.unwrap_or_default());
    pins::pin(&state.app, name.trim(), path.trim()).await?;
    done(&viewer, "retention", format!("Pinned {} as {}.", path.trim(), name.trim()), "/ui/retention".into(), None)
}

/// The policy of a collection asked with `keep` (none: the configured one).
fn policy(state: &UiState, keep: Option<i64>) -> gc::Policy {
    match keep {
        Some(keep) => state.app.config.retention.with_keep(keep as usize),
        None => state.app.config.retention.clone(),
    }
}

/// `GET /ui/gc?keep=N`: the plan as things stand (`gc::preview`) and the form that runs it.
pub async fn confirm_gc(
    State(state): State<UiState>,
    viewer: Viewer,
    q: Result<Query<ActionFields>, QueryRejection>,
) -> Result<Response, UiError> {
    viewer.require_admin()?;
    let keep = number(&query(q)?.keep, "keep")?;
    let plan = gc::preview(&state.app, &policy(&state, keep)).await?;
    let question = format!("Run a collection now? As things stand it frees {}:", crate::text::bytes(plan.bytes_freed));
    let hidden = vec![context! { name => "keep", value => keep }];
    let fields = context! { hidden, plan => gc::plan::render(&plan), back => "/ui/retention" };
    confirm(&viewer, "retention", question, "/ui/gc".into(), fields)
}

/// `POST /ui/gc`: runs the collection.
pub async fn gc(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    Form(f): Form<ActionFields>,
) -> Result<Response, UiError> {
    viewer.may_act(&headers, f.csrf.as_deref())?;
    let report = gc::collect(&state.app, &policy(&state, number(&f.keep, "keep")?), false).await?;
    let message = format!(
        "Collected: {} paths deleted, {} freed, {} generations dropped.",
        report.paths_deleted,
        crate::text::bytes(report.bytes_freed),
        report.dropped_generations.len()
    );
    done(&viewer, "retention", message, "/ui/retention".into(), Some(report.summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_fields() {
        for (field, expected) in [(None, None), (Some(""), None), (Some(" 3 "), Some(3)), (Some("1"), Some(1))] {
            assert_eq!(number(&field.map(str::to_owned), "to").unwrap(), expected, "{field:?}");
        }
        for bad in ["0", "-1", "x", "1e3", "99999999999999999999"] {
            assert!(number(&Some(bad.into()), "to").is_err(), "{bad}");
        }
    }
}

/// What a rollout action does.
#[derive(Debug, Clone, Copy)]
enum RolloutAction {
    Resume,
    Abort,
}

impl RolloutAction {
    fn parse(verb: &str) -> Result<Self, UiError> {
        match verb {
            "resume" => Ok(Self::Resume),
            "abort" => Ok(Self::Abort),
            _ => Err(UiError::NotFound("no such page".into())),
        }
    }
}

fn rollout_path(path: Result<Path<(i64, String)>, PathRejection>) -> Result<(i64, RolloutAction), UiError> {
    let Path((id, verb)) = path.map_err(|_| UiError::BadRequest("a rollout id is a number".into()))?;
    Ok((id, RolloutAction::parse(&verb)?))
}

/// `GET /ui/rollouts/{id}/resume` and `…/abort`.
pub async fn confirm_rollout(
    viewer: Viewer,
    path: Result<Path<(i64, String)>, PathRejection>,
) -> Result<Response, UiError> {
    let (id, action) = rollout_path(path)?;
    let (question, verb) = match action {
        RolloutAction::Resume => (
            format!("Resume rollout {id}, accepting the failure that halted it, and release its next waves?"),
            "resume",
        ),
        RolloutAction::Abort => (format!("Abort rollout {id}? Its held hosts stay on what they run."), "abort"),
    };
    confirm(
        &viewer,
        "rollouts",
        question,
        format!("/ui/rollouts/{id}/{verb}"),
        context! { hidden => Vec::<Value>::new(), back => "/ui/rollouts" },
    )
}

/// `POST /ui/rollouts/{id}/resume` and `…/abort`.
pub async fn rollout(
    State(state): State<UiState>,
    viewer: Viewer,
    headers: HeaderMap,
    path: Result<Path<(i64, String)>, PathRejection>,
    Form(f): Form<ActionFields>,
) -> Result<Response, UiError> {
    let (id, action) = rollout_path(path)?;
    viewer.may_act(&headers, f.csrf.as_deref())?;
    let message = match action {
        RolloutAction::Resume => {
            rollouts::resume(&state.app, id).await?;
            format!("Rollout {id} goes on.")
        }
        RolloutAction::Abort => {
            rollouts::abort(&state.app, id).await?;
            format!("Rollout {id} is aborted; its held hosts stay where they are.")
        }
    };
    done(&viewer, "rollouts", message, "/ui/rollouts".into(), None)
}
