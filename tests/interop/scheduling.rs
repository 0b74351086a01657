//! The other scenarios of [`super::SCENARIOS`] (fleet's `functional/scheduling_test.go`,
//! `metadata_test.go`, `fleetctl_test.go`, `node_test.go`, `cluster_test.go`: placement, metadata,
//! version and help, machines leaving and joining, `[Install]`).

use super::*;

pub(super) fn machine_of(c: &Ctx) -> Outcome {
    ping_pong(c).map(drop)
}

pub(super) fn machine_of_moves(c: &Ctx) -> Outcome {
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

pub(super) fn schedule_conflicts(c: &Ctx) -> Outcome {
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

pub(super) fn one_way_conflict(c: &Ctx) -> Outcome {
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

pub(super) fn condition_machine_id(c: &Ctx) -> Outcome {
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

pub(super) fn global_units(c: &Ctx) -> Outcome {
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

pub(super) fn global_template(c: &Ctx) -> Outcome {
    c.file("global@.service", &sleeper("Global=true"));
    c.ok(&["submit", "global@.service"])?;
    c.ok(&["start", "--no-block", "global@1.service"])?;
    c.wait_active(3)?;
    c.wait("global@1.service in every machine", WAIT, || {
        Ok((c.fl.running_on("global@1.service").len() == 3).then_some(()))
    })
}

pub(super) fn schedule_replace(c: &Ctx) -> Outcome {
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
pub(super) fn circular_replace(c: &Ctx) -> Outcome {
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
pub(super) fn smoke_metadata(c: &Ctx) {
    for i in 1..=3 {
        c.fl.patch_metadata(i, "hostname", Some(&format!("smoke{i}")));
    }
    for i in 1..=3 {
        c.fl.wait_metadata(i, &format!("hostname=smoke{i}"));
    }
}

pub(super) fn templates_with_metadata(c: &Ctx) -> Outcome {
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

pub(super) fn metadata_no_match(c: &Ctx) -> Outcome {
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

pub(super) fn metadata_matching(c: &Ctx) -> Outcome {
    c.fl.patch_metadata(3, "region", Some("us"));
    c.fl.wait_metadata(3, "region=us");
    c.file("us.service", &sleeper("MachineMetadata=region=us"));
    c.ok(&["start", "us.service"])?;
    let a = c.wait_active(1)?;
    check!(a.get("us.service") == Some(&vec![c.machine_id(3)]), "{a:?}");
    Ok(())
}

/// What `--version` prints: "fleetctl version X"; X.
pub(super) fn version(c: &Ctx) -> Result<String, String> {
    let out = c.ok(&["--version"])?;
    let v = out
        .trim()
        .strip_prefix("fleetctl version ")
        .map(str::to_string);
    v.filter(|v| !v.is_empty() && !v.contains(char::is_whitespace))
        .ok_or_else(|| format!("--version printed {out:?}"))
}

pub(super) fn version_flag(c: &Ctx) -> Outcome {
    version(c).map(drop)
}

pub(super) fn version_help(c: &Ctx) -> Outcome {
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

pub(super) fn help_flag(c: &Ctx) -> Outcome {
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

pub(super) fn list_machines(c: &Ctx) -> Outcome {
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

pub(super) fn list_units_fields(c: &Ctx) -> Outcome {
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

pub(super) fn node_shutdown(c: &Ctx) -> Outcome {
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

pub(super) fn new_member_takes_units(c: &Ctx) -> Outcome {
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

pub(super) fn member_restart(c: &Ctx) -> Outcome {
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
pub(super) fn install_wanted_by(c: &Ctx) -> Outcome {
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
pub(super) fn restart_running(c: &Ctx) -> Outcome {
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
