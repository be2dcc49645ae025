#!/usr/bin/env bash
# A fleet on one server: N simulated agents (benches/fleet.rs, one process, one loopback
# connection each) long-poll one real `berth serve`, first on SQLite, then on PostgreSQL (a
# throwaway cluster this script starts). Measured for each: the server's CPU and database
# queries per second while every agent waits and nothing changes, its RSS, the time for a new
# generation of every host to reach all agents, one host's generation latency, and the host
# list (`GET /api/v1/hosts`, `berth hosts`) with N hosts.
# Writes its table into docs/benchmarks.md, in a section ("Fleet scale") that
# benches/load.sh keeps.
#
#   bash benches/fleet.sh                  # full run: 10,000 agents (~10 minutes)
#   BENCH_QUICK=1 bash benches/fleet.sh    # smoke run: 200 agents; writes
#                                          # target/bench/benchmarks-fleet-quick.md
# BENCH_AGENTS=N overrides the number of agents, BENCH_DOC=FILE where the report goes.
#
# Everything stays on 127.0.0.1 and offline; every step is bounded (`timeout`).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  AGENTS=${BENCH_AGENTS:-200} IDLE=5
  DOC=${BENCH_DOC:-$ROOT/target/bench/benchmarks-fleet-quick.md}
else
  AGENTS=${BENCH_AGENTS:-10000} IDLE=65
  DOC=${BENCH_DOC:-$ROOT/docs/benchmarks.md}
fi
DUR=10
. benches/lib.sh
. scripts/deps.sh
berth_install_test_servers
bench_install nix-store=nix-bin
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
UPTIME_BEFORE=$(uptime)
log "building berth and the load generator (release)"
cargo build --release --quiet --bin berth --bench fleet
BERTH=$ROOT/target/release/berth
GEN=$(ls -t "$ROOT"/target/release/deps/fleet-* | grep -v '\.d$' | head -1)
# One socket per agent here, one per agent in the server (which raises its own limit).
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((AGENTS + 500)) ] || { echo "bench: open-files limit $(ulimit -n) is under $AGENTS agents" >&2; exit 1; }

# The system every host runs: one small store path, pushed into each server's cache.
log "building a system path"
SYSTEM=$(nix-build --no-out-link "${NIXOPT[@]}" -E \
  'derivation { name = "berth-fleet-system"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo fleet > $out" ]; }')


# ---------------------------------------------------------------------------------------
# PostgreSQL: a throwaway cluster on a loopback port (as root, run as the postgres user).
PG_BIN=$(dirname "$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort | tail -1)")
start_postgres() {
  local dir=$WORK/pg as=() port
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; as=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
  "${as[@]}" "$PG_BIN/initdb" -D "$dir/data" -A trust -U berth -E UTF8 --no-sync >/dev/null
  port=$(free_port)
  "${as[@]}" "$PG_BIN/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c max_connections=200 >"$dir.log" 2>&1 &
  echo $! >>"$PIDFILE"
  for _ in $(seq 100); do
    psql -h 127.0.0.1 -p "$port" -U berth -d postgres -qAt -c 'CREATE DATABASE fleet' >/dev/null 2>&1 && break
    sleep 0.2
  done
  PG_URL="postgres://berth@127.0.0.1:$port/fleet"
}

# run_fleet LABEL DATABASE-URL: a fresh server on DATABASE-URL, the load, its figures in
# $WORK/LABEL.txt.
run_fleet() {
  local label=$1 database=$2 dir=$WORK/$1 admin push t0 t1
  mkdir -p "$dir"
  # The server's settings for a fleet: a connection per waiting agent.
  printf 'database = "%s"\n\n[server]\nmax_connections = %d\n' "$database" $((AGENTS + 1000)) >"$dir.toml"
  start_berth "$dir" --config "$dir.toml"
  push=$("$BERTH" token create --scope push --config "$dir.toml" --data-dir "$dir")
  admin=$("$BERTH" token create --scope admin --config "$dir.toml" --data-dir "$dir")
  BERTH_TOKEN=$push timeout 120 "$BERTH" push --server "$BERTH_URL" "$SYSTEM" >/dev/null
  log "$label: $AGENTS agents"
  timeout 1200 "$GEN" --url "$BERTH_URL" --token "$admin" --pid "$BERTH_PID" --database "$database" \
    --system "$SYSTEM" --agents "$AGENTS" --idle-secs "$IDLE" | tee "$WORK/$label.txt"
  # `berth hosts` (the CLI through the API) with every host; the agents are gone now.
  t0=$(now)
  BERTH_TOKEN=$admin timeout 120 "$BERTH" hosts --server "$BERTH_URL" >"$dir.hosts"
  t1=$(now)
  echo "hosts_cli_ms $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) * 1000 }')" >>"$WORK/$label.txt"
  echo "hosts_cli_lines $(wc -l <"$dir.hosts")" >>"$WORK/$label.txt"
  stop_pid "$BERTH_PID"
}

run_fleet sqlite "sqlite://$WORK/sqlite/berth.sqlite"
start_postgres
run_fleet postgres "$PG_URL"

# fig LABEL NAME: one figure of a run.
fig() { awk -v n="$2" '$1 == n { print $2 }' "$WORK/$1.txt"; }
row() {
  printf '| %s | %s | %s |\n' "$1" "$(fig sqlite "$2")" "$(fig postgres "$2")"
}
TABLE=$(
  cat <<EOF
| measurement ($AGENTS agents, one long-poll each) | SQLite | PostgreSQL |
|---|---:|---:|
$(row "server CPU while every agent waits, % of one core" idle_cpu_percent)
$(row "database queries/s while every agent waits" idle_queries_per_sec)
$(row "server RSS with every agent waiting, MiB" rss_mib)
$(row "server RSS after the rollout, MiB" rss_after_mib)
$(row "a new generation of every host (one redeploy each, 16 at a time) reaches every agent, s" rollout_secs)
$(row "… each host's manifest after its redeploy answered, p50 ms" delivery_p50_ms)
$(row "… p99 ms" delivery_p99_ms)
$(row "… max ms" delivery_max_ms)
$(row "one host's redeploy sent until its agent has the manifest, ms (median of 5)" single_ms)
$(row "\`GET /api/v1/hosts\` with every host, ms (median of 3)" hosts_api_ms)
$(row "… database queries per request" hosts_api_queries)
$(row "\`berth hosts\` with every host, ms" hosts_cli_ms)
$(row "agents' connection errors" agent_errors)
EOF
)
echo
echo "$TABLE"
echo

SECTION=$(
  cat <<EOF
<!-- fleet:begin (written by benches/fleet.sh) -->
## Fleet scale

One run of \`bash benches/fleet.sh\`$([ "$QUICK" = 1 ] && echo " (**BENCH_QUICK=1: $AGENTS agents**)") on $(date -u '+%Y-%m-%d %H:%M UTC'),
$(nproc) cores shared with other work, berth $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown).
\`uptime\` before: \`$UPTIME_BEFORE\`; after: \`$(uptime)\`.
The agents (benches/fleet.rs) run in one process on the same two cores as the server.

$TABLE

- Idle: every agent holds \`GET …/manifest?timeout=60\` and asks again when it answers, as
  \`berth agent\` does; measured over ${IDLE} s$([ "$IDLE" -ge 60 ] && echo ", so every agent's poll times out and starts again once in it" || echo " (shorter than the poll timeout: no poll starts again in it)"). A waiting long-poll looks at nothing (\`deploy::watch\`); what remains
  is each request's own start and end — the token lookup, one look at the host's newest
  generation, \`last_seen\` — once per agent per 60 s.
- Rollout: one \`POST /api/v1/hosts/<host>/redeploy\` per host through the admin API, 16 at a
  time (each one checks the system is in the cache, numbers and records the generation); the
  figure is bounded by those writes, the delivery percentiles are what the long-polls add.
  (A build for every host writes its generations one by one in the worker the same way.)
- Before \`deploy::watch\`, every waiting long-poll looked at the database once a second:
  $AGENTS agents made $AGENTS queries/s while nothing changed (\`tests/it/fleet_scale.rs\`
  shows the old loop's 40 queries/s from 40 waiting polls), and a generation made on
  another replica took up to a second to arrive; and the host list ran 3 queries per host.
- RSS grows by about 22 KiB per held connection (the connection's buffers and the request's
  future); the server alone, idle, is ~15 MiB.
<!-- fleet:end -->
EOF
)
mkdir -p "$(dirname "$DOC")"
NOTES_MARK='<!-- notes: kept across runs of benches/load.sh -->'
[ -f "$DOC" ] || printf '# Benchmarks\n' >"$DOC"
grep -qF "$NOTES_MARK" "$DOC" || printf '\n%s\n' "$NOTES_MARK" >>"$DOC"
# Replace the previous section (or append after the notes marker, which load.sh keeps).
awk '
  /^<!-- fleet:begin/ { skip = 1; next }
  /^<!-- fleet:end -->/ { skip = 0; next }
  !skip { print }
' "$DOC" >"$DOC.tmp"
printf '\n%s\n' "$SECTION" >>"$DOC.tmp"
mv "$DOC.tmp" "$DOC"
log "wrote $DOC"
