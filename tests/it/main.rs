//! Process-level integration tests: the real `berth` binary, the real Nix 2.8 client, real
//! git, SQLite, PostgreSQL and S3 (SeaweedFS), all offline and started by the tests. A
//! missing program fails the test loudly, never skips it.

mod harness;
#[path = "../support/servers.rs"]
mod servers;

mod agent;
mod browser;
mod builds;
mod cache_http;
mod ci_examples;
mod cli;
mod consistency;
mod crash;
mod deploy_api;
mod enroll;
mod fleet;
mod fleet_scale;
mod forge;
mod gc;
mod health;
mod hostile;
mod key_rotation;
mod metrics;
mod nix_client;
mod nix_files;
mod oidc;
mod openapi;
mod protocol;
mod push;
mod receiver;
mod replicas;
mod resign;
mod rollback;
mod rollout;
mod signed_history;
mod status;
mod try_guide;
mod ui;
mod windows;
