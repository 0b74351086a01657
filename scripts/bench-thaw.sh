#!/usr/bin/env bash
# How long a whole machine's units run after it is thawed, once its units were taken over while it was
# frozen (docs/safety.md: the one fault no design can bring to zero, because the units resume in the same
# instant as fleet's agent and fence guard). Boots 3 lab machines running fleetd, starts a unit, freezes the
# machine that runs it (cgroup freezer: every process of it, systemd included), waits until the unit runs
# elsewhere, thaws the machine, and reads from its journal (host clock) when the unit's processes were
# killed. Prints each round and min/median/max of thaw -> killed.
#
#   sudo scripts/bench-thaw.sh [ROUNDS]      # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ROUNDS=${1:-5}
export FT_PREFIX=${FT_PREFIX:-fleetthaw}
LAB=lab/cluster-lab.sh
[ "$(id -u)" = 0 ] || { echo "the lab needs root" >&2; exit 1; }
ensure_deps
cargo build --bins --quiet
if [ -d "/dev/shm/fleettest/$FT_PREFIX" ]; then "$LAB" down; fi
# A frozen machine cannot be torn down: thaw every machine first.
trap 'for i in 1 2 3; do "$LAB" thaw "$i" 2>/dev/null || true; done; "$LAB" down >/dev/null 2>&1 || true' EXIT
envfile=$(mktemp /tmp/fleetthaw-env.XXXXXX)
printf 'FLEET_GOSSIP_INSECURE=true\n' >"$envfile"
FT_ENV_FILE="$envfile" FT_BINDS="$PWD/target/debug:/opt/fleet/bin:ro" FT_UNITS="$PWD/lab/fleet.service" \
  "$LAB" up 3 >/dev/null
rm -f "$envfile"
fc() { "$LAB" sh 1 /opt/fleet/bin/fleetctl "$@"; }
for _ in $(seq 1 100); do [ "$(fc list-machines --no-legend 2>/dev/null | wc -l)" = 3 ] && break; sleep 0.1; done

runs_on() { # machines where $1 is active
  for i in 1 2 3; do
    if [ "$("$LAB" sh "$i" systemctl is-active "$1" 2>/dev/null || true)" = active ]; then echo "$i"; fi
  done
}
now_us() { date +%s%6N; }
results=()
for r in $(seq 1 "$ROUNDS"); do
  u="thaw$r.service"
  "$LAB" sh 1 sh -c "printf '[Service]\nExecStart=/bin/sleep 100000\n' > /tmp/$u"
  fc start "/tmp/$u" >/dev/null
  victim=""
  for _ in $(seq 1 100); do victim=$(runs_on "$u" | head -1); [ -n "$victim" ] && break; sleep 0.1; done
  [ -n "$victim" ] || { echo "round $r: $u did not start" >&2; exit 1; }
  "$LAB" freeze "$victim"
  for _ in $(seq 1 300); do
    other=$(runs_on "$u" | grep -v "^$victim\$" | head -1 || true)
    [ -n "$other" ] && break
    sleep 0.1
  done
  [ -n "$other" ] || { "$LAB" thaw "$victim"; echo "round $r: not taken over in 30 s" >&2; exit 1; }
  thawed=$(now_us)
  "$LAB" thaw "$victim"
  killed=""
  for _ in $(seq 1 50); do
    killed=$("$LAB" sh "$victim" journalctl -u "$u" -o json --output-fields=MESSAGE,__REALTIME_TIMESTAMP --no-pager 2>/dev/null \
      | python3 -c 'import json,sys
ts=[int(j["__REALTIME_TIMESTAMP"]) for j in map(json.loads,sys.stdin) if any(k in j.get("MESSAGE","") for k in ("SIGKILL","Deactivated","Stopped","Failed with result"))]
print(min(ts) if ts else "")')
    [ -n "$killed" ] && break
    sleep 0.1
  done
  [ -n "$killed" ] || { echo "round $r: $u never stopped on m$victim" >&2; exit 1; }
  ms=$(python3 -c "print(round(($killed - $thawed)/1000, 1))")
  echo "round $r: m$victim frozen, $u taken over by m$other; killed on m$victim $ms ms after the thaw"
  results+=("$ms")
  fc destroy "$u" >/dev/null
  sleep 4   # the thawed machine renews its lease and comes back before the next round
done
python3 - "${results[@]}" <<'EOF'
import statistics, sys
v = sorted(float(x) for x in sys.argv[1:])
print(f"thaw -> killed over {len(v)} rounds: min {v[0]} ms, median {statistics.median(v)} ms, max {v[-1]} ms")
EOF
