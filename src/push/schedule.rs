//! PURE: which missing path may start uploading now.
//!
//! The server refuses a path whose references are not yet in the cache, so a path becomes
//! ready only when every reference it has *among the paths being uploaded* has finished.
//! References the server already holds, and self-references, never hold a path back.

use std::collections::{HashMap, VecDeque};

use crate::nixfmt::PathClaim;

/// The upload plan for a set of missing paths.
#[derive(Debug)]
pub struct Schedule {
    claims: Vec<Option<PathClaim>>,
    /// Per path: how many of its references are still to be uploaded.
    waiting: Vec<usize>,
    /// Per path: the paths that reference it.
    referrers: Vec<Vec<usize>>,
    index: HashMap<String, usize>,
    ready: VecDeque<usize>,
    done: Vec<bool>,
    finished: usize,
}

impl Schedule {
    /// Plans the upload of `claims` (the missing paths); ties keep the order given.
    pub fn new(claims: Vec<PathClaim>) -> Self {
        let index: HashMap<String, usize> = claims.iter().enumerate().map(|(i, c)| (c.path.clone(), i)).collect();
        let mut waiting = vec![0; claims.len()];
        let mut referrers = vec![Vec::new(); claims.len()];
        for (i, claim) in claims.iter().enumerate() {
            let mut refs: Vec<usize> = claim.references.iter().filter_map(|r| index.get(r).copied()).collect();
            refs.sort_unstable();
            refs.dedup();
            for r in refs.into_iter().filter(|&r| r != i) {
                waiting[i] += 1;
                referrers[r].push(i);
            }
        }
        let ready = (0..claims.len()).filter(|&i| waiting[i] == 0).collect();
        let done = vec![false; claims.len()];
        Self { claims: claims.into_iter().map(Some).collect(), waiting, referrers, index, ready, done, finished: 0 }
    }

    /// The next path whose references are all uploaded, if any; each path is returned once.
    pub fn next_ready(&mut self) -> Option<PathClaim> {
        let i = self.ready.pop_front()?;
        self.claims[i].take()
    }

    /// Records that `path` is now in the cache, which may make its referrers ready.
    pub fn finished(&mut self, path: &str) {
        let Some(&i) = self.index.get(path) else {
            return;
        };
        if std::mem::replace(&mut self.done[i], true) {
            return;
        }
        self.finished += 1;
        for &j in &self.referrers[i] {
            self.waiting[j] -= 1;
            if self.waiting[j] == 0 {
                self.ready.push_back(j);
            }
        }
    }

    /// Whether every path has been reported [`finished`](Self::finished).
    pub fn is_done(&self) -> bool {
        self.finished == self.claims.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(path: &str, refs: &[&str]) -> PathClaim {
        PathClaim {
            path: path.to_owned(),
            nar_hash: String::new(),
            nar_size: 0,
            references: refs.iter().map(|r| r.to_string()).collect(),
            deriver: None,
            ca: None,
            signatures: Vec::new(),
        }
    }

    fn drain(schedule: &mut Schedule) -> Vec<String> {
        std::iter::from_fn(|| schedule.next_ready()).map(|c| c.path).collect()
    }

    /// Runs the plan in waves (everything ready starts, then all of it finishes) and returns
    /// the waves: what could upload in parallel.
    #[track_caller]
    fn check(input: &[(&str, &[&str])], expected: &[&[&str]]) {
        let mut schedule = Schedule::new(input.iter().map(|(p, r)| claim(p, r)).collect());
        let mut waves = Vec::new();
        loop {
            let wave = drain(&mut schedule);
            if wave.is_empty() {
                break;
            }
            wave.iter().for_each(|p| schedule.finished(p));
            waves.push(wave);
        }
        assert!(schedule.is_done(), "stuck after {waves:?}");
        assert_eq!(waves, expected);
    }

    #[test]
    fn paths_wait_for_their_missing_references() {
        check(&[], &[]);
        check(&[("a", &[]), ("b", &[])], &[&["a", "b"]]);
        check(&[("c", &[]), ("b", &["c"]), ("a", &["b", "c"])], &[&["c"], &["b"], &["a"]]);
        // References already in the cache (not in the set) and self-references do not wait.
        check(&[("a", &["a", "/nix/store/present"]), ("b", &["a"])], &[&["a"], &["b"]]);
        check(
            &[("base", &[]), ("l", &["base"]), ("r", &["base"]), ("top", &["l", "r"]), ("solo", &[])],
            &[&["base", "solo"], &["l", "r"], &["top"]],
        );
    }

    #[test]
    fn a_referrer_waits_for_every_reference() {
        let mut schedule = Schedule::new(vec![claim("l", &[]), claim("r", &[]), claim("top", &["l", "r"])]);
        assert_eq!(drain(&mut schedule), ["l", "r"]);
        schedule.finished("l");
        assert_eq!(drain(&mut schedule), Vec::<String>::new());
        schedule.finished("r");
        assert_eq!(drain(&mut schedule), ["top"]);
        assert!(!schedule.is_done());
        schedule.finished("top");
        assert!(schedule.is_done());
    }
}
