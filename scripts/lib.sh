# Shared helpers for scripts/*.sh (sourced, not run).

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Everything the build, the tests and the demo use, as "what:package": a path is a file that must exist
# (headers the build reads, daemons the lab starts), a bare word a command that must be on PATH.
FLEET_DEPS=(
  # the build: Rust's linker, a C++ compiler (the fuzz targets build libFuzzer, which Debian's Rust does
  # not pull in), protoc and the .proto files etcd-client's build script compiles, TLS roots for crates.io
  cc:gcc c++:g++ protoc:protobuf-compiler /usr/include/google/protobuf/descriptor.proto:libprotobuf-dev
  /etc/ssl/certs/ca-certificates.crt:ca-certificates git:git
  # etcd (the tests start their own) and the cluster lab (lab/cluster-lab.sh)
  etcd:etcd-server etcdctl:etcd-client /usr/lib/systemd/systemd:systemd systemd-run:systemd
  journalctl:systemd dbus-daemon:dbus unshare:util-linux nsenter:util-linux setpriv:util-linux
  flock:util-linux mount:mount ip:iproute2 ss:iproute2 nft:nftables
  # the tests and scripts: free ports (python3), HTTP probes, SSH verbs, the original fleetctl (xz)
  python3:python3 curl:curl ssh:openssh-client ssh-keygen:openssh-client ssh-agent:openssh-client
  ssh-add:openssh-client /usr/sbin/sshd:openssh-server xz:xz-utils sha256sum:coreutils
  timeout:coreutils pgrep:procps awk:mawk
)

# The dependencies of FLEET_DEPS that are missing, as package names (one per line, sorted, unique).
missing_packages() {
  local pair what pkg
  for pair in "${FLEET_DEPS[@]}"; do
    what=${pair%%:*}; pkg=${pair#*:}
    if [[ $what == /* ]]; then [ -e "$what" ] && continue; else command -v "$what" >/dev/null 2>&1 && continue; fi
    echo "$pkg"
  done | sort -u
}

# Debian's packages of a Rust toolchain recent enough for this workspace (Debian 12 ships rustc 1.63 as
# `rustc`; `rustc-web` and friends follow Firefox's needs: 1.85 in bookworm, newer in its updates).
RUST_PACKAGES=(rustc-web cargo-web rustfmt-web rust-web-clippy)

# apt-get install "$@" without starting the daemons of the packages (etcd-server and openssh-server
# start theirs on install; the tests start their own, in namespaces): a policy-rc.d that says "no".
apt_install() {
  local policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
  fi
  log "installing $*"
  local ok=0
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null || ok=1
  [ -z "$policy" ] || rm -f "$policy"
  return $ok
}

# The minimum Rust version of the workspace (Cargo.toml's rust-version), e.g. 1.80.
rust_version_wanted() { sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -1; }

# Whether version $1 (x.y[.z]) is at least $2.
version_at_least() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

# Install what a fresh Debian machine lacks (as root; without root, say what is missing), then check
# again: fails, naming them, if files or commands are still missing. Also a Rust toolchain: rustup's
# (~/.cargo/bin) when there is one, else Debian's rust-web packages.
ensure_deps() {
  local need
  mapfile -t need < <(missing_packages)
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if ! command -v cargo >/dev/null 2>&1; then need+=("${RUST_PACKAGES[@]}"); fi
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "missing packages: ${need[*]} (run as root, or: apt-get install -y ${need[*]})" >&2; return 1
    fi
    apt_install "${need[@]}" || { echo "apt-get install ${need[*]} failed" >&2; return 1; }
  fi
  mapfile -t need < <(missing_packages)
  if [ ${#need[@]} -gt 0 ]; then
    local pair still=()
    for pair in "${FLEET_DEPS[@]}"; do
      if [[ ${pair%%:*} == /* ]]; then [ -e "${pair%%:*}" ] || still+=("${pair%%:*}")
      else command -v "${pair%%:*}" >/dev/null 2>&1 || still+=("${pair%%:*}"); fi
    done
    echo "still missing after installing: ${still[*]} (packages ${need[*]})" >&2; return 1
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust (rustup, or apt-get install ${RUST_PACKAGES[*]})" >&2; return 1; }
  if command -v rustup >/dev/null 2>&1; then
    local c
    for c in rustfmt clippy; do
      rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
  fi
  local have want
  have=$(rustc --version | awk '{print $2}'); want=$(rust_version_wanted)
  if [ -n "$want" ] && ! version_at_least "$have" "$want"; then
    echo "rustc $have is older than this workspace's rust-version $want (rustup update, or apt-get install ${RUST_PACKAGES[*]})" >&2
    return 1
  fi
  cargo fmt --version >/dev/null 2>&1 || { echo "cargo fmt is missing (rustfmt)" >&2; return 1; }
  cargo clippy --version >/dev/null 2>&1 || { echo "cargo clippy is missing (clippy)" >&2; return 1; }
  rustdoc --version >/dev/null 2>&1 || { echo "rustdoc is missing (rustup's rustc component, or Debian's rustc-web)" >&2; return 1; }
  ensure_fuzz_deps
}

# cargo-fuzz (for scripts/fuzz.sh), built once from crates.io into ~/.cargo/bin and kept there. Its
# version is pinned so that a fresh machine builds the same tool (about 1 minute on 2 cores).
CARGO_FUZZ_VERSION=0.13.2
ensure_fuzz_deps() {
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if cargo fuzz --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    return 0
  fi
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --quiet --version "$CARGO_FUZZ_VERSION" cargo-fuzz
}

# A private etcd on free loopback ports with a temporary data dir under $ETCD_DATA_PARENT (default /tmp;
# /dev/shm takes the disk's fsync out of every write). Sets ETCD_PID, ETCD_DIR, ETCD_ENDPOINT.
# Call stop_etcd (e.g. from a trap) to end it.
start_etcd() {
  local ports
  ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
  set -- $ports
  ETCD_DIR=$(mktemp -d "${ETCD_DATA_PARENT:-/tmp}/fleet-etcd.XXXXXX")
  ETCD_ENDPOINT="http://127.0.0.1:$1"
  etcd --name fleet-test --data-dir "$ETCD_DIR/data" \
    --listen-client-urls "$ETCD_ENDPOINT" --advertise-client-urls "$ETCD_ENDPOINT" \
    --listen-peer-urls "http://127.0.0.1:$2" --initial-advertise-peer-urls "http://127.0.0.1:$2" \
    --initial-cluster "fleet-test=http://127.0.0.1:$2" >"$ETCD_DIR/etcd.log" 2>&1 </dev/null &
  ETCD_PID=$!
  local i
  for i in $(seq 1 100); do
    curl -sf "$ETCD_ENDPOINT/health" >/dev/null 2>&1 && { log "etcd up at $ETCD_ENDPOINT (pid $ETCD_PID)"; return 0; }
    kill -0 "$ETCD_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "etcd did not start; its log:" >&2; cat "$ETCD_DIR/etcd.log" >&2; return 1
}

stop_etcd() {
  if [ -n "${ETCD_PID:-}" ]; then kill "$ETCD_PID" 2>/dev/null || true; wait "$ETCD_PID" 2>/dev/null || true; ETCD_PID=; fi
  if [ -n "${ETCD_DIR:-}" ]; then rm -rf "$ETCD_DIR"; ETCD_DIR=; fi
}
