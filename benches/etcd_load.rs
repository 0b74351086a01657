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

#[path = "etcd_load/agents.rs"]
mod agents;
#[path = "etcd_load/cluster.rs"]
mod cluster;
#[path = "etcd_load/histogram.rs"]
mod histogram;

use agents::*;
use cluster::*;
use histogram::*;

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

// long: one run's phases in order (connect, steady, submit, rack death), each measured around its step
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
