//! `fleet-sim`: run failure-injection scenarios against the real scheduling and gossip code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use fleet_sim::report::Report;
use fleet_sim::scenario::{Dur, Fault, FaultKind, GossipMode, Scenario, ScenarioError};
use fleet_sim::shrink;
use fleet_sim::sim::{Sim, SimError};

#[derive(Parser)]
#[command(
    name = "fleet-sim",
    version,
    about = "Deterministic failure-injection simulator for fleet clusters"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// Faults added to the scenario's timeline, in the operator's terms. Each fault flag takes the time of
/// the `--at` before it (flags before the first `--at` take the first one's), and the `--for` given
/// with that `--at`. SELECTOR: metadata `region=eu-west,rack=b` (every pair must hold), a machine ID
/// or ID prefix, an index `7`, a range `0-9`, `all`, `random:N`.
#[derive(Args, Clone, Debug, Default)]
#[command(next_help_heading = "Faults")]
struct FaultFlags {
    /// When the fault flags that follow start (e.g. 10s, 500ms, 2m).
    #[arg(long = "at", value_name = "TIME")]
    at: Vec<String>,
    /// How long the faults of the same --at last, then they are undone (killed machines boot,
    /// partitions heal...); without it they last to the end.
    #[arg(long = "for", value_name = "DURATION")]
    for_: Vec<String>,
    /// Machines lose power: fleetd and their units stop.
    #[arg(long, value_name = "SELECTOR")]
    kill: Vec<String>,
    /// Machines pause (a VM pause): fleetd and their units stop executing.
    #[arg(long, value_name = "SELECTOR")]
    freeze: Vec<String>,
    /// fleetd dies on the machines; their units keep running.
    #[arg(long = "stop-fleetd", value_name = "SELECTOR")]
    stop_fleetd: Vec<String>,
    /// Traffic between two sets of machines is dropped both ways: 'A|B'; 'A' alone cuts A off from
    /// every other machine and etcd.
    #[arg(long, value_name = "A|B")]
    partition: Vec<String>,
    /// The machines lose etcd (a partition between them and the etcd cluster).
    #[arg(long = "cut-etcd", value_name = "SELECTOR")]
    cut_etcd: Vec<String>,
    /// Any fault of the scenario vocabulary, as the fields of a [[fault]] table without at and for:
    /// 'kind="loss", from="rack=a", to="rack=b", rate=0.3'.
    #[arg(long, value_name = "FIELDS")]
    fault: Vec<String>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one scenario with one seed and print its report.
    Run {
        /// The scenario file (TOML).
        scenario: PathBuf,
        /// The seed (same seed, same report).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Report format on stdout.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Also write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Also write an SVG timeline here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// On a violation, do not search the shortest fault timeline that reproduces it (each try
        /// is a run up to the first violation).
        #[arg(long)]
        no_shrink: bool,
        /// Override the gossip mode (real or model).
        #[arg(long)]
        gossip: Option<String>,
        /// Override the simulated duration (e.g. 30s).
        #[arg(long)]
        duration: Option<String>,
        /// Override the agents' `fence_after` (e.g. 3s).
        #[arg(long)]
        fence_after: Option<String>,
        /// Plant a rule bug in the decision core or placement (mutation tests; needs a build with
        /// `--features mutations`): ignore-votes, ignore-holder-proof, fence-after-ttl,
        /// ignore-handover-on-release, keep-voted-lease, plan-machines-without-etcd, ignore-conflicts.
        #[arg(long)]
        mutation: Option<String>,
        #[command(flatten)]
        faults: FaultFlags,
    },
    /// Run one scenario over many seeds; print one line per seed and the failing seeds.
    Sweep {
        /// The scenario file.
        scenario: PathBuf,
        /// First seed.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Number of seeds.
        #[arg(long, default_value_t = 20)]
        seeds: u64,
        /// Shrink the first failing seed.
        #[arg(long)]
        shrink: bool,
        /// Write all reports as a JSON array here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Override the gossip mode (real or model).
        #[arg(long)]
        gossip: Option<String>,
        /// Plant a rule bug in the decision core (see `run --mutation`).
        #[arg(long)]
        mutation: Option<String>,
        #[command(flatten)]
        faults: FaultFlags,
    },
    /// Measure simulated seconds per wall second, of a steady cluster and of one that loses 5% of its
    /// machines (a rack) halfway through.
    Bench {
        /// Cluster sizes.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        machines: Vec<usize>,
        /// Units per machine (web@ instances).
        #[arg(long, default_value_t = 10)]
        units_per_machine: usize,
        /// Simulated seconds per run.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Gossip modes to measure.
        #[arg(long, value_delimiter = ',', default_value = "real,model")]
        modes: Vec<String>,
        /// Largest cluster to run with real gossip cores.
        #[arg(long, default_value_t = 10000)]
        max_real: usize,
        /// Fault timelines to measure: none (steady), crash (5% of the machines, one rack, crash
        /// halfway through and come back).
        #[arg(long, value_delimiter = ',', default_value = "none,crash")]
        faults: Vec<String>,
        /// The units folder.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/units"))]
        units: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let sub = matches.subcommand().map(|(_, m)| m);
    match cli.cmd {
        Cmd::Run {
            scenario,
            seed,
            format,
            json,
            svg,
            no_shrink,
            gossip,
            duration,
            fence_after,
            mutation,
            faults: _,
        } => {
            set_mutation(mutation.as_deref())?;
            let mut sc = load(&scenario)?;
            // The overrides, repeated in the command that reproduces a failure.
            let mut again = String::new();
            if let Some(g) = gossip {
                sc.config.gossip_mode = parse_mode(&g)?;
                again += &format!(" --gossip {g}");
            }
            if let Some(d) = duration {
                sc.duration = Dur::parse(&d).map_err(anyhow::Error::msg)?;
                again += &format!(" --duration {d}");
            }
            if let Some(f) = fence_after {
                sc.config.fence_after = Dur::parse(&f).map_err(anyhow::Error::msg)?;
                sc.timing().check().map_err(anyhow::Error::msg)?;
                again += &format!(" --fence-after {f}");
            }
            if let Some(m) = &mutation {
                again += &format!(" --mutation {m}");
            }
            let added = add_faults(&mut sc, sub.expect("a subcommand"), &mut again)?;
            eprintln!("fleet-sim: scenario {} seed {seed}", sc.name);
            // Without shrinking, the process ends after the report: the run's memory is not freed.
            let (report, wall) = run_with_progress(&sc, seed, &added, no_shrink)?;
            eprintln!(
                "fleet-sim: {:.1}s simulated in {:.2}s wall ({:.1}x real time)",
                report.simulated_s,
                wall,
                report.simulated_s / wall.max(1e-9)
            );
            match format {
                Format::Text => print!("{}", report.to_text()),
                Format::Json => println!("{}", report.to_json()),
            }
            if let Some(p) = json {
                std::fs::write(&p, report.to_json() + "\n")
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            if let Some(p) = svg {
                std::fs::write(&p, report.to_svg())
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            if report.failed() {
                println!("seed {seed} breaks an invariant; reproduce with: fleet-sim run {} --seed {seed}{again}", scenario.display());
                if !no_shrink {
                    print_shrunk(&sc, seed)?;
                }
                std::process::exit(1);
            }
        }
        Cmd::Sweep {
            scenario,
            from,
            seeds,
            shrink: do_shrink,
            json,
            gossip,
            mutation,
            faults: _,
        } => {
            set_mutation(mutation.as_deref())?;
            let mut sc = load(&scenario)?;
            let added = add_faults(&mut sc, sub.expect("a subcommand"), &mut String::new())?;
            if let Some(g) = gossip {
                sc.config.gossip_mode = parse_mode(&g)?;
            }
            let mut failing = Vec::new();
            let mut reports = Vec::new();
            let started = Instant::now();
            let (mut longest_double, mut worst_down, mut moves) = (0.0f64, 0.0f64, 0u64);
            let mut placeable_nowhere = 0.0f64;
            for seed in from..from + seeds {
                let report = Sim::new(&sc, seed)
                    .map_err(|e| explain(e, &sc, &added))?
                    .run();
                println!(
                    "seed {seed:>6}: double run {:>4.0} ms  reschedule p99 {:.3}s max {:.3}s  moves {:>4}  unplaced {:>3}  takeovers {:>4}  fencings {:>3}  false downs {:>5}  violations {}",
                    report.double_runs.duration.max * 1000.0,
                    report.reschedule.p99,
                    report.reschedule.max,
                    report.moves,
                    report.outcome.unplaced.len(),
                    report.takeovers,
                    report.fencings,
                    report.false_down_verdicts,
                    report.violations.len()
                );
                longest_double = longest_double.max(report.double_runs.duration.max);
                worst_down = worst_down.max(report.reschedule.max);
                placeable_nowhere = placeable_nowhere.max(report.placeable_nowhere_s);
                moves += report.moves;
                if report.failed() {
                    failing.push(seed);
                }
                reports.push(report);
            }
            eprintln!(
                "fleet-sim: {seeds} seeds in {:.1}s wall",
                started.elapsed().as_secs_f64()
            );
            println!(
                "{} ({} gossip), {seeds} seeds: longest double run {:.0} ms, longest reschedule {:.3}s, {moves} moves, longest time a placeable unit ran nowhere {:.3}s",
                sc.name,
                reports.first().map_or("?", |r| r.gossip_mode),
                longest_double * 1000.0,
                worst_down,
                placeable_nowhere
            );
            if let Some(p) = json {
                let text = serde_json::to_string_pretty(&reports)?;
                std::fs::write(&p, text + "\n")
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            // Seeds that broke each invariant (a seed counts once per kind).
            let mut by_kind: std::collections::BTreeMap<String, u64> = Default::default();
            for r in &reports {
                let kinds: std::collections::BTreeSet<String> = r
                    .violations
                    .iter()
                    .map(|v| format!("{:?}", v.kind))
                    .collect();
                for k in kinds {
                    *by_kind.entry(k).or_default() += 1;
                }
            }
            if !by_kind.is_empty() {
                let list: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
                println!("seeds breaking each invariant: {}", list.join(", "));
            }
            if failing.is_empty() {
                println!(
                    "all {seeds} seeds held every invariant (double run bound {}, every unit placed within {})",
                    sc.invariants.double_run, sc.invariants.placement
                );
            } else {
                println!("failing seeds: {failing:?}");
                if do_shrink {
                    print_shrunk(&sc, failing[0])?;
                }
                std::process::exit(1);
            }
        }
        Cmd::Bench {
            machines,
            units_per_machine,
            seconds,
            modes,
            max_real,
            faults,
            units,
        } => {
            println!(
                "machines  units    gossip  faults  simulated  wall     sim-s/wall-s  events/s   peak RSS"
            );
            for n in machines {
                for mode in &modes {
                    let mode = parse_mode(mode)?;
                    if mode == GossipMode::Real && n > max_real {
                        println!("{n:>8}  (real gossip skipped above --max-real {max_real})");
                        continue;
                    }
                    for f in &faults {
                        let sc = bench_scenario(n, units_per_machine, seconds, mode, f, &units)?;
                        let started = Instant::now();
                        let mut sim = Sim::new(&sc, 1)?;
                        sim.run_until(sc.duration.0);
                        let wall = started.elapsed().as_secs_f64();
                        let events = sim.events_processed();
                        let report = sim.finish();
                        println!(
                            "{n:>8}  {:>7}  {:>6}  {:>6}  {:>8.1}s  {:>6.2}s  {:>12.1}  {:>8.0}  {:>6} MB   (gossip {:.0} B/s per machine{})",
                            report.units,
                            report.gossip_mode,
                            f,
                            report.simulated_s,
                            wall,
                            report.simulated_s / wall.max(1e-9),
                            events as f64 / wall.max(1e-9),
                            peak_rss_mb().map_or("?".to_string(), |m| m.to_string()),
                            report.gossip.bytes_per_machine_s,
                            if report.failed() {
                                format!(", {} VIOLATIONS", report.violations.len())
                            } else {
                                String::new()
                            }
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Turns a planted rule bug of the decision core on (for this thread: the run and its shrinking).
fn set_mutation(name: Option<&str>) -> anyhow::Result<()> {
    #[cfg(feature = "mutations")]
    {
        use fleet_decide::mutation::Mutation;
        use fleet_sched::mutation::Mutation as Placement;
        let names = || {
            Mutation::ALL
                .map(Mutation::name)
                .into_iter()
                .chain(Placement::ALL.map(Placement::name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        fleet_decide::mutation::set(None);
        fleet_sched::mutation::set(None);
        if let Some(n) = name {
            if let Some(m) = Mutation::parse(n) {
                fleet_decide::mutation::set(Some(m));
            } else if let Some(m) = Placement::parse(n) {
                fleet_sched::mutation::set(Some(m));
            } else {
                bail!("unknown mutation {n:?}: expected one of {}", names());
            }
            eprintln!("fleet-sim: planted rule bug {n}");
        }
        Ok(())
    }
    #[cfg(not(feature = "mutations"))]
    {
        if name.is_some() {
            bail!("this fleet-sim was built without mutations (cargo build -p fleet-sim --features mutations)");
        }
        Ok(())
    }
}

/// The process's peak resident memory (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

fn parse_mode(s: &str) -> anyhow::Result<GossipMode> {
    match s {
        "real" => Ok(GossipMode::Real),
        "model" => Ok(GossipMode::Model),
        other => bail!("unknown gossip mode {other:?}: expected real or model"),
    }
}

fn load(path: &Path) -> anyhow::Result<Scenario> {
    Scenario::load(path).with_context(|| format!("loading scenario {}", path.display()))
}

fn bench_scenario(
    n: usize,
    per: usize,
    seconds: u64,
    mode: GossipMode,
    faults: &str,
    units: &Path,
) -> anyhow::Result<Scenario> {
    let racks = (n / 20).max(1);
    let fault = match faults {
        "none" => String::new(),
        "crash" => format!(
            "[[fault]]\nat = \"{}s\"\nkind = \"crash\"\nmachines = \"rack=r{:02}\"\nfor = \"{}s\"\n",
            seconds / 2,
            racks / 2,
            (seconds / 4).max(1)
        ),
        other => bail!("unknown bench faults {other:?}: expected none or crash"),
    };
    let text = format!(
        r#"name = "bench-{n}-{faults}"
duration = "{seconds}s"
[machines]
count = {n}
racks = {racks}
[units]
dir = "{dir}"
only = ["web@.service"]
instances = {{ "web@.service" = {units} }}
[config]
gossip_mode = "{mode}"
agent_ttl = "{ttl}s"
units_at = "{units_at}s"
[invariants]
converge = "{converge}s"
{fault}"#,
        dir = units.display(),
        units = n * per,
        mode = if mode == GossipMode::Real {
            "real"
        } else {
            "model"
        },
        ttl = (seconds / 4).clamp(5, 30),
        units_at = (seconds / 10).max(1),
        converge = seconds,
    );
    Scenario::from_toml(&text, Path::new(".")).context("building the bench scenario")
}

/// Runs in slices of simulated time, drawing a progress line on a terminal.
fn run_with_progress(
    sc: &Scenario,
    seed: u64,
    added: &Added,
    exit_soon: bool,
) -> anyhow::Result<(Report, f64)> {
    let started = Instant::now();
    let mut sim = Sim::new(sc, seed).map_err(|e| explain(e, sc, added))?;
    let end = sc.duration.0;
    let tty = std::io::stderr().is_terminal();
    // FLEET_SIM_PROGRESS=lines: a line per step with the wall time so far, for timing the phases of a
    // run that is not on a terminal (benchmarks).
    let lines = std::env::var("FLEET_SIM_PROGRESS").is_ok_and(|v| v == "lines");
    let steps = 100u64;
    for k in 1..=steps {
        sim.run_until(end * k / steps);
        if lines {
            eprintln!(
                "progress {k:>3}%  {:>7.2}s simulated  {:>8.2}s wall  {} events",
                sim.now() as f64 / 1e6,
                started.elapsed().as_secs_f64(),
                sim.events_processed()
            );
        } else if tty {
            let wall = started.elapsed().as_secs_f64();
            let simulated = sim.now() as f64 / 1e6;
            let bar: String = (0..40)
                .map(|i| if i * steps < k * 40 { '#' } else { '.' })
                .collect();
            eprint!(
                "\r[{bar}] {k:>3}%  {simulated:>7.1}s simulated  {:>6.1}x real time",
                simulated / wall.max(1e-9)
            );
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
    let wall = started.elapsed().as_secs_f64();
    let report = if exit_soon {
        sim.finish_and_exit_soon()
    } else {
        sim.finish()
    };
    Ok((report, wall))
}

fn print_shrunk(sc: &Scenario, seed: u64) -> anyhow::Result<()> {
    eprintln!("fleet-sim: shrinking the fault timeline (one run per try)...");
    match shrink::shrink(sc, seed)? {
        Some(s) => {
            println!(
                "shortest fault timeline found ({} runs) that still gives {:?} with seed {seed}:",
                s.runs, s.kind
            );
            print!("{}", Scenario::faults_toml(&s.faults));
        }
        None => println!("the run did not fail again (not reproducible?)"),
    }
    Ok(())
}

/// The command-line faults appended to a scenario: the index of the first, and each one's flag as typed.
struct Added {
    first: usize,
    flags: Vec<String>,
}

/// A run that could not start; a fault from the command line is named by its flag.
fn explain(e: SimError, sc: &Scenario, added: &Added) -> anyhow::Error {
    match &e {
        SimError::Fault(k, msg) if *k >= added.first => {
            let flag = added.flags.get(k - added.first).map_or("?", String::as_str);
            anyhow::anyhow!("{flag}: {msg}")
        }
        SimError::Fault(k, msg) => {
            anyhow::anyhow!(
                "scenario {}: fault {k} ([[fault]] number {}): {msg}",
                sc.name,
                k + 1
            )
        }
        _ => anyhow::Error::new(e).context(format!("setting up {}", sc.name)),
    }
}

/// Shell-quotes a flag value when it needs it.
fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "=,._:-/+@".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', r"'\''"))
    }
}

/// Reads the fault flags in command-line order and appends their faults to the scenario (`again`
/// gets them for the command that reproduces a failure).
fn add_faults(sc: &mut Scenario, m: &ArgMatches, again: &mut String) -> anyhow::Result<Added> {
    let first = sc.faults.len();
    let mut flags: Vec<(usize, &str, String)> = Vec::new();
    for (id, flag) in [
        ("at", "--at"),
        ("for_", "--for"),
        ("kill", "--kill"),
        ("freeze", "--freeze"),
        ("stop_fleetd", "--stop-fleetd"),
        ("partition", "--partition"),
        ("cut_etcd", "--cut-etcd"),
        ("fault", "--fault"),
    ] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            flags.extend(idx.zip(vals).map(|(i, v)| (i, flag, v.clone())));
        }
    }
    flags.sort_by_key(|f| f.0);
    for (_, flag, v) in &flags {
        *again += &format!(" {flag} {}", quote(v));
    }
    // Groups: each --at and the flags up to the next --at (flags before the first --at join it).
    struct Group {
        at: Option<(Dur, String)>,
        for_: Option<(Dur, String)>,
        faults: Vec<(Fault, String)>,
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut seen_at = false;
    for (_, flag, v) in flags {
        let typed = format!("{flag} {}", quote(&v));
        let bad = |e: String| anyhow::anyhow!("{typed}: {e}");
        if flag == "--at" {
            let t = Dur::parse(&v).map_err(bad)?;
            if seen_at || groups.is_empty() {
                groups.push(Group {
                    at: None,
                    for_: None,
                    faults: Vec::new(),
                });
            }
            seen_at = true;
            groups.last_mut().expect("a group").at = Some((t, typed));
            continue;
        }
        if groups.is_empty() {
            groups.push(Group {
                at: None,
                for_: None,
                faults: Vec::new(),
            });
        }
        let g = groups.last_mut().expect("a group");
        if flag == "--for" {
            let d = Dur::parse(&v).map_err(bad)?;
            if d.0 == 0 {
                return Err(bad("a fault lasts a positive time".into()));
            }
            if let Some((_, other)) = &g.for_ {
                bail!("{typed}: this --at already has {other} (one --for per --at)");
            }
            g.for_ = Some((d, typed));
            continue;
        }
        let fault = fault_of(flag, &v).map_err(bad)?;
        g.faults.push((fault, typed));
    }
    let mut added = Added {
        first,
        flags: Vec::new(),
    };
    for g in groups {
        let Some((at, at_flag)) = g.at else {
            let what = g
                .faults
                .first()
                .map(|(_, t)| t.clone())
                .or(g.for_.map(|(_, t)| t))
                .unwrap_or_default();
            bail!("{what}: no time given; add --at (e.g. --at 10s {what})");
        };
        if g.faults.is_empty() {
            bail!("{at_flag}: no fault flag (--kill, --partition, --cut-etcd...) goes with it");
        }
        if at > sc.duration {
            bail!(
                "{at_flag}: after the end of the run ({}; see --duration)",
                sc.duration
            );
        }
        for (mut f, typed) in g.faults {
            f.at = at;
            f.for_ = g.for_.as_ref().map(|(d, _)| *d);
            // The scenario's own checks, on this fault alone.
            let mut probe = sc.clone();
            probe.faults = vec![f.clone()];
            probe.validate().map_err(|e| match e {
                ScenarioError::Invalid { message, .. } => {
                    let what = message.strip_prefix("fault 0 ").unwrap_or(&message);
                    anyhow::anyhow!("{typed}: the fault {what}")
                }
                other => anyhow::anyhow!("{typed}: {other}"),
            })?;
            sc.faults.push(f);
            added.flags.push(typed);
        }
    }
    Ok(added)
}

/// The fault a flag names (time and duration set by the caller).
fn fault_of(flag: &str, v: &str) -> Result<Fault, String> {
    // Through the file format, so that every other field keeps its default.
    let blank = |kind: FaultKind| -> Fault {
        let mut t = toml::Table::new();
        t.insert("at".into(), toml::Value::Integer(0));
        t.insert(
            "kind".into(),
            toml::Value::try_from(kind).expect("a fault kind is a string"),
        );
        toml::Value::Table(t)
            .try_into()
            .expect("at and kind make a fault")
    };
    let sel = |v: &str| -> Result<String, String> {
        fleet_sim::selector::Selector::parse(v)?;
        Ok(v.trim().to_string())
    };
    Ok(match flag {
        "--kill" => Fault {
            machines: Some(sel(v)?),
            ..blank(FaultKind::Crash)
        },
        "--freeze" => Fault {
            machines: Some(sel(v)?),
            ..blank(FaultKind::Freeze)
        },
        "--stop-fleetd" => Fault {
            machines: Some(sel(v)?),
            ..blank(FaultKind::AgentCrash)
        },
        "--cut-etcd" => Fault {
            from: Some(sel(v)?),
            to: Some("etcd".into()),
            ..blank(FaultKind::Partition)
        },
        "--partition" => {
            let sides: Vec<&str> = v.split('|').collect();
            match sides.as_slice() {
                [a] => Fault {
                    from: Some(sel(a)?),
                    ..blank(FaultKind::Partition)
                },
                [a, b] => Fault {
                    from: Some(sel(a)?),
                    to: Some(sel(b)?),
                    ..blank(FaultKind::Partition)
                },
                _ => return Err("expected two sides, A|B (e.g. 'rack=a|rack=b'), or one".into()),
            }
        }
        "--fault" => {
            let table: toml::Table = toml::from_str(&format!("f = {{ {v} }}"))
                .map_err(|e| {
                    format!("expected the fields of a [[fault]] table, kind=\"...\", ...: {e}")
                })
                .and_then(|t: toml::Table| match t.get("f") {
                    Some(toml::Value::Table(t)) => Ok(t.clone()),
                    _ => Err("expected fields".to_string()),
                })?;
            for key in ["at", "for"] {
                if table.contains_key(key) {
                    return Err(format!("give {key} with --{key}, not in the fields"));
                }
            }
            let mut table = table;
            table.insert("at".into(), toml::Value::Integer(0));
            toml::Value::Table(table)
                .try_into::<Fault>()
                .map_err(|e| e.to_string().trim().to_string())?
        }
        other => return Err(format!("unknown fault flag {other}")),
    })
}
