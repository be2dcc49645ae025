//! The fixed label values berth's metrics use. Each label is an enum, so its cardinality is
//! known and a raw path or an error message can never become a label value.

use super::family::Label;

macro_rules! label {
    ($(#[$doc:meta])* $name:ident, $label:literal, { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl Label for $name {
            const NAME: &'static str = $label;
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label!(
    /// What kind of endpoint a request went to (`class`).
    Class, "class", {
        /// `GET|HEAD /<hash>.narinfo` (and `.ls`), `/nix-cache-info`.
        NarInfo => "narinfo",
        /// `GET|HEAD /nar/<file>`.
        Nar => "nar",
        /// Every upload: `PUT` of NARs, narinfos, listings, logs, realisations; `POST /api/v1/paths`.
        Upload => "upload",
        /// `/api/v1/…` except uploads and manifests.
        Api => "api",
        /// An agent's long-poll, `GET /api/v1/hosts/<name>/manifest`.
        Manifest => "manifest",
        /// The dashboard, `/` and `/ui/…`.
        Ui => "ui",
        /// Anything else: `/healthz`, `/metrics`, logs, unknown paths.
        Other => "other",
    }
);

/// The class of a request, from its method (`"PUT"`) and path alone.
pub fn classify(method: &str, path: &str) -> Class {
    let put = method == "PUT";
    let top_level = path.rfind('/') == Some(0);
    if put
        && (path.starts_with("/nar/") || top_level || path.starts_with("/log/") || path.starts_with("/realisations/"))
    {
        Class::Upload
    } else if path.starts_with("/nar/") {
        Class::Nar
    } else if path == "/nix-cache-info" || (top_level && (path.ends_with(".narinfo") || path.ends_with(".ls"))) {
        Class::NarInfo
    } else if path.starts_with("/api/v1/paths") {
        Class::Upload
    } else if path.starts_with("/api/v1/hosts/") && path.ends_with("/manifest") {
        Class::Manifest
    } else if path.starts_with("/api/") {
        Class::Api
    } else if path == "/" || path == "/ui" || path.starts_with("/ui/") {
        Class::Ui
    } else {
        Class::Other
    }
}

label!(
    /// How a build ended (`outcome`).
    BuildOutcome, "outcome", {
        /// Every host built and published.
        Succeeded => "succeeded",
        /// A host failed, or the build could not start.
        Failed => "failed",
        /// Cancelled by a user.
        Cancelled => "cancelled",
    }
);

label!(
    /// How a host's deploy ended, by its agent's report (`outcome`).
    DeployOutcome, "outcome", {
        /// Applied and healthy.
        Confirmed => "confirmed",
        /// Broke the host; the previous generation is back.
        RolledBack => "rolled_back",
        /// Failed with no way back (not realised, or no previous generation).
        Failed => "failed",
    }
);

impl DeployOutcome {
    /// The outcome a report's phase ends a deploy with, if it ends one.
    pub fn of_phase(phase: crate::deploy::status::Phase) -> Option<Self> {
        use crate::deploy::status::Phase;
        match phase {
            Phase::Confirmed => Some(Self::Confirmed),
            Phase::RolledBack => Some(Self::RolledBack),
            Phase::Failed => Some(Self::Failed),
            Phase::Downloading | Phase::Activating | Phase::Healthy | Phase::NeedsReboot => None,
        }
    }
}

label!(
    /// Why an upload was refused (`reason`), mapped from the ingest error.
    Rejection, "reason", {
        /// The path claim, a reference or the narinfo text does not parse.
        Malformed => "malformed",
        /// The NAR does not verify (bad archive, wrong hash or size, bad compression).
        InvalidNar => "invalid_nar",
        /// The narinfo does not match the NAR it names, or is not signed as it must be.
        Mismatch => "mismatch",
        /// The NAR, a reference or the path itself is not in the cache yet.
        Missing => "missing",
        /// Over a size limit.
        TooLarge => "too_large",
        /// The body broke off while it was read.
        Body => "body",
        /// The storage or the index failed.
        Internal => "internal",
    }
);

label!(
    /// An in-memory cache in front of the index (`cache`).
    MemoryCache, "cache", {
        /// Recently read narinfos (`narinfo_cache.rs`): a hit skips the index.
        Narinfo => "narinfo",
        /// The published-hash set (`published.rs`): a hit is a miss answered without the index.
        Published => "published",
    }
);

label!(
    /// Whether a lookup was answered from memory (`result`).
    Lookup, "result", {
        /// Answered from memory.
        Hit => "hit",
        /// Went on to the index.
        Miss => "miss",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(method: &str, path: &str, expected: Class) {
        assert_eq!(classify(method, path), expected, "{method} {path}");
    }

    #[test]
    fn requests_are_classified_by_method_and_path() {
        let h = "0123456789abcdfghijklmnpqrsvwxyz";
        check("GET", &format!("/{h}.narinfo"), Class::NarInfo);
        check("HEAD", &format!("/{h}.narinfo"), Class::NarInfo);
        check("GET", &format!("/{h}.ls"), Class::NarInfo);
        check("GET", "/nix-cache-info", Class::NarInfo);
        check("PUT", &format!("/{h}.narinfo"), Class::Upload);
        check("GET", "/nar/x.nar.zst", Class::Nar);
        check("PUT", "/nar/x.nar.zst", Class::Upload);
        check("PUT", "/log/x.drv", Class::Upload);
        check("GET", "/log/x.drv", Class::Other);
        check("PUT", "/realisations/x.doi", Class::Upload);
        check("POST", "/api/v1/paths", Class::Upload);
        check("POST", "/api/v1/paths/missing", Class::Upload);
        check("GET", "/api/v1/hosts/web/manifest", Class::Manifest);
        check("GET", "/api/v1/hosts", Class::Api);
        check("POST", "/api/v1/hosts/web/reports", Class::Api);
        check("GET", "/api/v1/builds/3/log", Class::Api);
        check("GET", "/", Class::Ui);
        check("GET", "/ui/hosts/web", Class::Ui);
        check("GET", "/uix", Class::Other);
        check("GET", "/metrics", Class::Other);
        check("GET", "/healthz", Class::Other);
        check("GET", "/a/b.narinfo", Class::Other);
        assert_eq!(Class::ALL.iter().map(|c| c.index()).collect::<Vec<_>>(), (0..Class::ALL.len()).collect::<Vec<_>>());
    }

    #[test]
    fn deploys_end_in_three_outcomes() {
        use crate::deploy::status::Phase;
        let ends: Vec<_> = Phase::ALL.iter().filter_map(|p| DeployOutcome::of_phase(*p)).collect();
        assert_eq!(ends, DeployOutcome::ALL);
    }
}
