//! The operator's answers: which units moved where, which cannot be placed and why, how long each ran
//! nowhere, which machines took the load.
//!
//! Everything here is derived from what the simulated machines' systemd ran (a unit's process
//! starting and stopping on a machine), never from what the scheduler or the agents decided; only the
//! reason a unit cannot be placed is the scheduler's own ([`fleet_sched::placement::Reason`], the
//! sentence `fleetctl` shows), asked once at the end of the run.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

/// One move: a unit's process started on another machine than the one it last ran on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Move {
    /// The unit.
    pub unit: String,
    /// The machine it last ran on.
    pub from: String,
    /// The machine it started on.
    pub to: String,
    /// When it started there (simulated seconds).
    pub at_s: f64,
    /// How long it ran nowhere just before (0 when the new process started before the old one stopped:
    /// a double run, reported by the safety checks).
    pub gap_s: f64,
}

/// A unit running nowhere at the end of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unplaced {
    /// The unit.
    pub unit: String,
    /// Why, in the scheduler's words (`fleetctl`'s "it cannot be placed: ..."), or what the scheduler
    /// decided when it does place it (the unit was still starting, or failed to start).
    pub reason: String,
    /// Where it last ran, if it ever ran.
    pub last_on: Option<String>,
    /// Since when it has run nowhere (simulated seconds).
    pub since_s: f64,
}

/// How long one unit ran nowhere.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Downtime {
    /// The unit.
    pub unit: String,
    /// Seconds it ran nowhere after it had first run (for a unit that never ran: since submission).
    pub nowhere_s: f64,
    /// Separate stretches of running nowhere.
    pub episodes: u32,
    /// It runs nowhere at the end of the run.
    pub still_down: bool,
    /// It never ran at all.
    pub never_ran: bool,
}

/// How a machine's load changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Load {
    /// The machine.
    pub machine: String,
    /// Units running on it when the first fault struck.
    pub before: usize,
    /// Units running on it at the end.
    pub after: usize,
    /// The most units it ran at once after the first fault.
    pub peak: usize,
}

/// One stretch of a unit running on a machine.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Run {
    /// The machine.
    pub machine: String,
    /// From (simulated seconds).
    pub from_s: f64,
    /// To (the end of the run if it still runs).
    pub to_s: f64,
}

/// Where a unit ran, stretch by stretch (the gaps are the time it ran nowhere).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Timeline {
    /// The unit.
    pub unit: String,
    /// Its stretches, by start.
    pub runs: Vec<Run>,
}

/// The operator's answers (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Outcome {
    /// When the first fault struck (simulated seconds): "before" in moves and load.
    pub first_fault_s: Option<f64>,
    /// Every move, in time order.
    pub moves: Vec<Move>,
    /// Non-global units running nowhere at the end, by name.
    pub unplaced: Vec<Unplaced>,
    /// Units that ran nowhere for a while after submission (initial placement aside), longest first.
    pub downtime: Vec<Downtime>,
    /// Machines whose load rose (more units at the end than at the first fault), most first.
    pub load_rises: Vec<Load>,
    /// Where each unit of `downtime` (in its order), then each other unit that moved, ran.
    pub timelines: Vec<Timeline>,
}

/// Collects the observations during a run.
#[derive(Debug, Default)]
pub(crate) struct Observer {
    names: Vec<String>,
    global: Vec<bool>,
    /// The machines' IDs.
    ids: Vec<String>,
    /// Per unit: slots where its process runs.
    on: Vec<BTreeSet<u32>>,
    /// Per unit: the machine it last started on.
    last: Vec<Option<usize>>,
    ran: Vec<bool>,
    nowhere_since: Vec<Option<u64>>,
    down_us: Vec<u64>,
    episodes: Vec<u32>,
    submitted_at: Option<u64>,
    moves: Vec<(u32, usize, usize, u64, u64)>,
    /// Per machine ID: units running now, and the peak since the first fault.
    load: Vec<usize>,
    peak: Vec<usize>,
    /// Per machine slot: the machine whose ID it has.
    ident: Vec<usize>,
    first_fault: Option<(u64, Vec<usize>)>,
    /// Per non-global unit: (machine, from, to) stretches.
    runs: Vec<Vec<(usize, u64, Option<u64>)>>,
}

impl Observer {
    /// Units (name, global), the machines' IDs, and per machine slot the machine whose ID it has (an
    /// impostor slot counts as its victim).
    pub(crate) fn new(units: Vec<(String, bool)>, ids: Vec<String>, ident: Vec<usize>) -> Observer {
        let n = units.len();
        let machines = ids.len();
        let (names, global) = units.into_iter().unzip();
        Observer {
            names,
            global,
            ids,
            on: vec![BTreeSet::new(); n],
            last: vec![None; n],
            ran: vec![false; n],
            nowhere_since: vec![None; n],
            down_us: vec![0; n],
            episodes: vec![0; n],
            load: vec![0; machines],
            peak: vec![0; machines],
            ident,
            runs: vec![Vec::new(); n],
            ..Default::default()
        }
    }

    /// The units were submitted: the non-global ones run nowhere yet.
    pub(crate) fn submitted(&mut self, now: u64) {
        self.submitted_at = Some(now);
        for u in 0..self.names.len() {
            if !self.global[u] && self.on[u].is_empty() {
                self.nowhere_since[u] = Some(now);
            }
        }
    }

    /// A fault struck: the first one fixes "before".
    pub(crate) fn fault(&mut self, now: u64) {
        if self.first_fault.is_none() {
            self.peak.clone_from(&self.load);
            self.first_fault = Some((now, self.load.clone()));
        }
    }

    /// Unit `u`'s process started (`true`) or stopped on machine slot `slot`.
    pub(crate) fn set_running(&mut self, now: u64, slot: u32, u: u32, running: bool) {
        let ui = u as usize;
        let m = self.ident[slot as usize];
        if running {
            if !self.on[ui].insert(slot) {
                return;
            }
            self.load[m] += 1;
            self.peak[m] = self.peak[m].max(self.load[m]);
            if self.global[ui] {
                return;
            }
            let gap = match self.nowhere_since[ui].take() {
                Some(t) => {
                    if self.ran[ui] {
                        self.down_us[ui] += now - t;
                        self.episodes[ui] += 1;
                    }
                    now - t
                }
                None => 0,
            };
            self.runs[ui].push((m, now, None));
            if let Some(from) = self.last[ui].filter(|&l| l != m) {
                self.moves.push((u, from, m, now, gap));
            }
            self.ran[ui] = true;
            self.last[ui] = Some(m);
        } else {
            if !self.on[ui].remove(&slot) {
                return;
            }
            self.load[m] -= 1;
            if let Some(r) = self.runs[ui]
                .iter_mut()
                .rev()
                .find(|r| r.0 == m && r.2.is_none())
            {
                r.2 = Some(now);
            }
            if self.on[ui].is_empty() && !self.global[ui] && self.submitted_at.is_some() {
                self.nowhere_since[ui] = Some(now);
            }
        }
    }

    /// The answers at `now`; `reason(u)` is the scheduler's word on a unit running nowhere.
    pub(crate) fn outcome(&self, now: u64, mut reason: impl FnMut(u32) -> String) -> Outcome {
        let s = |us: u64| (us as f64 / 1e3).round() / 1e3;
        let id = |m: usize| self.ids[m].clone();
        let moves = self
            .moves
            .iter()
            .map(|&(u, from, to, at, gap)| Move {
                unit: self.names[u as usize].clone(),
                from: id(from),
                to: id(to),
                at_s: s(at),
                gap_s: s(gap),
            })
            .collect();
        let mut unplaced = Vec::new();
        let mut downtime = Vec::new();
        for u in 0..self.names.len() {
            if self.global[u] {
                continue;
            }
            let open = self.nowhere_since[u].map(|t| now - t);
            let total = self.down_us[u] + open.unwrap_or(0);
            if let Some(t) = self.nowhere_since[u] {
                unplaced.push(Unplaced {
                    unit: self.names[u].clone(),
                    reason: reason(u as u32),
                    last_on: self.last[u].map(id),
                    since_s: s(t),
                });
            }
            if total > 0 && (self.ran[u] || open.is_some()) {
                downtime.push(Downtime {
                    unit: self.names[u].clone(),
                    nowhere_s: s(total),
                    episodes: self.episodes[u] + u32::from(open.is_some()),
                    still_down: open.is_some(),
                    never_ran: !self.ran[u],
                });
            }
        }
        downtime.sort_by(|a, b| {
            b.nowhere_s
                .total_cmp(&a.nowhere_s)
                .then_with(|| a.unit.cmp(&b.unit))
        });
        let mut load_rises: Vec<Load> = match &self.first_fault {
            None => Vec::new(),
            Some((_, before)) => (0..self.load.len())
                .filter(|&m| self.load[m] > before[m])
                .map(|m| Load {
                    machine: id(m),
                    before: before[m],
                    after: self.load[m],
                    peak: self.peak[m],
                })
                .collect(),
        };
        load_rises.sort_by(|a, b| {
            (b.after - b.before)
                .cmp(&(a.after - a.before))
                .then_with(|| a.machine.cmp(&b.machine))
        });
        let by_name: std::collections::BTreeMap<&str, usize> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut shown = BTreeSet::new();
        let timelines = downtime
            .iter()
            .map(|d| d.unit.as_str())
            .chain(self.moves.iter().map(|m| self.names[m.0 as usize].as_str()))
            .filter(|n| shown.insert(*n))
            .map(|n| Timeline {
                unit: n.to_string(),
                runs: self.runs[by_name[n]]
                    .iter()
                    .map(|&(m, from, to)| Run {
                        machine: id(m),
                        from_s: s(from),
                        to_s: s(to.unwrap_or(now)),
                    })
                    .collect(),
            })
            .collect();
        Outcome {
            first_fault_s: self.first_fault.as_ref().map(|(t, _)| s(*t)),
            moves,
            unplaced,
            downtime,
            load_rises,
            timelines,
        }
    }
}

/// A machine ID as `fleetctl` shows it: its first 8 characters, `...` when cut (the JSON keeps whole IDs).
pub fn short(id: &str) -> String {
    if id.len() > 12 {
        format!("{}...", &id[..8])
    } else {
        id.to_string()
    }
}

impl Outcome {
    /// The answers as text (each list cut at `limit` lines; the JSON has them all; long machine IDs
    /// cut as `fleetctl` shows them).
    pub fn to_text(&self, limit: usize) -> String {
        let mut s = String::new();
        let more = |s: &mut String, n: usize| {
            if n > limit {
                let _ = writeln!(s, "  ... and {} more (see --json)", n - limit);
            }
        };
        let _ = writeln!(
            s,
            "what happened (observed on the machines' systemd; \"before\" = at the first fault{})",
            self.first_fault_s
                .map_or(", none".to_string(), |t| format!(", {t:.3}s"))
        );
        let _ = writeln!(s, "units that moved: {}", self.moves.len());
        for m in self.moves.iter().take(limit) {
            let _ = writeln!(
                s,
                "  {:<28} {} -> {}  at {:.3}s, after {:.3}s running nowhere",
                m.unit,
                short(&m.from),
                short(&m.to),
                m.at_s,
                m.gap_s
            );
        }
        more(&mut s, self.moves.len());
        let _ = writeln!(s, "units that cannot be placed: {}", self.unplaced.len());
        for u in self.unplaced.iter().take(limit) {
            let last = u
                .last_on
                .as_ref()
                .map_or("never ran".to_string(), |m| format!("last on {}", short(m)));
            let _ = writeln!(
                s,
                "  {:<28} {}; running nowhere since {:.3}s ({last})",
                u.unit, u.reason, u.since_s
            );
        }
        more(&mut s, self.unplaced.len());
        let total: f64 = self.downtime.iter().map(|d| d.nowhere_s).sum();
        let _ = writeln!(
            s,
            "time units ran nowhere: {} units, {:.1} unit-seconds",
            self.downtime.len(),
            total
        );
        for d in self.downtime.iter().take(limit) {
            let what = if d.never_ran {
                " (never ran)"
            } else if d.still_down {
                " (still down)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "  {:<28} {:.3}s in {} stretch(es){what}",
                d.unit, d.nowhere_s, d.episodes
            );
        }
        more(&mut s, self.downtime.len());
        let _ = writeln!(
            s,
            "machines whose load rises most (units before -> at the end, peak):"
        );
        if self.load_rises.is_empty() {
            let _ = writeln!(s, "  none");
        }
        for l in self.load_rises.iter().take(limit) {
            let _ = writeln!(
                s,
                "  {:<28} {} -> {} (+{}), peak {}",
                short(&l.machine),
                l.before,
                l.after,
                l.after - l.before,
                l.peak
            );
        }
        more(&mut s, self.load_rises.len());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observer() -> Observer {
        // Units a (non-global), g (global); machines m0, m1, m2; slot 3 is an impostor with m1's ID.
        Observer::new(
            vec![("a".into(), false), ("g".into(), true)],
            vec!["m0".into(), "m1".into(), "m2".into()],
            vec![0, 1, 2, 1],
        )
    }

    #[test]
    fn moves_gaps_downtime_and_load_come_from_starts_and_stops() {
        let mut o = observer();
        o.submitted(1_000_000);
        o.set_running(1_500_000, 0, 0, true); // a on m0: initial placement, not downtime
        o.set_running(1_500_000, 0, 1, true);
        o.set_running(1_500_000, 2, 1, true);
        o.fault(10_000_000);
        o.set_running(10_000_000, 0, 0, false);
        o.set_running(10_000_000, 0, 1, false);
        o.set_running(12_000_000, 2, 0, true); // a: m0 -> m2 after 2s nowhere
        o.set_running(13_000_000, 3, 0, true); // the impostor (m1's ID) starts it too: a move, no gap
        o.set_running(13_500_000, 3, 0, false);
        o.set_running(14_000_000, 2, 0, false); // a runs nowhere again, to the end
        let out = o.outcome(20_000_000, |u| format!("reason {u}"));
        assert_eq!(out.first_fault_s, Some(10.0));
        let moves: Vec<(&str, &str, f64)> = out
            .moves
            .iter()
            .map(|m| (m.from.as_str(), m.to.as_str(), m.gap_s))
            .collect();
        assert_eq!(moves, vec![("m0", "m2", 2.0), ("m2", "m1", 0.0)]);
        assert_eq!(
            out.unplaced,
            vec![Unplaced {
                unit: "a".into(),
                reason: "reason 0".into(),
                last_on: Some("m1".into()),
                since_s: 14.0
            }]
        );
        assert_eq!(
            out.downtime,
            vec![Downtime {
                unit: "a".into(),
                nowhere_s: 8.0,
                episodes: 2,
                still_down: true,
                never_ran: false
            }]
        );
        // m0 lost both units, m2 kept g (1 -> 1, peak 2): no machine ends higher.
        assert!(out.load_rises.is_empty(), "{:?}", out.load_rises);
        let runs: Vec<(&str, f64, f64)> = out.timelines[0]
            .runs
            .iter()
            .map(|r| (r.machine.as_str(), r.from_s, r.to_s))
            .collect();
        assert_eq!(
            runs,
            vec![("m0", 1.5, 10.0), ("m2", 12.0, 14.0), ("m1", 13.0, 13.5)]
        );
    }

    #[test]
    fn long_machine_ids_are_cut_as_fleetctl_shows_them() {
        assert_eq!(short("b1"), "b1");
        assert_eq!(short("2c0ffee1234567890abc"), "2c0ffee1...");
    }

    #[test]
    fn a_unit_that_never_ran_is_down_since_submission() {
        let mut o = observer();
        o.submitted(1_000_000);
        o.set_running(1_000_000, 1, 1, true);
        o.fault(2_000_000);
        o.set_running(3_000_000, 2, 1, true);
        let out = o.outcome(5_000_000, |_| "no".into());
        assert_eq!(out.downtime[0].nowhere_s, 4.0);
        assert!(out.downtime[0].never_ran && out.downtime[0].still_down);
        assert_eq!(out.unplaced[0].last_on, None);
        assert!(out.moves.is_empty());
        assert_eq!(
            out.load_rises,
            vec![Load {
                machine: "m2".into(),
                before: 0,
                after: 1,
                peak: 1
            }]
        );
    }
}
