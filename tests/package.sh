#!/usr/bin/env bash
# Builds the Debian package and checks it, failing on any regression:
#   - lintian: no errors and no warnings (overrides carry their reasons in
#     packaging/debian/chatd.lintian-overrides);
#   - systemd-analyze verify of both units, as installed: no output at all;
#   - systemd-analyze security of chatd.service: exposure at most 0.9 (SAFE).
# Run by tests/all.sh; needs lintian and systemd (installed by tests/all.sh
# when missing) and cargo-deb (installed here when missing). Prints the
# .deb's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null || cargo install cargo-deb --version 3.8.0 --locked
if ! built=$(cargo deb --locked 2>target/cargo-deb.log); then
  cat target/cargo-deb.log >&2
  echo "cargo deb failed" >&2
  exit 1
fi
deb=$(tail -n 1 <<<"$built")
test -f "$deb" || { echo "cargo deb produced no package" >&2; exit 1; }

echo "== lintian $deb" >&2
if ! out=$(lintian --fail-on error,warning "$deb" 2>&1); then
  echo "$out" >&2
  exit 1
fi
echo "$out" | grep -v 'running with root privileges' >&2 || true

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# verify needs the targets the units refer to and the programs they run:
# the host's units and sh(1) (ExecReload) first, then the package over them.
mkdir -p "$root/etc/systemd/system" "$root/usr/bin" "$root/usr/lib/systemd/system"
cp -a /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
cp -L /bin/sh "$root/usr/bin/sh"
cp -L "$(command -v systemctl)" "$root/usr/bin/systemctl"
dpkg-deb -x "$deb" "$root"
[ -e "$root/bin" ] || ln -s usr/bin "$root/bin"

echo "== systemd-analyze verify" >&2
out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no --root="$root" \
  "$root/usr/lib/systemd/system/chatd.socket" "$root/usr/lib/systemd/system/chatd-irc.socket" \
  "$root/usr/lib/systemd/system/chatd-tls.socket" "$root/usr/lib/systemd/system/chatd-ircs.socket" \
  "$root/usr/lib/systemd/system/chatd-control.socket" "$root/usr/lib/systemd/system/chatd-metrics.timer" \
  "$root/usr/lib/systemd/system/chatd-metrics.service" \
  "$root/usr/lib/systemd/system/chatd.service" 2>&1) || {
  echo "$out" >&2; exit 1; }
if [ -n "$out" ]; then echo "$out" >&2; echo "systemd-analyze verify is not clean" >&2; exit 1; fi

echo "== systemd-analyze security" >&2
line=$(systemd-analyze security --offline=true --root="$root" chatd.service 2>&1 | grep 'Overall exposure level')
echo "$line" >&2
score=$(echo "$line" | sed -E 's/.*: ([0-9]+\.[0-9]+) .*/\1/')
awk -v s="$score" 'BEGIN { exit !(s <= 0.9) }' || {
  echo "chatd.service exposure $score is above 0.9" >&2; exit 1; }

echo "$deb"
