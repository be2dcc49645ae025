{
  description = "berth: build host, signed Nix binary cache and pull-based deployment for NixOS fleets";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "berth";
          version = (builtins.fromTOML (builtins.readFile ./Cargo.toml)).package.version;
          src = pkgs.lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The integration tests drive a real Nix store, which the build sandbox lacks;
          # `nix develop -c scripts/test.sh` runs them.
          cargoTestFlags = [ "--lib" ];
          meta = {
            description = "Build host, signed Nix binary cache and pull-based deployment for NixOS fleets";
            license = pkgs.lib.licenses.asl20;
            mainProgram = "berth";
          };
        };
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt nix git curl wrk nginx hyperfine zstd ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}
