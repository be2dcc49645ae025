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

/// Generation `number`'s stored diff and the generation it was taken against (none: a first
/// system); `None` when none was stored. A stored diff that no longer parses is logged and
/// treated as none (the caller computes one).
pub async fn stored(db: &Db, host: &str, number: i64) -> Result<Option<(Option<i64>, ClosureDiff)>, DbError> {
    Ok(db.generation_diff(host, number).await?.and_then(|row| parse(host, &row)))
}

/// Every stored diff of `host`'s generations: number, the generation it was taken against,
/// the diff (newest first; one that no longer parses is logged and left out).
pub async fn stored_all(db: &Db, host: &str) -> Result<Vec<(i64, Option<i64>, ClosureDiff)>, DbError> {
    let rows = db.generation_diffs(host).await?;
    Ok(rows.iter().filter_map(|row| parse(host, row).map(|(from, diff)| (row.number, from, diff))).collect())
}

fn parse(host: &str, row: &crate::db::StoredDiff) -> Option<(Option<i64>, ClosureDiff)> {
    match serde_json::from_str(&row.diff) {
        Ok(diff) => Some((row.diff_from, diff)),
        Err(e) => {
            tracing::warn!(error = %e, host, number = row.number, "a stored closure diff does not parse");
            None
        }
    }
}
