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

fn unit_runnable(c: &Ctx) -> Outcome {
    c.file("hello.service", HELLO);
    c.ok(&["start", "hello.service"])?;
    let active = c.wait_active(1)?;
    check!(active.contains_key("hello.service"), "{active:?}");
    Ok(())
}

fn instances(c: &Ctx, n: usize, fmt: fn(usize) -> String) -> Vec<String> {
    (1..=n).map(|i| c.file(&fmt(i), HELLO)).collect()
}

/// fleet's doMultipleUnitsCmd: `cmd` on n units in one call, check the list, undo each, check, again.
fn multiple_units(c: &Ctx, cmd: &str, undo: &str, n: usize) -> Outcome {
    let files = instances(c, n, |i| format!("hello@{i}.service"));
    let check_list = |want: usize| -> Outcome {
        match cmd {
            "submit" => {
                let f = c.wait_unit_files(want)?;
                check!(files.iter().take(want).all(|u| f.contains_key(u)), "{f:?}");
            }
            "load" => c.wait_units(want)?,
            _ => {
                let a = c.wait_active(want)?;
                check!(files.iter().take(want).all(|u| a.contains_key(u)), "{a:?}");
            }
        }
        Ok(())
    };
    for _ in 0..2 {
        let mut args = vec![cmd];
        args.extend(files.iter().map(String::as_str));
        c.ok(&args)?;
        check_list(n)?;
        for f in &files {
            c.ok(&[undo, f])?;
        }
        check_list(0)?;
    }
    Ok(())
}

fn unit_submit(c: &Ctx) -> Outcome {
    multiple_units(c, "submit", "destroy", 9)
}

fn unit_submit_twice(c: &Ctx) -> Outcome {
    c.file("hello.service", HELLO);
    c.ok(&["submit", "hello.service"])?;
    c.ok(&["submit", "hello.service"])?;
    let f = c.wait_unit_files(1)?;
    check!(f.contains_key("hello.service"), "{f:?}");
    c.ok(&["destroy", "hello.service"])?;
    c.wait_unit_files(0)?;
    c.ok(&["submit", "hello.service"])?;
    c.wait_unit_files(1)?;
    Ok(())
}

fn unit_load(c: &Ctx) -> Outcome {
    multiple_units(c, "load", "unload", 6)
}

fn unit_start(c: &Ctx) -> Outcome {
    multiple_units(c, "start", "stop", 3)
}

/// fleet's replaceUnitCommon: `cmd` 3 units, then `cmd --replace` each with a new body; `cat` shows
/// the new body (and for start, systemd runs the new command).
fn replace_common(c: &Ctx, cmd: &str) -> Outcome {
    let n = 3;
    let files = instances(c, n, |i| format!("hello@{i}.service"));
    let mut args = vec![cmd];
    args.extend(files.iter().map(String::as_str));
    c.ok(&args)?;
    match cmd {
        "submit" => drop(c.wait_unit_files(n)?),
        "load" => c.wait_units(n)?,
        _ => drop(c.wait_active(n)?),
    }
    for f in &files {
        let before = c.ok(&["cat", f])?;
        let new = HELLO.replace("sleep 1", "sleep 2");
        c.file(f, &new);
        c.ok(&[cmd, "--replace", f])?;
        let after = c.ok(&["cat", f])?;
        check!(
            after != before && after.trim() == new.trim(),
            "{f} not replaced: {after}"
        );
    }
    match cmd {
        "submit" => drop(c.wait_unit_files(n)?),
        "load" => c.wait_units(n)?,
        _ => {
            c.wait_active(n)?;
            for f in &files {
                c.wait(&format!("{f} running its new command"), WAIT, || {
                    Ok(c.fl.running_on(f).first().and_then(|m| {
                        c.fl.show(*m, f, "ExecStart")
                            .contains("sleep 2")
                            .then_some(())
                    }))
                })?;
            }
        }
    }
    Ok(())
}

/// Starts hello.service (--no-block) and waits for it; its machine.
fn hello_running(c: &Ctx) -> Result<usize, String> {
    c.file("hello.service", HELLO);
    c.ok(&["start", "--no-block", "hello.service"])?;
    let a = c.wait_active(1)?;
    let id = a.get("hello.service").and_then(|m| m.first()).cloned();
    id.as_deref()
        .and_then(|id| c.index_of(id))
        .ok_or_else(|| format!("hello.service's machine: {a:?}"))
}

/// The SSH flags fleet's tests pass, for the lab's sshd.
fn ssh_flags(c: &Ctx) -> Result<[&'static str; 5], String> {
    check!(c.ssh, "no sshd in the lab (needs /usr/sbin/sshd)");
    Ok([
        "--strict-host-key-checking=false",
        "--ssh-username",
        "root",
        "--ssh-port",
        super::SSH_PORT,
    ])
}

/// `--strict-host-key-checking=false VERB --ssh-port P rest...` (the port is a verb flag in v1.0.0).
fn remote(c: &Ctx, verb: &str, rest: &[&str]) -> Result<Run, String> {
    let f = ssh_flags(c)?;
    let mut args = vec![f[0], f[1], f[2], verb, f[3], f[4]];
    args.extend_from_slice(rest);
    Ok(c.run(&args))
}

fn ssh_actions_ssh(c: &Ctx) -> Outcome {
    ssh_flags(c)?;
    hello_running(c)?;
    let r = remote(c, "ssh", &["hello.service", "echo", "foo"])?;
    check!(
        r.code == Some(0) && r.out.contains("foo"),
        "ssh: {:?} {} {}",
        r.code,
        r.out,
        r.err
    );
    Ok(())
}

fn ssh_actions_status(c: &Ctx) -> Outcome {
    ssh_flags(c)?;
    hello_running(c)?;
    let r = remote(c, "status", &["hello.service"])?;
    check!(
        r.code == Some(0) && r.out.contains("Active: active"),
        "status: {:?} {} {}",
        r.code,
        r.out,
        r.err
    );
    Ok(())
}

fn ssh_actions_journal(c: &Ctx) -> Outcome {
    ssh_flags(c)?;
    hello_running(c)?;
    c.wait("Hello, World! in the journal", WAIT, || {
        let r = remote(c, "journal", &["hello.service"])?;
        Ok((r.code == Some(0) && r.out.contains("Hello, World!")).then_some(()))
    })
}

fn unit_cat(c: &Ctx) -> Outcome {
    c.file("hello.service", HELLO);
    c.ok(&["submit", "hello.service"])?;
    c.wait_unit_files(1)?;
    let out = c.ok(&["cat", "hello.service"])?;
    check!(out.trim() == HELLO.trim(), "cat: {out:?}");
    Ok(())
}

fn unit_status(c: &Ctx) -> Outcome {
    c.file("hello.service", HELLO);
    c.ok(&["load", "hello.service"])?;
    c.wait_units(1)?;
    // Where the unit is loaded the client runs systemctl itself; elsewhere through SSH.
    let m = c.wait("hello.service loaded in a machine", WAIT, || {
        Ok((1..=3).find(|i| c.fl.show(*i, "hello.service", "LoadState") == "loaded"))
    })?;
    let r = c.run_on(m, &["status", "hello.service"]);
    check!(
        r.out.contains("Loaded: loaded"),
        "status on m{m}: {} {}",
        r.out,
        r.err
    );
    Ok(())
}

fn list_unit_files_order(c: &Ctx) -> Outcome {
    let mut names = Vec::new();
    for i in (1..=20).rev() {
        let f = c.file(&format!("hello@{i:02}.service"), HELLO);
        c.ok(&["submit", &f])?;
        names.push(f);
    }
    c.wait_unit_files(20)?;
    let out = c.ok(&["list-unit-files", "--no-legend", "--fields", "unit"])?;
    names.sort();
    let listed: Vec<&str> = out.lines().map(str::trim).collect();
    check!(listed == names, "not sorted: {listed:?}");
    Ok(())
}

fn replace_serialization(c: &Ctx) -> Outcome {
    // The new version's ExecStartPre succeeds only after the old version's ExecStopPost ran.
    let m1 = c.machine_id(1);
    let sync = "/tmp/fleetSyncReplaceFile";
    let _ = c.fl.lab.sh(1, &["rm", "-f", sync]);
    let old = format!(
        "[Service]\nExecStartPre=/bin/sh -c \"echo sync\"\nExecStart=/bin/sh -c \"while true; do sleep 1; done\"\nExecStopPost=/bin/sh -c \"touch {sync}\"\n\n[X-Fleet]\nMachineID={m1}\n"
    );
    c.file("replace-sync.service", &old);
    c.ok(&["start", "replace-sync.service"])?;
    c.wait_active(1)?;
    let new = old.replace("echo sync", &format!("test -f {sync}"));
    c.file("replace-sync.service", &new);
    c.ok(&["start", "--replace", "replace-sync.service"])?;
    c.wait_active(1)?;
    c.wait("the new version active with Result=success", WAIT, || {
        let f = c.fl;
        Ok((f.active_state(1, "replace-sync.service") == "active"
            && f.show(1, "replace-sync.service", "Result") == "success"
            && f.show(1, "replace-sync.service", "ExecStartPre")
                .contains("test -f"))
        .then_some(()))
    })?;
    let _ = c.fl.lab.sh(1, &["rm", "-f", sync]);
    Ok(())
}

fn unit_restart(c: &Ctx) -> Outcome {
    c.file("hello.service", HELLO);
    c.ok(&["start", "hello.service"])?;
    c.wait_active(1)?;
    c.ok(&["stop", "hello.service"])?;
    c.wait_active(0)?;
    c.ok(&["start", "hello.service"])?;
    let a = c.wait_active(1)?;
    check!(a.contains_key("hello.service"), "{a:?}");
    Ok(())
}

fn unit_destroy_running(c: &Ctx) -> Outcome {
    let m = hello_running(c)?;
    c.ok(&["destroy", "hello.service"])?;
    c.wait_unit_files(0)?;
    c.wait("hello.service gone from its machine", WAIT, || {
        Ok((c.fl.show(m, "hello.service", "LoadState") == "not-found").then_some(()))
    })
}

fn no_block_verbs(c: &Ctx) -> Outcome {
    let m = hello_running(c)?;
    c.wait("hello.service launched", WAIT, || {
        Ok(
            (c.unit_files()?.get("hello.service").map(|s| s.1.as_str()) == Some("launched"))
                .then_some(()),
        )
    })?;
    c.ok(&["stop", "--no-block", "hello.service"])?;
    c.wait("hello.service stopped", WAIT, || {
        Ok((c.fl.active_state(m, "hello.service") == "inactive").then_some(()))
    })?;
    c.wait("hello.service loaded", WAIT, || {
        Ok(
            (c.unit_files()?.get("hello.service").map(|s| s.1.as_str()) == Some("loaded"))
                .then_some(()),
        )
    })?;
    c.ok(&["unload", "--no-block", "hello.service"])?;
    c.wait("hello.service unloaded", WAIT, || {
        Ok((c.fl.show(m, "hello.service", "LoadState") == "not-found").then_some(()))
    })?;
    c.ok(&["load", "--no-block", "hello.service"])?;
    c.wait_units(1)
}

fn ping_pong(c: &Ctx) -> Result<BTreeMap<String, Vec<String>>, String> {
    for i in 0..3 {
        let ping = c.file(&format!("ping.{i}.service"), &sleeper(""));
        let pong = c.file(
            &format!("pong.{i}.service"),
            &sleeper(&format!("MachineOf=ping.{i}.service")),
        );
        c.ok(&["start", "--no-block", &ping, &pong])?;
    }
    let listed = c.ok(&["list-unit-files", "--no-legend"])?;
    check!(listed.lines().count() == 6, "list-unit-files: {listed}");
    let a = c.wait_active(6)?;
    for i in 0..3 {
        let (p, q) = (
            &a[&format!("ping.{i}.service")],
            &a[&format!("pong.{i}.service")],
        );
        check!(p == q, "ping.{i} on {p:?}, pong.{i} on {q:?}");
    }
    Ok(a)
}

fn machine_of(c: &Ctx) -> Outcome {
    ping_pong(c).map(drop)
}

fn machine_of_moves(c: &Ctx) -> Outcome {
    let a = ping_pong(c)?;
    let mach = a["ping.1.service"][0].clone();
    let victim = c.index_of(&mach).ok_or("ping.1's machine")?;
    let other = if victim == 1 { 2 } else { 1 };
    c.stop_fleet(victim)?;
    let result = (|| {
        let a = c.wait_active_on(other, 6)?;
        let (p, q) = (&a["ping.1.service"], &a["pong.1.service"]);
        check!(p[0] != mach, "ping.1.service did not move");
        check!(
            p == q,
            "pong.1.service did not move with ping.1.service: {p:?} {q:?}"
        );
        Ok(())
    })();
    c.start_fleet(victim)?;
    result
}

fn schedule_conflicts(c: &Ctx) -> Outcome {
    for i in 0..5 {
        let f = c.file(
            &format!("conflict.{i}.service"),
            &sleeper("Conflicts=conflict*"),
        );
        c.ok(&["start", "--no-block", &f])?;
    }
    let listed = c.ok(&["list-unit-files", "--no-legend"])?;
    check!(listed.lines().count() == 5, "list-unit-files: {listed}");
    let a = c.wait_active(3)?;
    let machines: BTreeSet<&String> = a.values().flatten().collect();
    check!(
        machines.len() == 3,
        "3 active units not on 3 machines: {a:?}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let a = c.active_on(1)?;
    check!(a.len() == 3, "more than 3 conflicting units active: {a:?}");
    Ok(())
}

fn one_way_conflict(c: &Ctx) -> Outcome {
    // fleet's test had one machine; here both units may only run on m1 (by metadata: fleet refuses
    // MachineID with Conflicts).
    c.fl.patch_metadata(1, "region", Some("one"));
    c.fl.wait_metadata(1, "region=one");
    let only_m1 = "MachineMetadata=region=one";
    let cw = c.file(
        "conflicts-with-hello.service",
        &sleeper(&format!("{only_m1}\nConflicts=hello.service")),
    );
    c.ok(&["start", "--no-block", &cw])?;
    c.wait_active(1)?;
    let hello = c.file("hello.service", &format!("{HELLO}\n[X-Fleet]\n{only_m1}\n"));
    c.ok(&["start", "--no-block", &hello])?;
    let listed = c.ok(&["list-unit-files", "--no-legend"])?;
    check!(listed.lines().count() == 2, "list-unit-files: {listed}");
    std::thread::sleep(Duration::from_secs(2));
    let a = c.wait_active(1)?;
    check!(a.contains_key(&cw), "incorrect unit started: {a:?}");
    c.ok(&["destroy", &cw])?;
    c.wait("conflicts-with-hello gone from list-units", WAIT, || {
        Ok((!c.unit_states_on(1)?.contains_key(&cw)).then_some(()))
    })?;
    let a = c.wait_active(1)?;
    check!(
        a.get("hello.service") == Some(&vec![c.machine_id(1)]),
        "incorrect unit started: {a:?}"
    );
    Ok(())
}

fn condition_machine_id(c: &Ctx) -> Outcome {
    let mut schedule = BTreeMap::new();
    for i in 1..=3 {
        let id = c.machine_id(i);
        let f = c.file(
            &format!("pinned{i}.service"),
            &unit(
                "while true; do echo Hello, World!; sleep 1; done",
                &format!("MachineID={id}"),
            ),
        );
        c.ok(&["start", &f])?;
        schedule.insert(f, id);
    }
    let a = c.wait_active(3)?;
    for (u, id) in &schedule {
        check!(
            a.get(u) == Some(&vec![id.clone()]),
            "{u} on {:?}, wanted {id}",
            a.get(u)
        );
    }
    Ok(())
}

fn global_units(c: &Ctx) -> Outcome {
    c.file("hello.service", HELLO);
    c.file(
        "goodbye.service",
        &unit("while true; do echo Goodbye; sleep 1; done", ""),
    );
    c.ok(&["start", "--no-block", "hello.service", "goodbye.service"])?;
    c.wait_active(2)?;
    c.file("global.service", &sleeper("Global=true"));
    c.ok(&["start", "--no-block", "global.service"])?;
    let a = c.wait_active(5)?;
    let on: BTreeSet<String> = a
        .get("global.service")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let all: BTreeSet<String> = (1..=3).map(|i| c.machine_id(i)).collect();
    check!(on == all, "global.service on {on:?}");
    Ok(())
}

fn global_template(c: &Ctx) -> Outcome {
    c.file("global@.service", &sleeper("Global=true"));
    c.ok(&["submit", "global@.service"])?;
    c.ok(&["start", "--no-block", "global@1.service"])?;
    c.wait_active(3)?;
    c.wait("global@1.service in every machine", WAIT, || {
        Ok((c.fl.running_on("global@1.service").len() == 3).then_some(()))
    })
}

fn schedule_replace(c: &Ctx) -> Outcome {
    c.file("replace.0.service", &sleeper(""));
    c.file("replace.1.service", &sleeper("Replaces=replace.0.service"));
    c.ok(&["start", "--no-block", "replace.0.service"])?;
    c.wait_active(1)?;
    c.ok(&["start", "--no-block", "replace.1.service"])?;
    let listed = c.ok(&["list-unit-files", "--no-legend"])?;
    check!(listed.lines().count() == 2, "list-unit-files: {listed}");
    let a = c.wait_active(2)?;
    check!(
        a["replace.0.service"] != a["replace.1.service"],
        "replace.1 runs with the unit it replaces: {a:?}"
    );
    Ok(())
}

/// fleet's test expected one launched unit of two that replace each other; the spec
/// (`fleet-compat.md`: "a mutual Replaces is ignored") has both placed as if neither said Replaces.
fn circular_replace(c: &Ctx) -> Outcome {
    c.file("replace.0.service", &sleeper("Replaces=replace.1.service"));
    c.file("replace.1.service", &sleeper("Replaces=replace.0.service"));
    c.ok(&["start", "--no-block", "replace.0.service"])?;
    c.wait_active(1)?;
    c.wait_unit_files(1)?;
    c.ok(&["start", "--no-block", "replace.1.service"])?;
    let listed = c.ok(&["list-unit-files", "--no-legend"])?;
    check!(listed.lines().count() == 2, "list-unit-files: {listed}");
    let a = c.wait_active(2)?;
    let f = c.unit_files()?;
    let launched = f.values().filter(|(_, s)| s == "launched").count();
    check!(launched == 2, "{launched} launched: {f:?} {a:?}");
    Ok(())
}

/// Sets `hostname=smoke<i>` on every machine (fleet's cluster gave its members such metadata).
fn smoke_metadata(c: &Ctx) {
    for i in 1..=3 {
        c.fl.patch_metadata(i, "hostname", Some(&format!("smoke{i}")));
    }
    for i in 1..=3 {
        c.fl.wait_metadata(i, &format!("hostname=smoke{i}"));
    }
}

fn templates_with_metadata(c: &Ctx) -> Outcome {
    smoke_metadata(c);
    c.file("metadata@.service", &sleeper("MachineMetadata=hostname=%i"));
    c.ok(&["submit", "metadata@.service"])?;
    for i in (1..=3).rev() {
        c.ok(&["start", &format!("metadata@smoke{i}.service")])?;
    }
    let a = c.wait_active(3)?;
    for i in 1..=3 {
        let u = format!("metadata@smoke{i}.service");
        check!(
            a.get(&u) == Some(&vec![c.machine_id(i)]),
            "{u} on {:?}",
            a.get(&u)
        );
    }
    Ok(())
}

fn metadata_no_match(c: &Ctx) -> Outcome {
    smoke_metadata(c);
    c.file("metadata@.service", &sleeper("MachineMetadata=hostname=%i"));
    c.ok(&["submit", "metadata@.service"])?;
    let r = c.run(&["start", "--block-attempts=20", "metadata@invalid.service"]);
    check!(
        r.code != Some(0),
        "metadata@invalid should not be scheduled: {} {}",
        r.out,
        r.err
    );
    check!(c.active_on(1)?.is_empty(), "something runs");
    Ok(())
}

fn metadata_matching(c: &Ctx) -> Outcome {
    c.fl.patch_metadata(3, "region", Some("us"));
    c.fl.wait_metadata(3, "region=us");
    c.file("us.service", &sleeper("MachineMetadata=region=us"));
    c.ok(&["start", "us.service"])?;
    let a = c.wait_active(1)?;
    check!(a.get("us.service") == Some(&vec![c.machine_id(3)]), "{a:?}");
    Ok(())
}

/// What `--version` prints: "fleetctl version X"; X.
fn version(c: &Ctx) -> Result<String, String> {
    let out = c.ok(&["--version"])?;
    let v = out
        .trim()
        .strip_prefix("fleetctl version ")
        .map(str::to_string);
    v.filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
        .ok_or_else(|| format!("--version printed {out:?}"))
}

fn version_flag(c: &Ctx) -> Outcome {
    version(c).map(drop)
}

fn version_help(c: &Ctx) -> Outcome {
    let v = version(c)?;
    let r = c.run(&[]);
    check!(
        r.code == Some(0) && r.out.contains(&v),
        "no version {v} in: {} {}",
        r.out,
        r.err
    );
    Ok(())
}

fn help_flag(c: &Ctx) -> Outcome {
    let fixture = c.ok(&["--help"])?;
    check!(!fixture.is_empty(), "--help printed nothing");
    for args in [&["-h"][..], &["help"], &[]] {
        let r = c.run(args);
        check!(
            r.code == Some(0) && r.out == fixture,
            "{args:?} differs from --help:\n{}\n--- vs ---\n{fixture}",
            r.out
        );
    }
    Ok(())
}

fn list_machines(c: &Ctx) -> Outcome {
    let out = c.ok(&[
        "list-machines",
        "--no-legend",
        "--full",
        "--fields=machine,ip",
    ])?;
    let got: BTreeSet<&str> = out.lines().collect();
    let want: Vec<String> = (1..=3)
        .map(|i| format!("{}\t{}", c.machine_id(i), fleet_lab::machine_ip(i)))
        .collect();
    check!(
        got.len() == 3 && want.iter().all(|w| got.contains(w.as_str())),
        "list-machines: {out}"
    );
    Ok(())
}

fn list_units_fields(c: &Ctx) -> Outcome {
    let m = hello_running(c)?;
    c.wait("hello.service reported running", WAIT, || {
        let out = c.ok(&[
            "list-units",
            "--no-legend",
            "--full",
            "--fields=unit,machine,load,active,sub",
        ])?;
        let want = format!(
            "hello.service\t{}/{}\tloaded\tactive\trunning",
            c.machine_id(m),
            fleet_lab::machine_ip(m)
        );
        Ok(out.lines().any(|l| l == want).then_some(()))
    })
}

fn node_shutdown(c: &Ctx) -> Outcome {
    let m = hello_running(c)?;
    let other = if m == 1 { 2 } else { 1 };
    c.stop_fleet(m)?;
    let result = c
        .wait(
            "hello.service running elsewhere and not on the stopped machine",
            WAIT,
            || {
                let r = c.fl.running_on("hello.service");
                Ok((r.len() == 1 && r[0] != m).then_some(()))
            },
        )
        .and_then(|_| {
            let a = c.wait_active_on(other, 1)?;
            check!(a["hello.service"][0] != c.machine_id(m), "{a:?}");
            Ok(())
        });
    c.start_fleet(m)?;
    result
}

fn new_member_takes_units(c: &Ctx) -> Outcome {
    // fleet added a member; here m3's fleetd is stopped first and started again.
    c.stop_fleet(3)?;
    let result = (|| {
        c.wait("2 machines listed", WAIT, || {
            Ok((c.ok(&["list-machines", "--no-legend"])?.lines().count() == 2).then_some(()))
        })?;
        for i in 0..3 {
            let f = c.file(
                &format!("conflict.{i}.service"),
                &sleeper("Conflicts=conflict*"),
            );
            c.ok(&["start", "--no-block", &f])?;
        }
        c.wait_active(2)?;
        c.start_fleet(3)?;
        let a = c.wait_active(3)?;
        check!(
            a.values().flatten().any(|m| *m == c.machine_id(3)),
            "nothing moved to m3: {a:?}"
        );
        Ok(())
    })();
    c.start_fleet(3)?;
    result
}

fn member_restart(c: &Ctx) -> Outcome {
    for i in 0..3 {
        let f = c.file(
            &format!("conflict.{i}.service"),
            &sleeper("Conflicts=conflict*"),
        );
        c.ok(&["start", "--no-block", &f])?;
    }
    let before = c.wait_active(3)?;
    let pids = |i: usize| c.fl.show(i, "conflict.0.service", "MainPID");
    let m = before["conflict.0.service"][0].clone();
    let mi = c.index_of(&m).ok_or("conflict.0's machine")?;
    let pid = pids(mi);
    c.fl.lab
        .sh_ok(mi, &["systemctl", "restart", "fleet.service"])
        .map_err(|e| e.to_string())?;
    c.start_fleet(mi)?;
    let after = c.wait_active(3)?;
    check!(before == after, "units moved: {before:?} -> {after:?}");
    check!(pids(mi) == pid, "conflict.0.service restarted");
    Ok(())
}

/// fleet enabled (runtime) a unit with an [Install] section when it loaded it: anchor.service then
/// wants it; unloading it disables it again.
fn install_wanted_by(c: &Ctx) -> Outcome {
    let m1 = c.machine_id(1);
    let pin = format!("MachineID={m1}");
    let anchor = c.file("anchor.service", &sleeper(&pin));
    let dep = c.file(
        "dep.service",
        &format!("{}\n[Install]\nWantedBy=anchor.service\n", sleeper(&pin)),
    );
    c.ok(&["load", &dep])?;
    c.ok(&["start", &anchor])?;
    c.wait("anchor.service wants dep.service", WAIT, || {
        Ok(c.fl.show(1, &anchor, "Wants").contains(&dep).then_some(()))
    })?;
    c.ok(&["unload", &dep])?;
    let link = format!("/run/systemd/system/{anchor}.wants/{dep}");
    c.wait("the wants link gone", WAIT, || {
        Ok(c.fl
            .lab
            .sh_ok(1, &["test", "!", "-e", &link])
            .ok()
            .map(drop))
    })
}

/// `restart` (v1.0.0 has it, as ours): a running unit runs again with a new main process.
fn restart_running(c: &Ctx) -> Outcome {
    let m = hello_running(c)?;
    let pid = c.fl.show(m, "hello.service", "MainPID");
    c.ok(&["restart", "--block-attempts=10", "hello.service"])?;
    c.wait("hello.service active with a new main process", WAIT, || {
        let now = c.fl.show(m, "hello.service", "MainPID");
        Ok(
            (c.fl.active_state(m, "hello.service") == "active" && now != pid && now != "0")
                .then_some(()),
        )
    })?;
    c.wait_active(1).map(drop)
}
