//! The `berth` binary: parses the command line, sets up logging, and calls the library.
//! The only place (with top-level loops) where errors become `anyhow`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use berth::{
    app::{self, AppState, KeyOrigin},
    auth::{self, Scope},
    client::Api,
    config::{self, Overrides},
    db::Db,
    nixfmt::SecretKey,
};

/// Build host, signed Nix binary cache and pull-based deployment for NixOS fleets.
#[derive(Parser)]
#[command(name = "berth", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a signing key pair in Nix's format (for the cache or for deploy manifests).
    Keygen {
        /// Key name, e.g. `cache.example.org-1`.
        #[arg(long)]
        name: String,
        /// Where to write the secret key (created with mode 0600; must not exist).
        #[arg(long)]
        secret_key_file: PathBuf,
        /// Where to write the public key.
        #[arg(long)]
        public_key_file: PathBuf,
    },
    /// Run the cache server.
    Serve {
        #[command(flatten)]
        server: ServerArgs,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// The cache signing key file (Nix secret-key format).
        #[arg(long)]
        signing_key_file: Option<PathBuf>,
        /// The deploy key file that signs host manifests (`berth keygen` format).
        #[arg(long)]
        deploy_key_file: Option<PathBuf>,
        /// Storage URL (`file:///dir`, or `s3://bucket/prefix?endpoint=…&region=…`; see docs/storage.md).
        #[arg(long)]
        storage: Option<String>,
        /// Database URL (`sqlite:///file` or `postgres://…`).
        #[arg(long)]
        database: Option<String>,
    },
    /// Check a configuration file and exit non-zero with the reason when it is wrong.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
    /// Create, list and revoke API tokens (works on the database directly).
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Submit builds and follow them (for CI), or look at one.
    Build {
        #[command(subcommand)]
        action: BuildAction,
    },
    /// List hosts with their current generation, or one host's history.
    Hosts {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: Option<HostsAction>,
    },
    /// Staged rollouts of deploy-branch commits: where each stands, and resuming or aborting
    /// one that halted.
    Rollout {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: RolloutAction,
    },
    /// The server's deploy keys: their states, what each host's agent trusts, and a rotation
    /// without an outage (docs/keys.md).
    Keys {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// The binary cache: re-sign what it published with the current cache key.
    Cache {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Send a generation to a host again (default: the newest, desired one), e.g. one it
    /// rolled back or failed, once the cause is fixed: a new generation with its system.
    Redeploy {
        #[command(flatten)]
        client: ClientArgs,
        /// Host name.
        name: String,
        /// The generation to send again.
        generation: Option<i64>,
    },
    /// What switching a host from generation FROM (default: what it runs) to TO (default:
    /// the newest) changes: packages added, removed and changed, bytes to download, reboot.
    Diff {
        #[command(flatten)]
        client: ClientArgs,
        /// Host name.
        name: String,
        /// The generation it switches from.
        from: Option<i64>,
        /// The generation it switches to.
        to: Option<i64>,
    },
    /// Roll a host back: a new generation with an older system (default: the newest
    /// generation the host confirmed before what it runs now).
    Rollback {
        #[command(flatten)]
        client: ClientArgs,
        /// Host name.
        name: String,
        /// The generation to go back to.
        #[arg(long)]
        to: Option<i64>,
    },
    /// Prune old generations and delete what no kept generation, pin or fresh upload needs.
    Gc {
        #[command(flatten)]
        client: ClientArgs,
        /// Generations kept per host for this run (default: the server's policy).
        #[arg(long)]
        keep: Option<usize>,
        /// Print the plan without deleting anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Keep a store path's closure in the cache under a name (like a GC root).
    Pin {
        #[command(flatten)]
        client: ClientArgs,
        /// Pin name.
        name: String,
        /// Store path.
        path: String,
    },
    /// Remove a named pin.
    Unpin {
        #[command(flatten)]
        client: ClientArgs,
        /// Pin name.
        name: String,
    },
    /// Run the host agent: pull this host's signed generations, activate, check, confirm or
    /// roll back, and report. `berth agent enroll` trades a one-time code for the host's token.
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        action: Option<Box<AgentAction>>,
        /// TOML file with every agent setting (flags win over it).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The berth server.
        #[arg(long, env = "BERTH_SERVER")]
        server: Option<String>,
        /// This host's name.
        #[arg(long)]
        host: Option<String>,
        /// File holding this host's token (scope host:<name>).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The deploy public key manifests must be signed with (`name:base64`).
        #[arg(long)]
        deploy_public_key: Option<String>,
        /// The system profile (default /nix/var/nix/profiles/system).
        #[arg(long)]
        profile: Option<PathBuf>,
        /// A Nix store URI or chroot directory for every nix command (default: the system store).
        #[arg(long)]
        store: Option<String>,
        /// Where the agent keeps its state (default /var/lib/berth-agent).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Apply what is pending or new, then exit (non-zero when the deploy failed).
        #[arg(long)]
        once: bool,
    },
    /// On a pushed host (`delivery = "push"`): the forced command of berth's push key in
    /// `authorized_keys`. Runs only the command in `SSH_ORIGINAL_COMMAND` that push mode
    /// allows (docs/push.md), never through a shell.
    PushGate {
        #[command(flatten)]
        host: PushHostArgs,
    },
    /// On a pushed host: settle a trial that was not confirmed in time (`--wait`: until the
    /// trial under way is settled; `--boot`: at boot, where an unconfirmed trial is over).
    PushSettle {
        #[command(flatten)]
        host: PushHostArgs,
        /// The boot-time settle.
        #[arg(long, conflicts_with = "wait")]
        boot: bool,
        /// Wait until the trial under way is confirmed or rolled back.
        #[arg(long)]
        wait: bool,
    },
    /// Push the closures of store paths to a berth cache.
    Push {
        #[command(flatten)]
        client: ClientArgs,
        /// Uploads in flight at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
        /// zstd level for the NARs sent.
        #[arg(long, default_value_t = 3)]
        compression_level: i32,
        /// Read paths from this Nix store (a URI or chroot directory) instead of the system store.
        #[arg(long)]
        store: Option<String>,
        /// Store paths (their whole closures are pushed).
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

/// Where the server's configuration comes from.
#[derive(clap::Args)]
struct ServerArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default storage, database and generated key live here).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A pushed host's system and push state.
#[derive(clap::Args)]
struct PushHostArgs {
    /// A Nix store URI or chroot directory (default: the system store).
    #[arg(long)]
    store: Option<String>,
    /// The system profile.
    #[arg(long, default_value = berth::deploy::agent::config::DEFAULT_PROFILE)]
    profile: PathBuf,
    /// Where the pending trial and the last outcome are kept.
    #[arg(long, default_value = berth::deploy::push::host::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Seconds one switch-to-configuration may take.
    #[arg(long, default_value_t = 600)]
    activation_timeout_secs: u64,
    /// Run `nix-daemon --stdio` with berth untrusted (Nix 2.15 and later): a stolen push key
    /// can then neither skip the signature check nor change the daemon's settings.
    #[arg(long)]
    untrusted_daemon: bool,
}

impl PushHostArgs {
    fn options(self) -> berth::deploy::push::host::GateOptions {
        berth::deploy::push::host::GateOptions {
            store: self.store,
            profile: self.profile,
            state_dir: self.state_dir,
            activation_timeout: std::time::Duration::from_secs(self.activation_timeout_secs),
            untrusted_daemon: self.untrusted_daemon,
        }
    }
}

/// How a client reaches a server.
#[derive(clap::Args)]
struct ClientArgs {
    /// Server URL (required; accepted before or after the subcommand's own arguments).
    #[arg(long, env = "BERTH_SERVER", global = true)]
    server: Option<String>,
    /// API token (prefer the environment variable: argv is visible to other users).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum AgentAction {
    /// Trade a one-time enrollment code (from `berth hosts add`) for this host's token,
    /// written 0600 to the state directory, and record its SSH host key on the server.
    Enroll {
        /// The berth server.
        #[arg(long, env = "BERTH_SERVER")]
        server: String,
        /// The code itself. It is then visible to every user in argv (`ps`): prefer
        /// --code-file or BERTH_ENROLL_CODE.
        #[arg(long, conflicts_with = "code_file")]
        code: Option<String>,
        /// A file holding the code (read once; delete it afterwards).
        #[arg(long)]
        code_file: Option<PathBuf>,
        /// This host's name (default: the host the code was made for; when given, they must
        /// agree).
        #[arg(long)]
        host: Option<String>,
        /// Where the agent keeps its state; the token is written to `<dir>/token`.
        #[arg(long, default_value = berth::deploy::agent::config::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Write the token here instead of `<state dir>/token`.
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// The SSH host public key sent to the server.
        #[arg(long, default_value = berth::deploy::agent::enroll::DEFAULT_SSH_HOST_KEY)]
        ssh_host_key: PathBuf,
        /// Enroll even though a token is already there (it is replaced; the server revokes
        /// the old one).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum BuildAction {
    /// Queue a build of a commit; prints its id (with --wait: streams its log, exits 1 unless
    /// every host built).
    Submit {
        #[command(flatten)]
        client: ClientArgs,
        /// Repository name, as configured on the server.
        #[arg(long)]
        repo: String,
        /// Full commit hash.
        #[arg(long)]
        commit: String,
        /// Branch the commit was pushed to (decides what deploys).
        #[arg(long)]
        branch: String,
        /// Build only this host (repeatable); default every host of the flake.
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Follow the build to its end.
        #[arg(long)]
        wait: bool,
        /// In a GitHub or Forgejo Actions job: authenticate with the job's OpenID Connect ID
        /// token for this audience (fetched from ACTIONS_ID_TOKEN_REQUEST_URL) instead of a
        /// berth token. The repository needs `[repositories.oidc]` on the server.
        #[arg(long, env = "BERTH_ID_TOKEN_AUDIENCE")]
        id_token_audience: Option<String>,
    },
    /// Print a build's state and per-host results; exits 1 unless it succeeded.
    Status {
        #[command(flatten)]
        client: ClientArgs,
        /// Build id.
        id: i64,
    },
    /// Print a build's log (following it while it runs).
    Log {
        #[command(flatten)]
        client: ClientArgs,
        /// Build id.
        id: i64,
    },
    /// List recent builds, newest first, with why each ended as it did.
    List {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this repository's builds.
        #[arg(long)]
        repo: Option<String>,
        /// Only this branch's builds.
        #[arg(long)]
        branch: Option<String>,
        /// Only builds in this state: queued, running, succeeded, failed, cancelled.
        #[arg(long)]
        state: Option<String>,
    },
    /// Cancel a queued or running build.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        /// Build id.
        id: i64,
    },
}

#[derive(Subcommand)]
enum CacheAction {
    /// Re-sign every published narinfo with the server's current signing key (after a key
    /// rotation, docs/keys.md), starting or resuming the run, and follow it to its end.
    Resign {
        /// Keep the signatures already there (default): clients that trust only the old key
        /// keep working during the window.
        #[arg(long, conflicts_with = "drop_old")]
        keep_old: bool,
        /// Drop every other signature: only the current key's is left.
        #[arg(long)]
        drop_old: bool,
        /// Start or resume the run and return at once, without following it.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Every deploy key and its state, the hosts a rotation waits for, what each agent trusts.
    Status,
    /// Start a rotation: a next key that co-signs every manifest and is announced to every
    /// agent; it becomes current once every host's agent trusts it, and the old key retires.
    Rotate {
        /// Which key: `deploy` (the cache key rotates with `signing_key_file` and
        /// `berth cache resign`, docs/cache.md).
        #[arg(value_enum)]
        key: RotatedKey,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RotatedKey {
    /// The deploy key that signs host manifests.
    Deploy,
}

#[derive(Subcommand)]
enum RolloutAction {
    /// One rollout with its waves and hosts (default: the newest rollouts).
    Status {
        /// Rollout id.
        id: Option<i64>,
    },
    /// Go on with a halted rollout, accepting the failure that halted it (default: the newest
    /// open rollout).
    Resume {
        /// Rollout id.
        id: Option<i64>,
    },
    /// Stop a rollout: hosts not reached keep their generation (default: the newest open one).
    Abort {
        /// Rollout id.
        id: Option<i64>,
    },
}

#[derive(Subcommand)]
enum HostsAction {
    /// Every generation of one host, newest first.
    History {
        /// Host name.
        name: String,
    },
    /// Hold a host on its current generation (a maintenance freeze): newer generations wait
    /// for `resume`.
    Pause {
        /// Host name.
        name: String,
    },
    /// Release a paused host: it gets its newest generation.
    Resume {
        /// Host name.
        name: String,
    },
    /// Add a host (or re-enroll one): prints a one-time enrollment code and the lines for
    /// the host's configuration.
    Add {
        /// Host name, as in the fleet flake's `nixosConfigurations`.
        name: String,
        /// Labels for the host (comma-separated or repeated).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// The repository that defines the host (default: set by its first build).
        #[arg(long)]
        repository: Option<String>,
        /// How long the code works: 30m, 1h (default), 2d (at most 7d).
        #[arg(long, default_value = "1h")]
        expires: String,
        /// Work on the server's database directly (like `berth token create`) instead of
        /// over the API: give its --config FILE or --data-dir DIR.
        #[command(flatten)]
        local: ServerArgs,
    },
    /// Remove a host: revoke its tokens and pending codes and forget its SSH key. Its
    /// generations and reports stay for audit unless --purge.
    Remove {
        /// Host name.
        name: String,
        /// Delete its generations, reports and the host itself too.
        #[arg(long)]
        purge: bool,
    },
    /// Every enrolled host's recorded SSH host key (`--format age`: age/agenix recipients).
    Keys {
        /// age (`ssh-ed25519 AAAA… host`), ssh (`host ssh-ed25519 AAAA…`) or json.
        #[arg(long, value_enum, default_value = "age")]
        format: berth::enroll::render::KeyFormat,
    },
    /// The activation log of one generation of a host (default: the newest it reported on):
    /// each phase it reported, with what the commands printed.
    Log {
        /// Host name.
        name: String,
        /// Generation number.
        generation: Option<i64>,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token and print it (alone, on stdout); only its hash is stored.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// read, push, ci, metrics, admin or host:<name>.
        #[arg(long)]
        scope: String,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        /// The id shown by `berth token list`.
        id: String,
    },
}

/// Raises the open-files soft limit to the hard limit (systemd's default soft limit is 1024,
/// which ~1,000 connections would exhaust before `[server] max_connections` refuses any),
/// and says so when even the hard limit leaves too little room for the connection cap.
fn raise_open_files_limit(max_connections: usize) {
    // Files besides connections: the database, storage, builds' pipes.
    const RESERVE: u64 = 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < max_connections as u64 + RESERVE => tracing::warn!(
            limit,
            max_connections,
            "the open-files limit is below [server] max_connections + {RESERVE}: raise LimitNOFILE or lower max_connections"
        ),
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
    }
}

/// glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB),
/// after which decoder dictionaries and windows come from per-thread arenas and stay
/// resident once freed: eight uploads decoded one after another on eight blocking threads
/// then hold eight dictionaries. A fixed threshold keeps every buffer of 1 MiB or more in
/// its own mapping, returned to the system when freed, so memory follows the decoder
/// budget (`ingest/budget.rs`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_buffers_to_the_system() {
    extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    const M_ARENA_MAX: std::ffi::c_int = -8;
    // SAFETY: mallopt only changes allocator tunables; called before any other thread
    // exists. It returns 0 on failure, which leaves glibc's default (merely more memory).
    // Two arenas, not glibc's eight per core: every blocking-pool thread (a download's reader,
    // an upload's verifier) would otherwise get an arena of its own, each keeping what it
    // freed; with 16 downloads that alone was tens of MiB of resident memory.
    if unsafe { mallopt(M_MMAP_THRESHOLD, 1 << 20) * mallopt(M_ARENA_MAX, 2) } == 0 {
        eprintln!("warning: could not set glibc's mmap threshold; freed decoder memory may stay resident");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_buffers_to_the_system() {}

fn main() -> Result<()> {
    return_large_buffers_to_the_system();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if let Err(e) = runtime.block_on(run(cli.command)) {
        // One line: the error and its causes, each said once (no Debug dump, no backtrace).
        eprintln!("berth: {}", one_line(&e));
        std::process::exit(1);
    }
    Ok(())
}

/// `e` and its causes joined by ": ", skipping a cause whose text its parent already says.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            // A multi-line cause (a TOML error's caret diagram) is kept whole.
            line.push_str(&text);
        }
    }
    line
}

/// Prints a push command's answer, or its one-line reason on stderr with exit status 1
/// (berth reads that line as the reason; ssh's own failures exit 255).
fn push_answer(answer: Result<String, berth::deploy::push::host::HostError>) -> Result<()> {
    match answer {
        Ok(out) => {
            println!("{out}");
            Ok(())
        }
        Err(e) => {
            eprintln!("berth-push: {e}");
            std::process::exit(e.exit_code());
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Keygen { name, secret_key_file, public_key_file } => keygen(&name, &secret_key_file, &public_key_file),
        Command::Serve { server, listen, signing_key_file, deploy_key_file, storage, database } => {
            let overrides =
                Overrides { listen, data_dir: server.data_dir, storage, database, signing_key_file, deploy_key_file };
            serve(config::load(server.config.as_deref(), overrides)?).await
        }
        Command::CheckConfig { file } => {
            config::load(Some(&file), Overrides::default())?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Token { action } => token(action).await,
        Command::Build { action } => build(action).await,
        Command::Agent { action: Some(action), .. } => {
            let AgentAction::Enroll { server, code, code_file, host, state_dir, token_file, ssh_host_key, force } =
                *action;
            agent_enroll(server, code, code_file, host, state_dir, token_file, ssh_host_key, force).await
        }
        Command::Agent {
            action: None,
            config,
            server,
            host,
            token_file,
            deploy_public_key,
            profile,
            store,
            state_dir,
            once,
        } => {
            use berth::deploy::agent::{self, AgentCli, AgentOptions};
            let cli = AgentCli { config, server, host, token_file, deploy_public_key, profile, store, state_dir, once };
            let options = AgentOptions::load(cli)?;
            let stop = tokio_util::sync::CancellationToken::new();
            let on_signal = stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                on_signal.cancel();
            });
            let outcome = agent::run(options, stop).await?;
            if !outcome.is_success() {
                eprintln!("berth agent: {outcome}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::PushGate { host } => {
            let command = std::env::var("SSH_ORIGINAL_COMMAND").ok();
            push_answer(berth::deploy::push::host::gate(&host.options(), command.as_deref()).await)
        }
        Command::PushSettle { host, boot, wait } => {
            push_answer(berth::deploy::push::host::settle(&host.options(), boot, wait).await)
        }
        Command::Gc { client, keep, dry_run } => {
            print!("{}", berth::cmd::gc::collect(&client.api()?, keep, dry_run).await?);
            Ok(())
        }
        Command::Pin { client, name, path } => {
            berth::cmd::gc::pin(&client.api()?, &name, &path).await?;
            println!("pinned {name} -> {path}");
            Ok(())
        }
        Command::Unpin { client, name } => {
            berth::cmd::gc::unpin(&client.api()?, &name).await?;
            println!("unpinned {name}");
            Ok(())
        }
        Command::Rollback { client, name, to } => {
            if !berth::auth::valid_host_name(&name) {
                bail!("invalid host name {name:?}");
            }
            print!("{}", berth::cmd::hosts::rollback(&client.api()?, &name, to).await?);
            Ok(())
        }
        Command::Diff { client, name, from, to } => {
            if !berth::auth::valid_host_name(&name) {
                bail!("invalid host name {name:?}");
            }
            print!("{}", berth::cmd::hosts::diff(&client.api()?, &name, from, to).await?);
            Ok(())
        }
        Command::Redeploy { client, name, generation } => {
            if !berth::auth::valid_host_name(&name) {
                bail!("invalid host name {name:?}");
            }
            print!("{}", berth::cmd::hosts::redeploy(&client.api()?, &name, generation).await?);
            Ok(())
        }
        Command::Cache { client, action: CacheAction::Resign { keep_old, drop_old, no_wait } } => {
            let old = berth::cmd::cache::choice(keep_old, drop_old);
            let api = client.api()?;
            let mut out = std::io::stdout();
            berth::cmd::cache::resign(&api, old, !no_wait, &mut out).await?;
            Ok(())
        }
        Command::Keys { client, action } => {
            let api = client.api()?;
            let text = match action {
                KeysAction::Status => berth::cmd::keys::status(&api).await?,
                KeysAction::Rotate { key: RotatedKey::Deploy } => berth::cmd::keys::rotate_deploy(&api).await?,
            };
            print!("{text}");
            Ok(())
        }
        Command::Rollout { client, action } => {
            let api = client.api()?;
            let text = match action {
                RolloutAction::Status { id } => berth::cmd::rollout::status(&api, id).await?,
                RolloutAction::Resume { id } => berth::cmd::rollout::command(&api, "resume", id).await?,
                RolloutAction::Abort { id } => berth::cmd::rollout::command(&api, "abort", id).await?,
            };
            print!("{text}");
            Ok(())
        }
        Command::Hosts { client, action } => {
            let server = client.server.clone().unwrap_or_else(|| "https://berth.example.org".into());
            if let Some(HostsAction::Add { name, tags, repository, expires, local }) = action {
                let expires_secs = Some(berth::enroll::expiry::parse(&expires)?);
                let request = berth::enroll::issue::AddHost { name, tags, repository, expires_secs };
                let text = if local.config.is_some() || local.data_dir.is_some() {
                    hosts_add_locally(local, &server, &request).await?
                } else {
                    berth::cmd::enroll::add(&client.api()?, &server, &request).await?
                };
                print!("{text}");
                return Ok(());
            }
            let api = client.api()?;
            let text = match action {
                Some(HostsAction::Add { .. }) => unreachable!("handled above"),
                Some(HostsAction::Remove { name, purge }) => {
                    if !berth::auth::valid_host_name(&name) {
                        bail!("invalid host name {name:?}");
                    }
                    berth::cmd::enroll::remove(&api, &name, purge).await?
                }
                Some(HostsAction::Keys { format }) => berth::cmd::enroll::keys(&api, format).await?,
                None => berth::cmd::hosts::list(&api).await?,
                Some(HostsAction::History { name }) => {
                    if !berth::auth::valid_host_name(&name) {
                        bail!("invalid host name {name:?}");
                    }
                    berth::cmd::hosts::history(&api, &name).await?
                }
                Some(HostsAction::Pause { name }) | Some(HostsAction::Resume { name })
                    if !berth::auth::valid_host_name(&name) =>
                {
                    bail!("invalid host name {name:?}")
                }
                Some(HostsAction::Pause { name }) => berth::cmd::hosts::pause(&api, &name, true).await?,
                Some(HostsAction::Resume { name }) => berth::cmd::hosts::pause(&api, &name, false).await?,
                Some(HostsAction::Log { name, generation }) => {
                    if !berth::auth::valid_host_name(&name) {
                        bail!("invalid host name {name:?}");
                    }
                    berth::cmd::hosts::log(&api, &name, generation).await?
                }
            };
            print!("{text}");
            Ok(())
        }
        Command::Push { client, jobs, compression_level, store, paths } => {
            let options = berth::push::PushOptions {
                server: client.server()?,
                token: client.token,
                paths,
                jobs: jobs.max(1),
                compression_level,
                store,
            };
            berth::push::run(options).await?;
            Ok(())
        }
    }
}

/// `berth hosts add --config FILE | --data-dir DIR`: on the database directly, with the
/// deploy key the server uses (generated there now if the server never ran, as it would be).
async fn hosts_add_locally(local: ServerArgs, server: &str, request: &berth::enroll::issue::AddHost) -> Result<String> {
    let overrides = Overrides { data_dir: local.data_dir, ..Default::default() };
    let config = config::load(local.config.as_deref(), overrides)?;
    let db = Db::open(&config.database).await?;
    let (deploy_key, origin) = app::load_or_generate_key(&config.deploy_key)?;
    let keys = berth::deploy::keys::DeployKeys::open(&db, deploy_key, origin == app::KeyOrigin::Loaded).await?;
    let made = berth::enroll::issue::add_host(&db, keys.ring().current_public(), request).await?;
    Ok(berth::cmd::enroll::render(&made, server))
}

/// `berth agent enroll`.
#[allow(clippy::too_many_arguments)]
async fn agent_enroll(
    server: String,
    code: Option<String>,
    code_file: Option<PathBuf>,
    host: Option<String>,
    state_dir: PathBuf,
    token_file: Option<PathBuf>,
    ssh_host_key: PathBuf,
    force: bool,
) -> Result<()> {
    use berth::deploy::agent::enroll::{self, CodeSource, EnrollOptions};
    // Flags win over the environment; clap refuses --code with --code-file.
    let code = match (code_file, code, std::env::var("BERTH_ENROLL_CODE").ok()) {
        (Some(path), _, _) => CodeSource::File(path),
        (None, Some(code), _) => CodeSource::Argv(code),
        (None, None, Some(code)) => CodeSource::Env(code),
        (None, None, None) => bail!("no enrollment code: give --code-file PATH (or set BERTH_ENROLL_CODE)"),
    };
    if host.as_deref().is_some_and(|h| !berth::auth::valid_host_name(h)) {
        bail!("invalid host name {host:?}");
    }
    let token_file = token_file.unwrap_or_else(|| state_dir.join(enroll::TOKEN_FILE));
    let options = EnrollOptions { server, host, code, ssh_host_key, token_file: token_file.clone(), force };
    let host = enroll::enroll(&options).await?;
    println!("enrolled {host}; its token is in {}", token_file.display());
    Ok(())
}

impl ClientArgs {
    fn server(&self) -> Result<String> {
        self.server.clone().context("no server: give --server URL or set BERTH_SERVER")
    }

    fn api(self) -> Result<Api> {
        Ok(Api::new(&self.server()?, self.token)?)
    }
}

async fn build(action: BuildAction) -> Result<()> {
    use berth::cmd::build as cmd;
    let succeeded = match action {
        BuildAction::Submit { client, repo, commit, branch, hosts, wait, id_token_audience } => {
            let request = cmd::Submit { repository: repo, commit, branch, hosts };
            let api = match id_token_audience.filter(|a| !a.is_empty()) {
                Some(_) if client.token.as_deref().is_some_and(|t| !t.is_empty()) => {
                    bail!("give a berth token (--token, BERTH_TOKEN) or --id-token-audience, not both")
                }
                Some(audience) => berth::client::Api::with_id_token(&client.server()?, &audience)?,
                None => client.api()?,
            };
            cmd::submit(&api, &request, wait).await?
        }
        BuildAction::Status { client, id } => {
            let build: cmd::Build = client.api()?.get(&format!("/api/v1/builds/{id}")).await?;
            print!("{}", cmd::render(&build));
            build.state == "succeeded"
        }
        BuildAction::Log { client, id } => {
            cmd::print_log(&client.api()?, id).await?;
            true
        }
        BuildAction::List { client, repo, branch, state } => {
            print!("{}", cmd::list(&client.api()?, repo.as_deref(), branch.as_deref(), state.as_deref()).await?);
            true
        }
        BuildAction::Cancel { client, id } => {
            let build: cmd::Build = client.api()?.post(&format!("/api/v1/builds/{id}/cancel"), &()).await?;
            print!("{}", cmd::render(&build));
            true
        }
    };
    if !succeeded {
        std::process::exit(1);
    }
    Ok(())
}

fn keygen(name: &str, secret: &Path, public: &Path) -> Result<()> {
    let key = SecretKey::generate(name)?;
    app::write_secret(secret, &key.to_nix_string()).with_context(|| format!("writing {}", secret.display()))?;
    std::fs::write(public, key.public().to_nix_string()).with_context(|| format!("writing {}", public.display()))?;
    println!("{}", key.public().to_nix_string());
    Ok(())
}

async fn serve(config: config::Config) -> Result<()> {
    raise_open_files_limit(config.server.max_connections);
    let (state, origin) = AppState::open(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}");
    if origin == KeyOrigin::Generated {
        println!("generated signing key {}", config.signing_key.path.display());
    }
    println!("public key: {}", state.public_keys[0].to_nix_string());
    println!("deploy public key: {}", state.deploy_keys.ring().current_public());
    println!("add to nix.conf on every client:\n{}", state.nix_conf_lines(&url));
    println!("berth listening on {url}");
    app::serve(state, listener, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}

async fn token(action: TokenAction) -> Result<()> {
    let open = |server: ServerArgs| async move {
        let overrides = Overrides { data_dir: server.data_dir, ..Default::default() };
        let config = config::load(server.config.as_deref(), overrides)?;
        anyhow::Ok(Db::open(&config.database).await?)
    };
    match action {
        TokenAction::Create { server, scope, description } => {
            let scope = Scope::parse(&scope)?;
            let db = open(server).await?;
            let token = auth::new_token().context("no randomness available")?;
            db.insert_token(&token.id, &token.hash, &scope.to_string(), &description).await?;
            println!("{}", token.secret);
        }
        TokenAction::List { server } => {
            let db = open(server).await?;
            println!("{:<14} {:<20} {:<12} {:<8} DESCRIPTION", "ID", "SCOPE", "CREATED", "STATE");
            for t in db.list_tokens().await? {
                let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
                println!("{:<14} {:<20} {:<12} {:<8} {}", t.id, t.scope, t.created_at, state, t.description);
            }
        }
        TokenAction::Revoke { server, id } => {
            let db = open(server).await?;
            if !db.revoke_token(&id).await? {
                bail!("no active token with id {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
