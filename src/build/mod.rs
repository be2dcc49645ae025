//! The build host: a persistent queue of build requests, workers that fetch the fleet
//! repository, check the commit's signature, build every host's system with the real Nix,
//! publish each closure through `ingest`, and record the generations the branch policy
//! allows.

pub mod log;
pub mod model;
pub mod policy;
pub mod publish;
pub mod queue;
pub mod worker;

pub use queue::Queue;
