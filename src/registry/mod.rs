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

mod keys;
mod mirror;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    TlsOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions,
};
use fleet_sched::{DesiredState, MachineId, UnitFile, UnitHash, UnitName};
use tokio::sync::watch;

pub use keys::{ClaimRecord, KeyKind, Keys, MachineRecord, UnitRecord};
use mirror::{Change, Mirror};
pub use mirror::{Claim, Machine, Unit};

use crate::config::Config;

/// How many times a write is retried when one of its compares fails because of a concurrent change.
const MAX_ATTEMPTS: usize = 16;
/// Largest etcd response accepted (the initial range read holds every unit file).
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

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
            .with_require_leader(true);
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
    /// Why etcd is unavailable (the last error), when it is.
    pub error: Option<String>,
}

struct Shared {
    /// Connection settings and the key layout; replaced by [`Registry::reconfigure`].
    config: RwLock<(RegistryOptions, Keys)>,
    /// Wakes the task to drop the session and reconnect with the new settings.
    reconnect: tokio::sync::Notify,
    mirror: RwLock<Mirror>,
    client: RwLock<Option<Client>>,
    status: watch::Sender<RegistryStatus>,
}

impl Shared {
    fn opts(&self) -> RegistryOptions {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
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
            error: Some("not connected yet".into()),
        });
        let shared = Arc::new(Shared {
            config: RwLock::new((opts.clone(), Keys::new(&opts.prefix))),
            reconnect: tokio::sync::Notify::new(),
            mirror: RwLock::new(Mirror::default()),
            client: RwLock::new(None),
            status,
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
        Ok(self.mirror()?.claims.clone())
    }

    /// The claim of unit `name`, if any.
    pub fn claim(&self, name: &UnitName) -> Result<Option<Claim>, RegistryError> {
        Ok(self.mirror()?.claims.get(name).cloned())
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
            claims: m.claims.clone(),
            machines: m.machines.clone(),
            restarting: m.restarting.clone(),
        })
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
                Err(RegistryError::Unavailable(format!(
                    "etcd request timed out after {timeout:?}"
                )))
            }
            Ok(Err(e)) => Err(classify(e)),
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
    /// Every claim.
    pub claims: BTreeMap<UnitName, Claim>,
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

fn classify(e: etcd_client::Error) -> RegistryError {
    use etcd_client::Error as E;
    use tonic::Code;
    match &e {
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) | E::EndpointError(_) => {
            RegistryError::Unavailable(e.to_string())
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

/// The background task: sessions separated by capped exponential backoff.
async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = shared.opts().backoff_min;
    loop {
        let mut reached = false;
        let result = tokio::select! {
            r = session(&shared, &mut reached) => r,
            _ = shared.reconnect.notified() => Err("reconnecting with new settings".to_string()),
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let reason = match result {
            Ok(()) => return,
            Err(e) => e,
        };
        *shared.client.write().unwrap_or_else(|e| e.into_inner()) = None;
        let was_available = shared.status.borrow().available;
        shared.status.send_modify(|s| {
            s.available = false;
            s.error = Some(reason.clone());
        });
        let opts = shared.opts();
        if was_available {
            tracing::warn!("lost etcd: {reason}; reconnecting");
        } else {
            tracing::debug!("etcd not reachable: {reason}; retrying in {backoff:?}");
        }
        if reached {
            backoff = opts.backoff_min;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shared.reconnect.notified() => backoff = opts.backoff_min,
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

async fn timed<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(timeout, f).await {
        Err(_) => Err(format!("{what}: timed out after {timeout:?}")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Ok(Ok(v)) => Ok(v),
    }
}

/// One connection: range read, watch, apply events until something breaks.
/// Returns `Err(reason)` when the connection or watch breaks.
async fn session(shared: &Shared, reached: &mut bool) -> Result<(), String> {
    let (opts, keys) = shared
        .config
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let t = opts.request_timeout;
    let prefix = keys.prefix().to_string();
    let copts = opts.connect_options().map_err(|e| e.to_string())?;
    let client = timed(
        t,
        "connect",
        Client::connect(opts.endpoints.clone(), Some(copts)),
    )
    .await?;
    let mut kv = client.kv_client().max_decoding_message_size(MAX_MESSAGE);
    let resp = timed(
        t * 5,
        "read prefix",
        kv.get(prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut mirror = Mirror {
        revision,
        ..Mirror::default()
    };
    for kv in resp.kvs() {
        mirror.apply(
            &keys,
            Change::Put {
                key: kv.key(),
                value: kv.value(),
                mod_revision: kv.mod_revision(),
                lease: kv.lease(),
            },
        );
    }
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
        return Err(format!("watch not created: {}", first.cancel_reason()));
    }
    let units = mirror.records.len();
    *shared.mirror.write().unwrap_or_else(|e| e.into_inner()) = mirror;
    *shared.client.write().unwrap_or_else(|e| e.into_inner()) = Some(client.clone());
    shared.status.send_modify(|s| {
        s.available = true;
        s.revision = revision;
        s.error = None;
    });
    *reached = true;
    tracing::info!(
        endpoints = ?opts.endpoints,
        %prefix,
        revision,
        units,
        "connected to etcd"
    );
    loop {
        let msg = stream.message().await.map_err(|e| format!("watch: {e}"))?;
        let Some(resp) = msg else {
            return Err("watch stream ended".into());
        };
        if resp.canceled() {
            return Err(format!(
                "watch canceled: {} (compact revision {})",
                resp.cancel_reason(),
                resp.compact_revision()
            ));
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        {
            let mut m = shared.mirror.write().unwrap_or_else(|e| e.into_inner());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let change = match ev.event_type() {
                    EventType::Put => Change::Put {
                        key: kv.key(),
                        value: kv.value(),
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    },
                    EventType::Delete => Change::Delete { key: kv.key() },
                };
                m.apply(&keys, change);
            }
            if rev > m.revision {
                m.revision = rev;
            }
        }
        shared.status.send_modify(|s| {
            if rev > s.revision {
                s.revision = rev;
            }
        });
    }
}
