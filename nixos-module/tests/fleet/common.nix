# What every host of the VM test's fleet shares: the test's VMs `web1` and `web2` are built
# with it, and so is every system the fleet flake (system.nix) defines for them, on the build
# host and in the test's own evaluation.
{ lib, pkgs, ... }:

let
  key = file: lib.removeSuffix "\n" (builtins.readFile file);
in
{
  # Boot through a real bootloader from a persistent disk, as a real host does: a reboot then
  # boots whatever the bootloader's default is, which is what the two-phase activation is about.
  virtualisation.useBootLoader = true;
  virtualisation.useEFIBoot = true;
  virtualisation.memorySize = 1536;
  virtualisation.diskSize = 4096;
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = true;
  system.switch.enable = true;

  # Hosts substitute; they never build. With no build slot, a build attempt fails the deploy.
  nix.settings.max-jobs = 0;

  services.berth.agent = {
    enable = true;
    server = "http://builder:8080";
    tokenFile = "/var/lib/berth-test/token";
    deployPublicKey = key ./deploy.pub;
    cache.publicKeys = [ (key ./cache.pub) ];
    # The test holds a deploy between its two phases by creating /run/berth-test-hold (and a
    # reboot removes it, as /run is a tmpfs).
    healthTimeout = 600;
    healthChecks = [
      [
        "${pkgs.runtimeShell}"
        "-c"
        "while [ -e /run/berth-test-hold ]; do ${pkgs.coreutils}/bin/sleep 1; done"
      ]
    ];
  };
}
