#!/usr/bin/env bash
# deploy/container.sh: a throwaway Debian 12 machine with a real systemd as
# PID 1 (systemd-nspawn --boot), for trying chatd's .deb without touching
# the host, and for the end-to-end test (tests/e2e.rs).
#
#   deploy/container.sh try DEB [PORT]     boot, install DEB, chatd.socket on
#                                          127.0.0.1:PORT (default 5555); Ctrl-C
#                                          tears everything down
#   deploy/container.sh run [--deb DEB]... -- CMD [ARG]...
#                                          boot, install the DEBs, run CMD on the
#                                          host, tear down whatever CMD did;
#                                          exit status = CMD's
#   deploy/container.sh up [DEB]...        boot (and install), leave it running
#   deploy/container.sh exec CMD [ARG]...  run CMD inside (as root, clean env)
#   deploy/container.sh install DEB...     dpkg -i inside
#   deploy/container.sh journal [FILE]     save the container's journal
#   deploy/container.sh down               power off and clean up
#
# The host needs root, systemd-container, mmdebstrap, util-linux and zstd
# (installed with apt when missing). The container shares the host's
# network namespace: what listens inside on 127.0.0.1:PORT is reachable
# from the host. Its root is a tmpfs overlay on a cached rootfs, so nothing
# it writes survives it.
#
# Environment:
#   CHATD_CT_NAME   container (machine) name             default chatd-ct
#   CHATD_CT_CACHE  rootfs cache (one .tar.zst + tree)    default /var/tmp/chatd-container
#   CHATD_CT_SUITE  Debian suite                          default bookworm
#   CHATD_CT_MIRROR Debian mirror                         default http://deb.debian.org/debian
#   CHATD_CT_JOURNAL where `down` saves the journal        default $CHATD_CT_CACHE/NAME.journal.txt
# `run` exports to CMD: CHATD_CT_NAME, CHATD_CT_LEADER (the container's
# PID 1 as seen from the host) and CHATD_CT_EXEC (this script, for `exec`).
#
# How it works on hosts whose PID 1 is not systemd (facts from
# ../shared/reference/systemd-container.md):
# - nspawn cannot register with machined: --register=no --keep-unit; so it
#   is put into cgroups of its own, removed at teardown, else it leaves
#   payload/ and supervisor/ at the roots of the host's cgroup trees;
# - SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 gives the container pure cgroup v2;
# - CAP_BPF, CAP_NET_ADMIN and the bpf syscall let IPAddressDeny= and
#   PrivateNetwork= work inside; the landlock_* syscalls are added to
#   nspawn's own syscall allowlist, which lacks them in systemd 252 (chatd's
#   children would run without Landlock otherwise);
# - commands run inside through nsenter (machinectl needs a host systemd).
set -euo pipefail

NAME=${CHATD_CT_NAME:-chatd-ct}
CACHE=${CHATD_CT_CACHE:-/var/tmp/chatd-container}
SUITE=${CHATD_CT_SUITE:-bookworm}
MIRROR=${CHATD_CT_MIRROR:-http://deb.debian.org/debian}
PACKAGES=systemd,systemd-sysv,dbus,libnss-systemd
STATE=$CACHE/run/$NAME
JOURNAL=${CHATD_CT_JOURNAL:-$CACHE/$NAME.journal.txt}
INSIDE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SELF=$(readlink -f "$0")

say() { echo "container: $*" >&2; }
die() { say "$*"; exit 1; }

# ------------------------------------------------------------ host tools
host_tools() {
  [ "$(id -u)" = 0 ] || die "needs root (systemd-nspawn, cgroups, nsenter)"
  local need=()
  command -v systemd-nspawn >/dev/null || need+=(systemd-container)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v nsenter >/dev/null || need+=(util-linux)
  command -v zstd >/dev/null || need+=(zstd)
  if ((${#need[@]})); then
    say "installing ${need[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
      --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# ------------------------------------------------------------ rootfs cache
# The tree is what nspawn boots (read-only under a tmpfs overlay); the
# tarball is the one file worth keeping between CI runs.
rootfs() {
  local key
  key=$(printf '%s\n' "$SUITE" "$MIRROR" "$PACKAGES" 1 | sha256sum | cut -c1-10)
  ROOT=$CACHE/rootfs-$SUITE-$key
  local tarball=$ROOT.tar.zst
  [ -e "$ROOT/.complete" ] && return 0
  local t0=$SECONDS
  rm -rf "$ROOT" "$ROOT.new"
  mkdir -p "$ROOT.new"
  if [ -s "$tarball" ]; then
    zstd -dc "$tarball" | tar -C "$ROOT.new" --numeric-owner --xattrs --acls -xf -
    say "rootfs restored from $tarball in $((SECONDS - t0)) s"
  else
    say "building the $SUITE rootfs with mmdebstrap (once; cached in $CACHE)"
    mmdebstrap --quiet --variant=minbase --include="$PACKAGES" --skip=cleanup/apt/lists \
      "$SUITE" "$ROOT.new" \
      "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
      "deb ${MIRROR%/debian}/debian-security $SUITE-security main"
    echo "$NAME" >"$ROOT.new/etc/hostname"
    : >"$ROOT.new/etc/machine-id" # empty: a fresh machine id every boot
    rm -f "$ROOT.new"/var/cache/apt/archives/*.deb
    tar -C "$ROOT.new" --numeric-owner --xattrs --acls -cf - . | zstd -T0 -3 -q -f -o "$tarball.new"
    mv "$tarball.new" "$tarball"
    say "rootfs built in $((SECONDS - t0)) s"
  fi
  touch "$ROOT.new/.complete"
  mv "$ROOT.new" "$ROOT"
}

# ------------------------------------------------------------ cgroups
cgroup_dirs() {
  if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    echo /sys/fs/cgroup
  else
    echo /sys/fs/cgroup/systemd
    [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ] && echo /sys/fs/cgroup/unified
  fi
  return 0
}

cgroup_cleanup() {
  local d
  for d in $(cgroup_dirs); do
    [ -d "$d/chatd-ct-$NAME" ] && find "$d/chatd-ct-$NAME" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  # nspawn cannot remove this itself when /run is not a tmpfs
  rm -rf "/run/systemd/nspawn/propagate/$NAME"
  return 0
}

# ------------------------------------------------------------ inside
leader() {
  if [ -n "${CHATD_CT_LEADER:-}" ]; then echo "$CHATD_CT_LEADER"; return; fi
  local l
  l=$(cat "$STATE/leader" 2>/dev/null) || die "no container $NAME is running (deploy/container.sh up)"
  kill -0 "$l" 2>/dev/null || die "container $NAME is gone (leader $l)"
  echo "$l"
}

inside() { # inside [-t SECONDS] CMD...: run CMD in every namespace of the container
  local limit=()
  if [ "${1:-}" = -t ]; then limit=(timeout -k 5 "$2"); shift 2; fi
  "${limit[@]}" nsenter --target "$(leader)" --all \
    env -i PATH=$INSIDE_PATH LANG=C.UTF-8 TERM=dumb DEBIAN_FRONTEND=noninteractive \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}

# ------------------------------------------------------------ up / down
up() {
  host_tools
  down_stale
  rootfs
  mkdir -p "$STATE/debs"
  rm -f "$STATE"/debs/*
  local t0=$SECONDS
  (
    for d in $(cgroup_dirs); do
      mkdir -p "$d/chatd-ct-$NAME"
      echo "$BASHPID" >"$d/chatd-ct-$NAME/cgroup.procs"
    done
    exec env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --quiet --boot \
      --directory="$ROOT" --machine="$NAME" --register=no --keep-unit \
      --console=passive --volatile=overlay \
      --capability=CAP_BPF,CAP_NET_ADMIN \
      --system-call-filter="bpf landlock_create_ruleset landlock_add_rule landlock_restrict_self" \
      --bind-ro="$STATE/debs:/debs"
  ) >"$STATE/nspawn.log" 2>&1 </dev/null &
  echo $! >"$STATE/nspawn"
  local nspawn=$! mine c l=
  mine=$(readlink /proc/self/ns/pid)
  # The leader: nspawn's child named systemd, in a pid namespace of its own.
  for _ in $(seq 600); do
    for c in $(cat /proc/"$nspawn"/task/*/children 2>/dev/null); do
      if [ "$(cat /proc/"$c"/comm 2>/dev/null)" = systemd ] &&
        [ "$(readlink /proc/"$c"/ns/pid 2>/dev/null)" != "$mine" ]; then
        l=$c
        break 2
      fi
    done
    kill -0 "$nspawn" 2>/dev/null || { cat "$STATE/nspawn.log" >&2; die "systemd-nspawn exited"; }
    sleep 0.05
  done
  [ -n "$l" ] || die "no systemd started in the container"
  echo "$l" >"$STATE/leader"
  # Poll (a `--wait` client could hold up shutdown if it were killed).
  local st=
  for _ in $(seq 600); do
    st=$(inside -t 10 systemctl is-system-running 2>/dev/null || true)
    case $st in running | degraded) break ;; esac
    kill -0 "$l" 2>/dev/null || { cat "$STATE/nspawn.log" >&2; die "the container died while booting"; }
    sleep 0.1
  done
  case $st in
    running) say "$NAME booted in $((SECONDS - t0)) s (leader pid $l)" ;;
    degraded) inside systemctl --failed --no-pager >&2; say "$NAME booted degraded (leader pid $l)" ;;
    *) die "$NAME did not finish booting (state '$st')" ;;
  esac
}

save_journal() {
  local to=${1:-$JOURNAL}
  inside -t 60 journalctl -b --no-pager -o short-monotonic >"$to" 2>&1 || true
}

down() {
  local nspawn l
  nspawn=$(cat "$STATE/nspawn" 2>/dev/null) || { cgroup_cleanup; return 0; }
  l=$(cat "$STATE/leader" 2>/dev/null || true)
  if [ "$(cat /proc/"$nspawn"/comm 2>/dev/null)" = systemd-nspawn ]; then
    if [ -n "$l" ] && kill -0 "$l" 2>/dev/null; then
      save_journal
      CHATD_CT_LEADER=$l inside -t 20 systemctl poweroff 2>/dev/null || kill -TERM "$nspawn" 2>/dev/null || true
    else
      kill -TERM "$nspawn" 2>/dev/null || true
    fi
    for _ in $(seq 300); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$nspawn" 2>/dev/null; then
      kill -TERM "$nspawn" 2>/dev/null || true # a second SIGTERM: nspawn stops at once
      for _ in $(seq 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$nspawn" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$nspawn" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  rm -f "$STATE/nspawn" "$STATE/leader"
  rm -rf "$STATE/debs"
  cgroup_cleanup
  say "$NAME is down; its journal is in $JOURNAL"
}

down_stale() {
  if [ -e "$STATE/nspawn" ]; then
    say "stopping a container $NAME left from an earlier run"
    down
  fi
  cgroup_cleanup
}

install_debs() {
  (($#)) || return 0
  mkdir -p "$STATE/debs"
  local f names=()
  for f in "$@"; do
    [ -f "$f" ] || die "no such package: $f"
    cp -f "$f" "$STATE/debs/"
    names+=("/debs/$(basename "$f")")
  done
  # apt-get resolves Depends from the mirror (the container shares the host's network).
  inside apt-get install -y -q --no-install-recommends "${names[@]}" >"$STATE/apt.log" 2>&1 ||
    { cat "$STATE/apt.log" >&2; die "installing $* failed"; }
  say "installed ${names[*]}"
}

# ------------------------------------------------------------ commands
cmd=${1:-}
shift || true
case $cmd in
  up)
    up
    install_debs "$@"
    say "running; enter it with: $0 exec bash; stop it with: $0 down"
    ;;
  down) down ;;
  exec)
    (($#)) || die "usage: $0 exec CMD [ARG]..."
    inside "$@"
    ;;
  install) install_debs "$@" ;;
  journal) save_journal "${1:-$JOURNAL}" ;;
  run)
    debs=()
    while (($#)) && [ "$1" != -- ]; do
      case $1 in
        --deb) debs+=("$2"); shift 2 ;;
        *) die "run: unknown option $1" ;;
      esac
    done
    [ "${1:-}" = -- ] && shift
    (($#)) || die "usage: $0 run [--deb DEB]... -- CMD [ARG]..."
    trap 'down' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    up
    install_debs "${debs[@]}"
    rc=0
    CHATD_CT_NAME=$NAME CHATD_CT_LEADER=$(cat "$STATE/leader") CHATD_CT_EXEC=$SELF "$@" || rc=$?
    if [ "$rc" != 0 ]; then
      say "command failed (exit $rc); chatd's journal:"
      inside -t 30 journalctl -u chatd.socket -u chatd.service --no-pager -o short-monotonic >&2 || true
    fi
    exit "$rc"
    ;;
  try)
    [ -n "${1:-}" ] || die "usage: $0 try DEB [PORT]"
    port=${2:-5555}
    trap 'down' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    up
    inside mkdir -p /etc/systemd/system/chatd.socket.d
    printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$port" |
      inside tee /etc/systemd/system/chatd.socket.d/port.conf >/dev/null
    install_debs "$1"
    inside systemctl start chatd.socket
    say "chatd listens on 127.0.0.1:$port: try nc 127.0.0.1 $port"
    say "inside: $0 exec journalctl -u chatd -f   (with CHATD_CT_NAME=$NAME)"
    say "Ctrl-C stops and removes the container"
    while kill -0 "$(cat "$STATE/leader")" 2>/dev/null; do sleep 1; done
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
