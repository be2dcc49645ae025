//! OpenID Connect ID tokens from CI (GitHub Actions, Forgejo Actions) as build-submission
//! credentials: [`policy`] decides on the claims (PURE), [`verify`] checks the JWS header and
//! signature against a key set, [`jwks`] fetches and caches each issuer's key set, and
//! [`actions`] is the job's side: asking the forge for a token (PURE).
//! See docs/ci.md and docs/keys.md.

pub mod actions;
pub mod jwks;
pub mod policy;
pub mod verify;

pub use actions::ActionsError;
pub use jwks::{JwksCache, JwksError};
pub use policy::{Claims, OidcPolicy, PolicyError};
pub use verify::{looks_like_jwt, VerifyError, MAX_TOKEN_BYTES};
