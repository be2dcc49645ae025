//! PURE: the garbage-collection planner. Given a snapshot of the index and a retention
//! policy, decide which generations to drop, which paths and NAR files to delete, and how
//! many bytes that frees. No I/O, no async: tested (and benchmarked) without storage.
//!
//! What is kept: per host the last N generations, every generation newer than the age
//! limit, and — whatever N says — the generation the host reports active, the one it would
//! roll back to (`deploy::rollback::way_back`: the newest generation it confirmed before where
//! what it runs stands, with another system), every generation whose system is pinned, the one
//! it is applying (its last report is `downloading`, `activating` or `healthy`) and the
//! newest (desired) one; every named pin; the toplevel of every build still in flight (it is about
//! to become a generation, and may be an old system built again); every path pushed within
//! the grace period that no dropped generation reaches (a push in flight); and the whole
//! closure of all of these, following references.

use std::collections::{HashMap, HashSet};

use crate::deploy::rollback::{way_back, Step};

/// One published path, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEntry {
    /// Store-path hash part.
    pub hash: String,
    /// Its NAR file.
    pub nar_file: String,
    /// The NAR file's size.
    pub file_size: u64,
    /// When it was published (Unix seconds).
    pub created_at: i64,
    /// Hash parts of the paths it references (itself excluded).
    pub references: Vec<String>,
}

/// One generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationEntry {
    /// Host.
    pub host: String,
    /// Number.
    pub number: i64,
    /// Hash part of its toplevel.
    pub root: String,
    /// When it was made.
    pub created_at: i64,
    /// The branch that made it (`rollback-to-N` and `redeploy-N` stand where N stands).
    pub branch: String,
}

/// Everything the planner needs, read from the index at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every published path.
    pub paths: Vec<PathEntry>,
    /// Every generation.
    pub generations: Vec<GenerationEntry>,
    /// Per host, the generation it reports active.
    pub active: HashMap<String, i64>,
    /// Per host, every generation it ever reported `confirmed`.
    pub confirmed: HashMap<String, Vec<i64>>,
    /// Per host, the generation it is applying (its last report is still in progress).
    pub in_flight: HashMap<String, i64>,
    /// Per host, the generations an open rollout holds (its wave may still be released).
    pub held: HashMap<String, Vec<i64>>,
    /// Hash parts of pinned store paths.
    pub pins: Vec<String>,
    /// Hash parts of the toplevels of builds still in flight (built, not yet generations).
    pub building: Vec<String>,
    /// NAR files received but referenced by no path: (name, size, received at).
    pub loose_nar_files: Vec<(String, u64, i64)>,
    /// The time of the snapshot.
    pub now: i64,
}

/// The retention policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Generations kept per host (at least 1).
    pub keep_last: usize,
    /// Per-host overrides of `keep_last`.
    pub keep_last_per_host: HashMap<String, usize>,
    /// Also keep every generation younger than this many seconds.
    pub keep_newer_than: Option<i64>,
    /// Seconds during which a fresh upload is kept even when nothing references it.
    pub grace_period: i64,
}

impl Policy {
    /// This policy with `keep` generations kept per host, every per-host override dropped:
    /// what `berth gc --keep N` asks for one run.
    pub fn with_keep(&self, keep: usize) -> Policy {
        Policy { keep_last: keep, keep_last_per_host: HashMap::new(), ..self.clone() }
    }
}

/// What a collection will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// (host, number) of each generation dropped.
    pub drop_generations: Vec<(String, i64)>,
    /// Hash parts of the paths to delete.
    pub delete_paths: Vec<String>,
    /// NAR files to delete (no kept path uses them).
    pub delete_nar_files: Vec<String>,
    /// Sum of the deleted NAR files' sizes.
    pub bytes_freed: u64,
    /// Paths kept.
    pub kept_paths: usize,
}

/// Computes the plan. Deterministic: outputs are sorted.
pub fn plan(snapshot: &Snapshot, policy: &Policy) -> Plan {
    let (kept_generations, dropped) = split_generations(snapshot, policy);
    let by_hash: HashMap<&str, &PathEntry> = snapshot.paths.iter().map(|p| (p.hash.as_str(), p)).collect();

    // Paths reachable only from dropped generations lose the grace period's protection.
    let dropped_roots: Vec<&str> = dropped.iter().map(|g| g.root.as_str()).collect();
    let dropped_closure = closure(&by_hash, dropped_roots);
    let mut roots: Vec<&str> = kept_generations.iter().map(|g| g.root.as_str()).collect();
    roots.extend(snapshot.pins.iter().map(String::as_str));
    // A build publishes its closure, then records generations: a path it found already in
    // the cache (an old system built again, say) must not go in between.
    roots.extend(snapshot.building.iter().map(String::as_str));
    let fresh = snapshot.now - policy.grace_period;
    roots.extend(
        snapshot
            .paths
            .iter()
            .filter(|p| p.created_at > fresh && !dropped_closure.contains(p.hash.as_str()))
            .map(|p| p.hash.as_str()),
    );
    let kept = closure(&by_hash, roots);

    let mut delete_paths: Vec<String> =
        snapshot.paths.iter().filter(|p| !kept.contains(p.hash.as_str())).map(|p| p.hash.clone()).collect();
    delete_paths.sort();
    let kept_files: HashSet<&str> =
        snapshot.paths.iter().filter(|p| kept.contains(p.hash.as_str())).map(|p| p.nar_file.as_str()).collect();
    let mut files: HashMap<&str, u64> = HashMap::new();
    for p in snapshot.paths.iter().filter(|p| !kept.contains(p.hash.as_str())) {
        if !kept_files.contains(p.nar_file.as_str()) {
            files.insert(&p.nar_file, p.file_size);
        }
    }
    for (name, size, received) in &snapshot.loose_nar_files {
        if *received <= fresh && !kept_files.contains(name.as_str()) {
            files.insert(name, *size);
        }
    }
    let mut delete_nar_files: Vec<String> = files.keys().map(|f| f.to_string()).collect();
    delete_nar_files.sort();
    let mut drop_generations: Vec<(String, i64)> = dropped.iter().map(|g| (g.host.clone(), g.number)).collect();
    drop_generations.sort();
    Plan { drop_generations, delete_paths, bytes_freed: files.values().sum(), delete_nar_files, kept_paths: kept.len() }
}

/// Splits generations into kept and dropped by the per-host rules.
fn split_generations<'a>(
    snapshot: &'a Snapshot,
    policy: &Policy,
) -> (Vec<&'a GenerationEntry>, Vec<&'a GenerationEntry>) {
    let mut by_host: HashMap<&str, Vec<&GenerationEntry>> = HashMap::new();
    for g in &snapshot.generations {
        by_host.entry(&g.host).or_default().push(g);
    }
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    for (host, mut generations) in by_host {
        generations.sort_by_key(|g| std::cmp::Reverse(g.number));
        let keep_last = policy.keep_last_per_host.get(host).copied().unwrap_or(policy.keep_last).max(1);
        let protected = protected(snapshot, host, &generations);
        for (i, g) in generations.into_iter().enumerate() {
            let young = policy.keep_newer_than.is_some_and(|age| g.created_at > snapshot.now - age);
            if i < keep_last || young || protected.contains(&g.number) {
                kept.push(g);
            } else {
                dropped.push(g);
            }
        }
    }
    (kept, dropped)
}

/// The generations of `host` (`generations` newest first) that no `keep` may drop: the one
/// it runs, the one it would roll back to (the rule `berth rollback` follows), the one it is
/// applying, every one whose system is pinned (an admin's way back), and every one an open
/// rollout holds (a later wave will hand it to the host). The newest is kept
/// by `keep_last`, which is at least 1.
fn protected(snapshot: &Snapshot, host: &str, generations: &[&GenerationEntry]) -> Vec<i64> {
    let active = snapshot.active.get(host).copied();
    let confirmed = snapshot.confirmed.get(host).map(Vec::as_slice).unwrap_or_default();
    let steps: Vec<Step<'_>> =
        generations.iter().map(|g| Step { number: g.number, system: &g.root, branch: &g.branch }).collect();
    let rollback = active.and_then(|current| way_back(&steps, confirmed, current));
    let pinned = generations.iter().filter(|g| snapshot.pins.contains(&g.root)).map(|g| g.number);
    let held = snapshot.held.get(host).into_iter().flatten().copied();
    active.into_iter().chain(rollback).chain(snapshot.in_flight.get(host).copied()).chain(pinned).chain(held).collect()
}

/// Every path reachable from `roots` (roots missing from the index are ignored).
fn closure<'a>(by_hash: &HashMap<&'a str, &'a PathEntry>, roots: Vec<&'a str>) -> HashSet<&'a str> {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut stack = roots;
    while let Some(hash) = stack.pop() {
        let Some(entry) = by_hash.get(hash) else { continue };
        if seen.insert(entry.hash.as_str()) {
            stack.extend(entry.references.iter().map(String::as_str));
        }
    }
    seen
}

/// The plan as text (for `--dry-run`, logs and snapshots).
pub fn render(plan: &Plan) -> String {
    let mut out = format!(
        "drop {} generation(s), delete {} path(s) and {} NAR file(s), free {} bytes; keep {} path(s)\n",
        plan.drop_generations.len(),
        plan.delete_paths.len(),
        plan.delete_nar_files.len(),
        plan.bytes_freed,
        plan.kept_paths
    );
    for (host, number) in &plan.drop_generations {
        out += &format!("  drop {host} generation {number}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn path(hash: &str, refs: &[&str], created_at: i64) -> PathEntry {
        PathEntry {
            hash: hash.into(),
            nar_file: format!("{hash}.nar.zst"),
            file_size: 100,
            created_at,
            references: refs.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn generation(host: &str, number: i64, root: &str) -> GenerationEntry {
        GenerationEntry { host: host.into(), number, root: root.into(), created_at: number, branch: "main".into() }
    }

    fn policy(keep_last: usize) -> Policy {
        Policy { keep_last, keep_last_per_host: HashMap::new(), keep_newer_than: None, grace_period: DAY }
    }

    /// Three generations of host `a` sharing `lib`; a fresh unreferenced push; an old
    /// orphan; a pin.
    fn snapshot() -> Snapshot {
        Snapshot {
            paths: vec![
                path("lib", &[], 0),
                path("old-lib", &[], 0),
                path("sys1", &["lib", "old-lib"], 1),
                path("sys2", &["lib"], 2),
                path("sys3", &["lib"], 3),
                path("orphan", &[], 0),
                path("pinned", &[], 0),
                path("fresh", &["old-lib"], 10 * DAY),
            ],
            generations: vec![generation("a", 1, "sys1"), generation("a", 2, "sys2"), generation("a", 3, "sys3")],
            active: HashMap::new(),
            confirmed: HashMap::new(),
            in_flight: HashMap::new(),
            held: HashMap::new(),
            pins: vec!["pinned".into()],
            building: vec![],
            loose_nar_files: vec![("loose.nar".into(), 7, 0), ("new-loose.nar".into(), 7, 10 * DAY)],
            now: 10 * DAY,
        }
    }

    #[test]
    fn keeps_the_last_n_and_their_closures() {
        let plan = plan(&snapshot(), &policy(2));
        insta::assert_snapshot!(render(&plan), @r"
        drop 1 generation(s), delete 2 path(s) and 3 NAR file(s), free 207 bytes; keep 6 path(s)
          drop a generation 1
        ");
        assert_eq!(plan.delete_paths, ["orphan", "sys1"], "old-lib survives: a fresh push references it");
        assert!(plan.delete_nar_files.contains(&"loose.nar".to_string()));
        assert!(!plan.delete_nar_files.contains(&"new-loose.nar".to_string()), "a fresh upload is in its grace period");
    }

    #[test]
    fn the_active_generation_survives_whatever_n_says() {
        let mut s = snapshot();
        s.active.insert("a".into(), 1);
        let plan = plan(&s, &policy(1));
        assert_eq!(plan.drop_generations, [("a".to_string(), 2)]);
        assert!(!plan.delete_paths.contains(&"sys1".to_string()));
        assert!(plan.delete_paths.contains(&"sys2".to_string()));
    }

    /// Generations 1…5 of host `a`, each its own system, the host running `active` after
    /// confirming `confirmed`, applying `in_flight`; `--keep 1`: what stays.
    #[track_caller]
    fn check_kept(active: Option<i64>, confirmed: &[i64], in_flight: Option<i64>, expected: &[i64]) {
        let mut s = Snapshot { now: 10 * DAY, ..Snapshot::default() };
        for n in 1..=5 {
            s.paths.push(path(&format!("sys{n}"), &[], 0));
            s.generations.push(generation("a", n, &format!("sys{n}")));
        }
        s.active.extend(active.map(|n| ("a".to_string(), n)));
        s.confirmed.insert("a".into(), confirmed.to_vec());
        s.in_flight.extend(in_flight.map(|n| ("a".to_string(), n)));
        let dropped = plan(&s, &policy(1)).drop_generations;
        let kept: Vec<i64> = (1..=5).filter(|n| !dropped.contains(&("a".to_string(), *n))).collect();
        assert_eq!(kept, expected, "active {active:?}, confirmed {confirmed:?}, in flight {in_flight:?}");
    }

    #[test]
    fn a_host_can_always_roll_back_whatever_n_says() {
        // Running 4, confirmed 2 and 4 (3 failed): 2 is where a rollback goes.
        check_kept(Some(4), &[2, 4], None, &[2, 4, 5]);
        check_kept(Some(4), &[1, 2, 3, 4], None, &[3, 4, 5]);
        // Rolled back to 2 (a rollback generation 5 that runs 2's system is not confirmed yet).
        check_kept(Some(2), &[1, 2, 4], None, &[1, 2, 5]);
        // Nothing confirmed before what it runs: no rollback to keep.
        check_kept(Some(1), &[1], None, &[1, 5]);
        check_kept(None, &[], None, &[5]);
        // Applying 3 while 5 was made meanwhile: 3 stays until the host moves on.
        check_kept(Some(2), &[1, 2], Some(3), &[1, 2, 3, 5]);
    }

    #[test]
    fn a_generation_an_open_rollout_holds_stays() {
        let mut s = Snapshot { now: 10 * DAY, ..Snapshot::default() };
        for n in 1..=4 {
            s.paths.push(path(&format!("sys{n}"), &[], 0));
            s.generations.push(generation("a", n, &format!("sys{n}")));
        }
        s.active.insert("a".into(), 1);
        // 3 waits for its wave (a queued rollout holds 4 behind it); 2 was held by an aborted one.
        s.held.insert("a".into(), vec![3, 4]);
        assert_eq!(plan(&s, &policy(1)).drop_generations, [("a".to_string(), 2)]);
    }

    #[test]
    fn retention_keeps_the_target_berth_rollback_picks() {
        // 6 is `rollback --to 3` (3's system), confirmed: the way back is behind 3, so 2
        // stays, and 4 and 5 (what the rollback left) may go.
        let mut s = Snapshot { now: 10 * DAY, ..Snapshot::default() };
        for n in 1..=6 {
            let root = if n == 6 { "sys3".to_string() } else { format!("sys{n}") };
            s.paths.push(path(&root, &[], 0));
            let mut g = generation("a", n, &root);
            if n == 6 {
                g.branch = "rollback-to-3".into();
            }
            s.generations.push(g);
        }
        s.active.insert("a".into(), 6);
        s.confirmed.insert("a".into(), vec![1, 2, 3, 4, 5, 6]);
        let dropped = plan(&s, &policy(1)).drop_generations;
        let kept: Vec<i64> = (1..=6).filter(|n| !dropped.contains(&("a".to_string(), *n))).collect();
        assert_eq!(kept, [2, 6]);
    }

    #[test]
    fn a_generation_whose_system_is_pinned_is_kept() {
        let mut s = snapshot();
        s.pins.push("sys1".into());
        let dropped = plan(&s, &policy(1)).drop_generations;
        assert!(!dropped.contains(&("a".to_string(), 1)), "{dropped:?}");
    }

    #[test]
    fn a_rollback_target_on_the_running_system_is_skipped() {
        let mut s = snapshot();
        // 3 runs 1's system again (a rollback); 2 is the real way back.
        s.generations[2].root = "sys1".into();
        s.active.insert("a".into(), 3);
        s.confirmed.insert("a".into(), vec![1, 2, 3]);
        assert!(plan(&s, &policy(1)).drop_generations.contains(&("a".to_string(), 1)));
        assert!(!plan(&s, &policy(1)).drop_generations.contains(&("a".to_string(), 2)));
    }

    #[test]
    fn a_dropped_generation_is_not_protected_by_the_grace_period() {
        let mut s = snapshot();
        s.now = 3; // everything is "fresh"
        let plan = plan(&s, &policy(1));
        assert!(plan.delete_paths.contains(&"sys1".to_string()) && plan.delete_paths.contains(&"sys2".to_string()));
        assert!(!plan.delete_paths.contains(&"orphan".to_string()), "a fresh unreferenced upload stays");
        assert!(!plan.delete_paths.contains(&"lib".to_string()), "shared with the kept generation");
    }

    #[test]
    fn a_build_in_flight_keeps_the_old_system_it_built_again() {
        // A revert: the build in flight produced generation 1's system again, found it in the
        // cache, and has not recorded its generation yet.
        let mut s = snapshot();
        s.building.push("sys1".into());
        let plan = plan(&s, &policy(2));
        assert_eq!(plan.drop_generations, [("a".to_string(), 1)]);
        assert!(!plan.delete_paths.contains(&"sys1".to_string()), "{:?}", plan.delete_paths);
    }

    #[test]
    fn per_host_overrides_and_age() {
        let mut p = policy(1);
        p.keep_last_per_host.insert("a".into(), 3);
        assert!(plan(&snapshot(), &p).drop_generations.is_empty());
        let mut p = policy(1);
        p.keep_newer_than = Some(10 * DAY - 1); // generations 2 and 3 are younger
        assert_eq!(plan(&snapshot(), &p).drop_generations, [("a".to_string(), 1)]);
    }

    #[test]
    fn a_shared_nar_file_is_kept_while_one_user_remains() {
        let mut s = snapshot();
        s.paths.iter_mut().find(|p| p.hash == "sys1").unwrap().nar_file = "sys3.nar.zst".into();
        let plan = plan(&s, &policy(2));
        assert!(plan.delete_paths.contains(&"sys1".to_string()));
        assert!(!plan.delete_nar_files.contains(&"sys3.nar.zst".to_string()));
    }
}
