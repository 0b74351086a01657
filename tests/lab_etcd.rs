//! fleetd against a 3-member etcd cluster whose members fail one at a time (root only): the leader
//! killed, a member frozen, a member cut off from its peers while fleetds stay connected to it, a
//! member restarted from its data dir. In each: no unit stops or restarts (MainPID unchanged), no
//! unit runs on two machines, API writes work again (the time it took is printed), and every fleetd
//! sees every change made meanwhile.

mod lab;
mod pki;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lab::FleetLab;

const MACHINES: usize = 3;
const UNITS: [&str; 3] = ["e1.service", "e2.service", "e3.service"];
const GLOBAL: &str = "eg.service";
/// How long API writes are probed after a fault: longer than the limit, so that a recovery near it is
/// measured, not taken for none.
const PROBE_WINDOW: Duration = Duration::from_secs(12);
/// Generous: the etcd election (1-2 s) plus fleetd's reconnect, on a loaded 2-core machine.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);

/// A lab of 3 machines running fleetd against 3 etcd members, with 3 units and a global unit running.
///
/// fleetd runs with its defaults (`fence_after` 700 ms, `agent_ttl` 30 s, not the lab's usual 3 s: on a loaded
/// machine an election and the move to another member took longer than 3 s, and a lease that etcd expires
/// takes its claims with it): an etcd election stops every lease renewal, so the units outlive it on the
/// witness committee's support (docs/safety.md), which these tests therefore exercise too.
fn up() -> Option<FleetLab> {
    up_with(|o| o)
}

/// [`up`] with more lab options (etcd flags).
fn up_with(more: impl FnOnce(fleet_lab::LabOptions) -> fleet_lab::LabOptions) -> Option<FleetLab> {
    let env = [("FLEET_AGENT_TTL", "30s")];
    let fl = FleetLab::up_with_options(MACHINES, &env, &[], |o| more(o.etcd_cluster(3)))?;
    for u in UNITS {
        fl.write_file(
            1,
            &format!("/tmp/{u}"),
            "[Service]\nExecStart=/bin/sleep 100000\n",
        );
        fl.fleetctl_ok(1, &["start", "--no-block", &format!("/tmp/{u}")]);
    }
    fl.write_file(
        1,
        &format!("/tmp/{GLOBAL}"),
        "[Service]\nExecStart=/bin/sleep 100000\n\n[X-Fleet]\nGlobal=true\n",
    );
    fl.fleetctl_ok(1, &["start", "--no-block", &format!("/tmp/{GLOBAL}")]);
    fl.wait_for("every unit running", Duration::from_secs(60), |fl| {
        (UNITS.iter().all(|u| fl.running_on(u).len() == 1)
            && fl.running_on(GLOBAL).len() == MACHINES)
            .then_some(())
    });
    // A witness that just started supports nobody for `vote_after_support` (2.93 s with the default
    // fence_after: it may have voted before a restart, docs/safety.md), so a fault this early would find
    // no support anywhere and every machine would fence. Faults come once the witnesses may speak.
    std::thread::sleep(Duration::from_secs(5));
    Some(fl)
}

/// (unit, machine) -> MainPID of everything running.
fn main_pids(fl: &FleetLab) -> BTreeMap<(String, usize), String> {
    let mut pids = BTreeMap::new();
    for u in UNITS.iter().chain([&GLOBAL]) {
        for i in fl.running_on(u) {
            pids.insert((u.to_string(), i), fl.show(i, u, "MainPID"));
        }
    }
    pids
}

/// The etcd member (1-based) machine `i`'s fleetd is connected to (its established :2379 connection).
fn member_of(fl: &FleetLab, i: usize) -> Option<usize> {
    let out = fl
        .lab
        .sh_ok(
            i,
            &["ss", "-Htn", "state", "established", "( dport = :2379 )"],
        )
        .ok()?;
    let mut counts = BTreeMap::new();
    for line in out.lines() {
        for k in 1..=3 {
            if line.contains(&format!("{}:2379", fleet_lab::etcd_member_ip(k))) {
                *counts.entry(k).or_insert(0) += 1;
            }
        }
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(k, _)| k)
}

/// The member most fleetds use, and which machines use it.
fn busiest_member(fl: &FleetLab) -> (usize, Vec<usize>) {
    let on: Vec<(usize, Option<usize>)> = (1..=MACHINES).map(|i| (i, member_of(fl, i))).collect();
    let busiest = (1..=3)
        .max_by_key(|k| on.iter().filter(|(_, m)| *m == Some(*k)).count())
        .unwrap();
    let machines = on
        .iter()
        .filter(|(_, m)| *m == Some(busiest))
        .map(|(i, _)| *i)
        .collect();
    eprintln!("fleetd endpoints: {on:?} (machine, member)");
    (busiest, machines)
}

/// One API write through machine `i`'s fleetd: creates unit `name` (inactive). True on 201.
fn api_create(fl: &FleetLab, i: usize, name: &str) -> bool {
    let body = format!(
        r#"{{"name":"{name}","desiredState":"inactive","options":[{{"section":"Service","name":"ExecStart","value":"/bin/true"}}]}}"#
    );
    let out = fl.lab.sh(
        i,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "--unix-socket",
            "/var/run/fleet.sock",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("http://fleet/fleet/v1/units/{name}"),
        ],
    );
    matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).trim() == "201")
}

/// What happened while a fault lasted.
struct FaultRun {
    /// Per machine: time from the fault to the first API write that succeeded after the last failure
    /// (zero when none failed).
    recovery: Vec<Duration>,
    /// Units created through the API meanwhile (each must be seen by every fleetd).
    created: Vec<String>,
    /// Non-global units seen running on two machines at once.
    doubles: Vec<String>,
}

/// Injects `fault` and probes for [`PROBE_WINDOW`]: API writes through every machine every 200 ms,
/// and systemd on every machine for a unit running twice.
fn during(fl: &FleetLab, tag: &str, fault: impl FnOnce()) -> FaultRun {
    let created = Mutex::new(Vec::new());
    let doubles = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    fault();
    let recovery = std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                for u in UNITS {
                    if fl.running_on(u).len() > 1 {
                        doubles.lock().unwrap().push(u.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let probes: Vec<_> = (1..=MACHINES)
            .map(|i| {
                let created = &created;
                s.spawn(move || {
                    let mut last_failure = None;
                    let mut first_ok_after = Duration::ZERO;
                    let mut n = 0;
                    while t0.elapsed() < PROBE_WINDOW {
                        n += 1;
                        let name = format!("w-{tag}-m{i}-{n}.service");
                        let at = Instant::now();
                        if api_create(fl, i, &name) {
                            created.lock().unwrap().push(name);
                            if last_failure.is_some() && first_ok_after.is_zero() {
                                first_ok_after = at.duration_since(t0);
                            }
                        } else {
                            last_failure = Some(at);
                            first_ok_after = Duration::ZERO;
                        }
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    match last_failure {
                        None => Duration::ZERO,
                        Some(_) if first_ok_after.is_zero() => PROBE_WINDOW * 10, // never again
                        Some(_) => first_ok_after,
                    }
                })
            })
            .collect();
        let r = probes.into_iter().map(|p| p.join().unwrap()).collect();
        stop.store(true, Ordering::SeqCst);
        r
    });
    FaultRun {
        recovery,
        created: created.into_inner().unwrap(),
        doubles: doubles.into_inner().unwrap(),
    }
}

/// The common checks after a fault.
fn check(fl: &FleetLab, what: &str, run: &FaultRun, before: &BTreeMap<(String, usize), String>) {
    eprintln!(
        "{what}: API writes worked again after {:?} (per machine; zero = never failed); {} units created meanwhile",
        run.recovery,
        run.created.len()
    );
    assert!(
        run.doubles.is_empty(),
        "{what}: ran twice: {:?}",
        run.doubles
    );
    for (i, r) in run.recovery.iter().enumerate() {
        assert!(
            *r <= RECOVERY_LIMIT,
            "{what}: API writes through m{} did not work again within {RECOVERY_LIMIT:?}\n{}",
            i + 1,
            fl.journals(30)
        );
    }
    assert_eq!(
        &main_pids(fl),
        before,
        "{what}: a unit stopped, restarted or moved\n{}",
        fl.journals(30)
    );
    // Every fleetd's mirror has every unit created meanwhile, through any machine.
    for i in 1..=MACHINES {
        fl.wait_for(
            &format!("m{i} lists every unit created during {what}"),
            Duration::from_secs(20),
            |fl| {
                let out = fl.fleetctl(i, &["list-unit-files", "--no-legend", "--fields=unit"]);
                let listed = String::from_utf8_lossy(&out.stdout).into_owned();
                (out.status.success() && run.created.iter().all(|u| listed.contains(u.as_str())))
                    .then_some(())
            },
        );
    }
}

#[test]
fn killing_the_etcd_leader_moves_fleetd_to_the_new_one_and_nothing_restarts() {
    let Some(fl) = up() else {
        return;
    };
    let before = main_pids(&fl);
    // Make the member most fleetds use the leader, so that killing it disconnects them.
    let (busiest, users) = busiest_member(&fl);
    let id = fl
        .lab
        .etcdctl(&["member", "list", "-w", "simple"])
        .unwrap()
        .lines()
        .find(|l| l.contains(&format!(", e{busiest}, ")))
        .and_then(|l| l.split(',').next())
        .map(str::to_string)
        .expect("member id");
    fl.lab.etcdctl(&["move-leader", &id]).unwrap();
    assert_eq!(fl.lab.etcd_leader().unwrap(), busiest);
    eprintln!("killing leader e{busiest}, used by machines {users:?}");
    let run = during(&fl, "kill", || fl.lab.etcd_kill(busiest).unwrap());
    check(&fl, "leader killed", &run, &before);
    for i in users {
        assert_ne!(
            member_of(&fl, i),
            Some(busiest),
            "m{i} still on the dead member"
        );
    }
    fl.lab.etcd_start(busiest).unwrap();
}

#[test]
fn a_frozen_etcd_member_is_left_and_nothing_restarts() {
    let Some(fl) = up() else {
        return;
    };
    let before = main_pids(&fl);
    let (busiest, users) = busiest_member(&fl);
    eprintln!("freezing e{busiest}, used by machines {users:?}");
    let run = during(&fl, "freeze", || fl.lab.etcd_freeze(busiest).unwrap());
    for i in &users {
        assert_ne!(
            member_of(&fl, *i),
            Some(busiest),
            "m{i} still on the frozen member"
        );
    }
    fl.lab.etcd_thaw(busiest).unwrap();
    check(&fl, "member frozen", &run, &before);
}

#[test]
fn an_etcd_member_cut_off_from_its_quorum_is_left_and_nothing_restarts() {
    let Some(fl) = up() else {
        return;
    };
    let before = main_pids(&fl);
    let (busiest, users) = busiest_member(&fl);
    eprintln!("isolating e{busiest} from its peers, used by machines {users:?}");
    let run = during(&fl, "isolate", || fl.lab.etcd_isolate(busiest).unwrap());
    for i in &users {
        assert_ne!(
            member_of(&fl, *i),
            Some(busiest),
            "m{i} still on the member without quorum"
        );
    }
    fl.lab.etcd_rejoin(busiest).unwrap();
    check(&fl, "member cut off", &run, &before);
}

#[test]
fn an_etcd_member_restarted_from_its_data_dir_serves_fleetd_again() {
    let Some(fl) = up() else {
        return;
    };
    let before = main_pids(&fl);
    let (busiest, users) = busiest_member(&fl);
    eprintln!(
        "killing e{busiest} (used by machines {users:?}), then restarting it from its data dir"
    );
    let run = during(&fl, "down", || fl.lab.etcd_kill(busiest).unwrap());
    check(&fl, "member killed", &run, &before);
    fl.lab.etcd_start(busiest).unwrap();
    // Now kill the other two in turn: fleetd must be able to use the restarted member, which has
    // caught up with what was written while it was down.
    for other in (1..=3).filter(|k| *k != busiest) {
        let run = during(&fl, &format!("after-restart-{other}"), || {
            fl.lab.etcd_kill(other).unwrap()
        });
        check(
            &fl,
            &format!("member e{other} killed after the restart"),
            &run,
            &before,
        );
        fl.lab.etcd_start(other).unwrap();
    }
}

/// etcd with TLS client certificates and users: fleetd (user `fleet`, role readwrite on `/fleet/`)
/// runs units; a fleetd whose user may only read starts nothing (it cannot claim) and says why.
#[test]
// long: one lab scenario on one secured etcd member cluster (its set-up costs seconds)
fn fleetd_runs_units_on_an_etcd_with_tls_and_users_and_starts_nothing_it_cannot_claim() {
    if !fleet_lab::require_root() {
        return;
    }
    let ips: Vec<String> = (1..=3)
        .map(|k| fleet_lab::etcd_member_ip(k).to_string())
        .chain(["127.0.0.1".to_string()])
        .collect();
    let pki = pki::Pki::new(&ips.iter().map(String::as_str).collect::<Vec<_>>());
    const TLS: &str = "/etc/etcd-tls";
    let bin = fleet_lab::cargo_profile_dir().unwrap();
    let mut opts = fleet_lab::LabOptions::new()
        .etcd_cluster(3)
        .etcd_tls(pki.dir())
        .bind(bin, fleet_lab::FLEET_BIN_DIR, true)
        .bind(pki.dir(), TLS, true)
        .unit("fleet.service", lab::FLEET_UNIT);
    for (k, v) in [
        ("FLEET_GOSSIP_INSECURE", "true".to_string()),
        ("FLEET_ENGINE_RECONCILE_INTERVAL", "1s".into()),
        ("FLEET_ETCD_CAFILE", format!("{TLS}/ca.pem")),
        ("FLEET_ETCD_CERTFILE", format!("{TLS}/fleet.pem")),
        ("FLEET_ETCD_KEYFILE", format!("{TLS}/fleet.key")),
        ("FLEET_ETCD_USERNAME", "fleet".into()),
        ("FLEET_ETCD_PASSWORD", "fleetpw".into()),
    ] {
        opts = opts.env(k, v);
    }
    // etcd first (users, roles, auth), then the machines.
    let lab = fleet_lab::Lab::up(0, opts).unwrap();
    for args in [
        &["user", "add", "root", "--no-password"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "fleet"],
        &[
            "role",
            "grant-permission",
            "fleet",
            "--prefix",
            "readwrite",
            "/fleet/",
        ],
        &["user", "add", "fleet:fleetpw"],
        &["user", "grant-role", "fleet", "fleet"],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "--prefix",
            "read",
            "/fleet/",
        ],
        &["user", "add", "reader:readerpw"],
        &["user", "grant-role", "reader", "reader"],
        &["auth", "enable"],
    ] {
        lab.etcdctl(args).unwrap();
    }
    for _ in 0..MACHINES {
        lab.add_machine().unwrap();
    }
    let fl = FleetLab { lab };
    fl.wait_for("every machine announced", Duration::from_secs(60), |fl| {
        let out = fl.fleetctl(1, &["list-machines", "--no-legend"]);
        (out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == MACHINES)
            .then_some(())
    });
    fl.write_file(
        1,
        "/tmp/tls.service",
        "[Service]\nExecStart=/bin/sleep 100000\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/tls.service"]);
    fl.wait_for("tls.service running", Duration::from_secs(30), |fl| {
        (fl.running_on("tls.service").len() == 1).then_some(())
    });

    // Machine 3's fleetd may only read: it sees units but cannot claim them.
    let env = fl.lab.machine_root(3).unwrap().join("etc/fleettest.env");
    let text = std::fs::read_to_string(&env).unwrap();
    std::fs::write(
        &env,
        text.replace(
            "FLEET_ETCD_USERNAME=fleet\n",
            "FLEET_ETCD_USERNAME=reader\n",
        )
        .replace(
            "FLEET_ETCD_PASSWORD=fleetpw\n",
            "FLEET_ETCD_PASSWORD=readerpw\n",
        ),
    )
    .unwrap();
    fl.lab
        .sh_ok(3, &["systemctl", "restart", "fleet.service"])
        .unwrap();
    let m3 = fl.machine_id(3);
    fl.write_file(
        1,
        "/tmp/pinned.service",
        &format!("[Service]\nExecStart=/bin/sleep 100000\n\n[X-Fleet]\nMachineID={m3}\n"),
    );
    fl.fleetctl_ok(1, &["start", "--no-block", "/tmp/pinned.service"]);
    fl.wait_for(
        "m3's fleetd reports the permission it lacks",
        Duration::from_secs(30),
        |fl| {
            fl.journal(3, 200)
                .contains("permission denied")
                .then_some(())
        },
    );
    for l in fl
        .journal(3, 200)
        .lines()
        .filter(|l| l.contains("permission denied"))
        .take(3)
    {
        eprintln!("m3: {l}");
    }
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        fl.running_on("pinned.service").is_empty(),
        "a unit started without a claim\n{}",
        fl.journal(3, 50)
    );
    let on = fl.running_on("tls.service");
    assert_eq!(
        on.len(),
        1,
        "tls.service runs on {on:?}\n{}",
        fl.journals(40)
    );
}

/// Drops machine `i`'s traffic to and from every etcd member (port 2379), nothing else.
fn block_etcd(fl: &FleetLab, i: usize, block: bool) {
    let script = if block {
        "table inet ftetcd {\n chain out { type filter hook output priority 0; tcp dport 2379 drop; }\n \
         chain in { type filter hook input priority 0; tcp sport 2379 drop; }\n}\n"
    } else {
        "delete table inet ftetcd\n"
    };
    let cmd = format!("printf '{script}' | nft -f -");
    fl.lab.sh_ok(i, &["sh", "-c", &cmd]).unwrap();
}

/// etcd's limits with fleetd running: a fleetd cut off from etcd for longer than etcd's history
/// (auto-compaction every 2 s) catches up without touching its units, and the NOSPACE alarm makes API
/// writes fail with a 503 that says so while every unit keeps running.
#[test]
// long: one lab scenario: the NOSPACE step runs on the cluster the compaction step left
fn compaction_while_away_and_the_nospace_alarm_leave_units_running() {
    let Some(fl) = up_with(|o| {
        o.etcd_arg("--auto-compaction-mode=periodic")
            .etcd_arg("--auto-compaction-retention=2s")
            .etcd_arg("--quota-backend-bytes=16777216")
    }) else {
        return;
    };
    let before = main_pids(&fl);

    // Machine 2 loses etcd; meanwhile units are created and one destroyed through machine 1.
    let rev_before: i64 = {
        let out = fl
            .lab
            .etcdctl(&["endpoint", "status", "-w", "json"])
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["Status"]["header"]["revision"].as_i64().unwrap()
    };
    let deltas = |fl: &FleetLab| fl.journal(2, 1000).matches("delta=true").count();
    let deltas_before = deltas(&fl);
    block_etcd(&fl, 2, true);
    for n in 0..3 {
        assert!(api_create(&fl, 1, &format!("away{n}.service")));
    }
    fl.fleetctl_ok(1, &["destroy", "away0.service"]);
    // etcd's history no longer reaches back to where machine 2 left.
    fl.wait_for(
        "etcd compacted the old revisions",
        Duration::from_secs(30),
        |fl| {
            fl.lab
                .etcdctl(&[
                    "get",
                    "--prefix",
                    "/fleet/",
                    "--rev",
                    &rev_before.to_string(),
                ])
                .err()
                .filter(|e| e.to_string().contains("compacted"))
                .map(|_| ())
        },
    );
    block_etcd(&fl, 2, false);
    fl.wait_for("m2 caught up", Duration::from_secs(30), |fl| {
        let out = fl.fleetctl(2, &["list-unit-files", "--no-legend", "--fields=unit"]);
        let l = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success()
            && l.contains("away1.service")
            && l.contains("away2.service")
            && !l.contains("away0.service"))
        .then_some(())
    });
    let journal = fl.journal(2, 1000);
    for l in journal.lines().filter(|l| l.contains("fleet::registry")) {
        eprintln!("m2: {l}");
    }
    assert!(
        deltas(&fl) > deltas_before,
        "m2 did not catch up with a delta read:\n{journal}"
    );
    assert_eq!(main_pids(&fl), before, "{}", fl.journals(30));

    // NOSPACE: fill etcd (outside fleet's prefix) until it raises the alarm.
    let ep = fl.lab.etcd_member_endpoint(1).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
        let value = vec![b'f'; 1024 * 1024];
        for i in 0..100 {
            match c.put(format!("/filler/{i}"), value.clone(), None).await {
                Ok(_) => {}
                Err(e) if e.to_string().contains("database space exceeded") => return,
                Err(e) => panic!("filling etcd: {e}"),
            }
        }
        panic!("etcd never ran out of space");
    });
    let out = fl
        .lab
        .sh(
            1,
            &[
                "curl", "-s", "--max-time", "5", "--unix-socket", "/var/run/fleet.sock", "-X",
                "PUT", "-H", "Content-Type: application/json", "-d",
                r#"{"desiredState":"inactive","options":[{"section":"Service","name":"ExecStart","value":"/bin/true"}]}"#,
                "-w", "\n%{http_code}", "http://fleet/fleet/v1/units/nospace.service",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("during NOSPACE, PUT answered: {text}");
    assert!(text.ends_with("\n503"), "{text}");
    assert!(
        text.contains("NOSPACE") && text.contains("unable to write to etcd"),
        "{text}"
    );
    // Units keep running through several reconcile passes.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(main_pids(&fl), before, "{}", fl.journals(30));
    assert!(fl
        .fleetctl(2, &["list-units", "--no-legend"])
        .status
        .success());

    // An operator frees space: writes work again.
    fl.lab.etcdctl(&["del", "--prefix", "/filler/"]).unwrap();
    std::thread::sleep(Duration::from_secs(3)); // auto-compaction passes the deletion
    fl.lab.etcdctl(&["defrag"]).unwrap();
    fl.lab.etcdctl(&["alarm", "disarm"]).unwrap();
    fl.wait_for("API writes work again", Duration::from_secs(20), |fl| {
        api_create(fl, 1, "after-nospace.service").then_some(())
    });
    assert_eq!(main_pids(&fl), before, "{}", fl.journals(30));
}
