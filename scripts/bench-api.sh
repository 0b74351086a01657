#!/usr/bin/env bash
# End-to-end API benchmark through fleetctl: a private etcd, one fleetd on a unix socket, then
#   - submit N unit files with one `fleetctl submit` (default N=1000),
#   - list them with `fleetctl list-unit-files` (and list-units, list-machines), several runs each.
# Prints wall-clock figures (each includes fleetctl's process start). Goal: listing 1,000 units < 100 ms.
# Everything it starts is stopped and its temporary files removed on exit.
#   scripts/bench-api.sh              # release build, N=1000, 7 listing runs
#   N=5000 RUNS=3 PROFILE=debug scripts/bench-api.sh
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

mkdir "$WORK/units"
for i in $(seq -w 1 "$N"); do
  printf '[Unit]\nDescription=bench unit %s\n\n[Service]\nExecStart=/bin/sh -c "echo %s; sleep 1d"\n' "$i" "$i" \
    >"$WORK/units/bench-$i.service"
done

now_ns() { date +%s%N; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'; }

# Median and min of the numbers on stdin.
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "min %.1f ms, median %.1f ms, max %.1f ms (%d runs)", v[1], v[int((NR + 1) / 2)], v[NR], NR }'; }

cd "$WORK/units"
t0=$(now_ns)
"$FLEETCTL" submit ./*.service >"$WORK/submit.out"
t1=$(now_ns)
cd - >/dev/null
created=$(grep -c ' inactive$' "$WORK/submit.out" || true)
[ "$created" = "$N" ] || { echo "submit created $created of $N units" >&2; exit 1; }
submit_ms=$(ms "$t0" "$t1")

bench_list() { # name, expected line count, command...
  local name=$1 lines=$2; shift 2
  local i a b out times=()
  for i in $(seq 1 "$RUNS"); do
    a=$(now_ns); out=$("$FLEETCTL" "$@"); b=$(now_ns)
    local got; got=$(printf '%s\n' "$out" | grep -c . || true)
    [ "$got" = "$lines" ] || { echo "$name printed $got lines, expected $lines" >&2; exit 1; }
    times+=("$(ms "$a" "$b")")
  done
  printf '%-32s %s\n' "$name" "$(printf '%s\n' "${times[@]}" | stats)"
}

echo
echo "fleet API benchmark: $N units, profile $PROFILE, $(nproc) CPUs, etcd $(etcd --version | head -1 | awk '{print $3}')"
printf '%-32s %s ms (%s units/s)\n' "submit $N units (1 fleetctl)" "$submit_ms" \
  "$(awk -v n="$N" -v t="$submit_ms" 'BEGIN { printf "%.0f", n / (t / 1000) }')"
bench_list "list-unit-files ($N units)" "$((N + 1))" list-unit-files
bench_list "list-unit-files --no-legend" "$N" list-unit-files --no-legend
states=$("$FLEETCTL" list-units --no-legend | grep -c . || true)
bench_list "list-units ($states states)" "$((states + 1))" list-units
machines=$("$FLEETCTL" list-machines --no-legend | grep -c . || true)
bench_list "list-machines ($machines machines)" "$((machines + 1))" list-machines
a=$(now_ns); "$FLEETCTL" version >/dev/null; b=$(now_ns)
printf '%-32s %s ms\n' "fleetctl version (process start)" "$(ms "$a" "$b")"
