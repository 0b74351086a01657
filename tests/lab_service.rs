//! fleetd as a real systemd service in a cluster-lab cluster (root only): started by
//! `dist/fleet.socket` on the first connection to `/var/run/fleet.sock`, `Type=notify` readiness, and
//! metrics scraped during a failover showing the detection and failover histograms counting.

mod lab;

use std::time::{Duration, Instant};

use fleet_lab::{Lab, LabOptions};
use lab::FleetLab;

const SOCKET_UNIT: &str = include_str!("../dist/fleet.socket");
const SERVICE_UNIT: &str = include_str!("../dist/fleet.service");

/// `dist/fleet.service` with the lab's binary and settings: only `ExecStart=` changes.
fn lab_service() -> String {
    let exec = "ExecStart=/usr/local/bin/fleetd\n";
    assert!(SERVICE_UNIT.contains(exec), "dist/fleet.service changed");
    SERVICE_UNIT.replace(
        exec,
        "EnvironmentFile=/etc/fleettest.env\n\
         ExecStart=/opt/fleet/bin/fleetd --etcd-servers=${FT_ETCD} --public-ip=${FT_IP}\n",
    )
}

/// `n` machines with fleetd installed from `dist/` but not started: only `fleet.socket` listens.
fn socket_activated_lab(n: usize) -> Option<FleetLab> {
    if !fleet_lab::require_root() {
        return None;
    }
    let bin = fleet_lab::cargo_profile_dir().expect("cargo profile dir");
    let opts = LabOptions::new()
        .bind(bin, fleet_lab::FLEET_BIN_DIR, true)
        // fleetd's default lease TTL (30 s), as installed: with the lab's usual 3 s the dead machine's
        // claim may expire before the takeover's proof and votes, and the unit is then claimed as a free
        // one, not taken over (which the metrics test counts).
        .env("FLEET_GOSSIP_INSECURE", "true")
        .env("FLEET_ENGINE_RECONCILE_INTERVAL", "1s");
    let fl = FleetLab {
        lab: Lab::up(n, opts).expect("lab up"),
    };
    let service = lab_service();
    for i in 1..=n {
        fl.write_file(i, "/etc/systemd/system/fleet.socket", SOCKET_UNIT);
        fl.write_file(i, "/etc/systemd/system/fleet.service", &service);
        fl.lab
            .sh_ok(i, &["systemctl", "daemon-reload"])
            .expect("daemon-reload");
        fl.lab
            .sh_ok(i, &["systemctl", "start", "fleet.socket"])
            .expect("start fleet.socket");
    }
    Some(fl)
}

/// `GET path` on machine `i`'s API socket with curl: `(status, body)`.
fn curl(fl: &FleetLab, i: usize, path: &str) -> (u16, String) {
    let (code, body) = fl.api(i, "GET", path, None, 20);
    (code.unwrap_or(0), body)
}

/// The value of the sample `series` (`name{labels}` exactly as exposed) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series))
        .and_then(|(_, v)| v.parse().ok())
}

#[test]
fn fleet_socket_starts_fleetd_on_the_first_connection() {
    let Some(fl) = socket_activated_lab(1) else {
        return;
    };
    assert_eq!(fl.active_state(1, "fleet.socket"), "active");
    assert_eq!(
        fl.active_state(1, "fleet.service"),
        "inactive",
        "fleetd must not run before anyone connects"
    );
    // The socket belongs to systemd: root:root 0660 as dist/fleet.socket says.
    let perms = fl
        .lab
        .sh_ok(1, &["stat", "-c", "%U:%G %a %F", "/var/run/fleet.sock"])
        .expect("stat");
    assert_eq!(perms.trim(), "root:root 660 socket");

    // The first request waits in the backlog while systemd starts fleetd, then is answered.
    let (status, body) = curl(&fl, 1, "/fleet/v1/machines");
    assert_eq!(status, 200, "{body}");
    assert_eq!(fl.active_state(1, "fleet.service"), "active");
    // Type=notify: systemd saw READY=1 and the STATUS= line.
    let status_text = fl.show(1, "fleet.service", "StatusText");
    assert!(status_text.starts_with("API serving"), "{status_text:?}");
    fl.wait_for("the machine is listed", Duration::from_secs(20), |fl| {
        let (s, body) = curl(fl, 1, "/fleet/v1/machines");
        (s == 200 && body.contains(&fl.machine_id(1))).then_some(())
    });
    // The journal gets lines without our own timestamps, at their syslog priority.
    let info = fl
        .lab
        .sh_ok(
            1,
            &[
                "journalctl",
                "-u",
                "fleet",
                "-p",
                "info",
                "-o",
                "cat",
                "--no-pager",
            ],
        )
        .expect("journalctl");
    let line = info
        .lines()
        .find(|l| l.contains("fleetd starting"))
        .unwrap_or_else(|| panic!("no start line in:\n{info}"));
    assert!(
        line.starts_with(" INFO") || line.starts_with("INFO"),
        "{line:?}"
    );

    // A crash: systemd restarts fleetd (Restart=always) and the socket keeps listening meanwhile.
    let pid = fl.show(1, "fleet.service", "MainPID");
    fl.lab
        .sh_ok(1, &["systemctl", "kill", "-s", "KILL", "fleet.service"])
        .expect("kill fleetd");
    fl.wait_for("fleetd restarted", Duration::from_secs(20), |fl| {
        let now = fl.show(1, "fleet.service", "MainPID");
        (fl.active_state(1, "fleet.service") == "active" && now != pid && now != "0").then_some(())
    });
    assert_eq!(fl.active_state(1, "fleet.socket"), "active");
    let (status, body) = curl(&fl, 1, "/fleet/v1/units");
    assert_eq!(status, 200, "{body}");

    // Stopping the service stops the socket too (PartOf=, as fleet v1's fleet.socket): a stopped
    // fleet is not woken up again by the next fleetctl.
    fl.lab
        .sh_ok(1, &["systemctl", "stop", "fleet.service"])
        .expect("stop fleet.service");
    assert_eq!(fl.active_state(1, "fleet.socket"), "inactive");
    // fleetd left the socket file to systemd, which removed it with the socket unit.
    let (status, _) = curl(&fl, 1, "/fleet/v1/units");
    assert_eq!(status, 0, "nothing answers on a stopped fleet");
}

#[test]
// long: one lab scenario: metrics read before, during and after the same failover
fn metrics_during_a_failover_count_detection_and_takeover() {
    let Some(fl) = socket_activated_lab(3) else {
        return;
    };
    for i in 1..=3 {
        let (status, body) = curl(&fl, i, "/metrics");
        assert_eq!(status, 200, "m{i}: {body}");
    }
    fl.wait_for("every machine announced", Duration::from_secs(30), |fl| {
        let out = fl.fleetctl(1, &["list-machines", "--no-legend"]);
        (out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == 3)
            .then_some(())
    });
    fl.write_file(
        1,
        "/tmp/victim.service",
        "[Service]\nExecStart=/bin/sleep 100000\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/victim.service"]);
    let home = fl.wait_for("victim runs somewhere", Duration::from_secs(20), |fl| {
        fl.running_on("victim.service").first().copied()
    });
    // Scrape every survivor before the failure, to see the counters move.
    let survivors: Vec<usize> = (1..=3).filter(|i| *i != home).collect();
    let before: Vec<String> = survivors
        .iter()
        .map(|i| curl(&fl, *i, "/metrics").1)
        .collect();
    for text in &before {
        assert_eq!(
            sample(text, "fleet_machines{state=\"alive\"}"),
            Some(3.0),
            "{text}"
        );
    }

    let t0 = Instant::now();
    fl.lab.kill(home).expect("kill the victim's machine");
    let new_home = fl.wait_for("victim runs on a survivor", Duration::from_secs(30), |fl| {
        survivors
            .iter()
            .copied()
            .find(|i| fl.active_state(*i, "victim.service") == "active")
    });
    println!(
        "victim.service back on m{new_home} {:?} after m{home} was killed",
        t0.elapsed()
    );

    for (k, i) in survivors.iter().enumerate() {
        let (status, text) = curl(&fl, *i, "/metrics");
        assert_eq!(status, 200);
        let detections = sample(&text, "fleet_gossip_detection_seconds_count").unwrap_or(0.0);
        let before_detections =
            sample(&before[k], "fleet_gossip_detection_seconds_count").unwrap_or(0.0);
        assert!(
            detections > before_detections,
            "m{i} saw m{home} go down: {detections} detections\n{text}"
        );
        assert_eq!(
            sample(&text, "fleet_machines{state=\"down\"}"),
            Some(1.0),
            "{text}"
        );
        let sum = sample(&text, "fleet_gossip_detection_seconds_sum").unwrap_or(0.0);
        println!(
            "m{i}: detection count {detections}, mean {:.3}s (suspect to down, sampled every 100ms)",
            sum / detections
        );
    }
    let (_, text) = curl(&fl, new_home, "/metrics");
    let failovers = sample(&text, "fleet_failover_seconds_count").unwrap_or(0.0);
    assert!(
        failovers >= 1.0,
        "m{new_home} took victim.service over:\n{text}"
    );
    assert!(
        sample(&text, "fleet_placements_total{kind=\"takeover\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    let sum = sample(&text, "fleet_failover_seconds_sum").unwrap();
    println!(
        "m{new_home}: failover (down verdict to takeover claim) {:.3}s over {failovers} unit(s)",
        sum / failovers
    );
    // The takeover started the unit: a start job was timed.
    assert!(
        sample(
            &text,
            "fleet_systemd_job_duration_seconds_count{job=\"start\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "fleet_gossip_bytes_total{direction=\"in\"}").unwrap_or(0.0) > 0.0);
}
