#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, and the integration tests that drive
# the real Nix client, git, SQLite, PostgreSQL and an S3 server (SeaweedFS). Installs what
# it needs first (scripts/deps.sh).
# Nothing is skipped: a test whose program is missing fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
berth_install_deps
berth_install_test_servers
berth_install_current_nix
berth_install_forge_api

echo "== Nix clients: $(nix --version) (Debian, system store); $("$BERTH_CURRENT_NIX/nix" --version) (current, chroot stores)"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== no merge conflict markers"
if git grep -nE '^(<<<<<<< |>>>>>>> )' -- . ':!target'; then echo "merge conflict markers left in the tree"; exit 1; fi
echo "== nix files parse"
for f in $(git ls-files '*.nix'); do nix-instantiate --parse "$f" >/dev/null; done
echo "== cargo test"
cargo test --lib --bins --tests
