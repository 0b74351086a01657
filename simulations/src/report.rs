//! What a run measured: metrics collected during the run, and the report (text, JSON, SVG).
//!
//! The report holds only simulated quantities (no wall-clock time), so the same scenario and seed
//! give a byte-identical report.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::etcd::EtcdOps;
use crate::outcome::Outcome;
use crate::scenario::Scenario;

/// Which invariant broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// A non-global unit's process ran on two machines at once (for longer than the bound, 0).
    DoubleRun,
    /// A placeable launched unit ran nowhere longer than the bound.
    NotPlaced,
    /// Membership had not converged the bound after the last fault healed.
    NoConvergence,
    /// A running unit's `[X-Fleet]` requirements did not hold.
    Requirement,
    /// A unit moved more often than the faults that concerned it, or away from a healthy machine.
    Churn,
    /// A second agent with a live machine's ID claimed or ran something.
    Identity,
    /// A machine whose only fault was a short loss of etcd, its peers in sight, was fenced.
    NeedlessFence,
}

/// One invariant violation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which invariant.
    pub kind: ViolationKind,
    /// Simulated µs when it was detected.
    pub at: u64,
    /// The unit or machines concerned.
    pub subject: String,
    /// What was seen.
    pub detail: String,
}

/// One sample of the time series.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Simulated seconds.
    pub t: f64,
    /// Machines whose agent runs.
    pub live_machines: usize,
    /// Live machines whose gossip view has the wrong number of live members.
    pub wrong_views: usize,
    /// Launched non-global units active nowhere.
    pub unavailable_units: usize,
    /// Non-global units active on two or more machines.
    pub double_running_units: usize,
}

/// Gossip traffic totals.
#[derive(Clone, Copy, Debug, Default)]
pub struct GossipTotals {
    /// Datagrams sent.
    pub datagrams: u64,
    /// Bytes sent (datagrams and sync exchanges).
    pub bytes: u64,
    /// Bytes of sync exchanges.
    pub sync_bytes: u64,
}

/// Metrics gathered while the simulation runs (statistics only: the invariants are
/// [`crate::check`]'s).
#[derive(Debug, Default)]
pub struct Metrics {
    down_since: BTreeMap<u32, (u64, bool)>,
    doubles: BTreeMap<u32, u64>,
    count: Vec<usize>,
    placement: Vec<u64>,
    reschedule: Vec<u64>,
    double_durations: Vec<u64>,
    unavailable_us: u64,
    detection: Vec<u64>,
    first_detection: BTreeMap<u32, u64>,
    pub(crate) false_verdicts: u64,
    pub(crate) partition_verdicts: u64,
    pub(crate) datagrams_lost: u64,
    pub(crate) sync_bytes: u64,
    pub(crate) gossip_dead_datagrams: u64,
    pub(crate) gossip_dead_bytes: u64,
    pub(crate) takeovers: u64,
    pub(crate) fencings: u64,
    pub(crate) guard_kills: u64,
    pub(crate) agent_kills: u64,
    pub(crate) lease_polls: u64,
    pub(crate) witness_requests: u64,
    pub(crate) leases_lost: u64,
    pub(crate) leases_replaced: u64,
    pub(crate) leases_retired: u64,
    pub(crate) identity_conflicts: u64,
    pub(crate) moves: u64,
    pub(crate) failures: u64,
    pub(crate) start_failures: u64,
    pub(crate) unit_starts: u64,
    samples: Vec<Sample>,
    pub(crate) fault_marks: Vec<(u64, String)>,
    pub(crate) converged_checked: bool,
    machines: usize,
    units: usize,
}

impl Metrics {
    pub(crate) fn new(machines: usize, units: usize) -> Metrics {
        Metrics {
            machines,
            units,
            count: vec![0; units],
            ..Default::default()
        }
    }

    /// Units were submitted: unit `u` runs nowhere yet.
    pub(crate) fn unit_down(&mut self, u: u32, now: u64, was_up: bool) {
        if self.count[u as usize] == 0 {
            self.down_since.entry(u).or_insert((now, was_up));
        }
    }

    /// Non-global unit `u` now runs on `n` machines.
    pub(crate) fn running(&mut self, u: u32, n: usize, now: u64, submitted: bool) {
        let before = std::mem::replace(&mut self.count[u as usize], n);
        if before == 0 && n > 0 {
            if let Some((t, was_up)) = self.down_since.remove(&u) {
                self.unavailable_us += now - t;
                if was_up {
                    self.reschedule.push(now - t);
                } else {
                    self.placement.push(now - t);
                }
            }
        } else if before > 0 && n == 0 && submitted {
            self.down_since.entry(u).or_insert((now, true));
        }
        if before < 2 && n >= 2 {
            self.doubles.insert(u, now);
        } else if before >= 2 && n < 2 {
            if let Some(t) = self.doubles.remove(&u) {
                if now > t {
                    self.double_durations.push(now - t);
                }
            }
        }
    }

    pub(crate) fn detection(&mut self, machine: u32, delay: u64) {
        self.detection.push(delay);
        self.first_detection.entry(machine).or_insert(delay);
    }

    pub(crate) fn sample(
        &mut self,
        now: u64,
        live: usize,
        wrong_views: usize,
        unavailable: usize,
        doubles: usize,
    ) {
        self.samples.push(Sample {
            t: secs(now),
            live_machines: live,
            wrong_views,
            unavailable_units: unavailable,
            double_running_units: doubles,
        });
    }
}

fn secs(us: u64) -> f64 {
    (us as f64 / 1000.0).round() / 1000.0
}

/// Percentiles of a set of durations, in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// How many samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    fn of(v: &[u64]) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        let mut s = v.to_vec();
        s.sort_unstable();
        let p = |q: f64| secs(s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1]);
        Stats {
            count: s.len(),
            p50: p(0.5),
            p90: p(0.9),
            p99: p(0.99),
            max: secs(*s.last().expect("not empty")),
        }
    }
}

/// Gossip cost per machine.
#[derive(Clone, Debug, Serialize)]
pub struct GossipReport {
    /// `real` (counted from the gossip core's datagrams and sync exchanges) or `model`
    /// (estimated from message counts and sizes of the SWIM model).
    pub source: &'static str,
    /// Datagrams sent per machine per second.
    pub datagrams_per_machine_s: f64,
    /// Bytes sent per machine per second (datagrams and anti-entropy syncs).
    pub bytes_per_machine_s: f64,
    /// Of which anti-entropy syncs.
    pub sync_bytes_per_machine_s: f64,
    /// Datagrams lost (partitions and loss).
    pub datagrams_lost: u64,
}

/// Double runs of non-global units.
#[derive(Clone, Debug, Serialize)]
pub struct DoubleRuns {
    /// Episodes (a unit active on two or more machines).
    pub episodes: usize,
    /// Their durations.
    pub duration: Stats,
    /// The bound the invariant enforces, seconds.
    pub bound: f64,
}

/// The report of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// `real` or `model` gossip.
    pub gossip_mode: &'static str,
    /// Machines.
    pub machines: usize,
    /// Units (all launched).
    pub units: usize,
    /// Simulated seconds.
    pub simulated_s: f64,
    /// Faults as they happened: (seconds, what).
    pub faults: Vec<(f64, String)>,
    /// The operator's answers first: moves, units that cannot be placed, time running nowhere, load.
    pub outcome: Outcome,
    /// Safety: double runs.
    pub double_runs: DoubleRuns,
    /// Safety and the other invariants: violations (double runs past the bound, requirements broken,
    /// units not placed though they could be, churn, membership, identity).
    pub violations: Vec<Violation>,
    /// Machine failures injected (crashes and pauses).
    pub failures: u64,
    /// Per observer and failed machine: time from the failure to that observer's down verdict.
    pub detection: Stats,
    /// Per failed machine: time to the first down verdict.
    pub first_detection: Stats,
    /// Down verdicts about machines that ran and were reachable from the observer.
    pub false_down_verdicts: u64,
    /// Down verdicts about machines cut off from the observer by a partition.
    pub partition_down_verdicts: u64,
    /// Submission to first active, per unit.
    pub initial_placement: Stats,
    /// Time a unit was active nowhere after having been active (failover), per episode.
    pub reschedule: Stats,
    /// The longest time a launched unit ran nowhere while a healthy machine (fleetd running, etcd
    /// reachable, ID, metadata, `MachineOf=` and `Conflicts=` allowing) could run it, seconds, as the
    /// independent checker saw it at its periodic checks: what the placement invariant bounds.
    pub placeable_nowhere_s: f64,
    /// Unit-seconds of unavailability (launched non-global units active nowhere), after submission.
    pub unavailable_unit_s: f64,
    /// Claims taken over from another machine (supersedes that etcd applied).
    pub takeovers: u64,
    /// Units whose process started on another machine than the one it last ran on.
    pub moves: u64,
    /// Times an agent found itself past its fence deadline.
    pub fencings: u64,
    /// Units the fence guard killed at a passed deadline (fleetd dead, hung, or late).
    pub guard_kills: u64,
    /// Units a fenced agent killed itself.
    pub agent_kills: u64,
    /// `LeaseTimeToLive` requests sent by agents proving a holder stopped.
    pub lease_polls: u64,
    /// Support and vote requests sent to witnesses.
    pub witness_requests: u64,
    /// Times an agent found its own lease gone (expired) and started over with a new one.
    pub leases_lost: u64,
    /// Times an agent took a new lease because its current one may have been voted away
    /// (`fleet_decide::replace`).
    pub leases_replaced: u64,
    /// Replaced leases let go (revoked) once nothing rested on them (`fleet_decide::may_retire`).
    pub leases_retired: u64,
    /// Agents that found their machine ID announced by another agent (and claimed nothing).
    pub identity_conflicts: u64,
    /// Unit starts that failed (systemd model).
    pub start_failures: u64,
    /// Start jobs issued by agents (every unit's first start included): many more than units means
    /// units moved or restarted.
    pub unit_starts: u64,
    /// Gossip cost.
    pub gossip: GossipReport,
    /// etcd operations.
    pub etcd: EtcdOps,
    /// Placement computations (distinct agent inputs; agents with the same inputs share one).
    pub plan_computations: u64,
    /// Time series.
    pub series: Vec<Sample>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        sc: &Scenario,
        seed: u64,
        now: u64,
        m: &mut Metrics,
        etcd: &EtcdOps,
        g: GossipTotals,
        plan_computations: u64,
        model: bool,
        violations: Vec<Violation>,
        outcome: Outcome,
    ) -> Report {
        // Close open intervals.
        let open: Vec<u64> = m.down_since.values().map(|(t, _)| now - t).collect();
        m.unavailable_us += open.iter().sum::<u64>();
        let open_doubles: Vec<u64> = m
            .doubles
            .values()
            .filter(|t| now > **t)
            .map(|t| now - t)
            .collect();
        m.double_durations.extend(open_doubles);
        let per = (m.machines as f64 * secs(now)).max(1e-9);
        let round = |x: f64| (x * 100.0).round() / 100.0;
        Report {
            scenario: sc.name.clone(),
            seed,
            gossip_mode: if model { "model" } else { "real" },
            machines: m.machines,
            units: m.units,
            simulated_s: secs(now),
            outcome,
            failures: m.failures,
            detection: Stats::of(&m.detection),
            first_detection: Stats::of(&m.first_detection.values().copied().collect::<Vec<_>>()),
            false_down_verdicts: m.false_verdicts,
            partition_down_verdicts: m.partition_verdicts,
            initial_placement: Stats::of(&m.placement),
            reschedule: Stats::of(&m.reschedule),
            placeable_nowhere_s: 0.0,
            unavailable_unit_s: secs(m.unavailable_us),
            double_runs: DoubleRuns {
                episodes: m.double_durations.len(),
                duration: Stats::of(&m.double_durations),
                bound: secs(sc.double_run_bound().0),
            },
            takeovers: m.takeovers,
            moves: m.moves,
            fencings: m.fencings,
            guard_kills: m.guard_kills,
            agent_kills: m.agent_kills,
            lease_polls: m.lease_polls,
            witness_requests: m.witness_requests,
            leases_lost: m.leases_lost,
            leases_replaced: m.leases_replaced,
            leases_retired: m.leases_retired,
            identity_conflicts: m.identity_conflicts,
            start_failures: m.start_failures,
            unit_starts: m.unit_starts,
            gossip: GossipReport {
                source: if model { "model" } else { "real" },
                datagrams_per_machine_s: round(g.datagrams as f64 / per),
                bytes_per_machine_s: round(g.bytes as f64 / per),
                sync_bytes_per_machine_s: round(g.sync_bytes as f64 / per),
                datagrams_lost: m.datagrams_lost,
            },
            etcd: *etcd,
            plan_computations,
            violations,
            faults: m
                .fault_marks
                .iter()
                .map(|(t, s)| (secs(*t), s.clone()))
                .collect(),
            series: std::mem::take(&mut m.samples),
        }
    }

    /// Whether any invariant broke.
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let st = |x: &Stats| {
            if x.count == 0 {
                "none".to_string()
            } else {
                format!(
                    "p50 {:.3}s  p90 {:.3}s  p99 {:.3}s  max {:.3}s  (n={})",
                    x.p50, x.p90, x.p99, x.max, x.count
                )
            }
        };
        let _ = writeln!(
            s,
            "scenario {}  seed {}  gossip {}  {} machines  {} units  {:.1}s simulated",
            self.scenario, self.seed, self.gossip_mode, self.machines, self.units, self.simulated_s
        );
        let _ = writeln!(s, "faults:");
        for (t, f) in &self.faults {
            let _ = writeln!(s, "  {t:>8.3}s  {f}");
        }
        s.push_str(&self.outcome.to_text(20));
        let _ = writeln!(s, "safety:");
        let _ = writeln!(
            s,
            "double runs               {} episodes, {} (bound {:.1}s)",
            self.double_runs.episodes,
            st(&self.double_runs.duration),
            self.double_runs.bound
        );
        if self.violations.is_empty() {
            let _ = writeln!(
                s,
                "invariants                all held (double runs, requirements, placement, churn, membership, identity, needless fences)"
            );
        } else {
            let _ = writeln!(s, "INVARIANT VIOLATIONS ({}):", self.violations.len());
            for v in self.violations.iter().take(20) {
                let _ = writeln!(
                    s,
                    "  {:>8.3}s  {:?}  {}: {}",
                    secs(v.at),
                    v.kind,
                    v.subject,
                    v.detail
                );
            }
        }
        let _ = writeln!(s, "details:");
        let _ = writeln!(s, "machine failures          {}", self.failures);
        let _ = writeln!(s, "detection (per observer)  {}", st(&self.detection));
        let _ = writeln!(s, "first down verdict        {}", st(&self.first_detection));
        let _ = writeln!(
            s,
            "down verdicts             {} false, {} across partitions",
            self.false_down_verdicts, self.partition_down_verdicts
        );
        let _ = writeln!(
            s,
            "initial placement         {}",
            st(&self.initial_placement)
        );
        let _ = writeln!(s, "reschedule (failover)     {}", st(&self.reschedule));
        let _ = writeln!(
            s,
            "placeable, ran nowhere    longest {:.3}s (while a healthy machine could run it)",
            self.placeable_nowhere_s
        );
        let _ = writeln!(
            s,
            "unavailable               {:.1} unit-seconds",
            self.unavailable_unit_s
        );
        let _ = writeln!(
            s,
            "unit starts {}  moves {}  takeovers {}  failed starts {}  placement computations {}",
            self.unit_starts,
            self.moves,
            self.takeovers,
            self.start_failures,
            self.plan_computations
        );
        let _ = writeln!(
            s,
            "fencing                   {} fencings, {} units killed by agents, {} by fence guards; {} lease polls, {} witness requests, {} leases lost, {} replaced ({} retired), {} identity conflicts",
            self.fencings, self.agent_kills, self.guard_kills, self.lease_polls, self.witness_requests, self.leases_lost, self.leases_replaced, self.leases_retired, self.identity_conflicts
        );
        let _ = writeln!(
            s,
            "gossip ({})              {:.1} datagrams/s and {:.0} B/s per machine ({:.0} B/s anti-entropy), {} datagrams lost",
            self.gossip.source,
            self.gossip.datagrams_per_machine_s,
            self.gossip.bytes_per_machine_s,
            self.gossip.sync_bytes_per_machine_s,
            self.gossip.datagrams_lost
        );
        let e = &self.etcd;
        let _ = writeln!(
            s,
            "etcd                      {} txn ok, {} txn failed, {} grants, {} keep-alives, {} TTL polls, {} expiries, {} announces, {} unavailable, {} watch deliveries",
            e.txn_ok, e.txn_failed, e.lease_grants, e.keepalives, e.ttl_polls, e.lease_expiries, e.announces, e.unavailable, e.watch_deliveries
        );
        s
    }

    /// An SVG timeline in two panels, each with its own scale: units (unavailable, double-running)
    /// and machines (live, with a wrong view), with the faults marked.
    pub fn to_svg(&self) -> String {
        type Series = (&'static str, &'static str, fn(&Sample) -> usize);
        let (w, pad, panel_h) = (900.0, 50.0, 140.0);
        // A third panel: where the units that moved or ran nowhere ran (one row each, at most 30).
        let rows: Vec<&crate::outcome::Timeline> = self.outcome.timelines.iter().take(30).collect();
        let row_h = 16.0;
        let gantt_h = if rows.is_empty() {
            0.0
        } else {
            rows.len() as f64 * row_h + pad
        };
        let h = 2.0 * panel_h + 3.0 * pad + gantt_h;
        let tmax = self.simulated_s.max(1.0);
        let x = |t: f64| pad + (w - 2.0 * pad) * t / tmax;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{pad}" y="18" font-size="13">{} (seed {}, {} machines, {} units, gossip {})</text>"#,
            xml(&self.scenario),
            self.seed,
            self.machines,
            self.units,
            self.gossip_mode
        );
        let panels: [[Series; 2]; 2] = [
            [
                ("unavailable units", "#d62728", |p| p.unavailable_units),
                ("double-running units", "#9467bd", |p| {
                    p.double_running_units
                }),
            ],
            [
                ("live machines", "#2ca02c", |p| p.live_machines),
                ("machines with a wrong view", "#ff7f0e", |p| p.wrong_views),
            ],
        ];
        for (k, series) in panels.iter().enumerate() {
            let top = pad + k as f64 * (panel_h + pad);
            let bottom = top + panel_h;
            let ymax = self
                .series
                .iter()
                .flat_map(|p| series.iter().map(move |(_, _, f)| f(p)))
                .max()
                .unwrap_or(1)
                .max(1) as f64;
            let y = |v: f64| bottom - panel_h * v / ymax;
            let _ = writeln!(
                s,
                r#"<line x1="{pad}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="black"/><line x1="{pad}" y1="{top}" x2="{pad}" y2="{bottom}" stroke="black"/>"#,
                w - pad
            );
            let _ = writeln!(
                s,
                r#"<text x="4" y="{}">{ymax}</text><text x="4" y="{bottom}">0</text><text x="{}" y="{}">{tmax:.0}s</text>"#,
                top + 4.0,
                w - pad - 10.0,
                bottom + 14.0
            );
            for (t, f) in &self.faults {
                let _ = writeln!(
                    s,
                    r#"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{bottom}" stroke="gray" stroke-dasharray="3,3"><title>{1:.3}s {2}</title></line>"#,
                    x(*t),
                    t,
                    xml(f)
                );
            }
            for (i, (name, color, f)) in series.iter().enumerate() {
                let pts: Vec<String> = self
                    .series
                    .iter()
                    .map(|p| format!("{:.1},{:.1}", x(p.t), y(f(p) as f64)))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
                    pts.join(" ")
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#,
                    pad + 10.0 + 220.0 * i as f64,
                    bottom + 28.0
                );
            }
        }
        if !rows.is_empty() {
            let top = 2.0 * panel_h + 3.0 * pad;
            let (left, right) = (pad + 120.0, w - pad);
            let gx = |t: f64| left + (right - left) * t / tmax;
            let _ = writeln!(
                s,
                r#"<text x="{pad}" y="{}">where the units that moved or ran nowhere ran ({} of {}; gaps: running nowhere)</text>"#,
                top - 6.0,
                rows.len(),
                self.outcome.timelines.len()
            );
            for (t, f) in &self.faults {
                let _ = writeln!(
                    s,
                    r#"<line x1="{0:.1}" y1="{top}" x2="{0:.1}" y2="{1}" stroke="gray" stroke-dasharray="3,3"><title>{2:.3}s {3}</title></line>"#,
                    gx(*t),
                    top + rows.len() as f64 * row_h,
                    t,
                    xml(f)
                );
            }
            let palette = [
                "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                "#bcbd22",
            ];
            let mut colors: BTreeMap<&str, &str> = BTreeMap::new();
            for (i, tl) in rows.iter().enumerate() {
                let y = top + i as f64 * row_h;
                let _ = writeln!(
                    s,
                    r##"<text x="4" y="{}">{}</text><line x1="{left}" y1="{2:.1}" x2="{right}" y2="{2:.1}" stroke="#d62728" stroke-width="1"/>"##,
                    y + row_h - 4.0,
                    xml(&tl.unit),
                    y + row_h / 2.0
                );
                for r in &tl.runs {
                    let n = colors.len();
                    let color = *colors
                        .entry(r.machine.as_str())
                        .or_insert(palette[n % palette.len()]);
                    let (x0, x1) = (gx(r.from_s), gx(r.to_s).max(gx(r.from_s) + 1.0));
                    let _ = writeln!(
                        s,
                        r#"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{} on {} {:.3}s-{:.3}s</title></rect>"#,
                        y + 2.0,
                        x1 - x0,
                        row_h - 4.0,
                        xml(&tl.unit),
                        xml(&r.machine),
                        r.from_s,
                        r.to_s
                    );
                    let label = crate::outcome::short(&r.machine);
                    if x1 - x0 > 7.0 * label.len() as f64 {
                        let _ = writeln!(
                            s,
                            r#"<text x="{:.1}" y="{:.1}" fill="white">{}</text>"#,
                            x0 + 3.0,
                            y + row_h - 5.0,
                            xml(&label)
                        );
                    }
                }
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
