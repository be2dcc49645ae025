# Options that the server and agent modules declare alike.
{ lib, pkgs }:
{
  package = lib.mkOption {
    type = lib.types.package;
    default = pkgs.callPackage ./package.nix { };
    defaultText = lib.literalMD "berth built from the source this module comes from (`nixos-module/package.nix`)";
    example = lib.literalExpression "pkgs.berth";
    description = ''
      The berth package. The default builds berth from the source this module comes from,
      with this system's nixpkgs: the same derivation as `pkgs.berth` from the berth overlay.
    '';
  };
}
