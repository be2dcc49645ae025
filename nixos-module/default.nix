# The berth modules: services.berth.server (the build host and cache),
# services.berth.agent (a host of the fleet that pulls) and services.berth.push (a host berth
# pushes to over SSH). Each is disabled until its `enable` is set, so one import serves every
# machine of a fleet.
{
  imports = [
    ./server.nix
    ./agent.nix
    ./push.nix
  ];
}
