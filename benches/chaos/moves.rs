//! The evidence of units that a fault which must move nothing moved or stopped (`report.rs` finds
//! them, `evidence::attribute` tells which another fault on their machine may explain): one line each
//! in the report, and a file each in `--out` with the machines' journals.

use std::fmt::Write as _;

use crate::evidence;
use crate::plan::Done;
use crate::report::{fault_line, rel, write_copies, write_excerpt, write_file, Input};
use crate::support::journal::Timeline;

/// One line per move of a unit during a fault that must not move it, then the faults under way from
/// the injection to the move.
pub(crate) fn print_move(
    inp: &Input,
    tl: &Timeline,
    mv: &evidence::Move,
    what: &str,
    file: &str,
    origin: u64,
) {
    let next = tl
        .runs
        .iter()
        .filter(|r| r.unit == mv.unit && r.start > mv.at)
        .min_by_key(|r| r.start)
        .map(|r| {
            format!(
                "; next started on m{} at +{:.3} s",
                r.machine,
                rel(r.start, origin)
            )
        })
        .unwrap_or_default();
    println!(
        "  {what} {} m{} -> m{} at +{:.3} s, {:.3} s after the injection of {}{next} ({file})",
        mv.unit,
        mv.from,
        mv.to,
        rel(mv.at, origin),
        (mv.at - mv.fault.before) as f64 / 1e6,
        mv.fault.fault.describe(),
    );
    for d in evidence::faults_around(inp.done, mv.fault.before, mv.at, tl.end) {
        println!("    {}", fault_line(d, origin));
    }
}

/// Writes what is known about one move of a unit during a fault that must not move it: the fault, the
/// unit's copies, every fault under way from 30 s before the injection to the move (`others`: those
/// on its machine, which may have moved it), and both machines' journals (fleetd, its guard, systemd
/// about the unit) from 10 s before the injection to 5 s after the move; returns the file's path.
pub(crate) fn write_move_evidence(
    inp: &Input,
    tl: &Timeline,
    mv: &evidence::Move,
    others: &[&Done],
    kind: &str,
    k: usize,
    origin: u64,
) -> String {
    let d = mv.fault;
    let mut text = header(inp, mv, others, origin);
    write_copies(&mut text, tl, &mv.unit, origin);
    writeln!(
        text,
        "
faults under way from 30 s before the injection to the move:"
    )
    .unwrap();
    for o in evidence::faults_around(inp.done, d.before.saturating_sub(30_000_000), mv.at, tl.end) {
        writeln!(text, "  {}", fault_line(o, origin)).unwrap();
    }
    // A stop: up to the unit's next start anywhere (within a minute), which says where it went.
    let next = tl
        .runs
        .iter()
        .filter(|r| r.unit == mv.unit && r.start > mv.at)
        .map(|r| (r.start, r.machine))
        .min();
    let until = match next {
        Some((t, _)) if mv.to == mv.from => t.min(mv.at + 60_000_000) + 5_000_000,
        _ => mv.at + 5_000_000,
    };
    let mut machines = vec![mv.from, mv.to];
    if mv.to == mv.from {
        machines.extend(next.map(|(_, m)| m));
    }
    machines.dedup();
    for m in machines {
        write_excerpt(
            &mut text,
            inp,
            m,
            &mv.unit,
            "10 s before the injection to 5 s after the move (for a stop: after its next start)",
            (d.before.saturating_sub(10_000_000), until),
        );
    }
    let name = format!("{kind}-{k}-{}.txt", mv.unit.trim_end_matches(".service"));
    write_file(inp, &name, text)
}

/// The first lines of a move's evidence: what moved or stopped, when, and the other faults on its machine.
fn header(inp: &Input, mv: &evidence::Move, others: &[&Done], origin: u64) -> String {
    let mut text = String::new();
    let d = mv.fault;
    writeln!(
        text,
        "seed {}: {} ran on m{} when {} began (+{:.6} s, {} µs since the epoch; {}) and {} m{} at +{:.6} s ({} µs), {:.3} s after the injection",
        inp.seed,
        mv.unit,
        mv.from,
        d.fault.describe(),
        rel(d.before, origin),
        d.before,
        d.healed
            .map(|(h, _)| format!("healed at +{:.6} s", rel(h, origin)))
            .unwrap_or_else(|| "not healed".into()),
        if mv.to == mv.from {
            "stopped on"
        } else {
            "started on"
        },
        mv.to,
        rel(mv.at, origin),
        mv.at,
        (mv.at - d.before) as f64 / 1e6
    )
    .unwrap();
    if others.is_empty() {
        writeln!(
            text,
            "no other fault on m{} was under way from the injection to the move",
            mv.from
        )
        .unwrap();
    } else {
        writeln!(
            text,
            "other faults on m{} under way from the injection to the move:",
            mv.from
        )
        .unwrap();
        for o in others {
            writeln!(text, "  {}", fault_line(o, origin)).unwrap();
        }
    }
    text
}
