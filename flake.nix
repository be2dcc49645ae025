{
  description = "berth: build host, signed Nix binary cache and pull-based deployment for NixOS fleets";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  # Outputs that need no nixpkgs (overlays, nixosModules) are written so that evaluating them
  # never touches it: tests/it/nix_files.rs evaluates them offline with nixpkgs unavailable.
  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      overlays.default = import ./nixos-module/overlay.nix;

      # Imported by path, so that a system importing several of them (or the same file from a
      # checkout) gets each module once.
      nixosModules = {
        server.imports = [ ./nixos-module/server.nix ];
        agent.imports = [ ./nixos-module/agent.nix ];
        push.imports = [ ./nixos-module/push.nix ];
        default.imports = [ ./nixos-module/default.nix ];
      };

      packages = forAllSystems (pkgs: rec {
        berth = pkgs.callPackage ./nixos-module/package.nix { };
        default = berth;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            nix
            git
            curl
            wrk
            nginx
            hyperfine
            zstd
            openssh
            postgresql
            seaweedfs
          ];
        };
      });

      # `nix flake check` on a NixOS machine with KVM runs all of them; see docs/nixos.md.
      checks = forAllSystems (
        pkgs:
        let
          berth = self.packages.${pkgs.stdenv.hostPlatform.system}.berth;
        in
        {
          # The package's checkPhase runs the library's tests (cargo test --lib).
          package = berth;

          clippy = berth.overrideAttrs (old: {
            pname = "berth-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --offline --all-targets -- -D warnings
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "touch $out";
            dontFixup = true;
          });

          fmt =
            pkgs.runCommand "berth-fmt"
              {
                nativeBuildInputs = [
                  pkgs.cargo
                  pkgs.rustfmt
                ];
              }
              ''
                export HOME=$TMPDIR
                cp -r ${berth.src} source
                chmod -R u+w source
                cd source
                cargo fmt --check
                touch $out
              '';
        }
        // import ./nixos-module/tests { inherit pkgs self nixpkgs; }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
