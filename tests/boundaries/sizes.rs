//! Rooms of a livable size: no `.rs` file of the workspace over [`MAX_FILE_LINES`] lines and no
//! function over [`MAX_FN_LINES`] lines without a reason written at its top.
//!
//! - A large file says why in its first [`HEAD_LINES`] lines: a comment `//! size: <reason>` (or
//!   `// size: <reason>`).
//! - A long function says why in the comments and attributes right above its `fn` line:
//!   `// long: <reason>`.
//! - Code that another change owned when this check came (so its reason could not be written at its
//!   top then) is listed with its reason in [`KNOWN_LONG_FNS`] and [`KNOWN_LARGE_FILES`]; whoever next
//!   edits such a function moves the reason to its top (or splits it) and drops the row.
//!
//! Lengths are counted on the source with comments, strings and character literals blanked, from the
//! `fn` line to the line of the body's closing brace.

use std::path::{Path, PathBuf};

/// Lines a file may have without a `size:` reason.
pub const MAX_FILE_LINES: usize = 800;
/// Lines a function may span (from `fn` to its closing brace) without a `long:` reason.
pub const MAX_FN_LINES: usize = 80;
/// How far from the top of a file its `size:` reason may stand.
pub const HEAD_LINES: usize = 20;

/// (file, function, why it stays long): functions in code other changes owned when the check came.
/// A row covers every function of that name in the file.
pub const KNOWN_LONG_FNS: &[(&str, &str, &str)] = &[
    (
        "src/agent/guard.rs",
        "run",
        "the fence guard's one loop: deadline, kills and recovery mark share its state",
    ),
    (
        "tests/lab_gossip.rs",
        "forged_refutations_do_not_keep_a_killed_machine_listed",
        "one lab scenario: forged refutations sent against the same killed machine in turn",
    ),
    (
        "tests/lab_safety.rs",
        "a_partition_longer_than_remove_down_after_moves_the_cut_off_units_once_and_merges_back",
        "one lab scenario: the same partition through cut, move and merge",
    ),
    (
        "benches/chaos/main.rs",
        "execute",
        "the run loop: inject, heal, sample and record each fault in plan order, with the retry of failed heals",
    ),
    (
        "benches/chaos/main.rs",
        "main",
        "the bench's script: flags, lab, fleetd, the run, the report, in order",
    ),
    (
        "benches/chaos/plan.rs",
        "plan",
        "one seeded draw of the whole fault schedule; its limits (at most N faulted, a partition alone) share the loop's state",
    ),
    (
        "benches/failover.rs",
        "crash_round",
        "one measured round: fault, watch every machine, time each recovery step, restore",
    ),
    (
        "benches/failover.rs",
        "main",
        "the bench's script: flags, lab, rounds, the printed figures, in order",
    ),
    (
        "benches/gossip.rs",
        "main",
        "the bench's script: set-up, the measured runs and the printed figures, in order",
    ),
    (
        "fleetctl/src/commands/simulate.rs",
        "capture",
        "reads every part of a captured cluster into one scenario, each failure naming its unit",
    ),
    (
        "fleetctl/src/commands/wait.rs",
        "wait_for",
        "one poll loop: fetch, report each unit as it arrives, explain the rest on time-out",
    ),
    (
        "fleetctl/src/lib.rs",
        "run_inner",
        "the one dispatch from parsed verb to command, a match arm per verb",
    ),
    (
        "gossip-quic/examples/loopback_bench.rs",
        "main",
        "a measuring script: set-up, runs, printed figures, in order",
    ),
    (
        "gossip-quic/examples/quic_cost.rs",
        "main",
        "a measuring script: set-up, runs, printed figures, in order",
    ),
    (
        "gossip-quic/examples/signed_state_cost.rs",
        "main",
        "a measuring script: set-up, runs, printed figures, in order",
    ),
    (
        "gossip-quic/src/transport/driver.rs",
        "net",
        "the driver's one select loop over the endpoint, its connections and the core's commands",
    ),
    (
        "gossip-quic/src/transport/mod.rs",
        "start",
        "builds the endpoint, its TLS configs and the driver task in the order quinn needs them",
    ),
    (
        "gossip-quic/tests/transport.rs",
        "three_nodes_gossip_over_mutual_tls_and_refuse_a_foreign_ca",
        "one scenario over real sockets: three nodes form, then a foreign CA is refused by the same nodes",
    ),
    (
        "gossip/benches/scale.rs",
        "main",
        "the bench's script: cluster sizes, runs, the printed table, in order",
    ),
    (
        "gossip/benches/scale.rs",
        "run",
        "one measured run of a synthetic cluster: set-up, rounds, counters",
    ),
    (
        "gossip/examples/detection.rs",
        "main",
        "a measuring script: set-up, runs, printed figures, in order",
    ),
    (
        "lab/tests/lab.rs",
        "an_etcd_member_cluster_whose_members_fail_alone",
        "one lab scenario: each member fault builds on the cluster the previous step left",
    ),
    (
        "lab/tests/lab.rs",
        "lab_boots_machines_with_options_faults_and_tears_down",
        "one lab scenario: every option and fault on one booted cluster (a boot costs seconds)",
    ),
    (
        "sched/examples/placement_bench.rs",
        "incremental",
        "a measuring script: steady-state changes on one cluster and the printed figures",
    ),
    (
        "sched/examples/placement_bench.rs",
        "workload",
        "the unit mix as one list of kinds, read top to bottom",
    ),
    (
        "sched/src/name.rs",
        "invalid_names_say_what_is_wrong",
        "a table of bad names and the error each must name",
    ),
    (
        "sched/src/name.rs",
        "valid_names_and_their_parts",
        "a table of good names and their parts",
    ),
    (
        "sched/src/placement/decide.rs",
        "decide",
        "one unit's decision in fleet's order of rules; the steps share the candidate set",
    ),
    (
        "sched/src/placement/decide.rs",
        "decide_all",
        "the order of schedule's module documentation in one place, then the retry",
    ),
    (
        "sched/src/placement/engine/mod.rs",
        "new",
        "builds every index of the engine from one snapshot in one pass",
    ),
    (
        "sched/src/placement/planner/relations.rs",
        "detach",
        "undoes every relation of a unit in one place, so none is forgotten",
    ),
    (
        "sched/src/placement/planner/relations.rs",
        "settle_relations",
        "recomputes relations and cycles of the affected groups together; they share the work lists",
    ),
    (
        "sched/src/placement/violations.rs",
        "violations",
        "the placement oracle: every rule of the spec checked in one readable pass, written apart from the engine",
    ),
    (
        "sched/src/requirements.rs",
        "from_unit",
        "every [X-Fleet] option and fleet's rejected combinations, checked in fleet's order",
    ),
    (
        "sched/src/testing.rs",
        "check_unit",
        "the oracle's rules for one unit, one after the other as the spec states them",
    ),
    (
        "sched/tests/common/mod.rs",
        "requirements",
        "one proptest strategy drawing every kind of requirement together",
    ),
    (
        "simulations/src/agent/requests.rs",
        "etcd_answer",
        "each kind of etcd answer reaching the simulated fleetd, a match arm per kind",
    ),
    (
        "simulations/src/agent/pass.rs",
        "pass",
        "one agent pass as fleetd runs it, step by step (the decisions are fleet-decide's)",
    ),
    (
        "simulations/src/check.rs",
        "periodic",
        "the periodic invariants, each a short block over the same snapshot",
    ),
    (
        "simulations/src/check.rs",
        "started",
        "what a start must satisfy, each rule a short block over the same snapshot",
    ),
    (
        "simulations/src/main.rs",
        "add_faults",
        "one arm per fault flag, in command-line order",
    ),
    (
        "simulations/src/main.rs",
        "main",
        "the simulator's command line: flags, run, report, reproduce command, in order",
    ),
    (
        "simulations/src/model.rs",
        "handle",
        "the etcd model: one match arm per request kind",
    ),
    (
        "simulations/src/outcome.rs",
        "outcome",
        "the answers at one instant, each a short block over the same run",
    ),
    (
        "simulations/src/outcome.rs",
        "to_text",
        "one text section per answer, in order",
    ),
    (
        "simulations/src/report.rs",
        "to_svg",
        "the SVG drawn top to bottom: two panels, their axes, marks and legend",
    ),
    (
        "simulations/src/report.rs",
        "to_text",
        "the text report top to bottom",
    ),
    (
        "simulations/src/selector.rs",
        "pick",
        "one match arm per selector kind",
    ),
    (
        "simulations/src/sim/build.rs",
        "new",
        "sets up a run in order: units, machines, network, etcd model, schedule",
    ),
    (
        "simulations/src/sim/faults.rs",
        "apply_fault",
        "one match arm per fault kind",
    ),
    (
        "simulations/src/sim/load.rs",
        "load_units",
        "reads every unit option the simulator models, in unit-file order",
    ),
    (
        "simulations/src/sim/mod.rs",
        "handle",
        "the event loop's dispatch, one match arm per event",
    ),
    (
        "simulations/src/sim/systemd.rs",
        "apply",
        "one machine's systemd reconciled in job order: stops, then starts",
    ),
    (
        "src/agent/mod.rs",
        "run",
        "the agent's one select loop over watch, gossip, timers and shutdown",
    ),
    (
        "src/agent/plan.rs",
        "update",
        "brings the planner to new inputs in one batch; the steps share the diff",
    ),
    (
        "src/api/machines.rs",
        "relay_metadata",
        "one machine's ops relayed with every answer mapped to its status",
    ),
    (
        "src/api/units.rs",
        "set",
        "PUT /units/{name}: create, replace or set the desired state, each a short branch of one handler",
    ),
    (
        "src/bin/fleetd.rs",
        "run",
        "fleetd's start-up in order: config, etcd, gossip, agent, API, signals",
    ),
    (
        "src/metrics.rs",
        "render",
        "every metric written in the order of the exposition, one short block each",
    ),
    (
        "src/registry/lease.rs",
        "keep",
        "the lease loop: grant, keep alive, re-grant and loss share the lease's state in one select",
    ),
    (
        "src/registry/session.rs",
        "delta_read",
        "the delta read's steps share the revisions they compare",
    ),
    (
        "src/registry/session.rs",
        "session",
        "long on purpose, as its doc says: one select over the session's state",
    ),
    (
        "src/registry/writes.rs",
        "update_record",
        "one transaction: read, check, compare-and-write, with each refusal named",
    ),
    (
        "systemd/examples/bulk.rs",
        "run",
        "a measuring script: set-up, runs, printed figures, in order",
    ),
    (
        "systemd/tests/units.rs",
        "a_loaded_unit_starts_shows_running_with_its_main_pid_then_stops_and_unloads",
        "one unit's whole life against a real systemd, each step on the state the last left",
    ),
    (
        "systemd/tests/units.rs",
        "batches_load_start_and_unload_many_units_and_a_bad_one_fails_alone",
        "one batch's whole life against a real systemd",
    ),
    (
        "systemd/tests/units.rs",
        "every_name_the_validator_accepts_loads_in_systemd",
        "one property test against a real systemd: draw names, load each",
    ),
    (
        "systemd/tests/units.rs",
        "units_fleet_did_not_write_are_left_alone_and_named_by_host_units",
        "one scenario against a real systemd: host units stay untouched through every call",
    ),
    (
        "tests/lab_gossip.rs",
        "a_peer_claiming_another_machines_identity_is_refused_and_changes_nothing",
        "one lab scenario: a forged peer against a running cluster",
    ),
    (
        "tests/lab_gossip.rs",
        "a_relayed_update_in_another_machines_name_is_refused",
        "one lab scenario: a forged state push against a running cluster",
    ),
    (
        "tests/lab_gossip.rs",
        "peers_without_a_valid_certificate_are_refused",
        "one lab scenario: each bad certificate tried against the same cluster",
    ),
];

/// (file, why it stays large): files other changes owned when the check came.
pub const KNOWN_LARGE_FILES: &[(&str, &str)] = &[(
    "benches/failover.rs",
    "the failover bench's script and its rounds; to be split (rounds, report) when no other change edits it",
)];

/// One room over its size without a reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Oversize {
    /// A file of `lines` lines with no `size:` reason at its top.
    File { path: String, lines: usize },
    /// Function `name` at `line` (1-based), `lines` long, with no `long:` reason above it.
    Function {
        path: String,
        name: String,
        line: usize,
        lines: usize,
    },
}

impl std::fmt::Display for Oversize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Oversize::File { path, lines } => write!(
                f,
                "{path}: {lines} lines (more than {MAX_FILE_LINES}): split it, or say why it stays \
                 whole with `//! size: <reason>` in its first {HEAD_LINES} lines"
            ),
            Oversize::Function {
                path,
                name,
                line,
                lines,
            } => write!(
                f,
                "{path}:{line}: fn {name} spans {lines} lines (more than {MAX_FN_LINES}): split it, \
                 or say why with `// long: <reason>` right above its `fn` line"
            ),
        }
    }
}

/// Every oversize room of the `.rs` files under `root` (paths relative to it, sorted), skipping
/// `target` directories and hidden ones, and what the tables excuse.
pub fn oversize(root: &Path) -> Vec<Oversize> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    let mut found = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .display()
            .to_string();
        let Ok(src) = std::fs::read_to_string(&file) else {
            continue;
        };
        found.extend(oversize_in(&rel, &src).into_iter().filter(|o| !excused(o)));
    }
    found
}

fn excused(o: &Oversize) -> bool {
    match o {
        Oversize::File { path, .. } => KNOWN_LARGE_FILES.iter().any(|(p, _)| p == path),
        Oversize::Function { path, name, .. } => KNOWN_LONG_FNS
            .iter()
            .any(|(p, n, _)| p == path && n == name),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && name != "target" && !name.starts_with('.') {
            rust_files(&entry.path(), out);
        } else if kind.is_file() && name.ends_with(".rs") {
            out.push(entry.path());
        }
    }
}

/// The oversize rooms of one file's source `src` (named `path` in the findings).
pub fn oversize_in(path: &str, src: &str) -> Vec<Oversize> {
    let lines: Vec<&str> = src.lines().collect();
    let mut found = Vec::new();
    if lines.len() > MAX_FILE_LINES && !lines.iter().take(HEAD_LINES).any(|l| reason(l, "size:")) {
        found.push(Oversize::File {
            path: path.to_string(),
            lines: lines.len(),
        });
    }
    for (name, first, last) in functions(&code_only(src)) {
        let len = last - first + 1;
        if len > MAX_FN_LINES && !reason_above(&lines, first) {
            found.push(Oversize::Function {
                path: path.to_string(),
                name,
                line: first,
                lines: len,
            });
        }
    }
    found
}

/// Whether `line` is a comment (`//`, `///`, `//!`) whose text starts with `marker`.
fn reason(line: &str, marker: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("//")
        && t.trim_start_matches(['/', '!'])
            .trim_start()
            .starts_with(marker)
}

/// Whether the comments and attributes right above line `fn_line` (1-based) hold a `long:` reason.
fn reason_above(lines: &[&str], fn_line: usize) -> bool {
    lines[..fn_line - 1]
        .iter()
        .rev()
        .take_while(|l| {
            let t = l.trim_start();
            t.starts_with("//") || t.starts_with('#')
        })
        .any(|l| reason(l, "long:"))
}

/// `src` with comments, string literals and character literals replaced by spaces (newlines kept),
/// so that braces can be counted.
pub fn code_only(src: &str) -> String {
    let s: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, part: &[char]| {
        out.extend(part.iter().map(|c| if *c == '\n' { '\n' } else { ' ' }));
    };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        let end = if c == '/' && next == Some('/') {
            // A line comment, up to the newline.
            Some(
                s[i..]
                    .iter()
                    .position(|c| *c == '\n')
                    .map_or(s.len(), |p| i + p),
            )
        } else if c == '/' && next == Some('*') {
            // A block comment; they nest.
            let (mut j, mut depth) = (i, 0usize);
            loop {
                if j + 1 >= s.len() {
                    break Some(s.len());
                } else if s[j] == '/' && s[j + 1] == '*' {
                    depth += 1;
                    j += 2;
                } else if s[j] == '*' && s[j + 1] == '/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break Some(j);
                    }
                } else {
                    j += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && (i == 0 || !is_ident(s[i - 1]))
            && raw_string_end(&s, i + if c == 'b' { 2 } else { 1 }).is_some()
        {
            raw_string_end(&s, i + if c == 'b' { 2 } else { 1 })
        } else if c == '"' {
            let mut j = i + 1;
            while j < s.len() && s[j] != '"' {
                j += if s[j] == '\\' { 2 } else { 1 };
            }
            Some((j + 1).min(s.len()))
        } else if c == '\'' && next == Some('\\') {
            // An escaped character literal: '\n', '\'', '\u{7b}'.
            let mut j = (i + 3).min(s.len());
            while j < s.len() && s[j] != '\'' {
                j += 1;
            }
            Some((j + 1).min(s.len()))
        } else if c == '\'' && s.get(i + 2) == Some(&'\'') {
            Some(i + 3)
        } else {
            None
        };
        match end {
            Some(end) => {
                blank(&mut out, &s[i..end]);
                i = end;
            }
            None => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// Where the raw string whose hashes start at `from` (after `r` or `br`) ends, if one starts there.
fn raw_string_end(s: &[char], from: usize) -> Option<usize> {
    let hashes = s[from.min(s.len())..]
        .iter()
        .take_while(|c| **c == '#')
        .count();
    let open = from + hashes;
    if s.get(open) != Some(&'"') {
        return None;
    }
    let mut j = open + 1;
    while j < s.len() {
        if s[j] == '"'
            && s[j + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == '#')
                .count()
                == hashes
        {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(s.len())
}

/// (name, line of `fn`, line of the closing brace) of every function with a body in `code` (as
/// [`code_only`] returns it), nested ones included; lines are 1-based.
pub fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let s: Vec<char> = code.chars().collect();
    let line_of = {
        let mut line = Vec::with_capacity(s.len() + 1);
        let mut n = 1;
        for c in &s {
            line.push(n);
            if *c == '\n' {
                n += 1;
            }
        }
        line.push(n);
        move |i: usize| line[i]
    };
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for i in 0..s.len().saturating_sub(2) {
        if !(s[i] == 'f' && s[i + 1] == 'n' && s[i + 2].is_whitespace())
            || (i > 0 && is_ident(s[i - 1]))
        {
            continue;
        }
        let mut j = i + 2;
        while j < s.len() && s[j].is_whitespace() {
            j += 1;
        }
        let name: String = s[j..].iter().take_while(|c| is_ident(**c)).collect();
        if name.is_empty() {
            continue; // `fn(u8) -> u8`, a pointer type
        }
        // The body's `{`, or `;` for a declaration without one; `(`/`[` nest (`-> [u8; 4]`).
        let mut depth = 0i32;
        j += name.chars().count();
        while j < s.len() {
            match s[j] {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                '{' | ';' if depth == 0 => break,
                _ => {}
            }
            j += 1;
        }
        if j >= s.len() || s[j] == ';' {
            continue;
        }
        let mut braces = 0i32;
        let mut k = j;
        while k < s.len() {
            match s[k] {
                '{' => braces += 1,
                '}' => {
                    braces -= 1;
                    if braces == 0 {
                        break;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        found.push((name, line_of(i), line_of(k.min(s.len()))));
    }
    found
}
