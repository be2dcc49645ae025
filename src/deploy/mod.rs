//! Deployments: signed per-host manifests (pure), and the host agent that pulls, verifies,
//! activates, checks and confirms or rolls back.

pub mod agent;
pub mod closures;
pub mod diff;
pub mod fleet;
pub mod keys;
pub mod keyset;
pub mod manifest;
pub mod offer;
pub mod push;
pub mod reporting;
pub mod resend;
pub mod rollback;
pub mod rollout;
pub mod rollouts;
pub mod rotation;
pub mod status;
pub mod watch;
pub mod windows;

use crate::db::GenerationRow;
use manifest::Manifest;

/// The manifest of a generation, in the newest version up to `version` the agent reads
/// (below 2: version 1, which has no signer).
pub fn manifest_of(g: &GenerationRow, version: u32) -> Manifest {
    let version = version.clamp(1, manifest::VERSION);
    Manifest {
        version,
        host: g.host.clone(),
        generation: g.number as u64,
        store_path: g.store_path.clone(),
        commit: g.commit_sha.clone(),
        branch: g.branch.clone(),
        build_id: g.build_id,
        created_at: g.created_at,
        signer: g.signer.clone().filter(|_| version >= 2),
    }
}
