//! The agent's etcd lease: granted once, renewed every `fence_after / 3`, each answer recorded as a
//! [`Confirmation`] (when the request was sent, and the revision etcd answered at) for the decision
//! core's fence deadline (docs/safety.md).
//!
//! The lease ID and the confirmations are saved to a file (in fleetd's runtime directory) after every
//! answer, so a restarted fleetd goes on renewing the same lease: its claims stand and peers see the
//! lease renewed, so nothing is taken over. Times are `CLOCK_MONOTONIC`, valid for one boot only (the
//! file names its boot).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fleet_decide::{Confirmation, OwnLease, Time};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Registry;
use crate::clock;

/// What the agent knows about its lease.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The lease and its recent confirmations.
    pub lease: OwnLease,
    /// Incremented every time a new lease replaces an expired one (claims under the old one are gone).
    pub generation: u64,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    boot_id: String,
    /// The machine ID the lease was granted for (a fleetd started with another ID starts afresh).
    #[serde(default)]
    machine: String,
    id: i64,
    ttl_ms: u64,
    /// `(CLOCK_MONOTONIC µs, etcd revision)` of each recent confirmation.
    confirmations: Vec<(u64, i64)>,
}

/// Keeps one lease alive; replaces it with a new one when etcd says it expired.
pub struct LeaseKeeper {
    status: watch::Receiver<LeaseStatus>,
    task: tokio::task::JoinHandle<()>,
    registry: Registry,
    client: Arc<std::sync::Mutex<Option<etcd_client::Client>>>,
}

impl LeaseKeeper {
    /// Starts keeping a lease of `ttl` for `machine`, renewed every `period`; `file` keeps it across
    /// restarts.
    pub fn start(
        registry: Registry,
        machine: &str,
        ttl: Duration,
        period: Duration,
        file: Option<PathBuf>,
    ) -> LeaseKeeper {
        let saved = file.as_ref().and_then(|f| load(f, machine));
        let initial = LeaseStatus {
            lease: saved.unwrap_or(OwnLease {
                id: 0,
                ttl,
                confirmations: Vec::new(),
            }),
            generation: 0,
        };
        if initial.lease.id != 0 {
            tracing::info!(
                lease = format!("{:x}", initial.lease.id),
                "resuming the lease of the previous fleetd"
            );
        }
        let (tx, rx) = watch::channel(initial);
        let file = file.map(Arc::new);
        let reg = registry.clone();
        let client = Arc::new(std::sync::Mutex::new(None));
        let slot = client.clone();
        let machine = machine.to_string();
        let task =
            tokio::spawn(async move { keep(reg, machine, ttl, period, tx, file, slot).await });
        LeaseKeeper {
            status: rx,
            task,
            registry,
            client,
        }
    }

    /// The current status.
    pub fn status(&self) -> LeaseStatus {
        self.status.borrow().clone()
    }

    /// Notified on every change of status (every confirmation).
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Stops renewing without revoking (a restart: the next fleetd resumes the lease).
    pub fn detach(self) {
        self.task.abort();
    }

    /// Stops keeping the lease and revokes it (its keys go at once), best effort within `timeout`.
    pub async fn revoke(self, timeout: Duration) {
        self.task.abort();
        let id = self.status.borrow().lease.id;
        if id == 0 {
            return;
        }
        let own = self
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(mut c) = own.or_else(|| self.registry.etcd_client().ok()) else {
            tracing::warn!(
                lease = format!("{id:x}"),
                "cannot revoke the lease: etcd unavailable"
            );
            return;
        };
        match tokio::time::timeout(timeout, c.lease_revoke(id)).await {
            Ok(Ok(_)) => tracing::info!(lease = format!("{id:x}"), "lease revoked"),
            Ok(Err(e)) => tracing::warn!(lease = format!("{id:x}"), "revoking the lease: {e}"),
            Err(_) => tracing::warn!(lease = format!("{id:x}"), "revoking the lease timed out"),
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn load(file: &PathBuf, machine: &str) -> Option<OwnLease> {
    let bytes = std::fs::read(file).ok()?;
    let s: Saved = match serde_json::from_slice(&bytes) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(file = %file.display(), "ignoring unreadable lease file: {e}");
            return None;
        }
    };
    if s.boot_id != clock::boot_id() || s.id == 0 || s.machine != machine {
        return None;
    }
    Some(OwnLease {
        id: s.id,
        ttl: Duration::from_millis(s.ttl_ms),
        confirmations: s
            .confirmations
            .into_iter()
            .map(|(t, revision)| Confirmation {
                sent: Time::from_micros(t),
                revision,
            })
            .collect(),
    })
}

fn save(file: &PathBuf, machine: &str, lease: &OwnLease) {
    let s = Saved {
        boot_id: clock::boot_id(),
        machine: machine.to_string(),
        id: lease.id,
        ttl_ms: lease.ttl.as_millis() as u64,
        confirmations: lease
            .confirmations
            .iter()
            .map(|c| (c.sent.as_micros(), c.revision))
            .collect(),
    };
    let json = serde_json::to_vec(&s).expect("lease state serializes");
    let tmp = file.with_extension("tmp");
    let r = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(&tmp, json))
        .and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = r {
        tracing::warn!(file = %file.display(), "saving the lease state: {e}");
    }
}

async fn keep(
    registry: Registry,
    machine: String,
    ttl: Duration,
    period: Duration,
    tx: watch::Sender<LeaseStatus>,
    file: Option<Arc<PathBuf>>,
    last_client: Arc<std::sync::Mutex<Option<etcd_client::Client>>>,
) {
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let mut backoff = Duration::from_millis(50);
    let confirm = |c: Confirmation, granted: Option<(i64, Duration)>| {
        tx.send_modify(|s| {
            if let Some((id, ttl)) = granted {
                if s.lease.id != id {
                    if s.lease.id != 0 {
                        s.generation += 1;
                    }
                    s.lease.confirmations.clear();
                }
                s.lease.id = id;
                s.lease.ttl = ttl;
            }
            s.lease.confirm(c);
        });
        if let Some(f) = &file {
            save(f, &machine, &tx.borrow().lease);
        }
    };
    // A connection of our own: a keep-alive must not wait for the watch session to reconnect.
    let mut client: Option<etcd_client::Client> = None;
    let retry_max = (period / 2).max(Duration::from_millis(20));
    // Short enough that a retry soon sends a fresh SYN after a network comes back, long enough for a TLS
    // handshake and an etcd authentication (bcrypt) on a loaded machine.
    let connect_timeout = (period * 3).max(Duration::from_secs(1));
    loop {
        let mut id = tx.borrow().lease.id;
        if id == 0 {
            let mut c = match client.clone() {
                Some(c) => c,
                None => match registry.connect_client(connect_timeout).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!("lease keeper: connecting to etcd: {e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(retry_max);
                        continue;
                    }
                },
            };
            let sent = clock::now();
            match tokio::time::timeout(ttl, c.lease_grant(ttl_secs, None)).await {
                Ok(Ok(r)) => {
                    id = r.id();
                    let granted = Duration::from_secs(r.ttl().max(1) as u64);
                    let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                    confirm(Confirmation { sent, revision }, Some((id, granted)));
                    tracing::info!(lease = format!("{id:x}"), ?granted, "lease granted");
                    client = Some(c);
                }
                Ok(Err(e)) => {
                    tracing::warn!("granting a lease: {e}");
                    client = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry_max);
                    continue;
                }
                Err(_) => {
                    client = None;
                    continue;
                }
            }
        }
        let (c, mut keeper, mut stream) =
            match open_keep_alive(&registry, client.take(), id, connect_timeout, period).await {
                Ok(x) => x,
                Err(Start::Expired) => {
                    tracing::warn!(
                        lease = format!("{id:x}"),
                        "etcd says the lease expired: its claims are gone; granting a new one"
                    );
                    tx.send_modify(|s| {
                        s.lease.id = 0;
                        s.lease.confirmations.clear();
                        s.generation += 1;
                    });
                    if let Some(f) = &file {
                        save(f, &machine, &tx.borrow().lease);
                    }
                    continue;
                }
                Err(Start::Failed(e)) => {
                    tracing::debug!(lease = format!("{id:x}"), "starting lease keep-alive: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry_max);
                    continue;
                }
            };
        backoff = Duration::from_millis(50);
        *last_client.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        client = Some(c);
        loop {
            let sent = clock::now();
            if let Err(e) = keeper.keep_alive().await {
                tracing::debug!(lease = format!("{id:x}"), "lease keep-alive: {e}");
                client = None;
                break;
            }
            let wait = (period * 3).max(Duration::from_millis(300));
            match tokio::time::timeout(wait, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                    confirm(Confirmation { sent, revision }, None);
                    registry.want_synced(revision);
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(
                        lease = format!("{id:x}"),
                        "etcd says the lease expired: its claims are gone; granting a new one"
                    );
                    tx.send_modify(|s| {
                        s.lease.id = 0;
                        s.lease.confirmations.clear();
                        s.generation += 1;
                    });
                    if let Some(f) = &file {
                        save(f, &machine, &tx.borrow().lease);
                    }
                    break;
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    tracing::debug!(lease = format!("{id:x}"), "lease keep-alive stream ended");
                    client = None;
                    break;
                }
                Err(_) => {
                    tracing::debug!(lease = format!("{id:x}"), "no keep-alive answer in time");
                    client = None;
                    break;
                }
            }
            tokio::time::sleep(period).await;
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Why a keep-alive stream could not be opened.
enum Start {
    /// etcd answered that the lease does not exist (it expired): its claims are gone.
    Expired,
    /// No answer (or another error) from any attempt.
    Failed(String),
}

/// Opens a keep-alive stream for lease `id` (on `client` if there is one, else on a new connection),
/// starting another attempt on a new connection every `period` while earlier ones are still pending
/// (each gets `timeout`, at most four at once): a network that comes back is used within a period,
/// not after a TCP retransmission or the connect timeout of an attempt whose SYN was lost. The first
/// stream that opens wins; the others are dropped.
async fn open_keep_alive(
    registry: &Registry,
    client: Option<etcd_client::Client>,
    id: i64,
    timeout: Duration,
    period: Duration,
) -> Result<
    (
        etcd_client::Client,
        etcd_client::LeaseKeeper,
        etcd_client::LeaseKeepAliveStream,
    ),
    Start,
> {
    let attempt = |client: Option<etcd_client::Client>| {
        let registry = registry.clone();
        async move {
            let mut c = match client {
                Some(c) => c,
                None => registry
                    .connect_client(timeout)
                    .await
                    .map_err(|e| Start::Failed(e.to_string()))?,
            };
            match tokio::time::timeout(timeout, c.lease_keep_alive(id)).await {
                Ok(Ok((k, s))) => Ok((c, k, s)),
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(e))) if e.contains("not found") => {
                    Err(Start::Expired)
                }
                Ok(Err(e)) => Err(Start::Failed(e.to_string())),
                Err(_) => Err(Start::Failed(format!("no answer within {timeout:?}"))),
            }
        }
    };
    let mut set = tokio::task::JoinSet::new();
    set.spawn(attempt(client));
    let mut last = String::from("no attempt");
    let mut next = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok(Ok(x))) => return Ok(x),
                Some(Ok(Err(Start::Expired))) => return Err(Start::Expired),
                Some(Ok(Err(Start::Failed(e)))) => last = e,
                Some(Err(e)) => last = e.to_string(),
                None => {}
            },
            _ = tokio::time::sleep_until(next) => {
                next += period;
                if set.len() < 4 {
                    set.spawn(attempt(None));
                }
            }
        }
        if set.is_empty() {
            return Err(Start::Failed(last));
        }
    }
}
