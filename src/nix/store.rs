//! Store queries: `nix path-info` and the dependency order of a closure.

use std::collections::{HashMap, VecDeque};

use super::{run, NixError};
use crate::nixfmt::PathClaim;

/// The closure of `paths` (each path and everything it references, recursively) as push
/// claims, dependencies before the paths that reference them.
///
/// Runs `nix path-info --json --recursive`; `store` is passed as `--store` (e.g. a chroot
/// store directory) when given. Substitution is off: a path missing from the store is an
/// error at once (Nix 2.8 would otherwise try every substituter first).
pub async fn path_info_closure(paths: &[String], store: Option<&str>) -> Result<Vec<PathClaim>, NixError> {
    let mut argv: Vec<String> = [
        "nix",
        "path-info",
        "--json",
        "--recursive",
        "--extra-experimental-features",
        "nix-command",
        "--option",
        "substitute",
        "false",
    ]
    .map(String::from)
    .to_vec();
    if let Some(store) = store {
        argv.extend(["--store".to_owned(), store.to_owned()]);
    }
    // `--` so that a path starting with `-` can never be read as an option.
    argv.push("--".to_owned());
    argv.extend(paths.iter().cloned());
    let output = run(&argv).await?;
    topo_sort(claims_from_json(&argv, &output.stdout)?)
}

/// One element of `nix path-info --json` (Nix 2.8). Unknown fields such as
/// `registrationTime` and `ultimate` are ignored.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonPathInfo {
    path: String,
    #[serde(default)]
    valid: Option<bool>,
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Vec<String>,
    deriver: Option<String>,
    ca: Option<String>,
    #[serde(default)]
    signatures: Vec<String>,
}

/// Converts the JSON printed by `argv` (`nix path-info --json`) into claims, in the order
/// printed.
fn claims_from_json(argv: &[String], json: &[u8]) -> Result<Vec<PathClaim>, NixError> {
    let output_err = |reason: String| NixError::Output { argv: argv.to_vec(), reason };
    let infos: Vec<JsonPathInfo> = serde_json::from_slice(json).map_err(|e| output_err(e.to_string()))?;
    infos
        .into_iter()
        .map(|info| {
            if info.valid == Some(false) {
                return Err(NixError::NotValid(info.path));
            }
            let (Some(nar_hash), Some(nar_size)) = (info.nar_hash, info.nar_size) else {
                return Err(output_err(format!("{} has no narHash or narSize", info.path)));
            };
            Ok(PathClaim {
                path: info.path,
                nar_hash,
                nar_size,
                references: info.references,
                deriver: info.deriver,
                ca: info.ca,
                signatures: info.signatures,
            })
        })
        .collect()
}

/// Orders `claims` so that every path comes after the paths it references (self-references
/// and references outside the set are ignored). Among paths whose references are all placed,
/// the input order is kept, so the result is deterministic.
pub fn topo_sort(claims: Vec<PathClaim>) -> Result<Vec<PathClaim>, NixError> {
    let index: HashMap<&str, usize> = claims.iter().enumerate().map(|(i, c)| (c.path.as_str(), i)).collect();
    let mut waiting = vec![0usize; claims.len()];
    let mut referrers: Vec<Vec<usize>> = vec![Vec::new(); claims.len()];
    for (i, claim) in claims.iter().enumerate() {
        let mut refs: Vec<usize> = claim.references.iter().filter_map(|r| index.get(r.as_str()).copied()).collect();
        refs.sort_unstable();
        refs.dedup();
        for r in refs.into_iter().filter(|&r| r != i) {
            waiting[i] += 1;
            referrers[r].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..claims.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(claims.len());
    while let Some(i) = ready.pop_front() {
        order.push(i);
        for &j in &referrers[i] {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push_back(j);
            }
        }
    }
    if order.len() < claims.len() {
        let stuck = (0..claims.len()).filter(|&i| waiting[i] > 0).map(|i| claims[i].path.clone()).collect();
        return Err(NixError::Cycle(stuck));
    }
    let mut slots: Vec<Option<PathClaim>> = claims.into_iter().map(Some).collect();
    Ok(order.into_iter().map(|i| slots[i].take().expect("each index placed once")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from Nix 2.8 on this project's build machine: three `builtins.toFile` paths,
    /// `top` referencing `mid` and `leaf`, `mid` referencing `leaf`.
    const PATH_INFO_JSON: &str = r#"[{"path":"/nix/store/ibrnzhw71hqch80a9hdz569pllys77hj-mid.txt","narHash":"sha256-xYQuDvaZmkEGkhaNfSPIUsUgpeQ6l6FyW82wbw/0WNw=","narSize":168,"references":["/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt"],"ca":"text:sha256:1jjvkwkflissbigfhlc3pqz3487av6rgvwwq4i4mpchff3p97paa","registrationTime":1795886567},{"path":"/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt","narHash":"sha256-ubVRronxn3CqaVFfpcSRAFQ0gJNK04cipGvSI/KalEU=","narSize":120,"references":[],"ca":"text:sha256:02s4b20l4ii8l4hjc5y998p9y5b0kzbq1dkdvsk4jgj38cgid4cz","registrationTime":1795886567},{"path":"/nix/store/p55ihfz5j5yyvczs43fpljmmp2jgqkpz-top.txt","narHash":"sha256-KKxyxOtWL435MViF7tbAiToNoSXymVryC08mgaMTzOg=","narSize":224,"references":["/nix/store/ibrnzhw71hqch80a9hdz569pllys77hj-mid.txt","/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt"],"ca":"text:sha256:0zpr3srj2hyvjbr41m087dmb3zzxgj7i1b9bqlw71ns1mq5p8l84","registrationTime":1795886567}]"#;

    fn claim(path: &str, refs: &[&str]) -> PathClaim {
        PathClaim {
            path: path.to_owned(),
            nar_hash: "sha256-AAAA".to_owned(),
            nar_size: 1,
            references: refs.iter().map(|r| r.to_string()).collect(),
            deriver: None,
            ca: None,
            signatures: Vec::new(),
        }
    }

    #[track_caller]
    fn check(input: &[(&str, &[&str])], expected: &[&str]) {
        let claims = input.iter().map(|(p, r)| claim(p, r)).collect();
        let sorted = topo_sort(claims).unwrap();
        assert_eq!(sorted.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(), expected);
    }

    #[test]
    fn topo_sort_puts_references_first() {
        check(&[], &[]);
        check(&[("a", &["b"]), ("b", &["c"]), ("c", &[])], &["c", "b", "a"]);
        // Self-references and references outside the set do not hold a path back.
        check(&[("a", &["a", "b", "/elsewhere"]), ("b", &["b"])], &["b", "a"]);
        // Diamond; ties keep the input order.
        check(&[("top", &["l", "r"]), ("l", &["base"]), ("r", &["base"]), ("base", &[])], &["base", "l", "r", "top"]);
        check(&[("x", &[]), ("y", &[]), ("z", &["x", "x"])], &["x", "y", "z"]);
    }

    #[test]
    fn topo_sort_reports_cycles() {
        let claims = vec![claim("a", &["b"]), claim("b", &["a"]), claim("c", &[])];
        let err = topo_sort(claims).unwrap_err();
        assert!(matches!(&err, NixError::Cycle(p) if p == &["a", "b"]), "{err}");
    }

    #[test]
    fn converts_real_path_info_json() {
        let claims = topo_sort(claims_from_json(&[], PATH_INFO_JSON.as_bytes()).unwrap()).unwrap();
        let names: Vec<&str> = claims.iter().map(|c| &c.path[44..]).collect();
        assert_eq!(names, ["leaf.txt", "mid.txt", "top.txt"]);
        let mid = &claims[1];
        assert_eq!(mid.nar_hash, "sha256-xYQuDvaZmkEGkhaNfSPIUsUgpeQ6l6FyW82wbw/0WNw=");
        assert_eq!(mid.nar_size, 168);
        assert_eq!(mid.references, ["/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt"]);
        assert_eq!(mid.ca.as_deref(), Some("text:sha256:1jjvkwkflissbigfhlc3pqz3487av6rgvwwq4i4mpchff3p97paa"));
        assert_eq!((mid.deriver.as_deref(), mid.signatures.len()), (None, 0));
    }

    #[test]
    fn refuses_invalid_paths_and_garbage() {
        let invalid = br#"[{"path":"/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt","valid":false}]"#;
        assert!(matches!(claims_from_json(&[], invalid), Err(NixError::NotValid(_))));
        assert!(matches!(claims_from_json(&[], b"not json"), Err(NixError::Output { .. })));
    }
}
