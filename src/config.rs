//! fleetd configuration: /etc/fleet/fleet.conf, FLEET_* environment, command-line flags.
//!
//! Every setting is a *key* (`etcd_servers`, `metadata`, ...). A key can be given in three places;
//! the first that has it wins:
//!
//! 1. a command-line flag `--<key>` (dashes or underscores: `--etcd-servers`, `--etcd_servers`),
//! 2. the environment variable `FLEET_<KEY>` (upper case: `FLEET_ETCD_SERVERS`),
//! 3. the configuration file (default `/etc/fleet/fleet.conf`, `--config PATH` to change it),
//!    an INI file of global `key = value` lines,
//!
//! and otherwise the default of [`Config::default`]. Keys of fleet v1 that mean nothing in this
//! design (`disable_engine`, `disable_watches`, ...) are accepted and reported as [`Warning`]s.
//! The full table is in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default path of the configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/fleet/fleet.conf";

/// Where the value of a key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The built-in default.
    Default,
    /// The configuration file at this path.
    File(PathBuf),
    /// The environment variable `FLEET_<KEY>`.
    Env,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env => f.write_str("environment"),
            Source::Flag => f.write_str("command line"),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the configuration file is not `key = value`, a comment or a section header.
    #[error("{path}:{line}: expected `key = value`, found {text:?}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
    },
    /// A key has a value that cannot be used.
    #[error("invalid value {value:?} for {key} (from {origin}): {reason}")]
    InvalidValue {
        /// The key, e.g. `etcd_request_timeout`.
        key: String,
        /// The value as given.
        value: String,
        /// Where the value came from.
        origin: Source,
        /// What is wrong with it.
        reason: String,
    },
}

/// Something accepted but worth telling the operator (logged at WARN by fleetd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(pub String);

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a key is, for the key table.
struct KeyInfo {
    name: &'static str,
    /// `Some(reason)` for fleet v1 keys that are accepted but ignored.
    obsolete: Option<&'static str>,
}

const fn key(name: &'static str) -> KeyInfo {
    KeyInfo {
        name,
        obsolete: None,
    }
}

const fn obsolete(name: &'static str, why: &'static str) -> KeyInfo {
    KeyInfo {
        name,
        obsolete: Some(why),
    }
}

/// Every key fleetd understands (fleet v1 keys first, then this project's).
const KEYS: &[KeyInfo] = &[
    key("etcd_servers"),
    key("etcd_key_prefix"),
    key("etcd_request_timeout"),
    key("etcd_cafile"),
    key("etcd_certfile"),
    key("etcd_keyfile"),
    key("etcd_username"),
    key("etcd_password"),
    key("public_ip"),
    key("metadata"),
    key("agent_ttl"),
    key("engine_reconcile_interval"),
    key("token_limit"),
    obsolete(
        "disable_engine",
        "there is no engine leader: every fleetd schedules",
    ),
    obsolete(
        "disable_watches",
        "fleetd always keeps exactly one etcd watch",
    ),
    key("units_directory"),
    key("systemd_user"),
    key("verbosity"),
    obsolete("enable_grpc", "fleetd has no gRPC engine transport"),
    obsolete(
        "authorized_keys_file",
        "fleetd does not serve ssh; fleetctl uses your ssh",
    ),
    obsolete("verify_units", "unit signing was removed from fleet"),
    obsolete("unit_state_ttl", "unit states travel by gossip, not etcd"),
    key("api_socket"),
    key("api_socket_mode"),
    key("api_tcp"),
    key("api_max_body"),
    key("api_socket_group"),
    key("api_tcp_insecure"),
    key("api_tls_cert_file"),
    key("api_tls_key_file"),
    key("api_client_ca_file"),
    key("api_token_file"),
    key("machine_id"),
    key("machine_id_file"),
    key("gossip_port"),
    key("gossip_listen"),
    key("gossip_seeds"),
    key("gossip_ca_file"),
    key("gossip_cert_file"),
    key("gossip_key_file"),
    key("gossip_insecure"),
    obsolete(
        "takeover_grace",
        "takeovers now wait for proof that the holder stopped (see fence_after)",
    ),
    key("fence_after"),
    key("state_dir"),
    key("runtime_dir"),
];

/// The names of every key fleetd accepts (including the obsolete ones).
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().map(|k| k.name)
}

/// fleetd's configuration. See `docs/configuration.md` for every key.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `etcd_servers`: etcd client URLs.
    pub etcd_servers: Vec<String>,
    /// `etcd_key_prefix`: prefix of every key fleet writes; always ends with `/`.
    pub etcd_key_prefix: String,
    /// `etcd_request_timeout`: deadline of one etcd request.
    pub etcd_request_timeout: Duration,
    /// `etcd_cafile`: CA certificate (PEM) to verify etcd with.
    pub etcd_cafile: Option<PathBuf>,
    /// `etcd_certfile`: client certificate (PEM) presented to etcd.
    pub etcd_certfile: Option<PathBuf>,
    /// `etcd_keyfile`: key (PEM) of `etcd_certfile`.
    pub etcd_keyfile: Option<PathBuf>,
    /// `etcd_username`: etcd user name (with `etcd_password`).
    pub etcd_username: Option<String>,
    /// `etcd_password`: etcd password.
    pub etcd_password: Option<String>,
    /// `public_ip`: the address this machine is reached at; `None` = detect.
    pub public_ip: Option<IpAddr>,
    /// `metadata`: `k=v,k=v` machine metadata.
    pub metadata: BTreeMap<String, String>,
    /// `agent_ttl`: TTL of this machine's etcd lease (claims die with it).
    pub agent_ttl: Duration,
    /// `engine_reconcile_interval`: period of the full reconcile pass.
    pub engine_reconcile_interval: Duration,
    /// `token_limit`: items per page of the HTTP API (1..=65535).
    pub token_limit: u16,
    /// `units_directory`: where unit files are written for systemd.
    pub units_directory: PathBuf,
    /// `systemd_user`: talk to the user's systemd instead of the system one.
    pub systemd_user: bool,
    /// `verbosity`: 0 = info, 1 = debug, 2+ = trace.
    pub verbosity: u8,
    /// `api_socket`: unix socket of the HTTP API; empty = none.
    pub api_socket: Option<PathBuf>,
    /// `api_socket_mode`: permission bits of the API socket (octal).
    pub api_socket_mode: u32,
    /// `api_tcp`: optional TCP address of the HTTP API.
    pub api_tcp: Option<SocketAddr>,
    /// `api_max_body`: largest accepted request body in bytes.
    pub api_max_body: usize,
    /// `api_socket_group`: group (name or GID) given the API socket; `None` = fleetd's group.
    pub api_socket_group: Option<String>,
    /// `api_tcp_insecure`: serve `api_tcp` as plain HTTP without access control (trusted networks).
    pub api_tcp_insecure: bool,
    /// `api_tls_cert_file`: PEM certificate (chain) of the TLS TCP listener.
    pub api_tls_cert_file: Option<PathBuf>,
    /// `api_tls_key_file`: PEM key of `api_tls_cert_file`.
    pub api_tls_key_file: Option<PathBuf>,
    /// `api_client_ca_file`: PEM CA whose client certificates may use the TCP listener.
    pub api_client_ca_file: Option<PathBuf>,
    /// `api_token_file`: file whose content is the bearer token accepted on the TCP listener.
    pub api_token_file: Option<PathBuf>,
    /// `machine_id`: this machine's ID; `None` = read `machine_id_file`.
    pub machine_id: Option<String>,
    /// `machine_id_file`: file holding the machine ID.
    pub machine_id_file: PathBuf,
    /// `gossip_port`: UDP port of the gossip (QUIC) endpoint; peers are reached at `public_ip:port`.
    pub gossip_port: u16,
    /// `gossip_listen`: address to bind (default `0.0.0.0:<gossip_port>`).
    pub gossip_listen: Option<SocketAddr>,
    /// `gossip_seeds`: `ip:port` addresses of peers to join through (etcd bootstrap keys add more).
    pub gossip_seeds: Vec<SocketAddr>,
    /// `gossip_ca_file`: PEM of the cluster CA (mutual TLS between agents).
    pub gossip_ca_file: Option<PathBuf>,
    /// `gossip_cert_file`: PEM of this machine's certificate, signed by the cluster CA.
    pub gossip_cert_file: Option<PathBuf>,
    /// `gossip_key_file`: PEM of this machine's private key.
    pub gossip_key_file: Option<PathBuf>,
    /// `gossip_insecure`: development only: no peer authentication, no secrecy.
    pub gossip_insecure: bool,
    /// `fence_after`: how long this machine keeps its claimed units once neither its etcd lease nor its
    /// view of the cluster vouches for it; every failover timing derives from it (docs/safety.md).
    pub fence_after: Duration,
    /// `state_dir`: where fleetd keeps what must survive its restarts (metadata set through the API).
    pub state_dir: PathBuf,
    /// `runtime_dir`: where fleetd keeps what must survive a restart of fleetd but not of the machine
    /// (its lease, the fence deadline the fence guard reads).
    pub runtime_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            etcd_servers: vec!["http://127.0.0.1:2379".to_string()],
            etcd_key_prefix: "/fleet/".to_string(),
            etcd_request_timeout: Duration::from_secs(1),
            etcd_cafile: None,
            etcd_certfile: None,
            etcd_keyfile: None,
            etcd_username: None,
            etcd_password: None,
            public_ip: None,
            metadata: BTreeMap::new(),
            agent_ttl: Duration::from_secs(30),
            engine_reconcile_interval: Duration::from_secs(2),
            token_limit: 100,
            units_directory: PathBuf::from("/run/fleet/units/"),
            systemd_user: false,
            verbosity: 0,
            api_socket: Some(PathBuf::from("/var/run/fleet.sock")),
            api_socket_mode: 0o660,
            api_tcp: None,
            api_max_body: 1024 * 1024,
            api_socket_group: None,
            api_tcp_insecure: false,
            api_tls_cert_file: None,
            api_tls_key_file: None,
            api_client_ca_file: None,
            api_token_file: None,
            machine_id: None,
            machine_id_file: PathBuf::from("/etc/machine-id"),
            gossip_port: 7479,
            gossip_listen: None,
            gossip_seeds: Vec::new(),
            gossip_ca_file: None,
            gossip_cert_file: None,
            gossip_key_file: None,
            gossip_insecure: false,
            fence_after: Duration::from_millis(500),
            state_dir: PathBuf::from("/var/lib/fleet"),
            runtime_dir: PathBuf::from("/run/fleet"),
        }
    }
}

/// The raw `key -> (value, source)` map before parsing, built layer by layer.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    values: BTreeMap<String, (String, Source)>,
    warnings: Vec<Warning>,
}

impl RawConfig {
    /// Lays the lines of a configuration file over the current values.
    pub fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                let name = line[1..line.len() - 1].trim().to_string();
                self.warnings.push(Warning(format!(
                    "{}:{}: section [{name}] ignored: fleet.conf has only global keys",
                    path.display(),
                    i + 1
                )));
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: line.to_string(),
                });
            };
            let k = k.trim();
            if k.is_empty() {
                return Err(ConfigError::Syntax {
                    path: path.to_path_buf(),
                    line: i + 1,
                    text: line.to_string(),
                });
            }
            let v = unquote(v.trim());
            self.set(k, v, Source::File(path.to_path_buf()));
        }
        Ok(())
    }

    /// Lays `FLEET_<KEY>` variables over the current values (other variables are ignored).
    pub fn apply_env<I, K, V>(&mut self, vars: I)
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        for (k, v) in vars {
            let Some(rest) = k.as_ref().strip_prefix("FLEET_") else {
                continue;
            };
            let name = rest.to_ascii_lowercase();
            // Only known keys: FLEET_* is also used by tests and scripts for other things.
            if known_keys().any(|known| known == name) {
                self.set(&name, v.as_ref().to_string(), Source::Env);
            }
        }
    }

    /// Lays command-line values over the current values.
    pub fn apply_flags<'a, I>(&mut self, flags: I)
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        for (k, v) in flags {
            self.set(k, v.to_string(), Source::Flag);
        }
    }

    fn set(&mut self, key: &str, value: String, source: Source) {
        match KEYS.iter().find(|k| k.name == key) {
            Some(info) => {
                if let Some(why) = info.obsolete {
                    self.warnings.push(Warning(format!(
                        "{key} (from {source}) is accepted but ignored: {why}"
                    )));
                }
            }
            None => self.warnings.push(Warning(format!(
                "unknown key {key} (from {source}) ignored"
            ))),
        }
        self.values.insert(key.to_string(), (value, source));
    }

    /// Parses every value into a [`Config`], returning it with the warnings collected.
    pub fn build(&self) -> Result<(Config, Vec<Warning>), ConfigError> {
        let mut c = Config::default();
        let warnings = self.warnings.clone();
        for (key, (value, source)) in &self.values {
            let bad = |reason: String| ConfigError::InvalidValue {
                key: key.clone(),
                value: value.clone(),
                origin: source.clone(),
                reason,
            };
            let v = value.trim();
            match key.as_str() {
                "etcd_servers" => {
                    let servers: Vec<String> = v
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    if servers.is_empty() {
                        return Err(bad("at least one etcd URL is needed".into()));
                    }
                    for s in &servers {
                        if !(s.starts_with("http://") || s.starts_with("https://")) {
                            return Err(bad(format!("{s:?} is not an http:// or https:// URL")));
                        }
                    }
                    c.etcd_servers = servers;
                }
                "etcd_key_prefix" => c.etcd_key_prefix = normalize_prefix(v).map_err(bad)?,
                "etcd_request_timeout" => {
                    c.etcd_request_timeout = parse_duration(v).map_err(bad)?;
                    if c.etcd_request_timeout.is_zero() {
                        return Err(bad("must be greater than zero".into()));
                    }
                }
                "etcd_cafile" => c.etcd_cafile = non_empty(v).map(PathBuf::from),
                "etcd_certfile" => c.etcd_certfile = non_empty(v).map(PathBuf::from),
                "etcd_keyfile" => c.etcd_keyfile = non_empty(v).map(PathBuf::from),
                "etcd_username" => c.etcd_username = non_empty(v).map(str::to_string),
                "etcd_password" => c.etcd_password = non_empty(v).map(str::to_string),
                "public_ip" => {
                    c.public_ip = match non_empty(v) {
                        None => None,
                        Some(ip) => Some(
                            ip.parse::<IpAddr>()
                                .map_err(|_| bad("not an IPv4 or IPv6 address".into()))?,
                        ),
                    }
                }
                "metadata" => c.metadata = parse_metadata(v).map_err(bad)?,
                "agent_ttl" => {
                    c.agent_ttl = parse_duration(v).map_err(bad)?;
                    if c.agent_ttl < Duration::from_secs(1) {
                        return Err(bad("must be at least 1s".into()));
                    }
                }
                "engine_reconcile_interval" => {
                    c.engine_reconcile_interval = parse_duration(v).map_err(bad)?;
                    if c.engine_reconcile_interval.is_zero() {
                        return Err(bad("must be greater than zero".into()));
                    }
                }
                "token_limit" => {
                    let n: u16 = v
                        .parse()
                        .map_err(|_| bad("expected an integer from 1 to 65535".into()))?;
                    if n == 0 {
                        return Err(bad("expected an integer from 1 to 65535".into()));
                    }
                    c.token_limit = n;
                }
                "disable_engine" | "disable_watches" => {
                    parse_bool(v).map_err(bad)?;
                }
                "units_directory" => {
                    c.units_directory =
                        PathBuf::from(non_empty(v).ok_or_else(|| bad("must not be empty".into()))?)
                }
                "systemd_user" => c.systemd_user = parse_bool(v).map_err(bad)?,
                "verbosity" => {
                    c.verbosity = v
                        .parse()
                        .map_err(|_| bad("expected an integer from 0 to 255".into()))?
                }
                "api_socket" => c.api_socket = non_empty(v).map(PathBuf::from),
                "api_socket_mode" => {
                    let mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                        .map_err(|_| bad("expected octal permission bits like 0660".into()))?;
                    if mode > 0o777 {
                        return Err(bad("expected octal permission bits like 0660".into()));
                    }
                    c.api_socket_mode = mode;
                }
                "api_tcp" => {
                    c.api_tcp = match non_empty(v) {
                        None => None,
                        Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                            bad("expected an IP:port address like 127.0.0.1:49153".into())
                        })?),
                    }
                }
                "api_max_body" => {
                    c.api_max_body = parse_size(v).map_err(bad)?;
                    if c.api_max_body == 0 {
                        return Err(bad("must be greater than zero".into()));
                    }
                }
                "api_socket_group" => {
                    c.api_socket_group = match non_empty(v) {
                        Some(g) if g.contains([':', '\n', ' ']) => {
                            return Err(bad("expected a group name or a numeric GID".into()))
                        }
                        g => g.map(str::to_string),
                    }
                }
                "api_tcp_insecure" => c.api_tcp_insecure = parse_bool(v).map_err(bad)?,
                "api_tls_cert_file" => c.api_tls_cert_file = non_empty(v).map(PathBuf::from),
                "api_tls_key_file" => c.api_tls_key_file = non_empty(v).map(PathBuf::from),
                "api_client_ca_file" => c.api_client_ca_file = non_empty(v).map(PathBuf::from),
                "api_token_file" => c.api_token_file = non_empty(v).map(PathBuf::from),
                "machine_id" => {
                    c.machine_id = match non_empty(v) {
                        None => None,
                        Some(id) => Some(validate_machine_id(id).map_err(bad)?),
                    }
                }
                "machine_id_file" => {
                    c.machine_id_file =
                        PathBuf::from(non_empty(v).ok_or_else(|| bad("must not be empty".into()))?)
                }
                "gossip_port" => {
                    c.gossip_port = v
                        .parse()
                        .map_err(|_| bad("expected a port number from 0 to 65535".into()))?
                }
                "gossip_listen" => {
                    c.gossip_listen = match non_empty(v) {
                        None => None,
                        Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                            bad("expected an IP:port address like 0.0.0.0:7479".into())
                        })?),
                    }
                }
                "gossip_seeds" => {
                    c.gossip_seeds = v
                        .split(',')
                        .filter_map(non_empty)
                        .map(|a| {
                            a.parse::<SocketAddr>().map_err(|_| {
                                bad(format!(
                                    "{a:?} is not an IP:port address like 10.0.0.1:7479"
                                ))
                            })
                        })
                        .collect::<Result<_, _>>()?
                }
                "gossip_ca_file" => c.gossip_ca_file = non_empty(v).map(PathBuf::from),
                "gossip_cert_file" => c.gossip_cert_file = non_empty(v).map(PathBuf::from),
                "gossip_key_file" => c.gossip_key_file = non_empty(v).map(PathBuf::from),
                "gossip_insecure" => c.gossip_insecure = parse_bool(v).map_err(bad)?,
                "fence_after" => {
                    c.fence_after = parse_duration(v).map_err(bad)?;
                    if c.fence_after < Duration::from_millis(100) {
                        return Err(bad("must be at least 100ms".into()));
                    }
                }
                "state_dir" => {
                    c.state_dir =
                        PathBuf::from(non_empty(v).ok_or_else(|| bad("must not be empty".into()))?)
                }
                "runtime_dir" => {
                    c.runtime_dir =
                        PathBuf::from(non_empty(v).ok_or_else(|| bad("must not be empty".into()))?)
                }
                // enable_grpc & co: obsolete, already warned about; unknown keys too.
                _ => {}
            }
        }
        if c.etcd_certfile.is_some() != c.etcd_keyfile.is_some() {
            return Err(ConfigError::InvalidValue {
                key: "etcd_keyfile".into(),
                value: self
                    .values
                    .get("etcd_keyfile")
                    .map(|(v, _)| v.clone())
                    .unwrap_or_default(),
                origin: self
                    .values
                    .get("etcd_keyfile")
                    .or_else(|| self.values.get("etcd_certfile"))
                    .map(|(_, s)| s.clone())
                    .unwrap_or(Source::Default),
                reason: "etcd_certfile and etcd_keyfile must be given together".into(),
            });
        }
        if c.etcd_username.is_some() != c.etcd_password.is_some() {
            return Err(ConfigError::InvalidValue {
                key: "etcd_password".into(),
                value: String::new(),
                origin: self
                    .values
                    .get("etcd_password")
                    .or_else(|| self.values.get("etcd_username"))
                    .map(|(_, s)| s.clone())
                    .unwrap_or(Source::Default),
                reason: "etcd_username and etcd_password must be given together".into(),
            });
        }
        self.check_api_tcp(&c)?;
        Ok((c, warnings))
    }

    /// The TCP listener is TLS with client credentials, or explicitly insecure.
    fn check_api_tcp(&self, c: &Config) -> Result<(), ConfigError> {
        let err = |key: &str, reason: &str| ConfigError::InvalidValue {
            key: key.to_string(),
            value: self
                .values
                .get(key)
                .map(|(v, _)| v.clone())
                .unwrap_or_default(),
            origin: self.source_of(key),
            reason: reason.to_string(),
        };
        let tls = c.api_tls_cert_file.is_some() || c.api_tls_key_file.is_some();
        if c.api_tls_cert_file.is_some() != c.api_tls_key_file.is_some() {
            return Err(err(
                "api_tls_key_file",
                "api_tls_cert_file and api_tls_key_file must be given together",
            ));
        }
        if tls && c.api_tcp_insecure {
            return Err(err(
                "api_tcp_insecure",
                "contradicts api_tls_cert_file: choose TLS or plain HTTP",
            ));
        }
        if tls && c.api_client_ca_file.is_none() && c.api_token_file.is_none() {
            return Err(err(
                "api_tls_cert_file",
                "the TLS listener needs client credentials: set api_client_ca_file and/or api_token_file",
            ));
        }
        if c.api_tcp.is_some() && !tls && !c.api_tcp_insecure {
            return Err(err(
                "api_tcp",
                "the TCP API needs TLS (api_tls_cert_file, api_tls_key_file, and api_client_ca_file \
                 or api_token_file), or api_tcp_insecure=true for plain HTTP on a trusted network",
            ));
        }
        Ok(())
    }

    /// Where the value of `key` comes from.
    pub fn source_of(&self, key: &str) -> Source {
        self.values
            .get(key)
            .map(|(_, s)| s.clone())
            .unwrap_or(Source::Default)
    }
}

impl Config {
    /// Loads the configuration the way fleetd does: the file (`file`, or [`DEFAULT_CONFIG_FILE`]
    /// when it exists), then `env` (`FLEET_*` pairs), then `flags` (`key`, `value`).
    /// An explicitly given file must exist.
    pub fn load<'a, E, K, V, F>(
        file: Option<&Path>,
        env: E,
        flags: F,
    ) -> Result<(Config, Vec<Warning>), ConfigError>
    where
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
        F: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let mut raw = RawConfig::default();
        let (path, required) = match file {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => raw.apply_file(&path, &text)?,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
        raw.apply_env(env);
        raw.apply_flags(flags);
        raw.build()
    }

    /// Human-readable list of the keys whose values differ (`key: old -> new`), for SIGHUP logs.
    /// Passwords are not shown.
    pub fn diff(&self, new: &Config) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! cmp {
            ($field:ident) => {
                if self.$field != new.$field {
                    out.push(format!(
                        "{}: {:?} -> {:?}",
                        stringify!($field),
                        self.$field,
                        new.$field
                    ));
                }
            };
        }
        cmp!(etcd_servers);
        cmp!(etcd_key_prefix);
        cmp!(etcd_request_timeout);
        cmp!(etcd_cafile);
        cmp!(etcd_certfile);
        cmp!(etcd_keyfile);
        cmp!(etcd_username);
        if self.etcd_password != new.etcd_password {
            out.push("etcd_password: changed".to_string());
        }
        cmp!(public_ip);
        cmp!(metadata);
        cmp!(agent_ttl);
        cmp!(engine_reconcile_interval);
        cmp!(token_limit);
        cmp!(units_directory);
        cmp!(systemd_user);
        cmp!(verbosity);
        cmp!(api_socket);
        cmp!(api_socket_mode);
        cmp!(api_tcp);
        cmp!(api_max_body);
        cmp!(api_socket_group);
        cmp!(api_tcp_insecure);
        cmp!(api_tls_cert_file);
        cmp!(api_tls_key_file);
        cmp!(api_client_ca_file);
        cmp!(api_token_file);
        cmp!(machine_id);
        cmp!(machine_id_file);
        cmp!(gossip_port);
        cmp!(gossip_listen);
        cmp!(gossip_seeds);
        cmp!(gossip_ca_file);
        cmp!(gossip_cert_file);
        cmp!(gossip_key_file);
        cmp!(gossip_insecure);
        cmp!(fence_after);
        cmp!(state_dir);
        cmp!(runtime_dir);
        out
    }

    /// This machine's ID: `machine_id`, else the first line of `machine_id_file`.
    pub fn resolve_machine_id(&self) -> Result<String, ConfigError> {
        if let Some(id) = &self.machine_id {
            return Ok(id.clone());
        }
        let text =
            std::fs::read_to_string(&self.machine_id_file).map_err(|source| ConfigError::Read {
                path: self.machine_id_file.clone(),
                source,
            })?;
        let id = text.lines().next().unwrap_or("").trim();
        validate_machine_id(id).map_err(|reason| ConfigError::InvalidValue {
            key: "machine_id_file".into(),
            value: id.to_string(),
            origin: Source::File(self.machine_id_file.clone()),
            reason,
        })
    }
}

/// Help output as fleet's: what it is, its version, then usage and options.
const HELP_TEMPLATE: &str =
    "{about-with-newline}\nVersion: {version}\n\n{usage-heading} {usage}\n\n{all-args}{after-help}";

/// Command-line flags of fleetd. Every configuration key is a flag (`--etcd-servers` or
/// `--etcd_servers`); values are parsed exactly like file and environment values.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "fleetd",
    version,
    about = "fleetd: the fleet agent (schedules units, drives systemd, serves the HTTP API)",
    help_template = HELP_TEMPLATE,
    after_help = "Every key can also be set in the configuration file or as FLEET_<KEY> in the \
                  environment; flags win over the environment, which wins over the file."
)]
pub struct FleetdArgs {
    /// Configuration file [default: /etc/fleet/fleet.conf, if it exists]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// etcd client URLs, comma-separated
    #[arg(long, alias = "etcd_servers", value_name = "URLS")]
    pub etcd_servers: Option<String>,
    /// Prefix of every etcd key fleet uses
    #[arg(long, alias = "etcd_key_prefix", value_name = "PREFIX")]
    pub etcd_key_prefix: Option<String>,
    /// Deadline of one etcd request (seconds, or a duration like 1500ms)
    #[arg(long, alias = "etcd_request_timeout", value_name = "DURATION")]
    pub etcd_request_timeout: Option<String>,
    /// CA certificate to verify etcd with (PEM)
    #[arg(long, alias = "etcd_cafile", value_name = "PATH")]
    pub etcd_cafile: Option<String>,
    /// Client certificate for etcd (PEM)
    #[arg(long, alias = "etcd_certfile", value_name = "PATH")]
    pub etcd_certfile: Option<String>,
    /// Key of the client certificate (PEM)
    #[arg(long, alias = "etcd_keyfile", value_name = "PATH")]
    pub etcd_keyfile: Option<String>,
    /// etcd user name
    #[arg(long, alias = "etcd_username", value_name = "USER")]
    pub etcd_username: Option<String>,
    /// etcd password
    #[arg(long, alias = "etcd_password", value_name = "PASSWORD")]
    pub etcd_password: Option<String>,
    /// Address other machines reach this one at
    #[arg(long, alias = "public_ip", value_name = "IP")]
    pub public_ip: Option<String>,
    /// Machine metadata, k=v,k=v
    #[arg(long, value_name = "K=V,...")]
    pub metadata: Option<String>,
    /// TTL of this machine's etcd lease
    #[arg(long, alias = "agent_ttl", value_name = "DURATION")]
    pub agent_ttl: Option<String>,
    /// Period of the full reconcile pass
    #[arg(long, alias = "engine_reconcile_interval", value_name = "DURATION")]
    pub engine_reconcile_interval: Option<String>,
    /// Items per page of the HTTP API
    #[arg(long, alias = "token_limit", value_name = "N")]
    pub token_limit: Option<String>,
    /// Accepted for fleet compatibility; ignored
    #[arg(long, alias = "disable_engine", value_name = "BOOL")]
    pub disable_engine: Option<String>,
    /// Accepted for fleet compatibility; ignored
    #[arg(long, alias = "disable_watches", value_name = "BOOL")]
    pub disable_watches: Option<String>,
    /// Where unit files are written for systemd
    #[arg(long, alias = "units_directory", value_name = "PATH")]
    pub units_directory: Option<String>,
    /// Use the user's systemd instance
    #[arg(long, alias = "systemd_user", value_name = "BOOL")]
    pub systemd_user: Option<String>,
    /// Log verbosity (0 info, 1 debug, 2 trace)
    #[arg(long, value_name = "N")]
    pub verbosity: Option<String>,
    /// Unix socket of the HTTP API ("" for none)
    #[arg(long, alias = "api_socket", value_name = "PATH")]
    pub api_socket: Option<String>,
    /// Permission bits of the API socket (octal)
    #[arg(long, alias = "api_socket_mode", value_name = "MODE")]
    pub api_socket_mode: Option<String>,
    /// Also serve the HTTP API on this TCP address
    #[arg(long, alias = "api_tcp", value_name = "ADDR")]
    pub api_tcp: Option<String>,
    /// Largest accepted request body in bytes (suffixes K, M allowed)
    #[arg(long, alias = "api_max_body", value_name = "BYTES")]
    pub api_max_body: Option<String>,
    /// Group (name or GID) of the API socket
    #[arg(long, alias = "api_socket_group", value_name = "GROUP")]
    pub api_socket_group: Option<String>,
    /// Serve api_tcp as plain HTTP without access control (trusted networks only)
    #[arg(long, alias = "api_tcp_insecure", value_name = "BOOL")]
    pub api_tcp_insecure: Option<String>,
    /// PEM certificate of the TLS API listener
    #[arg(long, alias = "api_tls_cert_file", value_name = "PATH")]
    pub api_tls_cert_file: Option<String>,
    /// PEM key of the TLS API listener
    #[arg(long, alias = "api_tls_key_file", value_name = "PATH")]
    pub api_tls_key_file: Option<String>,
    /// PEM CA whose client certificates may use the TCP API
    #[arg(long, alias = "api_client_ca_file", value_name = "PATH")]
    pub api_client_ca_file: Option<String>,
    /// File holding the bearer token accepted on the TCP API
    #[arg(long, alias = "api_token_file", value_name = "PATH")]
    pub api_token_file: Option<String>,
    /// This machine's ID (default: read machine_id_file)
    #[arg(long, alias = "machine_id", value_name = "ID")]
    pub machine_id: Option<String>,
    /// File holding the machine ID
    #[arg(long, alias = "machine_id_file", value_name = "PATH")]
    pub machine_id_file: Option<String>,
    /// UDP port of the gossip endpoint (default 7479)
    #[arg(long, alias = "gossip_port", value_name = "PORT")]
    pub gossip_port: Option<String>,
    /// Address the gossip endpoint binds (default 0.0.0.0:<gossip_port>)
    #[arg(long, alias = "gossip_listen", value_name = "ADDR")]
    pub gossip_listen: Option<String>,
    /// Gossip peers to join through (IP:port,...)
    #[arg(long, alias = "gossip_seeds", value_name = "ADDRS")]
    pub gossip_seeds: Option<String>,
    /// PEM file of the cluster CA for gossip mutual TLS
    #[arg(long, alias = "gossip_ca_file", value_name = "PATH")]
    pub gossip_ca_file: Option<String>,
    /// PEM file of this machine's gossip certificate
    #[arg(long, alias = "gossip_cert_file", value_name = "PATH")]
    pub gossip_cert_file: Option<String>,
    /// PEM file of this machine's gossip key
    #[arg(long, alias = "gossip_key_file", value_name = "PATH")]
    pub gossip_key_file: Option<String>,
    /// Development only: gossip without authentication or encryption secrecy
    #[arg(long, alias = "gossip_insecure", value_name = "BOOL")]
    pub gossip_insecure: Option<String>,
    /// How long units keep running once nothing vouches for this machine (default 500ms)
    #[arg(long, alias = "fence_after", value_name = "DURATION")]
    pub fence_after: Option<String>,
    /// Directory for state that survives restarts (default /var/lib/fleet)
    #[arg(long, alias = "state_dir", value_name = "PATH")]
    pub state_dir: Option<String>,
    /// Directory for state that survives fleetd restarts, not reboots (default /run/fleet)
    #[arg(long, alias = "runtime_dir", value_name = "PATH")]
    pub runtime_dir: Option<String>,
}

impl FleetdArgs {
    /// The configuration keys given on the command line, as `(key, value)`.
    pub fn overrides(&self) -> Vec<(&'static str, &str)> {
        let pairs: [(&'static str, &Option<String>); 40] = [
            ("etcd_servers", &self.etcd_servers),
            ("etcd_key_prefix", &self.etcd_key_prefix),
            ("etcd_request_timeout", &self.etcd_request_timeout),
            ("etcd_cafile", &self.etcd_cafile),
            ("etcd_certfile", &self.etcd_certfile),
            ("etcd_keyfile", &self.etcd_keyfile),
            ("etcd_username", &self.etcd_username),
            ("etcd_password", &self.etcd_password),
            ("public_ip", &self.public_ip),
            ("metadata", &self.metadata),
            ("agent_ttl", &self.agent_ttl),
            ("engine_reconcile_interval", &self.engine_reconcile_interval),
            ("token_limit", &self.token_limit),
            ("disable_engine", &self.disable_engine),
            ("disable_watches", &self.disable_watches),
            ("units_directory", &self.units_directory),
            ("systemd_user", &self.systemd_user),
            ("verbosity", &self.verbosity),
            ("api_socket", &self.api_socket),
            ("api_socket_mode", &self.api_socket_mode),
            ("api_tcp", &self.api_tcp),
            ("api_max_body", &self.api_max_body),
            ("api_socket_group", &self.api_socket_group),
            ("api_tcp_insecure", &self.api_tcp_insecure),
            ("api_tls_cert_file", &self.api_tls_cert_file),
            ("api_tls_key_file", &self.api_tls_key_file),
            ("api_client_ca_file", &self.api_client_ca_file),
            ("api_token_file", &self.api_token_file),
            ("machine_id", &self.machine_id),
            ("machine_id_file", &self.machine_id_file),
            ("gossip_port", &self.gossip_port),
            ("gossip_listen", &self.gossip_listen),
            ("gossip_seeds", &self.gossip_seeds),
            ("gossip_ca_file", &self.gossip_ca_file),
            ("gossip_cert_file", &self.gossip_cert_file),
            ("gossip_key_file", &self.gossip_key_file),
            ("gossip_insecure", &self.gossip_insecure),
            ("fence_after", &self.fence_after),
            ("state_dir", &self.state_dir),
            ("runtime_dir", &self.runtime_dir),
        ];
        pairs
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .collect()
    }

    /// Loads the configuration with these flags and the process environment.
    pub fn load(&self) -> Result<(Config, Vec<Warning>), ConfigError> {
        Config::load(self.config.as_deref(), std::env::vars(), self.overrides())
    }
}

fn non_empty(v: &str) -> Option<&str> {
    let v = v.trim();
    (!v.is_empty()).then_some(v)
}

fn unquote(v: &str) -> String {
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// Normalises an etcd key prefix: starts and ends with `/`.
pub fn normalize_prefix(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.is_empty() {
        return Err("must not be empty".into());
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace".into());
    }
    let mut p = String::new();
    if !v.starts_with('/') {
        p.push('/');
    }
    p.push_str(v);
    if !p.ends_with('/') {
        p.push('/');
    }
    Ok(p)
}

/// Parses a boolean the way Go's `strconv.ParseBool` does, plus yes/no/on/off.
pub fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "n" | "off" => Ok(false),
        _ => Err("expected a boolean (true/false, 1/0, yes/no, on/off)".into()),
    }
}

/// Parses a duration: plain (fractional) seconds like `1.5`, or a Go duration like `1m30s`,
/// `500ms` (units ns, us, µs, ms, s, m, h).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let err = || "expected seconds (like 1.5) or a duration (like 500ms, 30s, 1m30s)".to_string();
    let v = v.trim();
    if v.is_empty() {
        return Err(err());
    }
    if let Ok(secs) = v.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(err());
        }
        return Duration::try_from_secs_f64(secs).map_err(|_| err());
    }
    let mut total = 0f64;
    let mut rest = v;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let n: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += n * mult;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| err())
}

/// Parses a byte size: an integer with an optional K/KiB/M/MiB suffix (powers of 1024).
pub fn parse_size(v: &str) -> Result<usize, String> {
    let err = || "expected a byte count like 1048576, 512K or 1M".to_string();
    let v = v.trim();
    let (num, mult) = if let Some(n) = v
        .strip_suffix("KiB")
        .or_else(|| v.strip_suffix('K'))
        .or_else(|| v.strip_suffix('k'))
    {
        (n, 1024)
    } else if let Some(n) = v.strip_suffix("MiB").or_else(|| v.strip_suffix('M')) {
        (n, 1024 * 1024)
    } else {
        (v, 1)
    };
    let n: usize = num.trim().parse().map_err(|_| err())?;
    n.checked_mul(mult).ok_or_else(err)
}

/// Whether `key` is a valid metadata key (`[A-Za-z0-9_.-]+`).
pub fn valid_metadata_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses `k=v,k=v` metadata. Keys must match `[A-Za-z0-9_.-]+`, values must not be empty.
pub fn parse_metadata(v: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in v.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((k, val)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let (k, val) = (k.trim(), val.trim());
        if !valid_metadata_key(k) {
            return Err(format!(
                "metadata key {k:?} must match [A-Za-z0-9_.-]+ (in {pair:?})"
            ));
        }
        if val.is_empty() {
            return Err(format!("metadata key {k:?} has an empty value"));
        }
        out.insert(k.to_string(), val.to_string());
    }
    Ok(out)
}

/// Checks a machine ID with [`fleet_sched::MachineId::parse`] (ASCII letters and digits).
pub fn validate_machine_id(id: &str) -> Result<String, String> {
    fleet_sched::MachineId::parse(id.trim())
        .map(|m| m.as_str().to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(
        file: &str,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let mut raw = RawConfig::default();
        raw.apply_file(Path::new("/test/fleet.conf"), file)?;
        raw.apply_env(env.iter().copied());
        raw.apply_flags(flags.iter().copied());
        raw.build().map(|(c, _)| c)
    }

    #[test]
    fn defaults_when_nothing_is_given() {
        let c = build("", &[], &[]).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.etcd_key_prefix, "/fleet/");
        assert_eq!(c.token_limit, 100);
        assert_eq!(c.api_max_body, 1 << 20);
        assert_eq!(
            c.api_socket.as_deref(),
            Some(Path::new("/var/run/fleet.sock"))
        );
    }

    #[test]
    fn flags_win_over_env_which_wins_over_file() {
        let file = "verbosity=1\ntoken_limit=10\nmetadata=\"a=1,b=2\"\n";
        let env = [("FLEET_TOKEN_LIMIT", "20"), ("FLEET_VERBOSITY", "2")];
        let flags = [("verbosity", "3")];
        let c = build(file, &env, &flags).unwrap();
        assert_eq!(c.verbosity, 3);
        assert_eq!(c.token_limit, 20);
        assert_eq!(c.metadata.get("a").map(String::as_str), Some("1"));
        assert_eq!(c.metadata.get("b").map(String::as_str), Some("2"));
    }

    #[test]
    fn file_accepts_comments_quotes_and_spaces() {
        let file = "# comment\n; other\n\n etcd_servers = \"http://a:1, http://b:2\" \n\
                    etcd_key_prefix=/_coreos.com/fleet\npublic_ip='10.0.0.1'\n";
        let c = build(file, &[], &[]).unwrap();
        assert_eq!(c.etcd_servers, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.etcd_key_prefix, "/_coreos.com/fleet/");
        assert_eq!(c.public_ip, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_line_without_equals_is_a_syntax_error_with_its_line() {
        let err = build("verbosity=1\nnonsense\n", &[], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(":2:") && msg.contains("nonsense"), "{msg}");
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_source() {
        let err = build("", &[("FLEET_ETCD_REQUEST_TIMEOUT", "soon")], &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("etcd_request_timeout")
                && msg.contains("\"soon\"")
                && msg.contains("environment"),
            "{msg}"
        );
        let err = build("token_limit=0", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("token_limit"), "{err}");
        let err = build("", &[], &[("metadata", "region")]).unwrap_err();
        assert!(err.to_string().contains("metadata") && err.to_string().contains("command line"));
        let err = build("public_ip=1.2.3", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("public_ip"));
        let err = build("etcd_servers=127.0.0.1:2379", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("etcd_servers"));
        let err = build("systemd_user=maybe", &[], &[]).unwrap_err();
        assert!(err.to_string().contains("systemd_user"));
    }

    #[test]
    fn obsolete_and_unknown_keys_are_accepted_with_warnings() {
        let mut raw = RawConfig::default();
        raw.apply_file(
            Path::new("/f"),
            "disable_engine=true\ndisable_watches=1\nenable_grpc=false\nfrobnicate=3\n",
        )
        .unwrap();
        let (c, warnings) = raw.build().unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.0.contains("disable_engine")));
        assert!(warnings
            .iter()
            .any(|w| w.0.contains("unknown key frobnicate")));
    }

    #[test]
    fn unknown_fleet_env_vars_are_ignored() {
        let mut raw = RawConfig::default();
        raw.apply_env([("FLEET_TEST_ETCD", "http://x"), ("PATH", "/bin")]);
        let (c, warnings) = raw.build().unwrap();
        assert_eq!(c, Config::default());
        assert!(warnings.is_empty());
    }

    #[test]
    fn durations_accept_seconds_and_go_syntax() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes_accept_suffixes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("2K").unwrap(), 2048);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn metadata_keys_are_checked() {
        assert_eq!(parse_metadata(" a = 1 , b.c-d_e=x ").unwrap().len(), 2);
        assert!(parse_metadata("a b=1").is_err());
        assert!(parse_metadata("a=").is_err());
        assert!(parse_metadata("").unwrap().is_empty());
    }

    #[test]
    fn prefix_is_normalised() {
        assert_eq!(normalize_prefix("fleet").unwrap(), "/fleet/");
        assert_eq!(normalize_prefix("/a/b/").unwrap(), "/a/b/");
        assert!(normalize_prefix("").is_err());
    }

    #[test]
    fn cert_and_key_go_together() {
        assert!(build("etcd_certfile=/c.pem", &[], &[]).is_err());
        assert!(build("etcd_certfile=/c.pem\netcd_keyfile=/k.pem", &[], &[]).is_ok());
        assert!(build("etcd_username=root", &[], &[]).is_err());
    }

    #[test]
    fn socket_settings_parse() {
        let c = build(
            "api_socket=\napi_tcp=127.0.0.1:4002\napi_socket_mode=0600\napi_tcp_insecure=1",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.api_socket, None);
        assert_eq!(c.api_tcp, Some("127.0.0.1:4002".parse().unwrap()));
        assert_eq!(c.api_socket_mode, 0o600);
        assert!(build("api_socket_mode=999", &[], &[]).is_err());
        assert!(build("api_socket_group=a:b", &[], &[]).is_err());
        assert_eq!(
            build("api_socket_group=fleet", &[], &[])
                .unwrap()
                .api_socket_group
                .as_deref(),
            Some("fleet")
        );
    }

    #[test]
    fn the_tcp_api_is_tls_with_credentials_or_explicitly_insecure() {
        let e = build("api_tcp=127.0.0.1:4002", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("api_tls_cert_file") && e.contains("api_tcp_insecure"),
            "{e}"
        );
        let tls = "api_tcp=127.0.0.1:4002\napi_tls_cert_file=/c\napi_tls_key_file=/k\n";
        let e = build(tls, &[], &[]).unwrap_err().to_string();
        assert!(e.contains("api_token_file"), "{e}");
        let c = build(&format!("{tls}api_token_file=/t"), &[], &[]).unwrap();
        assert_eq!(c.api_token_file.as_deref(), Some(Path::new("/t")));
        assert!(build(&format!("{tls}api_client_ca_file=/ca"), &[], &[]).is_ok());
        assert!(build(
            &format!("{tls}api_token_file=/t\napi_tcp_insecure=1"),
            &[],
            &[]
        )
        .is_err());
        assert!(build("api_tls_cert_file=/c\napi_token_file=/t", &[], &[]).is_err());
    }

    #[test]
    fn machine_id_comes_from_key_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machine-id");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let c = build(&format!("machine_id_file={}", path.display()), &[], &[]).unwrap();
        assert_eq!(
            c.resolve_machine_id().unwrap(),
            "0123456789abcdef0123456789abcdef"
        );
        let c = build("machine_id=abc", &[], &[]).unwrap();
        assert_eq!(c.resolve_machine_id().unwrap(), "abc");
        assert!(build("machine_id=a/b", &[], &[]).is_err());
    }

    #[test]
    fn explicit_missing_config_file_is_an_error() {
        let empty: [(&str, &str); 0] = [];
        let err =
            Config::load(Some(Path::new("/nonexistent/fleet.conf")), empty, empty).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/fleet.conf"));
    }

    #[test]
    fn diff_lists_changed_keys_without_passwords() {
        let a = Config::default();
        let mut b = a.clone();
        b.verbosity = 2;
        b.etcd_password = Some("secret".into());
        let d = a.diff(&b);
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|l| !l.contains("secret")));
    }

    #[test]
    fn every_key_is_a_flag() {
        let args = FleetdArgs::default();
        assert!(args.overrides().is_empty());
        let names: Vec<&str> = known_keys().collect();
        for k in [
            "etcd_servers",
            "api_max_body",
            "machine_id_file",
            "disable_watches",
        ] {
            assert!(names.contains(&k));
        }
        use clap::Parser;
        let args = FleetdArgs::try_parse_from([
            "fleetd",
            "--etcd_servers",
            "http://x:1",
            "--token-limit",
            "5",
        ])
        .unwrap();
        assert_eq!(
            args.overrides(),
            vec![("etcd_servers", "http://x:1"), ("token_limit", "5")]
        );
    }
}
