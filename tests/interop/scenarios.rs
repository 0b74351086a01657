//! fleet v1's own end-to-end suite (coreos/fleet `functional/*_test.go`), scenario by scenario, run
//! with a given fleetctl (the original v1.0.0 or ours) against our fleetd in a 3-machine lab. Each
//! scenario is named after the fleet test it ports and checks what that test checked, through the
//! client under test (its lists, its exit codes), plus systemd's own view where fleet's test looked at
//! the machines. Adapted to one shared 3-machine lab: a scenario that needed a 1- or 2-machine cluster
//! pins its units to one machine (`MachineID=`) or stops fleetd on a machine for its duration; fixtures
//! are written here (the same shape as fleet's `fixtures/units`). Scenarios return `Err` with what was
//! wrong instead of panicking, so that a run counts passes per client.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{run_in, FleetLab, Run, INTEROP_DIR};

/// A fleetctl under test.
pub struct Client {
    pub name: &'static str,
    pub bin: String,
    /// Extra environment (`K=V`), e.g. the ssh-agent's socket.
    pub env: Vec<String>,
}

impl Client {
    pub fn original() -> Client {
        Client {
            name: "fleetctl v1.0.0",
            bin: format!("{INTEROP_DIR}/fleetctl-v1.0.0"),
            env: Vec::new(),
        }
    }

    pub fn ours() -> Client {
        Client {
            name: "ours",
            bin: "/opt/fleet/bin/fleetctl".into(),
            env: Vec::new(),
        }
    }
}

pub type Outcome = Result<(), String>;

/// One ported scenario.
pub struct Scenario {
    /// The fleet test it ports (and the part, when one test became several scenarios).
    pub name: &'static str,
    pub run: fn(&Ctx) -> Outcome,
}

/// What a scenario runs with.
pub struct Ctx<'a> {
    pub fl: &'a FleetLab,
    pub client: &'a Client,
    /// Whether sshd runs in every machine (port [`super::SSH_PORT`]) with an agent in m1.
    pub ssh: bool,
}

const WAIT: Duration = Duration::from_secs(30);

/// A long-running service printing `Hello, World!` (fleet's `fixtures/units/hello.service`).
const HELLO: &str = "[Unit]\nDescription=Hello World\n\n[Service]\nExecStart=/bin/sh -c \"while true; do echo Hello, World!; sleep 1; done\"\n";

fn unit(exec: &str, xfleet: &str) -> String {
    let mut s = format!("[Service]\nExecStart=/bin/sh -c \"{exec}\"\n");
    if !xfleet.is_empty() {
        s.push_str(&format!("\n[X-Fleet]\n{xfleet}\n"));
    }
    s
}

fn sleeper(xfleet: &str) -> String {
    unit("while true; do sleep 1; done", xfleet)
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl Ctx<'_> {
    /// The client under test in machine `i` (in /tmp).
    pub fn run_on(&self, i: usize, args: &[&str]) -> Run {
        let env: Vec<&str> = self.client.env.iter().map(String::as_str).collect();
        run_in(self.fl, i, &self.client.bin, &env, args)
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_on(1, args)
    }

    /// Runs and expects exit code 0 and no "Error" on stderr (fleet's checks); stdout.
    fn ok_on(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let r = self.run_on(i, args);
        check!(
            r.code == Some(0) && !r.err.contains("Error"),
            "{} ({:?}) in {:?}\nstdout: {}\nstderr: {}",
            r.what,
            r.code,
            r.took,
            r.out,
            r.err
        );
        Ok(r.out)
    }

    fn ok(&self, args: &[&str]) -> Result<String, String> {
        self.ok_on(1, args)
    }

    /// Writes a unit file into m1's /tmp (where the client runs) and returns its name.
    fn file(&self, name: &str, contents: &str) -> String {
        self.fl.write_file(1, &format!("/tmp/{name}"), contents);
        name.to_string()
    }

    /// Polls `f` every 200 ms for up to `timeout`.
    fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<Option<T>, String>,
    ) -> Result<T, String> {
        let t0 = Instant::now();
        let mut last = String::new();
        loop {
            match f() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = e,
            }
            if t0.elapsed() > timeout {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {what} {last}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The client's `list-unit-files`: unit -> (dstate, state).
    fn unit_files(&self) -> Result<BTreeMap<String, (String, String)>, String> {
        let out = self.ok(&[
            "list-unit-files",
            "--no-legend",
            "--fields=unit,dstate,state",
        ])?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').filter(|s| !s.is_empty()).collect();
                (f.len() == 3).then(|| (f[0].to_string(), (f[1].to_string(), f[2].to_string())))
            })
            .collect())
    }

    /// The client's `list-units` (fleet's util.ParseUnitStates): unit -> [(active, full machine ID)].
    fn unit_states_on(&self, i: usize) -> Result<BTreeMap<String, Vec<(String, String)>>, String> {
        let out = self.ok_on(
            i,
            &[
                "list-units",
                "--no-legend",
                "--full",
                "--fields=unit,active,machine",
            ],
        )?;
        let mut states: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for l in out.lines() {
            let f: Vec<&str> = l.split('\t').filter(|s| !s.is_empty()).collect();
            check!(f.len() == 3, "list-units line {l:?}");
            let machine = f[2].split('/').next().unwrap_or("").to_string();
            states
                .entry(f[0].to_string())
                .or_default()
                .push((f[1].to_string(), machine));
        }
        Ok(states)
    }

    /// Active units (fleet's WaitForNActiveUnits): unit -> machines, from the client's list-units.
    fn active_on(&self, i: usize) -> Result<BTreeMap<String, Vec<String>>, String> {
        Ok(self
            .unit_states_on(i)?
            .into_iter()
            .filter_map(|(u, s)| {
                let m: Vec<String> = s
                    .into_iter()
                    .filter(|(a, _)| a == "active")
                    .map(|(_, m)| m)
                    .collect();
                (!m.is_empty()).then_some((u, m))
            })
            .collect())
    }

    /// Waits until exactly `n` units are active (as the client lists them, asking machine `i`).
    fn wait_active_on(&self, i: usize, n: usize) -> Result<BTreeMap<String, Vec<String>>, String> {
        let mut last = BTreeMap::new();
        self.wait(&format!("{n} active units"), WAIT, || {
            last = self.active_on(i)?;
            Ok((last.values().map(Vec::len).sum::<usize>() == n).then(|| last.clone()))
        })
        .map_err(|e| format!("{e}; last: {last:?}"))
    }

    fn wait_active(&self, n: usize) -> Result<BTreeMap<String, Vec<String>>, String> {
        self.wait_active_on(1, n)
    }

    /// Waits until the client lists exactly `n` units (with any state: fleet's WaitForNUnits).
    fn wait_units(&self, n: usize) -> Result<(), String> {
        self.wait(&format!("{n} units in list-units"), WAIT, || {
            Ok((self.unit_states_on(1)?.len() == n).then_some(()))
        })
    }

    /// Waits until the client lists exactly `n` unit files (fleet's WaitForNUnitFiles).
    fn wait_unit_files(&self, n: usize) -> Result<BTreeMap<String, (String, String)>, String> {
        self.wait(&format!("{n} unit files"), WAIT, || {
            let f = self.unit_files()?;
            Ok((f.len() == n).then_some(f))
        })
    }

    fn machine_id(&self, i: usize) -> String {
        self.fl.machine_id(i)
    }

    /// Machine index (1-based) of a full machine ID.
    fn index_of(&self, id: &str) -> Option<usize> {
        (1..=self.fl.lab.machines()).find(|i| self.fl.machine_id(*i) == id)
    }

    /// Stops fleetd in machine `i` (as fleet's tests did: `systemctl stop fleet`).
    fn stop_fleet(&self, i: usize) -> Outcome {
        self.fl
            .lab
            .sh_ok(i, &["systemctl", "stop", "fleet.service"])
            .map(|_| ())
            .map_err(|e| format!("stop fleet on m{i}: {e}"))
    }

    /// Starts fleetd in machine `i` again and waits until every machine lists all machines.
    fn start_fleet(&self, i: usize) -> Outcome {
        let _ = self
            .fl
            .lab
            .sh(i, &["systemctl", "reset-failed", "fleet.service"]);
        self.fl
            .lab
            .sh_ok(i, &["systemctl", "start", "fleet.service"])
            .map_err(|e| format!("start fleet on m{i}: {e}"))?;
        let n = self.fl.lab.machines();
        self.wait("every machine listed again", WAIT, || {
            Ok((1..=n)
                .all(|j| self.fl.listed_machines(j).is_some_and(|m| m.len() == n))
                .then_some(()))
        })
    }
}

/// Brings the lab back to empty between scenarios: every unit destroyed (with our fleetctl), none left
/// running in any machine, every machine's fleetd up and listing all machines, no test metadata.
pub fn reset(fl: &FleetLab) {
    let n = fl.lab.machines();
    for i in 1..=n {
        if fl
            .lab
            .sh_ok(i, &["systemctl", "is-active", "-q", "fleet.service"])
            .is_err()
        {
            let _ = fl
                .lab
                .sh(i, &["systemctl", "reset-failed", "fleet.service"]);
            let _ = fl.lab.sh(i, &["systemctl", "start", "fleet.service"]);
        }
    }
    fl.wait_for("every machine lists every machine", WAIT, |fl| {
        (1..=n)
            .all(|j| fl.listed_machines(j).is_some_and(|m| m.len() == n))
            .then_some(())
    });
    let files = fl.fleetctl_ok(1, &["list-unit-files", "--no-legend", "--fields=unit"]);
    let units: Vec<&str> = files.split_whitespace().collect();
    if !units.is_empty() {
        let mut args = vec!["destroy"];
        args.extend_from_slice(&units);
        fl.fleetctl_ok(1, &args);
    }
    fl.wait_for("no unit listed or running", WAIT, |fl| {
        let listed = fl.fleetctl_ok(1, &["list-units", "--no-legend"]);
        let running = units
            .iter()
            .any(|u| !u.contains("@.") && !fl.running_on(u).is_empty());
        (listed.trim().is_empty() && !running).then_some(())
    });
    for i in 1..=n {
        for key in ["hostname", "region"] {
            let id = fl.machine_id(i);
            let seen = fl.metadata_seen(1, i).unwrap_or_default();
            if seen.contains(&format!("{key}=")) {
                let op = format!(r#"[{{"op":"remove","path":"/{id}/metadata/{key}"}}]"#);
                let _ = fl.patch_machines(i, &op);
            }
        }
    }
}

/// Scenarios the original fleetctl v1.0.0 fails by its own behaviour, whatever fleetd it talks to,
/// with the reason. The test checks that they still fail with it (so this list stays true).
pub const ORIGINAL_FAILS: &[(&str, &str)] = &[
    (
        "TestClientVersionHelpOutput",
        "without arguments v1.0.0 prints cobra's default usage, which has no version (its --help \
         template has one)",
    ),
    (
        "TestClientHelpFlag",
        "without arguments v1.0.0 prints cobra's default usage, not its --help text",
    ),
    (
        "restart of a running unit",
        "v1.0.0's restart sets the desired state loaded, then waits for launched (its \
         setUnitStateAndWait always waits for launched), so it never sees the stop; it gives up \
         after --block-attempts",
    ),
];

/// Every scenario, in the order of fleet's test files.
pub const SCENARIOS: &[Scenario] = &[
    // functional/unit_action_test.go
    Scenario {
        name: "TestUnitRunnable",
        run: unit_runnable,
    },
    Scenario {
        name: "TestUnitSubmit (9 units: submit, destroy, again)",
        run: unit_submit,
    },
    Scenario {
        name: "TestUnitSubmit (submitting the same unit again)",
        run: unit_submit_twice,
    },
    Scenario {
        name: "TestUnitLoad (6 units: load, unload, again)",
        run: unit_load,
    },
    Scenario {
        name: "TestUnitStart (3 units: start, stop, again)",
        run: unit_start,
    },
    Scenario {
        name: "TestUnitSubmitReplace",
        run: |c| replace_common(c, "submit"),
    },
    Scenario {
        name: "TestUnitLoadReplace",
        run: |c| replace_common(c, "load"),
    },
    Scenario {
        name: "TestUnitStartReplace",
        run: |c| replace_common(c, "start"),
    },
    Scenario {
        name: "TestUnitSSHActions (ssh)",
        run: ssh_actions_ssh,
    },
    Scenario {
        name: "TestUnitSSHActions (status)",
        run: ssh_actions_status,
    },
    Scenario {
        name: "TestUnitSSHActions (journal)",
        run: ssh_actions_journal,
    },
    Scenario {
        name: "TestUnitCat",
        run: unit_cat,
    },
    Scenario {
        name: "TestUnitStatus",
        run: unit_status,
    },
    Scenario {
        name: "TestListUnitFilesOrder",
        run: list_unit_files_order,
    },
    Scenario {
        name: "TestReplaceSerialization",
        run: replace_serialization,
    },
    Scenario {
        name: "TestUnitRestart (start, stop, start)",
        run: unit_restart,
    },
    Scenario {
        name: "TestUnitDestroy (a running unit)",
        run: unit_destroy_running,
    },
    Scenario {
        name: "restart of a running unit (a new main process)",
        run: restart_running,
    },
    Scenario {
        name: "TestUnitStart/Stop/Unload --no-block",
        run: no_block_verbs,
    },
    // functional/scheduling_test.go
    Scenario {
        name: "TestScheduleMachineOf (pairs together)",
        run: machine_of,
    },
    Scenario {
        name: "TestScheduleMachineOf (a pair moves together)",
        run: machine_of_moves,
    },
    Scenario {
        name: "TestScheduleConflicts",
        run: schedule_conflicts,
    },
    Scenario {
        name: "TestScheduleOneWayConflict",
        run: one_way_conflict,
    },
    Scenario {
        name: "TestScheduleConditionMachineID",
        run: condition_machine_id,
    },
    Scenario {
        name: "TestScheduleGlobalUnits",
        run: global_units,
    },
    Scenario {
        name: "TestScheduleGlobalUnits (template)",
        run: global_template,
    },
    Scenario {
        name: "TestScheduleReplace",
        run: schedule_replace,
    },
    Scenario {
        name: "TestScheduleCircularReplace",
        run: circular_replace,
    },
    // functional/metadata_test.go
    Scenario {
        name: "TestTemplatesWithSpecifiersInMetadata",
        run: templates_with_metadata,
    },
    Scenario {
        name: "TestTemplatesWithSpecifiersInMetadata (no match, --block-attempts)",
        run: metadata_no_match,
    },
    Scenario {
        name: "MachineMetadata matching",
        run: metadata_matching,
    },
    // functional/fleetctl_test.go
    Scenario {
        name: "TestClientVersionFlag",
        run: version_flag,
    },
    Scenario {
        name: "TestClientVersionHelpOutput",
        run: version_help,
    },
    Scenario {
        name: "TestClientHelpFlag",
        run: help_flag,
    },
    // functional/machines (list-machines) and list fields
    Scenario {
        name: "list-machines (every machine, ip)",
        run: list_machines,
    },
    Scenario {
        name: "list-units fields of a running unit",
        run: list_units_fields,
    },
    // functional/node_test.go, cluster_test.go
    Scenario {
        name: "TestNodeShutdown (units leave a stopped fleetd's machine)",
        run: node_shutdown,
    },
    Scenario {
        name: "TestDynamicClusterNewMemberUnitMigration",
        run: new_member_takes_units,
    },
    Scenario {
        name: "TestDynamicClusterMemberReboot (fleetd restart keeps units)",
        run: member_restart,
    },
    // [Install] (fleet enables such units at load)
    Scenario {
        name: "[Install] WantedBy= enablement",
        run: install_wanted_by,
    },
];

// The scenarios themselves, in two rooms (each a `use super::*` of this one).
#[path = "scheduling.rs"]
mod scheduling;
#[path = "unit_actions.rs"]
mod unit_actions;

use scheduling::*;
use unit_actions::*;
