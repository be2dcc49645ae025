//! Named pins: closures kept like GC roots. Shared by the API (`http/gc.rs`) and the
//! dashboard (`ui/actions.rs`): a pin is recorded only for a path in the cache, under the
//! publish gate, so retention cannot delete the path between the check and the pin.

use crate::{
    app::AppState,
    db::DbError,
    nixfmt::{StorePath, StorePathHash},
};

/// Why a pin was refused.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Not a pin name.
    #[error("pin names are 1-64 letters, digits, '-', '_', '.'")]
    BadName,
    /// Not a store path.
    #[error("store_path: {0}")]
    BadPath(String),
    /// A store path the cache does not have.
    #[error("{0} is not in the cache")]
    NotInCache(String),
    /// The index failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Whether `name` may name a pin.
pub fn valid_pin_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Pins `store_path`'s closure under `name` (replacing what `name` pinned before).
pub async fn pin(state: &AppState, name: &str, store_path: &str) -> Result<(), PinError> {
    if !valid_pin_name(name) {
        return Err(PinError::BadName);
    }
    let path: StorePath = store_path.parse().map_err(|e| PinError::BadPath(format!("{e}")))?;
    let _gate = state.publish_gate.read().await?;
    if state.db.present(&[StorePathHash::of(&path).to_string()]).await?.is_empty() {
        return Err(PinError::NotInCache(store_path.to_owned()));
    }
    state.db.set_pin(name, &path.to_absolute_path()).await?;
    tracing::info!(pin = %name, path = %path.to_absolute_path(), "pin");
    Ok(())
}
