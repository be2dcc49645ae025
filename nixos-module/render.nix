# How the NixOS modules turn their options into berth's TOML settings.
#
# Builtins only (no nixpkgs, no `lib`): the test suite evaluates these functions with a bare
# `nix-instantiate` and hands the result to the real `berth check-config` and `berth agent`
# (tests/it/nix_files.rs), so a key the modules write that berth does not know fails a test
# here, not a `nixos-rebuild` later.
let
  # Secrets reach the services as systemd credentials (LoadCredential), which systemd
  # places in /run/credentials/<unit>/<name> ($CREDENTIALS_DIRECTORY). berth's TOML cannot
  # expand variables, so the modules write these fixed paths.
  credential = unit: name: "/run/credentials/${unit}/${name}";

  isStorePath =
    value:
    let
      prefix = builtins.storeDir + "/";
      text = toString value;
    in
    builtins.substring 0 (builtins.stringLength prefix) text == prefix;

  # An attribute set without its null values (TOML has no null).
  withoutNulls =
    attrs:
    builtins.listToAttrs (
      builtins.concatMap (
        name:
        if attrs.${name} == null then
          [ ]
        else
          [
            {
              inherit name;
              value = attrs.${name};
            }
          ]
      ) (builtins.attrNames attrs)
    );
in
rec {
  inherit credential isStorePath withoutNulls;

  # The credential name of a repository's webhook secret.
  webhookCredential = repository: "webhook-${repository}";

  # The server's settings as written to its TOML file: `settings` with the webhook secret of
  # every repository named in `webhookSecretRepositories` pointed at its credential.
  serverSettings =
    {
      settings,
      webhookSecretRepositories ? [ ],
      unit ? "berth.service",
    }:
    settings
    // {
      repositories = map (
        repository:
        if builtins.elem repository.name webhookSecretRepositories then
          repository // { webhook_secret_file = credential unit (webhookCredential repository.name); }
        else
          repository
      ) (settings.repositories or [ ]);
    };

  # The copy of the server's settings that `berth check-config` reads at build time. Files that
  # exist only on the running machine (webhook secrets under /run/credentials, an allowed-signers
  # file or GnuPG home outside the Nix store, a forge token, a notification's secret or access
  # token) are replaced by stand-ins in `dummies`, a directory holding `webhook-secret` (also
  # the stand-in of every other one-line secret), `allowed_signers` and `gnupg/`. Store paths
  # and Nix path values are kept: they exist when the check runs, so they are checked for real.
  checkSettings =
    { settings, dummies }:
    let
      keep = value: builtins.isPath value || isStorePath value;
      stand = repository: key: file: {
        name = key;
        value = if keep repository.${key} then repository.${key} else "${dummies}/${file}";
      };
      replace =
        repository:
        repository
        // builtins.listToAttrs (
          builtins.concatMap
            (
              entry:
              if repository ? ${entry.key} then [ (stand repository entry.key entry.file) ] else [ ]
            )
            [
              {
                key = "webhook_secret_file";
                file = "webhook-secret";
              }
              {
                key = "allowed_signers_file";
                file = "allowed_signers";
              }
              {
                key = "gpg_home";
                file = "gnupg";
              }
            ]
        );
      secret = attrs: key: if attrs ? ${key} && !(keep attrs.${key}) then { ${key} = "${dummies}/webhook-secret"; } else { };
      withForge =
        repository:
        if repository ? forge then repository // { forge = repository.forge // secret repository.forge "token_file"; } else repository;
      notify = entry: entry // secret entry "secret_file" // secret entry "access_token_file";
    in
    settings
    // { repositories = map (repository: withForge (replace repository)) (settings.repositories or [ ]); }
    // (if settings ? notify then { notify = map notify settings.notify; } else { });

  # The TCP port of a `listen` address such as "127.0.0.1:8080" or "[::]:443".
  listenPort =
    listen:
    let
      found = builtins.match ".*:([0-9]+)" listen;
    in
    if found == null then
      throw "berth: cannot find a port in listen = \"${listen}\""
    else
      builtins.fromJSON (builtins.head found);

  # One health check: an argv list as it is, or { command, retries, intervalSecs,
  # timeoutSecs } as berth's table (null options left out: berth's defaults).
  healthCheck =
    check:
    if builtins.isList check then
      check
    else
      withoutNulls {
        inherit (check) command;
        retries = check.retries or null;
        interval_secs = check.intervalSecs or null;
        timeout_secs = check.timeoutSecs or null;
      };

  # The agent's TOML settings from the module's options (docs/agent.md lists every key).
  agentSettings =
    {
      server,
      host,
      tokenFile,
      deployPublicKey,
      activation,
      healthChecks,
      checkSystemRunning,
      healthTimeout,
      activationTimeout,
      reboot,
      rebootWindow,
      rebootCommand,
      activationWindows ? [ ],
      timeZone ? null,
      dryActivate ? false,
    }:
    withoutNulls {
      inherit server host activation reboot;
      token_file = tokenFile;
      deploy_public_key = deployPublicKey;
      health_checks = map healthCheck healthChecks;
      check_system_running = checkSystemRunning;
      health_timeout_secs = healthTimeout;
      activation_timeout_secs = activationTimeout;
      reboot_window = rebootWindow;
      reboot_command = rebootCommand;
      activation_windows = if activationWindows == [ ] then null else activationWindows;
      time_zone = timeZone;
      dry_activate = if dryActivate then true else null;
    };
}
