//! PURE: how many hosts of one build the machine can evaluate at once, and where in Nix's
//! output a host's evaluation ends.
//!
//! Evaluating one NixOS toplevel of current nixpkgs takes about 0.8 GB (and ~4 s of one
//! core), so `[builder] parallel_hosts` defaults to what the memory holds, one GiB a host,
//! never more than the cores can run, never less than one.

/// Memory set aside for one host's evaluation: the ~0.8 GB it takes, with room to spare.
pub const BYTES_PER_EVALUATION: u64 = 1 << 30;

/// The default `parallel_hosts`: `available` bytes of memory (`None`: unknown) divided by
/// [`BYTES_PER_EVALUATION`], at least 1, at most `cores`. Unknown memory: 2 (the old
/// default), within the cores.
pub fn default_parallel_hosts(available: Option<u64>, cores: usize) -> usize {
    let cores = cores.max(1);
    let by_memory = match available {
        Some(bytes) => usize::try_from(bytes / BYTES_PER_EVALUATION).unwrap_or(usize::MAX),
        None => 2,
    };
    by_memory.clamp(1, cores)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// A cgroup v2 `memory.max` (`max`: no limit), in bytes.
pub fn cgroup_limit(memory_max: &str) -> Option<u64> {
    memory_max.trim().parse().ok()
}

/// The cgroup v2 directory of `/proc/self/cgroup` (its `0::/path` line), relative to the
/// cgroup root.
pub fn cgroup_path(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(|p| p.trim_start_matches('/'))
}

/// Whether `line` of `nix build`'s stderr shows the evaluation over: Nix announces what it
/// will build or fetch, or starts doing so (Nix 2.8 and current Nix word these alike).
/// Before it: warnings, traces and fetching the flake's inputs, all evaluation. A build
/// the evaluation itself needs (import from derivation) ends it early; a toplevel already
/// built prints none of these, and its whole run is evaluation.
pub fn evaluation_ended(line: &str) -> bool {
    let announces = (line.starts_with("these ") || line.starts_with("this "))
        && (line.contains(" will be built") || line.contains(" will be fetched"));
    announces || line.starts_with("building '") || line.starts_with("copying path '")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[track_caller]
    fn check(available: Option<u64>, cores: usize, expected: usize) {
        assert_eq!(default_parallel_hosts(available, cores), expected, "{available:?} bytes, {cores} cores");
    }

    #[test]
    fn parallel_hosts_follow_memory_within_the_cores() {
        check(Some(0), 8, 1);
        check(Some(GIB - 1), 8, 1);
        check(Some(GIB), 8, 1);
        check(Some(3 * GIB + GIB / 2), 8, 3);
        check(Some(64 * GIB), 8, 8);
        check(Some(64 * GIB), 2, 2);
        check(Some(u64::MAX), 16, 16);
        check(Some(5 * GIB), 0, 1);
        check(None, 8, 2);
        check(None, 1, 1);
    }

    #[test]
    fn reads_available_memory_and_cgroup_limits() {
        let meminfo = "MemTotal:        8039592 kB\nMemFree:          211828 kB\nMemAvailable:    5242880 kB\n";
        assert_eq!(mem_available(meminfo), Some(5 * GIB));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
        assert_eq!(cgroup_limit("max\n"), None);
        assert_eq!(cgroup_limit("4294967296\n"), Some(4 * GIB));
        assert_eq!(cgroup_path("0::/system.slice/berth.service\n"), Some("system.slice/berth.service"));
        assert_eq!(cgroup_path("12:memory:/x\n"), None);
    }

    #[test]
    fn the_evaluation_ends_where_nix_starts_building_or_fetching() {
        for line in [
            "these 3 derivations will be built:",
            "this derivation will be built:",
            "these 12 paths will be fetched (3.45 MiB download, 10.20 MiB unpacked):",
            "this path will be fetched (0.01 MiB download, 0.02 MiB unpacked):",
            "building '/nix/store/0c4xz9k1ddmdxlw5l3ccqnb1m0hbnv4r-nixos-system-alpha.drv'...",
            "copying path '/nix/store/0c4xz9k1ddmdxlw5l3ccqnb1m0hbnv4r-hello' from 'http://cache'...",
        ] {
            assert!(evaluation_ended(line), "{line}");
        }
        for line in [
            "warning: Git tree '/srv/fleet' is dirty",
            "trace: these options are deprecated",
            "evaluation warning: this derivation will be built differently",
            "unpacking 'github:NixOS/nixpkgs/0123' into the Git cache...",
            "fetching git input 'git+file:///srv/fleet'",
            "alpha> building stuff",
        ] {
            assert!(!evaluation_ended(line), "{line}");
        }
    }
}
