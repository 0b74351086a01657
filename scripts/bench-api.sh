#!/usr/bin/env bash
# End-to-end API benchmark through fleetctl: a private etcd, one fleetd on a unix socket, then
#   - submit N unit files with one `fleetctl submit` (default N=1000), then `start --no-block` them,
#   - the same with the original fleetctl v1.0.0 on N other units (when ../shared/interop or
#     $FLEET_SHARED/interop has it),
#   - list them with both clients' `list-unit-files` (and list-units, list-machines), several runs each.
# Prints wall-clock figures (each includes the client's process start). Goals: submit and start of 1,000
# units < 0.3 s each, listing 1,000 units < 100 ms. Everything it starts is stopped and its temporary
# files removed on exit.
#   scripts/bench-api.sh              # release build, N=1000, 7 listing runs
#   N=5000 RUNS=3 PROFILE=dev scripts/bench-api.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

N=${N:-1000}
RUNS=${RUNS:-7}
PROFILE=${PROFILE:-release}

FLEETD_PID=
WORK=
cleanup() {
  if [ -n "$FLEETD_PID" ]; then kill "$FLEETD_PID" 2>/dev/null || true; wait "$FLEETD_PID" 2>/dev/null || true; fi
  stop_etcd
  if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

log "cargo build --profile $PROFILE --bin fleetd --bin fleetctl"
cargo build --quiet --profile "$PROFILE" --bin fleetd --bin fleetctl
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case "$PROFILE" in dev) BIN="$TARGET_DIR/debug" ;; *) BIN="$TARGET_DIR/$PROFILE" ;; esac
BIN=$(realpath "$BIN")
FLEETD="$BIN/fleetd"
FLEETCTL="$BIN/fleetctl"

start_etcd
WORK=$(mktemp -d /tmp/fleet-bench.XXXXXX)
SOCK="$WORK/fleet.sock"
cat >"$WORK/fleet.conf" <<CONF
etcd_servers=$ETCD_ENDPOINT
etcd_key_prefix=/fleet-bench-$$/
api_socket=$SOCK
machine_id=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
gossip_insecure=true
gossip_listen=127.0.0.1:0
state_dir=$WORK/state
CONF
env $(env | sed -n 's/^\(FLEET_[A-Z_]*\)=.*/-u \1/p') "$FLEETD" --config "$WORK/fleet.conf" >"$WORK/fleetd.log" 2>&1 </dev/null &
FLEETD_PID=$!

export FLEETCTL_ENDPOINT="unix://$SOCK"
unset FLEETCTL_DEBUG FLEETCTL_TUNNEL || true
for i in $(seq 1 200); do
  "$FLEETCTL" list-unit-files >/dev/null 2>&1 && break
  if ! kill -0 "$FLEETD_PID" 2>/dev/null; then echo "fleetd exited; its log:" >&2; cat "$WORK/fleetd.log" >&2; exit 1; fi
  [ "$i" = 200 ] && { echo "fleetd did not answer in 20 s; its log:" >&2; cat "$WORK/fleetd.log" >&2; exit 1; }
  sleep 0.1
done
log "fleetd up (pid $FLEETD_PID) on $SOCK"

# The original fleetctl, if the shared test material is there.
V1=
for d in "$PWD/../shared" "${FLEET_SHARED:-}"; do
  if [ -n "$d" ] && [ -f "$d/interop/fleetctl-v1.0.0.xz" ]; then
    xz -dc "$d/interop/fleetctl-v1.0.0.xz" >"$WORK/fleetctl-v1.0.0" && chmod 755 "$WORK/fleetctl-v1.0.0"
    V1="$WORK/fleetctl-v1.0.0"; break
  fi
done
[ -n "$V1" ] || log "the original fleetctl is not in ../shared/interop (or \$FLEET_SHARED/interop): only ours is measured"

mkdir "$WORK/units" "$WORK/units-v1"
for i in $(seq -w 1 "$N"); do
  printf '[Unit]\nDescription=bench unit %s\n\n[Service]\nExecStart=/bin/sh -c "echo %s; sleep 1d"\n' "$i" "$i" \
    >"$WORK/units/bench-$i.service"
  printf '[Unit]\nDescription=bench unit %s\n\n[Service]\nExecStart=/bin/sh -c "echo v1 %s; sleep 1d"\n' "$i" "$i" \
    >"$WORK/units-v1/v1bench-$i.service"
done

now_ns() { date +%s%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# Median and min of the numbers on stdin.
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "min %.1f ms, median %.1f ms, max %.1f ms (%d runs)", v[1], v[int((NR + 1) / 2)], v[NR], NR }'; }

# Runs "$@" in directory $1; prints its wall time in ms; checks that it printed $2 distinct lines
# matching $3 (the original fleetctl prints some twice).
timed_in() {
  local dir=$1 lines=$2 pattern=$3 a b got; shift 3
  a=$(now_ns); (cd "$dir" && "$@" >"$WORK/out" 2>"$WORK/err") || { cat "$WORK/err" >&2; exit 1; }; b=$(now_ns)
  got=$(grep -- "$pattern" "$WORK/out" | sort -u | grep -c . || true)
  [ "$got" = "$lines" ] || { echo "$* printed $got lines matching '$pattern', expected $lines" >&2; exit 1; }
  ms "$a" "$b"
}
submit_ms=$(timed_in "$WORK/units" "$N" ' inactive$' "$FLEETCTL" submit "$WORK"/units/*.service)
start_ms=$(timed_in "$WORK/units" "$N" '^Triggered unit' "$FLEETCTL" start --no-block "$WORK"/units/*.service)
if [ -n "$V1" ]; then
  v1_submit_ms=$(timed_in "$WORK/units-v1" "$N" ' inactive$' "$V1" submit "$WORK"/units-v1/*.service)
  v1_start_ms=$(timed_in "$WORK/units-v1" "$N" '^Triggered unit' "$V1" start --no-block "$WORK"/units-v1/*.service)
fi

bench_list() { # name, expected line count, client, arguments...
  local name=$1 lines=$2 client=$3; shift 3
  local i a b out times=()
  for i in $(seq 1 "$RUNS"); do
    a=$(now_ns); out=$("$client" "$@" 2>/dev/null); b=$(now_ns)
    local got; got=$(printf '%s\n' "$out" | grep -c . || true)
    [ "$got" = "$lines" ] || { echo "$name printed $got lines, expected $lines" >&2; exit 1; }
    times+=("$(ms "$a" "$b")")
  done
  printf '%-40s %s\n' "$name" "$(printf '%s\n' "${times[@]}" | stats)"
}

echo
echo "fleet API benchmark: $N units, profile $PROFILE, $(nproc) CPUs, etcd $(etcd --version | head -1 | awk '{print $3}')"
rate() { awk -v n="$N" -v t="$1" 'BEGIN { printf "%.0f", n / (t / 1000) }'; }
printf '%-40s %s ms (%s units/s)\n' "ours: submit $N units" "$submit_ms" "$(rate "$submit_ms")"
printf '%-40s %s ms (%s units/s)\n' "ours: start --no-block $N units" "$start_ms" "$(rate "$start_ms")"
if [ -n "$V1" ]; then
  printf '%-40s %s ms (%s units/s)\n' "fleet v1.0.0: submit $N units" "$v1_submit_ms" "$(rate "$v1_submit_ms")"
  printf '%-40s %s ms (%s units/s)\n' "fleet v1.0.0: start --no-block $N units" "$v1_start_ms" "$(rate "$v1_start_ms")"
fi
total=$("$FLEETCTL" list-unit-files --no-legend | grep -c . || true)
states=$("$FLEETCTL" list-units --no-legend | grep -c . || true)
machines=$("$FLEETCTL" list-machines --no-legend | grep -c . || true)
for who in ours v1; do
  if [ "$who" = ours ]; then client=$FLEETCTL; else [ -n "$V1" ] || continue; client=$V1; fi
  label=$([ "$who" = ours ] && echo "ours" || echo "fleet v1.0.0")
  bench_list "$label: list-unit-files ($total units)" "$((total + 1))" "$client" list-unit-files
  bench_list "$label: list-unit-files --no-legend" "$total" "$client" list-unit-files --no-legend
  bench_list "$label: list-units ($states states)" "$((states + 1))" "$client" list-units
  bench_list "$label: list-machines ($machines machines)" "$((machines + 1))" "$client" list-machines
done
a=$(now_ns); "$FLEETCTL" version >/dev/null; b=$(now_ns)
printf '%-40s %s ms\n' "ours: fleetctl version (process start)" "$(ms "$a" "$b")"
