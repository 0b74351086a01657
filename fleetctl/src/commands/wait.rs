//! Waiting until units reach a desired state, and saying why one did not (the agents' placement
//! function run client-side over what the API shows).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use anyhow::{Context as _, Result};
use fleet_api_types::{Machine, Unit};
use fleet_sched::{
    schedule, Decision, DesiredState, MachineId, MachineInfo, Requirements, UnitFile, UnitInfo,
    UnitName,
};

use super::*;
use crate::client::Transport;

impl<T: Transport> Ctx<T> {
    /// Poll until every unit reports `target`, at most `attempts` times (0: no limit). Prints
    /// `Unit X <state> on <machine>` as each one gets there; on time-out, prints why each remaining unit
    /// is not there and fails.
    pub(super) async fn wait_for(
        &mut self,
        names: &[UnitName],
        target: DesiredState,
        attempts: u32,
    ) -> Result<()> {
        let started = Instant::now();
        let mut pending: Vec<UnitName> = names.to_vec();
        let mut attempt: u32 = 0;
        let mut gone = Vec::new();
        loop {
            attempt += 1;
            let mut still = Vec::new();
            // Many units: one paged listing per check instead of one request per unit.
            let mut listed: Option<BTreeMap<String, Unit>> = None;
            if pending.len() > BULK_THRESHOLD {
                let all = self
                    .api
                    .units()
                    .await
                    .context(worded!("Error retrieving list of units from fleetd"))?;
                listed = Some(all.into_iter().map(|u| (u.name.clone(), u)).collect());
            }
            for name in pending {
                let found = match &mut listed {
                    Some(map) => map.remove(name.as_str()),
                    None => self.get_unit(&name).await?,
                };
                let Some(u) = found else {
                    gone.push(name);
                    continue;
                };
                let global = is_global(&u);
                let state = if global {
                    u.desired_state
                } else {
                    u.current_state
                };
                if state != Some(target) {
                    still.push(name);
                    continue;
                }
                if let (false, Some(id)) = (global, &u.machine_id) {
                    let legend = self.legend(id).await;
                    say!(self.out, "Unit {name} {target} on {legend}");
                } else {
                    say!(self.out, "Unit {name} {target}");
                }
            }
            pending = still;
            if pending.is_empty() && gone.is_empty() {
                return Ok(());
            }
            if pending.is_empty() || (attempts != 0 && attempt >= attempts) {
                break;
            }
            if attempts == 0 && attempt.is_multiple_of(20) {
                let list = join(&pending);
                say!(
                    self.err,
                    "Still waiting for {list} to be {target} ({:.0} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            tokio::time::sleep(self.poll_interval).await;
        }
        let waited = started.elapsed().as_secs_f64();
        for name in &gone {
            say!(
                self.err,
                "Unit {name} was destroyed while waiting for it to be {target}"
            );
        }
        let checks = if attempt == 1 { "check" } else { "checks" };
        for name in &pending {
            let why = self.why_not(name, target).await;
            say!(
                self.err,
                "Unit {name}: desired state {target} is recorded but was not reached after {attempt} {checks} ({waited:.1} s): {why}"
            );
        }
        let failed = pending.len() + gone.len();
        Err(worded_err!(
            "Error waiting for units: {failed} of {} did not reach state {target} (the desired state stays recorded; --block-attempts=0 waits without limit, --no-block does not wait)",
            names.len()
        ))
    }

    /// A plain explanation of why `name` is not in state `target` (best effort: API failures are named).
    pub(super) async fn why_not(&mut self, name: &UnitName, target: DesiredState) -> String {
        let unit = match self.api.unit(name.as_str()).await {
            Ok(Some(u)) => u,
            Ok(None) => return "the unit no longer exists".to_string(),
            Err(e) => return format!("cannot read the unit from fleetd: {e}"),
        };
        let machines = match self.machine_map(true).await {
            Ok(m) => m.clone(),
            Err(e) => return format!("cannot list machines: {e:#}"),
        };
        if machines.is_empty() {
            return "no machine has joined the cluster (no fleetd agent is running), so nothing can be scheduled".to_string();
        }
        let Some(id) = &unit.machine_id else {
            return match self.api.units().await {
                Ok(units) => explain_unplaced(name, &units, &machines),
                Err(e) => format!("it is not placed on a machine yet (cannot list units: {e})"),
            };
        };
        let legend = machine_full_legend(id, machines.get(id), false);
        if !machines.contains_key(id) {
            return format!("it is placed on {legend}, which is no longer a member of the cluster");
        }
        let states = self
            .api
            .unit_states(Some(name.as_str()))
            .await
            .unwrap_or_default();
        match states.iter().find(|s| s.machine_id.as_ref() == Some(id)) {
            None => format!("it is placed on {legend}, which has not reported the unit yet (current state {})", dash(&word(&unit.current_state))),
            Some(s) => format!(
                "it is placed on {legend}, where systemd reports load={} active={} sub={} (current state {}, wanted {target})",
                dash(&word(&s.systemd_load_state)),
                dash(&word(&s.systemd_active_state)),
                dash(&word(&s.systemd_sub_state)),
                dash(&word(&unit.current_state))
            ),
        }
    }
}

/// Why an unplaced unit is not placed: the placement function every agent runs ([`schedule`]), applied
/// to the cluster as the API shows it.
pub fn explain_unplaced(
    name: &UnitName,
    units: &[Unit],
    machines: &BTreeMap<MachineId, Machine>,
) -> String {
    let mut infos: Vec<MachineInfo> = Vec::with_capacity(machines.len());
    for m in machines.values() {
        let mut info = MachineInfo::new(m.id.clone());
        info.metadata = m.metadata.clone();
        info.refused = m
            .refused_units
            .iter()
            .filter_map(|(n, why)| Some((UnitName::parse(n).ok()?, why.clone())))
            .collect();
        infos.push(info);
    }
    let units: Vec<UnitInfo> = units
        .iter()
        .filter_map(|u| {
            let name = UnitName::parse(&u.name).ok()?;
            let file = UnitFile::from_options(u.options.clone()).ok()?;
            let req = Requirements::from_unit(&name, &file).ok()?;
            let info = UnitInfo::new(name, req, u.desired_state?);
            Some(match &u.machine_id {
                Some(m) => info.claimed_by(m.clone()),
                None => info,
            })
        })
        .collect();
    let count = infos.len();
    let plural = if count == 1 { "" } else { "s" };
    match schedule(&infos, &units).decision(name) {
        Some(Decision::Unplaceable(reason)) => format!("it cannot be placed: {reason}"),
        Some(Decision::On(m)) => format!(
            "it is not placed yet, though it fits on {} ({count} machine{plural} in the cluster): no agent has claimed it",
            machine_full_legend(m, machines.get(m), false)
        ),
        Some(Decision::Global(_)) | None => {
            format!("it is not placed on any of the {count} machine{plural} yet")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::BlockFlags;
    use crate::commands::testutil::*;

    #[test]
    pub(super) fn unplaced_units_are_explained_by_the_agents_placement_function() {
        let conflicts = [
            ("Service", "ExecStart", "/bin/true"),
            ("X-Fleet", "Conflicts", "web@*.service"),
        ];
        let units = vec![
            unit("web@1.service", &conflicts, "launched", "", M1),
            unit("web@2.service", &conflicts, "launched", "", ""),
            unit(
                "eu.service",
                &[
                    ("Service", "ExecStart", "/bin/true"),
                    ("X-Fleet", "MachineMetadata", "region=eu"),
                ],
                "launched",
                "",
                "",
            ),
            unit(
                "free.service",
                &[("Service", "ExecStart", "/bin/true")],
                "launched",
                "",
                "",
            ),
        ];
        let one: BTreeMap<_, _> = machines().into_iter().take(1).collect();
        let why = |n: &str, ms: &BTreeMap<MachineId, Machine>| {
            explain_unplaced(&UnitName::parse(n).unwrap(), &units, ms)
        };
        let w = why("web@2.service", &one);
        assert!(
            w.starts_with("it cannot be placed: ") && w.contains("web@1.service"),
            "{w}"
        );
        let w = why("eu.service", &one);
        assert!(
            w.contains("MachineMetadata") && w.contains("region=eu"),
            "{w}"
        );
        let w = why("free.service", &one);
        assert!(w.contains("fits on 113f16a7.../10.0.0.1"), "{w}");
        let w = why("free.service", &BTreeMap::new());
        assert!(w.contains("no machine"), "{w}");
    }

    #[test]
    pub(super) fn start_without_machines_gives_up_after_the_block_attempts_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello.service");
        std::fs::write(&path, "[Service]\nExecStart=/bin/true\n").unwrap();
        let inactive = r#"{"name":"hello.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}],"desiredState":"launched","currentState":"inactive"}"#;
        let (mut c, out, err) = ctx(&[
            (
                404,
                r#"{"error":{"code":404,"message":"unit does not exist"}}"#,
            ),
            (201, ""),
            (204, ""),
            (200, inactive),
            (200, inactive),
            (200, inactive),
            (200, r#"{"machines":[]}"#),
        ]);
        let flags = BlockFlags {
            no_block: false,
            block_attempts: 2,
        };
        let args = [path.display().to_string()];
        let e = block(c.activate(&args, false, &flags, CreateVerb::Start)).unwrap_err();
        assert!(
            e.to_string()
                .contains("1 of 1 did not reach state launched"),
            "{e}"
        );
        assert_eq!(out.text(), "Unit hello.service inactive\n");
        let err = err.text();
        assert!(
            err.contains("desired state launched is recorded but was not reached after 2 checks")
                && err.contains("no machine has joined the cluster"),
            "{err}"
        );
        let reqs: Vec<_> = c
            .api
            .transport()
            .requests
            .iter()
            .map(|r| r.0.clone())
            .collect();
        assert_eq!(
            reqs,
            [
                "GET /fleet/v1/units/hello.service",
                "PUT /fleet/v1/units/hello.service",
                "PUT /fleet/v1/units/hello.service",
                "GET /fleet/v1/units/hello.service",
                "GET /fleet/v1/units/hello.service",
                "GET /fleet/v1/units/hello.service",
                "GET /fleet/v1/machines",
            ]
        );
        let create: serde_json::Value =
            serde_json::from_str(c.api.transport().requests[1].1.as_deref().unwrap()).unwrap();
        assert_eq!(
            create,
            serde_json::json!({"name":"hello.service","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]})
        );
    }

    #[test]
    pub(super) fn start_reports_the_machine_once_the_unit_is_launched() {
        let launched = format!(
            r#"{{"name":"a.service","options":[{{"section":"Service","name":"ExecStart","value":"/bin/true"}}],"desiredState":"launched","currentState":"launched","machineID":"{M1}"}}"#
        );
        let machines = format!(r#"{{"machines":[{{"id":"{M1}","primaryIP":"10.0.0.1"}}]}}"#);
        let (mut c, out, _) = ctx(&[
            (200, &launched),
            (204, ""),
            (200, &launched),
            (200, &machines),
        ]);
        let flags = BlockFlags {
            no_block: false,
            block_attempts: 1,
        };
        block(c.activate(&["a".into()], false, &flags, CreateVerb::Start)).unwrap();
        assert_eq!(
            out.text(),
            "Unit a.service launched on 113f16a7.../10.0.0.1\n"
        );
    }
}
