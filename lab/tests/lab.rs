//! The lab guard against the real thing (root only; skipped with a message otherwise).

use std::path::Path;
use std::process::Command;

use fleet_lab::{Lab, LabError, LabOptions, Netns};

/// Whether machine `to`'s kernel answers TCP from machine `from` (a RST from a closed port counts;
/// no `ping` in the image).
fn ping(lab: &Lab, from: usize, to: usize) -> bool {
    let probe = format!("echo > /dev/tcp/{}/9", fleet_lab::machine_ip(to));
    let out = lab
        .sh(from, &["timeout", "1", "bash", "-c", &probe])
        .unwrap();
    String::from_utf8_lossy(&out.stderr).contains("Connection refused")
}

fn netns_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&format!("{prefix}-")))
        .map(str::to_string)
        .collect()
}

#[test]
fn lab_boots_machines_with_options_faults_and_tears_down() {
    if !fleet_lab::require_root() {
        return;
    }
    struct RemoveOnDrop(std::path::PathBuf);
    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let bind_src = std::env::temp_dir().join(format!("fleet-lab-bind-{}", std::process::id()));
    std::fs::create_dir_all(&bind_src).unwrap();
    let _cleanup = RemoveOnDrop(bind_src.clone());
    std::fs::write(bind_src.join("hello"), "from the host\n").unwrap();
    let opts = LabOptions::new()
        .bind(&bind_src, "/opt/labtest", true)
        .unit(
            "labprobe.service",
            "[Service]\nEnvironmentFile=/etc/fleettest.env\n\
             ExecStart=/bin/sh -c 'echo $FT_MACHINE $LAB_EXTRA > /run/probe; exec sleep infinity'\n",
        )
        .env("LAB_EXTRA", "extra-value");
    let lab = Lab::up(2, opts).unwrap();
    let prefix = lab.prefix().to_string();
    let state = lab.state_dir().to_path_buf();
    assert_eq!(netns_of(&prefix).len(), 3, "hub + 2 machines");

    // Identity, binds, units started at boot, the env file.
    assert_eq!(lab.sh_ok(1, &["hostname"]).unwrap().trim(), "m1");
    assert_eq!(
        lab.sh_ok(2, &["cat", "/opt/labtest/hello"]).unwrap(),
        "from the host\n"
    );
    assert!(
        lab.sh(2, &["touch", "/opt/labtest/x"])
            .unwrap()
            .status
            .code()
            != Some(0),
        "ro bind"
    );
    assert_eq!(
        lab.sh_ok(2, &["systemctl", "is-active", "labprobe.service"])
            .unwrap()
            .trim(),
        "active"
    );
    assert_eq!(
        lab.sh_ok(2, &["cat", "/run/probe"]).unwrap(),
        "m2 extra-value\n"
    );
    let root = lab.machine_root(1).unwrap();
    let env = std::fs::read_to_string(root.join("etc/fleettest.env")).unwrap();
    assert!(
        env.contains("FT_IP=10.77.0.11\n") && env.contains("FT_ETCD=http://10.77.0.1:2379"),
        "{env}"
    );
    let bus = lab.bus_address(1).unwrap();
    let socket = bus.strip_prefix("unix:path=").unwrap();
    assert!(Path::new(socket).exists(), "{socket}");

    // etcd: from a machine, from the hub, and from the host through the forwarder.
    lab.sh_ok(
        1,
        &[
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            fleet_lab::ETCD_IN_LAB,
            "put",
            "/k",
            "v1",
        ],
    )
    .unwrap();
    assert_eq!(
        lab.etcdctl(&["get", "--print-value-only", "/k"]).unwrap(),
        "v1\n"
    );
    let ep = lab.etcd_endpoint().unwrap();
    assert!(ep.starts_with("http://127.0.0.1:"), "{ep}");
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep, "get", "--print-value-only", "/k"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\n", "{out:?}");

    // Faults.
    assert!(ping(&lab, 1, 2));
    lab.cut(2).unwrap();
    assert!(!ping(&lab, 1, 2), "cut");
    lab.heal(2).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(ping(&lab, 1, 2), "healed");
    lab.drop(2).unwrap();
    assert!(!ping(&lab, 1, 2), "dropped");
    lab.undrop(2).unwrap();
    assert!(ping(&lab, 1, 2), "undropped");
    let bus2 = lab.bus_address(2).unwrap();
    let bus_answers = || {
        // (busctl's own --timeout does not cover connecting, which hangs too)
        Command::new("timeout")
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus2)
            .args([
                "1",
                "busctl",
                "call",
                "org.freedesktop.DBus",
                "/org/freedesktop/DBus",
            ])
            .args(["org.freedesktop.DBus", "GetId"])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(bus_answers());
    lab.freeze(2).unwrap();
    let frozen_answers = bus_answers();
    lab.thaw(2).unwrap();
    assert!(!frozen_answers, "a frozen machine's dbus-daemon must hang");
    assert!(bus_answers(), "thawed");

    let old_pid = lab.machine_pid(2).unwrap();
    let machine_id = lab.sh_ok(2, &["cat", "/etc/machine-id"]).unwrap();
    lab.kill(2).unwrap();
    assert!(matches!(lab.machine_pid(2), Err(LabError::NotRunning(2))));
    assert!(matches!(lab.sh(2, &["true"]), Err(LabError::NotRunning(2))));
    assert!(
        ping(&lab, 1, 2),
        "the netns of a killed machine still answers"
    );
    lab.boot(2).unwrap();
    assert!(matches!(lab.boot(2), Err(LabError::AlreadyRunning(2))));
    assert_ne!(lab.machine_pid(2).unwrap(), old_pid);
    assert_eq!(
        lab.sh_ok(2, &["cat", "/etc/machine-id"]).unwrap(),
        machine_id,
        "same disk"
    );
    lab.poweroff(1).unwrap();
    assert!(matches!(lab.machine_pid(1), Err(LabError::NotRunning(1))));
    assert!(matches!(
        lab.machine_pid(3),
        Err(LabError::NoSuchMachine {
            index: 3,
            machines: 2
        })
    ));
    assert_eq!(lab.add_machine().unwrap(), 3);
    assert_eq!(lab.sh_ok(3, &["hostname"]).unwrap().trim(), "m3");
    assert!(ping(&lab, 3, 2));

    drop(lab);
    assert!(
        netns_of(&prefix).is_empty(),
        "netns left: {:?}",
        netns_of(&prefix)
    );
    assert!(!state.exists(), "{} left", state.display());
}

#[test]
fn labs_with_different_prefixes_run_side_by_side_and_a_prefix_is_exclusive() {
    if !fleet_lab::require_root() {
        return;
    }
    let a = Lab::up(1, LabOptions::new().without_etcd()).unwrap();
    let b = Lab::up(1, LabOptions::new().without_etcd()).unwrap();
    assert_ne!(a.prefix(), b.prefix());
    // Same address in both clusters, separate L2 islands.
    assert_eq!(
        a.sh_ok(1, &["hostname", "-I"]).unwrap().trim(),
        "10.77.0.11"
    );
    assert_eq!(
        b.sh_ok(1, &["hostname", "-I"]).unwrap().trim(),
        "10.77.0.11"
    );
    let taken = Lab::up(1, LabOptions::new().prefix(a.prefix()));
    assert!(
        matches!(taken, Err(LabError::PrefixInUse { .. })),
        "{taken:?}"
    );
    assert!(
        a.sh(1, &["true"]).unwrap().status.success(),
        "the refused lab did not tear down a"
    );
    let bad = Lab::up(1, LabOptions::new().prefix("bad-prefix"));
    assert!(matches!(bad, Err(LabError::InvalidOption(_))), "{bad:?}");
    // A forwarder into a machine's netns.
    let fwd = a
        .forward_tcp(Netns::Machine(1), "10.77.0.11:22".parse().unwrap())
        .unwrap();
    assert!(fwd.ip().is_loopback());
}

#[test]
fn an_etcd_member_cluster_whose_members_fail_alone() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = Lab::up(1, LabOptions::new().etcd_cluster(3)).unwrap();
    assert_eq!(lab.etcd_members(), 3);
    let urls = lab.etcd_urls_in_lab();
    assert_eq!(
        urls,
        [
            "http://10.77.0.2:2379",
            "http://10.77.0.3:2379",
            "http://10.77.0.4:2379"
        ]
    );
    // Machines get every client URL.
    let env =
        std::fs::read_to_string(lab.machine_root(1).unwrap().join("etc/fleettest.env")).unwrap();
    assert!(
        env.contains(&format!("FT_ETCD={}\n", urls.join(","))),
        "{env}"
    );
    // No hub etcd in this mode: nothing listens on 10.77.0.1:2379.
    assert!(
        lab.hub(&[
            "curl",
            "-sf",
            "--max-time",
            "1",
            "http://10.77.0.1:2379/health"
        ])
        .unwrap()
        .status
        .code()
            != Some(0)
    );
    let from_m1 = |args: &[&str]| {
        let mut cmd = vec!["env", "ETCDCTL_API=3", "etcdctl", "--command-timeout=3s"];
        let eps = format!("--endpoints={}", urls.join(","));
        cmd.push(&eps);
        cmd.extend_from_slice(args);
        lab.sh_ok(1, &cmd)
    };
    from_m1(&["put", "/k", "v1"]).unwrap();
    assert_eq!(
        lab.etcdctl(&["get", "--print-value-only", "/k"]).unwrap(),
        "v1\n"
    );

    // Kill the leader: the two others elect a new one and serve writes.
    let leader = lab.etcd_leader().unwrap();
    assert!((1..=3).contains(&leader));
    lab.etcd_kill(leader).unwrap();
    assert!(lab.etcd_member_pid(leader).is_err());
    let t0 = std::time::Instant::now();
    let new_leader = loop {
        if let Ok(l) = lab.etcd_leader() {
            break l;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "no new leader"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_ne!(new_leader, leader);
    lab.etcdctl(&["put", "/k", "v2"]).unwrap();
    // Restarted from its data dir, the old leader catches up.
    lab.etcd_start(leader).unwrap();
    let ep = lab.etcd_member_endpoint(leader).unwrap();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &ep, "get", "--print-value-only", "/k"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v2\n", "{out:?}");

    // A member cut off from its peers still accepts connections but cannot serve linearizable reads.
    let cut = if new_leader == 1 { 2 } else { 1 };
    lab.etcd_isolate(cut).unwrap();
    let ep = lab.etcd_member_endpoint(cut).unwrap();
    let read = |consistency: &str| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &ep,
                "--command-timeout=2s",
                "get",
                "--print-value-only",
            ])
            .arg(format!("--consistency={consistency}"))
            .arg("/k")
            .output()
            .unwrap()
    };
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(String::from_utf8_lossy(&read("s").stdout), "v2\n");
    assert!(
        !read("l").status.success(),
        "a minority member served a linearizable read"
    );
    lab.etcd_rejoin(cut).unwrap();
    let t0 = std::time::Instant::now();
    while !read("l").status.success() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "the member did not rejoin"
        );
    }

    // A frozen member answers nothing; thawed, it serves again.
    lab.etcd_freeze(cut).unwrap();
    assert!(!read("s").status.success(), "a frozen member answered");
    lab.etcd_thaw(cut).unwrap();
    assert_eq!(String::from_utf8_lossy(&read("s").stdout), "v2\n");
    let prefix = lab.prefix().to_string();
    drop(lab);
    assert!(
        netns_of(&prefix).is_empty(),
        "netns left: {:?}",
        netns_of(&prefix)
    );
}

/// The hub's MAC address (its bridge's).
fn hub_mac(lab: &Lab) -> String {
    lab.hub_ok(&["cat", "/sys/class/net/ftbr0/address"])
        .unwrap()
        .trim()
        .to_string()
}

/// Whether machine `i` gets an answer from the hub etcd (2 s at most).
fn reaches_etcd(lab: &Lab, i: usize) -> bool {
    let url = format!("{}/health", fleet_lab::ETCD_IN_LAB);
    lab.sh(i, &["curl", "-sf", "--max-time", "2", &url])
        .unwrap()
        .status
        .success()
}

/// CI17/CI18's flake: a Linux bridge without an address of its own takes its lowest port's, so adding
/// a machine whose bridge port had a lower MAC changed the hub's MAC. A machine that had resolved
/// 10.77.0.1 before kept sending to the old address, which the hub's IP layer drops as not its own,
/// until its neighbour entry expired (up to ~45 s): its fleetd lost etcd. A bridge port with the
/// lowest possible address stands for such a machine, deterministically.
#[test]
fn the_hub_keeps_its_address_and_its_etcd_when_the_bridge_ports_change() {
    if !fleet_lab::require_root() {
        return;
    }
    let lab = Lab::up(2, LabOptions::new()).unwrap();
    assert!(reaches_etcd(&lab, 1), "{}", lab.net_report());
    let mac = hub_mac(&lab);
    lab.hub_ok(&["ip", "link", "set", "m2", "address", "00:00:00:00:00:01"])
        .unwrap();
    assert!(
        reaches_etcd(&lab, 1),
        "m1 lost etcd when a bridge port's address changed\n{}",
        lab.net_report()
    );
    assert_eq!(hub_mac(&lab), mac, "the hub's address followed a port's");
    let i = lab.add_machine().unwrap();
    assert_eq!(hub_mac(&lab), mac, "the hub's address changed with m{i}");
    for j in 1..=i {
        assert!(reaches_etcd(&lab, j), "m{j}\n{}", lab.net_report());
    }
}
