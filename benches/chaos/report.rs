//! The checker's exact half and the report: every copy of every unit from the journals, the overlaps,
//! the time units ran nowhere, failover per fault, the evidence of any overlap and of any unit that
//! never ran again (or ran nowhere for a long time), and every error of the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::evidence::{self, Stall};
use crate::lab::FleetLab;
use crate::plan::{Done, EtcdSide, Kind};
use crate::sampler::{self, Sample};
use crate::support::journal::{self, Overlap, Timeline};
use crate::support::summary_ms;

pub struct Input<'a> {
    pub fl: &'a FleetLab,
    pub machines: usize,
    pub units: &'a [String],
    pub done: &'a [Done],
    pub samples: &'a [Sample],
    pub sample_failures: &'a BTreeMap<usize, usize>,
    /// Samplers that stopped (a panic).
    pub sampler_errors: &'a [String],
    /// Host clock (µs) when the nemesis began and when it had healed everything.
    pub chaos: (u64, u64),
    pub settled: Result<Duration, String>,
    pub seed: u64,
    pub out: &'a Path,
    pub interrupted: bool,
}

/// What a fault did to the units that ran on its victims when it began.
#[derive(Default)]
struct KindStats {
    injected: usize,
    failed: usize,
    /// Faults whose victims ran no unit when they began.
    no_units: usize,
    all_moved: usize,
    some_moved: usize,
    none_moved: usize,
    /// Fault → the last of its victims' units started elsewhere (ms), when all moved before the heal.
    failover: Vec<f64>,
}

/// The victims whose units are followed: for a partition that moves nothing, every machine.
fn victims(d: &Done, machines: usize) -> Vec<usize> {
    match d.fault.kind {
        Kind::Partition(EtcdSide::Both) | Kind::Partition(EtcdSide::Minority) => {
            (1..=machines).collect()
        }
        _ => d.fault.machines.clone(),
    }
}

pub(crate) fn rel(t: u64, origin: u64) -> f64 {
    (t as f64 - origin as f64) / 1e6
}

// long: the report printed top to bottom, one short block per section
pub fn report(inp: Input) {
    let origin = inp.chaos.0;
    let _ = std::fs::create_dir_all(inp.out);
    write_faults(&inp, origin);
    let mut tl = match Timeline::read(inp.fl, inp.machines, "ch-") {
        Ok(t) => t,
        Err(e) => {
            println!("reading the journals failed: {e}: no figures");
            report_errors(&inp, origin, &[format!("reading the journals: {e}")]);
            return;
        }
    };
    for d in inp.done.iter().filter(|d| d.error.is_none()) {
        let m = d.fault.machines[0];
        match d.fault.kind {
            Kind::Crash => tl.kills.entry(m).or_default().push(d.after),
            Kind::Freeze => {
                if let Some((thaw, _)) = d.healed {
                    tl.freezes.entry(m).or_default().push((d.after, thaw));
                }
            }
            _ => {}
        }
    }

    // Failover and needless moves, per kind.
    let mut kinds: BTreeMap<&str, KindStats> = BTreeMap::new();
    let mut failover_all = Vec::new();
    let mut moves: Vec<evidence::Move> = Vec::new();
    let mut stops: Vec<evidence::Move> = Vec::new();
    for d in inp.done {
        let st = kinds.entry(d.fault.kind.name()).or_default();
        st.injected += 1;
        if d.error.is_some() {
            st.failed += 1;
            continue;
        }
        let expected = d.fault.kind.moves_units();
        let heal = d.healed.map(|h| h.0).unwrap_or(tl.end);
        let limit = if expected == Some(false) {
            heal.max(d.after) + 5_000_000
        } else {
            heal
        };
        let on: Vec<(String, usize)> = victims(d, inp.machines)
            .into_iter()
            .flat_map(|v| tl.running_at(v, d.before).into_iter().map(move |u| (u, v)))
            .collect();
        if on.is_empty() {
            st.no_units += 1;
            continue;
        }
        let mut moved = 0;
        let mut last = 0u64;
        for (u, v) in &on {
            // A unit stopped where it ran (fenced) by a fault that must stop nothing.
            if expected == Some(false) {
                let end = tl
                    .runs
                    .iter()
                    .filter(|r| r.machine == *v && r.unit == *u && r.start <= d.before)
                    .flat_map(|r| tl.segments(r))
                    .find(|s| s.from <= d.before && d.before < s.to)
                    .map(|s| s.to);
                if let Some(end) = end.filter(|&e| e <= limit) {
                    stops.push(evidence::Move {
                        fault: d,
                        unit: u.clone(),
                        from: *v,
                        to: *v,
                        at: end,
                    });
                }
            }
            if let Some(r) = tl
                .first_start_elsewhere(u, &[*v], d.before)
                .filter(|r| r.start <= limit)
            {
                moved += 1;
                last = last.max(r.start - d.before);
                if expected == Some(false) {
                    moves.push(evidence::Move {
                        fault: d,
                        unit: u.clone(),
                        from: *v,
                        to: r.machine,
                        at: r.start,
                    });
                }
            }
        }
        if moved == on.len() {
            st.all_moved += 1;
            if expected != Some(false) {
                st.failover.push(last as f64 / 1000.0);
                if expected == Some(true) {
                    failover_all.push(last as f64 / 1000.0);
                }
            }
        } else if moved > 0 {
            st.some_moved += 1;
        } else {
            st.none_moved += 1;
        }
    }
    // A move counts against the fault only when no other fault on the unit's machine was under way
    // between the injection and the move (faults on different machines overlap in time, and one
    // on the same machine may begin right after the heal).
    let (needless_moves, other_moves) = evidence::attribute(inp.done, moves, tl.end);
    let mut needless: BTreeMap<&str, usize> = BTreeMap::new();
    for mv in &needless_moves {
        *needless.entry(mv.fault.fault.kind.name()).or_default() += 1;
    }
    let (needless_stops, other_stops) = evidence::attribute(inp.done, stops, tl.end);
    let mut misattributed: BTreeMap<&str, usize> = BTreeMap::new();
    for (mv, _) in &other_moves {
        *misattributed.entry(mv.fault.fault.kind.name()).or_default() += 1;
    }

    let overlaps = tl.overlaps();
    let (thawed, unsafe_): (Vec<&Overlap>, Vec<&Overlap>) = overlaps.iter().partition(|o| o.thaw);
    let gaps = tl.gaps();
    let polled = sampler::analyse(
        inp.samples,
        inp.units.len(),
        inp.chaos.0,
        inp.chaos.1,
        250_000,
    );

    let mut evidence = Vec::new();
    for (k, o) in unsafe_.iter().enumerate() {
        evidence.push(write_evidence(&inp, &tl, o, k + 1, origin));
    }
    let mut stalls = evidence::stalls(&tl, inp.units, origin, STALL_LONG_US, STALL_END_US);
    if stalls.is_empty() {
        // The run's longest stretch nowhere is a headline figure: explained by evidence when it is
        // long, even under `STALL_LONG_US` (the 18.4 s of 4fe03b3's run had none).
        stalls.extend(
            evidence::stalls(&tl, inp.units, origin, STALL_EXPLAIN_US, STALL_END_US)
                .into_iter()
                .take(1),
        );
    }
    let stall_files: Vec<String> = stalls
        .iter()
        .enumerate()
        .map(|(k, st)| write_stall_evidence(&inp, &tl, st, k + 1, origin))
        .collect();

    println!();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "== chaos summary (seed {}, {:.1} min of faults{}, loadavg at the end {})",
        inp.seed,
        (inp.chaos.1 - inp.chaos.0) as f64 / 60e6,
        if inp.interrupted { ", INTERRUPTED" } else { "" },
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let injected: usize = kinds.values().map(|k| k.injected - k.failed).sum();
    let failed: usize = kinds.values().map(|k| k.failed).sum();
    println!("faults injected: {injected} (injections that failed: {failed})");
    println!(
        "  {:<36} {:>8}  {:>26}  failover (fault -> last unit started elsewhere)",
        "kind", "injected", "victims' units moved all/some/none/no units"
    );
    for (name, k) in &kinds {
        println!(
            "  {name:<36} {:>8}  {:>26}  {}",
            k.injected - k.failed,
            format!(
                "{}/{}/{}/{}",
                k.all_moved, k.some_moved, k.none_moved, k.no_units
            ),
            if k.failover.is_empty() {
                "-".to_string()
            } else {
                summary_ms(&k.failover)
            }
        );
    }
    let longest = unsafe_.iter().map(|o| o.ms()).fold(0.0, f64::max);
    println!(
        "longest overlap of two copies: {longest:.1} ms ({} overlaps; goal 0 ms){}",
        unsafe_.len(),
        if unsafe_.is_empty() {
            String::new()
        } else {
            format!("   SAFETY BUG: evidence in {}", inp.out.display())
        }
    );
    for (o, file) in unsafe_.iter().zip(&evidence) {
        println!(
            "  OVERLAP {} on m{} and m{} for {:.1} ms at +{:.2} s ({})",
            o.unit,
            o.a.0,
            o.b.0,
            o.ms(),
            rel(o.from, origin),
            file
        );
        for d in faults_near(inp.done, o.from, 30_000_000, 2_000_000) {
            println!("    {}", fault_line(d, origin));
        }
    }
    let mut thaw_ms: Vec<f64> = thawed.iter().map(|o| o.ms()).collect();
    thaw_ms.sort_by(f64::total_cmp);
    println!(
        "overlap right after a thaw (bounded by thaw -> kill, docs/safety.md; goal < 100 ms): {}",
        if thaw_ms.is_empty() {
            "none".to_string()
        } else {
            summary_ms(&thaw_ms)
        }
    );
    thaw_breakdown(&inp, &thawed);
    let mut by_len: Vec<&journal::Gap> = gaps.iter().collect();
    by_len.sort_by(|a, b| b.ms().total_cmp(&a.ms()));
    if let Some(g) = by_len.first() {
        println!(
            "longest time a unit ran nowhere: {:.0} ms ({} from +{:.2} s)",
            g.ms(),
            g.unit,
            rel(g.from, origin)
        );
        for g in by_len.iter().take(3) {
            let near: Vec<String> = faults_near(inp.done, g.from, 25_000_000, 500_000)
                .iter()
                .map(|d| format!("#{}", d.fault.id))
                .collect();
            println!(
                "  {} nowhere for {:.0} ms from +{:.2} s; faults begun in the 25 s before: {}",
                g.unit,
                g.ms(),
                rel(g.from, origin),
                near.join(" ")
            );
        }
        let mut per_unit: Vec<f64> = gaps.iter().map(|g| g.ms()).collect();
        per_unit.sort_by(f64::total_cmp);
        println!("  per unit, its longest: {}", summary_ms(&per_unit));
    }
    let never = stalls.iter().filter(|st| st.never_restarted).count();
    println!(
        "units that never ran again until the end: {never}{}; units that ran nowhere for >= {} s and then again: {}",
        if never > 0 {
            format!("   LIVENESS BUG: evidence in {}", inp.out.display())
        } else {
            String::new()
        },
        STALL_LONG_US / 1_000_000,
        stalls
            .iter()
            .filter(|st| !st.never_restarted && st.to - st.from >= STALL_LONG_US)
            .count()
    );
    for (st, file) in stalls.iter().zip(&stall_files) {
        println!(
            "  {} {} ran nowhere for {:.1} s from +{:.2} s (last on {}) ({file})",
            if st.never_restarted {
                "NEVER RESTARTED"
            } else if st.to - st.from >= STALL_LONG_US {
                "LONG"
            } else {
                "LONGEST OF THE RUN"
            },
            st.unit,
            st.ms() / 1000.0,
            rel(st.from, origin),
            st.last_on
                .map(|m| format!("m{m}"))
                .unwrap_or_else(|| "no machine".into())
        );
        for d in evidence::faults_around(
            inp.done,
            st.from.saturating_sub(60_000_000),
            st.from + 10_000_000,
            tl.end,
        ) {
            println!("    {}", fault_line(d, origin));
        }
    }
    println!(
        "failover, faults that must move units (crash, fleetd kept down or stopped, freeze, cut, drop, minority without etcd), all of the victim's units started elsewhere before the heal: {}",
        summary_ms(&failover_all)
    );
    println!(
        "units moved by faults that must not move them (fleetd restarted, etcd loss, partition with etcd on both sides or with the minority), no other fault on their machine meanwhile: {} {needless:?}{}",
        needless.values().sum::<usize>(),
        if needless_moves.is_empty() {
            String::new()
        } else {
            format!("   evidence in {}", inp.out.display())
        }
    );
    for (k, mv) in needless_moves.iter().enumerate() {
        let file = crate::moves::write_move_evidence(&inp, &tl, mv, &[], "needless", k + 1, origin);
        crate::moves::print_move(&inp, &tl, mv, "NEEDLESS", &file, origin);
    }
    println!(
        "  and moved while another fault on their machine was under way too (that fault's, not counted above): {} {misattributed:?}",
        other_moves.len()
    );
    for (k, (mv, others)) in other_moves.iter().enumerate() {
        let file =
            crate::moves::write_move_evidence(&inp, &tl, mv, others, "other-fault", k + 1, origin);
        crate::moves::print_move(&inp, &tl, mv, "OTHER FAULT", &file, origin);
    }
    let mut stopped: BTreeMap<&str, usize> = BTreeMap::new();
    for mv in &needless_stops {
        *stopped.entry(mv.fault.fault.kind.name()).or_default() += 1;
    }
    println!(
        "units stopped where they ran (fenced) by faults that must not move them, no other fault on their machine meanwhile: {} {stopped:?}; and {} while another fault on their machine was under way",
        needless_stops.len(),
        other_stops.len()
    );
    for (k, mv) in needless_stops.iter().enumerate() {
        let file = crate::moves::write_move_evidence(&inp, &tl, mv, &[], "stopped", k + 1, origin);
        crate::moves::print_move(&inp, &tl, mv, "STOPPED", &file, origin);
    }
    for (k, (mv, others)) in other_stops.iter().enumerate() {
        let file = crate::moves::write_move_evidence(
            &inp,
            &tl,
            mv,
            others,
            "stopped-other-fault",
            k + 1,
            origin,
        );
        crate::moves::print_move(&inp, &tl, mv, "STOPPED, OTHER FAULT", &file, origin);
    }
    let nowhere_polled = polled.nowhere.iter().map(|n| n.0).max().unwrap_or(0);
    println!(
        "checker: {} samples of systemd (every {:?} per machine; failed or timed out: {:?}); polled: {} observations of a unit active on two machines in answers <= 250 ms apart (journal-checked above), longest seen nowhere {:.0} ms; {} copies in the journals",
        polled.samples,
        sampler::PERIOD,
        inp.sample_failures,
        polled.doubles.len(),
        nowhere_polled as f64 / 1000.0,
        tl.runs.len()
    );
    // The pollers' own longest stretches, by unit: a check on the journals' figures above, which miss
    // every copy of a machine whose journal lost its beginning (below).
    let mut polled_by_len: Vec<(u64, u64, &String)> = polled
        .nowhere
        .iter()
        .zip(inp.units)
        .map(|(&(len, from), u)| (len, from, u))
        .collect();
    polled_by_len.sort_by_key(|p| std::cmp::Reverse(p.0));
    for (len, from, u) in polled_by_len.iter().take(3).filter(|p| p.0 > 0) {
        println!(
            "  polled: {u} seen nowhere for {:.0} ms from +{:.2} s",
            *len as f64 / 1000.0,
            rel(*from, origin)
        );
    }
    for i in 1..=inp.machines {
        match journal::coverage(inp.fl, i) {
            Ok((oldest, usage)) if oldest > origin => println!(
                "  JOURNAL INCOMPLETE: m{i}'s journal begins at +{:.2} s, after the chaos began: its copies before then are missing from every journal figure above ({usage})",
                rel(oldest, origin)
            ),
            Ok((oldest, usage)) => println!(
                "  journal of m{i}: from {:.2} s before the chaos ({usage})",
                (origin - oldest) as f64 / 1e6
            ),
            Err(e) => println!("  journal of m{i}: {e}"),
        }
    }
    match &inp.settled {
        Ok(d) => println!(
            "after the last heal: every machine lists every machine and every unit runs once, {:.1} s later",
            d.as_secs_f64()
        ),
        Err(e) => println!("after the last heal: NOT SETTLED: {e}"),
    }
    report_errors(&inp, origin, &[]);
}

/// A unit that ran nowhere for this long (µs) and then again gets evidence too.
const STALL_LONG_US: u64 = 60_000_000;
/// When no unit stalled for `STALL_LONG_US`, the longest stall of the run gets evidence if it lasted this
/// long (µs).
const STALL_EXPLAIN_US: u64 = 10_000_000;
/// A unit that ran nowhere for (at least) the last this many µs of the observation never restarted.
const STALL_END_US: u64 = 10_000_000;

/// Where the time of the thaw overlaps goes, per thaw that ended in one (from the instant right before
/// the nemesis wrote `0` to the machine's `cgroup.freeze`, the overlap's own start): the write's return
/// (its tasks may run before it returns), the thawed machine's guard logging its `cgroup.kill`
/// (journald's receipt: an upper bound of the kill, after which the killed copies run no more of their
/// code) and the last overlap's end (systemd's end line of the thawed copy, once it reaped it).
fn thaw_breakdown(inp: &Input, thawed: &[&Overlap]) {
    let mut kills: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let (mut call, mut kill, mut end) = (Vec::new(), Vec::new(), Vec::new());
    let mut no_kill = Vec::new();
    for d in inp.done.iter().filter(|d| d.fault.kind == Kind::Freeze) {
        let (Some((t0, t1)), m) = (d.healed, d.fault.machines[0]) else {
            continue;
        };
        let Some(last) = thawed.iter().filter(|o| o.from == t0).map(|o| o.to).max() else {
            continue;
        };
        call.push(t1.saturating_sub(t0) as f64 / 1000.0);
        end.push((last - t0) as f64 / 1000.0);
        let lines = kills.entry(m).or_insert_with(|| guard_kills(inp.fl, m));
        match lines.iter().find(|&&k| k >= t0 && k < t0 + 5_000_000) {
            Some(k) => kill.push((k - t0) as f64 / 1000.0),
            None => {
                let file = write_no_kill_evidence(inp, d, m, thawed, t0);
                no_kill.push(format!("#{} ({file})", d.fault.id));
            }
        }
    }
    if call.is_empty() {
        return;
    }
    println!("  where it goes, per thaw with an overlap, from right before the thaw's write:");
    println!("    the write returned: {}", summary_ms(&call));
    println!(
        "    guard's cgroup.kill logged (thaw -> kill, the figure of the < 100 ms goal): {}{}",
        summary_ms(&kill),
        if no_kill.is_empty() {
            String::new()
        } else {
            format!("; no kill line within 5 s: {}", no_kill.join(" "))
        }
    );
    println!(
        "    last overlap ended (systemd's end line): {}",
        summary_ms(&end)
    );
}

/// A thaw of machine `m` (at `t0`, µs) that ended in an overlap but whose guard logged no kill: what
/// the thawed machine's fleetd, guard and systemd said about each unit of those overlaps, from 10 s
/// before the thaw to 5 s after it. Returns the file's path.
fn write_no_kill_evidence(inp: &Input, d: &Done, m: usize, thawed: &[&Overlap], t0: u64) -> String {
    let mut text = String::new();
    let origin = inp.chaos.0;
    writeln!(
        text,
        "seed {}: thaw of #{} (m{m}) at +{:.6} s ended in an overlap; m{m}'s guard logged no `cgroup.kill` within 5 s",
        inp.seed,
        d.fault.id,
        rel(t0, origin)
    )
    .unwrap();
    let units: std::collections::BTreeSet<&str> = thawed
        .iter()
        .filter(|o| o.from == t0)
        .map(|o| o.unit.as_str())
        .collect();
    for unit in units {
        write_excerpt(
            &mut text,
            inp,
            m,
            unit,
            "10 s before the thaw to 5 s after",
            (t0.saturating_sub(10_000_000), t0 + 5_000_000),
        );
    }
    write_file(inp, &format!("thaw-no-kill-{}.txt", d.fault.id), text)
}

/// When machine `i`'s fence guard logged a kill through `cgroup.kill` (journald's receipt time, µs
/// since the epoch), from its persistent journal.
fn guard_kills(fl: &FleetLab, i: usize) -> Vec<u64> {
    let dir = journal::journal_dir(fl, i);
    let out = journal::journalctl_json(&dir, "MESSAGE,__REALTIME_TIMESTAMP")
        .args([
            "-u",
            "fleet-guard.service",
            "--grep",
            "killed through cgroup.kill",
        ])
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["__REALTIME_TIMESTAMP"].as_str()?.parse().ok())
        .collect()
}

/// Prints every error of the run: faults that could not be injected or healed, samplers that
/// stopped, the settling, and `more`.
fn report_errors(inp: &Input, origin: u64, more: &[String]) {
    let mut errors: Vec<String> = Vec::new();
    for d in inp.done {
        if let Some(e) = &d.error {
            errors.push(format!(
                "+{:.3} s inject {}: {e}",
                rel(d.before, origin),
                d.fault.describe()
            ));
        }
        if let (Some(e), Some((h, _))) = (&d.heal_error, d.healed) {
            let again = match &d.retried {
                Some((t, None)) => format!("; healed at the end, +{:.3} s", rel(*t, origin)),
                Some((t, Some(e2))) => {
                    format!("; again at the end, +{:.3} s: {e2}", rel(*t, origin))
                }
                None => String::new(),
            };
            errors.push(format!(
                "+{:.3} s heal {}: {e}{again}",
                rel(h, origin),
                d.fault.describe()
            ));
        }
    }
    errors.extend(inp.sampler_errors.iter().cloned());
    if let Err(e) = &inp.settled {
        errors.push(format!("settling after the last heal: {e}"));
    }
    errors.extend(more.iter().cloned());
    println!("errors during the run: {}", errors.len());
    for e in &errors {
        println!("  {e}");
    }
}

/// The faults injected between `before` µs before `t` and `after` µs after it.
fn faults_near(done: &[Done], t: u64, before: u64, after: u64) -> Vec<&Done> {
    done.iter()
        .filter(|d| d.before + before >= t && d.before <= t + after)
        .collect()
}

pub(crate) fn fault_line(d: &Done, origin: u64) -> String {
    let healed = d
        .healed
        .map(|(h, _)| format!("healed at +{:.3} s", rel(h, origin)))
        .unwrap_or_else(|| "not healed".into());
    format!(
        "+{:.3} s  {} ({}){}",
        rel(d.before, origin),
        d.fault.describe(),
        healed,
        d.error
            .as_ref()
            .or(d.heal_error.as_ref())
            .map(|e| format!(" FAILED: {e}"))
            .unwrap_or_default()
    )
}

fn write_faults(inp: &Input, origin: u64) {
    let mut text = format!(
        "seed {}; chaos began at {} µs since the epoch (host clock)\n",
        inp.seed, origin
    );
    for d in inp.done {
        writeln!(text, "{}", fault_line(d, origin)).unwrap();
    }
    let _ = std::fs::write(inp.out.join("faults.txt"), text);
}

/// Writes what is known about one overlap to a file of `inp.out`; returns its path.
fn write_evidence(inp: &Input, tl: &Timeline, o: &Overlap, k: usize, origin: u64) -> String {
    let mut text = String::new();
    writeln!(
        text,
        "seed {}: {} ran on m{} and m{} at once for {:.3} ms, from +{:.6} s to +{:.6} s ({} to {} µs since the epoch)",
        inp.seed,
        o.unit,
        o.a.0,
        o.b.0,
        o.ms(),
        rel(o.from, origin),
        rel(o.to, origin),
        o.from,
        o.to
    )
    .unwrap();
    write_copies(&mut text, tl, &o.unit, origin);
    writeln!(text, "\nfaults begun from 60 s before to 5 s after:").unwrap();
    for d in faults_near(inp.done, o.from, 60_000_000, 5_000_000) {
        writeln!(text, "  {}", fault_line(d, origin)).unwrap();
    }
    for m in [o.a.0, o.b.0] {
        write_excerpt(
            &mut text,
            inp,
            m,
            &o.unit,
            "30 s before to 5 s after",
            (o.from.saturating_sub(30_000_000), o.to + 5_000_000),
        );
    }
    let name = format!("overlap-{k}-{}.txt", o.unit.trim_end_matches(".service"));
    write_file(inp, &name, text)
}

/// Writes what is known about a unit that ran nowhere (every machine's journal about it, the faults
/// around) to a file of `inp.out`; returns its path.
fn write_stall_evidence(inp: &Input, tl: &Timeline, st: &Stall, k: usize, origin: u64) -> String {
    let mut text = String::new();
    writeln!(
        text,
        "seed {}: {} ran nowhere {} from +{:.6} s to +{:.6} s ({:.1} s; {} to {} µs since the epoch); its last copy before ran on {}",
        inp.seed,
        st.unit,
        if st.never_restarted { "until the end (never restarted)" } else { "(then ran again)" },
        rel(st.from, origin),
        rel(st.to, origin),
        st.ms() / 1000.0,
        st.from,
        st.to,
        st.last_on.map(|m| format!("m{m}")).unwrap_or_else(|| "no machine".into())
    )
    .unwrap();
    write_copies(&mut text, tl, &st.unit, origin);
    writeln!(
        text,
        "\nfaults under way from 60 s before to 10 s after it stopped:"
    )
    .unwrap();
    for d in evidence::faults_around(
        inp.done,
        st.from.saturating_sub(60_000_000),
        st.from + 10_000_000,
        tl.end,
    ) {
        writeln!(text, "  {}", fault_line(d, origin)).unwrap();
    }
    let window = st.from + 30_000_000;
    for m in 1..=inp.machines {
        write_excerpt(
            &mut text,
            inp,
            m,
            &st.unit,
            "30 s before to 30 s after it stopped",
            (st.from.saturating_sub(30_000_000), window),
        );
        if st.to > window {
            writeln!(
                text,
                "\n--- m{m}: the lines that name {} from then to +{:.3} s (at most {} first and {} last):",
                st.unit,
                rel(st.to, origin),
                MENTIONS / 2,
                MENTIONS / 2
            )
            .unwrap();
            text.push_str(&journal::mentions(
                inp.fl, m, &st.unit, window, st.to, MENTIONS,
            ));
        }
    }
    let name = format!(
        "{}-{k}-{}.txt",
        if st.never_restarted {
            "never-restarted"
        } else {
            "nowhere"
        },
        st.unit.trim_end_matches(".service")
    );
    write_file(inp, &name, text)
}

/// Every copy of `unit` the journals show, one line each.
pub(crate) fn write_copies(text: &mut String, tl: &Timeline, unit: &str, origin: u64) {
    writeln!(text, "\ncopies of {unit} (journal):").unwrap();
    for r in tl.runs.iter().filter(|r| r.unit == unit) {
        writeln!(
            text,
            "  m{}: started +{:.6} s, ended {} (counted until +{:.6} s)",
            r.machine,
            rel(r.start, origin),
            r.end
                .map(|e| format!("+{:.6} s", rel(e, origin)))
                .unwrap_or_else(|| "-".into()),
            rel(tl.run_end(r), origin)
        )
        .unwrap();
    }
}

/// Machine `m`'s journal about `unit` over `(from, to)` (µs since the epoch), headed by `span`.
pub(crate) fn write_excerpt(
    text: &mut String,
    inp: &Input,
    m: usize,
    unit: &str,
    span: &str,
    (from, to): (u64, u64),
) {
    writeln!(
        text,
        "\n--- m{m}: fleetd, its guard and systemd about {unit}, {span}:"
    )
    .unwrap();
    text.push_str(&journal::excerpt(inp.fl, m, unit, from, to));
}

/// Writes `text` to `name` in `inp.out` (printing why not, if it fails); returns its path.
pub(crate) fn write_file(inp: &Input, name: &str, text: String) -> String {
    let path = inp.out.join(name);
    if let Err(e) = std::fs::write(&path, text) {
        println!("writing {}: {e}", path.display());
    }
    path.display().to_string()
}

/// At most this many lines naming a stalled unit per machine after the first minute.
const MENTIONS: usize = 400;
