//! PURE: what a switch from one system closure to another changes — packages added, removed
//! and changed (name and version from store path names, as `builtins.parseDrvName` splits
//! them), the closure's size before and after, the bytes a host must download (the paths of
//! the new closure it does not have yet, compressed as the cache stores them), and whether
//! the switch needs a reboot (a kernel, initrd, kernel-module or systemd path changed).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

/// One path of a closure, as the cache's index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosurePath {
    /// Store-path basename (`<hash>-<name>`).
    pub basename: String,
    /// Uncompressed NAR size.
    pub nar_size: u64,
    /// Size of the NAR file the cache serves (what a host downloads).
    pub file_size: u64,
}

/// A package whose versions differ between the two closures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Changed {
    /// Package name.
    pub name: String,
    /// Its versions before (sorted; empty: unversioned).
    pub from: Vec<String>,
    /// Its versions after.
    pub to: Vec<String>,
}

/// What switching from one closure to another changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClosureDiff {
    /// Packages only in the new closure (`name-version`, or `name`).
    pub added: Vec<String>,
    /// Packages only in the old closure.
    pub removed: Vec<String>,
    /// Packages in both, with other versions.
    pub changed: Vec<Changed>,
    /// Store paths only in the new closure (rebuilds of the same version included).
    pub paths_added: usize,
    /// Store paths only in the old closure.
    pub paths_removed: usize,
    /// NAR bytes of the old closure.
    pub closure_bytes_before: u64,
    /// NAR bytes of the new closure.
    pub closure_bytes_after: u64,
    /// Compressed bytes of the paths the host lacks: what it downloads.
    pub download_bytes: u64,
    /// The boot-relevant packages whose paths changed (kernel, initrd, kernel modules,
    /// systemd): the switch needs a reboot to run fully when any did.
    pub reboot_for: Vec<String>,
}

impl ClosureDiff {
    /// Whether the switch needs a reboot to run fully.
    pub fn needs_reboot(&self) -> bool {
        !self.reboot_for.is_empty()
    }

    /// The summary in short, for a forge's status line: `+1 -0 ~2 packages, 12.3 MiB to
    /// download, reboot` (`, reboot` only when the switch needs one).
    pub fn short(&self) -> String {
        let reboot = if self.needs_reboot() { ", reboot" } else { "" };
        format!(
            "+{} -{} ~{} packages, {} to download{reboot}",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            bytes(self.download_bytes)
        )
    }
}

/// `(name, version)` as `builtins.parseDrvName` splits a store path name: the version starts
/// after the first `-` that is followed by a character other than a letter.
pub fn name_version(name: &str) -> (&str, &str) {
    let bytes = name.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'-' && bytes.get(i + 1).is_some_and(|next| !next.is_ascii_alphabetic()) {
            return (&name[..i], &name[i + 1..]);
        }
    }
    (name, "")
}

/// The name part of a basename (after `<hash>-`).
fn store_name(basename: &str) -> &str {
    basename.split_once('-').map_or(basename, |(_, name)| name)
}

/// Packages whose change needs a reboot: the kernel, its modules, the initrd, systemd.
fn boot_relevant(package: &str) -> bool {
    package == "linux"
        || package == "systemd"
        || package == "kernel-modules"
        || package.starts_with("initrd")
        || (package.starts_with("linux") && package.ends_with("-modules"))
}

/// The difference from closure `old` to closure `new` (each path once; any order).
pub fn diff(old: &[ClosurePath], new: &[ClosurePath]) -> ClosureDiff {
    let old_names: HashSet<&str> = old.iter().map(|p| p.basename.as_str()).collect();
    let new_names: HashSet<&str> = new.iter().map(|p| p.basename.as_str()).collect();
    let versions = |paths: &[ClosurePath]| {
        let mut by_package: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in paths {
            let (name, version) = name_version(store_name(&p.basename));
            by_package.entry(name.to_owned()).or_default().insert(version.to_owned());
        }
        by_package
    };
    let (before, after) = (versions(old), versions(new));
    let label = |name: &str, versions: &BTreeSet<String>| match versions.iter().find(|v| !v.is_empty()) {
        Some(version) => format!("{name}-{version}"),
        None => name.to_owned(),
    };
    let mut result = ClosureDiff::default();
    for (name, to) in &after {
        match before.get(name) {
            None => result.added.push(label(name, to)),
            Some(from) if from != to => result.changed.push(Changed {
                name: name.clone(),
                from: from.iter().cloned().collect(),
                to: to.iter().cloned().collect(),
            }),
            Some(_) => {}
        }
    }
    result.removed = before.iter().filter(|(name, _)| !after.contains_key(*name)).map(|(n, v)| label(n, v)).collect();
    let fresh: Vec<&ClosurePath> = new.iter().filter(|p| !old_names.contains(p.basename.as_str())).collect();
    let gone: Vec<&ClosurePath> = old.iter().filter(|p| !new_names.contains(p.basename.as_str())).collect();
    result.paths_added = fresh.len();
    result.paths_removed = gone.len();
    result.closure_bytes_before = old.iter().map(|p| p.nar_size).sum();
    result.closure_bytes_after = new.iter().map(|p| p.nar_size).sum();
    result.download_bytes = fresh.iter().map(|p| p.file_size).sum();
    let reboot: BTreeSet<&str> = fresh
        .iter()
        .chain(&gone)
        .map(|p| name_version(store_name(&p.basename)).0)
        .filter(|package| boot_relevant(package))
        .collect();
    result.reboot_for = reboot.into_iter().map(str::to_owned).collect();
    result
}

/// One end of a diff.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DiffEnd {
    /// Generation number.
    pub number: i64,
    /// Its system.
    pub store_path: String,
}

/// `GET /api/v1/hosts/{name}/diff` answer.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct DiffView {
    /// Host name.
    pub host: String,
    /// From (none: the host's first system).
    pub from: Option<DiffEnd>,
    /// To.
    pub to: DiffEnd,
    /// What the switch changes.
    pub diff: ClosureDiff,
    /// The diff stored with generation `to` when it was made (from what the host ran then),
    /// not one computed now from the index.
    #[serde(default)]
    pub stored: bool,
}

/// Which generations `berth diff HOST [FROM] [TO]` compares: `to` defaults to the newest
/// (desired) one; `from` to what the host runs (`active`), or, when it runs `to` already or
/// nothing yet, the generation before `to` (none before 1: a first system, all added).
pub fn endpoints(newest: i64, active: Option<i64>, from: Option<i64>, to: Option<i64>) -> (Option<i64>, i64) {
    let to = to.unwrap_or(newest);
    let from = from.or(active.filter(|a| *a != to)).or((to > 1).then_some(to - 1));
    (from, to)
}

/// Bytes as `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// One line: `+2 -1 ~3 packages, 14 paths to download (12.3 MiB), closure 1.2 GiB (+4.5 MiB), reboot: no`.
impl fmt::Display for ClosureDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let growth = self.closure_bytes_after as i128 - self.closure_bytes_before as i128;
        let sign = if growth < 0 { "-" } else { "+" };
        write!(
            f,
            "+{} -{} ~{} packages, {} paths to download ({}), closure {} ({sign}{}), reboot: {}",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.paths_added,
            bytes(self.download_bytes),
            bytes(self.closure_bytes_after),
            bytes(growth.unsigned_abs() as u64),
            match self.needs_reboot() {
                true => format!("yes ({})", self.reboot_for.join(", ")),
                false => "no".to_owned(),
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(basename: &str, size: u64) -> ClosurePath {
        ClosurePath { basename: basename.into(), nar_size: size, file_size: size / 2 }
    }

    #[test]
    fn names_and_versions_split_as_nix_splits_them() {
        for (name, expected) in [
            ("hello-2.12.1", ("hello", "2.12.1")),
            ("gnu-hello-2.12", ("gnu-hello", "2.12")),
            ("nixos-system-web-1-24.05.20240101", ("nixos-system-web", "1-24.05.20240101")),
            ("linux-6.6.8-modules", ("linux", "6.6.8-modules")),
            ("systemd-254.6", ("systemd", "254.6")),
            ("etc", ("etc", "")),
            ("unit-nginx.service", ("unit-nginx.service", "")),
            ("python3.11-requests-2.31.0", ("python3.11-requests", "2.31.0")),
            ("a-", ("a-", "")),
            ("ü-1", ("ü", "1")),
        ] {
            assert_eq!(name_version(name), expected, "{name}");
        }
    }

    #[test]
    fn a_switch_is_described_by_packages_sizes_and_downloads() {
        let old =
            [p("aaaa-hello-2.12", 100), p("bbbb-openssl-3.0.12", 1000), p("cccc-etc", 10), p("dddd-curl-8.4.0", 200)];
        let new =
            [p("aaaa-hello-2.12", 100), p("eeee-openssl-3.0.13", 1100), p("ffff-etc", 12), p("gggg-nginx-1.24.0", 300)];
        let d = diff(&old, &new);
        assert_eq!(d.added, ["nginx-1.24.0"]);
        assert_eq!(d.removed, ["curl-8.4.0"]);
        assert_eq!(
            d.changed,
            [Changed { name: "openssl".into(), from: vec!["3.0.12".into()], to: vec!["3.0.13".into()] }]
        );
        assert_eq!((d.paths_added, d.paths_removed), (3, 3), "etc was rebuilt: a path, not a package change");
        assert_eq!((d.closure_bytes_before, d.closure_bytes_after), (1310, 1512));
        assert_eq!(d.download_bytes, 550 + 6 + 150);
        assert!(!d.needs_reboot());
        assert_eq!(
            d.to_string(),
            "+1 -1 ~1 packages, 3 paths to download (706 B), closure 1.5 KiB (+202 B), reboot: no"
        );
        assert_eq!(
            diff(&new, &new),
            ClosureDiff { closure_bytes_before: 1512, closure_bytes_after: 1512, ..Default::default() }
        );
    }

    #[test]
    fn kernel_initrd_modules_or_systemd_changes_need_a_reboot() {
        let base = [p("aaaa-hello-2.12", 1)];
        for (changed, reason) in [
            ("kkkk-linux-6.6.9", "linux"),
            ("kkkk-linux-6.6.9-modules", "linux"),
            ("kkkk-kernel-modules", "kernel-modules"),
            ("kkkk-initrd-linux-6.6.9", "initrd-linux"),
            ("kkkk-initrd", "initrd"),
            ("kkkk-systemd-255.2", "systemd"),
        ] {
            let new: Vec<_> = base.iter().cloned().chain([p(changed, 5)]).collect();
            let d = diff(&base, &new);
            assert_eq!(d.reboot_for, [reason], "{changed}");
            assert!(d.to_string().ends_with(&format!("reboot: yes ({reason})")), "{d}");
        }
        // A removed kernel counts too; a package merely named like one does not.
        assert!(diff(&[p("kkkk-linux-6.6.8", 1)], &[]).needs_reboot());
        assert!(!diff(&[], &[p("kkkk-linuxdoc-tools-0.9", 1), p("kkkk-systemd-tools", 1)]).needs_reboot());
    }

    #[test]
    fn diff_endpoints_default_to_what_runs_and_what_should() {
        for ((newest, active, from, to), expected) in [
            ((5, Some(3), None, None), (Some(3), 5)),
            ((5, Some(5), None, None), (Some(4), 5)),
            ((5, None, None, None), (Some(4), 5)),
            ((1, None, None, None), (None, 1)),
            ((5, Some(3), Some(1), None), (Some(1), 5)),
            ((5, Some(3), None, Some(2)), (Some(3), 2)),
            ((5, Some(2), None, Some(2)), (Some(1), 2)),
        ] {
            assert_eq!(endpoints(newest, active, from, to), expected, "{newest} {active:?} {from:?} {to:?}");
        }
    }

    #[test]
    fn byte_counts_read_as_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
