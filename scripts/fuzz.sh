#!/usr/bin/env bash
# Coverage-guided fuzzing of fleet's parsers (fuzz/, libFuzzer through cargo-fuzz, stable toolchain with
# RUSTC_BOOTSTRAP=1 and no sanitizer: no nightly toolchain can be downloaded here).
#   scripts/fuzz.sh                 # every target for 20 s each, one per core at a time (what scripts/test.sh runs)
#   scripts/fuzz.sh 600 unit_file   # one target for 10 minutes
# Fails on a crash, a panic or a time-out (an input that takes more than 10 s); the input that did it is in
# fuzz/artifacts/<target>/. Corpora grow in fuzz/corpus/<target>/ (not committed), so later runs start
# from what earlier ones found.
#
# Targets: unit_file, unit_options, unit_name, requirements, api_bodies (unit files, names and API bodies),
# gossip_node, gossip_streams, relay (what peers send: gossip datagrams and sync messages into a node, the
# transport's stream framing, the agents' relay requests and responses). Add one as
# fuzz/fuzz_targets/<name>.rs and a [[bin]] in fuzz/Cargo.toml; every target `cargo fuzz list` shows runs here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

secs=${1:-20}
shift || true
ensure_fuzz_deps
cd fuzz
export RUSTC_BOOTSTRAP=1
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
log "fuzz: building ${#targets[@]} targets"
cargo fuzz build --sanitizer none -O
# One target per core at a time (each still gets its whole ${secs}s on a core of its own): on the 2-core CI
# machine the 9 targets took 136 s instead of 194 s one after the other (2026-12-08, otherwise idle).
jobs=$(nproc)
mkdir -p target
run_target() {
  local t=$1
  mkdir -p "corpus/$t"
  # -timeout: an input slower than 10 s is a failure (catches super-linear parsing); -rss_limit_mb: 2 GiB.
  # A dictionary (fuzz/dicts/<target>.dict) gives it the tokens it cannot guess (suffixes, keys): without
  # sanitizers, libFuzzer does not see string comparisons.
  local dict=()
  [ -f "dicts/$t.dict" ] && dict=(-dict="dicts/$t.dict")
  # Targets with seed inputs (the gossip ones: messages recorded from a real exchange between two nodes)
  # write them into their corpus at start when FLEET_FUZZ_SEEDS names it; the others ignore it.
  if FLEET_FUZZ_SEEDS="$PWD/corpus/$t" cargo fuzz run --sanitizer none -O "$t" -- -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
       "${dict[@]}" -print_final_stats=1 >"target/fuzz-$t.log" 2>&1; then
    echo ok >"target/fuzz-$t.status"
  else
    echo failed >"target/fuzz-$t.status"
  fi
}
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  log "fuzz: $t for ${secs}s"
  rm -f "target/fuzz-$t.status"
  run_target "$t" &
done
wait
failed=()
for t in "${targets[@]}"; do
  if [ "$(cat "target/fuzz-$t.status" 2>/dev/null)" != ok ]; then
    failed+=("$t")
    tail -40 "target/fuzz-$t.log" >&2
  fi
  grep -E '^#[0-9]+.*DONE|^Done' "target/fuzz-$t.log" | sed "s/^/  $t: /" >&2 || true
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
log "fuzz: ${#targets[@]} targets ran ${secs}s each without a crash"
