//! End-to-end against hostile input and clumsy operators (root only): garbage in etcd never stops a
//! healthy unit, and fleet never shadows, stops or relays for a unit it did not create.

mod lab;

use std::time::Duration;

use lab::FleetLab;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `etcdctl ARGS` in the lab's hub with `value_cmd`'s output as stdin (the value of a `put`).
fn etcdctl_stdin(fl: &FleetLab, value_cmd: &str, args: &str) -> String {
    let cmd =
        format!("{value_cmd} | ETCDCTL_API=3 etcdctl --endpoints=http://10.77.0.1:2379 {args}");
    let out = fl.lab.hub(&["sh", "-c", &cmd]).expect("etcdctl in the hub");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn etcd_get(fl: &FleetLab, key: &str) -> String {
    fl.lab
        .etcdctl(&["get", "--print-value-only", key])
        .expect("etcdctl get")
        .trim_end_matches('\n')
        .to_string()
}

/// The lease (decimal) `key` is bound to, 0 for none.
fn etcd_lease(fl: &FleetLab, key: &str) -> i64 {
    let json = fl
        .lab
        .etcdctl(&["get", key, "-w", "json"])
        .expect("etcdctl get -w json");
    let v: serde_json::Value = serde_json::from_str(&json).expect("etcdctl's json");
    v["kvs"][0]["lease"].as_i64().unwrap_or(0)
}

fn put(fl: &FleetLab, key: &str, value: &str) {
    let quoted = value.replace('\'', r"'\''");
    etcdctl_stdin(
        fl,
        &format!("printf '%s' '{quoted}'"),
        &format!("put {key}"),
    );
}

fn curl(fl: &FleetLab, i: usize, path: &str) -> String {
    fl.api(i, "GET", path, None, 20).1
}

/// The `fleet_registry_damaged_keys` samples of machine `i`'s metrics with a non-zero value.
fn damaged_metrics(fl: &FleetLab, i: usize) -> Vec<String> {
    curl(fl, i, "/metrics")
        .lines()
        .filter(|l| l.starts_with("fleet_registry_damaged_keys{") && !l.ends_with(" 0"))
        .map(str::to_string)
        .collect()
}

/// Random bytes, a bogus desired state, `[Service` as the unit file, `garbage` in the claim (bound to
/// the holder's lease, then to no lease): the unit keeps running with the same main process, the unit is
/// listed as damaged while it lasts, and everything recovers when the key is fixed. A unit whose claim
/// key holds garbage bound to no lease before it was ever claimed still starts.
#[test]
// long: one lab scenario: each kind of garbage written over the same running unit's keys in turn
fn garbage_in_etcd_never_stops_a_running_unit() {
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    let m1 = fl.machine_id(1);
    let unit = format!("[Service]\nExecStart=/bin/sleep 100000\n\n[X-Fleet]\nMachineID={m1}\n");
    fl.write_file(1, "/tmp/g.service", &unit);
    fl.fleetctl_ok(1, &["start", "/tmp/g.service"]);
    fl.wait_for("g.service active on m1", WAIT, |fl| {
        (fl.active_state(1, "g.service") == "active").then_some(())
    });
    let pid = fl.show(1, "g.service", "MainPID");
    let record_key = "/fleet/units/g.service";
    let claim_key = "/fleet/claims/g.service";
    let record = etcd_get(&fl, record_key);
    let hash = serde_json::from_str::<serde_json::Value>(&record).unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let file_key = format!("/fleet/unit-files/{hash}");
    let file = etcd_get(&fl, &file_key);
    let claim = etcd_get(&fl, claim_key);
    let lease = etcd_lease(&fl, claim_key);
    assert_ne!(lease, 0);

    let unchanged = |fl: &FleetLab, what: &str| {
        // The old code stopped the unit within a second; give the agents several passes.
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(fl.active_state(1, "g.service"), "active", "{what}");
        assert_eq!(fl.show(1, "g.service", "MainPID"), pid, "{what}");
        assert!(fl.running_on("g.service") == vec![1], "{what}");
    };
    let listed_damaged = |fl: &FleetLab, what: &str| {
        let out = fl.fleetctl(1, &["list-unit-files", "--no-legend"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find(|l| l.starts_with("g.service"))
            .unwrap_or_else(|| panic!("{what}: g.service not listed: {stdout}"))
            .to_string();
        (
            line.contains("(damaged)"),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    type Damage<'a> = Box<dyn Fn(&FleetLab) + 'a>;
    let cases: [(&str, &str, Damage); 4] = [
        (
            "random bytes in the unit record",
            record_key,
            Box::new(|fl| {
                etcdctl_stdin(
                    fl,
                    "head -c 64 /dev/urandom | tr -d '\\000'",
                    &format!("put {record_key}"),
                );
            }),
        ),
        (
            "a bogus desired state",
            record_key,
            Box::new(|fl| put(fl, record_key, &record.replace("launched", "bogus"))),
        ),
        (
            "[Service as the unit file",
            &file_key,
            Box::new(|fl| put(fl, &file_key, "[Service")),
        ),
        (
            "garbage in the claim, bound to the holder's lease",
            claim_key,
            Box::new(|fl| {
                etcdctl_stdin(
                    fl,
                    "printf garbage",
                    &format!("put --ignore-lease {claim_key}"),
                );
            }),
        ),
    ];
    for (what, key, damage) in &cases {
        damage(&fl);
        unchanged(&fl, what);
        let (damaged, warning) = listed_damaged(&fl, what);
        assert!(damaged, "{what}: list-unit-files marks it");
        assert!(warning.contains("damaged in etcd"), "{what}: {warning}");
        let metrics = damaged_metrics(&fl, 1);
        assert!(
            metrics.iter().any(|l| l.contains("kept=\"true\"")),
            "{what}: {metrics:?}"
        );
        // Fixed: recovered.
        let good = match *key {
            k if k == record_key => record.clone(),
            k if k == claim_key => claim.clone(),
            _ => file.clone(),
        };
        if *key == claim_key {
            etcdctl_stdin(
                &fl,
                &format!("printf '%s' '{good}'"),
                &format!("put --ignore-lease {key}"),
            );
        } else {
            put(&fl, key, &good);
        }
        fl.wait_for("recovered", WAIT, |fl| {
            (!listed_damaged(fl, what).0 && damaged_metrics(fl, 1).is_empty()).then_some(())
        });
        unchanged(&fl, what);
    }

    // Garbage bound to no lease: the holder may still run the unit; it keeps it and binds the claim
    // to its lease again.
    put(&fl, claim_key, "garbage");
    unchanged(&fl, "garbage in the claim, bound to no lease");
    fl.wait_for("the claim is bound to m1's lease again", WAIT, |fl| {
        (etcd_lease(fl, claim_key) == lease && etcd_get(fl, claim_key) == claim).then_some(())
    });
    unchanged(&fl, "after the claim was bound again");

    // A claim key bound to nobody, before the unit was ever claimed: the unit still starts.
    put(&fl, "/fleet/claims/h.service", "garbage");
    fl.write_file(
        1,
        "/tmp/h.service",
        "[Service]\nExecStart=/bin/sleep 100000\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/h.service"]);
    fl.wait_for("h.service runs somewhere", WAIT, |fl| {
        (fl.running_on("h.service").len() == 1).then_some(())
    });
    assert_ne!(etcd_lease(&fl, "/fleet/claims/h.service"), 0);
}

fn sh(fl: &FleetLab, i: usize, cmd: &str) -> String {
    let out = fl.lab.sh(i, &["sh", "-c", cmd]).expect("sh in the lab");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What `unit` runs on machine `i` (its ExecStart's command line) and its main PID.
fn exec_and_pid(fl: &FleetLab, i: usize, unit: &str) -> (String, String) {
    let exec = fl.show(i, unit, "ExecStart");
    let argv = exec
        .split_once("argv[]=")
        .and_then(|(_, rest)| rest.split_once(" ;"))
        .map(|(argv, _)| argv.to_string())
        .unwrap_or(exec);
    (argv, fl.show(i, unit, "MainPID"))
}

/// A fleet unit named like one of a machine's own services is refused there (with a reason fleetctl
/// shows) and runs elsewhere; destroying it leaves the machine's service alone. fleet's own names are
/// refused by the API. A file left in the units directory by hand is not fleet's: never stopped, and a
/// fleet unit of its name is refused on that machine.
#[test]
// long: one lab scenario: each foreign unit tried against the same cluster and its running units
fn fleet_never_shadows_stops_or_claims_a_unit_it_did_not_create() {
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    let m1 = fl.machine_id(1);
    // m1's own service.
    fl.write_file(
        1,
        "/etc/systemd/system/hostsvc.service",
        "[Service]\nExecStart=/bin/sleep 7777\n",
    );
    sh(
        &fl,
        1,
        "systemctl daemon-reload && systemctl start hostsvc.service",
    );
    let host = exec_and_pid(&fl, 1, "hostsvc.service");
    assert!(host.0.contains("7777") && host.1 != "0", "{host:?}");
    let untouched = |fl: &FleetLab, what: &str| {
        assert_eq!(exec_and_pid(fl, 1, "hostsvc.service"), host, "{what}");
        assert_eq!(fl.active_state(1, "hostsvc.service"), "active", "{what}");
        assert_eq!(
            sh(fl, 1, "ls /run/systemd/system/hostsvc.service /run/fleet/units/hostsvc.service 2>/dev/null"),
            "",
            "{what}: fleet linked nothing on m1"
        );
    };

    // Unpinned: it runs on m2.
    fl.write_file(
        1,
        "/tmp/hostsvc.service",
        "[Service]\nExecStart=/bin/sleep 8888\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/hostsvc.service"]);
    fl.wait_for("fleet's hostsvc.service runs on m2", WAIT, |fl| {
        (fl.active_state(2, "hostsvc.service") == "active"
            && fl.show(2, "hostsvc.service", "ExecStart").contains("8888"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    untouched(&fl, "fleet's unit of the same name runs elsewhere");
    let line = fl.fleetctl_ok(1, &["list-machines", "--no-legend", "--full"]);
    assert!(line.contains(&m1), "{line}");
    fl.fleetctl_ok(1, &["destroy", "hostsvc.service"]);
    fl.wait_for("fleet's hostsvc.service gone from m2", WAIT, |fl| {
        (fl.show(2, "hostsvc.service", "LoadState") == "not-found").then_some(())
    });
    untouched(&fl, "after destroy");
    // Its claim released and its state no longer reported (so that the next start is judged afresh).
    fl.wait_for("the old claim and state are gone", WAIT, |fl| {
        let listed = fl.fleetctl_ok(1, &["list-units", "--no-legend"]);
        (etcd_get(fl, "/fleet/claims/hostsvc.service").is_empty()
            && !listed.contains("hostsvc.service"))
        .then_some(())
    });

    // Pinned to m1: unplaceable, and fleetctl says why.
    fl.write_file(
        1,
        "/tmp/hostsvc.service",
        &format!("[Service]\nExecStart=/bin/sleep 8888\n\n[X-Fleet]\nMachineID={m1}\n"),
    );
    let out = fl.fleetctl(1, &["start", "--block-attempts=6", "/tmp/hostsvc.service"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("refuses its name") && text.contains("/etc/systemd/system/hostsvc.service"),
        "{text}"
    );
    untouched(&fl, "pinned to the machine that refuses it");
    fl.fleetctl_ok(1, &["destroy", "hostsvc.service"]);
    std::thread::sleep(Duration::from_secs(2));
    untouched(&fl, "after the pinned unit was destroyed");

    // fleet's own names.
    for name in ["fleet.service", "fleet.socket", "fleet-guard.service"] {
        let path = format!("/tmp/{name}");
        fl.write_file(1, &path, "[Service]\nExecStart=/bin/true\n");
        let out = fl.fleetctl(1, &["submit", &path]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("reserved"),
            "{name}: {err}"
        );
    }
    assert_eq!(fl.active_state(1, "fleet.service"), "active");

    // A file left in the units directory by hand, linked and started by hand.
    fl.write_file(
        1,
        "/run/fleet/units/stray.service",
        "[Service]\nExecStart=/bin/sleep 9999\n",
    );
    sh(
        &fl,
        1,
        "systemctl link --runtime /run/fleet/units/stray.service && systemctl start stray.service",
    );
    let stray = exec_and_pid(&fl, 1, "stray.service");
    // Several safety passes (1 s each in the lab), and a restart of fleetd.
    std::thread::sleep(Duration::from_secs(3));
    sh(&fl, 1, "systemctl restart fleet.service");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(exec_and_pid(&fl, 1, "stray.service"), stray);
    assert_eq!(fl.active_state(1, "stray.service"), "active");
    // A fleet unit of that name does not take it over.
    fl.write_file(
        1,
        "/tmp/stray.service",
        "[Service]\nExecStart=/bin/sleep 1234\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/stray.service"]);
    fl.wait_for("fleet's stray.service runs on m2", WAIT, |fl| {
        (fl.active_state(2, "stray.service") == "active").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(exec_and_pid(&fl, 1, "stray.service"), stray);
    assert_eq!(
        sh(&fl, 1, "cat /run/fleet/units/stray.service"),
        "[Service]\nExecStart=/bin/sleep 9999"
    );
    // `systemctl stop fleet` stops fleet's units, not the stray one.
    sh(&fl, 1, "systemctl stop fleet.service");
    assert_eq!(exec_and_pid(&fl, 1, "stray.service"), stray);
    untouched(&fl, "after fleetd stopped");
}

/// A second fleetd on a machine whose systemd a fleetd already drives (another runtime directory, so
/// the runtime lock does not stop it) refuses to start, naming the holder and the way out; it leaves
/// the machine's fence guard watching the first fleetd's deadline, and the first keeps running its
/// unit. (Before the system manager's lock it rewrote `fleet-guard.service` to watch its own fence
/// file: the first fleetd's units lost their fencing.)
#[test]
fn a_second_fleetd_on_a_driven_systemd_refuses_to_start_and_leaves_the_guard_alone() {
    let Some(fl) = FleetLab::up(1, &[]) else {
        return;
    };
    fl.write_file(
        1,
        "/tmp/kept.service",
        "[Service]\nExecStart=/bin/sleep 100000\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/kept.service"]);
    let pid = fl.show(1, "kept.service", "MainPID");
    let guard_path = "/run/systemd/system/fleet-guard.service";
    let guard = sh(&fl, 1, &format!("cat {guard_path}"));
    assert!(guard.contains("--fence-file /run/fleet/fence"), "{guard}");
    let holder = sh(&fl, 1, "cat /run/fleet-guard.lock");

    let ip = fleet_lab::machine_ip(1);
    fl.lab
        .sh_ok(
            1,
            &[
                "systemd-run",
                "--unit=second-fleetd",
                "--setenv=FLEET_MACHINE_ID=5eca9dfeed5eca9dfeed5eca9dfeed00",
                &format!("--setenv=FLEET_GOSSIP_LISTEN={ip}:7480"),
                "--setenv=FLEET_API_SOCKET=/run/second-fleetd.sock",
                "--setenv=FLEET_STATE_DIR=/run/second-fleetd-state",
                "--setenv=FLEET_UNITS_DIRECTORY=/run/second-fleetd-units",
                "--setenv=FLEET_RUNTIME_DIR=/run/second-fleetd-run",
                // Past gossip's TLS check, so that only the lock can stop it.
                "--setenv=FLEET_GOSSIP_INSECURE=true",
                "/opt/fleet/bin/fleetd",
                "--etcd-servers=http://127.0.0.1:9",
                &format!("--public-ip={ip}"),
            ],
        )
        .expect("start a second fleetd");
    fl.wait_for("the second fleetd to exit", WAIT, |fl| {
        let state = fl.show(1, "second-fleetd.service", "ActiveState");
        (state == "failed" || state == "inactive").then_some(())
    });
    let log = sh(
        &fl,
        1,
        "journalctl -u second-fleetd.service --no-pager -o cat",
    );
    let want = format!(
        "driven by another fleetd (pid {holder}, lock /run/fleet-guard.lock): run one fleetd per machine"
    );
    assert!(log.contains(&want), "want {want:?} in:\n{log}");
    assert_eq!(
        sh(&fl, 1, &format!("cat {guard_path}")),
        guard,
        "the guard unit was rewritten"
    );
    assert_eq!(sh(&fl, 1, "cat /run/fleet-guard.lock"), holder);
    assert_eq!(fl.show(1, "kept.service", "MainPID"), pid);
    assert_eq!(fl.show(1, "fleet-guard.service", "ActiveState"), "active");
    fl.fleetctl_ok(1, &["list-machines"]);
}
