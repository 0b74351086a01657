//! fleet-systemd against a real systemd 252 in a lab machine (root only; skipped otherwise).
//! The tests share one machine (they use distinct unit names) and inject no faults.

mod common;

use std::path::Path;

use common::{connect, states_until, wait_for};
use fleet_lab::{LabOptions, SharedLab};
use fleet_systemd::{ActiveState, Error, Event, JobResult, LoadState, SubState};

static LAB: SharedLab = SharedLab::new(1, || LabOptions::new().without_etcd());

const SLEEPER: &str = "[Unit]\nDescription=test sleeper\n[Service]\nExecStart=/bin/sleep 1000\n";

#[tokio::test]
async fn a_loaded_unit_starts_shows_running_with_its_main_pid_then_stops_and_unloads() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let sd = connect(&lab, 1).await;
    let name = "t-lifecycle.service";
    let mut events = sd.subscribe().await.unwrap();

    sd.load_unit(name, SLEEPER, false).await.unwrap();
    let local = sd.local_unit_file_path(name);
    assert_eq!(
        std::fs::read_to_string(&local).unwrap(),
        format!("{}\n{SLEEPER}", fleet_systemd::OWNER_MARKER)
    );
    assert_eq!(
        sd.unit_file_path(name),
        Path::new("/run/fleet/units/t-lifecycle.service")
    );
    assert_eq!(sd.unit_file_state(name).await.unwrap(), "linked-runtime");
    let st = sd.unit_state(name).await.unwrap();
    assert_eq!(
        (st.load_state, st.active_state, st.main_pid),
        (LoadState::Loaded, ActiveState::Inactive, None)
    );

    let job = sd.start_unit(name).await.unwrap();
    assert!(
        job.path.starts_with("/org/freedesktop/systemd1/job/") && job.id > 0,
        "{job:?}"
    );
    let seen = states_until(&mut events, name, |s| s.active_state == ActiveState::Active).await;
    let running = seen.last().unwrap();
    assert_eq!(running.sub_state, SubState::Running);
    assert_eq!(running.load_state, LoadState::Loaded);
    let pid = running.main_pid.expect("a running service has a main PID");
    // The PID is in the machine's pid namespace: ask the machine what it is.
    let comm = lab
        .sh_ok(1, &["cat", &format!("/proc/{pid}/comm")])
        .unwrap();
    assert_eq!(comm.trim(), "sleep");
    let st = sd.unit_state(name).await.unwrap();
    assert_eq!(st, *running, "a read agrees with the pushed state");
    let done = wait_for(
        &mut events,
        "JobRemoved of the start job",
        |e| matches!(e, Event::JobRemoved { job: j, .. } if *j == job.path),
    )
    .await;
    assert!(
        matches!(&done, Event::JobRemoved { unit, result: JobResult::Done, id, .. } if unit == name && *id == job.id),
        "{done:?}"
    );

    sd.stop_unit(name).await.unwrap();
    let seen = states_until(&mut events, name, |s| {
        s.active_state == ActiveState::Inactive
    })
    .await;
    let stopped = seen.last().unwrap();
    assert_eq!(
        (stopped.sub_state.as_str(), stopped.main_pid),
        ("dead", None)
    );

    sd.unload_unit(name).await.unwrap();
    assert!(!local.exists(), "unit file removed");
    let link = lab
        .machine_root(1)
        .unwrap()
        .join("run/systemd/system")
        .join(name);
    assert!(
        link.symlink_metadata().is_err(),
        "link removed: {}",
        link.display()
    );
    let st = sd.unit_state(name).await.unwrap();
    assert_eq!(
        (st.load_state, st.active_state),
        (LoadState::NotFound, ActiveState::Inactive)
    );
    assert!(matches!(sd.unit_file_state(name).await, Err(Error::NoSuchUnit(n)) if n == name));
    assert!(matches!(
        sd.start_unit(name).await,
        Err(Error::NoSuchUnit(_))
    ));
}

#[tokio::test]
async fn a_unit_with_an_install_section_is_enabled_at_runtime_and_disabled_on_unload() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let sd = connect(&lab, 1).await;
    let name = "t-install.service";
    let unit = format!("{SLEEPER}[Install]\nWantedBy=multi-user.target\n");
    assert!(fleet_systemd::has_install_section(&unit));
    sd.load_unit(name, &unit, true).await.unwrap();
    assert_eq!(sd.unit_file_state(name).await.unwrap(), "enabled-runtime");
    let wants = lab
        .machine_root(1)
        .unwrap()
        .join("run/systemd/system/multi-user.target.wants")
        .join(name);
    assert!(wants.symlink_metadata().is_ok(), "{}", wants.display());
    // Loading again (new contents) replaces the unit.
    let unit2 = unit.replace("sleep 1000", "sleep 2000");
    sd.load_unit(name, &unit2, true).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(sd.local_unit_file_path(name)).unwrap(),
        format!("{}\n{unit2}", fleet_systemd::OWNER_MARKER)
    );
    assert_eq!(sd.start_unit_and_wait(name).await.unwrap(), JobResult::Done);
    let cmdline = lab
        .sh_ok(
            1,
            &["systemctl", "show", "-p", "ExecStart", "--value", name],
        )
        .unwrap();
    assert!(cmdline.contains("2000"), "{cmdline}");
    assert_eq!(sd.stop_unit_and_wait(name).await.unwrap(), JobResult::Done);
    sd.unload_unit(name).await.unwrap();
    assert!(wants.symlink_metadata().is_err(), "wants link removed");
    assert!(matches!(
        sd.unit_file_state(name).await,
        Err(Error::NoSuchUnit(_))
    ));
}

#[tokio::test]
async fn missing_and_invalid_units_give_typed_errors() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let sd = connect(&lab, 1).await;
    let missing = "t-does-not-exist.service";
    assert!(matches!(sd.start_unit(missing).await, Err(Error::NoSuchUnit(n)) if n == missing));
    assert!(matches!(
        sd.stop_unit(missing).await,
        Err(Error::NoSuchUnit(_))
    ));
    assert!(matches!(
        sd.restart_unit(missing).await,
        Err(Error::NoSuchUnit(_))
    ));
    assert!(matches!(
        sd.start_unit_and_wait(missing).await,
        Err(Error::NoSuchUnit(_))
    ));
    assert!(matches!(
        sd.unit_file_state(missing).await,
        Err(Error::NoSuchUnit(_))
    ));
    let st = sd.unit_state(missing).await.unwrap();
    assert_eq!(st.load_state, LoadState::NotFound);
    for bad in ["../etc/passwd.service", "nosuffix", "a b.service"] {
        assert!(
            matches!(sd.load_unit(bad, SLEEPER, false).await, Err(Error::InvalidUnitName(n)) if n == bad)
        );
        assert!(matches!(
            sd.start_unit(bad).await,
            Err(Error::InvalidUnitName(_))
        ));
    }
    // Unloading something never loaded is not an error (idempotent).
    sd.unload_unit(missing).await.unwrap();
    // A failing start is a job result, not an error.
    let name = "t-fails.service";
    sd.load_unit(
        name,
        "[Service]\nType=oneshot\nExecStart=/bin/false\n",
        false,
    )
    .await
    .unwrap();
    assert_eq!(
        sd.start_unit_and_wait(name).await.unwrap(),
        JobResult::Failed
    );
    assert_eq!(
        sd.unit_state(name).await.unwrap().active_state,
        ActiveState::Failed
    );
    sd.unload_unit(name).await.unwrap();
    let _ = lab.sh(1, &["systemctl", "reset-failed", name]);
}

#[tokio::test]
async fn the_subscription_sees_changes_made_by_others_and_reloads() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let sd = connect(&lab, 1).await;
    let name = "t-others.service";
    sd.load_unit(name, SLEEPER, false).await.unwrap();
    let mut events = sd
        .subscribe_filtered(|n| n == "t-others.service")
        .await
        .unwrap();
    // Someone else (systemctl inside the machine) starts and kills it; we only listen.
    lab.sh_ok(1, &["systemctl", "start", name]).unwrap();
    let seen = states_until(&mut events, name, |s| s.sub_state == SubState::Running).await;
    let pid = seen.last().unwrap().main_pid.unwrap();
    lab.sh_ok(1, &["kill", "-KILL", &pid.to_string()]).unwrap();
    let seen = states_until(&mut events, name, |s| s.active_state == ActiveState::Failed).await;
    assert_eq!(seen.last().unwrap().main_pid, None);
    lab.sh_ok(1, &["systemctl", "daemon-reload"]).unwrap();
    // Only our unit's events pass the filter (a reload frees many unrelated unit objects).
    let ev = wait_for(&mut events, "Reloaded", |e| match e {
        Event::Reloaded => true,
        Event::UnitChanged { name: n, .. } | Event::UnitRemoved { name: n } => {
            assert_eq!(n, name, "filtered out");
            false
        }
        Event::JobRemoved { unit, .. } => {
            assert_eq!(unit, name, "filtered out");
            false
        }
        Event::Resync | Event::Disconnected => false,
    })
    .await;
    assert_eq!(ev, Event::Reloaded);
    lab.sh_ok(1, &["systemctl", "reset-failed", name]).unwrap();
    sd.unload_unit(name).await.unwrap();
    wait_for(
        &mut events,
        "UnitRemoved",
        |e| matches!(e, Event::UnitRemoved { name: n } if n == name),
    )
    .await;
}

#[tokio::test]
async fn list_fleet_units_reports_the_units_in_the_units_directory() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    // A directory of its own, so the other tests' units do not show up.
    let config_dir = "/run/fleet/units-list-test";
    let sd = fleet_systemd::Systemd::connect(
        fleet_systemd::Config::new(fleet_systemd::Bus::Address(lab.bus_address(1).unwrap()))
            .fs_root(lab.machine_root(1).unwrap())
            .units_directory(config_dir),
    )
    .await
    .unwrap();
    assert!(
        sd.list_fleet_units().await.unwrap().is_empty(),
        "no directory yet: no units"
    );
    sd.load_unit("t-list-b.service", SLEEPER, false)
        .await
        .unwrap();
    sd.load_unit("t-list-a.service", SLEEPER, false)
        .await
        .unwrap();
    assert_eq!(
        sd.start_unit_and_wait("t-list-b.service").await.unwrap(),
        JobResult::Done
    );
    let units = sd.list_fleet_units().await.unwrap();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["t-list-a.service", "t-list-b.service"]);
    assert_eq!(units[0].1.active_state, ActiveState::Inactive);
    assert_eq!(units[1].1.active_state, ActiveState::Active);
    assert!(units[1].1.main_pid.is_some());
    let restarted_from = units[1].1.main_pid;
    assert_eq!(
        sd.restart_unit_and_wait("t-list-b.service").await.unwrap(),
        JobResult::Done
    );
    let st = sd.unit_state("t-list-b.service").await.unwrap();
    assert!(
        st.main_pid.is_some() && st.main_pid != restarted_from,
        "restart gives a new process"
    );
    sd.stop_unit_and_wait("t-list-b.service").await.unwrap();
    for n in ["t-list-a.service", "t-list-b.service"] {
        sd.unload_unit(n).await.unwrap();
    }
    assert!(sd.list_fleet_units().await.unwrap().is_empty());
}

#[tokio::test]
async fn lazy_reload_loads_new_units_without_a_reload_and_reloads_changed_ones() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let sd = fleet_systemd::Systemd::connect(
        fleet_systemd::Config::new(fleet_systemd::Bus::Address(lab.bus_address(1).unwrap()))
            .fs_root(lab.machine_root(1).unwrap())
            .reload_policy(fleet_systemd::ReloadPolicy::WhenNeeded),
    )
    .await
    .unwrap();
    let name = "t-lazy.service";
    sd.load_unit(name, SLEEPER, false).await.unwrap();
    assert_eq!(
        sd.unit_state(name).await.unwrap().load_state,
        LoadState::Loaded
    );
    assert_eq!(sd.start_unit_and_wait(name).await.unwrap(), JobResult::Done);
    assert_eq!(
        sd.unit_state(name).await.unwrap().sub_state,
        SubState::Running
    );
    // New contents of a loaded unit: reloaded, so a restart runs the new command.
    sd.load_unit(name, &SLEEPER.replace("1000", "3000"), false)
        .await
        .unwrap();
    assert_eq!(
        sd.restart_unit_and_wait(name).await.unwrap(),
        JobResult::Done
    );
    let cmdline = lab
        .sh_ok(
            1,
            &["systemctl", "show", "-p", "ExecStart", "--value", name],
        )
        .unwrap();
    assert!(cmdline.contains("3000"), "{cmdline}");
    let stale = lab
        .sh_ok(
            1,
            &[
                "systemctl",
                "show",
                "-p",
                "NeedDaemonReload",
                "--value",
                name,
            ],
        )
        .unwrap();
    assert_eq!(stale.trim(), "no");
    sd.stop_unit_and_wait(name).await.unwrap();
    sd.unload_unit(name).await.unwrap();
}

#[tokio::test]
async fn units_fleet_did_not_write_are_left_alone_and_named_by_host_units() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let config_dir = "/run/fleet/units-owner-test";
    let sd = fleet_systemd::Systemd::connect(
        fleet_systemd::Config::new(fleet_systemd::Bus::Address(lab.bus_address(1).unwrap()))
            .fs_root(lab.machine_root(1).unwrap())
            .units_directory(config_dir),
    )
    .await
    .unwrap();
    let root = lab.machine_root(1).unwrap();
    // A file dropped into the units directory by hand, linked and started by hand.
    let stray = root.join("run/fleet/units-owner-test/t-stray.service");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, SLEEPER).unwrap();
    lab.sh_ok(
        1,
        &[
            "systemctl",
            "link",
            "--runtime",
            "/run/fleet/units-owner-test/t-stray.service",
        ],
    )
    .unwrap();
    lab.sh_ok(1, &["systemctl", "start", "t-stray.service"])
        .unwrap();
    // The machine's own unit in /etc.
    let host = root.join("etc/systemd/system/t-hostsvc.service");
    std::fs::write(&host, SLEEPER).unwrap();
    lab.sh_ok(1, &["systemctl", "daemon-reload"]).unwrap();

    assert!(!sd.owns("t-stray.service"));
    assert!(sd.list_fleet_units().await.unwrap().is_empty());
    assert!(matches!(
        sd.load_unit("t-stray.service", SLEEPER, false).await,
        Err(Error::NotFleets(_))
    ));
    assert!(matches!(
        sd.unload_unit("t-stray.service").await,
        Err(Error::NotFleets(_))
    ));
    assert_eq!(std::fs::read_to_string(&stray).unwrap(), SLEEPER);
    assert_eq!(
        sd.unit_state("t-stray.service").await.unwrap().active_state,
        ActiveState::Active
    );

    sd.load_unit("t-mine.service", SLEEPER, false)
        .await
        .unwrap();
    assert!(sd.owns("t-mine.service"));
    sd.start_unit_and_wait("t-mine.service").await.unwrap();
    let h = sd.host_units().await.unwrap();
    assert!(
        h.foreign("t-mine.service").is_none(),
        "fleet's own unit and link"
    );
    let why = h.foreign("t-stray.service").expect("a stray file");
    assert!(why.contains("did not write"), "{why}");
    let why = h.foreign("t-hostsvc.service").expect("a unit in /etc");
    assert!(
        why.contains("/etc/systemd/system/t-hostsvc.service"),
        "{why}"
    );
    assert!(h.foreign("dbus.service").is_some(), "a distro service");
    assert!(h.foreign("-.mount").is_some(), "a unit systemd made itself");
    assert!(h.foreign("t-nothing.service").is_none());

    sd.stop_unit_and_wait("t-mine.service").await.unwrap();
    sd.unload_unit("t-mine.service").await.unwrap();
    lab.sh_ok(1, &["systemctl", "stop", "t-stray.service"])
        .unwrap();
    lab.sh_ok(1, &["systemctl", "disable", "--runtime", "t-stray.service"])
        .unwrap();
    std::fs::remove_file(&stray).unwrap();
    std::fs::remove_file(&host).unwrap();
    lab.sh_ok(1, &["systemctl", "daemon-reload"]).unwrap();
}

/// Issue 13, case 5 (and the name half of deliver 2): every name the one validator
/// (`fleet_sched::UnitName`) accepts is one systemd loads. Names are drawn from the validator's whole
/// alphabet (letters, digits, `:` `-` `_` `.` `\` and `@` where a type may be a template), at every
/// length up to the 255-byte maximum, for the unit types whose names mean nothing more than a name;
/// each is loaded as the agent loads it (`load_unit`: the file written, linked, systemd reloaded) with
/// a minimal valid body of its type, and systemd must report it `loaded`. The API refused such names
/// before, or accepted ones that then failed to load on every pass (a leading `.`, 256 bytes). This test
/// found two more: a 255-byte socket (its .service would be 256 bytes) and an instance whose template's
/// slice name (`system-<escaped prefix>.slice`) is over 255 bytes; the validator now refuses both.
///
/// Not drawn: `.mount`, `.automount` and `.swap` (the name is an escaped path that must match
/// `Where=`/`What=`, a property of the unit file, not of the name), `.device` and `.scope` (systemd
/// creates those units itself; a unit file cannot start one).
#[tokio::test]
async fn every_name_the_validator_accepts_loads_in_systemd() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let sd = connect(&lab, 1).await;
    let bodies: &[(&str, &str)] = &[
        ("service", "[Service]\nExecStart=/bin/sleep 1000\n"),
        ("socket", "[Socket]\nListenFIFO=/run/t-names.fifo\n"),
        ("target", "[Unit]\nDescription=t\n"),
        ("timer", "[Timer]\nOnActiveSec=1h\n"),
        ("path", "[Path]\nPathExists=/run/t-names-nothing\n"),
        ("slice", "[Unit]\nDescription=t\n"),
    ];
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    const PLAIN: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-_.\\";
    let mut names = Vec::new();
    for round in 0..6 {
        for (suffix, _) in bodies {
            let templated = fleet_sched::name::TEMPLATE_SUFFIXES.contains(suffix);
            // Lengths: short, medium, and up to the maximum (the last rounds end exactly at 255 bytes).
            // A socket, timer or path leaves room for the .service of its name (a rule of the
            // validator this test found: systemd failed to load a 255-byte socket).
            let max = if fleet_sched::name::TRIGGERS_SERVICE.contains(suffix) {
                fleet_sched::name::MAX_NAME_LEN - ("service".len() - suffix.len())
            } else {
                fleet_sched::name::MAX_NAME_LEN
            };
            let total = match round {
                0..=1 => 2 + next(20),
                2..=3 => 20 + next(200),
                _ => max,
            };
            let stem_len = total.saturating_sub(suffix.len() + 1).max(1);
            let mut stem: Vec<u8> = (0..stem_len).map(|_| PLAIN[next(PLAIN.len())]).collect();
            if *suffix == "slice" {
                // A slice's name is its place in the hierarchy: `a-b.slice` is in `a.slice`, and
                // systemd refuses empty parts (a leading, trailing or doubled `-`).
                for i in 0..stem.len() {
                    let prev_dash = i > 0 && stem[i - 1] == b'-';
                    let edge = i == 0 || i + 1 == stem.len();
                    if stem[i] == b'-' && (prev_dash || edge) {
                        stem[i] = b'x';
                    }
                }
            }
            if stem[0] == b'.' {
                stem[0] = b'a';
            }
            if templated && round % 2 == 1 && stem.len() > 2 {
                // An instance: `prefix@instance` (the instance may hold more `@`).
                let at = 1 + next(stem.len() - 2);
                stem[at] = b'@';
                if stem.len() > at + 3 && round == 5 {
                    stem[at + 2] = b'@';
                }
            }
            let name = format!("{}.{suffix}", String::from_utf8(stem).unwrap());
            names.push(name);
        }
    }
    // The edges of the length rules: 255 bytes, and an instance whose template's slice
    // (system-<escaped prefix>.slice) is exactly 255 bytes.
    names.push(format!("{}.service", "s".repeat(247)));
    names.push(format!("{}@i.service", "p".repeat(242)));
    names.push(format!("{}@i.socket", "a\\".repeat(48)));
    names.push(format!("{}.socket", "k".repeat(247)));
    let mut failed = Vec::new();
    let mut loaded = 0;
    for name in &names {
        // The property: whatever the validator accepts loads. Drawn names it refuses are skipped.
        let Ok(parsed) = fleet_sched::UnitName::parse(name) else {
            continue;
        };
        if parsed.is_template() {
            continue;
        }
        loaded += 1;
        let suffix = parsed.suffix();
        let body = bodies.iter().find(|(s, _)| *s == suffix).unwrap().1;
        if let Err(e) = sd.load_unit(name, body, false).await {
            failed.push(format!("{name} ({} bytes): load_unit: {e}", name.len()));
            continue;
        }
        let st = sd.unit_state(name).await.unwrap();
        if st.load_state != LoadState::Loaded {
            failed.push(format!(
                "{name} ({} bytes): {:?}",
                name.len(),
                st.load_state
            ));
        }
        sd.unload_unit(name).await.unwrap();
    }
    assert!(
        loaded >= 30,
        "only {loaded} of {} names accepted",
        names.len()
    );
    assert!(
        failed.is_empty(),
        "systemd refused names fleet accepts:\n{}",
        failed.join("\n")
    );
}

/// A batch loads, enables, starts and unloads many units with one call of each kind; a unit of the
/// batch that fleet did not write, or with a bad name, fails alone and is left untouched.
#[tokio::test]
async fn batches_load_start_and_unload_many_units_and_a_bad_one_fails_alone() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let config_dir = "/run/fleet/units-batch-test";
    let sd = fleet_systemd::Systemd::connect(
        fleet_systemd::Config::new(fleet_systemd::Bus::Address(lab.bus_address(1).unwrap()))
            .fs_root(lab.machine_root(1).unwrap())
            .units_directory(config_dir)
            .reload_policy(fleet_systemd::ReloadPolicy::WhenNeeded),
    )
    .await
    .unwrap();
    let root = lab.machine_root(1).unwrap();
    // Not fleet's: a file put into the units directory by hand.
    let stray = root.join("run/fleet/units-batch-test/t-batch-stray.service");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, SLEEPER).unwrap();
    let installed = "[Service]\nExecStart=/bin/sleep 1000\n[Install]\nWantedBy=multi-user.target\n";
    let names: Vec<String> = (0..20).map(|i| format!("t-batch-{i}.service")).collect();
    let mut specs: Vec<fleet_systemd::LoadSpec> = names
        .iter()
        .enumerate()
        .map(|(i, n)| fleet_systemd::LoadSpec {
            name: n,
            contents: if i < 2 { installed } else { SLEEPER },
            enable: i < 2,
        })
        .collect();
    specs.insert(
        5,
        fleet_systemd::LoadSpec {
            name: "t-batch-stray.service",
            contents: SLEEPER,
            enable: false,
        },
    );
    specs.insert(
        9,
        fleet_systemd::LoadSpec {
            name: "../t-batch-evil.service",
            contents: SLEEPER,
            enable: false,
        },
    );
    let results = sd.load_units(&specs).await.unwrap();
    assert_eq!(results.len(), specs.len());
    for (spec, r) in specs.iter().zip(&results) {
        match spec.name {
            "t-batch-stray.service" => assert!(matches!(r, Err(Error::NotFleets(_))), "{r:?}"),
            "../t-batch-evil.service" => assert!(r.is_err(), "{r:?}"),
            n => assert!(r.is_ok(), "{n}: {r:?}"),
        }
    }
    assert_eq!(
        std::fs::read_to_string(&stray).unwrap(),
        SLEEPER,
        "the stray file is untouched"
    );
    assert_eq!(
        sd.unit_file_state("t-batch-0.service").await.unwrap(),
        "enabled-runtime"
    );
    assert_eq!(
        sd.unit_file_state("t-batch-7.service").await.unwrap(),
        "linked-runtime"
    );
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for r in sd.start_units(&refs).await {
        r.unwrap();
    }
    for n in &names {
        let mut st = sd.unit_state(n).await.unwrap();
        for _ in 0..300 {
            if st.active_state == ActiveState::Active {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            st = sd.unit_state(n).await.unwrap();
        }
        assert_eq!(
            (st.active_state, st.sub_state.as_str()),
            (ActiveState::Active, "running"),
            "{n}"
        );
    }
    for n in &names {
        sd.stop_unit_and_wait(n).await.unwrap();
    }
    let mut unload = refs.clone();
    unload.push("t-batch-stray.service");
    let results = sd.unload_units(&unload).await.unwrap();
    for (n, r) in unload.iter().zip(&results) {
        if *n == "t-batch-stray.service" {
            assert!(matches!(r, Err(Error::NotFleets(_))), "{r:?}");
        } else {
            assert!(r.is_ok(), "{n}: {r:?}");
            assert!(!sd.local_unit_file_path(n).exists(), "{n} file left");
            assert_eq!(
                sd.unit_state(n).await.unwrap().load_state,
                LoadState::NotFound,
                "{n}"
            );
        }
    }
    assert!(stray.exists(), "the stray file is left alone");
    std::fs::remove_file(&stray).unwrap();
}

#[tokio::test]
async fn a_consumer_that_falls_behind_gets_a_resync_first_then_newer_events() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = LAB.get().unwrap();
    let sd = connect(&lab, 1).await;
    let names: Vec<String> = (0..4).map(|i| format!("t-backlog-{i}.service")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for n in &refs {
        sd.load_unit(n, SLEEPER, false).await.unwrap();
    }
    // Room for 2 events, and nobody reads while 4 units start: 4 job results and 4 states.
    let mut events = sd
        .subscribe_with_backlog(|n| n.starts_with("t-backlog-"), 2)
        .await
        .unwrap();
    for r in sd.start_units(&refs).await {
        r.unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let states = sd.list_unit_states(&refs).await.unwrap();
        assert!(states.iter().all(|(_, s)| s.main_pid.is_none()));
        if states
            .iter()
            .all(|(_, s)| s.active_state == ActiveState::Active)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all active: {states:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The signals of the starts came before the reply above; give the subscription's tasks time to
    // take them.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        events.try_next(),
        Some(Event::Resync),
        "the queue overflowed"
    );
    let mut rest = Vec::new();
    while let Some(ev) = events.try_next() {
        rest.push(ev);
    }
    assert!(rest.len() <= 2, "bounded: {rest:?}");
    // It still follows the units afterwards. Other tests' reloads (`Reloaded` passes every filter) can
    // overflow a queue of 2 again: then the `Resync` means "read the state".
    sd.stop_unit(&names[0]).await.unwrap();
    let follow = async {
        loop {
            match events.next().await.expect("the subscription ended") {
                Event::UnitChanged { name, state }
                    if name == names[0] && state.active_state == ActiveState::Inactive =>
                {
                    return state;
                }
                Event::Resync => {
                    let state = sd.unit_state(&names[0]).await.unwrap();
                    if state.active_state == ActiveState::Inactive {
                        return state;
                    }
                }
                _ => {}
            }
        }
    };
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), follow)
        .await
        .expect("the stop was neither reported nor followed by a Resync within 10 s");
    assert_eq!(stopped.sub_state, SubState::Dead);
    for n in &refs {
        sd.stop_unit_and_wait(n).await.unwrap();
        sd.unload_unit(n).await.unwrap();
    }
}
