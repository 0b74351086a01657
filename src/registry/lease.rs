//! The agent's etcd lease: granted once, renewed every `fence_after / 3`, each answer recorded as a
//! [`Confirmation`] (when the request was sent, and the revision etcd answered at) for the decision
//! core's fence deadline (docs/safety.md).
//!
//! The lease ID and the confirmations are saved to a file (in fleetd's runtime directory) after every
//! answer, so a restarted fleetd goes on renewing the same lease: its claims stand and peers see the
//! lease renewed, so nothing is taken over. Times are `CLOCK_MONOTONIC`, valid for one boot only (the
//! file names its boot).
//!
//! A lease that may have been voted away is replaced ([`LeaseKeeper::replace`], `fleet_decide::lease`):
//! a new lease becomes the current one, and the old one is kept alive (and saved) as the *retiring*
//! lease, with confirmations of its own, until the agent lets it go ([`LeaseKeeper::retire`]) once
//! nothing rests on it.

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
    /// The lease this one replaced while it may still hold claims: kept alive until the agent lets it
    /// go (`fleet_decide::lease`).
    pub retiring: Option<OwnLease>,
}

impl LeaseStatus {
    /// What identifies this status for the agent's passes: the leases, not their confirmations.
    pub fn key(&self) -> (i64, u64, Option<i64>) {
        (
            self.lease.id,
            self.generation,
            self.retiring.as_ref().map(|r| r.id),
        )
    }
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
    /// The retiring lease: ID, TTL (ms) and confirmations as above.
    #[serde(default)]
    retiring: Option<SavedRetiring>,
}

/// A saved retiring lease: ID, TTL (ms), `(CLOCK_MONOTONIC µs, etcd revision)` of each confirmation.
type SavedRetiring = (i64, u64, Vec<(u64, i64)>);

/// The shared half of the keeper: the status and where it is saved.
struct Keep {
    tx: watch::Sender<LeaseStatus>,
    file: Option<PathBuf>,
    machine: String,
}

impl Keep {
    fn save(&self) {
        if let Some(f) = &self.file {
            save(f, &self.machine, &self.tx.borrow());
        }
    }

    /// A confirmation of lease `of`: recorded while it is the current lease.
    fn confirm(&self, of: i64, c: Confirmation) {
        let mut current = false;
        self.tx.send_modify(|s| {
            current = s.lease.id == of;
            if current {
                s.lease.confirm(c);
            }
        });
        if current {
            self.save();
        }
    }

    /// etcd says the current lease `of` expired: its claims are gone; a new one is to be granted.
    fn expired(&self, of: i64) {
        tracing::warn!(
            lease = format!("{of:x}"),
            "etcd says the lease expired: its claims are gone; granting a new one"
        );
        self.tx.send_modify(|s| {
            if s.lease.id == of {
                s.lease.id = 0;
                s.lease.confirmations.clear();
                s.generation += 1;
            }
        });
        self.save();
    }
}

/// Keeps one lease alive; replaces it with a new one when etcd says it expired.
pub struct LeaseKeeper {
    status: watch::Receiver<LeaseStatus>,
    task: tokio::task::JoinHandle<()>,
    /// Keeps the retiring lease alive, while there is one.
    retiring: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    keep: Arc<Keep>,
    ttl: Duration,
    period: Duration,
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
        let (lease, retiring) = file.as_ref().and_then(|f| load(f, machine)).unwrap_or((
            OwnLease {
                id: 0,
                ttl,
                confirmations: Vec::new(),
            },
            None,
        ));
        if lease.id != 0 {
            tracing::info!(
                lease = format!("{:x}", lease.id),
                retiring = retiring.as_ref().map(|r| format!("{:x}", r.id)),
                "resuming the lease of the previous fleetd"
            );
        }
        let retiring_id = retiring.as_ref().map(|r| r.id);
        let (tx, rx) = watch::channel(LeaseStatus {
            lease,
            generation: 0,
            retiring,
        });
        let keep = Arc::new(Keep {
            tx,
            file,
            machine: machine.to_string(),
        });
        let reg = registry.clone();
        let client = Arc::new(std::sync::Mutex::new(None));
        let slot = client.clone();
        let k = keep.clone();
        let task = tokio::spawn(async move { keep_current(reg, ttl, period, k, slot).await });
        let keeper = LeaseKeeper {
            status: rx,
            task,
            retiring: std::sync::Mutex::new(None),
            keep,
            ttl,
            period,
            registry,
            client,
        };
        if let Some(id) = retiring_id {
            keeper.keep_retiring(id);
        }
        keeper
    }

    fn keep_retiring(&self, id: i64) {
        let (reg, k, period) = (self.registry.clone(), self.keep.clone(), self.period);
        let task = tokio::spawn(async move { keep_retiring(reg, id, period, k).await });
        if let Some(old) = self
            .retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// Replaces the current lease with a new one (it may have been voted away:
    /// `fleet_decide::lease`); the current one becomes the retiring lease and is kept alive until
    /// [`LeaseKeeper::retire`]. Does nothing while a retiring lease is kept, or before the first lease.
    pub async fn replace(&self, timeout: Duration) -> Result<i64, String> {
        {
            let s = self.status.borrow();
            if s.lease.id == 0 || s.retiring.is_some() {
                return Err("no lease to replace, or one still retiring".into());
            }
        }
        let mut c = match self.own_client() {
            Some(c) => c,
            None => self
                .registry
                .connect_client(timeout)
                .await
                .map_err(|e| e.to_string())?,
        };
        let sent = clock::now();
        let r = tokio::time::timeout(
            timeout,
            c.lease_grant(self.ttl.as_secs().max(1) as i64, None),
        )
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
        let new = OwnLease {
            id: r.id(),
            ttl: Duration::from_secs(r.ttl().max(1) as u64),
            confirmations: vec![Confirmation { sent, revision }],
        };
        let mut old = None;
        self.keep.tx.send_modify(|s| {
            // The current lease may have expired (and been replaced by the keeper) meanwhile.
            if s.lease.id != 0 && s.retiring.is_none() {
                old = Some(s.lease.id);
                s.retiring = Some(std::mem::replace(&mut s.lease, new.clone()));
            }
        });
        let Some(old) = old else {
            let _ = tokio::time::timeout(timeout, c.lease_revoke(new.id)).await;
            return Err("the lease changed meanwhile".into());
        };
        self.keep.save();
        self.keep_retiring(old);
        tracing::info!(
            lease = format!("{:x}", new.id),
            retiring = format!("{old:x}"),
            "lease granted to replace one that may have been voted away"
        );
        Ok(new.id)
    }

    /// Lets the retiring lease go: stops renewing it and revokes it (best effort, in the background;
    /// unrevoked, it expires with nothing bound to it).
    pub fn retire(&self) {
        self.stop_retiring();
        let mut old = None;
        self.keep
            .tx
            .send_modify(|s| old = s.retiring.take().map(|r| r.id));
        self.keep.save();
        let Some(id) = old else {
            return;
        };
        tracing::info!(lease = format!("{id:x}"), "retired the replaced lease");
        let Some(mut c) = self.any_client() else {
            return;
        };
        let timeout = (self.period * 3).max(Duration::from_secs(1));
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, c.lease_revoke(id)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(lease = format!("{id:x}"), "revoking: {e}"),
                Err(_) => tracing::debug!(lease = format!("{id:x}"), "revoking timed out"),
            }
        });
    }

    /// The current status.
    pub fn status(&self) -> LeaseStatus {
        self.status.borrow().clone()
    }

    /// Notified on every change of status (every confirmation).
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Stops renewing without revoking (a restart: the next fleetd resumes the leases).
    pub fn detach(self) {
        self.abort();
    }

    fn abort(&self) {
        self.task.abort();
        self.stop_retiring();
    }

    /// Stops renewing the retiring lease (if one is kept).
    fn stop_retiring(&self) {
        if let Some(t) = self
            .retiring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
    }

    /// The keeper's own connection to etcd, once it has one.
    fn own_client(&self) -> Option<etcd_client::Client> {
        self.client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The keeper's own connection, or else the registry's.
    fn any_client(&self) -> Option<etcd_client::Client> {
        self.own_client()
            .or_else(|| self.registry.etcd_client().ok())
    }

    /// Stops keeping the leases and revokes them (their keys go at once), best effort within `timeout`.
    pub async fn revoke(self, timeout: Duration) {
        self.abort();
        let (id, retiring) = {
            let s = self.status.borrow();
            (s.lease.id, s.retiring.as_ref().map(|r| r.id))
        };
        if let Some((old, mut c)) = retiring.zip(self.any_client()) {
            let _ = tokio::time::timeout(timeout, c.lease_revoke(old)).await;
        }
        if id == 0 {
            return;
        }
        let Some(mut c) = self.any_client() else {
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
        self.abort();
    }
}

fn load(file: &PathBuf, machine: &str) -> Option<(OwnLease, Option<OwnLease>)> {
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
    let lease = |id, ttl_ms, confirmations: Vec<(u64, i64)>| OwnLease {
        id,
        ttl: Duration::from_millis(ttl_ms),
        confirmations: confirmations
            .into_iter()
            .map(|(t, revision)| Confirmation {
                sent: Time::from_micros(t),
                revision,
            })
            .collect(),
    };
    Some((
        lease(s.id, s.ttl_ms, s.confirmations),
        s.retiring.map(|(id, ttl, c)| lease(id, ttl, c)),
    ))
}

fn save(file: &PathBuf, machine: &str, status: &LeaseStatus) {
    let confirmations = |l: &OwnLease| {
        l.confirmations
            .iter()
            .map(|c| (c.sent.as_micros(), c.revision))
            .collect()
    };
    let lease = &status.lease;
    let s = Saved {
        boot_id: clock::boot_id(),
        machine: machine.to_string(),
        id: lease.id,
        ttl_ms: lease.ttl.as_millis() as u64,
        confirmations: confirmations(lease),
        retiring: status
            .retiring
            .as_ref()
            .map(|r| (r.id, r.ttl.as_millis() as u64, confirmations(r))),
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

/// Keeps the current lease alive; grants a new one when etcd says it expired. A lease replaced by
/// [`LeaseKeeper::replace`] is left to [`keep_retiring`]: this loop moves on to the new one.
async fn keep_current(
    registry: Registry,
    ttl: Duration,
    period: Duration,
    keep: Arc<Keep>,
    last_client: Arc<std::sync::Mutex<Option<etcd_client::Client>>>,
) {
    let mut backoff = Duration::from_millis(50);
    let tx = &keep.tx;
    // A connection of our own: a keep-alive must not wait for the watch session to reconnect.
    let mut client: Option<etcd_client::Client> = None;
    let retry_max = (period / 2).max(Duration::from_millis(20));
    // Short enough that a retry soon sends a fresh SYN after a network comes back, long enough for a TLS
    // handshake and an etcd authentication (bcrypt) on a loaded machine.
    let connect_timeout = (period * 3).max(Duration::from_secs(1));
    // Since when no keep-alive was answered (a stream broke): the first confirmation after it is
    // logged with the gap, so an etcd outage's recovery shows in the journal.
    let mut lost: Option<std::time::Instant> = None;
    loop {
        let mut id = tx.borrow().lease.id;
        if id == 0 {
            match grant(&registry, client.take(), ttl, connect_timeout, &keep).await {
                Ok((granted, c)) => {
                    id = granted;
                    client = Some(c);
                }
                Err(()) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry_max);
                    continue;
                }
            }
        }
        let (c, mut keeper, mut stream) =
            match open_keep_alive(&registry, client.take(), id, connect_timeout, period).await {
                Ok(x) => x,
                Err(Start::Expired) => {
                    keep.expired(id);
                    continue;
                }
                Err(Start::Failed(e)) => {
                    tracing::debug!(lease = format!("{id:x}"), "starting lease keep-alive: {e}");
                    lost.get_or_insert_with(std::time::Instant::now);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry_max);
                    continue;
                }
            };
        backoff = Duration::from_millis(50);
        *last_client.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        client = Some(c);
        let ended = renew(
            &registry,
            &mut keeper,
            &mut stream,
            id,
            period,
            // Replaced (`LeaseKeeper::replace`): the retiring keeper renews this one now.
            || tx.borrow().lease.id == id,
            |c| {
                keep.confirm(id, c);
                answered_again(&registry, id, &mut lost);
            },
        )
        .await;
        match ended {
            Ended::Expired => keep.expired(id),
            Ended::Broken => {
                client = None;
                lost.get_or_insert_with(std::time::Instant::now);
            }
            Ended::Dropped => {}
        }
        tokio::time::sleep(backoff).await;
    }
}

/// A keep-alive of lease `id` was answered: the first answer since `lost` (a broken stream) is logged
/// with the gap, and wakes the registry's session, which may be waiting out its backoff.
fn answered_again(registry: &Registry, id: i64, lost: &mut Option<std::time::Instant>) {
    if let Some(since) = lost.take() {
        tracing::info!(
            lease = format!("{id:x}"),
            unanswered_ms = since.elapsed().as_millis() as u64,
            "lease keep-alive answered again"
        );
        registry.etcd_answers_again();
    }
}

/// Grants a new current lease (on `client`, or a new connection), recorded as the current one with its
/// first confirmation.
async fn grant(
    registry: &Registry,
    client: Option<etcd_client::Client>,
    ttl: Duration,
    timeout: Duration,
    keep: &Keep,
) -> Result<(i64, etcd_client::Client), ()> {
    let mut c = match client {
        Some(c) => c,
        None => match registry.connect_client(timeout).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!("lease keeper: connecting to etcd: {e}");
                return Err(());
            }
        },
    };
    let sent = clock::now();
    let r = match tokio::time::timeout(ttl, c.lease_grant(ttl.as_secs().max(1) as i64, None)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::warn!("granting a lease: {e}");
            return Err(());
        }
        Err(_) => return Err(()),
    };
    let id = r.id();
    let granted = Duration::from_secs(r.ttl().max(1) as u64);
    let revision = r.header().map(|h| h.revision()).unwrap_or(0);
    keep.tx.send_modify(|s| {
        if s.lease.id != 0 {
            s.generation += 1;
        }
        s.lease = OwnLease {
            id,
            ttl: granted,
            confirmations: vec![Confirmation { sent, revision }],
        };
    });
    keep.save();
    tracing::info!(lease = format!("{id:x}"), ?granted, "lease granted");
    Ok((id, c))
}

/// How a run of keep-alives on one stream ended.
enum Ended {
    /// etcd answered that the lease expired.
    Expired,
    /// The stream failed or an answer was late: open another.
    Broken,
    /// The keeper no longer keeps this lease (`keeps` said so).
    Dropped,
}

/// Renews lease `id` on an open keep-alive stream every `period` while `keeps()` holds, handing each
/// confirmation to `confirmed` (and telling the registry to sync up to its revision).
async fn renew(
    registry: &Registry,
    keeper: &mut etcd_client::LeaseKeeper,
    stream: &mut etcd_client::LeaseKeepAliveStream,
    id: i64,
    period: Duration,
    keeps: impl Fn() -> bool,
    mut confirmed: impl FnMut(Confirmation),
) -> Ended {
    let wait = (period * 3).max(Duration::from_millis(300));
    loop {
        if !keeps() {
            return Ended::Dropped;
        }
        let sent = clock::now();
        if let Err(e) = keeper.keep_alive().await {
            tracing::debug!(lease = format!("{id:x}"), "lease keep-alive: {e}");
            return Ended::Broken;
        }
        match tokio::time::timeout(wait, stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                confirmed(Confirmation { sent, revision });
                registry.want_synced(revision);
            }
            Ok(Ok(Some(_))) => return Ended::Expired,
            Ok(Ok(None)) | Ok(Err(_)) => {
                tracing::debug!(lease = format!("{id:x}"), "lease keep-alive stream ended");
                return Ended::Broken;
            }
            Err(_) => {
                tracing::debug!(lease = format!("{id:x}"), "no keep-alive answer in time");
                return Ended::Broken;
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Keeps the retiring lease `id` alive (recording its confirmations) until it is retired (the task is
/// aborted, or the status no longer names it) or etcd says it expired.
async fn keep_retiring(registry: Registry, id: i64, period: Duration, keep: Arc<Keep>) {
    let tx = &keep.tx;
    let retiring = || tx.borrow().retiring.as_ref().is_some_and(|r| r.id == id);
    let connect_timeout = (period * 3).max(Duration::from_secs(1));
    let mut backoff = Duration::from_millis(50);
    let retry_max = (period / 2).max(Duration::from_millis(20));
    while retiring() {
        let ended = match open_keep_alive(&registry, None, id, connect_timeout, period).await {
            Ok((_c, mut keeper, mut stream)) => {
                backoff = Duration::from_millis(50);
                let confirmed = |c: Confirmation| {
                    tx.send_modify(|s| {
                        if let Some(l) = s.retiring.as_mut().filter(|r| r.id == id) {
                            l.confirm(c);
                        }
                    });
                    keep.save();
                };
                renew(
                    &registry,
                    &mut keeper,
                    &mut stream,
                    id,
                    period,
                    retiring,
                    confirmed,
                )
                .await
            }
            Err(Start::Expired) => Ended::Expired,
            Err(Start::Failed(e)) => {
                tracing::debug!(lease = format!("{id:x}"), "retiring lease keep-alive: {e}");
                Ended::Broken
            }
        };
        match ended {
            Ended::Expired => {
                tracing::info!(lease = format!("{id:x}"), "the retiring lease expired");
                tx.send_modify(|s| {
                    if s.retiring.as_ref().is_some_and(|r| r.id == id) {
                        s.retiring = None;
                    }
                });
                keep.save();
                return;
            }
            Ended::Dropped => return,
            Ended::Broken => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(retry_max);
            }
        }
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
