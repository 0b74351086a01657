//! The etcd registry: unit files by hash, desired states, claims (layout: `docs/etcd-layout.md`).
//!
//! [`Registry::start`] spawns one background task that connects to etcd, reads the prefix once
//! and keeps ONE watch on it, applying every event to an in-memory mirror. Reads ([`Registry::units`],
//! [`Registry::unit`], [`Registry::claims`]) are answered from the mirror. Writes are single etcd
//! transactions with compares; after a write at revision R the writer waits until the mirror has
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
mod mirror;

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

pub use agent_ops::{Announced, ClaimWrite};
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
    full_reads: AtomicU64,
    delta_reads: AtomicU64,
    delta_listings: AtomicU64,
    endpoint_switches: AtomicU64,
    compactions: AtomicU64,
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

/// The planned edit of a unit record.
enum RecordOp<'a> {
    Replace(&'a UnitFile, Option<DesiredState>),
    SetState(DesiredState),
    Destroy,
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
            full_reads: AtomicU64::new(0),
            delta_reads: AtomicU64::new(0),
            delta_listings: AtomicU64::new(0),
            endpoint_switches: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
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

    /// Refuses a unit write whose transaction would exceed etcd's request limit.
    fn check_size(&self, name: &UnitName, file: &UnitFile) -> Result<(), RegistryError> {
        let keys = self.shared.keys();
        let text = file.serialize().len();
        let size = text + keys.unit_file(&file.hash()).len() + 2 * keys.unit(name).len() + 512;
        let limit = self.shared.opts().max_request_bytes;
        if size + TXN_OVERHEAD > limit {
            return Err(RegistryError::TooLarge(format!(
                "unit {name}: its file is {text} bytes; with its record that exceeds etcd's request limit of {limit} bytes (etcd's --max-request-bytes)"
            )));
        }
        Ok(())
    }

    /// Creates unit `name` with `file` and `state` in one transaction (content + record).
    /// Fails with `AlreadyExists` (and writes nothing) if a unit of that name exists.
    pub async fn create_unit(
        &self,
        name: &UnitName,
        file: &UnitFile,
        state: DesiredState,
    ) -> Result<(), RegistryError> {
        self.check_available()?;
        self.check_size(name, file)?;
        let keys = &self.shared.keys();
        let rk = keys.unit(name);
        let hash = file.hash();
        let txn = Txn::new()
            .when([Compare::create_revision(rk.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(keys.unit_file(&hash), file.serialize(), None),
                TxnOp::put(rk.clone(), record_json(name, &hash, state), None),
            ])
            .or_else([TxnOp::get(rk, None)]);
        let resp = self.txn(txn).await?;
        if resp.succeeded() {
            self.wait_revision(header_revision(&resp)).await;
            Ok(())
        } else {
            if let Some(rev) = else_max_mod_revision(&resp) {
                self.wait_revision(rev).await;
            }
            Err(RegistryError::AlreadyExists(name.clone()))
        }
    }

    /// Replaces the content of unit `name` with `file`; `state` None keeps its desired state.
    /// The old content is deleted in the same transaction when no other unit uses it.
    pub async fn replace_unit(
        &self,
        name: &UnitName,
        file: &UnitFile,
        state: Option<DesiredState>,
    ) -> Result<(), RegistryError> {
        self.update_record(name, RecordOp::Replace(file, state))
            .await
    }

    /// Sets the desired state of unit `name`.
    pub async fn set_desired_state(
        &self,
        name: &UnitName,
        state: DesiredState,
    ) -> Result<(), RegistryError> {
        self.update_record(name, RecordOp::SetState(state)).await
    }

    /// Destroys unit `name`: deletes its record, and its content when no other unit uses it.
    pub async fn destroy_unit(&self, name: &UnitName) -> Result<(), RegistryError> {
        self.update_record(name, RecordOp::Destroy).await
    }

    async fn update_record(&self, name: &UnitName, op: RecordOp<'_>) -> Result<(), RegistryError> {
        if let RecordOp::Replace(file, _) = &op {
            self.check_size(name, file)?;
        }
        let keys = &self.shared.keys();
        let rk = keys.unit(name);
        for _ in 0..MAX_ATTEMPTS {
            let (txn, old_hash) = {
                let m = self.mirror()?;
                let Some(cur) = m.records.get(name) else {
                    return Err(RegistryError::NotFound(name.clone()));
                };
                let mut compares = vec![Compare::mod_revision(
                    rk.clone(),
                    CompareOp::Equal,
                    cur.mod_revision,
                )];
                let mut ops = Vec::new();
                let new_hash = match &op {
                    RecordOp::Replace(file, state) => {
                        let h = file.hash();
                        ops.push(TxnOp::put(keys.unit_file(&h), file.serialize(), None));
                        ops.push(TxnOp::put(
                            rk.clone(),
                            record_json(name, &h, state.unwrap_or(cur.desired_state)),
                            None,
                        ));
                        Some(h)
                    }
                    RecordOp::SetState(state) => {
                        ops.push(TxnOp::put(
                            rk.clone(),
                            record_json(name, &cur.hash, *state),
                            None,
                        ));
                        Some(cur.hash)
                    }
                    RecordOp::Destroy => {
                        ops.push(TxnOp::delete(rk.clone(), None));
                        None
                    }
                };
                if new_hash != Some(cur.hash) && !m.hash_referenced(&cur.hash, name) {
                    if let Some(f) = m.files.get(&cur.hash) {
                        let fk = keys.unit_file(&cur.hash);
                        compares.push(Compare::mod_revision(
                            fk.clone(),
                            CompareOp::Equal,
                            f.mod_revision,
                        ));
                        ops.push(TxnOp::delete(fk, None));
                    }
                }
                let txn = Txn::new().when(compares).and_then(ops).or_else([
                    TxnOp::get(rk.clone(), None),
                    TxnOp::get(keys.unit_file(&cur.hash), None),
                ]);
                (txn, cur.hash)
            };
            let resp = self.txn(txn).await?;
            if resp.succeeded() {
                self.wait_revision(header_revision(&resp)).await;
                return Ok(());
            }
            // A compare failed: somebody changed the record or the old content. Catch up, retry.
            let record_gone = match resp.op_responses().first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().is_empty(),
                _ => false,
            };
            if record_gone {
                self.wait_mirror(|m| !m.records.contains_key(name)).await;
                return Err(RegistryError::NotFound(name.clone()));
            }
            match else_max_mod_revision(&resp) {
                Some(rev) => self.wait_revision(rev).await,
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            tracing::debug!(unit = %name, hash = %old_hash, "compare failed, retrying");
        }
        Err(RegistryError::Conflict(name.clone()))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, RegistryError> {
        let mut kv = self.etcd_client()?.kv_client();
        let timeout = self.shared.opts().request_timeout;
        let m = crate::metrics::global();
        let op = crate::metrics::EtcdOp::RegistryTxn;
        match tokio::time::timeout(timeout, m.time_etcd(op, kv.txn(txn))).await {
            Err(_) => {
                m.etcd_timeout(op, timeout);
                self.shared.suspect.notify_one();
                Err(RegistryError::Unavailable(format!(
                    "etcd request timed out after {timeout:?}"
                )))
            }
            Ok(Err(e)) => {
                let e = classify(e);
                if let RegistryError::NoSpace(m) = &e {
                    tracing::error!("etcd refused a write: {m} (NOSPACE alarm)");
                }
                if matches!(e, RegistryError::Unavailable(_)) {
                    self.shared.suspect.notify_one();
                }
                Err(e)
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Waits until the mirror has applied `revision` (read-your-writes). Gives up quietly after a
    /// few request timeouts or when the registry becomes unavailable: the write itself is done.
    async fn wait_revision(&self, revision: i64) {
        self.wait_mirror(|m| m.revision >= revision).await
    }

    async fn wait_mirror(&self, pred: impl Fn(&Mirror) -> bool) {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + self.shared.opts().request_timeout * 5;
        loop {
            {
                let status = rx.borrow_and_update();
                if !status.available {
                    return;
                }
                let m = self.shared.mirror.read().unwrap_or_else(|e| e.into_inner());
                if pred(&m) {
                    return;
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    tracing::warn!("the etcd watch did not deliver our own write in time");
                    return;
                }
            }
        }
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

fn record_json(name: &UnitName, hash: &UnitHash, state: DesiredState) -> String {
    serde_json::to_string(&UnitRecord {
        name: name.to_string(),
        hash: hash.to_string(),
        desired_state: state,
    })
    .expect("a unit record serializes")
}

fn header_revision(resp: &TxnResponse) -> i64 {
    resp.header().map(|h| h.revision()).unwrap_or(0)
}

/// The newest `mod_revision` among the keys read by the `or_else` branch.
fn else_max_mod_revision(resp: &TxnResponse) -> Option<i64> {
    resp.op_responses()
        .iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().iter().map(|kv| kv.mod_revision()).max(),
            _ => None,
        })
        .max()
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

/// How a session ended.
struct SessionEnd {
    /// What happened (logged, and shown as the reason of `Unavailable`).
    reason: String,
    /// The endpoint in use is suspect: the next session tries the next one.
    rotate: bool,
}

impl SessionEnd {
    fn endpoint(reason: impl Into<String>) -> SessionEnd {
        SessionEnd {
            reason: reason.into(),
            rotate: true,
        }
    }
}

impl From<String> for SessionEnd {
    fn from(reason: String) -> SessionEnd {
        SessionEnd::endpoint(reason)
    }
}

impl From<&str> for SessionEnd {
    fn from(reason: &str) -> SessionEnd {
        SessionEnd::endpoint(reason)
    }
}

/// A random number (for the first endpoint: agents spread over etcd's members).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// How long the session's member may answer progress requests with a revision below one the cluster is
/// known to have reached before the session moves to another member.
const BEHIND_LIMIT: Duration = Duration::from_millis(300);

/// How often the same reason for not reaching etcd is logged (at WARN or ERROR).
const LOG_AGAIN: Duration = Duration::from_secs(60);

/// Whether `reason` (from [`describe`] or the TLS diagnosis) is about fleetd's etcd settings or
/// etcd's users and roles rather than about etcd being down.
fn is_settings_problem(reason: &str) -> bool {
    [
        "etcd_cafile",
        "etcd_certfile",
        "etcd_username",
        "role must grant",
        "does not speak TLS",
        "use https://",
        "certificate",
    ]
    .iter()
    .any(|w| reason.contains(w))
}

/// The background task: sessions, each pinned to one endpoint, separated by backoff. A session that
/// fails moves to the next endpoint after `backoff_min`; only when a whole round of endpoints failed
/// does the delay grow (doubling up to `backoff_max`).
async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = shared.opts().backoff_min;
    let mut failures = 0usize;
    let mut logged: std::collections::HashMap<String, std::time::Instant> = Default::default();
    loop {
        let mut reached = false;
        let result = tokio::select! {
            r = session(&shared, &mut reached) => r,
            _ = shared.reconnect.notified() => Err(SessionEnd {
                reason: "reconnecting with new settings".into(),
                rotate: false,
            }),
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let end = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        *shared.client.write().unwrap_or_else(|e| e.into_inner()) = None;
        let was_available = shared.status.borrow().available;
        shared.status.send_modify(|s| {
            s.available = false;
            s.error = Some(end.reason.clone());
        });
        let opts = shared.opts();
        let n = opts.endpoints.len().max(1);
        let from = shared.endpoint_in_use();
        if end.rotate && n > 1 {
            shared.endpoint.fetch_add(1, Ordering::Relaxed);
            shared.endpoint_switches.fetch_add(1, Ordering::Relaxed);
        }
        if reached {
            backoff = opts.backoff_min;
            failures = 0;
        }
        failures += 1;
        let delay = if failures < n {
            opts.backoff_min
        } else {
            let d = backoff;
            backoff = (backoff * 2).min(opts.backoff_max);
            d
        };
        let to = shared.endpoint_in_use();
        if was_available {
            tracing::warn!("lost etcd at {from}: {}; reconnecting to {to}", end.reason);
        } else if logged
            .get(&end.reason)
            .is_some_and(|at| at.elapsed() < LOG_AGAIN)
        {
            tracing::debug!(
                "etcd at {from} not usable: {}; trying {to} in {delay:?}",
                end.reason
            );
        } else {
            // Each distinct reason once a minute: a wrong certificate, password or role is an
            // operator's to fix, and retrying will not.
            if is_settings_problem(&end.reason) {
                tracing::error!("cannot use etcd: {}", end.reason);
            } else {
                tracing::warn!("cannot use etcd: {}; retrying", end.reason);
            }
            logged.retain(|_, at| at.elapsed() < LOG_AGAIN);
            logged.insert(end.reason.clone(), std::time::Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.reconnect.notified() => { backoff = opts.backoff_min; failures = 0; }
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

async fn timed<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, f).await {
        Err(_) => Err(format!("{what}: timed out after {timeout:?}")),
        Ok(Err(e)) => Err(format!("{what}: {}", describe(&e))),
        Ok(Ok(v)) => Ok(v),
    }
}

/// An etcd error as a sentence that says what is wrong (passwords, permissions), with the causes
/// gRPC keeps in its source chain (the TLS alert of a refused certificate, a refused connection).
fn describe(e: &etcd_client::Error) -> String {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => {
            let m = s.message();
            match s.code() {
                Code::PermissionDenied => format!(
                    "{m} (the etcd user's role must grant readwrite on fleet's key prefix: see docs/etcd-layout.md)"
                ),
                Code::InvalidArgument if m.contains("authentication failed") => {
                    format!("{m} (check etcd_username and etcd_password)")
                }
                Code::Unauthenticated => format!("{m} (check etcd_username and etcd_password)"),
                Code::FailedPrecondition if m.contains("authentication is not enabled") => format!(
                    "{m} (etcd_username/etcd_password are set but etcd has no users: enable auth in etcd or remove them)"
                ),
                _ => with_sources(m.to_string(), std::error::Error::source(s)),
            }
        }
        other => with_sources(other.to_string(), std::error::Error::source(other)),
    }
}

fn with_sources(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

/// A failure to set a session up, explained: for `https://` endpoints whose failure looks like the
/// connection's, a TLS check of our own names the certificate problem.
async fn explain_setup_failure(endpoint: &str, opts: &RegistryOptions, reason: String) -> String {
    let r = reason.to_ascii_lowercase();
    let connection_like = [
        "transport error",
        "operation was canceled",
        "tls",
        "certificate",
        "connection",
        "broken pipe",
        "timed out",
    ]
    .iter()
    .any(|w| r.contains(w));
    if !connection_like {
        return format!("{endpoint}: {reason}");
    }
    if endpoint.starts_with("https://") {
        if let Some(d) = diagnose::tls_problem(endpoint, opts).await {
            return format!("{endpoint}: {d}");
        }
    } else if !r.contains("tcp connect error")
        && (r.contains("broken pipe") || r.contains("frame") || r.contains("http2"))
    {
        return format!(
            "{endpoint}: {reason} (if etcd serves TLS, use https:// URLs and set etcd_cafile)"
        );
    }
    format!("{endpoint}: {reason}")
}

/// One connection to one endpoint: resume the watch from the mirror's revision (or read the whole
/// prefix), then apply events until something breaks. Returns why it ended.
async fn session(shared: &Shared, reached: &mut bool) -> Result<(), SessionEnd> {
    let (opts, keys) = shared
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let t = opts.request_timeout;
    let prefix = keys.prefix().to_string();
    let endpoint = shared.endpoint_in_use();
    let copts = opts.connect_options().map_err(|e| SessionEnd {
        reason: e.to_string(),
        rotate: false,
    })?;
    let client = match timed(
        t,
        "connect",
        Client::connect([endpoint.clone()], Some(copts)),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return Err(explain_setup_failure(&endpoint, &opts, e).await.into()),
    };

    // A mirror of this prefix is brought up to date with what changed while away (a delta read);
    // otherwise (first session, new prefix, compaction) the whole prefix is read.
    let delta_from = {
        let m = shared.mirror.read().unwrap_or_else(|e| e.into_inner());
        (m.prefix == prefix && m.revision > 0).then_some(m.revision)
    };
    let read = match delta_from {
        Some(since) => delta_read(shared, &client, &keys, since, t)
            .await
            .map(|rev| (rev, None)),
        None => full_read(&client, &keys, t)
            .await
            .map(|m| (m.revision, Some(m))),
    };
    let read = match read {
        Ok(r) => r,
        Err(e) if e.rotate => {
            return Err(explain_setup_failure(&endpoint, &opts, e.reason)
                .await
                .into())
        }
        Err(e) => return Err(e),
    };
    let (revision, delta) = match read {
        (rev, None) => (rev, true),
        (_, Some(mirror)) => {
            let rev = mirror.revision;
            let mut mirror = mirror;
            let mut old = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
            if old.prefix == mirror.prefix {
                // Garbage that replaced a good value while away keeps that value.
                mirror.adopt_last_good(&old);
            }
            *old = mirror;
            drop(old);
            shared.full_reads.fetch_add(1, Ordering::Relaxed);
            (rev, false)
        }
    };
    let mut wc = client.watch_client().max_decoding_message_size(MAX_MESSAGE);
    let mut stream = timed(
        t,
        "watch",
        wc.watch(
            prefix.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1)
                    .with_progress_notify(),
            ),
        ),
    )
    .await?;
    let first = timed(t, "watch", stream.message())
        .await?
        .ok_or("watch stream closed at once")?;
    if !first.created() || first.canceled() {
        if first.compact_revision() > 0 {
            return Err(compacted(shared, first.compact_revision()));
        }
        return Err(format!("watch not created: {}", first.cancel_reason()).into());
    }
    let units = shared
        .mirror
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .records
        .len();
    *shared.client.write().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
    shared.status.send_modify(|s| {
        s.available = true;
        s.revision = revision;
        s.synced = revision;
        s.error = None;
    });
    *reached = true;
    tracing::info!(%endpoint, %prefix, revision, units, delta, "connected to etcd");

    // Liveness: a member that answers nothing (frozen, its host gone) keeps the TCP connection open.
    // When the watch has been silent for `probe_interval`, ask it for a progress notification (the
    // member answers it locally, no raft round); no answer within the request timeout ends the
    // session. A member cut off from its quorum is noticed by etcd itself: with `require_leader` it
    // cancels our streams once it has no leader ("etcdserver: no leader"). A failed write
    // ([`Shared::suspect`]) triggers a linearizable check of the endpoint.
    let mut last_message = tokio::time::Instant::now();
    let mut probe_sent: Option<tokio::time::Instant> = None;
    let mut progress_seen = 0i64;
    // Since when this member's progress answers stay below a revision the cluster is known to have
    // reached (a lease confirmation's, from another connection): the member is behind, most likely
    // cut off from its quorum (it answers progress requests locally, from its own store).
    let mut behind: Option<(tokio::time::Instant, i64, u32)> = None;
    let mut tick = tokio::time::interval(opts.probe_interval.min(t).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            _ = tick.tick() => {
                let now = tokio::time::Instant::now();
                match probe_sent {
                    Some(at) if now.duration_since(at) >= t => {
                        return Err(format!(
                            "{endpoint} did not answer a watch progress request within {t:?}"
                        ).into());
                    }
                    Some(_) => {}
                    None if now.duration_since(last_message) >= opts.probe_interval => {
                        stream.request_progress().await.map_err(|e| format!("watch: {e}"))?;
                        probe_sent = Some(now);
                    }
                    None => {}
                }
                continue;
            }
            _ = shared.suspect.notified() => {
                check_endpoint(&client, &keys, t).await.map_err(|e| format!("{endpoint}: {e}"))?;
                continue;
            }
            _ = shared.progress_wanted.notified() => {
                let want = shared.want_synced.load(Ordering::Relaxed);
                if probe_sent.is_none() && shared.status.borrow().synced < want {
                    stream.request_progress().await.map_err(|e| format!("watch: {e}"))?;
                    probe_sent = Some(tokio::time::Instant::now());
                }
                continue;
            }
        };
        last_message = tokio::time::Instant::now();
        probe_sent = None;
        let msg = msg.map_err(|e| format!("watch: {}", describe(&e)))?;
        let Some(resp) = msg else {
            return Err("watch stream ended".into());
        };
        if resp.canceled() {
            if resp.compact_revision() > 0 {
                return Err(compacted(shared, resp.compact_revision()));
            }
            return Err(format!("watch canceled: {}", resp.cancel_reason()).into());
        }
        if resp.events().is_empty() {
            // A progress notification: every change under the prefix up to its revision R has been
            // sent. Before etcd 3.4.24 a requested one may overtake the event of the write at R
            // itself (etcd bumps the revision before it notifies watchers), so it proves R − 1; a
            // second one with the same R, produced after the first reached us, proves R.
            let r = resp.header().map(|h| h.revision()).unwrap_or(0);
            let proven = if progress_seen == r { r } else { r - 1 };
            progress_seen = r;
            shared.status.send_if_modified(|s| {
                let changed = proven > s.synced;
                s.synced = s.synced.max(proven);
                changed
            });
            let want = shared.want_synced.load(Ordering::Relaxed);
            // Behind a fixed target (the revision wanted when it first fell behind: newer writes
            // must not keep a healthy member "behind").
            match &mut behind {
                Some((_, target, _)) if progress_seen >= *target => behind = None,
                Some((since, target, answers)) => {
                    *answers += 1;
                    if *answers >= 2 && since.elapsed() >= BEHIND_LIMIT {
                        return Err(format!(
                            "{endpoint} is behind the cluster (its revision {progress_seen} < {target} for {:?}): cut off from its quorum?",
                            since.elapsed()
                        )
                        .into());
                    }
                }
                None if progress_seen < want => {
                    behind = Some((tokio::time::Instant::now(), want, 1));
                }
                None => {}
            }
            if shared.status.borrow().synced < want && progress_seen >= want {
                // One more notification proves `want` itself.
                stream
                    .request_progress()
                    .await
                    .map_err(|e| format!("watch: {e}"))?;
                probe_sent = Some(tokio::time::Instant::now());
            }
            continue;
        }
        let mut newest = 0;
        {
            let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                newest = newest.max(kv.mod_revision());
                let change = match ev.event_type() {
                    EventType::Put => Change::Put {
                        key: kv.key(),
                        value: kv.value(),
                        mod_revision: kv.mod_revision(),
                        create_revision: kv.create_revision(),
                        lease: kv.lease(),
                    },
                    EventType::Delete => Change::Delete { key: kv.key() },
                };
                m.apply(&keys, change);
            }
            if newest > m.revision {
                m.revision = newest;
            }
        }
        shared.status.send_modify(|s| {
            if newest > s.revision {
                s.revision = newest;
            }
            s.synced = s.synced.max(newest);
        });
    }
}

/// The watch fell behind etcd's compacted history (a slow watcher): the next session reads the whole
/// prefix again. Units are not touched: the registry is only unavailable meanwhile.
fn compacted(shared: &Shared, compact_revision: i64) -> SessionEnd {
    shared.compactions.fetch_add(1, Ordering::Relaxed);
    shared
        .mirror
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .revision = 0;
    tracing::warn!(
        compact_revision,
        "etcd compacted revisions the watch still needed: reading the whole prefix again"
    );
    SessionEnd {
        reason: format!("watch canceled: revision compacted at {compact_revision}"),
        rotate: false,
    }
}

/// Reads the whole prefix into a fresh mirror: pages of [`READ_PAGE`] keys, the first one linearizable
/// (its revision R is the mirror's), the others at R, so that no single response grows with the
/// number of units.
async fn full_read(client: &Client, keys: &Keys, t: Duration) -> Result<Mirror, SessionEnd> {
    let prefix = keys.prefix().to_string();
    let end = prefix_end(&prefix);
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let mut mirror = Mirror {
        prefix: prefix.clone(),
        ..Mirror::default()
    };
    let mut from = prefix.clone().into_bytes();
    let mut revision = 0;
    loop {
        let mut o = GetOptions::new()
            .with_range(end.clone())
            .with_limit(READ_PAGE);
        if revision > 0 {
            o = o.with_revision(revision);
        }
        let resp = timed(t * 5, "read prefix", kv.get(from.clone(), Some(o))).await?;
        if revision == 0 {
            revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        }
        for kv in resp.kvs() {
            mirror.apply(
                keys,
                Change::Put {
                    key: kv.key(),
                    value: kv.value(),
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                    lease: kv.lease(),
                },
            );
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    mirror.revision = revision;
    Ok(mirror)
}

/// The end of the key range of `prefix` (etcd's `--prefix`): the prefix with its last byte + 1.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Brings the mirror (at revision `since`) up to the current revision H without reading what did not
/// change, and without etcd's history (so compaction does not matter):
/// 1. the keys modified after `since` that exist now, with their values (a linearizable read; H is
///    its revision), applied as puts;
/// 2. the number of keys under the prefix at H (etcd counts from its index): if the mirror now holds
///    as many keys, no key it holds was deleted (a deleted and re-created key came with step 1);
/// 3. only otherwise, the key names at H (no values), and the mirror's keys missing there are deleted.
///
/// etcd still scans the prefix for step 1 (it filters by revision after reading), but sends, and
/// fleetd parses, only what changed. Returns H.
async fn delta_read(
    shared: &Shared,
    client: &Client,
    keys: &Keys,
    since: i64,
    t: Duration,
) -> Result<i64, SessionEnd> {
    let prefix = keys.prefix().to_string();
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let changed = timed(
        t * 5,
        "read changes",
        kv.get(
            prefix.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_min_mod_revision(since + 1),
            ),
        ),
    )
    .await?;
    let h = changed.header().map(|h| h.revision()).unwrap_or(since);
    let count = timed(
        t,
        "count keys",
        kv.get(
            prefix.clone(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_count_only()
                    .with_revision(h),
            ),
        ),
    )
    .await?
    .count();
    let held = {
        let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
        for kv in changed.kvs() {
            m.apply(
                keys,
                Change::Put {
                    key: kv.key(),
                    value: kv.value(),
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                    lease: kv.lease(),
                },
            );
        }
        m.key_count()
    };
    if held as i64 != count {
        let listing = timed(
            t * 5,
            "list keys",
            kv.get(
                prefix,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_revision(h),
                ),
            ),
        )
        .await?;
        let present: std::collections::HashSet<&[u8]> =
            listing.kvs().iter().map(|kv| kv.key()).collect();
        let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
        for key in m.keys_missing_from(&present) {
            m.apply(keys, Change::Delete { key: &key });
        }
        shared.delta_listings.fetch_add(1, Ordering::Relaxed);
    }
    {
        let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
        m.revision = m.revision.max(h);
    }
    shared.delta_reads.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        since,
        revision = h,
        changed = changed.kvs().len(),
        listed = held as i64 != count,
        "caught up with a delta read"
    );
    Ok(h)
}

/// A linearizable read of one key: fails when the member has no quorum or answers nothing.
async fn check_endpoint(client: &Client, keys: &Keys, t: Duration) -> Result<(), String> {
    let mut kv = client.kv_client();
    timed(
        t,
        "linearizable read",
        kv.get(keys.prefix(), Some(GetOptions::new().with_count_only())),
    )
    .await
    .map(|_| ())
}
