//! Loading and starting many units: one by one (`load_unit` then `start_unit` per unit, as the agent
//! did before batching) against batches (`load_units`: one `LinkUnitFiles`, at most one `Reload` per
//! batch; `start_units`: pipelined `StartUnit` calls), on a fresh one-machine cluster lab each (needs
//! root), with the reload policy fleetd uses (`WhenNeeded`).
//!
//!     cargo run --release -p fleet-systemd --example bulk -- [UNITS] [BATCH]
//!
//! For each way it loads `UNITS` (1,000) units in rounds of `BATCH` (100): load the round's units,
//! `StartUnit` each, wait until systemd reports every one `active` (subscription, no polling); it
//! prints each round's time per unit (so whether the cost grows as systemd holds more) and the total.
//! Then, with those units still loaded, the one-unit latency (load + start until `active`, 30 runs).
//! Prints figures; asserts nothing about timing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet_systemd::{
    ActiveState, Bus, Config, Event, LoadSpec, ReloadPolicy, Subscription, Systemd,
};

const UNIT: &str = "[Service]\nExecStart=/bin/sleep 100000\n";

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn wait_active(
    sd: &Systemd,
    events: &mut Subscription,
    mut pending: BTreeSet<String>,
) -> Result<(), String> {
    while !pending.is_empty() {
        match events.next().await {
            Some(Event::UnitChanged { name, state })
                if state.active_state == ActiveState::Active =>
            {
                pending.remove(&name);
            }
            Some(Event::Resync) => {
                // Events were dropped: read the states instead.
                let names: Vec<&str> = pending.iter().map(String::as_str).collect();
                let states = sd
                    .list_unit_states(&names)
                    .await
                    .map_err(|e| e.to_string())?;
                for (name, state) in states {
                    if state.active_state == ActiveState::Active {
                        pending.remove(&name);
                    }
                }
            }
            Some(Event::Disconnected) | None => return Err("bus connection lost".into()),
            Some(_) => {}
        }
    }
    Ok(())
}

async fn run(batched: bool, units: usize, batch: usize) -> Result<(), Box<dyn std::error::Error>> {
    let lab = fleet_lab::Lab::up(1, fleet_lab::LabOptions::new().without_etcd())?;
    let sd = Systemd::connect(
        Config::new(Bus::Address(lab.bus_address(1)?))
            .fs_root(lab.machine_root(1)?)
            .reload_policy(ReloadPolicy::WhenNeeded),
    )
    .await?;
    let mut events = sd.subscribe_filtered(|n| n.starts_with("bulk-")).await?;
    let way = if batched {
        "load_units + start_units (one batch per round)"
    } else {
        "load_unit + start_unit one by one"
    };
    println!("{way}: {units} units in rounds of {batch}");
    let t0 = Instant::now();
    let mut round = 0;
    while round * batch < units {
        let names: Vec<String> = (round * batch..((round + 1) * batch).min(units))
            .map(|i| format!("bulk-{i}.service"))
            .collect();
        let t = Instant::now();
        if batched {
            let specs: Vec<LoadSpec> = names
                .iter()
                .map(|n| LoadSpec {
                    name: n,
                    contents: UNIT,
                    enable: false,
                })
                .collect();
            for r in sd.load_units(&specs).await? {
                r?;
            }
        } else {
            for n in &names {
                sd.load_unit(n, UNIT, false).await?;
            }
        }
        let loaded = t.elapsed();
        if batched {
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            for r in sd.start_units(&refs).await {
                r?;
            }
        } else {
            for n in &names {
                sd.start_unit(n).await?;
            }
        }
        wait_active(&sd, &mut events, names.iter().cloned().collect()).await?;
        let all = t.elapsed();
        println!(
            "  units {:>5}-{:<5} load {:7.2} ms/unit   load+start until active {:7.2} ms/unit",
            round * batch,
            round * batch + names.len() - 1,
            ms(loaded) / names.len() as f64,
            ms(all) / names.len() as f64,
        );
        round += 1;
    }
    println!(
        "  all {units} active after {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    // One unit at a time with the others loaded.
    let mut lat = Vec::new();
    for i in 0..30 {
        let name = format!("bulk-one-{i}.service");
        let t = Instant::now();
        sd.load_unit(&name, UNIT, false).await?;
        sd.start_unit(&name).await?;
        wait_active(&sd, &mut events, [name].into()).await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "  one unit (load + start until active) with {units} loaded: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 9 / 10]),
        ms(*lat.last().unwrap())
    );
    drop(events);
    drop(sd);
    drop(lab);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(default)
    };
    let (units, batch) = (arg(1, 1000), arg(2, 100));
    if !fleet_lab::require_root() {
        return Err("needs root to boot a cluster lab".into());
    }
    run(true, units, batch).await?;
    run(false, units, batch).await?;
    Ok(())
}
