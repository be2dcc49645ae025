//! The build host: a persistent queue of build requests, workers that fetch the fleet
//! repository, build every host's system with the real Nix, publish each closure through
//! `ingest`, check the signatures of the commits a deploy would bring, and record the
//! generations the branch policy and the signed-history gate allow.

pub mod capacity;
pub mod history;
pub mod log;
pub mod model;
pub mod policy;
pub mod publish;
pub mod queue;
pub mod trust;
pub mod worker;

pub use queue::Queue;
