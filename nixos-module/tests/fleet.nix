# VM test: a build host and two hosts, end to end, with the real modules.
#
# - `builder` runs services.berth.server; CI (the `berth build submit --wait` a CI job runs)
#   submits commits of a small fleet flake kept in a git repository on the builder.
# - `web1` and `web2` run services.berth.agent and boot through systemd-boot from their own
#   disks. They cannot build (max-jobs = 0): every system they switch to is substituted from
#   berth's cache.
#
# The story: commit A deploys to both hosts; commit B breaks web2, which rolls back by itself;
# commit C reaches web1, which is reset after the first activation phase and before the
# second, boots the old system, and then finishes the deploy; `berth rollback` returns web1
# to generation 1.
#
# The VMs are offline, so berth cannot build a NixOS system from scratch. Instead the fleet's
# systems are evaluated twice from the same files and arguments (fleet/system.nix): here, to
# know the expected store paths and to put them in the builder's store, and by berth's
# `nix build` inside the builder, which then finds them already valid. Runs on a NixOS machine
# with KVM: `nix flake check` or `nix build .#checks.x86_64-linux.vm-fleet`.
{
  pkgs,
  self,
  nixpkgs,
}:

let
  inherit (pkgs) lib;

  hostNames = [
    "web1"
    "web2"
  ];
  # The systems each host goes through.
  variants = {
    web1 = [
      "a"
      "c"
    ];
    web2 = [
      "a"
      "broken"
    ];
  };

  # What a fleet system needs to know to run in these VMs, read from the VMs' configurations
  # as the test framework made them.
  facts = nodes: {
    system = pkgs.stdenv.hostPlatform.system;
    hosts = lib.genAttrs hostNames (
      name:
      let
        node = nodes.${name};
        addresses = map (a: { inherit (a) address prefixLength; });
      in
      {
        interfaces = lib.mapAttrs (_: interface: {
          ipv4 = addresses interface.ipv4.addresses;
          ipv6 = addresses interface.ipv6.addresses;
        }) node.networking.interfaces;
        extraHosts = node.networking.extraHosts;
        udevRules = node.boot.initrd.services.udev.rules;
      }
    );
  };

  toplevels =
    nodes:
    let
      system = import ./fleet/system.nix {
        inherit nixpkgs;
        berth = self;
        facts = facts nodes;
      };
    in
    lib.mapAttrs (
      host: names: lib.genAttrs names (variant: (system host variant).config.system.build.toplevel)
    ) variants;

  # The fleet flake, as committed in the builder's repository. Its inputs are the sources the
  # test itself uses, as store paths (offline, and identical to the evaluation above).
  fleetFlake = pkgs.writeText "flake.nix" ''
    {
      description = "berth VM test fleet";
      inputs.nixpkgs = {
        url = "path:${nixpkgs.outPath}";
        flake = false;
      };
      inputs.berth = {
        url = "path:${self.outPath}";
        flake = false;
      };
      outputs =
        { self, nixpkgs, berth }:
        let
          facts = builtins.fromJSON (builtins.readFile ./facts.json);
          variants = builtins.fromJSON (builtins.readFile ./variants.json);
          system = import ./system.nix { inherit nixpkgs berth facts; };
        in
        {
          nixosConfigurations = builtins.mapAttrs system variants;
        };
    }
  '';
in
{
  name = "berth-fleet";

  nodes = {
    builder =
      { nodes, ... }:
      {
        imports = [ self.nixosModules.server ];

        virtualisation = {
          memorySize = 4096;
          cores = 2;
          diskSize = 8192;
          writableStoreUseTmpfs = false;
          # The sources the fleet flake evaluates, and the systems it evaluates to.
          additionalPaths = [
            nixpkgs.outPath
            self.outPath
          ]
          ++ lib.concatMap lib.attrValues (lib.attrValues (toplevels nodes));
        };

        # Test keys (nixos-module/tests/keys): never use them anywhere else.
        environment.etc = {
          "berth-test/cache.sec" = {
            source = ./keys/cache.sec;
            mode = "0400";
          };
          "berth-test/deploy.sec" = {
            source = ./keys/deploy.sec;
            mode = "0400";
          };
          "berth-test/webhook" = {
            text = "vm-test-webhook-secret";
            mode = "0400";
          };
        };

        services.berth.server = {
          enable = true;
          openFirewall = true;
          signingKeyFile = "/etc/berth-test/cache.sec";
          deployKeyFile = "/etc/berth-test/deploy.sec";
          webhookSecretFiles.fleet = "/etc/berth-test/webhook";
          settings = {
            listen = "[::]:8080";
            # One NixOS evaluation at a time fits the VM's memory.
            builder.parallel_hosts = 1;
            repositories = [
              {
                name = "fleet";
                url = "git+file:///srv/fleet";
                # Signed commits have their own tests (tests/it/builds.rs).
                require_signed_commits = false;
              }
            ];
          };
        };

        environment.systemPackages = [
          pkgs.git
          pkgs.jq
          pkgs.curl
        ];
      };

    web1 = {
      imports = [
        self.nixosModules.agent
        ./fleet/common.nix
      ];
    };

    web2 = {
      imports = [
        self.nixosModules.agent
        ./fleet/common.nix
      ];
    };
  };

  testScript =
    { nodes, ... }:
    ''
      import json
      import shlex

      SYSTEMS = json.loads(${builtins.toJSON (builtins.toJSON (toplevels nodes))})
      hosts = {"web1": web1, "web2": web2}
      SERVER = "http://127.0.0.1:8080"


      def as_berth(command, **kwargs):
          """Runs a shell command in the fleet repository as the berth user, who owns it (git
          refuses to fetch from a repository another user owns)."""
          return builder.succeed(
              "cd /srv/fleet && runuser -u berth -- env HOME=/srv/fleet-home sh -c "
              + shlex.quote(command),
              **kwargs,
          )


      def api(path):
          return json.loads(
              builder.succeed(f"curl -fsS -H 'Authorization: Bearer {admin}' {SERVER}{path}")
          )


      def host_status(name):
          return next(h for h in api("/api/v1/hosts") if h["name"] == name)


      def wait_active(name, generation):
          builder.wait_until_succeeds(
              f"curl -fsS -H 'Authorization: Bearer {admin}' {SERVER}/api/v1/hosts | "
              f"jq -e '.[] | select(.name == \"{name}\") | .status.active_generation == {generation}'",
              timeout=900,
          )


      def running(machine):
          return machine.succeed("readlink -f /run/current-system").strip()


      def profile(machine):
          return machine.succeed("readlink -f /nix/var/nix/profiles/system").strip()


      def commit(variants, message):
          """Commits the fleet with these systems and has CI build it (the job runs exactly
          this command); returns the commit."""
          builder.succeed(f"echo {shlex.quote(json.dumps(variants))} > /srv/fleet/variants.json")
          as_berth(f"git add -A && git -c user.name=ci -c user.email=ci@example.test commit -qm {shlex.quote(message)}")
          sha = as_berth("git rev-parse HEAD").strip()
          out = builder.succeed(
              f"BERTH_SERVER={SERVER} BERTH_TOKEN={ci} "
              f"berth build submit --repo fleet --commit {sha} --branch main --wait 2>&1",
              timeout=1800,
          )
          builder.log(out)
          return sha


      def check_generation(name, number, variant):
          """berth's build inside the VM produced the system evaluated outside it."""
          newest = api(f"/api/v1/hosts/{name}/generations")[0]
          assert newest["number"] == number, f"{name}: newest generation {newest}"
          expected = SYSTEMS[name][variant]
          assert newest["store_path"] == expected, (
              f"{name} generation {number} is {newest['store_path']}, expected {expected}: the "
              "fleet flake evaluated differently inside the VM (see fleet/system.nix)"
          )


      start_all()
      builder.wait_for_unit("berth.service")
      builder.wait_for_open_port(8080)

      with subtest("the build host runs with the keys it was given"):
          builder.succeed("curl -fsS http://127.0.0.1:8080/nix-cache-info | grep -F 'StoreDir: /nix/store'")
          builder.wait_until_succeeds("journalctl -u berth.service -o cat | grep -F 'public key: berth-test-cache-1:'")
          builder.succeed("journalctl -u berth.service -o cat | grep -F 'deploy public key: berth-test-deploy-1:'")
          builder.succeed("test -z \"$(ls /var/lib/berth | grep -x -e signing-key -e deploy-key)\"")

      with subtest("tokens, and each host enrolled with its own"):
          admin = builder.succeed("berth-token create --scope admin --description vm-test").strip()
          ci = builder.succeed("berth-token create --scope ci --description vm-test").strip()
          for name, machine in hosts.items():
              token = builder.succeed(f"berth-token create --scope host:{name}").strip()
              machine.wait_for_unit("multi-user.target")
              machine.succeed(
                  "install -d -m 0700 /var/lib/berth-test",
                  f"(umask 077; echo {token} > /var/lib/berth-test/token)",
                  "systemctl reset-failed",
                  "systemctl restart berth-agent.service",
              )
              machine.wait_for_unit("berth-agent.service")
              machine.succeed("grep -E '^substituters = .*http://builder:8080' /etc/nix/nix.conf")
              machine.succeed("grep -F 'berth-test-cache-1:' /etc/nix/nix.conf")

      with subtest("the fleet repository"):
          builder.succeed(
              "install -d -o berth -g berth /srv/fleet /srv/fleet-home",
              "cp -r ${./fleet}/. /srv/fleet/",
              "cp ${fleetFlake} /srv/fleet/flake.nix",
              "cp ${pkgs.writeText "facts.json" (builtins.toJSON (facts nodes))} /srv/fleet/facts.json",
              "echo '{}' > /srv/fleet/variants.json",
              "chown -R berth:berth /srv/fleet && chmod -R u+w /srv/fleet",
          )
          as_berth("git init -q -b main && git add -A")
          as_berth("nix --extra-experimental-features 'nix-command flakes' flake lock", timeout=600)

      with subtest("CI builds commit A; both hosts switch to it from berth's cache"):
          commit({"web1": "a", "web2": "a"}, "A: both hosts")
          for name in hosts:
              check_generation(name, 1, "a")
          for name, machine in hosts.items():
              wait_active(name, 1)
              expected = SYSTEMS[name]["a"]
              assert running(machine) == expected, running(machine)
              assert profile(machine) == expected, profile(machine)
              machine.succeed("grep -x a /etc/berth-test-generation")
              # Substituted, signed by berth's key, never built here: no local build log,
              # and not "ultimate" (what Nix records for a path it built itself).
              sigs = machine.succeed(f"nix --extra-experimental-features nix-command path-info --sigs {expected}")
              assert "berth-test-cache-1:" in sigs and "ultimate" not in sigs, sigs
              machine.succeed("test -z \"$(ls -A /nix/var/log/nix/drvs 2>/dev/null)\"")

      with subtest("commit B breaks web2, which rolls back by itself"):
          commit({"web1": "a", "web2": "broken"}, "B: break web2")
          check_generation("web2", 2, "broken")
          assert api("/api/v1/hosts/web1/generations")[0]["number"] == 1, "web1 did not change"
          builder.wait_until_succeeds(
              f"curl -fsS -H 'Authorization: Bearer {admin}' {SERVER}/api/v1/hosts/web2/reports | "
              "jq -e 'any(.[]; .generation == 2 and .phase == \"rolled_back\")'",
              timeout=900,
          )
          assert running(web2) == SYSTEMS["web2"]["a"], running(web2)
          assert profile(web2) == SYSTEMS["web2"]["a"], profile(web2)
          web2.succeed("grep -x a /etc/berth-test-generation")
          status = host_status("web2")["status"]
          assert status["active_generation"] == 1, status
          assert status["last_error"], status

      with subtest("a reset between the two activation phases boots the old system"):
          web1.succeed("touch /run/berth-test-hold")
          commit({"web1": "c", "web2": "broken"}, "C: web1")
          check_generation("web1", 2, "c")
          # Phase 1 done (the new system runs), phase 2 not (the health check holds it).
          web1.wait_until_succeeds(f"test $(readlink -f /run/current-system) = {SYSTEMS['web1']['c']}", timeout=900)
          assert profile(web1) == SYSTEMS["web1"]["a"], profile(web1)
          assert host_status("web1")["status"]["active_generation"] == 1
          web1.crash()
          web1.start()
          web1.wait_for_unit("multi-user.target")
          booted = web1.succeed("readlink -f /run/booted-system").strip()
          assert booted == SYSTEMS["web1"]["a"], f"booted {booted}"
          # The agent finds its unfinished deploy and runs it again, to the end.
          wait_active("web1", 2)
          assert running(web1) == SYSTEMS["web1"]["c"], running(web1)
          assert profile(web1) == SYSTEMS["web1"]["c"], profile(web1)
          web1.succeed("grep -x c /etc/berth-test-generation")

      with subtest("berth rollback returns web1 to its previous system"):
          out = builder.succeed(f"BERTH_SERVER={SERVER} BERTH_TOKEN={admin} berth rollback web1")
          builder.log(out)
          wait_active("web1", 3)
          assert running(web1) == SYSTEMS["web1"]["a"], running(web1)
          builder.log(builder.succeed(f"BERTH_SERVER={SERVER} BERTH_TOKEN={admin} berth hosts"))
          builder.log(builder.succeed(f"BERTH_SERVER={SERVER} BERTH_TOKEN={admin} berth gc --dry-run"))
    '';
}
