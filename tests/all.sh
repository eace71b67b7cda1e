#!/usr/bin/env bash
# Runs every chatd test: formatting, lints, unit and integration tests.
# Installs the Debian packages the tests need when they are missing (as root;
# CI runs as root on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v ss >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "tests need: ${need[*]} (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
