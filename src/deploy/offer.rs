//! What a host is handed now, whoever hands it (its agent's long-poll or the push driver):
//! its newest generation that no rollout holds, unless `berth hosts pause` holds the host
//! or it is outside its activation window (`deploy::windows`).

use crate::{
    app::AppState,
    db::{DbError, GenerationRow},
};

/// A host's newest released generation, and whether it may have it now.
#[derive(Debug)]
pub struct Offer {
    /// The newest released generation's number (0: none), offered or not.
    pub latest: i64,
    /// It, when the host may be handed it now.
    pub generation: Option<GenerationRow>,
}

/// What `host` may be handed now. One query, and one more only when the repositories have
/// activation windows.
pub async fn offer(state: &AppState, host: &str) -> Result<Offer, DbError> {
    let Some(released) = state.db.latest_released_generation(host).await? else {
        return Ok(Offer { latest: 0, generation: None });
    };
    let latest = released.generation.number;
    let open = !released.paused && in_window(state, host).await?;
    Ok(Offer { latest, generation: open.then_some(released.generation) })
}

/// Whether `host` is inside its activation window now (no windows: always).
pub async fn in_window(state: &AppState, host: &str) -> Result<bool, DbError> {
    let repositories = &state.config.repositories;
    if repositories.iter().all(|r| r.windows.is_empty()) {
        return Ok(true);
    }
    let Some((repository, enrolled)) = state.db.host_placement(host).await? else { return Ok(true) };
    let Some(r) = repositories.iter().find(|r| r.name == repository) else { return Ok(true) };
    Ok(r.windows.open(host, &r.tags, enrolled, jiff::Timestamp::now()))
}
