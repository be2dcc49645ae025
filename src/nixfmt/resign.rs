//! PURE: re-signing one published narinfo with the current cache key (`berth cache
//! resign`). The text is parsed and written back in the canonical field order, so a narinfo
//! re-signed twice is the same text, and a run that is resumed re-does a path harmlessly.

use super::{NarInfoError, PathInfo, SecretKey};

/// What happens to the signatures a narinfo already carries when it is re-signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OldSignatures {
    /// Kept beside the new one (a signature by a key of the current key's name is replaced):
    /// clients that trust only the old key keep working during the window.
    Keep,
    /// Removed: the narinfo is left with the current key's signature alone.
    Drop,
}

impl OldSignatures {
    /// The spelling stored in the database and used on the API.
    pub fn as_str(self) -> &'static str {
        match self {
            OldSignatures::Keep => "keep",
            OldSignatures::Drop => "drop",
        }
    }

    /// The inverse of [`Self::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "keep" => Some(OldSignatures::Keep),
            "drop" => Some(OldSignatures::Drop),
            _ => None,
        }
    }
}

/// The narinfo `text` re-signed with `key`, or `None` when it already is exactly what
/// re-signing gives (nothing to write).
pub fn resign_narinfo(text: &str, key: &SecretKey, old: OldSignatures) -> Result<Option<String>, NarInfoError> {
    let info = PathInfo::parse(text.as_bytes())?;
    let resigned = info.signed_with(key, old).to_text();
    Ok((resigned != text).then_some(resigned))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNSIGNED: &str = "StorePath: /nix/store/0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hello
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz
Compression: xz
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
FileSize: 4029
NarHash: sha256:1impfw8zdgisxkghq9a3q7cn7jb9zyzgxdydiamp8z2nlyyl0h5h
NarSize: 18488
References: 0c6kzph7l0dcbqmjknjmggwd3ggi7mrl-hello 3n58xw4373jp0ljirf06d8077j15pc4j-glibc-2.37-8
Deriver: ydmbj8cmmyn2nfgxlbx9lb7w8zpbywzz-hello.drv
";

    fn sig_names(text: &str) -> Vec<&str> {
        text.lines().filter_map(|l| l.strip_prefix("Sig: ")).map(|s| s.split(':').next().unwrap()).collect()
    }

    /// A narinfo as published by the old key (and carrying a client's own signature).
    fn published(old: &SecretKey, client: &SecretKey) -> String {
        let info = PathInfo::parse(UNSIGNED.as_bytes()).unwrap().signed(client).signed(old);
        info.to_text()
    }

    #[track_caller]
    fn check(old: OldSignatures, expected_names: &[&str]) {
        let (old_key, client) = (SecretKey::generate("cache-1").unwrap(), SecretKey::generate("ci-1").unwrap());
        let new_key = SecretKey::generate("cache-2").unwrap();
        let text = published(&old_key, &client);
        let resigned = resign_narinfo(&text, &new_key, old).unwrap().expect("changed");
        assert_eq!(sig_names(&resigned), expected_names);
        let info = PathInfo::parse(resigned.as_bytes()).unwrap();
        assert!(info.has_valid_signature(&[new_key.public()]), "the new key verifies");
        let old_verifies = info.has_valid_signature(&[old_key.public()]);
        assert_eq!(old_verifies, old == OldSignatures::Keep, "the old key verifies only when kept");
        // Every field but the signatures is unchanged, in the same order.
        let fields = |t: &str| t.lines().filter(|l| !l.starts_with("Sig: ")).map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(fields(&resigned), fields(&text));
        // Re-signing again (a resumed run) changes nothing.
        assert_eq!(resign_narinfo(&resigned, &new_key, old).unwrap(), None);
    }

    #[test]
    fn keeps_or_drops_the_old_signatures() {
        check(OldSignatures::Keep, &["ci-1", "cache-1", "cache-2"]);
        check(OldSignatures::Drop, &["cache-2"]);
    }

    #[test]
    fn a_key_of_the_same_name_replaces_its_signature() {
        let (old, new) = (SecretKey::generate("cache-1").unwrap(), SecretKey::generate("cache-1").unwrap());
        let text = PathInfo::parse(UNSIGNED.as_bytes()).unwrap().signed(&old).to_text();
        let resigned = resign_narinfo(&text, &new, OldSignatures::Keep).unwrap().unwrap();
        assert_eq!(sig_names(&resigned), ["cache-1"]);
        assert!(PathInfo::parse(resigned.as_bytes()).unwrap().has_valid_signature(&[new.public()]));
    }

    #[test]
    fn refuses_what_is_not_a_narinfo() {
        let key = SecretKey::generate("cache-2").unwrap();
        for bad in ["", "garbage", "StorePath: /etc/passwd\n", "StorePath: /nix/store/../x\n"] {
            assert!(resign_narinfo(bad, &key, OldSignatures::Drop).is_err(), "{bad:?}");
        }
        // Multi-byte text in a field that allows none is refused, not mangled.
        let text = UNSIGNED.replace("hello\nURL", "héllo\nURL");
        assert!(resign_narinfo(&text, &key, OldSignatures::Keep).is_err());
    }

    #[test]
    fn modes_round_trip() {
        for mode in [OldSignatures::Keep, OldSignatures::Drop] {
            assert_eq!(OldSignatures::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(OldSignatures::parse("Keep"), None);
    }
}
