# The NixOS modules' checks; flake.nix adds them to `checks.<system>`.
#
# - module-eval: no VM; evaluates the modules against nixpkgs and builds what they render.
# - vm-fleet: needs KVM (`nixos-test` and `kvm` system features); see fleet.nix.
#
# Neither can run on the project's CI machine (no nixpkgs offline, no KVM): run them on a NixOS
# machine with `nix flake check` (docs/nixos.md, "Testing the modules").
{
  pkgs,
  self,
  nixpkgs,
}:
{
  module-eval = import ./eval.nix { inherit pkgs self nixpkgs; };
  vm-fleet = pkgs.testers.runNixOSTest (import ./fleet.nix { inherit pkgs self nixpkgs; });
}
