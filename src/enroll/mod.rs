//! Enrollment: `berth hosts add` makes a one-time code for a host; the host's agent trades it
//! (`POST /api/v1/enroll`) for its `host:<name>` token and records its SSH host key;
//! `berth hosts remove` revokes everything the host holds. The formats and the decision are
//! pure (`code`, `hostkey`, `judge`, `expiry`, `render`); `issue` runs the two steps over the
//! database (its transactions are `db/enroll.rs`); the agent's side is
//! `deploy/agent/enroll.rs`.

pub mod code;
pub mod expiry;
pub mod hostkey;
pub mod issue;
pub mod judge;
pub mod render;

pub use code::{new_code, MalformedCode, NewCode, PresentedCode};
pub use hostkey::{HostKey, HostKeyError};
pub use judge::{Refusal, StoredCode};

/// How long a code lives unless `--expires` says otherwise.
pub const DEFAULT_EXPIRY_SECS: i64 = 3600;
/// The longest `--expires` accepted: a code is for a host being installed now.
pub const MAX_EXPIRY_SECS: i64 = 7 * 86_400;
