//! Names that reach the filesystem or an object key: store-path hashes, NAR file names and
//! compression methods. Parse, don't validate: a value of these types is always safe to use
//! as part of a key (no `/`, no `..`, bounded length, Nix's own alphabet).

use std::fmt;

/// Why a name was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    /// Not 32 characters of Nix base32.
    #[error("invalid store path hash {0:?}: expected 32 characters of nix base32")]
    StorePathHash(String),
    /// Not `<nixbase32>.nar[.xz|.zst]`.
    #[error("invalid NAR file name {0:?}: expected <nixbase32 hash>.nar[.xz|.zst]")]
    NarFile(String),
    /// Not `sha256:<hex>!<output>`.
    #[error("invalid derivation output id {0:?}: expected sha256:<64 hex digits>!<output name>")]
    DrvOutput(String),
    /// Not `<hash>-<name>.drv`.
    #[error("invalid derivation {0:?}: expected <nixbase32 hash>-<name>.drv")]
    Derivation(String),
    /// A well-formed NAR file name in a compression Nix writes but berth does not store
    /// (`compression=bzip2|br`): a download of one is a miss, an upload is refused.
    #[error("berth does not store {0}-compressed NARs: upload with compression=xz, zstd or none")]
    UnstoredCompression(&'static str),
    /// A compression method berth does not handle.
    #[error("unsupported compression {0:?}: berth accepts none, xz, zstd")]
    Compression(String),
}

/// A derivation's store-path basename (`<hash>-<name>.drv`): the key of its build log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DrvName(String);

impl DrvName {
    /// Parses a basename (or an absolute `/nix/store/…` path) that names a derivation.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let base = s.strip_prefix("/nix/store/").unwrap_or(s);
        match nix_derivation::StorePath::from_basename(base.as_bytes()) {
            Ok(path) if base.ends_with(".drv") => Ok(Self(path.to_basename())),
            _ => Err(NameError::Derivation(s.chars().take(120).collect())),
        }
    }

    /// The basename.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DrvName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Nix base32 alphabet: digits and lowercase letters without e, o, u, t.
const NIXBASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Membership table for [`NIXBASE32`], built at compile time (names are checked on every
/// request).
const IS_NIXBASE32: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < NIXBASE32.len() {
        table[NIXBASE32[i] as usize] = true;
        i += 1;
    }
    table
};

/// The value of each [`NIXBASE32`] digit (0 for other bytes, which never get that far).
const DIGIT: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < NIXBASE32.len() {
        table[NIXBASE32[i] as usize] = i as u8;
        i += 1;
    }
    table
};

fn is_nixbase32(s: &str) -> bool {
    s.bytes().all(|b| IS_NIXBASE32[b as usize])
}

/// The 32-character hash part of a store path: the key of a `<hash>.narinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash(String);

impl StorePathHash {
    /// Parses the hash part; refuses anything that is not 32 nix-base32 characters.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.len() == 32 && is_nixbase32(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::StorePathHash(s.chars().take(80).collect()))
        }
    }

    /// The hash part of a store path.
    pub fn of(path: &nix_derivation::StorePath) -> Self {
        Self(path.to_basename()[..32].to_owned())
    }

    /// The hash as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 160 bits the 32 characters spell (5 bits each), packed into 20 bytes: how the
    /// in-memory set of published paths keeps them (21 bytes a path instead of 56).
    pub fn to_bytes(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        for (i, c) in self.0.bytes().enumerate() {
            let (digit, at) = (u16::from(DIGIT[c as usize]), i * 5);
            // Five bits starting at bit `at`, across at most two bytes.
            let spread = digit << (at % 8);
            out[at / 8] |= spread as u8;
            if at / 8 + 1 < out.len() {
                out[at / 8 + 1] |= (spread >> 8) as u8;
            }
        }
        out
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a NAR file is compressed. Nix 2.8 uploads xz by default; berth stores zstd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain NAR.
    None,
    /// xz (LZMA2), Nix's default for `nix copy --to http://`.
    Xz,
    /// Zstandard, berth's own storage format.
    Zstd,
}

impl Compression {
    /// The narinfo `Compression:` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
        }
    }

    /// The file-name suffix after `.nar`.
    pub fn extension(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Xz => ".xz",
            Self::Zstd => ".zst",
        }
    }

    /// Parses a narinfo `Compression:` value.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s {
            "none" => Ok(Self::None),
            "xz" => Ok(Self::Xz),
            "zstd" => Ok(Self::Zstd),
            other => Err(NameError::Compression(other.chars().take(40).collect())),
        }
    }
}

/// Nix names NARs by the nixbase32 SHA-256 of the file (52 characters); other caches use
/// other lengths, so any sane length of the same alphabet is a NAR name's stem.
fn is_nar_stem(stem: &str) -> bool {
    !stem.is_empty() && stem.len() <= 128 && is_nixbase32(stem)
}

/// `<stem>.nar.bz2` and `<stem>.nar.br`: names Nix writes (`compression=bzip2|br`) for
/// compressions berth does not decode.
fn unstored_compression(s: &str) -> Option<(&str, &'static str)> {
    s.strip_suffix(".nar.bz2")
        .map(|stem| (stem, "bzip2"))
        .or_else(|| s.strip_suffix(".nar.br").map(|stem| (stem, "br")))
}

/// The file part of a NAR URL: `<nixbase32 file hash>.nar[.xz|.zst]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NarFileName {
    name: String,
    compression: Compression,
}

impl NarFileName {
    /// Parses a NAR file name as Nix writes it under `nar/`.
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let err = || NameError::NarFile(s.chars().take(120).collect());
        let (stem, compression) = if let Some(stem) = s.strip_suffix(".nar.zst") {
            (stem, Compression::Zstd)
        } else if let Some(stem) = s.strip_suffix(".nar.xz") {
            (stem, Compression::Xz)
        } else if let Some(stem) = s.strip_suffix(".nar") {
            (stem, Compression::None)
        } else if let Some((stem, method)) = unstored_compression(s) {
            return Err(if is_nar_stem(stem) { NameError::UnstoredCompression(method) } else { err() });
        } else {
            return Err(err());
        };
        if !is_nar_stem(stem) {
            return Err(err());
        }
        Ok(Self { name: s.to_owned(), compression })
    }

    /// The canonical name for a file with this SHA-256 and compression.
    pub fn for_file_hash(digest: &[u8; 32], compression: Compression) -> Self {
        let name = format!("{}.nar{}", super::nixbase32(digest), compression.extension());
        Self { name, compression }
    }

    /// The part before `.nar`: the nixbase32 file hash.
    pub fn stem(&self) -> &str {
        &self.name[..self.name.find(".nar").unwrap_or(self.name.len())]
    }

    /// How the file is compressed, from its suffix.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The file name.
    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The narinfo `URL:` value, relative to the cache root.
    pub fn url(&self) -> String {
        format!("nar/{}", self.name)
    }
}

impl fmt::Display for NarFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_hash(input: &str, ok: bool) {
        assert_eq!(StorePathHash::parse(input).is_ok(), ok, "{input:?}");
    }

    #[test]
    fn hashes_pack_into_twenty_bytes_one_to_one() {
        let bytes = |s: &str| StorePathHash::parse(s).unwrap().to_bytes();
        assert_eq!(bytes(&"0".repeat(32)), [0; 20]);
        let mut first = [0; 20];
        first[0] = 31;
        assert_eq!(bytes(&format!("z{}", "0".repeat(31))), first);
        let mut last = [0; 20];
        last[19] = 0b1111_1000;
        assert_eq!(bytes(&format!("{}z", "0".repeat(31))), last);
        assert_eq!(bytes(&"z".repeat(32)), [0xff; 20]);
        // Every digit at every position lands in its own bits.
        let mut seen = std::collections::HashSet::new();
        for position in 0..32 {
            for digit in NIXBASE32 {
                let mut s = vec![b'0'; 32];
                s[position] = *digit;
                seen.insert(bytes(std::str::from_utf8(&s).unwrap()));
            }
        }
        assert_eq!(seen.len(), 32 * 31 + 1);
    }

    #[test]
    fn store_path_hashes() {
        check_hash("0c6kzph7l0dcbqmjknjmggwd3ggi7mrl", true);
        check_hash("0c6kzph7l0dcbqmjknjmggwd3ggi7mr", false);
        check_hash("0c6kzph7l0dcbqmjknjmggwd3ggi7mre", false); // 'e' is not nix base32
        check_hash("../../../../../../../../etc/pass", false);
        check_hash("0C6KZPH7L0DCBQMJKNJMGGWD3GGI7MRL", false);
        check_hash("", false);
    }

    #[track_caller]
    fn check_nar(input: &str, expected: Option<(&str, Compression)>) {
        let got = NarFileName::parse(input).ok().map(|n| (n.stem().to_owned(), n.compression()));
        assert_eq!(got, expected.map(|(s, c)| (s.to_owned(), c)), "{input:?}");
    }

    #[test]
    fn nar_file_names() {
        let h = "1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3";
        check_nar(&format!("{h}.nar.xz"), Some((h, Compression::Xz)));
        check_nar(&format!("{h}.nar.zst"), Some((h, Compression::Zstd)));
        check_nar(&format!("{h}.nar"), Some((h, Compression::None)));
        check_nar(&format!("{h}.nar.bz2"), None);
        assert_eq!(NarFileName::parse(&format!("{h}.nar.bz2")), Err(NameError::UnstoredCompression("bzip2")));
        assert_eq!(NarFileName::parse(&format!("{h}.nar.br")), Err(NameError::UnstoredCompression("br")));
        assert!(matches!(NarFileName::parse("../x.nar.br"), Err(NameError::NarFile(_))));
        check_nar("../x.nar", None);
        check_nar(".nar", None);
        check_nar(&format!("{h}.narinfo"), None);
    }

    #[test]
    fn derivation_names() {
        let good = "4sfan64636shh5caxxfb4szrvnjccm4x-berth-ca-test.drv";
        assert_eq!(DrvName::parse(good).unwrap().as_str(), good);
        assert_eq!(DrvName::parse(&format!("/nix/store/{good}")).unwrap().as_str(), good);
        for bad in [
            "4sfan64636shh5caxxfb4szrvnjccm4x-berth-ca-test",
            "4sfan64636shh5caxxfb4szrvnjccm4x-../x.drv",
            "../4sfan64636shh5caxxfb4szrvnjccm4x-x.drv",
            "4sfan64636shh5caxxfb4szrvnjccm4-x.drv",
            "4sfan64636shh5caxxfb4szrvnjccm4x-€.drv",
            "",
        ] {
            assert!(DrvName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn canonical_name_round_trips() {
        let name = NarFileName::for_file_hash(&[7; 32], Compression::Zstd);
        assert_eq!(NarFileName::parse(name.as_str()).unwrap(), name);
        assert_eq!(name.url(), format!("nar/{}", name.as_str()));
    }

    /// Fuzz target `names`: any text; every name that parses keeps its text (no `/`, no
    /// `..`) and parses again to itself.
    #[test]
    fn fuzz_names() {
        crate::fuzz::run("names", |bytes| {
            let s = String::from_utf8_lossy(bytes);
            if let Ok(h) = StorePathHash::parse(&s) {
                assert_eq!(h.as_str(), s, "a hash is its text");
                assert_eq!(StorePathHash::parse(h.as_str()), Ok(h));
            }
            if let Ok(n) = NarFileName::parse(&s) {
                assert!(!n.as_str().contains('/') && !n.as_str().contains(".."), "{s:?}");
                assert_eq!(NarFileName::parse(n.as_str()).as_ref(), Ok(&n));
                assert_eq!(NarFileName::parse(&format!("{}.nar{}", n.stem(), n.compression().extension())), Ok(n));
            }
            if let Ok(d) = DrvName::parse(&s) {
                assert!(!d.as_str().contains('/') && d.as_str().ends_with(".drv"), "{s:?}");
                assert_eq!(DrvName::parse(d.as_str()), Ok(d));
            }
            let _ = Compression::parse(&s);
        });
    }
}
