//! `simulate capture`: the live cluster as a fleet-sim scenario, written through fleet-sim's own
//! scenario types (one definition of the format), with every unit file inline.
//!
//! The simulated cluster starts from what was captured: the machines (in ID order, with their
//! metadata), the units with their files and desired states, and where each unit runs now
//! (`running_on`: the simulator claims each unit there as the units are submitted, as etcd held it).
//! Placement then runs fleetd's own rules, which keep a claim whose requirements still hold; capture
//! simulates the quiet cluster once and names every unit that does not end where it runs now.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use fleet_api_types::{ActiveState, DesiredState, Machine, Unit, UnitState};
use fleet_sched::UnitFile;
use fleet_sim::scenario::{Dur, InlineUnit, MachineEntry, Machines, Scenario, Units};
use fleet_sim::sim::Sim;

use super::{stored_file, Ctx};
use crate::args::CaptureArgs;
use crate::client::Transport;

/// How long after the units are submitted the placement check looks at the simulated cluster.
const SETTLE: Dur = Dur::secs(15);

impl<T: Transport> Ctx<T> {
    /// `simulate capture`.
    pub async fn simulate_capture(&mut self, a: &CaptureArgs, endpoint: &str) -> Result<()> {
        let duration =
            Dur::parse(&a.duration).map_err(|e| worded_err!("Error: --duration: {e}"))?;
        let machines = self
            .api
            .machines()
            .await
            .context(worded!("Error capturing the cluster: reading its machines"))?;
        let units = self
            .api
            .units()
            .await
            .context(worded!("Error capturing the cluster: reading its units"))?;
        let states = self.api.unit_states(None).await.context(worded!(
            "Error capturing the cluster: reading its unit states"
        ))?;
        let description = format!(
            "{} machines and {} units captured from {endpoint} by fleetctl simulate capture",
            machines.len(),
            units.len()
        );
        let sc = capture(&a.name, &description, duration, &machines, &units, &states)?;
        let mut text = String::from(
            "# A fleet cluster as captured by `fleetctl simulate capture`: add [[fault]] tables and run it\n\
             # with `fleet-sim run FILE`. Machines are listed in ID order (selectors name them by index).\n",
        );
        text += &sc.to_toml().context("writing the scenario as TOML")?;
        match &a.output {
            Some(path) => {
                // Written whole or not at all: a temporary file renamed over the target.
                let tmp = path.with_extension("toml.part");
                std::fs::write(&tmp, &text)
                    .and_then(|_| std::fs::rename(&tmp, path))
                    .with_context(|| worded!("Error writing {}", path.display()))?;
                say!(
                    self.err,
                    "Captured {} machines and {} units into {}",
                    sc.machines.list.len(),
                    sc.units.inline.len(),
                    path.display()
                );
            }
            None => self.write_out(&text)?,
        }
        if a.no_check {
            return Ok(());
        }
        let diffs = placement_differences(&sc)?;
        if diffs.is_empty() {
            say!(
                self.err,
                "The simulated cluster runs every unit where it runs now."
            );
        } else {
            say!(
                self.err,
                "WARNING: the simulated cluster runs {} units elsewhere than where they run now:",
                diffs.len()
            );
            for d in &diffs {
                say!(self.err, "  {d}");
            }
        }
        Ok(())
    }
}

/// The scenario of a captured cluster. Fails, naming the unit, on a unit file the simulator cannot
/// read back exactly or a desired state it does not know.
pub fn capture(
    name: &str,
    description: &str,
    duration: Dur,
    machines: &[Machine],
    units: &[Unit],
    states: &[UnitState],
) -> Result<Scenario> {
    let mut list: Vec<MachineEntry> = machines
        .iter()
        .map(|m| MachineEntry {
            id: Some(m.id.to_string()),
            metadata: m.metadata.clone(),
        })
        .collect();
    list.sort_by(|a, b| a.id.cmp(&b.id));
    let mut running: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for s in states {
        if let (Some(m), Some(ActiveState::Active)) = (&s.machine_id, &s.systemd_active_state) {
            running
                .entry(s.name.as_str())
                .or_default()
                .push(m.to_string());
        }
    }
    let mut inline = Vec::with_capacity(units.len());
    let mut units: Vec<&Unit> = units.iter().collect();
    units.sort_by(|a, b| a.name.cmp(&b.name));
    for u in units {
        let stored =
            stored_file(u).map_err(|e| worded_err!("Error capturing unit {}: {e:#}", u.name))?;
        let file = stored.serialize();
        // The simulator reads the text back: it must be the same unit (same content hash).
        match UnitFile::parse(&file) {
            Ok(back) if back.hash() == stored.hash() => {}
            Ok(_) => fail!(
                "Error capturing unit {}: its file does not read back as the same unit (hash differs)",
                u.name
            ),
            Err(e) => fail!(
                "Error capturing unit {}: the simulator cannot parse its file: {e}",
                u.name
            ),
        }
        let state = u.desired_state.ok_or_else(|| {
            worded_err!(
                "Error capturing unit {}: fleetd gave no desired state",
                u.name
            )
        })?;
        let mut running_on = running.remove(u.name.as_str()).unwrap_or_default();
        running_on.sort();
        inline.push(InlineUnit {
            name: u.name.clone(),
            state,
            running_on,
            file,
        });
    }
    let sc = Scenario {
        name: name.to_string(),
        description: description.to_string(),
        duration,
        machines: Machines {
            list,
            ..Machines::default()
        },
        units: Units {
            inline,
            ..Units::default()
        },
        config: Default::default(),
        invariants: Default::default(),
        faults: Vec::new(),
        base_dir: Default::default(),
    };
    // What fleet-sim will say of this file, said now: the format's own checks, then the simulator's
    // (machine IDs, unit files, requirements, desired states), each naming what is wrong.
    let text = sc.to_toml().context("writing the scenario as TOML")?;
    Scenario::from_toml(&text, std::path::Path::new("."))
        .map_err(|e| worded_err!("Error: the captured cluster is not a valid scenario: {e}"))?;
    Sim::new(&sc, 1)
        .map_err(|e| worded_err!("Error: the simulator cannot run the captured cluster: {e}"))?;
    Ok(sc)
}

/// Every unit the simulated cluster (no fault, seed 1; it starts with each unit claimed where it was
/// captured) has active elsewhere than where it was captured, `SETTLE` after the units are submitted: `name: runs on A, simulated on B`.
pub fn placement_differences(sc: &Scenario) -> Result<Vec<String>> {
    let mut quiet = sc.clone();
    quiet.faults.clear();
    quiet.duration = Dur(quiet.config.units_at.0 + SETTLE.0);
    let mut sim = Sim::new(&quiet, 1)
        .map_err(|e| worded_err!("Error: the simulator cannot run the captured cluster: {e}"))?;
    sim.run_until(quiet.duration.0);
    let simulated = sim.active_units();
    let short = |ids: &[String]| -> String {
        if ids.is_empty() {
            "nowhere".into()
        } else {
            ids.iter()
                .map(|i| i.chars().take(8).collect::<String>())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    let mut out = Vec::new();
    for u in &sc.units.inline {
        if u.state == DesiredState::Inactive {
            continue;
        }
        let sim_on = simulated.get(&u.name).cloned().unwrap_or_default();
        if sim_on != u.running_on {
            out.push(format!(
                "{}: runs on {}, simulated on {}",
                u.name,
                short(&u.running_on),
                short(&sim_on)
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::testutil::{machine, unit};

    const A: &str = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    const B: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";

    fn state(name: &str, m: &str, active: &str) -> UnitState {
        UnitState {
            name: name.into(),
            machine_id: Some(fleet_sched::MachineId::parse(m).unwrap()),
            systemd_active_state: Some(active.into()),
            ..Default::default()
        }
    }

    fn cluster() -> (Vec<Machine>, Vec<Unit>) {
        let machines = vec![
            machine(B, "10.0.0.2", &[("rack", "b")]),
            machine(A, "10.0.0.1", &[("rack", "a"), ("disk", "ssd")]),
        ];
        let units = vec![
            unit(
                "web.service",
                &[
                    ("Unit", "Description", "web \"front\" \\ end"),
                    ("Service", "ExecStart", "/bin/sh -c 'sleep 1d'"),
                    ("X-Fleet", "Conflicts", "db.service"),
                ],
                "launched",
                "launched",
                A,
            ),
            unit(
                "db.service",
                &[
                    ("Service", "ExecStart", "/usr/bin/sleep infinity"),
                    ("X-Fleet", "MachineMetadata", "disk=ssd"),
                ],
                "launched",
                "launched",
                A,
            ),
            unit(
                "off.service",
                &[("Service", "ExecStart", "/bin/true")],
                "inactive",
                "inactive",
                "",
            ),
        ];
        (machines, units)
    }

    #[test]
    fn capture_writes_machines_in_id_order_units_inline_and_reads_back_the_same() {
        let (machines, units) = cluster();
        let states = [
            state("db.service", A, "active"),
            state("web.service", B, "active"),
            state("web.service", A, "failed"),
        ];
        let sc = capture("c", "d", Dur::secs(60), &machines, &units, &states).unwrap();
        let ids: Vec<_> = sc
            .machines
            .list
            .iter()
            .map(|m| m.id.clone().unwrap())
            .collect();
        assert_eq!(ids, [A, B]);
        assert_eq!(sc.machines.list[0].metadata["disk"], "ssd");
        let names: Vec<_> = sc.units.inline.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["db.service", "off.service", "web.service"]);
        let web = &sc.units.inline[2];
        assert_eq!(web.running_on, [B]);
        assert_eq!(web.state, DesiredState::Launched);
        assert_eq!(sc.units.inline[1].state, DesiredState::Inactive);
        // The file is the stored file, as `fleetctl cat` prints it.
        assert_eq!(web.file, stored_file(&units[0]).unwrap().serialize());
        let text = sc.to_toml().unwrap();
        let mut back = Scenario::from_toml(&text, std::path::Path::new("")).unwrap();
        back.base_dir = sc.base_dir.clone();
        assert_eq!(back, sc);
        // db needs disk=ssd (A), web conflicts with db (B): where they were captured.
        assert_eq!(placement_differences(&sc).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_unit_running_elsewhere_than_simulated_is_named() {
        let (machines, units) = cluster();
        let states = [
            state("db.service", B, "active"),
            state("web.service", A, "active"),
        ];
        let sc = capture("c", "d", Dur::secs(60), &machines, &units, &states).unwrap();
        let diffs = placement_differences(&sc).unwrap();
        // The simulated cluster starts with db claimed on B, which lacks disk=ssd, and web on A,
        // which keeps db off A: web stays, db runs nowhere.
        assert_eq!(
            diffs,
            ["db.service: runs on 0b0b0b0b, simulated on nowhere"]
        );
    }

    #[test]
    fn bad_input_is_refused_naming_what_is_wrong() {
        let (machines, mut units) = cluster();
        // (A word that is no desired state does not parse: see fleet-api-types.)
        units[0].desired_state = None;
        let err = capture("c", "d", Dur::secs(60), &machines, &units, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("web.service") && err.contains("no desired state"),
            "{err}"
        );

        let (machines, mut units) = cluster();
        units[1].desired_state = Some(DesiredState::Loaded);
        let err = format!(
            "{:#}",
            capture("c", "d", Dur::secs(60), &machines, &units, &[]).unwrap_err()
        );
        assert!(
            err.contains("db.service") && err.contains("loaded"),
            "{err}"
        );

        // A machine ID that is not one never reaches capture: the machine list does not parse.
        let err = serde_json::from_str::<Machine>(r#"{"id": "not a machine id!"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a machine id!"), "{err}");

        let (machines, mut units) = cluster();
        units[0].options.push(fleet_sched::UnitOption::new(
            "X-Fleet",
            "MachineOf",
            "db.service",
        ));
        let err = format!(
            "{:#}",
            capture("c", "d", Dur::secs(60), &machines, &units, &[]).unwrap_err()
        );
        assert!(
            err.contains("web.service") && err.contains("unresolvable requirements"),
            "{err}"
        );
    }
}
