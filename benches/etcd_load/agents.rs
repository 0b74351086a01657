//! The lightweight agents: each does to etcd what fleetd does (lease, announcement, watch, probe, claims).

use super::*;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) keepalive_errors: AtomicU64,
    pub(crate) watch_bytes: AtomicU64,
    pub(crate) watch_events: AtomicU64,
    pub(crate) watch_errors: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) connected: AtomicUsize,
    pub(crate) setup_errors: AtomicU64,
    pub(crate) claim_failures: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) args: Args,
    pub(crate) keepalive: Histogram,
    pub(crate) delivery: Histogram,
    pub(crate) claim: Histogram,
    pub(crate) ttl_poll: Histogram,
    pub(crate) write: Histogram,
    pub(crate) counters: Counters,
    /// Send time of every key written by the harness (for the delivery latency).
    pub(crate) sent: RwLock<HashMap<Vec<u8>, Instant>>,
    /// Error kinds and how often they occurred.
    pub(crate) errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub(crate) fn error(&self, what: &str, e: impl std::fmt::Display) {
        let mut text = format!("{what}: {e}");
        text.truncate(120);
        *self.errors.lock().unwrap().entry(text).or_insert(0) += 1;
    }
}

/// One agent: connection, lease, announcement, keep-alive and watch tasks.
pub(crate) struct Agent {
    pub(crate) client: Client,
    pub(crate) lease: i64,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    pub(crate) fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// `endpoint` for the lease, the announcement and claims; `watch_endpoint` for the watch (the same,
/// unless the watch goes through a proxy).
// long: one agent set up as fleetd does it: connection, lease, announcement, its three tasks
pub(crate) async fn start_agent(
    i: usize,
    endpoint: String,
    watch_endpoint: String,
    shared_client: Option<Client>,
    sh: Arc<Shared>,
) -> Result<Agent, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(3), Duration::from_secs(3))
        .with_require_leader(true);
    let client = match shared_client {
        Some(c) => c,
        None => Client::connect([endpoint.clone()], Some(opts.clone()))
            .await
            .map_err(|e| e.to_string())?,
    };
    let watcher = if watch_endpoint == endpoint {
        client.clone()
    } else {
        Client::connect([watch_endpoint], Some(opts))
            .await
            .map_err(|e| e.to_string())?
    };
    let mut c = client.clone();
    let lease = c
        .lease_grant(sh.args.ttl, None)
        .await
        .map_err(|e| format!("grant: {e}"))?
        .id();
    let mut tasks = Vec::new();
    // Keep-alive: send, await the answer (at most 1 s), wait the period.
    {
        let sh = sh.clone();
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let period = sh.args.period;
            loop {
                let (mut keeper, mut answers) = match c.lease_keep_alive(lease).await {
                    Ok(x) => x,
                    Err(e) => {
                        sh.counters.keepalive_errors.fetch_add(1, Ordering::Relaxed);
                        let lost = e.to_string().contains("lease not found");
                        sh.error("keep-alive stream", e);
                        if lost {
                            return; // (fleetd would grant a new lease and re-claim)
                        }
                        tokio::time::sleep(period).await;
                        continue;
                    }
                };
                loop {
                    let t = Instant::now();
                    if let Err(e) = keeper.keep_alive().await {
                        sh.error("keep-alive send", e);
                        break;
                    }
                    match tokio::time::timeout(Duration::from_secs(1), answers.message()).await {
                        Ok(Ok(Some(r))) if r.ttl() > 0 => sh.keepalive.record(t.elapsed()),
                        Ok(Ok(Some(_))) => {
                            sh.counters.keepalive_errors.fetch_add(1, Ordering::Relaxed);
                            sh.error("keep-alive", "lease expired (agent stops)");
                            return;
                        }
                        other => {
                            sh.counters.keepalive_errors.fetch_add(1, Ordering::Relaxed);
                            match other {
                                Err(_) => sh.error("keep-alive", "no answer within 1s"),
                                Ok(Ok(None)) => sh.error("keep-alive", "stream ended"),
                                Ok(Err(e)) => sh.error("keep-alive", e),
                                Ok(Ok(Some(_))) => {}
                            }
                            break;
                        }
                    }
                    tokio::time::sleep(period).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }));
    }
    let id = format!("{i:032x}");
    let record = format!(
        r#"{{"id":"{id}","primaryIP":"10.0.{}.{}","metadata":{{"rack":"r{}"}},"version":"0.1.0","gossipAddr":"10.0.{}.{}:4010"}}"#,
        i / 250,
        i % 250,
        i / 40,
        i / 250,
        i % 250
    );
    c.put(
        format!("{PREFIX}machines/{id}"),
        record,
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .map_err(|e| format!("announce: {e}"))?;
    let mut w = watcher.watch_client();
    let first = if sh.args.watch == "units" {
        WatchOptions::new().with_range(format!("{PREFIX}claims0"))
    } else {
        WatchOptions::new().with_prefix()
    };
    let start_key = if sh.args.watch == "units" {
        format!("{PREFIX}claims/")
    } else {
        PREFIX.to_string()
    };
    let mut stream = w
        .watch(start_key, Some(first.with_progress_notify()))
        .await
        .map_err(|e| format!("watch: {e}"))?;
    if sh.args.watch == "units" {
        stream
            .watch(
                format!("{PREFIX}unit-files/"),
                Some(
                    WatchOptions::new()
                        .with_range(format!("{PREFIX}units0"))
                        .with_progress_notify(),
                ),
            )
            .await
            .map_err(|e| format!("watch: {e}"))?;
    }
    // Watch: count bytes, time events the harness wrote, probe when silent.
    {
        let sh = sh.clone();
        tasks.push(tokio::spawn(async move {
            let probe = sh.args.probe;
            let mut last = Instant::now();
            let mut probing = false;
            loop {
                let wait = if probe.is_zero() {
                    Duration::from_secs(3600)
                } else {
                    probe
                        .saturating_sub(last.elapsed())
                        .max(Duration::from_millis(10))
                };
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tokio::time::sleep(wait) => {
                        if !probing && !probe.is_zero() && last.elapsed() >= probe {
                            if stream.request_progress().await.is_err() {
                                sh.counters.watch_errors.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            sh.counters.probes.fetch_add(1, Ordering::Relaxed);
                            probing = true;
                        }
                        continue;
                    }
                };
                last = Instant::now();
                probing = false;
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        sh.counters.watch_errors.fetch_add(1, Ordering::Relaxed);
                        sh.error("watch", "stream ended");
                        return;
                    }
                    Err(e) => {
                        sh.counters.watch_errors.fetch_add(1, Ordering::Relaxed);
                        sh.error("watch", e);
                        return;
                    }
                };
                let now = Instant::now();
                let mut bytes = 64; // response header and framing, roughly
                let sent = sh.sent.read().unwrap();
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    bytes += 32 + kv.key().len() + kv.value().len();
                    sh.counters.watch_events.fetch_add(1, Ordering::Relaxed);
                    if ev.event_type() == EventType::Put {
                        if let Some(t) = sent.get(kv.key()) {
                            sh.delivery.record(now.duration_since(*t));
                        }
                    }
                }
                sh.counters
                    .watch_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
            }
        }));
    }
    sh.counters.connected.fetch_add(1, Ordering::Relaxed);
    Ok(Agent {
        client,
        lease,
        tasks,
    })
}

/// A unit file of about `bytes` bytes.
pub(crate) fn unit_file(i: usize, bytes: usize) -> String {
    let mut s = format!(
        "[Unit]\nDescription=load test unit {i}\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n"
    );
    while s.len() < bytes {
        s.push_str("Environment=PAD=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
    }
    s
}

/// A claim transaction as fleetd's: the claim key must not exist; put it bound to the claimer's lease.
pub(crate) async fn claim(
    sh: &Shared,
    client: &Client,
    unit: &str,
    machine: usize,
    lease: i64,
) -> bool {
    let key = format!("{PREFIX}claims/{unit}");
    sh.sent
        .write()
        .unwrap()
        .insert(key.clone().into_bytes(), Instant::now());
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key,
            format!(r#"{{"machineID":"{machine:032x}"}}"#),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    let t = Instant::now();
    let r = client.kv_client().txn(txn).await;
    sh.claim.record(t.elapsed());
    match r {
        Ok(r) if r.succeeded() => true,
        _ => {
            sh.counters.claim_failures.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}
