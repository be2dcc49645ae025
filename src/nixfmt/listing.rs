//! NAR listings (`<hash>.ls`, what Nix writes with `write-nar-listing=true`): JSON
//! `{"version": 1, "root": <node>}`, where a node has a `type` of `regular`, `directory` or
//! `symlink`. Only the shape is checked; berth serves a listing as uploaded.

/// Why a body is not a NAR listing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListingError {
    /// Not JSON at all.
    #[error("a NAR listing must be JSON: {0}")]
    Json(String),
    /// JSON, but not `{"version": 1, "root": {"type": …}}`.
    #[error(
        "not a NAR listing: expected {{\"version\": 1, \"root\": {{\"type\": \"regular|directory|symlink\", …}}}}"
    )]
    Shape,
}

/// Checks that `bytes` are a version-1 NAR listing.
pub fn check_listing(bytes: &[u8]) -> Result<(), ListingError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| ListingError::Json(e.to_string()))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    let root_type = value.get("root").and_then(|r| r.get("type")).and_then(serde_json::Value::as_str);
    match (version, root_type) {
        (Some(1), Some("regular" | "directory" | "symlink")) => Ok(()),
        _ => Err(ListingError::Shape),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, ok: bool) {
        assert_eq!(check_listing(input.as_bytes()).is_ok(), ok, "{input}");
    }

    #[test]
    fn listings() {
        check(r#"{"version":1,"root":{"type":"directory","entries":{"a":{"type":"regular","size":1}}}}"#, true);
        check(r#"{"version":1,"root":{"type":"symlink","target":"x"}}"#, true);
        check(r#"{"version":2,"root":{"type":"regular"}}"#, false);
        check(r#"{"version":1,"root":{"type":"fifo"}}"#, false);
        check(r#"{"version":1,"root":7}"#, false);
        check(r#"{"a":1}"#, false);
        check("[]", false);
        check("{nope", false);
    }

    /// Fuzz target `listing`: any bytes; `check_listing` answers without panicking.
    #[test]
    fn fuzz_listing() {
        crate::fuzz::run("listing", |bytes| {
            let _ = check_listing(bytes);
        });
    }
}
