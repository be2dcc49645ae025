#!/usr/bin/env bash
# Builds berth and runs `berth serve` on its embedded default (SQLite and a local cache
# directory under ~/.local/share/berth; a signing key is generated on first start and the
# nix.conf lines a client needs are printed). Extra arguments go to `berth serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
berth_install_deps
cargo build --release --quiet
exec target/release/berth serve "$@"
