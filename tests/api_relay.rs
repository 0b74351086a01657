//! The status/journal/restart routes (fleet extensions) end to end on one real fleetd and a real etcd: how
//! the unit's machine is found, and the errors when it cannot be. The relay between two machines
//! is tested in the lab (`tests/lab_relay.rs`).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{assert_error, http, http_get, http_put_json, Etcd, Fleetd};

fn put_unit(f: &Fleetd, name: &str, state: &str) {
    let body = json!({
        "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep 1000"}],
        "desiredState": state,
    });
    let r = http_put_json(f.socket(), &format!("/fleet/v1/units/{name}"), &body);
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Writes a claim of `unit` for `machine` and waits until fleetd's mirror has it (the API names the
/// claim's machine unless the unit is inactive and not loaded there, as fleet did: so not for inactive units).
fn claim(etcd: &Etcd, f: &Fleetd, unit: &str, machine: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut c = etcd.client().await;
            // Bound to a lease, as an agent's claim is (one bound to none counts as free).
            let lease = c.lease_grant(120, None).await.unwrap().id();
            c.put(
                format!("{}claims/{unit}", etcd.prefix()),
                json!({ "machineID": machine }).to_string(),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let u: Value = http_get(f.socket(), &format!("/fleet/v1/units/{unit}")).json();
        if u["machineID"] == machine {
            return;
        }
        assert!(Instant::now() < deadline, "claim not mirrored: {u}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn missing_and_unplaced_units_and_bad_parameters_are_refused() {
    let etcd = Etcd::shared();
    let f = Fleetd::start(&etcd);
    f.wait_ready();
    let s = f.socket();
    for p in ["/fleet/v1", "/v1-alpha"] {
        assert_error(
            &http_get(s, &format!("{p}/units/nope.service/status")),
            404,
            "unit does not exist",
        );
        assert_error(
            &http_get(s, &format!("{p}/units/nope.service/journal")),
            404,
            "unit does not exist",
        );
    }
    assert_error(&http_get(s, "/fleet/v1/units/noext/status"), 404, "");
    let r = http(s, "POST", "/fleet/v1/units/a.service/status", &[], b"").unwrap();
    assert_error(&r, 405, "only GET");

    put_unit(&f, "idle.service", "inactive");
    for route in ["status", "journal"] {
        assert_error(
            &http_get(s, &format!("/fleet/v1/units/idle.service/{route}")),
            409,
            "unit is not running on any machine",
        );
    }
    for (q, msg) in [
        ("status?lines=abc", "invalid lines"),
        ("status?lines=10001", "invalid lines"),
        ("status?lines=1&lines=2", "too many values for lines"),
        ("journal?cursor=--since%3Dtoday", "invalid journal cursor"),
        ("journal?cursor=s%3D1%20x", "invalid journal cursor"),
        ("status?machineID=a%2Fb", "invalid machineID"),
    ] {
        assert_error(
            &http_get(s, &format!("/fleet/v1/units/idle.service/{q}")),
            400,
            msg,
        );
    }
}

#[test]
fn a_machine_outside_the_cluster_is_a_bad_gateway_and_machine_id_must_match() {
    let etcd = Etcd::shared();
    let f = Fleetd::start(&etcd);
    f.wait_ready();
    put_unit(&f, "far.service", "loaded");
    claim(&etcd, &f, "far.service", "0123abcd");
    let s = f.socket();
    let r = http_get(s, "/fleet/v1/units/far.service/status");
    assert_error(&r, 502, "machine 0123abcd cannot be reached");
    let r = http_get(s, "/fleet/v1/units/far.service/journal?lines=3");
    assert_error(&r, 502, "machine 0123abcd cannot be reached");
    let r = http_get(s, "/fleet/v1/units/far.service/status?machineID=4567cdef");
    assert_error(&r, 409, "unit is not running on machine 4567cdef");
}

#[test]
fn a_unit_on_this_machine_is_answered_by_this_fleetd() {
    if !std::path::Path::new("/usr/bin/systemctl").exists()
        && !std::path::Path::new("/bin/systemctl").exists()
    {
        eprintln!("skipped: systemctl is not installed");
        return;
    }
    let etcd = Etcd::shared();
    let f = Fleetd::start(&etcd);
    f.wait_ready();
    put_unit(&f, "here.service", "loaded");
    claim(&etcd, &f, "here.service", f.machine_id());
    let r = http_get(f.socket(), "/fleet/v1/units/here.service/status?lines=0");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["machineID"], f.machine_id(), "{v}");
    // Whatever systemctl says on this host (no such unit, or no systemd at all), it said it here.
    assert!(v["exitCode"].as_i64().is_some_and(|c| c != 0), "{v}");
    assert!(!v["text"].as_str().unwrap_or_default().is_empty(), "{v}");
}

#[test]
fn restart_needs_a_launched_unit_and_reports_each_machine() {
    let etcd = Etcd::shared();
    let f = Fleetd::start(&etcd);
    f.wait_ready();
    let s = f.socket();
    let post = |path: &str| http(s, "POST", path, &[], b"").unwrap();
    for p in ["/fleet/v1", "/v1-alpha"] {
        assert_error(
            &post(&format!("{p}/units/nope.service/restart")),
            404,
            "unit does not exist",
        );
    }
    let r = http_get(s, "/fleet/v1/units/nope.service/restart");
    assert_error(&r, 405, "only POST");

    // Not launched: restarting would start what the user stopped.
    put_unit(&f, "idle.service", "loaded");
    assert_error(
        &post("/fleet/v1/units/idle.service/restart"),
        409,
        "unit idle.service is not launched (desired state loaded)",
    );

    // Launched on a machine outside the cluster: asked, and its failure reported per machine.
    put_unit(&f, "far.service", "launched");
    claim(&etcd, &f, "far.service", "0123abcd");
    let r = post("/fleet/v1/units/far.service/restart");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let restarts = v["restarts"].as_array().expect("restarts");
    assert_eq!(restarts.len(), 1, "{v}");
    assert_eq!(restarts[0]["machineID"], "0123abcd", "{v}");
    assert!(
        restarts[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("machine 0123abcd cannot be reached")),
        "{v}"
    );
    assert_error(
        &post("/fleet/v1/units/far.service/restart?machineID=4567cdef"),
        409,
        "unit is not running on machine 4567cdef",
    );
    assert_error(
        &post("/fleet/v1/units/far.service/restart?machineID=a%2Fb"),
        400,
        "invalid machineID",
    );
}
