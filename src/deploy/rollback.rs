//! PURE: what an admin rollback points at. A rollback never rewinds a host's history: it is a
//! new generation whose store path is an older generation's (so a replayed old manifest
//! still cannot roll a host back, and the agent's "only newer" rule holds).

use crate::db::GenerationRow;

/// Picks the generation to roll back to: `to` when given, otherwise the newest generation
/// older than the one the host runs (`active`, or the newest when nothing is confirmed).
/// `generations` is newest first.
pub fn target(generations: &[GenerationRow], to: Option<i64>, active: Option<i64>) -> Result<&GenerationRow, String> {
    let newest = generations.first().ok_or("the host has no generations")?;
    match to {
        Some(n) => generations.iter().find(|g| g.number == n).ok_or_else(|| format!("the host has no generation {n}")),
        None => {
            let current = active.unwrap_or(newest.number);
            generations
                .iter()
                .find(|g| g.number < current && g.store_path != path_of(generations, current))
                .ok_or_else(|| format!("no generation older than {current} to roll back to"))
        }
    }
}

fn path_of(generations: &[GenerationRow], number: i64) -> &str {
    generations.iter().find(|g| g.number == number).map_or("", |g| g.store_path.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(number: i64, path: &str) -> GenerationRow {
        GenerationRow {
            host: "a".into(),
            number,
            store_path: path.into(),
            commit_sha: "c".into(),
            branch: "main".into(),
            build_id: None,
            created_at: 0,
            signer: None,
        }
    }

    #[test]
    fn rollback_targets() {
        let history = [g(4, "/p/d"), g(3, "/p/c"), g(2, "/p/c"), g(1, "/p/a")];
        assert_eq!(target(&history, None, None).unwrap().number, 3);
        assert_eq!(target(&history, None, Some(3)).unwrap().number, 1, "skips generations with the same system");
        assert_eq!(target(&history, Some(2), None).unwrap().number, 2);
        assert!(target(&history, Some(9), None).is_err());
        assert!(target(&history, None, Some(1)).is_err());
        assert!(target(&[], None, None).is_err());
    }
}
