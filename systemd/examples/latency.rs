//! Latency of what the agent does to launch a unit: write the file + `LinkUnitFiles` + `Reload`
//! (`load_unit`), then `StartUnit` until the subscription reports `active` (no polling).
//!
//!     cargo run --release -p fleet-systemd --example latency -- [RUNS] [--lazy] [--address ADDR --root DIR]
//!
//! Without `--address` it boots a one-machine cluster lab (needs root) and drives that machine's
//! systemd from the host. With `--address` it drives the given bus; `--root` is where that
//! systemd's filesystem is for this process (default `/`). `--lazy` uses
//! `ReloadPolicy::WhenNeeded` (no `Reload` for units systemd does not know yet).

use std::time::{Duration, Instant};

use fleet_systemd::{ActiveState, Bus, Config, Event, ReloadPolicy, Systemd};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{what:<28} n={:<4} p50={:7.2} ms  p90={:7.2} ms  p99={:7.2} ms  max={:7.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.90)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut runs = 50usize;
    let mut address = None;
    let mut root = "/".to_string();
    let mut policy = ReloadPolicy::Always;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--address" => address = Some(args.next().ok_or("--address needs a value")?),
            "--root" => root = args.next().ok_or("--root needs a value")?,
            "--lazy" => policy = ReloadPolicy::WhenNeeded,
            n => {
                runs = n
                    .parse()
                    .map_err(|_| format!("not a number of runs: {n}"))?
            }
        }
    }
    let mut _lab = None;
    let (address, root) = match address {
        Some(a) => (a, root),
        None => {
            if !fleet_lab::require_root() {
                return Err("needs root to boot a lab (or pass --address)".into());
            }
            let lab = fleet_lab::Lab::up(1, fleet_lab::LabOptions::new().without_etcd())?;
            let bus = (
                lab.bus_address(1)?,
                lab.machine_root(1)?.display().to_string(),
            );
            _lab = Some(lab);
            bus
        }
    };
    let sd = Systemd::connect(
        Config::new(Bus::Address(address.clone()))
            .fs_root(&root)
            .reload_policy(policy),
    )
    .await?;
    let mut events = sd.subscribe_filtered(|n| n.starts_with("latency-")).await?;
    println!("systemd at {address}, {runs} runs, reload policy {policy:?}");

    let unit = "[Service]\nExecStart=/bin/sleep 1000\n";
    let (mut load, mut start, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let name = format!("latency-{i}.service");
        let t0 = Instant::now();
        sd.load_unit(&name, unit, false).await?;
        let t1 = Instant::now();
        sd.start_unit(&name).await?;
        loop {
            match events.next().await {
                Some(Event::UnitChanged { name: n, state })
                    if n == name && state.active_state == ActiveState::Active =>
                {
                    break
                }
                Some(Event::Resync) => {
                    // Events were dropped: read the state instead.
                    if sd.unit_state(&name).await?.active_state == ActiveState::Active {
                        break;
                    }
                }
                Some(Event::Disconnected) | None => return Err("bus connection lost".into()),
                Some(_) => {}
            }
        }
        let t2 = Instant::now();
        load.push(t1 - t0);
        start.push(t2 - t1);
        total.push(t2 - t0);
        sd.stop_unit_and_wait(&name).await?;
        sd.unload_unit(&name).await?;
    }
    report("load_unit", load);
    report("start -> active (event)", start);
    report("total", total);
    Ok(())
}
