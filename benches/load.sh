#!/usr/bin/env bash
# Load benchmark of berth against plain baselines measured in the same run, on this machine:
#   a. narinfo lookups/s (hits, misses): berth vs nginx serving the same DIR/cache directory;
#   b. NAR download MB/s and server CPU per byte: berth vs nginx, one large incompressible
#      NAR, 1 and 16 connections; berth's peak RSS;
#   c. ingest: `berth push` (and `nix copy --to http://berth`) vs
#      `nix copy --to file://…?compression=zstd`, each into an empty cache: one big path, a
#      closure of 301 paths and 1 GiB, a closure of 2,001 small paths; berth's peak RSS.
# Prints a table and writes docs/benchmarks.md (figures as ratios against the baselines).
#
#   bash benches/load.sh                 # full run (~10 minutes)
#   BENCH_QUICK=1 bash benches/load.sh   # smoke run: small sizes, 3 s runs (< 2 minutes);
#                                        # writes target/bench/benchmarks-quick.md instead
# BENCH_DOC=FILE overrides where the report goes; BENCH_MICRO=0|1 skips or runs the
# verify_nar micro-benchmark (benches/ingest.rs; default: run in the full run only).
#
# Everything stays on 127.0.0.1 and offline (no substituters, private XDG_CACHE_HOME); every
# load run is bounded by wrk's duration, curl's --max-time or `timeout`.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  N_SMALL=200 BIG_MIB=64 N_MID=30 MID_KIB=1024 DUR=3 REPS=1 MICRO_MIB=16 MICRO_SECS=0.5
  DOC=${BENCH_DOC:-$ROOT/target/bench/benchmarks-quick.md}
else
  N_SMALL=2000 BIG_MIB=512 N_MID=300 MID_KIB=3495 DUR=10 REPS=3 MICRO_MIB=64 MICRO_SECS=2
  DOC=${BENCH_DOC:-$ROOT/docs/benchmarks.md}
fi
CONNS=64     # narinfo lookups: concurrent connections
DL_CONNS=16  # NAR downloads with wrk: concurrent connections
. benches/lib.sh

# ---------------------------------------------------------------------------------------
# Tools.
bench_install wrk=wrk nginx=nginx-light zstd=zstd curl=curl openssl=openssl nix-store=nix-bin
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
# The 1-minute load average every 15 s during the run (the machine may be shared).
( while sleep 15; do cut -d' ' -f1 /proc/loadavg >>"$WORK/load"; done ) &
echo $! >>"$PIDFILE"
have cargo || { echo "bench: cargo is needed (see scripts/deps.sh)" >&2; exit 1; }

awk -v l="${LOAD_BEFORE%% *}" 'BEGIN { exit !(l > 0.5) }' \
  && log "warning: load average $LOAD_BEFORE before the run: other work on this machine makes figures noisy"
log "building berth (release)"
cargo build --release --quiet
BERTH=$ROOT/target/release/berth

# ---------------------------------------------------------------------------------------
# Test data: N small store paths under one root (a closure of N+1 paths), and one big path
# of incompressible bytes. Deterministic, so a second run finds them already in the store.
log "creating $N_SMALL small store paths and a $BIG_MIB MiB one"
mkdir -p "$WORK/small"
(
  cd "$WORK/small"
  awk -v n="$N_SMALL" 'BEGIN {
    srand(42)
    for (i = 1; i <= n; i++) {
      f = sprintf("berth-bench-small-%04d", i); size = 256 + int(rand() * 4096); s = ""
      while (length(s) < size) s = s sprintf("%08x", int(rand() * 4294967296))
      print substr(s, 1, size) > f; close(f)
    }
  }'
)
nix-store "${NIXOPT[@]}" --add "$WORK/small"/* >"$WORK/small.list"
{ echo '['; sed 's/.*/"&"/' "$WORK/small.list"; echo ']'; } >"$WORK/small-list.nix"
cat >"$WORK/closure.nix" <<'EOF'
{ listFile, name }:
derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  PATH = "/usr/bin:/bin";
  passAsFile = [ "deps" ];
  args = [ "-c" "cp $depsPath $out" ];
  deps = map builtins.storePath (import listFile);
}
EOF
ROOT_PATH=$(nix-build "${NIXOPT[@]}" --option sandbox false --no-out-link --quiet "$WORK/closure.nix" \
  --arg listFile "$WORK/small-list.nix" --argstr name "berth-bench-closure-$N_SMALL")

# N_MID incompressible paths of MID_KIB each under one root: the "1 GiB closure".
log "creating $N_MID paths of $MID_KIB KiB"
mkdir -p "$WORK/mid"
head -c $((N_MID * MID_KIB * 1024)) /dev/zero \
  | openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:berth-bench-mid 2>/dev/null \
  | (cd "$WORK/mid" && split -b "${MID_KIB}k" -d -a 4 - berth-bench-mid-)
nix-store "${NIXOPT[@]}" --add "$WORK/mid"/* >"$WORK/mid.list"
{ echo '['; sed 's/.*/"&"/' "$WORK/mid.list"; echo ']'; } >"$WORK/mid-list.nix"
MID_ROOT=$(nix-build "${NIXOPT[@]}" --option sandbox false --no-out-link --quiet "$WORK/closure.nix" \
  --arg listFile "$WORK/mid-list.nix" --argstr name "berth-bench-mid-closure-$N_MID")

mkdir -p "$WORK/big"
head -c $((BIG_MIB << 20)) /dev/zero \
  | openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:berth-bench 2>/dev/null >"$WORK/big/berth-bench-big-${BIG_MIB}m"
BIG_PATH=$(nix-store "${NIXOPT[@]}" --add "$WORK/big/berth-bench-big-${BIG_MIB}m")

# Sizes: total NAR bytes of the closure and of the big path.
nar_bytes() { nix-store "${NIXOPT[@]}" --query --size "$@" | awk '{ s += $1 } END { print s }'; }
CLOSURE_PATHS=$(nix-store --query --requisites "$ROOT_PATH" | wc -l)
CLOSURE_BYTES=$(nar_bytes $(nix-store --query --requisites "$ROOT_PATH"))
MID_PATHS=$(nix-store --query --requisites "$MID_ROOT" | wc -l)
MID_BYTES=$(nar_bytes $(nix-store --query --requisites "$MID_ROOT"))
BIG_BYTES=$(nar_bytes "$BIG_PATH")
# Read both once so every contender starts with them in the page cache.
nix-store --dump "$BIG_PATH" >/dev/null
nix-store --query --requisites "$ROOT_PATH" | xargs cat >/dev/null
nix-store --query --requisites "$MID_ROOT" | xargs cat >/dev/null

# ---------------------------------------------------------------------------------------
# The cache under load: berth with the closure and the big path, and nginx on its files.
log "populating the cache served for (a) and (b) with nix copy"
SERVE_DIR=$WORK/serve
mkdir -p "$SERVE_DIR"
TOKEN=$("$BERTH" token create --scope push --data-dir "$SERVE_DIR")
start_berth "$SERVE_DIR"
SERVE_URL=$BERTH_URL
SERVE_PID=$BERTH_PID
printf 'machine 127.0.0.1 login x password %s\n' "$TOKEN" >"$WORK/netrc"
timeout "$TMO" nix copy --quiet "${NIXOPT[@]}" --option netrc-file "$WORK/netrc" \
  --to "$SERVE_URL?compression=zstd" "$ROOT_PATH" "$BIG_PATH"
CACHE_DIR=$SERVE_DIR/cache
[ -f "$CACHE_DIR/nix-cache-info" ] || { echo "bench: $CACHE_DIR is not a binary cache" >&2; exit 1; }

# Hash lists for wrk: every narinfo of the cache (hits) and random valid hashes (misses).
sed 's|^/nix/store/\([^-]*\)-.*|\1|' "$WORK/small.list" >"$WORK/hits.list"
n_hits=$(wc -l <"$WORK/hits.list")
[ "$(find "$CACHE_DIR" -maxdepth 1 -name '*.narinfo' | wc -l)" -ge "$n_hits" ] \
  || { echo "bench: the cache lacks narinfos" >&2; exit 1; }
# Nix base32: 0-9 and a-z without e, o, t, u.
{ tr -dc '0-9a-df-np-sv-z' </dev/urandom | fold -w 32 || true; } | head -n 10000 >"$WORK/misses.list"

NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes auto;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  log_not_found off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  types { text/x-nix-narinfo narinfo; text/x-nix-cache-info nix-cache-info; }
  default_type application/x-nix-nar;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $CACHE_DIR;
  }
}
EOF
nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" &
NGINX_PID=$!
echo "$NGINX_PID" >>"$PIDFILE"
NGINX_URL=http://127.0.0.1:$NGINX_PORT
for _ in $(seq 100); do curl -sf -o /dev/null "$NGINX_URL/nix-cache-info" && break; sleep 0.05; done
h1=$(head -n 1 "$WORK/hits.list")
cmp <(curl -sf "$SERVE_URL/$h1.narinfo") <(curl -sf "$NGINX_URL/$h1.narinfo") \
  || { echo "bench: berth and nginx serve different narinfos" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# a. narinfo lookups.
log "a. narinfo hits and misses, $CONNS connections, ${DUR}s each"
r=$(wrk_narinfo hit-berth "$SERVE_URL" "$WORK/hits.list")
read -r A_HIT_B A_HIT_B50 A_HIT_B99 A_HIT_BBAD _ <<<"$r"
r=$(wrk_narinfo hit-nginx "$NGINX_URL" "$WORK/hits.list")
read -r A_HIT_N A_HIT_N50 A_HIT_N99 A_HIT_NBAD _ <<<"$r"
r=$(wrk_narinfo miss-berth "$SERVE_URL" "$WORK/misses.list")
read -r A_MISS_B A_MISS_B50 A_MISS_B99 A_MISS_BBAD A_MISS_BTOT <<<"$r"
r=$(wrk_narinfo miss-nginx "$NGINX_URL" "$WORK/misses.list")
read -r A_MISS_N A_MISS_N50 A_MISS_N99 A_MISS_NBAD A_MISS_NTOT <<<"$r"
[ "$A_HIT_BBAD" = 0 ] && [ "$A_HIT_NBAD" = 0 ] \
  || { echo "bench: narinfo hits answered non-2xx (berth $A_HIT_BBAD, nginx $A_HIT_NBAD)" >&2; exit 1; }
[ "$A_MISS_BBAD" -ge "$A_MISS_BTOT" ] && [ "$A_MISS_NBAD" -ge "$A_MISS_NTOT" ] \
  || { echo "bench: a random hash was found in the cache?" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# b. NAR download.
BIG_HASH=$(basename "$BIG_PATH" | cut -d- -f1)
NAR_URL=$(curl -sf "$SERVE_URL/$BIG_HASH.narinfo" | sed -n 's/^URL: //p')
NAR_FILE_BYTES=$(stat -c %s "$CACHE_DIR/$NAR_URL")

log "b. NAR download ($((NAR_FILE_BYTES / 1000000)) MB file), 1 connection (curl) and $DL_CONNS (wrk), ${DUR}s each"
# Server CPU per byte: clock ticks of the server (nginx: master and workers) during the
# run, over the bytes the run moved.
per_gb() { awk -v t="$1" -v mbs="$2" -v d="$DUR" 'BEGIN { if (mbs == 0) print "n/a"; else printf "%.2f\n", t / 100 / (mbs * d / 1000) }'; }
c0=$(cpu_ticks "$SERVE_PID"); B_CURL_B=$(curl_dl "$SERVE_URL/$NAR_URL" "$NAR_FILE_BYTES"); c1=$(cpu_ticks "$SERVE_PID")
B_CURL_BCPU=$(per_gb $((c1 - c0)) "$B_CURL_B")
c0=$(cpu_ticks "$NGINX_PID"); B_CURL_N=$(curl_dl "$NGINX_URL/$NAR_URL" "$NAR_FILE_BYTES"); c1=$(cpu_ticks "$NGINX_PID")
B_CURL_NCPU=$(per_gb $((c1 - c0)) "$B_CURL_N")
c0=$(cpu_ticks "$SERVE_PID"); B_WRK_B=$(wrk_dl "$SERVE_URL/$NAR_URL"); c1=$(cpu_ticks "$SERVE_PID")
B_WRK_BCPU=$(per_gb $((c1 - c0)) "$B_WRK_B")
c0=$(cpu_ticks "$NGINX_PID"); B_WRK_N=$(wrk_dl "$NGINX_URL/$NAR_URL"); c1=$(cpu_ticks "$NGINX_PID")
B_WRK_NCPU=$(per_gb $((c1 - c0)) "$B_WRK_N")
# berth's peak RSS since it started: the nix copy that filled it, lookups, downloads.
B_RSS=$(peak_rss_mib "$SERVE_PID")

stop_pid "$NGINX_PID"
stop_pid "$SERVE_PID"

# ---------------------------------------------------------------------------------------
# c. Ingest into an empty cache, REPS times each, the contenders taking turns; the median
# wall time counts.
#
# Nothing is deleted until the end of the run: on ext4 without a journal (this kind of VM),
# creating a file right after many were deleted scans the recently freed inodes first and
# costs several times more, which would charge one contender for the previous one's cleanup.
RUN=0
# ingest_once KIND PATHS...: prints the wall time in seconds.
ingest_once() {
  local kind=$1 dir t0 t1
  shift
  RUN=$((RUN + 1))
  dir=$WORK/ingest-$RUN
  mkdir -p "$dir"
  case $kind in
    file)
      t0=$(now)
      timeout "$TMO" nix copy --quiet "${NIXOPT[@]}" --to "file://$dir/cache?compression=zstd" "$@"
      t1=$(now)
      ;;
    push | nixhttp)
      local token
      token=$("$BERTH" token create --scope push --data-dir "$dir")
      start_berth "$dir"
      if [ "$kind" = push ]; then
        t0=$(now)
        BERTH_TOKEN=$token timeout "$TMO" "$BERTH" push --server "$BERTH_URL" "$@" >"$dir.push" 2>&1 \
          || { cat "$dir.push" >&2; exit 1; }
        t1=$(now)
        peak_rss_mib "$BERTH_PID" >>"$WORK/rss-push"
      else
        printf 'machine 127.0.0.1 login x password %s\n' "$token" >"$WORK/netrc"
        t0=$(now)
        timeout "$TMO" nix copy --quiet "${NIXOPT[@]}" --option netrc-file "$WORK/netrc" --to "$BERTH_URL?compression=zstd" "$@"
        t1=$(now)
        peak_rss_mib "$BERTH_PID" >>"$WORK/rss-nixhttp"
      fi
      stop_pid "$BERTH_PID"
      ;;
  esac
  # Every path must have arrived.
  local want=$#
  [ "$1" = "$ROOT_PATH" ] && want=$CLOSURE_PATHS
  [ "$1" = "$MID_ROOT" ] && want=$MID_PATHS
  local got
  got=$(find "$dir/cache" -maxdepth 1 -name '*.narinfo' | wc -l)
  [ "$got" -ge "$want" ] || { echo "bench: $kind stored $got narinfos, expected $want" >&2; exit 1; }
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}

# ingest NAME PATHS...: REPS rounds of (file, push, nixhttp); each time is appended to
# $WORK/times-NAME-KIND.
ingest() {
  local name=$1 i kind
  shift
  for i in $(seq "$REPS"); do
    for kind in file push nixhttp; do
      ingest_once "$kind" "$@" >>"$WORK/times-$name-$kind"
    done
  done
}
med() { median <"$WORK/times-$1"; }

log "c. ingest of the big path (${BIG_MIB} MiB), $REPS round(s)"
ingest big "$BIG_PATH"
C_BIG_FILE=$(med big-file) C_BIG_PUSH=$(med big-push) C_BIG_HTTP=$(med big-nixhttp)
log "c. ingest of the 1 GiB closure ($MID_PATHS paths), $REPS round(s)"
ingest mid "$MID_ROOT"
C_MID_FILE=$(med mid-file) C_MID_PUSH=$(med mid-push) C_MID_HTTP=$(med mid-nixhttp)
log "c. ingest of the closure ($CLOSURE_PATHS paths), $REPS round(s)"
ingest closure "$ROOT_PATH"
C_CL_FILE=$(med closure-file) C_CL_PUSH=$(med closure-push) C_CL_HTTP=$(med closure-nixhttp)

mbs() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f\n", n / 1e6 / t }'; }
pps() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f\n", n / t }'; }

# ---------------------------------------------------------------------------------------
# Micro-benchmark (benches/ingest.rs): verify_nar throughput.
# Skipped by the quick run unless BENCH_MICRO=1: its first build after a change costs minutes.
if [ "${BENCH_MICRO:-$([ "$QUICK" = 1 ] && echo 0 || echo 1)}" = 1 ]; then
  log "micro-benchmark: verify_nar (cargo bench --bench ingest)"
  MICRO=$(BENCH_NAR_MIB=$MICRO_MIB BENCH_SECONDS=$MICRO_SECS cargo bench --quiet --bench ingest 2>/dev/null)
else
  MICRO="(skipped: BENCH_QUICK=1 without BENCH_MICRO=1)"
fi

# ---------------------------------------------------------------------------------------
# Report.
ratio() { fdiv "$1" "$2" 2; }
verdict() { # verdict RATIO GOAL
  awk -v r="$1" -v g="$2" 'BEGIN { if (r == "n/a") print "?"; else if (r + 0 >= g) print "ok"; else print "**below goal**" }'
}

R_HIT=$(ratio "$A_HIT_B" "$A_HIT_N")
R_MISS=$(ratio "$A_MISS_B" "$A_MISS_N")
R_CURL=$(ratio "$B_CURL_B" "$B_CURL_N")
R_WRK=$(ratio "$B_WRK_B" "$B_WRK_N")
C_BIG_FILE_MBS=$(mbs "$BIG_BYTES" "$C_BIG_FILE")
C_BIG_PUSH_MBS=$(mbs "$BIG_BYTES" "$C_BIG_PUSH")
C_BIG_HTTP_MBS=$(mbs "$BIG_BYTES" "$C_BIG_HTTP")
R_BIG_PUSH=$(ratio "$C_BIG_FILE" "$C_BIG_PUSH")
R_BIG_HTTP=$(ratio "$C_BIG_FILE" "$C_BIG_HTTP")
R_CL_PUSH=$(ratio "$C_CL_FILE" "$C_CL_PUSH")
R_CL_HTTP=$(ratio "$C_CL_FILE" "$C_CL_HTTP")
R_MID_PUSH=$(ratio "$C_MID_FILE" "$C_MID_PUSH")
R_MID_HTTP=$(ratio "$C_MID_FILE" "$C_MID_HTTP")
R_CURL_CPU=$(ratio "$B_CURL_BCPU" "$B_CURL_NCPU")
R_WRK_CPU=$(ratio "$B_WRK_BCPU" "$B_WRK_NCPU")
C_RSS=$(sort -n "$WORK/rss-push" | tail -n 1)
C_RSS_HTTP=$(sort -n "$WORK/rss-nixhttp" | tail -n 1)
at_most() { # at_most VALUE BOUND
  awk -v r="$1" -v g="$2" 'BEGIN { if (r == "n/a") print "?"; else if (r + 0 <= g) print "ok"; else print "**over goal**" }'
}

TABLE=$(cat <<EOF
| measurement | berth | baseline | berth / baseline | goal |
|---|---:|---:|---:|---|
| a. narinfo hits, lookups/s ($CONNS conns) | $A_HIT_B (p99 $A_HIT_B99 ms) | nginx $A_HIT_N (p99 $A_HIT_N99 ms) | $R_HIT | ≥ 1.0: $(verdict "$R_HIT" 0.995) |
| a. narinfo misses, lookups/s ($CONNS conns) | $A_MISS_B (p99 $A_MISS_B99 ms) | nginx $A_MISS_N (p99 $A_MISS_N99 ms) | $R_MISS | ≥ 1.0: $(verdict "$R_MISS" 0.995) |
| b. NAR download, MB/s, 1 conn (curl) | $B_CURL_B | nginx $B_CURL_N | $R_CURL | ≥ 1.0: $(verdict "$R_CURL" 0.995) |
| b. NAR download, server CPU s per GB, 1 conn | $B_CURL_BCPU | nginx $B_CURL_NCPU | $R_CURL_CPU | ≤ 1.2: $(at_most "$R_CURL_CPU" 1.2) |
| b. NAR download, MB/s, $DL_CONNS conns (wrk) | $B_WRK_B | nginx $B_WRK_N | $R_WRK | ≥ 1.0: $(verdict "$R_WRK" 0.995) |
| b. NAR download, server CPU s per GB, $DL_CONNS conns | $B_WRK_BCPU | nginx $B_WRK_NCPU | $R_WRK_CPU | ≤ 1.2: $(at_most "$R_WRK_CPU" 1.2) |
| b. berth peak RSS, MiB (filled by \`nix copy\`, then a, then b) | $B_RSS | — | — | ≤ 48: $(at_most "$B_RSS" 48) |
| c. ingest ${BIG_MIB} MiB path, \`berth push\`, MB/s | $C_BIG_PUSH_MBS (${C_BIG_PUSH} s) | file:// zstd $C_BIG_FILE_MBS (${C_BIG_FILE} s) | $R_BIG_PUSH | ≥ 2.0: $(verdict "$R_BIG_PUSH" 2.0) |
| c. ingest ${BIG_MIB} MiB path, \`nix copy\` to berth, MB/s | $C_BIG_HTTP_MBS (${C_BIG_HTTP} s) | file:// zstd $C_BIG_FILE_MBS | $R_BIG_HTTP | ≥ 0.8: $(verdict "$R_BIG_HTTP" 0.8) |
| c. ingest closure of $MID_PATHS paths ($((MID_BYTES / 1000000)) MB), \`berth push\`, s | ${C_MID_PUSH} | file:// zstd ${C_MID_FILE} | $R_MID_PUSH | ≥ 2.0: $(verdict "$R_MID_PUSH" 2.0) |
| c. ingest closure of $MID_PATHS paths, \`nix copy\` to berth, s | ${C_MID_HTTP} | file:// zstd ${C_MID_FILE} | $R_MID_HTTP | ≥ 0.8: $(verdict "$R_MID_HTTP" 0.8) |
| c. ingest closure of $CLOSURE_PATHS paths, \`berth push\`, paths/s | $(pps "$CLOSURE_PATHS" "$C_CL_PUSH") (${C_CL_PUSH} s) | file:// zstd $(pps "$CLOSURE_PATHS" "$C_CL_FILE") (${C_CL_FILE} s) | $R_CL_PUSH | ≥ 2.0: $(verdict "$R_CL_PUSH" 2.0) |
| c. ingest closure of $CLOSURE_PATHS paths, \`nix copy\` to berth, paths/s | $(pps "$CLOSURE_PATHS" "$C_CL_HTTP") (${C_CL_HTTP} s) | file:// zstd $(pps "$CLOSURE_PATHS" "$C_CL_FILE") | $R_CL_HTTP | ≥ 0.8: $(verdict "$R_CL_HTTP" 0.8) |
| c. berth peak RSS while ingesting, MiB (\`berth push\` / \`nix copy\`, worst run) | $C_RSS / $C_RSS_HTTP | — | — | ≤ 48: $(at_most "$C_RSS" 48) / $(at_most "$C_RSS_HTTP" 48) |
EOF
)

echo
echo "$TABLE"
echo
echo "$MICRO"
echo

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
GIT_REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || GIT_REV="$GIT_REV + uncommitted changes"
mkdir -p "$(dirname "$DOC")"
# Hand-written notes (profiles, analysis) after this marker survive a re-run.
NOTES_MARK='<!-- notes: kept across runs of benches/load.sh -->'
NOTES=$(sed -n "\|^$NOTES_MARK|,\$p" "$DOC" 2>/dev/null || true)
cat >"$DOC" <<EOF
# Benchmarks

Figures from one run of \`bash benches/load.sh\` on the machine below$([ "$QUICK" = 1 ] && echo " (**BENCH_QUICK=1: smoke sizes, not figures to quote**)").
Every figure is set against a baseline measured in the same run on the same machine, so the
ratios (not the absolute numbers) are what to compare between machines. The load generator
(wrk, curl, nix) runs on the same cores as the server under test, for berth and baseline alike.

## Reproduce

\`\`\`
bash benches/load.sh                 # full run, writes this file
BENCH_QUICK=1 bash benches/load.sh   # smoke run (< 2 min), writes target/bench/benchmarks-quick.md
cargo bench --bench ingest           # verify_nar micro-benchmark alone (BENCH_NAR_MIB, BENCH_SECONDS)
\`\`\`

## Results

$TABLE

Ingest ratios are baseline time ÷ berth time (above 1 means berth is faster). Ingest times
are the median of $REPS run(s), each into an empty cache (a fresh data directory and a fresh
\`berth serve\`, not counted), the source paths already in the page cache.

## What is measured

- **a. narinfo lookups**: \`wrk -t2 -c$CONNS -d${DUR}s\` (after a 1 s warm-up) with a Lua
  script cycling through $n_hits different narinfos (hits, all answered 200) or 10 000 random
  valid Nix base32 hashes (misses, all 404). Baseline: nginx $(nginx -v 2>&1 | sed 's|.*/||'), \`worker_processes auto\`,
  \`sendfile on\`, no access log, \`log_not_found off\`, serving berth's own \`DIR/cache\` directory
  (the standard binary-cache layout berth writes) as static files.
- **b. NAR download**: one $((NAR_FILE_BYTES / 1000000)) MB \`.nar.zst\` (a ${BIG_MIB} MiB file of
  incompressible bytes), fetched back to back over one connection by curl for ${DUR}s, and by
  \`wrk -t2 -c$DL_CONNS -d${DUR}s\`; MB/s of body bytes. Same file, same page cache for berth and nginx.
  Server CPU per byte: user + system time of the server's processes (nginx: master and
  workers, \`/proc/PID/stat\`) during the run, over the bytes the run moved. Peak RSS: VmHWM.
- **c. ingest**: the big path ($((BIG_BYTES / 1000000)) MB NAR), a closure of $MID_PATHS paths
  ($((MID_BYTES / 1000000)) MB of NAR: $N_MID incompressible files of $MID_KIB KiB and a root), and a closure of $CLOSURE_PATHS
  small paths ($((CLOSURE_BYTES / 1000)) kB of NAR in all: $N_SMALL files of 0.25–4 KiB and one
  root referencing them), pushed to an empty berth by \`berth push\` (defaults: 4 jobs, zstd -3)
  and by \`nix copy --to 'http://…?compression=zstd'\`, against the baseline
  \`nix copy --to 'file:///tmp/x?compression=zstd'\` (Nix compressing and writing a binary
  cache on local disk, with no network and no verification). berth additionally verifies
  every NAR, fsyncs every object and records it in SQLite.

MB = 10^6 bytes.

## verify_nar micro-benchmark

\`cargo bench --bench ingest\` (benches/ingest.rs), ${MICRO_MIB} MiB in-memory NAR, single thread:

\`\`\`
$MICRO
\`\`\`

## Machine

| | |
|---|---|
| date | $(date -u '+%Y-%m-%d %H:%M UTC') |
| CPU | $CPU, $(nproc) cores (nproc) |
| memory | $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) |
| kernel | $(uname -sr) |
| berth | $GIT_REV, \`cargo build --release\` |
| rustc | $(rustc --version) |
| Nix | $(nix --version | sed 's/^nix (Nix) //') |
| nginx | $(nginx -v 2>&1 | sed 's|.*/||') |
| wrk | $(wrk -v 2>&1 | head -n 1 | awk '{ print $2 }') |
| curl | $(curl --version | head -n 1 | awk '{ print $2 }') |
| load average (1, 5, 15 min) | $LOAD_BEFORE before the run, $(cut -d' ' -f1-3 /proc/loadavg) after |
| 1-min load during the run | $(sort -g "$WORK/load" 2>/dev/null | awk '{ v[NR] = $1 } END { if (NR) printf "min %s, median %s, max %s (%d samples, every 15 s)", v[1], v[int((NR + 1) / 2)], v[NR], NR; else print "n/a" }') |
EOF
if [ -n "$NOTES" ]; then printf '\n%s\n' "$NOTES" >>"$DOC"; fi
log "wrote $DOC"
