#!/usr/bin/env bash
# Chaos benchmark in the cluster lab (root): 5 machines running fleetd with its default settings and
# 30 units; a seeded nemesis injects random faults (machine crash, fleetd killed with and without
# restart, fleetd stopped, machine frozen, link cut, traffic dropped, packet loss, etcd unreachable,
# partitions) and heals each after a random time, while a checker samples every machine's systemd
# every 100 ms; at the end the machines' journals give the exact overlap of any two copies of a unit,
# the longest time a unit ran nowhere, and failover p50/p99. See benches/chaos/main.rs.
#   scripts/bench-chaos.sh                           # 2 minutes, seed from the clock (printed)
#   scripts/bench-chaos.sh --duration 30m --seed 7   # options go to the bench (--max-faults, --units,
#                                                    # --out DIR, --plan)
# Builds the release binaries the lab machines run first. The lab is torn down when the bench ends
# (also on a panic or SIGINT/SIGTERM); if the bench process is killed outright, the trap below reaps
# its cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

if [ "$(id -u)" != 0 ]; then
  echo "bench-chaos: skipped: the cluster lab needs root (namespaces, mounts, cgroups)" >&2
  exit 0
fi
trap 'bash lab/cluster-lab.sh reap || true' EXIT

log "cargo build --release --bins"
cargo build --quiet --release --bins
log "cargo bench --bench chaos -- $*"
cargo bench --quiet --bench chaos -- "$@"
