# Shared by the benchmark scripts (benches/load.sh, benches/s3.sh): logging, scratch space
# and cleanup, loopback ports, starting berth, and the wrk/curl load runs. Sourced, not run.
# Expects DUR (seconds per load run) and CONNS/DL_CONNS (connections) to be set.

log() { printf '\033[1m[bench %4ss]\033[0m %s\n' "$SECONDS" "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# bench_install PROGRAM=PACKAGE...: installs, with apt-get, the packages of missing programs.
bench_install() {
  local missing=() pair
  for pair in "$@"; do have "${pair%%=*}" || missing+=("${pair#*=}"); done
  [ ${#missing[@]} -eq 0 ] && return
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  log "installing ${missing[*]} with apt-get"
  $sudo apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; then
    # Newer Debian dropped nginx-light: plain nginx does the same here.
    missing=("${missing[@]/nginx-light/nginx}")
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# ---------------------------------------------------------------------------------------
# Scratch space, offline Nix, cleanup.
WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-bench.XXXXXX")
chmod 755 "$WORK"
# Servers started by this script, one PID a line (also by subshells, which share no variables).
PIDFILE=$WORK/pids
: >"$PIDFILE"
cleanup() {
  local pid
  for pid in $(cat "$PIDFILE" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in $(cat "$PIDFILE" 2>/dev/null); do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export XDG_CACHE_HOME=$WORK/xdg-cache
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command\nnarinfo-cache-negative-ttl = 0'
NIXOPT=(--option substituters '' --extra-experimental-features nix-command)
# Bound for one ingest or copy command.
TMO=$((DUR * 60))

now() { date +%s.%N; }
# fdiv A B [DIGITS]: A / B.
fdiv() { awk -v a="$1" -v b="$2" -v d="${3:-1}" 'BEGIN { if (b == 0) print "n/a"; else printf "%.*f\n", d, a / b }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "bench: no free port" >&2
  exit 1
}

# start_berth DIR [ARGS...]: starts `berth serve` on a loopback port; sets BERTH_URL and BERTH_PID.
start_berth() {
  local dir=$1
  shift
  # Made before the server starts: the loop below may read it before the child opens it.
  : >"$dir.out"
  "$BERTH" serve --data-dir "$dir" --listen 127.0.0.1:0 "$@" >"$dir.out" 2>"$dir.err" &
  BERTH_PID=$!
  echo "$BERTH_PID" >>"$PIDFILE"
  BERTH_URL=""
  for _ in $(seq 200); do
    BERTH_URL=$(sed -n 's|^berth listening on \(http://[0-9.:]*\).*|\1|p' "$dir.out")
    [ -n "$BERTH_URL" ] && break
    kill -0 "$BERTH_PID" 2>/dev/null || break
    sleep 0.05
  done
  if [ -z "$BERTH_URL" ]; then
    echo "bench: berth did not start:" >&2
    cat "$dir.out" "$dir.err" >&2
    exit 1
  fi
}

stop_pid() {
  kill -TERM "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  sed -i "/^$1\$/d" "$PIDFILE"
}

cat >"$WORK/cycle.lua" <<'EOF'
-- Cycles through the hashes listed in $WRK_LIST, each thread from its own offset.
local paths = {}
for line in io.lines(os.getenv("WRK_LIST")) do paths[#paths + 1] = "/" .. line .. ".narinfo" end
local threads = 0
function setup(thread) thread:set("tid", threads); threads = threads + 1 end
local i = 0
function init(args) i = (tid or 0) * math.floor(#paths / 2) end
function request()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
EOF

# wrk_narinfo LABEL URL LIST: one warm-up second, then DUR seconds; prints "rps p50 p99 non2xx total".
wrk_narinfo() {
  local label=$1 url=$2 list=$3 out=$WORK/wrk-$1.txt
  WRK_LIST=$list timeout $((DUR + 30)) wrk -t2 -c"$CONNS" -d1s -s "$WORK/cycle.lua" "$url" >/dev/null
  WRK_LIST=$list timeout $((DUR + 30)) wrk -t2 -c"$CONNS" -d"${DUR}s" --timeout 10s --latency -s "$WORK/cycle.lua" "$url" >"$out"
  awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx or 3xx responses:/ { bad = $NF }
    /requests in/ { total = $1 }
    END { printf "%.0f %.2f %.2f %d %d\n", rps, p50, p99, bad, total }' "$out"
}

# curl_dl URL SIZE [CURL-OPTIONS...]: one connection, repeated downloads of a SIZE-byte
# file for DUR seconds; prints MB/s.
curl_dl() {
  local url=$1 size=$2 bytes=0 t0 t1 n
  shift 2
  curl -sf "$@" -o /dev/null --max-time 120 "$url"  # warm-up
  t0=$(now)
  while :; do
    n=$(curl -sf "$@" -o /dev/null --max-time 120 -w '%{size_download}' "$url")
    [ "$n" = "$size" ] || { echo "bench: short download from $url ($n bytes)" >&2; exit 1; }
    bytes=$((bytes + n))
    t1=$(now)
    awk -v a="$t0" -v b="$t1" -v d="$DUR" 'BEGIN { exit !(b - a >= d) }' && break
  done
  awk -v n="$bytes" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / 1e6 / (b - a) }'
}

# cpu_ticks PID...: user + system clock ticks (USER_HZ) used so far by the PIDs and their
# children still running (nginx's workers).
cpu_ticks() {
  local pids=" $* " p
  for p in $(awk -v want="$pids" '{ if (index(want, " " $4 " ")) print $1 }' /proc/[0-9]*/stat 2>/dev/null); do
    pids="$pids$p "
  done
  local total=0 t
  for p in $pids; do
    t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}

# peak_rss_mib PID: the process's peak resident set (VmHWM), MiB.
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.0f\n", $2 / 1024 }' "/proc/$1/status"; }

# wrk_dl URL: DL_CONNS connections for DUR seconds; prints MB/s.
wrk_dl() {
  timeout $((DUR + 60)) wrk -t2 -c"$DL_CONNS" -d"${DUR}s" --timeout 60s "$1" \
    | awk '/Transfer\/sec:/ {
        v = $2; m = 1
        if (v ~ /GB$/) m = 1073741824; else if (v ~ /MB$/) m = 1048576; else if (v ~ /KB$/) m = 1024
        sub(/[KMG]?B$/, "", v); printf "%.0f\n", v * m / 1e6 }'
}

