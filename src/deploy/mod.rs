//! Deployments: signed per-host manifests (pure), and the host agent that pulls, verifies,
//! activates, checks and confirms or rolls back.

pub mod agent;
pub mod manifest;
pub mod rollback;

use crate::db::GenerationRow;
use manifest::Manifest;

/// The manifest of a generation.
pub fn manifest_of(g: &GenerationRow) -> Manifest {
    Manifest {
        version: 1,
        host: g.host.clone(),
        generation: g.number as u64,
        store_path: g.store_path.clone(),
        commit: g.commit_sha.clone(),
        branch: g.branch.clone(),
        build_id: g.build_id,
        created_at: g.created_at,
    }
}
