# Both berth modules: services.berth.server (the build host and cache) and
# services.berth.agent (a host of the fleet). Each is disabled until its `enable` is set, so
# one import serves every machine of a fleet.
{
  imports = [
    ./server.nix
    ./agent.nix
  ];
}
