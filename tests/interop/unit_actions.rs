//! The unit-action scenarios of [`super::SCENARIOS`] (fleet's `functional/unit_action_test.go`: units
//! submitted, loaded, started, replaced, restarted and destroyed, the SSH verbs).

use super::*;

pub(super) fn unit_runnable(c: &Ctx) -> Outcome {
    c.file("hello.service", HELLO);
    c.ok(&["start", "hello.service"])?;
    let active = c.wait_active(1)?;
    check!(active.contains_key("hello.service"), "{active:?}");
    Ok(())
}

pub(super) fn instances(c: &Ctx, n: usize, fmt: fn(usize) -> String) -> Vec<String> {
    (1..=n).map(|i| c.file(&fmt(i), HELLO)).collect()
}

/// fleet's doMultipleUnitsCmd: `cmd` on n units in one call, check the list, undo each, check, again.
pub(super) fn multiple_units(c: &Ctx, cmd: &str, undo: &str, n: usize) -> Outcome {
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

pub(super) fn unit_submit(c: &Ctx) -> Outcome {
    multiple_units(c, "submit", "destroy", 9)
}

pub(super) fn unit_submit_twice(c: &Ctx) -> Outcome {
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

pub(super) fn unit_load(c: &Ctx) -> Outcome {
    multiple_units(c, "load", "unload", 6)
}

pub(super) fn unit_start(c: &Ctx) -> Outcome {
    multiple_units(c, "start", "stop", 3)
}

/// fleet's replaceUnitCommon: `cmd` 3 units, then `cmd --replace` each with a new body; `cat` shows
/// the new body (and for start, systemd runs the new command).
pub(super) fn replace_common(c: &Ctx, cmd: &str) -> Outcome {
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
pub(super) fn hello_running(c: &Ctx) -> Result<usize, String> {
    c.file("hello.service", HELLO);
    c.ok(&["start", "--no-block", "hello.service"])?;
    let a = c.wait_active(1)?;
    let id = a.get("hello.service").and_then(|m| m.first()).cloned();
    id.as_deref()
        .and_then(|id| c.index_of(id))
        .ok_or_else(|| format!("hello.service's machine: {a:?}"))
}

/// The SSH flags fleet's tests pass, for the lab's sshd.
pub(super) fn ssh_flags(c: &Ctx) -> Result<[&'static str; 5], String> {
    check!(c.ssh, "no sshd in the lab (needs /usr/sbin/sshd)");
    Ok([
        "--strict-host-key-checking=false",
        "--ssh-username",
        "root",
        "--ssh-port",
        crate::SSH_PORT,
    ])
}

/// `--strict-host-key-checking=false VERB --ssh-port P rest...` (the port is a verb flag in v1.0.0).
pub(super) fn remote(c: &Ctx, verb: &str, rest: &[&str]) -> Result<Run, String> {
    let f = ssh_flags(c)?;
    let mut args = vec![f[0], f[1], f[2], verb, f[3], f[4]];
    args.extend_from_slice(rest);
    Ok(c.run(&args))
}

pub(super) fn ssh_actions_ssh(c: &Ctx) -> Outcome {
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

pub(super) fn ssh_actions_status(c: &Ctx) -> Outcome {
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

pub(super) fn ssh_actions_journal(c: &Ctx) -> Outcome {
    ssh_flags(c)?;
    hello_running(c)?;
    c.wait("Hello, World! in the journal", WAIT, || {
        let r = remote(c, "journal", &["hello.service"])?;
        Ok((r.code == Some(0) && r.out.contains("Hello, World!")).then_some(()))
    })
}

pub(super) fn unit_cat(c: &Ctx) -> Outcome {
    c.file("hello.service", HELLO);
    c.ok(&["submit", "hello.service"])?;
    c.wait_unit_files(1)?;
    let out = c.ok(&["cat", "hello.service"])?;
    check!(out.trim() == HELLO.trim(), "cat: {out:?}");
    Ok(())
}

pub(super) fn unit_status(c: &Ctx) -> Outcome {
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

pub(super) fn list_unit_files_order(c: &Ctx) -> Outcome {
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

pub(super) fn replace_serialization(c: &Ctx) -> Outcome {
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

pub(super) fn unit_restart(c: &Ctx) -> Outcome {
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

pub(super) fn unit_destroy_running(c: &Ctx) -> Outcome {
    let m = hello_running(c)?;
    c.ok(&["destroy", "hello.service"])?;
    c.wait_unit_files(0)?;
    c.wait("hello.service gone from its machine", WAIT, || {
        Ok((c.fl.show(m, "hello.service", "LoadState") == "not-found").then_some(()))
    })
}

pub(super) fn no_block_verbs(c: &Ctx) -> Outcome {
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

pub(super) fn ping_pong(c: &Ctx) -> Result<BTreeMap<String, Vec<String>>, String> {
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
