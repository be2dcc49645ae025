# `pkgs.berth`, for systems that add this overlay (the flake's `overlays.default`).
final: prev: {
  berth = final.callPackage ./package.nix { };
}
