# berth, built from this repository's Cargo.lock. Used by the flake's `packages`, by the
# overlay (`pkgs.berth`), and as the modules' default package, so the modules also work
# without the flake (`imports = [ "${berth-source}/nixos-module" ];`).
#
# Needs a Rust toolchain of at least `rust-version` in Cargo.toml (1.80; nixpkgs 24.11 or later).
{
  lib,
  rustPlatform,
  postgresql,
  seaweedfs,
}:

let
  cargoToml = builtins.fromTOML (builtins.readFile ../Cargo.toml);
in
rustPlatform.buildRustPackage {
  pname = "berth";
  inherit (cargoToml.package) version;

  # The crate and nothing else: documentation, the NixOS modules and a local `target/` would
  # only cause rebuilds (and `target/` can be gigabytes when this is imported from a checkout).
  src = lib.cleanSourceWith {
    name = "berth-source";
    src = lib.cleanSource ../.;
    filter =
      path: type:
      let
        relative = lib.removePrefix (toString ../. + "/") (toString path);
        top = builtins.head (lib.splitString "/" relative);
      in
      builtins.elem top [
        "Cargo.toml"
        "Cargo.lock"
        "rustfmt.toml"
        "src"
        "tests"
        "benches"
      ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The integration tests (tests/it) drive a real Nix store and daemon, which the build
  # sandbox lacks; `nix develop -c scripts/test.sh` runs them. The library's tests run here,
  # except the modules whose tests run nix, git, gpg or ssh-keygen themselves (a Nix store
  # and nested builds inside the build sandbox): scripts/test.sh runs those too.
  cargoTestFlags = [ "--lib" ];
  # The storage and database tests start a throwaway PostgreSQL cluster and a SeaweedFS S3
  # server on loopback (tests/support/servers.rs).
  nativeCheckInputs = [
    postgresql
    seaweedfs
  ];
  checkFlags = map (module: "--skip=${module}") [
    "nix::flake::"
    "nix::git::"
    "nix::system::"
    "deploy::agent::tests::"
  ];

  meta = {
    description = "Build host, signed Nix binary cache and pull-based deployment for NixOS fleets";
    license = lib.licenses.asl20;
    mainProgram = "berth";
    platforms = lib.platforms.linux;
  };
}
