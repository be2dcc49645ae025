# services.berth.server: the build host, signed binary cache and deployment server
# (`berth serve`). docs/nixos.md is the reference for every option; docs/configuration.md for
# every key of `settings`.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.berth.server;
  render = import ./render.nix;
  shared = import ./options.nix { inherit lib pkgs; };
  format = pkgs.formats.toml { };

  unit = "berth.service";
  stateDir = "/var/lib/berth";
  inStateDir = path: path == stateDir || lib.hasPrefix "${stateDir}/" path;

  settings = render.serverSettings {
    inherit (cfg) settings;
    inherit unit;
    webhookSecretRepositories = lib.attrNames cfg.webhookSecretFiles;
  };
  configFile = format.generate "berth-server.toml" settings;

  # Stand-ins for the files that exist only on the running machine, so that the build-time
  # check can read a copy of the configuration (see render.nix, checkSettings).
  checkDummies = pkgs.runCommand "berth-check-config-dummies" { } ''
    mkdir -p $out/gnupg
    echo build-time-check > $out/webhook-secret
    touch $out/allowed_signers
  '';
  checkFile = format.generate "berth-server-check.toml" (
    render.checkSettings {
      inherit settings;
      dummies = checkDummies;
    }
  );

  # The file the service reads: the rendered one, once `berth check-config` accepted its
  # check copy. A wrong key or value fails the system's build, not the running service.
  checkedConfigFile =
    if cfg.checkConfig then
      pkgs.runCommand "berth-server.toml"
        {
          inherit configFile checkFile;
          preferLocalBuild = true;
        }
        ''
          ${lib.getExe cfg.package} check-config "$checkFile"
          cp "$configFile" "$out"
        ''
    else
      configFile;

  # Only what `berth token` needs (the database), with no secret in it, so that an
  # administrator can manage tokens outside the service (see `berth-token` below).
  adminConfigFile = format.generate "berth-admin.toml" (
    {
      inherit (cfg.settings) data_dir;
    }
    // lib.optionalAttrs (cfg.settings ? database) { inherit (cfg.settings) database; }
  );

  berthToken = pkgs.writeShellScriptBin "berth-token" ''
    # Creates, lists and revokes berth's API tokens: `berth token ARGS…` as the berth user,
    # on the database the service uses.
    if [ "$(${lib.getExe' pkgs.coreutils "id"} -u)" != 0 ]; then
      echo "berth-token: run it as root (it opens berth's database as the berth user)" >&2
      exit 1
    fi
    if [ $# -eq 0 ]; then
      echo "usage: berth-token create --scope SCOPE [--description TEXT] | list | revoke ID" >&2
      exit 2
    fi
    ${lib.optionalString (cfg.environmentFile != null) ''
      # The service's environment (e.g. PGPASSWORD), as systemd's EnvironmentFile gives it.
      set -a
      . ${lib.escapeShellArg (toString cfg.environmentFile)}
      set +a
    ''}
    exec ${lib.getExe' pkgs.util-linux "runuser"} -u berth -- ${lib.getExe cfg.package} token "$@" --config ${adminConfigFile}
  '';

  # Directories named in the settings that lie outside the state directory: the service may
  # write there (ReadWritePaths) and they are created for it.
  storageDir =
    let
      storage = cfg.settings.storage or "";
    in
    if lib.hasPrefix "file://" storage then lib.removePrefix "file://" storage else null;
  databaseDir =
    let
      database = cfg.settings.database or "";
    in
    if lib.hasPrefix "sqlite://" database then
      dirOf (builtins.head (lib.splitString "?" (lib.removePrefix "sqlite://" database)))
    else
      null;
  writableDirs = lib.filter (dir: dir != null && !inStateDir dir) (
    lib.unique [
      cfg.settings.data_dir
      storageDir
      databaseDir
    ]
  );

  port = render.listenPort cfg.settings.listen;
  usesGpg = lib.any (repository: repository ? gpg_home) cfg.settings.repositories;

  # Every secret file option once: each must lie outside the Nix store (assertions); all but
  # the environment file reach berth as systemd credentials (LoadCredential).
  credentialFiles = lib.filter (secret: secret.path != null) [
    {
      option = "signingKeyFile";
      credential = "signing-key";
      path = cfg.signingKeyFile;
    }
    {
      option = "deployKeyFile";
      credential = "deploy-key";
      path = cfg.deployKeyFile;
    }
    {
      option = "s3CredentialsFile";
      credential = "s3-credentials";
      path = cfg.s3CredentialsFile;
    }
  ]
  ++ lib.mapAttrsToList (name: path: {
    option = "webhookSecretFiles.${name}";
    credential = render.webhookCredential name;
    inherit path;
  }) cfg.webhookSecretFiles;

  secretFiles =
    credentialFiles
    ++ lib.optional (cfg.environmentFile != null) {
      option = "environmentFile";
      path = cfg.environmentFile;
    };

  credentials = map (secret: "${secret.credential}:${toString secret.path}") credentialFiles;

  repositoryType = lib.types.submodule {
    freeformType = format.type;
    options = {
      name = lib.mkOption {
        type = lib.types.strMatching "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}";
        description = ''
          What CI and webhooks call the repository (`berth build submit --repo NAME`): letters,
          digits, `-`, `_` and `.`, not starting with `.`.
        '';
        example = "fleet";
      };
      url = lib.mkOption {
        type = lib.types.str;
        description = ''
          The fleet repository (a flake with `nixosConfigurations`), as any git URL:
          `git+https://…`, `git+ssh://…`, `git+file:///…`. berth keeps a bare mirror under
          `<data_dir>/repos/<name>.git`.
        '';
        example = "git+https://git.example.org/ops/fleet";
      };
    };
  };
in
{
  options.services.berth.server = {
    enable = lib.mkEnableOption "berth, the build host, signed Nix binary cache and deployment server";

    inherit (shared) package;

    settings = lib.mkOption {
      type = lib.types.submodule {
        freeformType = format.type;
        options = {
          listen = lib.mkOption {
            type = lib.types.strMatching ".*:[0-9]+";
            default = "127.0.0.1:8080";
            example = "[::]:8080";
            description = ''
              The address berth listens on (plain HTTP). The default suits a reverse proxy on
              the same machine that terminates TLS; `"[::]:8080"` listens on every interface.
            '';
          };
          data_dir = lib.mkOption {
            type = lib.types.strMatching "/.+";
            default = stateDir;
            example = "/srv/berth";
            description = ''
              The directory of the default storage (`cache/`), database (`berth.sqlite`),
              repository mirrors, build logs, GC roots and generated keys. A directory other
              than /var/lib/berth is created and made writable for the service.
            '';
          };
          repositories = lib.mkOption {
            type = lib.types.listOf repositoryType;
            default = [ ];
            example = lib.literalExpression ''
              [
                {
                  name = "fleet";
                  url = "git+https://git.example.org/ops/fleet";
                  allowed_signers_file = ./allowed_signers;
                }
              ]
            '';
            description = ''
              The fleet repositories berth builds, one `[[repositories]]` table each. Besides
              `name` and `url`, every key of docs/configuration.md is accepted
              (`deploy_branch`, `require_signed_commits`, `allowed_signers_file`, …).
              Webhook secrets go in {option}`services.berth.server.webhookSecretFiles`, not
              here. An allowed-signers file holds public keys only: a Nix path (copied to the
              store) is fine, and it is then checked at build time too.
            '';
          };
        };
      };
      default = { };
      example = lib.literalExpression ''
        {
          listen = "127.0.0.1:8080";
          signing_key_name = "cache.example.org-1";
          cache.priority = 30;
          builder.parallel_hosts = 2;
          retention = {
            keep_last = 10;
            schedule_secs = 86400;
          };
          repositories = [
            {
              name = "fleet";
              url = "git+https://git.example.org/ops/fleet";
              allowed_signers_file = ./allowed_signers;
            }
          ];
        }
      '';
      description = ''
        berth's configuration, rendered to the TOML file `berth serve --config` reads. Every
        key of docs/configuration.md is accepted; unknown keys and wrong values fail the
        system's build (see {option}`services.berth.server.checkConfig`). Secrets never go
        here: use {option}`services.berth.server.signingKeyFile`,
        {option}`services.berth.server.deployKeyFile` and
        {option}`services.berth.server.webhookSecretFiles`.
      '';
    };

    signingKeyFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/keys/berth-signing-key";
      description = ''
        The cache signing key (Nix's secret-key format, from `berth keygen` or
        `nix-store --generate-binary-cache-key`), as a path on the server outside the Nix
        store. systemd hands it to berth as a credential. With `null`, berth generates
        `<data_dir>/signing-key` on its first start (named after `signing_key_name`) and
        prints the public key in its log.
      '';
    };

    deployKeyFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/keys/berth-deploy-key";
      description = ''
        The deploy key that signs host manifests (`berth keygen`), as a path outside the Nix
        store, passed as a credential. With `null`, berth generates `<data_dir>/deploy-key` on
        its first start and prints `deploy public key: …` in its log.
      '';
    };

    webhookSecretFiles = lib.mkOption {
      type = lib.types.attrsOf lib.types.path;
      default = { };
      example = {
        fleet = "/run/keys/berth-webhook-fleet";
      };
      description = ''
        Forge webhook secrets, by repository name: each file (outside the Nix store) is passed
        as a credential and becomes that repository's `webhook_secret_file`. A repository
        without an entry accepts no webhook (CI can still submit builds).
      '';
    };

    s3CredentialsFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/keys/berth-s3-credentials";
      description = ''
        An AWS shared-credentials file for an `s3://` storage (see docs/storage.md), as a path
        outside the Nix store, passed as a credential. Refer to it in the storage URL as
        `credentials_file=/run/credentials/berth.service/s3-credentials`.
      '';
    };

    environmentFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = "/run/keys/berth-environment";
      description = ''
        A systemd `EnvironmentFile` (outside the Nix store) for secrets read from the
        environment: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` for an `s3://` storage,
        `PGPASSWORD` for a `postgres://` database (see docs/scaling.md).
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      example = true;
      description = ''
        Whether to open the TCP port of {option}`services.berth.server.settings.listen` in the
        firewall. Leave it closed when a reverse proxy on this machine serves berth.
      '';
    };

    checkConfig = lib.mkOption {
      type = lib.types.bool;
      default = true;
      example = false;
      description = ''
        Whether to run `berth check-config` on the configuration when the system is built, so
        that a wrong key fails `nixos-rebuild` instead of the service. Files that exist only
        at run time (webhook secrets, an allowed-signers file or GnuPG home outside the Nix
        store) are replaced by stand-ins for the check. Turn it off when cross-compiling: the
        check runs the berth binary on the build machine.
      '';
    };

    extraPackages = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default = [ ];
      example = lib.literalExpression "[ pkgs.git-lfs ]";
      description = ''
        Packages added to the service's PATH, besides Nix, git, OpenSSH (for `git+ssh` URLs
        and SSH commit signatures) and GnuPG (when a repository sets `gpg_home`).
      '';
    };

    configFile = lib.mkOption {
      type = lib.types.path;
      readOnly = true;
      default = checkedConfigFile;
      defaultText = lib.literalMD "the checked file rendered from {option}`services.berth.server.settings`";
      example = "/nix/store/…-berth-server.toml";
      description = ''
        The configuration file the service reads (read-only), e.g. for
        `berth check-config`.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    warnings = lib.optional (cfg.openFirewall && builtins.match "(127\\.[0-9.]+|\\[::1]|localhost):[0-9]+" cfg.settings.listen != null) ''
      services.berth.server.openFirewall opens port ${toString port}, but berth listens on
      ${cfg.settings.listen} only: set services.berth.server.settings.listen = "[::]:${toString port}"
      for other machines to reach it.
    '';

    assertions =
      [
        {
          assertion = config.nix.enable;
          message = "services.berth.server builds with the Nix daemon: it needs nix.enable.";
        }
      ]
      ++ map (secret: {
        assertion = !render.isStorePath secret.path;
        message = ''
          services.berth.server.${secret.option} is in the Nix store (${toString secret.path}),
          where every user can read it. Give the path of a file outside the store as a string,
          e.g. "/run/keys/…". (A Nix path such as ./key in a flake is inside the flake's source,
          which is in the store; in a non-flake configuration it stays the path on the machine
          that evaluates, so write the string of the path on this machine instead.)
        '';
      }) secretFiles
      ++ lib.mapAttrsToList (name: _: {
        assertion = lib.any (repository: repository.name == name) cfg.settings.repositories;
        message = "services.berth.server.webhookSecretFiles.${name}: no repository named \"${name}\" in services.berth.server.settings.repositories.";
      }) cfg.webhookSecretFiles;

    services.berth.server.settings = {
      signing_key_file = lib.mkIf (cfg.signingKeyFile != null) (render.credential unit "signing-key");
      deploy_key_file = lib.mkIf (cfg.deployKeyFile != null) (render.credential unit "deploy-key");
    };

    users.users.berth = {
      isSystemUser = true;
      group = "berth";
      home = "${stateDir}/home";
      description = "berth build host and binary cache";
    };
    users.groups.berth = { };

    # The administrator's tools: the berth CLI (API client: hosts, rollback, gc…) and
    # `berth-token`, which manages tokens on the service's database as the berth user.
    environment.systemPackages = [
      cfg.package
      berthToken
    ];

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall [ port ];

    systemd.tmpfiles.rules = map (dir: "d ${dir} 0750 berth berth - -") writableDirs;

    systemd.services.berth = {
      description = "berth build host, binary cache and deployment server";
      wantedBy = [ "multi-user.target" ];
      wants = [
        "network-online.target"
        "nix-daemon.socket"
      ];
      after = [
        "network-online.target"
        "nix-daemon.socket"
      ];

      # berth runs `nix eval`, `nix build` and `nix path-info` as the berth user, through the
      # Nix daemon (it is not a trusted user: see docs/nixos.md), and git for the mirrors.
      path = [
        config.nix.package
        pkgs.git
        pkgs.openssh
      ]
      ++ lib.optional usesGpg pkgs.gnupg
      ++ cfg.extraPackages;

      environment = {
        NIX_REMOTE = "daemon";
        # Nix keeps its fetcher and evaluation caches (among them a clone of every fleet
        # commit it built) under XDG_CACHE_HOME; git and ssh read HOME.
        HOME = "${stateDir}/home";
        XDG_CACHE_HOME = "${stateDir}/home/.cache";
      };

      serviceConfig = {
        ExecStart = "${lib.getExe cfg.package} serve --config ${cfg.configFile}";
        User = "berth";
        Group = "berth";
        Restart = "on-failure";
        RestartSec = 5;
        # Each connection is a file; berth raises its soft limit to this, and refuses
        # connections over [server] max_connections (default 4096) with a 503.
        LimitNOFILE = 65536;

        StateDirectory = [
          "berth"
          "berth/home"
        ];
        StateDirectoryMode = "0750";
        ReadWritePaths = writableDirs;
        LoadCredential = credentials;
        EnvironmentFile = lib.mkIf (cfg.environmentFile != null) (toString cfg.environmentFile);
        UMask = "0077";

        # Hardening: the strictest set that still lets berth spawn nix and git, reach the Nix
        # daemon's socket, fetch repositories over the network and serve HTTP.
        AmbientCapabilities = lib.optional (port < 1024) "CAP_NET_BIND_SERVICE";
        CapabilityBoundingSet = if port < 1024 then [ "CAP_NET_BIND_SERVICE" ] else [ "" ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        PrivateMounts = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        # Not ProcSubset=pid: nix's garbage collector counts CPUs from /proc/stat.
        ProtectProc = "invisible";
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
        ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        # Not ~@resources: nix raises its stack limit with setrlimit when it starts.
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}
