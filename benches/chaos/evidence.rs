//! Which stretches of the run need evidence besides overlaps (`report.rs` writes it): units that ran
//! nowhere until the end of the observation (never restarted after a fault), and units that ran
//! nowhere for a long time before starting again; and the faults around a moment. No lab here: unit
//! tests in `tests/bench_chaos.rs`.
#![allow(dead_code)]

use crate::plan::Done;
use crate::support::journal::Timeline;

/// A unit that ran nowhere from `from` to `to` (µs since the epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    pub unit: String,
    pub from: u64,
    pub to: u64,
    /// It ran nowhere until the end of the observation.
    pub never_restarted: bool,
    /// The machine of its last copy before the stall (none if it never ran).
    pub last_on: Option<usize>,
}

impl Stall {
    pub fn ms(&self) -> f64 {
        (self.to - self.from) as f64 / 1000.0
    }
}

/// The stalls of `units` in `tl`: each unit that ran nowhere during at least the last `end_slack` µs
/// of the observation (or never ran from `since` on), and each other unit whose longest stretch
/// nowhere lasted at least `long` µs. Longest first.
pub fn stalls(
    tl: &Timeline,
    units: &[String],
    since: u64,
    long: u64,
    end_slack: u64,
) -> Vec<Stall> {
    let mut found = Vec::new();
    let gaps = tl.gaps();
    for unit in units {
        let last = last_stretch(tl, unit, u64::MAX);
        let (covered, last_on) = match last {
            Some((to, m)) => (to, Some(m)),
            None => (since, None),
        };
        if tl.end >= covered + end_slack {
            found.push(Stall {
                unit: unit.clone(),
                from: covered,
                to: tl.end,
                never_restarted: true,
                last_on,
            });
            continue;
        }
        let Some(g) = gaps.iter().find(|g| &g.unit == unit) else {
            continue;
        };
        if g.to >= g.from + long {
            found.push(Stall {
                unit: unit.clone(),
                from: g.from,
                to: g.to,
                never_restarted: false,
                last_on: last_stretch(tl, unit, g.from).map(|(_, m)| m),
            });
        }
    }
    found.sort_by(|a, b| {
        (b.to - b.from)
            .cmp(&(a.to - a.from))
            .then(a.unit.cmp(&b.unit))
    });
    found
}

/// The end of `unit`'s last executing stretch that ended by `until`, and its machine.
fn last_stretch(tl: &Timeline, unit: &str, until: u64) -> Option<(u64, usize)> {
    tl.runs
        .iter()
        .filter(|r| r.unit == unit)
        .flat_map(|r| tl.segments(r).into_iter().map(move |s| (s.to, r.machine)))
        .filter(|&(to, _)| to <= until)
        .max()
}

/// The faults whose time (injection to heal; a fault never healed lasts until `end`) meets
/// `from..=to`, in order of injection.
pub fn faults_around(done: &[Done], from: u64, to: u64, end: u64) -> Vec<&Done> {
    let mut v: Vec<&Done> = done
        .iter()
        .filter(|d| d.before <= to && d.over(end) >= from)
        .collect();
    v.sort_by_key(|d| d.before);
    v
}

/// A unit that a fault which must not move units (`Kind::moves_units` is `Some(false)`) saw start
/// elsewhere: it ran on `from` when `fault` began and started on `to` at `at` (µs since the epoch).
#[derive(Clone, Debug)]
pub struct Move<'a> {
    pub fault: &'a Done,
    pub unit: String,
    pub from: usize,
    pub to: usize,
    pub at: u64,
}

/// The other faults that concern machine `m` (it is among their victims, or they are partitions)
/// and were under way at some instant from `from` to `to`: a move of a unit away from `m` in that
/// stretch may be theirs. `fault` itself is left out; in order of injection.
pub fn other_faults_on<'a>(
    done: &'a [Done],
    fault: &Done,
    m: usize,
    from: u64,
    to: u64,
    end: u64,
) -> Vec<&'a Done> {
    faults_around(done, from, to, end)
        .into_iter()
        .filter(|d| d.fault.id != fault.fault.id && d.error.is_none())
        .filter(|d| {
            d.fault.machines.contains(&m) || matches!(d.fault.kind, crate::plan::Kind::Partition(_))
        })
        .collect()
}

/// Splits `moves` into those no other fault on the moved unit's machine can explain (the fault they
/// are counted for moved them: needless) and those another fault on that machine, under way between
/// the injection and the move, may have moved (misattributed), with those faults.
pub fn attribute<'a>(
    done: &'a [Done],
    moves: Vec<Move<'a>>,
    end: u64,
) -> (Vec<Move<'a>>, Vec<(Move<'a>, Vec<&'a Done>)>) {
    let mut needless = Vec::new();
    let mut other = Vec::new();
    for mv in moves {
        let others = other_faults_on(done, mv.fault, mv.from, mv.fault.before, mv.at, end);
        if others.is_empty() {
            needless.push(mv);
        } else {
            other.push((mv, others));
        }
    }
    (needless, other)
}
