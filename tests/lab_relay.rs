//! End-to-end: `fleetctl status` and `fleetctl journal` on one machine show a unit running on
//! another, answered by that machine's agent over the gossip request channel; `PATCH
//! /fleet/v1/machines` through one machine changes the metadata of others, applied by each of them
//! (root only).

mod lab;

use std::time::Duration;

use lab::{text, FleetLab};

const WAIT: Duration = Duration::from_secs(20);

/// A service that logs a marker with its machine's ID (`%m`, expanded by systemd where it runs),
/// then a numbered tick every 300 ms.
fn ticker(machine: &str) -> String {
    format!(
        "[Unit]\nDescription=relay ticker\n\n[Service]\n\
         ExecStart=/bin/sh -c 'echo relay-marker-%m; i=0; while :; do i=$$((i+1)); echo tick-$$i; sleep 0.3; done'\n\n\
         [X-Fleet]\nMachineID={machine}\n"
    )
}

/// The numbers of the `tick-N` lines, in order.
fn ticks(s: &str) -> Vec<u64> {
    s.lines()
        .filter_map(|l| l.rsplit_once("tick-"))
        .filter_map(|(_, n)| n.trim().parse().ok())
        .collect()
}

#[test]
// long: one lab scenario: status, journal and --follow read the same remote unit in turn
fn status_and_journal_of_a_unit_on_another_machine_come_from_that_machine() {
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    let m2 = fl.machine_id(2);
    fl.write_file(1, "/tmp/ticker.service", &ticker(&m2));
    let out = fl.fleetctl_ok(1, &["start", "/tmp/ticker.service"]);
    assert!(out.contains("launched on"), "{out}");
    assert_eq!(fl.active_state(2, "ticker.service"), "active");
    assert_eq!(fl.show(1, "ticker.service", "LoadState"), "not-found");

    // journal --lines 3 on m1: the last three lines of m2's journal.
    let out = fl.wait_for("three ticks in the journal", WAIT, |fl| {
        let out = fl.fleetctl(1, &["journal", "--lines", "3", "ticker.service"]);
        let (o, _) = text(&out);
        (out.status.success() && ticks(&o).len() == 3).then_some(o)
    });
    assert_eq!(out.lines().count(), 3, "{out}");
    let t = ticks(&out);
    assert!(t.windows(2).all(|w| w[1] == w[0] + 1), "{out}");
    // The whole journal has the marker only m2's systemd could write.
    let all = fl.fleetctl_ok(1, &["journal", "--lines", "1000", "ticker.service"]);
    assert!(all.contains(&format!("relay-marker-{m2}")), "{all}");

    // status on m1: systemctl status as m2 sees it (m1 does not even know the unit).
    let out = fl.fleetctl(1, &["status", "ticker.service"]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    assert!(o.contains("ticker.service - relay ticker"), "{o}");
    assert!(o.contains("Active: active (running)"), "{o}");
    assert!(
        !ticks(&o).is_empty(),
        "status shows recent journal lines: {o}"
    );

    // journal --follow: new lines keep coming, each once, until SIGINT ends it with status 0.
    let out = fl.fleetctl_until_sigint(
        1,
        "4",
        &["journal", "--follow", "--lines", "1", "ticker.service"],
    );
    let (o, e) = text(&out);
    assert!(out.status.success(), "exit {:?}: {o}{e}", out.status);
    let t = ticks(&o);
    assert!(t.len() >= 6, "new lines appeared while following: {o}");
    assert!(
        t.windows(2).all(|w| w[1] == w[0] + 1),
        "each line exactly once, in order: {t:?}"
    );

    // A unit that does not exist, and one that is not placed anywhere.
    let out = fl.fleetctl(1, &["status", "nope.service"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(e.contains("nope.service does not exist"), "{e}");
    let out = fl.fleetctl(1, &["journal", "nope.service"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("does not exist"), "{:?}", text(&out));
    fl.write_file(1, "/tmp/idle.service", &ticker(&m2));
    fl.fleetctl_ok(1, &["submit", "/tmp/idle.service"]);
    let out = fl.fleetctl(1, &["status", "idle.service"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).1.contains("not running on any machine"),
        "{:?}",
        text(&out)
    );

    // A loaded unit that never ran has no journal yet: an empty answer, not an error.
    fl.write_file(1, "/tmp/quiet.service", &ticker(&m2));
    let out = fl.fleetctl_ok(1, &["load", "/tmp/quiet.service"]);
    assert!(out.contains("loaded on"), "{out}");
    let out = fl.fleetctl(1, &["journal", "quiet.service"]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}{e}");
    assert_eq!(o, "");

    // A stopped unit: systemctl's exit status 3 comes back, as fleet did.
    fl.fleetctl_ok(1, &["stop", "ticker.service"]);
    let out = fl.fleetctl(1, &["status", "ticker.service"]);
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{o}{e}");
    assert!(o.contains("inactive (dead)"), "{o}");
}

#[test]
fn a_machine_that_does_not_answer_is_a_clear_error() {
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    let m2 = fl.machine_id(2);
    fl.write_file(1, "/tmp/ticker.service", &ticker(&m2));
    fl.fleetctl_ok(1, &["start", "/tmp/ticker.service"]);
    fl.lab.freeze(2).expect("freeze m2");
    let out = fl.fleetctl(1, &["status", "ticker.service"]);
    fl.lab.thaw(2).expect("thaw m2");
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{o}{e}");
    assert!(
        e.contains(&format!("machine {m2}"))
            && (e.contains("did not answer") || e.contains("cannot be reached")),
        "{e}"
    );
}

#[test]
fn a_global_units_status_comes_from_every_machine_and_its_journal_from_the_one_picked() {
    let Some(fl) = FleetLab::up(2, &[]) else {
        return;
    };
    let (m1, m2) = (fl.machine_id(1), fl.machine_id(2));
    let unit = "[Unit]\nDescription=global ticker\n\n[Service]\n\
                ExecStart=/bin/sh -c 'while :; do echo global-marker-%m; sleep 1; done'\n\n\
                [X-Fleet]\nGlobal=true\n";
    fl.write_file(1, "/tmp/g.service", unit);
    fl.fleetctl_ok(1, &["start", "/tmp/g.service"]);
    fl.wait_for("g.service reported by both machines", WAIT, |fl| {
        let out = fl.fleetctl(1, &["list-units", "--no-legend", "--full"]);
        let (o, _) = text(&out);
        (o.lines()
            .filter(|l| l.starts_with("g.service") && l.contains("running"))
            .count()
            == 2)
            .then_some(())
    });

    // The marker is logged as the unit starts; journald may take a moment to have it.
    let out = fl.wait_for("status shows both machines' markers", WAIT, |fl| {
        let out = fl.fleetctl_ok(1, &["status", "g.service"]);
        [&m1, &m2]
            .iter()
            .all(|m| out.contains(&format!("global-marker-{m}")))
            .then_some(out)
    });
    for m in [&m1, &m2] {
        assert!(
            out.contains(&format!("g.service on {}...", &m[..8])),
            "{out}"
        );
        assert!(out.contains(&format!("global-marker-{m}")), "{out}");
    }
    assert_eq!(out.matches("Active: active (running)").count(), 2, "{out}");

    let out = fl.fleetctl_ok(
        1,
        &["journal", "--machine", &m2, "--lines", "50", "g.service"],
    );
    assert!(out.contains(&format!("global-marker-{m2}")), "{out}");
    assert!(!out.contains(&format!("global-marker-{m1}")), "{out}");

    // Without --machine: every machine's lines, or (older fleetctl) an error pointing at --machine.
    let out = fl.fleetctl(1, &["journal", "--lines", "50", "g.service"]);
    let (o, e) = text(&out);
    if out.status.success() {
        for m in [&m1, &m2] {
            assert!(o.contains(&format!("global-marker-{m}")), "{o}");
        }
    } else {
        assert!(
            e.contains("runs on 2 machines") && e.contains("--machine"),
            "{e}"
        );
    }
}

#[test]
fn metadata_of_any_machine_is_changed_through_any_machine() {
    let Some(fl) = FleetLab::up(3, &[]) else {
        return;
    };
    let (m2, m3) = (fl.machine_id(2), fl.machine_id(3));
    let add = |m: &str, k: &str, v: &str| {
        format!(r#"{{"op":"add","path":"/{m}/metadata/{k}","value":{{"value":"{v}"}}}}"#)
    };
    // Two other machines in one request through m1: 204 once applied, and m1 already shows it.
    let (code, body) = fl.patch_machines(
        1,
        &format!(
            "[{},{},{}]",
            add(&m2, "region", "eu"),
            add(&m3, "region", "us"),
            add(&m3, "disk", "ssd")
        ),
    );
    assert_eq!(code, 204, "{body}");
    assert_eq!(fl.metadata_seen(1, 2).as_deref(), Some("region=eu"));
    assert_eq!(
        fl.metadata_seen(1, 3).as_deref(),
        Some("disk=ssd,region=us")
    );
    // Applied by the machines themselves (their own fleetd has it), and gossiped to everyone.
    assert_eq!(fl.metadata_seen(2, 2).as_deref(), Some("region=eu"));
    fl.wait_metadata(2, "region=eu");
    fl.wait_metadata(3, "disk=ssd,region=us");
    assert_eq!(fl.metadata_seen(1, 1).as_deref(), Some("-"));

    // Every op is validated, and every machine must exist, before anything is applied.
    let (code, body) = fl.patch_machines(
        1,
        &format!(
            "[{},{}]",
            add(&m2, "region", "xx"),
            add(&m3, "bad key", "1")
        ),
    );
    assert_eq!(code, 400, "{body}");
    let (code, body) = fl.patch_machines(
        1,
        &format!(
            "[{},{}]",
            add(&m2, "region", "yy"),
            add("0123456789abcdef0123456789abcdef", "region", "1")
        ),
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("0123456789abcdef0123456789abcdef"), "{body}");
    std::thread::sleep(Duration::from_millis(500));
    for i in 1..=3 {
        assert_eq!(fl.metadata_seen(i, 2).as_deref(), Some("region=eu"), "m{i}");
    }

    // Removal through a third machine; placement follows the new metadata.
    let (code, body) = fl.patch_machines(
        3,
        &format!(r#"[{{"op":"remove","path":"/{m2}/metadata/region"}}]"#),
    );
    assert_eq!(code, 204, "{body}");
    fl.wait_metadata(2, "-");
    fl.write_file(
        1,
        "/tmp/us.service",
        "[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nMachineMetadata=region=us\n",
    );
    fl.fleetctl_ok(1, &["start", "/tmp/us.service"]);
    let on = fl.wait_for("us.service running", WAIT, |fl| {
        let r = fl.running_on("us.service");
        (r.len() == 1).then(|| r[0])
    });
    assert_eq!(on, 3);
}
