//! End-to-end: fleetd agents drive real systemd in a cluster-lab cluster (root only).

mod lab;

use std::time::Duration;

use lab::FleetLab;

const WAIT: Duration = Duration::from_secs(20);

fn unit_line(fl: &FleetLab, i: usize, cmd: &str, unit: &str) -> Option<String> {
    let out = fl.fleetctl(i, &[cmd, "--no-legend", "--full"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(unit))
        .map(str::to_string)
}

#[test]
fn a_unit_goes_through_its_whole_life_on_real_systemd() {
    let Some(fl) = FleetLab::up(3, &[]) else {
        return;
    };
    let m2 = fl.machine_id(2);
    let unit = format!(
        "[Unit]\nDescription=life\n\n[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nMachineID={m2}\n"
    );
    fl.write_file(1, "/tmp/life.service", &unit);

    let out = fl.fleetctl_ok(1, &["submit", "/tmp/life.service"]);
    assert!(out.contains("Unit life.service inactive"), "{out}");
    assert_eq!(fl.active_state(2, "life.service"), "inactive");

    let out = fl.fleetctl_ok(1, &["load", "life.service"]);
    assert!(out.contains("Unit life.service loaded on"), "{out}");
    assert!(out.contains("10.77.0.12"), "loaded on m2: {out}");
    assert_eq!(fl.show(2, "life.service", "LoadState"), "loaded");
    assert_eq!(
        fl.show(2, "life.service", "UnitFileState"),
        "linked-runtime"
    );
    assert_eq!(fl.active_state(2, "life.service"), "inactive");

    let out = fl.fleetctl_ok(1, &["start", "life.service"]);
    assert!(out.contains("Unit life.service launched on"), "{out}");
    assert_eq!(fl.active_state(2, "life.service"), "active");
    // list-units on the machine running it shows systemd's state.
    let line = fl.wait_for("list-units shows life.service running", WAIT, |fl| {
        unit_line(fl, 2, "list-units", "life.service").filter(|l| l.contains("running"))
    });
    assert!(line.contains(&m2) && line.contains("active"), "{line}");
    let line = unit_line(&fl, 1, "list-unit-files", "life.service").expect("listed");
    assert!(line.contains("launched"), "{line}");

    fl.fleetctl_ok(1, &["stop", "life.service"]);
    fl.wait_for("life.service stopped on m2", WAIT, |fl| {
        (fl.active_state(2, "life.service") == "inactive").then_some(())
    });
    assert_eq!(fl.show(2, "life.service", "LoadState"), "loaded");

    fl.fleetctl_ok(1, &["unload", "life.service"]);
    fl.wait_for("life.service unloaded on m2", WAIT, |fl| {
        (fl.show(2, "life.service", "LoadState") == "not-found").then_some(())
    });

    let out = fl.fleetctl_ok(1, &["destroy", "life.service"]);
    assert!(out.contains("Destroyed life.service"), "{out}");
    assert!(unit_line(&fl, 1, "list-unit-files", "life.service").is_none());
}

#[test]
fn replacing_a_unit_restarts_it_with_the_new_content_and_destroy_stops_it() {
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    let m1 = fl.machine_id(1);
    let v1 = format!("[Service]\nExecStart=/bin/sleep 1001\n\n[X-Fleet]\nMachineID={m1}\n");
    let v2 = format!("[Service]\nExecStart=/bin/sleep 1002\n\n[X-Fleet]\nMachineID={m1}\n");
    fl.write_file(1, "/tmp/r.service", &v1);
    fl.fleetctl_ok(1, &["start", "/tmp/r.service"]);
    assert!(fl.show(1, "r.service", "ExecStart").contains("1001"));
    let pid1 = fl.show(1, "r.service", "MainPID");

    fl.write_file(1, "/tmp/r.service", &v2);
    fl.fleetctl_ok(1, &["start", "--replace", "/tmp/r.service"]);
    fl.wait_for("r.service runs the new content", WAIT, |fl| {
        (fl.show(1, "r.service", "ExecStart").contains("1002")
            && fl.active_state(1, "r.service") == "active")
            .then_some(())
    });
    assert_ne!(fl.show(1, "r.service", "MainPID"), pid1);

    fl.fleetctl_ok(1, &["destroy", "r.service"]);
    fl.wait_for("r.service gone from m1", WAIT, |fl| {
        (fl.show(1, "r.service", "LoadState") == "not-found").then_some(())
    });
}

#[test]
fn a_crashed_fleetd_comes_back_without_touching_running_units() {
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    fl.fleetctl_ok(1, &["start", "/opt/fleet/examples/hello.service"]);
    let on = fl.wait_for("hello.service running somewhere", WAIT, |fl| {
        let r = fl.running_on("hello.service");
        (r.len() == 1).then(|| r[0])
    });
    let pid = fl.show(on, "hello.service", "MainPID");
    let since = fl.show(on, "hello.service", "ActiveEnterTimestampMonotonic");
    let fleetd = fl.show(on, "fleet.service", "MainPID");

    // SIGKILL: systemd restarts fleetd (Restart=always); the new agent adopts what runs.
    fl.lab
        .sh_ok(on, &["systemctl", "kill", "-s", "KILL", "fleet.service"])
        .unwrap();
    fl.wait_for("fleetd restarted", WAIT, |fl| {
        let now = fl.show(on, "fleet.service", "MainPID");
        (now != fleetd && now != "0" && fl.active_state(on, "fleet.service") == "active")
            .then_some(())
    });
    // Give the new agent a few reconcile passes.
    fl.wait_for("the new fleetd answers", WAIT, |fl| {
        unit_line(fl, on, "list-units", "hello.service").filter(|l| l.contains("running"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fl.show(on, "hello.service", "MainPID"), pid);
    assert_eq!(
        fl.show(on, "hello.service", "ActiveEnterTimestampMonotonic"),
        since
    );
    assert_eq!(fl.running_on("hello.service"), vec![on]);

    // `systemctl restart fleet`: SIGTERM with a restart job queued; the units stay.
    let fleetd = fl.show(on, "fleet.service", "MainPID");
    fl.lab
        .sh_ok(on, &["systemctl", "restart", "fleet.service"])
        .unwrap();
    assert_ne!(fl.show(on, "fleet.service", "MainPID"), fleetd);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(fl.show(on, "hello.service", "MainPID"), pid);
    assert_eq!(fl.running_on("hello.service"), vec![on]);

    // `systemctl stop fleet` is a leave: the machine's units stop and move elsewhere.
    fl.lab
        .sh_ok(on, &["systemctl", "stop", "fleet.service"])
        .unwrap();
    assert_eq!(fl.active_state(on, "hello.service"), "inactive");
    fl.wait_for("hello.service moved to the other machine", WAIT, |fl| {
        let r = fl.running_on("hello.service");
        (r.len() == 1 && r[0] != on).then_some(())
    });
}

#[test]
fn a_dead_machines_unit_is_started_on_another_machine() {
    let Some(fl) = FleetLab::up(3, &[]) else {
        return;
    };
    fl.fleetctl_ok(1, &["start", "/opt/fleet/examples/hello.service"]);
    let on = fl.wait_for("hello.service running somewhere", WAIT, |fl| {
        let r = fl.running_on("hello.service");
        (r.len() == 1).then(|| r[0])
    });
    fl.lab.kill(on).unwrap();
    let other = if on == 1 { 2 } else { 1 };
    let now = fl.wait_for("hello.service running on a survivor", WAIT, |fl| {
        let r = fl.running_on("hello.service");
        (r.len() == 1 && r[0] != on).then(|| r[0])
    });
    let line = unit_line(&fl, other, "list-unit-files", "hello.service").unwrap();
    assert!(line.contains(&fl.machine_id(now)), "{line}");
}

#[test]
fn units_with_an_install_section_are_enabled_at_runtime_and_disabled_when_unloaded() {
    let Some(fl) = FleetLab::up(1, &[]) else {
        return;
    };
    let sh = |cmd: &str| {
        let out = fl.lab.sh(1, &["sh", "-c", cmd]).expect("sh in the lab");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // z.service is the machine's own unit, not fleet's: only x's `Also=` enables it.
    fl.write_file(
        1,
        "/etc/systemd/system/z.service",
        "[Service]\nExecStart=/bin/sleep 1000\n\n[Install]\nWantedBy=anchor.service\n",
    );
    sh("systemctl daemon-reload");
    assert_eq!(sh("systemctl is-enabled z.service"), "disabled");
    fl.write_file(
        1,
        "/tmp/anchor.service",
        "[Service]\nExecStart=/bin/sleep 1000\n",
    );
    // x runs once and exits; starting anchor.service (which wants it) runs it again.
    fl.write_file(
        1,
        "/tmp/x.service",
        "[Service]\nType=oneshot\nExecStart=/bin/sh -c 'echo run >> /run/x.count'\n\n\
         [Install]\nWantedBy=anchor.service\nAlso=z.service\n",
    );
    fl.write_file(
        1,
        "/tmp/y.service",
        "[Service]\nExecStart=/bin/sleep 1000\n\n[Install]\nRequiredBy=anchor.service\n",
    );
    fl.fleetctl_ok(1, &["load", "/tmp/anchor.service"]);
    fl.fleetctl_ok(
        1,
        &["start", "--no-block", "/tmp/x.service", "/tmp/y.service"],
    );
    fl.wait_for("x ran once and y runs", WAIT, |fl| {
        (sh("cat /run/x.count 2>/dev/null | wc -l") == "1"
            && fl.active_state(1, "y.service") == "active")
            .then_some(())
    });
    for u in ["x.service", "y.service", "z.service"] {
        assert_eq!(
            sh(&format!("systemctl is-enabled {u}")),
            "enabled-runtime",
            "{u}"
        );
    }
    let wants = fl.show(1, "anchor.service", "Wants");
    assert!(
        wants.contains("x.service") && wants.contains("z.service"),
        "{wants}"
    );
    assert!(fl
        .show(1, "anchor.service", "Requires")
        .contains("y.service"));

    // Starting anchor pulls in what is enabled for it.
    fl.fleetctl_ok(1, &["start", "anchor.service"]);
    fl.wait_for("x ran again and z runs", WAIT, |fl| {
        (sh("cat /run/x.count | wc -l") == "2" && fl.active_state(1, "z.service") == "active")
            .then_some(())
    });

    // Unloading disables (x's Also= goes with it); destroying too.
    fl.fleetctl_ok(1, &["unload", "x.service"]);
    fl.fleetctl_ok(1, &["destroy", "y.service"]);
    fl.wait_for("x and y disabled", WAIT, |fl| {
        let wants = fl.show(1, "anchor.service", "Wants");
        let requires = fl.show(1, "anchor.service", "Requires");
        (!wants.contains("x.service") && !requires.contains("y.service")).then_some(())
    });
    assert_eq!(sh("ls /run/systemd/system/anchor.service.wants /run/systemd/system/anchor.service.requires 2>/dev/null"), "");
    assert_eq!(sh("systemctl is-enabled z.service"), "disabled");
}

/// Many units at once: the agent loads a pass's units as one batch (one `LinkUnitFiles`, one
/// `EnableUnitFiles`, at most one reload) and queues their starts pipelined; every one becomes active,
/// the ones with an `[Install]` section are enabled at runtime, and destroying them all stops and
/// unloads them all (one batched unload). No timing is checked here (see `systemd/examples/bulk.rs`).
#[test]
fn two_hundred_units_started_at_once_all_become_active_and_all_unload() {
    const N: usize = 200;
    let Some(fl) = FleetLab::up(1, &[]) else {
        return;
    };
    let sh = |cmd: &str| {
        let out = fl.lab.sh(1, &["sh", "-c", cmd]).expect("sh in the lab");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    sh(&format!(
        "mkdir -p /tmp/bulk && for i in $(seq 1 {N}); do \
         printf '[Service]\\nExecStart=/bin/sleep 100000\\n' > /tmp/bulk/bulk-$i.service; done; \
         for i in 1 2 3; do \
         printf '[Service]\\nExecStart=/bin/sleep 100000\\n\\n[Install]\\nWantedBy=multi-user.target\\n' \
         > /tmp/bulk/bulk-$i.service; done"
    ));
    let files: Vec<String> = (1..=N)
        .map(|i| format!("/tmp/bulk/bulk-{i}.service"))
        .collect();
    let mut args = vec!["start", "--no-block"];
    args.extend(files.iter().map(String::as_str));
    fl.fleetctl_ok(1, &args);
    let active = || sh("systemctl list-units 'bulk-*' --state=active --no-legend | wc -l");
    // systemd first, then what fleet reports (the agent's states lag systemd's by a pass or so).
    fl.wait_for(
        &format!("{N} units active"),
        Duration::from_secs(240),
        |_| (active() == N.to_string()).then_some(()),
    );
    fl.wait_for(
        &format!("{N} units running in fleetctl list-units"),
        Duration::from_secs(60),
        |fl| {
            let out = fl.fleetctl(1, &["list-units", "--no-legend"]);
            let listed = String::from_utf8_lossy(&out.stdout);
            (listed.lines().filter(|l| l.contains("running")).count() == N).then_some(())
        },
    );
    for i in 1..=3 {
        assert_eq!(
            sh(&format!("systemctl is-enabled bulk-{i}.service")),
            "enabled-runtime",
            "bulk-{i}"
        );
    }
    assert_eq!(
        fl.show(1, &format!("bulk-{N}.service"), "UnitFileState"),
        "linked-runtime"
    );

    let mut args = vec!["destroy"];
    let names: Vec<String> = (1..=N).map(|i| format!("bulk-{i}.service")).collect();
    args.extend(names.iter().map(String::as_str));
    fl.fleetctl_ok(1, &args);
    fl.wait_for(
        "every unit stopped and unloaded",
        Duration::from_secs(180),
        |_| (active() == "0" && sh("ls /run/fleet/units | grep -c '^bulk-'") == "0").then_some(()),
    );
    assert_eq!(
        sh("ls /run/systemd/system/multi-user.target.wants/ | grep -c '^bulk-'"),
        "0",
        "runtime enablement left behind"
    );
}
