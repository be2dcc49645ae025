//! Test-only: the fuzzing harness every parser of network bytes runs under (`cargo test`).
//!
//! Each target is a `#[test]` beside the parser it fuzzes (so it can reach private
//! functions) that calls [`run`] with a name and a property. [`run`] first runs every seed
//! in `fuzz/corpus/<name>/` (real inputs: NARs from `nix-store --dump`, narinfos Nix 2.8
//! and 2.26 wrote, payloads the forges send, and every regression found so far), then lets
//! `bolero` generate inputs for a bounded time: each a seed (or nothing) with a list of
//! mutations (bit flips, overwritten and inserted bytes, cut and duplicated spans, splices
//! of other seeds, interesting integers). Stable Rust has no coverage-guided engine, so
//! structure comes from the seeds and the mutations rather than from coverage.
//!
//! Every input is also held to bounds: no panic, at most [`MAX_MILLIS`] of wall time, and
//! at most [`MAX_ALLOC`] (plus 8 bytes per input byte) allocated at once on the thread.
//! Run one target longer with `BOLERO_RANDOM_TEST_TIME_MS`, and replay a failure with the
//! `BOLERO_RANDOM_SEED` it prints (see docs/testing.md).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bolero::generator::TypeGenerator;

/// Random inputs per target, in `cargo test` (seconds, not minutes).
const TEST_TIME: Duration = Duration::from_secs(3);
/// The most wall time one input may take (generous: debug builds, two shared cores).
const MAX_MILLIS: u128 = 2_000;
/// The most bytes one input may have allocated at once, beyond 8 per input byte.
const MAX_ALLOC: usize = 8 << 20;

/// A mutation of the input under construction.
#[derive(Debug, TypeGenerator)]
enum Mutation {
    Flip { at: u32, bit: u8 },
    Set { at: u32, byte: u8 },
    Insert { at: u32, bytes: Vec<u8> },
    Remove { at: u32, len: u16 },
    Duplicate { from: u32, len: u16, to: u32 },
    Splice { seed: u16, from: u32, len: u16, to: u32 },
    Truncate { at: u32 },
    Integer { at: u32, which: u8 },
}

/// One generated input: a seed (or the empty input) and what to do to it.
#[derive(Debug, TypeGenerator)]
struct Recipe {
    seed: u16,
    mutations: Vec<Mutation>,
}

/// Integers that break parsers: zero, one, the edges of every width, NAR-sized values.
const INTEGERS: [u64; 10] = [0, 1, 7, 8, 255, 4096, u32::MAX as u64, (1 << 63) - 1, 1 << 63, u64::MAX];

fn index(at: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        at as usize % (len + 1)
    }
}

fn span(from: u32, len: u16, total: usize) -> std::ops::Range<usize> {
    let start = index(from, total).min(total);
    start..(start + len as usize).min(total)
}

impl Recipe {
    fn apply(&self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let pick = |i: u16| seeds.get(i as usize % (seeds.len() + 1)).cloned().unwrap_or_default();
        let mut b = pick(self.seed);
        for m in &self.mutations {
            let n = b.len();
            match m {
                Mutation::Flip { at, bit } if n > 0 => b[*at as usize % n] ^= 1u8 << (bit % 8),
                Mutation::Set { at, byte } if n > 0 => b[*at as usize % n] = *byte,
                Mutation::Insert { at, bytes } => {
                    let at = index(*at, n);
                    b.splice(at..at, bytes.iter().copied());
                }
                Mutation::Remove { at, len } => {
                    b.drain(span(*at, *len, n));
                }
                Mutation::Duplicate { from, len, to } => {
                    let part = b[span(*from, *len, n)].to_vec();
                    let to = index(*to, n);
                    b.splice(to..to, part);
                }
                Mutation::Splice { seed, from, len, to } => {
                    let other = pick(*seed);
                    let part = other[span(*from, *len, other.len())].to_vec();
                    let to = index(*to, n);
                    b.splice(to..to, part);
                }
                Mutation::Truncate { at } => b.truncate(index(*at, n)),
                Mutation::Integer { at, which } => {
                    let value = INTEGERS[*which as usize % INTEGERS.len()].to_le_bytes();
                    let at = index(*at, n).min(n.saturating_sub(8));
                    for (i, v) in value.iter().enumerate() {
                        if let Some(byte) = b.get_mut(at + i) {
                            *byte = *v;
                        }
                    }
                }
                _ => {}
            }
        }
        b
    }
}

/// The seeds of target `name`: every file in `fuzz/corpus/<name>/`.
pub fn corpus(name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no seeds", dir.display());
    files.into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect()
}

/// Runs `property` on every seed of `name`, then on generated inputs for a bounded time,
/// each within the time and memory bounds.
pub fn run(name: &str, property: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let seeds = corpus(name);
    for (path, bytes) in &seeds {
        bounded(bytes, &property, &path.display().to_string());
    }
    let seeds: Vec<Vec<u8>> = seeds.into_iter().map(|(_, b)| b).collect();
    bolero::check!().with_type::<Recipe>().with_test_time(TEST_TIME).for_each(|recipe: &Recipe| {
        bounded(&recipe.apply(&seeds), &property, name);
    });
}

/// Runs `property` on `input`, checking the time and memory it took.
fn bounded(input: &[u8], property: &(impl Fn(&[u8]) + std::panic::RefUnwindSafe), what: &str) {
    let before = ALLOCATED.with(Cell::get);
    PEAK.with(|p| p.set(before));
    let start = Instant::now();
    if let Err(panic) = std::panic::catch_unwind(|| property(input)) {
        // The bytes themselves, so a failure becomes a seed and a regression test.
        let shown: String = input.iter().take(4096).map(|b| format!("{b:02x}")).collect();
        eprintln!("{what}: failing input ({} bytes), hex: {shown}", input.len());
        std::panic::resume_unwind(panic);
    }
    let took = start.elapsed().as_millis();
    let peak = (PEAK.with(Cell::get) - before).max(0) as usize;
    assert!(took <= MAX_MILLIS, "{what}: one input took {took} ms ({} bytes)", input.len());
    let bound = MAX_ALLOC + 8 * input.len();
    assert!(peak <= bound, "{what}: one input allocated {peak} bytes at once ({} bytes in)", input.len());
}

thread_local! {
    // Signed: a thread may free what another allocated.
    static ALLOCATED: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// The system allocator, counting what each thread holds and the most it held, so the
/// harness can bound one input's memory.
struct Counting;

// SAFETY: every call goes to `System` unchanged; the counters are plain thread-locals
// (const-initialised, so touching them never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        System.realloc(ptr, layout, new_size)
    }
}

fn note(delta: isize) {
    // `try_with`: a thread's last deallocations can come after its locals are gone.
    let _ = ALLOCATED.try_with(|a| {
        let now = a.get().saturating_add(delta);
        a.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

#[global_allocator]
static COUNTING: Counting = Counting;
