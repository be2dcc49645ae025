//! PURE: what an admin rollback or redeploy points at. Neither rewinds a host's history: each
//! is a new generation whose store path is an older generation's (so a replayed old manifest
//! still cannot roll a host back, and the agent's "only newer" rule holds).
//!
//! A rollback goes back from what the host *runs now* to the newest *earlier* generation it
//! *confirmed*. "Earlier" follows the host's lineage, not generation numbers alone: a
//! generation made by `rollback` or `redeploy` (branch `rollback-to-N`, `redeploy-N`) stands
//! where N stands, so a rollback from it goes behind N — never forward to what N replaced
//! (which would undo the rollback). Retention keeps the same target (`gc/plan.rs` calls
//! [`way_back`]).

use crate::db::GenerationRow;

/// Why there is nothing to roll back or redeploy to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    /// The host has no generations at all.
    #[error("the host has no generations")]
    NoGenerations,
    /// `--to N` or `redeploy N` names a generation the host does not have (or no longer has).
    #[error("the host has no generation {0}")]
    NoSuchGeneration(i64),
    /// Nothing the host confirmed lies behind what it runs.
    #[error("no confirmed generation before generation {from} (what the host runs) to roll back to")]
    NothingEarlier {
        /// The generation the host runs (or, for a rollback generation, the one it stands for).
        from: i64,
    },
}

/// The branch a rollback to generation `n` records.
pub fn rollback_branch(n: i64) -> String {
    format!("rollback-to-{n}")
}

/// The branch a redeploy of generation `n` records.
pub fn redeploy_branch(n: i64) -> String {
    format!("redeploy-{n}")
}

/// One generation as the rule sees it: its number, its system and the branch that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// Generation number.
    pub number: i64,
    /// Its system (a store path or its hash: compared only for equality).
    pub system: &'a str,
    /// The branch that made it (`rollback-to-N` and `redeploy-N` point at N).
    pub branch: &'a str,
}

impl<'a> From<&'a GenerationRow> for Step<'a> {
    fn from(g: &'a GenerationRow) -> Self {
        Step { number: g.number, system: &g.store_path, branch: &g.branch }
    }
}

/// The generation a rollback or redeploy generation points at, if `branch` names one.
fn points_at(branch: &str) -> Option<i64> {
    let n = branch.strip_prefix("rollback-to-").or_else(|| branch.strip_prefix("redeploy-"))?;
    n.parse().ok()
}

/// Where generation `number` stands in the host's lineage: itself, or for a rollback or
/// redeploy generation, where the generation it points at stands. Only strictly older
/// pointers are followed, so a made-up branch name cannot loop.
pub fn origin(steps: &[Step<'_>], number: i64) -> i64 {
    let mut at = number;
    while let Some(to) = steps.iter().find(|s| s.number == at).and_then(|s| points_at(s.branch)) {
        if to >= at {
            break;
        }
        at = to;
    }
    at
}

/// The generation a rollback from `running` goes to: the newest generation before where
/// `running` stands that the host confirmed (`confirmed`), on another system than the one
/// it runs (the same system is no rollback). `steps` in any order.
pub fn way_back(steps: &[Step<'_>], confirmed: &[i64], running: i64) -> Option<i64> {
    let from = origin(steps, running);
    let system = steps.iter().find(|s| s.number == running).map(|s| s.system);
    steps
        .iter()
        .filter(|s| s.number < from && confirmed.contains(&s.number) && Some(s.system) != system)
        .map(|s| s.number)
        .max()
}

/// Picks the generation to roll back to: `to` when given (any generation the host still
/// has: the admin's choice), otherwise [`way_back`] from `running` (the generation the host
/// reports it runs; the newest when it has reported none). `generations` newest first.
pub fn target<'a>(
    generations: &'a [GenerationRow],
    confirmed: &[i64],
    running: Option<i64>,
    to: Option<i64>,
) -> Result<&'a GenerationRow, RollbackError> {
    let newest = generations.first().ok_or(RollbackError::NoGenerations)?;
    let find = |n: i64| generations.iter().find(|g| g.number == n);
    match to {
        Some(n) => find(n).ok_or(RollbackError::NoSuchGeneration(n)),
        None => {
            let running = running.unwrap_or(newest.number);
            let steps: Vec<Step<'_>> = generations.iter().map(Step::from).collect();
            way_back(&steps, confirmed, running)
                .and_then(find)
                .ok_or(RollbackError::NothingEarlier { from: origin(&steps, running) })
        }
    }
}

/// Picks the generation `berth redeploy` sends again: `number`, or the newest (desired) one.
pub fn redeploy_target(generations: &[GenerationRow], number: Option<i64>) -> Result<&GenerationRow, RollbackError> {
    match number {
        Some(n) => generations.iter().find(|g| g.number == n).ok_or(RollbackError::NoSuchGeneration(n)),
        None => generations.first().ok_or(RollbackError::NoGenerations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(number: i64, path: &str, branch: &str) -> GenerationRow {
        GenerationRow {
            host: "a".into(),
            number,
            store_path: path.into(),
            commit_sha: "c".into(),
            branch: branch.into(),
            build_id: None,
            created_at: 0,
            signer: None,
            outcome: None,
            profile_generation: None,
        }
    }

    /// History `(number, system, branch)` listed oldest first, the host confirmed
    /// `confirmed` and runs `running`; `berth rollback [--to to]` goes to `expected`.
    #[track_caller]
    fn check(
        history: &[(i64, &str, &str)],
        confirmed: &[i64],
        running: Option<i64>,
        to: Option<i64>,
        expected: Result<i64, RollbackError>,
    ) {
        let rows: Vec<GenerationRow> = history.iter().rev().map(|(n, p, b)| g(*n, p, b)).collect();
        let got = target(&rows, confirmed, running, to).map(|g| g.number);
        assert_eq!(got, expected, "history {history:?}, confirmed {confirmed:?}, running {running:?}, to {to:?}");
    }

    const ABC: &[(i64, &str, &str)] = &[(1, "/a", "main"), (2, "/b", "main"), (3, "/c", "main")];

    #[test]
    fn plain_rollbacks() {
        check(ABC, &[1, 2, 3], Some(3), None, Ok(2));
        check(ABC, &[1, 2, 3], Some(3), Some(1), Ok(1));
        check(ABC, &[1, 2, 3], Some(3), Some(9), Err(RollbackError::NoSuchGeneration(9)));
        check(ABC, &[1], Some(1), None, Err(RollbackError::NothingEarlier { from: 1 }));
        check(&[], &[], None, None, Err(RollbackError::NoGenerations));
        // Nothing reported yet: from the newest.
        check(ABC, &[1, 2], None, None, Ok(2));
        // An earlier generation on the running system is no way back.
        check(&[(1, "/a", "main"), (2, "/b", "main"), (3, "/b", "main")], &[1, 2, 3], Some(3), None, Ok(1));
    }

    #[test]
    fn rollbacks_of_rollbacks_go_further_back() {
        // `rollback --to 2` made 4 (2's system), confirmed: the next rollback goes behind 2,
        // not forward to 3.
        let history = [ABC, &[(4, "/b", "rollback-to-2")]].concat();
        check(&history, &[1, 2, 3, 4], Some(4), None, Ok(1));
        // And a rollback of that rollback (5 runs 1's system) has nothing behind it.
        let history = [&history[..], &[(5, "/a", "rollback-to-1")]].concat();
        check(&history, &[1, 2, 3, 4, 5], Some(5), None, Err(RollbackError::NothingEarlier { from: 1 }));
        // A rollback to a rollback generation stands where that one's target stands.
        let history = [ABC, &[(4, "/b", "rollback-to-2"), (5, "/d", "main"), (6, "/b", "rollback-to-4")]].concat();
        check(&history, &[1, 2, 3, 4, 5, 6], Some(6), None, Ok(1));
        // A redeploy of 3 stands where 3 stands.
        let history = [ABC, &[(4, "/c", "redeploy-3")]].concat();
        check(&history, &[1, 2, 4], Some(4), None, Ok(2));
    }

    #[test]
    fn rollbacks_pass_generations_that_were_rolled_back() {
        // 2 was rolled back by the host, 3 confirmed: back to 1, never to the broken 2.
        check(ABC, &[1, 3], Some(3), None, Ok(1));
        // 3 was rolled back (the host runs 2 again): back from 2 to 1.
        check(ABC, &[1, 2], Some(2), None, Ok(1));
        // Nothing confirmed before a rolled-back generation.
        check(ABC, &[3], Some(3), None, Err(RollbackError::NothingEarlier { from: 3 }));
    }

    #[test]
    fn rollbacks_to_pinned_generations() {
        // Retention kept 1 only because its system is pinned (2 was pruned): `--to 1` goes
        // there, confirmed or not, and the default rule still finds it when it was confirmed.
        let history = [(1, "/pinned", "main"), (3, "/c", "main"), (4, "/d", "main")];
        check(&history, &[4], Some(4), Some(1), Ok(1));
        check(&history, &[1, 4], Some(4), None, Ok(1));
        check(&history, &[4], Some(4), None, Err(RollbackError::NothingEarlier { from: 4 }));
    }

    #[test]
    fn made_up_pointers_do_not_loop() {
        let history = [(1, "/a", "main"), (2, "/b", "rollback-to-2"), (3, "/c", "rollback-to-9")];
        let steps: Vec<Step<'_>> = history.iter().map(|(n, s, b)| Step { number: *n, system: s, branch: b }).collect();
        assert_eq!((origin(&steps, 2), origin(&steps, 3)), (2, 3));
    }

    #[test]
    fn redeploys() {
        let rows: Vec<GenerationRow> = ABC.iter().rev().map(|(n, p, b)| g(*n, p, b)).collect();
        assert_eq!(redeploy_target(&rows, None).map(|g| g.number), Ok(3));
        assert_eq!(redeploy_target(&rows, Some(2)).map(|g| g.number), Ok(2));
        assert_eq!(redeploy_target(&rows, Some(7)).map(|g| g.number), Err(RollbackError::NoSuchGeneration(7)));
        assert_eq!(redeploy_target(&[], None).map(|g| g.number), Err(RollbackError::NoGenerations));
    }
}
