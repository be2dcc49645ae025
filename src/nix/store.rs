//! Store queries: `nix path-info` and the dependency order of a closure.

use std::collections::{HashMap, VecDeque};

use super::{run, NixError};
use crate::nixfmt::{DrvName, PathClaim};

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

/// The output of `nix path-info --json`, in either of the two shapes Nix prints:
/// up to Nix 2.18 an array of objects, each with its `path` (and `"valid": false` for a path
/// that is not in the store); since 2.19 an object keyed by store path, whose value is `null`
/// for a path that is not in the store. The fields of each path are the same in both, and
/// berth reads only those every version prints (`narHash`, `narSize`, `references`, and
/// `deriver`, `ca` and `signatures` when present or `null`): `nix-store --query` would give
/// them too, but in one process per field and without signatures.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum PathInfoJson {
    /// Nix 2.18 and older.
    List(Vec<ListedPathInfo>),
    /// Nix 2.19 and later. Sorted by path, as Nix prints it.
    Map(std::collections::BTreeMap<String, Option<PathInfoFields>>),
}

/// One element of the array form: the path and, when it is valid, its fields.
#[derive(serde::Deserialize)]
struct ListedPathInfo {
    path: String,
    #[serde(default)]
    valid: Option<bool>,
    #[serde(flatten)]
    fields: PathInfoFields,
}

/// The fields of one path, common to both forms. Unknown fields such as `registrationTime`
/// and `ultimate` are ignored; `null` and absent mean the same.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathInfoFields {
    nar_hash: Option<String>,
    nar_size: Option<u64>,
    #[serde(default)]
    references: Option<Vec<String>>,
    deriver: Option<String>,
    ca: Option<String>,
    #[serde(default)]
    signatures: Option<Vec<String>>,
}

/// Converts the JSON printed by `argv` (`nix path-info --json`, either form) into claims, in
/// the order printed.
fn claims_from_json(argv: &[String], json: &[u8]) -> Result<Vec<PathClaim>, NixError> {
    let output_err = |reason: String| NixError::Output { argv: argv.to_vec(), reason };
    let parsed: PathInfoJson = serde_json::from_slice(json).map_err(|e| {
        output_err(format!("neither the array (Nix 2.18 and older) nor the map (2.19 and later) of path-info: {e}"))
    })?;
    let entries: Vec<(String, Option<PathInfoFields>)> = match parsed {
        PathInfoJson::List(list) => list
            .into_iter()
            .map(|info| {
                let fields = (info.valid != Some(false)).then_some(info.fields);
                (info.path, fields)
            })
            .collect(),
        PathInfoJson::Map(map) => map.into_iter().collect(),
    };
    entries
        .into_iter()
        .map(|(path, fields)| {
            let Some(info) = fields else { return Err(NixError::NotValid(path)) };
            let (Some(nar_hash), Some(nar_size)) = (info.nar_hash, info.nar_size) else {
                return Err(output_err(format!("{path} has no narHash or narSize")));
            };
            Ok(PathClaim {
                path,
                nar_hash,
                nar_size,
                references: info.references.unwrap_or_default(),
                deriver: info.deriver,
                ca: info.ca,
                signatures: info.signatures.unwrap_or_default(),
            })
        })
        .collect()
}

/// The build log Nix kept of the derivation `drv` (`nix-store --read-log`, the same in every
/// version), at most `limit` bytes of it (the rest is cut, with a note saying so); `None`
/// when Nix has none (the derivation was substituted, or built elsewhere).
pub async fn build_log(drv: &DrvName, store: Option<&str>, limit: u64) -> Result<Option<Vec<u8>>, NixError> {
    use tokio::io::AsyncReadExt;
    let drv = format!("{}/{drv}", crate::nixfmt::STORE_DIR);
    let mut argv = super::argv(["nix-store"]);
    if let Some(store) = store {
        argv.extend(["--store".to_owned(), store.to_owned()]);
    }
    argv.extend(["--read-log".to_owned(), "--".to_owned(), drv]);
    let mut child = super::command(&argv, &[])?
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|source| NixError::Spawn { argv: argv.clone(), source })?;
    let mut log = Vec::new();
    let stdout = child.stdout.take().expect("piped");
    let read = stdout.take(limit + 1).read_to_end(&mut log).await;
    if log.len() as u64 > limit {
        log.truncate(limit as usize);
        log.extend_from_slice(format!("\n[berth: log cut at {limit} bytes]\n").as_bytes());
        child.start_kill().ok(); // the rest is not wanted; `kill_on_drop` reaps it
        return Ok(Some(log));
    }
    read.map_err(|source| NixError::Spawn { argv: argv.clone(), source })?;
    let status = child.wait().await.map_err(|source| NixError::Spawn { argv, source })?;
    Ok(status.success().then_some(log))
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

    /// `nix path-info --json --recursive` of one closure (`top` → `mid` → `leaf`, built from
    /// plain derivations on this project's build machine) as Nix 2.8 and Nix 2.26 print it.
    const CLOSURE_NIX_2_8: &str = r#"[{"path":"/nix/store/9gi1gzy7d1jb5wqmngr5rcadp8kxbx8s-leaf","narHash":"sha256-ACM5TTkwjAEzlcv/+sPIAokKSaHjB8ehMW8qqiwVy+U=","narSize":288,"references":[],"deriver":"/nix/store/cqjvkgbihb4gw8z5ahh0dsp5zzi72ka1-leaf.drv","registrationTime":1796206675,"ultimate":true},{"path":"/nix/store/d267722v8wm0x66j5kqpi7g5j7i4s4ii-mid","narHash":"sha256-lQLRYmOtIPMHPgfOGQcpoCsMCe2CWWMdVLE9UozYSrU=","narSize":336,"references":["/nix/store/9gi1gzy7d1jb5wqmngr5rcadp8kxbx8s-leaf"],"deriver":"/nix/store/y7q60zjv6n0pd2jl63zpzw3i9530mnc6-mid.drv","registrationTime":1796206675,"ultimate":true},{"path":"/nix/store/il649147lik07jf7cq2k0vag8szqbx6b-top","narHash":"sha256-fxbWsHVEiIpffKQ6ZbWopgAZ1BlJtqGeHmDqvt8F5sw=","narSize":384,"references":["/nix/store/9gi1gzy7d1jb5wqmngr5rcadp8kxbx8s-leaf","/nix/store/d267722v8wm0x66j5kqpi7g5j7i4s4ii-mid"],"deriver":"/nix/store/r7z490c5irkdchaa4xm3cs8d2bqj004q-top.drv","registrationTime":1796206675,"ultimate":true}]"#;
    const CLOSURE_NIX_2_26: &str = r#"{"/nix/store/9gi1gzy7d1jb5wqmngr5rcadp8kxbx8s-leaf":{"ca":null,"deriver":"/nix/store/cqjvkgbihb4gw8z5ahh0dsp5zzi72ka1-leaf.drv","narHash":"sha256-ACM5TTkwjAEzlcv/+sPIAokKSaHjB8ehMW8qqiwVy+U=","narSize":288,"references":[],"registrationTime":1796206670,"signatures":[],"ultimate":true},"/nix/store/d267722v8wm0x66j5kqpi7g5j7i4s4ii-mid":{"ca":null,"deriver":"/nix/store/y7q60zjv6n0pd2jl63zpzw3i9530mnc6-mid.drv","narHash":"sha256-lQLRYmOtIPMHPgfOGQcpoCsMCe2CWWMdVLE9UozYSrU=","narSize":336,"references":["/nix/store/9gi1gzy7d1jb5wqmngr5rcadp8kxbx8s-leaf"],"registrationTime":1796206670,"signatures":[],"ultimate":true},"/nix/store/il649147lik07jf7cq2k0vag8szqbx6b-top":{"ca":null,"deriver":"/nix/store/r7z490c5irkdchaa4xm3cs8d2bqj004q-top.drv","narHash":"sha256-fxbWsHVEiIpffKQ6ZbWopgAZ1BlJtqGeHmDqvt8F5sw=","narSize":384,"references":["/nix/store/9gi1gzy7d1jb5wqmngr5rcadp8kxbx8s-leaf","/nix/store/d267722v8wm0x66j5kqpi7g5j7i4s4ii-mid"],"registrationTime":1796206670,"signatures":[],"ultimate":true}}"#;

    #[test]
    fn both_path_info_forms_give_the_same_claims() {
        let sorted = |json: &str| topo_sort(claims_from_json(&[], json.as_bytes()).unwrap()).unwrap();
        let (old, new) = (sorted(CLOSURE_NIX_2_8), sorted(CLOSURE_NIX_2_26));
        assert_eq!(old, new);
        let names: Vec<&str> = new.iter().map(|c| &c.path[44..]).collect();
        assert_eq!(names, ["leaf", "mid", "top"]);
        let top = &new[2];
        assert_eq!((top.nar_size, top.references.len(), top.ca.as_deref()), (384, 2, None));
        assert_eq!(top.deriver.as_deref(), Some("/nix/store/r7z490c5irkdchaa4xm3cs8d2bqj004q-top.drv"));
    }

    #[track_caller]
    fn check_refused(json: &str, expected: fn(&NixError) -> bool) {
        let err = claims_from_json(&[], json.as_bytes()).unwrap_err();
        assert!(expected(&err), "{json}: {err}");
    }

    #[test]
    fn refuses_invalid_paths_and_garbage() {
        let not_valid = |e: &NixError| matches!(e, NixError::NotValid(p) if p.ends_with("-leaf.txt"));
        let output = |e: &NixError| matches!(e, NixError::Output { .. });
        // A path missing from the store, as 2.8 and as 2.26 print it.
        check_refused(r#"[{"path":"/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt","valid":false}]"#, not_valid);
        check_refused(r#"{"/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt":null}"#, not_valid);
        check_refused("not json", output);
        check_refused(r#"{"/nix/store/ml0c9v72s1k1mkv0jwjxkdmn4m2f22ni-leaf.txt":{"narSize":1}}"#, output);
        check_refused(r#"[{"narHash":"sha256-AAAA","narSize":1}]"#, output);
        check_refused(r#"{"/nix/store/x":{"narHash":"sha256-AAAA","narSize":"big"}}"#, output);
    }
}
