//! etcd under fleet's load: N lightweight agents against a real 3-member etcd cluster on loopback.
//!
//! Each agent does what fleetd does to etcd, and nothing else (no systemd, no gossip): one connection
//! to one member (spread evenly), a lease (TTL `--ttl`) kept alive every `--period` on one keep-alive
//! stream (a keep-alive is sent, its answer awaited, then the period waited, as `src/agent/lease.rs`
//! does), its announcement `P machines/<id>` bound to the lease, one watch on the prefix (or, with
//! `--watch units`, on `units/`, `unit-files/` and `claims/` only), and the registry's idle probe
//! (a watch progress request when the watch was silent for `--probe`).
//!
//! Phases, each bounded in time: agents connect (at most `--connect-rate` per second); a steady
//! phase; an "API" client submits `--units` units (file + record) at `--submit-rate` per second and
//! agents claim them (one claim transaction each, bound to the claimer's lease); then a rack of
//! `--rack` machines holding claims dies (its agents vanish without revoking): one survivor per dead
//! machine polls the dead lease with `LeaseTimeToLive` every `--ttl-poll` until etcd expired it, then
//! claims its units. It prints, per phase: etcd's CPU (share of one core, per member, from
//! /proc/<pid>/stat) and memory (RSS), keep-alive latency, watch delivery latency (from the write's
//! send to an agent receiving the event) and bytes delivered, claim transaction latency, and the
//! harness's own CPU.
//!
//!     cargo bench --bench etcd_load -- --agents 1000,5000,10000 --period 250ms
//!     cargo bench --bench etcd_load -- --agents 10000 --period 250ms --proxy
//!
//! Loopback only; etcd's data lives in /dev/shm (tmpfs: no disk fsync cost in the figures); the
//! processes it starts are killed by PID when it ends. It raises its own open-files limit to the hard
//! limit (each agent is a connection).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, PutOptions, Txn, TxnOp, WatchOptions,
};

#[derive(Parser, Debug, Clone)]
#[command(about = "etcd under fleet's load: N agents against a 3-member etcd cluster on loopback")]
struct Args {
    /// Numbers of agents, comma-separated: one run each.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    agents: Vec<usize>,
    /// Keep-alive period of every agent (fleetd after issue 11: fence_after / 3 = 250ms).
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    period: Duration,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 10)]
    ttl: i64,
    /// Watch the whole prefix (`prefix`, fleetd today) or only units/, unit-files/ and claims/ (`units`).
    #[arg(long, default_value = "prefix")]
    watch: String,
    /// `etcd grpc-proxy` (one): `none`; `all` (agents talk only to the proxy); `watch` (agents watch
    /// through the proxy, and keep leases alive and claim directly at the members: two connections).
    #[arg(long, default_value = "none")]
    proxy: String,
    /// The registry's idle probe (0 = off).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    probe: Duration,
    /// Units submitted (each then claimed by one agent).
    #[arg(long, default_value_t = 100)]
    units: usize,
    /// Units submitted per second.
    #[arg(long, default_value_t = 20)]
    submit_rate: usize,
    /// Size of each unit file in bytes.
    #[arg(long, default_value_t = 400)]
    unit_bytes: usize,
    /// Machines of the rack that dies (they hold the claims).
    #[arg(long, default_value_t = 40)]
    rack: usize,
    /// LeaseTimeToLive poll period of the agents taking over.
    #[arg(long, default_value = "75ms", value_parser = parse_duration)]
    ttl_poll: Duration,
    /// Length of the steady phase.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    steady: Duration,
    /// Agents connecting per second.
    #[arg(long, default_value_t = 500)]
    connect_rate: usize,
    /// Agents per direct connection (1 = one connection per agent, as fleetd). With `--proxy watch`
    /// every agent needs two connections; at 10,000 agents that exceeds this machine's open-files
    /// limit of 20,000, so there 2 agents share their direct connection (each keeps its own lease,
    /// keep-alive stream and claims on it).
    #[arg(long, default_value_t = 1)]
    share_conn: usize,
    /// Worker threads of the harness's runtime.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Hard limit on one run.
    #[arg(long, default_value = "240s", value_parser = parse_duration)]
    limit: Duration,
    /// (cargo bench passes --bench)
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad unit in {s:?}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

const PREFIX: &str = "/fleet/";

// ------------------------------------------------------------------------------------ histogram

/// A lock-free latency histogram: 1 µs .. ~70 min, 32 sub-buckets per power of two (~3%).
struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    max: AtomicU64,
}

const SUB: u64 = 32;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: (0..(40 * SUB)).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    fn index(us: u64) -> usize {
        if us < SUB {
            return us as usize;
        }
        let exp = 63 - us.leading_zeros() as u64; // >= 5
        let shift = exp - 5;
        let sub = (us >> shift) - SUB; // 0..SUB
        ((shift + 1) * SUB + sub) as usize
    }

    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let shift = i / SUB - 1;
        (SUB + i % SUB) << shift
    }

    fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = Self::index(us).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    /// Percentiles of what was recorded since `since` (a [`Histogram::snapshot`]).
    fn summary(&self, since: &[u64]) -> Summary {
        let now = self.snapshot();
        let diff: Vec<u64> = now.iter().zip(since).map(|(a, b)| a - b).collect();
        let n: u64 = diff.iter().sum();
        let pct = |p: f64| -> Duration {
            if n == 0 {
                return Duration::ZERO;
            }
            let target = ((n as f64) * p).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (i, c) in diff.iter().enumerate() {
                acc += c;
                if acc >= target {
                    return Duration::from_micros(Self::lower(i));
                }
            }
            Duration::ZERO
        };
        Summary {
            n,
            p50: pct(0.5),
            p99: pct(0.99),
            max: Duration::from_micros(self.max.load(Ordering::Relaxed)),
        }
    }
}

struct Summary {
    n: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.n == 0 {
            return write!(f, "-");
        }
        write!(
            f,
            "p50 {} p99 {} max {} (n={})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.n
        )
    }
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2}ms", d.as_secs_f64() * 1000.0)
    } else {
        format!("{:.0}ms", d.as_secs_f64() * 1000.0)
    }
}

// ------------------------------------------------------------------------------------ processes

/// etcd members (and the proxy) started by this run; killed by PID and their data removed on drop.
struct Cluster {
    members: Vec<(Child, String)>, // (process, client URL)
    proxy: Option<(Child, String)>,
    dir: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (c, _) in self.members.iter_mut().chain(self.proxy.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `etcd` with the arguments to come, killed by the kernel if this process dies first
/// (`PR_SET_PDEATHSIG`), so that an interrupted run leaves no etcd behind.
fn etcd_command() -> Command {
    use std::os::unix::process::CommandExt;
    extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    const PR_SET_PDEATHSIG: i32 = 1;
    const SIGKILL: u64 = 9;
    let mut c = Command::new("etcd");
    // SAFETY: prctl is async-signal-safe; called in the child between fork and exec.
    unsafe {
        c.pre_exec(|| {
            prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start(proxy: bool) -> Cluster {
        // (proxy: start one grpc-proxy in front of the members)
        let dir =
            std::path::PathBuf::from(format!("/dev/shm/fleet-etcd-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("l{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut c = Cluster {
            members: Vec::new(),
            proxy: None,
            dir: dir.clone(),
        };
        for (i, (cp, pp)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{cp}");
            let child = etcd_command()
                .args(["--name", &format!("l{i}"), "--data-dir"])
                .arg(dir.join(format!("l{i}")))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pp}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://127.0.0.1:{pp}"),
                ])
                .args(["--initial-cluster", &initial.join(",")])
                .args([
                    "--initial-cluster-token",
                    "fleet-load",
                    "--log-level",
                    "error",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd");
            c.members.push((child, url));
        }
        let t0 = Instant::now();
        for (_, url) in &c.members {
            while !http_get(url, "/health").is_some_and(|b| b.contains("true")) {
                assert!(t0.elapsed() < Duration::from_secs(30), "etcd did not start");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if proxy {
            let port = free_port();
            let eps: Vec<String> = c.members.iter().map(|(_, u)| u.clone()).collect();
            let child = etcd_command()
                .args(["grpc-proxy", "start", "--endpoints", &eps.join(",")])
                .args(["--listen-addr", &format!("127.0.0.1:{port}"), "--data-dir"])
                .arg(dir.join("proxy"))
                .args(["--max-send-bytes", &(64 * 1024 * 1024).to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd grpc-proxy");
            let url = format!("http://127.0.0.1:{port}");
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "proxy did not start"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            c.proxy = Some((child, url));
        }
        c
    }

    /// The members' client URLs.
    fn member_endpoints(&self) -> Vec<String> {
        self.members.iter().map(|(_, u)| u.clone()).collect()
    }

    fn pids(&self) -> Vec<(String, u32)> {
        let mut v: Vec<(String, u32)> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, (c, _))| (format!("etcd{i}"), c.id()))
            .collect();
        if let Some((c, _)) = &self.proxy {
            v.push(("proxy".into(), c.id()));
        }
        v
    }
}

fn http_get(url: &str, path: &str) -> Option<String> {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// CPU seconds (user + system) and RSS bytes of a process, from /proc.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // after the comm field: state is [0], utime [11], stime [12]; USER_HZ = 100
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

/// A counter from a member's /metrics.
fn metric(url: &str, name: &str) -> f64 {
    http_get(url, "/metrics")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Samples CPU and RSS of the processes every 500 ms between [`Sampler::mark`]s.
struct Sampler {
    pids: Vec<(String, u32)>,
    max_rss: Arc<Mutex<BTreeMap<String, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pids: Vec<(String, u32)>) -> Sampler {
        let max_rss = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s, p) = (max_rss.clone(), stop.clone(), pids.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for (name, pid) in &p {
                    let (_, rss) = proc_usage(*pid);
                    let mut g = m.lock().unwrap();
                    let e = g.entry(name.clone()).or_insert(0);
                    *e = (*e).max(rss);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        Sampler {
            pids,
            max_rss,
            stop,
            thread: Some(thread),
        }
    }

    fn cpu(&self) -> BTreeMap<String, f64> {
        let mut m: BTreeMap<String, f64> = self
            .pids
            .iter()
            .map(|(n, p)| (n.clone(), proc_usage(*p).0))
            .collect();
        m.insert("harness".into(), proc_usage(std::process::id()).0);
        m
    }

    /// Resets the RSS maxima; returns the previous ones.
    fn take_rss(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.max_rss.lock().unwrap())
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------------------ agents

#[derive(Default)]
struct Counters {
    keepalive_errors: AtomicU64,
    watch_bytes: AtomicU64,
    watch_events: AtomicU64,
    watch_errors: AtomicU64,
    probes: AtomicU64,
    connected: AtomicUsize,
    setup_errors: AtomicU64,
    claim_failures: AtomicU64,
}

struct Shared {
    args: Args,
    keepalive: Histogram,
    delivery: Histogram,
    claim: Histogram,
    ttl_poll: Histogram,
    write: Histogram,
    counters: Counters,
    /// Send time of every key written by the harness (for the delivery latency).
    sent: RwLock<HashMap<Vec<u8>, Instant>>,
    /// Error kinds and how often they occurred.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        let mut text = format!("{what}: {e}");
        text.truncate(120);
        *self.errors.lock().unwrap().entry(text).or_insert(0) += 1;
    }
}

/// One agent: connection, lease, announcement, keep-alive and watch tasks.
struct Agent {
    client: Client,
    lease: i64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

/// `endpoint` for the lease, the announcement and claims; `watch_endpoint` for the watch (the same,
/// unless the watch goes through a proxy).
async fn start_agent(
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
fn unit_file(i: usize, bytes: usize) -> String {
    let mut s = format!(
        "[Unit]\nDescription=load test unit {i}\n\n[Service]\nExecStart=/usr/bin/sleep infinity\n"
    );
    while s.len() < bytes {
        s.push_str("Environment=PAD=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
    }
    s
}

/// A claim transaction as fleetd's: the claim key must not exist; put it bound to the claimer's lease.
async fn claim(sh: &Shared, client: &Client, unit: &str, machine: usize, lease: i64) -> bool {
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

// ------------------------------------------------------------------------------------ a run

struct Phase<'a> {
    name: &'a str,
    t0: Instant,
    cpu0: BTreeMap<String, f64>,
    ka: Vec<u64>,
    dl: Vec<u64>,
    cl: Vec<u64>,
    tt: Vec<u64>,
    wr: Vec<u64>,
    bytes0: u64,
    events0: u64,
    ka_err0: u64,
    probes0: u64,
    renewed0: f64,
}

fn begin<'a>(name: &'a str, sh: &Shared, sampler: &Sampler, cluster: &Cluster) -> Phase<'a> {
    sampler.take_rss();
    Phase {
        name,
        t0: Instant::now(),
        cpu0: sampler.cpu(),
        ka: sh.keepalive.snapshot(),
        dl: sh.delivery.snapshot(),
        cl: sh.claim.snapshot(),
        tt: sh.ttl_poll.snapshot(),
        wr: sh.write.snapshot(),
        bytes0: sh.counters.watch_bytes.load(Ordering::Relaxed),
        events0: sh.counters.watch_events.load(Ordering::Relaxed),
        ka_err0: sh.counters.keepalive_errors.load(Ordering::Relaxed),
        probes0: sh.counters.probes.load(Ordering::Relaxed),
        renewed0: renewed(cluster),
    }
}

fn renewed(cluster: &Cluster) -> f64 {
    cluster
        .members
        .iter()
        .map(|(_, u)| metric(u, "etcd_debugging_lease_renewed_total"))
        .sum()
}

fn end(p: Phase, sh: &Shared, sampler: &Sampler, cluster: &Cluster, agents: usize) {
    let wall = p.t0.elapsed().as_secs_f64();
    let cpu1 = sampler.cpu();
    let rss = sampler.take_rss();
    let mut cpu = String::new();
    let mut etcd_total = 0.0;
    for (name, c1) in &cpu1 {
        let share = (c1 - p.cpu0.get(name).copied().unwrap_or(0.0)) / wall * 100.0;
        if name.starts_with("etcd") {
            etcd_total += share;
        }
        let mem = rss
            .get(name)
            .map(|b| format!(" {}MB", b / (1024 * 1024)))
            .unwrap_or_default();
        cpu.push_str(&format!("{name} {share:.0}%{mem}  "));
    }
    let bytes = sh.counters.watch_bytes.load(Ordering::Relaxed) - p.bytes0;
    let events = sh.counters.watch_events.load(Ordering::Relaxed) - p.events0;
    let renewals = renewed(cluster) - p.renewed0;
    println!("  [{}] {:.1}s", p.name, wall);
    println!("    cpu (share of one core) / max RSS: {cpu}(etcd total {etcd_total:.0}%)");
    println!(
        "    keep-alive: {}; errors {}; leader renewals {:.0}/s",
        sh.keepalive.summary(&p.ka),
        sh.counters.keepalive_errors.load(Ordering::Relaxed) - p.ka_err0,
        renewals / wall
    );
    println!(
        "    watch: delivery {}; {events} events, {:.1} MB delivered ({:.1} kB per agent), {} probes",
        sh.delivery.summary(&p.dl),
        bytes as f64 / 1e6,
        bytes as f64 / 1e3 / agents.max(1) as f64,
        sh.counters.probes.load(Ordering::Relaxed) - p.probes0
    );
    let cl = sh.claim.summary(&p.cl);
    let tt = sh.ttl_poll.summary(&p.tt);
    let wr = sh.write.summary(&p.wr);
    if wr.n > 0 {
        println!("    unit writes: {wr}");
    }
    if cl.n > 0 {
        println!("    claim txn: {cl}");
    }
    if tt.n > 0 {
        println!("    LeaseTimeToLive: {tt}");
    }
}

async fn run(n: usize, args: &Args) {
    let cluster = Cluster::start(args.proxy != "none");
    let sampler = Sampler::start(cluster.pids());
    let sh = Arc::new(Shared {
        args: args.clone(),
        keepalive: Histogram::new(),
        delivery: Histogram::new(),
        claim: Histogram::new(),
        ttl_poll: Histogram::new(),
        write: Histogram::new(),
        counters: Counters::default(),
        sent: RwLock::new(HashMap::new()),
        errors: Mutex::new(BTreeMap::new()),
    });
    let deadline = Instant::now() + args.limit;
    println!(
        "== {n} agents, keep-alive every {:?}, TTL {}s, watch {}, {}, probe {:?}",
        args.period,
        args.ttl,
        args.watch,
        match args.proxy.as_str() {
            "all" => "everything through one grpc-proxy",
            "watch" => "watches through one grpc-proxy, leases and claims direct",
            _ => "direct to 3 members",
        },
        args.probe
    );

    // Connect.
    let phase = begin("connect", &sh, &sampler, &cluster);
    let eps = cluster.member_endpoints();
    let proxy = cluster.proxy.as_ref().map(|(_, u)| u.clone());
    let mut agents: Vec<Option<Agent>> = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let mut last_client: Option<Client> = None;
    let batch = args.connect_rate.max(1) / 10;
    for i in 0..n {
        let member = eps[i % eps.len()].clone();
        let (ep, wep) = match (args.proxy.as_str(), &proxy) {
            ("all", Some(p)) => (p.clone(), p.clone()),
            ("watch", Some(p)) => (member, p.clone()),
            _ => (member.clone(), member),
        };
        // An agent sharing the direct connection of the agent before it (--share-conn).
        let shared_client = if args.share_conn > 1 && i % args.share_conn != 0 {
            last_client.clone()
        } else {
            let c = Client::connect(
                [ep.clone()],
                Some(
                    ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(5))
                        .with_keep_alive(Duration::from_secs(3), Duration::from_secs(3))
                        .with_require_leader(true),
                ),
            )
            .await
            .ok();
            last_client = c.clone();
            c
        };
        pending.spawn({
            let sh = sh.clone();
            async move { (i, start_agent(i, ep, wep, shared_client, sh).await) }
        });
        if (i + 1) % batch.max(1) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut slots: Vec<Option<Agent>> = (0..n).map(|_| None).collect();
    while let Some(r) = pending.join_next().await {
        match r {
            Ok((i, Ok(a))) => slots[i] = Some(a),
            Ok((i, Err(e))) => {
                if sh.counters.setup_errors.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("agent {i}: {e}");
                }
            }
            Err(e) => eprintln!("agent task: {e}"),
        }
        if Instant::now() > deadline {
            break;
        }
    }
    agents.extend(slots);
    println!(
        "  {} agents connected ({} failed)",
        sh.counters.connected.load(Ordering::Relaxed),
        sh.counters.setup_errors.load(Ordering::Relaxed)
    );
    end(phase, &sh, &sampler, &cluster, n);

    // Steady.
    let phase = begin("steady", &sh, &sampler, &cluster);
    tokio::time::sleep(
        args.steady
            .min(deadline.saturating_duration_since(Instant::now())),
    )
    .await;
    end(phase, &sh, &sampler, &cluster, n);

    // Units submitted, each claimed by one of the rack's machines.
    let phase = begin("submit + claim", &sh, &sampler, &cluster);
    let api = agents
        .iter()
        .flatten()
        .next()
        .map(|a| a.client.clone())
        .expect("an agent");
    let rack: Vec<usize> = (0..n)
        .filter(|i| agents[*i].is_some())
        .take(args.rack)
        .collect();
    let mut held: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    let gap = Duration::from_secs_f64(1.0 / args.submit_rate.max(1) as f64);
    for u in 0..args.units {
        if Instant::now() > deadline {
            break;
        }
        let name = format!("load{u:05}.service");
        let text = unit_file(u, args.unit_bytes);
        let hash = format!("{:040x}", u);
        let fk = format!("{PREFIX}unit-files/{hash}");
        let rk = format!("{PREFIX}units/{name}");
        {
            let mut s = sh.sent.write().unwrap();
            s.insert(fk.clone().into_bytes(), Instant::now());
            s.insert(rk.clone().into_bytes(), Instant::now());
        }
        let txn = Txn::new()
            .when([Compare::create_revision(rk.clone(), CompareOp::Equal, 0)])
            .and_then([
                TxnOp::put(fk, text, None),
                TxnOp::put(
                    rk,
                    format!(r#"{{"name":"{name}","hash":"{hash}","desiredState":"launched"}}"#),
                    None,
                ),
            ]);
        let t = Instant::now();
        let _ = api.kv_client().txn(txn).await;
        sh.write.record(t.elapsed());
        if !rack.is_empty() {
            let m = rack[u % rack.len()];
            let a = agents[m].as_ref().unwrap();
            if claim(&sh, &a.client, &name, m, a.lease).await {
                held.entry(m).or_default().push(name);
            }
        }
        tokio::time::sleep(gap.saturating_sub(t.elapsed())).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // deliveries settle
    end(phase, &sh, &sampler, &cluster, n);

    // A rack dies; one survivor per dead machine polls the dead lease, then claims its units.
    let phase = begin("rack failover", &sh, &sampler, &cluster);
    let t_fail = Instant::now();
    let survivors: Vec<usize> = (0..n)
        .filter(|i| agents[*i].is_some() && !rack.contains(i))
        .take(rack.len())
        .collect();
    let mut takeovers = tokio::task::JoinSet::new();
    for (k, dead) in rack.iter().enumerate() {
        let Some(mut a) = agents[*dead].take() else {
            continue;
        };
        a.kill();
        let dead_lease = a.lease;
        drop(a);
        let Some(&s) = survivors.get(k) else { continue };
        let sa = agents[s].as_ref().unwrap();
        let (client, lease) = (sa.client.clone(), sa.lease);
        let units = held.remove(dead).unwrap_or_default();
        let sh = sh.clone();
        let poll = args.ttl_poll;
        takeovers.spawn(async move {
            let mut c = client.clone();
            loop {
                let t = Instant::now();
                let r = c.lease_time_to_live(dead_lease, None).await;
                sh.ttl_poll.record(t.elapsed());
                match r {
                    Ok(r) if r.ttl() > 0 => tokio::time::sleep(poll).await,
                    Ok(_) => break,
                    Err(_) => tokio::time::sleep(poll).await,
                }
                if t_fail.elapsed() > Duration::from_secs(60) {
                    return;
                }
            }
            // etcd deletes the dead lease's claims as it expires it; the survivor claims them.
            for u in units {
                for _ in 0..50 {
                    if claim(&sh, &client, &u, s, lease).await {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
    }
    while takeovers.join_next().await.is_some() {}
    let moved = t_fail.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "  rack of {} machines ({} claims) moved {:.1}s after the crash (lease TTL {}s)",
        rack.len(),
        args.units,
        moved.as_secs_f64(),
        args.ttl
    );
    end(phase, &sh, &sampler, &cluster, n);
    for a in agents.iter_mut().flatten() {
        a.kill();
    }
    drop(agents);
    println!(
        "  totals: {} keep-alive errors, {} watch errors, {} claim attempts that found the old claim still there",
        sh.counters.keepalive_errors.load(Ordering::Relaxed),
        sh.counters.watch_errors.load(Ordering::Relaxed),
        sh.counters.claim_failures.load(Ordering::Relaxed)
    );
    for (e, n) in sh.errors.lock().unwrap().iter() {
        println!("    {n} x {e}");
    }
}

fn raise_nofile() {
    #[repr(C)]
    struct Rlimit {
        cur: u64,
        max: u64,
    }
    extern "C" {
        fn getrlimit(resource: i32, rlim: *mut Rlimit) -> i32;
        fn setrlimit(resource: i32, rlim: *const Rlimit) -> i32;
    }
    const RLIMIT_NOFILE: i32 = 7;
    let mut r = Rlimit { cur: 0, max: 0 };
    // SAFETY: plain libc calls on a valid struct.
    unsafe {
        if getrlimit(RLIMIT_NOFILE, &mut r) == 0 {
            // Root may raise the hard limit too (two connections per agent with --proxy watch,
            // and the etcd processes inherit it).
            let want = Rlimit {
                cur: r.max.max(65536),
                max: r.max.max(65536),
            };
            if setrlimit(RLIMIT_NOFILE, &want) == 0 {
                r = want;
            } else {
                r.cur = r.max;
                setrlimit(RLIMIT_NOFILE, &r);
            }
        }
    }
    println!("open files limit: {}", r.cur);
}

fn main() {
    let args = Args::parse();
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .enable_all()
        .build()
        .unwrap();
    for &n in &args.agents {
        rt.block_on(run(n, &args));
    }
}
