#!/usr/bin/env bash
# Runs every chatd test: formatting, lints, unit and integration tests.
# Installs the Debian packages the tests need when they are missing (as root;
# CI runs as root on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v ss >/dev/null || need+=(iproute2)
command -v setpriv >/dev/null || need+=(util-linux)
command -v lintian >/dev/null || need+=(lintian)
# Real IRC clients for tests/clients.rs.
command -v ii >/dev/null || need+=(ii)
command -v weechat-headless >/dev/null || need+=(weechat-headless)
command -v irssi >/dev/null || need+=(irssi)
command -v tmux >/dev/null || need+=(tmux)
# TLS clients for tests/tls.rs.
command -v openssl >/dev/null || need+=(openssl)
command -v socat >/dev/null || need+=(socat)
# A Prometheus text-format parser for chatctl metrics (tests/control.rs).
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  else
    echo "tests need: ${need[*]} (sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

# Root-only tests (privilege drop, chroot) must run, not skip, as root.
if [ "$(id -u)" = 0 ]; then export CHATD_TESTS_AS_ROOT=1; fi

cargo fmt --all -- --check
cargo fmt --manifest-path tests/fuzz/Cargo.toml -- --check
cargo clippy --all-targets -- -D warnings
cargo clippy --manifest-path tests/fuzz/Cargo.toml --target-dir target/fuzz/clippy -- -D warnings
cargo clippy --all-targets --features fault-injection -- -D warnings
# The release binary (no test hooks): tests/confinement.rs checks it has no
# fault hook. Then every test, with the fault hook compiled in.
cargo build --release --locked
export CHATD_RELEASE_BIN="$PWD/target/release/chatd"
cargo test --all-targets --features fault-injection --locked

# Fuzzing: every target in tests/fuzz for CHATD_FUZZ_SECS (default 60) each.
bash tests/fuzz.sh

# Soak: CHATD_SOAK_SECS (default 600) of mixed load with churn against one
# chatd; fails on any loss or if the master's heap or fds grow. The curve
# is kept in target/soak.txt.
./target/release/chatd-bench soak --secs "${CHATD_SOAK_SECS:-600}" --every 30 |
  tee target/soak.txt

# The Debian package: built with cargo-deb, checked by lintian and
# systemd-analyze (verify, security exposure <= 0.9); it installs cargo-deb
# when missing.
bash tests/package.sh

# End to end on a real systemd: tests/e2e.rs against a throwaway Debian 12
# container (deploy/container.sh) with the package just built. It needs
# root; CI runs as root.
deb=$(ls -t target/debian/chatd_*.deb | head -n1)
if [ "$(id -u)" = 0 ]; then
  mkdir -p target/e2e
  CHATD_CT_JOURNAL="$PWD/target/e2e/journal.txt" bash deploy/container.sh run -- \
    env CHATD_E2E_DEB="$PWD/$deb" \
    cargo test --features fault-injection --locked --test e2e -- --ignored --nocapture
else
  echo "note: the end-to-end test needs root (sudo bash tests/all.sh); not run" >&2
fi
