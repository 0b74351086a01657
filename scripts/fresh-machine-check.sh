#!/usr/bin/env bash
# Checks that the README's two commands work on a Debian 12 machine that has never seen the project: a
# fresh Debian 12 root filesystem (debootstrap, from the mirror apt is configured with), a root shell in
# it with only git installed (no sudo, no Rust, no etcd, no protoc...), a fresh clone of the repository;
# then `scripts/demo.sh` and `scripts/test.sh` exactly as the README says. Either failing fails this.
#
#   scripts/fresh-machine-check.sh            # as root; clones this checkout
#   REPO=/work/main scripts/fresh-machine-check.sh
#   KEEP_ROOTFS=1 scripts/fresh-machine-check.sh   # keep the root filesystem (unmounted) for a rerun
#   FRESH_TEST_ARGS="--test lab_interop" scripts/fresh-machine-check.sh   # arguments for test.sh (a part)
#
# Everything runs in a private mount namespace (`unshare --mount`) whose root becomes the fresh root
# (pivot_root, as a container runtime does; see below why not chroot): its mounts (/proc, /sys,
# /dev, a fresh /dev/shm and /run) cannot propagate to the host and vanish with it. The lab clusters the
# tests start in the fresh root use their own state directory (its own /dev/shm). The root filesystem
# (under $TMPDIR or /tmp, a few GB with the cargo build) is removed at the end unless KEEP_ROOTFS=1. Each
# phase prints how long it took.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

[ "$(id -u)" = 0 ] || { echo "needs root (debootstrap, namespaces, mounts): run it as root" >&2; exit 1; }
command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
REPO=${REPO:-$PWD}
ROOTFS=${ROOTFS:-${TMPDIR:-/tmp}/fleet-fresh-debian12}
SHARED=""
for d in "$REPO/../shared" "${FLEET_SHARED:-}"; do
  if [ -n "$d" ] && [ -d "$d/interop" ]; then SHARED=$(realpath "$d"); break; fi
done
MIRROR=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

cleanup() {
  if [ "${KEEP_ROOTFS:-0}" != 1 ] && [ -d "$ROOTFS" ]; then
    log "removing $ROOTFS"
    rm -rf --one-file-system "$ROOTFS"
  fi
}
trap cleanup EXIT

# Only a debootstrap that finished counts (an interrupted one leaves apt-get but no configured system).
if [ ! -e "$ROOTFS/.fleet-debootstrap-done" ]; then
  log "debootstrap bookworm into $ROOTFS from $MIRROR"
  rm -rf --one-file-system "$ROOTFS"
  t0=$SECONDS
  unshare --mount --propagation private debootstrap bookworm "$ROOTFS" "$MIRROR" >"/tmp/fresh-debootstrap.log" 2>&1 \
    || { tail -30 /tmp/fresh-debootstrap.log >&2; exit 1; }
  touch "$ROOTFS/.fleet-debootstrap-done"
  log "debootstrap: $((SECONDS - t0)) s"
fi
# The same apt sources as this machine (the mirror, and the security updates that carry rustc-web).
cp /etc/apt/sources.list.d/debian.sources "$ROOTFS/etc/apt/sources.list.d/debian.sources" 2>/dev/null \
  && rm -f "$ROOTFS/etc/apt/sources.list"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# A network that intercepts TLS (this lab's egress does) makes every machine on it trust the network's CA,
# as this host does: the fresh machine gets the same local CA files, nothing else.
mkdir -p "$ROOTFS/usr/local/share/ca-certificates"
cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
# The repository to clone from inside (a plain clone of $REPO: a linked worktree's .git points outside).
rm -rf "$ROOTFS/srv/repo"
git clone -q --no-local "$REPO" "$ROOTFS/srv/repo"
if [ -n "$SHARED" ]; then
  rm -rf "$ROOTFS/root/shared"; cp -rL "$SHARED" "$ROOTFS/root/shared"
else
  log "no ../shared next to $REPO: the interop test will skip itself"
fi
cat >"$ROOTFS/root/fresh-run.sh" <<'RUN'
#!/bin/bash
# Runs in the fresh root as root, with a clean environment.
set -euo pipefail
cd /root
if command -v sudo >/dev/null; then echo "this root has sudo: not a minimal machine" >&2; exit 1; fi
if command -v cargo >/dev/null; then echo "this root already has cargo: not a fresh machine" >&2; exit 1; fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git >/dev/null
if ls /usr/local/share/ca-certificates/*.crt >/dev/null 2>&1; then
  echo "==> trusting this network's local CA files (as the host does)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null
  update-ca-certificates >/dev/null
fi
rm -rf fleet && git clone -q /srv/repo fleet && cd fleet
t0=$SECONDS
# Whatever happens, no lab cluster outlives this run.
trap 'FT_PREFIX=freshdemo lab/cluster-lab.sh down >/dev/null 2>&1 || true; lab/cluster-lab.sh reap >/dev/null 2>&1 || true' EXIT
echo "==> fresh clone at $(git rev-parse --short HEAD)"
FT_PREFIX=freshdemo scripts/demo.sh
echo "==> scripts/demo.sh: ok in $((SECONDS - t0)) s (ensure_deps, build, demo)"
t0=$SECONDS
# shellcheck disable=SC2086
scripts/test.sh $FRESH_TEST_ARGS
echo "==> scripts/test.sh $FRESH_TEST_ARGS: ok in $((SECONDS - t0)) s"
RUN
chmod 755 "$ROOTFS/root/fresh-run.sh"

log "in the fresh root: apt-get install git, git clone, scripts/demo.sh, scripts/test.sh"
t0=$SECONDS
# shellcheck disable=SC2016
unshare --mount --propagation private env ROOTFS="$ROOTFS" FRESH_TEST_ARGS="${FRESH_TEST_ARGS:-}" bash -euc '
  # The root must be a mount point of its own: the lab makes / a slave mount (mount --make-rslave /).
  mount --bind "$ROOTFS" "$ROOTFS"
  mount -t proc proc "$ROOTFS/proc"
  mount --rbind /sys "$ROOTFS/sys"
  mount --rbind /dev "$ROOTFS/dev"
  mount -t tmpfs -o mode=1777 tmpfs "$ROOTFS/dev/shm"
  mount -t tmpfs -o mode=755 tmpfs "$ROOTFS/run"
  # pivot_root, not chroot: a chroot leaves the mount namespace rooted at the host'"'"'s /, so a process that
  # enters a lab machine with `nsenter -a` (setns to its mount namespace) lands in the HOST'"'"'s root, not
  # the machine'"'"'s, and `systemctl is-system-running` there says "offline": the lab never "boots". With
  # pivot_root the fresh root is the namespace'"'"'s root, as on a real machine.
  cd "$ROOTFS"; mkdir -p .oldroot; pivot_root . .oldroot; cd /; umount -l /.oldroot; rmdir /.oldroot
  exec env -i HOME=/root FRESH_TEST_ARGS="$FRESH_TEST_ARGS" PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 TERM=dumb /root/fresh-run.sh
'
log "fresh Debian 12: scripts/demo.sh and scripts/test.sh ${FRESH_TEST_ARGS:-} passed in $((SECONDS - t0)) s in the fresh root"
