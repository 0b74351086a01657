//! fleetd's metrics, served at `GET /metrics` in the Prometheus text exposition format (0.0.4),
//! written by hand: a few atomic counters and fixed-bucket histograms, no metrics crate.
//!
//! One process-wide [`Metrics`] ([`global`]): the agent, the registry and the API record into it
//! with one call each, so decision code stays free of metrics plumbing.
//!
//! What is measured and where:
//! - membership (`fleet_machines{state}`): alive/suspect/down counts of this node's gossip view, read
//!   at scrape time;
//! - failure detection (`fleet_gossip_detection_seconds`): from the first sign of trouble this node
//!   saw (the first sample showing the machine suspect, or, when the suspicion fell between two
//!   samples, the last sample showing it alive) to the first sample showing it down. The view is
//!   sampled every [`SAMPLE_PERIOD`], so values are ±100 ms; a graceful leave shows up as ~0.
//!   The part before the first failed probe is not visible to any single node and is not included;
//! - failover (`fleet_failover_seconds`): from this node's down verdict on a machine (when the
//!   agent's view first showed it gone) to this node's successful takeover claim of one of its
//!   units (one sample per unit taken over); it includes the wait for the proof that the holder stopped;
//! - placements (`fleet_placements_total{kind}`) and lost claim transactions
//!   (`fleet_claim_conflicts_total`);
//! - etcd requests (`fleet_etcd_request_duration_seconds{op}`, `fleet_etcd_request_errors_total{op}`)
//!   for the registry's transactions (`op="registry_txn"`: API writes) and the agent's claim
//!   transactions (`op="claim_txn"`);
//! - systemd jobs (`fleet_systemd_job_duration_seconds{job}`, `fleet_systemd_job_failures_total{job}`):
//!   start (from queueing the job to its `JobRemoved` signal) and stop (the whole stop-and-wait call);
//! - gossip traffic (`fleet_gossip_bytes_total{direction}`): UDP bytes of the gossip endpoint (QUIC
//!   connections and sealed datagrams), from [`GossipHandle::stats`];
//! - refused gossip (`fleet_gossip_refused_total{reason}`, `fleet_gossip_refutations_held_total`):
//!   the gossip core's and the transport's (sealed datagrams) counters of what they refused (see
//!   [`write_gossip_refusals`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use fleet_gossip::Liveness;
use fleet_gossip_quic::transport::GossipHandle;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often the membership sampler reads the gossip view.
pub const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// Upper bounds (seconds) of every histogram's buckets (`+Inf` is implied).
pub const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A histogram of durations with the fixed [`BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, le) in BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(["+Inf".to_string()])
            .enumerate()
        {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = |l: &str| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{{{l}}}")
            }
        };
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        // The count is the +Inf bucket (read once, so the two always agree).
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Which etcd requests are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdOp {
    /// A registry transaction (unit writes from the API).
    RegistryTxn,
    /// An agent claim transaction (claim, take over, re-bind, release, acknowledge, announce).
    ClaimTxn,
    /// A `LeaseTimeToLive` about another machine's lease (proving a holder stopped).
    LeaseTtl,
}

impl EtcdOp {
    const ALL: [EtcdOp; 3] = [EtcdOp::RegistryTxn, EtcdOp::ClaimTxn, EtcdOp::LeaseTtl];

    fn label(self) -> &'static str {
        match self {
            EtcdOp::RegistryTxn => "registry_txn",
            EtcdOp::ClaimTxn => "claim_txn",
            EtcdOp::LeaseTtl => "lease_ttl",
        }
    }
}

/// Which systemd jobs are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// `StartUnit`, until its `JobRemoved` signal.
    Start,
    /// `StopUnit`, waited for.
    Stop,
}

impl JobKind {
    const ALL: [JobKind; 2] = [JobKind::Start, JobKind::Stop];

    fn label(self) -> &'static str {
        match self {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
        }
    }
}

#[derive(Debug, Default)]
struct Timed {
    latency: Histogram,
    errors: AtomicU64,
}

/// Every metric of this fleetd. Use [`global`].
#[derive(Debug, Default)]
pub struct Metrics {
    claims: AtomicU64,
    takeovers: AtomicU64,
    claim_conflicts: AtomicU64,
    fencings: AtomicU64,
    detection: Histogram,
    failover: Histogram,
    etcd: [Timed; 3],
    systemd: [Timed; 2],
    /// When this node's samples first showed each machine down (cleared when it comes back).
    down_at: Mutex<HashMap<String, Instant>>,
    /// Start jobs queued and not yet removed, by unit.
    pending_starts: Mutex<HashMap<String, Instant>>,
    gossip: OnceLock<GossipHandle>,
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::default)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// Reads gossip traffic and membership from `handle` at scrape time (first call wins).
    pub fn attach_gossip(&self, handle: GossipHandle) {
        let _ = self.gossip.set(handle);
    }

    /// This machine won a claim for a unit nobody held.
    pub fn placed(&self) {
        self.claims.fetch_add(1, Ordering::Relaxed);
    }

    /// This machine took a unit over from `from`, a machine that is gone: counts a placement and,
    /// if this node saw `from` go down, the failover latency from `verdict` (the agent's own record
    /// of the down verdict), else from the sampler's.
    pub fn took_over(&self, from: &str, verdict: Option<Instant>) {
        self.takeovers.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = verdict.or_else(|| lock(&self.down_at).get(from).copied()) {
            self.failover.observe(t.elapsed());
        }
    }

    /// A claim transaction lost its compare (another agent was first, or the claim changed).
    pub fn claim_conflict(&self) {
        self.claim_conflicts.fetch_add(1, Ordering::Relaxed);
    }

    /// This machine passed its fence deadline and killed its claimed units.
    pub fn fenced(&self) {
        self.fencings.fetch_add(1, Ordering::Relaxed);
    }

    /// Times `f` as an etcd request of kind `op`; an `Err` counts as an error.
    pub async fn time_etcd<T, E>(
        &self,
        op: EtcdOp,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let t = Instant::now();
        let r = f.await;
        let m = &self.etcd[op as usize];
        m.latency.observe(t.elapsed());
        if r.is_err() {
            m.errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Records an etcd request of kind `op` that never got an answer in time.
    pub fn etcd_timeout(&self, op: EtcdOp, waited: Duration) {
        let m = &self.etcd[op as usize];
        m.latency.observe(waited);
        m.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Times `f`, a systemd job that is waited for (stop).
    pub async fn time_job<T, E>(
        &self,
        kind: JobKind,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let t = Instant::now();
        let r = f.await;
        self.job_finished(kind, t.elapsed(), r.is_ok());
        r
    }

    /// A start job for `unit` was queued; [`Metrics::job_removed`] completes the measurement.
    pub fn start_queued(&self, unit: &str) {
        lock(&self.pending_starts).insert(unit.to_string(), Instant::now());
    }

    /// systemd removed a job of `unit` (its `JobRemoved` signal) with `success`.
    pub fn job_removed(&self, unit: &str, success: bool) {
        if let Some(t) = lock(&self.pending_starts).remove(unit) {
            self.job_finished(JobKind::Start, t.elapsed(), success);
        }
    }

    fn job_finished(&self, kind: JobKind, took: Duration, success: bool) {
        let m = &self.systemd[kind as usize];
        m.latency.observe(took);
        if !success {
            m.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The failover histogram's count (tests, logs).
    pub fn failovers(&self) -> u64 {
        self.failover.count()
    }

    /// Renders every metric; `extra` (already formatted lines) is appended.
    pub async fn render(&self, extra: &str) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let o = &mut out;
        header(
            o,
            "fleet_build_info",
            "gauge",
            "fleetd's version (always 1).",
        );
        let _ = writeln!(
            o,
            "fleet_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        header(
            o,
            "fleet_placements_total",
            "counter",
            "Units this machine claimed: kind=claim for a free unit, kind=takeover from a machine that is gone.",
        );
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            o,
            "fleet_placements_total{{kind=\"claim\"}} {}",
            get(&self.claims)
        );
        let _ = writeln!(
            o,
            "fleet_placements_total{{kind=\"takeover\"}} {}",
            get(&self.takeovers)
        );
        header(
            o,
            "fleet_claim_conflicts_total",
            "counter",
            "Claim transactions this machine lost (another agent was first, or the claim changed).",
        );
        let _ = writeln!(
            o,
            "fleet_claim_conflicts_total {}",
            get(&self.claim_conflicts)
        );
        header(
            o,
            "fleet_fencings_total",
            "counter",
            "Times this machine passed its fence deadline and killed its claimed units (docs/safety.md).",
        );
        let _ = writeln!(o, "fleet_fencings_total {}", get(&self.fencings));
        header(
            o,
            "fleet_gossip_detection_seconds",
            "histogram",
            "From the first sign of trouble this node saw (suspect) to its down verdict on a machine.",
        );
        self.detection
            .write(o, "fleet_gossip_detection_seconds", "");
        header(
            o,
            "fleet_failover_seconds",
            "histogram",
            "From this node's down verdict on a machine to this node taking over one of its units.",
        );
        self.failover.write(o, "fleet_failover_seconds", "");
        header(
            o,
            "fleet_etcd_request_duration_seconds",
            "histogram",
            "etcd requests: registry transactions (API writes) and agent claim transactions.",
        );
        for op in EtcdOp::ALL {
            self.etcd[op as usize].latency.write(
                o,
                "fleet_etcd_request_duration_seconds",
                &format!("op=\"{}\"", op.label()),
            );
        }
        header(
            o,
            "fleet_etcd_request_errors_total",
            "counter",
            "etcd requests that failed or timed out.",
        );
        for op in EtcdOp::ALL {
            let _ = writeln!(
                o,
                "fleet_etcd_request_errors_total{{op=\"{}\"}} {}",
                op.label(),
                get(&self.etcd[op as usize].errors)
            );
        }
        header(
            o,
            "fleet_systemd_job_duration_seconds",
            "histogram",
            "systemd jobs: start (queued to JobRemoved) and stop (waited for).",
        );
        for k in JobKind::ALL {
            self.systemd[k as usize].latency.write(
                o,
                "fleet_systemd_job_duration_seconds",
                &format!("job=\"{}\"", k.label()),
            );
        }
        header(
            o,
            "fleet_systemd_job_failures_total",
            "counter",
            "systemd jobs that did not succeed.",
        );
        for k in JobKind::ALL {
            let _ = writeln!(
                o,
                "fleet_systemd_job_failures_total{{job=\"{}\"}} {}",
                k.label(),
                get(&self.systemd[k as usize].errors)
            );
        }
        if let Some(g) = self.gossip.get() {
            if let Ok(view) = g.view().await {
                let count =
                    |l: Liveness| view.machines.values().filter(|m| m.liveness == l).count();
                header(
                    o,
                    "fleet_machines",
                    "gauge",
                    "Machines of this node's gossip view by liveness (itself included).",
                );
                for (state, l) in [
                    ("alive", Liveness::Alive),
                    ("suspect", Liveness::Suspect),
                    ("down", Liveness::Down),
                ] {
                    let _ = writeln!(o, "fleet_machines{{state=\"{state}\"}} {}", count(l));
                }
            }
            if let Ok(s) = g.stats().await {
                header(
                    o,
                    "fleet_gossip_bytes_total",
                    "counter",
                    "UDP bytes of the gossip endpoint (QUIC connections, TLS and QUIC overhead included, and sealed datagrams).",
                );
                let _ = writeln!(
                    o,
                    "fleet_gossip_bytes_total{{direction=\"in\"}} {}",
                    s.udp_bytes_in
                );
                let _ = writeln!(
                    o,
                    "fleet_gossip_bytes_total{{direction=\"out\"}} {}",
                    s.udp_bytes_out
                );
                write_gossip_refusals(o, &s.core, &s.sealed_refusals);
            }
        }
        out.push_str(extra);
        out
    }
}

/// Writes what the gossip core and the transport's sealed datagrams refused
/// (`fleet_gossip_refused_total{reason}`) and the refutations the core held for want of the refuted
/// machine's vouch (`fleet_gossip_refutations_held_total`).
pub fn write_gossip_refusals(
    o: &mut String,
    c: &fleet_gossip::Counters,
    sealed: &fleet_gossip_quic::transport::SealedRefusals,
) {
    header(
        o,
        "fleet_gossip_refused_total",
        "counter",
        "Gossip input refused, by reason: impersonation (a peer claiming another machine), \
         rumour (a new life of a machine told by another), signature (state not signed by its \
         origin), certificate (not the cluster CA's, or naming another machine), refutation (a \
         raise of a machine's incarnation it never vouched for), over_budget (dropped unchecked: \
         the peer's budget of refusals was spent); sealed datagrams (outside connections): \
         sealed_garbage (malformed or over a cap), sealed_forged (not signed by the machine it \
         names, or addressed to another machine), sealed_replayed (already taken, or from an older \
         life of its sender), sealed_stale (addressed to an earlier life of this node), \
         sealed_unverifiable (its sender's certificate is not here yet).",
    );
    let core = [
        ("impersonation", c.impersonations_refused),
        ("rumour", c.rumours_refused),
        ("signature", c.signatures_refused),
        ("certificate", c.certificates_refused),
        ("refutation", c.refutations_refused),
        ("over_budget", c.over_budget_dropped),
    ];
    for (reason, n) in core.into_iter().chain(sealed.by_reason()) {
        let _ = writeln!(o, "fleet_gossip_refused_total{{reason=\"{reason}\"}} {n}");
    }
    header(
        o,
        "fleet_gossip_refutations_held_total",
        "counter",
        "Relayed refutations held until the refuted machine's signed vouch for its incarnation \
         arrived (or refused, if it never did).",
    );
    let _ = writeln!(
        o,
        "fleet_gossip_refutations_held_total {}",
        c.refutations_held
    );
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// What the sampler remembers of one machine.
#[derive(Debug, Clone, Copy)]
struct Seen {
    liveness: Liveness,
    /// When the trouble started: the first suspect sample, else the last alive sample.
    trouble_since: Instant,
}

/// Membership bookkeeping of the sampler, separated from the clock and the gossip handle for tests.
#[derive(Debug, Default)]
pub struct MembershipTracker {
    seen: HashMap<String, Seen>,
}

impl MembershipTracker {
    /// Feeds one sample (`(machine, liveness)` pairs) taken at `now` into `m`.
    pub fn sample<'a>(
        &mut self,
        m: &Metrics,
        now: Instant,
        machines: impl IntoIterator<Item = (&'a str, Liveness)>,
    ) {
        for (id, l) in machines {
            let prev = self.seen.get(id).copied();
            let trouble_since = match (prev.map(|p| p.liveness), l) {
                // Still alive: trouble, if it comes, starts after this sample.
                (_, Liveness::Alive) => now,
                (Some(Liveness::Suspect), Liveness::Suspect) => {
                    prev.map_or(now, |p| p.trouble_since)
                }
                (_, Liveness::Suspect) => now,
                (_, Liveness::Down) => prev.map_or(now, |p| p.trouble_since),
            };
            match (prev.map(|p| p.liveness), l) {
                (Some(Liveness::Alive | Liveness::Suspect), Liveness::Down) => {
                    m.detection
                        .observe(now.saturating_duration_since(trouble_since));
                    lock(&m.down_at).insert(id.to_string(), now);
                }
                (None, Liveness::Down) => {
                    // Already down when first seen: no detection sample, but takeovers still count.
                    lock(&m.down_at).entry(id.to_string()).or_insert(now);
                }
                (_, Liveness::Alive | Liveness::Suspect) => {
                    lock(&m.down_at).remove(id);
                }
                _ => {}
            }
            self.seen.insert(
                id.to_string(),
                Seen {
                    liveness: l,
                    trouble_since,
                },
            );
        }
    }
}

/// Samples `handle`'s view every [`SAMPLE_PERIOD`] into [`global`] (detection latencies, down
/// verdict times for failover) and attaches `handle` for scrape-time gossip metrics. Ends when
/// gossip stops.
pub fn spawn_membership_sampler(handle: GossipHandle) -> tokio::task::JoinHandle<()> {
    global().attach_gossip(handle.clone());
    tokio::spawn(async move {
        let mut tracker = MembershipTracker::default();
        let mut tick = tokio::time::interval(SAMPLE_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Ok(view) = handle.view().await else {
                return;
            };
            tracker.sample(
                global(),
                Instant::now(),
                view.machines
                    .iter()
                    .filter(|(id, _)| **id != view.local)
                    .map(|(id, m)| (id.as_str(), m.liveness)),
            );
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches() {
        let h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(300));
        h.observe(Duration::from_secs(1000));
        let mut out = String::new();
        h.write(&mut out, "x", "op=\"a\"");
        assert!(out.contains("x_bucket{op=\"a\",le=\"0.001\"} 0\n"), "{out}");
        assert!(out.contains("x_bucket{op=\"a\",le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{op=\"a\",le=\"0.5\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{op=\"a\",le=\"120\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{op=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count{op=\"a\"} 3\n"), "{out}");
        let sum: f64 = lines(&out, "x_sum")[0]
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 1000.303).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn a_machine_that_goes_suspect_then_down_counts_detection_and_failover() {
        let m = Metrics::default();
        let mut t = MembershipTracker::default();
        let t0 = Instant::now();
        t.sample(&m, t0, [("b", Liveness::Alive)]);
        t.sample(
            &m,
            t0 + Duration::from_millis(100),
            [("b", Liveness::Suspect)],
        );
        t.sample(
            &m,
            t0 + Duration::from_millis(200),
            [("b", Liveness::Suspect)],
        );
        t.sample(&m, t0 + Duration::from_millis(600), [("b", Liveness::Down)]);
        assert_eq!(m.detection.count(), 1);
        let sum = m.detection.sum_nanos.load(Ordering::Relaxed);
        assert_eq!(sum, 500_000_000, "from the first suspect sample");
        m.took_over("b", None);
        m.took_over("unknown", None);
        assert_eq!(m.failovers(), 1, "only machines seen going down");
        // Back alive: a later takeover from it is no failover.
        t.sample(&m, t0 + Duration::from_secs(1), [("b", Liveness::Alive)]);
        m.took_over("b", None);
        assert_eq!(m.failovers(), 1);
        // The agent's own verdict time wins.
        m.took_over("c", Some(Instant::now()));
        assert_eq!(m.failovers(), 2);
    }

    #[test]
    fn a_suspicion_between_samples_counts_from_the_last_alive_sample() {
        let m = Metrics::default();
        let mut t = MembershipTracker::default();
        let t0 = Instant::now();
        t.sample(&m, t0, [("b", Liveness::Alive)]);
        t.sample(&m, t0 + Duration::from_millis(100), [("b", Liveness::Down)]);
        assert_eq!(m.detection.sum_nanos.load(Ordering::Relaxed), 100_000_000);
        // Staying down counts once.
        t.sample(&m, t0 + Duration::from_millis(200), [("b", Liveness::Down)]);
        assert_eq!(m.detection.count(), 1);
    }

    #[tokio::test]
    async fn render_has_help_type_and_samples_for_every_metric() {
        let m = Metrics::default();
        m.placed();
        m.claim_conflict();
        let _: Result<(), ()> = m.time_etcd(EtcdOp::ClaimTxn, async { Err(()) }).await;
        let _: Result<(), ()> = m.time_job(JobKind::Stop, async { Ok(()) }).await;
        m.start_queued("a.service");
        m.job_removed("a.service", false);
        let text = m.render("").await;
        for (name, kind) in [
            ("fleet_placements_total", "counter"),
            ("fleet_claim_conflicts_total", "counter"),
            ("fleet_gossip_detection_seconds", "histogram"),
            ("fleet_failover_seconds", "histogram"),
            ("fleet_etcd_request_duration_seconds", "histogram"),
            ("fleet_etcd_request_errors_total", "counter"),
            ("fleet_systemd_job_duration_seconds", "histogram"),
            ("fleet_systemd_job_failures_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name}: {text}"
            );
        }
        assert!(text.contains("fleet_placements_total{kind=\"claim\"} 1\n"));
        assert!(text.contains("fleet_claim_conflicts_total 1\n"));
        assert!(text.contains("fleet_etcd_request_errors_total{op=\"claim_txn\"} 1\n"));
        assert!(text.contains("fleet_systemd_job_failures_total{job=\"start\"} 1\n"));
        assert!(text.contains("fleet_systemd_job_duration_seconds_count{job=\"stop\"} 1\n"));
    }

    #[test]
    fn gossip_refusals_are_rendered_by_reason() {
        let counters = fleet_gossip::Counters {
            signatures_refused: 3,
            refutations_refused: 2,
            over_budget_dropped: 40,
            refutations_held: 5,
            ..Default::default()
        };
        let sealed = fleet_gossip_quic::transport::SealedRefusals {
            garbage: 7,
            replayed: 11,
            ..Default::default()
        };
        let mut text = String::new();
        write_gossip_refusals(&mut text, &counters, &sealed);
        assert!(text.contains("# TYPE fleet_gossip_refused_total counter\n"));
        assert!(text.contains("fleet_gossip_refused_total{reason=\"signature\"} 3\n"));
        assert!(text.contains("fleet_gossip_refused_total{reason=\"refutation\"} 2\n"));
        assert!(text.contains("fleet_gossip_refused_total{reason=\"over_budget\"} 40\n"));
        assert!(text.contains("fleet_gossip_refused_total{reason=\"impersonation\"} 0\n"));
        assert!(text.contains("fleet_gossip_refused_total{reason=\"sealed_garbage\"} 7\n"));
        assert!(text.contains("fleet_gossip_refused_total{reason=\"sealed_replayed\"} 11\n"));
        assert!(text.contains("fleet_gossip_refused_total{reason=\"sealed_forged\"} 0\n"));
        assert!(text.contains("fleet_gossip_refused_total{reason=\"sealed_unverifiable\"} 0\n"));
        assert!(text.contains("fleet_gossip_refutations_held_total 5\n"));
    }
}
