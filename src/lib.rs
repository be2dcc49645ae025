//! berth: build host, signed Nix binary cache and pull-based deployment for NixOS fleets.
//! See `ARCHITECTURE.md` for the map of modules and the rules between them.

pub mod app;
pub mod auth;
pub mod build;
pub mod client;
pub mod cmd;
pub mod config;
pub mod crash;
pub mod db;
pub mod deploy;
pub mod dump;
pub mod enroll;
pub mod events;
pub mod forge;
pub mod gc;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod narinfo_cache;
pub mod nix;
pub mod nixfmt;
pub mod notify;
pub mod oidc;
pub mod outbound;
pub mod published;
pub mod push;
pub mod resign;
pub mod store;
pub mod text;
pub mod ui;
pub mod webhook;

/// Real PostgreSQL and S3 servers for the unit tests (shared with the integration tests).
#[cfg(test)]
#[path = "../tests/support/servers.rs"]
pub(crate) mod test_servers;

/// The fuzzing harness (test-only): seeds in `fuzz/corpus/`, bounded runs.
#[cfg(test)]
pub(crate) mod fuzz;
