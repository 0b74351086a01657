//! End-to-end: fleetctl's operator verbs in a cluster lab (root only): `restart` gives units a new
//! main process on every machine running them; `ssh` and `--tunnel` go through real sshd servers in
//! the machines; `journal` of a global unit reads every machine, and `--follow` ends cleanly on
//! SIGINT; `--json` lists parse.

mod lab;

use std::process::Output;
use std::time::Duration;

use lab::ssh::{start_sshd, Keys, SSH_PORT};
use lab::{text, FleetLab};

const WAIT: Duration = Duration::from_secs(20);

fn main_pid(fl: &FleetLab, i: usize, unit: &str) -> u32 {
    fl.show(i, unit, "MainPID").parse().unwrap_or(0)
}

/// Waits until `unit` is active with a main process on each of `machines`; returns the PIDs.
fn wait_running(fl: &FleetLab, unit: &str, machines: &[usize]) -> Vec<u32> {
    fl.wait_for(&format!("{unit} running on {machines:?}"), WAIT, |fl| {
        let pids: Vec<u32> = machines.iter().map(|i| main_pid(fl, *i, unit)).collect();
        let active = machines
            .iter()
            .all(|i| fl.active_state(*i, unit) == "active");
        (active && pids.iter().all(|p| *p != 0)).then_some(pids)
    })
}

#[test]
// long: one lab scenario: each restart builds on the main processes the previous step saw
fn restart_gives_units_a_new_main_process_on_every_machine_running_them() {
    let Some(fl) = FleetLab::up(3, &[]) else {
        return;
    };
    fl.write_file(
        1,
        "/tmp/one.service",
        "[Service]\nExecStart=/bin/sleep 1000\n",
    );
    fl.write_file(
        1,
        "/tmp/everywhere.service",
        "[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nGlobal=true\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/one.service", "/tmp/everywhere.service"]);

    // A placed unit: restarted on its machine only.
    let on = fl.wait_for("one.service active somewhere", WAIT, |fl| {
        let r = fl.running_on("one.service");
        (r.len() == 1).then(|| r[0])
    });
    let before = wait_running(&fl, "one.service", &[on])[0];
    let out = fl.fleetctl_ok(1, &["restart", "one.service"]);
    let id8 = &fl.machine_id(on)[..8];
    assert_eq!(
        out.trim(),
        format!(
            "Restarted unit one.service on {id8}.../{}",
            fleet_lab::machine_ip(on)
        ),
        "{out}"
    );
    // systemctl restart waited for the job: the new process is there when fleetctl returns.
    assert_eq!(fl.active_state(on, "one.service"), "active");
    let after = main_pid(&fl, on, "one.service");
    assert!(after != 0 && after != before, "MainPID {before} -> {after}");

    // A global unit: restarted on every machine, one line each.
    let before = wait_running(&fl, "everywhere.service", &[1, 2, 3]);
    let out = fl.fleetctl_ok(2, &["restart", "everywhere"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    for i in 1..=3 {
        let line = format!(
            "Restarted unit everywhere.service on {}.../{}",
            &fl.machine_id(i)[..8],
            fleet_lab::machine_ip(i)
        );
        assert!(out.lines().any(|l| l == line), "no {line:?} in {out}");
    }
    let after = wait_running(&fl, "everywhere.service", &[1, 2, 3]);
    for k in 0..3 {
        assert_ne!(before[k], after[k], "m{} kept its process", k + 1);
    }

    // --machine restarts the global unit on that machine only.
    let m3 = fl.machine_id(3);
    let out = fl.fleetctl_ok(1, &["restart", "--machine", &m3, "everywhere.service"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let again = wait_running(&fl, "everywhere.service", &[1, 2, 3]);
    assert_eq!(&again[..2], &after[..2]);
    assert_ne!(again[2], after[2]);

    // As fleet's restart, a unit that is stopped (loaded) or unloaded (inactive) is started.
    fl.fleetctl_ok(1, &["stop", "one.service"]);
    assert_eq!(fl.active_state(on, "one.service"), "inactive");
    let out = fl.fleetctl_ok(1, &["restart", "one.service"]);
    let at = fl.wait_for("one.service active again", WAIT, |fl| {
        let r = fl.running_on("one.service");
        (r.len() == 1).then(|| r[0])
    });
    assert_eq!(
        out.trim(),
        format!(
            "Unit one.service launched on {}.../{}",
            &fl.machine_id(at)[..8],
            fleet_lab::machine_ip(at)
        )
    );
    fl.fleetctl_ok(1, &["unload", "one.service"]);
    let out = fl.fleetctl_ok(1, &["restart", "one.service"]);
    assert!(out.starts_with("Unit one.service launched on "), "{out}");
    assert_eq!(fl.running_on("one.service").len(), 1);
    let out = fl.fleetctl(1, &["restart", "nope.service"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("nope.service does not exist"),
        "{:?}",
        text(&out)
    );
}

#[test]
// long: one lab scenario: every way of naming a machine tried against the same sshd set-up
fn ssh_reaches_machines_by_id_prefix_or_unit_and_tunnel_reaches_the_api_through_sshd() {
    if !fleet_lab::require_root() {
        return;
    }
    if !std::path::Path::new("/usr/sbin/sshd").exists() {
        eprintln!("skipped: no /usr/sbin/sshd (apt-get install openssh-server)");
        return;
    }
    let Some(keys) = Keys::new() else {
        return;
    };
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    start_sshd(&fl, 1, &keys);
    start_sshd(&fl, 2, &keys);
    let (m1, m2) = (fl.machine_id(1), fl.machine_id(2));
    let ip2 = fleet_lab::machine_ip(2).to_string();
    let ssh = |i: usize, extra: &[&str]| -> Output {
        let mut args = vec!["--ssh-username", "root", "--strict-host-key-checking=false"];
        args.extend_from_slice(extra);
        fl.fleetctl(i, &args)
    };

    // By machine ID prefix, with a command.
    let out = ssh(
        1,
        &[
            "ssh",
            "--ssh-port",
            SSH_PORT,
            &m2[..6],
            "cat",
            "/etc/hostname",
        ],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    assert_eq!(o.trim(), "m2");
    // The remote command's exit status comes back.
    let out = ssh(1, &["ssh", "--ssh-port", SSH_PORT, &m2, "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{:?}", text(&out));

    // By unit: the machine the unit runs on.
    let unit = format!("[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nMachineID={m2}\n");
    fl.write_file(1, "/tmp/web.service", &unit);
    fl.fleetctl_ok(1, &["start", "/tmp/web.service"]);
    let out = ssh(
        1,
        &[
            "ssh",
            "--ssh-port",
            SSH_PORT,
            "web.service",
            "systemctl",
            "is-active",
            "web",
        ],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    assert_eq!(o.trim(), "active");
    let out = ssh(
        1,
        &[
            "ssh",
            "--ssh-port",
            SSH_PORT,
            "--unit",
            "web",
            "--",
            "cat",
            "/etc/hostname",
        ],
    );
    assert_eq!(text(&out).0.trim(), "m2", "{:?}", text(&out));
    let out = ssh(
        1,
        &[
            "ssh",
            "--ssh-port",
            SSH_PORT,
            "--machine",
            &m1[..8],
            "cat",
            "/etc/hostname",
        ],
    );
    assert_eq!(text(&out).0.trim(), "m1", "{:?}", text(&out));
    // Neither a machine nor a unit.
    let out = ssh(1, &["ssh", "--ssh-port", SSH_PORT, "nothing-here", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("neither a machine nor a unit"),
        "{:?}",
        text(&out)
    );

    // Strict host key checking: unknown host refused (no terminal to ask on), known host accepted.
    let out = fl.fleetctl(
        1,
        &[
            "--ssh-username",
            "root",
            "--known-hosts-file",
            "/tmp/kh-empty",
            "ssh",
            "--ssh-port",
            SSH_PORT,
            &m2[..8],
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(255), "{:?}", text(&out));
    assert!(
        text(&out).1.contains("Host key verification failed"),
        "{:?}",
        text(&out)
    );
    let pubkey = keys.read("host.pub");
    let pubkey = pubkey
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    fl.write_file(1, "/tmp/kh", &format!("[{ip2}]:{SSH_PORT} {pubkey}\n"));
    let out = fl.fleetctl(
        1,
        &[
            "--ssh-username",
            "root",
            "--known-hosts-file",
            "/tmp/kh",
            "ssh",
            "--ssh-port",
            SSH_PORT,
            &m2[..8],
            "cat",
            "/etc/hostname",
        ],
    );
    assert_eq!(text(&out).0.trim(), "m2", "{:?}", text(&out));

    // --tunnel: the API on m2 through m2's sshd. The endpoint path exists only on m2, so an answer
    // proves the request went through the tunnel.
    fl.lab
        .sh_ok(
            2,
            &["ln", "-s", "/var/run/fleet.sock", "/run/only-on-m2.sock"],
        )
        .unwrap();
    let tunnel = format!("{ip2}:{SSH_PORT}");
    let out = ssh(
        1,
        &[
            "--tunnel",
            &tunnel,
            "--endpoint",
            "unix:///run/only-on-m2.sock",
            "list-machines",
            "--json",
        ],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    let listed: serde_json::Value = serde_json::from_str(&o).expect("JSON from list-machines");
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["machine"].as_str().unwrap())
        .collect();
    let mut want = vec![m1.as_str(), m2.as_str()];
    want.sort();
    assert_eq!(ids, want, "{o}");
    assert!(listed[0]["ip"].as_str().is_some(), "{o}");
    // Without the tunnel the same endpoint does not exist on m1.
    let out = fl.fleetctl(
        1,
        &["--endpoint", "unix:///run/only-on-m2.sock", "list-machines"],
    );
    assert_eq!(out.status.code(), Some(1));
    // A tunnel host that does not answer is a clear error, not a hang.
    let out = ssh(1, &["--tunnel", &format!("{ip2}:2"), "list-machines"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("--tunnel") && e.contains("ssh exited"), "{e}");
    // ssh through the tunnel jumps via m2 to m1.
    let out = ssh(
        2,
        &[
            "--tunnel",
            &tunnel,
            "ssh",
            "--ssh-port",
            SSH_PORT,
            &m1[..8],
            "cat",
            "/etc/hostname",
        ],
    );
    assert_eq!(text(&out).0.trim(), "m1", "{:?}", text(&out));
    // No tunnel process or socket directory is left behind.
    let left = fl
        .lab
        .sh(1, &["pgrep", "-f", "ssh -o ConnectTimeout"])
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "ssh left running: {}",
        text(&left).0
    );
    let tmp = fl
        .lab
        .sh_ok(1, &["sh", "-c", "ls /tmp | grep ^fleetctl- || true"])
        .unwrap();
    assert!(tmp.trim().is_empty(), "left in /tmp: {tmp}");
}

/// A global service that logs a marker with its machine's ID, then a tick every 300 ms.
const GLOBAL_TICKER: &str = "[Unit]\nDescription=global ticker\n\n[Service]\n\
    ExecStart=/bin/sh -c 'echo gmark-%m; i=0; while :; do i=$$((i+1)); echo gtick-%m-$$i; sleep 0.3; done'\n\n\
    [X-Fleet]\nGlobal=true\n";

#[test]
fn journal_of_a_global_unit_reads_every_machine_and_follow_ends_on_sigint() {
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    let (m1, m2) = (fl.machine_id(1), fl.machine_id(2));
    fl.write_file(1, "/tmp/gt.service", GLOBAL_TICKER);
    fl.fleetctl_ok(1, &["start", "/tmp/gt.service"]);
    wait_running(&fl, "gt.service", &[1, 2]);
    fl.wait_for("both machines report gt.service", WAIT, |fl| {
        let out = fl.fleetctl(1, &["list-units", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let n = v
            .as_array()?
            .iter()
            .filter(|u| u["unit"] == "gt.service" && u["sub"] == "running")
            .count();
        (n == 2).then_some(())
    });

    let out = fl.fleetctl_ok(1, &["journal", "--lines", "1000", "gt.service"]);
    for (i, m) in [(1, &m1), (2, &m2)] {
        let heading = format!("gt.service on {}.../{}:", &m[..8], fleet_lab::machine_ip(i));
        assert!(out.lines().any(|l| l == heading), "no {heading:?} in {out}");
        assert!(out.contains(&format!("gmark-{m}")), "{out}");
    }
    // Each machine's lines sit under its own heading.
    let (first, second) = out.split_once("\n\n").expect("two sections");
    let (a, b) = if m1 < m2 { (&m1, &m2) } else { (&m2, &m1) };
    assert!(
        first.contains(&format!("gmark-{a}")) && !first.contains(&format!("gtick-{b}")),
        "{out}"
    );
    assert!(
        second.contains(&format!("gmark-{b}")) && !second.contains(&format!("gtick-{a}")),
        "{out}"
    );

    // --follow: new lines from both machines until SIGINT, which ends fleetctl with status 0.
    let out = fl.fleetctl_until_sigint(
        1,
        "4",
        &["journal", "--follow", "--lines", "1", "gt.service"],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "exit {:?}: {o}{e}", out.status);
    for m in [&m1, &m2] {
        let ticks: Vec<u64> = o
            .lines()
            .filter_map(|l| l.rsplit_once(&format!("gtick-{m}-")))
            .filter_map(|(_, n)| n.trim().parse().ok())
            .collect();
        assert!(
            ticks.len() >= 6,
            "few new lines from {m} while following: {o}"
        );
        assert!(
            ticks.windows(2).all(|w| w[1] == w[0] + 1),
            "each line of {m} exactly once, in order: {ticks:?}"
        );
    }
    assert!(
        o.matches(" on ").count() >= 2,
        "headings while following: {o}"
    );

    // --machine picks one machine.
    let out = fl.fleetctl_ok(
        1,
        &["journal", "--machine", &m2, "--lines", "1000", "gt.service"],
    );
    assert!(
        out.contains(&format!("gmark-{m2}")) && !out.contains(&format!("gmark-{m1}")),
        "{out}"
    );
}

#[test]
fn list_commands_print_json_and_completion_scripts_are_generated() {
    let Some(fl) = FleetLab::up(1, &[]) else {
        return;
    };
    let m1 = fl.machine_id(1);
    fl.write_file(
        1,
        "/tmp/j.service",
        "[Unit]\nDescription=json test\n[Service]\nExecStart=/bin/sleep 1000\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/j.service"]);
    let out = fl.fleetctl_ok(
        1,
        &[
            "list-unit-files",
            "--json",
            "--fields=unit,dstate,target,desc,global",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(
        v,
        serde_json::json!([{
            "unit": "j.service",
            "dstate": "launched",
            "target": format!("{m1}/{}", fleet_lab::machine_ip(1)),
            "desc": "json test",
            "global": false,
        }])
    );
    let v = fl.wait_for("j.service reported", WAIT, |fl| {
        let out = fl.fleetctl(
            1,
            &["list-units", "--json", "--fields=unit,machine,active,hash"],
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v[0]["active"] == "active").then_some(v)
    });
    assert_eq!(
        v[0]["machine"],
        format!("{m1}/{}", fleet_lab::machine_ip(1))
    );
    assert_eq!(v[0]["hash"].as_str().map(str::len), Some(40), "{v}");

    for shell in ["bash", "zsh", "fish"] {
        let out = fl.fleetctl_ok(1, &["completion", shell]);
        assert!(
            out.contains("list-unit-files") && out.contains("restart"),
            "{shell}: {out}"
        );
    }
    let out = fl
        .lab
        .sh(
            1,
            &[
                "bash",
                "-c",
                "source <(/opt/fleet/bin/fleetctl completion bash) && complete -p fleetctl",
            ],
        )
        .unwrap();
    assert!(text(&out).0.contains("fleetctl"), "{:?}", text(&out));
}
