//! Every fleetd option, declared once: its doc (the first paragraph is the `--help` summary, the
//! whole doc is its row in `docs/configuration.md`), type, default, parser, and what SIGHUP does
//! with it. Everything else (the [`Config`] struct, the flags, `FLEET_<KEY>`, fleet.conf, the
//! SIGHUP diff, the docs table) is derived from here. Checks between options (a certificate needs
//! its key, ...) are in `RawConfig::build`.
//!
//! To add an option: add an entry below (fleet v1's options first, then this project's), wire it
//! where fleetd uses it (and in `reload` when it is [`Reload::Live`]), then regenerate the docs
//! table: `UPDATE_DOCS=1 cargo test -p fleet --lib config::`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::declare::{options, Meta, Obsolete, Origin, Reload::*};
use super::values::*;

options! {
    /// etcd client URLs, comma-separated, `http://` or `https://`.
    ///
    /// (fleet also listed the etcd 2 port 4001.)
    etcd_servers: Vec<String> {
        default: vec!["http://127.0.0.1:2379".to_string()],
        parse: etcd_urls,
        meta: Meta::v1("URLS", Etcd),
    }
    /// Prefix of every etcd key fleet uses; always ends with `/`.
    ///
    /// fleet v1 used `/_coreos.com/fleet/`; the layouts differ anyway.
    etcd_key_prefix: String {
        default: "/fleet/".to_string(),
        parse: normalize_prefix,
        meta: Meta::v1("PREFIX", Etcd),
    }
    /// Deadline of one etcd request.
    etcd_request_timeout: Duration {
        default: Duration::from_secs(1),
        parse: |v| duration_at_least(v, Duration::ZERO),
        meta: Meta::v1("DURATION", Etcd),
    }
    /// CA certificate (PEM) that signs etcd's certificate.
    etcd_cafile: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::v1("PATH", Etcd),
    }
    /// Client certificate (PEM) presented to etcd.
    ///
    /// Give `etcd_keyfile` with it.
    etcd_certfile: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::v1("PATH", Etcd),
    }
    /// Key (PEM) of `etcd_certfile`.
    ///
    /// Give both or neither.
    etcd_keyfile: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::v1("PATH", Etcd),
    }
    /// etcd user name.
    ///
    /// Give `etcd_password` with it.
    etcd_username: Option<String> {
        default: None,
        parse: optional_string,
        meta: Meta::v1("USER", Etcd),
    }
    /// etcd password.
    ///
    /// Give both `etcd_username` and `etcd_password`, or neither. Never logged.
    etcd_password: Option<String> {
        default: None,
        parse: optional_string,
        meta: Meta::v1("PASSWORD", Etcd).secret(),
    }
    /// The address other machines reach this one at.
    ///
    /// Shown as `primaryIP`. When unset, the address of the interface holding the default route.
    public_ip: Option<IpAddr> {
        default: None,
        parse: |v| optional(v, |ip| ip.parse().map_err(|_| "not an IPv4 or IPv6 address".to_string())),
        meta: Meta::v1("IP", Live).default_doc("detected"),
    }
    /// Machine metadata, `k=v,k=v`.
    ///
    /// Keys match `[A-Za-z0-9_.-]+`, values are not empty.
    metadata: BTreeMap<String, String> {
        default: BTreeMap::new(),
        parse: parse_metadata,
        meta: Meta::v1("K=V,...", Live),
    }
    /// TTL of this machine's etcd lease; its claims die with it.
    ///
    /// Also the longest a machine keeps its units while it cannot reach etcd (with the witnesses'
    /// support; without, `fence_after`), and how long a departed witness keeps its seat
    /// (docs/safety.md). At least `1s`.
    agent_ttl: Duration {
        default: Duration::from_secs(30),
        parse: |v| duration_at_least(v, Duration::from_secs(1)),
        meta: Meta::v1("DURATION", Restart),
    }
    /// Period of the full reconcile pass.
    engine_reconcile_interval: Duration {
        default: Duration::from_secs(2),
        parse: |v| duration_at_least(v, Duration::ZERO),
        meta: Meta::v1("DURATION", Restart),
    }
    /// Items per page of the HTTP API (1..65535).
    token_limit: u16 {
        default: 100,
        parse: |v| integer(v, |n: &u16| *n > 0, "expected an integer from 1 to 65535"),
        meta: Meta::v1("N", Live),
    }
    /// Where unit files are written for systemd.
    units_directory: PathBuf {
        default: PathBuf::from("/run/fleet/units/"),
        parse: required_path,
        meta: Meta::v1("PATH", Restart),
    }
    /// Drive the user's systemd instead of the system one.
    ///
    /// One fleetd per machine drives the system one: it holds `/run/fleet-guard.lock`, and a second
    /// fleetd without this setting refuses to start.
    systemd_user: bool {
        default: false,
        parse: parse_bool,
        meta: Meta::v1("BOOL", Restart),
    }
    /// Log verbosity: `0` info, `1` debug for fleet's own code, `2` trace.
    ///
    /// `RUST_LOG` overrides it.
    verbosity: u8 {
        default: 0,
        parse: |v| integer(v, |_: &u8| true, "expected an integer from 0 to 255"),
        meta: Meta::v1("N", Live),
    }
    /// Unix socket of the HTTP API; empty for none.
    ///
    /// A stale socket file is removed at start; fleetd refuses to start if another server answers
    /// on it, or if the path is not a socket. The file is removed on exit.
    api_socket: Option<PathBuf> {
        default: Some(PathBuf::from("/var/run/fleet.sock")),
        parse: optional_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// Permission bits of the API socket (octal).
    api_socket_mode: u32 {
        default: 0o660,
        parse: octal_mode,
        show: show_octal,
        meta: Meta::ours("MODE", Restart),
    }
    /// Also serve the HTTP API on this `IP:port`.
    ///
    /// TLS with client credentials (`api_tls_cert_file`, `api_tls_key_file`, and
    /// `api_client_ca_file` or `api_token_file`), or plain HTTP only with `api_tcp_insecure=true`.
    /// Without either fleetd refuses to start.
    api_tcp: Option<SocketAddr> {
        default: None,
        parse: |v| optional(v, |a| socket_addr(a, "127.0.0.1:49153")),
        meta: Meta::ours("ADDR", Restart),
    }
    /// Largest accepted request body in bytes (`512K`, `1M` accepted).
    ///
    /// Larger bodies get `413`.
    api_max_body: usize {
        default: 1024 * 1024,
        parse: positive_size,
        meta: Meta::ours("BYTES", Live),
    }
    /// Group (name or GID) given the API socket; none = fleetd's group.
    ///
    /// A name from `/etc/group`, or a GID; the owner stays root. With mode `0660`, root and this
    /// group's members may use the API.
    api_socket_group: Option<String> {
        default: None,
        parse: group,
        meta: Meta::ours("GROUP", Restart),
    }
    /// Serve `api_tcp` as plain HTTP without access control (trusted networks only).
    ///
    /// Anyone who reaches it controls the cluster; logged loudly. Contradicts the TLS keys.
    api_tcp_insecure: bool {
        default: false,
        parse: parse_bool,
        meta: Meta::ours("BOOL", Restart),
    }
    /// Certificate (chain, PEM) of the TLS API listener.
    ///
    /// Give `api_tls_key_file` with it.
    api_tls_cert_file: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// Key (PEM) of `api_tls_cert_file`.
    api_tls_key_file: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// CA (PEM) whose client certificates may use the TCP API.
    api_client_ca_file: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// File whose content is the bearer token accepted on the TCP API.
    ///
    /// Surrounding whitespace is trimmed; requests send `Authorization: Bearer ...`. Read at start.
    api_token_file: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// This machine's ID (ASCII letters and digits); none = read `machine_id_file`.
    machine_id: Option<String> {
        default: None,
        parse: |v| optional(v, validate_machine_id),
        meta: Meta::ours("ID", Restart),
    }
    /// File holding the machine ID (its first line), read when `machine_id` is not set.
    machine_id_file: PathBuf {
        default: PathBuf::from("/etc/machine-id"),
        parse: required_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// UDP port of the gossip endpoint; peers reach it at `public_ip:port`.
    ///
    /// QUIC: SWIM datagrams, state sync and relay streams.
    gossip_port: u16 {
        default: 7479,
        parse: |v| integer(v, |_: &u16| true, "expected a port number from 0 to 65535"),
        meta: Meta::ours("PORT", Restart),
    }
    /// Address the gossip endpoint binds.
    ///
    /// With a wildcard address, peers are told `public_ip:port`.
    gossip_listen: Option<SocketAddr> {
        default: None,
        parse: |v| optional(v, |a| socket_addr(a, "0.0.0.0:7479")),
        meta: Meta::ours("ADDR", Restart).default_doc("`0.0.0.0:<gossip_port>`"),
    }
    /// Gossip peers to join through (`IP:port,...`).
    ///
    /// Not needed in practice: every agent announces its gossip address in etcd (`machines/<id>`,
    /// bound to its lease) and a new agent joins through those.
    gossip_seeds: Vec<SocketAddr> {
        default: Vec::new(),
        parse: socket_addrs,
        meta: Meta::ours("ADDRS", Restart),
    }
    /// PEM of the cluster CA (mutual TLS between agents).
    ///
    /// Give `gossip_ca_file`, `gossip_cert_file` and `gossip_key_file` together. A peer without a
    /// certificate from the CA is refused.
    gossip_ca_file: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// PEM of this machine's gossip certificate, signed by the cluster CA.
    gossip_cert_file: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// PEM of this machine's gossip private key.
    gossip_key_file: Option<PathBuf> {
        default: None,
        parse: optional_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// Development only: gossip without peer authentication or secrecy.
    ///
    /// Logged loudly at start. Without it, or the three gossip TLS files, fleetd refuses to start.
    gossip_insecure: bool {
        default: false,
        parse: parse_bool,
        meta: Meta::ours("BOOL", Restart),
    }
    /// How long gossip remembers a machine it declared down before forgetting it.
    ///
    /// A forgotten machine's address is still retried now and then (docs/gossip.md, reconnect), so
    /// a partition that lasts longer merges back all the same; a machine that returns with a new
    /// life (a restart) is recognised at once either way. Lower it to keep long-dead machines out of
    /// memberships and digests sooner. At least `5s` (about twice gossip's p99 detection time at
    /// 32 machines, 2.9 s): a machine must have had time to be declared down everywhere before
    /// anyone forgets it.
    gossip_remove_down_after: Duration {
        default: Duration::from_secs(600),
        parse: |v| duration_at_least(v, MIN_REMOVE_DOWN_AFTER),
        meta: Meta::ours("DURATION", Restart),
    }
    /// How long units keep running once nothing vouches for this machine.
    ///
    /// The one setting that trades failover speed against tolerance of network blips
    /// (docs/safety.md). Gossip never declares a machine down that was silent (frozen, cut off,
    /// starved) for less than this: a suspicion lasts at least `fence_after + 150ms` less the
    /// 400 ms probe period, and up to `1.5·fence_after` until other machines confirm it
    /// (docs/gossip.md). A machine that can neither confirm its etcd lease nor get enough support
    /// from the witness committee kills its claimed units this long after its last confirmation;
    /// the lease is renewed every `fence_after/3`, a witness's support lasts `4·fence_after`; a
    /// machine taking a dead machine's units over waits for the down verdict and until the holder
    /// is proven stopped: its last lease renewal + `1.01·fence_after + 100ms`. A crashed machine's
    /// units therefore start elsewhere about `fence_after + 0.8s` after the crash on 5 machines, more
    /// under load (docs/benchmarks.md, "Choosing fence_after"; the default was 1s until 2026-12-07, and
    /// again for a few hours of that day, until the gossip core's joins no longer left a machine unknown).
    /// Raise it on networks with long blips (failover slows by the same amount), lower it only with
    /// fast etcd and machines that are never starved of CPU (below the default it gains little: the
    /// wait for the first probe of the dead machine stays): a restarted fleetd must renew its lease
    /// within it; at least `100ms`, well below `agent_ttl`, and the same on every machine.
    fence_after: Duration {
        default: fleet_decide::Timing::DEFAULT_FENCE_AFTER,
        parse: |v| duration_at_least(v, Duration::from_millis(100)),
        meta: Meta::ours("DURATION", Restart),
    }
    /// Directory for what must survive fleetd's restarts.
    ///
    /// `metadata.json`: the metadata set through `PATCH /fleet/v1/machines`.
    state_dir: PathBuf {
        default: PathBuf::from("/var/lib/fleet"),
        parse: required_path,
        meta: Meta::ours("PATH", Restart),
    }
    /// Directory for what must survive a restart of fleetd but not of the machine.
    ///
    /// `lease.json` (the lease and its recent confirmations: a restarted fleetd keeps renewing the
    /// same lease, so its units stay), `seats.json` (the witness committee's seats and
    /// departures), `witness.json` (this machine's promises as a witness), and `fence`, the fence
    /// deadline the fence guard reads (docs/safety.md). fleetd holds `fleetd.lock` there while it
    /// runs: a second fleetd given the same directory refuses to start.
    runtime_dir: PathBuf {
        default: PathBuf::from("/run/fleet"),
        parse: required_path,
        meta: Meta::ours("PATH", Restart),
    }
}

/// The shortest `gossip_remove_down_after`: well above gossip's detection time (docs/gossip.md: p99
/// 1.7 s at 5 machines, 2.9 s at 32), so that a down machine is declared down everywhere before
/// anyone forgets it.
const MIN_REMOVE_DOWN_AFTER: Duration = Duration::from_secs(5);

fn check_bool(v: &str) -> Result<(), String> {
    parse_bool(v).map(|_| ())
}

/// Keys accepted with a warning and ignored: fleet v1's that mean nothing in this design, and
/// ours that were dropped.
pub(super) const OBSOLETE: &[Obsolete] = &[
    Obsolete {
        name: "disable_engine",
        why: "there is no engine leader: every fleetd schedules",
        origin: Origin::FleetV1,
        check: Some(check_bool),
    },
    Obsolete {
        name: "disable_watches",
        why: "fleetd always keeps exactly one etcd watch",
        origin: Origin::FleetV1,
        check: Some(check_bool),
    },
    Obsolete {
        name: "enable_grpc",
        why: "fleetd has no gRPC engine transport",
        origin: Origin::FleetV1,
        check: None,
    },
    Obsolete {
        name: "authorized_keys_file",
        why: "fleetd does not serve ssh; fleetctl uses your ssh",
        origin: Origin::FleetV1,
        check: None,
    },
    Obsolete {
        name: "verify_units",
        why: "unit signing was removed from fleet",
        origin: Origin::FleetV1,
        check: None,
    },
    Obsolete {
        name: "unit_state_ttl",
        why: "unit states travel by gossip, not etcd",
        origin: Origin::FleetV1,
        check: None,
    },
    Obsolete {
        name: "takeover_grace",
        why: "takeovers now wait for proof that the holder stopped (see fence_after)",
        origin: Origin::Fleet,
        check: None,
    },
];
