# The modules evaluated against nixpkgs, without a VM (no KVM needed): a system with both
# services enabled evaluates, its berth configuration passes `berth check-config` at build
# time, its units and nix.conf say what the modules promise, the agent accepts its rendered
# configuration, and every option has a description and an example.
{
  pkgs,
  self,
  nixpkgs,
}:

let
  inherit (pkgs) lib;

  key = file: lib.removeSuffix "\n" (builtins.readFile file);

  system = nixpkgs.lib.nixosSystem {
    modules = [
      self.nixosModules.default
      {
        nixpkgs.pkgs = pkgs;
        boot.loader.grub.enable = false;
        fileSystems."/" = {
          device = "none";
          fsType = "tmpfs";
        };
        system.stateVersion = lib.trivial.release;
        networking.hostName = "web-1";

        services.berth.server = {
          enable = true;
          openFirewall = true;
          signingKeyFile = "/run/keys/berth-signing-key";
          deployKeyFile = "/run/keys/berth-deploy-key";
          webhookSecretFiles.fleet = "/run/keys/berth-webhook-fleet";
          settings = {
            listen = "[::]:8080";
            previous_public_keys = [ (key ./fleet/cache.pub) ];
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
                allowed_signers_file = "/etc/berth/allowed_signers";
              }
              {
                name = "lab";
                url = "git+file:///srv/lab";
                require_signed_commits = false;
              }
            ];
          };
        };

        services.berth.agent = {
          enable = true;
          server = "https://berth.example.org";
          tokenFile = "/var/lib/berth-agent-token";
          deployPublicKey = key ./fleet/deploy.pub;
          cache.publicKeys = [ (key ./fleet/cache.pub) ];
          healthChecks = [
            [
              "systemctl"
              "is-active"
              "sshd.service"
            ]
          ];
          reboot = "when-needed";
          rebootWindow = "02:00-04:00";
        };
      }
    ];
  };

  inherit (system) config;

  docs = lib.optionAttrSetToDocList system.options.services.berth;
  visible = lib.filter (option: option.visible && !option.internal) docs;
  withoutExample = map (option: option.name) (lib.filter (option: !(option ? example)) visible);
  withoutDescription = map (option: option.name) (
    lib.filter (option: option.description or null == null || option.description == "") visible
  );

  optionsDoc = pkgs.nixosOptionsDoc {
    options = {
      services.berth = system.options.services.berth;
    };
  };
in
assert lib.assertMsg (withoutExample == [ ])
  "berth module options without an example: ${toString withoutExample}";
assert lib.assertMsg (withoutDescription == [ ])
  "berth module options without a description: ${toString withoutDescription}";
pkgs.runCommand "berth-module-eval"
  {
    nativeBuildInputs = [
      config.services.berth.agent.package
      pkgs.gnugrep
    ];
    # Building it runs `berth check-config` (the module's build-time check).
    serverConfig = config.services.berth.server.configFile;
    agentConfig = config.services.berth.agent.configFile;
    serverUnit = "${config.systemd.units."berth.service".unit}/berth.service";
    agentUnit = "${config.systemd.units."berth-agent.service".unit}/berth-agent.service";
    nixConf = config.environment.etc."nix/nix.conf".source;
    optionsMarkdown = optionsDoc.optionsCommonMark;
    firewallPorts = builtins.toJSON config.networking.firewall.allowedTCPPorts;
  }
  ''
    set -x
    # The server: its credentials, configuration and sandbox.
    grep -Fx 'webhook_secret_file = "/run/credentials/berth.service/webhook-fleet"' $serverConfig
    grep -Fx 'signing_key_file = "/run/credentials/berth.service/signing-key"' $serverConfig
    grep -Fx 'LoadCredential=signing-key:/run/keys/berth-signing-key' $serverUnit
    grep -Fx 'LoadCredential=webhook-fleet:/run/keys/berth-webhook-fleet' $serverUnit
    grep -Fx 'User=berth' $serverUnit
    grep -Fx 'ProtectSystem=strict' $serverUnit
    grep -F "serve --config $serverConfig" $serverUnit
    [ "$firewallPorts" = '[8080]' ]

    # The agent: never restarted by an activation; the host trusts and uses berth's cache.
    grep -Fx 'X-RestartIfChanged=false' $agentUnit
    grep -Fx 'X-StopOnRemoval=false' $agentUnit
    grep -Fx 'LoadCredential=token:/var/lib/berth-agent-token' $agentUnit
    grep -E '^substituters = .*https://berth.example.org.*https://cache.nixos.org/' $nixConf
    grep -E '^trusted-public-keys = .*berth-test-cache-1:' $nixConf

    # The agent accepts its configuration: with the token and server given as flags (they win
    # over the file), it gets past validation and fails only to reach the (closed) server.
    echo host-token > token
    if berth agent --config $agentConfig --token-file token --server http://127.0.0.1:9 \
        --state-dir $PWD/state --store $PWD/store --once 2> agent.log; then
      echo "the agent reached a server that does not exist" >&2
      exit 1
    fi
    cat agent.log
    grep -F 'cannot reach http://127.0.0.1:9' agent.log

    mkdir $out
    cp $optionsMarkdown $out/options.md
  ''
