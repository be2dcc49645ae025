//! Push mode (issue 17): deploying to a host that runs no agent. berth copies the closure
//! over Nix's `ssh-ng://` store and drives the activation through a forced command on the
//! host. [`gate`] (PURE) parses what the restricted key may run and [`timeline`] (PURE)
//! decides each step and the host's settle; [`host`] is what runs on the host
//! (`berth push-gate`, `berth push-settle`), and [`driver`] is berth's side, one task per
//! pushed host.

pub mod driver;
pub mod gate;
pub mod host;
pub mod timeline;
