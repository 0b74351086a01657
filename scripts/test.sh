#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting, lints and the API docs, starts a private etcd,
# runs every test (lab tests need root: they boot emulated machines with a real systemd), stops etcd, then
# runs each fuzz target for 20 s (scripts/fuzz.sh).
# As root for the lab tests (prefix sudo when you are not root; without root they are skipped):
#   scripts/test.sh                  # everything
#   scripts/test.sh -p fleet-sched   # extra arguments go to `cargo test`
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_deps
trap stop_etcd EXIT INT TERM

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Each package alone, as a user's `cargo build -p <package>` builds it: without the features that the
# workspace's tests switch on (a re-export used only by `testing` code once warned there and nowhere else).
log "cargo clippy, each package alone"
for package in $(cargo tree --workspace --depth 0 --prefix none | awk 'NF { print $1 }' | sort -u); do
  cargo clippy -p "$package" --quiet -- -D warnings
done
# The API docs build without a warning (a link to an item that moved or is private is a warning).
log "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet

# The original fleetctl v1.0.0 (tests/lab_interop.rs, tests/interop/): its tests skip without it, so say
# so here, where a reader of CI's log looks (a checkout without ../shared beside it passed them in 0.02 s).
interop=""
for d in "$PWD/../shared" "${FLEET_SHARED:-}"; do
  if [ -n "$d" ] && [ -f "$d/interop/fleetctl-v1.0.0.xz" ]; then interop="$d/interop"; break; fi
done
if [ -n "$interop" ]; then
  log "the original fleetctl v1.0.0: $interop"
else
  log "WARNING: the original fleetctl v1.0.0 is not in ../shared/interop nor \$FLEET_SHARED/interop: its interop tests will be SKIPPED"
fi

start_etcd
export FLEET_TEST_ETCD="$ETCD_ENDPOINT"
log "cargo test"
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?
# Coverage-guided fuzzing, each target for a short bounded time (FLEET_FUZZ_SECS, default 20 s; 0 skips);
# only for the whole suite (no extra arguments).
if [ $# -eq 0 ] && [ "${FLEET_FUZZ_SECS:-20}" != 0 ]; then
  log "fuzz"
  scripts/fuzz.sh "${FLEET_FUZZ_SECS:-20}" || status=1
fi
exit $status
