//! The agent's etcd lease: granted once, kept alive in the background, its health visible to the agent.
//!
//! Claims and the machine's announcement key are bound to this lease, so they vanish when the agent
//! dies. The keeper tracks the last moment etcd confirmed the lease; the agent fences (stops its claimed
//! units) when that confirmation is older than the lease's TTL, because by then etcd may have expired it
//! and another machine may have taken the units over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::Client;
use tokio::sync::watch;
use tokio::time::Instant;

/// What the agent knows about its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The lease ID (0 before the first grant).
    pub id: i64,
    /// When etcd last confirmed the lease alive (grant or keep-alive answer).
    pub confirmed_at: Option<Instant>,
    /// The TTL etcd reported with that confirmation.
    pub ttl: Duration,
    /// Incremented every time a new lease replaces an expired one (claims under the old one are gone).
    pub generation: u64,
}

impl LeaseStatus {
    /// Whether etcd may already have expired the lease at `now` (conservative: confirmation + TTL).
    pub fn maybe_expired(&self, now: Instant) -> bool {
        match self.confirmed_at {
            Some(t) => now >= t + self.ttl,
            None => true,
        }
    }
}

/// Keeps one lease alive; replaces it with a new one when etcd says it expired.
pub struct LeaseKeeper {
    status: watch::Receiver<LeaseStatus>,
    task: tokio::task::JoinHandle<()>,
    client: Arc<Mutex<Option<Client>>>,
}

impl LeaseKeeper {
    /// Starts keeping a lease of `ttl`; `client` yields the current etcd client (None while disconnected).
    pub fn start(
        ttl: Duration,
        client: impl Fn() -> Option<Client> + Send + Sync + 'static,
    ) -> LeaseKeeper {
        let (tx, rx) = watch::channel(LeaseStatus {
            id: 0,
            confirmed_at: None,
            ttl,
            generation: 0,
        });
        let last_client = Arc::new(Mutex::new(None));
        let lc = last_client.clone();
        let task = tokio::spawn(async move { keep(ttl, client, tx, lc).await });
        LeaseKeeper {
            status: rx,
            task,
            client: last_client,
        }
    }

    /// The current status.
    pub fn status(&self) -> LeaseStatus {
        self.status.borrow().clone()
    }

    /// Notified on every change of status.
    pub fn subscribe(&self) -> watch::Receiver<LeaseStatus> {
        self.status.clone()
    }

    /// Stops keeping the lease and revokes it (its keys go at once), best effort within `timeout`.
    pub async fn revoke(self, timeout: Duration) {
        self.task.abort();
        let id = self.status.borrow().id;
        let client = self
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let (Some(mut c), true) = (client, id != 0) {
            match tokio::time::timeout(timeout, c.lease_revoke(id)).await {
                Ok(Ok(_)) => tracing::info!(lease = id, "lease revoked"),
                Ok(Err(e)) => tracing::warn!(lease = id, "revoking the lease: {e}"),
                Err(_) => tracing::warn!(lease = id, "revoking the lease timed out"),
            }
        }
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep(
    ttl: Duration,
    client: impl Fn() -> Option<Client>,
    tx: watch::Sender<LeaseStatus>,
    last_client: Arc<Mutex<Option<Client>>>,
) {
    let ttl_secs = ttl.as_secs().max(1) as i64;
    // Keep-alives three times per TTL, and never less often than every 2 s.
    let period = (ttl / 3)
        .min(Duration::from_secs(2))
        .max(Duration::from_millis(200));
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(mut c) = client() else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
        };
        *last_client.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone());
        let mut id = tx.borrow().id;
        if id == 0 || tx.borrow().maybe_expired(Instant::now()) && !still_alive(&mut c, id).await {
            let asked = Instant::now();
            match tokio::time::timeout(ttl, c.lease_grant(ttl_secs, None)).await {
                Ok(Ok(r)) => {
                    id = r.id();
                    let ttl = Duration::from_secs(r.ttl().max(1) as u64);
                    tx.send_modify(|s| {
                        s.generation += u64::from(s.id != 0);
                        s.id = id;
                        s.confirmed_at = Some(asked);
                        s.ttl = ttl;
                    });
                    tracing::info!(lease = id, ?ttl, "lease granted");
                }
                Ok(Err(e)) => {
                    tracing::warn!("granting a lease: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(_) => continue,
            }
        }
        backoff = Duration::from_millis(100);
        // Keep it alive until the stream breaks or etcd says the lease is gone.
        let (mut keeper, mut stream) = match c.lease_keep_alive(id).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(lease = id, "starting lease keep-alive: {e}");
                tokio::time::sleep(period).await;
                continue;
            }
        };
        loop {
            let asked = Instant::now();
            if let Err(e) = keeper.keep_alive().await {
                tracing::warn!(lease = id, "lease keep-alive: {e}");
                break;
            }
            match tokio::time::timeout(period.max(Duration::from_millis(500)), stream.message())
                .await
            {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    let ttl = Duration::from_secs(r.ttl() as u64);
                    tx.send_modify(|s| {
                        s.confirmed_at = Some(asked);
                        s.ttl = ttl.max(s.ttl.min(ttl));
                    });
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(
                        lease = id,
                        "etcd says the lease expired; granting a new one"
                    );
                    tx.send_modify(|s| s.confirmed_at = None);
                    break;
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    tracing::warn!(lease = id, "lease keep-alive stream ended");
                    break;
                }
                Err(_) => {
                    tracing::debug!(lease = id, "no keep-alive answer in time");
                    break;
                }
            }
            tokio::time::sleep(period).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks etcd whether lease `id` still has time left.
async fn still_alive(c: &mut Client, id: i64) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), c.lease_time_to_live(id, None)).await,
        Ok(Ok(r)) if r.ttl() > 0
    )
}
