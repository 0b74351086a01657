//! The etcd registry: unit files by hash, desired states, claims (layout: `docs/etcd-layout.md`).
//!
//! [`Registry::start`] spawns one background task that connects to etcd, reads the prefix once
//! and keeps ONE watch on it, applying every event to an in-memory mirror. Reads ([`Registry::units`],
//! [`Registry::unit`], [`Registry::claims`]) are answered from the mirror. Writes are etcd
//! transactions with compares (concurrent unit writes share one, each with its own compares and
//! result: `merge.rs`); after a write at revision R the writer waits until the mirror has
//! applied R, so a fleetd always reads its own writes. While the connection or the watch is broken
//! every operation fails with [`RegistryError::Unavailable`] and the task reconnects with capped
//! exponential backoff, then re-reads and re-watches.
//!
//! Architecture invariant: nothing outside this module talks to etcd about units, and nothing here
//! knows HTTP.

mod agent_ops;
mod diagnose;
mod keys;
pub mod lease;
mod merge;
mod mirror;
mod session;
mod writes;

use session::{random_u64, run};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use fleet_sched::{DesiredState, MachineId, UnitFile, UnitHash, UnitName};
use tokio::sync::watch;

pub use agent_ops::{Announced, ClaimResult, ClaimWrite, CLAIMS_PER_TXN};
pub use keys::{ClaimRecord, HandoffRecord, KeyKind, Keys, MachineRecord, UnitRecord};
pub use mirror::{
    unparsable_values_total, Claim, Damage, FreeClaim, Machine, Unit, UNKNOWN_HOLDER,
};
use mirror::{Change, Mirror};

use crate::config::Config;

/// How many times a write is retried when one of its compares fails because of a concurrent change.
const MAX_ATTEMPTS: usize = 16;
/// Largest etcd response accepted (a page of the full read holds up to `READ_PAGE` unit files).
const MAX_MESSAGE: usize = 512 * 1024 * 1024;
/// Keys per page of the full read (all pages are read at one revision).
const READ_PAGE: i64 = 1000;
/// etcd's default `--max-request-bytes` (1.5 MiB): the largest request it accepts.
pub const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// What a transaction costs beyond its keys and values (headers, compares, framing), counted
/// generously so that the check fires before etcd's does.
const TXN_OVERHEAD: usize = 4096;

/// Why a registry operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// etcd cannot be reached (or the watch is broken); nothing was written. Retry later.
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// `create_unit` found a unit of that name; nothing was written.
    #[error("unit {0} already exists")]
    AlreadyExists(UnitName),
    /// The unit does not exist; nothing was written.
    #[error("unit {0} does not exist")]
    NotFound(UnitName),
    /// The unit kept changing under concurrent writers; nothing was written.
    #[error("unit {0} changed concurrently {MAX_ATTEMPTS} times; giving up")]
    Conflict(UnitName),
    /// etcd refused the request for another reason (permissions, bad request); nothing was written.
    #[error("etcd error: {0}")]
    Etcd(String),
    /// etcd raised its NOSPACE alarm (its database reached `--quota-backend-bytes`): it refuses every
    /// write until an operator compacts, defragments and disarms the alarm. Reads still work.
    #[error("etcd is out of space (NOSPACE alarm: {0}); compact and defragment etcd, then `etcdctl alarm disarm`")]
    NoSpace(String),
    /// The write would exceed etcd's request size limit; nothing was sent.
    #[error("{0}")]
    TooLarge(String),
    /// The TLS files of the configuration could not be read.
    #[error("cannot read {path}: {reason}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
}

/// Connection settings of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryOptions {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix (normalised to end with `/`).
    pub prefix: String,
    /// Deadline of one etcd request.
    pub request_timeout: Duration,
    /// CA certificate (PEM) for `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub cert_key_files: Option<(PathBuf, PathBuf)>,
    /// User name and password.
    pub user: Option<(String, String)>,
    /// First reconnect delay; doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// HTTP/2 keep-alive interval (and timeout) that detects a dead etcd connection.
    pub keep_alive: Duration,
    /// When the watch has been silent this long, the registry asks the etcd member for a progress
    /// notification; no answer within `request_timeout` moves it to the next endpoint.
    pub probe_interval: Duration,
    /// The largest request etcd accepts (its `--max-request-bytes`): larger unit writes are refused
    /// with [`RegistryError::TooLarge`] before they are sent.
    pub max_request_bytes: usize,
}

impl RegistryOptions {
    /// Options for `endpoints` and `prefix` with default timeouts and no TLS or user.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> RegistryOptions {
        RegistryOptions {
            endpoints,
            prefix: Keys::new(prefix).prefix().to_string(),
            request_timeout: Duration::from_secs(1),
            ca_file: None,
            cert_key_files: None,
            user: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            keep_alive: Duration::from_secs(3),
            probe_interval: Duration::from_secs(1),
            max_request_bytes: ETCD_MAX_REQUEST_BYTES,
        }
    }

    /// Options from fleetd's configuration (`etcd_*` keys).
    pub fn from_config(c: &Config) -> RegistryOptions {
        let mut o = RegistryOptions::new(c.etcd_servers.clone(), &c.etcd_key_prefix);
        o.request_timeout = c.etcd_request_timeout;
        o.ca_file = c.etcd_cafile.clone();
        o.cert_key_files = c.etcd_certfile.clone().zip(c.etcd_keyfile.clone());
        o.user = c.etcd_username.clone().zip(c.etcd_password.clone());
        o
    }

    /// The etcd-client options (reads the TLS files).
    fn connect_options(&self) -> Result<ConnectOptions, RegistryError> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(self.request_timeout)
            .with_keep_alive(self.keep_alive, self.keep_alive)
            .with_keep_alive_while_idle(true)
            // A member without a leader refuses requests and cancels our streams at once instead
            // of serving stale data or hanging: the registry then moves to the next endpoint.
            .with_require_leader(true)
            // Simple tokens expire (5 min idle) and vanish when the member restarts.
            .with_auto_token_refresh(true);
        if let Some((u, p)) = &self.user {
            o = o.with_user(u.clone(), p.clone());
        }
        if self.ca_file.is_some() || self.cert_key_files.is_some() {
            let read = |p: &PathBuf| {
                std::fs::read(p).map_err(|e| RegistryError::Tls {
                    path: p.clone(),
                    reason: e.to_string(),
                })
            };
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let Some((cert, key)) = &self.cert_key_files {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }

    /// Checks that the TLS files can be read (fleetd calls this at start to fail early).
    pub fn check(&self) -> Result<(), RegistryError> {
        self.connect_options().map(|_| ())
    }
}

/// What subscribers of [`Registry::subscribe`] see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryStatus {
    /// `true` while connected and watching: the mirror is current.
    pub available: bool,
    /// The etcd revision the mirror has applied (increases on every change under the prefix).
    pub revision: i64,
    /// Every change under the prefix up to this revision is in the mirror (`>= revision`: a progress
    /// notification of the watch can prove that nothing changed under the prefix since). The agent's
    /// lease confirmations count only up to it (docs/safety.md).
    pub synced: i64,
    /// Why etcd is unavailable (the last error), when it is.
    pub error: Option<String>,
}

/// How the registry's sessions went since it started (for tests, benchmarks and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Sessions that read the whole prefix (the first one, after a compaction, a new prefix).
    pub full_reads: u64,
    /// Sessions that caught the mirror up with what changed while away (a delta read).
    pub delta_reads: u64,
    /// Delta reads that also listed the key names (because keys had been deleted meanwhile).
    pub delta_listings: u64,
    /// Times a failed session moved to the next endpoint.
    pub endpoint_switches: u64,
    /// Watches canceled because etcd had compacted the revisions they still needed.
    pub compactions: u64,
    /// Unit writes (create, replace, desired state, destroy) sent to etcd, and the transactions that
    /// carried them (concurrent writes share one: `merge.rs`).
    pub unit_writes: u64,
    /// See `unit_writes`.
    pub unit_write_txns: u64,
}

struct Shared {
    /// Connection settings and the key layout; replaced by [`Registry::reconfigure`].
    config: RwLock<(RegistryOptions, Keys)>,
    /// Wakes the task to drop the session and reconnect with the new settings.
    reconnect: tokio::sync::Notify,
    mirror: RwLock<Mirror>,
    client: RwLock<Option<Client>>,
    status: watch::Sender<RegistryStatus>,
    /// Which endpoint sessions use (modulo their number); advanced when one fails.
    endpoint: AtomicUsize,
    /// The endpoint [`Registry::connect_client`] handed out last (`usize::MAX`: none yet).
    side_endpoint: AtomicUsize,
    /// A request failed as if the endpoint were bad: the session checks it at once.
    suspect: tokio::sync::Notify,
    /// The revision the agent wants the mirror proven synced to ([`Registry::want_synced`]).
    want_synced: std::sync::atomic::AtomicI64,
    /// Wakes the session to ask the watch for a progress notification.
    progress_wanted: tokio::sync::Notify,
    /// The lease keeper was answered again after a loss: a session not set up starts afresh now.
    etcd_back: tokio::sync::Notify,
    full_reads: AtomicU64,
    delta_reads: AtomicU64,
    delta_listings: AtomicU64,
    endpoint_switches: AtomicU64,
    compactions: AtomicU64,
    /// Unit writes waiting for the next transaction.
    merger: merge::Merger,
    unit_writes: AtomicU64,
    unit_write_txns: AtomicU64,
}

impl Shared {
    fn opts(&self) -> RegistryOptions {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// The endpoint the current (or next) session uses.
    fn endpoint_in_use(&self) -> String {
        let c = self.config.read().unwrap_or_else(|e| e.into_inner());
        let eps = &c.0.endpoints;
        if eps.is_empty() {
            return String::new();
        }
        eps[self.endpoint.load(Ordering::Relaxed) % eps.len()].clone()
    }

    fn keys(&self) -> Keys {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
}

struct Handle {
    shutdown: watch::Sender<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A handle on the etcd registry; clones share one connection, one watch and one mirror.
/// The background task stops when the last clone is dropped.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
    _handle: Arc<Handle>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("prefix", &self.shared.keys().prefix())
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Registry {
    /// Starts the registry task (connect, read, watch, reconnect) on the current tokio runtime
    /// and returns at once; operations fail with `Unavailable` until etcd has been reached.
    pub fn start(opts: RegistryOptions) -> Registry {
        let (status, _) = watch::channel(RegistryStatus {
            available: false,
            revision: 0,
            synced: 0,
            error: Some("not connected yet".into()),
        });
        let shared = Arc::new(Shared {
            config: RwLock::new((opts.clone(), Keys::new(&opts.prefix))),
            reconnect: tokio::sync::Notify::new(),
            mirror: RwLock::new(Mirror::default()),
            client: RwLock::new(None),
            status,
            endpoint: AtomicUsize::new(random_u64() as usize),
            side_endpoint: AtomicUsize::new(usize::MAX),
            suspect: tokio::sync::Notify::new(),
            want_synced: std::sync::atomic::AtomicI64::new(0),
            progress_wanted: tokio::sync::Notify::new(),
            etcd_back: tokio::sync::Notify::new(),
            full_reads: AtomicU64::new(0),
            delta_reads: AtomicU64::new(0),
            delta_listings: AtomicU64::new(0),
            endpoint_switches: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            merger: merge::Merger::default(),
            unit_writes: AtomicU64::new(0),
            unit_write_txns: AtomicU64::new(0),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        tokio::spawn(run(shared.clone(), shutdown_rx));
        Registry {
            shared,
            _handle: Arc::new(Handle { shutdown }),
        }
    }

    /// The key layout in use.
    pub fn keys(&self) -> Keys {
        self.shared.keys()
    }

    /// Switches to new connection settings (endpoints, prefix, TLS, user, timeouts): the registry
    /// becomes unavailable, drops its connection and reconnects with `opts` at once.
    pub fn reconfigure(&self, opts: RegistryOptions) {
        {
            let mut c = self
                .shared
                .config
                .write()
                .unwrap_or_else(|e| e.into_inner());
            c.1 = Keys::new(&opts.prefix);
            c.0 = opts;
        }
        *self
            .shared
            .client
            .write()
            .unwrap_or_else(|e| e.into_inner()) = None;
        self.shared.status.send_modify(|s| {
            s.available = false;
            s.error = Some("reconnecting with new settings".into());
        });
        self.shared.reconnect.notify_one();
    }

    /// The etcd endpoint this registry uses now (it moves to the next one when it fails).
    pub fn endpoint(&self) -> String {
        self.shared.endpoint_in_use()
    }

    /// Counters of the sessions so far.
    pub fn stats(&self) -> RegistryStats {
        let s = &self.shared;
        RegistryStats {
            full_reads: s.full_reads.load(Ordering::Relaxed),
            delta_reads: s.delta_reads.load(Ordering::Relaxed),
            delta_listings: s.delta_listings.load(Ordering::Relaxed),
            endpoint_switches: s.endpoint_switches.load(Ordering::Relaxed),
            compactions: s.compactions.load(Ordering::Relaxed),
            unit_writes: s.unit_writes.load(Ordering::Relaxed),
            unit_write_txns: s.unit_write_txns.load(Ordering::Relaxed),
        }
    }

    /// The current status.
    pub fn status(&self) -> RegistryStatus {
        self.shared.status.borrow().clone()
    }

    /// Change notifications: the receiver is marked changed whenever the mirror applies new
    /// events or availability changes. Read the new state with [`Registry::units`] & co.
    pub fn subscribe(&self) -> watch::Receiver<RegistryStatus> {
        self.shared.status.subscribe()
    }

    /// Waits until the registry is available (at most `timeout`).
    pub async fn wait_available(&self, timeout: Duration) -> Result<(), RegistryError> {
        let mut rx = self.subscribe();
        let r = tokio::time::timeout(timeout, rx.wait_for(|s| s.available)).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            _ => Err(self.unavailable()),
        }
    }

    /// A clone of the etcd client of the current connection (for leases and claims).
    pub fn etcd_client(&self) -> Result<Client, RegistryError> {
        self.check_available()?;
        self.shared
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| self.unavailable())
    }

    /// A new etcd client with the current settings, independent of the watch session (the lease keeper
    /// keeps its own connection, so a broken watch never delays a keep-alive).
    /// `timeout` bounds the attempt (short, so that a retry sends a fresh SYN soon after a network
    /// comes back instead of waiting for TCP's own retransmission).
    ///
    /// The connection goes to ONE endpoint (etcd-client would balance over all of them and keep
    /// sending to a member without quorum): the watch session's the first time, the next one after it
    /// on every later call (a caller connects again because the previous connection failed). When the
    /// endpoint that failed is the session's, the session checks it at once.
    pub async fn connect_client(&self, timeout: Duration) -> Result<Client, RegistryError> {
        let opts = self.shared.opts();
        let n = opts.endpoints.len().max(1);
        let session = self.shared.endpoint.load(Ordering::Relaxed) % n;
        let last = self.shared.side_endpoint.load(Ordering::Relaxed);
        let idx = if last == usize::MAX {
            session
        } else {
            if last % n == session {
                self.shared.suspect.notify_one();
            }
            (last + 1) % n
        };
        self.shared.side_endpoint.store(idx, Ordering::Relaxed);
        let endpoint = opts.endpoints.get(idx).cloned().unwrap_or_default();
        let copts = opts.connect_options()?.with_connect_timeout(timeout);
        match tokio::time::timeout(timeout, Client::connect([endpoint], Some(copts))).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(classify(e)),
            Err(_) => Err(RegistryError::Unavailable(format!(
                "connecting to etcd timed out after {timeout:?}"
            ))),
        }
    }

    /// Asks the watch to prove the mirror synced up to `revision` (a lease confirmation's): it requests
    /// a progress notification, and [`RegistryStatus::synced`] follows.
    pub fn want_synced(&self, revision: i64) {
        let prev = self
            .shared
            .want_synced
            .fetch_max(revision, Ordering::Relaxed);
        if revision > prev || self.shared.status.borrow().synced < revision {
            self.shared.progress_wanted.notify_one();
        }
    }

    /// etcd answered again after a loss (the lease keeper's keep-alive, on a connection of its own):
    /// a session waiting out its backoff, or one still being set up (its connection may have begun
    /// while the network was down), starts afresh at once. Wakes only a session waiting now.
    ///
    /// The endpoint [`Registry::connect_client`] handed out last (the keeper's connection, most
    /// likely the one that answered) becomes the session's: the members it would otherwise try in turn
    /// may include the one that failed (frozen, cut off), whose attempt costs a request timeout.
    pub fn etcd_answers_again(&self) {
        let side = self.shared.side_endpoint.load(Ordering::Relaxed);
        if side != usize::MAX && !self.shared.status.borrow().available {
            let n = self.shared.opts().endpoints.len().max(1);
            let before = self.shared.endpoint.swap(side % n, Ordering::Relaxed);
            if before % n != side % n {
                self.shared
                    .endpoint_switches
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.shared.etcd_back.notify_waiters();
    }

    fn unavailable(&self) -> RegistryError {
        let s = self.shared.status.borrow();
        RegistryError::Unavailable(s.error.clone().unwrap_or_else(|| "not connected".into()))
    }

    /// `Ok` while etcd is reachable and the mirror current, else `Unavailable`.
    pub fn check_available(&self) -> Result<(), RegistryError> {
        if self.shared.status.borrow().available {
            Ok(())
        } else {
            Err(self.unavailable())
        }
    }

    fn mirror(&self) -> Result<RwLockReadGuard<'_, Mirror>, RegistryError> {
        self.check_available()?;
        Ok(self.shared.mirror.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Every unit (with its content), sorted by name.
    pub fn units(&self) -> Result<Vec<Unit>, RegistryError> {
        Ok(self.mirror()?.units())
    }

    /// The unit `name`, if it exists.
    pub fn unit(&self, name: &UnitName) -> Result<Option<Unit>, RegistryError> {
        Ok(self.mirror()?.unit(name))
    }

    /// Every placement claim, by unit name.
    pub fn claims(&self) -> Result<BTreeMap<UnitName, Claim>, RegistryError> {
        Ok(self.mirror()?.claims())
    }

    /// The claim of unit `name`, if any.
    pub fn claim(&self, name: &UnitName) -> Result<Option<Claim>, RegistryError> {
        Ok(self.mirror()?.claim(name))
    }

    /// Keys whose value in etcd does not parse (or claims bound to no lease), by key.
    pub fn damage(&self) -> Result<BTreeMap<String, Damage>, RegistryError> {
        Ok(self.mirror()?.damage().clone())
    }

    /// The content stored under `hash`, if any.
    pub fn unit_file(&self, hash: &UnitHash) -> Result<Option<Arc<UnitFile>>, RegistryError> {
        Ok(self.mirror()?.files.get(hash).map(|f| f.file.clone()))
    }

    /// Units, claims and the revision they were read at, in one consistent view.
    pub fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let m = self.mirror()?;
        Ok(Snapshot {
            revision: m.revision,
            units: m.units(),
            claims: m.claims(),
            free_claims: m.free_claims.clone(),
            machines: m.machines.clone(),
            restarting: m.restarting.clone(),
        })
    }
}

/// A consistent view of the registry at one revision.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The etcd revision of this view.
    pub revision: i64,
    /// Every unit with content, sorted by name.
    pub units: Vec<Unit>,
    /// Every claim (a damaged one as its last good value: see [`Claim::damaged`]).
    pub claims: BTreeMap<UnitName, Claim>,
    /// Claim keys that bind nobody (no lease, never seen bound): the units count as unclaimed.
    pub free_claims: BTreeMap<UnitName, FreeClaim>,
    /// Every announced (live, lease-bound) machine.
    pub machines: BTreeMap<MachineId, Machine>,
    /// Machines whose agent is restarting and keeps its units (until its old lease expires).
    pub restarting: std::collections::BTreeSet<MachineId>,
}

pub(super) fn classify(e: etcd_client::Error) -> RegistryError {
    use etcd_client::Error as E;
    use tonic::Code;
    match &e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::EndpointError(_) => {
            RegistryError::Unavailable(e.to_string())
        }
        E::GRpcStatus(s) if s.message().contains("database space exceeded") => {
            RegistryError::NoSpace(s.message().to_string())
        }
        E::GRpcStatus(s) if s.message().contains("request is too large") => {
            RegistryError::TooLarge(format!("{} (etcd's --max-request-bytes)", s.message()))
        }
        E::GRpcStatus(s) => match s.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown
            | Code::Aborted
            | Code::ResourceExhausted => RegistryError::Unavailable(s.message().to_string()),
            _ => RegistryError::Etcd(s.message().to_string()),
        },
        _ => RegistryError::Etcd(e.to_string()),
    }
}
