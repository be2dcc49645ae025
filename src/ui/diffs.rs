//! PURE: a generation's stored closure diff as the host page shows it — from which
//! generation, the summary line, and one line per package added, removed or changed.

use serde::Serialize;

use crate::deploy::diff::ClosureDiff;

/// A generation's diff on the host page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffLine {
    /// What it was taken against: `generation 4`, or `nothing` (a first system).
    pub from: String,
    /// `+1 -0 ~2 packages, 14 paths to download (12.3 MiB), …`.
    pub summary: String,
    /// Whether the switch needs a reboot.
    pub reboot: bool,
    /// `+ nginx-1.24.0`, `- foo`, `~ openssl 3.0.12 -> 3.0.13`, added first.
    pub packages: Vec<String>,
}

/// The page's view of a diff taken from generation `from` (none: nothing).
pub fn diff_line(from: Option<i64>, diff: &ClosureDiff) -> DiffLine {
    let added = diff.added.iter().map(|p| format!("+ {p}"));
    let removed = diff.removed.iter().map(|p| format!("- {p}"));
    let changed = diff.changed.iter().map(|c| format!("~ {} {} -> {}", c.name, c.from.join(", "), c.to.join(", ")));
    DiffLine {
        from: from.map_or_else(|| "nothing".to_owned(), |n| format!("generation {n}")),
        summary: diff.to_string(),
        reboot: diff.needs_reboot(),
        packages: added.chain(removed).chain(changed).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::diff::Changed;

    #[test]
    fn packages_added_removed_changed_in_that_order() {
        let diff = ClosureDiff {
            added: vec!["nginx-1.24.0".into()],
            removed: vec!["tö-ö".into()],
            changed: vec![Changed { name: "linux".into(), from: vec!["6.6.8".into()], to: vec!["6.6.9".into()] }],
            reboot_for: vec!["linux".into()],
            ..ClosureDiff::default()
        };
        let line = diff_line(Some(4), &diff);
        assert_eq!(line.from, "generation 4");
        assert_eq!(line.packages, ["+ nginx-1.24.0", "- tö-ö", "~ linux 6.6.8 -> 6.6.9"]);
        assert!(line.reboot && line.summary.starts_with("+1 -1 ~1 packages") && line.summary.ends_with("yes (linux)"));
        let first = diff_line(None, &ClosureDiff::default());
        assert_eq!((first.from.as_str(), first.reboot, first.packages.len()), ("nothing", false, 0));
    }
}
