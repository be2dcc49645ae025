# services.berth.push: a host berth deploys to over SSH (`delivery = "push"` in the server's
# configuration), for a host that does not run the agent. It lets berth's push key run only
# `berth push-gate` (docs/push.md), trusts the cache key for what berth copies, and settles a
# trial berth did not confirm: by a timer while the system runs, and at boot.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.berth.push;
  shared = import ./options.nix { inherit lib pkgs; };
  publicKey = lib.types.strMatching "[^:[:space:]]+:[A-Za-z0-9+/]{43}=";
  stateDir = "/var/lib/berth-push";
  flags = "--state-dir ${stateDir} --activation-timeout-secs ${toString cfg.activationTimeout}";
  gate = "${lib.getExe cfg.package} push-gate ${flags} --untrusted-daemon";
  settle = "${lib.getExe cfg.package} push-settle ${flags}";
in
{
  options.services.berth.push = {
    enable = lib.mkEnableOption "deploys pushed by a berth server over SSH (push mode), for a host without the agent";

    inherit (shared) package;

    authorizedKey = lib.mkOption {
      type = lib.types.strMatching "(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/=]+( .*)?";
      example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl berth-push";
      description = ''
        The public half of berth's push key for this host (the server's `ssh_key_file`). It
        is added to root's authorized keys as `restrict,command="berth push-gate …"`: no
        shell, no forwarding, no pty, and only the commands push mode needs.
      '';
    };

    cachePublicKeys = lib.mkOption {
      type = lib.types.listOf publicKey;
      example = [ "cache.example.org-1:bJN1l3lZ70jSLPBfPxrEyoTh2GzTLf8z15Ko/ww+AQ0=" ];
      description = ''
        berth's cache signing key (and the previous one during a rotation). berth signs each
        closure it pushes with it, and this host's Nix accepts no other: they are added to
        {option}`nix.settings.trusted-public-keys`.
      '';
    };

    activationTimeout = lib.mkOption {
      type = lib.types.ints.between 10 86400;
      default = 600;
      example = 300;
      description = "Seconds one `switch-to-configuration` run may take.";
    };

    settleInterval = lib.mkOption {
      type = lib.types.ints.between 5 3600;
      default = 15;
      example = 30;
      description = ''
        Seconds between two looks at an unconfirmed trial, beside the watcher each trial
        starts: a trial past its deadline is rolled back within this time even if its
        watcher died.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = !(config.services.berth.agent.enable or false);
        message = "services.berth.push and services.berth.agent exclude each other: a host is pushed to or pulls, not both.";
      }
    ];

    services.openssh.enable = true;
    services.openssh.settings.PermitRootLogin = lib.mkDefault "prohibit-password";
    users.users.root.openssh.authorizedKeys.keys = [ ''restrict,command="${gate}" ${cfg.authorizedKey}'' ];

    nix.settings.trusted-public-keys = cfg.cachePublicKeys;

    systemd.tmpfiles.rules = [ "d ${stateDir} 0700 root root -" ];

    # At boot an unconfirmed trial is over: the boot entry never pointed at it.
    systemd.services.berth-push-boot-settle = {
      description = "berth push mode: end a trial the last boot interrupted";
      wantedBy = [ "multi-user.target" ];
      before = [ "sshd.service" ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = "${settle} --boot";
        RemainAfterExit = true;
      };
    };

    systemd.services.berth-push-settle = {
      description = "berth push mode: roll back a trial past its deadline";
      serviceConfig = {
        Type = "oneshot";
        ExecStart = settle;
      };
    };

    systemd.timers.berth-push-settle = {
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = "${toString cfg.settleInterval}s";
        OnUnitActiveSec = "${toString cfg.settleInterval}s";
        AccuracySec = "1s";
      };
    };
  };
}
