# services.berth.agent: the host agent (`berth agent`) that pulls this host's signed
# generations from a berth server, substitutes them from its cache, activates them in two
# phases and confirms or rolls back. docs/nixos.md is the reference; docs/agent.md describes
# the agent itself.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.berth.agent;
  render = import ./render.nix;
  shared = import ./options.nix { inherit lib pkgs; };
  format = pkgs.formats.toml { };

  unit = "berth-agent.service";
  publicKey = lib.types.strMatching "[^:[:space:]]+:[A-Za-z0-9+/]{43}=";

  settings = render.agentSettings {
    inherit (cfg)
      server
      host
      deployPublicKey
      activation
      healthChecks
      checkSystemRunning
      healthTimeout
      activationTimeout
      reboot
      rebootWindow
      rebootCommand
      activationWindows
      timeZone
      dryActivate
      ;
    tokenFile = if cfg.tokenFile != null then render.credential unit "token" else enrolledToken;
  };

  # Where `berth agent enroll` writes the token when the host enrolls itself.
  stateDir = "/var/lib/berth-agent";
  enrolledToken = "${stateDir}/token";
  enroll = pkgs.writeShellScript "berth-agent-enroll" ''
    # First start with an enrollment code and no token yet: trade the code for the token.
    if [ ! -s ${enrolledToken} ]; then
      exec ${lib.getExe cfg.package} agent enroll --server ${lib.escapeShellArg cfg.server} \
        --host ${lib.escapeShellArg cfg.host} --state-dir ${stateDir} \
        --code-file ${lib.escapeShellArg (toString cfg.enrollmentCodeFile)} \
        --ssh-host-key ${lib.escapeShellArg (toString cfg.sshHostKeyFile)}
    fi
  '';
  enrolling = cfg.tokenFile == null;
in
{
  options.services.berth.agent = {
    enable = lib.mkEnableOption "the berth agent, which deploys the generations a berth server builds for this host";

    inherit (shared) package;

    server = lib.mkOption {
      type = lib.types.strMatching "https?://[^[:space:]?#]+";
      example = "https://berth.example.org";
      description = ''
        The berth server's base URL. The agent long-polls it for this host's manifests and
        reports each phase of a deploy to it; nothing connects to the host.
      '';
    };

    host = lib.mkOption {
      type = lib.types.strMatching "[A-Za-z0-9_][A-Za-z0-9_-]{0,62}";
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      example = "web-1";
      description = ''
        This host's name as berth knows it: its attribute in the fleet flake's
        `nixosConfigurations`, and the `<name>` of its `host:<name>` token.
      '';
    };

    tokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/var/lib/berth-agent-token";
      description = ''
        A file on the host (outside the Nix store, mode 0600) holding its `host:<name>`
        token, made on the server with `berth-token create --scope host:<name>`. systemd
        passes it to the agent as a credential; the agent reads it when it starts (restart
        `berth-agent` after replacing it). `null`: the host enrolls itself with
        {option}`services.berth.agent.enrollmentCodeFile` and keeps the token it gets in
        `/var/lib/berth-agent/token`.
      '';
    };

    enrollmentCodeFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/var/lib/berth-enroll-code";
      description = ''
        With {option}`services.berth.agent.tokenFile` unset: a file on the host (outside the
        Nix store, mode 0600) holding the one-time code `berth hosts add NAME` printed. On
        its first start, while `/var/lib/berth-agent/token` does not exist, the agent runs
        `berth agent enroll` with it: the code is traded for the host's token (written 0600
        there) and the host's SSH host key is recorded on the server. The code is spent
        then; delete the file.
      '';
    };

    sshHostKeyFile = lib.mkOption {
      type = lib.types.path;
      default = "/etc/ssh/ssh_host_ed25519_key.pub";
      example = "/persist/etc/ssh/ssh_host_ed25519_key.pub";
      description = ''
        The host's ed25519 SSH host public key, sent to the server at enrollment
        (`berth hosts keys --format age` lists it as the host's age recipient).
      '';
    };

    deployPublicKey = lib.mkOption {
      type = publicKey;
      example = "fleet-deploy-1:qC0i8JQLQA6DqBM6oap0lqK69ZuWhR+uLs0ldegcJsY=";
      description = ''
        The public half of the server's deploy key (`name:base64`). The agent refuses every
        manifest not signed by it.
      '';
    };

    activation = lib.mkOption {
      type = lib.types.enum [
        "switch"
        "boot"
        "test"
      ];
      default = "switch";
      example = "boot";
      description = ''
        How a new generation is activated. `switch`: `switch-to-configuration test`, the
        health checks, then the system profile and the bootloader (a failure before that
        returns to the previous system, and a crash or reboot boots it). `boot`: only the
        profile and the bootloader, active at the next boot. `test`: activate and check, never
        touch the profile or the bootloader.
      '';
    };

    healthChecks = lib.mkOption {
      type = lib.types.listOf (
        lib.types.either (lib.types.nonEmptyListOf lib.types.str) (
          lib.types.submodule {
            options = {
              command = lib.mkOption {
                type = lib.types.nonEmptyListOf lib.types.str;
                description = "The command, as an argument list.";
              };
              retries = lib.mkOption {
                type = lib.types.nullOr lib.types.ints.unsigned;
                default = null;
                description = "Attempts after a failed one (berth's default: 0).";
              };
              intervalSecs = lib.mkOption {
                type = lib.types.nullOr lib.types.ints.unsigned;
                default = null;
                description = "Seconds between attempts (berth's default: 1).";
              };
              timeoutSecs = lib.mkOption {
                type = lib.types.nullOr lib.types.ints.positive;
                default = null;
                description = "Seconds one attempt may run before it is killed (default: what is left of healthTimeout).";
              };
            };
          }
        )
      );
      default = [ ];
      example = lib.literalExpression ''
        [
          [ "systemctl" "is-active" "postgresql.service" ]
          {
            command = [ "''${pkgs.curl}/bin/curl" "-fsS" "http://127.0.0.1:8080/health" ];
            retries = 5;
            intervalSecs = 2;
            timeoutSecs = 10;
          }
        ]
      '';
      description = ''
        Commands, as argument lists (never shell strings), that must exit 0 once the new
        system runs, or the deploy rolls back; or attribute sets with the list as `command`
        and `retries`, `intervalSecs` and `timeoutSecs` (per attempt). All of them, retries
        included, must pass within {option}`services.berth.agent.healthTimeout`. Programs
        are looked up in the agent's PATH (Nix, systemd, coreutils and
        {option}`services.berth.agent.extraPackages`); a store path such as
        `''${pkgs.curl}/bin/curl` needs nothing else.
      '';
    };

    checkSystemRunning = lib.mkOption {
      type = lib.types.bool;
      default = true;
      example = false;
      description = ''
        Whether a switch that leaves `systemctl is-system-running` degraded fails (unless the
        system was already degraded before it).
      '';
    };

    healthTimeout = lib.mkOption {
      type = lib.types.ints.positive;
      default = 60;
      example = 300;
      description = ''
        Seconds the health checks may take after the switch; the berth server must answer
        again within them, so a switch that cuts the host off rolls back.
      '';
    };

    activationTimeout = lib.mkOption {
      type = lib.types.ints.positive;
      default = 600;
      example = 1800;
      description = "Seconds one `switch-to-configuration` run may take before it counts as failed.";
    };

    reboot = lib.mkOption {
      type = lib.types.enum [
        "never"
        "when-needed"
      ];
      default = "never";
      example = "when-needed";
      description = ''
        Whether the agent reboots the host by itself when a confirmed generation changed the
        kernel, initrd or kernel modules (`when-needed`), or only reports `needs_reboot`
        (`never`).
      '';
    };

    rebootWindow = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "[0-9]{2}:[0-9]{2}-[0-9]{2}:[0-9]{2}");
      default = null;
      example = "02:00-04:00";
      description = ''
        With `reboot = "when-needed"`, the daily window (`HH:MM-HH:MM`, **UTC**, may wrap
        midnight) in which the agent may reboot; `null`: any time.
      '';
    };

    activationWindows = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [
        "Mon-Fri 02:00-05:00"
        "Sat,Sun 00:00-24:00"
      ];
      description = ''
        When new generations may be switched to: `[DAYS ]HH:MM-HH:MM` entries in the host's
        time zone (see `timeZone`); `[ ]`: any time. Outside them a new generation waits
        (docs/agent.md, "Activation windows").
      '';
    };

    dryActivate = lib.mkOption {
      type = lib.types.bool;
      default = false;
      example = true;
      description = ''
        Before each switch, run `switch-to-configuration dry-activate` and report the units
        the switch would stop, restart, reload and start (in the `activating` report).
      '';
    };

    timeZone = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "Europe/Berlin";
      description = ''
        The IANA time zone `activationWindows` are read in; `null`: the host's own
        (`/etc/localtime`, which `time.timeZone` sets).
      '';
    };

    rebootCommand = lib.mkOption {
      type = lib.types.nonEmptyListOf lib.types.str;
      default = [
        "systemctl"
        "reboot"
      ];
      example = [
        "systemctl"
        "kexec"
      ];
      description = "How the agent reboots the host, as an argument list.";
    };

    extraPackages = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default = [ ];
      example = lib.literalExpression "[ pkgs.curl pkgs.postgresql ]";
      description = "Packages added to the agent's PATH, for the health checks.";
    };

    cache = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = true;
        example = false;
        description = ''
          Whether to add the berth server to this host's {option}`nix.settings.substituters`
          and its signing key to {option}`nix.settings.trusted-public-keys`, so that the
          host substitutes the systems berth builds (the agent never builds them). Turn it off
          only if you configure both yourself.
        '';
      };

      url = lib.mkOption {
        type = lib.types.str;
        default = cfg.server;
        defaultText = lib.literalExpression "config.services.berth.agent.server";
        example = "https://cache.example.org";
        description = "The substituter URL of berth's cache: the server itself unless a proxy serves the cache elsewhere.";
      };

      publicKeys = lib.mkOption {
        type = lib.types.listOf publicKey;
        default = [ ];
        example = [ "cache.example.org-1:bJN1l3lZ70jSLPBfPxrEyoTh2GzTLf8z15Ko/ww+AQ0=" ];
        description = ''
          The cache's public signing key (`berth keygen` printed it, and `berth serve` prints
          it at start), plus the previous one during a key rotation. Required when
          {option}`services.berth.agent.cache.enable` is set.
        '';
      };

      netrcFile = lib.mkOption {
        type = lib.types.nullOr lib.types.path;
        default = null;
        example = "/etc/nix/netrc";
        description = ''
          For a private cache (`[cache] require_read_token = true`): a netrc file, outside the
          Nix store, with a token that may read the cache (this host's own `host:<name>` token
          does): `machine berth.example.org login berth password TOKEN`. It becomes
          {option}`nix.settings.netrc-file`.
        '';
      };
    };

    configFile = lib.mkOption {
      type = lib.types.path;
      readOnly = true;
      default = format.generate "berth-agent.toml" settings;
      defaultText = lib.literalMD "rendered from the options above";
      example = "/nix/store/…-berth-agent.toml";
      description = "The configuration file the agent reads (read-only).";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = config.nix.enable;
        message = "services.berth.agent substitutes and activates systems with Nix: it needs nix.enable.";
      }
      {
        assertion = cfg.tokenFile != null || cfg.enrollmentCodeFile != null;
        message = ''
          services.berth.agent needs tokenFile (a host:<name> token) or enrollmentCodeFile
          (the one-time code of `berth hosts add ${cfg.host}`).
        '';
      }
      {
        assertion = cfg.enrollmentCodeFile == null || !render.isStorePath cfg.enrollmentCodeFile;
        message = "services.berth.agent.enrollmentCodeFile holds a secret: it must not be in the Nix store.";
      }
      {
        assertion = cfg.tokenFile == null || !render.isStorePath cfg.tokenFile;
        message = ''
          services.berth.agent.tokenFile is in the Nix store (${toString cfg.tokenFile}), where
          every user can read it. Give the path of a file outside the store as a string.
        '';
      }
      {
        assertion = cfg.cache.netrcFile == null || !render.isStorePath cfg.cache.netrcFile;
        message = "services.berth.agent.cache.netrcFile holds a token: it must not be in the Nix store.";
      }
      {
        assertion = cfg.cache.enable -> cfg.cache.publicKeys != [ ];
        message = ''
          services.berth.agent.cache.publicKeys is empty: the host would not trust what berth's
          cache serves. Give the cache's public key (or set cache.enable = false and configure
          nix.settings yourself).
        '';
      }
      {
        assertion = cfg.rebootWindow != null -> cfg.reboot == "when-needed";
        message = "services.berth.agent.rebootWindow only applies with reboot = \"when-needed\".";
      }
    ];

    nix.settings = lib.mkIf cfg.cache.enable (
      {
        substituters = [ cfg.cache.url ];
        trusted-public-keys = cfg.cache.publicKeys;
      }
      // lib.optionalAttrs (cfg.cache.netrcFile != null) {
        netrc-file = toString cfg.cache.netrcFile;
      }
    );

    systemd.services.berth-agent = {
      description = "berth deployment agent";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      # The agent runs switch-to-configuration itself: an activation must never stop or
      # restart it (that would kill the activation it is running). A new agent takes over at
      # the next boot or `systemctl restart berth-agent`.
      restartIfChanged = false;
      stopIfChanged = false;
      unitConfig.X-StopOnRemoval = false;

      path = [
        config.nix.package
        config.systemd.package
        pkgs.coreutils
      ]
      ++ cfg.extraPackages;

      serviceConfig = {
        ExecStart = "${lib.getExe cfg.package} agent --config ${cfg.configFile}";
        LoadCredential = lib.optional (!enrolling) "token:${toString cfg.tokenFile}";
        # The code file is read directly (not as a credential): once the host is enrolled
        # the file may be gone, and a missing credential would stop the agent from starting.
        ExecStartPre = lib.optional enrolling "${enroll}";
        StateDirectory = "berth-agent";
        StateDirectoryMode = "0700";
        Restart = "on-failure";
        RestartSec = 10;
        # A stop request (shutdown, `systemctl stop`) reaches the agent alone, which finishes
        # the deploy under way before it exits; if it takes too long, what the agent wrote
        # before changing anything lets it settle the deploy at its next start.
        KillMode = "mixed";
        TimeoutStopSec = 300;
        # Deliberately not hardened: the agent runs as root to set the system profile, run
        # switch-to-configuration (which rewrites /etc, the bootloader and every unit) and
        # reboot; a sandbox would confine the activation it performs.
      };
    };
  };
}
