# One host of the VM test's fleet as a NixOS system: the fleet flake's
# `nixosConfigurations.<host>` on the build host, and the test's expected toplevel outside the
# VMs. Both evaluate this file with the same arguments, so berth's build inside the VM finds
# the system the test already built (and put in the build host's store): nothing is built
# offline, and the test can compare store paths exactly.
#
# - nixpkgs, berth: the sources (flake inputs with `flake = false` in the VM; the berth flake's
#   inputs outside), used as paths only, so no flake metadata (revision, date) can make the two
#   evaluations differ.
# - facts: what the test framework configured for each VM (addresses, /etc/hosts, the udev
#   rules naming its network interface), for the fleet's systems to run in those VMs.
{
  nixpkgs,
  berth,
  facts,
}:
host: variant:

let
  hostFacts = facts.hosts.${host};

  variants = {
    # Generation markers the test reads in /etc.
    a = {
      environment.etc."berth-test-generation".text = "a\n";
    };
    c = {
      environment.etc."berth-test-generation".text = "c\n";
    };
    # Builds, but fails to activate: switch-to-configuration exits non-zero.
    broken =
      { pkgs, ... }:
      {
        environment.etc."berth-test-generation".text = "broken\n";
        systemd.services.berth-test-broken = {
          wantedBy = [ "multi-user.target" ];
          serviceConfig = {
            Type = "oneshot";
            ExecStart = "${pkgs.coreutils}/bin/false";
          };
        };
      };
  };
in
import "${nixpkgs}/nixos/lib/eval-config.nix" {
  system = null;
  modules = [
    # The modules the test framework gives every VM: the test driver's backdoor, and qemu-vm
    # (virtualisation.*). Older nixpkgs import qemu-vm from nixos-test-base.nix, current ones
    # (26.11) from the framework's nodes.nix instead, so it is named here too; the module
    # system imports a file once, whoever names it.
    "${nixpkgs}/nixos/lib/testing/nixos-test-base.nix"
    "${nixpkgs}/nixos/modules/virtualisation/qemu-vm.nix"
    "${berth}/nixos-module/agent.nix"
    ./common.nix
    variants.${variant}
    {
      nixpkgs.hostPlatform = facts.system;
      networking.hostName = host;
      networking.interfaces = builtins.mapAttrs (_: interface: {
        ipv4.addresses = interface.ipv4;
        ipv6.addresses = interface.ipv6;
      }) hostFacts.interfaces;
      networking.extraHosts = hostFacts.extraHosts;
      boot.initrd.services.udev.rules = hostFacts.udevRules;
    }
  ];
}
