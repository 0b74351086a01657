#!/usr/bin/env bash
# Cluster-lab benchmarks (root: they boot emulated machines running real systemd and etcd):
#   benches/agent.rs     start latency (fleetctl start -> systemd active) and fleetd memory, 1 machine
#   benches/failover.rs  crash and partition failover on 5 machines (with the exact overlap of two
#                        copies from the machines' journals), gossip/etcd bytes per machine
#   (the chaos benchmark, benches/chaos/, has its own script: scripts/bench-chaos.sh)
# Builds the release binaries the lab machines run (target/release/fleetd, fleetctl), then runs each
# bench and prints every figure. Knobs are environment variables, see the benches' headers, e.g.
#   scripts/bench-lab.sh                         # both benches (as root)
#   scripts/bench-lab.sh failover                # one of them
#   BENCH_ROUNDS=30 scripts/bench-lab.sh failover
# Each bench tears its lab down when it ends (a bench killed before that leaves it to the next
# lab run's reaper, or `FT_PREFIX=<prefix> lab/cluster-lab.sh down`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(agent failover)
if [ "$(id -u)" != 0 ]; then
  echo "bench-lab: skipped: the cluster lab needs root (namespaces, mounts, cgroups)" >&2
  exit 0
fi

log "cargo build --release --bins"
cargo build --quiet --release --bins
for b in "${benches[@]}"; do
  log "cargo bench --bench $b"
  cargo bench --quiet --bench "$b"
done
