//! The closure diff of two systems, from the cache's index: both closures in one recursive
//! query each, then `diff.rs`'s pure rule. A path the index lacks (collected) is left out of
//! its closure, so an old system whose paths are gone diffs as smaller than it was.

use super::diff::{self, ClosureDiff, ClosurePath};
use crate::db::{Db, DbError};
use crate::nixfmt::StorePathHash;

/// The closure of the toplevel `path` (`/nix/store/<hash>-…`) as the index holds it.
pub async fn closure(db: &Db, path: &str) -> Result<Vec<ClosurePath>, DbError> {
    let base = path.strip_prefix("/nix/store/").unwrap_or(path);
    let Ok(hash) = StorePathHash::parse(base.get(..32).unwrap_or(base)) else { return Ok(Vec::new()) };
    let rows = db.closure(hash.as_str()).await?;
    Ok(rows
        .into_iter()
        .map(|(basename, nar, file)| ClosurePath {
            basename,
            nar_size: nar.try_into().unwrap_or(0),
            file_size: file.try_into().unwrap_or(0),
        })
        .collect())
}

/// What switching from `from` (none: a host's first system) to `to` changes.
pub async fn between(db: &Db, from: Option<&str>, to: &str) -> Result<ClosureDiff, DbError> {
    let old = match from {
        Some(from) => closure(db, from).await?,
        None => Vec::new(),
    };
    Ok(diff::diff(&old, &closure(db, to).await?))
}
