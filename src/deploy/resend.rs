//! An admin's rollback and redeploy: a new generation with the system, commit and signer of
//! an older one (`rollback::target` and `rollback::redeploy_target` pick which), made only
//! once that system is known to be in the cache, under the publish gate so retention cannot
//! delete it meanwhile; waiting agents are woken. Shared by the API (`http/deploy.rs`) and
//! the dashboard (`ui/actions.rs`).

use super::rollback::{self, RollbackError};
use crate::{
    app::AppState,
    db::{DbError, GenerationRow, NewGeneration},
    nixfmt::{StorePath, StorePathHash},
};

/// Why no new generation was made.
#[derive(Debug, thiserror::Error)]
pub enum ResendError {
    /// No such host.
    #[error("no host {0}")]
    NoHost(String),
    /// The history has no generation to go to.
    #[error(transparent)]
    Target(#[from] RollbackError),
    /// The target's system was collected.
    #[error("generation {0}'s system is no longer in the cache")]
    Collected(i64),
    /// A stored store path that does not parse (the index is damaged).
    #[error("stored store path of generation {0} does not parse")]
    Unparsable(i64),
    /// The generation just written could not be read back.
    #[error("generation {0} vanished after it was written")]
    Vanished(i64),
    /// The index failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Rolls `name` back to generation `to` (default: the newest the host confirmed before what
/// it runs); the new generation.
pub async fn rollback(state: &AppState, name: &str, to: Option<i64>) -> Result<GenerationRow, ResendError> {
    let repository = repository(state, name).await?;
    let _gate = state.publish_gate.read().await?;
    let history = state.db.generations(name).await?;
    let running = state.db.host_status(name).await?.active_generation;
    let confirmed = state.db.confirmed_generations(name).await?;
    let target = rollback::target(&history, &confirmed, running, to)?;
    let made = resend(state, name, &repository, target, &rollback::rollback_branch(target.number)).await?;
    tracing::info!(host = %name, number = made.number, to = target.number, "rollback");
    Ok(made)
}

/// Sends generation `generation` (default: the newest) of `name` again; the new generation.
pub async fn redeploy(state: &AppState, name: &str, generation: Option<i64>) -> Result<GenerationRow, ResendError> {
    let repository = repository(state, name).await?;
    let _gate = state.publish_gate.read().await?;
    let history = state.db.generations(name).await?;
    let target = rollback::redeploy_target(&history, generation)?;
    let made = resend(state, name, &repository, target, &rollback::redeploy_branch(target.number)).await?;
    tracing::info!(host = %name, number = made.number, of = target.number, "redeploy");
    Ok(made)
}

async fn repository(state: &AppState, name: &str) -> Result<String, ResendError> {
    state.db.host_repository(name).await?.ok_or_else(|| ResendError::NoHost(name.to_owned()))
}

/// A new generation of `target`'s system, commit and signer under `branch`, once its system
/// is known to be in the cache (the caller holds the publish gate); the agents are woken.
async fn resend(
    state: &AppState,
    name: &str,
    repository: &str,
    target: &GenerationRow,
    branch: &str,
) -> Result<GenerationRow, ResendError> {
    let path: StorePath = target.store_path.parse().map_err(|_| ResendError::Unparsable(target.number))?;
    if state.db.present(&[StorePathHash::of(&path).to_string()]).await?.is_empty() {
        return Err(ResendError::Collected(target.number));
    }
    let g = NewGeneration {
        host: name,
        repository,
        store_path: &target.store_path,
        commit_sha: &target.commit_sha,
        branch,
        build_id: None,
        // The same commit as the target's, so the same signer authorised it.
        signer: target.signer.as_deref(),
        // An admin's rollback or redeploy is released at once, whatever a rollout holds.
        rollout_id: None,
        held: false,
        diff_from: None,
        diff: None,
    };
    let number = super::watch::add_generation(state, &g).await?;
    state.db.generation(name, number).await?.ok_or(ResendError::Vanished(number))
}
