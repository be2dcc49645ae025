//! Push mode (issue 17): deploying to a host that runs no agent. berth copies the closure
//! over Nix's `ssh-ng://` store and drives the activation through a forced command on the
//! host. Both parts here are PURE: [`gate`] parses what the restricted key may run, and
//! [`timeline`] decides each step of a push deploy and the host's boot-time settle.

pub mod gate;
pub mod timeline;
