# Shared helpers for scripts/*.sh (sourced, not run).

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Install what a fresh Debian machine lacks: apt packages (as root) and the Rust components we use.
ensure_deps() {
  local need=() cmd pkg
  for pair in etcd:etcd-server etcdctl:etcd-client protoc:protobuf-compiler nft:nftables ip:iproute2 \
              nsenter:util-linux curl:curl dbus-daemon:dbus /usr/lib/systemd/systemd:systemd \
              python3:python3 ssh:openssh-client /usr/sbin/sshd:openssh-server xz:xz-utils; do
    cmd=${pair%%:*}; pkg=${pair#*:}
    if [[ $cmd == /* ]]; then [ -x "$cmd" ] && continue; else command -v "$cmd" >/dev/null 2>&1 && continue; fi
    need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "missing packages: ${need[*]} (run as root, or: apt-get install -y ${need[*]})" >&2; return 1
    fi
    log "installing ${need[*]}"
    # Packages like etcd-server and openssh-server start their daemon on install: not on this host (the
    # tests start their own etcd and sshd, in namespaces). A policy-rc.d that says "no" prevents it.
    local policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      policy=/usr/sbin/policy-rc.d
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || { [ -z "$policy" ] || rm -f "$policy"; return 1; }
    [ -z "$policy" ] || rm -f "$policy"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null 2>&1 || { echo "cargo not found: install Rust with rustup" >&2; return 1; }
  if command -v rustup >/dev/null 2>&1; then
    for c in rustfmt clippy; do
      rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
  fi
}

# A private etcd on free loopback ports with a temporary data dir. Sets ETCD_PID, ETCD_DIR, ETCD_ENDPOINT.
# Call stop_etcd (e.g. from a trap) to end it.
start_etcd() {
  local ports
  ports=$(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))')
  set -- $ports
  ETCD_DIR=$(mktemp -d /tmp/fleet-etcd.XXXXXX)
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
