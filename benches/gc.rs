//! Benchmark of retention on an index of 100,000 paths: the pure planner
//! (`berth::gc::plan::plan`) on a synthetic snapshot, then a whole collection
//! (`berth::gc::collect`) against a real SQLite index and a local directory store.
//!
//! `cargo bench --bench gc` (harness = false: plain `Instant` timings, no criterion).
//! Environment: `BENCH_PATHS` (default 100000) scales the fleet, `BENCH_RUNS` (default 7) sets
//! how many times the repeatable steps run.
//!
//! The shape, meant to look like a real fleet: 50 hosts × 20 generations, one a day. A fifth
//! of the paths are shared packages (each referencing up to 4 older ones); every generation's
//! toplevel references its host's 300 packages (10 of them changed per generation) and 79
//! paths of its own (configuration files, units), each referencing 2 packages. Every tenth
//! host is stuck on an old generation (its active one), 5 packages are pinned, 200 NAR files
//! were uploaded and never published. Policy: the default (keep 5, grace 1 hour).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use berth::gc::plan::{plan, GenerationEntry, PathEntry, Plan, Policy, Snapshot};
use sha2::{Digest, Sha256};

const DAY: i64 = 86_400;
const HOSTS: usize = 50;
const GENERATIONS: usize = 20;
const PACKAGES_PER_HOST: usize = 300;
const CHANGED_PER_GENERATION: usize = 10;

#[path = "support/rng.rs"]
mod rng;
use rng::Rng;

/// A store-path hash part and a NAR file name (valid nix-base32) for path number `i`.
fn names(i: usize) -> (String, String) {
    let digest = Sha256::digest(format!("berth-gc-bench-{i}").as_bytes());
    (berth::nixfmt::nixbase32(&digest[..20]), format!("{}.nar.zst", berth::nixfmt::nixbase32(&digest)))
}

/// The synthetic fleet: its snapshot, and the store path names the index needs.
struct Fleet {
    snapshot: Snapshot,
    /// Store-path basenames, by hash.
    basenames: HashMap<String, String>,
}

fn fleet(total: usize) -> Fleet {
    let mut rng = Rng(0x6265_7274_6867_6321);
    let per_generation = (total - total / 5) / (HOSTS * GENERATIONS); // toplevel + own paths
    let shared = total - per_generation * HOSTS * GENERATIONS;
    let now = 1_800_000_000;
    let start = now - GENERATIONS as i64 * DAY;
    let mut s = Snapshot { now, ..Snapshot::default() };
    let mut basenames = HashMap::new();
    let mut add = |s: &mut Snapshot, i: usize, name: String, created_at: i64, references: Vec<String>| {
        let (hash, nar_file) = names(i);
        basenames.insert(hash.clone(), format!("{hash}-{name}"));
        let file_size = 1_000 + (i as u64 * 7_919) % 200_000;
        s.paths.push(PathEntry { hash: hash.clone(), nar_file, file_size, created_at, references });
        hash
    };
    let mut packages: Vec<String> = Vec::with_capacity(shared);
    for i in 0..shared {
        let references = (0..rng.below(5)).filter(|_| i > 0).map(|_| packages[rng.below(i)].clone()).collect();
        packages.push(add(&mut s, i, format!("package-{i}"), start - DAY, references));
    }
    let mut next = shared;
    for host in 0..HOSTS {
        let mut set: Vec<String> = (0..PACKAGES_PER_HOST).map(|_| packages[rng.below(shared)].clone()).collect();
        for number in 1..=GENERATIONS {
            for _ in 0..CHANGED_PER_GENERATION {
                let slot = rng.below(PACKAGES_PER_HOST);
                set[slot] = packages[rng.below(shared)].clone();
            }
            let created_at = start + number as i64 * DAY + host as i64;
            let mut references = set.clone();
            for _ in 1..per_generation {
                let uses = vec![packages[rng.below(shared)].clone(), packages[rng.below(shared)].clone()];
                references.push(add(&mut s, next, format!("etc-{host}-{number}"), created_at, uses));
                next += 1;
            }
            let root = add(&mut s, next, format!("nixos-system-host{host}-{number}"), created_at, references);
            next += 1;
            s.generations.push(GenerationEntry {
                host: format!("host{host}"),
                number: number as i64,
                root,
                created_at,
                branch: "main".into(),
            });
        }
        let active = if host % 10 == 0 { GENERATIONS - 7 } else { GENERATIONS };
        s.active.insert(format!("host{host}"), active as i64);
    }
    s.pins = (0..5).map(|_| packages[rng.below(shared)].clone()).collect();
    s.loose_nar_files = (0..200).map(|i| (names(next + i).1, 5_000, start)).collect();
    Fleet { snapshot: s, basenames }
}

fn policy() -> Policy {
    Policy { keep_last: 5, keep_last_per_host: HashMap::new(), keep_newer_than: None, grace_period: 3600 }
}

/// min and median of `runs` timings of `f`.
fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut times = Vec::with_capacity(runs);
    let mut last = None;
    for _ in 0..runs {
        let started = Instant::now();
        last = Some(std::hint::black_box(f()));
        times.push(started.elapsed());
    }
    times.sort();
    (times[0], times[times.len() / 2], last.expect("at least one run"))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn line(what: &str, runs: usize, min: Duration, median: Duration) {
    println!("{what:<52} {:>11} median {:>11} min  ({runs} runs)", ms(median), ms(min));
    std::io::stdout().flush().unwrap();
}

fn describe(p: &Plan) -> String {
    format!(
        "drop {} generations, delete {} paths and {} NAR files ({:.1} MB), keep {} paths",
        p.drop_generations.len(),
        p.delete_paths.len(),
        p.delete_nar_files.len(),
        p.bytes_freed as f64 / 1e6,
        p.kept_paths
    )
}

fn main() {
    let total: usize = std::env::var("BENCH_PATHS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7).max(1);
    let fleet = fleet(total);
    let s = &fleet.snapshot;
    let refs: usize = s.paths.iter().map(|p| p.references.len()).sum();
    println!(
        "index: {} paths, {} references, {} generations ({HOSTS} hosts), {} pins, {} loose NAR files",
        s.paths.len(),
        refs,
        s.generations.len(),
        s.pins.len(),
        s.loose_nar_files.len()
    );

    let (min, median, planned) = time(runs, || plan(s, &policy()));
    println!("plan: {}", describe(&planned));
    line("plan (pure, synthetic snapshot)", runs, min, median);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(collect(&fleet, &planned, runs));
}

/// The same fleet in a real SQLite index and directory store: read, plan, apply, collect.
async fn collect(fleet: &Fleet, expected: &Plan, runs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let raw = berth::config::RawConfig { data_dir: Some(dir.path().to_owned()), ..Default::default() };
    let config = raw.validate(berth::config::Overrides::default()).unwrap();
    let (state, _) = berth::app::AppState::open(&config).await.unwrap();
    let started = Instant::now();
    populate(&state.db, fleet).await;
    let files = write_objects(&dir.path().join("cache"), &fleet.snapshot);
    println!("populated the index and {files} objects in {:.1} s (not measured)", started.elapsed().as_secs_f64());
    let policy = policy();
    let mut times = Vec::with_capacity(runs);
    let mut snapshot = Snapshot::default();
    for _ in 0..runs {
        let started = Instant::now();
        snapshot = state.db.gc_snapshot().await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    line("gc_snapshot (read the index)", runs, times[0], times[runs / 2]);
    let (min, median, read_plan) = time(runs, || plan(&snapshot, &policy));
    line("plan (pure, snapshot read from the index)", runs, min, median);
    assert_eq!(describe(&read_plan), describe(expected), "the index holds the synthetic fleet");

    // The index transaction alone, on a copy (it changes the index).
    let copy = dir.path().join("copy.sqlite");
    let berth::db::Db::Sqlite(pool) = &state.db else { unreachable!("the default database is SQLite") };
    sqlx::query("VACUUM INTO $1").bind(copy.to_str().unwrap()).execute(pool).await.unwrap();
    let db = berth::db::Db::open(&format!("sqlite://{}", copy.display())).await.unwrap();
    let started = Instant::now();
    let applied = db.gc_apply(|s| plan(s, &policy), 0).await.unwrap();
    let apply = started.elapsed();
    assert_eq!(describe(&applied), describe(expected));
    line("gc_apply (read + plan + forget, one transaction)", 1, apply, apply);
    let started = Instant::now();
    let mut rows = 0;
    loop {
        match db.gc_forget_references(5_000).await.unwrap() {
            0 => break,
            n => rows += n,
        }
    }
    let forget = started.elapsed();
    line(&format!("gc_forget_references ({rows} rows, after, no gate)"), 1, forget, forget);
    db.close().await;

    let started = Instant::now();
    let report = berth::gc::collect(&state, &policy, false).await.unwrap();
    let whole = started.elapsed();
    assert_eq!(report.paths_deleted, expected.delete_paths.len());
    let deleted = report.paths_deleted + report.nar_files_deleted;
    line("collect (apply + delete every object)", 1, whole, whole);
    println!(
        "  deleted {} narinfos and {} NAR files: {:.0} objects/s (the time left once the index \
         transaction and the references are done)",
        report.paths_deleted,
        report.nar_files_deleted,
        deleted as f64 / whole.saturating_sub(apply + forget).as_secs_f64()
    );
    let left = std::fs::read_dir(dir.path().join("cache/nar")).unwrap().count();
    let written = fleet.snapshot.paths.len() + fleet.snapshot.loose_nar_files.len();
    assert_eq!(left, written - expected.delete_nar_files.len(), "every planned NAR file is deleted, no other");
}

/// Inserts the fleet with multi-row statements, its clock moved to now.
async fn populate(db: &berth::db::Db, fleet: &Fleet) {
    let berth::db::Db::Sqlite(pool) = db else { unreachable!("the default database is SQLite") };
    let s = &fleet.snapshot;
    let shift = berth::db::now() - s.now;
    let mut tx = pool.begin().await.unwrap();
    for chunk in s.paths.chunks(2_000) {
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO paths (hash, store_path, nar_file, nar_hash, nar_size, file_size, narinfo, created_at) ",
        );
        q.push_values(chunk, |mut row, p| {
            let basename = &fleet.basenames[&p.hash];
            row.push_bind(&p.hash)
                .push_bind(basename)
                .push_bind(&p.nar_file)
                .push_bind("sha256:0")
                .push_bind(p.file_size as i64)
                .push_bind(p.file_size as i64)
                .push_bind(format!("StorePath: /nix/store/{basename}\n"))
                .push_bind(p.created_at + shift);
        });
        q.build().execute(&mut *tx).await.unwrap();
        let mut q = sqlx::QueryBuilder::new(
            "INSERT INTO nar_files (name, file_hash, file_size, nar_hash, nar_size, created_at) ",
        );
        q.push_values(chunk, |mut row, p| {
            row.push_bind(&p.nar_file)
                .push_bind("sha256:0")
                .push_bind(p.file_size as i64)
                .push_bind("sha256:0")
                .push_bind(p.file_size as i64)
                .push_bind(p.created_at + shift);
        });
        q.build().execute(&mut *tx).await.unwrap();
    }
    let refs: Vec<(&String, &String)> =
        s.paths.iter().flat_map(|p| p.references.iter().map(move |r| (&p.hash, &fleet.basenames[r]))).collect();
    for chunk in refs.chunks(10_000) {
        let mut q = sqlx::QueryBuilder::new("INSERT OR IGNORE INTO refs (referrer, reference) ");
        q.push_values(chunk, |mut row, (referrer, reference)| {
            row.push_bind(*referrer).push_bind(*reference);
        });
        q.build().execute(&mut *tx).await.unwrap();
    }
    for g in &s.generations {
        let root = format!("/nix/store/{}", fleet.basenames[&g.root]);
        sqlx::query(
            "INSERT INTO generations (host, number, store_path, commit_sha, branch, created_at)
             VALUES ($1, $2, $3, 'c', 'main', $4)",
        )
        .bind(&g.host)
        .bind(g.number)
        .bind(root)
        .bind(g.created_at + shift)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    for (host, active) in &s.active {
        sqlx::query("INSERT INTO hosts (name, repository, created_at, active_generation) VALUES ($1, 'fleet', 0, $2)")
            .bind(host)
            .bind(active)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    for (i, pin) in s.pins.iter().enumerate() {
        sqlx::query("INSERT INTO pins (name, store_path, created_at) VALUES ($1, $2, 0)")
            .bind(format!("pin-{i}"))
            .bind(format!("/nix/store/{}", fleet.basenames[pin]))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    for (name, size, received) in &s.loose_nar_files {
        sqlx::query(
            "INSERT INTO nar_files (name, file_hash, file_size, nar_hash, nar_size, created_at)
             VALUES ($1, 'sha256:0', $2, 'sha256:0', $2, $3)",
        )
        .bind(name)
        .bind(*size as i64)
        .bind(received + shift)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// A tiny narinfo and NAR file per path, and the loose NAR files; returns how many.
fn write_objects(cache: &Path, s: &Snapshot) -> usize {
    std::fs::create_dir_all(cache.join("nar")).unwrap();
    for p in &s.paths {
        std::fs::write(cache.join(format!("{}.narinfo", p.hash)), b"StorePath: x\n").unwrap();
        std::fs::write(cache.join("nar").join(&p.nar_file), b"x").unwrap();
    }
    for (name, _, _) in &s.loose_nar_files {
        std::fs::write(cache.join("nar").join(name), b"x").unwrap();
    }
    2 * s.paths.len() + s.loose_nar_files.len()
}
