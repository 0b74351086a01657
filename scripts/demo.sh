#!/usr/bin/env bash
# The main job: a 3-machine cluster in the lab (each machine a real systemd running fleetd as a service,
# plus a real etcd), example units, and a visible failover when the machine running a unit is killed.
#
# As root (prefix sudo when you are not root):
#   scripts/demo.sh            # run the demo, then tear the cluster down
#   scripts/demo.sh --keep     # leave the cluster running to play with; it prints how to use it
#   scripts/demo.sh --down     # tear down a cluster left by --keep
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export FT_PREFIX=${FT_PREFIX:-fleetdemo}
LAB=lab/cluster-lab.sh
keep=0
case "${1:-}" in
  --keep) keep=1 ;;
  --down) exec "$LAB" down ;;
  "") ;;
  *) echo "usage: $0 [--keep|--down]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "the lab needs root (namespaces, cgroups, mounts): run this as root (e.g. sudo $0)" >&2; exit 1; }

ensure_deps
log "building fleetd and fleetctl"
cargo build --bins --quiet

if [ -d "/dev/shm/fleettest/$FT_PREFIX" ]; then "$LAB" down; fi
cleanup() { if [ "$keep" = 0 ]; then log "tearing the cluster down"; "$LAB" down; fi; }
trap cleanup EXIT

envfile=$(mktemp /tmp/fleetdemo-env.XXXXXX)
cat >"$envfile" <<'EOF'
FLEET_GOSSIP_INSECURE=true
FLEET_AGENT_TTL=5s
EOF
log "booting 3 machines (systemd + fleetd each) and etcd"
FT_ENV_FILE="$envfile" FT_BINDS="$PWD/target/debug:/opt/fleet/bin:ro $PWD/examples:/opt/fleet/examples:ro" \
  FT_UNITS="$PWD/lab/fleet.service" "$LAB" up 3
rm -f "$envfile"

fc() { local i=$1; shift; "$LAB" sh "$i" /opt/fleet/bin/fleetctl "$@"; }
show() { printf '\n\033[36m$ fleetctl %s\033[0m   (on m%s)\n' "${*:2}" "$1"; fc "$@"; }

for _ in $(seq 1 100); do
  [ "$(fc 1 list-machines --no-legend 2>/dev/null | wc -l)" = 3 ] && break; sleep 0.1
done
show 1 list-machines
show 1 start /opt/fleet/examples/hello.service /opt/fleet/examples/hello-global.service
show 1 submit /opt/fleet/examples/web@.service
show 1 start web@1.service web@2.service
sleep 1
show 1 list-unit-files
show 2 list-units

# Failover: kill the machine running hello.service (SIGKILL of its systemd: everything in it dies).
victim=""
for i in 1 2 3; do
  [ "$("$LAB" sh "$i" systemctl is-active hello.service 2>/dev/null)" = active ] && victim=$i
done
[ -n "$victim" ] || { echo "hello.service is not running anywhere" >&2; exit 1; }
watcher=$(( victim == 1 ? 2 : 1 ))
log "killing m$victim, which runs hello.service"
t0=$(date +%s%N)
"$LAB" kill "$victim"
moved=""
for _ in $(seq 1 300); do
  for i in 1 2 3; do
    [ "$i" = "$victim" ] && continue
    [ "$("$LAB" sh "$i" systemctl is-active hello.service 2>/dev/null)" = active ] && moved=$i
  done
  [ -n "$moved" ] && break
  sleep 0.02
done
t1=$(date +%s%N)
if [ -n "$moved" ]; then
  log "hello.service active on m$moved $(( (t1 - t0) / 1000000 )) ms after m$victim was killed"
else
  log "hello.service did not come back within 6 s"
fi
sleep 1
show "$watcher" list-machines
show "$watcher" list-units

if [ "$keep" = 1 ]; then
  cat <<EOF

The cluster keeps running (prefix $FT_PREFIX). Try:
  FT_PREFIX=$FT_PREFIX $LAB sh 1 /opt/fleet/bin/fleetctl list-units
  FT_PREFIX=$FT_PREFIX $LAB boot $victim        # bring the killed machine back
  FT_PREFIX=$FT_PREFIX $LAB sh 2 journalctl -u fleet -f
Tear it down with:  scripts/demo.sh --down
EOF
fi
