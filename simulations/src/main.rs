//! `fleet-sim`: run failure-injection scenarios against the real scheduling and gossip code.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use fleet_sim::report::Report;
use fleet_sim::scenario::{Dur, GossipMode, Scenario};
use fleet_sim::shrink;
use fleet_sim::sim::Sim;

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
    },
    /// Measure simulated seconds per wall second of a steady cluster (no faults).
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
        /// Largest cluster to run with real gossip cores (they cost O(n) per datagram).
        #[arg(long, default_value_t = 2000)]
        max_real: usize,
        /// The units folder.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/units"))]
        units: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
        } => {
            let mut sc = load(&scenario)?;
            if let Some(g) = gossip {
                sc.config.gossip_mode = parse_mode(&g)?;
            }
            if let Some(d) = duration {
                sc.duration = Dur::parse(&d).map_err(anyhow::Error::msg)?;
            }
            eprintln!("fleet-sim: scenario {} seed {seed}", sc.name);
            let (report, wall) = run_with_progress(&sc, seed)?;
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
                println!("seed {seed} breaks an invariant; reproduce with: fleet-sim run {} --seed {seed}", scenario.display());
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
        } => {
            let sc = load(&scenario)?;
            let mut failing = Vec::new();
            let mut reports = Vec::new();
            let started = Instant::now();
            for seed in from..from + seeds {
                let report = Sim::new(&sc, seed)
                    .with_context(|| format!("setting up {}", sc.name))?
                    .run();
                println!(
                    "seed {seed:>6}: detection p99 {:.3}s  reschedule p99 {:.3}s (max {:.3}s)  double runs {}  false downs {}  violations {}",
                    report.detection.p99,
                    report.reschedule.p99,
                    report.reschedule.max,
                    report.double_runs.episodes,
                    report.false_down_verdicts,
                    report.violations.len()
                );
                if report.failed() {
                    failing.push(seed);
                }
                reports.push(report);
            }
            eprintln!(
                "fleet-sim: {seeds} seeds in {:.1}s wall",
                started.elapsed().as_secs_f64()
            );
            if let Some(p) = json {
                let text = serde_json::to_string_pretty(&reports)?;
                std::fs::write(&p, text + "\n")
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            if failing.is_empty() {
                println!("all {seeds} seeds held every invariant");
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
            units,
        } => {
            println!("machines  units    gossip  simulated  wall     sim-s/wall-s  events/s");
            for n in machines {
                for mode in &modes {
                    let mode = parse_mode(mode)?;
                    if mode == GossipMode::Real && n > max_real {
                        println!("{n:>8}  (real gossip skipped above --max-real {max_real})");
                        continue;
                    }
                    let sc = bench_scenario(n, units_per_machine, seconds, mode, &units)?;
                    let started = Instant::now();
                    let mut sim = Sim::new(&sc, 1)?;
                    sim.run_until(sc.duration.0);
                    let wall = started.elapsed().as_secs_f64();
                    let events = sim.events_processed();
                    let report = sim.finish();
                    println!(
                        "{n:>8}  {:>7}  {:>6}  {:>8.1}s  {:>6.2}s  {:>12.1}  {:>8.0}   (gossip {:.0} B/s per machine)",
                        report.units,
                        report.gossip_mode,
                        report.simulated_s,
                        wall,
                        report.simulated_s / wall.max(1e-9),
                        events as f64 / wall.max(1e-9),
                        report.gossip.bytes_per_machine_s
                    );
                }
            }
        }
    }
    Ok(())
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
    units: &Path,
) -> anyhow::Result<Scenario> {
    let text = format!(
        r#"name = "bench-{n}"
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
units_at = "2s"
"#,
        racks = (n / 50).max(1),
        dir = units.display(),
        units = n * per,
        mode = if mode == GossipMode::Real {
            "real"
        } else {
            "model"
        },
    );
    Scenario::from_toml(&text, Path::new(".")).context("building the bench scenario")
}

/// Runs in slices of simulated time, drawing a progress line on a terminal.
fn run_with_progress(sc: &Scenario, seed: u64) -> anyhow::Result<(Report, f64)> {
    let started = Instant::now();
    let mut sim = Sim::new(sc, seed).with_context(|| format!("setting up {}", sc.name))?;
    let end = sc.duration.0;
    let tty = std::io::stderr().is_terminal();
    let steps = 100u64;
    for k in 1..=steps {
        sim.run_until(end * k / steps);
        if tty {
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
    Ok((sim.finish(), wall))
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
