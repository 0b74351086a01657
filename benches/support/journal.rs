//! The copies of units that ran in the lab, read from systemd's own journals, and how they overlap.
//!
//! Every lab machine logs on the host's clock, so the journals of all machines share one time line
//! (the technique of `tests/lab_safety.rs`). [`keep_journals`] makes each machine's journal
//! persistent on its lab disk (the overlay upper dir under `/dev/shm`), so that the journal of a
//! machine killed with `Lab::kill` can still be read: [`unit_runs`] reads it from the host with
//! `journalctl -D`. A *run* is one invocation of a unit on a machine (systemd's `INVOCATION_ID`), from
//! its "Started" line to its first end line ("Main process exited", "Deactivated", "Failed with
//! result", "Stopped"). A run without an end line ends when its machine was killed, or is still
//! running at the end of the observation.
//!
//! A copy of a unit does not execute while its machine is frozen (cgroup freezer): [`Timeline`] cuts
//! frozen windows out of runs, and marks what follows a thaw, because a thawed machine's units resume
//! in the same instant as its agent (docs/safety.md: that case is bounded by thaw → kill, not zero).
//! Every time given or returned here is in µs since the Unix epoch.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use crate::lab::FleetLab;

/// How long after a thaw a copy that resumed may still run while a copy elsewhere that started after
/// the thaw runs, and the overlap count as the thaw case (the goal of docs/safety.md: thaw to kill
/// under 100 ms); longer is a plain overlap.
const THAW_BOUND_US: u64 = 100_000;

/// The host's wall clock in µs since the epoch: the clock of every lab machine's journal.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// Makes machine `i`'s journal persistent on its lab disk (a drop-in that outlives reboots: the lab
/// keeps a machine's upper dir across `kill`/`boot`), at most 512 MiB (with 64 MiB, three machines' journals of a 30-minute
/// chaos run began 10-13 minutes after the chaos, cause not established; [`coverage`] tells), and restarts
/// journald.
pub fn keep_journals(fl: &FleetLab, i: usize) -> Result<(), String> {
    let root = fl.lab.machine_root(i).map_err(|e| e.to_string())?;
    let dir = root.join("etc/systemd/journald.conf.d");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // "zz-" sorts after the lab's own ft.conf (Storage=volatile), so it wins.
    std::fs::write(
        dir.join("zz-bench.conf"),
        "[Journal]\nStorage=persistent\nSystemMaxUse=512M\nRateLimitBurst=0\n",
    )
    .map_err(|e| e.to_string())?;
    fl.lab
        .sh_ok(i, &["systemctl", "restart", "systemd-journald"])
        .map_err(|e| e.to_string())?;
    fl.lab
        .sh_ok(i, &["journalctl", "--flush"])
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The oldest entry of machine `i`'s persistent journal (µs since the epoch) and journald's account of
/// its disk usage: a journal whose oldest entry is younger than the chaos lost its beginning (journald
/// deletes its oldest files past its size limits), and every figure read from it before then misses
/// that machine's copies.
pub fn coverage(fl: &FleetLab, i: usize) -> Result<(u64, String), String> {
    use std::io::{BufRead, BufReader};
    let dir = journal_dir(fl, i);
    let mut child = journalctl_json(&dir, "__REALTIME_TIMESTAMP")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("journalctl -D {}: {e}", dir.display()))?;
    let mut first = String::new();
    let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first);
    // Only the first line is wanted: this child is ours (spawned just above), ended by its PID.
    let _ = child.kill();
    let _ = child.wait();
    read.map_err(|e| format!("journalctl -D {}: {e}", dir.display()))?;
    let oldest = serde_json::from_str::<serde_json::Value>(&first)
        .ok()
        .and_then(|v| v["__REALTIME_TIMESTAMP"].as_str()?.parse().ok())
        .ok_or_else(|| format!("journal of m{i} is empty or unreadable"))?;
    let usage = Command::new("journalctl")
        .arg("-D")
        .arg(&dir)
        .arg("--disk-usage")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    Ok((oldest, usage))
}

/// Where machine `i`'s persistent journal lives on the host (readable while the machine is down).
pub fn journal_dir(fl: &FleetLab, i: usize) -> PathBuf {
    fl.lab
        .state_dir()
        .join(format!("m{i}/upper/var/log/journal"))
}

/// `journalctl -D <dir> --no-pager -o json --output-fields=<fields>`: what every reader of a lab
/// machine's journal here starts from (add matches, then run it).
pub fn journalctl_json(dir: &std::path::Path, fields: &str) -> Command {
    let mut c = Command::new("journalctl");
    c.arg("-D")
        .arg(dir)
        .args(["--no-pager", "-o", "json"])
        .arg(format!("--output-fields={fields}"));
    c
}

/// One invocation of a unit on a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub machine: usize,
    pub unit: String,
    pub start: u64,
    /// The first end line after the start, if there is one.
    pub end: Option<u64>,
}

fn is_end_line(msg: &str) -> bool {
    msg.contains("Main process exited")
        || msg.contains("Deactivated successfully")
        || msg.contains("Failed with result")
        || msg.starts_with("Stopped ")
}

/// The runs of every unit whose name starts with `prefix` on machine `i`, from its persistent journal
/// (systemd's own lines, `_PID=1`), in order of start. Times are the sender's
/// (`_SOURCE_REALTIME_TIMESTAMP`), else journald's.
pub fn unit_runs(fl: &FleetLab, i: usize, prefix: &str) -> Result<Vec<Run>, String> {
    let dir = journal_dir(fl, i);
    if !dir.exists() {
        return Ok(vec![]);
    }
    let out = journalctl_json(
        &dir,
        "MESSAGE,UNIT,INVOCATION_ID,_SOURCE_REALTIME_TIMESTAMP",
    )
    .arg("_PID=1")
    .output()
    .map_err(|e| format!("journalctl -D {}: {e}", dir.display()))?;
    if !out.status.success() {
        return Err(format!(
            "journalctl -D {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut runs: Vec<Run> = Vec::new();
    // (unit, invocation) -> index in `runs`
    let mut open: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut lines: Vec<(u64, String, String, String)> = Vec::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        let Some(unit) = v["UNIT"].as_str().filter(|u| u.starts_with(prefix)) else {
            continue;
        };
        let t = v["_SOURCE_REALTIME_TIMESTAMP"]
            .as_str()
            .or_else(|| v["__REALTIME_TIMESTAMP"].as_str())
            .and_then(|t| t.parse().ok());
        let (Some(t), Some(msg)) = (t, v["MESSAGE"].as_str()) else {
            continue;
        };
        let inv = v["INVOCATION_ID"].as_str().unwrap_or("").to_string();
        lines.push((t, unit.to_string(), inv, msg.to_string()));
    }
    lines.sort_by_key(|l| l.0);
    for (t, unit, inv, msg) in lines {
        if msg.starts_with("Started ") {
            open.insert((unit.clone(), inv), runs.len());
            runs.push(Run {
                machine: i,
                unit,
                start: t,
                end: None,
            });
        } else if is_end_line(&msg) {
            // Lines without an invocation ID close the unit's latest open run.
            let key = if inv.is_empty() {
                open.keys().rev().find(|(u, _)| *u == unit).cloned()
            } else {
                Some((unit, inv))
            };
            if let Some(k) = key {
                if let Some(ix) = open.remove(&k) {
                    runs[ix].end = Some(t);
                }
            }
        }
    }
    Ok(runs)
}

/// A stretch of time during which a copy of a unit executed on a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub from: u64,
    pub to: u64,
    /// It began at a thaw of the machine (the copy resumed with its agent).
    pub after_thaw: bool,
}

/// Two copies of a unit executing at once.
#[derive(Clone, Debug)]
pub struct Overlap {
    pub unit: String,
    /// (machine, start of its run) of each copy.
    pub a: (usize, u64),
    pub b: (usize, u64),
    pub from: u64,
    pub to: u64,
    /// It began at the thaw of one copy's machine while the other copy was executing (docs/safety.md:
    /// bounded by thaw → kill).
    pub thaw: bool,
}

impl Overlap {
    pub fn ms(&self) -> f64 {
        (self.to - self.from) as f64 / 1000.0
    }
}

/// The longest time a unit ran nowhere.
#[derive(Clone, Debug, Default)]
pub struct Gap {
    pub unit: String,
    pub from: u64,
    pub to: u64,
}

impl Gap {
    pub fn ms(&self) -> f64 {
        (self.to - self.from) as f64 / 1000.0
    }
}

/// Runs of units plus what the bench did to the machines: when each was killed and frozen.
#[derive(Clone, Debug, Default)]
pub struct Timeline {
    pub runs: Vec<Run>,
    /// Machine -> times it was killed (after `Lab::kill` returned: everything in it was dead).
    pub kills: BTreeMap<usize, Vec<u64>>,
    /// Machine -> (frozen from, thawed at): after `Lab::freeze` returned, before `Lab::thaw` began.
    pub freezes: BTreeMap<usize, Vec<(u64, u64)>>,
    /// End of the observation: runs still going count until here.
    pub end: u64,
}

impl Timeline {
    /// Reads the runs of units starting with `prefix` on machines `1..=machines`.
    pub fn read(fl: &FleetLab, machines: usize, prefix: &str) -> Result<Timeline, String> {
        let mut runs = Vec::new();
        for i in 1..=machines {
            runs.extend(unit_runs(fl, i, prefix)?);
        }
        runs.sort_by_key(|r| r.start);
        Ok(Timeline {
            runs,
            end: now_us(),
            ..Timeline::default()
        })
    }

    /// When `run` stopped executing: its end line, else its machine's first kill after its start,
    /// else the end of the observation.
    pub fn run_end(&self, run: &Run) -> u64 {
        let kill = self
            .kills
            .get(&run.machine)
            .and_then(|k| k.iter().copied().filter(|&t| t >= run.start).min());
        match (run.end, kill) {
            (Some(e), Some(k)) => e.min(k),
            (Some(e), None) => e,
            (None, Some(k)) => k,
            (None, None) => self.end.max(run.start),
        }
    }

    /// The stretches during which `run` executed: start..end minus its machine's frozen windows.
    pub fn segments(&self, run: &Run) -> Vec<Segment> {
        let end = self.run_end(run);
        let mut segs = vec![Segment {
            from: run.start,
            to: end,
            after_thaw: false,
        }];
        let frozen = self.freezes.get(&run.machine).cloned().unwrap_or_default();
        for (f, t) in frozen {
            let mut next = Vec::new();
            for s in segs {
                if t <= s.from || f >= s.to {
                    next.push(s);
                    continue;
                }
                if f > s.from {
                    next.push(Segment { to: f, ..s });
                }
                if t < s.to {
                    next.push(Segment {
                        from: t,
                        to: s.to,
                        after_thaw: true,
                    });
                }
            }
            segs = next;
        }
        segs
    }

    /// Every unit's runs, by unit.
    pub fn by_unit(&self) -> BTreeMap<&str, Vec<&Run>> {
        let mut m: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
        for r in &self.runs {
            m.entry(r.unit.as_str()).or_default().push(r);
        }
        m
    }

    /// Every pair of copies of one unit on two machines that executed at the same time.
    pub fn overlaps(&self) -> Vec<Overlap> {
        let mut found = Vec::new();
        for (unit, runs) in self.by_unit() {
            let segs: Vec<(&Run, Vec<Segment>)> =
                runs.iter().map(|r| (*r, self.segments(r))).collect();
            for (k, (ra, sa)) in segs.iter().enumerate() {
                for (rb, sb) in &segs[k + 1..] {
                    if ra.machine == rb.machine {
                        continue;
                    }
                    for x in sa {
                        for y in sb {
                            let (from, to) = (x.from.max(y.from), x.to.min(y.to));
                            if from < to {
                                // The thaw case: the overlap begins where a copy resumed at a thaw
                                // while the other was already executing; or the other copy started
                                // after the thaw (its taker's proof, made while the machine was
                                // frozen, held just then) and the thawed copy ended, within the bound
                                // of the thaw case, while the other ran: both are the thawed
                                // machine's units resuming before its guard kills them. Any other
                                // overlap after a thaw is a plain overlap.
                                let resumed = |a: &Segment, b: &Segment| {
                                    a.after_thaw
                                        && ((from == a.from && b.from < a.from)
                                            || (b.from >= a.from
                                                && to == a.to
                                                && a.to - a.from <= THAW_BOUND_US))
                                };
                                let thaw = resumed(x, y) || resumed(y, x);
                                found.push(Overlap {
                                    unit: unit.to_string(),
                                    a: (ra.machine, ra.start),
                                    b: (rb.machine, rb.start),
                                    from,
                                    to,
                                    thaw,
                                });
                            }
                        }
                    }
                }
            }
        }
        found
    }

    /// Per unit, the longest stretch between its first start and the end of the observation during
    /// which no copy of it executed anywhere.
    pub fn gaps(&self) -> Vec<Gap> {
        let mut gaps = Vec::new();
        for (unit, runs) in self.by_unit() {
            let mut segs: Vec<Segment> = runs.iter().flat_map(|r| self.segments(r)).collect();
            segs.sort_by_key(|s| s.from);
            let Some(first) = segs.first() else { continue };
            let mut covered = first.to;
            let mut longest = Gap {
                unit: unit.to_string(),
                from: 0,
                to: 0,
            };
            for s in &segs[1..] {
                if s.from > covered && s.from - covered > longest.to - longest.from {
                    longest.from = covered;
                    longest.to = s.from;
                }
                covered = covered.max(s.to);
            }
            if self.end > covered && self.end - covered > longest.to - longest.from {
                longest.from = covered;
                longest.to = self.end;
            }
            gaps.push(longest);
        }
        gaps
    }

    /// The first start of `unit` on a machine other than `not`, at or after `after`.
    pub fn first_start_elsewhere(&self, unit: &str, not: &[usize], after: u64) -> Option<&Run> {
        self.runs
            .iter()
            .filter(|r| r.unit == unit && !not.contains(&r.machine) && r.start >= after)
            .min_by_key(|r| r.start)
    }

    /// The units executing on machine `i` at time `t` (not frozen, not killed).
    pub fn running_at(&self, i: usize, t: u64) -> Vec<String> {
        let mut units: Vec<String> = self
            .runs
            .iter()
            .filter(|r| r.machine == i && r.start <= t)
            .filter(|r| self.segments(r).iter().any(|s| s.from <= t && t < s.to))
            .map(|r| r.unit.clone())
            .collect();
        units.sort();
        units.dedup();
        units
    }
}

/// Machine `i`'s journal lines (fleetd, its guard, and systemd about `unit`) between `from` and `to`,
/// as text with µs timestamps, read from its persistent journal on the host.
pub fn excerpt(fl: &FleetLab, i: usize, unit: &str, from: u64, to: u64) -> String {
    let out = journalctl(
        fl,
        i,
        (from, to),
        &[
            "_SYSTEMD_UNIT=fleet.service",
            "+",
            "_SYSTEMD_UNIT=fleet-guard.service",
            "+",
            &format!("UNIT={unit}"),
            "+",
            &format!("_SYSTEMD_UNIT={unit}"),
        ],
    );
    match out {
        Ok(text) => text,
        Err(e) => format!("journalctl failed: {e}"),
    }
}

/// `journalctl` on machine `i`'s persistent journal (on the host) from `from` to `to` (µs since the
/// epoch), µs timestamps, with `args` (matches, filters): its stdout.
fn journalctl(
    fl: &FleetLab,
    i: usize,
    (from, to): (u64, u64),
    args: &[&str],
) -> std::io::Result<String> {
    let dir = journal_dir(fl, i);
    let out = Command::new("journalctl")
        .arg("-D")
        .arg(&dir)
        .args([
            "--no-pager",
            "-o",
            "short-precise",
            &format!("--since=@{}.{:06}", from / 1_000_000, from % 1_000_000),
            &format!("--until=@{}.{:06}", to / 1_000_000, to % 1_000_000),
        ])
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Machine `i`'s journal lines that name `unit` (fleetd's, its guard's, systemd's) between `from` and
/// `to`: the first and last `max / 2` of them when there are more (a unit stuck for minutes gets a
/// line every reconcile pass).
pub fn mentions(fl: &FleetLab, i: usize, unit: &str, from: u64, to: u64, max: usize) -> String {
    let pattern: String = unit
        .chars()
        .flat_map(|c| {
            let escape = !c.is_ascii_alphanumeric() && c != '-' && c != '_';
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect();
    let grep = format!("--grep={pattern}");
    let text = match journalctl(fl, i, (from, to), &["--case-sensitive=true", &grep]) {
        Ok(text) => text,
        Err(e) => return format!("journalctl failed: {e}\n"),
    };
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= max {
        return text;
    }
    let half = max / 2;
    format!(
        "{}\n  ... {} lines left out ...\n{}\n",
        lines[..half].join("\n"),
        lines.len() - 2 * half,
        lines[lines.len() - half..].join("\n")
    )
}

/// Checks the checker on a made-up timeline (run at the start of every bench that relies on it: a
/// planted overlap, a thaw overlap, a killed copy and a gap must all be found, and nothing else).
pub fn self_check() {
    let run = |machine, unit: &str, start, end| Run {
        machine,
        unit: unit.to_string(),
        start,
        end,
    };
    let mut tl = Timeline {
        runs: vec![
            // u1: m1 until 100, m2 from 100 (no overlap), m3 from 150 while m2 runs (overlap 50).
            run(1, "u1", 0, Some(100)),
            run(2, "u1", 100, Some(200)),
            run(3, "u1", 150, None),
            // u2: m1 killed at 300 without an end line, m2 starts at 290 (overlap 10).
            run(1, "u2", 0, None),
            run(2, "u2", 290, None),
            // u3: m4 frozen 400..600 and killed at 610 after the thaw; m5 starts at 500.
            run(4, "u3", 0, Some(610)),
            run(5, "u3", 500, None),
            // u4: nowhere between 700 and 900 (not on m1: its kill at 300 would end the copy there).
            run(2, "u4", 0, Some(700)),
            run(5, "u4", 900, None),
            // u5: m4's copy outlives the freeze (400..600) by 200 ms, m3 starts one at 700 and
            // outlives it: not a thaw case.
            run(4, "u5", 0, Some(200_600)),
            run(3, "u5", 700, Some(300_000)),
            // u6: m4's copy, frozen 400..600, is killed at 620; m2 starts one at 605, after the thaw:
            // the thaw case.
            run(4, "u6", 0, Some(620)),
            run(2, "u6", 605, None),
        ],
        kills: BTreeMap::from([(1, vec![300])]),
        freezes: BTreeMap::from([(4, vec![(400, 600)])]),
        end: 400_000,
    };
    tl.runs.sort_by_key(|r| r.start);
    let mut got: Vec<(String, usize, usize, u64, u64, bool)> = tl
        .overlaps()
        .into_iter()
        .map(|o| (o.unit, o.a.0, o.b.0, o.from, o.to, o.thaw))
        .collect();
    got.sort();
    let want = vec![
        ("u1".to_string(), 2, 3, 150, 200, false),
        ("u2".to_string(), 1, 2, 290, 300, false),
        ("u3".to_string(), 4, 5, 600, 610, true),
        ("u5".to_string(), 4, 3, 700, 200_600, false),
        ("u6".to_string(), 4, 2, 605, 620, true),
    ];
    assert_eq!(got, want, "the overlap checker is broken");
    let gaps: BTreeMap<String, (u64, u64)> = tl
        .gaps()
        .into_iter()
        .map(|g| (g.unit, (g.from, g.to)))
        .collect();
    assert_eq!(gaps["u4"], (700, 900), "the gap checker is broken");
    assert_eq!(gaps["u3"], (400, 500), "frozen copies do not run");
    assert_eq!(gaps["u1"].1 - gaps["u1"].0, 0, "u1 always ran somewhere");
    assert_eq!(tl.running_at(4, 450), Vec::<String>::new());
    assert_eq!(tl.running_at(1, 50), vec!["u1", "u2"]);
    assert_eq!(tl.running_at(1, 300), Vec::<String>::new(), "killed at 300");
    assert_eq!(tl.running_at(2, 50), vec!["u4"]);
}
